//! Handing the protocol snapshots of the state machine, serialized off the driver.

use std::time::Instant;

use bytes::Bytes;
use ekmat_core::Input;

use super::Driver;
use crate::protocol::RuntimeProtocol;

impl<P: RuntimeProtocol> Driver<P> {
    /// Every `snapshot_every` applied entries (and once the log has grown by the last
    /// snapshot's size), hand the protocol the state machine, so it can compact its log.
    /// The store is copied here and serialized on a blocking thread: serializing a large
    /// store on the driver took seconds, long enough to miss heartbeats and lose the
    /// leadership. The protocol takes the snapshot when it is ready (`on_snapshot_ready`).
    pub(super) fn maybe_snapshot(&mut self) {
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
        self.snapshot_in_progress = true;
        let started = Instant::now();
        let (kv, members) = (self.kv.clone(), self.members.clone());
        let copied_ms = started.elapsed().as_millis() as u64;
        let done = self.snapshots_tx.clone();
        tokio::task::spawn_blocking(move || {
            let data = members.wrap_snapshot(kv.snapshot());
            tracing::info!(
                index = applied,
                bytes = data.len(),
                copied_ms,
                took_ms = started.elapsed().as_millis() as u64,
                "snapshot"
            );
            let _ = done.blocking_send((applied, data));
        });
    }

    pub(super) async fn on_snapshot_ready(&mut self, index: u64, data: Bytes) {
        self.snapshot_in_progress = false;
        self.last_snapshot_bytes = data.len() as u64;
        metrics::counter!("ekmat_snapshots_total").increment(1);
        self.step(Input::Snapshot { index, data }).await;
    }
}
