//! The driver: one task that owns the protocol core and the key-value state machine.
//!
//! It feeds the core every input — peer messages, client requests, ticks, durability
//! notices — with the time since the node started, and carries out the effects: sends go
//! to the transport, durable writes to the writer thread, committed entries to the state
//! machine (answering the client that asked, if it is waiting here), refusals and read
//! barriers back to the callers. A request this node cannot order goes to the leader over
//! the peer connection (see `wire.rs`). No protocol logic lives here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use ekmat_core::{
    Effect, Effects, Event, Input, MembershipChange, NodeId, Rejection, Replica, Reply, Request,
    RequestId, RequestKind, Time,
};
use ekmat_kv::{Applied, Command, Envelope, KvError, KvStore, Response};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::members::{MemberRecord, Members};
use crate::protocol::{CoreStatus, RuntimeProtocol, SignedRequest};
use crate::query::{Answer, Query, wall_clock_ms};
use crate::transport::Transport;
use crate::watch_hub::{Published, WatchHub};
use crate::wire::Wire;
use crate::writer::Durability;

mod apply;
mod clock;
mod clock_refusals;
mod membership;
pub(crate) mod snapshot;
mod snapshot_buffer;

/// How often the core is ticked. Its timers are 10 ms-granular.
pub const TICK: Duration = Duration::from_millis(10);
/// Client calls queued before callers wait.
pub const CALL_QUEUE: usize = 16 * 1024;
/// How long this node remembers a request it proposed for another member.
const ON_BEHALF_TTL: Duration = Duration::from_secs(30);
/// How long a proposed write whose caller gave up is still counted (and its admission
/// slot held): it may yet commit, as long as the protocol's queues hold it.
const ABANDONED_WRITE_TTL: Duration = Duration::from_secs(30);
/// How often each peer's round-trip time is measured.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How often, at most, the leader proposes a tick to expire leases whose deadline its
/// clock has passed (a tick that did not commit is retried after this long).
pub const LEASE_TICK_EVERY: Duration = Duration::from_millis(500);
/// How long a member added at run time waits for its published record to commit
/// before it tries again.
const PUBLISH_RETRY: Duration = Duration::from_secs(3);

type Msg<P> = <<P as RuntimeProtocol>::Node as Replica>::Message;

/// Peer messages taken off the inbound queue at once (see `Driver::on_wires`): enough
/// for a batch of signatures to pay, few enough that durability and timer events
/// behind them wait little.
const MAX_BURST: usize = 32;
type Write<P> = <<P as RuntimeProtocol>::Node as Replica>::Write;

/// A request from the client API.
#[derive(Debug)]
pub enum Call {
    /// Order and apply a command.
    Write {
        command: Command,
        reply: oneshot::Sender<Result<Response, CallError>>,
        /// The write's place under admission control (none for the node's own writes).
        slot: Option<WriteSlot>,
    },
    /// Read; linearizable reads wait for a read barrier from the protocol.
    Read {
        query: Query,
        linearizable: bool,
        reply: oneshot::Sender<Result<Answer, CallError>>,
    },
    /// Hand leadership to another member (this member must lead).
    MoveLeader {
        to: NodeId,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    /// Change the membership; answered once the new configuration is committed.
    ChangeMembership {
        changes: Vec<MembershipChange>,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    /// The protocol's certificate for the batch at `seq` (0: the latest), as JSON.
    Certificate {
        seq: u64,
        reply: oneshot::Sender<Option<String>>,
    },
    /// Hand the protocol a request its client signed, this member as its gateway.
    /// Answered once handed over; its outcome is asked for with `Outcome`.
    Signed {
        request: SignedRequest,
        /// Its place under admission control, held until it executes here (or is
        /// forgotten), not only while its caller waits.
        slot: Option<WriteSlot>,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    /// Stop the node with this error (a check at start found it must not serve).
    Fail(String),
    /// The members the protocol excluded and re-admitted (`None`: it excludes no one).
    Exclusions {
        reply: oneshot::Sender<Option<crate::protocol::Exclusions>>,
    },
    /// Hand the protocol a re-admission (validators' signed votes) for ordering.
    /// Answered once handed over, or with why it does not hold here.
    Readmit {
        votes: Vec<Bytes>,
        reply: oneshot::Sender<Result<(), crate::protocol::Readmit>>,
    },
    /// What became of a signed request here; with `wait`, answered only once it is
    /// no longer pending (the caller times out on its own).
    Outcome {
        request: SignedRequest,
        wait: bool,
        reply: oneshot::Sender<Outcome>,
    },
}

/// What became of a request its client signed, at this member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not executed here (yet).
    Pending,
    /// Executed: its result, the same at every correct member, and where it committed
    /// with the proof of it (JSON), while this member holds that batch.
    Executed {
        result: Result<Response, KvError>,
        proof: Option<(u64, String)>,
    },
    /// The client's later request `latest` executed since: this one's result is no
    /// longer kept (it executed, or never will).
    Superseded { latest: u64 },
    /// Another operation the client signed under the same number executed: this one
    /// never will.
    OtherOperation,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// This node cannot order requests; `leader` may.
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("etcdserver: too many requests")]
    Busy,
    #[error("etcdserver: leader changed")]
    LeadershipLost,
    #[error("{0}")]
    Kv(KvError),
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TransferFailed,
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A membership change is under way; etcd answers the same while unhealthy.
    #[error("etcdserver: unhealthy cluster")]
    ChangeInProgress,
    #[error("{}", membership_error(*.0))]
    InvalidChange(ekmat_core::ChangeError),
    /// The protocol does not do this at all (PBFT: membership changes, leader transfer).
    #[error("{0}")]
    Unsupported(String),
    /// Larger than the protocol orders (PBFT bounds requests by its batches).
    #[error("etcdserver: request is too large")]
    TooLarge,
}

/// etcd's wording for membership changes that make no sense (its clients match on it).
fn membership_error(e: ekmat_core::ChangeError) -> String {
    use ekmat_core::ChangeError;
    match e {
        ChangeError::AlreadyMember(_) => "etcdserver: member ID already exist".into(),
        ChangeError::NotMember(_) => "etcdserver: member not found".into(),
        ChangeError::NotLearner(_) => "etcdserver: can only promote a learner member".into(),
        ChangeError::NotCaughtUp(_) => {
            "etcdserver: can only promote a learner member which is in sync with leader".into()
        }
        other => format!("etcdserver: {other}"),
    }
}

/// What the rest of the node may know about the driver's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub core: CoreStatus,
    pub applied: u64,
    pub revision: i64,
    pub compact_revision: i64,
    /// The state machine's size estimate, in bytes (Status's database size, and what the
    /// space quota is checked against).
    pub db_size: u64,
}

/// A client write's place among those a member holds (admission control), given back
/// when the driver is done with the write.
#[derive(Debug)]
pub struct WriteSlot {
    in_flight: Arc<AtomicUsize>,
    weight: usize,
}

impl WriteSlot {
    /// Take `weight` places in `in_flight` (the caller has counted them there).
    pub fn new(in_flight: Arc<AtomicUsize>, weight: usize) -> WriteSlot {
        WriteSlot { in_flight, weight }
    }
}

impl Drop for WriteSlot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.weight, Ordering::Relaxed);
    }
}

type WriteReply = oneshot::Sender<Result<Response, CallError>>;
type ReadReply = oneshot::Sender<Result<Answer, CallError>>;

struct PendingWrite {
    reply: WriteReply,
    /// The encoded command, kept so it can be forwarded to the leader.
    command: Bytes,
    forwarded: bool,
    /// Held until the write is answered or forgotten.
    _slot: Option<WriteSlot>,
    /// When its caller was first seen gone (it may still commit).
    abandoned: Option<Instant>,
}

/// A leadership transfer or membership change waiting for the protocol's answer.
struct PendingAdmin {
    reply: oneshot::Sender<Result<(), CallError>>,
    /// Kept so a membership change can be forwarded to the leader.
    kind: RequestKind,
    forwarded: bool,
}

struct PendingRead {
    query: Query,
    reply: ReadReply,
    forwarded: bool,
}

/// A request proposed here on another member's behalf.
struct OnBehalf {
    origin: NodeId,
    since: Instant,
}

pub struct Driver<P: RuntimeProtocol> {
    core: P::Node,
    kv: KvStore,
    started: Instant,
    clock: clock::CoreClock,
    transport: Transport<Wire<Msg<P>>>,
    writes: mpsc::Sender<(u64, Write<P>)>,
    durable: watch::Receiver<Durability>,
    status: watch::Sender<NodeStatus>,
    /// Users, roles and the auth switch as applied, for checking requests' tokens and
    /// permissions without a call here.
    auth: watch::Sender<ekmat_kv::AuthState>,
    snapshot_every: u64,
    last_snapshot: u64,
    requested_snapshot_stagger: Duration,
    /// When the protocol last asked for a snapshot (at first: when the driver started),
    /// and how long before that it asked the time before.
    last_snapshot_request: Instant,
    snapshot_request_interval: Duration,
    /// Command bytes applied since the last snapshot, and that snapshot's size: a
    /// snapshot waits until the log has grown by as much as the state, so writing
    /// snapshots costs at most as much disk bandwidth as writing entries.
    applied_bytes: u64,
    last_snapshot_bytes: u64,
    /// Why the node must stop, if an effect could not be carried out.
    fatal: Option<String>,
    next_id: u64,
    pending_writes: HashMap<RequestId, PendingWrite>,
    /// Whole-store queries answered off the driver, one at a time (see `answer`).
    offloaded: Arc<Semaphore>,
    pending_reads: HashMap<RequestId, PendingRead>,
    pending_admin: HashMap<RequestId, PendingAdmin>,
    on_behalf: HashMap<RequestId, OnBehalf>,
    /// Callers waiting for a signed request's outcome, by client: looked at again
    /// when a request of that client is applied (or a snapshot restored).
    signed_waiters: HashMap<u64, Vec<(SignedRequest, oneshot::Sender<Outcome>)>>,
    /// Signed requests handed to the protocol and not executed here yet, by client and
    /// number: their admission slots and when they were handed over.
    signed_slots: HashMap<(u64, u64), (WriteSlot, Instant)>,
    /// Who is in the cluster, as the committed configurations say.
    members: Members,
    members_tx: watch::Sender<Vec<MemberRecord>>,
    /// This node's own record, as its configuration file gives it.
    me: MemberRecord,
    /// A snapshot is being serialized; it arrives on `snapshots_rx`.
    snapshot_in_progress: bool,
    /// A snapshot the protocol asked for while another was being serialized.
    queued_snapshot: Option<(u64, ekmat_kv::SnapshotSource)>,
    snapshots_tx: mpsc::Sender<snapshot::Encoded>,
    snapshot_buffers: snapshot_buffer::SnapshotBuffers,
    snapshots_rx: mpsc::Receiver<snapshot::Encoded>,
    /// This node's record, proposed to the cluster and not yet answered.
    publishing: Option<(Instant, oneshot::Receiver<Result<(), CallError>>)>,
    clock_refusals: clock_refusals::ClockRefusals,
    gauges: StatusGauges,
    last_ping: Instant,
    /// Reads the protocol confirmed, waiting for the state machine to reach `index`.
    ready_reads: Vec<(u64, RequestId)>,
    out: Effects<Msg<P>, Write<P>>,
    /// Where applied changes go to watchers.
    hub: WatchHub,
    /// A heavy entry being applied off the driver, with the store (see `apply.rs`).
    applying: Option<apply::Applying>,
    /// What committed behind it, in order.
    backlog: std::collections::VecDeque<apply::Backlogged>,
    /// When this node last proposed a lease-expiry tick.
    last_lease_tick: Instant,
    /// This node just became leader and owes the log a [`Command::LeaseRenewAll`].
    renew_leases: bool,
    /// The registered clients (PBFT), by id: whose committed requests execute as signed.
    signers: HashMap<u64, ekmat_kv::SignedBy>,
}

pub struct DriverParts<P: RuntimeProtocol> {
    pub core: P::Node,
    pub kv: KvStore,
    pub started: Instant,
    pub transport: Transport<Wire<Msg<P>>>,
    pub writes: mpsc::Sender<(u64, Write<P>)>,
    pub durable: watch::Receiver<Durability>,
    pub status: watch::Sender<NodeStatus>,
    pub auth: watch::Sender<ekmat_kv::AuthState>,
    pub members: Members,
    pub members_tx: watch::Sender<Vec<MemberRecord>>,
    pub me: MemberRecord,
    /// Hand the protocol a snapshot every this many applied entries (0: never).
    pub snapshot_every: u64,
    /// How many entries later than `snapshot_every` the first snapshot comes (see
    /// `NodeConfig::stagger`).
    pub snapshot_stagger: u64,
    /// How long after the protocol asks for a snapshot this member starts encoding it
    /// (see `snapshot_at`).
    pub requested_snapshot_stagger: Duration,
    pub hub: WatchHub,
    /// The registered clients (PBFT), by id: whose committed requests execute as signed.
    pub signers: HashMap<u64, ekmat_kv::SignedBy>,
}

impl<P: RuntimeProtocol> Driver<P> {
    pub fn new(parts: DriverParts<P>) -> Driver<P> {
        // Request ids must not collide with another node's or an earlier run's: the
        // clock at start, shifted clear of a per-run counter.
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let (snapshots_tx, snapshots_rx) = mpsc::channel(1);
        Driver {
            core: parts.core,
            kv: parts.kv,
            started: parts.started,
            clock: clock::CoreClock::new(parts.started),
            transport: parts.transport,
            writes: parts.writes,
            durable: parts.durable,
            status: parts.status,
            auth: parts.auth,
            snapshot_every: parts.snapshot_every,
            last_snapshot: parts.snapshot_stagger,
            requested_snapshot_stagger: parts.requested_snapshot_stagger,
            last_snapshot_request: Instant::now(),
            snapshot_request_interval: Duration::MAX,
            applied_bytes: 0,
            last_snapshot_bytes: 0,
            fatal: None,
            next_id: epoch << 20,
            pending_writes: HashMap::new(),
            offloaded: Arc::new(Semaphore::new(1)),
            pending_reads: HashMap::new(),
            pending_admin: HashMap::new(),
            on_behalf: HashMap::new(),
            signed_waiters: HashMap::new(),
            signed_slots: HashMap::new(),
            members: parts.members,
            members_tx: parts.members_tx,
            me: parts.me,
            publishing: None,
            clock_refusals: Default::default(),
            gauges: StatusGauges::register(),
            snapshot_in_progress: false,
            queued_snapshot: None,
            snapshots_tx,
            snapshot_buffers: Default::default(),
            snapshots_rx,
            last_ping: parts.started,
            ready_reads: Vec::new(),
            out: Effects::new(),
            hub: parts.hub,
            last_lease_tick: parts.started,
            applying: None,
            backlog: std::collections::VecDeque::new(),
            renew_leases: false,
            signers: parts.signers,
        }
    }

    /// Wall time since the node started (round trips; the core's time is `clock`'s).
    fn now(&self) -> Time {
        Time(self.started.elapsed().as_micros() as u64)
    }

    fn fresh_id(&mut self) -> RequestId {
        self.next_id += 1;
        // Client 0: anonymous, not deduplicated by the state machine's sessions.
        RequestId {
            client: 0,
            seq: self.next_id,
        }
    }

    /// Run until `stop` fires or a channel closes. Returns an error if durability failed.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<(NodeId, Wire<Msg<P>>)>,
        mut calls: mpsc::Receiver<Call>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let store_away = self.store_away();
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        return Err("the storage writer stopped".into());
                    }
                    let d = self.durable.borrow_and_update().clone();
                    if let Some(failed) = d.failed {
                        return Err(failed);
                    }
                    self.step(Input::Persisted { seq: d.seq }).await;
                }
                Some(first) = inbound.recv() => self.on_wires(first, &mut inbound).await,
                result = apply::applied(&mut self.applying) => self.on_applied(result),
                Some(call) = calls.recv(), if !store_away => self.on_call(call).await,
                Some(encoded) = self.snapshots_rx.recv() => {
                    self.on_snapshot_encoded(encoded).await;
                }
                due = ticker.tick() => {
                    note_lateness(due);
                    self.step(Input::Tick).await;
                    metrics::gauge!("ekmat_clock_paused_seconds")
                        .set(self.clock.paused().as_secs_f64());
                    self.forget_abandoned_calls();
                    self.ping_peers();
                    self.expire_leases().await;
                    self.publish_self().await;
                }
            }
            if std::mem::take(&mut self.renew_leases) {
                // Right after the step that made this node leader, before any other
                // request reaches the core: nothing this leader proposes can move the
                // log's clock before the leases are renewed.
                self.propose(Command::LeaseRenewAll).await;
            }
            if let Some(why) = self.fatal.take() {
                self.fail_pending(CallError::Stopped);
                return Err(why);
            }
        }
        self.fail_pending(CallError::Stopped);
        Ok(())
    }

    async fn on_call(&mut self, call: Call) {
        match call {
            Call::Write {
                command,
                reply,
                slot,
            } => {
                if reply.is_closed() {
                    // The caller gave up before its turn came: never proposed, so the
                    // timeout it was told ("may or may not have been applied") holds.
                    metrics::counter!("ekmat_writes_abandoned_total").increment(1);
                    return;
                }
                metrics::counter!("ekmat_proposals_total").increment(1);
                let id = self.fresh_id();
                let envelope = Envelope {
                    now_ms: wall_clock_ms(),
                    command,
                };
                let command = envelope.encode();
                self.pending_writes.insert(
                    id,
                    PendingWrite {
                        reply,
                        command: command.clone(),
                        forwarded: false,
                        _slot: slot,
                        abandoned: None,
                    },
                );
                let kind = RequestKind::Write(command);
                self.step(Input::Request(Request { id, kind })).await;
            }
            Call::Read {
                query,
                linearizable: false,
                reply,
            } => {
                answer(&query, &self.kv, reply, &self.offloaded);
            }
            Call::Read {
                query,
                linearizable: true,
                reply,
            } => {
                let id = self.fresh_id();
                let read = PendingRead {
                    query,
                    reply,
                    forwarded: false,
                };
                self.pending_reads.insert(id, read);
                let kind = RequestKind::Read;
                self.step(Input::Request(Request { id, kind })).await;
            }
            Call::MoveLeader { to, reply } => {
                self.admin(RequestKind::TransferLeadership { to }, reply)
                    .await
            }
            Call::ChangeMembership { changes, reply } => {
                self.admin(RequestKind::ChangeMembership(changes), reply)
                    .await
            }
            Call::Certificate { seq, reply } => {
                let _ = reply.send(P::certificate(&self.core, seq));
            }
            Call::Signed {
                request,
                slot,
                reply,
            } => match P::signed_request(&request) {
                Ok(msg) => {
                    if let Some(slot) = slot {
                        let key = (request.client, request.seq);
                        self.signed_slots.insert(key, (slot, Instant::now()));
                    }
                    let _ = reply.send(Ok(()));
                    let from = self.core.id();
                    self.step(Input::Message { from, msg }).await;
                }
                Err(reason) => {
                    let _ = reply.send(Err(CallError::Unsupported(reason)));
                }
            },
            Call::Fail(why) => self.fatal = Some(why),
            Call::Exclusions { reply } => {
                let _ = reply.send(P::exclusions(&self.core));
            }
            Call::Readmit { votes, reply } => match P::readmission(&self.core, &votes) {
                Ok(msg) => {
                    let _ = reply.send(Ok(()));
                    let from = self.core.id();
                    self.step(Input::Message { from, msg }).await;
                }
                Err(why) => {
                    let _ = reply.send(Err(why));
                }
            },
            Call::Outcome {
                request,
                wait,
                reply,
            } => match self.outcome(&request) {
                Outcome::Pending if wait => {
                    let waiting = self.signed_waiters.entry(request.client).or_default();
                    waiting.push((request, reply));
                }
                outcome => {
                    let _ = reply.send(outcome);
                }
            },
        }
    }

    /// Answer the callers waiting on `client`'s signed requests (all clients' if
    /// `None`) whose outcome is known now.
    fn wake_signed(&mut self, client: Option<u64>) {
        self.release_signed_slots(client);
        let clients: Vec<u64> = match client {
            Some(c) if self.signed_waiters.contains_key(&c) => vec![c],
            Some(_) => return,
            None => self.signed_waiters.keys().copied().collect(),
        };
        for c in clients {
            let waiting = self.signed_waiters.remove(&c).unwrap_or_default();
            let mut still = Vec::new();
            for (request, reply) in waiting {
                match self.outcome(&request) {
                    Outcome::Pending => still.push((request, reply)),
                    outcome => {
                        let _ = reply.send(outcome);
                    }
                }
            }
            if !still.is_empty() {
                self.signed_waiters.insert(c, still);
            }
        }
    }

    /// Give back the admission slots of `client`'s (every client's, if `None`) signed
    /// requests that are no longer pending here: executed, or passed by a later one.
    fn release_signed_slots(&mut self, client: Option<u64>) {
        let kv = &self.kv;
        self.signed_slots.retain(|(c, seq), _| {
            client.is_some_and(|client| client != *c)
                || kv.session(*c).is_none_or(|(latest, _)| latest < *seq)
        });
    }

    fn outcome(&self, request: &SignedRequest) -> Outcome {
        match self.kv.session(request.client) {
            Some((seq, _))
                if seq == request.seq
                    && P::executed_as_sent(&self.core, request) == Some(false) =>
            {
                Outcome::OtherOperation
            }
            Some((seq, result)) if seq == request.seq => Outcome::Executed {
                result: result.clone(),
                proof: P::request_proof(&self.core, request),
            },
            Some((latest, _)) if latest > request.seq => Outcome::Superseded { latest },
            _ => Outcome::Pending,
        }
    }

    /// Propose a command of the node's own, whose answer nobody waits for.
    async fn propose(&mut self, command: Command) {
        let id = self.fresh_id();
        let command = Envelope::wrap(wall_clock_ms(), &command);
        let kind = RequestKind::Write(command);
        self.step(Input::Request(Request { id, kind })).await;
    }

    /// As leader, propose a tick once this node's clock passes a lease's deadline, so
    /// leases expire even when nobody writes. Followers never do: expiry happens only
    /// when the log's clock says so, at the same entry on every member. Where the
    /// protocol agrees on time (PBFT), every member does, so a faulty leader cannot keep
    /// a lease alive by proposing no tick (the tick expires it at the agreed time).
    async fn expire_leases(&mut self) {
        if self.store_away() {
            return;
        }
        let Some(deadline) = self.kv.next_lease_deadline() else {
            return;
        };
        if deadline > wall_clock_ms()
            || self.last_lease_tick.elapsed() < LEASE_TICK_EVERY
            || !(P::AGREES_ON_TIME || P::status(&self.core).is_leader)
        {
            return;
        }
        self.last_lease_tick = Instant::now();
        self.propose(Command::Tick).await;
    }

    /// A peer's message and those queued behind it (up to [`MAX_BURST`]): the core
    /// previews their protocol messages together (PBFT batch-verifies signatures), then
    /// each is handled in arrival order.
    async fn on_wires(
        &mut self,
        first: (NodeId, Wire<Msg<P>>),
        inbound: &mut mpsc::Receiver<(NodeId, Wire<Msg<P>>)>,
    ) {
        let mut burst = vec![first];
        while burst.len() < MAX_BURST {
            match inbound.try_recv() {
                Ok(next) => burst.push(next),
                Err(_) => break,
            }
        }
        if burst.len() > 1 {
            let msgs: Vec<&Msg<P>> = burst
                .iter()
                .filter_map(|(_, wire)| match wire {
                    Wire::Protocol(msg) => Some(msg),
                    _ => None,
                })
                .collect();
            self.core.preview(&msgs);
        }
        for (from, wire) in burst {
            self.on_wire(from, wire).await;
        }
    }

    async fn on_wire(&mut self, from: NodeId, wire: Wire<Msg<P>>) {
        match wire {
            Wire::Protocol(msg) => self.step(Input::Message { from, msg }).await,
            Wire::Forward(mut request) => {
                restamp(&mut request);
                let since = Instant::now();
                self.on_behalf.insert(
                    request.id,
                    OnBehalf {
                        origin: from,
                        since,
                    },
                );
                self.step(Input::Request(request)).await;
            }
            Wire::Refused { id, reason } => self.fail(id, rejection(reason)),
            Wire::Done { id } => {
                if let Some(admin) = self.pending_admin.remove(&id) {
                    let _ = admin.reply.send(Ok(()));
                }
            }
            Wire::ReadIndex { id, index } => {
                self.ready_reads.push((index, id));
                self.serve_ready_reads();
            }
            Wire::Ping { sent_us } => {
                self.transport.send(from, Wire::Pong { sent_us });
            }
            Wire::Pong { sent_us } => {
                let rtt = self.now().as_micros().saturating_sub(sent_us);
                let peer = from.to_string();
                metrics::histogram!("ekmat_peer_rtt_seconds", "peer" => peer)
                    .record(rtt as f64 / 1e6);
            }
        }
    }

    fn ping_peers(&mut self) {
        if self.last_ping.elapsed() < PING_EVERY {
            return;
        }
        self.last_ping = Instant::now();
        let sent_us = self.now().as_micros();
        for peer in self.transport.peers().collect::<Vec<_>>() {
            self.transport.send(peer, Wire::Ping { sent_us });
        }
    }

    async fn step(&mut self, input: Input<Msg<P>>) {
        let now = self.clock.now(!P::status(&self.core).is_leader);
        P::observe_clock(&mut self.core, wall_clock_ms());
        let mut out = std::mem::take(&mut self.out);
        self.core.step(now, input, &mut out);
        for effect in out.drain() {
            self.apply_effect(effect).await;
        }
        self.out = out;
        self.maybe_snapshot();
        self.publish_status();
    }

    async fn apply_effect(&mut self, effect: Effect<Msg<P>, Write<P>>) {
        match effect {
            Effect::Send { to, msg } => {
                let forged = P::injected_fault(&self.core, to, &msg);
                if !self.transport.send(to, Wire::Protocol(msg)) {
                    metrics::counter!("ekmat_messages_dropped_total").increment(1);
                }
                metrics::counter!("ekmat_messages_sent_total").increment(1);
                if let Some(forged) = forged {
                    self.transport.send(to, Wire::Protocol(forged));
                }
            }
            Effect::Persist { seq, write } => {
                // Awaiting here is the back-pressure: the core runs no faster than the disk.
                if self.writes.send((seq, write)).await.is_err() {
                    tracing::error!("the storage writer is gone; durable writes cannot be made");
                }
            }
            Effect::Commit(c) => self.on_committed(c),
            Effect::Restore { index, data } => self.on_restore(index, data),
            Effect::WantSnapshot { index } => self.on_snapshot_wanted(index),
            Effect::Reply(reply) => self.on_reply(reply),
            Effect::Event(e) => {
                if let Event::BecameLeader { .. } = e {
                    self.renew_leases = true;
                }
                self.clock_refusals.note(&e, Instant::now());
                if matches!(e, Event::Counter { name, .. } if name == ekmat_pbft::DIVERGED_HISTORY)
                {
                    self.fatal = Some(
                        "this member executed another history than a quorum of its peers (its data differs: restore it from a backup or a peer): stopping rather than serve it"
                            .into(),
                    );
                }
                on_event(&e);
            }
        }
    }

    /// Hand the entry's events to the watchers (the client waiting for the entry only
    /// needs its result).
    fn publish_events(&self, applied: &mut Applied) {
        if let Applied::Executed { events, .. } = applied
            && !events.is_empty()
            && self.hub.has_watchers()
        {
            let events = std::mem::take(events);
            self.hub
                .publish(Published::Events(std::sync::Arc::new(events)));
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Rejected { id, reason } => {
                if let Some(behalf) = self.on_behalf.remove(&id) {
                    self.transport
                        .send(behalf.origin, Wire::Refused { id, reason });
                } else if !self.forward(id, reason) {
                    self.fail(id, rejection(reason));
                }
            }
            Reply::ReadReady { id, index } => {
                if let Some(behalf) = self.on_behalf.remove(&id) {
                    self.transport
                        .send(behalf.origin, Wire::ReadIndex { id, index });
                } else {
                    self.ready_reads.push((index, id));
                    self.serve_ready_reads();
                }
            }
            Reply::Done { id } => {
                if let Some(behalf) = self.on_behalf.remove(&id) {
                    self.transport.send(behalf.origin, Wire::Done { id });
                }
                if let Some(admin) = self.pending_admin.remove(&id) {
                    let _ = admin.reply.send(Ok(()));
                }
            }
        }
    }

    /// Send a refused request of ours to the leader the protocol named, once. Returns
    /// false if it cannot be forwarded.
    fn forward(&mut self, id: RequestId, reason: Rejection) -> bool {
        let Rejection::NotLeader {
            leader: Some(leader),
        } = reason
        else {
            return false;
        };
        let kind = if let Some(w) = self.pending_writes.get_mut(&id).filter(|w| !w.forwarded) {
            w.forwarded = true;
            RequestKind::Write(w.command.clone())
        } else if let Some(r) = self.pending_reads.get_mut(&id).filter(|r| !r.forwarded) {
            r.forwarded = true;
            RequestKind::Read
        } else if let Some(a) = self
            .pending_admin
            .get_mut(&id)
            .filter(|a| !a.forwarded && matches!(a.kind, RequestKind::ChangeMembership(_)))
        {
            a.forwarded = true;
            a.kind.clone()
        } else {
            return false;
        };
        metrics::counter!("ekmat_forwarded_total").increment(1);
        self.transport
            .send(leader, Wire::Forward(Request { id, kind }))
    }

    fn fail(&mut self, id: RequestId, err: CallError) {
        if let Some(w) = self.pending_writes.remove(&id) {
            let _ = w.reply.send(Err(err));
        } else if let Some(r) = self.pending_reads.remove(&id) {
            let _ = r.reply.send(Err(err));
        } else if let Some(admin) = self.pending_admin.remove(&id) {
            let _ = admin.reply.send(Err(err));
        }
    }

    fn serve_ready_reads(&mut self) {
        if self.store_away() {
            return; // served once the store is back
        }
        let applied = self.kv.applied_index();
        let mut i = 0;
        while i < self.ready_reads.len() {
            let (index, id) = self.ready_reads[i];
            if index > applied {
                i += 1;
                continue;
            }
            self.ready_reads.swap_remove(i);
            if let Some(r) = self.pending_reads.remove(&id) {
                answer(&r.query, &self.kv, r.reply, &self.offloaded);
            }
        }
    }

    /// Callers that gave up (their request timed out) left their reply channels behind,
    /// and requests proposed for others that never committed left their origins. A
    /// write is kept a while longer: it was proposed and may still commit.
    fn forget_abandoned_calls(&mut self) {
        let now = Instant::now();
        self.pending_writes.retain(|_, w| {
            !w.reply.is_closed()
                || now.duration_since(*w.abandoned.get_or_insert(now)) < ABANDONED_WRITE_TTL
        });
        self.pending_reads.retain(|_, r| !r.reply.is_closed());
        self.pending_admin.retain(|_, a| !a.reply.is_closed());
        self.signed_waiters.retain(|_, waiting| {
            waiting.retain(|(_, reply)| !reply.is_closed());
            !waiting.is_empty()
        });
        // A signed request that has not executed in this long most likely never will
        // (a faulty primary dropped it, or the client's next request passed it by
        // elsewhere): its place goes back, as an abandoned write's does.
        self.signed_slots
            .retain(|_, (_, since)| since.elapsed() < ABANDONED_WRITE_TTL);
        self.on_behalf
            .retain(|_, b| b.since.elapsed() < ON_BEHALF_TTL);
    }

    fn publish_status(&self) {
        if self.store_away() {
            return; // the store's figures come back with it
        }
        let status = NodeStatus {
            core: P::status(&self.core),
            applied: self.kv.applied_index(),
            revision: self.kv.revision(),
            compact_revision: self.kv.compact_revision(),
            db_size: self.kv.size_bytes(),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        // Each change moves the auth revision, and a restored store holds the same
        // state at the same revision (both come from the one committed log); the switch
        // is compared too, for a backup that gave no revision.
        let auth = self.kv.auth();
        let published = self.auth.borrow();
        let stale =
            (auth.revision(), auth.enabled()) != (published.revision(), published.enabled());
        drop(published);
        if stale {
            self.auth.send_replace(auth.clone());
        }
        let g = &self.gauges;
        g.term.set(status.core.term as f64);
        g.commit.set(status.core.commit as f64);
        g.applied.set(status.applied as f64);
        g.is_leader.set(f64::from(u8::from(status.core.is_leader)));
    }

    fn fail_pending(&mut self, err: CallError) {
        for (_, w) in self.pending_writes.drain() {
            let _ = w.reply.send(Err(err.clone()));
        }
        for (_, r) in self.pending_reads.drain() {
            let _ = r.reply.send(Err(err.clone()));
        }
        for (_, admin) in self.pending_admin.drain() {
            let _ = admin.reply.send(Err(err.clone()));
        }
    }
}

/// How late a tick ran: the driver waits for nothing but its inputs, so a late tick
/// means this process got no CPU (or the driver spent that long on one input). Timers
/// judged on such a tick (check-quorum, elections) may misjudge their peers, so it is
/// worth a line in the log when it happens.
fn note_lateness(due: tokio::time::Instant) {
    let late = due.elapsed();
    metrics::histogram!("ekmat_tick_lateness_seconds").record(late.as_secs_f64());
    if late >= LATE_TICK {
        tracing::warn!(late_ms = late.as_millis() as u64, "the driver ran late");
    }
}

/// A tick this late is logged.
const LATE_TICK: Duration = Duration::from_millis(100);

/// Answer `query` from `kv` as it stands now: at once, or from a view of it on a
/// blocking thread if answering means visiting the whole store — one such at a time
/// (`offloaded` has one permit), so a flood of them neither takes every core nor pins
/// many old versions of the store.
fn answer(query: &Query, kv: &KvStore, reply: ReadReply, offloaded: &Arc<Semaphore>) {
    match query.offload(kv) {
        Some(work) => {
            let permits = offloaded.clone();
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                if reply.is_closed() {
                    return; // the caller gave up while waiting its turn
                }
                let answered = tokio::task::spawn_blocking(move || work().map_err(CallError::Kv));
                if let Ok(result) = answered.await {
                    let _ = reply.send(result);
                }
            });
        }
        None => {
            let _ = reply.send(query.serve(kv).map_err(CallError::Kv));
        }
    }
}

/// A forwarded write carries the clock of the member that took it; the leader's clock
/// replaces it, so lease expiry follows one clock (the leader's) and a member whose
/// clock runs ahead cannot expire leases early. Bytes that are not an envelope are left
/// alone: the state machine ignores them deterministically.
fn restamp(request: &mut Request) {
    if let RequestKind::Write(bytes) = &mut request.kind
        && let Ok(envelope) = Envelope::decode(bytes)
    {
        *bytes = Envelope::wrap(wall_clock_ms(), &envelope.command);
    }
}

fn rejection(reason: Rejection) -> CallError {
    match reason {
        Rejection::NotLeader { leader } => CallError::NotLeader { leader },
        Rejection::Busy => CallError::Busy,
        Rejection::LeadershipLost => CallError::LeadershipLost,
        Rejection::TransferFailed => CallError::TransferFailed,
        Rejection::ChangeInProgress => CallError::ChangeInProgress,
        Rejection::InvalidChange(e) => CallError::InvalidChange(e),
        Rejection::ReservedClient => {
            CallError::Unsupported("the request's client id is reserved by the protocol".into())
        }
        Rejection::SignatureRequired => CallError::Unsupported(
            "the request's client is registered to sign its requests, and this one is unsigned"
                .into(),
        ),
        Rejection::TooLarge { .. } => CallError::TooLarge,
    }
}

/// The gauges the driver sets after every step, registered once: looking one up by name
/// costs a hash and a lock each time (2% of a member's CPU under load).
struct StatusGauges {
    term: metrics::Gauge,
    commit: metrics::Gauge,
    applied: metrics::Gauge,
    is_leader: metrics::Gauge,
}

impl StatusGauges {
    fn register() -> StatusGauges {
        StatusGauges {
            term: metrics::gauge!("ekmat_term"),
            commit: metrics::gauge!("ekmat_commit_index"),
            applied: metrics::gauge!("ekmat_applied_index"),
            is_leader: metrics::gauge!("ekmat_is_leader"),
        }
    }
}

fn on_event(e: &Event) {
    match e {
        Event::BecameLeader { term } => {
            tracing::info!(term, "became leader");
            metrics::counter!("ekmat_elections_won_total").increment(1);
        }
        Event::SteppedDown { term, reason } => {
            tracing::info!(term, ?reason, "stepped down");
        }
        Event::Campaign { term, pre_vote } => {
            tracing::debug!(term, pre_vote, "campaigning");
            metrics::counter!("ekmat_campaigns_total").increment(1);
        }
        Event::Evidence { against, what, .. } => {
            tracing::warn!(%against, what, "evidence of misbehaviour");
        }
        Event::Counter { name, delta } => {
            metrics::counter!("ekmat_protocol_events_total", "name" => *name).increment(*delta);
        }
    }
}
