//! Leases and watches on a real 3-process cluster, through etcd's gRPC API: leases expire
//! through the log (also after the leader is killed), watchers on followers see what the
//! leader wrote, and a watcher that stops reading neither stalls the cluster nor loses
//! events.

mod support;

use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_api::mvccpb;
use pb::watch_request::RequestUnion;
use support::{Cluster, Etcd, channel, metric, put_revision, scrape};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

type Kv = pb::kv_client::KvClient<Channel>;
type Lease = pb::lease_client::LeaseClient<Channel>;

async fn kv(c: &Cluster, i: usize) -> Kv {
    pb::kv_client::KvClient::new(channel(&c.endpoint(i)).await.unwrap())
}

async fn lease(c: &Cluster, i: usize) -> Lease {
    pb::lease_client::LeaseClient::new(channel(&c.endpoint(i)).await.unwrap())
}

async fn put(kv: &mut Kv, key: &str, value: &str, lease: i64) {
    kv.put(pb::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Whether member `i` has `key`, by a serializable read of its own state.
async fn has_key(c: &Cluster, i: usize, key: &str) -> bool {
    let Ok(ch) = channel(&c.endpoint(i)).await else {
        return false;
    };
    pb::kv_client::KvClient::new(ch)
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .is_ok_and(|r| r.into_inner().count == 1)
}

/// Wait until no member in `members` has `key`. Returns how long that took.
async fn wait_gone(c: &Cluster, members: &[usize], key: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut gone = true;
        for &i in members {
            gone &= !has_key(c, i, key).await;
        }
        if gone {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{key} still there after {within:?}; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn grant(lease: &mut Lease, ttl: i64) -> i64 {
    let g = lease
        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.ttl, ttl);
    g.id
}

/// One keep-alive through member `i`, giving up after a second. Whether it got a TTL.
async fn keep_alive(c: &Cluster, i: usize, id: i64) -> bool {
    let once = async {
        let mut client = lease(c, i).await;
        let (tx, rx) = mpsc::channel(1);
        tx.send(pb::LeaseKeepAliveRequest { id }).await.ok()?;
        let mut answers = client
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .ok()?
            .into_inner();
        answers.message().await.ok()?.map(|a| a.ttl)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), once).await,
        Ok(Some(ttl)) if ttl > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_nobody_keeps_alive_expires_on_every_member_with_its_keys() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    // Granted through a follower (forwarded to the leader), keys written through the
    // leader.
    let id = grant(&mut lease(&c, follower).await, 2).await;
    let mut kv = kv(&c, leader).await;
    put(&mut kv, "session/a", "1", id).await;
    put(&mut kv, "session/b", "2", id).await;
    let ttl = lease(&c, follower)
        .await
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 2);
    assert!((0..=2).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.keys, [b"session/a".to_vec(), b"session/b".to_vec()]);

    // Nobody writes and nobody keeps it alive: the leader's ticks expire it.
    let took = wait_gone(&c, &[0, 1, 2], "session/a", Duration::from_secs(6)).await;
    assert!(!has_key(&c, follower, "session/b").await);
    assert!(
        took >= Duration::from_millis(1000),
        "expired early: {took:?}"
    );
    let after = lease(&c, leader)
        .await
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.ttl, -1, "etcd's answer for a lease that is gone");
    let leases = lease(&c, follower)
        .await
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(leases.leases.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_leader_kill_while_kept_alive_and_the_new_leader_expires_them() {
    let mut c = Cluster::start(3);
    let first = c.leader(Duration::from_secs(15)).await;
    let id = grant(&mut lease(&c, first).await, 3).await;
    put(&mut kv(&c, first).await, "held", "v", id).await;
    let abandoned = grant(&mut lease(&c, first).await, 3).await;
    put(&mut kv(&c, first).await, "abandoned", "v", abandoned).await;
    // Every member has applied both keys before the leader dies.
    for i in 0..3 {
        while !(has_key(&c, i, "held").await && has_key(&c, i, "abandoned").await) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    c.kill9(first);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    // The holder keeps its lease alive through whichever member answers, for longer
    // than its TTL, across the election.
    let kept_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < kept_until {
        for &i in &survivors {
            if keep_alive(&c, i, id).await {
                break;
            }
        }
        for &i in &survivors {
            assert!(
                has_key(&c, i, "held").await,
                "member {i} lost a lease that was kept alive; logs:\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let second = c.leader(Duration::from_secs(10)).await;
    assert_ne!(second, first);
    // The lease nobody kept alive is gone (the new leader renewed it once, for a full
    // TTL, when it took over); the kept one is there.
    wait_gone(&c, &survivors, "abandoned", Duration::from_secs(5)).await;
    for &i in &survivors {
        assert!(
            has_key(&c, i, "held").await,
            "member {i} lost the kept lease"
        );
    }
    // Now its holder stops too: the new leader expires it within a TTL and a tick.
    let took = wait_gone(&c, &survivors, "held", Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "expired early: {took:?}"
    );
}

/// A watch stream on a channel of its own (no request timeout: it lives long), opened
/// with watcher `first`, and that watcher's `created` response. The create goes out
/// with the stream: etcd (grpc-go) sends a stream's headers only with its first
/// message, which the client would otherwise wait for before sending anything.
async fn watch_stream(
    url: &str,
    first: pb::WatchCreateRequest,
) -> (
    mpsc::Sender<pb::WatchRequest>,
    Streaming<pb::WatchResponse>,
    pb::WatchResponse,
) {
    let ch = Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    send(&tx, RequestUnion::CreateRequest(first)).await;
    let mut stream = pb::watch_client::WatchClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = next(&mut stream).await;
    (tx, stream, created)
}

fn create(key: &str, range_end: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec().into(),
        range_end: range_end.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn send(tx: &mpsc::Sender<pb::WatchRequest>, req: RequestUnion) {
    tx.send(pb::WatchRequest {
        request_union: Some(req),
    })
    .await
    .unwrap();
}

async fn next(stream: &mut Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .unwrap()
        .expect("the stream is open")
}

fn summary(events: &[mvccpb::Event]) -> Vec<(i32, String, String)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
            (e.r#type, text(kv.key.to_vec()), text(kv.value.to_vec()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_a_follower_sees_writes_made_through_the_leader() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let follower = (leader + 2) % 3;
    let first = create("app/", "app0");
    let (tx, mut stream, created) = watch_stream(&c.endpoint(follower), first).await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 0, "ids start at 0 on each stream");
    let mut no_puts = create("app/", "app0");
    no_puts.filters = vec![pb::watch_create_request::FilterType::Noput as i32];
    no_puts.prev_kv = true;
    no_puts.watch_id = 7;
    send(&tx, RequestUnion::CreateRequest(no_puts)).await;
    assert_eq!(next(&mut stream).await.watch_id, 7);
    // A taken id is refused, as etcd refuses it.
    let mut taken = create("x", "");
    taken.watch_id = 7;
    send(&tx, RequestUnion::CreateRequest(taken)).await;
    let refused = next(&mut stream).await;
    assert!(refused.created && refused.canceled, "{refused:?}");
    assert_eq!(
        refused.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    let mut kv = kv(&c, leader).await;
    put(&mut kv, "app/a", "1", 0).await;
    put(&mut kv, "elsewhere", "x", 0).await;
    put(&mut kv, "app/a", "2", 0).await;
    kv.delete_range(pb::DeleteRangeRequest {
        key: "app/a".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut seen = Vec::new();
    let mut deletes = Vec::new();
    while seen.len() < 3 || deletes.is_empty() {
        let r = next(&mut stream).await;
        match r.watch_id {
            0 => seen.extend(summary(&r.events)),
            7 => deletes.extend(r.events),
            other => panic!("unexpected watch id {other}: {r:?}"),
        }
    }
    let put_type = mvccpb::event::EventType::Put as i32;
    let delete_type = mvccpb::event::EventType::Delete as i32;
    assert_eq!(
        seen,
        [
            (put_type, "app/a".into(), "1".into()),
            (put_type, "app/a".into(), "2".into()),
            (delete_type, "app/a".into(), String::new()),
        ]
    );
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].prev_kv.as_ref().unwrap().value, &b"2"[..]);

    // Progress: every event up to the header's revision has been sent.
    send(
        &tx,
        RequestUnion::ProgressRequest(pb::WatchProgressRequest {}),
    )
    .await;
    let progress = next(&mut stream).await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty());
    assert_eq!(progress.header.unwrap().revision, 5);

    send(
        &tx,
        RequestUnion::CancelRequest(pb::WatchCancelRequest { watch_id: 0 }),
    )
    .await;
    let canceled = next(&mut stream).await;
    assert!(canceled.canceled && canceled.watch_id == 0, "{canceled:?}");
    // Replay from history, on the same stream.
    let mut replay = create("app/", "app0");
    replay.start_revision = 1;
    send(&tx, RequestUnion::CreateRequest(replay)).await;
    let created = next(&mut stream).await;
    assert!(created.created);
    assert_eq!(
        created.watch_id, 1,
        "the lowest free id after the last one given"
    );
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        replayed.extend(summary(&next(&mut stream).await.events));
    }
    assert_eq!(replayed, seen);
}

/// Prometheus text: the value of the first sample named `name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_stalls_nothing_and_catches_up_from_history() {
    // The client buffers about 2 MiB of responses, the server 64 responses and 4096
    // applied entries: 8000 writes of 2 KiB overflow all of it.
    const WRITES: usize = 8000;
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let (_tx, mut stream, created) = watch_stream(&c.endpoint(leader), create("k/", "k0")).await;
    assert!(created.created);

    // The watcher reads nothing while many more entries apply than the node buffers.
    let started = Instant::now();
    let value = "v".repeat(2048);
    let mut tasks = Vec::new();
    for w in 0..32 {
        let mut kv = kv(&c, leader).await;
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..WRITES).step_by(32) {
                put(&mut kv, &format!("k/{i:05}"), &value, 0).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "writes stalled: {took:?}");

    // Now it reads: every event, once, in revision order.
    let mut revisions = Vec::new();
    while revisions.len() < WRITES {
        let r = next(&mut stream).await;
        assert!(!r.canceled, "{r:?}");
        revisions.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    let expected: Vec<i64> = (2..2 + WRITES as i64).collect();
    assert_eq!(revisions, expected);
    let text = scrape(c.cfgs[leader].members[leader].metrics.unwrap());
    assert!(
        metric(&text, "ekmat_watch_resyncs_total").is_some_and(|n| n >= 1.0),
        "the watcher lagged and resynced from history"
    );
}

/// What watchers see of one revision too large for one response (a ranged delete of
/// keys holding 2.4 MB, watched with `prev_kv`).
#[derive(Debug, PartialEq)]
struct Watched {
    /// Per response, (events, fragment), for a live watcher that asked for fragments,
    live: Vec<(usize, bool)>,
    /// one that did not,
    whole: Vec<(usize, bool)>,
    /// and one that asked for fragments and replays the revision from history.
    replayed: Vec<(usize, bool)>,
    /// Per response to a watcher replaying every revision, the revisions it holds.
    history: Vec<Vec<i64>>,
}

/// [`Watched`], at the server at `url`.
async fn big_revision_as_watched(url: &str) -> Watched {
    const KEYS: usize = 80;
    let mut kv = pb::kv_client::KvClient::new(channel(url).await.unwrap());
    let value = "v".repeat(30_000);
    let mut first = 0;
    for i in 0..KEYS {
        let rev = put_revision(&mut kv, format!("f/{i:02}"), value.clone()).await;
        first = if first == 0 { rev } else { first };
    }
    let watcher = |fragment: bool, start_revision: i64| pb::WatchCreateRequest {
        prev_kv: true,
        fragment,
        start_revision,
        ..create("f/", "f0")
    };
    let mut fragmented = watch_stream(url, watcher(true, 0)).await;
    let mut whole = watch_stream(url, watcher(false, 0)).await;
    assert!(fragmented.2.created && whole.2.created);
    let delete = pb::DeleteRangeRequest {
        key: "f/".into(),
        range_end: "f0".into(),
        ..Default::default()
    };
    let deleted = kv.delete_range(delete).await.unwrap().into_inner();
    assert_eq!(deleted.deleted, KEYS as i64);
    let rev = deleted.header.unwrap().revision;

    let mut replayed = watch_stream(url, watcher(true, rev)).await;
    assert!(replayed.2.created);
    let mut shapes = Vec::new();
    for stream in [&mut fragmented.1, &mut whole.1, &mut replayed.1] {
        let (mut shape, mut events) = (Vec::new(), 0);
        while events < KEYS {
            let r = next(stream).await;
            assert!(
                r.events.iter().all(|e| e.prev_kv.is_some()),
                "prev_kv asked for"
            );
            events += r.events.len();
            shape.push((r.events.len(), r.fragment));
        }
        shapes.push(shape);
    }

    // Every revision from the first put on, without prev_kv: 80 puts and 80 deletes.
    let every = pb::WatchCreateRequest {
        start_revision: first,
        ..create("f/", "f0")
    };
    let mut all = watch_stream(url, every).await;
    assert!(all.2.created);
    let (mut groups, mut events) = (Vec::new(), 0);
    while events < 2 * KEYS {
        let r = next(&mut all.1).await;
        assert!(!r.fragment);
        events += r.events.len();
        let mut revs: Vec<i64> = r
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        revs.dedup();
        groups.push(revs);
    }
    let [live, whole, replayed] = <[_; 3]>::try_from(shapes).unwrap();
    Watched {
        live,
        whole,
        replayed,
        history: groups,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_too_large_for_one_response_is_fragmented_as_etcd_does_when_asked() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let ours = big_revision_as_watched(&c.endpoint(leader)).await;
    // 80 events of ~30 KB: 69 fit under etcd's 1.5 MiB request limit plus 512 KiB.
    assert_eq!(ours.live, [(69, true), (11, false)]);
    assert_eq!(ours.replayed, ours.live);
    assert_eq!(ours.whole, [(80, false)], "no fragments unless asked");
    // History is cut between revisions only, each revision's events together.
    let revisions: Vec<i64> = ours.history.concat();
    assert!(
        revisions.len() == 81 && revisions.is_sorted(),
        "80 puts and one delete, each revision in one response: {:?}",
        ours.history
    );
    assert!(ours.history.len() > 1, "cut at ~1 MiB");

    // etcd itself answers the same, except that it sends that history (2.4 MB) in one
    // response where ekmat cuts it at ~1 MiB.
    let Some(etcd) = Etcd::start() else {
        return;
    };
    etcd.wait_ready().await;
    let theirs = big_revision_as_watched(&etcd.url).await;
    assert_eq!(theirs.history.concat(), ours.history.concat());
    assert_eq!(
        Watched {
            history: vec![],
            ..theirs
        },
        Watched {
            history: vec![],
            ..ours
        }
    );
}

/// The log index member `i` has applied.
async fn applied(c: &Cluster, i: usize) -> u64 {
    support::status(&c.endpoint(i))
        .await
        .unwrap()
        .raft_applied_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_keep_alives_keep_the_lease_without_a_log_entry_each() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let id = grant(&mut lease(&c, leader).await, 3).await;
    let mut kv = kv(&c, leader).await;
    put(&mut kv, "held", "1", id).await;

    // Keep-alives on one stream through a follower, as fast as answers come, for longer
    // than the TTL: the lease must live on, and only about one renewal per half second
    // may reach the log.
    let mut client = lease(&c, follower).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::LeaseKeepAliveRequest { id }).await.unwrap();
    let mut answers = client
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let before = applied(&c, leader).await;
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(4) {
        let answer = answers.message().await.unwrap().expect("an answer");
        assert_eq!(answer.ttl, 3, "a live lease answers its granted TTL");
        count += 1;
        tx.send(pb::LeaseKeepAliveRequest { id }).await.unwrap();
    }
    let entries = applied(&c, leader).await - before;
    assert!(count > 100, "only {count} keep-alives in 4 s");
    assert!(
        entries < count / 4 && entries < 40,
        "{count} keep-alives took {entries} log entries"
    );
    assert!(
        has_key(&c, leader, "held").await,
        "the lease outlived its TTL"
    );

    // Once keep-alives stop, the lease runs out as granted.
    drop(tx);
    wait_gone(&c, &[0, 1, 2], "held", Duration::from_secs(8)).await;
}
