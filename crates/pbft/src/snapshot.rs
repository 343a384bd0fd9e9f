//! Snapshots: keeping the executed log bounded (TOCS'02 §4.3, state transfer of §5.3.2
//! in a simpler form).
//!
//! At the first checkpoint after every `snapshot_bytes` bytes of executed requests (a
//! count that is part of the execution state, so every correct replica snapshots at the
//! same points, and that keeps the log's size, not its length in batches, bounded) a
//! replica asks its host for the state machine as it stands after that batch
//! ([`Effect::WantSnapshot`]) and keeps it beside its own execution state: the history
//! digest, the at-most-once records, the exclusions.
//!
//! With a `snapshot_size_factor` K (a real cluster's setting), the next point also
//! waits until the bytes executed since the last one reach K times that snapshot's
//! size. Each snapshot encodes and writes the whole state, so with points every
//! `snapshot_bytes` alone a state of 1 GB cost four bytes encoded per byte executed at
//! 256 MiB, and more as it grew; this way it is about 1/K, whatever the size, for a
//! log (in memory until the point, and on disk until the snapshot is written) of up to
//! K times the state. Correct replicas' snapshots
//! at a point are the same bytes, so its size is the same number at every one of them,
//! but a host hands it over when it has it ([`Input::SnapshotSize`] ahead of the
//! encoding, or the snapshot itself): a replica reaching a checkpoint that only that
//! size can place waits there, executing nothing further, until it has it
//! (`held_at`). Installing or recovering a snapshot brings its size along.
//!
//! With the snapshot in hand, the executed batches at or below its point are dropped
//! from memory and, once the snapshot is durable, from disk. Its digest is computed,
//! and vouched for, only when a replica behind asks: hashing a large store costs the
//! driver's thread real time.
//!
//! A replica behind the batches the others still hold fetches a snapshot instead
//! (`snapshot_transfer.rs`, `snapshot_download.rs`). Nothing in a checkpoint
//! certifies the state itself (a state digest in every checkpoint would make each one
//! wait for the host to snapshot), so a snapshot is installed only once f+1 replicas,
//! so at least one correct one, vouch by signature for the same digest of it. Correct
//! replicas that executed the same batches hold the same state, byte for byte,
//! provided the host's encoding is canonical and made of replicated state only (the
//! node leaves its configuration's member table out).
//!
//! Executed batches are dropped only through the lower of the own snapshot and the
//! stable checkpoint: below a stable checkpoint 2f+1 replicas executed every batch, so
//! f+1 correct ones hold either the batch or a snapshot at the same point.
//!
//! The own snapshot is persisted as a compaction (`Write::OwnSnapshot`): the host may
//! make it durable lazily, off its log's order, since a crash that loses it leaves the
//! batches it covers in the log. An installed one is written like any other write.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
#[cfg(doc)]
use ekmat_core::Input;
use ekmat_core::{Effect, NodeId};
use serde::{Deserialize, Serialize};

use crate::certificate::checkpoint_proof_valid;
use crate::durable::Write;
use crate::message::{CheckpointProof, Digest, Signed, sha256};
use crate::normal_case::Session;
use crate::replica::{Fx, Pbft};
use crate::snapshot_transfer::{SnapshotOffer, SnapshotVouch};

/// What execution depends on besides the state machine, as of `seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecState {
    pub seq: u64,
    /// The chained digest of every batch executed through `seq` (what checkpoints sign).
    pub history: Digest,
    /// The state machine's index after `seq`'s batch.
    pub applied: u64,
    /// Bytes of requests executed through `seq` (what snapshot points follow).
    pub executed_bytes: u64,
    pub(crate) sessions: BTreeMap<u64, Session>,
    pub(crate) executed_bundles: BTreeMap<Digest, u64>,
    pub excluded: BTreeMap<NodeId, u64>,
    pub readmitted: BTreeMap<NodeId, u64>,
}

/// A replica's whole state at a snapshot point: its own and its state machine's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub exec: ExecState,
    /// The host's snapshot of the state machine at `exec.applied`.
    pub app: Bytes,
}

impl Snapshot {
    /// A cluster's starting state that no batch produced (a restored backup): sequence
    /// number 0, the state machine `app` at index `applied`. Every founding replica
    /// starts from the same one. Its history digest is the state's own rather than the
    /// empty history's, so replicas started from different states sign different
    /// checkpoints from the first one on and never form a stable checkpoint together.
    pub fn seed(app: Bytes, applied: u64) -> Snapshot {
        let mut tagged = vec![16];
        tagged.extend_from_slice(&sha256(&app));
        Snapshot {
            exec: ExecState {
                history: sha256(&tagged),
                applied,
                ..ExecState::default()
            },
            app,
        }
    }

    pub fn seq(&self) -> u64 {
        self.exec.seq
    }

    /// What replicas vouch for: the execution state's canonical encoding and the state
    /// machine's bytes, under a tag of their own.
    pub fn digest(&self) -> Digest {
        self.digest_with(&self.image_head())
    }

    /// The digest, from the image head already made (which holds the execution state's
    /// encoding), so the state is not encoded twice.
    pub(crate) fn digest_with(&self, head: &[u8]) -> Digest {
        let mut bytes = vec![12];
        bytes.extend_from_slice(&head[8..]);
        bytes.extend_from_slice(&sha256(&self.app));
        sha256(&bytes)
    }

    /// The start of the image sent to a replica behind: the execution state's encoded
    /// length (8 bytes, little-endian) and its encoding. The state machine's bytes follow.
    pub fn image_head(&self) -> Bytes {
        let exec = postcard::to_stdvec(&self.exec).expect("execution state always encodes");
        let mut head = (exec.len() as u64).to_le_bytes().to_vec();
        head.extend(exec);
        Bytes::from(head)
    }

    /// The whole image, in one buffer.
    pub fn image(&self) -> Bytes {
        let mut image = self.image_head().to_vec();
        image.extend_from_slice(&self.app);
        Bytes::from(image)
    }

    /// Read an image back; `None` if it is not one. The state machine's bytes are a
    /// slice of `image`, not a copy.
    pub fn from_image(image: &Bytes) -> Option<Snapshot> {
        let len = u64::from_le_bytes(image.get(..8)?.try_into().ok()?);
        let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
        let exec = postcard::from_bytes(image.get(8..end)?).ok()?;
        Some(Snapshot {
            exec,
            app: image.slice(end..),
        })
    }
}

/// A replica's own latest snapshot, and its vouch for it once one was needed.
#[derive(Clone, Debug)]
pub struct OwnSnapshot {
    pub snapshot: Arc<Snapshot>,
    /// Its vouch and the head of its image, made the first time a replica behind
    /// needs them (see `snapshot_transfer.rs`).
    pub vouch: Option<(Signed<SnapshotVouch>, Bytes)>,
    /// Once execution reaches this sequence number, the snapshot is written (`None`:
    /// written already). Replicas take snapshots at the same points, and the host
    /// rewrites its whole durable state to make one durable (a checkpoint, on a thread
    /// of its own): each waits its own turn (by id), so a quorum is never doing that
    /// at once.
    pub write_at: Option<u64>,
    /// Installed from others rather than taken: written into the log, since the
    /// replica has no batches to recover it from.
    pub installed: bool,
}

/// Where the next snapshot point is: the first checkpoint at which the bytes executed
/// reach `At`'s; or, after the point at applied index `index` and `bytes` executed,
/// where the size of its snapshot (which the host has yet to hand over) puts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NextPoint {
    At(u64),
    AfterSizeOf { index: u64, bytes: u64 },
}

impl NextPoint {
    /// The point after one at `bytes` executed whose snapshot has `size` bytes (the
    /// start is a point of size 0): if the points follow the size, `snapshot_bytes` or
    /// K times the size later, whichever is more; otherwise at the next multiple of
    /// `snapshot_bytes`.
    pub(crate) fn after(bytes: u64, size: u64, cfg: &crate::PbftConfig) -> NextPoint {
        let every = cfg.snapshot_bytes.max(1);
        let factor = cfg.snapshot_size_factor;
        if factor > 0 {
            NextPoint::At(bytes.saturating_add(every.max(size.saturating_mul(factor))))
        } else {
            NextPoint::At((bytes / every).saturating_add(1).saturating_mul(every))
        }
    }
}

/// Sequence numbers, in checkpoint intervals, between one replica's snapshot write and
/// the next one's.
const WRITE_STAGGER_CHECKPOINTS: u64 = 4;

/// Snapshot requests a host may have outstanding at once; older ones are forgotten (a
/// host that slow answers the newer ones).
const MAX_WANTED: usize = 4;

impl Pbft {
    /// After executing checkpoint `seq`: at a snapshot point, ask the host for the state
    /// machine. If only the last snapshot's size, not handed over yet, can tell, hold
    /// execution here until it is (`on_snapshot_taken`).
    pub(crate) fn maybe_want_snapshot(&mut self, seq: u64, out: &mut Fx) {
        let every = self.cfg.snapshot_bytes;
        if every == 0 || !seq.is_multiple_of(self.cfg.checkpoint_interval) {
            return;
        }
        match self.next_point {
            NextPoint::At(bytes) if self.executed_bytes >= bytes => self.want_snapshot(out),
            NextPoint::At(_) => {}
            // Not a point, whatever the size turns out to be.
            NextPoint::AfterSizeOf { bytes, .. }
                if self.executed_bytes < bytes.saturating_add(every) => {}
            NextPoint::AfterSizeOf { .. } if self.cfg.mutant == crate::Mutant::SkipSnapshotHold => {
            }
            NextPoint::AfterSizeOf { .. } => {
                debug_assert_eq!(seq, self.last_executed);
                self.held_at = Some(seq);
                self.counter("snapshot-point-held", out);
            }
        }
    }

    fn want_snapshot(&mut self, out: &mut Fx) {
        // Two points with no command between share an index (and a state machine):
        // the later execution state is the one to keep.
        self.wanted_snapshots
            .insert(self.applied, self.exec_state());
        while self.wanted_snapshots.len() > MAX_WANTED {
            self.wanted_snapshots.pop_first();
        }
        self.next_point = if self.cfg.snapshot_size_factor > 0 {
            NextPoint::AfterSizeOf {
                index: self.applied,
                bytes: self.executed_bytes,
            }
        } else {
            NextPoint::after(self.executed_bytes, 0, &self.cfg)
        };
        out.push(Effect::WantSnapshot {
            index: self.applied,
        });
    }

    /// The size of the snapshot the next point waits on, now known (from the host,
    /// ahead of the data, or from the data): where the next point is, and if execution
    /// waits at a checkpoint for that, whether it is one.
    pub(crate) fn learn_snapshot_size(&mut self, index: u64, size: u64, out: &mut Fx) {
        let NextPoint::AfterSizeOf { index: at, bytes } = self.next_point else {
            return;
        };
        if at != index {
            return;
        }
        self.next_point = NextPoint::after(bytes, size, &self.cfg);
        if let Some(seq) = self.held_at.take() {
            self.maybe_want_snapshot(seq, out);
            self.execute_ready(out);
        }
    }

    fn exec_state(&self) -> ExecState {
        ExecState {
            seq: self.last_executed,
            history: self.history,
            applied: self.applied,
            executed_bytes: self.executed_bytes,
            sessions: self.sessions.clone(),
            executed_bundles: self.executed_bundles.clone(),
            excluded: self.excluded.clone(),
            readmitted: self.readmitted.clone(),
        }
    }

    /// The host's snapshot at `index`: if it is one asked for, keep it, vouch for it,
    /// persist it, and drop the batches it covers.
    pub(crate) fn on_snapshot_taken(&mut self, index: u64, data: Bytes, out: &mut Fx) {
        let size = data.len() as u64;
        self.keep_taken_snapshot(index, data, out);
        self.learn_snapshot_size(index, size, out);
    }

    fn keep_taken_snapshot(&mut self, index: u64, data: Bytes, out: &mut Fx) {
        let Some(exec) = self.wanted_snapshots.remove(&index) else {
            return; // a snapshot of the host's own cadence, or a forgotten request
        };
        self.wanted_snapshots.retain(|applied, _| *applied > index);
        let snapshot = Arc::new(Snapshot { exec, app: data });
        self.counter("snapshot-taken", out);
        let stagger = u64::from(self.cfg.id.0) * WRITE_STAGGER_CHECKPOINTS;
        let write_at = snapshot.seq() + stagger * self.cfg.checkpoint_interval;
        self.keep_snapshot(snapshot, write_at, false, out);
    }

    /// Make `snapshot` this replica's: what it offers and, once written (when execution
    /// reaches `write_at`; 0: at once), what it restarts from. Until then the disk keeps
    /// the batches it covers.
    fn keep_snapshot(
        &mut self,
        snapshot: Arc<Snapshot>,
        write_at: u64,
        installed: bool,
        out: &mut Fx,
    ) {
        let seq = snapshot.seq();
        if self
            .own_snapshot
            .as_ref()
            .is_some_and(|o| o.snapshot.seq() >= seq)
        {
            return;
        }
        // One not written yet keeps its turn for the newer one: snapshots coming faster
        // than the turns must not put the write off for ever.
        let pending = self.own_snapshot.as_ref().and_then(|o| o.write_at);
        let write_at = pending.map_or(write_at, |earlier| earlier.min(write_at));
        self.retire_own_snapshot();
        self.own_snapshot = Some(OwnSnapshot {
            snapshot,
            vouch: None,
            write_at: Some(write_at),
            installed,
        });
        self.maybe_write_snapshot(out);
        self.prune_executed();
    }

    /// Write the own snapshot once its turn has come.
    pub(crate) fn maybe_write_snapshot(&mut self, out: &mut Fx) {
        let executed = self.last_executed;
        let Some(own) = self.own_snapshot.as_mut() else {
            return;
        };
        if own.write_at.is_some_and(|at| executed >= at) {
            own.write_at = None;
            let snapshot = own.snapshot.clone();
            let write = if own.installed {
                Write::Snapshot(snapshot)
            } else {
                Write::OwnSnapshot(snapshot)
            };
            self.persist(write, out);
        }
    }

    /// Drop the executed batches both the own snapshot and the stable checkpoint cover.
    /// Not past the stable checkpoint: below it, 2f+1 replicas executed every batch, so
    /// f+1 correct ones hold either the batch or a snapshot at the same point, which is
    /// what a replica behind needs (a batch from one, or a snapshot from f+1).
    pub(crate) fn prune_executed(&mut self) {
        let snapshot = self.own_snapshot.as_ref().map_or(0, |o| o.snapshot.seq());
        let through = snapshot.min(self.stable.seq);
        self.executed.retain(|s, _| *s > through);
    }

    /// Jump to a vouched-for snapshot ahead of this replica's execution, and to the
    /// highest valid stable checkpoint its vouchers sent.
    pub(crate) fn install(
        &mut self,
        snapshot: Arc<Snapshot>,
        vouchers: &[Arc<SnapshotOffer>],
        out: &mut Fx,
    ) {
        let e = &snapshot.exec;
        debug_assert!(e.seq > self.last_executed && e.applied >= self.applied);
        self.adopt_snapshot_state(&snapshot);
        self.next_seq = self.next_seq.max(e.seq);
        self.wanted_snapshots.clear();
        out.push(Effect::Restore {
            index: e.applied,
            data: snapshot.app.clone(),
        });
        // Executed, or from a gateway the snapshot excluded (nobody orders those any more).
        let (executed, excluded) = (&self.executed_bundles, &self.excluded);
        self.pending.retain(|d, p| {
            !executed.contains_key(d) && !excluded.contains_key(&p.bundle.body.gateway)
        });
        self.in_flight.retain(|d| !executed.contains_key(d));
        // And any that expired in between. This replica did not execute the sequence
        // numbers where its own could have, and the snapshot's record forgets bundles
        // past the horizon: whether those executed is unknown, so they are not bundled
        // again (an anonymous request could execute twice; the simulator found it).
        self.forget_expired_bundles(false, out);
        self.transfers.retain(|s, _| *s > e.seq);
        self.offers.retain(|_, o| o.vouch.body.seq > e.seq);
        self.download = None;
        self.stats.snapshots_installed += 1;
        self.counter("snapshot-installed", out);
        let seq = e.seq;
        // Written at once: this replica holds no batches below it.
        self.keep_snapshot(snapshot, 0, true, out);
        self.maybe_checkpoint(seq, out);
        if let Some(proof) = self.best_stable_proof(vouchers) {
            self.make_stable(proof, out);
        }
        // The bundle the view timer ran for may be executed or excluded now.
        self.on_progress();
        self.skip_excluded_primary(out);
    }

    /// The highest stable checkpoint among the vouchers' that holds, if it is ahead of
    /// this replica's.
    fn best_stable_proof(&mut self, vouchers: &[Arc<SnapshotOffer>]) -> Option<CheckpointProof> {
        let mut proofs: Vec<&CheckpointProof> = vouchers
            .iter()
            .map(|o| &o.stable)
            .filter(|p| p.seq > self.stable.seq)
            .collect();
        proofs.sort_by_key(|p| std::cmp::Reverse(p.seq));
        let quorum = self.quorum();
        proofs
            .into_iter()
            .find(|p| checkpoint_proof_valid(p, &mut self.keys, quorum))
            .cloned()
    }

    /// Take on the execution state of a snapshot (a point: the next one follows it).
    fn adopt_snapshot_state(&mut self, snapshot: &Snapshot) {
        let e = &snapshot.exec;
        let size = snapshot.app.len() as u64;
        self.next_point = NextPoint::after(e.executed_bytes, size, &self.cfg);
        self.held_at = None;
        self.history = e.history;
        self.applied = e.applied;
        self.executed_bytes = e.executed_bytes;
        self.sessions = e.sessions.clone();
        self.executed_bundles = e.executed_bundles.clone();
        self.excluded = e.excluded.clone();
        self.readmitted = e.readmitted.clone();
        // Proposals against a replica the snapshot re-admitted are not in flight any
        // more: new evidence against it must be proposed again.
        let readmitted = &self.readmitted;
        let excluded = &self.excluded;
        self.exclusions_proposed
            .retain(|c| excluded.contains_key(c) || !readmitted.contains_key(c));
        self.last_executed = e.seq;
        self.behind_since = None;
    }

    /// A restarted replica's snapshot from disk: its state, and the state machine's to
    /// hand the host on the first step.
    pub(crate) fn recover_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        self.adopt_snapshot_state(&snapshot);
        self.restore_due = Some((snapshot.exec.applied, snapshot.app.clone()));
        self.own_snapshot = Some(OwnSnapshot {
            snapshot,
            vouch: None,
            write_at: None,
            installed: false,
        });
    }
}
