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
    /// It executed the batch certified by this certificate, which the log holds already
    /// in its prepared certificate for that sequence number (see [`PreparedOnDisk`]):
    /// [`Write::Executed`] without writing the batch a second time.
    ExecutedPrepared(QuorumCertificate),
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

impl PbftStable {
    fn executed(&mut self, batch: &Arc<Batch>, qc: &QuorumCertificate) {
        if qc.seq > self.snapshot.as_ref().map_or(0, |s| s.seq()) {
            self.executed.insert(qc.seq, (batch.clone(), qc.clone()));
        }
    }
}

/// Whether a prepared certificate of `view` replaces the one of `held` (if any) at its
/// sequence number: the later view's does.
fn replaces(held: Option<u64>, view: u64) -> bool {
    held.is_none_or(|held| held <= view)
}

/// Which batch the log holds prepared at each sequence number (its view and digest),
/// kept by [`PbftStable::apply`]'s rules from the same writes. The replica keeps it beside
/// what it writes, to know when a batch it executes is on disk already: it prepared it,
/// and no stable checkpoint since has dropped the certificate. A batch then costs one
/// write, not two (under load, the log's bytes halve).
#[derive(Clone, Debug, Default)]
pub(crate) struct PreparedOnDisk {
    checkpoint: u64,
    batches: BTreeMap<u64, (u64, Digest)>,
}

impl PreparedOnDisk {
    pub(crate) fn of(stable: &PbftStable) -> PreparedOnDisk {
        let batches = stable.prepared.iter();
        PreparedOnDisk {
            checkpoint: stable.checkpoint.seq,
            batches: batches
                .map(|(seq, c)| (*seq, (c.pre_prepare.body.view, c.pre_prepare.body.digest)))
                .collect(),
        }
    }

    /// Follow `write` as [`PbftStable::apply`] does.
    pub(crate) fn note(&mut self, write: &Write) {
        match write {
            Write::Prepared(cert) => {
                let body = &cert.pre_prepare.body;
                if replaces(self.batches.get(&body.seq).map(|b| b.0), body.view) {
                    self.batches.insert(body.seq, (body.view, body.digest));
                }
            }
            Write::Checkpoint(proof) if proof.seq > self.checkpoint => {
                self.checkpoint = proof.seq;
                self.batches.retain(|s, _| *s > proof.seq);
            }
            _ => {}
        }
    }

    pub(crate) fn holds(&self, seq: u64, digest: &Digest) -> bool {
        self.batches.get(&seq).is_some_and(|(_, d)| d == digest)
    }
}

impl Durable<Write> for PbftStable {
    fn is_compaction(write: &Write) -> bool {
        matches!(write, Write::OwnSnapshot(_))
    }

    /// Batches (a prepared one encodes its batch, as does an executed one) with their
    /// signatures, and the snapshot's state machine and tables.
    fn encoded_len_hint(&self) -> Option<u64> {
        const CERTIFICATE: usize = 512;
        const TABLE_ROW: usize = 64;
        let prepared = self.prepared.values().map(|c| c.batch.size() + CERTIFICATE);
        let executed = self.executed.values().map(|(b, _)| b.size() + CERTIFICATE);
        let snapshot = self.snapshot.as_ref().map_or(0, |s| {
            s.app.len() + TABLE_ROW * (s.exec.sessions.len() + s.exec.executed_bundles.len())
        });
        Some((prepared.sum::<usize>() + executed.sum::<usize>() + snapshot) as u64)
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
                let held = self.prepared.get(&seq).map(|c| c.pre_prepare.body.view);
                if replaces(held, cert.pre_prepare.body.view) {
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
            Write::Executed { batch, qc } => self.executed(batch, qc),
            Write::ExecutedPrepared(qc) => {
                let batch = self
                    .prepared
                    .get(&qc.seq)
                    .filter(|c| c.pre_prepare.body.digest == qc.digest)
                    .map(|c| c.batch.clone())
                    .unwrap_or_else(|| {
                        panic!(
                            "the batch executed at {} was written as prepared, and the log holds no such certificate",
                            qc.seq
                        )
                    });
                self.executed(&batch, qc);
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
