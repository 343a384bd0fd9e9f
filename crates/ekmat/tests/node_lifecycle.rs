//! Starting, stopping and restarting real nodes, and what they say about bad input.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{Cluster, channel, ekmat, free_port, put_revision, unused_port_block, write_config};

fn run(args: &[&str]) -> (i32, String, String) {
    let o = ekmat().args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_configurations_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&["node", "--config", "/nonexistent/ekmat.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read configuration"), "{err}");

    let mut cfg = sample(dir.path());
    cfg.id = 9;
    let path = dir.path().join("bad.toml");
    write_config(&path, &cfg);
    let (code, _, err) = run(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("id 9 is not among the members"), "{err}");

    std::fs::write(&path, "cluster = \"x\"\nid = 0\nmystery = 1\n").unwrap();
    let (code, _, err) = run(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid configuration"), "{err}");
}

fn sample(dir: &std::path::Path) -> ekmat_node::NodeConfig {
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    ekmat_node::NodeConfig::new(
        "solo",
        0,
        dir.join("data"),
        vec![ekmat_node::Member {
            id: 0,
            name: "n0".into(),
            peer: addr(free_port()),
            client: addr(free_port()),
            metrics: None,
            joined: false,
            public_key: None,
        }],
    )
}

#[test]
fn a_taken_port_an_unusable_or_foreign_data_dir_stop_the_node_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.toml");

    let cfg = sample(dir.path());
    let _hold = std::net::TcpListener::bind(cfg.members[0].client).unwrap();
    write_config(&path, &cfg);
    let (code, _, err) = run(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot listen for clients on"), "{err}");

    let mut cfg = sample(dir.path());
    std::fs::write(dir.path().join("plain-file"), b"x").unwrap();
    cfg.data_dir = dir.path().join("plain-file").join("data");
    write_config(&path, &cfg);
    let (code, _, err) = run(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is not usable"), "{err}");

    // A data directory claimed by another cluster.
    let mut other = sample(dir.path());
    other.cluster = "other".into();
    other.data_dir = dir.path().join("shared");
    let mut c = Cluster::start(1);
    let identity = c.cfgs[0].data_dir.join("ekmat-identity.toml");
    let started = Instant::now();
    while !identity.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the node never claimed its directory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::create_dir_all(&other.data_dir).unwrap();
    std::fs::copy(&identity, other.data_dir.join("ekmat-identity.toml")).unwrap();
    write_config(&path, &other);
    let (code, _, err) = run(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("belongs to cluster 'test'") && err.contains("refusing to start"),
        "{err}"
    );

    // The running node's own directory is locked.
    let (code, _, err) = run(&["node", "--config", c.config_path(0).to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by another ekmat process"), "{err}");
    assert!(c.stop(0).success(), "SIGTERM stops a node cleanly");
}

#[tokio::test]
async fn a_cluster_restarted_from_disk_keeps_its_data() {
    let mut c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    for i in 0..50 {
        kv.put(pb::PutRequest {
            key: format!("k{i}").into_bytes().into(),
            value: format!("v{i}").into_bytes().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for i in 0..3 {
        assert!(c.stop(i).success(), "n{i} stops cleanly on SIGTERM");
    }
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    let r = kv
        .range(pb::RangeRequest {
            key: b"k".to_vec().into(),
            range_end: b"l".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.count, 50,
        "all acknowledged writes survived a full restart"
    );
    assert_eq!(r.header.unwrap().revision, 51);
}

#[tokio::test]
async fn a_corrupted_log_is_refused_with_file_and_offset() {
    let mut c = Cluster::start(1);
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    for i in 0..20 {
        kv.put(pb::PutRequest {
            key: format!("k{i}").into_bytes().into(),
            value: vec![b'x'; 100].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(c.stop(0).success());
    let wal = c.cfgs[0].data_dir.join("wal");
    let segment = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte among the records, not in the zeros the log writes ahead of them.
    let middle = held(&bytes) / 3;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let (code, _, err) = run(&["node", "--config", c.config_path(0).to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("corrupt write-ahead log")
            && err.contains(segment.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("at byte"), "{err}");
}

#[tokio::test]
async fn oversized_and_malformed_requests_get_grpc_errors() {
    let c = Cluster::start(1);
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    let err = kv
        .put(pb::PutRequest {
            key: b"big".to_vec().into(),
            value: vec![0; 2 << 20].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: request is too large");
    let err = kv
        .put(pb::PutRequest {
            key: vec![].into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: key is not provided");
    let err = kv
        .txn(pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn ekmat_up_prints_ready_and_stops_every_node_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    // `up` lays nodes out at base+i (peer), base+100+i and base+200+i.
    let base = unused_port_block(203);
    let mut up = ekmat()
        .args([
            "up",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let ready = loop {
        let line = lines
            .next()
            .expect("ekmat up printed a ready line")
            .unwrap();
        if let Some(rest) = line.strip_prefix("ready: ") {
            break rest.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    };
    let endpoints: Vec<&str> = ready.split(',').collect();
    assert_eq!(
        endpoints,
        [
            format!("127.0.0.1:{base}"),
            format!("127.0.0.1:{}", base + 1),
            format!("127.0.0.1:{}", base + 2)
        ]
    );
    let (code, out, err) = run(&["kv", "put", "greeting", "namaste", "--endpoints", &ready]);
    assert_eq!((code, out.trim()), (0, "OK"), "{err}");
    let (code, out, _) = run(&["kv", "get", "greeting", "--endpoints", endpoints[2]]);
    assert_eq!((code, out.as_str()), (0, "greeting\nnamaste\n"));
    let (code, out, _) = run(&["status", "--endpoints", &ready]);
    assert_eq!(code, 0);
    assert!(
        out.contains("yes") && out.contains("leader: member"),
        "{out}"
    );

    kill(Pid::from_raw(up.id() as i32), Signal::SIGINT).unwrap();
    let status = up.wait().unwrap();
    assert!(status.success(), "ekmat up exits 0 after Ctrl-C");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    for i in 0..3 {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok(),
            "n{i} released its port"
        );
    }
}

#[test]
fn kv_commands_explain_bad_endpoints_and_unreachable_clusters() {
    let (code, _, err) = run(&["kv", "get", "k", "--endpoints", "https://127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(err.contains("TLS"), "{err}");
    let port = free_port();
    let (code, _, err) = run(&[
        "kv",
        "get",
        "k",
        "--endpoints",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no endpoint answered"), "{err}");
}

/// How many of a log file's bytes are held, not counting the zeros the log writes
/// ahead of its records (at most ~1.5 MiB, whatever the log holds).
fn held(bytes: &[u8]) -> usize {
    bytes.len() - bytes.iter().rev().take_while(|&&b| b == 0).count()
}

/// Bytes the files in `dir` hold (see [`held`]).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let file = |path: std::path::PathBuf| held(&std::fs::read(path).unwrap()) as u64;
    std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| file(e.unwrap().path())).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_from_a_snapshot_and_the_log_stays_bounded() {
    let mut c = Cluster::start_with(3, |cfg| {
        cfg.snapshot_every = 50;
        cfg.checkpoint_bytes = 64 << 10;
    });
    let leader = c.leader(Duration::from_secs(15)).await;
    let behind = (leader + 1) % 3;
    assert!(c.stop(behind).success());
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    for i in 0..2000 {
        kv.put(pb::PutRequest {
            key: format!("k{i:04}").into_bytes().into(),
            value: vec![b'v'; 100].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    c.spawn(behind);
    // It can only catch up through the snapshot: the leader compacted the entries.
    let started = Instant::now();
    loop {
        let applied = support::status(&c.endpoint(behind))
            .await
            .map_or(0, |s| s.raft_applied_index);
        if applied >= 2001 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "n{behind} stuck at {applied}; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.log(behind)
            .contains("restored the state machine from a snapshot"),
        "{}",
        c.log(behind)
    );
    let mut follower = pb::kv_client::KvClient::new(channel(&c.endpoint(behind)).await.unwrap());
    let all = follower
        .range(pb::RangeRequest {
            key: b"k".to_vec().into(),
            range_end: b"l".to_vec().into(),
            serializable: true,
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.count, 2000, "the restored follower holds every key");

    // The state is ~2000 keys of ~130 bytes, and a snapshot of it is written every 50
    // entries: without checkpoints the log would hold all 40 snapshots (over 5 MiB). With
    // them, it holds about one snapshot, the entries after it, and the writes since.
    let wal = dir_bytes(&c.cfgs[leader].data_dir.join("wal"));
    assert!(
        wal < 1 << 20,
        "the leader's log was checkpointed down, but holds {wal} bytes"
    );
    assert!(c.log(leader).contains("checkpointed the write-ahead log"));

    // A full restart comes back from the checkpoints and snapshots.
    for i in 0..3 {
        assert!(c.stop(i).success());
    }
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    let all = kv
        .range(pb::RangeRequest {
            key: b"k".to_vec().into(),
            range_end: b"l".to_vec().into(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.count, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_leadership_to_the_named_member() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let target = (leader + 1) % 3;
    let target_id = ekmat_node::NodeConfig::member_id(c.cfgs[target].id);
    let mut m =
        pb::maintenance_client::MaintenanceClient::new(channel(&c.endpoint(leader)).await.unwrap());
    m.move_leader(pb::MoveLeaderRequest { target_id })
        .await
        .unwrap();
    // The old leader answers once it has stepped down; the target's election is one
    // round of votes away.
    let started = Instant::now();
    while support::status(&c.endpoint(target)).await.map(|s| s.leader) != Ok(target_id) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "n{target} did not take over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // etcd's answers for a member that does not lead, and for an unknown transferee.
    let mut follower =
        pb::maintenance_client::MaintenanceClient::new(channel(&c.endpoint(leader)).await.unwrap());
    let err = follower
        .move_leader(pb::MoveLeaderRequest { target_id })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: not leader");
    let mut new_leader =
        pb::maintenance_client::MaintenanceClient::new(channel(&c.endpoint(target)).await.unwrap());
    let err = new_leader
        .move_leader(pb::MoveLeaderRequest { target_id: 42 })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: bad leader transferee");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_reports_the_same_hash_kv_for_a_revision() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    let mut revision = 0;
    for i in 0..50 {
        revision = put_revision(&mut kv, format!("h{}", i % 7), format!("v{i}")).await;
    }
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut m =
            pb::maintenance_client::MaintenanceClient::new(channel(&c.endpoint(i)).await.unwrap());
        let started = Instant::now();
        let hash = loop {
            match m.hash_kv(pb::HashKvRequest { revision }).await {
                Ok(r) => break r.into_inner().hash,
                // A follower that has not applied `revision` yet calls it a future one.
                Err(e) if e.message().contains("future revision") => {
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "n{i} never reached {revision}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("n{i}: {e}"),
            }
        };
        hashes.push(hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let mut m =
        pb::maintenance_client::MaintenanceClient::new(channel(&c.endpoint(leader)).await.unwrap());
    let err = m
        .hash_kv(pb::HashKvRequest {
            revision: revision + 100,
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("required revision is a future revision"),
        "{err}"
    );
}

/// Maintenance.Hash of member `i` once it has applied `revision` (it hashes the whole
/// state, so members agree only at the same point).
async fn hash_at(c: &Cluster, i: usize, revision: i64) -> u32 {
    let mut m =
        pb::maintenance_client::MaintenanceClient::new(channel(&c.endpoint(i)).await.unwrap());
    let started = Instant::now();
    loop {
        let r = m.hash(pb::HashRequest {}).await.unwrap().into_inner();
        if r.header.unwrap().revision == revision {
            return r.hash;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "n{i} never reached {revision}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_member_reports_the_same_whole_state_hash_and_a_write_changes_it() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    let mut revision = 0;
    for i in 0..20 {
        revision = put_revision(&mut kv, format!("w{}", i % 3), format!("v{i}")).await;
    }
    let mut hashes = Vec::new();
    for i in 0..3 {
        hashes.push(hash_at(&c, i, revision).await);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let after = put_revision(&mut kv, "w2".into(), "v20".into()).await;
    assert_ne!(hash_at(&c, leader, after).await, hashes[0]);
}

/// A serializable read of `key` at `revision` from member `i`: its error message, if any.
async fn read_at(c: &Cluster, i: usize, key: &str, revision: i64) -> Result<(), String> {
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(i)).await.unwrap());
    let range = pb::RangeRequest {
        key: key.as_bytes().to_vec().into(),
        revision,
        serializable: true,
        ..Default::default()
    };
    kv.range(range)
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_string())
}

/// The revision member `i` has compacted its history to.
async fn compact_revision(c: &Cluster, i: usize) -> i64 {
    let mut m =
        pb::maintenance_client::MaintenanceClient::new(channel(&c.endpoint(i)).await.unwrap());
    let hash = m.hash_kv(pb::HashKvRequest { revision: 0 }).await.unwrap();
    hash.into_inner().compact_revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_the_retention_of_history_on_every_member() {
    // etcd's --auto-compaction-mode periodic --auto-compaction-retention 2s.
    let retention = Duration::from_secs(2);
    let c = Cluster::start_with(3, |cfg| cfg.auto_compaction_retention = "2s".into());
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut kv = pb::kv_client::KvClient::new(channel(&c.endpoint(leader)).await.unwrap());
    // Puts go on, one every 50 ms, each with the time it was sent, until the first
    // one's revision is compacted away.
    let started = Instant::now();
    let mut sent = Vec::new();
    let first = put_revision(&mut kv, "k".into(), "0".into()).await;
    sent.push((started, first));
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    while read_at(&c, leader, "k", first).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "revision {first} still readable after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let at = Instant::now();
        let rev = put_revision(&mut kv, "k".into(), sent.len().to_string()).await;
        sent.push((at, rev));
    }
    let seen = Instant::now();
    // What was compacted was written at least the retention before: the revision
    // compacted to came from a put sent before `seen - retention`.
    let to = compact_revision(&c, leader).await;
    assert!(to > first, "compacted to {to}");
    let &(at, _) = sent
        .iter()
        .find(|&&(_, rev)| rev == to)
        .expect("every revision past the first is one of the puts");
    let age = seen - at;
    assert!(
        age >= retention,
        "revision {to} compacted {age:?} after it was sent"
    );
    // The compaction went through the log: every member did it.
    let mut proposed = 0.0;
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match read_at(&c, i, "k", first).await {
                Err(e) if e == compacted => break,
                other => assert!(Instant::now() < deadline, "member {i}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = support::scrape(c.cfgs[i].members[i].metrics.unwrap());
        proposed += support::metric(&text, "ekmat_auto_compactions_total").unwrap_or(0.0);
    }
    assert!(proposed >= 1.0, "no member counts a compaction");
}
