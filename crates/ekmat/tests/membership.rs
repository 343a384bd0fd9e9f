//! Membership changes on a real cluster: etcd's MemberAdd (as a learner), a node joining
//! and catching up, MemberPromote, and MemberRemove of the leader — with writes going on.

mod support;

use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use support::{Cluster, channel};
use tonic::transport::Channel;

async fn cluster_client(url: &str) -> pb::cluster_client::ClusterClient<Channel> {
    pb::cluster_client::ClusterClient::new(channel(url).await.unwrap())
}

async fn put(url: &str, key: &str) -> Result<(), tonic::Status> {
    let ch = channel(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    pb::kv_client::KvClient::new(ch)
        .put(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Serializable reads: what this member has applied.
async fn local_count(url: &str, prefix: &str) -> Option<i64> {
    let ch = channel(url).await.ok()?;
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let r = pb::kv_client::KvClient::new(ch)
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: end.into(),
            serializable: true,
            count_only: true,
            ..Default::default()
        })
        .await
        .ok()?;
    Some(r.into_inner().count)
}

async fn eventually(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ok().await {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_learner_joins_catches_up_is_promoted_and_the_old_leader_is_removed() {
    let mut c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let url = c.endpoint(leader);
    for i in 0..20 {
        put(&url, &format!("k/{i:02}")).await.unwrap();
    }

    let joiner = c.prepare_joiner();
    let peer = format!("http://{}", c.cfgs[joiner].me().peer);
    // Asked of a follower, the change is forwarded to the leader.
    let mut admin = cluster_client(&c.endpoint((leader + 1) % 3)).await;
    let added = admin
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![peer.clone()],
            is_learner: true,
        })
        .await
        .unwrap()
        .into_inner();
    let new = added.member.unwrap();
    assert!(new.is_learner && new.name.is_empty() && new.client_ur_ls.is_empty());
    assert_eq!(added.members.len(), 4);
    // The same peer URL twice is refused, as etcd refuses it.
    let again = admin
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![peer],
            is_learner: true,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    c.spawn(joiner);
    let joined = c.endpoint(joiner);
    eventually(
        "the learner catches up",
        Duration::from_secs(15),
        async || local_count(&joined, "k/").await == Some(20),
    )
    .await;

    // Once it holds the log, the new member publishes its name and client address.
    eventually(
        "the new member publishes itself",
        Duration::from_secs(10),
        async || {
            let list = admin
                .member_list(pb::MemberListRequest::default())
                .await
                .unwrap()
                .into_inner();
            list.members
                .iter()
                .any(|m| m.id == new.id && m.name == "n3" && m.client_ur_ls == [joined.clone()])
        },
    )
    .await;
    let bad = admin
        .member_update(pb::MemberUpdateRequest {
            id: new.id,
            peer_ur_ls: vec!["https://127.0.0.1:1".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    admin
        .member_promote(pb::MemberPromoteRequest { id: new.id })
        .await
        .unwrap();
    let list = admin
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.iter().filter(|m| !m.is_learner).count(), 4);
    let not_learner = admin
        .member_promote(pb::MemberPromoteRequest { id: new.id })
        .await
        .unwrap_err();
    assert_eq!(not_learner.code(), tonic::Code::FailedPrecondition);

    // Remove the leader itself: it steps down once the new configuration commits, and
    // the other three carry on.
    let leader_id = list
        .members
        .iter()
        .find(|m| m.client_ur_ls.contains(&url))
        .unwrap()
        .id;
    admin
        .member_remove(pb::MemberRemoveRequest { id: leader_id })
        .await
        .unwrap();
    let others: Vec<String> = (0..4)
        .filter(|&i| i != leader)
        .map(|i| c.endpoint(i))
        .collect();
    eventually(
        "a write after the removal",
        Duration::from_secs(15),
        async || put(&others[0], "after-removal").await.is_ok(),
    )
    .await;
    let mut admin = cluster_client(&others[1]).await;
    let list = admin
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), 3);
    assert!(list.members.iter().all(|m| m.id != leader_id));
    let gone = admin
        .member_remove(pb::MemberRemoveRequest { id: leader_id })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    eventually(
        "the joined node applies the write",
        Duration::from_secs(10),
        async || local_count(&joined, "after-removal").await == Some(1),
    )
    .await;
}
