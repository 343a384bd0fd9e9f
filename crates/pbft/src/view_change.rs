//! View changes (TOCS'02 §4.4): a backup that suspects the primary moves to view v+1
//! and sends VIEW-CHANGE with its stable checkpoint proof and its prepared certificates.
//! The new primary gathers 2f+1 of them and sends NEW-VIEW with the pre-prepares it
//! re-issues: for each sequence number between the highest stable checkpoint and the
//! highest prepared one, the batch of the prepared certificate of the highest view, or a
//! null request. Every replica recomputes those pre-prepares from the same view-changes
//! before accepting, so a Byzantine new primary can neither drop nor alter a batch that
//! may have committed.
//!
//! Liveness: the timeout doubles per consecutive failed view (up to 8x) and resets on
//! progress; a replica that sees f+1 replicas ask for later views joins the smallest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ekmat_core::Event;

use crate::certificate::{checkpoint_proof_valid, prepared_cert_valid};
use crate::config::Mutant;
use crate::crypto::SigItem;
use crate::durable::Write;
use crate::message::{
    Batch, CheckpointProof, Message, NewView, PrePrepare, PreparedCert, Signed, ViewChange,
};
use crate::replica::{Fx, Pbft, primary_of};

/// What a NEW-VIEW re-issues: one pre-prepare body and batch per sequence number.
type Reissue = Vec<(PrePrepare, Arc<Batch>)>;

impl Pbft {
    pub(crate) fn start_view_change(&mut self, target: u64, out: &mut Fx) {
        let target = self.first_view_not_led_by_excluded(target);
        if target <= self.view && !(target == self.view && self.normal) {
            return;
        }
        self.step_down_if_primary(out);
        self.view = target;
        self.normal = false;
        self.log.clear();
        self.in_flight.clear();
        self.failed_views += 1;
        self.timer = None;
        self.stats.view_changes += 1;
        self.counter("view-change", out);
        out.event(Event::Campaign {
            term: target,
            pre_vote: false,
        });
        self.persist(
            Write::View {
                view: target,
                normal: false,
            },
            out,
        );
        self.send_own_pending_to_primary(out);
        self.send_own_view_change(out);
        self.start_timer_on_quorum();
        self.try_new_view(out);
    }

    /// Sign (once per view) and send this replica's VIEW-CHANGE for the view it is
    /// changing to; sent again while no NEW-VIEW comes, since messages get lost.
    pub(crate) fn send_own_view_change(&mut self, out: &mut Fx) {
        let target = self.view;
        let mine = self
            .view_changes
            .get(&target)
            .and_then(|m| m.get(&self.cfg.id))
            .cloned();
        let vc = mine.unwrap_or_else(|| {
            let body = ViewChange {
                new_view: target,
                checkpoint: self.stable.clone(),
                prepared: self.prepared_certs.values().cloned().collect(),
            };
            Arc::new(self.keys.sign(body))
        });
        self.view_changes
            .entry(target)
            .or_default()
            .insert(self.cfg.id, vc.clone());
        self.last_vc_sent = Some(self.now);
        self.broadcast_durable(Message::ViewChange(vc), out);
    }

    /// The NEW-VIEW timer starts only once 2f+1 replicas want the view or a later one
    /// (TOCS'02 §4.5.2): a replica alone in suspecting the primary must not race ahead
    /// through views the others will never join. Counting later views too matters when
    /// a replica is silent: one that gave up on this view no longer repeats its
    /// VIEW-CHANGE for it, and if that was lost, the rest would never reach 2f+1 for it.
    fn start_timer_on_quorum(&mut self) {
        let wanted: BTreeSet<_> = self
            .view_changes
            .range(self.view..)
            .flat_map(|(_, m)| m.keys())
            .collect();
        if !self.normal && self.timer.is_none() && wanted.len() >= self.quorum() {
            self.timer = Some(self.now + self.timeout());
        }
    }

    /// While changing views, repeat the VIEW-CHANGE now and then: messages get lost, and
    /// a new primary that restarted has forgotten the ones it had.
    pub(crate) fn repeat_view_change(&mut self, out: &mut Fx) {
        let due = self
            .last_vc_sent
            .is_none_or(|t| self.now.since(t) >= self.cfg.view_timeout);
        if !self.normal && due {
            self.send_own_view_change(out);
        }
    }

    /// A view-change is valid if signed, and its checkpoint proof and every prepared
    /// certificate (above the checkpoint, inside its window) hold.
    fn view_change_valid(&mut self, vc: &Signed<ViewChange>) -> bool {
        let (n, quorum, window) = (self.n(), self.quorum(), self.cfg.window);
        let cp = vc.body.checkpoint.seq;
        let mut seqs = BTreeSet::new();
        let certs_ok = vc.body.prepared.iter().all(|c| {
            let pp = c.pre_prepare.body;
            pp.view < vc.body.new_view
                && pp.seq > cp
                && pp.seq <= cp + window
                && seqs.insert(pp.seq)
                && prepared_cert_valid(c, &mut self.keys, n, quorum)
        });
        certs_ok
            && self.keys.verify(vc)
            && checkpoint_proof_valid(&vc.body.checkpoint, &mut self.keys, quorum)
    }

    pub(crate) fn on_view_change(&mut self, vc: Arc<Signed<ViewChange>>, out: &mut Fx) {
        let target = vc.body.new_view;
        if target < self.view || (target == self.view && self.normal) {
            return self.help_laggard(&vc, out);
        }
        if self
            .view_changes
            .get(&target)
            .is_some_and(|m| m.contains_key(&vc.signer))
        {
            return;
        }
        if !self.view_change_valid(&vc) {
            return self.reject_signature(out);
        }
        self.view_changes
            .entry(target)
            .or_default()
            .insert(vc.signer, vc);
        self.join_if_f_plus_1_ahead(out);
        self.start_timer_on_quorum();
        self.try_new_view(out);
    }

    /// A replica still asking for a view this one saw installed missed its NEW-VIEW.
    /// Any replica passes it on (it carries its own proof), even one that has since
    /// moved on: otherwise replicas split between a view whose NEW-VIEW they missed and
    /// the next, each side too few to install its own, wait for each other for ever
    /// whenever one replica is silent.
    ///
    /// Only for a signed VIEW-CHANGE, and once per signer per view timeout: a NEW-VIEW is
    /// large, and a Byzantine replica must not make every replica send it again and
    /// again to whomever it names.
    fn help_laggard(&mut self, vc: &Signed<ViewChange>, out: &mut Fx) {
        let Some(nv) = self.last_new_view.clone() else {
            return;
        };
        let rested = self
            .helped
            .get(&vc.signer)
            .is_none_or(|t| self.now.since(*t) >= self.cfg.view_timeout);
        if nv.body.view < vc.body.new_view || !rested || !self.keys.verify(vc) {
            return;
        }
        self.helped.insert(vc.signer, self.now);
        self.send_durable(vc.signer, Message::NewView(nv), out);
    }

    /// f+1 replicas want later views: at least one correct one suspects the primary.
    fn join_if_f_plus_1_ahead(&mut self, out: &mut Fx) {
        let mut wanted: BTreeMap<crate::NodeId, u64> = BTreeMap::new();
        for (&v, vcs) in self.view_changes.range(self.view + 1..) {
            for &who in vcs.keys() {
                wanted.entry(who).or_insert(v);
            }
        }
        if wanted.len() > self.f()
            && let Some(&smallest) = wanted.values().min()
        {
            self.start_view_change(smallest, out);
        }
    }

    fn try_new_view(&mut self, out: &mut Fx) {
        if self.normal || primary_of(self.view, self.n()) != self.cfg.id {
            return;
        }
        let Some(vcs) = self.view_changes.get(&self.view) else {
            return;
        };
        if vcs.len() < self.quorum() || !vcs.contains_key(&self.cfg.id) {
            return;
        }
        let mut chosen: Vec<_> = vec![vcs[&self.cfg.id].clone()];
        chosen.extend(vcs.values().filter(|v| v.signer != self.cfg.id).cloned());
        chosen.truncate(self.quorum());
        let (checkpoint, reissue) = compute_new_view(&chosen);
        let pre_prepares = reissue.iter().map(|(pp, _)| self.keys.sign(*pp)).collect();
        let nv = NewView {
            view: self.view,
            view_changes: chosen,
            pre_prepares,
        };
        let nv = Arc::new(self.keys.sign(nv));
        self.enter_view(nv.clone(), checkpoint, reissue, out);
        self.broadcast_durable(Message::NewView(nv), out);
    }

    pub(crate) fn on_new_view(&mut self, nv: Arc<Signed<NewView>>, out: &mut Fx) {
        let view = nv.body.view;
        if view < self.view || (view == self.view && self.normal) {
            return;
        }
        let checked = if self.cfg.mutant == Mutant::AcceptUnverifiedNewView {
            Some(trusting_new_view(&nv))
        } else {
            self.new_view_valid(&nv)
        };
        let Some((checkpoint, reissue)) = checked else {
            self.stats.rejected_new_views += 1;
            self.counter("rejected-new-view", out);
            return;
        };
        self.enter_view(nv, checkpoint, reissue, out);
    }

    /// Check every view-change in the NEW-VIEW, recompute the pre-prepares, and compare
    /// them with those sent. `None` if anything is off.
    fn new_view_valid(&mut self, nv: &Signed<NewView>) -> Option<(CheckpointProof, Reissue)> {
        let view = nv.body.view;
        let primary = primary_of(view, self.n());
        if nv.signer != primary || !self.keys.verify(nv) {
            return None;
        }
        let mut signers = BTreeSet::new();
        for vc in &nv.body.view_changes {
            let fresh = vc.body.new_view == view && signers.insert(vc.signer);
            if !fresh || !self.view_change_valid(vc) {
                return None;
            }
        }
        if signers.len() < self.quorum() {
            return None;
        }
        let (checkpoint, reissue) = compute_new_view(&nv.body.view_changes);
        let sent: Vec<PrePrepare> = nv.body.pre_prepares.iter().map(|p| p.body).collect();
        let expected: Vec<PrePrepare> = reissue.iter().map(|(p, _)| *p).collect();
        let signed_by_primary = nv.body.pre_prepares.iter().all(|p| p.signer == primary);
        let items = nv.body.pre_prepares.iter().map(SigItem::of).collect();
        (sent == expected && signed_by_primary && self.keys.verify_all(items))
            .then_some((checkpoint, reissue))
    }

    /// Enter the view a valid NEW-VIEW installs: adopt its checkpoint if later than
    /// ours, accept its pre-prepares (preparing them, as a backup), and replay the
    /// messages of this view that arrived early.
    fn enter_view(
        &mut self,
        nv: Arc<Signed<NewView>>,
        checkpoint: CheckpointProof,
        reissue: Reissue,
        out: &mut Fx,
    ) {
        let view = nv.body.view;
        // A replica that joins without having changed views itself has not yet sent
        // the new primary its own bundles.
        let skipped_change = self.view < view;
        if skipped_change {
            self.step_down_if_primary(out);
        }
        self.view = view;
        self.normal = true;
        self.log.clear();
        self.in_flight.clear();
        self.timer = None;
        self.stats.new_views += 1;
        self.persist(Write::View { view, normal: true }, out);
        self.make_stable(checkpoint, out);
        let headers: BTreeMap<u64, Signed<PrePrepare>> = nv
            .body
            .pre_prepares
            .iter()
            .map(|p| (p.body.seq, *p))
            .collect();
        let mut last = self.stable.seq;
        for (pp, batch) in reissue {
            last = last.max(pp.seq);
            let Some(header) = headers.get(&pp.seq).copied() else {
                continue;
            };
            if !self.in_window(pp.seq) {
                continue;
            }
            let digests = batch.bundle_digests();
            self.install_pre_prepare(header, batch, &digests, out);
            if !self.is_primary() {
                self.send_prepare(&header, out);
            }
        }
        self.next_seq = last.max(self.last_executed);
        self.last_new_view = Some(nv);
        self.view_changes.retain(|v, _| *v > view);
        if self.is_primary() {
            out.event(Event::BecameLeader { term: view });
        }
        self.replay_future(out);
        let seqs: Vec<u64> = self.log.keys().copied().collect();
        for seq in seqs {
            self.check_prepared(seq, out);
        }
        self.requeue_pending();
        if skipped_change {
            self.send_own_pending_to_primary(out);
        }
        self.arm_timer();
        self.try_propose(out);
    }
}

/// The NEW-VIEW computation both the new primary and every validator perform: the
/// highest stable checkpoint among the view-changes, and per sequence number above it
/// up to the highest prepared one, the certificate of the highest view (its batch), or a
/// null request.
pub(crate) fn compute_new_view(vcs: &[Arc<Signed<ViewChange>>]) -> (CheckpointProof, Reissue) {
    let view = vcs.first().map_or(0, |v| v.body.new_view);
    let checkpoint = vcs
        .iter()
        .map(|v| &v.body.checkpoint)
        .max_by_key(|c| c.seq)
        .cloned()
        .unwrap_or_default();
    let mut best: BTreeMap<u64, &PreparedCert> = BTreeMap::new();
    for cert in vcs.iter().flat_map(|v| &v.body.prepared) {
        let pp = cert.pre_prepare.body;
        if pp.seq <= checkpoint.seq {
            continue;
        }
        let better = best.get(&pp.seq).is_none_or(|b| {
            let cur = b.pre_prepare.body;
            (pp.view, std::cmp::Reverse(pp.digest)) > (cur.view, std::cmp::Reverse(cur.digest))
        });
        if better {
            best.insert(pp.seq, cert);
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(checkpoint.seq);
    let null = Arc::new(Batch::default());
    let reissue = (checkpoint.seq + 1..=max_s)
        .map(|seq| {
            let batch = best.get(&seq).map_or(null.clone(), |c| c.batch.clone());
            let body = PrePrepare {
                view,
                seq,
                digest: batch.digest(),
            };
            (body, batch)
        })
        .collect();
    (checkpoint, reissue)
}

/// The mutant's NEW-VIEW handling: take the pre-prepares as sent, with whatever batches
/// the view-changes happen to carry (a null request for any other digest).
fn trusting_new_view(nv: &Signed<NewView>) -> (CheckpointProof, Reissue) {
    let (checkpoint, _) = compute_new_view(&nv.body.view_changes);
    let batches: BTreeMap<_, _> = nv
        .body
        .view_changes
        .iter()
        .flat_map(|v| &v.body.prepared)
        .map(|c| (c.pre_prepare.body.digest, c.batch.clone()))
        .collect();
    let reissue = nv
        .body
        .pre_prepares
        .iter()
        .filter_map(|p| {
            let null = Arc::new(Batch::default());
            let batch = batches.get(&p.body.digest).cloned().unwrap_or(null);
            (batch.digest() == p.body.digest).then_some((p.body, batch))
        })
        .collect();
    (checkpoint, reissue)
}
