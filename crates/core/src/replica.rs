//! The replica contract: one sans-IO shape for every protocol.
//!
//! A protocol core is a plain struct implementing [`Replica`]. A driver (the simulator or
//! the tokio runtime) feeds it [`Input`]s together with the current [`Time`], and carries
//! out the [`Effect`]s it pushes into an [`Effects`] buffer: sending messages, making writes
//! durable, handing committed commands to the state machine, answering clients, and
//! reporting events. The core never performs I/O, reads a clock, spawns a thread or draws
//! unseeded randomness, so the same code is proved in the simulator and run in production.
//!
//! Durability is asynchronous: a core asks for a write with [`Effect::Persist`] and learns
//! it is durable from [`Input::Persisted`]. A core must not let a message leave that
//! depends on a write not yet durable (a vote, an append acknowledgement); the
//! [`crate::PersistGate`] helper holds such messages back until their write is reported.
//!
//! See `docs/replica-contract.md` for how Raft, Multi-Paxos, PBFT, HotStuff, Tendermint,
//! 2PC/3PC and the Byzantine Generals algorithms map onto this one trait.

use std::fmt::Debug;

use bytes::Bytes;

use crate::{ChangeError, Membership, MembershipChange, NodeId, RequestId, Time};

/// A deterministic protocol state machine.
pub trait Replica {
    /// What replicas send each other.
    type Message: Clone + Debug;
    /// One durable write the core asks for (a term and vote, log entries, a checkpoint).
    type Write: Clone + Debug;
    /// What survives a crash: the fold of every write that reached disk, in order.
    /// A restarted replica is rebuilt from it.
    type Stable: Durable<Self::Write> + Clone + Debug + Default;

    fn id(&self) -> NodeId;

    /// Advance the state machine by one input at time `now` (never earlier than the `now`
    /// of the previous call).
    fn step(
        &mut self,
        now: Time,
        input: Input<Self::Message>,
        out: &mut Effects<Self::Message, Self::Write>,
    );

    /// Messages that arrived together, about to be stepped in this order: a core may
    /// check what they carry in one go (PBFT verifies their signatures as one batch,
    /// about twice as fast as one by one) so long as stepping them afterwards does
    /// exactly what it would have done without.
    fn preview(&mut self, msgs: &[&Self::Message]) {
        let _ = msgs;
    }
}

/// Folds durable writes into the state a replica restarts from.
pub trait Durable<W> {
    fn apply(&mut self, write: &W);

    /// Whether a crash may lose `write` without harm even after it was reported durable:
    /// a replica's compaction of its own log, whose entries are all in earlier writes.
    /// Storage may then make it durable lazily; recovering without it is recovering as
    /// if the compaction had not happened yet.
    fn is_compaction(write: &W) -> bool {
        let _ = write;
        false
    }

    /// About how many bytes the state encodes to, if the protocol can tell cheaply.
    /// Storage rewrites its log as a checkpoint only once the log holds about twice
    /// this: a state that grows as fast as the log (batches kept until a snapshot)
    /// would otherwise be rewritten again and again for no space gained.
    fn encoded_len_hint(&self) -> Option<u64> {
        None
    }
}

/// Everything that can happen to a replica.
#[derive(Clone, Debug)]
pub enum Input<M> {
    /// A message from another replica.
    Message { from: NodeId, msg: M },
    /// A client request arriving at this replica.
    Request(Request),
    /// Time has passed: check timers. Drivers tick at a steady interval; `now` is on
    /// every input, so a tick carries no other information.
    Tick,
    /// Every write with sequence number `<= seq` is durable.
    Persisted { seq: u64 },
    /// The state machine's state after applying every entry up to `index`, which the
    /// driver has applied. The protocol keeps it as a snapshot, may compact its log
    /// behind it, and sends it to replicas that fall too far behind.
    Snapshot { index: u64, data: Bytes },
    /// How many bytes the [`Input::Snapshot`] at `index` will hold, once a driver knows
    /// it, before the encoding is done (optional: a core learns the size from the data
    /// too). PBFT's snapshot points follow the snapshots' sizes, and a replica that must
    /// know one to go on waits for it.
    SnapshotSize { index: u64, size: u64 },
}

/// A client's request as a replica receives it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub kind: RequestKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RequestKind {
    /// A command to order and apply everywhere. Opaque to the protocol.
    Write(Bytes),
    /// A linearizable read barrier: the core answers [`Reply::ReadReady`] with an index
    /// once it is safe to serve a read from a state machine that has applied that index.
    /// Protocols without a cheaper path order the read like a write.
    Read,
    /// Hand leadership to `to` (Raft's TimeoutNow, etcd's MoveLeader). Answered with
    /// [`Reply::Done`] once this replica has stepped down for `to`, or rejected (then
    /// this replica leads on). Protocols without a stable leader reject it.
    TransferLeadership { to: NodeId },
    /// Change who takes part (all of `changes` at once). Answered with [`Reply::Done`]
    /// once the resulting configuration is committed (after the joint phase, if voters
    /// change). Protocols without reconfiguration reject it.
    ChangeMembership(Vec<MembershipChange>),
}

/// A committed command, delivered to the state machine in index order, exactly once per
/// incarnation of the replica (a restarted replica delivers again from its recovery point).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Committed {
    /// Position in the total order (log index, sequence number, height, slot).
    pub index: u64,
    pub entry: CommittedEntry,
    /// The time the replicas agreed this entry executes at (ms since the Unix epoch),
    /// for protocols that must not trust one proposer's clock (PBFT's batch time). The
    /// state machine then reads its clock (lease expiry) from this instead of the
    /// command's own stamp. `None`: the command's stamp is the proposer's, and trusted.
    pub clock_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CommittedEntry {
    /// A client command: apply it; the replica that accepted the request replies.
    Command { id: RequestId, command: Bytes },
    /// A protocol entry with no effect on the state machine (a new leader's no-op, a
    /// PBFT null request). Delivered so the applied index stays contiguous.
    Noop,
    /// A configuration is now committed: `changes` made it (none for the entry that
    /// ends a joint phase). The state machine ignores it; the driver updates its
    /// member list.
    Membership {
        membership: Membership,
        changes: Vec<MembershipChange>,
    },
}

/// The protocol's own answer to a request. A committed write is answered by the driver
/// after applying it, since only the state machine knows the result.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// Definitely not executed: the client may retry elsewhere.
    Rejected { id: RequestId, reason: Rejection },
    /// Serve this read once the state machine has applied `index`.
    ReadReady { id: RequestId, index: u64 },
    /// An administrative request (a leadership transfer) completed.
    Done { id: RequestId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Rejection {
    /// This replica cannot order requests now; `leader` is its best guess of who can.
    NotLeader { leader: Option<NodeId> },
    /// The replica is overloaded (too many proposals in flight).
    Busy,
    /// Leadership was lost before a read could be confirmed.
    LeadershipLost,
    /// A leadership transfer did not complete in time (the target is unknown,
    /// unreachable or could not win); the old leader leads on.
    TransferFailed,
    /// A membership change is already under way; propose the next once it commits.
    ChangeInProgress,
    /// The membership change makes no sense for the current configuration.
    InvalidChange(ChangeError),
    /// The request's client id is one the protocol keeps for requests of its own.
    ReservedClient,
    /// The client is registered to sign its own requests, and this one came unsigned.
    SignatureRequired,
    /// The request is larger than the protocol orders (`limit` bytes, as it counts them).
    TooLarge { limit: usize },
}

/// Something worth counting or tracing. Never needed for correctness.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// This replica started competing for leadership of `term` (`pre_vote`: without
    /// raising its term yet).
    Campaign { term: u64, pre_vote: bool },
    /// This replica became leader of `term` (term, view, round or ballot).
    BecameLeader { term: u64 },
    /// This replica stopped leading.
    SteppedDown { term: u64, reason: StepDownReason },
    /// `against` misbehaved (equivocated, sent an invalid signature). `proof` is
    /// self-contained: anyone holding the replicas' public keys can verify it with the
    /// protocol's own verifier.
    Evidence {
        against: NodeId,
        what: &'static str,
        proof: Bytes,
    },
    /// A protocol-specific count for metrics (a view change, a blocked transaction).
    Counter { name: &'static str, delta: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepDownReason {
    HigherTerm,
    LostQuorum,
    /// The configuration it committed leaves it out.
    Removed,
}

/// An instruction from the core to its driver.
#[derive(Clone, Debug)]
pub enum Effect<M, W> {
    Send {
        to: NodeId,
        msg: M,
    },
    /// Make `write` durable; report completion with [`Input::Persisted`]. Writes are
    /// applied in `seq` order; `seq` increases by one per write.
    Persist {
        seq: u64,
        write: W,
    },
    Commit(Committed),
    /// Replace the state machine with `data`, the state after applying every entry up to
    /// `index` (a snapshot received from another replica, or recovered from disk). The
    /// next `Commit` is `index + 1`.
    Restore {
        index: u64,
        data: Bytes,
    },
    /// Take a snapshot of the state machine as it stands after applying every entry up
    /// to `index`, and none after, and hand it back with [`Input::Snapshot`] (perhaps
    /// much later: encoding takes time; a core keeps a few requests outstanding), and
    /// its size with [`Input::SnapshotSize`] before that if the driver can. PBFT's
    /// replicas must snapshot at the same sequence numbers to vouch for one another's
    /// snapshots, so they ask with this; a host that ignores it leaves their log to grow.
    WantSnapshot {
        index: u64,
    },
    Reply(Reply),
    Event(Event),
}

/// The buffer a core pushes effects into. Drivers drain it after each step.
#[derive(Debug)]
pub struct Effects<M, W> {
    list: Vec<Effect<M, W>>,
}

impl<M, W> Default for Effects<M, W> {
    fn default() -> Self {
        Effects { list: Vec::new() }
    }
}

impl<M, W> Effects<M, W> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, effect: Effect<M, W>) {
        self.list.push(effect);
    }

    pub fn send(&mut self, to: NodeId, msg: M) {
        self.list.push(Effect::Send { to, msg });
    }

    pub fn commit(&mut self, index: u64, entry: CommittedEntry) {
        self.commit_at(index, entry, None);
    }

    /// [`Effects::commit`] at the time the protocol agreed for it.
    pub fn commit_at(&mut self, index: u64, entry: CommittedEntry, clock_ms: Option<u64>) {
        self.list.push(Effect::Commit(Committed {
            index,
            entry,
            clock_ms,
        }));
    }

    pub fn reply(&mut self, reply: Reply) {
        self.list.push(Effect::Reply(reply));
    }

    pub fn event(&mut self, event: Event) {
        self.list.push(Effect::Event(event));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Effect<M, W>> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Effect<M, W>> {
        self.list.iter_mut()
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, Effect<M, W>> {
        self.list.drain(..)
    }
}
