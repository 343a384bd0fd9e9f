//! etcd's Election and Lock gRPC services (`v3electionpb.Election`, `v3lockpb.Lock`) on a
//! real ekmat cluster, called through the wire API. The same client session runs against
//! a real etcd 3.4 when `etcd` is installed (Debian's `etcd-server`), and both must show
//! a client the same thing: keys, values, waiting, errors (code and message).
//! `EKMAT_REQUIRE_ETCD=1` turns a missing `etcd` into a failure instead of a skip.

mod support;

use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_api::v3electionpb::{self as el, election_client::ElectionClient};
use ekmat_api::v3lockpb::{self as lk, lock_client::LockClient};
use support::Cluster;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// A channel with no per-call timeout: a Campaign or Lock may wait long.
async fn connect(url: &str) -> Channel {
    let started = Instant::now();
    loop {
        let endpoint = Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect_timeout(Duration::from_millis(500));
        match endpoint.connect().await {
            Ok(ch) => return ch,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(10), "{url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

struct Client {
    lease: pb::lease_client::LeaseClient<Channel>,
    kv: pb::kv_client::KvClient<Channel>,
    election: ElectionClient<Channel>,
    lock: LockClient<Channel>,
}

impl Client {
    async fn new(url: &str) -> Client {
        let ch = connect(url).await;
        Client {
            lease: pb::lease_client::LeaseClient::new(ch.clone()),
            kv: pb::kv_client::KvClient::new(ch.clone()),
            election: ElectionClient::new(ch.clone()),
            lock: LockClient::new(ch),
        }
    }

    async fn grant(&mut self, ttl: i64) -> i64 {
        let r = self.lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 });
        r.await.unwrap().into_inner().id
    }

    async fn exists(&mut self, key: &[u8]) -> bool {
        let r = self.kv.range(pb::RangeRequest {
            key: key.to_vec().into(),
            ..Default::default()
        });
        !r.await.unwrap().into_inner().kvs.is_empty()
    }

    fn campaign(&self, name: &str, lease: i64, value: &str) -> CampaignCall {
        let mut election = self.election.clone();
        let req = el::CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        };
        tokio::spawn(async move { election.campaign(req).await.map(|r| r.into_inner()) })
    }

    fn lock(&self, name: &str, lease: i64) -> LockCall {
        let mut lock = self.lock.clone();
        let req = lk::LockRequest {
            name: name.into(),
            lease,
        };
        tokio::spawn(async move { lock.lock(req).await.map(|r| r.into_inner()) })
    }

    async fn leader(&mut self, name: &str) -> String {
        let r = self
            .election
            .leader(el::LeaderRequest { name: name.into() });
        match r.await {
            Ok(r) => kv_text(r.into_inner().kv),
            Err(e) => status(&e),
        }
    }
}

type CampaignCall = tokio::task::JoinHandle<Result<el::CampaignResponse, tonic::Status>>;
type LockCall = tokio::task::JoinHandle<Result<lk::LockResponse, tonic::Status>>;

fn kv_text(kv: Option<ekmat_api::mvccpb::KeyValue>) -> String {
    let kv = kv.unwrap_or_default();
    format!(
        "{} = {}",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value)
    )
}

/// Whether `call` is still waiting `after` from now.
async fn still_waiting<T>(call: &tokio::task::JoinHandle<T>, after: Duration) -> bool {
    tokio::time::sleep(after).await;
    !call.is_finished()
}

async fn finished<T>(call: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ended within 10 s")
        .unwrap()
}

/// One client's session against `url`, written down as the client sees it, with the
/// two leases' ids (which differ between servers) replaced by `A` and `B`.
async fn session(url: &str) -> Vec<String> {
    let mut c = Client::new(url).await;
    let (a, b) = (c.grant(30).await, c.grant(30).await);
    let mut t = Vec::new();
    let named = |s: String| {
        s.replace(&format!("/{a:x} "), "/A ")
            .replace(&format!("/{b:x} "), "/B ")
    };
    let key_text = |k: &[u8]| named(format!("{} ", String::from_utf8_lossy(k)));
    let log = |t: &mut Vec<String>, line: String| t.push(named(line));

    log(&mut t, format!("leader: {}", c.leader("e").await));
    let ra = finished(c.campaign("e", a, "a1")).await.unwrap();
    let leader_a = ra.leader.clone().unwrap();
    log(
        &mut t,
        format!(
            "campaign: {}name={} lease is the one asked for: {}",
            key_text(&leader_a.key),
            String::from_utf8_lossy(&leader_a.name),
            leader_a.lease == a
        ),
    );
    let current = c.election.leader(el::LeaderRequest { name: "e".into() });
    let current = current.await.unwrap().into_inner().kv.unwrap();
    log(
        &mut t,
        format!(
            "leader: {} rev is the key's create revision: {}",
            kv_text(Some(current.clone())),
            current.create_revision == leader_a.rev
        ),
    );
    let proclaim = |leader: Option<el::LeaderKey>, value: &str| el::ProclaimRequest {
        leader,
        value: value.into(),
    };
    let r = c.election.proclaim(proclaim(Some(leader_a.clone()), "a2"));
    log(&mut t, format!("proclaim a2: {}", r.await.is_ok()));

    let observe = c.election.observe(el::LeaderRequest { name: "e".into() });
    let mut observed = observe.await.unwrap().into_inner();
    let mut next =
        async || match tokio::time::timeout(Duration::from_secs(10), observed.next()).await {
            Ok(Some(Ok(r))) => kv_text(r.kv),
            other => format!("{other:?}"),
        };
    log(&mut t, format!("observe: {}", next().await));

    let campaign_b = c.campaign("e", b, "b1");
    log(
        &mut t,
        format!(
            "second campaigner waits: {}",
            still_waiting(&campaign_b, Duration::from_millis(500)).await
        ),
    );
    let r = c.election.proclaim(proclaim(Some(leader_a.clone()), "a3"));
    log(&mut t, format!("proclaim a3: {}", r.await.is_ok()));
    log(&mut t, format!("observe: {}", next().await));
    let r = c.election.resign(el::ResignRequest {
        leader: Some(leader_a.clone()),
    });
    log(&mut t, format!("resign: {}", r.await.is_ok()));
    let rb = finished(campaign_b).await.unwrap();
    let leader_b = rb.leader.clone().unwrap();
    log(&mut t, format!("campaign: {}", key_text(&leader_b.key)));
    log(&mut t, format!("observe: {}", next().await));

    let r = c.election.proclaim(proclaim(Some(leader_a.clone()), "x"));
    log(
        &mut t,
        format!(
            "stale proclaim: {:?}",
            r.await.map_err(|e| status(&e)).map(|_| ())
        ),
    );
    let r = c.election.resign(el::ResignRequest {
        leader: Some(leader_a.clone()),
    });
    log(
        &mut t,
        format!(
            "stale resign: {:?}",
            r.await.map_err(|e| status(&e)).map(|_| ())
        ),
    );
    let r = c.election.proclaim(proclaim(None, "x"));
    log(
        &mut t,
        format!(
            "proclaim without leader: {:?}",
            r.await.map_err(|e| status(&e)).map(|_| ())
        ),
    );
    let r = c.election.resign(el::ResignRequest { leader: None });
    log(
        &mut t,
        format!(
            "resign without leader: {:?}",
            r.await.map_err(|e| status(&e)).map(|_| ())
        ),
    );
    // Campaigning again with the lease that leads proclaims the new value.
    let again = finished(c.campaign("e", b, "b2"))
        .await
        .unwrap()
        .leader
        .unwrap();
    log(
        &mut t,
        format!("campaign again: same key and rev: {}", again == leader_b),
    );
    log(&mut t, format!("leader: {}", c.leader("e").await));
    log(&mut t, format!("observe: {}", next().await));

    let la = finished(c.lock("l", a)).await.unwrap();
    log(&mut t, format!("lock: {}", key_text(&la.key)));
    let lock_b = c.lock("l", b);
    log(
        &mut t,
        format!(
            "second locker waits: {}",
            still_waiting(&lock_b, Duration::from_millis(500)).await
        ),
    );
    let r = c.lock.unlock(lk::UnlockRequest {
        key: la.key.clone(),
    });
    log(&mut t, format!("unlock: {}", r.await.is_ok()));
    let lb = finished(lock_b).await.unwrap();
    log(&mut t, format!("lock: {}", key_text(&lb.key)));

    // A waiter whose client gives up leaves the line: its key is deleted.
    let abandoned = c.lock("l", a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandoned.abort();
    let lock_key_a = format!("l/{a:x}");
    let gone = wait_until(async || !c.exists(lock_key_a.as_bytes()).await).await;
    log(&mut t, format!("cancelled lock's key deleted: {gone}"));
    let abandoned = c.campaign("e", a, "late");
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandoned.abort();
    let election_key_a = format!("e/{a:x}");
    let gone = wait_until(async || !c.exists(election_key_a.as_bytes()).await).await;
    log(&mut t, format!("cancelled campaign's key deleted: {gone}"));

    let missing = 0x7a11_0000_0000_0001;
    let r = finished(c.lock("l", missing)).await;
    log(
        &mut t,
        format!(
            "lock, no such lease: {:?}",
            r.map_err(|e| status(&e)).map(|_| ())
        ),
    );
    let r = finished(c.campaign("e", missing, "v")).await;
    log(
        &mut t,
        format!(
            "campaign, no such lease: {:?}",
            r.map_err(|e| status(&e)).map(|_| ())
        ),
    );
    t
}

/// Whether `check` comes true within 5 s.
async fn wait_until(mut check: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// What etcd 3.4 shows the client in [`session`] (checked against a real etcd by
/// `the_same_session_against_etcd_shows_the_same`).
const EXPECTED: &[&str] = &[
    "leader: Unknown: election: no leader",
    "campaign: e/A name=e lease is the one asked for: true",
    "leader: e/A = a1 rev is the key's create revision: true",
    "proclaim a2: true",
    "observe: e/A = a2",
    "second campaigner waits: true",
    "proclaim a3: true",
    "observe: e/A = a3",
    "resign: true",
    "campaign: e/B ",
    "observe: e/B = b1",
    "stale proclaim: Err(\"Unknown: election: not leader\")",
    "stale resign: Ok(())",
    "proclaim without leader: Err(\"Unknown: \\\"leader\\\" field must be provided\")",
    "resign without leader: Err(\"Unknown: \\\"leader\\\" field must be provided\")",
    "campaign again: same key and rev: true",
    "leader: e/B = b2",
    "observe: e/B = b2",
    "lock: l/A ",
    "second locker waits: true",
    "unlock: true",
    "lock: l/B ",
    "cancelled lock's key deleted: true",
    "cancelled campaign's key deleted: true",
    "lock, no such lease: Err(\"Unknown: etcdserver: requested lease not found\")",
    "campaign, no such lease: Err(\"Unknown: etcdserver: requested lease not found\")",
];

#[tokio::test]
async fn election_and_lock_services_on_a_follower_show_what_etcd_shows() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    // Through a follower, so every write and linearizable read is forwarded.
    let follower = c.endpoint((leader + 1) % 3);
    let seen = session(&follower).await;
    assert_eq!(seen, EXPECTED, "{}", seen.join("\n"));
}

#[tokio::test]
async fn the_same_session_against_etcd_shows_the_same() {
    let Some(etcd) = support::Etcd::start() else {
        return;
    };
    etcd.wait_ready().await;
    let seen = session(&etcd.url).await;
    assert_eq!(seen, EXPECTED, "{}", seen.join("\n"));
}

/// A waiter whose lease expires (nobody keeps it alive: its client died) is told so,
/// instead of waiting on; the holder keeps what it holds. etcd 3.4 differs here: its
/// waiter waits for the key ahead, then reports a lock or leadership it no longer has.
#[tokio::test]
async fn a_waiter_whose_lease_expires_gets_an_error_instead_of_waiting_forever() {
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let mut client = Client::new(&c.endpoint(0)).await;
    let holder = client.grant(60).await;
    let short = client.grant(2).await;
    finished(client.lock("l", holder)).await.unwrap();
    finished(client.campaign("e", holder, "h")).await.unwrap();
    let started = Instant::now();
    let lock = client.lock("l", short);
    let campaign = client.campaign("e", short, "s");
    let lock = finished(lock).await.map_err(|e| status(&e)).map(|_| ());
    let campaign = finished(campaign).await.map_err(|e| status(&e)).map(|_| ());
    let waited = started.elapsed();
    assert_eq!(lock, Err("Unknown: mutex: session is expired".into()));
    assert_eq!(campaign, Err("Unknown: election: session expired".into()));
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(client.leader("e").await, format!("e/{holder:x} = h"));

    // A revoked lease ends the wait the same way.
    let revoked = client.grant(60).await;
    let lock = client.lock("l", revoked);
    assert!(still_waiting(&lock, Duration::from_millis(300)).await);
    let r = client
        .lease
        .lease_revoke(pb::LeaseRevokeRequest { id: revoked });
    r.await.unwrap();
    let lock = finished(lock).await.map_err(|e| status(&e)).map(|_| ());
    assert_eq!(lock, Err("Unknown: mutex: session is expired".into()));
}

/// A holder that dies (its lease is not revoked, only no longer kept alive) is replaced
/// by the next waiter once the lease expires, through the services alone.
#[tokio::test]
async fn a_dead_leaders_successor_takes_over_when_its_lease_expires() {
    let c = Cluster::start(3);
    c.leader(Duration::from_secs(15)).await;
    let mut client = Client::new(&c.endpoint(1)).await;
    let dead = client.grant(2).await;
    let alive = client.grant(60).await;
    finished(client.campaign("e", dead, "dead")).await.unwrap();
    let observe = client
        .election
        .observe(el::LeaderRequest { name: "e".into() });
    let mut observed = observe.await.unwrap().into_inner();
    let first = observed.next().await.unwrap().unwrap();
    assert_eq!(kv_text(first.kv), format!("e/{dead:x} = dead"));
    let started = Instant::now();
    let third_lease = client.grant(60).await;
    let next = client.campaign("e", alive, "alive");
    assert!(still_waiting(&next, Duration::from_millis(300)).await);
    let third = client.campaign("e", third_lease, "third");
    let next = finished(next).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        next.leader.unwrap().key,
        format!("e/{alive:x}").into_bytes()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let second = tokio::time::timeout(Duration::from_secs(5), observed.next()).await;
    let second = second.unwrap().unwrap().unwrap();
    assert_eq!(kv_text(second.kv), format!("e/{alive:x} = alive"));
    // Exactly one successor: the campaigner behind it still waits.
    assert!(still_waiting(&third, Duration::from_millis(500)).await);
}

/// `ekmat demo leader-election` with short timings: a local cluster, three workers, the
/// leader killed, the next one elected once the lease expires; exit 0.
#[test]
fn the_leader_election_demo_shows_a_handover() {
    let base = support::unused_port_block(203);
    let started = Instant::now();
    let out = support::ekmat()
        .args([
            "demo",
            "leader-election",
            "--lease",
            "2s",
            "--renew",
            "500ms",
        ])
        .args(["--retry", "200ms", "--lead-for", "1s"])
        .args(["--base-port", &base.to_string()])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elected: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(") ").map(|(_, rest)| rest))
        .filter(|l| l.contains(": elected leader"))
        .collect();
    assert_eq!(elected.len(), 2, "{stdout}");
    let worker = |l: &str| l.split(':').next().unwrap_or_default().to_string();
    assert_ne!(worker(elected[0]), worker(elected[1]), "{stdout}");
    let killed = stdout.find("killing ").expect("a kill");
    let handover = stdout.find("handover: ").expect("a handover");
    assert!(killed < handover, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "handover: {} took over from {}",
            worker(elected[1]),
            worker(elected[0])
        )),
        "{stdout}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");

    let bad = support::ekmat()
        .args(["demo", "leader-election", "--lease", "2s", "--renew", "3s"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("must be above zero and shorter than --lease"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
