//! Backups: a cluster's Maintenance.Snapshot stream seeds a new cluster (as `ekmat up
//! --restore` does) that serves the same keys, history, compaction point and leases, and
//! a member added to that cluster later receives the restored state.

mod support;

use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use support::{Cluster, backup, channel, restore};
use tonic::transport::Channel;

async fn kv(url: &str) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(channel(url).await.unwrap())
}

async fn put(url: &str, key: &str, value: &str, lease: i64) -> i64 {
    let r = kv(url)
        .await
        .put(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            lease,
            ..Default::default()
        })
        .await
        .unwrap();
    r.into_inner().header.unwrap().revision
}

/// Every key (at `rev`, 0 for now), read by the member itself or through the leader.
async fn everything(url: &str, rev: i64, serializable: bool) -> Result<pb::RangeResponse, String> {
    let ch = channel(url).await.map_err(|e| e.to_string())?;
    pb::kv_client::KvClient::new(ch)
        .range(pb::RangeRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            revision: rev,
            serializable,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.to_string())
}

async fn eventually(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ok().await {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_cluster_started_from_a_backup_serves_it_and_a_later_member_receives_it() {
    let old = Cluster::start(3);
    let url = old.endpoint(old.leader(Duration::from_secs(15)).await);
    let lease = pb::lease_client::LeaseClient::new(channel(&url).await.unwrap())
        .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    put(&url, "a", "1", 0).await;
    put(&url, "b", "2", 0).await;
    let before_compaction = put(&url, "a", "3", 0).await;
    for i in 0..50 {
        put(&url, &format!("k/{i:02}"), "v", 0).await;
    }
    put(&url, "leased", "x", lease).await;
    kv(&url)
        .await
        .delete_range(pb::DeleteRangeRequest {
            key: b"b".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    kv(&url)
        .await
        .compact(pb::CompactionRequest {
            revision: before_compaction,
            physical: false,
        })
        .await
        .unwrap();
    let ours = everything(&url, 0, false).await.unwrap();
    let file = backup(&url).await;
    drop(old);

    let mut new = Cluster::configure(3, |_| {});
    let saved = new.dir.path().join("backup.db");
    std::fs::write(&saved, &file).unwrap();
    let revision = ours.header.as_ref().unwrap().revision;
    // What a restore that crashed midway leaves behind is replaced, not mistaken for a log.
    let leftover = new.cfgs[0].data_dir.join("wal.seeding");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("00000000000000000001.wal"), b"torn").unwrap();
    for i in 0..3 {
        // As an operator would: `ekmat restore FILE --config` for each member.
        support::write_config(&new.config_path(i), &new.cfgs[i]);
        let out = restore(&saved, &new.config_path(i));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains(&format!("revision {revision}, ")), "{said}");
        assert!(said.contains("1 leases"), "{said}");
    }
    // Seeding twice would lose what the member has written since: refused.
    let again = restore(&saved, &new.config_path(0));
    assert_eq!(again.status.code(), Some(2));
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(why.contains("already holds a log"), "{why}");
    for i in 0..3 {
        new.spawn(i);
    }
    let url = new.endpoint(new.leader(Duration::from_secs(15)).await);
    let theirs = everything(&url, 0, false).await.unwrap();
    assert_eq!(theirs.kvs, ours.kvs);
    assert_eq!(
        theirs.header.unwrap().revision,
        ours.header.unwrap().revision
    );
    let at = everything(&url, before_compaction, false).await.unwrap();
    assert!(
        at.kvs
            .iter()
            .any(|kv| kv.key[..] == b"a"[..] && kv.value[..] == b"3"[..])
    );
    let compacted = everything(&url, before_compaction - 1, false).await;
    assert!(compacted.unwrap_err().contains("compacted"));
    let ttl = support::lease_ttl(&url, lease).await;
    assert!(
        ttl.ttl > 590,
        "the lease restarts from its TTL: {}",
        ttl.ttl
    );
    assert_eq!(ttl.keys, vec![b"leased".to_vec()]);

    // A member added now has no log to replay from the start: it gets the snapshot.
    let written = put(&url, "after", "restore", 0).await;
    let joiner = new.prepare_joiner();
    pb::cluster_client::ClusterClient::new(channel(&url).await.unwrap())
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![format!("http://{}", new.cfgs[joiner].me().peer)],
            is_learner: true,
        })
        .await
        .unwrap();
    new.spawn(joiner);
    let joined = new.endpoint(joiner);
    eventually(
        "the new member holds the restored keys",
        Duration::from_secs(15),
        async || {
            everything(&joined, 0, true)
                .await
                .is_ok_and(|r| r.header.is_some_and(|h| h.revision >= written) && r.count == 53)
        },
    )
    .await;
}

/// Clients that open a backup and stop reading hold a thread each: past four at once,
/// more are refused with a reason, and the places come back when those clients go.
#[tokio::test]
async fn backups_in_progress_are_bounded() {
    let c = Cluster::start(1);
    let url = c.endpoint(c.leader(Duration::from_secs(15)).await);
    let big = "x".repeat(100 * 1024);
    for i in 0..50 {
        put(&url, &format!("big/{i}"), &big, 0).await;
    }
    let open = async || {
        let ch = channel(&url).await.unwrap();
        pb::maintenance_client::MaintenanceClient::new(ch)
            .snapshot(pb::SnapshotRequest {})
            .await
    };
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(open().await.unwrap());
    }
    let refused = open().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("retry later"), "{refused:?}");
    drop(stalled);
    eventually("a place comes back", Duration::from_secs(10), async || {
        open().await.is_ok()
    })
    .await;
}
