//! Simulated clients and the history they record.
//!
//! Each client runs one operation at a time against a small key space (so operations
//! collide). Half the clients send each operation to the node they believe leads; the
//! other half start every operation at a home node of their own, as an etcd client
//! bound to one endpoint does, and follow its redirect to the leader for that operation
//! only. Those keep some clients beside every node, so when a cut-off leader and a newly
//! elected one both answer, both have clients. An operation ends `ok` (with its result),
//! `failed` (definitely not executed: the node refused it) or `unknown` (timed out: it
//! may or may not have executed). The history feeds the linearizability checker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ekmat_core::{DetRng, NodeId, Request, RequestId, RequestKind, Time};
use ekmat_kv::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Envelope, PutRequest,
    RangeResponse, RequestOp, Response, TxnRequest,
};
use ekmat_linearizability::Operation;
use ekmat_linearizability::kv::{KvInput, KvOutput};

#[derive(Clone, Debug)]
pub struct WorkloadShape {
    pub clients: usize,
    pub ops: usize,
    pub keys: u64,
    /// Mean pause between a client's operations.
    pub think: Duration,
    /// How long a client waits before giving an operation up as unknown.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Status {
    Ok,
    Failed,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct HistOp {
    pub client: usize,
    pub input: KvInput,
    pub call: Time,
    pub ret: Option<Time>,
    pub output: Option<KvOutput>,
    pub status: Status,
    /// The node the request was first sent to.
    pub node: NodeId,
    /// The node whose answer ended the operation.
    pub answered_by: Option<NodeId>,
}

/// How a node answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Done(KvOutput),
    Refused { leader: Option<NodeId> },
}

/// Times a client sends one operation to the node named as leader (or to another node,
/// when none is named) after a refusal, before giving the operation up as failed.
const MAX_ATTEMPTS: u32 = 10;

#[derive(Debug)]
struct InFlight {
    seq: u64,
    index: usize,
    sent: Sent,
    attempts: u32,
    /// An attempt went unanswered: it may still execute, so the operation can no
    /// longer end as definitely failed.
    unanswered: bool,
}

#[derive(Debug)]
struct Client {
    seq: u64,
    leader_guess: NodeId,
    /// Where every operation starts, for clients bound to one node.
    home: Option<NodeId>,
    inflight: Option<InFlight>,
    last_seen: BTreeMap<u64, Option<u64>>,
}

/// What a client does after an answer.
#[derive(Debug)]
pub enum Next {
    /// The operation ended (ok or failed).
    Finished,
    /// Refused, so definitely not executed: send the same request again.
    Retry { sent: Sent, after: Duration },
    /// The answer was for an operation the client already gave up on.
    Stale,
}

#[derive(Debug)]
pub struct Workload {
    shape: WorkloadShape,
    /// Operations that may start before the faults are healed; the rest are kept for
    /// the liveness phase, which must see the cluster serve again.
    before_heal: usize,
    healed: bool,
    nodes: usize,
    clients: Vec<Client>,
    history: Vec<HistOp>,
    rng: DetRng,
}

/// A request on its way to a node.
#[derive(Clone, Debug)]
pub struct Sent {
    pub node: NodeId,
    pub id: RequestId,
    pub op: SentOp,
}

/// What a client asks of the node.
#[derive(Clone, Debug)]
pub enum SentOp {
    /// A command to order and apply. Shared, not inlined: requests sit in the event
    /// queue, whose entries are as large as their largest kind.
    Write(Arc<Command>),
    /// A linearizable read of one key, served once the protocol's read barrier passes.
    Read { key: Bytes },
}

impl Sent {
    /// The request as the node hands it to its replica when it arrives at `now`: a write
    /// is enveloped with the node's clock, as a leader stamps the commands it proposes.
    pub fn request(&self, now: Time) -> Request {
        let kind = match &self.op {
            SentOp::Write(command) => RequestKind::Write(Envelope::wrap(now.as_millis(), command)),
            SentOp::Read { .. } => RequestKind::Read,
        };
        Request { id: self.id, kind }
    }

    /// The key a read is about.
    pub fn read_key(&self) -> Option<&Bytes> {
        match &self.op {
            SentOp::Read { key } => Some(key),
            SentOp::Write(_) => None,
        }
    }
}

pub fn key_bytes(key: u64) -> Bytes {
    Bytes::copy_from_slice(&key.to_be_bytes())
}

fn value_bytes(value: u64) -> Bytes {
    Bytes::copy_from_slice(&value.to_be_bytes())
}

fn value_of(bytes: &Bytes) -> Option<u64> {
    let arr: [u8; 8] = bytes.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

impl Workload {
    pub fn new(shape: WorkloadShape, nodes: usize, mut rng: DetRng) -> Workload {
        let clients = (0..shape.clients)
            .map(|c| Client {
                seq: 0,
                leader_guess: NodeId(rng.index(nodes) as u32),
                home: (c % 2 == 1).then(|| NodeId((c / 2 % nodes) as u32)),
                inflight: None,
                last_seen: BTreeMap::new(),
            })
            .collect();
        let reserved = (shape.ops / 10).max(shape.clients).min(shape.ops);
        Workload {
            before_heal: shape.ops - reserved,
            healed: false,
            shape,
            nodes,
            clients,
            history: Vec::new(),
            rng,
        }
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    pub fn history(&self) -> &[HistOp] {
        &self.history
    }

    pub fn issued(&self) -> usize {
        self.history.len()
    }

    /// All operations issued and finished.
    pub fn done(&self) -> bool {
        self.issued() >= self.shape.ops && self.clients.iter().all(|c| c.inflight.is_none())
    }

    pub fn timeout(&self) -> Duration {
        self.shape.timeout
    }

    /// Mean pause between operations once the faults are over: the liveness phase
    /// probes the healed cluster promptly instead of pacing itself.
    const LIVENESS_THINK: Duration = Duration::from_millis(20);

    pub fn think_time(&mut self) -> Duration {
        let mut mean = self.shape.think;
        if self.healed {
            mean = mean.min(Self::LIVENESS_THINK);
        }
        let mean = mean.as_micros() as u64;
        Duration::from_micros(self.rng.range(0, 2 * mean))
    }

    /// Operations that may start before the heal.
    pub fn before_heal(&self) -> usize {
        self.before_heal
    }

    /// The faults are over: the reserved operations may start. Returns the clients that
    /// are idle and should be woken.
    pub fn heal(&mut self) -> Vec<usize> {
        self.healed = true;
        (0..self.clients.len())
            .filter(|&c| self.clients[c].inflight.is_none())
            .collect()
    }

    /// Start client `c`'s next operation, if it has budget left and nothing in flight.
    pub fn issue(&mut self, c: usize, now: Time) -> Option<Sent> {
        let budget = if self.healed {
            self.shape.ops
        } else {
            self.before_heal
        };
        if self.issued() >= budget || self.clients[c].inflight.is_some() {
            return None;
        }
        let input = self.draw_input(c);
        let client = &mut self.clients[c];
        client.seq += 1;
        let id = RequestId {
            client: c as u64 + 1,
            seq: client.seq,
        };
        let node = client.home.unwrap_or(client.leader_guess);
        let index = self.history.len();
        self.history.push(HistOp {
            client: c,
            input,
            call: now,
            ret: None,
            output: None,
            status: Status::Unknown,
            node,
            answered_by: None,
        });
        let op = match command(&input) {
            Some(command) => SentOp::Write(Arc::new(command)),
            None => SentOp::Read {
                key: key_bytes(input.key()),
            },
        };
        let sent = Sent { node, id, op };
        self.clients[c].inflight = Some(InFlight {
            seq: id.seq,
            index,
            sent: sent.clone(),
            attempts: 1,
            unanswered: false,
        });
        Some(sent)
    }

    fn draw_input(&mut self, c: usize) -> KvInput {
        let key = self.rng.range(0, self.shape.keys - 1);
        let value = ((c as u64 + 1) << 32) | (self.clients[c].seq + 1);
        match self.rng.range(0, 99) {
            0..=39 => KvInput::Get { key },
            40..=69 => KvInput::Put { key, value },
            70..=89 => {
                let seen = self.clients[c].last_seen.get(&key).copied().flatten();
                let expected = if self.rng.chance(0.8) { seen } else { None };
                KvInput::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
            _ => KvInput::Delete { key },
        }
    }

    /// A node answered client `c`'s request `seq`.
    pub fn complete(
        &mut self,
        c: usize,
        seq: u64,
        from: NodeId,
        outcome: Outcome,
        now: Time,
    ) -> Next {
        let Some(inflight) = &mut self.clients[c].inflight else {
            return Next::Stale;
        };
        if inflight.seq != seq {
            return Next::Stale;
        }
        let index = inflight.index;
        if let Outcome::Refused { leader } = outcome {
            let current = inflight.sent.node;
            let (node, after) = match leader.filter(|l| *l != current) {
                Some(l) => (l, Duration::ZERO),
                None => {
                    let other = NodeId(self.rng.index(self.nodes) as u32);
                    (other, Duration::from_millis(self.rng.range(20, 80)))
                }
            };
            self.clients[c].leader_guess = node;
            let inflight = self.clients[c].inflight.as_mut().expect("checked above");
            if inflight.attempts < MAX_ATTEMPTS {
                inflight.attempts += 1;
                inflight.sent.node = node;
                let sent = inflight.sent.clone();
                return Next::Retry { sent, after };
            }
            let unanswered = inflight.unanswered;
            self.clients[c].inflight = None;
            let op = &mut self.history[index];
            op.answered_by = Some(from);
            if !unanswered {
                op.ret = Some(now);
                op.status = Status::Failed;
            }
            return Next::Finished;
        }
        let Outcome::Done(output) = outcome else {
            unreachable!("refusals handled above")
        };
        self.clients[c].inflight = None;
        let op = &mut self.history[index];
        op.ret = Some(now);
        op.status = Status::Ok;
        op.answered_by = Some(from);
        op.output = Some(output);
        if let Some(seen) = observed_value(&op.input, &output) {
            let key = op.input.key();
            self.clients[c].last_seen.insert(key, seen);
        }
        Next::Finished
    }

    /// How long a client waits for one node's answer before trying another.
    pub fn attempt_timeout(&self) -> Duration {
        self.shape.timeout / 4
    }

    /// The number of client `c`'s current attempt (0 when idle).
    pub fn attempt(&self, c: usize) -> u32 {
        self.clients[c].inflight.as_ref().map_or(0, |i| i.attempts)
    }

    /// Attempt `attempt` of client `c`'s `seq` went unanswered: send the same request
    /// (same id, so it still executes at most once) to another node — the client's
    /// home, or any other — unless the operation moved on, is out of attempts, or was
    /// already sent elsewhere once for want of an answer.
    pub fn retry_elsewhere(&mut self, c: usize, seq: u64, attempt: u32) -> Option<Sent> {
        let nodes = self.nodes;
        let home = self.clients[c].home;
        let inflight = self.clients[c].inflight.as_mut()?;
        // Once per operation: every retry that reaches the leader is proposed again, and
        // retrying each slow answer would snowball into a retry storm under load.
        if inflight.seq != seq
            || inflight.attempts != attempt
            || attempt >= MAX_ATTEMPTS
            || inflight.unanswered
        {
            return None;
        }
        let current = inflight.sent.node;
        let node = match home.filter(|h| *h != current) {
            Some(h) => h,
            None if nodes > 1 => {
                let other = self.rng.index(nodes - 1) as u32;
                NodeId(if other >= current.0 { other + 1 } else { other })
            }
            None => current,
        };
        inflight.attempts += 1;
        inflight.unanswered = true;
        inflight.sent.node = node;
        let sent = inflight.sent.clone();
        self.clients[c].leader_guess = node;
        Some(sent)
    }

    /// Client `c` gave up waiting on `seq`. Returns true if it ended an operation.
    pub fn time_out(&mut self, c: usize, seq: u64) -> bool {
        match &self.clients[c].inflight {
            Some(inflight) if inflight.seq == seq => {
                self.clients[c].inflight = None;
                self.clients[c].leader_guess = NodeId(self.rng.index(self.nodes) as u32);
                true
            }
            _ => false,
        }
    }

    /// The history in the checker's terms: failed operations dropped (they had no
    /// effect), unknown ones left open to the end of time.
    pub fn for_checker(&self) -> Vec<Operation<KvInput, KvOutput>> {
        self.history
            .iter()
            .filter(|op| op.status != Status::Failed)
            .map(|op| Operation {
                client: op.client as u64,
                input: op.input,
                call: op.call.as_micros(),
                ret: op
                    .ret
                    .filter(|_| op.status == Status::Ok)
                    .map(Time::as_micros),
                output: op.output,
            })
            .collect()
    }

    pub fn count(&self, status: Status) -> usize {
        self.history.iter().filter(|op| op.status == status).count()
    }
}

/// The etcd command an operation becomes; `None` for a get, which is served by a read
/// barrier instead of through the log.
pub fn command(input: &KvInput) -> Option<Command> {
    let command = match *input {
        KvInput::Get { .. } => return None,
        KvInput::Put { key, value } => {
            Command::Put(PutRequest::new(key_bytes(key), value_bytes(value)))
        }
        KvInput::Delete { key } => Command::DeleteRange(DeleteRangeRequest::new(key_bytes(key))),
        // Compare-and-swap is etcd's idiom: a txn guarded on the value, or on the key not
        // existing (create revision 0), that puts the new value.
        KvInput::Cas { key, expected, new } => {
            let target = match expected {
                Some(v) => CompareTarget::Value(value_bytes(v)),
                None => CompareTarget::CreateRevision(0),
            };
            Command::Txn(TxnRequest {
                compare: vec![Compare::new(key_bytes(key), CompareResult::Equal, target)],
                success: vec![RequestOp::Put(PutRequest::new(
                    key_bytes(key),
                    value_bytes(new),
                ))],
                failure: vec![],
            })
        }
    };
    Some(command)
}

/// What an operation's client sees in the store's response.
pub fn output_of(response: &Response) -> Option<KvOutput> {
    match response {
        Response::Put(_) | Response::DeleteRange(_) => Some(KvOutput::Done),
        Response::Txn(txn) => Some(KvOutput::Cas(txn.succeeded)),
        Response::Range(range) => Some(read_output(range)),
        _ => None,
    }
}

/// What a get's client sees in a one-key range read.
pub fn read_output(range: &RangeResponse) -> KvOutput {
    KvOutput::Value(range.kvs.first().and_then(|kv| value_of(&kv.value)))
}

/// What an ok operation tells its client about the key's current value.
fn observed_value(input: &KvInput, output: &KvOutput) -> Option<Option<u64>> {
    match (input, output) {
        (_, KvOutput::Value(v)) => Some(*v),
        (KvInput::Put { value, .. }, _) => Some(Some(*value)),
        (KvInput::Cas { new, .. }, KvOutput::Cas(true)) => Some(Some(*new)),
        (KvInput::Delete { .. }, _) => Some(None),
        _ => None,
    }
}
