//! A real 3-process cluster under load: the leader is killed with SIGKILL and restarted,
//! then the new leader is frozen with SIGSTOP and thawed. Every client operation is
//! recorded, and the history must be linearizable: nothing acknowledged is lost, no
//! stale read is served.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_linearizability::kv::{KvInput, KvModel, KvOutput};
use ekmat_linearizability::{CheckOptions, Operation, Verdict, check};
use support::{Cluster, channel};

const KEYS: u64 = 3;
const CLIENTS: u64 = 6;

type History = Arc<Mutex<Vec<Operation<KvInput, KvOutput>>>>;

fn key(k: u64) -> Vec<u8> {
    format!("key{k}").into_bytes()
}

fn value_of(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes).unwrap().parse().unwrap()
}

enum Outcome {
    Ok(KvOutput),
    /// Definitely not executed.
    Failed,
    /// May or may not have been executed.
    Unknown,
}

/// Errors after which a write certainly did not happen: the node refused it.
fn definite(s: &tonic::Status) -> bool {
    matches!(
        s.message(),
        "etcdserver: no leader" | "etcdserver: too many requests"
    )
}

async fn perform(
    client: &mut pb::kv_client::KvClient<tonic::transport::Channel>,
    input: KvInput,
) -> Outcome {
    let is_read = matches!(input, KvInput::Get { .. });
    let result = match input {
        KvInput::Get { key: k } => client
            .range(pb::RangeRequest {
                key: key(k),
                ..Default::default()
            })
            .await
            .map(|r| KvOutput::Value(r.into_inner().kvs.first().map(|kv| value_of(&kv.value)))),
        KvInput::Put { key: k, value } => client
            .put(pb::PutRequest {
                key: key(k),
                value: value.to_string().into_bytes(),
                ..Default::default()
            })
            .await
            .map(|_| KvOutput::Done),
        KvInput::Delete { key: k } => client
            .delete_range(pb::DeleteRangeRequest {
                key: key(k),
                ..Default::default()
            })
            .await
            .map(|_| KvOutput::Done),
        KvInput::Cas {
            key: k,
            expected,
            new,
        } => {
            use pb::compare::{CompareResult, CompareTarget, TargetUnion};
            let compare = match expected {
                Some(v) => pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: key(k),
                    target_union: Some(TargetUnion::Value(v.to_string().into_bytes())),
                    range_end: vec![],
                },
                None => pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: key(k),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    range_end: vec![],
                },
            };
            let put = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key(k),
                    value: new.to_string().into_bytes(),
                    ..Default::default()
                })),
            };
            client
                .txn(pb::TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: vec![],
                })
                .await
                .map(|r| KvOutput::Cas(r.into_inner().succeeded))
        }
    };
    match result {
        Ok(out) => Outcome::Ok(out),
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            panic!("the server refused a valid request: {s}")
        }
        Err(_) if is_read => Outcome::Failed,
        Err(s) if definite(&s) => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

async fn client_loop(
    id: u64,
    endpoints: Vec<String>,
    history: History,
    t0: Instant,
    until: Instant,
) {
    let mut seq = 0u64;
    let mut last_seen: Option<u64> = None;
    while Instant::now() < until {
        seq += 1;
        let endpoint = &endpoints[((id + seq) % endpoints.len() as u64) as usize];
        let Ok(ch) = channel(endpoint).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut client = pb::kv_client::KvClient::new(ch);
        let k = (id + seq * 7) % KEYS;
        let value = ((id + 1) << 32) | seq;
        let input = match seq % 10 {
            0..=3 => KvInput::Get { key: k },
            4..=6 => KvInput::Put { key: k, value },
            7 | 8 => KvInput::Cas {
                key: k,
                expected: last_seen,
                new: value,
            },
            _ => KvInput::Delete { key: k },
        };
        let call = micros(t0);
        let outcome = perform(&mut client, input).await;
        let ret = micros(t0);
        let op = match outcome {
            Outcome::Ok(out) => {
                if let KvOutput::Value(v) = out {
                    last_seen = v;
                }
                Some(Operation {
                    client: id,
                    input,
                    call,
                    ret: Some(ret),
                    output: Some(out),
                })
            }
            Outcome::Failed => None,
            Outcome::Unknown => Some(Operation {
                client: id,
                input,
                call,
                ret: None,
                output: None,
            }),
        };
        if let Some(op) = op {
            history.lock().unwrap().push(op);
        }
    }
}

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
    let mut client =
        pb::kv_client::KvClient::new(channel(&cluster.endpoint(leader)).await.unwrap());
    for k in 0..KEYS {
        let call = micros(t0);
        let Outcome::Ok(out) = perform(&mut client, KvInput::Get { key: k }).await else {
            panic!(
                "the final read of key {k} failed; logs:\n{}",
                cluster.logs()
            );
        };
        let ret = micros(t0);
        history.lock().unwrap().push(Operation {
            client: 99,
            input: KvInput::Get { key: k },
            call,
            ret: Some(ret),
            output: Some(out),
        });
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
