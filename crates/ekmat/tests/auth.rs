//! etcd's authentication, as etcd's own `etcdctl` sees it: one script of user, role,
//! permission and key commands runs against a 3-process ekmat cluster and a real etcd
//! 3.4, and every step must print what etcd prints (its output, or its error line).
//! Needs `etcdctl` and `etcd` (Debian's `etcd-client`, `etcd-server`); CI installs both
//! and sets `EKMAT_REQUIRE_ETCDCTL=1` and `EKMAT_REQUIRE_ETCD=1`.

mod support;

use std::time::Duration;

use support::{Cluster, Etcd, etcdctl, etcdctl_available};

/// What a user sees of one etcdctl run: whether it succeeded, its output, and its
/// `Error:` line (etcdctl's other stderr lines name endpoints and differ by cluster).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    ok: bool,
    out: String,
    error: String,
}

fn run(endpoints: &str, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Seen {
    let user = user.map(|u| format!("--user={u}"));
    let mut all = vec!["--command-timeout=10s"];
    all.extend(user.as_deref());
    all.extend(args);
    let (ok, out, stderr) = etcdctl(endpoints, &all, stdin);
    Seen {
        ok,
        out,
        error: stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

const ROOT: Option<&str> = Some("root:rootpw");
const ALICE: Option<&str> = Some("alice:apw");

/// Each step: as whom, the arguments, and what goes to stdin.
type Step = (
    Option<&'static str>,
    &'static [&'static str],
    Option<&'static str>,
);

fn script() -> Vec<Step> {
    vec![
        (None, &["user", "add", "root:rootpw"], None),
        (None, &["user", "get", "root"], None),
        (None, &["auth", "enable"], None),
        (None, &["get", "foo"], None),
        (None, &["user", "list"], None),
        (ROOT, &["role", "add", "r"], None),
        (ROOT, &["role", "add", "r"], None),
        (
            ROOT,
            &["role", "grant-permission", "r", "readwrite", "foo"],
            None,
        ),
        (
            ROOT,
            &["role", "grant-permission", "--prefix", "r", "read", "pre/"],
            None,
        ),
        (
            ROOT,
            &["role", "grant-permission", "r", "write", "w1", "w3"],
            None,
        ),
        (
            ROOT,
            &[
                "role",
                "grant-permission",
                "--prefix",
                "r",
                "readwrite",
                "lk/",
            ],
            None,
        ),
        (ROOT, &["role", "get", "r"], None),
        (ROOT, &["user", "add", "alice:apw"], None),
        (ROOT, &["user", "add", "alice:other"], None),
        (ROOT, &["user", "grant-role", "alice", "r"], None),
        (ROOT, &["user", "grant-role", "alice", "nosuch"], None),
        (ROOT, &["user", "grant-role", "nobody", "r"], None),
        (ROOT, &["user", "get", "alice"], None),
        (ROOT, &["user", "list"], None),
        (ROOT, &["role", "list"], None),
        (ALICE, &["put", "foo", "1"], None),
        (ALICE, &["get", "foo"], None),
        (ALICE, &["put", "bar", "1"], None),
        (ALICE, &["put", "w2", "x"], None),
        (ALICE, &["get", "w2"], None),
        (Some("alice:wrong"), &["get", "foo"], None),
        (Some("nobody:x"), &["get", "foo"], None),
        (ROOT, &["put", "pre/a", "1"], None),
        (ALICE, &["get", "pre/", "--prefix"], None),
        (ALICE, &["put", "pre/a", "2"], None),
        (ALICE, &["get", "", "--from-key"], None),
        (ALICE, &["del", "foo", "--prev-kv"], None),
        (
            ALICE,
            &["txn"],
            Some("value(\"pre/a\") = \"1\"\n\nput foo \"t\"\n\n\n"),
        ),
        (
            ALICE,
            &["txn"],
            Some("value(\"bar\") = \"1\"\n\nput foo \"t\"\n\n\n"),
        ),
        (
            ALICE,
            &["txn"],
            Some("value(\"foo\") = \"t\"\n\nput bar \"t\"\n\n\n"),
        ),
        (ALICE, &["compaction", "1"], None),
        (None, &["compaction", "2"], None),
        (ALICE, &["watch", "bar"], None),
        (ALICE, &["lock", "bar"], None),
        (ALICE, &["lock", "lk", "echo", "held"], None),
        (ALICE, &["elect", "bar", "v"], None),
        (ALICE, &["snapshot", "save", "/dev/null"], None),
        (ALICE, &["defrag"], None),
        (ALICE, &["endpoint", "hashkv"], None),
        (ALICE, &["user", "list"], None),
        (ALICE, &["user", "get", "alice"], None),
        (ALICE, &["user", "get", "root"], None),
        (ALICE, &["role", "get", "r"], None),
        (ALICE, &["role", "get", "root"], None),
        (ALICE, &["user", "add", "mallory:m"], None),
        (ALICE, &["auth", "disable"], None),
        (ROOT, &["user", "delete", "root"], None),
        (ROOT, &["user", "revoke-role", "root", "root"], None),
        (ROOT, &["role", "delete", "root"], None),
        (ROOT, &["role", "revoke-permission", "r", "foo"], None),
        (ROOT, &["role", "revoke-permission", "r", "foo"], None),
        (ALICE, &["get", "foo"], None),
        (
            ROOT,
            &["user", "passwd", "alice", "--interactive=false"],
            Some("newpw\n"),
        ),
        (ALICE, &["get", "pre/a"], None),
        (Some("alice:newpw"), &["get", "pre/a"], None),
        (ROOT, &["user", "revoke-role", "alice", "r"], None),
        (ROOT, &["user", "revoke-role", "alice", "r"], None),
        (Some("alice:newpw"), &["get", "pre/a"], None),
        (ROOT, &["role", "delete", "r"], None),
        (ROOT, &["role", "get", "r"], None),
        (ROOT, &["user", "delete", "alice"], None),
        (ROOT, &["user", "delete", "alice"], None),
        (ROOT, &["auth", "disable"], None),
        (None, &["get", "pre/a"], None),
        (None, &["auth", "disable"], None),
    ]
}

#[tokio::test]
async fn etcdctls_auth_commands_answer_as_etcds_do() {
    if !etcdctl_available() {
        return;
    }
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    etcd.wait_ready().await;
    let ekmat: Vec<String> = c.cfgs[0]
        .members
        .iter()
        .map(|m| m.client.to_string())
        .collect();
    let all = ekmat.join(",");
    for (i, (user, args, stdin)) in script().into_iter().enumerate() {
        // etcdctl takes a backup from one member only.
        let endpoints = if args[0] == "snapshot" {
            &ekmat[1]
        } else {
            &all
        };
        let theirs = run(&etcd.url, user, args, stdin);
        let ours = run(endpoints, user, args, stdin);
        assert_eq!(ours, theirs, "step {i}: etcdctl {args:?} as {user:?}");
    }

    // ekmat's own client logs in as etcdctl does.
    assert!(run(&all, None, &["auth", "enable"], None).ok);
    let kv = |user: Option<&str>, args: &[&str]| {
        let mut command = support::ekmat();
        command.args(["kv", "--endpoints", &all]).args(args);
        if let Some(user) = user {
            command.env("ETCDCTL_USER", user);
        }
        let o = command.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    assert_eq!(kv(ROOT, &["put", "k", "v"]).1, "OK\n");
    assert_eq!(kv(ROOT, &["get", "k"]).1, "k\nv\n");
    let (code, _, err) = kv(None, &["get", "k"]);
    assert_eq!(
        (code, err.as_str()),
        (Some(1), "Error: etcdserver: user name is empty\n")
    );
    let (_, _, err) = kv(Some("root:wrong"), &["get", "k"]);
    assert_eq!(
        err,
        "Error: etcdserver: authentication failed, invalid user ID or password\n"
    );

    // A backup keeps users, roles and the switch: restored into etcd and into ekmat,
    // the cluster comes back with auth on, and root's password still works.
    let file = c.dir.path().join("auth-backup.db");
    let save = ["snapshot", "save", file.to_str().unwrap()];
    let saved = run(&ekmat[0], ROOT, &save, None);
    assert!(saved.ok, "{saved:?}");
    let restored = Etcd::start_restored(|name, peer, dir| {
        let args = support::etcd_restore_args(&file, name, peer, dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert!(run(&etcd.url, None, &args, None).ok);
    })
    .expect("etcd is installed");
    restored.wait_ready().await;
    let mut fresh = Cluster::configure(3, |cfg| cfg.corrupt_check_ms = 200);
    for i in 0..3 {
        support::write_config(&fresh.config_path(i), &fresh.cfgs[i]);
        let out = support::restore(&file, &fresh.config_path(i));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !said.contains("left out"), "{said}");
    }
    for i in 0..3 {
        fresh.spawn(i);
    }
    fresh.leader(Duration::from_secs(15)).await;
    // Restored with auth on but no token secret (a backup holds none): before anyone
    // logs in, the leader's corruption check has the cluster choose one and compares.
    let compared = || support::metric_sum(&fresh, "ekmat_corruption_peers_compared_total");
    let started = std::time::Instant::now();
    while compared() < 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the restored cluster never compared hashes\n{}",
            fresh.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for endpoints in [restored.url.clone(), fresh.endpoints().join(",")] {
        let anonymous = run(&endpoints, None, &["get", "k"], None);
        assert_eq!(
            anonymous.error, "Error: etcdserver: user name is empty",
            "{endpoints}"
        );
        let as_root = run(&endpoints, ROOT, &["get", "k"], None);
        assert_eq!(as_root.out, "k\nv\n", "{endpoints}: {as_root:?}");
        let users = run(&endpoints, ROOT, &["user", "list"], None);
        assert_eq!(users.out, "root\n", "{endpoints}");
    }
}
