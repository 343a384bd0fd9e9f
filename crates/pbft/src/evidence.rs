//! Evidence of misbehaviour, self-contained bytes anyone can check. Two kinds, told
//! apart by the first byte:
//!
//! - **Equivocation** (0): two statements a replica signed for the same (view,
//!   sequence) that name different digests. Either one alone is legitimate; the pair
//!   proves the signer Byzantine, to anyone holding the validators' public keys, with
//!   nothing else. `0 | signer | len a | a | sig a | len b | b | sig b`, where `a` and
//!   `b` are the canonical encodings of two PRE-PREPAREs, PREPAREs or COMMITs (each
//!   begins `tag | view | seq | digest`).
//! - **Forged request** (1): a bundle its gateway signed that holds a request in a
//!   registered client's name without that client's valid signature for this cluster
//!   (or a signature on an unregistered client's request, which has none). A correct
//!   gateway checks every request before it bundles it, so the bundle proves its
//!   gateway Byzantine to anyone holding the validators' keys and the client registry
//!   (which every member is configured with alike: the runtime refuses a peer whose
//!   registry differs). `1 | postcard(signed bundle)`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ed25519_dalek::{Signature, VerifyingKey};
use ekmat_core::NodeId;

use crate::client::{ClientRegistry, ClusterId, client_sig_items};
use crate::crypto::{SigItem, verify_items};
use crate::message::{Bundle, Digest, Encode, Sig, Signed};

const EQUIVOCATION: u8 = 0;
const FORGED_REQUEST: u8 = 1;

/// One signed normal-case statement, as evidence needs it.
#[derive(Clone, Debug)]
pub struct Statement {
    pub signer: NodeId,
    pub bytes: Vec<u8>,
    pub sig: Sig,
}

/// Tag, view and sequence of an encoded statement; its digest.
type Slot = (u8, u64, u64);

fn parse(bytes: &[u8]) -> Option<(Slot, Digest)> {
    let tag = *bytes.first()?;
    if !(3..=5).contains(&tag) || bytes.len() < 49 {
        return None;
    }
    let view = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
    let seq = u64::from_le_bytes(bytes[9..17].try_into().ok()?);
    let digest: Digest = bytes[17..49].try_into().ok()?;
    Some(((tag, view, seq), digest))
}

impl Statement {
    pub fn of<T: Encode>(s: &Signed<T>) -> Statement {
        Statement {
            signer: s.signer,
            bytes: s.body.to_bytes(),
            sig: s.sig,
        }
    }
}

/// Encode two conflicting statements of one signer as a proof.
pub fn proof(a: &Statement, b: &Statement) -> Bytes {
    debug_assert_eq!(a.signer, b.signer);
    let mut out = Vec::with_capacity(a.bytes.len() + b.bytes.len() + 160);
    out.push(EQUIVOCATION);
    out.extend_from_slice(&a.signer.0.to_le_bytes());
    for s in [a, b] {
        out.extend_from_slice(&(s.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&s.bytes);
        out.extend_from_slice(&s.sig.0);
    }
    Bytes::from(out)
}

/// Why a proof does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceError {
    Malformed,
    UnknownSigner,
    BadSignature,
    /// The statements are for different slots or name the same digest.
    NoConflict,
    /// Every request in the bundle is signed as its client's.
    NoForgery,
}

/// A bundle `proof`'s gateway signed that holds a forged client request.
pub fn forged_request_proof(bundle: &Signed<Bundle>) -> Bytes {
    let mut out = vec![FORGED_REQUEST];
    out.extend(postcard::to_stdvec(bundle).expect("a bundle encodes"));
    Bytes::from(out)
}

/// What a proof is checked against: the validators' keys, and the registered clients
/// of the cluster their requests are signed for.
#[derive(Clone, Copy)]
pub struct Judge<'a> {
    pub validators: &'a [VerifyingKey],
    pub clients: &'a ClientRegistry,
    pub cluster: &'a ClusterId,
}

impl Judge<'_> {
    /// Check a proof; on success, the replica it convicts and what of.
    pub fn verify(&self, proof: &[u8]) -> Result<(NodeId, &'static str), EvidenceError> {
        match proof.split_first() {
            Some((&EQUIVOCATION, rest)) => {
                verify_equivocation(rest, self.validators).map(|n| (n, "equivocation"))
            }
            Some((&FORGED_REQUEST, rest)) => self
                .verify_forged_request(rest)
                .map(|n| (n, "forged-client-request")),
            _ => Err(EvidenceError::Malformed),
        }
    }

    fn verify_forged_request(&self, bytes: &[u8]) -> Result<NodeId, EvidenceError> {
        let bundle: Signed<Bundle> =
            postcard::from_bytes(bytes).map_err(|_| EvidenceError::Malformed)?;
        let gateway = bundle.body.gateway;
        if bundle.signer != gateway {
            return Err(EvidenceError::BadSignature);
        }
        if self.validators.get(gateway.index()).is_none() {
            return Err(EvidenceError::UnknownSigner);
        }
        if !verify_items(self.validators, &[SigItem::of(&bundle)]) {
            return Err(EvidenceError::BadSignature);
        }
        // Each client signature alone, so the verdict never depends on what it was
        // batch-verified with.
        let forged = match client_sig_items(self.clients, self.cluster, bundle.body.requests()) {
            None => true,
            Some(items) => items.into_iter().any(|i| !verify_items(&[], &[i])),
        };
        if forged {
            Ok(gateway)
        } else {
            Err(EvidenceError::NoForgery)
        }
    }
}

/// The sequence number a proof's misbehaviour is anchored at: the conflicting
/// statements' (an equivocation), or the point a forged bundle says it was made at.
/// `None` for bytes that are no proof. A re-admission pardons what is anchored at or
/// before it (`readmission.rs`).
pub fn anchor(proof: &[u8]) -> Option<u64> {
    match proof.split_first()? {
        (&EQUIVOCATION, rest) => {
            let len = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
            let (slot, _) = parse(rest.get(8..8usize.checked_add(len)?)?)?;
            Some(slot.2)
        }
        (&FORGED_REQUEST, rest) => {
            let bundle: Signed<Bundle> = postcard::from_bytes(rest).ok()?;
            Some(bundle.body.created)
        }
        _ => None,
    }
}

/// Check an equivocation proof (after its kind byte); the replica it convicts.
fn verify_equivocation(proof: &[u8], keys: &[VerifyingKey]) -> Result<NodeId, EvidenceError> {
    let take = |at: &mut usize, len: usize| -> Result<&[u8], EvidenceError> {
        let s = proof.get(*at..*at + len).ok_or(EvidenceError::Malformed)?;
        *at += len;
        Ok(s)
    };
    let mut at = 0;
    let signer = NodeId(u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap()));
    let key = keys
        .get(signer.index())
        .ok_or(EvidenceError::UnknownSigner)?;
    let mut parsed = Vec::new();
    for _ in 0..2 {
        let len = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap()) as usize;
        let body = take(&mut at, len)?;
        let sig: [u8; 64] = take(&mut at, 64)?.try_into().unwrap();
        key.verify_strict(body, &Signature::from_bytes(&sig))
            .map_err(|_| EvidenceError::BadSignature)?;
        parsed.push(parse(body).ok_or(EvidenceError::Malformed)?);
    }
    let ((slot_a, d_a), (slot_b, d_b)) = (parsed[0], parsed[1]);
    if at != proof.len() {
        return Err(EvidenceError::Malformed);
    }
    if slot_a != slot_b || d_a == d_b {
        return Err(EvidenceError::NoConflict);
    }
    Ok(signer)
}

/// What a replica has seen each replica sign, per slot, to notice conflicts; and the
/// record of who was convicted (the slashing record).
#[derive(Default)]
pub struct EvidenceLog {
    seen: BTreeMap<(Slot, NodeId), (Digest, Statement)>,
    reported: BTreeSet<(Slot, NodeId)>,
    pub convicted: BTreeMap<NodeId, u64>,
}

impl EvidenceLog {
    /// Record a verified statement; a proof if it conflicts with one seen before (each
    /// slot and signer reported once).
    pub fn observe(&mut self, s: Statement) -> Option<Bytes> {
        let (slot, digest) = parse(&s.bytes)?;
        let key = (slot, s.signer);
        match self.seen.get(&key) {
            None => {
                self.seen.insert(key, (digest, s));
                None
            }
            Some((d, _)) if *d == digest => None,
            Some((_, first)) => {
                if !self.reported.insert(key) {
                    return None;
                }
                *self.convicted.entry(s.signer).or_default() += 1;
                Some(proof(first, &s))
            }
        }
    }

    /// Forget slots at or below `seq` (garbage collection at a stable checkpoint).
    pub fn forget_through(&mut self, seq: u64) {
        self.seen.retain(|((_, _, s), _), _| *s > seq);
        self.reported.retain(|((_, _, s), _)| *s > seq);
    }
}

/// A proof's verdict with no clients registered (equivocation proofs need none).
#[cfg(test)]
pub(crate) fn verify(proof: &[u8], keys: &[VerifyingKey]) -> Result<NodeId, EvidenceError> {
    let judge = Judge {
        validators: keys,
        clients: &ClientRegistry::new(),
        cluster: &[0; 32],
    };
    judge.verify(proof).map(|(convict, _)| convict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{derive_key, derive_public_keys, sign};
    use crate::message::{Commit, PrePrepare};

    fn pp(digest: u8) -> Statement {
        let body = PrePrepare {
            view: 1,
            seq: 9,
            digest: [digest; 32],
        };
        Statement::of(&sign(&derive_key(3, 1), NodeId(1), body))
    }

    #[test]
    fn two_pre_prepares_for_one_slot_convict_their_signer() {
        let mut log = EvidenceLog::default();
        assert!(log.observe(pp(1)).is_none());
        assert!(log.observe(pp(1)).is_none(), "a repeat is no conflict");
        let proof = log.observe(pp(2)).expect("conflict");
        assert_eq!(verify(&proof, &derive_public_keys(3, 4)), Ok(NodeId(1)));
        assert!(log.observe(pp(3)).is_none(), "reported once");
        assert_eq!(log.convicted[&NodeId(1)], 1);
    }

    #[test]
    fn a_tampered_or_unrelated_pair_proves_nothing() {
        let keys = derive_public_keys(3, 4);
        let mut p = proof(&pp(1), &pp(2)).to_vec();
        p[10] ^= 1;
        assert_eq!(verify(&p, &keys), Err(EvidenceError::BadSignature));
        assert_eq!(
            verify(&proof(&pp(1), &pp(1)), &keys),
            Err(EvidenceError::NoConflict)
        );
        let other = Commit {
            view: 1,
            seq: 9,
            digest: [2; 32],
        };
        let c = Statement::of(&sign(&derive_key(3, 1), NodeId(1), other));
        assert_eq!(
            verify(&proof(&pp(1), &c), &keys),
            Err(EvidenceError::NoConflict)
        );
    }
}
