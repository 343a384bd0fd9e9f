//! etcd's own command-line client against an ekmat cluster: the outputs etcd itself
//! prints for the same commands. Needs `etcdctl` (Debian's `etcd-client`); CI installs
//! it and sets `EKMAT_REQUIRE_ETCDCTL=1`, so there this test cannot be skipped.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::Cluster;

fn etcdctl_available() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("EKMAT_REQUIRE_ETCDCTL").is_err(),
            "EKMAT_REQUIRE_ETCDCTL is set but etcdctl is not installed"
        );
        eprintln!("skipped: etcdctl is not installed (apt-get install etcd-client)");
    }
    found
}

fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
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
