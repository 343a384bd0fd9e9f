//! Re-admitting an excluded replica, ordered through consensus like its exclusion.
//!
//! An exclusion rests on a proof anyone can check (`exclusion.rs`); a re-admission is a
//! decision, and the validators' operators make it. Each signs, with its validator's
//! key, a [`ReadmitVote`] naming the replica and the sequence number that excluded it.
//! Votes of f+1 distinct validators other than the convict — so at least one correct
//! one — form a [`Readmission`], which any member hands in for ordering. Every correct
//! replica checks it when it executes that request, against the validators' keys and
//! its own record of the exclusion, and so re-admits the replica at the same sequence
//! number. A vote names the exclusion it undoes, so it cannot be used again for a
//! later one.
//!
//! Re-admitted at sequence number R, the replica is pardoned for what it did up to R:
//! evidence anchored at or before R (the conflicting statements' sequence number, a
//! forged bundle's creation point: [`crate::evidence::anchor`]) no longer excludes it,
//! so an old proof replayed by anyone cannot undo the decision. New misbehaviour
//! excludes it again. Exclusion only ever touched liveness (views it would lead are
//! skipped, its bundles refused), so re-admission does not touch safety.

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use ekmat_core::{NodeId, RequestId};
use serde::{Deserialize, Serialize};

use crate::client::ClusterId;
use crate::crypto::{SigItem, verify_items};
use crate::message::{ClientRequest, Encode, Signed, put_u64};
use crate::replica::{Fx, Pbft};

/// The client id of re-admission requests (reserved like `EXCLUSION_CLIENT`).
pub const READMISSION_CLIENT: u64 = u64::MAX - 2;

/// One validator's vote to re-admit `convict`, excluded at sequence number
/// `excluded_at`, in the cluster `cluster`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReadmitVote {
    pub cluster: ClusterId,
    pub convict: NodeId,
    pub excluded_at: u64,
}

impl Encode for ReadmitVote {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(17);
        out.extend_from_slice(&self.cluster);
        put_u64(out, u64::from(self.convict.0));
        put_u64(out, self.excluded_at);
    }
}

/// Sign a vote with validator `signer`'s key.
pub fn vote(key: &SigningKey, signer: NodeId, vote: ReadmitVote) -> Signed<ReadmitVote> {
    crate::crypto::sign(key, signer, vote)
}

/// The votes that re-admit a replica, as one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readmission {
    pub votes: Vec<Signed<ReadmitVote>>,
}

/// Why a re-admission does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadmissionError {
    Malformed,
    /// The votes are not all for the same replica and exclusion.
    Mixed,
    WrongCluster,
    /// A vote of the excluded replica itself (it cannot pardon itself).
    ConvictVotes,
    UnknownSigner,
    RepeatedSigner,
    BadSignature,
    TooFew {
        have: usize,
        need: usize,
    },
    /// The replica is not excluded (any more) here.
    NotExcluded,
    /// The votes undo another exclusion than the one in force.
    OtherExclusion {
        in_force: u64,
    },
}

impl std::fmt::Display for ReadmissionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => write!(f, "not a re-admission"),
            Self::Mixed => write!(f, "the votes name different replicas or exclusions"),
            Self::WrongCluster => write!(f, "a vote is for another cluster"),
            Self::ConvictVotes => write!(f, "the excluded replica cannot vote for itself"),
            Self::UnknownSigner => write!(f, "a vote is signed by no validator"),
            Self::RepeatedSigner => write!(f, "two votes of one validator"),
            Self::BadSignature => write!(f, "a vote's signature does not verify"),
            Self::TooFew { have, need } => {
                write!(f, "{have} votes of other validators, {need} needed (f+1)")
            }
            Self::NotExcluded => write!(f, "the replica is not excluded"),
            Self::OtherExclusion { in_force } => write!(
                f,
                "the votes undo another exclusion; the one in force is at sequence {in_force}"
            ),
        }
    }
}

impl Readmission {
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("votes always encode"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Readmission, ReadmissionError> {
        postcard::from_bytes(bytes).map_err(|_| ReadmissionError::Malformed)
    }

    /// Check the votes alone: f+1 distinct validators other than the convict, all for
    /// one exclusion in `cluster`, each signature valid. The exclusion they undo.
    pub fn verify(
        &self,
        validators: &[VerifyingKey],
        cluster: &ClusterId,
        f: usize,
    ) -> Result<ReadmitVote, ReadmissionError> {
        let first = self.votes.first().ok_or(ReadmissionError::TooFew {
            have: 0,
            need: f + 1,
        })?;
        let target = first.body;
        let mut signers = std::collections::BTreeSet::new();
        for v in &self.votes {
            if v.body != target {
                return Err(ReadmissionError::Mixed);
            }
            if v.signer == target.convict {
                return Err(ReadmissionError::ConvictVotes);
            }
            if validators.get(v.signer.index()).is_none() {
                return Err(ReadmissionError::UnknownSigner);
            }
            if !signers.insert(v.signer) {
                return Err(ReadmissionError::RepeatedSigner);
            }
        }
        if target.cluster != *cluster {
            return Err(ReadmissionError::WrongCluster);
        }
        if signers.len() < f + 1 {
            let (have, need) = (signers.len(), f + 1);
            return Err(ReadmissionError::TooFew { have, need });
        }
        // Each alone: the verdict must not depend on what it was batch-verified with.
        for v in &self.votes {
            if !verify_items(validators, &[SigItem::of(v)]) {
                return Err(ReadmissionError::BadSignature);
            }
        }
        Ok(target)
    }
}

impl Pbft {
    /// Check a re-admission against the validators' keys and this replica's record of
    /// exclusions; the replica it re-admits.
    pub fn check_readmission(&self, bytes: &[u8]) -> Result<NodeId, ReadmissionError> {
        let r = Readmission::decode(bytes)?;
        let v = r.verify(&self.cfg.validators, &self.cluster, self.f())?;
        match self.excluded.get(&v.convict) {
            None => Err(ReadmissionError::NotExcluded),
            Some(&in_force) if in_force != v.excluded_at => {
                Err(ReadmissionError::OtherExclusion { in_force })
            }
            Some(_) => Ok(v.convict),
        }
    }

    /// A re-admission handed in (by this replica's host, or forwarded by another
    /// member): ordered if it holds here and now, dropped and counted if not. The
    /// excluded replica itself (whose bundles nobody takes) passes it to the others.
    pub(crate) fn on_readmission(&mut self, r: ClientRequest, out: &mut Fx) {
        let bytes = r.op.unwrap_or_default();
        match self.check_readmission(&bytes) {
            Ok(_) if self.is_excluded(self.cfg.id) => {
                let request = ClientRequest {
                    op: Some(bytes),
                    ..r
                };
                self.broadcast(crate::message::Message::Request(request), out);
            }
            Ok(convict) => {
                let id = RequestId {
                    client: READMISSION_CLIENT,
                    seq: self.excluded[&convict],
                };
                let request = ClientRequest {
                    id,
                    op: Some(bytes),
                    sig: None,
                };
                if !self.outbox.contains(&request) {
                    self.outbox.push(request);
                    self.flush_bundle(out);
                }
            }
            Err(_) => self.counter("invalid-readmission", out),
        }
    }

    /// Execute an ordered re-admission at sequence number `seq`. One that does not hold
    /// (any more) changes nothing; it is counted.
    pub(crate) fn execute_readmission(
        &mut self,
        seq: u64,
        bytes: &[u8],
        replayed: bool,
        out: &mut Fx,
    ) {
        let counted = match self.check_readmission(bytes) {
            Ok(convict) => {
                self.excluded.remove(&convict);
                self.readmitted.insert(convict, seq);
                // New evidence against it may be proposed again, and what was found
                // while it was excluded that the pardon does not cover, now.
                self.exclusions_proposed.remove(&convict);
                if let Some((anchor, proof)) = self.held_evidence.remove(&convict)
                    && anchor > seq
                {
                    self.propose_exclusion(convict, proof, out);
                }
                "readmission"
            }
            Err(_) => "invalid-readmission",
        };
        if !replayed {
            self.counter(counted, out);
        }
    }

    /// Whether a re-admission pardoned misbehaviour of `convict` anchored at `anchor`.
    pub(crate) fn pardoned(&self, convict: NodeId, anchor: Option<u64>) -> bool {
        let Some(&at) = self.readmitted.get(&convict) else {
            return false;
        };
        anchor.is_none_or(|a| a <= at)
    }

    /// Replicas re-admitted, with the sequence number of the latest re-admission of each.
    pub fn readmitted(&self) -> &std::collections::BTreeMap<NodeId, u64> {
        &self.readmitted
    }
}
