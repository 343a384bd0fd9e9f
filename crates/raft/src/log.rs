//! The replicated log, what of it is durable, and the writes that make it so.

use std::collections::VecDeque;

use bytes::Bytes;
use ekmat_core::{Durable, NodeId, RequestId};

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
}

/// What a Raft replica restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftStable {
    pub term: u64,
    pub vote: Option<NodeId>,
    pub log: Vec<Entry>,
}

impl Durable<RaftWrite> for RaftStable {
    fn apply(&mut self, write: &RaftWrite) {
        match write {
            RaftWrite::HardState { term, vote } => {
                self.term = *term;
                self.vote = *vote;
            }
            RaftWrite::Append { entries } => {
                let Some(first) = entries.first() else { return };
                let keep = first.index.saturating_sub(1) as usize;
                assert!(
                    keep <= self.log.len(),
                    "append at index {} leaves a gap after {}",
                    first.index,
                    self.log.len()
                );
                self.log.truncate(keep);
                self.log.extend(entries.iter().cloned());
            }
        }
    }
}

/// The in-memory log: every entry this replica holds, whether durable yet or not.
/// Indexes start at 1; index 0 stands for the empty prefix, with term 0.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    entries: Vec<Entry>,
    /// Entries `1..=durable` are on disk as they are in memory.
    durable: u64,
    /// Appends not yet reported durable: (write seq, last index that write covers).
    unsynced: VecDeque<(u64, u64)>,
}

impl RaftLog {
    /// A log recovered from disk: all of it durable.
    pub fn recovered(entries: Vec<Entry>) -> RaftLog {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                i as u64 + 1,
                "recovered log has a gap at {}",
                i + 1
            );
        }
        let durable = entries.len() as u64;
        RaftLog {
            entries,
            durable,
            unsynced: VecDeque::new(),
        }
    }

    pub fn last_index(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.term)
    }

    pub fn durable_index(&self) -> u64 {
        self.durable
    }

    /// Term of the entry at `index`; 0 for index 0, None past the end.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        self.get(index).map(|e| e.term)
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        let i = index.checked_sub(1)? as usize;
        self.entries.get(i)
    }

    /// Up to `max` entries starting at `from`.
    pub fn slice(&self, from: u64, max: usize) -> &[Entry] {
        let start = (from.max(1) - 1) as usize;
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
        while i > 1 && self.term_at(i - 1) == Some(term) {
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
    /// `committed` entries must never be overwritten.
    pub fn merge(&mut self, entries: &[Entry], committed: u64) -> Vec<Entry> {
        let Some(pos) = entries
            .iter()
            .position(|e| self.term_at(e.index) != Some(e.term))
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
        self.entries.push(entry);
    }

    fn truncate_after(&mut self, keep: u64) {
        self.entries.truncate(keep as usize);
        self.durable = self.durable.min(keep);
        for (_, last) in self.unsynced.iter_mut() {
            *last = (*last).min(keep);
        }
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
    fn stable_state_folds_writes() {
        let mut s = RaftStable::default();
        s.apply(&RaftWrite::Append {
            entries: vec![e(1, 1), e(2, 1)],
        });
        s.apply(&RaftWrite::Append {
            entries: vec![e(2, 2)],
        });
        s.apply(&RaftWrite::HardState {
            term: 2,
            vote: Some(NodeId(1)),
        });
        assert_eq!(s.log, vec![e(1, 1), e(2, 2)]);
        assert_eq!((s.term, s.vote), (2, Some(NodeId(1))));
    }
}
