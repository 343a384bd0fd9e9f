//! Who takes part in a cluster, and how that changes safely.
//!
//! A membership is a set of voters, optionally a second (outgoing) set of voters while
//! a change is under way, and learners that receive the log without voting. During such
//! a *joint* configuration (Raft thesis ch. 4) every decision needs a majority of both
//! voter sets, so no two disjoint majorities — one of the old set, one of the new — can
//! ever decide different things. Learners never count towards a quorum.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

use crate::{NodeId, QuorumSet, VoteResult};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    /// The previous voters while a joint configuration is in force; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// One change an operator asks for. `context` is the driver's own record of the member
/// (its name and addresses), carried through the log untouched.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MembershipChange {
    pub action: ChangeAction,
    pub node: NodeId,
    pub context: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ChangeAction {
    AddVoter,
    AddLearner,
    /// Turn a learner into a voter.
    Promote,
    Remove,
    /// Replace a member's record (its `context`: name, addresses) without changing who
    /// votes.
    Update,
}

/// Why a membership change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ChangeError {
    /// The request names no change.
    Empty,
    /// One request names the same node twice.
    DuplicateNode(NodeId),
    AlreadyMember(NodeId),
    NotMember(NodeId),
    NotLearner(NodeId),
    /// The change would leave no voter.
    NoVoters,
    /// A learner is promoted only once it holds most of the log, so the cluster does not
    /// count on a voter that cannot vote usefully yet.
    NotCaughtUp(NodeId),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Empty => write!(f, "no membership change requested"),
            ChangeError::DuplicateNode(n) => write!(f, "{n} is named twice in one change"),
            ChangeError::AlreadyMember(n) => write!(f, "{n} is already a member"),
            ChangeError::NotMember(n) => write!(f, "{n} is not a member"),
            ChangeError::NotLearner(n) => write!(f, "{n} is not a learner"),
            ChangeError::NoVoters => write!(f, "the change would leave the cluster without voters"),
            ChangeError::NotCaughtUp(n) => {
                write!(f, "learner {n} has not caught up with the leader")
            }
        }
    }
}

impl Membership {
    /// A cluster of `voters` and no learners.
    pub fn of(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// A voter of either set: it may campaign and its vote counts.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member, each once, in order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let all: BTreeSet<NodeId> = self
            .voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .copied()
            .collect();
        all.into_iter()
    }

    /// The configuration after `changes`. A change of voters enters a joint
    /// configuration (old voters outgoing); a change of learners alone takes effect at
    /// once, since no quorum changes. Refused while already joint.
    pub fn apply(&self, changes: &[MembershipChange]) -> Result<Membership, ChangeError> {
        assert!(
            !self.is_joint(),
            "a change starts from a settled configuration"
        );
        if changes.is_empty() {
            return Err(ChangeError::Empty);
        }
        let mut named = BTreeSet::new();
        let mut next = self.clone();
        for c in changes {
            if !named.insert(c.node) {
                return Err(ChangeError::DuplicateNode(c.node));
            }
            let n = c.node;
            match c.action {
                ChangeAction::AddVoter | ChangeAction::AddLearner if self.contains(n) => {
                    return Err(ChangeError::AlreadyMember(n));
                }
                ChangeAction::AddVoter => {
                    next.voters.insert(n);
                }
                ChangeAction::AddLearner => {
                    next.learners.insert(n);
                }
                ChangeAction::Promote if !self.learners.contains(&n) => {
                    return Err(ChangeError::NotLearner(n));
                }
                ChangeAction::Promote => {
                    next.learners.remove(&n);
                    next.voters.insert(n);
                }
                ChangeAction::Remove | ChangeAction::Update if !self.contains(n) => {
                    return Err(ChangeError::NotMember(n));
                }
                ChangeAction::Update => {}
                ChangeAction::Remove => {
                    next.voters.remove(&n);
                    next.learners.remove(&n);
                }
            }
        }
        if next.voters.is_empty() {
            return Err(ChangeError::NoVoters);
        }
        if next.voters != self.voters {
            next.outgoing = self.voters.clone();
        }
        Ok(next)
    }

    /// The configuration that ends a joint one: the new voters alone.
    pub fn leave_joint(&self) -> Membership {
        Membership {
            outgoing: BTreeSet::new(),
            ..self.clone()
        }
    }

    fn quorums(&self) -> impl Iterator<Item = QuorumSet> + '_ {
        let outgoing = self
            .is_joint()
            .then(|| QuorumSet::majority(self.outgoing.iter().copied()));
        std::iter::once(QuorumSet::majority(self.voters.iter().copied())).chain(outgoing)
    }

    /// Whether `ids` hold a majority of every voter set. Never, with no voters.
    pub fn is_quorum(&self, ids: impl IntoIterator<Item = NodeId> + Clone) -> bool {
        !self.voters.is_empty() && self.quorums().all(|q| q.is_quorum(ids.clone()))
    }

    /// Won once every voter set has granted a majority; lost once any cannot.
    pub fn vote_result(
        &self,
        granted: impl IntoIterator<Item = NodeId> + Clone,
        rejected: impl IntoIterator<Item = NodeId> + Clone,
    ) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Pending;
        }
        let results: Vec<VoteResult> = self
            .quorums()
            .map(|q| q.vote_result(granted.clone(), rejected.clone()))
            .collect();
        if results.contains(&VoteResult::Lost) {
            VoteResult::Lost
        } else if results.iter().all(|r| *r == VoteResult::Won) {
            VoteResult::Won
        } else {
            VoteResult::Pending
        }
    }

    /// The highest index a majority of every voter set has reached.
    pub fn committed_index(&self, index_of: impl Fn(NodeId) -> u64) -> u64 {
        self.quorums()
            .map(|q| q.committed_index(&index_of))
            .min()
            .unwrap_or(0)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |s: &BTreeSet<NodeId>| {
            s.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "voters {{{}}}", list(&self.voters))?;
        if self.is_joint() {
            write!(f, " joint with {{{}}}", list(&self.outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners {{{}}}", list(&self.learners))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u32]) -> Vec<NodeId> {
        list.iter().copied().map(NodeId).collect()
    }

    fn change(action: ChangeAction, node: u32) -> MembershipChange {
        MembershipChange {
            action,
            node: NodeId(node),
            context: Bytes::new(),
        }
    }

    #[test]
    fn replacing_a_voter_goes_through_a_joint_configuration() {
        let m = Membership::of(ids(&[0, 1, 2]));
        let joint = m
            .apply(&[
                change(ChangeAction::AddVoter, 3),
                change(ChangeAction::Remove, 2),
            ])
            .unwrap();
        assert!(joint.is_joint());
        assert_eq!(joint.voters, ids(&[0, 1, 3]).into_iter().collect());
        // {1,2} is a majority of the old voters only; {0,3} of the new only.
        assert!(!joint.is_quorum(ids(&[1, 2])));
        assert!(!joint.is_quorum(ids(&[0, 3])));
        assert!(joint.is_quorum(ids(&[0, 1])));
        assert_eq!(joint.leave_joint().voters, joint.voters);
        assert!(!joint.leave_joint().is_joint());
    }

    #[test]
    fn learners_change_at_once_and_never_count() {
        let m = Membership::of(ids(&[0, 1, 2]));
        let with = m.apply(&[change(ChangeAction::AddLearner, 5)]).unwrap();
        assert!(!with.is_joint());
        assert!(with.contains(NodeId(5)) && !with.is_voter(NodeId(5)));
        assert!(!with.is_quorum(ids(&[0, 5])));
        let promoted = with.apply(&[change(ChangeAction::Promote, 5)]).unwrap();
        assert!(promoted.is_joint() && promoted.voters.contains(&NodeId(5)));
    }

    #[test]
    fn bad_changes_are_named() {
        let m = Membership::of(ids(&[0, 1]));
        let add0 = change(ChangeAction::AddVoter, 0);
        assert_eq!(m.apply(&[add0]), Err(ChangeError::AlreadyMember(NodeId(0))));
        let p = change(ChangeAction::Promote, 1);
        assert_eq!(m.apply(&[p]), Err(ChangeError::NotLearner(NodeId(1))));
        let r9 = change(ChangeAction::Remove, 9);
        assert_eq!(m.apply(&[r9]), Err(ChangeError::NotMember(NodeId(9))));
        let both = [
            change(ChangeAction::Remove, 0),
            change(ChangeAction::Remove, 1),
        ];
        assert_eq!(m.apply(&both), Err(ChangeError::NoVoters));
        let twice = [
            change(ChangeAction::Remove, 0),
            change(ChangeAction::AddLearner, 0),
        ];
        assert_eq!(m.apply(&twice), Err(ChangeError::DuplicateNode(NodeId(0))));
        assert_eq!(m.apply(&[]), Err(ChangeError::Empty));
    }

    #[test]
    fn joint_votes_and_commits_need_both_majorities() {
        let mut m = Membership::of(ids(&[0, 1, 3]));
        m.outgoing = ids(&[0, 1, 2]).into_iter().collect();
        assert_eq!(m.vote_result(ids(&[0, 3]), ids(&[])), VoteResult::Pending);
        assert_eq!(m.vote_result(ids(&[0, 3]), ids(&[1, 2])), VoteResult::Lost);
        assert_eq!(m.vote_result(ids(&[0, 1]), ids(&[])), VoteResult::Won);
        let at = [10, 9, 1, 8];
        // New voters {0,1,3} reach 9; old voters {0,1,2} reach 9 as well.
        assert_eq!(m.committed_index(|id| at[id.index()]), 9);
        let at = [10, 2, 9, 9];
        // New: sorted 10,9,2 -> 9; old: 10,9,2 -> 9.
        assert_eq!(m.committed_index(|id| at[id.index()]), 9);
        let at = [10, 1, 1, 9];
        // New reaches 9 (0 and 3) but old only 1.
        assert_eq!(m.committed_index(|id| at[id.index()]), 1);
    }

    #[test]
    fn an_update_changes_no_quorum() {
        let m = Membership::of(ids(&[0, 1, 2]));
        assert_eq!(m.apply(&[change(ChangeAction::Update, 1)]), Ok(m.clone()));
        let u9 = change(ChangeAction::Update, 9);
        assert_eq!(m.apply(&[u9]), Err(ChangeError::NotMember(NodeId(9))));
    }

    #[test]
    fn an_empty_membership_decides_nothing() {
        let m = Membership::default();
        assert!(!m.is_quorum(ids(&[0])));
        assert_eq!(m.vote_result(ids(&[0]), ids(&[])), VoteResult::Pending);
        assert_eq!(m.committed_index(|_| 5), 0);
    }
}
