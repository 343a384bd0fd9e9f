//! Admission control (`max_pending_writes`): past the bound, a member refuses writes at
//! once with etcd's "too many requests", and what it refused is never applied.

mod support;

use std::time::Duration;

use ekmat_api::etcdserverpb as pb;
use support::{Cluster, channel, metric, scrape};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_bound_are_refused_at_once_and_never_applied() {
    let c = Cluster::start_with(3, |cfg| cfg.max_pending_writes = 4);
    let leader = c.leader(Duration::from_secs(15)).await;
    let ch = channel(&c.endpoint(leader)).await.expect("connect");
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..200usize {
        let mut kv = pb::kv_client::KvClient::new(ch.clone());
        puts.spawn(async move {
            let put = pb::PutRequest {
                key: format!("k{i}").into(),
                value: b"v".to_vec(),
                ..Default::default()
            };
            (i, kv.put(put).await)
        });
    }
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    while let Some(joined) = puts.join_next().await {
        let (i, r) = joined.expect("put task");
        match r {
            Ok(_) => ok.push(i),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert_eq!(s.message(), "etcdserver: too many requests");
                refused.push(i);
            }
        }
    }
    assert!(!ok.is_empty() && !refused.is_empty(), "ok {ok:?}");

    let mut kv = pb::kv_client::KvClient::new(ch);
    let all = kv
        .range(pb::RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stored: Vec<usize> = all
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key)[1..].parse().unwrap())
        .collect();
    stored.sort_unstable();
    ok.sort_unstable();
    assert_eq!(stored, ok, "exactly the acknowledged writes are stored");

    let metrics = scrape(c.cfgs[leader].me().metrics.expect("metrics address"));
    let counted = metric(&metrics, "ekmat_writes_refused_total").unwrap_or(0.0);
    assert_eq!(counted as usize, refused.len());
    // The status gauges follow the member: it leads, and applied what it acknowledged.
    assert_eq!(metric(&metrics, "ekmat_is_leader"), Some(1.0));
    let applied = metric(&metrics, "ekmat_applied_index").unwrap_or(0.0);
    assert!(applied as usize >= ok.len(), "applied index {applied}");
}
