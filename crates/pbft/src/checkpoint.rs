//! Checkpoints and garbage collection (TOCS'02 §4.3).
//!
//! Every K sequence numbers a replica signs CHECKPOINT(n, d), where d chains the digests
//! of every batch executed through n. 2f+1 matching checkpoints are a proof that n is
//! stable: the log at or below it is discarded and the watermarks move up to (n, n + L].

use crate::certificate::checkpoint_proof_valid;
use crate::durable::Write;
use crate::message::{Checkpoint, CheckpointProof, Message, Signed};
use crate::replica::{Fx, Pbft};

/// Counted when a quorum's stable checkpoint certifies another history than the one
/// this replica executed through that sequence number.
pub const DIVERGED_HISTORY: &str = "diverged-history";

impl Pbft {
    pub(crate) fn maybe_checkpoint(&mut self, seq: u64, out: &mut Fx) {
        if !seq.is_multiple_of(self.cfg.checkpoint_interval) || seq <= self.stable.seq {
            return;
        }
        let body = Checkpoint {
            seq,
            digest: self.history,
        };
        self.own_checkpoints.insert(seq, self.history);
        let signed = self.keys.sign(body);
        self.broadcast(Message::Checkpoint(signed), out);
        self.checkpoint_resent = self.now;
        self.add_checkpoint_vote(signed, out);
    }

    /// Send this replica's latest checkpoint vote again, once per half view timeout,
    /// while it is not stable. Votes lost in a partition are otherwise never sent
    /// again, and once the primary has filled the window up to the high watermark no
    /// later checkpoint can make up for them: every view would stop there.
    pub(crate) fn resend_checkpoint_vote(&mut self, out: &mut Fx) {
        let Some((&seq, &digest)) = self.own_checkpoints.last_key_value() else {
            return;
        };
        if seq <= self.stable.seq
            || self.now.since(self.checkpoint_resent) < self.cfg.view_timeout / 2
        {
            return;
        }
        self.checkpoint_resent = self.now;
        let signed = self.keys.sign(Checkpoint { seq, digest });
        self.broadcast(Message::Checkpoint(signed), out);
    }

    pub(crate) fn on_checkpoint(&mut self, c: Signed<Checkpoint>, out: &mut Fx) {
        if !self.keys.verify(&c) {
            return self.reject_signature(out);
        }
        self.note_seen(c.signer, c.body.seq, 0);
        if c.body.seq <= self.stable.seq || c.body.seq > self.high_watermark() + self.cfg.window {
            return;
        }
        self.add_checkpoint_vote(c, out);
    }

    fn add_checkpoint_vote(&mut self, c: Signed<Checkpoint>, out: &mut Fx) {
        let seq = c.body.seq;
        let votes = self.checkpoint_votes.entry(seq).or_default();
        votes.entry(c.signer).or_insert(c);
        let matching: Vec<Signed<Checkpoint>> = votes
            .values()
            .filter(|v| v.body == c.body)
            .cloned()
            .collect();
        if matching.len() >= self.quorum() {
            let proof = CheckpointProof {
                seq,
                digest: c.body.digest,
                sigs: matching,
            };
            self.make_stable(proof, out);
            self.try_propose(out);
        }
    }

    /// Adopt a valid proof of a later stable checkpoint: persist it, discard the log
    /// below it, and move the watermarks. A replica that has not executed that far
    /// fetches the committed batches it misses (state transfer).
    ///
    /// It proposes nothing itself: a new primary entering its view adopts the NEW-VIEW's
    /// checkpoint before it installs the pre-prepares it re-issued, and proposing in
    /// between would sign a second pre-prepare for their sequence numbers.
    pub(crate) fn make_stable(&mut self, proof: CheckpointProof, out: &mut Fx) {
        if proof.seq <= self.stable.seq {
            return;
        }
        let quorum = self.quorum();
        debug_assert!(checkpoint_proof_valid(&proof, &mut self.keys, quorum));
        // Agreement guarantees this among correct replicas: one that differs executed
        // another history (its store was damaged, or it started from another one) and
        // says so; its host stops it rather than serve that state.
        if self
            .own_checkpoints
            .get(&proof.seq)
            .is_some_and(|own| *own != proof.digest)
            && self.cfg.mutant == crate::Mutant::None
        {
            self.counter(DIVERGED_HISTORY, out);
        }
        let seq = proof.seq;
        for s in &proof.sigs {
            self.note_seen(s.signer, seq, 0);
        }
        self.persist(Write::Checkpoint(proof.clone()), out);
        self.stable = proof;
        self.log.retain(|s, _| *s > seq);
        self.prune_executed();
        self.checkpoint_votes.retain(|s, _| *s > seq);
        self.own_checkpoints.retain(|s, _| *s > seq);
        self.accepted.retain(|s, _| *s > seq);
        self.prepared_certs.retain(|s, _| *s > seq);
        self.evidence.forget_through(seq);
        self.next_seq = self.next_seq.max(seq);
        self.counter("stable-checkpoint", out);
    }
}
