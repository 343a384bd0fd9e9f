//! One simulated run: virtual time, an event queue, the replicas with their disks and
//! state machines, the network, the clients, the fault schedule and the checkers.
//!
//! Everything random draws from streams forked off the run's seed, one per concern, so
//! the run is a function of (seed, options, schedule).

use std::time::Duration;

use bytes::Bytes;
use ekmat_core::{
    CommittedEntry, DetRng, Effect, Effects, Event, Input, Membership, NodeId, Replica, Reply,
    RequestId, Time,
};
use ekmat_kv::{Applied, KvStore, RangeRequest};
use ekmat_linearizability::kv::KvOutput;
use rustc_hash::FxHashMap;

use crate::clock::Clock;
use crate::disk::Disk;
use crate::network::{LatencyRange, LatencyTail, LinkTable, Network};
use crate::protocol::{ProtocolChecker, SimProtocol, Violation};
use crate::queue::EventQueue;
use crate::schedule::{Schedule, Target};
use crate::trace::Trace;

mod faults;
use crate::workload::{Next, Outcome, Sent, Workload, WorkloadShape, output_of, read_output};

/// Everything that shapes one run besides the protocol.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Nodes `0..voters` found the cluster; the rest are spares for membership churn.
    pub voters: usize,
    pub latency: LatencyRange,
    pub latency_tail: LatencyTail,
    /// Links with a latency and loss of their own.
    pub links: LinkTable,
    pub fsync: LatencyRange,
    pub tick: Duration,
    pub workload: WorkloadShape,
    /// Faults happen before this; afterwards every fault is healed.
    pub safety: Duration,
    /// After healing, some write must commit within this bound.
    pub liveness_bound: Duration,
    /// After the workload finishes, every replica must reach the same state within this.
    pub converge_bound: Duration,
    /// The run fails if the workload has not finished by this time after healing.
    pub max_tail: Duration,
    /// Replicas hand their protocol a snapshot every this many applied entries (0: never).
    pub snapshot_every: u64,
    /// The clock-drift bound the protocol assumes, in ppm: `clock` faults drift this much.
    pub max_clock_drift_ppm: u32,
    pub trace: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunStats {
    pub events: u64,
    pub snapshots_taken: u64,
    pub snapshots_restored: u64,
    pub messages: u64,
    /// What `messages` counts, by the protocol's names for its message kinds.
    pub messages_by_kind: std::collections::BTreeMap<&'static str, u64>,
    pub elections: u64,
    pub faults: u64,
    pub crashes: u64,
    /// Configurations committed (each counted once, by its index).
    pub reconfigurations: u64,
    pub sim_micros: u64,
    pub max_term: u64,
    /// Proofs of misbehaviour replicas reported (`Event::Evidence`).
    pub evidence: u64,
    /// Exclusions replicas applied (each replica counts its own).
    pub exclusions: u64,
    /// Re-admissions replicas applied (each replica counts its own).
    pub readmissions: u64,
}

type Msg<P> = <<P as SimProtocol>::Node as Replica>::Message;
type Write<P> = <<P as SimProtocol>::Node as Replica>::Write;
type Stable<P> = <<P as SimProtocol>::Node as Replica>::Stable;

#[derive(Debug)]
enum Ev<M> {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: M,
    },
    Request {
        client: usize,
        sent: Sent,
    },
    Reply {
        client: usize,
        seq: u64,
        from: NodeId,
        outcome: Outcome,
    },
    Tick {
        node: NodeId,
        epoch: u32,
    },
    Synced {
        node: NodeId,
        epoch: u32,
        seq: u64,
    },
    /// A snapshot the protocol asked for, taken at `index`, done encoding (the runtime
    /// encodes on a thread of its own, for up to seconds).
    SnapshotReady {
        node: NodeId,
        epoch: u32,
        index: u64,
        data: bytes::Bytes,
    },
    /// The size of that snapshot, known before it is done (the runtime sends it first).
    SnapshotSized {
        node: NodeId,
        epoch: u32,
        index: u64,
        size: u64,
    },
    FaultStart {
        index: usize,
    },
    /// An armed fault strikes `node`, whose moment came: it won an election, installed
    /// a snapshot, took in a configuration or had its read lease renewed.
    FaultFire {
        index: usize,
        node: NodeId,
    },
    FaultEnd {
        index: usize,
        end: FaultEnd,
    },
    ClientWake {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        seq: u64,
    },
    /// Attempt `attempt` of an operation has had no answer for a while.
    ClientRetry {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    Heal,
}

#[derive(Clone, Copy, Debug)]
enum FaultEnd {
    /// Nothing to undo.
    Instant,
    Network,
    Restart(NodeId),
    Resume(NodeId),
    Clock,
    /// Both a network cut and a clock fault to undo.
    LeaseCut,
}

/// How often a finished run checks whether replicas have converged.
const CONVERGENCE_POLL: Duration = Duration::from_millis(100);

struct PendingRequest {
    client: usize,
    read_key: Option<Bytes>,
}

struct Slot<P: SimProtocol> {
    replica: Option<P::Node>,
    epoch: u32,
    disk: Disk<Stable<P>, Write<P>>,
    kv: KvStore,
    paused: bool,
    backlog: Vec<Ev<Msg<P>>>,
    pending: FxHashMap<RequestId, PendingRequest>,
    /// Reads confirmed by the protocol, waiting for the state machine to catch up.
    reads: Vec<(RequestId, u64)>,
    last_sync: Time,
    /// Applied index of this incarnation's last snapshot.
    last_snapshot: u64,
    /// A snapshot the protocol asked for, taken at its index, to hand over after the step.
    asked_snapshot: Option<(u64, bytes::Bytes)>,
    /// The node's own clock: its `now` and its timers go by it (it survives crashes).
    clock: Clock,
}

pub struct World<'p, P: SimProtocol> {
    proto: &'p P,
    cfg: WorldConfig,
    schedule: Schedule,
    now: Time,
    queue: EventQueue<Ev<Msg<P>>>,
    nodes: Vec<Slot<P>>,
    net: Network,
    workload: Workload,
    checker: P::Checker,
    net_rng: DetRng,
    disk_rng: DetRng,
    fault_rng: DetRng,
    snapshot_rng: DetRng,
    node_seeds: DetRng,
    stats: RunStats,
    trace: Trace,
    violation: Option<Violation>,
    /// Faults waiting for their moment (an election, an install, a configuration), with
    /// what they wait for and when they stop waiting.
    armed: Vec<(usize, Target, Time)>,
    /// Clock faults in force (fault index, slow node), latest last; the latest decides.
    clock_faults: Vec<(usize, NodeId)>,
    /// `swap` faults in force whose first leader is still the one cut off.
    swaps: Vec<usize>,
    /// Each watched node's latest configuration change: (before, after).
    reconfigurations: FxHashMap<NodeId, (Membership, Membership)>,
    healed_at: Option<Time>,
    /// The members (voters and learners) of the latest configuration any replica
    /// applied, and the index that committed it: they must converge.
    members: (u64, Vec<NodeId>),
    /// The state machine's hash at each index some replica snapshotted.
    snapshot_hashes: FxHashMap<u64, u64>,
    first_write_after_heal: Option<Time>,
    finished_at: Option<Time>,
    next_convergence_check: Time,
    out: Effects<Msg<P>, Write<P>>,
}

impl<'p, P: SimProtocol> World<'p, P> {
    pub fn new(proto: &'p P, cfg: WorldConfig, schedule: Schedule) -> Result<Self, String> {
        if cfg.nodes == 0 || cfg.voters == 0 || cfg.voters > cfg.nodes {
            return Err("a cluster needs at least one founding voter among its nodes".into());
        }
        schedule.validate(cfg.nodes)?;
        let mut root = DetRng::new(cfg.seed);
        let net_rng = root.fork();
        let disk_rng = root.fork();
        let fault_rng = root.fork();
        let mut node_seeds = root.fork();
        let workload = Workload::new(cfg.workload.clone(), cfg.nodes, root.fork());
        let snapshot_rng = root.fork();
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for i in 0..cfg.nodes {
            let id = NodeId(i as u32);
            let replica = proto.boot(id, cfg.voters, node_seeds.next_u64(), Time::ZERO)?;
            nodes.push(Slot {
                replica: Some(replica),
                epoch: 0,
                disk: Disk::default(),
                kv: KvStore::new(),
                paused: false,
                backlog: Vec::new(),
                pending: FxHashMap::default(),
                reads: Vec::new(),
                last_sync: Time::ZERO,
                last_snapshot: 0,
                asked_snapshot: None,
                clock: Clock::default(),
            });
        }
        let mut world = World {
            proto,
            net: Network::new(cfg.nodes, cfg.latency, cfg.latency_tail, &cfg.links),
            checker: proto.checker(cfg.nodes, cfg.voters),
            members: (0, (0..cfg.voters as u32).map(NodeId).collect()),
            trace: Trace::new(cfg.trace),
            cfg,
            schedule,
            now: Time::ZERO,
            queue: EventQueue::default(),
            nodes,
            workload,
            net_rng,
            disk_rng,
            fault_rng,
            snapshot_rng,
            node_seeds,
            stats: RunStats::default(),
            violation: None,
            armed: Vec::new(),
            clock_faults: Vec::new(),
            swaps: Vec::new(),
            reconfigurations: FxHashMap::default(),
            healed_at: None,
            snapshot_hashes: FxHashMap::default(),
            first_write_after_heal: None,
            finished_at: None,
            next_convergence_check: Time::ZERO,
            out: Effects::new(),
        };
        world.schedule_start();
        Ok(world)
    }

    fn schedule_start(&mut self) {
        for i in 0..self.cfg.nodes {
            let id = NodeId(i as u32);
            let phase = self.net_rng.range(0, self.cfg.tick.as_micros() as u64);
            self.push(Time(phase), Ev::Tick { node: id, epoch: 0 });
        }
        for index in 0..self.schedule.faults.len() {
            let at = self.schedule.faults[index].at;
            self.push(at, Ev::FaultStart { index });
        }
        self.push(Time::ZERO + self.cfg.safety, Ev::Heal);
        for client in 0..self.workload.clients() {
            let at = Time::ZERO + self.workload.think_time();
            self.push(at, Ev::ClientWake { client });
        }
    }

    fn push(&mut self, at: Time, ev: Ev<Msg<P>>) {
        self.queue.push(at, ev);
    }

    pub fn now(&self) -> Time {
        self.now
    }

    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    pub fn trace(&mut self) -> &mut Trace {
        &mut self.trace
    }

    pub fn replica(&self, id: NodeId) -> Option<&P::Node> {
        self.nodes.get(id.index())?.replica.as_ref()
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes[id.index()].paused
    }

    pub fn kv(&self, id: NodeId) -> &KvStore {
        &self.nodes[id.index()].kv
    }

    /// Every live node that believes it leads, with its term.
    pub fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((NodeId(i as u32), self.proto.leading(s.replica.as_ref()?)?)))
            .collect()
    }

    /// The highest term any live node is in.
    pub fn max_term(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|s| s.replica.as_ref().map(|r| self.proto.term(r)))
            .max()
            .unwrap_or(0)
    }

    /// Whether a message from `a` to `b` would get through the network now.
    pub fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        a == b || !self.net.is_blocked(a, b)
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// When the safety phase ended and every fault was healed.
    pub fn healed_at(&self) -> Option<Time> {
        self.healed_at
    }

    /// The node that believes it leads in the highest term, if any is up.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let term = self.proto.leading(s.replica.as_ref()?)?;
                Some((term, NodeId(i as u32)))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Run until the workload is done and replicas have converged, a property fails, or
    /// time runs out.
    pub fn run(&mut self) {
        self.run_observed(Duration::MAX, &mut |_| {});
    }

    /// [`World::run`], calling `observe` once per `every` of virtual time.
    pub fn run_observed(&mut self, every: Duration, observe: &mut dyn FnMut(&Self)) {
        let mut next_observation = Time::ZERO;
        let deadline = Time::ZERO + self.cfg.safety + self.cfg.liveness_bound + self.cfg.max_tail;
        loop {
            if self.violation.is_some() {
                return;
            }
            if let Some(done) = self.finished_at
                && self.now >= self.next_convergence_check
            {
                self.next_convergence_check = self.now + CONVERGENCE_POLL;
                match self.divergence() {
                    None => return,
                    Some(detail) if self.now >= done + self.cfg.converge_bound => {
                        let detail = format!(
                            "{detail}, {:?} after the workload finished",
                            self.cfg.converge_bound
                        );
                        self.fail(Violation::new("convergence", self.now, detail));
                        return;
                    }
                    Some(_) => {}
                }
            }
            if self.now > deadline {
                let detail = format!(
                    "the workload did not finish: {} of {} operations issued by {}",
                    self.workload.issued(),
                    self.cfg.workload.ops,
                    self.now
                );
                self.fail(Violation::new("liveness", self.now, detail));
                return;
            }
            if self.now >= next_observation {
                observe(self);
                next_observation = self.now + every;
            }
            if !self.step_event() {
                return;
            }
        }
    }

    /// Process events up to time `until` (scenarios drive runs piece by piece).
    pub fn run_until(&mut self, until: Time) {
        while self.violation.is_none() && self.queue.next_time().is_some_and(|at| at <= until) {
            self.step_event();
        }
        self.now = self.now.max(until);
    }

    fn step_event(&mut self) -> bool {
        let Some((at, ev)) = self.queue.pop() else {
            return false;
        };
        self.now = at;
        self.stats.events += 1;
        self.stats.sim_micros = at.as_micros();
        self.dispatch(ev);
        self.check_liveness();
        true
    }

    fn fail(&mut self, v: Violation) {
        let now = self.now;
        self.trace.line(now, || format!("VIOLATION {v}"));
        if self.violation.is_none() {
            self.violation = Some(v);
        }
    }

    fn check_liveness(&mut self) {
        let Some(healed) = self.healed_at else { return };
        if self.first_write_after_heal.is_none() && self.now > healed + self.cfg.liveness_bound {
            let detail = format!(
                "no write committed within {:?} after faults stopped at {healed}",
                self.cfg.liveness_bound
            );
            self.fail(Violation::new("liveness", self.now, detail));
        }
        if self.finished_at.is_none()
            && self.first_write_after_heal.is_some()
            && self.workload.done()
        {
            self.finished_at = Some(self.now);
        }
    }

    fn dispatch(&mut self, ev: Ev<Msg<P>>) {
        match ev {
            Ev::Tick { node, epoch } => self.on_tick(node, epoch),
            Ev::Deliver { from, to, msg } => {
                if self.net.is_blocked(from, to) {
                    return; // cut while in flight
                }
                self.deliver_to(to, Ev::Deliver { from, to, msg });
            }
            Ev::Synced { node, epoch, seq } => {
                if self.nodes[node.index()].epoch == epoch {
                    self.deliver_to(node, Ev::Synced { node, epoch, seq });
                }
            }
            Ev::SnapshotReady { node, epoch, .. } | Ev::SnapshotSized { node, epoch, .. } => {
                if self.nodes[node.index()].epoch == epoch {
                    self.deliver_to(node, ev);
                }
            }
            Ev::Request { client, sent } => {
                self.deliver_to(sent.node, Ev::Request { client, sent })
            }
            Ev::Reply {
                client,
                seq,
                from,
                outcome,
            } => self.on_client_reply(client, seq, from, outcome),
            Ev::ClientWake { client } => self.on_client_wake(client),
            Ev::ClientTimeout { client, seq } => {
                if self.workload.time_out(client, seq) {
                    let now = self.now;
                    self.trace.line(now, || {
                        format!("client {client} gives up on #{seq}: unknown")
                    });
                    let wake = self.now + self.workload.think_time();
                    self.push(wake, Ev::ClientWake { client });
                }
            }
            Ev::ClientRetry {
                client,
                seq,
                attempt,
            } if self.proto.resends_unanswered(client as u64 + 1) => {
                if let Some(sent) = self.workload.retry_elsewhere(client, seq, attempt) {
                    let now = self.now;
                    self.trace.line(now, || {
                        format!("client {client} #{seq}: no answer, tries {}", sent.node)
                    });
                    self.send_attempt(client, sent, Duration::ZERO);
                }
            }
            Ev::ClientRetry { .. } => {}
            Ev::FaultStart { index } => self.start_fault(index),
            Ev::FaultFire { index, node } => self.inject(index, Some(node)),
            Ev::FaultEnd { index, end } => self.end_fault(index, end),
            Ev::Heal => self.heal(),
        }
    }

    /// Hand an event to a node: dropped if it is down, queued if it is paused.
    fn deliver_to(&mut self, node: NodeId, ev: Ev<Msg<P>>) {
        let slot = &mut self.nodes[node.index()];
        if slot.replica.is_none() {
            return;
        }
        if slot.paused {
            slot.backlog.push(ev);
            return;
        }
        match ev {
            Ev::Deliver { from, msg, .. } => {
                self.trace.hash_event(self.now, (1u8, from, node, &msg));
                let now = self.now;
                self.trace.line(now, || format!("{node} <- {from} {msg:?}"));
                self.step(node, Input::Message { from, msg });
            }
            Ev::Synced { seq, .. } => {
                self.nodes[node.index()].disk.sync(seq);
                self.trace.hash_event(self.now, (2u8, node, seq));
                self.step(node, Input::Persisted { seq });
            }
            Ev::SnapshotReady { index, data, .. } => {
                self.trace.hash_event(self.now, (10u8, node, index));
                let now = self.now;
                self.trace.line(now, || {
                    format!("{node} <- snapshot at {index} ({} bytes)", data.len())
                });
                self.step(node, Input::Snapshot { index, data });
            }
            Ev::SnapshotSized { index, size, .. } => {
                self.trace.hash_event(self.now, (11u8, node, index));
                let now = self.now;
                self.trace.line(now, || {
                    format!("{node} <- snapshot size at {index}: {size} bytes")
                });
                self.step(node, Input::SnapshotSize { index, size });
            }
            Ev::Request { client, sent } => {
                let request = sent.request(self.now);
                self.trace.hash_event(self.now, (3u8, node, &request));
                let now = self.now;
                self.trace
                    .line(now, || format!("{node} <- client {client} {:?}", sent.op));
                // A client's retry reaching a leader that already holds the request: it
                // is in the log, and its answer will reach the client (proposing it again
                // would only grow the log, and under load feed a retry storm).
                let slot = &self.nodes[node.index()];
                let leading = slot.replica.as_ref().and_then(|r| self.proto.leading(r));
                if leading.is_some() && slot.pending.contains_key(&request.id) {
                    return;
                }
                let pending = PendingRequest {
                    client,
                    read_key: sent.read_key().cloned(),
                };
                self.nodes[node.index()].pending.insert(request.id, pending);
                self.step(node, Input::Request(request));
            }
            _ => unreachable!("only node events are delivered"),
        }
    }

    fn on_tick(&mut self, node: NodeId, epoch: u32) {
        let slot = &self.nodes[node.index()];
        if slot.epoch != epoch || slot.replica.is_none() {
            return;
        }
        let paused = slot.paused;
        let next = self.next_tick(node);
        self.push(next, Ev::Tick { node, epoch });
        if !paused {
            self.trace.hash_event(self.now, (4u8, node));
            self.step(node, Input::Tick);
        }
    }

    /// When `node`'s next tick is due: a tick later by its own clock.
    fn next_tick(&self, node: NodeId) -> Time {
        let clock = &self.nodes[node.index()].clock;
        clock.real_at(clock.local(self.now) + self.cfg.tick)
    }

    fn step(&mut self, node: NodeId, input: Input<Msg<P>>) {
        let mut out = std::mem::take(&mut self.out);
        let watching = |t| self.armed.iter().any(|(_, a, _)| *a == t);
        let watch_config = watching(Target::NextReconfiguration);
        let watch_lease = watching(Target::NextLeaseRenewal);
        let slot = &mut self.nodes[node.index()];
        let local = slot.clock.local(self.now);
        let replica = slot.replica.as_mut().expect("only live nodes step");
        let config_before = watch_config.then(|| self.proto.membership(replica));
        let lease_before = watch_lease.then(|| self.proto.lease_expires(replica));
        replica.step(local, input, &mut out);
        let config_change = config_before.and_then(|before| {
            let after = self.proto.membership(replica);
            (after != before).then_some((before, after))
        });
        let renewed = lease_before.is_some_and(|b| self.proto.lease_expires(replica) > b);
        if let Some(change) = config_change {
            if let (Some(before), Some(after)) = change {
                self.reconfigurations.insert(node, (before, after));
            }
            self.fire_armed(node, Target::NextReconfiguration);
        }
        if renewed {
            self.fire_armed(node, Target::NextLeaseRenewal);
        }
        let replica = self.nodes[node.index()]
            .replica
            .as_ref()
            .expect("only live nodes step");
        let checked = out
            .iter()
            .try_for_each(|effect| self.checker.on_effect(self.now, node, replica, effect));
        if let Err(v) = checked {
            self.fail(v);
        }
        for effect in out.drain() {
            if self.violation.is_some() {
                break;
            }
            self.apply_effect(node, effect);
        }
        self.out = out;
        self.maybe_snapshot(node);
    }

    /// Every `snapshot_every` applied entries, and whenever the protocol asked for one,
    /// hand the protocol the state machine.
    fn maybe_snapshot(&mut self, node: NodeId) {
        let every = self.cfg.snapshot_every;
        if self.violation.is_some() {
            return;
        }
        let slot = &mut self.nodes[node.index()];
        let applied = slot.kv.applied_index();
        let taken = match slot.asked_snapshot.take() {
            Some(asked) => Some(asked),
            None if every != 0 && applied >= slot.last_snapshot + every => self.take_snapshot(node),
            None => None,
        };
        if let Some((index, data)) = taken {
            self.step(node, Input::Snapshot { index, data });
        }
    }

    /// The node's state machine as it stands, checked against every other replica's at
    /// the same index.
    fn take_snapshot(&mut self, node: NodeId) -> Option<(u64, bytes::Bytes)> {
        let slot = &self.nodes[node.index()];
        let applied = slot.kv.applied_index();
        let (data, hash) = (slot.kv.snapshot(), slot.kv.hash());
        if let Some(&other) = self.snapshot_hashes.get(&applied)
            && other != hash
        {
            let detail = format!(
                "{node}'s state at index {applied} differs from another replica's at the same index"
            );
            self.fail(Violation::new("snapshot-safety", self.now, detail));
            return None;
        }
        self.snapshot_hashes.insert(applied, hash);
        self.nodes[node.index()].last_snapshot = applied;
        self.stats.snapshots_taken += 1;
        Some((applied, data))
    }

    /// Replace a replica's state machine with a snapshot, which must be the state some
    /// replica had at that index.
    fn restore(&mut self, node: NodeId, index: u64, data: bytes::Bytes) {
        self.stats.snapshots_restored += 1;
        let applied = self.nodes[node.index()].kv.applied_index();
        if index < applied {
            let detail = format!(
                "{node} was told to restore a snapshot at {index} after applying {applied}: its state machine would go back"
            );
            return self.fail(Violation::new("state-machine-rollback", self.now, detail));
        }
        let kv = match KvStore::restore(&data) {
            Ok(kv) => kv,
            Err(e) => {
                let detail =
                    format!("{node} was told to restore an unreadable snapshot at {index}: {e}");
                return self.fail(Violation::new("snapshot-safety", self.now, detail));
            }
        };
        let known = self.snapshot_hashes.get(&index).copied();
        if kv.applied_index() != index || known.is_some_and(|h| h != kv.hash()) {
            let detail = format!(
                "{node} restored a snapshot at {index} that is not the state replicas had there"
            );
            return self.fail(Violation::new("snapshot-safety", self.now, detail));
        }
        let now = self.now;
        self.trace
            .line(now, || format!("{node} RESTORE snapshot at {index}"));
        let slot = &mut self.nodes[node.index()];
        slot.kv = kv;
        slot.last_snapshot = slot.last_snapshot.max(index);
        self.serve_ready_reads(node);
    }

    fn apply_effect(&mut self, node: NodeId, effect: Effect<Msg<P>, Write<P>>) {
        match effect {
            Effect::Send { to, msg } => self.send(node, to, msg),
            Effect::Persist { seq, write } => {
                let slot = &mut self.nodes[node.index()];
                slot.disk.write(seq, write);
                let lat = self.disk_rng.range(
                    self.cfg.fsync.min.as_micros() as u64,
                    self.cfg.fsync.max.as_micros() as u64,
                );
                // One device per node: syncs complete in the order they were issued.
                let at = slot.last_sync.max(self.now + Duration::from_micros(lat));
                slot.last_sync = at;
                let epoch = slot.epoch;
                self.push(at, Ev::Synced { node, epoch, seq });
            }
            Effect::Commit(c) => self.apply_committed(node, c.index, c.entry),
            Effect::Restore { index, data } => {
                self.fire_armed(node, Target::NextInstall);
                self.restore(node, index, data);
            }
            Effect::WantSnapshot { index } => {
                // Taken now, exactly at `index` (the commits before it are applied, none
                // after), and handed over once the step's effects are done.
                let applied = self.nodes[node.index()].kv.applied_index();
                if applied != index {
                    let detail = format!(
                        "{node} asked for a snapshot at {index} with its state machine at {applied}"
                    );
                    return self.fail(Violation::new("snapshot-safety", self.now, detail));
                }
                let taken = self.take_snapshot(node);
                // Handed over at once on a third of the requests, after up to half a
                // second of encoding on the rest; on half of those, its size earlier.
                let (delay, sized) = match self.snapshot_rng.index(3) {
                    0 => (0, false),
                    early => (self.snapshot_rng.range(1, 500_000), early == 2),
                };
                let epoch = self.nodes[node.index()].epoch;
                match taken {
                    Some((index, data)) if delay > 0 => {
                        if sized {
                            let size = data.len() as u64;
                            let at =
                                self.now + Duration::from_micros(self.snapshot_rng.range(0, delay));
                            self.push(
                                at,
                                Ev::SnapshotSized {
                                    node,
                                    epoch,
                                    index,
                                    size,
                                },
                            );
                        }
                        let at = self.now + Duration::from_micros(delay);
                        self.push(
                            at,
                            Ev::SnapshotReady {
                                node,
                                epoch,
                                index,
                                data,
                            },
                        );
                    }
                    taken => self.nodes[node.index()].asked_snapshot = taken,
                }
            }
            Effect::Reply(reply) => self.on_protocol_reply(node, reply),
            Effect::Event(e) => self.on_event(node, e),
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg<P>) {
        self.stats.messages += 1;
        *self
            .stats
            .messages_by_kind
            .entry(self.proto.message_kind(&msg))
            .or_default() += 1;
        let times = self.net.deliveries(from, to, self.now, &mut self.net_rng);
        let Some((&last, duplicates)) = times.split_last() else {
            return; // lost or cut
        };
        for &at in duplicates {
            let copy = msg.clone();
            self.push(
                at,
                Ev::Deliver {
                    from,
                    to,
                    msg: copy,
                },
            );
        }
        self.push(last, Ev::Deliver { from, to, msg });
    }

    fn on_event(&mut self, node: NodeId, e: Event) {
        let now = self.now;
        self.trace.line(now, || format!("{node} {e:?}"));
        match e {
            Event::Evidence { .. } => self.stats.evidence += 1,
            Event::Counter {
                name: "exclusion",
                delta,
            } => self.stats.exclusions += delta,
            Event::Counter {
                name: "readmission",
                delta,
            } => self.stats.readmissions += delta,
            _ => {}
        }
        if let Event::BecameLeader { term } = e {
            self.stats.elections += 1;
            self.stats.max_term = self.stats.max_term.max(term);
            self.fire_armed(node, Target::NextLeader);
        }
    }

    fn apply_committed(&mut self, node: NodeId, index: u64, entry: CommittedEntry) {
        let slot = &mut self.nodes[node.index()];
        match entry {
            CommittedEntry::Noop => slot.kv.skip(index),
            CommittedEntry::Membership { membership, .. } => {
                slot.kv.skip(index);
                self.config_committed(node, index, &membership);
            }
            CommittedEntry::Command { id, command } => {
                // Decoded as the runtime's driver decodes it (values share the command).
                let decoded = ekmat_kv::Envelope::decode_shared(&command);
                let applied = slot.kv.apply_decoded(index, id, decoded);
                if let Some(p) = slot.pending.remove(&id) {
                    let response = match applied {
                        Applied::Executed { result, .. } | Applied::Repeated(result) => result.ok(),
                        Applied::Superseded | Applied::Malformed(_) => None,
                    };
                    // A request the store refused (or could not read) had no effect.
                    let outcome = match response.as_ref().and_then(output_of) {
                        Some(output) => Outcome::Done(output),
                        None => Outcome::Refused { leader: None },
                    };
                    self.reply_to_client(node, p.client, id, outcome);
                }
            }
        }
        self.serve_ready_reads(node);
    }

    fn config_committed(&mut self, node: NodeId, index: u64, membership: &Membership) {
        if index <= self.members.0 {
            return;
        }
        self.members = (index, membership.members().collect());
        self.stats.reconfigurations += 1;
        let now = self.now;
        self.trace
            .line(now, || format!("{node} COMMITTED CONFIG {membership}"));
    }

    fn on_protocol_reply(&mut self, node: NodeId, reply: Reply) {
        match reply {
            Reply::Rejected { id, reason } => {
                let Some(p) = self.nodes[node.index()].pending.remove(&id) else {
                    return;
                };
                let leader = match reason {
                    ekmat_core::Rejection::NotLeader { leader } => leader,
                    _ => None,
                };
                self.reply_to_client(node, p.client, id, Outcome::Refused { leader });
            }
            Reply::ReadReady { id, index } => {
                self.nodes[node.index()].reads.push((id, index));
                self.serve_ready_reads(node);
            }
            // Only the nemesis asks for leadership transfers and membership changes.
            Reply::Done { .. } => {}
        }
    }

    fn serve_ready_reads(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.index()];
        if slot.reads.is_empty() {
            return;
        }
        let applied = slot.kv.applied_index();
        let mut answers = Vec::new();
        slot.reads.retain(|&(id, index)| {
            if index > applied {
                return true;
            }
            if let Some(p) = slot.pending.remove(&id) {
                let outcome = match p.read_key.map(|k| slot.kv.range(&RangeRequest::new(k))) {
                    Some(Ok(range)) => Outcome::Done(read_output(&range)),
                    _ => Outcome::Refused { leader: None },
                };
                answers.push((p.client, id, outcome));
            }
            false
        });
        for (client, id, outcome) in answers {
            self.reply_to_client(node, client, id, outcome);
        }
    }

    fn reply_to_client(&mut self, from: NodeId, client: usize, id: RequestId, outcome: Outcome) {
        let at = self.now + self.net.draw_latency(&mut self.net_rng);
        let seq = id.seq;
        self.push(
            at,
            Ev::Reply {
                client,
                seq,
                from,
                outcome,
            },
        );
    }

    fn on_client_reply(&mut self, client: usize, seq: u64, from: NodeId, outcome: Outcome) {
        let is_write_ok = matches!(outcome, Outcome::Done(KvOutput::Done | KvOutput::Cas(_)));
        let now = self.now;
        self.trace.hash_event(now, (5u8, client, seq, &outcome));
        self.trace
            .line(now, || format!("client {client} #{seq} <- {outcome:?}"));
        match self.workload.complete(client, seq, from, outcome, self.now) {
            Next::Stale => return,
            Next::Retry { sent, after } => {
                self.send_attempt(client, sent, after);
                return;
            }
            Next::Finished => {}
        }
        if is_write_ok && self.first_write_after_heal.is_none() {
            let op = self
                .workload
                .history()
                .iter()
                .rev()
                .find(|o| o.client == client);
            if let (Some(healed), Some(op)) = (self.healed_at, op)
                && op.call >= healed
            {
                self.first_write_after_heal = Some(self.now);
            }
        }
        let wake = self.now + self.workload.think_time();
        self.push(wake, Ev::ClientWake { client });
    }

    fn on_client_wake(&mut self, client: usize) {
        let Some(sent) = self.workload.issue(client, self.now) else {
            return;
        };
        let seq = sent.id.seq;
        let timeout = self.now + self.workload.timeout();
        self.push(timeout, Ev::ClientTimeout { client, seq });
        self.send_attempt(client, sent, Duration::ZERO);
    }

    /// Send one attempt of an operation after `after`, and look again if it goes
    /// unanswered (a client gives up on a node that does not answer, not on the op).
    fn send_attempt(&mut self, client: usize, sent: Sent, after: Duration) {
        let seq = sent.id.seq;
        let attempt = self.workload.attempt(client);
        let at = self.now + after + self.net.draw_latency(&mut self.net_rng);
        let retry = at + self.workload.attempt_timeout();
        self.push(at, Ev::Request { client, sent });
        self.push(
            retry,
            Ev::ClientRetry {
                client,
                seq,
                attempt,
            },
        );
    }

    /// How the state of each member of the latest configuration differs from the first
    /// member's, if it does. Removed nodes and spares never added are left behind.
    fn divergence(&self) -> Option<String> {
        let members = &self.members.1;
        let first = members.first()?;
        let reference = &self.nodes[first.index()].kv;
        let mut reference_hash = None;
        for id in &members[1..] {
            let (i, slot) = (id.index(), &self.nodes[id.index()]);
            if slot.kv.applied_index() != reference.applied_index() {
                return Some(format!(
                    "{first} applied {} entries but n{i} applied {}",
                    reference.applied_index(),
                    slot.kv.applied_index()
                ));
            }
            if slot.kv.hash() != *reference_hash.get_or_insert_with(|| reference.hash()) {
                return Some(format!(
                    "{first} and n{i} applied as many entries but hold different data"
                ));
            }
        }
        None
    }

    /// Inject a fault now, outside the schedule (scenarios).
    pub fn partition_now(&mut self, id: u64, groups: &[Vec<NodeId>]) {
        self.net.partition(id, groups);
    }

    pub fn heal_network(&mut self, id: u64) {
        self.net.remove(id);
    }
}
