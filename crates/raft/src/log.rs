//! The replicated log, what of it is durable, its snapshot, and the writes that make it
//! durable.
//!
//! A snapshot stands for every entry up to its index (Raft §7). Entries behind it may
//! be compacted away; a few are kept so that a follower slightly behind can still be
//! sent entries rather than the whole snapshot.

use std::collections::VecDeque;

use bytes::Bytes;
use ekmat_core::{Durable, Membership, MembershipChange, NodeId, RequestId};

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub payload: Payload,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Payload {
    /// A new leader's first entry: committing it commits everything before it.
    Noop,
    Command {
        id: RequestId,
        command: Bytes,
    },
    /// A configuration, in force from this entry on (`changes` made it; none for the
    /// entry that ends a joint phase).
    Config {
        membership: Membership,
        changes: Vec<MembershipChange>,
    },
}

/// A state machine snapshot: the state after applying every entry up to `index`, whose
/// entry had `term`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub index: u64,
    pub term: u64,
    /// The configuration in force at `index`.
    pub membership: Membership,
    pub data: Bytes,
}

/// A durable write Raft asks its driver for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RaftWrite {
    HardState {
        term: u64,
        vote: Option<NodeId>,
    },
    /// Replace the log from `entries[0].index` on with `entries`.
    Append {
        entries: Vec<Entry>,
    },
    /// Keep `snapshot`. If the log holds the snapshot's last entry, keep the entries from
    /// `keep_from` on; otherwise the log disagrees with the snapshot and is dropped.
    Snapshot {
        snapshot: Snapshot,
        keep_from: u64,
    },
    /// This replica's own snapshot of its state machine, compacting its log as
    /// `Snapshot` does. Everything it covers is in the log writes before it, so a crash
    /// that loses it loses nothing: the replica restarts from its previous snapshot and
    /// the longer log. A storage layer may therefore make it durable lazily (folded into
    /// a background checkpoint) while reporting the writes after it durable as usual.
    Compact {
        snapshot: Snapshot,
        keep_from: u64,
    },
}

impl RaftWrite {
    /// Whether losing this write in a crash loses nothing (see [`RaftWrite::Compact`]).
    pub fn is_compaction(&self) -> bool {
        matches!(self, RaftWrite::Compact { .. })
    }
}

/// What a Raft replica restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftStable {
    pub term: u64,
    pub vote: Option<NodeId>,
    pub snapshot: Option<Snapshot>,
    /// Consecutive entries; the first may follow the snapshot or overlap it.
    pub log: Vec<Entry>,
}

impl Durable<RaftWrite> for RaftStable {
    fn is_compaction(write: &RaftWrite) -> bool {
        write.is_compaction()
    }

    /// The snapshot's data and the entries' commands, with a little for each entry's
    /// header.
    fn encoded_len_hint(&self) -> Option<u64> {
        const ENTRY: usize = 32;
        let entries = self.log.iter().map(|e| match &e.payload {
            Payload::Command { command, .. } => command.len() + ENTRY,
            Payload::Noop | Payload::Config { .. } => ENTRY,
        });
        let snapshot = self.snapshot.as_ref().map_or(0, |s| s.data.len());
        Some((entries.sum::<usize>() + snapshot) as u64)
    }

    fn apply(&mut self, write: &RaftWrite) {
        match write {
            RaftWrite::HardState { term, vote } => {
                self.term = *term;
                self.vote = *vote;
            }
            RaftWrite::Append { entries } => {
                let Some(first) = entries.first() else { return };
                let base = self
                    .log
                    .first()
                    .map_or_else(|| self.after_snapshot(), |e| e.index);
                assert!(
                    first.index >= base && first.index <= base + self.log.len() as u64,
                    "append at index {} does not continue a log starting at {base} with {} entries",
                    first.index,
                    self.log.len()
                );
                self.log.truncate((first.index - base) as usize);
                self.log.extend(entries.iter().cloned());
            }
            RaftWrite::Snapshot {
                snapshot,
                keep_from,
            }
            | RaftWrite::Compact {
                snapshot,
                keep_from,
            } => {
                let holds_last = self
                    .log
                    .iter()
                    .any(|e| e.index == snapshot.index && e.term == snapshot.term);
                if holds_last {
                    self.log.retain(|e| e.index >= *keep_from);
                } else {
                    self.log.clear();
                }
                self.snapshot = Some(snapshot.clone());
            }
        }
    }
}

impl RaftStable {
    fn after_snapshot(&self) -> u64 {
        self.snapshot.as_ref().map_or(1, |s| s.index + 1)
    }
}

/// The in-memory log: every entry this replica holds, whether durable yet or not.
/// Indexes start at 1; index 0 stands for the empty prefix, with term 0.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    /// Last entry covered by the snapshot (0 = none) and its term.
    snapshot_index: u64,
    snapshot_term: u64,
    /// Index of `entries[0]`; at most `snapshot_index + 1`.
    first: u64,
    entries: Vec<Entry>,
    /// Entries up to `durable` are on disk as they are in memory (or in the snapshot).
    durable: u64,
    /// Appends not yet reported durable: (write seq, last index that write covers).
    unsynced: VecDeque<(u64, u64)>,
}

impl RaftLog {
    /// A log recovered from disk: all of it durable.
    pub fn recovered(snapshot: Option<(u64, u64)>, entries: Vec<Entry>) -> RaftLog {
        let (snapshot_index, snapshot_term) = snapshot.unwrap_or((0, 0));
        let first = entries.first().map_or(snapshot_index + 1, |e| e.index);
        assert!(
            first <= snapshot_index + 1,
            "recovered log starts at {first}, after snapshot {snapshot_index}"
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                first + i as u64,
                "recovered log has a gap at {}",
                first + i as u64
            );
        }
        let mut log = RaftLog {
            snapshot_index,
            snapshot_term,
            first,
            entries,
            durable: 0,
            unsynced: VecDeque::new(),
        };
        log.durable = log.last_index();
        log
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> u64 {
        self.snapshot_term
    }

    /// The first index still held as an entry; earlier ones live only in the snapshot.
    pub fn first_index(&self) -> u64 {
        self.first
    }

    pub fn last_index(&self) -> u64 {
        (self.first - 1 + self.entries.len() as u64).max(self.snapshot_index)
    }

    pub fn last_term(&self) -> u64 {
        self.term_at(self.last_index())
            .expect("the last index has a term")
    }

    pub fn durable_index(&self) -> u64 {
        self.durable
    }

    /// Term of the entry at `index`; 0 for index 0; None if compacted away or past the end.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if let Some(e) = self.get(index) {
            return Some(e.term);
        }
        match index {
            0 => Some(0),
            i if i == self.snapshot_index => Some(self.snapshot_term),
            _ => None,
        }
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        let i = index.checked_sub(self.first)? as usize;
        self.entries.get(i)
    }

    /// Up to `max` entries starting at `from` (which must not be compacted).
    pub fn slice(&self, from: u64, max: usize) -> &[Entry] {
        assert!(
            from >= self.first,
            "entry {from} was compacted (log starts at {})",
            self.first
        );
        let start = (from - self.first) as usize;
        if start >= self.entries.len() {
            return &[];
        }
        let end = (start + max).min(self.entries.len());
        &self.entries[start..end]
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date as
    /// this one (Raft §5.4.1).
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// First index holding `term`, scanning back from `from` while the term holds.
    pub fn first_index_of_term_ending_at(&self, from: u64) -> u64 {
        let Some(term) = self.term_at(from) else {
            return from;
        };
        let mut i = from;
        while i > self.first && self.term_at(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// Last index whose term is `term`, if any (the leader's side of conflict skipping).
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .skip_while(|e| e.term > term)
            .take_while(|e| e.term == term)
            .map(|e| e.index)
            .next()
    }

    /// Append entries that start at `entries[0].index`, dropping whatever conflicts.
    /// Returns the suffix actually written (empty if every entry was already present).
    /// `committed` entries must never be overwritten. Entries at or before the snapshot
    /// are committed, so they are skipped.
    pub fn merge(&mut self, entries: &[Entry], committed: u64) -> Vec<Entry> {
        let Some(pos) = entries
            .iter()
            .position(|e| e.index > self.snapshot_index && self.term_at(e.index) != Some(e.term))
        else {
            return Vec::new();
        };
        let new = &entries[pos..];
        let first = new[0].index;
        assert!(
            first > committed,
            "conflicting entry at {first} would overwrite committed index {committed}"
        );
        assert!(
            first <= self.last_index() + 1,
            "append at {first} leaves a gap after {}",
            self.last_index()
        );
        self.truncate_after(first - 1);
        self.entries.extend(new.iter().cloned());
        new.to_vec()
    }

    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "log push out of order");
        assert!(
            entry.term >= self.last_term(),
            "log terms must not decrease"
        );
        if self.entries.is_empty() {
            self.first = entry.index;
        }
        self.entries.push(entry);
    }

    fn truncate_after(&mut self, keep: u64) {
        self.entries
            .truncate(keep.saturating_sub(self.first - 1) as usize);
        self.durable = self.durable.min(keep);
        for (_, last) in self.unsynced.iter_mut() {
            *last = (*last).min(keep);
        }
    }

    /// Record a snapshot at `index` (which this log holds, with `term`) and drop the
    /// entries before `keep_from`.
    pub fn compact(&mut self, index: u64, term: u64, keep_from: u64) {
        assert!(index >= self.snapshot_index, "snapshots move forward");
        assert!(
            keep_from <= index + 1 && keep_from >= self.first,
            "keep_from {keep_from} out of range"
        );
        assert_eq!(
            self.term_at(index),
            Some(term),
            "compacting at an entry this log does not hold"
        );
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.entries.drain(..(keep_from - self.first) as usize);
        self.first = keep_from;
    }

    /// Replace the log with a snapshot received from the leader. Entries after it are
    /// kept if the log agrees with the snapshot's last entry (Raft §7).
    pub fn install(&mut self, index: u64, term: u64) {
        if self.term_at(index) == Some(term) && index >= self.first {
            self.entries.drain(..(index + 1 - self.first) as usize);
        } else {
            self.entries.clear();
            self.durable = self.durable.min(index);
        }
        self.first = index + 1;
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Remember that write `seq` covers the log up to its current end.
    pub fn note_write(&mut self, seq: u64) {
        self.unsynced.push_back((seq, self.last_index()));
    }

    /// Writes up to `seq` are durable.
    pub fn on_persisted(&mut self, seq: u64) {
        while let Some(&(s, last)) = self.unsynced.front() {
            if s > seq {
                break;
            }
            self.durable = self.durable.max(last);
            self.unsynced.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Noop,
        }
    }

    fn log(terms: &[u64]) -> RaftLog {
        RaftLog::recovered(
            None,
            terms
                .iter()
                .enumerate()
                .map(|(i, &t)| e(i as u64 + 1, t))
                .collect(),
        )
    }

    #[test]
    fn merge_skips_matching_entries_and_truncates_conflicts() {
        let mut l = log(&[1, 1, 2, 2]);
        assert!(l.merge(&[e(2, 1), e(3, 2)], 0).is_empty());
        let written = l.merge(&[e(3, 3), e(4, 3), e(5, 3)], 2);
        assert_eq!(written.len(), 3);
        assert_eq!(l.last_index(), 5);
        assert_eq!(l.term_at(3), Some(3));
        assert_eq!(
            l.durable_index(),
            2,
            "truncation shrinks the durable prefix"
        );
    }

    #[test]
    #[should_panic(expected = "overwrite committed")]
    fn merge_refuses_to_overwrite_committed_entries() {
        let mut l = log(&[1, 1, 2]);
        l.merge(&[e(2, 3)], 2);
    }

    #[test]
    fn durable_prefix_follows_writes_and_truncation() {
        let mut l = log(&[1]);
        l.push(e(2, 1));
        l.note_write(1);
        l.push(e(3, 1));
        l.note_write(2);
        l.merge(&[e(3, 2)], 1);
        l.note_write(3);
        l.on_persisted(2);
        assert_eq!(
            l.durable_index(),
            2,
            "write 2 covered an entry since replaced"
        );
        l.on_persisted(3);
        assert_eq!(l.durable_index(), 3);
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let l = log(&[1, 2, 2]);
        assert!(l.is_up_to_date(3, 2));
        assert!(l.is_up_to_date(1, 3));
        assert!(!l.is_up_to_date(9, 1));
        assert!(!l.is_up_to_date(2, 2));
    }

    #[test]
    fn conflict_hints() {
        let l = log(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(l.first_index_of_term_ending_at(5), 3);
        assert_eq!(l.last_index_of_term(2), Some(5));
        assert_eq!(l.last_index_of_term(3), None);
    }

    #[test]
    fn compaction_keeps_a_tail_and_the_snapshot_term() {
        let mut l = log(&[1, 1, 2, 2, 3]);
        l.compact(4, 2, 3);
        assert_eq!(
            (l.first_index(), l.last_index(), l.snapshot_index()),
            (3, 5, 4)
        );
        assert_eq!(l.term_at(2), None, "compacted");
        assert_eq!(l.term_at(3), Some(2));
        assert_eq!(l.term_at(4), Some(2));
        l.compact(5, 3, 6);
        assert_eq!((l.first_index(), l.last_index(), l.last_term()), (6, 5, 3));
        l.push(e(6, 4));
        assert_eq!(l.slice(6, 10), &[e(6, 4)]);
    }

    #[test]
    fn installing_a_snapshot_keeps_only_an_agreeing_suffix() {
        let mut agree = log(&[1, 1, 2, 2]);
        agree.install(3, 2);
        assert_eq!((agree.first_index(), agree.last_index()), (4, 4));
        let mut conflict = log(&[1, 1, 1, 1]);
        conflict.install(3, 2);
        assert_eq!((conflict.last_index(), conflict.last_term()), (3, 2));
        let mut short = log(&[1]);
        short.install(7, 3);
        assert_eq!(
            (short.first_index(), short.last_index(), short.last_term()),
            (8, 7, 3)
        );
    }

    #[test]
    fn merge_skips_entries_the_snapshot_covers() {
        let mut l = log(&[1, 1, 2]);
        l.install(3, 2);
        let written = l.merge(&[e(2, 1), e(3, 2), e(4, 2)], 3);
        assert_eq!(written, vec![e(4, 2)]);
    }

    #[test]
    fn stable_state_folds_writes_including_snapshots() {
        let mut s = RaftStable::default();
        s.apply(&RaftWrite::Append {
            entries: vec![e(1, 1), e(2, 1), e(3, 2)],
        });
        s.apply(&RaftWrite::Append {
            entries: vec![e(3, 3)],
        });
        s.apply(&RaftWrite::HardState {
            term: 3,
            vote: Some(NodeId(1)),
        });
        assert_eq!(s.log, vec![e(1, 1), e(2, 1), e(3, 3)]);
        let snap = Snapshot {
            index: 2,
            term: 1,
            membership: Default::default(),
            data: Bytes::from_static(b"state"),
        };
        s.apply(&RaftWrite::Snapshot {
            snapshot: snap.clone(),
            keep_from: 3,
        });
        assert_eq!(s.log, vec![e(3, 3)]);
        s.apply(&RaftWrite::Append {
            entries: vec![e(4, 3)],
        });
        assert_eq!(s.log, vec![e(3, 3), e(4, 3)]);
        let other = Snapshot {
            index: 9,
            term: 5,
            membership: Default::default(),
            data: Bytes::new(),
        };
        s.apply(&RaftWrite::Snapshot {
            snapshot: other.clone(),
            keep_from: 10,
        });
        assert!(
            s.log.is_empty(),
            "a snapshot the log disagrees with replaces it"
        );
        s.apply(&RaftWrite::Append {
            entries: vec![e(10, 5)],
        });
        assert_eq!(s.snapshot, Some(other));
        assert_eq!(s.log, vec![e(10, 5)]);
    }
}
