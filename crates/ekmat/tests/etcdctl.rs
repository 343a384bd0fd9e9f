//! etcd's own command-line client against an ekmat cluster: the outputs etcd itself
//! prints for the same commands. Needs `etcdctl` (Debian's `etcd-client`); CI installs
//! it and sets `EKMAT_REQUIRE_ETCDCTL=1`, so there this test cannot be skipped.

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Cluster, etcdctl, etcdctl_available};

/// A long-running etcdctl (a watch) whose stdout and stderr are collected as they come.
struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(endpoints: &str, args: &[&str]) -> Running {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || collect(pipe, &output));
        }
        Running { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Wait for the process to exit; panics if it has not within `within`.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the collectors drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                started.elapsed() < within,
                "still running after {within:?}: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the output is `expected`; panics with what came if it is not within
    /// `within`.
    fn wait_for(&self, expected: &str, within: Duration) {
        let started = Instant::now();
        while self.output() != expected {
            assert!(
                started.elapsed() < within,
                "expected {expected:?}, got {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn collect(mut pipe: Box<dyn Read + Send>, output: &Mutex<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            return;
        }
        output
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_endpoints(c: &Cluster) -> Vec<String> {
    c.cfgs[0]
        .members
        .iter()
        .map(|m| m.client.to_string())
        .collect()
}

#[tokio::test]
async fn etcdctl_put_get_del_txn_members_and_status() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let all: Vec<String> = c.cfgs[0]
        .members
        .iter()
        .map(|m| m.client.to_string())
        .collect();
    let eps = all.join(",");
    let ok = |args: &[&str]| {
        let (success, out, err) = etcdctl(&eps, args, None);
        assert!(success, "etcdctl {args:?} failed: {err}");
        out
    };

    assert_eq!(ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(ok(&["put", "fop", "baz"]), "OK\n");
    assert_eq!(ok(&["get", "foo"]), "foo\nbar\n");
    assert_eq!(ok(&["get", "fo", "--prefix"]), "foo\nbar\nfop\nbaz\n");
    assert_eq!(
        ok(&["get", "fo", "--prefix", "--keys-only"]),
        "foo\n\nfop\n\n"
    );
    assert_eq!(ok(&["get", "foo", "--print-value-only"]), "bar\n");
    // Reads through a follower, serializable and linearizable alike.
    let follower_eps = all[1].clone();
    let (s, out, _) = etcdctl(&follower_eps, &["get", "foo", "--consistency=s"], None);
    assert!(s && out == "foo\nbar\n", "{out}");

    let json = ok(&["get", "foo", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kvs"][0]["key"], "Zm9v", "base64 of foo");
    assert_eq!(v["kvs"][0]["version"], 1);
    assert!(v["header"]["revision"].as_i64().unwrap() >= 3);
    assert!(v["header"]["raft_term"].as_u64().unwrap() >= 1);

    let txn = "value(\"foo\") = \"bar\"\n\nput foo \"txn\"\nget fop\n\nput foo \"nope\"\n\n";
    let (s, out, err) = etcdctl(&eps, &["txn"], Some(txn));
    assert!(s, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n\nfop\nbaz\n");
    assert_eq!(ok(&["get", "foo"]), "foo\ntxn\n");
    let (s, out, _) = etcdctl(&eps, &["txn"], Some(txn));
    assert!(s);
    assert_eq!(out, "FAILURE\n\nOK\n");

    assert_eq!(ok(&["del", "fo", "--prefix"]), "2\n");
    assert_eq!(ok(&["get", "foo"]), "");

    let members = ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(
        members.contains(&format!(
            "1, started, n0, http://{}, http://{}, false",
            c.cfgs[0].members[0].peer, all[0]
        )),
        "{members}"
    );

    let status = ok(&["endpoint", "status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    assert_eq!(
        status.matches(", true, false,").count(),
        1,
        "exactly one leader: {status}"
    );

    // etcdctl 3.4 reports health on stderr.
    let (s, _, health) = etcdctl(&eps, &["endpoint", "health"], None);
    assert!(s, "{health}");
    assert_eq!(
        health
            .matches("is healthy: successfully committed proposal")
            .count(),
        3,
        "{health}"
    );
}

#[tokio::test]
async fn etcdctl_lease_grant_put_timetolive_keepalive_list_revoke() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let eps = client_endpoints(&c).join(",");
    let ok = |args: &[&str]| {
        let (success, out, err) = etcdctl(&eps, args, None);
        assert!(success, "etcdctl {args:?} failed: {err}");
        out
    };
    let fails = |args: &[&str]| {
        let (success, out, err) = etcdctl(&eps, args, None);
        assert!(!success, "etcdctl {args:?} succeeded: {out}");
        out + &err
    };

    // etcdctl prints ids in hex; ekmat numbers leases from 1.
    let id = "0000000000000001";
    assert_eq!(
        ok(&["lease", "grant", "10"]),
        format!("lease {id} granted with TTL(10s)\n")
    );
    assert_eq!(ok(&["put", "--lease", id, "foo", "bar"]), "OK\n");
    assert_eq!(ok(&["put", "--lease", id, "fop", "baz"]), "OK\n");
    let ttl = ok(&["lease", "timetolive", id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(10s), remaining("))
            && ttl.ends_with("s), attached keys([foo fop])\n"),
        "{ttl}"
    );
    assert_eq!(
        ok(&["lease", "keep-alive", "--once", id]),
        format!("lease {id} keepalived with TTL(10)\n")
    );
    // Below the minimum, a TTL is raised to it, as etcd does (2 s with etcd's defaults).
    assert_eq!(
        ok(&["lease", "grant", "1"]),
        "lease 0000000000000002 granted with TTL(2s)\n"
    );
    let list = ok(&["lease", "list"]);
    assert!(list.starts_with("found ") && list.contains(id), "{list}");

    assert_eq!(
        ok(&["lease", "revoke", id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        ok(&["get", "fo", "--prefix"]),
        "",
        "revoking deleted the keys"
    );
    assert_eq!(
        ok(&["lease", "timetolive", id]),
        format!("lease {id} already expired\n")
    );

    let err = fails(&["lease", "revoke", id]);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
    // etcd answers a keep-alive for a lease that is gone with TTL 0; etcdctl says:
    let err = fails(&["lease", "keep-alive", "--once", id]);
    assert_eq!(err, "Error: etcdserver: requested lease not found\n");
    let err = fails(&["lease", "grant", "9000000001"]);
    assert!(err.contains("etcdserver: too large lease TTL"), "{err}");
    let err = fails(&["put", "--lease", "63", "x", "y"]);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
}

#[tokio::test]
async fn etcdctl_watch_sees_puts_and_deletes_replays_history_and_prev_kv() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let all = client_endpoints(&c);
    let follower = all[(leader + 1) % all.len()].clone();
    let ok = |args: &[&str]| {
        let (success, out, err) = etcdctl(&all[leader], args, None);
        assert!(success, "etcdctl {args:?} failed: {err}");
        out
    };

    // Watching on a follower; writing through the leader with another etcdctl.
    let plain = Running::spawn(&follower, &["watch", "foo"]);
    let prev = Running::spawn(&follower, &["watch", "--prev-kv", "foo"]);
    // etcdctl prints nothing when its watch is set up; give it time to be.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ok(&["put", "foo", "v1"]), "OK\n"); // revision 2
    assert_eq!(ok(&["put", "foo", "v2"]), "OK\n"); // 3
    assert_eq!(ok(&["put", "other", "x"]), "OK\n"); // 4, not watched
    assert_eq!(ok(&["del", "foo"]), "1\n"); // 5
    let within = Duration::from_secs(10);
    // What etcd 3.4 prints for the same commands.
    plain.wait_for("PUT\nfoo\nv1\nPUT\nfoo\nv2\nDELETE\nfoo\n\n", within);
    prev.wait_for(
        "PUT\nfoo\nv1\nPUT\nfoo\nv1\nfoo\nv2\nDELETE\nfoo\nv2\nfoo\n\n",
        within,
    );

    let history = Running::spawn(&follower, &["watch", "--rev=1", "--prefix", "fo"]);
    history.wait_for("PUT\nfoo\nv1\nPUT\nfoo\nv2\nDELETE\nfoo\n\n", within);

    // On the leader, which has applied the compaction when etcdctl hears back (a
    // follower may apply it a heartbeat later, and until then still has the history).
    assert_eq!(ok(&["compact", "4"]), "compacted revision 4\n");
    let mut compacted = Running::spawn(&all[leader], &["watch", "--rev=2", "foo"]);
    let status = compacted.wait_exit(within);
    assert_eq!(status.code(), Some(5), "{}", compacted.output());
    assert!(
        compacted.output().contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "{}",
        compacted.output()
    );
}

/// `text` with every `NAME/<lease id in hex>` key written `NAME/<lease>`: lease ids
/// differ between servers (ekmat counts from 1; etcd's look random).
fn leases_named(text: &str, name: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix(&format!("{name}/")) {
            Some(id) if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                format!("{name}/<lease>\n")
            }
            _ => format!("{line}\n"),
        })
        .collect()
}

impl Running {
    fn interrupt(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    }

    /// Wait until the output, leases named, is `expected`.
    fn wait_for_named(&self, name: &str, expected: &str, within: Duration) {
        let started = Instant::now();
        while leases_named(&self.output(), name) != expected {
            assert!(
                started.elapsed() < within,
                "expected {expected:?}, got {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// etcdctl's `elect` runs etcd's election recipe over KV, Lease and Watch (not the
/// Election service): a campaigner prints its key and value once elected, an observer
/// every leader's; interrupting the leader resigns and hands over at once. The outputs
/// are what etcd 3.4 prints for the same commands.
#[tokio::test]
async fn etcdctl_elect_campaigns_observes_and_hands_over_on_resign() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let eps = client_endpoints(&c).join(",");
    let within = Duration::from_secs(10);
    let mut first = Running::spawn(&eps, &["elect", "myelect", "v1"]);
    first.wait_for_named("myelect", "myelect/<lease>\nv1\n", within);
    let mut observer = Running::spawn(&eps, &["elect", "-l", "myelect"]);
    observer.wait_for_named("myelect", "myelect/<lease>\nv1\n", within);
    let mut second = Running::spawn(&eps, &["elect", "myelect", "v2"]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(second.output(), "", "the second campaigner waits");

    first.interrupt();
    assert!(first.wait_exit(within).success(), "{}", first.output());
    second.wait_for_named("myelect", "myelect/<lease>\nv2\n", within);
    observer.wait_for_named(
        "myelect",
        "myelect/<lease>\nv1\nmyelect/<lease>\nv2\n",
        within,
    );
    assert_ne!(first.output(), second.output().replace("v2", "v1"));
    second.interrupt();
    observer.interrupt();
    assert!(second.wait_exit(within).success(), "{}", second.output());
    assert!(
        observer.wait_exit(within).success(),
        "{}",
        observer.output()
    );
}

/// etcdctl's `lock` (etcd's mutex recipe): the holder prints its key; a waiter with a
/// command runs it once the holder unlocks, with etcd's ETCD_LOCK_KEY/ETCD_LOCK_REV;
/// a holder killed with `kill -9` (its lease not revoked) is replaced once its lease
/// expires. Outputs as etcd 3.4 prints them.
#[tokio::test]
async fn etcdctl_lock_hands_over_on_unlock_and_when_a_killed_holders_lease_expires() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let eps = client_endpoints(&c).join(",");
    let within = Duration::from_secs(10);
    let mut holder = Running::spawn(&eps, &["lock", "mylock"]);
    holder.wait_for_named("mylock", "mylock/<lease>\n\n", within);
    let script = "echo key=$ETCD_LOCK_KEY rev=$ETCD_LOCK_REV";
    let mut waiter = Running::spawn(&eps, &["lock", "mylock", "--", "sh", "-c", script]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(waiter.output(), "", "the waiter waits");
    let released = Instant::now();
    holder.interrupt();
    assert!(waiter.wait_exit(within).success(), "{}", waiter.output());
    assert!(released.elapsed() < Duration::from_secs(3));
    assert!(holder.wait_exit(within).success(), "{}", holder.output());
    let out = waiter.output();
    let rev = out
        .strip_prefix("key=mylock/")
        .and_then(|rest| rest.split_once(" rev="))
        .map(|(_, rev)| rev.trim_end());
    assert!(
        rev.is_some_and(|r| r.parse::<i64>().is_ok()) && out.ends_with('\n'),
        "{out:?}"
    );

    // A holder that dies without unlocking: its 2 s session lease expires.
    let mut doomed = Running::spawn(&eps, &["lock", "--ttl", "2", "mylock"]);
    doomed.wait_for_named("mylock", "mylock/<lease>\n\n", within);
    let next = Running::spawn(&eps, &["lock", "mylock"]);
    std::thread::sleep(Duration::from_millis(500));
    doomed.child.kill().unwrap(); // SIGKILL: no unlock, no revoke
    let killed = Instant::now();
    next.wait_for_named("mylock", "mylock/<lease>\n\n", within);
    let took = killed.elapsed();
    assert!(
        took > Duration::from_millis(500) && took < Duration::from_secs(6),
        "handed over {took:?} after the kill"
    );
}

/// What etcd 3.4 prints for `alarm list` and `alarm disarm` (each alarm in protobuf text
/// form, trailing space included) and for `snapshot save`, on a cluster with a small
/// space quota.
#[tokio::test]
async fn etcdctl_alarm_list_disarm_and_snapshot_save() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start_with(3, |cfg| cfg.quota_backend_bytes = 16 * 1024);
    c.leader(Duration::from_secs(15)).await;
    let eps = client_endpoints(&c)[1].clone();
    let run = |args: &[&str]| etcdctl(&eps, args, None);
    assert_eq!(
        run(&["alarm", "list"]),
        (true, String::new(), String::new())
    );

    let big = "x".repeat(1024);
    let refused = (0..32)
        .map(|i| run(&["put", &format!("big{i}"), &big]))
        .find(|(ok, _, _)| !ok)
        .expect("the quota is reached");
    assert!(
        refused
            .2
            .ends_with("Error: etcdserver: mvcc: database space exceeded\n"),
        "{}",
        refused.2
    );
    // The member that took the write raised the alarm (etcd member id 2 for n1).
    let alarm = "memberID:2 alarm:NOSPACE \n";
    assert_eq!(run(&["alarm", "list"]), (true, alarm.into(), String::new()));

    let file = c.dir.path().join("backup.db");
    let (ok, out, err) = run(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("Snapshot saved at {}\n", file.display()));
    let saved = std::fs::read(&file).unwrap();
    assert_eq!(
        saved.len() % 512,
        32,
        "content in 512-byte multiples, then the sha256"
    );

    assert_eq!(
        run(&["alarm", "disarm"]),
        (true, alarm.into(), String::new())
    );
    assert_eq!(
        run(&["alarm", "list"]),
        (true, String::new(), String::new())
    );
}

/// A saved snapshot is etcd's own backup: `etcdctl snapshot status` reads it, and a real
/// etcd restored from it (`etcdctl snapshot restore`) serves the same keys, values,
/// revisions, lease, history and compaction point as the ekmat cluster it came from.
#[tokio::test]
async fn a_saved_snapshot_restores_into_a_real_etcd_serving_the_same_data() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let eps = client_endpoints(&c)[0].clone();
    let run = |args: &[&str]| {
        let (ok, out, err) = etcdctl(&eps, args, None);
        assert!(ok, "etcdctl {args:?}: {err}");
        out
    };
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        run(&["put", k, v]);
    }
    run(&["del", "b"]);
    let lease = run(&["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_owned();
    run(&["put", "leased", "x", "--lease", &lease]);
    run(&["put", "c", "5"]);
    run(&["compact", "3"]);
    let everything = ["get", "", "--prefix", "-w", "json"];
    let ours: serde_json::Value = serde_json::from_str(&run(&everything)).unwrap();
    let at_3 = run(&["get", "a", "--rev", "3"]);
    assert_eq!(at_3, "a\n1\n");

    let file = c.dir.path().join("backup.db");
    run(&["snapshot", "save", file.to_str().unwrap()]);
    let status: serde_json::Value = serde_json::from_str(&run(&[
        "snapshot",
        "status",
        file.to_str().unwrap(),
        "-w",
        "json",
    ]))
    .unwrap();
    assert_eq!(status["revision"], ours["header"]["revision"]);

    let restored = support::Etcd::start_restored(|name, peer, dir| {
        let args = support::etcd_restore_args(&file, name, peer, dir);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    });
    let Some(etcd) = restored else {
        return;
    };
    etcd.wait_ready().await;
    let theirs = |args: &[&str]| etcdctl(&etcd.url, args, None);
    let (ok, json, err) = theirs(&everything);
    assert!(ok, "{err}");
    let theirs_all: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(theirs_all["kvs"], ours["kvs"]);
    assert_eq!(theirs_all["header"]["revision"], ours["header"]["revision"]);
    assert_eq!(theirs(&["get", "a", "--rev", "3"]).1, at_3);
    let (ok, _, err) = theirs(&["get", "a", "--rev", "2"]);
    assert!(
        !ok && err.contains("required revision has been compacted"),
        "{err}"
    );
    assert!(
        theirs(&["lease", "list"])
            .1
            .contains(&format!("{lease:0>16}"))
    );

    // And back: etcd's own backup of it reads as the same history.
    let etcd_file = c.dir.path().join("etcd.db");
    let (ok, _, err) = theirs(&["snapshot", "save", etcd_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let ours_read = ekmat_node::backup::decode(&std::fs::read(&file).unwrap()).unwrap();
    let theirs_read = ekmat_node::backup::decode(&std::fs::read(&etcd_file).unwrap()).unwrap();
    assert_eq!(theirs_read.revisions, ours_read.revisions);
    assert_eq!(theirs_read.leases, ours_read.leases);
    assert_eq!(theirs_read.compact_revision, 3);

    // And etcd's backup starts an ekmat cluster serving the same.
    let etcd_backup = std::fs::read(&etcd_file).unwrap();
    let mut migrated = Cluster::configure(3, |_| {});
    for cfg in &migrated.cfgs {
        ekmat_node::backup::seed(cfg, &etcd_backup).unwrap();
    }
    for i in 0..3 {
        migrated.spawn(i);
    }
    migrated.leader(Duration::from_secs(15)).await;
    let there = client_endpoints(&migrated)[0].clone();
    let (ok, json, err) = etcdctl(&there, &everything, None);
    assert!(ok, "{err}");
    let migrated_all: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(migrated_all["kvs"], ours["kvs"]);
    assert_eq!(etcdctl(&there, &["get", "a", "--rev", "3"], None).1, at_3);
}

/// Endpoints written with a scheme (as etcd's documentation writes them) and
/// `--cluster` (which reads the members' URLs): etcdctl then dials each member itself
/// for status, hashkv, defrag and move-leader, and sends the scheme in `:authority`.
#[tokio::test]
async fn etcdctl_endpoints_with_a_scheme_and_cluster_wide_commands() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let urls: Vec<String> = client_endpoints(&c)
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    let eps = urls.join(",");
    let ok = |args: &[&str]| {
        let (success, out, err) = etcdctl(&eps, args, None);
        assert!(success, "etcdctl {args:?}: {out}{err}");
        out
    };
    ok(&["put", "k", "v"]);
    let status = ok(&["endpoint", "status", "--cluster"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    for url in &urls {
        assert!(status.contains(url.as_str()), "{status}");
    }
    for url in &urls {
        support::wait_applied(url, 2, Duration::from_secs(10)).await;
    }
    let hashes = ok(&["endpoint", "hashkv", "--cluster", "--rev=2"]);
    let values: std::collections::BTreeSet<&str> = hashes
        .lines()
        .map(|l| l.rsplit(", ").next().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "the members agree at revision 2: {hashes}");
    assert!(ok(&["defrag"]).contains("Finished defragmenting"));
    let target = c.cfgs[0].members[(leader + 1) % 3].id + 1;
    let moved = ok(&["move-leader", &format!("{target:x}")]);
    assert!(moved.contains("Leadership transferred"), "{moved}");
}

/// etcd serves `/health`, `/version` and `/metrics` over HTTP/1.1 on its client port,
/// beside gRPC; `etcdctl check datascale` reads the process's memory there.
#[tokio::test]
async fn the_client_port_serves_etcds_http_endpoints_and_check_datascale_passes() {
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let addr = c.cfgs[0].members[1].client;
    let health = support::http_get(addr, "/health");
    assert!(
        health.starts_with("HTTP/1.0 200") && health.contains(r#"{"health":"true""#),
        "{health}"
    );
    let version = support::http_get(addr, "/version");
    assert!(
        version.contains(r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#),
        "{version}"
    );
    assert!(version.contains("application/json"), "{version}");
    let metrics = support::http_get(addr, "/metrics");
    for name in ["process_resident_memory_bytes", "etcd_server_has_leader 1"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let unknown = support::http_get(addr, "/livez");
    assert!(unknown.starts_with("HTTP/1.0 404"), "{unknown}");
    if !etcdctl_available() {
        return;
    }
    let eps = client_endpoints(&c).join(",");
    // Auth is served (tests/auth.rs holds it to etcd's answers); no users yet.
    let (ok, out, err) = etcdctl(&eps, &["user", "list"], None);
    assert!(ok && out.is_empty(), "{out}{err}");
    let (ok, out, err) = etcdctl(&eps, &["check", "datascale", "--load=s"], None);
    assert!(ok && out.contains("PASS"), "{out}{err}");
}
