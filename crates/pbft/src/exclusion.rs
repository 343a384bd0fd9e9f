//! Excluding a convicted replica (seed 004's slashing), ordered through consensus.
//!
//! A replica that holds a proof (of equivocation, or a bundle its gateway signed with a
//! forged client request in it: see `evidence.rs`) does not act on it alone: it submits the
//! proof as a request, so the exclusion is ordered like any other request. Every honest
//! replica checks the proof when it executes that request — a pure function of the proof
//! and the validators' public keys — and so excludes the same replica at the same
//! sequence number, whenever it gets there (live, after a restart, or by state transfer).
//!
//! Excluded, a replica is one of the f faults the quorums already allow for, not a smaller
//! membership: quorums stay 2f+1 of n. What it can still harm is liveness, and only as a
//! primary or a gateway: the views it would lead are skipped at once instead of after a
//! view-change timeout, and its bundles of client requests are no longer taken. Its
//! signed votes still count: a quorum already tolerates f arbitrary ones, and dropping
//! them would leave the rest with no spare replica at all (with n = 4, every other
//! replica would then be needed for every step, and one slow one would stall them all).
//! Neither rule touches safety, so replicas that have not yet executed the exclusion are
//! no danger to those that have.

use bytes::Bytes;
use ekmat_core::{NodeId, RequestId};

use crate::evidence;
use crate::message::{Bundle, ClientRequest, Signed};
use crate::replica::{Fx, Pbft, primary_of};

/// The client id of exclusion requests. Client requests never carry it: the runtime's
/// gateways number their own requests as client 0, and `on_request` refuses it.
pub const EXCLUSION_CLIENT: u64 = u64::MAX - 1;

impl Pbft {
    /// Submit a proof against `convict` for ordering, once per convict.
    pub(crate) fn propose_exclusion(&mut self, convict: NodeId, proof: Bytes, out: &mut Fx) {
        if self.cfg.mutant == crate::Mutant::ExcludeOnOwnEvidence {
            self.excluded.entry(convict).or_insert(self.last_executed);
            return;
        }
        let anchor = evidence::anchor(&proof);
        if self.excluded.contains_key(&convict) {
            // Kept for a re-admission that pardons less than it covers.
            let anchor = anchor.unwrap_or(0);
            if self
                .held_evidence
                .get(&convict)
                .is_none_or(|(a, _)| *a < anchor)
            {
                self.held_evidence.insert(convict, (anchor, proof));
            }
            return;
        }
        // Evidence a re-admission pardoned would be ordered for nothing, and would keep
        // newer evidence from being proposed.
        if self.pardoned(convict, anchor) || !self.exclusions_proposed.insert(convict) {
            return;
        }
        let id = RequestId {
            client: EXCLUSION_CLIENT,
            seq: u64::from(convict.0),
        };
        self.outbox.push(ClientRequest {
            id,
            op: Some(proof),
            sig: None,
        });
        self.flush_bundle(out);
    }

    /// Execute an ordered exclusion request at sequence number `seq`. A proof that does not
    /// hold excludes nobody (a Byzantine gateway may submit anything); it is counted.
    /// Replaying its own executed batches after a restart, a replica applies the
    /// exclusions again without counting anything again.
    pub(crate) fn execute_exclusion(
        &mut self,
        seq: u64,
        proof: &[u8],
        replayed: bool,
        out: &mut Fx,
    ) {
        let counted = match self.judge().verify(proof).map(|(convict, _)| convict) {
            Ok(convict) if self.excluded.contains_key(&convict) => return,
            Ok(convict) if self.pardoned(convict, evidence::anchor(proof)) => "pardoned-evidence",
            // More than f proven faulty is outside what the protocol tolerates; dropping
            // one more replica's messages would then only cost the rest their quorum.
            Ok(_) if self.excluded.len() >= self.f() => "exclusion-beyond-f",
            Ok(convict) => {
                self.excluded.insert(convict, seq);
                // Waiting on its bundles would only time the view out.
                self.pending.retain(|_, p| p.bundle.body.gateway != convict);
                self.skip_excluded_primary(out);
                "exclusion"
            }
            Err(_) => "invalid-exclusion",
        };
        if !replayed {
            self.counter(counted, out);
        }
    }

    /// What proofs are checked against here: the validators' keys and the client
    /// registry, both configuration every member holds alike.
    pub(crate) fn judge(&self) -> evidence::Judge<'_> {
        evidence::Judge {
            validators: &self.cfg.validators,
            clients: &self.cfg.clients,
            cluster: &self.cluster,
        }
    }

    /// A bundle its gateway signed holding a forged client request: convict the
    /// gateway (once), if the bundle proves it on its own terms.
    pub(crate) fn convict_forger(&mut self, b: &Signed<Bundle>, out: &mut Fx) {
        let gateway = b.body.gateway;
        if self.is_excluded(gateway) || self.exclusions_proposed.contains(&gateway) {
            return;
        }
        let proof = evidence::forged_request_proof(b);
        let request = ClientRequest {
            id: RequestId {
                client: EXCLUSION_CLIENT,
                seq: u64::from(gateway.0),
            },
            op: Some(proof.clone()),
            sig: None,
        };
        if request.size() > self.cfg.batch_limit() {
            // Unreachable while bundles over the bound are ignored (`bundle_fits`):
            // the proof could not be ordered.
            return self.counter("evidence-too-large", out);
        }
        if self.judge().verify(&proof) == Ok((gateway, "forged-client-request")) {
            self.convict(gateway, "forged-client-request", proof, out);
        }
    }

    pub(crate) fn is_excluded(&self, id: NodeId) -> bool {
        self.excluded.contains_key(&id)
    }

    /// The first view from `view` on whose primary is not excluded.
    pub(crate) fn first_view_not_led_by_excluded(&self, view: u64) -> u64 {
        let n = self.n() as u64;
        (view..view + n)
            .find(|&v| !self.is_excluded(primary_of(v, self.n())))
            .unwrap_or(view)
    }

    /// A view led by an excluded replica will get no honest pre-prepare, nor a NEW-VIEW
    /// worth waiting for: leave it now.
    pub(crate) fn skip_excluded_primary(&mut self, out: &mut Fx) {
        if self.is_excluded(primary_of(self.view, self.n())) {
            self.start_view_change(self.view + 1, out);
        }
    }
}
