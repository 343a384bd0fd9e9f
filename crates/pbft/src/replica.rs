//! The PBFT replica: its state, the `Replica` entry point, and the helpers every phase
//! shares. Each phase of the protocol lives in a file of its own (`normal_case.rs`,
//! `batching.rs`, `checkpoint.rs`, `view_change.rs`, `state_transfer.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ekmat_core::{
    Effects, Event, Input, NodeId, PersistGate, Rejection, Replica, Reply, Request, RequestKind,
    StepDownReason, Time,
};

use crate::certificate::QuorumCertificate;
use crate::config::{Mutant, PbftConfig};
use crate::crypto::Keyring;
use crate::durable::{PbftStable, PreparedOnDisk, Write};
use crate::evidence::{EvidenceLog, Statement};
use crate::message::{
    Batch, Checkpoint, CheckpointProof, ClientRequest, Commit, Digest, Message, NewView,
    PrePrepare, Prepare, PreparedCert, Signed, ViewChange,
};

pub type Fx = Effects<Message, Write>;

/// The primary of `view` among `n` replicas.
pub fn primary_of(view: u64, n: usize) -> NodeId {
    NodeId((view % n as u64) as u32)
}

/// Messages buffered for a view this replica has not entered yet (bounded).
const MAX_FUTURE: usize = 4096;

/// One sequence number's agreement state in the current view.
#[derive(Default)]
pub(crate) struct Slot {
    pub pre_prepare: Option<(Signed<PrePrepare>, Arc<Batch>)>,
    pub prepares: BTreeMap<NodeId, Signed<Prepare>>,
    pub commits: BTreeMap<NodeId, Signed<Commit>>,
    /// Digests this replica sent COMMIT for (more than one only in a mutant).
    pub commit_sent: BTreeSet<Digest>,
    pub committed: Option<QuorumCertificate>,
}

/// A bundle waiting to execute; backups watch it to suspect the primary.
pub(crate) struct PendingBundle {
    pub bundle: Arc<Signed<crate::message::Bundle>>,
    pub since: Time,
    pub resent: bool,
}

/// Counts worth reporting.
#[derive(Clone, Copy, Debug, Default)]
pub struct PbftStats {
    pub bad_signatures: u64,
    pub view_changes: u64,
    pub new_views: u64,
    pub evidence: u64,
    pub fetched: u64,
    pub batches: u64,
    pub rejected_new_views: u64,
    pub snapshots_installed: u64,
}

pub struct Pbft {
    pub(crate) cfg: PbftConfig,
    pub(crate) keys: Keyring,
    pub(crate) gate: PersistGate<Message>,
    /// This replica's COMMITs with the write count they wait on, until durable (see
    /// `count_durable_own_commits`).
    pub(crate) own_commits: VecDeque<(u64, Signed<Commit>)>,
    pub(crate) now: Time,
    pub(crate) view: u64,
    /// False while changing to `view` (waiting for its NEW-VIEW).
    pub(crate) normal: bool,
    pub(crate) log: BTreeMap<u64, Slot>,
    /// The primary's last assigned sequence number.
    pub(crate) next_seq: u64,
    /// The low watermark h: the last stable checkpoint.
    pub(crate) stable: CheckpointProof,
    pub(crate) checkpoint_votes: BTreeMap<u64, BTreeMap<NodeId, Signed<Checkpoint>>>,
    /// Own history digests at checkpoint sequence numbers not yet stable.
    pub(crate) own_checkpoints: BTreeMap<u64, Digest>,
    /// When this replica last sent its checkpoint vote again (see
    /// `resend_checkpoint_vote`).
    pub(crate) checkpoint_resent: Time,
    /// Chained digest of every batch executed, through `last_executed`.
    pub(crate) history: Digest,
    pub(crate) last_executed: u64,
    /// Index of the last command delivered to the state machine.
    pub(crate) applied: u64,
    /// Executed batches after `own_snapshot`'s point (all of them without snapshots).
    pub(crate) executed: BTreeMap<u64, (Arc<Batch>, QuorumCertificate)>,
    /// Per state-machine index: the execution state at a snapshot point asked of the
    /// host, until it answers (a few at most).
    pub(crate) wanted_snapshots: BTreeMap<u64, crate::snapshot::ExecState>,
    /// This replica's latest snapshot.
    pub(crate) own_snapshot: Option<crate::snapshot::OwnSnapshot>,
    /// Bytes of requests executed since the start (snapshot points follow them).
    pub(crate) executed_bytes: u64,
    /// Where the next snapshot point is (see `snapshot.rs`).
    pub(crate) next_point: crate::snapshot::NextPoint,
    /// A checkpoint executed but not yet known to be a snapshot point or not: execution
    /// waits there for the size of the last snapshot (see `snapshot.rs`).
    pub(crate) held_at: Option<u64>,
    /// Vouches for snapshots ahead of this replica, the latest per sender (see
    /// `snapshot_transfer.rs`).
    pub(crate) offers: BTreeMap<NodeId, Arc<crate::snapshot_transfer::SnapshotOffer>>,
    /// The snapshot being fetched, once f+1 vouch for one.
    pub(crate) download: Option<crate::snapshot_download::Download>,
    /// Snapshots this replica replaced but still serves to replicas fetching them.
    pub(crate) serving: Vec<crate::snapshot_transfer::Served>,
    /// A recovered snapshot the host has yet to restore (the first step hands it over).
    pub(crate) restore_due: Option<(u64, bytes::Bytes)>,
    /// Verified committed batches not yet executable (a gap before them), and whether
    /// they came from this replica's own disk.
    pub(crate) transfers: BTreeMap<u64, (Arc<Batch>, QuorumCertificate, bool)>,
    /// Per client: what it had executed (at-most-once).
    pub(crate) sessions: BTreeMap<u64, crate::normal_case::Session>,
    pub(crate) accepted: BTreeMap<u64, (u64, Digest)>,
    pub(crate) prepared_certs: BTreeMap<u64, PreparedCert>,
    /// What the log holds prepared: an executed batch found there is not written again.
    pub(crate) prepared_on_disk: PreparedOnDisk,
    pub(crate) pending: BTreeMap<Digest, PendingBundle>,
    pub(crate) pending_order: VecDeque<Digest>,
    pub(crate) in_flight: BTreeSet<Digest>,
    /// Executed bundles, with the point each was made at: forgotten once past the
    /// bundle horizon, when they could no longer execute anyway.
    pub(crate) executed_bundles: BTreeMap<Digest, u64>,
    pub(crate) recent_bundles: crate::recent_bundles::RecentBundles,
    pub(crate) outbox: Vec<ClientRequest>,
    pub(crate) nonce: u64,
    /// The host's wall clock as last observed (see `clock.rs`).
    pub(crate) wall_ms: u64,
    /// What this cluster's clients sign their requests for (see `client.rs`).
    pub(crate) cluster: crate::client::ClusterId,
    pub(crate) view_changes: BTreeMap<u64, BTreeMap<NodeId, Arc<Signed<ViewChange>>>>,
    pub(crate) last_new_view: Option<Arc<Signed<NewView>>>,
    pub(crate) timer: Option<Time>,
    /// The pending bundle the view timer runs for, while in a view (see `arm_timer`).
    pub(crate) timed: Option<Digest>,
    pub(crate) last_vc_sent: Option<Time>,
    /// When each replica was last sent a NEW-VIEW it missed.
    pub(crate) helped: BTreeMap<NodeId, Time>,
    pub(crate) failed_views: u32,
    pub(crate) future: Vec<Message>,
    pub(crate) evidence: EvidenceLog,
    /// Replicas excluded (see `exclusion.rs`), with the sequence number that excluded them.
    pub(crate) excluded: BTreeMap<NodeId, u64>,
    /// Replicas re-admitted (see `readmission.rs`), with the sequence number of each one's
    /// latest re-admission.
    pub(crate) readmitted: BTreeMap<NodeId, u64>,
    /// Replicas this one submitted a proof against.
    pub(crate) exclusions_proposed: BTreeSet<NodeId>,
    /// Per excluded replica, the latest-anchored proof found against it while excluded:
    /// proposed once a re-admission pardons less than it covers (`readmission.rs`).
    /// Local, like the evidence log: it decides what this replica proposes, not what
    /// anyone executes.
    pub(crate) held_evidence: BTreeMap<NodeId, (u64, bytes::Bytes)>,
    /// The highest sequence number and view each replica was seen working on.
    pub(crate) seen: BTreeMap<NodeId, (u64, u64)>,
    pub(crate) behind_since: Option<Time>,
    pub(crate) last_fetch: Option<Time>,
    /// What each replica was sent lately, by state and snapshot transfer.
    pub(crate) serve_budgets: BTreeMap<NodeId, crate::state_transfer::ServeBudget>,
    pub(crate) stats: PbftStats,
}

impl Pbft {
    pub fn new(cfg: PbftConfig) -> Result<Pbft, String> {
        cfg.validate()?;
        let mut keys = Keyring::new(cfg.id, cfg.validators.clone(), cfg.secret.clone());
        keys.set_trust_all(cfg.mutant == Mutant::SkipSignatureVerification);
        let cluster = crate::client::cluster_id(&cfg.validators);
        let next_point = crate::snapshot::NextPoint::after(0, 0, &cfg);
        Ok(Pbft {
            cfg,
            keys,
            gate: PersistGate::new(),
            own_commits: VecDeque::new(),
            now: Time::ZERO,
            view: 0,
            normal: true,
            log: BTreeMap::new(),
            next_seq: 0,
            stable: CheckpointProof::default(),
            checkpoint_votes: BTreeMap::new(),
            own_checkpoints: BTreeMap::new(),
            checkpoint_resent: Time::ZERO,
            history: Digest::default(),
            last_executed: 0,
            applied: 0,
            executed: BTreeMap::new(),
            wanted_snapshots: BTreeMap::new(),
            own_snapshot: None,
            executed_bytes: 0,
            next_point,
            held_at: None,
            offers: BTreeMap::new(),
            download: None,
            serving: Vec::new(),
            restore_due: None,
            transfers: BTreeMap::new(),
            sessions: BTreeMap::new(),
            accepted: BTreeMap::new(),
            prepared_certs: BTreeMap::new(),
            prepared_on_disk: PreparedOnDisk::default(),
            pending: BTreeMap::new(),
            pending_order: VecDeque::new(),
            in_flight: BTreeSet::new(),
            executed_bundles: BTreeMap::new(),
            recent_bundles: Default::default(),
            outbox: Vec::new(),
            nonce: 0,
            wall_ms: 0,
            cluster,
            view_changes: BTreeMap::new(),
            last_new_view: None,
            timer: None,
            timed: None,
            last_vc_sent: None,
            helped: BTreeMap::new(),
            failed_views: 0,
            future: Vec::new(),
            evidence: EvidenceLog::default(),
            excluded: BTreeMap::new(),
            readmitted: BTreeMap::new(),
            exclusions_proposed: BTreeSet::new(),
            held_evidence: BTreeMap::new(),
            seen: BTreeMap::new(),
            behind_since: None,
            last_fetch: None,
            serve_budgets: BTreeMap::new(),
            stats: PbftStats::default(),
        })
    }

    /// A replica restarted from what reached its disk. Its executed batches are replayed
    /// to the state machine on its first step; it resumes in its persisted view and never
    /// signs anything that contradicts what it accepted or prepared before the crash.
    pub fn recover(cfg: PbftConfig, stable: PbftStable, now: Time) -> Result<Pbft, String> {
        let mut p = Pbft::new(cfg)?;
        p.prepared_on_disk = PreparedOnDisk::of(&stable);
        p.now = now;
        p.view = stable.view;
        p.normal = stable.normal || stable.view == 0;
        p.stable = stable.checkpoint;
        p.accepted = stable.accepted;
        p.prepared_certs = stable.prepared;
        let last_accepted = p
            .accepted
            .iter()
            .filter(|(_, (v, _))| *v == p.view)
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(0);
        let snapshot_seq = stable.snapshot.as_ref().map_or(0, |s| s.seq());
        if let Some(snapshot) = stable.snapshot {
            p.recover_snapshot(snapshot);
        }
        let last_on_disk = stable.executed.keys().next_back().copied().unwrap_or(0);
        p.next_seq = last_accepted
            .max(p.stable.seq)
            .max(last_on_disk)
            .max(snapshot_seq);
        for (seq, (batch, qc)) in stable.executed {
            p.transfers.insert(seq, (batch, qc, true));
        }
        Ok(p)
    }

    pub fn view(&self) -> u64 {
        self.view
    }

    pub fn is_normal(&self) -> bool {
        self.normal
    }

    pub fn is_primary(&self) -> bool {
        primary_of(self.view, self.n()) == self.cfg.id
    }

    pub fn last_executed(&self) -> u64 {
        self.last_executed
    }

    /// The chained digest of every batch executed through `last_executed` (what its
    /// checkpoints sign), however it got there: executing, or installing a snapshot.
    pub fn history(&self) -> Digest {
        self.history
    }

    /// Index of the last command delivered to the state machine.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn low_watermark(&self) -> u64 {
        self.stable.seq
    }

    /// The batch executed at `seq`, with its quorum certificate.
    pub fn executed(&self, seq: u64) -> Option<&(Arc<Batch>, QuorumCertificate)> {
        self.executed.get(&seq)
    }

    /// This replica's latest snapshot, if it took or installed one.
    pub fn own_snapshot(&self) -> Option<&Arc<crate::snapshot::Snapshot>> {
        self.own_snapshot.as_ref().map(|o| &o.snapshot)
    }

    pub fn stats(&self) -> PbftStats {
        self.stats
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    pub fn config(&self) -> &PbftConfig {
        &self.cfg
    }

    /// Replicas excluded through consensus, with the sequence number that excluded each.
    pub fn excluded(&self) -> &BTreeMap<NodeId, u64> {
        &self.excluded
    }

    /// Replicas convicted of equivocation, with how many proofs against each.
    pub fn convicted(&self) -> &BTreeMap<NodeId, u64> {
        &self.evidence.convicted
    }

    pub(crate) fn n(&self) -> usize {
        self.cfg.n()
    }

    pub(crate) fn f(&self) -> usize {
        self.cfg.f()
    }

    pub(crate) fn quorum(&self) -> usize {
        self.cfg.quorum()
    }

    pub(crate) fn high_watermark(&self) -> u64 {
        self.stable.seq + self.cfg.window
    }

    pub(crate) fn in_window(&self, seq: u64) -> bool {
        seq > self.stable.seq && seq <= self.high_watermark()
    }

    /// The view-change timeout: doubled per consecutive failed view, at most 8x.
    pub(crate) fn timeout(&self) -> Duration {
        self.cfg.view_timeout * (1u32 << self.failed_views.min(3))
    }

    pub(crate) fn others(&self) -> impl Iterator<Item = NodeId> + use<> {
        let me = self.cfg.id;
        (0..self.n() as u32).map(NodeId).filter(move |&i| i != me)
    }

    /// Send to every other replica now (the message promises nothing not yet durable).
    pub(crate) fn broadcast(&self, msg: Message, out: &mut Fx) {
        for to in self.others() {
            out.send(to, msg.clone());
        }
    }

    /// Send to every other replica once every write asked for so far is durable.
    pub(crate) fn broadcast_durable(&mut self, msg: Message, out: &mut Fx) {
        for to in self.others() {
            self.gate.send_when_durable(to, msg.clone(), out);
        }
    }

    /// Send once every write so far is durable: what this replica signed may rest on
    /// them (a NEW-VIEW it passes on may be its own, whose pre-prepares it just logged).
    pub(crate) fn send_durable(&mut self, to: NodeId, msg: Message, out: &mut Fx) {
        self.gate.send_when_durable(to, msg, out);
    }

    pub(crate) fn persist(&mut self, write: Write, out: &mut Fx) {
        self.prepared_on_disk.note(&write);
        self.gate.persist(write, out);
    }

    pub(crate) fn counter(&self, name: &'static str, out: &mut Fx) {
        out.event(Event::Counter { name, delta: 1 });
    }

    /// A message whose signature did not verify: dropped, and counted.
    pub(crate) fn reject_signature(&mut self, out: &mut Fx) {
        self.stats.bad_signatures += 1;
        self.counter("bad-signature", out);
    }

    /// Record a verified statement; report equivocation if it conflicts with another.
    pub(crate) fn observe(&mut self, s: Statement, out: &mut Fx) {
        let against = s.signer;
        if let Some(proof) = self.evidence.observe(s) {
            self.convict(against, "equivocation", proof, out);
        }
    }

    /// Report `proof` against `against` and submit it for its exclusion.
    pub(crate) fn convict(
        &mut self,
        against: NodeId,
        what: &'static str,
        proof: bytes::Bytes,
        out: &mut Fx,
    ) {
        self.stats.evidence += 1;
        out.event(Event::Evidence {
            against,
            what,
            proof: proof.clone(),
        });
        self.propose_exclusion(against, proof, out);
    }

    pub(crate) fn note_seen(&mut self, who: NodeId, seq: u64, view: u64) {
        let e = self.seen.entry(who).or_default();
        e.0 = e.0.max(seq);
        e.1 = e.1.max(view);
    }

    pub(crate) fn step_down_if_primary(&self, out: &mut Fx) {
        if self.is_primary() && self.normal {
            out.event(Event::SteppedDown {
                term: self.view,
                reason: StepDownReason::HigherTerm,
            });
        }
    }

    fn on_request(&mut self, r: Request, out: &mut Fx) {
        if [crate::EXCLUSION_CLIENT, crate::READMISSION_CLIENT].contains(&r.id.client) {
            let reason = Rejection::ReservedClient;
            return out.reply(Reply::Rejected { id: r.id, reason });
        }
        if self.cfg.clients.contains_key(&r.id.client) {
            let reason = Rejection::SignatureRequired;
            return out.reply(Reply::Rejected { id: r.id, reason });
        }
        if self.refuse_if_excluded(r.id, out) {
            return;
        }
        let op = match r.kind {
            RequestKind::Write(op) => Some(op),
            RequestKind::Read => None,
            RequestKind::TransferLeadership { .. } => {
                let reason = Rejection::TransferFailed;
                return out.reply(Reply::Rejected { id: r.id, reason });
            }
            RequestKind::ChangeMembership(_) => {
                let reason = Rejection::NotLeader { leader: None };
                return out.reply(Reply::Rejected { id: r.id, reason });
            }
        };
        let request = ClientRequest {
            id: r.id,
            op,
            sig: None,
        };
        if request.size() > self.cfg.batch_max_bytes {
            let reason = Rejection::TooLarge {
                limit: self.cfg.batch_max_bytes,
            };
            return out.reply(Reply::Rejected { id: r.id, reason });
        }
        self.queue_request(request, out);
    }

    /// Nobody takes an excluded replica's bundles any more: its clients go elsewhere.
    pub(crate) fn refuse_if_excluded(&mut self, id: ekmat_core::RequestId, out: &mut Fx) -> bool {
        if !self.is_excluded(self.cfg.id) {
            return false;
        }
        let leader = self.normal.then(|| primary_of(self.view, self.n()));
        let reason = Rejection::NotLeader { leader };
        out.reply(Reply::Rejected { id, reason });
        true
    }

    /// Into this gateway's next bundle, which is signed and sent once full (or on a tick).
    pub(crate) fn queue_request(&mut self, r: ClientRequest, out: &mut Fx) {
        self.outbox.push(r);
        let full = self.outbox.len() >= self.cfg.bundle_max
            || self.outbox.iter().map(ClientRequest::size).sum::<usize>()
                >= self.cfg.bundle_bytes();
        if full {
            self.flush_bundle(out);
        }
    }

    fn on_tick(&mut self, out: &mut Fx) {
        self.flush_bundle(out);
        self.resend_checkpoint_vote(out);
        self.skip_excluded_primary(out);
        if self.timer.is_some_and(|t| self.now >= t) {
            self.timer = None;
            self.start_view_change(self.view + 1, out);
        }
        self.repeat_view_change(out);
        self.resend_stale_bundles(out);
        self.maybe_fetch(out);
        self.check_download(out);
        self.try_propose(out);
    }

    fn on_message(&mut self, from: NodeId, msg: Message, out: &mut Fx) {
        match msg {
            Message::Request(r) if r.id.client == crate::READMISSION_CLIENT => {
                self.on_readmission(r, out)
            }
            Message::Request(r) => self.on_client_request(r, out),
            // Not a validator: nothing but a request from it counts.
            _ if from.index() >= self.n() => self.counter("non-validator", out),
            Message::Bundle(b) => self.on_bundle(b, out),
            Message::PrePrepare { header, batch } => self.on_pre_prepare(header, batch, out),
            Message::Prepare(p) => self.on_prepare(p, out),
            Message::Commit(c) => self.on_commit(c, out),
            Message::Checkpoint(c) => self.on_checkpoint(c, out),
            Message::ViewChange(vc) => self.on_view_change(vc, out),
            Message::NewView(nv) => self.on_new_view(nv, out),
            Message::Fetch(f) => self.on_fetch(from, f, out),
            Message::Transfer(t) => self.on_transfer(t, out),
            Message::SnapshotOffer(s) => self.on_snapshot_offer(s, out),
            Message::SnapshotFetch(r) => self.on_chunk_request(from, r, out),
            Message::SnapshotChunk(c) => self.on_snapshot_chunk(c, out),
        }
    }

    /// Keep a verified normal-case message of a view not entered yet; true if kept or
    /// dropped as stale (the caller stops), false if it is for the current view.
    pub(crate) fn defer_if_other_view(&mut self, view: u64, msg: Message) -> bool {
        if view == self.view && self.normal {
            return false;
        }
        if view >= self.view && self.future.len() < MAX_FUTURE {
            self.future.push(msg);
        }
        true
    }

    /// Re-deliver the buffered messages of the view just entered.
    pub(crate) fn replay_future(&mut self, out: &mut Fx) {
        let view = self.view;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.future)
            .into_iter()
            .filter(|m| m.normal_case_view().is_some_and(|v| v >= view))
            .partition(|m| m.normal_case_view() == Some(view));
        self.future = later;
        for msg in now {
            match msg {
                Message::PrePrepare { header, batch } => self.on_pre_prepare(header, batch, out),
                Message::Prepare(p) => self.on_prepare(p, out),
                Message::Commit(c) => self.on_commit(c, out),
                _ => {}
            }
        }
    }
}

impl Replica for Pbft {
    type Message = Message;
    type Write = Write;
    type Stable = PbftStable;

    fn id(&self) -> NodeId {
        self.cfg.id
    }

    fn step(&mut self, now: Time, input: Input<Message>, out: &mut Fx) {
        debug_assert!(now >= self.now, "time went backwards");
        self.now = now;
        if let Some((index, data)) = self.restore_due.take() {
            out.push(ekmat_core::Effect::Restore { index, data });
        }
        match input {
            Input::Message { from, msg } => self.on_message(from, msg, out),
            Input::Request(r) => self.on_request(r, out),
            Input::Tick => self.on_tick(out),
            Input::Persisted { seq } => {
                self.gate.on_persisted(seq, out);
                self.count_durable_own_commits();
            }
            Input::Snapshot { index, data } => self.on_snapshot_taken(index, data, out),
            Input::SnapshotSize { index, size } => self.learn_snapshot_size(index, size, out),
        }
        self.execute_ready(out);
    }

    fn preview(&mut self, msgs: &[&Message]) {
        self.preverify(msgs);
    }
}

impl std::fmt::Debug for Pbft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} view {}{} exec {} low {} next {} pending {} inflight {} timer {:?} failed {} vcs {:?} log {:?} transfers {} gate {}/{} held {}",
            self.cfg.id,
            self.view,
            if self.normal { "" } else { " (changing)" },
            self.last_executed,
            self.stable.seq,
            self.next_seq,
            self.pending.len(),
            self.in_flight.len(),
            self.timer,
            self.failed_views,
            self.view_changes
                .iter()
                .map(|(v, m)| (*v, m.keys().map(|k| k.0).collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
            self.log
                .iter()
                .map(|(s, sl)| (
                    *s,
                    sl.pre_prepare.is_some(),
                    sl.prepares.len(),
                    sl.commits.len(),
                    sl.committed.is_some()
                ))
                .collect::<Vec<_>>(),
            self.transfers.len(),
            self.gate.durable(),
            self.gate.written(),
            self.gate.held(),
        )
    }
}
