//! Quorum math: who must agree before something counts.
//!
//! One type serves crash-fault majorities, Byzantine 2f+1-of-3f+1 quorums and weighted
//! votes: a set of members, a weight per member, and a threshold weight. Votes from
//! non-members are ignored and each member counts once, however often it is named.

use std::collections::BTreeMap;

use crate::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumSet {
    weights: BTreeMap<NodeId, u64>,
    threshold: u64,
}

/// The outcome of a vote so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

impl QuorumSet {
    /// Crash-fault tolerance: more than half of the members.
    pub fn majority(members: impl IntoIterator<Item = NodeId>) -> QuorumSet {
        let weights: BTreeMap<NodeId, u64> = members.into_iter().map(|m| (m, 1)).collect();
        let threshold = weights.len() as u64 / 2 + 1;
        QuorumSet { weights, threshold }
    }

    /// Byzantine fault tolerance with `f = (n - 1) / 3`: any two quorums share at least
    /// `f + 1` members, so at least one honest one. For `n = 3f + 1` this is `2f + 1`.
    pub fn byzantine(members: impl IntoIterator<Item = NodeId>) -> QuorumSet {
        let weights: BTreeMap<NodeId, u64> = members.into_iter().map(|m| (m, 1)).collect();
        let n = weights.len() as u64;
        let f = n.saturating_sub(1) / 3;
        let threshold = (n + f + 1).div_ceil(2);
        QuorumSet { weights, threshold }
    }

    /// More than half of the total weight. Members of weight zero never count.
    pub fn weighted(members: impl IntoIterator<Item = (NodeId, u64)>) -> QuorumSet {
        let weights: BTreeMap<NodeId, u64> = members.into_iter().collect();
        let threshold = weights.values().sum::<u64>() / 2 + 1;
        QuorumSet { weights, threshold }
    }

    /// An explicit threshold: for protocols (and demonstrations of unsafe
    /// configurations) that choose their own quorum size.
    pub fn with_threshold(members: impl IntoIterator<Item = NodeId>, threshold: u64) -> QuorumSet {
        let weights = members.into_iter().map(|m| (m, 1)).collect();
        QuorumSet { weights, threshold }
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    pub fn total_weight(&self) -> u64 {
        self.weights.values().sum()
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.weights.contains_key(&id)
    }

    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.weights.keys().copied()
    }

    /// Byzantine members tolerated: `f = (n - 1) / 3`.
    pub fn max_faulty(&self) -> usize {
        self.len().saturating_sub(1) / 3
    }

    /// Weight of the distinct members among `ids`.
    pub fn weight_of(&self, ids: impl IntoIterator<Item = NodeId>) -> u64 {
        let mut seen: Vec<NodeId> = ids.into_iter().filter(|id| self.contains(*id)).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.iter().map(|id| self.weights[id]).sum()
    }

    pub fn is_quorum(&self, ids: impl IntoIterator<Item = NodeId>) -> bool {
        self.weight_of(ids) >= self.threshold
    }

    /// Won once the granted weight reaches the threshold; lost once the weight that has
    /// not rejected can no longer reach it.
    pub fn vote_result(
        &self,
        granted: impl IntoIterator<Item = NodeId>,
        rejected: impl IntoIterator<Item = NodeId>,
    ) -> VoteResult {
        if self.weight_of(granted) >= self.threshold {
            return VoteResult::Won;
        }
        let still_possible = self.total_weight().saturating_sub(self.weight_of(rejected));
        if still_possible < self.threshold {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// The highest index that members of at least threshold weight have reached, given
    /// each member's index (Raft's commit rule before its term check). Zero if none.
    pub fn committed_index(&self, index_of: impl Fn(NodeId) -> u64) -> u64 {
        let mut acks: Vec<(u64, u64)> = self
            .weights
            .iter()
            .map(|(&id, &w)| (index_of(id), w))
            .collect();
        acks.sort_unstable_by_key(|&(index, _)| std::cmp::Reverse(index));
        let mut weight = 0;
        for (index, w) in acks {
            weight += w;
            if weight >= self.threshold {
                return index;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: u32) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    #[test]
    fn majority_sizes() {
        // n -> quorum, failures tolerated (seed 001's table).
        for (n, q) in [
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (5, 3),
            (6, 4),
            (7, 4),
            (9, 5),
        ] {
            let qs = QuorumSet::majority(ids(n));
            assert_eq!(qs.threshold(), q, "n={n}");
        }
    }

    #[test]
    fn byzantine_sizes_are_2f_plus_1_of_3f_plus_1() {
        for f in 0..6u32 {
            let qs = QuorumSet::byzantine(ids(3 * f + 1));
            assert_eq!(qs.threshold(), 2 * f as u64 + 1, "f={f}");
            assert_eq!(qs.max_faulty(), f as usize);
        }
        // n = 10 tolerates f = 3 and needs 7 (seed 004's ten-bank consortium).
        assert_eq!(QuorumSet::byzantine(ids(10)).threshold(), 7);
    }

    #[test]
    fn non_members_and_duplicates_do_not_count() {
        let qs = QuorumSet::majority(ids(3));
        assert!(!qs.is_quorum([NodeId(0), NodeId(0), NodeId(9)]));
        assert!(qs.is_quorum([NodeId(0), NodeId(2)]));
    }

    #[test]
    fn votes_are_won_lost_or_pending() {
        let qs = QuorumSet::majority(ids(5));
        let none: [NodeId; 0] = [];
        assert_eq!(
            qs.vote_result([NodeId(0), NodeId(1), NodeId(2)], none),
            VoteResult::Won
        );
        assert_eq!(
            qs.vote_result([NodeId(0)], [NodeId(1), NodeId(2)]),
            VoteResult::Pending
        );
        assert_eq!(
            qs.vote_result([NodeId(0)], [NodeId(1), NodeId(2), NodeId(3)]),
            VoteResult::Lost
        );
    }

    #[test]
    fn committed_index_is_the_quorum_minimum() {
        let qs = QuorumSet::majority(ids(5));
        let matched = [9, 7, 7, 3, 1];
        assert_eq!(qs.committed_index(|id| matched[id.index()]), 7);
        let qs = QuorumSet::majority(ids(4));
        let matched = [9, 7, 3, 1];
        assert_eq!(qs.committed_index(|id| matched[id.index()]), 3);
    }

    #[test]
    fn weighted_quorum_counts_weight_not_heads() {
        let qs = QuorumSet::weighted([(NodeId(0), 3), (NodeId(1), 1), (NodeId(2), 1)]);
        assert_eq!(qs.threshold(), 3);
        assert!(qs.is_quorum([NodeId(0)]));
        assert!(!qs.is_quorum([NodeId(1), NodeId(2)]));
        let matched = [2, 8, 9];
        assert_eq!(qs.committed_index(|id| matched[id.index()]), 2);
    }

    fn subset(n: u32, mask: u32) -> Vec<NodeId> {
        (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(NodeId)
            .collect()
    }

    proptest! {
        #[test]
        fn any_two_majorities_intersect(n in 1u32..10, a: u32, b: u32) {
            let qs = QuorumSet::majority(ids(n));
            let (a, b) = (subset(n, a), subset(n, b));
            if qs.is_quorum(a.clone()) && qs.is_quorum(b.clone()) {
                prop_assert!(a.iter().any(|x| b.contains(x)));
            }
        }

        #[test]
        fn any_two_byzantine_quorums_share_an_honest_member(n in 1u32..14, a: u32, b: u32) {
            let qs = QuorumSet::byzantine(ids(n));
            let (a, b) = (subset(n, a), subset(n, b));
            if qs.is_quorum(a.clone()) && qs.is_quorum(b.clone()) {
                let shared = a.iter().filter(|x| b.contains(x)).count();
                prop_assert!(shared > qs.max_faulty());
            }
        }
    }
}
