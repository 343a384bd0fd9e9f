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
                value: b"v".to_vec().into(),
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

    ok.sort_unstable();
    assert_eq!(
        stored_numbers(ch).await,
        ok,
        "exactly the acknowledged writes are stored"
    );

    let metrics = scrape(c.cfgs[leader].me().metrics.expect("metrics address"));
    let counted = metric(&metrics, "ekmat_writes_refused_total").unwrap_or(0.0);
    assert_eq!(counted as usize, refused.len());
    // The status gauges follow the member: it leads, and applied what it acknowledged.
    assert_eq!(metric(&metrics, "ekmat_is_leader"), Some(1.0));
    let applied = metric(&metrics, "ekmat_applied_index").unwrap_or(0.0);
    assert!(applied as usize >= ok.len(), "applied index {applied}");
}

/// A txn weighs its puts: 50 txns of 10 puts each against a bound of 60 operations are
/// 500 operations, so most are refused, though there are fewer txns than the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_counts_as_many_writes_as_it_has_puts() {
    const PUTS: usize = 10;
    let c = Cluster::start_with(3, |cfg| cfg.max_pending_writes = 60);
    let leader = c.leader(Duration::from_secs(15)).await;
    let ch = channel(&c.endpoint(leader)).await.expect("connect");
    let mut txns = tokio::task::JoinSet::new();
    for t in 0..50usize {
        let mut kv = pb::kv_client::KvClient::new(ch.clone());
        let puts = (0..PUTS)
            .map(|p| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: format!("k{}", t * PUTS + p).into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                })),
            })
            .collect();
        let txn = pb::TxnRequest {
            success: puts,
            ..Default::default()
        };
        txns.spawn(async move { (t, kv.txn(txn).await) });
    }
    let (mut ok, mut refused) = (Vec::new(), 0);
    while let Some(joined) = txns.join_next().await {
        let (t, r) = joined.expect("txn task");
        match r {
            Ok(_) => ok.extend(t * PUTS..(t + 1) * PUTS),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                refused += 1;
            }
        }
    }
    assert!(
        !ok.is_empty() && refused > 0,
        "{} puts acknowledged",
        ok.len()
    );
    ok.sort_unstable();
    assert_eq!(
        stored_numbers(ch).await,
        ok,
        "exactly the acknowledged txns are stored"
    );
}

/// The numbers `i` of the keys `k{i}` stored, ascending.
async fn stored_numbers(ch: tonic::transport::Channel) -> Vec<usize> {
    let mut kv = pb::kv_client::KvClient::new(ch);
    let all = kv
        .range(pb::RangeRequest {
            key: b"k".to_vec().into(),
            range_end: b"l".to_vec().into(),
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
    stored
}
