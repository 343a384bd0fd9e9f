//! Snapshots and log compaction (Raft §7).
//!
//! The driver hands the core the state machine's state at an applied index; the core
//! keeps it, compacts its log behind it (keeping a trailing margin), and makes both
//! durable. A follower whose next entries were compacted is sent the snapshot in chunks,
//! a few in flight at a time; it assembles them in order (holding a few that arrive
//! early, so reordering costs no resend), installs the snapshot, tells its driver to restore the state machine from it, and
//! continues from the entry after.

use std::collections::BTreeMap;

use bytes::Bytes;
use ekmat_core::{Effect, NodeId};

use crate::config::Mutant;
use crate::log::{RaftWrite, Snapshot};
use crate::message::{AppendOutcome, Echo, Message, SnapshotAck, SnapshotChunk};
use crate::node::{Out, RaftNode, Role};
use crate::progress::ReplicationState;

/// Snapshot chunks in flight to one follower.
const CHUNK_WINDOW: u64 = 4;

/// Chunks a follower holds that arrived ahead of a gap.
const EARLY_CHUNKS: usize = 2 * CHUNK_WINDOW as usize;

/// A snapshot arriving from the leader, chunk by chunk.
#[derive(Debug)]
pub(crate) struct Incoming {
    index: u64,
    last_term: u64,
    data: Vec<u8>,
    /// Chunks past the end of `data`, by offset.
    early: BTreeMap<u64, Bytes>,
}

impl Incoming {
    fn new(index: u64, last_term: u64) -> Incoming {
        Incoming {
            index,
            last_term,
            data: Vec::new(),
            early: BTreeMap::new(),
        }
    }

    /// Take in a chunk: append it if it continues the data, hold it if it is early.
    fn receive(&mut self, offset: u64, chunk: Bytes) {
        let end = self.data.len() as u64;
        if offset > end {
            if self.early.len() < EARLY_CHUNKS {
                self.early.insert(offset, chunk);
            }
            return;
        }
        self.append_from(offset, &chunk);
        while let Some(entry) = self.early.first_entry() {
            if *entry.key() > self.data.len() as u64 {
                break;
            }
            let (offset, chunk) = entry.remove_entry();
            self.append_from(offset, &chunk);
        }
    }

    /// Append what `chunk`, starting at `offset` (not past the end), adds.
    fn append_from(&mut self, offset: u64, chunk: &[u8]) {
        let overlap = (self.data.len() as u64 - offset) as usize;
        if let Some(new) = chunk.get(overlap..) {
            self.data.extend_from_slice(new);
        }
    }
}

impl RaftNode {
    /// The driver's state machine as of `index`.
    pub(crate) fn on_snapshot_taken(&mut self, index: u64, data: Bytes, out: &mut Out) {
        if index <= self.log.snapshot_index() || index > self.applied {
            return; // stale, or ahead of what the state machine can have applied
        }
        let term = self
            .log
            .term_at(index)
            .expect("applied entries after the snapshot are in the log");
        let Some(membership) = self.configs.at(index).cloned() else {
            return; // a joiner that never learned the configuration this far back
        };
        let keep_from = (index + 1)
            .saturating_sub(self.cfg.snapshot_trailing)
            .max(self.log.first_index());
        self.log.compact(index, term, keep_from);
        self.configs.compact(index, membership.clone());
        let snapshot = Snapshot {
            index,
            term,
            membership,
            data,
        };
        self.snapshot = Some(snapshot.clone());
        self.gate.persist(
            RaftWrite::Compact {
                snapshot,
                keep_from,
            },
            out,
        );
    }

    /// Begin sending our latest snapshot to `to`.
    pub(crate) fn start_snapshot(&mut self, to: NodeId, out: &mut Out) {
        let snapshot = self
            .snapshot
            .clone()
            .expect("a compacted log has a snapshot");
        let pr = self
            .progress
            .get_mut(&to)
            .expect("leader tracks every peer");
        pr.become_snapshot(snapshot);
        self.send_snapshot_chunk(to, out);
    }

    /// Resend from the follower's acknowledged offset (the heartbeat's job: chunks may
    /// have been lost), filling the window.
    pub(crate) fn resend_snapshot(&mut self, to: NodeId, out: &mut Out) {
        let pr = self
            .progress
            .get_mut(&to)
            .expect("leader tracks every peer");
        if let ReplicationState::Snapshot { index, offset, .. } = pr.state {
            pr.state = ReplicationState::Snapshot {
                index,
                offset,
                sent: offset,
            };
        }
        self.send_snapshot_chunk(to, out);
    }

    /// Send chunks until `CHUNK_WINDOW` are unacknowledged (at least one, so an empty
    /// snapshot still arrives).
    pub(crate) fn send_snapshot_chunk(&mut self, to: NodeId, out: &mut Out) {
        let chunk_bytes = self.cfg.snapshot_chunk_bytes as u64;
        let term = self.term;
        let pr = self
            .progress
            .get_mut(&to)
            .expect("leader tracks every peer");
        let (
            ReplicationState::Snapshot {
                index,
                offset,
                mut sent,
            },
            Some(snapshot),
        ) = (pr.state, &pr.sending)
        else {
            return;
        };
        let total = snapshot.data.len() as u64;
        sent = sent.max(offset);
        let window_end = (offset + CHUNK_WINDOW * chunk_bytes).min(total);
        loop {
            let end = (sent + chunk_bytes).min(total);
            let chunk = SnapshotChunk {
                term,
                index,
                last_term: snapshot.term,
                membership: snapshot.membership.clone(),
                offset: sent,
                total,
                data: snapshot.data.slice(sent as usize..end as usize),
            };
            out.send(to, Message::Snapshot(chunk));
            sent = end;
            if sent >= window_end {
                break;
            }
        }
        pr.state = ReplicationState::Snapshot {
            index,
            offset,
            sent,
        };
    }

    pub(crate) fn on_snapshot_ack(&mut self, from: NodeId, ack: SnapshotAck, out: &mut Out) {
        if ack.term > self.term {
            self.become_follower(ack.term, None, out);
            return;
        }
        if self.role != Role::Leader || ack.term != self.term {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return; // no longer a member
        };
        pr.recent_active = true;
        // The follower's word on how much it holds is the truth, even if it went back
        // (it may have restarted the transfer). Only progress sends the next chunk: a
        // repeated ack sending one too would keep a duplicate stream alive forever. The
        // heartbeat resends whatever was lost.
        if let ReplicationState::Snapshot {
            index,
            offset,
            sent,
        } = pr.state
            && index == ack.index
            && ack.received != offset
        {
            pr.state = ReplicationState::Snapshot {
                index,
                offset: ack.received,
                sent,
            };
            if ack.received > offset
                && sent < pr.sending.as_ref().map_or(0, |s| s.data.len() as u64)
            {
                pr.last_progress = self.now;
                self.send_snapshot_chunk(from, out);
            }
        }
    }

    pub(crate) fn on_snapshot_chunk(&mut self, from: NodeId, chunk: SnapshotChunk, out: &mut Out) {
        if !self.hear_from_leader(from, chunk.term, 0, out) {
            return;
        }
        self.reset_election_deadline();
        let stale_ok = self.cfg.mutant == Mutant::InstallStaleSnapshot;
        if chunk.index <= self.commit && !stale_ok {
            // Everything it covers is committed here already, hence matches the leader.
            let outcome = AppendOutcome::Accepted {
                match_index: chunk.index,
            };
            self.respond_append(from, outcome, Echo::default(), out);
            return;
        }
        let incoming = self
            .incoming
            .get_or_insert_with(|| Incoming::new(chunk.index, chunk.last_term));
        // A new snapshot starts over; a repeated first chunk of this one is a duplicate.
        if incoming.index != chunk.index {
            *incoming = Incoming::new(chunk.index, chunk.last_term);
        }
        incoming.receive(chunk.offset, chunk.data);
        let received = incoming.data.len() as u64;
        if received < chunk.total {
            let ack = SnapshotAck {
                term: self.term,
                index: chunk.index,
                received,
            };
            out.send(from, Message::SnapshotAck(ack));
            return;
        }
        let done = self.incoming.take().expect("assembled above");
        self.install(from, done, chunk.membership, out);
    }

    fn install(
        &mut self,
        from: NodeId,
        incoming: Incoming,
        membership: ekmat_core::Membership,
        out: &mut Out,
    ) {
        let data = Bytes::from(incoming.data);
        let index = incoming.index;
        self.log.install(index, incoming.last_term);
        // Configurations in entries kept after the snapshot stay in force.
        self.configs.truncate_from(self.log.last_index() + 1);
        self.configs.compact(index, membership.clone());
        let snapshot = Snapshot {
            index,
            term: incoming.last_term,
            membership,
            data: data.clone(),
        };
        self.snapshot = Some(snapshot.clone());
        let seq = self.gate.persist(
            RaftWrite::Snapshot {
                snapshot,
                keep_from: index + 1,
            },
            out,
        );
        self.log.note_write(seq);
        if self.cfg.mutant != Mutant::InstallStaleSnapshot {
            assert!(
                index > self.commit,
                "installing a snapshot behind the commit index"
            );
        }
        self.commit = index;
        self.applied = index;
        out.push(Effect::Restore { index, data });
        let outcome = AppendOutcome::Accepted { match_index: index };
        self.respond_append(from, outcome, Echo::default(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], size: usize) -> Vec<(u64, Bytes)> {
        data.chunks(size)
            .enumerate()
            .map(|(i, c)| ((i * size) as u64, Bytes::copy_from_slice(c)))
            .collect()
    }

    #[test]
    fn chunks_in_any_order_within_the_window_assemble_the_snapshot() {
        let data: Vec<u8> = (0..=255).collect();
        let mut parts = chunks(&data, 32);
        parts.reverse(); // 8 chunks, all early but the last to arrive
        let mut incoming = Incoming::new(7, 1);
        for (offset, chunk) in parts.iter().cloned() {
            incoming.receive(offset, chunk);
        }
        assert_eq!(incoming.data, data);
        assert!(incoming.early.is_empty());
    }

    #[test]
    fn duplicates_and_overlaps_add_nothing_twice() {
        let data: Vec<u8> = (0..100).collect();
        let mut incoming = Incoming::new(7, 1);
        incoming.receive(0, Bytes::copy_from_slice(&data[..40]));
        incoming.receive(0, Bytes::copy_from_slice(&data[..40]));
        incoming.receive(20, Bytes::copy_from_slice(&data[20..70]));
        incoming.receive(90, Bytes::copy_from_slice(&data[90..]));
        incoming.receive(70, Bytes::copy_from_slice(&data[70..90]));
        assert_eq!(incoming.data, data);
    }

    #[test]
    fn only_a_bounded_number_of_early_chunks_is_held() {
        let mut incoming = Incoming::new(7, 1);
        for i in 1..100u64 {
            incoming.receive(i * 10, Bytes::from_static(&[0; 10]));
        }
        assert_eq!(incoming.early.len(), EARLY_CHUNKS);
        assert!(incoming.data.is_empty());
    }
}
