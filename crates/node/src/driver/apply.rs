//! Applying committed entries to the state machine.
//!
//! Most entries take microseconds and are applied right here on the driver. A heavy one
//! — a ranged delete, a compaction, a lease revocation, each touching every key it
//! covers — takes about a second with half a million keys, and the driver must not stop
//! for that: a leader that stops sending heartbeats for longer than the election timeout
//! is replaced (`etcdctl check perf` ends with one such delete). Such an entry is applied
//! on a blocking thread, the store moved there and back. Meanwhile the driver goes on
//! running the protocol (heartbeats, replication, votes) and everything that needs the
//! store waits: later entries queue behind it in order, confirmed reads wait for it, and
//! no new client call is taken until the store is back.

use bytes::Bytes;
use ekmat_core::{Committed, CommittedEntry, RequestId};
use ekmat_kv::{Applied, DecodeError, Envelope, KvStore, SignedBy};
use tokio::sync::oneshot;

use super::{CallError, Driver, PendingWrite};
use crate::members::Members;
use crate::protocol::RuntimeProtocol;
use crate::watch_hub::Published;

/// A heavy entry being applied off the driver.
pub(super) struct Applying {
    index: u64,
    id: RequestId,
    done: oneshot::Receiver<(KvStore, Applied)>,
}

/// What the protocol handed over while the store was away, to be done in order.
pub(super) enum Backlogged {
    Commit(Committed),
    Restore(u64, Bytes),
    /// The protocol asked for a snapshot once the entries before it are applied.
    Snapshot(u64),
}

/// Resolves when the heavy entry is applied (never, if none is being applied).
pub(super) async fn applied(
    applying: &mut Option<Applying>,
) -> Result<(KvStore, Applied), oneshot::error::RecvError> {
    match applying {
        Some(a) => (&mut a.done).await,
        None => std::future::pending().await,
    }
}

impl<P: RuntimeProtocol> Driver<P> {
    /// The store is on another thread: nothing may read or change it here.
    pub(super) fn store_away(&self) -> bool {
        self.applying.is_some()
    }

    pub(super) fn on_committed(&mut self, committed: Committed) {
        if self.store_away() || !self.backlog.is_empty() {
            self.backlog.push_back(Backlogged::Commit(committed));
            return;
        }
        self.apply_committed(committed);
    }

    pub(super) fn on_restore(&mut self, index: u64, data: Bytes) {
        if self.store_away() || !self.backlog.is_empty() {
            self.backlog.push_back(Backlogged::Restore(index, data));
            return;
        }
        self.restore(index, data);
    }

    /// The protocol wants the state machine as of `index`: taken once every entry
    /// before the request is applied (at once, unless the store is away).
    pub(super) fn on_snapshot_wanted(&mut self, index: u64) {
        if self.store_away() || !self.backlog.is_empty() {
            self.backlog.push_back(Backlogged::Snapshot(index));
            return;
        }
        self.snapshot_at(index);
    }

    fn apply_committed(&mut self, committed: Committed) {
        let Committed {
            index,
            entry,
            clock_ms,
        } = committed;
        match entry {
            CommittedEntry::Noop => self.kv.skip(index),
            CommittedEntry::Membership {
                membership,
                changes,
            } => {
                tracing::info!(index, %membership, "configuration committed");
                self.kv.skip(index);
                self.on_membership(&membership, &changes);
            }
            CommittedEntry::Command { id, command } => {
                self.applied_bytes += command.len() as u64;
                // Decoded once, here: bytes that are no envelope are the store's to refuse.
                let mut decoded = Envelope::decode_shared(&command);
                if let (Some(agreed), Ok(envelope)) = (clock_ms, &mut decoded) {
                    // The protocol agreed on the time (PBFT): the proposer's own stamp,
                    // which a faulty member could set an hour ahead, is not the clock.
                    envelope.now_ms = agreed;
                }
                if decoded
                    .as_ref()
                    .is_ok_and(|e| e.command.touches_many_keys())
                {
                    let signer = self.signers.get(&id.client).cloned();
                    return self.apply_elsewhere(index, id, decoded, signer);
                }
                let signer = self.signers.get(&id.client);
                let applied = apply_to(&mut self.kv, index, id, decoded, signer);
                self.finish_command(index, id, applied);
            }
        }
        self.serve_ready_reads();
    }

    fn apply_elsewhere(
        &mut self,
        index: u64,
        id: RequestId,
        decoded: Result<Envelope, DecodeError>,
        signer: Option<SignedBy>,
    ) {
        let mut kv = std::mem::take(&mut self.kv);
        let (tx, done) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let applied = apply_to(&mut kv, index, id, decoded, signer.as_ref());
            // The driver may have stopped meanwhile: then nobody needs the store.
            let _ = tx.send((kv, applied));
        });
        self.applying = Some(Applying { index, id, done });
    }

    /// The heavy entry is applied: take the store back and catch up on what queued.
    pub(super) fn on_applied(
        &mut self,
        result: Result<(KvStore, Applied), oneshot::error::RecvError>,
    ) {
        let Applying { index, id, .. } = self.applying.take().expect("an entry was away");
        let Ok((kv, applied)) = result else {
            self.fatal = Some(format!("the thread applying entry {index} died"));
            return;
        };
        self.kv = kv;
        self.finish_command(index, id, applied);
        while !self.store_away() {
            match self.backlog.pop_front() {
                Some(Backlogged::Commit(committed)) => self.apply_committed(committed),
                Some(Backlogged::Restore(index, data)) => self.restore(index, data),
                Some(Backlogged::Snapshot(index)) => self.snapshot_at(index),
                None => break,
            }
        }
        self.serve_ready_reads();
        self.maybe_snapshot();
        self.publish_status();
    }

    /// After a command is applied: its events to the watchers, its result to the client.
    fn finish_command(&mut self, index: u64, id: RequestId, mut applied: Applied) {
        metrics::counter!("ekmat_applied_total").increment(1);
        self.publish_events(&mut applied);
        self.on_behalf.remove(&id);
        if id.client != ekmat_kv::ANONYMOUS_CLIENT {
            self.wake_signed(Some(id.client));
        }
        let Some(PendingWrite { reply, .. }) = self.pending_writes.remove(&id) else {
            return;
        };
        let result = match applied {
            Applied::Executed { result, .. } | Applied::Repeated(result) => {
                result.map_err(CallError::Kv)
            }
            Applied::Superseded => Err(CallError::Busy),
            Applied::Malformed(e) => {
                tracing::error!(index, error = %e, "a committed entry is not a command");
                Err(CallError::Busy)
            }
        };
        let _ = reply.send(result);
    }

    fn restore(&mut self, index: u64, data: Bytes) {
        let restored = Members::unwrap_snapshot(&data).and_then(|(members, kv)| {
            let kv = KvStore::restore(&kv).map_err(|e| e.to_string())?;
            Ok((members, kv))
        });
        let (members, kv) = match restored {
            Ok(restored) => restored,
            Err(e) => {
                self.fatal = Some(format!("cannot restore the snapshot at index {index}: {e}"));
                return;
            }
        };
        if P::RECONFIGURES {
            self.members = members;
            self.sync_peers();
        }
        tracing::info!(
            index,
            bytes = data.len(),
            "restored the state machine from a snapshot"
        );
        self.kv = kv;
        self.last_snapshot = index;
        self.applied_bytes = 0;
        self.last_snapshot_bytes = data.len() as u64;
        self.hub.publish(Published::Reset);
        self.wake_signed(None);
        self.serve_ready_reads();
    }
}

/// Apply a committed request, as its signer's if a registered client signed it.
fn apply_to(
    kv: &mut KvStore,
    index: u64,
    id: RequestId,
    decoded: Result<Envelope, DecodeError>,
    signer: Option<&SignedBy>,
) -> Applied {
    match signer {
        Some(signer) => kv.apply_signed(index, id, decoded, signer),
        None => kv.apply_decoded(index, id, decoded),
    }
}
