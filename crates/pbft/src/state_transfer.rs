//! State transfer: a replica that fell behind (a crash, a partition, a lost message)
//! fetches committed batches from the others. Each comes with its quorum certificate,
//! so the receiver trusts no single sender: it checks 2f+1 commit signatures and the
//! batch digest, nothing else. A replica stuck in an older view is sent the NEW-VIEW
//! that installed the responder's view, which it validates like any other. A replica
//! asking for batches the responder dropped behind its snapshot is sent a vouch for the
//! snapshot (see `snapshot_transfer.rs`), and the batches after it.

use std::sync::Arc;

use ekmat_core::{NodeId, Time};

use crate::message::{Fetch, Message, Signed, Transfer};
use crate::replica::{Fx, Pbft};

/// Batches per transfer message.
const TRANSFER_MAX: usize = 64;
/// Transfers one replica is sent per fetch timeout at most: a correct one asks once.
const FETCHES_PER_PERIOD: u32 = 4;
/// Snapshot bytes one replica is sent per fetch timeout at most, in chunks of the
/// configured size: eight times what a download asks at once (it keeps eight chunks
/// asked, and replaces a voucher that sends fewer than eight per fetch timeout). With
/// the runtime's 1 MiB chunks and 300 ms fetch timeout, about 200 MB/s per replica.
const CHUNKS_PER_PERIOD: u64 = 8 * crate::snapshot_download::WINDOW as u64;
/// Or this many bytes if more: tiny chunks must not make a download crawl.
pub(crate) const SERVE_FLOOR_BYTES: u64 = 1 << 20;

/// What this replica sent in answer to one other replica's requests since `since`: a
/// faulty replica asking for the same batches or chunks again and again (its own, or
/// others' replayed) costs it a bounded share of its time and bandwidth, not all of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeBudget {
    since: Time,
    fetches: u32,
    chunk_bytes: u64,
}

impl ServeBudget {
    fn starting(since: Time) -> ServeBudget {
        ServeBudget {
            since,
            fetches: 0,
            chunk_bytes: 0,
        }
    }
}

impl Pbft {
    /// The highest sequence number and view that f+1 replicas (so at least one correct
    /// one) were seen working on.
    pub(crate) fn reached_by_f_plus_1(&self) -> (u64, u64) {
        let mut seqs: Vec<u64> = self.seen.values().map(|s| s.0).collect();
        let mut views: Vec<u64> = self.seen.values().map(|s| s.1).collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        views.sort_unstable_by(|a, b| b.cmp(a));
        let k = self.f();
        (
            seqs.get(k).copied().unwrap_or(0),
            views.get(k).copied().unwrap_or(0),
        )
    }

    pub(crate) fn maybe_fetch(&mut self, out: &mut Fx) {
        let (seq, view) = self.reached_by_f_plus_1();
        let view_behind = view > self.view || (view == self.view && !self.normal);
        if seq <= self.last_executed && !view_behind {
            self.behind_since = None;
            // Caught up by batches: snapshots offered meanwhile are of no more use.
            let executed = self.last_executed;
            self.offers.retain(|_, o| o.vouch.body.seq > executed);
            return;
        }
        let since = *self.behind_since.get_or_insert(self.now);
        let waited = self.now.since(since) >= self.cfg.fetch_timeout;
        let rested = self
            .last_fetch
            .is_none_or(|t| self.now.since(t) >= self.cfg.fetch_timeout);
        if waited && rested {
            self.last_fetch = Some(self.now);
            let body = Fetch {
                from: self.last_executed + 1,
                view: self.view,
            };
            self.counter("fetch", out);
            self.broadcast(Message::Fetch(self.keys.sign(body)), out);
        }
    }

    /// Whether `to` may be sent one more transfer (`chunk_bytes` 0) or a snapshot chunk
    /// of `chunk_bytes`; counted if so, counted as `over-serve-budget` if not.
    pub(crate) fn within_serve_budget(
        &mut self,
        to: NodeId,
        chunk_bytes: u64,
        out: &mut Fx,
    ) -> bool {
        let (now, period) = (self.now, self.cfg.fetch_timeout);
        let chunk_limit = self.chunk_serve_budget();
        let b = self
            .serve_budgets
            .entry(to)
            .or_insert(ServeBudget::starting(now));
        if now.since(b.since) >= period {
            *b = ServeBudget::starting(now);
        }
        let within = if chunk_bytes == 0 {
            b.fetches < FETCHES_PER_PERIOD
        } else {
            b.chunk_bytes + chunk_bytes <= chunk_limit
        };
        if !within {
            self.counter("over-serve-budget", out);
            return false;
        }
        if chunk_bytes == 0 {
            b.fetches += 1;
        } else {
            b.chunk_bytes += chunk_bytes;
        }
        true
    }

    /// Snapshot bytes one replica may be sent per fetch timeout.
    pub(crate) fn chunk_serve_budget(&self) -> u64 {
        (CHUNKS_PER_PERIOD * self.cfg.snapshot_chunk_bytes as u64).max(SERVE_FLOOR_BYTES)
    }

    /// `link`: the replica the fetch came from, whose budget it spends (not its
    /// signer's: a replica replaying another's fetches spends its own).
    pub(crate) fn on_fetch(&mut self, link: NodeId, f: Signed<Fetch>, out: &mut Fx) {
        if !self.keys.verify(&f) {
            return self.reject_signature(out);
        }
        if !self.within_serve_budget(link, 0, out) {
            return;
        }
        if let Some(offer) = self.offer_for(f.body.from) {
            out.send(f.signer, Message::SnapshotOffer(offer));
        }
        let entries: Vec<_> = self
            .executed
            .range(f.body.from..)
            .take(TRANSFER_MAX)
            .map(|(_, e)| e.clone())
            .collect();
        if !entries.is_empty() {
            let t = self.keys.sign(Transfer { entries });
            self.send_durable(f.signer, Message::Transfer(Arc::new(t)), out);
        }
        if f.body.view < self.view
            && self.normal
            && let Some(nv) = self.last_new_view.clone()
        {
            self.send_durable(f.signer, Message::NewView(nv), out);
        }
    }

    pub(crate) fn on_transfer(&mut self, t: Arc<Signed<Transfer>>, out: &mut Fx) {
        if !self.keys.verify(&*t) {
            return self.reject_signature(out);
        }
        let quorum = self.quorum();
        for (batch, qc) in &t.body.entries {
            let useful = qc.seq > self.last_executed && !self.transfers.contains_key(&qc.seq);
            if !useful {
                continue;
            }
            if batch.digest() != qc.digest || !qc.verify_cached(&mut self.keys, quorum) {
                self.reject_signature(out);
                return;
            }
            self.stats.fetched += 1;
            self.transfers
                .insert(qc.seq, (batch.clone(), qc.clone(), false));
        }
    }
}
