//! PBFT's messages (Castro & Liskov, TOCS'02 §4) and the one canonical encoding their
//! signatures and digests cover.
//!
//! Every message a replica sends is a [`Signed`] body. The encoding starts with a tag per
//! body type (domain separation), so a signature over a PREPARE can never be replayed as
//! a COMMIT with the same fields.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use ekmat_core::{NodeId, RequestId};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::certificate::QuorumCertificate;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// An ed25519 signature's 64 bytes (kept as bytes so messages are `Hash`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(pub [u8; 64]);

/// Serialized as a byte string (serde derives stop at 32-element arrays).
impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sig, D::Error> {
        struct SigVisitor;
        impl<'de> serde::de::Visitor<'de> for SigVisitor {
            type Value = Sig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a 64-byte ed25519 signature")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig, E> {
                let bytes: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Sig(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Sig, A::Error> {
                let mut bytes = [0u8; 64];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Sig(bytes))
            }
        }
        d.deserialize_bytes(SigVisitor)
    }
}

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig:{:02x}{:02x}", self.0[0], self.0[1])
    }
}

/// A body signed by `signer`. The signature covers `body.encode()` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signer: NodeId,
    pub sig: Sig,
}

/// The canonical encoding signatures and digests are computed over.
pub trait Encode {
    fn encode(&self, out: &mut Vec<u8>);

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out);
        out
    }
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl<T: Encode> Encode for Signed<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.body.encode(out);
        put_u64(out, self.signer.0 as u64);
        out.extend_from_slice(&self.sig.0);
    }
}

/// One client operation as a gateway received it. `op` is `None` for a linearizable
/// read, which is ordered like a write but changes nothing. `sig` is the client's own
/// signature (see [`crate::client`]): required of a registered client, so no gateway
/// can write in its name; absent for the others, whose requests stand on their
/// gateway's word.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RequestRepr", into = "RequestRepr")]
pub struct ClientRequest {
    pub id: RequestId,
    pub op: Option<Bytes>,
    pub sig: Option<Sig>,
}

impl ClientRequest {
    /// About the bytes it takes in a message: what batches and bundles are bounded by.
    pub fn size(&self) -> usize {
        24 + self.op.as_ref().map_or(0, Bytes::len) + if self.sig.is_some() { 64 } else { 0 }
    }
}

/// How a request is stored and sent. Postcard writes an enum's variant index as it
/// writes an `Option`'s tag (0 none, 1 some), so the first two variants read the
/// requests of logs written before clients signed (`id` then `Option<Bytes>`).
#[derive(Serialize, Deserialize)]
struct RequestRepr {
    id: RequestId,
    op: OpRepr,
}

#[derive(Serialize, Deserialize)]
enum OpRepr {
    Read,
    Write(Bytes),
    SignedRead(Sig),
    SignedWrite(Bytes, Sig),
}

impl From<RequestRepr> for ClientRequest {
    fn from(r: RequestRepr) -> ClientRequest {
        let (op, sig) = match r.op {
            OpRepr::Read => (None, None),
            OpRepr::Write(op) => (Some(op), None),
            OpRepr::SignedRead(sig) => (None, Some(sig)),
            OpRepr::SignedWrite(op, sig) => (Some(op), Some(sig)),
        };
        ClientRequest { id: r.id, op, sig }
    }
}

impl From<ClientRequest> for RequestRepr {
    fn from(r: ClientRequest) -> RequestRepr {
        let op = match (r.op, r.sig) {
            (None, None) => OpRepr::Read,
            (Some(op), None) => OpRepr::Write(op),
            (None, Some(sig)) => OpRepr::SignedRead(sig),
            (Some(op), Some(sig)) => OpRepr::SignedWrite(op, sig),
        };
        RequestRepr { id: r.id, op }
    }
}

/// Marks a signed request's length field in [`Bundle::requests_digest`] (no request is
/// 2^62 bytes long), so an unsigned request hashes as it always did and no signed one
/// can hash like an unsigned one.
const SIGNED: u64 = 1 << 62;

/// Requests a gateway collected and vouches for with one signature: one signature
/// check per bundle, not per request, is what lets batching pay off.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bundle {
    pub gateway: NodeId,
    /// Distinguishes two bundles of the same gateway with equal contents.
    pub nonce: u64,
    /// The last sequence number the gateway had executed when it made the bundle. The
    /// bundle executes only at a later sequence number, and at most the bundle horizon
    /// past this one ([`Bundle::executable_at`]), so replicas need to remember an
    /// executed bundle only that long to execute it at most once.
    pub created: u64,
    /// Private so a change to them also forgets their memoised digest.
    requests: Vec<ClientRequest>,
    #[serde(skip)]
    requests_digest: DigestMemo,
}

/// A bundle's requests digest, computed on first use: a bundle is hashed for its
/// signature, its pending-queue key, every batch digest it is part of and its quorum
/// certificate, and rehashing its requests each time was a quarter of a loaded
/// member's CPU. It is a function of the requests, so it takes no part in equality.
#[derive(Clone, Default)]
struct DigestMemo(std::sync::OnceLock<Digest>);

impl PartialEq for DigestMemo {
    fn eq(&self, _: &DigestMemo) -> bool {
        true
    }
}

impl Eq for DigestMemo {}

impl std::hash::Hash for DigestMemo {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl fmt::Debug for DigestMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("..")
    }
}

/// How many sequence numbers past its `created` point a bundle can still execute
/// (`PbftConfig::bundle_horizon`'s default). An honest primary orders a bundle within a
/// window or two of it; a gateway whose bundle outlived it bundles the requests again.
pub const BUNDLE_HORIZON: u64 = 1024;

/// A bundle's signature and digest cover its requests through their SHA-256 (as
/// collision-resistant a binding as the bytes themselves): the requests are hashed once
/// per use, streamed, never copied, and ed25519's own SHA-512 runs over a short header
/// instead of every request again.
impl Encode for Bundle {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(2);
        put_u64(out, self.gateway.0 as u64);
        put_u64(out, self.nonce);
        put_u64(out, self.created);
        put_u64(out, self.requests.len() as u64);
        out.extend_from_slice(&self.requests_digest());
    }
}

impl Bundle {
    pub fn new(gateway: NodeId, nonce: u64, created: u64, requests: Vec<ClientRequest>) -> Bundle {
        Bundle {
            gateway,
            nonce,
            created,
            requests,
            requests_digest: DigestMemo::default(),
        }
    }

    pub fn requests(&self) -> &[ClientRequest] {
        &self.requests
    }

    /// Its requests' [`ClientRequest::size`]s, summed.
    pub fn size(&self) -> usize {
        self.requests.iter().map(ClientRequest::size).sum()
    }

    /// The requests to change (tests and adversaries): the digest is computed afresh.
    pub fn requests_mut(&mut self) -> &mut Vec<ClientRequest> {
        self.requests_digest = DigestMemo::default();
        &mut self.requests
    }

    /// Whether the bundle may execute at `seq`: after the point it was made at, and
    /// within `horizon` of it. Every correct replica decides this alike, from the
    /// sequence number alone.
    pub fn executable_at(&self, seq: u64, horizon: u64) -> bool {
        self.created < seq && seq - self.created <= horizon
    }

    /// SHA-256 over the requests' canonical encoding: per request its client, its
    /// number, and its bytes with their length (u64::MAX for a read); a signed
    /// request's length has the `SIGNED` bit set (a read's is u64::MAX - 1), and its
    /// signature follows.
    pub fn requests_digest(&self) -> Digest {
        *self.requests_digest.0.get_or_init(|| self.hash_requests())
    }

    fn hash_requests(&self) -> Digest {
        let mut h = Sha256::new();
        for r in &self.requests {
            h.update(r.id.client.to_le_bytes());
            h.update(r.id.seq.to_le_bytes());
            let signed = r.sig.is_some();
            match &r.op {
                Some(op) => {
                    let len = op.len() as u64 | if signed { SIGNED } else { 0 };
                    h.update(len.to_le_bytes());
                    h.update(op);
                }
                None if signed => h.update((u64::MAX - 1).to_le_bytes()),
                None => h.update(u64::MAX.to_le_bytes()),
            }
            if let Some(sig) = &r.sig {
                h.update(sig.0);
            }
        }
        h.finalize().into()
    }
}

/// What the primary orders at one sequence number: whole signed bundles, and the time
/// they execute at (see `clock.rs`). An empty batch is PBFT's null request.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Batch {
    pub bundles: Vec<Arc<Signed<Bundle>>>,
    /// The agreed clock for this batch, in ms since the Unix epoch (0 for null batches
    /// and for hosts that give the replica no wall clock).
    pub clock_ms: u64,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requests: usize = self.bundles.iter().map(|b| b.body.requests().len()).sum();
        write!(
            f,
            "batch[{} bundles, {requests} requests, clock {} ms]",
            self.bundles.len(),
            self.clock_ms
        )
    }
}

impl Batch {
    /// Its bundles' [`Bundle::size`]s, summed: what batches are bounded by.
    pub fn size(&self) -> usize {
        self.bundles.iter().map(|b| b.body.size()).sum()
    }

    /// The digest a pre-prepare names: over every bundle with its signature, and the
    /// clock (so replicas that agree on the batch agree on its time).
    pub fn digest(&self) -> Digest {
        Batch::digest_of(self.clock_ms, &self.bundle_digests())
    }

    /// Each bundle's digest, in order (each hashes the bundle's requests once).
    pub fn bundle_digests(&self) -> Vec<Digest> {
        self.bundles.iter().map(|b| bundle_digest(b)).collect()
    }

    /// The batch digest from its clock and its bundles' digests.
    pub fn digest_of(clock_ms: u64, bundle_digests: &[Digest]) -> Digest {
        let mut h = Sha256::new();
        h.update([2u8]);
        h.update(clock_ms.to_le_bytes());
        for d in bundle_digests {
            h.update(d);
        }
        h.finalize().into()
    }

    pub fn is_null(&self) -> bool {
        self.bundles.is_empty()
    }

    pub fn requests(&self) -> impl Iterator<Item = (&Signed<Bundle>, &ClientRequest)> {
        self.bundles
            .iter()
            .flat_map(|b| b.body.requests().iter().map(move |r| (&**b, r)))
    }
}

/// Identifies a bundle (with its signature) in pending queues and batch digests.
pub fn bundle_digest(b: &Signed<Bundle>) -> Digest {
    sha256(&b.to_bytes())
}

/// [`bundle_digest`] of the bundle `item` was made from, from the bytes it already
/// holds (the body's encoding, then the signer and the signature, as `Signed` encodes).
pub fn signed_digest(item: &crate::crypto::SigItem) -> Digest {
    let mut h = Sha256::new();
    h.update(&item.msg);
    h.update((item.signer.0 as u64).to_le_bytes());
    h.update(item.sig.0);
    h.finalize().into()
}

/// PRE-PREPARE ⟨v, n, d⟩: the primary assigns digest `d` to sequence number `n` in view `v`.
/// The batch travels beside the signed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PrePrepare {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
}

/// PREPARE ⟨v, n, d, i⟩. It carries the primary's pre-prepare signature, so a replica
/// that was sent a different pre-prepare for the same (v, n) holds two conflicting
/// signed statements of the primary — evidence within one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prepare {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub primary_sig: Sig,
}

/// COMMIT ⟨v, n, d, i⟩.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Commit {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
}

/// CHECKPOINT ⟨n, d, i⟩: `digest` chains the digests of every batch executed up to `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub digest: Digest,
}

impl Encode for PrePrepare {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(3);
        put_u64(out, self.view);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
    }
}

impl Encode for Prepare {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(4);
        put_u64(out, self.view);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.primary_sig.0);
    }
}

impl Encode for Commit {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(5);
        put_u64(out, self.view);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
    }
}

impl Encode for Checkpoint {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(6);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
    }
}

/// 2f+1 matching signed checkpoints: the proof that `seq` is stable. Sequence 0 (the
/// initial state) needs no signatures.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CheckpointProof {
    pub seq: u64,
    pub digest: Digest,
    pub sigs: Vec<Signed<Checkpoint>>,
}

/// A prepared certificate: the pre-prepare, its batch, and 2f matching prepares from
/// distinct backups. A VIEW-CHANGE carries one per sequence number above the stable
/// checkpoint the sender prepared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PreparedCert {
    pub pre_prepare: Signed<PrePrepare>,
    pub batch: Arc<Batch>,
    pub prepares: Vec<Signed<Prepare>>,
}

/// VIEW-CHANGE ⟨v+1, n, C, P, i⟩.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ViewChange {
    pub new_view: u64,
    pub checkpoint: CheckpointProof,
    pub prepared: Vec<PreparedCert>,
}

/// NEW-VIEW ⟨v+1, V, O⟩: the view-changes the new primary used and the pre-prepares it
/// re-issues (null ones for gaps), which every replica recomputes before accepting.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewView {
    pub view: u64,
    pub view_changes: Vec<Arc<Signed<ViewChange>>>,
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

/// A lagging replica asks for the committed batches from `from` on, and (if it is in an
/// older view) for the NEW-VIEW that installed the responder's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fetch {
    pub from: u64,
    pub view: u64,
}

/// Committed batches, each with the quorum certificate that proves it committed: the
/// receiver needs nothing but the validators' public keys to check them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    pub entries: Vec<(Arc<Batch>, QuorumCertificate)>,
}

impl Encode for CheckpointProof {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.seq);
        out.extend_from_slice(&self.digest);
        put_u64(out, self.sigs.len() as u64);
        for s in &self.sigs {
            s.encode(out);
        }
    }
}

impl Encode for PreparedCert {
    fn encode(&self, out: &mut Vec<u8>) {
        self.pre_prepare.encode(out);
        out.extend_from_slice(&self.batch.digest());
        put_u64(out, self.prepares.len() as u64);
        for p in &self.prepares {
            p.encode(out);
        }
    }
}

impl Encode for ViewChange {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(7);
        put_u64(out, self.new_view);
        self.checkpoint.encode(out);
        put_u64(out, self.prepared.len() as u64);
        for p in &self.prepared {
            p.encode(out);
        }
    }
}

impl Encode for NewView {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(8);
        put_u64(out, self.view);
        put_u64(out, self.view_changes.len() as u64);
        for v in &self.view_changes {
            v.encode(out);
        }
        put_u64(out, self.pre_prepares.len() as u64);
        for p in &self.pre_prepares {
            p.encode(out);
        }
    }
}

impl Encode for Fetch {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(9);
        put_u64(out, self.from);
        put_u64(out, self.view);
    }
}

impl Encode for Transfer {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(10);
        put_u64(out, self.entries.len() as u64);
        for (batch, qc) in &self.entries {
            out.extend_from_slice(&batch.digest());
            qc.encode(out);
        }
    }
}

/// Everything replicas send each other.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Message {
    /// A gateway's requests, sent to every replica (so backups can watch the primary).
    Bundle(Arc<Signed<Bundle>>),
    PrePrepare {
        header: Signed<PrePrepare>,
        batch: Arc<Batch>,
    },
    Prepare(Signed<Prepare>),
    Commit(Signed<Commit>),
    Checkpoint(Signed<Checkpoint>),
    ViewChange(Arc<Signed<ViewChange>>),
    NewView(Arc<Signed<NewView>>),
    Fetch(Signed<Fetch>),
    Transfer(Arc<Signed<Transfer>>),
    /// A vouch for the sender's snapshot, for a replica that asked for batches the
    /// sender no longer holds.
    SnapshotOffer(Arc<crate::snapshot_transfer::SnapshotOffer>),
    /// A request for part of a vouched-for snapshot's image.
    SnapshotFetch(Signed<crate::snapshot_transfer::ChunkRequest>),
    /// Part of a snapshot's image.
    SnapshotChunk(Arc<crate::snapshot_transfer::SnapshotChunk>),
    /// A client's signed request, sent to a validator that is to be its gateway. The
    /// one message a validator takes from a non-validator.
    Request(ClientRequest),
}

impl Message {
    /// The view a normal-case message belongs to (for buffering early arrivals).
    pub fn normal_case_view(&self) -> Option<u64> {
        match self {
            Message::PrePrepare { header, .. } => Some(header.body.view),
            Message::Prepare(p) => Some(p.body.view),
            Message::Commit(c) => Some(c.body.view),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::Bundle(_) => "bundle",
            Message::PrePrepare { .. } => "pre-prepare",
            Message::Prepare(_) => "prepare",
            Message::Commit(_) => "commit",
            Message::Checkpoint(_) => "checkpoint",
            Message::ViewChange(_) => "view-change",
            Message::NewView(_) => "new-view",
            Message::Fetch(_) => "fetch",
            Message::Transfer(_) => "transfer",
            Message::SnapshotOffer(_) => "snapshot-offer",
            Message::SnapshotFetch(_) => "snapshot-fetch",
            Message::SnapshotChunk(_) => "snapshot-chunk",
            Message::Request(_) => "request",
        }
    }
}
