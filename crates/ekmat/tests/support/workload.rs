//! A workload of clients that each record what they did, for a linearizability check:
//! gets, puts, deletes and compare-and-sets over a few keys, spread over the members,
//! each operation's outcome known (acknowledged or refused) or unknown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_linearizability::Operation;
use ekmat_linearizability::kv::{KvInput, KvOutput};

use super::channel;

pub const KEYS: u64 = 3;
pub const CLIENTS: u64 = 6;

pub type History = Arc<Mutex<Vec<Operation<KvInput, KvOutput>>>>;

fn key(k: u64) -> Vec<u8> {
    format!("key{k}").into_bytes()
}

fn value_of(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes).unwrap().parse().unwrap()
}

pub enum Outcome {
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

pub async fn perform(
    client: &mut pb::kv_client::KvClient<tonic::transport::Channel>,
    input: KvInput,
) -> Outcome {
    let is_read = matches!(input, KvInput::Get { .. });
    let result = match input {
        KvInput::Get { key: k } => client
            .range(pb::RangeRequest {
                key: key(k).into(),
                ..Default::default()
            })
            .await
            .map(|r| KvOutput::Value(r.into_inner().kvs.first().map(|kv| value_of(&kv.value)))),
        KvInput::Put { key: k, value } => client
            .put(pb::PutRequest {
                key: key(k).into(),
                value: value.to_string().into_bytes().into(),
                ..Default::default()
            })
            .await
            .map(|_| KvOutput::Done),
        KvInput::Delete { key: k } => client
            .delete_range(pb::DeleteRangeRequest {
                key: key(k).into(),
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
                    key: key(k).into(),
                    target_union: Some(TargetUnion::Value(v.to_string().into_bytes().into())),
                    range_end: vec![].into(),
                },
                None => pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: key(k).into(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    range_end: vec![].into(),
                },
            };
            let put = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key(k).into(),
                    value: new.to_string().into_bytes().into(),
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

pub fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

pub async fn client_loop(
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

/// A linearizable read of every key at `url`, each joining `history` (as client 99):
/// once the faults are over, the history must end by seeing every acknowledged write.
pub async fn final_reads(url: &str, history: &History, t0: Instant) -> Result<(), String> {
    let ch = channel(url).await.map_err(|e| format!("{url}: {e}"))?;
    let mut client = pb::kv_client::KvClient::new(ch);
    for k in 0..KEYS {
        let call = micros(t0);
        let Outcome::Ok(out) = perform(&mut client, KvInput::Get { key: k }).await else {
            return Err(format!("the final read of key {k} at {url} failed"));
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
    Ok(())
}
