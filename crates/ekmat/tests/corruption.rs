//! The leader's periodic corruption check (`corrupt_check_ms`, etcd's
//! `--experimental-corrupt-check-time`) against real members over gRPC.

mod support;

use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_node::NodeConfig;
use support::{Cluster, channel, metric, scrape, status};

const CHECK_MS: u64 = 200;

async fn put(url: &str, key: &str, value: &str) -> Result<(), tonic::Status> {
    let ch = channel(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    pb::kv_client::KvClient::new(ch)
        .put(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn alarms(url: &str) -> Result<Vec<(u64, i32)>, String> {
    let ch = channel(url).await.map_err(|e| e.to_string())?;
    let req = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Get as i32,
        member_id: 0,
        alarm: pb::AlarmType::None as i32,
    };
    match pb::maintenance_client::MaintenanceClient::new(ch)
        .alarm(req)
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .alarms
            .iter()
            .map(|a| (a.member_id, a.alarm))
            .collect()),
        Err(e) => Err(e.to_string()),
    }
}

/// Put at member `i`, retrying until it serves (electing, or checking its data at
/// start), for up to 15 s.
async fn put_once_served(c: &Cluster, i: usize, key: &str, value: &str) {
    let started = Instant::now();
    while put(&c.endpoint(i), key, value).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(15), "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Member 2 comes back on its addresses with other data: a store of its own (another
/// cluster name, so its peers refuse its protocol connections), written differently
/// and further than members 0 and 1 (5 writes there, 10 on it). The leader of 0 and
/// 1, and member 2's own configuration.
async fn replace_2_with_an_impostor(c: &mut Cluster) -> (usize, NodeConfig) {
    c.stop(2);
    let mut other = c.cfgs[2].clone();
    other.cluster = "elsewhere".into();
    other.members = vec![other.me().clone()];
    other.data_dir = c.dir.path().join("n2-other-data");
    let own = std::mem::replace(&mut c.cfgs[2], other);
    c.spawn(2);
    let leader = leader_of_0_and_1(c).await; // the impostor leads only itself
    put_once_served(c, leader, "k0", "v").await;
    for i in 1..5 {
        put(&c.endpoint(leader), &format!("k{i}"), "v")
            .await
            .unwrap();
    }
    put_once_served(c, 2, "x", "other").await;
    for i in 0..9 {
        put(&c.endpoint(2), &format!("x{i}"), "other")
            .await
            .unwrap();
    }
    (leader, own)
}

/// Which of members 0 and 1 leads them.
async fn leader_of_0_and_1(c: &Cluster) -> usize {
    let started = Instant::now();
    loop {
        for i in 0..2 {
            if let Ok(s) = status(&c.endpoint(i)).await
                && s.header.is_some_and(|h| h.member_id == s.leader)
            {
                return i;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_differs_is_reported_corrupt_and_writes_stop() {
    let mut c = Cluster::start_with(3, |cfg| cfg.corrupt_check_ms = CHECK_MS);
    let (leader, _) = replace_2_with_an_impostor(&mut c).await;

    let corrupt = (NodeConfig::member_id(2), pb::AlarmType::Corrupt as i32);
    let started = Instant::now();
    while !alarms(&c.endpoint(leader))
        .await
        .is_ok_and(|a| a.contains(&corrupt))
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no CORRUPT alarm for member 2\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = 1 - leader.min(1); // the other healthy member (0 or 1)
    assert_eq!(alarms(&c.endpoint(healthy)).await.unwrap(), [corrupt]);
    let refused = put(&c.endpoint(healthy), "k9", "v").await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: corrupt cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_the_same_data_are_compared_and_never_reported() {
    let c = Cluster::start_with(3, |cfg| cfg.corrupt_check_ms = CHECK_MS);
    let leader = c.leader(Duration::from_secs(15)).await;
    let started = Instant::now();
    let mut i = 0;
    // Writes keep landing while the rounds run, so members are often a few revisions
    // apart when asked: the check must compare them at one revision all have applied.
    while started.elapsed() < Duration::from_millis(CHECK_MS * 12) {
        put(&c.endpoint(i % 3), &format!("k{}", i % 50), "v")
            .await
            .unwrap();
        i += 1;
    }
    let metrics = c.cfgs[leader].me().metrics.expect("metrics address");
    let text = scrape(metrics);
    assert!(
        metric(&text, "ekmat_corruption_checks_total").unwrap_or(0.0) >= 3.0,
        "the check did not run:\n{text}"
    );
    assert!(metric(&text, "ekmat_corruption_peers_compared_total").unwrap_or(0.0) >= 6.0);
    assert_eq!(
        metric(&text, "ekmat_corruption_found_total").unwrap_or(0.0),
        0.0
    );
    assert!(alarms(&c.endpoint(leader)).await.unwrap().is_empty());
}

/// Turns auth on at `url` with a root user; returns root's token.
async fn enable_auth(url: &str) -> String {
    let mut auth = pb::auth_client::AuthClient::new(channel(url).await.unwrap());
    auth.user_add(pb::AuthUserAddRequest {
        name: "root".into(),
        password: "rootpw".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    let login = pb::AuthenticateRequest {
        name: "root".into(),
        password: "rootpw".into(),
    };
    auth.authenticate(login).await.unwrap().into_inner().token
}

/// Peers compared so far, summed over the members (the leader, which compares, may
/// change).
fn peers_compared(c: &Cluster) -> f64 {
    support::metric_sum(c, "ekmat_corruption_peers_compared_total")
}

/// With auth on, HashKV needs root, as in etcd 3.4 — and members still compare their
/// hashes, asking each other with a member token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_members_still_compare_while_clients_need_root() {
    let c = Cluster::start_with(3, |cfg| cfg.corrupt_check_ms = CHECK_MS);
    let leader = c.leader(Duration::from_secs(15)).await;
    let root = enable_auth(&c.endpoint(leader)).await;

    let hash_kv = |i: usize, token: Option<String>| {
        let url = c.endpoint(i);
        async move {
            let mut request = tonic::Request::new(pb::HashKvRequest { revision: 0 });
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("token", token.parse().unwrap());
            }
            pb::maintenance_client::MaintenanceClient::new(channel(&url).await.unwrap())
                .hash_kv(request)
                .await
        }
    };
    for i in 0..3 {
        let refused = hash_kv(i, None).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unknown, "{refused:?}");
        assert!(refused.message().starts_with("auth: "), "{refused:?}");
        hash_kv(i, Some(root.clone())).await.unwrap();
    }

    let before = peers_compared(&c);
    let started = Instant::now();
    while peers_compared(&c) < before + 6.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "members stopped comparing hashes with auth on\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(CHECK_MS)).await;
    }
    assert!(
        alarms(&c.endpoint(leader))
            .await
            .is_ok_and(|a| a.is_empty())
    );
}

/// etcd's check at start (`initial_corrupt_check`, `--experimental-initial-corrupt-check`):
/// a member restarted while a peer holds other data at its revision refuses to start,
/// naming that peer; restarted once that peer is gone, it compares with the rest and
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_checked_at_start_refuses_to_serve_beside_a_peer_whose_data_differs() {
    let mut c = Cluster::start_with(3, |cfg| cfg.initial_corrupt_check = true);
    let (leader, healthy) = replace_2_with_an_impostor(&mut c).await;

    let follower = 1 - leader;
    c.stop(follower);
    c.spawn(follower);
    let named = format!(
        "found data inconsistency with peers at revision 6 (compaction revision 0): member {:x} has hash",
        NodeConfig::member_id(2)
    );
    let started = Instant::now();
    while !c.log(follower).contains(&named) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no refusal naming member 2:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!c.stop(follower).success(), "it exits with an error");

    c.stop(2);
    c.cfgs[2] = healthy;
    c.spawn(follower);
    // Status answers at once (peers' checks need it); a put only once the gate opens.
    put_once_served(&c, follower, "after", "v").await;
    assert!(
        c.log(follower)
            .contains("initial corruption check passed compared=1")
    );
}
