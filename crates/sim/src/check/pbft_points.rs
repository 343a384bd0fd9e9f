//! **snapshot points**: honest PBFT replicas snapshot at the same points. They vouch
//! for one another's snapshots only there, and a replica behind installs one only on
//! f+1 matching vouches, so a replica that snapshots elsewhere leaves others behind it
//! stuck. Points are named by state-machine index, the same at every honest replica.
//!
//! A replica that asked for a snapshot at `a` and next at `b`, executing everything in
//! between (no snapshot restored meanwhile), passed no point strictly between them: if
//! another honest replica asked at one, they disagree.

use std::collections::BTreeMap;

use ekmat_core::{NodeId, Time};

use crate::protocol::Violation;

pub(crate) struct SnapshotPoints {
    /// Indexes honest replicas asked for snapshots at, and who first.
    asked: BTreeMap<u64, NodeId>,
    /// Per replica: its last point, where it executes on from (`None`: not known).
    last: Vec<Option<u64>>,
    /// Per replica: spans `from -> to` it executed through asking at neither inside.
    gaps: Vec<BTreeMap<u64, u64>>,
}

impl SnapshotPoints {
    pub(crate) fn new(n: usize) -> SnapshotPoints {
        SnapshotPoints {
            asked: BTreeMap::new(),
            // Executing starts at index 0, as from a point.
            last: vec![Some(0); n],
            gaps: vec![BTreeMap::new(); n],
        }
    }

    /// An honest replica asked for a snapshot at `index`.
    pub(crate) fn asked(&mut self, now: Time, node: NodeId, index: u64) -> Result<(), Violation> {
        let violation = |detail: String| Err(Violation::new("snapshot-points", now, detail));
        if let Some(prev) = self.last[node.index()].filter(|&p| p < index) {
            if let Some((point, by)) = self.asked.range(prev + 1..index).next() {
                return violation(format!(
                    "{node} snapshotted at {prev} and then at {index}, but {by} at {point}"
                ));
            }
            self.gaps[node.index()].insert(prev, index);
        }
        for (other, gaps) in self.gaps.iter().enumerate() {
            let skipped = gaps.range(..index).next_back();
            if let Some((&from, &to)) = skipped.filter(|(_, to)| **to > index) {
                return violation(format!(
                    "{node} snapshotted at {index}, but n{other} went from {from} to {to} without"
                ));
            }
        }
        self.asked.entry(index).or_insert(node);
        self.last[node.index()] = Some(index);
        Ok(())
    }

    /// A replica restored the snapshot at `index` (installed from others, or its own
    /// at a restart): a point, from which it executes on.
    pub(crate) fn restored(&mut self, node: NodeId, index: u64) {
        self.last[node.index()] = Some(index);
    }

    /// A replica restarted: it executes again from the start, or from the snapshot it
    /// restores on its first step.
    pub(crate) fn restarted(&mut self, node: NodeId) {
        self.last[node.index()] = Some(0);
    }
}
