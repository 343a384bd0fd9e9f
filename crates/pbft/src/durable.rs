//! What a replica writes to disk, and what it restarts from.
//!
//! A replica must never contradict what it signed before a crash: it persists the view
//! it moved to before sending VIEW-CHANGE, each pre-prepare it accepted before sending
//! PREPARE (or, as primary, before sending the PRE-PREPARE), each prepared certificate
//! before sending COMMIT, and its stable checkpoints. Executed batches are persisted with
//! their quorum certificates so a restarted replica rebuilds its state machine and can
//! serve state transfer; a snapshot replaces the batches it covers.

use std::collections::BTreeMap;
use std::sync::Arc;

use ekmat_core::Durable;

use crate::certificate::QuorumCertificate;
use crate::message::{Batch, CheckpointProof, Digest, PreparedCert};
use crate::snapshot::Snapshot;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Write {
    /// The replica entered `view` (`normal`) or started changing to it.
    View {
        view: u64,
        normal: bool,
    },
    /// It accepted (or, as primary, issued) the pre-prepare for `seq` in `view`.
    Accepted {
        view: u64,
        seq: u64,
        digest: Digest,
    },
    Prepared(PreparedCert),
    Checkpoint(CheckpointProof),
    Executed {
        batch: Arc<Batch>,
        qc: QuorumCertificate,
    },
    /// A snapshot installed from others: the replica holds no batches below it.
    Snapshot(Arc<Snapshot>),
    /// The replica's own snapshot, of batches it executed and wrote: a compaction
    /// (see [`Durable::is_compaction`]), which storage may make durable lazily, off the
    /// log's order, since recovering without it replays those batches instead.
    OwnSnapshot(Arc<Snapshot>),
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PbftStable {
    pub view: u64,
    pub normal: bool,
    /// Per sequence number: the latest view it accepted a pre-prepare in, and the digest.
    pub accepted: BTreeMap<u64, (u64, Digest)>,
    /// Per sequence number: the prepared certificate of the highest view.
    pub prepared: BTreeMap<u64, PreparedCert>,
    pub checkpoint: CheckpointProof,
    /// Executed batches after `snapshot`'s point.
    pub executed: BTreeMap<u64, (Arc<Batch>, QuorumCertificate)>,
    pub snapshot: Option<Arc<Snapshot>>,
}

impl Durable<Write> for PbftStable {
    fn is_compaction(write: &Write) -> bool {
        matches!(write, Write::OwnSnapshot(_))
    }

    fn apply(&mut self, write: &Write) {
        match write {
            Write::View { view, normal } => {
                if (*view, *normal) > (self.view, self.normal) {
                    (self.view, self.normal) = (*view, *normal);
                }
            }
            Write::Accepted { view, seq, digest } => {
                self.accepted.insert(*seq, (*view, *digest));
            }
            Write::Prepared(cert) => {
                let seq = cert.pre_prepare.body.seq;
                let newer = self
                    .prepared
                    .get(&seq)
                    .is_none_or(|c| c.pre_prepare.body.view <= cert.pre_prepare.body.view);
                if newer {
                    self.prepared.insert(seq, cert.clone());
                }
            }
            Write::Checkpoint(proof) => {
                if proof.seq > self.checkpoint.seq {
                    self.checkpoint = proof.clone();
                    self.accepted.retain(|s, _| *s > proof.seq);
                    self.prepared.retain(|s, _| *s > proof.seq);
                }
            }
            Write::Executed { batch, qc } => {
                if qc.seq > self.snapshot.as_ref().map_or(0, |s| s.seq()) {
                    self.executed.insert(qc.seq, (batch.clone(), qc.clone()));
                }
            }
            Write::Snapshot(snapshot) | Write::OwnSnapshot(snapshot) => {
                let seq = snapshot.seq();
                if self.snapshot.as_ref().is_none_or(|s| s.seq() < seq) {
                    self.executed.retain(|s, _| *s > seq);
                    self.snapshot = Some(snapshot.clone());
                }
            }
        }
    }
}
