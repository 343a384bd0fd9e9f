//! Ed25519 signing and verification, with a cache of signatures already verified and
//! batch verification when a message carries several.
//!
//! Every message is verified before the replica uses it; one that fails is dropped and
//! counted. A replica receives the same signed statement many times (a prepare alone, then
//! inside a prepared certificate, then inside a VIEW-CHANGE inside a NEW-VIEW), so the
//! cache keeps the expensive check to once per statement.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use ekmat_core::NodeId;
use sha2::{Digest as _, Sha256};

use crate::message::{Encode, Sig, Signed};

/// Entries the verified-signature cache holds before it starts over (a bound, so a
/// flood of distinct valid messages cannot grow memory without limit).
const CACHE_CAP: usize = 1 << 16;

/// Deterministic keys for validator `i` of a cluster named by `seed` (the simulator's
/// and the benchmark's; a real deployment generates keys and shares public ones).
pub fn derive_key(seed: u64, i: u32) -> SigningKey {
    derive_signing_key(b"ekmat-pbft-key", seed, &i.to_le_bytes())
}

/// A key from SHA-256 over a domain (so validators' and clients' keys never meet), a
/// seed and an index.
pub(crate) fn derive_signing_key(domain: &[u8], seed: u64, index: &[u8]) -> SigningKey {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(seed.to_le_bytes());
    h.update(index);
    SigningKey::from_bytes(&h.finalize().into())
}

/// The public keys of validators `0..n` derived from `seed`.
pub fn derive_public_keys(seed: u64, n: usize) -> Vec<VerifyingKey> {
    (0..n as u32)
        .map(|i| derive_key(seed, i).verifying_key())
        .collect()
}

/// One signature to check: who claims it, over which bytes. A validator's key is
/// looked up by `signer`; a client's (`key`) travels with the item.
pub struct SigItem {
    pub signer: NodeId,
    pub msg: Vec<u8>,
    pub sig: Sig,
    pub key: Option<VerifyingKey>,
}

impl SigItem {
    pub fn of<T: Encode>(s: &Signed<T>) -> SigItem {
        SigItem {
            signer: s.signer,
            msg: s.body.to_bytes(),
            sig: s.sig,
            key: None,
        }
    }

    /// A signature by a key that is not a validator's (a registered client's).
    pub fn by_key(key: VerifyingKey, msg: Vec<u8>, sig: Sig) -> SigItem {
        SigItem {
            signer: NodeId(u32::MAX),
            msg,
            sig,
            key: Some(key),
        }
    }
}

pub fn sign<T: Encode>(key: &SigningKey, signer: NodeId, body: T) -> Signed<T> {
    let sig = key.sign(&body.to_bytes()).to_bytes();
    Signed {
        body,
        signer,
        sig: Sig(sig),
    }
}

/// Check `items` against `keys`, without a cache: batch verification when there are
/// several. False if any signer is unknown or any signature fails.
pub fn verify_items(keys: &[VerifyingKey], items: &[SigItem]) -> bool {
    let mut pubs = Vec::with_capacity(items.len());
    for item in items {
        match item.key.as_ref().or_else(|| keys.get(item.signer.index())) {
            Some(k) => pubs.push(*k),
            None => return false,
        }
    }
    match items {
        [] => true,
        [one] => pubs[0]
            .verify_strict(&one.msg, &Signature::from_bytes(&one.sig.0))
            .is_ok(),
        _ => {
            let msgs: Vec<&[u8]> = items.iter().map(|i| i.msg.as_slice()).collect();
            let sigs: Vec<Signature> = items
                .iter()
                .map(|i| Signature::from_bytes(&i.sig.0))
                .collect();
            ed25519_dalek::verify_batch(&msgs, &sigs, &pubs).is_ok()
        }
    }
}

/// A validator's keys: everyone's public key, its own secret one, and the cache.
pub struct Keyring {
    id: NodeId,
    public: Vec<VerifyingKey>,
    secret: SigningKey,
    cache: BTreeSet<[u8; 32]>,
    /// The skip-signature-verification mutant: believe every signature.
    trust_all: bool,
    pub verified: u64,
    pub cache_hits: u64,
}

impl Keyring {
    pub fn new(id: NodeId, public: Vec<VerifyingKey>, secret: SigningKey) -> Keyring {
        Keyring {
            id,
            public,
            secret,
            cache: BTreeSet::new(),
            trust_all: false,
            verified: 0,
            cache_hits: 0,
        }
    }

    pub(crate) fn set_trust_all(&mut self, on: bool) {
        self.trust_all = on;
    }

    pub fn public_keys(&self) -> &[VerifyingKey] {
        &self.public
    }

    pub fn secret(&self) -> &SigningKey {
        &self.secret
    }

    pub fn sign<T: Encode>(&self, body: T) -> Signed<T> {
        sign(&self.secret, self.id, body)
    }

    pub fn verify<T: Encode>(&mut self, s: &Signed<T>) -> bool {
        self.verify_all(vec![SigItem::of(s)])
    }

    /// Verify `items` as one batch and remember them if all hold; if any fails,
    /// remember none (each is checked again, alone, where it is used, and the bad one
    /// rejected there). Items by unknown signers are left out.
    pub fn verify_ahead(&mut self, items: Vec<SigItem>) {
        let items: Vec<SigItem> = items
            .into_iter()
            .filter(|i| i.key.is_some() || self.public.get(i.signer.index()).is_some())
            .collect();
        if items.len() > 1 {
            self.verify_all(items);
        }
    }

    /// Verify every item (batch verification for those not cached); true if all hold.
    pub fn verify_all(&mut self, items: Vec<SigItem>) -> bool {
        if self.trust_all {
            return true;
        }
        let mut todo = Vec::with_capacity(items.len());
        let mut keys = Vec::with_capacity(items.len());
        for item in items {
            let key = cache_key(&item);
            if self.cache.contains(&key) {
                self.cache_hits += 1;
            } else {
                todo.push(item);
                keys.push(key);
            }
        }
        if !verify_items(&self.public, &todo) {
            return false;
        }
        self.verified += todo.len() as u64;
        if self.cache.len() + keys.len() > CACHE_CAP {
            self.cache.clear();
        }
        self.cache.extend(keys);
        true
    }
}

fn cache_key(item: &SigItem) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(item.signer.0.to_le_bytes());
    if let Some(key) = &item.key {
        h.update(key.as_bytes());
    }
    h.update(item.sig.0);
    h.update(&item.msg);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Commit;

    fn ring(i: u32) -> Keyring {
        Keyring::new(NodeId(i), derive_public_keys(7, 4), derive_key(7, i))
    }

    fn commit(seq: u64) -> Commit {
        Commit {
            view: 0,
            seq,
            digest: [seq as u8; 32],
        }
    }

    #[test]
    fn a_signature_verifies_once_then_hits_the_cache() {
        let mut r = ring(0);
        let s = ring(1).sign(commit(1));
        assert!(r.verify(&s));
        assert!(r.verify(&s));
        assert_eq!((r.verified, r.cache_hits), (1, 1));
    }

    #[test]
    fn a_cached_signature_does_not_vouch_for_other_bytes() {
        let mut r = ring(0);
        let s = ring(1).sign(commit(1));
        assert!(r.verify(&s));
        let mut forged = s;
        forged.body.seq = 2;
        assert!(!r.verify(&forged));
    }

    #[test]
    fn batch_verification_rejects_one_bad_signature_among_many() {
        let mut r = ring(0);
        let mut items: Vec<SigItem> = (1..4)
            .map(|i| SigItem::of(&ring(i).sign(commit(5))))
            .collect();
        assert!(verify_items(r.public_keys(), &items));
        items[1].sig.0[0] ^= 1;
        assert!(!r.verify_all(items));
    }

    #[test]
    fn an_unknown_signer_is_refused() {
        let mut r = ring(0);
        let mut s = ring(1).sign(commit(1));
        s.signer = NodeId(9);
        assert!(!r.verify(&s));
    }
}
