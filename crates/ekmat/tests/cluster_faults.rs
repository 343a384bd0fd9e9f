//! A real 3-process cluster under load: the leader is killed with SIGKILL and restarted,
//! then the new leader is frozen with SIGSTOP and thawed. Every client operation is
//! recorded, and the history must be linearizable: nothing acknowledged is lost, no
//! stale read is served.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ekmat_linearizability::kv::KvModel;
use ekmat_linearizability::{CheckOptions, Verdict, check};
use support::Cluster;
use support::workload::{CLIENTS, History, client_loop, final_reads};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_restart_and_freeze_under_load_stays_linearizable() {
    let mut cluster = Cluster::start(3);
    let first = cluster.leader(Duration::from_secs(15)).await;
    let history: History = Arc::default();
    let t0 = Instant::now();
    let load_for = Duration::from_secs(9);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                cluster.endpoints(),
                history.clone(),
                t0,
                t0 + load_for,
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill9(first);
    let second = cluster.leader(Duration::from_secs(10)).await;
    assert_ne!(second, first, "a new leader took over");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.spawn(first);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let frozen = cluster.leader(Duration::from_secs(10)).await;
    cluster.pause(frozen);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.resume(frozen);
    for c in clients {
        c.await.unwrap();
    }

    // A final linearizable read of every key joins the history: it must see every
    // acknowledged write.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    if let Err(e) = final_reads(&cluster.endpoint(leader), &history, t0).await {
        panic!("{e}; logs:\n{}", cluster.logs());
    }

    let history = history.lock().unwrap().clone();
    let ok = history.iter().filter(|o| o.ret.is_some()).count();
    let unknown = history.len() - ok;
    assert!(
        ok > 200,
        "the cluster served too little: {ok} ok, {unknown} unknown; logs:\n{}",
        cluster.logs()
    );
    let verdict = check(&KvModel, &history, &CheckOptions::default()).unwrap();
    assert_eq!(
        verdict,
        Verdict::Linearizable,
        "{ok} ok, {unknown} unknown; logs:\n{}",
        cluster.logs()
    );
    assert!(
        cluster.log(first).contains("recovered durable state"),
        "the killed node restarted from its log"
    );
    eprintln!("history: {ok} ok, {unknown} unknown operations; linearizable");
}
