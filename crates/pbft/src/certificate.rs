//! Certificates: sets of signed statements that prove something to anyone holding the
//! validators' public keys.
//!
//! - [`QuorumCertificate`]: 2f+1 COMMIT signatures over (view, sequence, batch digest) —
//!   the batch committed. A client or a lagging replica checks it with [`QuorumCertificate::verify`].
//! - prepared certificates and checkpoint proofs, checked by the `*_valid` functions when
//!   they arrive inside VIEW-CHANGE messages.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use ekmat_core::NodeId;

use crate::crypto::{Keyring, SigItem, verify_items};
use crate::message::{
    Checkpoint, CheckpointProof, Commit, Digest, Encode, PreparedCert, Sig, Signed, put_u64,
};

/// 2f+1 commit signatures over one (view, seq, digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct QuorumCertificate {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub sigs: Vec<(NodeId, Sig)>,
}

/// Why a quorum certificate is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertError {
    /// Fewer distinct signers than the quorum.
    Insufficient { have: usize, need: usize },
    /// One validator's signature counted twice.
    Duplicate(NodeId),
    /// A signer that is not a validator.
    UnknownValidator(NodeId),
    /// A signature that does not verify (forged, or by another validator's key).
    BadSignature,
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertError::Insufficient { have, need } => {
                write!(f, "{have} distinct signatures, {need} needed")
            }
            CertError::Duplicate(n) => write!(f, "{n} signed twice"),
            CertError::UnknownValidator(n) => write!(f, "{n} is not a validator"),
            CertError::BadSignature => write!(f, "a signature does not verify"),
        }
    }
}

impl std::error::Error for CertError {}

impl QuorumCertificate {
    pub fn statement(&self) -> Commit {
        Commit {
            view: self.view,
            seq: self.seq,
            digest: self.digest,
        }
    }

    /// Build from matching signed commits (the caller checked they match and verify).
    pub fn from_commits<'a>(
        statement: Commit,
        commits: impl IntoIterator<Item = &'a Signed<Commit>>,
    ) -> QuorumCertificate {
        let sigs = commits
            .into_iter()
            .inspect(|c| debug_assert_eq!(c.body, statement, "certificate of mixed commits"))
            .map(|c| (c.signer, c.sig))
            .collect();
        QuorumCertificate {
            view: statement.view,
            seq: statement.seq,
            digest: statement.digest,
            sigs,
        }
    }

    /// Valid iff `quorum` distinct validators among `keys` signed the commit statement.
    pub fn verify(&self, keys: &[VerifyingKey], quorum: usize) -> Result<(), CertError> {
        let mut seen = BTreeSet::new();
        for (signer, _) in &self.sigs {
            if signer.index() >= keys.len() {
                return Err(CertError::UnknownValidator(*signer));
            }
            if !seen.insert(*signer) {
                return Err(CertError::Duplicate(*signer));
            }
        }
        if seen.len() < quorum {
            return Err(CertError::Insufficient {
                have: seen.len(),
                need: quorum,
            });
        }
        if verify_items(keys, &self.items()) {
            Ok(())
        } else {
            Err(CertError::BadSignature)
        }
    }

    /// [`QuorumCertificate::verify`] through a replica's signature cache.
    pub fn verify_cached(&self, keys: &mut Keyring, quorum: usize) -> bool {
        let mut seen = BTreeSet::new();
        let distinct = self.sigs.iter().all(|(s, _)| seen.insert(*s));
        distinct && seen.len() >= quorum && keys.verify_all(self.items())
    }

    fn items(&self) -> Vec<SigItem> {
        let msg = self.statement().to_bytes();
        self.sigs
            .iter()
            .map(|(signer, sig)| SigItem {
                signer: *signer,
                msg: msg.clone(),
                sig: *sig,
                key: None,
            })
            .collect()
    }
}

impl Encode for QuorumCertificate {
    fn encode(&self, out: &mut Vec<u8>) {
        self.statement().encode(out);
        put_u64(out, self.sigs.len() as u64);
        for (signer, sig) in &self.sigs {
            put_u64(out, signer.0 as u64);
            out.extend_from_slice(&sig.0);
        }
    }
}

/// A checkpoint proof is valid if `quorum` distinct replicas signed the same
/// (seq, digest); the initial state (seq 0) needs none.
pub fn checkpoint_proof_valid(p: &CheckpointProof, keys: &mut Keyring, quorum: usize) -> bool {
    if p.seq == 0 {
        return p.sigs.is_empty() && p.digest == Digest::default();
    }
    let statement = Checkpoint {
        seq: p.seq,
        digest: p.digest,
    };
    let mut signers = BTreeSet::new();
    let matching = p
        .sigs
        .iter()
        .all(|s| s.body == statement && signers.insert(s.signer));
    matching && signers.len() >= quorum && keys.verify_all(p.sigs.iter().map(SigItem::of).collect())
}

/// A prepared certificate is valid if the primary of its view signed the pre-prepare,
/// the batch matches its digest, and `quorum - 1` distinct backups signed matching
/// prepares (2f of them for n = 3f+1).
pub fn prepared_cert_valid(c: &PreparedCert, keys: &mut Keyring, n: usize, quorum: usize) -> bool {
    let pp = &c.pre_prepare.body;
    let primary = crate::primary_of(pp.view, n);
    if c.pre_prepare.signer != primary || c.batch.digest() != pp.digest {
        return false;
    }
    let mut backups = BTreeSet::new();
    let matching = c.prepares.iter().all(|p| {
        p.body.view == pp.view
            && p.body.seq == pp.seq
            && p.body.digest == pp.digest
            && p.signer != primary
            && backups.insert(p.signer)
    });
    if !matching || backups.len() + 1 < quorum {
        return false;
    }
    let mut items = vec![SigItem::of(&c.pre_prepare)];
    items.extend(c.prepares.iter().map(SigItem::of));
    keys.verify_all(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{derive_key, derive_public_keys, sign};

    const SEED: u64 = 11;

    fn statement() -> Commit {
        Commit {
            view: 2,
            seq: 40,
            digest: [7; 32],
        }
    }

    fn qc(signers: &[u32]) -> QuorumCertificate {
        let commits: Vec<_> = signers
            .iter()
            .map(|&i| sign(&derive_key(SEED, i), NodeId(i), statement()))
            .collect();
        QuorumCertificate::from_commits(statement(), &commits)
    }

    fn keys() -> Vec<VerifyingKey> {
        derive_public_keys(SEED, 4)
    }

    #[test]
    fn a_quorum_of_commit_signatures_verifies() {
        assert_eq!(qc(&[0, 1, 3]).verify(&keys(), 3), Ok(()));
    }

    #[test]
    fn a_forged_signature_is_rejected() {
        let mut c = qc(&[0, 1, 3]);
        c.sigs[2].1 = Sig([0x42; 64]);
        assert_eq!(c.verify(&keys(), 3), Err(CertError::BadSignature));
        let mut c = qc(&[0, 1, 3]);
        c.digest[0] ^= 1; // the signatures are over another batch
        assert_eq!(c.verify(&keys(), 3), Err(CertError::BadSignature));
    }

    #[test]
    fn a_duplicated_signature_is_rejected() {
        let mut c = qc(&[0, 1]);
        c.sigs.push(c.sigs[1]);
        assert_eq!(c.verify(&keys(), 3), Err(CertError::Duplicate(NodeId(1))));
    }

    #[test]
    fn too_few_signatures_are_rejected() {
        assert_eq!(
            qc(&[0, 1]).verify(&keys(), 3),
            Err(CertError::Insufficient { have: 2, need: 3 })
        );
    }

    #[test]
    fn a_signature_under_the_wrong_validator_is_rejected() {
        // Validator 2's signature presented as validator 3's.
        let mut c = qc(&[0, 1, 2]);
        c.sigs[2].0 = NodeId(3);
        assert_eq!(c.verify(&keys(), 3), Err(CertError::BadSignature));
        // A signer outside the validator set.
        let mut c = qc(&[0, 1, 2]);
        c.sigs[2].0 = NodeId(4);
        assert_eq!(
            c.verify(&keys(), 3),
            Err(CertError::UnknownValidator(NodeId(4)))
        );
    }
}

/// A committed batch's certificate as a client outside the cluster reads it (JSON, hex
/// digests and signatures): the quorum certificate, and the digests of the batch's
/// bundles, which the certified digest covers. `ekmat pbft verify` checks one with the
/// validators' public keys alone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchCertificate {
    pub view: u64,
    pub seq: u64,
    /// SHA-256 over the clock and the bundle digests: what the COMMITs signed.
    pub digest: String,
    /// The time the batch executed at, in ms since the Unix epoch (certified).
    pub clock_ms: u64,
    pub commits: Vec<CommitSignature>,
    pub bundles: Vec<BundleDigest>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitSignature {
    pub validator: u32,
    pub signature: String,
}

/// A bundle's digest, with its gateway and request count as the member reports them
/// (only the digest is certified).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BundleDigest {
    pub gateway: u32,
    pub requests: usize,
    pub digest: String,
}

/// What a valid [`BatchCertificate`] shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedBatch {
    pub view: u64,
    pub seq: u64,
    pub clock_ms: u64,
    pub signers: Vec<NodeId>,
    pub bundles: usize,
}

impl BatchCertificate {
    pub fn of(qc: &QuorumCertificate, batch: &crate::message::Batch) -> BatchCertificate {
        let bundles = batch
            .bundles
            .iter()
            .zip(batch.bundle_digests())
            .map(|(b, d)| BundleDigest {
                gateway: b.body.gateway.0,
                requests: b.body.requests().len(),
                digest: hex::encode(d),
            })
            .collect();
        BatchCertificate {
            view: qc.view,
            seq: qc.seq,
            digest: hex::encode(qc.digest),
            clock_ms: batch.clock_ms,
            commits: qc
                .sigs
                .iter()
                .map(|(n, s)| CommitSignature {
                    validator: n.0,
                    signature: hex::encode(s.0),
                })
                .collect(),
            bundles,
        }
    }

    /// Valid iff 2f+1 distinct validators among `validators` signed COMMIT for this
    /// (view, seq, digest), and the clock and bundle digests are those of the certified
    /// batch.
    pub fn verify(&self, validators: &[VerifyingKey]) -> Result<CertifiedBatch, String> {
        let digest: Digest = decode_hex(&self.digest, "the batch digest")?;
        let mut sigs = Vec::with_capacity(self.commits.len());
        for c in &self.commits {
            let what = format!("validator {}'s signature", c.validator);
            sigs.push((NodeId(c.validator), Sig(decode_hex(&c.signature, &what)?)));
        }
        let qc = QuorumCertificate {
            view: self.view,
            seq: self.seq,
            digest,
            sigs,
        };
        qc.verify(
            validators,
            crate::config::byzantine_quorum(validators.len()),
        )
        .map_err(|e| format!("the quorum certificate does not hold: {e}"))?;
        let mut bundle_digests = Vec::with_capacity(self.bundles.len());
        for (i, b) in self.bundles.iter().enumerate() {
            bundle_digests.push(decode_hex(&b.digest, &format!("bundle {i}'s digest"))?);
        }
        if crate::message::Batch::digest_of(self.clock_ms, &bundle_digests) != digest {
            return Err("the bundle digests are not those of the certified batch".into());
        }
        Ok(CertifiedBatch {
            view: self.view,
            seq: self.seq,
            clock_ms: self.clock_ms,
            signers: qc.sigs.iter().map(|(n, _)| *n).collect(),
            bundles: self.bundles.len(),
        })
    }
}

fn decode_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| format!("{what} is not {N} bytes of hex: {e}"))?;
    Ok(out)
}
