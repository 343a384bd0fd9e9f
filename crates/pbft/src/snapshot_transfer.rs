//! Sending a snapshot to a replica behind: vouches first, then the bytes from one
//! voucher, in chunks.
//!
//! A replica that asks for batches a peer dropped behind its snapshot gets that peer's
//! signed *vouch*: "my state after `seq` has digest `digest`, and its image is `len`
//! bytes" (with the peer's stable checkpoint). Vouches are small, so every peer sends
//! one. Once f+1 replicas (so at least one correct one) vouch for the same snapshot,
//! the replica behind downloads its image from one of them, a chunk at a time, asking
//! for a few chunks ahead: one copy crosses the network, not n−1, and a store of any
//! size fits in messages of `snapshot_chunk_bytes`.
//!
//! Chunks are signed by their sender over a header holding their SHA-256, and the
//! whole image is checked against the vouched digest before anything is installed
//! (see `snapshot_download.rs` for the fetching side). A replica keeps serving a
//! snapshot it replaced while a replica behind still fetches it, so a store that
//! takes longer to send than replicas take to snapshot again is still sent whole.

use std::sync::Arc;

use bytes::Bytes;
use ekmat_core::{NodeId, Time};
use serde::{Deserialize, Serialize};

use crate::message::{CheckpointProof, Digest, Encode, Message, Signed, put_u64, sha256};
use crate::replica::{Fx, Pbft};
use crate::snapshot::Snapshot;

/// "My state after `seq` has digest `digest`; its image is `len` bytes", signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotVouch {
    pub seq: u64,
    pub digest: Digest,
    pub len: u64,
}

impl Encode for SnapshotVouch {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(11);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
        put_u64(out, self.len);
    }
}

/// A vouch for the sender's snapshot, sent to a replica that asked for batches the
/// sender no longer holds, with the sender's stable checkpoint (so the receiver's
/// watermarks can move with the snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotOffer {
    pub vouch: Signed<SnapshotVouch>,
    pub stable: CheckpointProof,
}

/// "Send me exactly `len` bytes of the image of the snapshot vouched for as (`seq`,
/// `digest`) from `offset`" (fewer only where the image ends). `len` 0: "I am still
/// fetching it; keep it".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRequest {
    pub seq: u64,
    pub digest: Digest,
    pub offset: u64,
    pub len: u64,
}

impl Encode for ChunkRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(13);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
        put_u64(out, self.offset);
        put_u64(out, self.len);
    }
}

/// What a chunk's signature covers: where its bytes belong, and their SHA-256 (so the
/// signature runs over a short header, not the bytes again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkHeader {
    pub seq: u64,
    pub digest: Digest,
    pub offset: u64,
    pub data: Digest,
}

impl Encode for ChunkHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(14);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
        put_u64(out, self.offset);
        out.extend_from_slice(&self.data);
    }
}

/// Bytes of a snapshot's image, signed by the voucher that sent them: a wrong image is
/// then provably its sender's, whatever the transport claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub header: Signed<ChunkHeader>,
    pub data: Bytes,
}

impl SnapshotChunk {
    /// Whether `data` is what the header says (the signature is checked apart).
    pub fn data_matches(&self) -> bool {
        sha256(&self.data) == self.header.body.data
    }
}

/// The largest chunk a replica sends: well inside the transport's 64 MiB frame.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;

/// A replaced snapshot stays servable while replicas keep asking for it, for at most
/// this many fetch timeouts since the last ask, and at most this many at once.
const RETAIN_FETCHES: u32 = 4;
const RETAIN_MAX: usize = 2;

/// A snapshot this replica replaced but still serves to a replica fetching it.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    snapshot: Arc<Snapshot>,
    vouch: SnapshotVouch,
    head: Bytes,
    asked: Time,
}

impl Pbft {
    /// The vouch for the own snapshot, signed (and its digest computed) the first time
    /// it is needed.
    pub fn own_vouch(&mut self) -> Option<Signed<SnapshotVouch>> {
        let own = self.own_snapshot.as_mut()?;
        if own.vouch.is_none() {
            let head = own.snapshot.image_head();
            let body = SnapshotVouch {
                seq: own.snapshot.seq(),
                digest: own.snapshot.digest_with(&head),
                len: (head.len() + own.snapshot.app.len()) as u64,
            };
            own.vouch = Some((self.keys.sign(body), head));
        }
        own.vouch.as_ref().map(|(vouch, _)| *vouch)
    }

    /// The own snapshot is being replaced: if replicas were sent its vouch, keep serving
    /// it while they still ask.
    pub(crate) fn retire_own_snapshot(&mut self) {
        let Some(own) = self.own_snapshot.take() else {
            return;
        };
        if let Some((vouch, head)) = own.vouch {
            self.serving.push(Served {
                snapshot: own.snapshot,
                vouch: vouch.body,
                head,
                asked: self.now,
            });
        }
        self.prune_served();
    }

    pub(crate) fn prune_served(&mut self) {
        let (now, keep) = (self.now, self.cfg.fetch_timeout * RETAIN_FETCHES);
        self.serving.retain(|s| now.since(s.asked) < keep);
        // The least recently asked for go first.
        self.serving.sort_by_key(|s| std::cmp::Reverse(s.asked));
        self.serving.truncate(RETAIN_MAX);
    }

    /// The offer for a replica that asked for batches from `from` on, if this replica
    /// dropped them behind its snapshot.
    pub(crate) fn offer_for(&mut self, from: u64) -> Option<Arc<SnapshotOffer>> {
        let seq = self.own_snapshot.as_ref()?.snapshot.seq();
        let held_from = self.executed.keys().next().copied().unwrap_or(u64::MAX);
        if from >= held_from || from > seq {
            return None;
        }
        let vouch = self.own_vouch()?;
        Some(Arc::new(SnapshotOffer {
            vouch,
            stable: self.stable.clone(),
        }))
    }

    /// Serve a chunk of the own snapshot's image, or of one replaced but still fetched
    /// (a request for no bytes only keeps it).
    /// `link`: the replica the request came from, whose serve budget it spends.
    pub(crate) fn on_chunk_request(
        &mut self,
        link: NodeId,
        req: Signed<ChunkRequest>,
        out: &mut Fx,
    ) {
        if !self.keys.verify(&req) {
            return self.reject_signature(out);
        }
        let r = req.body;
        let Some((head, app, len)) = self.servable(r.seq, r.digest) else {
            return; // a snapshot this replica no longer holds
        };
        if r.len == 0 || r.offset >= len || r.len > MAX_CHUNK_BYTES as u64 {
            return;
        }
        let sent = r.len.min(len - r.offset);
        if !self.within_serve_budget(link, sent, out) {
            return;
        }
        let data = image_slice(&head, &app, r.offset, r.len as usize);
        let header = ChunkHeader {
            seq: r.seq,
            digest: r.digest,
            offset: r.offset,
            data: sha256(&data),
        };
        let chunk = SnapshotChunk {
            header: self.keys.sign(header),
            data,
        };
        out.send(req.signer, Message::SnapshotChunk(Arc::new(chunk)));
    }

    /// The image (head, state machine bytes, length) of a snapshot this replica serves.
    fn servable(&mut self, seq: u64, digest: Digest) -> Option<(Bytes, Bytes, u64)> {
        if self.own_snapshot.as_ref()?.snapshot.seq() == seq {
            let vouch = self.own_vouch()?;
            let own = self.own_snapshot.as_ref()?;
            let (_, head) = own.vouch.as_ref()?;
            return (vouch.body.digest == digest)
                .then(|| (head.clone(), own.snapshot.app.clone(), vouch.body.len));
        }
        let now = self.now;
        let served = self
            .serving
            .iter_mut()
            .find(|s| (s.vouch.seq, s.vouch.digest) == (seq, digest))?;
        served.asked = now;
        Some((
            served.head.clone(),
            served.snapshot.app.clone(),
            served.vouch.len,
        ))
    }
}

/// Up to `max` bytes of the image `head ++ app` from `offset`. A chunk within the
/// store's bytes is a slice of them, not a copy.
pub fn image_slice(head: &Bytes, app: &Bytes, offset: u64, max: usize) -> Bytes {
    let (offset, max) = (offset as usize, max.max(1));
    let end = (offset + max).min(head.len() + app.len());
    if offset >= head.len() {
        return app.slice(offset - head.len()..end - head.len());
    }
    if end <= head.len() {
        return head.slice(offset..end);
    }
    let mut out = head[offset..].to_vec();
    out.extend_from_slice(&app[..end - head.len()]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_of_any_size_put_the_image_back_together() {
        let head = Bytes::from_static(b"0123456789");
        let app = Bytes::from((0u8..=200).collect::<Vec<u8>>());
        let whole: Vec<u8> = head.iter().chain(app.iter()).copied().collect();
        for max in [1, 3, 7, 10, 11, 64, 1000] {
            let mut image = Vec::new();
            while image.len() < whole.len() {
                let chunk = image_slice(&head, &app, image.len() as u64, max);
                assert!(!chunk.is_empty() && chunk.len() <= max, "max {max}");
                image.extend_from_slice(&chunk);
            }
            assert_eq!(image, whole, "max {max}");
        }
        assert!(image_slice(&head, &app, whole.len() as u64, 8).is_empty());
    }
}
