//! The Rust `etcd-client` crate against a real 3-process ekmat cluster: every service it
//! speaks (KV, Watch, Lease, Cluster, Maintenance, Election, Lock), held to what etcd
//! answers — values, revisions, error codes and messages.

mod support;

use std::time::{Duration, Instant};

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, Compare, CompareOp, ConnectOptions, Error,
    EventType, GetOptions, LeaseTimeToLiveOptions, LockOptions, Permission, ProclaimOptions,
    PutOptions, ResignOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use sha2::{Digest, Sha256};
use support::Cluster;

const WAIT: Duration = Duration::from_secs(10);

/// A started cluster with a leader, and a client of member `i`.
async fn cluster_with(tweak: impl Fn(&mut ekmat_node::NodeConfig)) -> Cluster {
    let c = Cluster::start_with(3, tweak);
    c.leader(WAIT).await;
    c
}

async fn client(c: &Cluster, i: usize) -> Client {
    let started = Instant::now();
    loop {
        match Client::connect([c.endpoint(i)], None).await {
            Ok(client) => return client,
            Err(e) => assert!(started.elapsed() < WAIT, "connect {}: {e}", c.endpoint(i)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gRPC code and message of a failed call.
fn grpc<T: std::fmt::Debug>(result: Result<T, Error>) -> (tonic::Code, String) {
    match result {
        Err(Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

async fn value(client: &mut Client, key: &str) -> Option<String> {
    let r = client.get(key, None).await.unwrap();
    r.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch response in time")
        .unwrap()
        .expect("the watch stream is open")
}

#[tokio::test]
async fn kv_put_get_range_delete_txn_and_compact() {
    let c = cluster_with(|_| {}).await;
    let mut cl = client(&c, 1).await;

    let first = cl.put("a", "1", None).await.unwrap();
    let rev_a = first.header().unwrap().revision();
    assert_eq!(rev_a, 2, "an empty store is at revision 1");
    let second = cl.put("a", "2", Some(PutOptions::new().with_prev_key()));
    let second = second.await.unwrap();
    assert_eq!(second.prev_key().unwrap().value_str().unwrap(), "1");
    cl.put("b", "3", None).await.unwrap();
    cl.put("c", "4", None).await.unwrap();

    let a = cl.get("a", None).await.unwrap();
    let kv = &a.kvs()[0];
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 3, 2)
    );
    let old = cl.get("a", Some(GetOptions::new().with_revision(rev_a)));
    assert_eq!(old.await.unwrap().kvs()[0].value_str().unwrap(), "1");
    let range = cl.get("a", Some(GetOptions::new().with_range("c")));
    let keys: Vec<String> = range
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|k| k.key_str().unwrap().into())
        .collect();
    assert_eq!(keys, ["a", "b"]);
    let all = cl.get(
        "",
        Some(GetOptions::new().with_all_keys().with_count_only()),
    );
    assert_eq!(all.await.unwrap().count(), 3);

    // A compare-and-swap that holds, then one that does not.
    let cas = |expect: &str, new: &str| {
        Txn::new()
            .when([Compare::value("a", CompareOp::Equal, expect)])
            .and_then([TxnOp::put("a", new, None)])
            .or_else([TxnOp::get("a", None)])
    };
    let won = cl.txn(cas("2", "5")).await.unwrap();
    assert!(won.succeeded());
    let lost = cl.txn(cas("2", "6")).await.unwrap();
    assert!(!lost.succeeded());
    match &lost.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value_str().unwrap(), "5"),
        other => panic!("expected the failure branch's get, got {other:?}"),
    }
    let twice = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    assert_eq!(
        grpc(cl.txn(twice).await),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );

    let deleted = cl.delete("b", Some(etcd_client::DeleteOptions::new().with_prev_key()));
    let deleted = deleted.await.unwrap();
    assert_eq!(deleted.deleted(), 1);
    assert_eq!(deleted.prev_kvs()[0].value_str().unwrap(), "3");
    let now = deleted.header().unwrap().revision();
    // Deleting nothing takes no revision.
    let none = cl.delete("nothing", None).await.unwrap();
    assert_eq!(
        (none.deleted(), none.header().unwrap().revision()),
        (0, now)
    );

    cl.compact(now, None).await.unwrap();
    let gone = cl
        .get("a", Some(GetOptions::new().with_revision(rev_a)))
        .await;
    assert_eq!(
        grpc(gone),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    assert_eq!(
        grpc(cl.compact(now - 1, None).await),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    // Every member serves the same data.
    for i in 0..3 {
        assert_eq!(
            value(&mut client(&c, i).await, "a").await.as_deref(),
            Some("5")
        );
    }
}

#[tokio::test]
async fn watch_create_prev_kv_cancel_and_history() {
    let c = cluster_with(|_| {}).await;
    let mut cl = client(&c, 0).await;
    let mut writer = client(&c, 2).await;

    let opts = WatchOptions::new().with_prefix().with_prev_key();
    let mut stream = cl.watch("w/", Some(opts)).await.unwrap();
    let created = next(&mut stream).await;
    assert!(created.created());
    let id = created.watch_id();

    let first = writer
        .put("w/x", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    writer.put("w/x", "2", None).await.unwrap();
    writer.put("elsewhere", "0", None).await.unwrap();
    writer.delete("w/x", None).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 3 {
        let r = next(&mut stream).await;
        assert_eq!(r.watch_id(), id);
        events.extend(r.events().iter().map(|e| {
            let kv = e.kv().unwrap();
            let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
            (
                e.event_type(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
                prev,
            )
        }));
    }
    assert_eq!(
        events,
        [
            (EventType::Put, "1".into(), first, None),
            (EventType::Put, "2".into(), first + 1, Some("1".into())),
            (EventType::Delete, "".into(), first + 3, Some("2".into())),
        ]
    );

    stream.cancel(id).await.unwrap();
    let canceled = next(&mut stream).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), id);

    // A second watch on the same stream replays history from a past revision.
    let replay = WatchOptions::new().with_start_revision(first + 1);
    stream.watch("w/x", Some(replay)).await.unwrap();
    let created = next(&mut stream).await;
    assert!(created.created());
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        let r = next(&mut stream).await;
        replayed.extend(
            r.events()
                .iter()
                .map(|e| (e.event_type(), e.kv().unwrap().mod_revision())),
        );
    }
    assert_eq!(
        replayed,
        [(EventType::Put, first + 1), (EventType::Delete, first + 3)]
    );
}

#[tokio::test]
async fn lease_grant_keep_alive_ttl_leases_and_revoke() {
    let c = cluster_with(|_| {}).await;
    let mut cl = client(&c, 1).await;

    let lease = cl.lease_grant(30, None).await.unwrap();
    assert_eq!(lease.ttl(), 30);
    let id = lease.id();
    cl.put("held", "x", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();

    let (mut keeper, mut answers) = cl.lease_keep_alive(id).await.unwrap();
    for _ in 0..2 {
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(WAIT, answers.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((r.id(), r.ttl()), (id, 30));
    }

    let ttl = cl.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()));
    let ttl = ttl.await.unwrap();
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 30));
    assert!((28..=30).contains(&ttl.ttl()), "ttl {}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"held".to_vec()]);
    let ids: Vec<i64> = cl
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(ids, [id]);

    cl.lease_revoke(id).await.unwrap();
    assert_eq!(
        value(&mut cl, "held").await,
        None,
        "revoking deletes the lease's keys"
    );
    assert_eq!(cl.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    assert_eq!(
        grpc(cl.lease_revoke(id).await),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    // A keep-alive of a lease that is gone answers TTL 0, which is how clients learn it.
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(WAIT, answers.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.ttl(), 0);
}

#[tokio::test]
async fn cluster_members_status_hash_kv_snapshot_and_alarms() {
    let c = cluster_with(|_| {}).await;
    let mut cl = client(&c, 0).await;
    for i in 0..20 {
        cl.put(format!("k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }

    let members = cl.member_list().await.unwrap();
    let mut names: Vec<(String, Vec<String>)> = members
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.client_urls().to_vec()))
        .collect();
    names.sort();
    let expected: Vec<(String, Vec<String>)> = (0..3)
        .map(|i| (format!("n{i}"), vec![c.endpoint(i)]))
        .collect();
    assert_eq!(names, expected);
    let ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();

    // Every member names the same leader, one of the members, and the same data.
    let mut leaders = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut m = client(&c, i).await;
        let s = m.status().await.unwrap();
        assert!(ids.contains(&s.header().unwrap().member_id()));
        assert!(s.errors().is_empty(), "{:?}", s.errors());
        assert!(s.db_size() > 0);
        leaders.push(s.leader());
        // A follower answers once it has applied revision 21 (before, it is a future one).
        let started = Instant::now();
        let h = loop {
            match m.hash_kv(21).await {
                Ok(h) => break h,
                Err(e) => assert!(started.elapsed() < WAIT, "member {i}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        hashes.push((h.hash(), h.compact_version()));
    }
    assert!(ids.contains(&leaders[0]) && leaders.iter().all(|&l| l == leaders[0]));
    assert!(hashes.iter().all(|&h| h == hashes[0]));

    snapshot_holds_the_data(&mut cl).await;
    corrupt_alarm_stops_writes_until_cleared(&mut cl, ids[2]).await;
}

/// The snapshot stream counts down to its last data chunk, ends with the SHA-256 of the
/// data, and the data is a bbolt database in etcd's layout holding what was written.
async fn snapshot_holds_the_data(cl: &mut Client) {
    let mut stream = cl.snapshot().await.unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = stream.message().await.unwrap() {
        frames.push((frame.remaining_bytes(), frame.blob().to_vec()));
    }
    let (sha, data) = frames.split_last().unwrap();
    assert_eq!(sha.0, 0);
    assert_eq!(data.last().unwrap().0, 0);
    assert!(data.windows(2).all(|w| w[0].0 > w[1].0));
    let content: Vec<u8> = data.iter().flat_map(|(_, blob)| blob.clone()).collect();
    assert_eq!(sha.1, Sha256::digest(&content).to_vec());
    assert_eq!(content.len() % 512, 0, "etcdctl wants 512-byte multiples");
    let backup = ekmat_node::backup::decode(&content).unwrap();
    let k7 = backup
        .revisions
        .iter()
        .rev()
        .find(|r| r.kv.key[..] == b"k7"[..])
        .expect("k7 is in the backup");
    assert_eq!(k7.kv.value, &b"v7"[..]);
    let now = cl.get("k7", None).await.unwrap();
    assert_eq!(now.kvs()[0].mod_revision(), k7.main);
}

async fn corrupt_alarm_stops_writes_until_cleared(cl: &mut Client, member: u64) {
    let mut on = AlarmOptions::new();
    on.with_member(member);
    let raised = cl
        .alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(on))
        .await
        .unwrap();
    assert_eq!(raised.alarms().len(), 1);
    let listed = cl
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    let listed: Vec<(u64, AlarmType)> = listed
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(listed, [(member, AlarmType::Corrupt)]);
    assert_eq!(
        grpc(cl.put("k0", "x", None).await),
        (tonic::Code::DataLoss, "etcdserver: corrupt cluster".into())
    );
    assert_eq!(
        value(cl, "k0").await.as_deref(),
        Some("v0"),
        "reads still work"
    );
    let errors = cl.status().await.unwrap().errors().to_vec();
    assert_eq!(errors, [format!("memberID:{member} alarm:CORRUPT ")]);

    let mut off = AlarmOptions::new();
    off.with_member(member);
    let cleared = cl
        .alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(off))
        .await
        .unwrap();
    assert_eq!(cleared.alarms().len(), 1);
    cl.put("k0", "x", None).await.unwrap();
}

#[tokio::test]
async fn nospace_is_raised_past_the_quota_and_space_can_be_freed() {
    const QUOTA: u64 = 32 * 1024;
    let c = cluster_with(|cfg| cfg.quota_backend_bytes = QUOTA).await;
    let mut cl = client(&c, 1).await;
    let member = cl.status().await.unwrap().header().unwrap().member_id();
    cl.put("spare", "0", None).await.unwrap();
    let big = "x".repeat(1024);
    let mut refused = None;
    for i in 0..64 {
        if let Err(e) = cl.put(format!("big{i}"), big.as_str(), None).await {
            refused = Some(grpc::<()>(Err(e)));
            break;
        }
    }
    let no_space = (
        tonic::Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded".to_string(),
    );
    assert_eq!(
        refused,
        Some(no_space.clone()),
        "a quota of {QUOTA} bytes is reached"
    );

    // The alarm is the cluster's: every member lists it once it has applied it.
    for i in 0..3 {
        let mut m = client(&c, i).await;
        let expected = vec![format!("memberID:{member} alarm:NOSPACE ")];
        let started = Instant::now();
        while m.status().await.unwrap().errors() != expected.as_slice() {
            assert!(
                started.elapsed() < WAIT,
                "member {i} never listed the alarm"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every member refuses what adds data: "small" and a lease fit under the quota, so
    // it is the replicated alarm, not the member's own quota check, that refuses them.
    for i in 0..3 {
        let mut m = client(&c, i).await;
        assert_eq!(grpc(m.put("small", "1", None).await), no_space);
        assert_eq!(grpc(m.lease_grant(60, None).await), no_space);
    }
    let alarms = cl.alarm(AlarmAction::Get, AlarmType::Nospace, None);
    let alarms = alarms.await.unwrap();
    let listed: Vec<(u64, AlarmType)> = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(listed, [(member, AlarmType::Nospace)]);

    // Deleting and compacting still work: they are how space comes back. A compaction
    // keeps the versions a watch from its revision on still needs, so it goes one
    // revision past the deletion. Then every alarm is cleared, as `etcdctl alarm disarm`
    // does, and writes go through again.
    let prefix = etcd_client::DeleteOptions::new().with_prefix();
    assert!(cl.delete("big", Some(prefix)).await.unwrap().deleted() > 0);
    let last = cl.delete("spare", None).await.unwrap();
    let before = cl.status().await.unwrap().db_size();
    cl.compact(last.header().unwrap().revision(), None)
        .await
        .unwrap();
    assert!(cl.status().await.unwrap().db_size() < before / 4);
    for a in alarms.alarms() {
        let mut off = AlarmOptions::new();
        off.with_member(a.member_id());
        let cleared = cl.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(off));
        assert_eq!(cleared.await.unwrap().alarms().len(), 1);
    }
    assert!(cl.status().await.unwrap().errors().is_empty());
    cl.put("small", "1", None).await.unwrap();
    assert_eq!(value(&mut cl, "small").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn election_campaign_leader_proclaim_observe_resign_and_lock() {
    let c = cluster_with(|_| {}).await;
    let mut cl = client(&c, 0).await;
    let mut other = client(&c, 2).await;
    let l1 = cl.lease_grant(30, None).await.unwrap().id();
    let l2 = cl.lease_grant(30, None).await.unwrap().id();

    let won = cl.campaign("race", "first", l1).await.unwrap();
    let key = won.leader().unwrap().clone();
    assert_eq!(key.name(), b"race");
    let leader = cl.leader("race").await.unwrap();
    assert_eq!(leader.kv().unwrap().value_str().unwrap(), "first");

    let mut observe = other.observe("race").await.unwrap();
    let seen = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value_str().unwrap(), "first");

    // The second campaigner waits in line until the first resigns.
    let mut second = other.clone();
    let waiting = tokio::spawn(async move { second.campaign("race", "second", l2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "only one leader at a time");

    cl.proclaim(
        "updated",
        Some(ProclaimOptions::new().with_leader(key.clone())),
    )
    .await
    .unwrap();
    let seen = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value_str().unwrap(), "updated");

    cl.resign(Some(ResignOptions::new().with_leader(key)))
        .await
        .unwrap();
    let next_leader = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(
        next_leader.leader().unwrap().key(),
        won.leader().unwrap().key()
    );
    let leader = other.leader("race").await.unwrap();
    assert_eq!(leader.kv().unwrap().value_str().unwrap(), "second");

    // Lock: one holder at a time, the next goes when it unlocks.
    let held = cl
        .lock("mutex", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    assert!(held.key().starts_with(b"mutex/"));
    let mut second = other.clone();
    let waiting = tokio::spawn(async move {
        second
            .lock("mutex", Some(LockOptions::new().with_lease(l2)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the lock is held");
    cl.unlock(held.key()).await.unwrap();
    let next_holder = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next_holder.key().starts_with(b"mutex/") && next_holder.key() != held.key());
}

#[tokio::test]
async fn a_user_writes_only_where_its_role_allows_and_logs_in_again_when_its_token_expires() {
    let c = cluster_with(|cfg| {
        cfg.auth_token_ttl = 2;
        cfg.bcrypt_cost = 4;
    })
    .await;
    let mut admin = client(&c, 0).await;
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("app").await.unwrap();
    let prefix = Permission::read_write("app/").with_prefix();
    admin.role_grant_permission("app", prefix).await.unwrap();
    admin.user_add("svc", "svcpw", None).await.unwrap();
    admin.user_grant_role("svc", "app").await.unwrap();
    admin.auth_enable().await.unwrap();

    let login = |refresh: bool| {
        let endpoints = c.endpoints();
        async move {
            let options = ConnectOptions::new()
                .with_user("svc", "svcpw")
                .with_auto_token_refresh(refresh);
            Client::connect(endpoints, Some(options)).await.unwrap()
        }
    };
    let mut svc = login(true).await;
    svc.put("app/a", "1", None).await.unwrap();
    assert_eq!(
        grpc(svc.put("other", "1", None).await),
        (
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );
    assert_eq!(
        grpc(admin.get("app/a", None).await),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        ),
        "the client without a user is now refused"
    );
    // A lease's keys are shown only to those who may read them (etcd's fix for
    // CVE-2023-32082, after 3.4.23).
    let as_root = ConnectOptions::new().with_user("root", "rootpw");
    let mut root = Client::connect(c.endpoints(), Some(as_root)).await.unwrap();
    let lease = root.lease_grant(60, None).await.unwrap().id();
    let leased = PutOptions::new().with_lease(lease);
    root.put("secret", "s", Some(leased)).await.unwrap();
    let with_keys = LeaseTimeToLiveOptions::new().with_keys();
    assert_eq!(
        grpc(svc.lease_time_to_live(lease, Some(with_keys.clone())).await),
        (
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );
    let shown = root
        .lease_time_to_live(lease, Some(with_keys))
        .await
        .unwrap();
    assert_eq!(shown.keys(), [b"secret".to_vec()]);
    assert!(
        svc.lease_time_to_live(lease, None).await.is_ok(),
        "without keys"
    );

    let mut stale = login(false).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        grpc(stale.get("app/a", None).await),
        (
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        ),
        "tokens expire"
    );
    // The refreshing client logs in again and goes on, on every member.
    for _ in 0..3 {
        let got = svc.get("app/a", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"1");
    }
    let wrong = ConnectOptions::new().with_user("svc", "nope");
    let refused = Client::connect(c.endpoints(), Some(wrong))
        .await
        .map(|_| ());
    assert_eq!(
        grpc(refused),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".into()
        )
    );
}
