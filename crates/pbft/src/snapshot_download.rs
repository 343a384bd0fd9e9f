//! Fetching a snapshot f+1 replicas vouch for (the serving side is in
//! `snapshot_transfer.rs`).
//!
//! The image comes from one voucher at a time, in chunks of `snapshot_chunk_bytes`,
//! up to [`WINDOW`] of them asked for at once. A chunk is taken only if it is exactly
//! one that was asked for, from the voucher asked, signed by it, with the bytes its
//! header names: memory stays bounded by the window, and a voucher cannot keep a
//! download alive by trickling bytes.
//!
//! A voucher whose oldest outstanding chunk is a fetch timeout late, or that sends
//! fewer than a window of chunks per fetch timeout on average, is replaced by the next
//! one; the bytes so far are kept (correct replicas' images are identical). Once every
//! voucher was late in turn, the download moves on to a newer snapshot if f+1 vouch
//! for one. The vouchers are those of the download's start (and any that vouch for
//! the same snapshot later): each is told, once per fetch timeout, that the snapshot
//! is still being fetched, so it keeps serving it after replacing it.
//!
//! The whole image is checked against the vouched digest. If it does not match, its
//! contributors are suspected, and it is fetched again from one voucher alone, start
//! to end: a wrong image from a single voucher proves that voucher wrong, and it is
//! not asked again. With at least one correct voucher among f+1, some attempt
//! succeeds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use ekmat_core::{NodeId, Time};

use crate::message::{Digest, Message};
use crate::replica::{Fx, Pbft};
use crate::snapshot::Snapshot;
use crate::snapshot_transfer::{ChunkRequest, SnapshotChunk, SnapshotOffer, SnapshotVouch};

/// Chunks asked for, or received ahead of the image, at once.
pub(crate) const WINDOW: usize = 8;

/// A snapshot being fetched.
#[derive(Clone, Debug)]
pub(crate) struct Download {
    /// What f+1 replicas vouched for.
    pub(crate) target: SnapshotVouch,
    /// Their vouches (with their stable checkpoints), kept for the whole download: a
    /// voucher that moves on to a newer snapshot still serves this one while asked.
    vouchers: BTreeMap<NodeId, Arc<SnapshotOffer>>,
    /// The voucher asked now, since when, and how many of its chunks arrived since.
    from: NodeId,
    turn: Time,
    turn_chunks: u64,
    /// The image's bytes received in order so far.
    image: Vec<u8>,
    /// Chunks received ahead of `image`, by offset.
    ahead: BTreeMap<u64, Bytes>,
    /// Chunks asked for and not received: offset → (length, when asked).
    asked: BTreeMap<u64, (u64, Time)>,
    /// The first offset not asked for yet.
    next: u64,
    /// Vouchers found late in turn since a chunk last arrived.
    late: usize,
    /// When the other vouchers were last told the snapshot is still being fetched.
    kept_alive: Time,
    /// Vouchers whose bytes are in `image`.
    contributors: BTreeSet<NodeId>,
    /// Vouchers that served a wrong image alone (proven), or part of one (suspected).
    failed: BTreeSet<NodeId>,
    suspects: BTreeSet<NodeId>,
    /// After a wrong image: each attempt takes the whole image from one voucher.
    solo: bool,
}

impl Pbft {
    /// A vouch from another replica: kept (the latest per sender) if it is ahead of this
    /// replica and signed by its sender; a download starts once f+1 agree.
    pub(crate) fn on_snapshot_offer(&mut self, offer: Arc<SnapshotOffer>, out: &mut Fx) {
        let vouch = offer.vouch;
        let newer = self
            .offers
            .get(&vouch.signer)
            .is_none_or(|o| o.vouch.body.seq < vouch.body.seq);
        if vouch.signer == self.cfg.id || vouch.body.seq <= self.last_executed || !newer {
            return; // its own, behind this replica, or not newer than this sender's last
        }
        if vouch.body.len < 8 {
            return; // no image is that short (its head alone is 8 bytes)
        }
        if !self.keys.verify(&vouch) {
            return self.reject_signature(out);
        }
        self.note_seen(vouch.signer, vouch.body.seq, 0);
        if let Some(d) = self.download.as_mut()
            && d.target == vouch.body
        {
            d.vouchers.insert(vouch.signer, offer.clone());
        }
        self.offers.insert(vouch.signer, offer);
        self.maybe_download(out);
    }

    /// The newest snapshot ahead of this replica that enough replicas vouch for: f+1,
    /// or one under the `TrustOneSnapshot` mutant.
    fn best_vouched(&self) -> Option<SnapshotVouch> {
        let needed = if self.cfg.mutant == crate::Mutant::TrustOneSnapshot {
            1
        } else {
            self.f() + 1
        };
        let mut counts: BTreeMap<(u64, Digest, u64), usize> = BTreeMap::new();
        for o in self.offers.values() {
            let b = o.vouch.body;
            if b.seq > self.last_executed {
                *counts.entry((b.seq, b.digest, b.len)).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .rev()
            .find(|(_, count)| *count >= needed)
            .map(|((seq, digest, len), _)| SnapshotVouch { seq, digest, len })
    }

    /// The vouches for `target`, in voucher id order.
    fn vouchers(&self, target: &SnapshotVouch) -> Vec<Arc<SnapshotOffer>> {
        self.offers
            .values()
            .filter(|o| o.vouch.body == *target)
            .cloned()
            .collect()
    }

    /// The voucher to ask after `after` (in id order, round), leaving out those proven
    /// wrong, and suspected ones while others are left.
    fn next_voucher(after: NodeId, d: &Download) -> Option<NodeId> {
        let all: Vec<NodeId> = d
            .vouchers
            .keys()
            .copied()
            .filter(|id| !d.failed.contains(id))
            .collect();
        let trusted: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|id| !d.suspects.contains(id))
            .collect();
        let pool = if trusted.is_empty() { all } else { trusted };
        pool.iter()
            .copied()
            .find(|id| *id > after)
            .or_else(|| pool.first().copied())
    }

    /// Start fetching the best-vouched snapshot, unless one is being fetched already.
    fn maybe_download(&mut self, out: &mut Fx) {
        if self
            .download
            .as_ref()
            .is_some_and(|d| d.target.seq > self.last_executed)
        {
            return;
        }
        self.download = None;
        let Some(target) = self.best_vouched() else {
            return;
        };
        let fresh = self.fresh_download(target);
        // Replicas behind start from different vouchers: the one after their own id.
        self.begin(fresh, self.cfg.id, out);
    }

    fn fresh_download(&self, target: SnapshotVouch) -> Download {
        Download {
            target,
            vouchers: self
                .vouchers(&target)
                .into_iter()
                .map(|o| (o.vouch.signer, o))
                .collect(),
            from: self.cfg.id,
            turn: self.now,
            turn_chunks: 0,
            image: Vec::new(),
            ahead: BTreeMap::new(),
            asked: BTreeMap::new(),
            next: 0,
            late: 0,
            kept_alive: self.now,
            contributors: BTreeSet::new(),
            failed: BTreeSet::new(),
            suspects: BTreeSet::new(),
            solo: false,
        }
    }

    /// Fetch `d`'s image from its start, from the voucher after `after`.
    fn begin(&mut self, mut d: Download, after: NodeId, out: &mut Fx) {
        let Some(from) = Self::next_voucher(after, &d) else {
            return;
        };
        d.from = from;
        d.turn = self.now;
        d.turn_chunks = 0;
        d.image.clear();
        d.ahead.clear();
        d.asked.clear();
        d.next = 0;
        d.contributors.clear();
        self.download = Some(d);
        self.counter("snapshot-download", out);
        self.ask_chunks(out);
    }

    /// Ask the voucher for chunks until the window is full.
    fn ask_chunks(&mut self, out: &mut Fx) {
        let (chunk, now) = (self.cfg.snapshot_chunk_bytes as u64, self.now);
        let Some(d) = self.download.as_mut() else {
            return;
        };
        let mut asks = Vec::new();
        while d.next < d.target.len && d.asked.len() + d.ahead.len() < WINDOW {
            let len = chunk.min(d.target.len - d.next);
            d.asked.insert(d.next, (len, now));
            asks.push(ChunkRequest {
                seq: d.target.seq,
                digest: d.target.digest,
                offset: d.next,
                len,
            });
            d.next += len;
        }
        let to = d.from;
        for body in asks {
            out.send(to, Message::SnapshotFetch(self.keys.sign(body)));
        }
    }

    /// On a tick: without a download, start one if f+1 vouch for a snapshot ahead.
    /// With one: keep the other vouchers serving it; replace a late voucher; once every
    /// voucher was late, move on to a newer snapshot if f+1 vouch for one; drop it once
    /// execution overtook it.
    pub(crate) fn check_download(&mut self, out: &mut Fx) {
        self.prune_served();
        let Some(d) = &self.download else {
            return self.maybe_download(out);
        };
        if d.target.seq <= self.last_executed {
            self.download = None;
            return;
        }
        self.keep_vouchers_serving(out);
        let d = self.download.as_ref().expect("checked");
        let timeout = self.cfg.fetch_timeout;
        let late = d
            .asked
            .values()
            .any(|(_, at)| self.now.since(*at) >= timeout);
        // At least a window's worth of chunks per fetch timeout, on average, or the
        // next voucher is asked: one answering just in time is replaced too.
        let allowed = timeout * (1 + (d.turn_chunks / WINDOW as u64) as u32);
        let slow = self.now.since(d.turn) >= allowed;
        if !late && !slow {
            return;
        }
        self.counter("snapshot-voucher-late", out);
        let target = d.target;
        if let Some(newer) = self.best_vouched().filter(|b| b.seq > target.seq)
            && late
            && d.late + 1 >= d.vouchers.len()
        {
            let fresh = self.fresh_download(newer);
            return self.begin(fresh, self.cfg.id, out);
        }
        let mut d = self.download.take().expect("checked");
        let from = d.from;
        d.late += usize::from(late);
        if d.solo {
            // It served no wrong image, but it did not serve this one either.
            d.suspects.insert(from);
            return self.begin(d, from, out);
        }
        // The bytes so far stay; what was asked is asked of the next voucher.
        d.from = Self::next_voucher(from, &d).unwrap_or(from);
        d.turn = self.now;
        d.turn_chunks = 0;
        d.next = d.image.len() as u64;
        d.asked.clear();
        d.ahead.clear();
        self.download = Some(d);
        self.ask_chunks(out);
    }

    /// Tell the vouchers not asked now, once per fetch timeout, that their snapshot is
    /// still being fetched (a request for no bytes), so they keep it when they replace it.
    fn keep_vouchers_serving(&mut self, out: &mut Fx) {
        let now = self.now;
        let Some(d) = self.download.as_mut() else {
            return;
        };
        if now.since(d.kept_alive) < self.cfg.fetch_timeout {
            return;
        }
        d.kept_alive = now;
        let (target, from) = (d.target, d.from);
        let others: Vec<NodeId> = d
            .vouchers
            .keys()
            .copied()
            .filter(|id| *id != from)
            .collect();
        let body = ChunkRequest {
            seq: target.seq,
            digest: target.digest,
            offset: 0,
            len: 0,
        };
        let signed = self.keys.sign(body);
        for to in others {
            out.send(to, Message::SnapshotFetch(signed));
        }
    }

    /// A chunk of the image being fetched: kept if it is exactly one asked for, from
    /// the voucher asked, as signed; then more is asked for, or the image checked.
    pub(crate) fn on_snapshot_chunk(&mut self, chunk: Arc<SnapshotChunk>, out: &mut Fx) {
        let h = chunk.header;
        let Some(d) = self.download.as_ref() else {
            return;
        };
        let wanted = (h.signer, h.body.seq, h.body.digest)
            == (d.from, d.target.seq, d.target.digest)
            && d.asked.get(&h.body.offset).map(|a| a.0) == Some(chunk.data.len() as u64);
        if !wanted {
            return; // stale, repeated, not asked for, or from a voucher no longer asked
        }
        if !chunk.data_matches() || !self.keys.verify(&h) {
            return self.reject_signature(out);
        }
        let d = self.download.as_mut().expect("checked");
        d.asked.remove(&h.body.offset);
        d.ahead.insert(h.body.offset, chunk.data.clone());
        d.contributors.insert(h.signer);
        d.late = 0;
        d.turn_chunks += 1;
        while let Some(data) = d.ahead.remove(&(d.image.len() as u64)) {
            d.image.extend_from_slice(&data);
        }
        if (d.image.len() as u64) < d.target.len {
            return self.ask_chunks(out);
        }
        let mut d = self.download.take().expect("checked");
        let image = Bytes::from(std::mem::take(&mut d.image));
        let target = d.target;
        match Snapshot::from_image(&image) {
            Some(s) if s.seq() == target.seq && s.digest() == target.digest => {
                if target.seq > self.last_executed {
                    let vouchers: Vec<_> = d.vouchers.values().cloned().collect();
                    self.install(Arc::new(s), &vouchers, out);
                }
            }
            _ => self.image_failed(d, out),
        }
    }

    /// The image does not match what f+1 vouched for: count it, blame its contributors
    /// (proven, if there was one), and fetch it again from one voucher alone.
    fn image_failed(&mut self, mut d: Download, out: &mut Fx) {
        self.counter("bad-snapshot", out);
        let contributors = std::mem::take(&mut d.contributors);
        if d.solo || contributors.len() == 1 {
            d.failed.extend(contributors);
        } else {
            d.suspects.extend(contributors);
        }
        d.solo = true;
        let from = d.from;
        self.begin(d, from, out);
    }
}
