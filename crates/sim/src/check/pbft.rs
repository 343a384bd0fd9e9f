//! PBFT's safety properties, judged on honest replicas only (a Byzantine replica may
//! execute anything; what matters is that it cannot make honest ones disagree):
//!
//! - **agreement**: no two honest replicas execute different batches at one sequence
//!   number, nor reach different histories (the chained batch digests) there, however
//!   they got there (a replica that installed a snapshot executed no batch below it);
//! - **state machine safety**: every honest replica delivers the same command at each
//!   index of the state machine;
//! - **validity**: only commands some client submitted are executed;
//! - **at-most-once**: an honest replica delivers a given request (client, number and
//!   bytes) at most once per incarnation;
//! - **exclusion**: only a Byzantine replica is ever excluded, and honest replicas agree
//!   on every exclusion and re-admission: each decided at one sequence number, the
//!   same kind of decision at each, and none missed by a replica that executed past it;
//! - **clock**: no honest replica executes a batch at a time further past the correct
//!   replicas' wall clocks than a backup accepts (`clock_ahead`), so a faulty primary
//!   cannot expire leases early (its time would be agreed through consensus);
//! - **commit proof**: a signing client's request in a batch an honest replica
//!   executed has a commit proof (quorum certificate, bundle digests, bundle) from that
//!   replica that its client accepts, checked at every eighth sequence number (each
//!   costs a few signature checks);
//! - **snapshot points**: honest replicas snapshot at the same points (`pbft_points.rs`).

use std::collections::{BTreeMap, BTreeSet};

use ekmat_core::{CommittedEntry, Effect, NodeId, RequestId, Time};
use ekmat_pbft::message::{Digest, Message, sha256};
use ekmat_pbft::{PbftStable, Write};

use crate::protocol::{ProtocolChecker, Violation};
use crate::protocols::PbftNode;

pub struct PbftChecker {
    honest: Vec<bool>,
    /// The batch digest executed at each sequence number, and by whom first.
    batches: BTreeMap<u64, (Digest, NodeId)>,
    /// The history digest replicas had through each sequence number, and who first.
    histories: BTreeMap<u64, (Digest, NodeId)>,
    /// The command delivered at each state-machine index, and by whom first.
    commands: BTreeMap<u64, ((RequestId, Digest), NodeId)>,
    /// Highest sequence number checked per node (this incarnation).
    checked_seq: Vec<u64>,
    /// What clients submitted anywhere, and how much of each node's record was read.
    submitted: BTreeSet<(RequestId, Digest)>,
    submitted_read: Vec<usize>,
    delivered: Vec<BTreeSet<(RequestId, Digest)>>,
    /// Every exclusion and re-admission honest replicas reported: (replica, sequence
    /// number) to the kind of decision (true: excluded) and who reported it first.
    decisions: BTreeMap<(NodeId, u64), (bool, NodeId)>,
    points: super::pbft_points::SnapshotPoints,
}

impl PbftChecker {
    pub fn new(n: usize, honest: Vec<bool>) -> PbftChecker {
        let n = n.max(honest.len());
        PbftChecker {
            honest,
            batches: BTreeMap::new(),
            histories: BTreeMap::new(),
            commands: BTreeMap::new(),
            checked_seq: vec![0; n],
            submitted: BTreeSet::new(),
            submitted_read: vec![0; n],
            delivered: vec![BTreeSet::new(); n],
            points: super::pbft_points::SnapshotPoints::new(n),
            decisions: BTreeMap::new(),
        }
    }

    fn absorb_submissions(&mut self, node: NodeId, replica: &PbftNode) {
        let read = &mut self.submitted_read[node.index()];
        self.submitted
            .extend(replica.submitted()[*read..].iter().copied());
        *read = replica.submitted().len();
    }

    fn check_batches(
        &mut self,
        now: Time,
        node: NodeId,
        replica: &PbftNode,
    ) -> Result<(), Violation> {
        let r = replica.replica();
        let from = self.checked_seq[node.index()] + 1;
        for seq in from..=r.last_executed() {
            let Some((batch, qc)) = r.executed(seq) else {
                continue;
            };
            check_batch_clock(now, node, replica, seq, batch.clock_ms)?;
            if let Some((d, first)) = first_other(&mut self.batches, seq, qc.digest, node) {
                let detail = format!(
                    "{node} executed batch {} at sequence {seq}, {first} executed batch {}",
                    hex(&qc.digest),
                    hex(&d)
                );
                return Err(Violation::new("agreement", now, detail));
            }
            if seq.is_multiple_of(PROOF_EVERY) {
                check_commit_proof(now, node, replica, seq)?;
            }
        }
        self.checked_seq[node.index()] = r.last_executed();
        let (seq, history) = (r.last_executed(), r.history());
        if let Some((other, first)) = first_other(&mut self.histories, seq, history, node) {
            let detail = format!(
                "{node} reached history {} through sequence {seq}, {first} history {}",
                hex(&history),
                hex(&other)
            );
            return Err(Violation::new("agreement", now, detail));
        }
        Ok(())
    }

    fn check_exclusions(
        &mut self,
        now: Time,
        node: NodeId,
        replica: &PbftNode,
    ) -> Result<(), Violation> {
        let r = replica.replica();
        for (&convict, &seq) in r.excluded() {
            if self.honest.get(convict.index()).copied().unwrap_or(true) {
                let detail = format!("{node} excluded honest {convict} at sequence {seq}");
                return Err(Violation::new("exclusion", now, detail));
            }
        }
        let reported = r.excluded().iter().map(|(&c, &s)| (c, s, true));
        let reported = reported.chain(r.readmitted().iter().map(|(&c, &s)| (c, s, false)));
        for (convict, seq, excluded) in reported {
            let (kind, first) = *self
                .decisions
                .entry((convict, seq))
                .or_insert((excluded, node));
            if kind != excluded {
                let detail = format!(
                    "{node} {} {convict} at sequence {seq}, where {first} {} it",
                    decided(excluded),
                    decided(kind)
                );
                return Err(Violation::new("exclusion", now, detail));
            }
        }
        // A replica that executed past a decision holds it, or a later one.
        for (&(convict, seq), &(kind, first)) in &self.decisions {
            let latest = r.excluded().get(&convict).max(r.readmitted().get(&convict));
            if r.last_executed() >= seq && latest.is_none_or(|&l| l < seq) {
                let detail = format!(
                    "{node} executed through {} without having {} {convict}, as {first} did at sequence {seq}",
                    r.last_executed(),
                    decided(kind)
                );
                return Err(Violation::new("exclusion", now, detail));
            }
        }
        Ok(())
    }

    fn check_command(
        &mut self,
        now: Time,
        node: NodeId,
        index: u64,
        id: RequestId,
        digest: Digest,
    ) -> Result<(), Violation> {
        if !self.submitted.contains(&(id, digest)) {
            let detail = format!(
                "{node} executed {id:?} ({}), which no client submitted",
                hex(&digest)
            );
            return Err(Violation::new("validity", now, detail));
        }
        if !self.delivered[node.index()].insert((id, digest)) {
            let detail = format!("{node} executed {id:?} ({}) twice", hex(&digest));
            return Err(Violation::new("at-most-once", now, detail));
        }
        match first_other(&mut self.commands, index, (id, digest), node) {
            Some(((other, _), first)) => {
                let detail = format!(
                    "{node} delivered {id:?} at index {index}, {first} delivered {other:?} there"
                );
                Err(Violation::new("state-machine-safety", now, detail))
            }
            None => Ok(()),
        }
    }
}

/// A batch `node` executes at `now` runs at most `clock_ahead` past the correct
/// replicas' clocks (which keep simulated time in PBFT's runs).
fn check_batch_clock(
    now: Time,
    node: NodeId,
    replica: &PbftNode,
    seq: u64,
    clock_ms: u64,
) -> Result<(), Violation> {
    let wall = crate::protocols::pbft_wall_ms(now);
    let ahead = replica.replica().config().clock_ahead.as_millis() as u64;
    if clock_ms <= wall + ahead {
        return Ok(());
    }
    let detail = format!(
        "{node} executed sequence {seq} at time {clock_ms} ms, {} ms past the correct replicas' clocks (a backup accepts at most {ahead} ms)",
        clock_ms - wall
    );
    Err(Violation::new("clock", now, detail))
}

/// Commit proofs are checked at sequence numbers that are multiples of this.
const PROOF_EVERY: u64 = 8;

/// The first signing client's request in the batch at `seq` has a commit proof its
/// client accepts, built from what `node` holds.
fn check_commit_proof(
    now: Time,
    node: NodeId,
    replica: &PbftNode,
    seq: u64,
) -> Result<(), Violation> {
    let r = replica.replica();
    let Some((batch, _)) = r.executed(seq) else {
        return Ok(());
    };
    let cfg = r.config();
    let executed_there = |b: &ekmat_pbft::message::Signed<ekmat_pbft::message::Bundle>| {
        b.body.executable_at(seq, cfg.bundle_horizon)
    };
    let Some((_, request)) = batch
        .requests()
        .find(|(b, q)| q.sig.is_some() && executed_there(b))
    else {
        return Ok(());
    };
    let proof = r.commit_proof(seq, request).ok_or_else(|| {
        let detail = format!(
            "{node} executed {:?} at sequence {seq} and has no proof of it",
            request.id
        );
        Violation::new("commit-proof", now, detail)
    })?;
    proof
        .verify(&cfg.validators, cfg.quorum(), cfg.bundle_horizon, request)
        .map_err(|e| {
            let detail = format!(
                "{node}'s proof that {:?} committed at sequence {seq} is refused: {e}",
                request.id
            );
            Violation::new("commit-proof", now, detail)
        })
}

/// What another node recorded first at `key`, if it differs from `value`; the first
/// record there is kept (with `node`) when there is none yet.
fn first_other<K: Ord, V: PartialEq + Copy>(
    seen: &mut BTreeMap<K, (V, NodeId)>,
    key: K,
    value: V,
    node: NodeId,
) -> Option<(V, NodeId)> {
    let &mut (first_value, first) = seen.entry(key).or_insert((value, node));
    (first_value != value).then_some((first_value, first))
}

fn decided(excluded: bool) -> &'static str {
    if excluded { "excluded" } else { "re-admitted" }
}

fn hex(d: &Digest) -> String {
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl ProtocolChecker<PbftNode> for PbftChecker {
    fn on_effect(
        &mut self,
        now: Time,
        node: NodeId,
        replica: &PbftNode,
        effect: &Effect<Message, Write>,
    ) -> Result<(), Violation> {
        self.absorb_submissions(node, replica);
        if !self.honest.get(node.index()).copied().unwrap_or(true) {
            return Ok(());
        }
        self.check_batches(now, node, replica)?;
        self.check_exclusions(now, node, replica)?;
        match effect {
            Effect::Commit(c) => match &c.entry {
                CommittedEntry::Command { id, command } => {
                    self.check_command(now, node, c.index, *id, sha256(command))
                }
                _ => Ok(()),
            },
            Effect::WantSnapshot { index } => self.points.asked(now, node, *index),
            Effect::Restore { index, .. } => {
                self.points.restored(node, *index);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_recover(
        &mut self,
        _now: Time,
        node: NodeId,
        _stable: &PbftStable,
    ) -> Result<(), Violation> {
        self.checked_seq[node.index()] = 0;
        self.submitted_read[node.index()] = 0;
        self.delivered[node.index()].clear();
        self.points.restarted(node);
        Ok(())
    }
}
