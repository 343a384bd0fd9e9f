//! PBFT as a real cluster: four `ekmat node` processes over TCP, each with its own
//! signing key in its data directory and every public key in the shared configuration,
//! serving the etcd v3 API. A backup is killed and the cluster keeps serving; it
//! restarts and catches up; the primary is killed and, after a view change, the cluster
//! serves again; the old primary restarts and catches up. Every acknowledged write is
//! then readable at every member.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_node::NodeConfig;
use support::{Cluster, backup, channel, ekmat, http_get, metric, restore, scrape, status};

/// Member `id`'s data directory, beside `cfg`'s own (the support cluster's layout).
fn dir_of(cfg: &NodeConfig, id: u32) -> std::path::PathBuf {
    cfg.data_dir
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("n{id}"))
}

/// A 4-member PBFT cluster whose keys are generated into the data directories first,
/// as `ekmat up --protocol pbft` does.
fn start() -> Cluster {
    start_with(|_| {})
}

fn start_with(tweak: impl Fn(&mut NodeConfig)) -> Cluster {
    let mut c = configure(tweak);
    for i in 0..4 {
        c.spawn(i);
    }
    c
}

/// [`start_with`] without starting anyone.
fn configure(tweak: impl Fn(&mut NodeConfig)) -> Cluster {
    Cluster::configure(4, |cfg| {
        tweak(cfg);
        cfg.protocol = "pbft".into();
        let dirs: Vec<_> = cfg.members.iter().map(|m| dir_of(cfg, m.id)).collect();
        for (m, dir) in cfg.members.iter_mut().zip(dirs) {
            let (key, _) = ekmat_node::keys::load_or_generate(&dir).unwrap();
            m.public_key = Some(ekmat_node::keys::public_key_hex(&key.verifying_key()));
        }
    })
}

async fn kv(c: &Cluster, i: usize) -> Option<pb::kv_client::KvClient<tonic::transport::Channel>> {
    channel(&c.endpoint(i))
        .await
        .ok()
        .map(pb::kv_client::KvClient::new)
}

/// A KV client of member `i`, which may not serve yet: the primary answering is all
/// `leader` waits for, and a member still starting refuses connections.
async fn kv_when_up(c: &Cluster, i: usize) -> pb::kv_client::KvClient<tonic::transport::Channel> {
    let started = Instant::now();
    loop {
        if let Some(client) = kv(c, i).await {
            return client;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "n{i} accepts no connection; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Put through member `i`, retrying until it is acknowledged (or `within` passes).
async fn put(c: &Cluster, i: usize, key: &str, value: &str, within: Duration) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        if let Some(mut client) = kv(c, i).await {
            let req = pb::PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            };
            match client.put(req).await {
                Ok(_) => return,
                Err(s) => last = s.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "put {key} at n{i} not acknowledged within {within:?} ({last}); logs:\n{}",
        c.logs()
    );
}

/// A linearizable (or serializable) read of `key` at member `i`.
async fn get(c: &Cluster, i: usize, key: &str, serializable: bool) -> Option<String> {
    let mut client = kv(c, i).await.expect("member reachable");
    let req = pb::RangeRequest {
        key: key.as_bytes().to_vec().into(),
        serializable,
        ..Default::default()
    };
    let r = client.range(req).await.expect("read answered").into_inner();
    r.kvs
        .first()
        .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
}

/// Wait until member `i` has applied everything member `of` has.
async fn caught_up(c: &Cluster, i: usize, of: usize, within: Duration) {
    let started = Instant::now();
    loop {
        let target = status(&c.endpoint(of)).await.map(|s| s.raft_applied_index);
        let mine = status(&c.endpoint(i)).await.map(|s| s.raft_applied_index);
        if let (Ok(t), Ok(m)) = (target, mine)
            && m >= t
            && t > 0
        {
            return;
        }
        assert!(
            started.elapsed() < within,
            "n{i} did not catch up with n{of} within {within:?}; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbft_cluster_survives_a_backup_and_a_primary_crash_and_catches_up() {
    let mut c = start();
    let primary = c.leader(Duration::from_secs(20)).await;
    assert_eq!(primary, 0, "view 0's primary is member 0");
    let s = status(&c.endpoint(0)).await.unwrap();
    assert_eq!(s.raft_term, 0, "the term is the view");

    // Writes at a backup and at the primary; linearizable reads anywhere.
    put(&c, 1, "a", "1", Duration::from_secs(10)).await;
    put(&c, 0, "b", "2", Duration::from_secs(10)).await;
    assert_eq!(get(&c, 2, "a", false).await.as_deref(), Some("1"));
    assert_eq!(get(&c, 3, "b", false).await.as_deref(), Some("2"));

    // Reconfiguration and leadership transfer are refused with a reason.
    let ch = channel(&c.endpoint(0)).await.unwrap();
    let err = pb::maintenance_client::MaintenanceClient::new(ch.clone())
        .move_leader(pb::MoveLeaderRequest { target_id: 2 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    assert!(err.message().contains("pbft"), "{err}");
    let err = pb::cluster_client::ClusterClient::new(ch)
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            is_learner: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    assert!(err.message().contains("fixed membership"), "{err}");

    // A backup crashes: 3 of 4 still make a quorum of 2f+1.
    c.kill9(3);
    for k in 0..10 {
        put(
            &c,
            k % 3,
            &format!("k{k}"),
            &format!("v{k}"),
            Duration::from_secs(10),
        )
        .await;
    }
    assert_eq!(get(&c, 1, "k9", false).await.as_deref(), Some("v9"));

    // It restarts from its disk and catches up by state transfer.
    c.spawn(3);
    caught_up(&c, 3, 1, Duration::from_secs(20)).await;
    assert_eq!(get(&c, 3, "k9", true).await.as_deref(), Some("v9"));

    // The primary crashes: a view change installs member 1, and writes go on.
    c.kill9(0);
    let started = Instant::now();
    put(&c, 2, "after-primary", "yes", Duration::from_secs(20)).await;
    let took = started.elapsed();
    let new_primary = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new_primary, 0);
    let s = status(&c.endpoint(new_primary)).await.unwrap();
    assert!(
        s.raft_term >= 1,
        "a view change happened: view {}",
        s.raft_term
    );
    for k in 10..20 {
        put(
            &c,
            1 + k % 3,
            &format!("k{k}"),
            &format!("v{k}"),
            Duration::from_secs(10),
        )
        .await;
    }
    eprintln!("first write after the primary's crash took {took:?}");

    // The old primary restarts in its old view, learns the new one, and catches up.
    c.spawn(0);
    caught_up(&c, 0, new_primary, Duration::from_secs(20)).await;
    put(&c, 0, "from-old-primary", "ok", Duration::from_secs(10)).await;
    for i in 0..4 {
        assert_eq!(
            get(&c, i, "from-old-primary", false).await.as_deref(),
            Some("ok")
        );
        for k in 0..20 {
            let want = format!("v{k}");
            assert_eq!(
                get(&c, i, &format!("k{k}"), true).await.as_deref(),
                Some(want.as_str()),
                "n{i} lost k{k}"
            );
        }
    }
}

/// The executed log is cut behind snapshots (every 256 bytes of puts here, about ten
/// puts), so a backup that missed more than that cannot be sent the batches: it
/// installs a snapshot that f+1 members vouch for, then the batches after it. A member
/// restarted later recovers from its own snapshot on disk.
/// A member configured with another snapshot threshold would vouch for snapshots no
/// one else takes: its peers refuse it when it connects, and both sides' logs name the
/// setting and the two values. The three members that agree go on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_configured_differently_is_refused_by_name_and_the_rest_go_on() {
    let c = start_with(|cfg| {
        if cfg.id == 3 {
            cfg.pbft_snapshot_bytes = 4096;
        }
    });
    put(&c, 0, "k", "v", Duration::from_secs(30)).await;
    let named = "pbft_snapshot_bytes: \"4096\" here";
    let started = Instant::now();
    while !(c.log(3).contains(named) && c.log(0).contains("at the peer")) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no member named the differing setting; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.log(0)
            .contains("refused a peer that runs with other cluster-wide settings")
    );
    assert_eq!(get(&c, 0, "k", false).await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_behind_every_held_batch_catches_up_from_a_snapshot() {
    let mut c = start_with(|cfg| cfg.pbft_snapshot_bytes = 256);
    c.leader(Duration::from_secs(20)).await;
    c.kill9(3);
    // Until every live member has snapshotted (and so dropped the batches before): a
    // slow machine packs more puts into each batch, so 80 puts may not reach the
    // checkpoint a snapshot waits for.
    let snapshotted = |i: usize| {
        let metrics = scrape(c.cfgs[i].me().metrics.expect("metrics address"));
        metric(
            &metrics,
            "ekmat_protocol_events_total{name=\"snapshot-taken\"}",
        )
        .is_some_and(|n| n >= 1.0)
    };
    let started = Instant::now();
    let mut k = 0;
    while k < 80 || !(0..3).all(snapshotted) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no snapshot after {k} puts\n{}",
            c.logs()
        );
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        put(&c, k % 3, &key, &value, Duration::from_secs(10)).await;
        k += 1;
    }
    c.spawn(3);
    caught_up(&c, 3, 1, Duration::from_secs(30)).await;
    let metrics = scrape(c.cfgs[3].me().metrics.expect("metrics address"));
    let installed = metric(
        &metrics,
        "ekmat_protocol_events_total{name=\"snapshot-installed\"}",
    );
    assert!(
        installed.is_some_and(|n| n >= 1.0),
        "n3 caught up without a snapshot: {installed:?}"
    );
    // The primary restarts from its own snapshot and the batches after it.
    c.kill9(0);
    c.spawn(0);
    put(&c, 1, "last", "yes", Duration::from_secs(20)).await;
    caught_up(&c, 0, 1, Duration::from_secs(30)).await;
    for i in 0..4 {
        for k in 0..80 {
            let want = format!("v{k}");
            assert_eq!(
                get(&c, i, &format!("k{k}"), false).await.as_deref(),
                Some(want.as_str()),
                "n{i} lost k{k}"
            );
        }
        assert_eq!(get(&c, i, "last", false).await.as_deref(), Some("yes"));
    }
}

/// A request larger than a batch (512 KiB of requests for four members: a view change
/// carries a window of batches, and must fit one frame) is refused with etcd's "request
/// is too large"; one within it is stored and read back at another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_larger_than_a_batch_is_refused_as_too_large() {
    let c = start();
    c.leader(Duration::from_secs(20)).await;
    let mut client = kv_when_up(&c, 2).await;
    let put = |len: usize| pb::PutRequest {
        key: b"big".to_vec().into(),
        value: vec![b'v'; len].into(),
        ..Default::default()
    };
    let refused = client.put(put(600 << 10)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: request is too large");
    let stored = 400 << 10;
    client
        .put(put(stored))
        .await
        .expect("a value within the bound");
    let mut other = kv_when_up(&c, 0).await;
    let got = other
        .range(pb::RangeRequest {
            key: b"big".to_vec().into(),
            ..Default::default()
        })
        .await
        .expect("read back")
        .into_inner();
    assert_eq!(got.kvs[0].value.len(), stored);
}

/// Any member serves a committed batch's certificate; `ekmat pbft verify` checks it
/// with the configuration's public keys alone (seed 004's client that verifies quorum
/// certificates), and refuses it once a signature or a bundle digest is altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_certificate_from_any_member_verifies_with_the_public_keys_alone() {
    let c = start();
    c.leader(Duration::from_secs(20)).await;
    put(&c, 1, "audited", "yes", Duration::from_secs(10)).await;
    caught_up(&c, 3, 1, Duration::from_secs(10)).await;
    let metrics_at = |i: usize| c.cfgs[i].me().metrics.expect("metrics address");
    let response = http_get(metrics_at(3), "/pbft/certificate/latest");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .expect("a body")
        .to_string();
    let verify = |cert: &str| {
        let path = c.dir.path().join("cert.json");
        std::fs::write(&path, cert).unwrap();
        let out = ekmat()
            .args(["pbft", "verify"])
            .arg(&path)
            .arg("--config")
            .arg(c.config_path(0))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify(&body);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("certificate holds"), "{out}");
    // One signature changed; one bundle digest changed.
    let mut cert: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sig = cert["commits"][0]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    cert["commits"][0]["signature"] = format!("{flipped}{}", &sig[1..]).into();
    let (code, out) = verify(&cert.to_string());
    assert_eq!(code, Some(1), "{out}");
    let mut cert: serde_json::Value = serde_json::from_str(&body).unwrap();
    cert["bundles"][0]["digest"] = "00".repeat(32).into();
    let (code, out) = verify(&cert.to_string());
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not those of the certified batch"), "{out}");
    // A sequence number not executed yet, and one that is not a number.
    let missing = http_get(metrics_at(0), "/pbft/certificate/1000000");
    assert!(missing.starts_with("HTTP/1.0 404"), "{missing}");
    let bad = http_get(metrics_at(0), "/pbft/certificate/x");
    assert!(bad.starts_with("HTTP/1.0 400"), "{bad}");
}

#[test]
fn a_node_whose_key_does_not_match_the_configuration_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let members: Vec<ekmat_node::Member> = (0..4u32)
        .map(|i| ekmat_node::Member {
            id: i,
            name: format!("n{i}"),
            peer: addr(support::free_port()),
            client: addr(support::free_port()),
            metrics: None,
            joined: false,
            // Keys nobody holds the secret of.
            public_key: Some(ekmat_node::keys::public_key_hex(
                &ekmat_node::keys::SigningKey::from_bytes(&[i as u8 + 1; 32]).verifying_key(),
            )),
        })
        .collect();
    let mut cfg = NodeConfig::new("test", 2, dir.path().join("n2"), members);
    cfg.protocol = "pbft".into();
    let path = dir.path().join("n2.toml");
    support::write_config(&path, &cfg);
    let run = || {
        support::ekmat()
            .args(["node", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("generated one"), "{err}");
    assert!(err.contains("put public_key"), "{err}");
    let key_file = dir.path().join("n2").join(ekmat_node::keys::KEY_FILE);
    assert!(key_file.exists(), "the new key is kept for the operator");

    // Once the configuration names the generated key, the same data directory works
    // until the key file is damaged.
    std::fs::write(&key_file, "garbage\n").unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is corrupt"), "{err}");
}

/// A client that signs its requests (`ekmat pbft put|get`): its result is believed once
/// f+1 members return it alike, each with a commit proof checked against the public
/// keys; no member can make a request in its name, and one number executes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_client_is_believed_on_f_plus_1_matching_results_and_cannot_be_forged() {
    use ekmat_api::ekmatpb::{self, signed_requests_client::SignedRequestsClient};
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("client-9.key");
    let (entry, registered) = client_key(&key_file, &[]);
    assert!(entry.starts_with("[[pbft_client]]\nid = 9\n"), "{entry}");
    let mut c = start_with(|cfg| cfg.pbft_clients = vec![registered.clone()]);
    c.leader(Duration::from_secs(20)).await;
    let config = c.config_path(0);
    let signed = |args: &[&str]| signed_as_9(&config, &key_file, args);

    let (code, out, err) = signed(&["put", "signed", "yes", "--seq", "10"]);
    assert_eq!(code, Some(0), "{out}{err}{}", c.logs());
    assert!(out.starts_with("OK (revision"), "{out}");
    assert!(err.contains("commit proof verified"), "{err}");
    assert_eq!(get(&c, 2, "signed", false).await.as_deref(), Some("yes"));
    let (code, out, err) = signed(&["get", "signed", "--seq", "11"]);
    assert_eq!((code, out.as_str()), (Some(0), "signed\nyes\n"), "{err}");

    // Sent again under its number it executes once; another operation under a used
    // number never does.
    let revision = |out: &str| out.trim().to_string();
    let (_, first, _) = signed(&["put", "once", "a", "--seq", "12"]);
    let (code, again, _) = signed(&["put", "once", "a", "--seq", "12"]);
    assert_eq!((code, revision(&again)), (Some(0), revision(&first)));
    let (code, _, err) = signed(&["put", "once", "b", "--seq", "12"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("signed another operation"), "{err}");
    assert_eq!(get(&c, 1, "once", false).await.as_deref(), Some("a"));

    // A member cannot sign for the client: another key, or an unregistered id, is
    // refused before it is ordered; so is the client's own signature for another
    // cluster (one registering the same key), replayed here.
    let other = ekmat_node::keys::generate_at(&keys.path().join("other.key")).unwrap();
    let own = ekmat_node::keys::load_at(&key_file).unwrap();
    let here = ekmat_pbft::client::cluster_id(&c.cfgs[0].public_keys().unwrap());
    let forged = |client: u64, key: &ekmat_pbft::crypto::SigningKey, cluster| {
        let command = ekmat_kv::Command::Put(ekmat_kv::PutRequest::new("signed", "forged"));
        let op = ekmat_kv::Envelope::wrap(0, &command);
        let id = ekmat_core::RequestId { client, seq: 13 };
        let r = ekmat_pbft::client::sign_request(key, &cluster, id, Some(op.clone()));
        ekmatpb::SignedRequest {
            client,
            seq: 13,
            op: op.to_vec(),
            signature: r.sig.unwrap().0.to_vec(),
            wait_ms: 500,
        }
    };
    let mut rpc = SignedRequestsClient::new(channel(&c.endpoint(1)).await.unwrap());
    let refused = rpc.submit(forged(9, &other, here)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let refused = rpc.submit(forged(10, &other, here)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    let elsewhere = [7; 32];
    let refused = rpc.submit(forged(9, &own, elsewhere)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    assert_eq!(get(&c, 3, "signed", false).await.as_deref(), Some("yes"));

    // With a member down, even the one it is handed to, f+1 others still answer.
    c.kill9(3);
    let (code, out, err) = signed(&["put", "signed", "still", "--seq", "14", "--via", "3"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("member 3"), "{err}");
    assert_eq!(get(&c, 0, "signed", false).await.as_deref(), Some("still"));
}

/// A registered client bound to a user (`user` in its `[[pbft_client]]` entry, which
/// `ekmat pbft client-key --user` prints) has that user's permissions once auth is on,
/// decided where its request executes: every member alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_client_bound_to_a_user_has_its_permissions_once_auth_is_on() {
    if !support::etcdctl_available() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("svc.key");
    let (entry, registered) = client_key(&key_file, &["--user", "svc"]);
    assert!(entry.ends_with("\nuser = \"svc\"\n"), "{entry}");
    assert_eq!(registered.user.as_deref(), Some("svc"), "{entry}");
    let c = start_with(|cfg| cfg.pbft_clients = vec![registered.clone()]);
    c.leader(Duration::from_secs(20)).await;
    let config = c.config_path(0);
    let signed = |args: &[&str]| {
        let (code, out, _) = signed_as_9(&config, &key_file, args);
        (code, out)
    };
    assert_eq!(signed(&["put", "other", "1"]).0, Some(0), "auth is off");

    let endpoint = c.endpoint(0);
    let root = ["--user", "root:rootpw"];
    let steps: [&[&str]; 6] = [
        &["user", "add", "root:rootpw"],
        &["user", "add", "svc:svcpw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "app",
            "readwrite",
            "app/",
        ],
        &["user", "grant-role", "svc", "app"],
        &["auth", "enable"],
    ];
    for step in steps {
        let (ok, out, err) = support::etcdctl(&endpoint, step, None);
        assert!(ok, "{step:?}: {out}{err}");
    }
    let (code, out) = signed(&["put", "app/x", "1"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = signed(&["put", "other", "2"]);
    assert_eq!(
        (code, out.trim()),
        (Some(1), "refused: etcdserver: permission denied")
    );
    let (ok, out, _) = support::etcdctl(&endpoint, &[&root[..], &["get", "other"]].concat(), None);
    assert!(ok && out == "other\n1\n", "{out}");
    // Its rights follow the user's roles, as they stand where the request executes.
    let revoke = ["role", "revoke-permission", "--prefix", "app", "app/"];
    assert!(support::etcdctl(&endpoint, &[&root[..], &revoke].concat(), None).0);
    let (code, out) = signed(&["put", "app/y", "1"]);
    assert_eq!(
        (code, out.trim()),
        (Some(1), "refused: etcdserver: permission denied")
    );
}

/// `ekmat pbft client-key --id 9 --out KEY_FILE` with `extra` flags: the entry it
/// printed, and that entry as a configuration holds it (public key and any user).
fn client_key(key_file: &Path, extra: &[&str]) -> (String, ekmat_node::config::PbftClient) {
    let made = ekmat()
        .args(["pbft", "client-key", "--id", "9"])
        .args(extra)
        .arg("--out")
        .arg(key_file)
        .output()
        .unwrap();
    let entry = String::from_utf8_lossy(&made.stdout).into_owned();
    let field = |name: &str| {
        entry
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
            .and_then(|rest| rest.strip_suffix('"'))
            .map(String::from)
    };
    let registered = ekmat_node::config::PbftClient {
        id: 9,
        public_key: field("public_key").expect("a public key line"),
        user: field("user"),
    };
    (entry, registered)
}

/// `ekmat pbft ARGS` as client 9 with `key_file`: its exit code, stdout and stderr.
fn signed_as_9(config: &Path, key_file: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = ekmat()
        .arg("pbft")
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--client", "9", "--key"])
        .arg(key_file)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A member holds at most `max_pending_writes` of its clients' operations, signed
/// requests too: past it one is refused at once with etcd's "too many requests" and
/// never ordered; the ones taken execute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_past_the_admission_bound_are_refused_at_once() {
    use ekmat_api::ekmatpb::signed_requests_client::SignedRequestsClient;
    const CLIENTS: u64 = 16;
    let keys = tempfile::tempdir().unwrap();
    let (clients, registered) = registered_clients(keys.path(), CLIENTS);
    let c = start_with(|cfg| {
        cfg.pbft_clients = registered.clone();
        cfg.max_pending_writes = 2;
    });
    c.leader(Duration::from_secs(20)).await;
    let cluster = ekmat_pbft::client::cluster_id(&c.cfgs[0].public_keys().unwrap());
    let rpc = SignedRequestsClient::new(channel(&c.endpoint(1)).await.unwrap());
    let mut calls = tokio::task::JoinSet::new();
    for (client, key) in (1..=CLIENTS).zip(&clients) {
        let request = signed_put(key, &cluster, client, 10_000);
        let mut rpc = rpc.clone();
        calls.spawn(async move { (client, rpc.submit(request).await) });
    }
    let (mut taken, mut refused) = (Vec::new(), Vec::new());
    while let Some(joined) = calls.join_next().await {
        match joined.expect("submit task") {
            (client, Ok(_)) => taken.push(client),
            (client, Err(s)) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert_eq!(s.message(), "etcdserver: too many requests");
                refused.push(client);
            }
        }
    }
    assert!(!taken.is_empty() && !refused.is_empty(), "taken {taken:?}");
    for client in taken {
        let key = format!("s{client}");
        assert_eq!(get(&c, 2, &key, false).await.as_deref(), Some("v"), "{key}");
    }
    for client in refused {
        assert_eq!(get(&c, 2, &format!("s{client}"), false).await, None);
    }
}

/// Keys for clients 1..=`count`, written into `dir`, and their registry entries.
fn registered_clients(
    dir: &std::path::Path,
    count: u64,
) -> (
    Vec<ekmat_node::keys::SigningKey>,
    Vec<ekmat_node::config::PbftClient>,
) {
    let keys: Vec<_> = (1..=count)
        .map(|id| ekmat_node::keys::generate_at(&dir.join(format!("client-{id}.key"))).unwrap())
        .collect();
    let registered = (1..=count)
        .zip(&keys)
        .map(|(id, key)| ekmat_node::config::PbftClient {
            id,
            public_key: ekmat_node::keys::public_key_hex(&key.verifying_key()),
            user: None,
        })
        .collect();
    (keys, registered)
}

/// Client `client`'s request 1, signed with `key`: put `s{client}` = `v`.
fn signed_put(
    key: &ekmat_node::keys::SigningKey,
    cluster: &ekmat_pbft::client::ClusterId,
    client: u64,
    wait_ms: u64,
) -> ekmat_api::ekmatpb::SignedRequest {
    let command = ekmat_kv::Command::Put(ekmat_kv::PutRequest::new(format!("s{client}"), "v"));
    let op = ekmat_kv::Envelope::wrap(0, &command);
    let id = ekmat_core::RequestId { client, seq: 1 };
    let signed = ekmat_pbft::client::sign_request(key, cluster, id, Some(op.clone()));
    ekmat_api::ekmatpb::SignedRequest {
        client,
        seq: 1,
        op: op.to_vec(),
        signature: signed.sig.unwrap().0.to_vec(),
        wait_ms,
    }
}

/// A signed request keeps its place under admission control until it executes, not
/// only while its caller waits: a caller that gives up does not make room for more
/// work while its request may still be ordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_keeps_its_admission_slot_until_it_executes() {
    use ekmat_api::ekmatpb::signed_requests_client::SignedRequestsClient;
    let keys = tempfile::tempdir().unwrap();
    let (clients, registered) = registered_clients(keys.path(), 2);
    let c = start_with(|cfg| {
        cfg.pbft_clients = registered.clone();
        cfg.max_pending_writes = 1;
    });
    c.leader(Duration::from_secs(20)).await;
    let cluster = ekmat_pbft::client::cluster_id(&c.cfgs[0].public_keys().unwrap());
    let mut rpc = SignedRequestsClient::new(channel(&c.endpoint(0)).await.unwrap());
    // Two of four members stopped: nothing can be ordered.
    c.pause(2);
    c.pause(3);
    let first = rpc.submit(signed_put(&clients[0], &cluster, 1, 300)).await;
    assert_eq!(first.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    let second = rpc.submit(signed_put(&clients[1], &cluster, 2, 300)).await;
    let refused = second.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // Once the first executes, its place is free again.
    c.resume(2);
    c.resume(3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while get(&c, 0, "s1", true).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = rpc
        .submit(signed_put(&clients[1], &cluster, 2, 10_000))
        .await;
    assert!(again.is_ok(), "{again:?}");
    assert_eq!(get(&c, 0, "s2", false).await.as_deref(), Some("v"));
}

/// `ekmat gateway`: etcd's clients talk to a process outside consensus, which signs
/// each request as one of its registered clients and answers once f+1 members agree.
/// Writes through it are every member's; a member down does not stop it; a request
/// the members refuse is refused with their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_clients_through_a_gateway_process_get_answers_f_plus_1_members_agree_on() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("gateway.key");
    let key = ekmat_node::keys::generate_at(&key_file).unwrap();
    let public_key = ekmat_node::keys::public_key_hex(&key.verifying_key());
    let registered: Vec<_> = (101..=104)
        .map(|id| ekmat_node::config::PbftClient {
            id,
            public_key: public_key.clone(),
            user: None,
        })
        .collect();
    let mut c = start_with(|cfg| cfg.pbft_clients = registered.clone());
    c.leader(Duration::from_secs(20)).await;
    let listen = format!("127.0.0.1:{}", support::free_port());
    let gateway = ekmat()
        .args([
            "gateway",
            "--first-client",
            "101",
            "--clients",
            "4",
            "--listen",
            &listen,
        ])
        .arg("--config")
        .arg(c.config_path(0))
        .arg("--key")
        .arg(&key_file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _gateway = support::Stopped(gateway);
    let url = format!("http://{listen}");
    let mut kv = None;
    for _ in 0..100 {
        if let Ok(ch) = channel(&url).await {
            kv = Some(pb::kv_client::KvClient::new(ch));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut kv = kv.expect("the gateway listens");
    let put = |key: &str, value: &str| pb::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    };
    // Concurrent puts (more than its four client ids) all land.
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..12 {
        let mut kv = kv.clone();
        let p = put(&format!("gw{i}"), "x");
        puts.spawn(async move { kv.put(p).await.map(|_| ()) });
    }
    while let Some(done) = puts.join_next().await {
        done.unwrap().expect("a put through the gateway");
    }
    for i in 0..12 {
        assert_eq!(
            get(&c, i % 4, &format!("gw{i}"), false).await.as_deref(),
            Some("x")
        );
    }
    let range = |key: &str| pb::RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let read = kv.range(range("gw3")).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].value, &b"x"[..]);
    assert_eq!(read.header.unwrap().cluster_id, c.cfgs[0].cluster_id());

    // One member down, even the one a request is handed to: answers go on.
    c.kill9(2);
    for i in 0..4 {
        kv.put(put("after", &i.to_string()))
            .await
            .expect("put with n2 down");
    }
    assert_eq!(get(&c, 0, "after", false).await.as_deref(), Some("3"));
    // A request the members refuse: their reason comes back.
    let too_big = put("big", &"v".repeat(2 * 1024 * 1024));
    let refused = kv.put(too_big).await.unwrap_err();
    assert!(refused.message().contains("too large"), "{refused}");
}

/// A member that lies: it answers every signed request at once with a result of its
/// own making (and no proof).
struct Liar;

#[tonic::async_trait]
impl ekmat_api::ekmatpb::signed_requests_server::SignedRequests for Liar {
    async fn submit(
        &self,
        r: tonic::Request<ekmat_api::ekmatpb::SignedRequest>,
    ) -> Result<tonic::Response<ekmat_api::ekmatpb::Outcome>, tonic::Status> {
        self.await_outcome(r).await
    }

    async fn await_outcome(
        &self,
        _: tonic::Request<ekmat_api::ekmatpb::SignedRequest>,
    ) -> Result<tonic::Response<ekmat_api::ekmatpb::Outcome>, tonic::Status> {
        let made_up: Result<ekmat_kv::Response, ekmat_kv::KvError> =
            Ok(ekmat_kv::Response::Put(ekmat_kv::PutResponse {
                header: ekmat_kv::ResponseHeader { revision: 999 },
                prev_kv: None,
            }));
        Ok(tonic::Response::new(ekmat_api::ekmatpb::Outcome {
            member: 3,
            result: postcard::to_stdvec(&made_up).unwrap(),
            batch_seq: 0,
            proof_json: String::new(),
        }))
    }
}

/// One member's word is not enough: a client handed its request to a member that
/// answers at once with a made-up result, and it waited for f+1 matching results (from
/// the honest members, once it sent the request to them too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_client_does_not_believe_one_lying_member() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("client.key");
    let key = ekmat_node::keys::generate_at(&key_file).unwrap();
    let public_key = ekmat_node::keys::public_key_hex(&key.verifying_key());
    let registered = ekmat_node::config::PbftClient {
        id: 5,
        public_key,
        user: None,
    };
    let c = start_with(|cfg| cfg.pbft_clients = vec![registered.clone()]);
    c.leader(Duration::from_secs(20)).await;
    // The client's view of the cluster: member 3's client address is the liar's.
    let liar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = c.cfgs[0].clone();
    cfg.members[3].client = liar.local_addr().unwrap();
    let config = keys.path().join("client-view.toml");
    support::write_config(&config, &cfg);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ekmat_api::ekmatpb::signed_requests_server::SignedRequestsServer::new(Liar),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(liar)),
    );
    let out = tokio::task::spawn_blocking(move || {
        ekmat()
            .args([
                "pbft", "put", "truth", "told", "--client", "5", "--via", "3",
            ])
            .args(["--timeout", "4s", "--seq", "1"])
            .arg("--config")
            .arg(&config)
            .arg("--key")
            .arg(&key_file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("999"), "believed the liar: {stdout}");
    assert!(
        stderr.contains("1 member(s) answered a different result"),
        "{stderr}"
    );
    assert_eq!(get(&c, 0, "truth", false).await.as_deref(), Some("told"));
}

/// Retry `attempt` until it succeeds or `within` passes (the cluster may be changing
/// views), panicking with the last error and the logs.
async fn eventually<T, F, Fut>(c: &Cluster, within: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) if started.elapsed() > within => {
                panic!(
                    "{what}: not done within {within:?} ({e}); logs:\n{}",
                    c.logs()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A member whose wall clock runs an hour ahead — view 0's primary, and the member a
/// put on a lease goes through — expires no lease early. Its own stamp on the put is
/// not the store's clock (the batch's agreed time is), and as primary it proposes the
/// hour-ahead time, which the backups refuse until the view changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_clock_runs_an_hour_ahead_expires_no_lease_early() {
    let mut c = configure(|_| {});
    let fault = ekmat_node::query::CLOCK_FAULT_ENV;
    c.spawn_with_env(0, &[(fault, "3600000")]);
    for i in 1..4 {
        c.spawn(i);
    }
    let within = Duration::from_secs(30);
    let lease_at = |i: usize| {
        let endpoint = c.endpoint(i);
        async move {
            let ch = channel(&endpoint).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(pb::lease_client::LeaseClient::new(ch))
        }
    };
    let id = eventually(&c, within, "lease grant at n2", || async {
        let mut lease = lease_at(2).await?;
        let req = pb::LeaseGrantRequest { ttl: 60, id: 0 };
        let g = lease.lease_grant(req).await.map_err(|e| e.to_string())?;
        Ok(g.into_inner().id)
    })
    .await;
    eventually(&c, within, "put on the lease at n0", || async {
        let mut client = kv(&c, 0).await.ok_or("n0 unreachable")?;
        let req = pb::PutRequest {
            key: "held".into(),
            value: "by a live lease".into(),
            lease: id,
            ..Default::default()
        };
        client.put(req).await.map_err(|e| e.to_string())?;
        Ok(())
    })
    .await;
    // n0 also proposes ticks every half second, its clock being past the deadline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in [1, 2, 3] {
        assert_eq!(
            get(&c, i, "held", false).await.as_deref(),
            Some("by a live lease"),
            "n{i}: the key's lease expired an hour early; logs:\n{}",
            c.logs()
        );
    }
    let mut lease = lease_at(3).await.expect("n3 reachable");
    let req = pb::LeaseTimeToLiveRequest { id, keys: false };
    let left = lease
        .lease_time_to_live(req)
        .await
        .unwrap()
        .into_inner()
        .ttl;
    assert!(left > 50, "the lease has {left} s left of 60");
    let refused: f64 = (1..4)
        .map(|i| scrape(c.cfgs[i].me().metrics.expect("metrics address")))
        .filter_map(|page| {
            metric(
                &page,
                r#"ekmat_protocol_events_total{name="clock-ahead-refused"}"#,
            )
        })
        .sum();
    assert!(refused > 0.0, "the backups refused the primary's time");
    let warned = (1..4).any(|i| c.log(i).contains("refused primaries' batch times"));
    assert!(warned, "no backup named the refusals in its log");
    let injected = format!("fault injected ({fault})");
    assert!(c.log(0).contains(&injected), "n0 did not take the fault");
}

/// A PBFT cluster started from a backup — here a Raft cluster's, so a store moves from
/// one protocol to the other — serves its keys, history, compaction point and lease at
/// every member; a member restarted keeps them; writes go on at the next revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbft_cluster_started_from_a_backup_serves_it_at_every_member() {
    let raft = Cluster::start(3);
    let url = raft.endpoint(raft.leader(Duration::from_secs(15)).await);
    let ch = channel(&url).await.unwrap();
    let lease = pb::lease_client::LeaseClient::new(ch.clone())
        .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut old = pb::kv_client::KvClient::new(ch);
    let mut revision = 0;
    let mut compact_at = 0;
    for (key, value, lease) in [
        ("a", "1", 0),
        ("b", "2", 0),
        ("a", "3", 0),
        ("l", "x", lease),
    ] {
        let req = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        };
        revision = old
            .put(req)
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        if (key, value) == ("a", "3") {
            compact_at = revision;
        }
    }
    let compact = pb::CompactionRequest {
        revision: compact_at,
        physical: false,
    };
    old.compact(compact).await.unwrap();
    let file = backup(&url).await;
    drop(raft);

    let mut c = configure(|_| {});
    let saved = c.dir.path().join("backup.db");
    std::fs::write(&saved, &file).unwrap();
    for i in 0..4 {
        support::write_config(&c.config_path(i), &c.cfgs[i]);
        let out = restore(&saved, &c.config_path(i));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains(&format!("revision {revision}, ")), "{said}");
    }
    for i in 0..4 {
        c.spawn(i);
    }
    let within = Duration::from_secs(30);
    put(&c, 1, "after", "restore", within).await;
    // Past a checkpoint (every 16 sequence numbers): the seeded members sign the same
    // history, so it becomes stable at every one of them.
    for k in 0..40 {
        put(&c, k % 4, &format!("more/{k}"), "v", within).await;
    }
    for i in 0..4 {
        eventually(&c, within, "a stable checkpoint", || async {
            let stable = metric(
                &scrape(c.cfgs[i].me().metrics.expect("a metrics address")),
                "ekmat_protocol_events_total{name=\"stable-checkpoint\"}",
            );
            stable
                .filter(|&n| n > 0.0)
                .ok_or(format!("n{i}: {stable:?}"))
        })
        .await;
    }
    c.kill9(2);
    c.spawn(2);
    for i in 0..4 {
        caught_up(&c, i, 1, within).await;
        let mut kv = kv(&c, i).await.expect("member reachable");
        let read = |key: &str, revision: i64| pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            revision,
            serializable: true,
            ..Default::default()
        };
        let now = kv.range(read("a", 0)).await.unwrap().into_inner();
        assert_eq!(now.kvs[0].value, &b"3"[..], "n{i}");
        assert_eq!(
            now.header.unwrap().revision,
            revision + 41,
            "n{i}: the puts after"
        );
        let then = kv.range(read("b", compact_at)).await.unwrap().into_inner();
        assert_eq!(
            then.kvs[0].value,
            &b"2"[..],
            "n{i}: history from the backup"
        );
        let gone = kv.range(read("a", compact_at - 1)).await.unwrap_err();
        assert!(gone.message().contains("compacted"), "n{i}: {gone}");
        let ttl = support::lease_ttl(&c.endpoint(i), lease).await;
        assert!(
            ttl.ttl > 590,
            "n{i}: the lease restarts from its TTL: {}",
            ttl.ttl
        );
        assert_eq!(ttl.keys, vec![b"l".to_vec()], "n{i}");
    }
    // A member that lost its log (and seed) but kept its key would run the batches on
    // an empty store: its peers refuse it, naming the backup.
    c.kill9(3);
    std::fs::remove_dir_all(c.cfgs[3].data_dir.join("wal")).unwrap();
    std::fs::remove_file(c.cfgs[3].data_dir.join("pbft.seed")).unwrap();
    c.spawn(3);
    eventually(&c, within, "n3 refused", || async {
        let refused = c
            .log(3)
            .contains("backup the cluster started from: \"none\" here");
        refused.then_some(()).ok_or("not yet".to_string())
    })
    .await;
    put(&c, 0, "without", "n3", within).await;
    // Given the seed file back without the log (an operator copying it over), it is let
    // in, runs the batches on an empty store, and stops at the next stable checkpoint,
    // which certifies another history than its own.
    c.kill9(3);
    let seed = std::fs::read(c.cfgs[0].data_dir.join("pbft.seed")).unwrap();
    std::fs::write(c.cfgs[3].data_dir.join("pbft.seed"), seed).unwrap();
    std::fs::remove_dir_all(c.cfgs[3].data_dir.join("wal")).unwrap();
    c.spawn(3);
    let stopped = "executed another history than a quorum of its peers";
    let started = Instant::now();
    let mut k = 0;
    while !c.log(3).contains(stopped) {
        assert!(
            started.elapsed() < within,
            "n3 did not stop; logs:\n{}",
            c.logs()
        );
        put(&c, k % 3, &format!("later/{k}"), "v", within).await;
        k += 1;
    }
}

/// Member `i`'s view of the exclusions.
async fn exclusions(
    c: &Cluster,
    i: usize,
) -> Result<ekmat_api::ekmatpb::ExclusionsResponse, String> {
    let ch = channel(&c.endpoint(i)).await.map_err(|e| e.to_string())?;
    ekmat_api::ekmatpb::exclusions_client::ExclusionsClient::new(ch)
        .list(ekmat_api::ekmatpb::ListExclusionsRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| s.message().to_string())
}

fn decided(list: &[ekmat_api::ekmatpb::Decision], member: u64) -> Option<u64> {
    list.iter().find(|d| d.member == member).map(|d| d.seq)
}

/// A member that equivocates once (a second COMMIT for another digest, to n0) is
/// excluded by every member at one sequence number; two other members' operators vote
/// to re-admit it (f+1 = 2), and every member re-admits it at one sequence number,
/// after which it serves writes again. Too few votes, or a member's vote for itself,
/// are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_member_is_readmitted_on_the_votes_of_f_plus_1_validators() {
    let mut c = configure(|_| {});
    for i in 0..3 {
        c.spawn(i);
    }
    c.spawn_with_env(3, &[(ekmat_node::query::EQUIVOCATE_ONCE_ENV, "0")]);
    let within = Duration::from_secs(30);
    for k in 0..5 {
        put(&c, 1, &format!("before/{k}"), "v", within).await;
    }
    let mut excluded_at = Vec::new();
    for i in 0..4 {
        let at = eventually(&c, within, "n3 excluded", || async {
            decided(&exclusions(&c, i).await?.excluded, 3).ok_or("not yet".to_string())
        })
        .await;
        excluded_at.push(at);
    }
    assert!(
        excluded_at.iter().all(|&s| s == excluded_at[0]),
        "{excluded_at:?}"
    );

    let dir = c.dir.path().to_path_buf();
    let pbft = |args: &[&str]| ekmat().arg("pbft").args(args).output().unwrap();
    let config = |i: usize| c.config_path(i).display().to_string();
    let vote_file = |i: usize| dir.join(format!("vote-{i}")).display().to_string();
    for i in [1, 2] {
        let out = pbft(&[
            "readmit-vote",
            "3",
            "--config",
            &config(i),
            "--out",
            &vote_file(i),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let own = pbft(&["readmit-vote", "3", "--config", &config(3)]);
    assert_eq!(own.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&own.stderr).contains("cannot vote to re-admit itself"));
    let one = pbft(&["readmit", &vote_file(1), "--config", &config(0)]);
    assert_eq!(one.status.code(), Some(2));
    let why = String::from_utf8_lossy(&one.stderr);
    assert!(
        why.contains("1 votes of other validators, 2 needed"),
        "{why}"
    );
    assert!(decided(&exclusions(&c, 0).await.unwrap().excluded, 3).is_some());

    let out = pbft(&[
        "readmit",
        &vote_file(1),
        &vote_file(2),
        "--config",
        &config(0),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("member 3 re-admitted at sequence"), "{said}");
    let mut readmitted_at = Vec::new();
    for i in 0..4 {
        let at = eventually(&c, within, "n3 re-admitted", || async {
            let now = exclusions(&c, i).await?;
            match (decided(&now.excluded, 3), decided(&now.readmitted, 3)) {
                (None, Some(at)) => Ok(at),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        readmitted_at.push(at);
    }
    assert!(
        readmitted_at
            .iter()
            .all(|&s| s == readmitted_at[0] && s > excluded_at[0])
    );
    // Its bundles are taken again: a put through it is acknowledged.
    put(&c, 3, "after", "readmitted", within).await;
    assert_eq!(
        get(&c, 0, "after", false).await.as_deref(),
        Some("readmitted")
    );
}

/// Automatic compaction runs under PBFT too: the primary proposes it, every replica
/// executes it at one sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_compacts_every_pbft_replica() {
    let c = start_with(|cfg| cfg.auto_compaction_retention = "1s".into());
    let within = Duration::from_secs(30);
    put(&c, 1, "k", "first", within).await;
    let started = Instant::now();
    let compacted = |i: usize| {
        let endpoint = c.endpoint(i);
        async move {
            let mut kv = pb::kv_client::KvClient::new(channel(&endpoint).await.ok()?);
            let range = pb::RangeRequest {
                key: "k".into(),
                revision: 2,
                serializable: true,
                ..Default::default()
            };
            let err = kv.range(range).await.err()?;
            Some(
                err.message()
                    .contains("required revision has been compacted"),
            )
        }
    };
    let mut n = 0;
    for i in 0..4 {
        while compacted(i).await != Some(true) {
            assert!(
                started.elapsed() < within,
                "member {i} still serves revision 2; logs:\n{}",
                c.logs()
            );
            // Writes go on: each moves the revision the next compaction may reach.
            n += 1;
            put(&c, (n % 4) as usize, "k", &n.to_string(), within).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
