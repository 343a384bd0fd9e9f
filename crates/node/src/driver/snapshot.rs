//! Handing the protocol snapshots of the state machine, serialized off the driver.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ekmat_core::Input;

use super::Driver;
use crate::protocol::RuntimeProtocol;

/// What a snapshot thread hands the driver: the snapshot's size as soon as it is
/// known, then the snapshot.
pub(super) enum Encoded {
    Size { index: u64, size: u64 },
    Done { index: u64, data: Bytes },
}

impl<P: RuntimeProtocol> Driver<P> {
    /// Every `snapshot_every` applied entries (and once the log has grown by the last
    /// snapshot's size), hand the protocol the state machine, so it can compact its log.
    /// The store's parts are taken here in O(1) (its key index is a persistent map) and
    /// encoded on a blocking thread: encoding a large store on the driver took seconds,
    /// and even copying it there stalled every request for up to half a second. The
    /// protocol takes the snapshot when it is ready (`on_snapshot_ready`).
    pub(super) fn maybe_snapshot(&mut self) {
        if self.store_away() {
            return;
        }
        let applied = self.kv.applied_index();
        if self.snapshot_every == 0
            || self.snapshot_in_progress
            || applied < self.last_snapshot + self.snapshot_every
            || self.applied_bytes < self.last_snapshot_bytes
        {
            return;
        }
        self.last_snapshot = applied;
        self.applied_bytes = 0;
        let source = self.kv.snapshot_source();
        self.encode_snapshot(applied, source, Duration::ZERO);
    }

    /// The snapshot the protocol asked for at `index` (PBFT's points), where the store
    /// stands now. Its parts are taken at once; encodings run one at a time, and of
    /// those asked for while one runs only the latest waits (the protocol takes any it
    /// asked for, and the latest covers the most).
    ///
    /// Every replica reaches a point at once, and encoding a large store, then writing
    /// it into a log checkpoint, slows a member for seconds: all at once, they stalled
    /// the cluster (p99 of 0.5-0.8 s at 70,000 puts/s, PBFT, 4 members). So each member
    /// starts its encoding its place among the members later (the first at once), and
    /// a quorum of members not snapshotting keeps ordering. Never later than twice the
    /// time between the protocol's last two requests, though: a request is forgotten
    /// once a few newer ones come, and a snapshot for a forgotten point is thrown away.
    pub(super) fn snapshot_at(&mut self, index: u64) {
        let applied = self.kv.applied_index();
        if applied != index {
            // The entries before the request are applied and none after, so this
            // cannot happen; if it did, a snapshot at the wrong index would be a lie.
            tracing::error!(index, applied, "a snapshot was asked for at another index");
            return;
        }
        let source = self.kv.snapshot_source();
        self.snapshot_request_interval = self.last_snapshot_request.elapsed();
        self.last_snapshot_request = Instant::now();
        if self.snapshot_in_progress {
            self.queued_snapshot = Some((applied, source));
        } else {
            self.encode_snapshot(applied, source, self.requested_snapshot_delay());
        }
    }

    fn requested_snapshot_delay(&self) -> Duration {
        self.requested_snapshot_stagger
            .min(self.snapshot_request_interval.saturating_mul(2))
    }

    /// Encode `source` (taken at `applied`) on a thread of its own; the protocol gets
    /// the snapshot when it is ready (`on_snapshot_ready`).
    fn encode_snapshot(&mut self, applied: u64, source: ekmat_kv::SnapshotSource, delay: Duration) {
        self.snapshot_in_progress = true;
        // A protocol with a fixed membership keeps its member table out of snapshots:
        // replicas vouch for each other's snapshots byte for byte, and the table comes
        // from each member's own configuration file.
        let members = if P::RECONFIGURES {
            self.members.clone()
        } else {
            crate::members::Members::default()
        };
        let done = self.snapshots_tx.clone();
        let buffers = self.snapshot_buffers.clone();
        // Handed to the thread through a slot, so that if it cannot start, the job is
        // still here to do (no copy of the store's parts for that rare case).
        let job = Arc::new(Mutex::new(Some((members, source))));
        let slot = job.clone();
        let spawned = std::thread::Builder::new()
            .name("ekmat-snapshot".into())
            .spawn(move || {
                let Some((members, source)) = take(&slot) else {
                    return;
                };
                lower_priority();
                // The size first, before waiting for this member's turn: PBFT may
                // need it to go on executing before the snapshot itself is done.
                let kv_len = source.encoded_len();
                let size = members.snapshot_len(kv_len) as u64;
                let index = applied;
                let _ = done.blocking_send(Encoded::Size { index, size });
                std::thread::sleep(delay);
                let started = Instant::now();
                let buf = members.snapshot_into(buffers.take(), &source, kv_len);
                let data = buffers.freeze(buf);
                tracing::info!(
                    index = applied,
                    bytes = data.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    delayed_ms = delay.as_millis() as u64,
                    "snapshot"
                );
                let _ = done.blocking_send(Encoded::Done { index, data });
            });
        if let Err(e) = spawned {
            // Encoded here then, however long it takes: PBFT may hold execution until
            // it has this snapshot's size, and asks for no other meanwhile.
            tracing::warn!(error = %e, "cannot start a snapshot thread; encoding on the driver");
            let Some((members, source)) = take(&job) else {
                return;
            };
            let data = members.snapshot_of(&source);
            let index = applied;
            if self
                .snapshots_tx
                .try_send(Encoded::Done { index, data })
                .is_err()
            {
                tracing::error!(index = applied, "a snapshot could not be handed over");
                self.snapshot_in_progress = false;
            }
        }
    }

    pub(super) async fn on_snapshot_encoded(&mut self, encoded: Encoded) {
        match encoded {
            Encoded::Size { index, size } => self.step(Input::SnapshotSize { index, size }).await,
            Encoded::Done { index, data } => self.on_snapshot_ready(index, data).await,
        }
    }

    async fn on_snapshot_ready(&mut self, index: u64, data: Bytes) {
        self.snapshot_in_progress = false;
        if let Some((applied, source)) = self.queued_snapshot.take() {
            self.encode_snapshot(applied, source, self.requested_snapshot_delay());
        }
        self.last_snapshot_bytes = data.len() as u64;
        metrics::counter!("ekmat_snapshots_total").increment(1);
        self.step(Input::Snapshot { index, data }).await;
    }
}

/// The job in `slot`, if no one took it yet.
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

/// Encoding a large store takes seconds of CPU: on a small machine, at normal priority,
/// it starves the threads that serve requests and replicate. At the lowest priority it
/// uses only what they leave. (On Linux: the highest niceness, for this thread only.)
pub(crate) fn lower_priority() {
    use thread_priority::{ThreadPriority, set_current_thread_priority};
    if let Err(e) = set_current_thread_priority(ThreadPriority::Min) {
        tracing::debug!(error = ?e, "background thread keeps its priority");
    }
}
