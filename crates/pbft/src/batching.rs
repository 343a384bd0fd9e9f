//! Gateways bundle client requests; the primary cuts batches from the bundles and keeps
//! several sequence numbers in flight between the watermarks (pipelining).
//!
//! Every replica is a gateway for the clients that talk to it: it signs their requests
//! as a bundle and sends the bundle to the primary, which orders it inside a
//! pre-prepare that every backup receives. A bundle still unordered half-way to the view
//! timeout goes to every replica (PBFT's client retransmission), so backups then know
//! what the primary owes them and suspect it (start the view-change timer) if it does
//! not deliver. Sending every bundle to every replica at once instead made each backup
//! receive, decode and compare every request twice, once more in the pre-prepare.

use std::sync::Arc;

use crate::crypto::SigItem;
use crate::durable::Write;
use crate::message::{
    Batch, Bundle, ClientRequest, Digest, Message, PrePrepare, bundle_digest, signed_digest,
};
use crate::replica::{Fx, Pbft, PendingBundle};

impl Pbft {
    /// Sign the requests collected so far as one bundle and send it everywhere.
    pub(crate) fn flush_bundle(&mut self, out: &mut Fx) {
        self.drop_forged_requests(out);
        let mut requests = std::mem::take(&mut self.outbox).into_iter().peekable();
        while requests.peek().is_some() {
            let (mut bundle, mut bytes) = (Vec::new(), 0);
            while let Some(r) = requests.peek() {
                let full = bundle.len() >= self.cfg.bundle_max
                    || bytes + r.size() > self.cfg.bundle_bytes();
                if full && !bundle.is_empty() {
                    break;
                }
                bytes += r.size();
                bundle.extend(requests.next());
            }
            self.send_bundle(bundle, out);
        }
        self.try_propose(out);
    }

    /// Sign `requests` as this gateway's next bundle and send it to the primary. Each
    /// request is within the batch bound (`on_request`; a proof against a gateway within
    /// its slack), so the bundle is too: no replica would take one over it.
    fn send_bundle(&mut self, requests: Vec<ClientRequest>, out: &mut Fx) {
        self.nonce += 1;
        let bundle = Bundle::new(self.cfg.id, self.nonce, self.last_executed, requests);
        assert!(
            bundle.size() <= self.cfg.batch_limit(),
            "{}: a bundle of {} bytes",
            self.cfg.id,
            bundle.size()
        );
        let signed = Arc::new(self.keys.sign(bundle));
        self.recent_bundles.remember(&signed);
        self.send_to_primary(Message::Bundle(signed.clone()), out);
        self.add_pending(signed);
    }

    /// The primary of this replica's view, unless that is this replica.
    fn send_to_primary(&self, msg: Message, out: &mut Fx) {
        if !self.is_primary() {
            out.send(crate::replica::primary_of(self.view, self.n()), msg);
        }
    }

    /// A new view's primary never received the bundles this replica made for the old
    /// one: they go to it at once, not half a view timeout later, and before any made
    /// for the new one, in the order they were made (a client's requests executed out
    /// of order by more than its session's window are refused as old).
    pub(crate) fn send_own_pending_to_primary(&self, out: &mut Fx) {
        let mut own: Vec<_> = self
            .pending
            .values()
            .filter(|p| p.bundle.body.gateway == self.cfg.id)
            .map(|p| &p.bundle)
            .collect();
        own.sort_unstable_by_key(|b| b.body.nonce);
        for b in own {
            self.send_to_primary(Message::Bundle(b.clone()), out);
        }
    }

    /// Whether `bundle` is within the batch bound: clients' requests up to
    /// `batch_max_bytes`; the slack above it only for a bundle of the protocol's own
    /// requests (a proof against a gateway carries a whole bundle of at most the bound,
    /// so it fits the slack, and a gateway bundles a request that large alone).
    pub(crate) fn bundle_fits(&self, bundle: &Bundle) -> bool {
        let protocol_only = bundle
            .requests()
            .iter()
            .all(|r| [crate::EXCLUSION_CLIENT, crate::READMISSION_CLIENT].contains(&r.id.client));
        let bound = if protocol_only {
            self.cfg.batch_limit()
        } else {
            self.cfg.batch_max_bytes
        };
        bundle.size() <= bound
    }

    /// Clients' signatures are checked here, for the whole bundle at once (batch
    /// verification is about twice as fast as one by one); only if that fails is each
    /// checked alone, and the forged ones dropped.
    fn drop_forged_requests(&mut self, out: &mut Fx) {
        let outbox = std::mem::take(&mut self.outbox);
        if self.client_requests_verify(&outbox) {
            self.outbox = outbox;
            return;
        }
        for r in outbox {
            if self.client_requests_verify(std::slice::from_ref(&r)) {
                self.outbox.push(r);
            } else {
                self.counter("bad-client-request", out);
            }
        }
    }

    pub(crate) fn on_bundle(&mut self, b: Arc<crate::message::Signed<Bundle>>, out: &mut Fx) {
        // A bundle sent again (see `resend_stale_bundles`) is usually held: under
        // load every replica resends every bundle still pending, and hashing each copy's
        // requests again was most of the SHA-256 a member did.
        let b = self.recent_bundles.held_equal(&b).unwrap_or(b);
        // The signed bytes, encoded (and the requests hashed) once for both the
        // signature check and the bundle's digest.
        let item = SigItem::of(&*b);
        let d = signed_digest(&item);
        // A bundle already taken here (from a pre-prepare, or sent twice) was checked
        // then: its digest covers every byte and signature in it.
        let known = self.pending.contains_key(&d)
            || self.in_flight.contains(&d)
            || self.executed_bundles.contains_key(&d);
        if known {
            return self.add_pending_as(b, d);
        }
        if !self.bundle_fits(&b.body) {
            // No honest gateway makes one: it could not be ordered in a batch within
            // the bound (see `PbftConfig::batch_max_bytes`).
            return self.counter("oversize-bundle", out);
        }
        if b.signer != b.body.gateway || !self.keys.verify_all(vec![item]) {
            return self.reject_signature(out);
        }
        if !self.client_requests_verify(b.body.requests()) {
            // Its gateway signed a request its client did not: never proposed here,
            // and the bundle itself is the proof against the gateway.
            self.counter("forged-client-request", out);
            return self.convict_forger(&b, out);
        }
        self.recent_bundles.remember(&b);
        self.add_pending_as(b, d);
        self.try_propose(out);
    }

    fn add_pending(&mut self, bundle: Arc<crate::message::Signed<Bundle>>) {
        let d = bundle_digest(&bundle);
        self.add_pending_as(bundle, d);
    }

    fn add_pending_as(&mut self, bundle: Arc<crate::message::Signed<Bundle>>, d: Digest) {
        let excluded = self.is_excluded(bundle.body.gateway);
        if excluded || self.executed_bundles.contains_key(&d) || self.pending.contains_key(&d) {
            return;
        }
        // An expired bundle never executes. One made more than a window past this
        // replica's last execution is refused too (its gateway sends it again later):
        // replicas differ by a few sequence numbers, not by windows.
        let created = bundle.body.created;
        if created > self.last_executed + self.cfg.window || created < self.oldest_live_bundle() {
            return;
        }
        self.pending.insert(
            d,
            PendingBundle {
                bundle,
                since: self.now,
                resent: false,
            },
        );
        self.pending_order.push_back(d);
        self.arm_timer();
    }

    /// After a view change every bundle not executed nor re-issued is proposable again,
    /// oldest first (see [`arrival_order`]).
    pub(crate) fn requeue_pending(&mut self) {
        let mut order: Vec<_> = self
            .pending
            .iter_mut()
            .map(|(d, p)| {
                p.resent = false;
                (arrival_order(p), *d)
            })
            .filter(|(_, d)| !self.in_flight.contains(d))
            .collect();
        order.sort_unstable();
        self.pending_order = order.into_iter().map(|(_, d)| d).collect();
    }

    /// A replica with work outstanding suspects the view after a timeout. The primary
    /// too: one that restarted may hold sequence numbers it can no longer complete, and
    /// backups that missed its NEW-VIEW never join it; only a new view unsticks both.
    ///
    /// The timer runs for one bundle, the oldest pending (Castro and Liskov's rule): it
    /// restarts when that bundle executes, not on any progress, so a primary that keeps
    /// executing other bundles while leaving one out is still suspected. An honest
    /// primary proposes oldest first, so the oldest executes within a round or two
    /// however long the queue behind it.
    ///
    /// Only a bundle made at or before this replica's last execution counts: no primary
    /// can order one made later before that point, so a gateway that claims a later
    /// point cannot make the view change again and again.
    pub(crate) fn arm_timer(&mut self) {
        if !self.normal || self.timer.is_some() {
            return;
        }
        let last = self.last_executed;
        self.timed = self
            .pending
            .iter()
            .filter(|(_, p)| p.bundle.body.created <= last)
            .min_by_key(|(d, p)| (p.since, **d))
            .map(|(d, _)| *d);
        if self.timed.is_some() {
            self.timer = Some(self.now + self.timeout());
        }
    }

    /// Whether the bundle the view timer runs for still waits.
    pub(crate) fn timed_bundle_waits(&self) -> bool {
        self.timed.is_some_and(|d| self.pending.contains_key(&d))
    }

    /// A bundle still not executed half-way to the view-change timeout goes to every
    /// replica once more (per view): the primary may have missed it, and backups that
    /// never saw it cannot suspect the primary (PBFT's client retransmission).
    pub(crate) fn resend_stale_bundles(&mut self, out: &mut Fx) {
        let (now, half) = (self.now, self.cfg.view_timeout / 2);
        let mut stale: Vec<_> = self
            .pending
            .values_mut()
            .filter(|p| !p.resent && now.since(p.since) >= half)
            .map(|p| {
                p.resent = true;
                (arrival_order(p), p.bundle.clone())
            })
            .collect();
        stale.sort_unstable_by_key(|(order, _)| *order);
        for (_, b) in stale {
            self.broadcast(Message::Bundle(b), out);
        }
    }

    /// The primary assigns sequence numbers to pending bundles while the window and the
    /// pipeline have room.
    pub(crate) fn try_propose(&mut self, out: &mut Fx) {
        if !self.normal || !self.is_primary() {
            return;
        }
        // A sequence number this view already assigned (a pre-prepare of this view is
        // in the log: one this replica issued before, or — for a Twins copy — its other
        // self's) is never assigned again.
        while self
            .log
            .get(&(self.next_seq + 1))
            .is_some_and(|s| s.pre_prepare.is_some())
        {
            self.next_seq += 1;
        }
        while self.next_seq < self.high_watermark()
            && self.next_seq < self.last_executed + self.cfg.max_inflight
        {
            let batch = self.cut_batch(self.next_seq + 1);
            if batch.is_null() {
                return;
            }
            self.next_seq += 1;
            self.issue_pre_prepare(self.next_seq, Arc::new(batch), out);
        }
    }

    /// The batch for `seq`: pending bundles oldest first, each executable there (one
    /// made at or after `seq` waits for a later batch; an expired one is left out).
    fn cut_batch(&mut self, seq: u64) -> Batch {
        let mut batch = Batch {
            clock_ms: self.batch_clock(),
            ..Batch::default()
        };
        let (mut requests, mut bytes) = (0, 0);
        let mut later = Vec::new();
        while requests < self.cfg.batch_max {
            let Some(d) = self.pending_order.pop_front() else {
                break;
            };
            let Some(p) = self.pending.get(&d) else {
                continue; // executed meanwhile
            };
            if p.bundle.body.created >= seq {
                later.push(d);
                continue;
            }
            if self.in_flight.contains(&d)
                || !p.bundle.body.executable_at(seq, self.cfg.bundle_horizon)
            {
                continue;
            }
            let size = p.bundle.body.size();
            if !batch.bundles.is_empty() && bytes + size > self.cfg.batch_max_bytes {
                later.push(d); // the next batch's first
                break;
            }
            requests += p.bundle.body.requests().len();
            bytes += size;
            batch.bundles.push(p.bundle.clone());
            self.in_flight.insert(d);
        }
        for d in later.into_iter().rev() {
            self.pending_order.push_front(d);
        }
        batch
    }

    /// Sign and send a pre-prepare, after the record that it was issued is durable (a
    /// restarted primary must not assign the sequence number again).
    pub(crate) fn issue_pre_prepare(&mut self, seq: u64, batch: Arc<Batch>, out: &mut Fx) {
        debug_assert!(
            self.log.get(&seq).is_none_or(|s| s.pre_prepare.is_none()),
            "{} would assign {seq} twice in view {}",
            self.cfg.id,
            self.view
        );
        let digests = batch.bundle_digests();
        let body = PrePrepare {
            view: self.view,
            seq,
            digest: Batch::digest_of(batch.clock_ms, &digests),
        };
        let header = self.keys.sign(body);
        self.install_pre_prepare(header, batch.clone(), &digests, out);
        self.broadcast_durable(Message::PrePrepare { header, batch }, out);
        self.stats.batches += 1;
    }

    /// Record an accepted pre-prepare durably and in the slot.
    /// `digests` are the batch's bundle digests, which the caller computed already.
    pub(crate) fn install_pre_prepare(
        &mut self,
        header: crate::message::Signed<PrePrepare>,
        batch: Arc<Batch>,
        digests: &[Digest],
        out: &mut Fx,
    ) {
        debug_assert_eq!(digests.len(), batch.bundles.len());
        let PrePrepare { view, seq, digest } = header.body;
        self.persist(Write::Accepted { view, seq, digest }, out);
        self.accepted.insert(seq, (view, digest));
        self.in_flight.extend(digests.iter().copied());
        self.observe(crate::evidence::Statement::of(&header), out);
        self.log.entry(seq).or_default().pre_prepare = Some((header, batch));
    }
}

/// The order pending bundles are proposed and sent again in: as they arrived, and a
/// gateway's own in the order it made them where they arrived together. Bundles sent
/// again arrive in bursts, and a client's requests executed out of order by more than
/// its session's window are refused as old (`normal_case.rs`).
fn arrival_order(p: &PendingBundle) -> (ekmat_core::Time, ekmat_core::NodeId, u64) {
    (p.since, p.bundle.body.gateway, p.bundle.body.nonce)
}
