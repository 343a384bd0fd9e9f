//! The normal case (TOCS'02 §4.2): PRE-PREPARE → PREPARE → COMMIT → execute in
//! sequence order.
//!
//! A backup accepts a pre-prepare in its view, inside the watermarks, signed by the
//! primary, if it accepted no other digest for that sequence number in this view. A
//! request is *prepared* with the pre-prepare and 2f matching prepares from distinct
//! backups; *committed-local* once prepared with 2f+1 matching commits. Those 2f+1
//! commits are the batch's quorum certificate.

use std::sync::Arc;

use ekmat_core::{CommittedEntry, Reply};

use crate::certificate::QuorumCertificate;
use crate::client::{ANONYMOUS_CLIENT, client_sig_items};
use crate::config::Mutant;
use crate::crypto::SigItem;
use crate::durable::Write;
use crate::evidence::Statement;
use crate::message::{
    Batch, Bundle, ClientRequest, Commit, Digest, Message, PrePrepare, Prepare, PreparedCert,
    Signed, sha256,
};
use crate::replica::{Fx, Pbft, PendingBundle, primary_of};

/// Recent request numbers kept per client for at-most-once execution.
const SESSION_DEPTH: usize = 8;

/// What one client had executed: the digests of its recent requests, and a floor below
/// which every request counts as executed. A bundle may be ordered twice (a primary
/// cannot know everything executed elsewhere, and gateways resend), so execution itself
/// must refuse repeats, for as long as the client could repeat them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Session {
    floor: u64,
    recent: std::collections::BTreeMap<u64, Vec<Digest>>,
}

impl Session {
    /// Whether `admit` would take (request number, bytes) now.
    pub(crate) fn would_admit(&self, seq: u64, digest: &Digest) -> bool {
        seq >= self.floor && self.recent.get(&seq).is_none_or(|d| !d.contains(digest))
    }

    /// The digest of the operation that executed first under request number `seq`
    /// (a client may sign two under one number; the state machine runs the first and
    /// answers the second with its result), while the session still holds `seq`.
    pub(crate) fn first_executed(&self, seq: u64) -> Option<Digest> {
        self.recent.get(&seq)?.first().copied()
    }

    /// True the first time (request number, bytes) is seen above the floor.
    fn admit(&mut self, seq: u64, digest: Digest) -> bool {
        if seq < self.floor {
            return false;
        }
        let seen = self.recent.entry(seq).or_default();
        if seen.contains(&digest) {
            return false;
        }
        seen.push(digest);
        while self.recent.len() > SESSION_DEPTH {
            if let Some((oldest, _)) = self.recent.pop_first() {
                self.floor = oldest + 1;
            }
        }
        true
    }
}

impl Pbft {
    /// Verify the signatures of the small normal-case messages that arrived together as
    /// one batch (see [`ekmat_core::Replica::preview`]): each handler then finds its
    /// message's signature checked already. Bundles are left to their handler, which
    /// encodes and hashes one once for both its signature and its digest.
    pub(crate) fn preverify(&mut self, msgs: &[&Message]) {
        let items = msgs
            .iter()
            .filter_map(|m| match m {
                Message::PrePrepare { header, .. } => Some(SigItem::of(header)),
                Message::Prepare(p) => Some(SigItem::of(p)),
                Message::Commit(c) => Some(SigItem::of(c)),
                Message::Checkpoint(c) => Some(SigItem::of(c)),
                _ => None,
            })
            .collect();
        self.keys.verify_ahead(items);
    }
    pub(crate) fn on_pre_prepare(
        &mut self,
        header: Signed<PrePrepare>,
        batch: Arc<Batch>,
        out: &mut Fx,
    ) {
        let pp = header.body;
        if header.signer != primary_of(pp.view, self.n()) {
            return self.reject_signature(out);
        }
        let fits = batch.bundles.iter().all(|b| self.bundle_fits(&b.body));
        if !fits || batch.size() > self.cfg.batch_limit() {
            // A primary past the bound would make view changes no frame can carry.
            return self.counter("oversize-batch", out);
        }
        let batch = self.recent_bundles.reuse(batch);
        let Some(digests) = self.pre_prepare_verifies(&header, &batch) else {
            self.convict_forgers_in(&header, &batch, out);
            return self.reject_signature(out);
        };
        self.note_seen(header.signer, pp.seq, pp.view);
        if self.defer_if_other_view(
            pp.view,
            Message::PrePrepare {
                header,
                batch: batch.clone(),
            },
        ) {
            return;
        }
        if !self.in_window(pp.seq) || self.is_primary() {
            return;
        }
        let conflicting = self
            .accepted
            .get(&pp.seq)
            .is_some_and(|&(v, d)| v == pp.view && d != pp.digest);
        if conflicting {
            // The primary equivocated: keep the proof, accept neither again.
            return self.observe(Statement::of(&header), out);
        }
        if self
            .log
            .get(&pp.seq)
            .is_some_and(|s| s.pre_prepare.is_some())
            || !self.clock_plausible(&batch, out)
        {
            return;
        }
        self.install_pre_prepare(header, batch, &digests, out);
        self.send_prepare(&header, out);
        self.check_prepared(pp.seq, out);
    }

    /// The header's signature, the batch's digest and every bundle's signature (verified
    /// as one batch). A bundle this replica holds as pending or executed was verified
    /// when it arrived, and its digest covers its signature: it is not checked again.
    /// Returns the bundles' digests if it all holds.
    fn pre_prepare_verifies(
        &mut self,
        header: &Signed<PrePrepare>,
        batch: &Batch,
    ) -> Option<Vec<Digest>> {
        let digests = batch.bundle_digests();
        if Batch::digest_of(batch.clock_ms, &digests) != header.body.digest
            && self.cfg.mutant != Mutant::SkipSignatureVerification
        {
            return None;
        }
        let gateways_sign = batch.bundles.iter().all(|b| b.signer == b.body.gateway);
        let mut items = vec![SigItem::of(header)];
        let unseen = batch.bundles.iter().zip(&digests).filter(|(_, d)| {
            !self.pending.contains_key(*d) && !self.executed_bundles.contains_key(*d)
        });
        for (b, _) in unseen {
            items.push(SigItem::of(&**b));
            // Registered clients' signatures too: a primary (or gateway) that made up
            // a request in a client's name proposes a batch no correct backup accepts.
            if self.cfg.mutant != Mutant::SkipClientSignatures {
                let cluster = &self.cluster;
                items.extend(client_sig_items(
                    &self.cfg.clients,
                    cluster,
                    b.body.requests(),
                )?);
            }
        }
        (gateways_sign && self.keys.verify_all(items)).then_some(digests)
    }

    /// A pre-prepare that failed its checks, looked at again signature by signature: a
    /// bundle in it that its gateway signed with a forged client request proves that
    /// gateway Byzantine, whether or not it was ever sent as a bundle of its own. Only
    /// the primary's own signed pre-prepares are looked into, so nobody else can make a
    /// backup check bundles one by one.
    fn convict_forgers_in(&mut self, header: &Signed<PrePrepare>, batch: &Batch, out: &mut Fx) {
        if self.cfg.mutant == Mutant::SkipClientSignatures
            || !self.keys.verify_all(vec![SigItem::of(header)])
        {
            return;
        }
        for b in &batch.bundles {
            self.convict_forger(b, out);
        }
    }

    pub(crate) fn send_prepare(&mut self, header: &Signed<PrePrepare>, out: &mut Fx) {
        let body = Prepare {
            view: header.body.view,
            seq: header.body.seq,
            digest: header.body.digest,
            primary_sig: header.sig,
        };
        let prepare = self.keys.sign(body);
        self.broadcast_durable(Message::Prepare(prepare), out);
        self.log
            .entry(body.seq)
            .or_default()
            .prepares
            .insert(self.cfg.id, prepare);
    }

    pub(crate) fn on_prepare(&mut self, p: Signed<Prepare>, out: &mut Fx) {
        if !self.keys.verify(&p) {
            return self.reject_signature(out);
        }
        self.note_seen(p.signer, p.body.seq, p.body.view);
        if self.defer_if_other_view(p.body.view, Message::Prepare(p)) || !self.in_window(p.body.seq)
        {
            return;
        }
        self.observe(Statement::of(&p), out);
        self.check_primary_consistency(&p, out);
        let primary = primary_of(self.view, self.n());
        if p.signer == primary && self.cfg.mutant != Mutant::CommitWithoutPrePrepare {
            return; // the primary's word is its pre-prepare; it does not prepare
        }
        let seq = p.body.seq;
        self.log
            .entry(seq)
            .or_default()
            .prepares
            .entry(p.signer)
            .or_insert(p);
        self.check_prepared(seq, out);
    }

    /// A prepare carries the primary's signature over the pre-prepare its sender
    /// accepted. If that names another digest than the pre-prepare this replica holds,
    /// the primary signed two: evidence.
    fn check_primary_consistency(&mut self, p: &Signed<Prepare>, out: &mut Fx) {
        let Some((mine, _)) = self
            .log
            .get(&p.body.seq)
            .and_then(|s| s.pre_prepare.as_ref())
        else {
            return;
        };
        if mine.body.digest == p.body.digest {
            return;
        }
        let theirs = Signed {
            body: PrePrepare {
                view: p.body.view,
                seq: p.body.seq,
                digest: p.body.digest,
            },
            signer: mine.signer,
            sig: p.body.primary_sig,
        };
        if self.keys.verify(&theirs) {
            self.observe(Statement::of(&theirs), out);
        }
    }

    /// Prepared: the pre-prepare and `quorum - 1` matching prepares from distinct
    /// backups. Then the prepared certificate is made durable before COMMIT leaves.
    pub(crate) fn check_prepared(&mut self, seq: u64, out: &mut Fx) {
        if self.cfg.mutant == Mutant::CommitWithoutPrePrepare {
            return self.check_prepared_mutant(seq, out);
        }
        let need = self.quorum() - 1;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let Some((header, batch)) = slot.pre_prepare.clone() else {
            return;
        };
        if !slot.commit_sent.is_empty() {
            return;
        }
        let prepares: Vec<_> = slot
            .prepares
            .values()
            .filter(|p| p.body.digest == header.body.digest)
            .cloned()
            .collect();
        if prepares.len() < need {
            return;
        }
        let cert = PreparedCert {
            pre_prepare: header,
            batch,
            prepares,
        };
        self.persist(Write::Prepared(cert.clone()), out);
        self.prepared_certs.insert(seq, cert.clone());
        self.send_commit(cert.pre_prepare.body, out);
    }

    /// The planted bug: any digest with 2f prepares from anyone gets a COMMIT, whatever
    /// pre-prepare (if any) this replica accepted.
    fn check_prepared_mutant(&mut self, seq: u64, out: &mut Fx) {
        let need = self.quorum() - 1;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let mut counts: std::collections::BTreeMap<Digest, usize> = Default::default();
        for p in slot.prepares.values() {
            *counts.entry(p.body.digest).or_default() += 1;
        }
        let ready: Vec<Digest> = counts
            .into_iter()
            .filter(|&(d, c)| c >= need && !slot.commit_sent.contains(&d))
            .map(|(d, _)| d)
            .collect();
        for digest in ready {
            let body = PrePrepare {
                view: self.view,
                seq,
                digest,
            };
            self.send_commit(body, out);
        }
    }

    fn send_commit(&mut self, pp: PrePrepare, out: &mut Fx) {
        let body = Commit {
            view: pp.view,
            seq: pp.seq,
            digest: pp.digest,
        };
        let commit = self.keys.sign(body);
        self.broadcast_durable(Message::Commit(commit), out);
        self.log
            .entry(pp.seq)
            .or_default()
            .commit_sent
            .insert(pp.digest);
        self.own_commits.push_back((self.gate.written(), commit));
        self.count_durable_own_commits();
    }

    /// This replica's COMMIT counts towards its own certificate only once the writes
    /// before it are durable, as it leaves for other replicas only then: a certificate
    /// leaves in transfers and commit proofs, and one holding its COMMIT while those
    /// writes could still be lost would let it, restarted, commit another digest there.
    pub(crate) fn count_durable_own_commits(&mut self) {
        let durable = self.gate.durable();
        while self
            .own_commits
            .front()
            .is_some_and(|(at, _)| *at <= durable)
        {
            let (_, commit) = self.own_commits.pop_front().expect("front checked");
            let seq = commit.body.seq;
            let Some(slot) = self.log.get_mut(&seq) else {
                continue; // collected, or a view change cleared the log
            };
            let same_view = slot
                .pre_prepare
                .as_ref()
                .is_some_and(|(h, _)| h.body.view == commit.body.view);
            if same_view {
                slot.commits.entry(self.cfg.id).or_insert(commit);
                self.check_committed(seq);
            }
        }
    }

    pub(crate) fn on_commit(&mut self, c: Signed<Commit>, out: &mut Fx) {
        if !self.keys.verify(&c) {
            return self.reject_signature(out);
        }
        self.note_seen(c.signer, c.body.seq, c.body.view);
        if self.defer_if_other_view(c.body.view, Message::Commit(c)) || !self.in_window(c.body.seq)
        {
            return;
        }
        self.observe(Statement::of(&c), out);
        let seq = c.body.seq;
        self.log
            .entry(seq)
            .or_default()
            .commits
            .entry(c.signer)
            .or_insert(c);
        self.check_committed(seq);
    }

    /// Committed-local: this replica sent COMMIT for a digest (it prepared it) and
    /// `quorum` replicas committed that digest, and it holds the batch.
    fn check_committed(&mut self, seq: u64) {
        let quorum = self.quorum();
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        if slot.committed.is_some() {
            return;
        }
        let Some((header, _)) = &slot.pre_prepare else {
            return;
        };
        let digest = header.body.digest;
        if !slot.commit_sent.contains(&digest) {
            return;
        }
        let matching: Vec<&Signed<Commit>> = slot
            .commits
            .values()
            .filter(|c| c.body.digest == digest)
            .collect();
        if matching.len() >= quorum {
            let statement = matching[0].body;
            slot.committed = Some(QuorumCertificate::from_commits(statement, matching));
        }
    }

    /// Execute every batch that is committed, in sequence order, with no gaps.
    pub(crate) fn execute_ready(&mut self, out: &mut Fx) {
        // Held at a checkpoint that may be a snapshot point: the host's state machine
        // must stay there until that is decided.
        while self.held_at.is_none() {
            let next = self.last_executed + 1;
            let from_log = self.log.get(&next).and_then(|s| {
                let qc = s.committed.clone()?;
                Some((s.pre_prepare.as_ref()?.1.clone(), qc, false))
            });
            let Some((batch, qc, from_disk)) = from_log.or_else(|| self.transfers.remove(&next))
            else {
                break;
            };
            self.execute(next, batch, qc, from_disk, out);
        }
        self.transfers.retain(|s, _| *s > self.last_executed);
    }

    fn execute(
        &mut self,
        seq: u64,
        batch: Arc<Batch>,
        qc: QuorumCertificate,
        from_disk: bool,
        out: &mut Fx,
    ) {
        assert_eq!(seq, self.last_executed + 1, "execution must be gapless");
        let digests = batch.bundle_digests();
        assert_eq!(
            qc.digest,
            Batch::digest_of(batch.clock_ms, &digests),
            "{}: a certificate for another batch at {seq}",
            self.cfg.id
        );
        if !from_disk {
            let write = if self.prepared_on_disk.holds(seq, &qc.digest) {
                Write::ExecutedPrepared(qc.clone())
            } else {
                Write::Executed {
                    batch: batch.clone(),
                    qc: qc.clone(),
                }
            };
            self.persist(write, out);
        }
        let mut chain = self.history.to_vec();
        chain.extend_from_slice(&qc.digest);
        self.history = sha256(&chain);
        self.last_executed = seq;
        self.deliver(seq, &batch, &digests, from_disk, out);
        for d in &digests {
            self.pending.remove(d);
            self.in_flight.remove(d);
        }
        self.executed.insert(seq, (batch, qc));
        if seq.is_multiple_of(self.cfg.checkpoint_interval) {
            self.forget_expired_bundles(true, out);
        }
        self.on_progress();
        self.maybe_checkpoint(seq, out);
        self.maybe_want_snapshot(seq, out);
        self.maybe_write_snapshot(out);
        self.try_propose(out);
    }

    /// The oldest point a bundle can have been made at and still execute after this
    /// replica's last executed sequence number (see `Bundle::executable_at`).
    pub(crate) fn oldest_live_bundle(&self) -> u64 {
        (self.last_executed + 1).saturating_sub(self.cfg.bundle_horizon)
    }

    /// Forget the executed bundles that could no longer execute again, and drop the
    /// pending ones that never will; this gateway's own go into its next bundle if
    /// `rebundle` (it executed every sequence number where they could have, so it knows
    /// they did not). Done at checkpoint sequence numbers, so every correct replica's
    /// record (which snapshots carry) is the same at each.
    pub(crate) fn forget_expired_bundles(&mut self, rebundle: bool, out: &mut Fx) {
        let oldest = self.oldest_live_bundle();
        self.executed_bundles
            .retain(|_, created| *created >= oldest);
        let expired: Vec<(Digest, PendingBundle)> = self
            .pending
            .extract_if(.., |_, p| p.bundle.body.created < oldest)
            .collect();
        for (d, p) in expired {
            self.in_flight.remove(&d);
            if p.bundle.body.gateway != self.cfg.id {
                continue;
            }
            if rebundle {
                self.outbox.extend(p.bundle.body.requests().iter().cloned());
                self.counter("rebundled", out);
            } else {
                // Their clients time out: the outcome is unknown, as it is to an etcd
                // client whose request timed out.
                self.counter("bundle-outcome-unknown", out);
            }
        }
        let pending = &self.pending;
        self.pending_order.retain(|d| pending.contains_key(d));
    }

    /// Hand a batch's requests to the state machine, each (client, request, bytes) at
    /// most once. Reads change nothing; their gateway answers once it has applied this far.
    ///
    /// A signed bundle executes once, whichever batches carry it (a bundle may be
    /// ordered twice across a view change). Requests of the anonymous client 0 — a
    /// runtime gateway's own ids, unique per gateway, not a client's session — are
    /// deduplicated by that alone: the per-client session's small window would refuse
    /// requests of one gateway that arrive out of order behind another gateway's.
    fn deliver(
        &mut self,
        seq: u64,
        batch: &Batch,
        digests: &[Digest],
        replayed: bool,
        out: &mut Fx,
    ) {
        for (bundle, digest) in batch.bundles.iter().zip(digests) {
            if !bundle.body.executable_at(seq, self.cfg.bundle_horizon) {
                // Only a faulty primary orders one (or a gateway that made it "later"):
                // every correct replica skips it alike.
                self.counter("expired-bundle", out);
                continue;
            }
            if self
                .executed_bundles
                .insert(*digest, bundle.body.created)
                .is_some()
                && self.cfg.mutant != Mutant::ForgetExecutedBundles
            {
                self.counter("duplicate-bundle", out);
                continue;
            }
            for r in bundle.body.requests() {
                self.deliver_request(seq, batch.clock_ms, bundle, r, replayed, out);
            }
        }
    }

    fn deliver_request(
        &mut self,
        seq: u64,
        clock_ms: u64,
        bundle: &Signed<Bundle>,
        r: &ClientRequest,
        replayed: bool,
        out: &mut Fx,
    ) {
        if r.id.client == crate::EXCLUSION_CLIENT {
            let proof = r.op.as_deref().unwrap_or_default();
            return self.execute_exclusion(seq, proof, replayed, out);
        }
        if r.id.client == crate::READMISSION_CLIENT {
            let votes = r.op.as_deref().unwrap_or_default();
            return self.execute_readmission(seq, votes, replayed, out);
        }
        let Some(op) = &r.op else {
            if bundle.body.gateway == self.cfg.id {
                out.reply(Reply::ReadReady {
                    id: r.id,
                    index: self.applied,
                });
            }
            return;
        };
        if r.id.client != ANONYMOUS_CLIENT
            && !self
                .sessions
                .entry(r.id.client)
                .or_default()
                .admit(r.id.seq, sha256(op))
        {
            return;
        }
        self.applied += 1;
        self.executed_bytes += op.len() as u64;
        let entry = CommittedEntry::Command {
            id: r.id,
            command: op.clone(),
        };
        out.commit_at(self.applied, entry, Some(clock_ms));
    }

    /// Execution moved on: the primary is doing its job, unless the bundle the view
    /// timer runs for still waits (then the timer stands, and the timeout keeps
    /// doubling across views that fail it: see `arm_timer`). Batches
    /// executed while changing views (fetched, or an exclusion that started the change)
    /// say nothing of the view being changed to, so its timer stands too.
    pub(crate) fn on_progress(&mut self) {
        self.behind_since = None;
        if !self.normal {
            return;
        }
        // Catching up (f+1 replicas, so a correct one, are further on), the bundle it
        // times may be ordered far past what it executes now: any execution shows the
        // view works.
        let catching_up = self.reached_by_f_plus_1().0 > self.last_executed;
        if self.timed_bundle_waits() && !catching_up {
            return;
        }
        self.failed_views = 0;
        self.timer = None;
        self.arm_timer();
    }
}
