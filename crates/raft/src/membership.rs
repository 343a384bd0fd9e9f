//! Membership changes by joint consensus (Raft thesis ch. 4), and learners.
//!
//! A configuration takes effect on a replica as soon as its entry is in the log,
//! committed or not; truncating the entry reverts it. A change of voters goes through a
//! joint configuration (old and new voters, each needing a majority), and once that is
//! committed the leader appends the new configuration alone. Only one change is under
//! way at a time: the next is refused until the last one is committed and out of its
//! joint phase, and a new leader must first commit an entry of its own term. A leader
//! that is not among the new voters keeps leading until the new configuration is
//! committed, then steps down. Learners get the log but never count towards a quorum.

use ekmat_core::{
    ChangeAction, ChangeError, Event, Membership, MembershipChange, NodeId, Rejection, Reply,
    RequestId, StepDownReason,
};

use crate::config::Mutant;
use crate::log::Payload;
use crate::node::{Out, RaftNode, Role};
use crate::progress::Progress;

/// The configurations a replica knows: the one in force at `base`'s index (its snapshot
/// or bootstrap), and those whose entries are in its log after it.
#[derive(Clone, Debug)]
pub(crate) struct Configs {
    /// `None` for a replica that joined without knowing the configuration before its
    /// first configuration entry.
    base: (u64, Option<Membership>),
    in_log: Vec<(u64, Membership)>,
}

const UNKNOWN: &Membership = &Membership {
    voters: std::collections::BTreeSet::new(),
    outgoing: std::collections::BTreeSet::new(),
    learners: std::collections::BTreeSet::new(),
};

impl Configs {
    pub fn new(index: u64, base: Option<Membership>) -> Configs {
        Configs {
            base: (index, base),
            in_log: Vec::new(),
        }
    }

    /// The configuration in force: the latest one in the log.
    pub fn latest(&self) -> &Membership {
        self.in_log
            .last()
            .map(|(_, m)| m)
            .or(self.base.1.as_ref())
            .unwrap_or(UNKNOWN)
    }

    /// Index of the entry that set the configuration in force (the base's index if
    /// none in the log did).
    pub fn latest_index(&self) -> u64 {
        self.in_log.last().map_or(self.base.0, |(i, _)| *i)
    }

    /// The configuration in force once entries up to `index` are applied, if known.
    pub fn at(&self, index: u64) -> Option<&Membership> {
        match self.in_log.iter().rev().find(|(i, _)| *i <= index) {
            Some((_, m)) => Some(m),
            None if index >= self.base.0 => self.base.1.as_ref(),
            None => None,
        }
    }

    pub fn push(&mut self, index: u64, m: Membership) {
        assert!(index > self.latest_index(), "configurations move forward");
        self.in_log.push((index, m));
    }

    /// The log was cut back to end before `index`: configurations from there are gone.
    pub fn truncate_from(&mut self, index: u64) {
        self.in_log.retain(|(i, _)| *i < index);
    }

    /// A snapshot at `index` whose configuration is `m` now stands for the log up to it.
    pub fn compact(&mut self, index: u64, m: Membership) {
        self.in_log.retain(|(i, _)| *i > index);
        self.base = (index, Some(m));
    }
}

impl RaftNode {
    pub fn membership(&self) -> &Membership {
        self.configs.latest()
    }

    pub(crate) fn is_voter(&self) -> bool {
        self.membership().is_voter(self.cfg.id)
    }

    /// Adopt the configurations among entries just written to the log at `first` on
    /// (replacing whatever followed).
    pub(crate) fn track_configs(&mut self, first: u64, entries: &[crate::Entry]) {
        self.configs.truncate_from(first);
        for e in entries {
            if let Payload::Config { membership, .. } = &e.payload {
                self.configs.push(e.index, membership.clone());
            }
        }
        if self.role == Role::Leader {
            self.sync_progress();
            self.lease_config_changed();
        }
    }

    /// A leader tracks exactly the members of the configuration in force.
    fn sync_progress(&mut self) {
        let me = self.cfg.id;
        let members: Vec<NodeId> = self.membership().members().filter(|&m| m != me).collect();
        self.progress.retain(|id, _| members.contains(id));
        let (next, now) = (self.log.last_index() + 1, self.now);
        for m in members {
            self.progress
                .entry(m)
                .or_insert_with(|| Progress::new(next, now));
        }
    }

    pub(crate) fn change_membership(
        &mut self,
        id: RequestId,
        changes: Vec<MembershipChange>,
        out: &mut Out,
    ) {
        let settled = self.configs.latest_index() <= self.commit && !self.membership().is_joint();
        let own_term_committed = self.log.term_at(self.commit) == Some(self.term);
        let busy = self.pending_change.is_some() || self.transfer.is_some();
        if busy || !settled || !own_term_committed {
            let reason = Rejection::ChangeInProgress;
            out.reply(Reply::Rejected { id, reason });
            return;
        }
        if let Some(lagging) = self.lagging_promotion(&changes) {
            let reason = Rejection::InvalidChange(ChangeError::NotCaughtUp(lagging));
            out.reply(Reply::Rejected { id, reason });
            return;
        }
        let mut next = match self.membership().apply(&changes) {
            Ok(next) => next,
            Err(e) => {
                let reason = Rejection::InvalidChange(e);
                out.reply(Reply::Rejected { id, reason });
                return;
            }
        };
        if self.cfg.mutant == Mutant::ConfigBeforeJoint {
            next.outgoing.clear();
        }
        let index = self.append_config(next, changes, out);
        self.pending_change = Some((id, index));
    }

    /// A learner to be promoted that holds less than 90% of the committed log (etcd's
    /// rule), if any.
    fn lagging_promotion(&self, changes: &[MembershipChange]) -> Option<NodeId> {
        changes
            .iter()
            .filter(|c| c.action == ChangeAction::Promote)
            .map(|c| c.node)
            .find(|n| {
                let matched = self.progress.get(n).map_or(0, |p| p.match_index);
                self.membership().learners.contains(n) && matched * 10 < self.commit * 9
            })
    }

    fn append_config(
        &mut self,
        membership: Membership,
        changes: Vec<MembershipChange>,
        out: &mut Out,
    ) -> u64 {
        let payload = Payload::Config {
            membership,
            changes,
        };
        let index = self.append_local(payload, out);
        let entry = self.log.get(index).expect("just appended").clone();
        self.track_configs(index, &[entry]);
        self.broadcast_append(out);
        index
    }

    /// The leader's commit index moved: end a committed joint phase, answer the change
    /// that is now complete, and step down if this leader is no longer a voter.
    pub(crate) fn on_config_commit(&mut self, out: &mut Out) {
        if self.role != Role::Leader || self.configs.latest_index() > self.commit {
            return;
        }
        if self.membership().is_joint() {
            let settled = self.membership().leave_joint();
            self.append_config(settled, Vec::new(), out);
            return;
        }
        if let Some((id, _)) = self.pending_change.take() {
            out.reply(Reply::Done { id });
        }
        if !self.is_voter() {
            out.event(Event::SteppedDown {
                term: self.term,
                reason: StepDownReason::Removed,
            });
            self.become_follower(self.term, None, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(voters: &[u32]) -> Membership {
        Membership::of(voters.iter().copied().map(NodeId))
    }

    #[test]
    fn the_latest_configuration_rules_and_truncation_reverts_it() {
        let mut c = Configs::new(0, Some(m(&[0, 1, 2])));
        c.push(5, m(&[0, 1, 2, 3]));
        c.push(9, m(&[0, 1, 3]));
        assert_eq!(c.latest(), &m(&[0, 1, 3]));
        assert_eq!(c.at(7), Some(&m(&[0, 1, 2, 3])));
        assert_eq!(c.at(2), Some(&m(&[0, 1, 2])));
        c.truncate_from(9);
        assert_eq!((c.latest(), c.latest_index()), (&m(&[0, 1, 2, 3]), 5));
        c.compact(6, m(&[0, 1, 2, 3]));
        assert_eq!(c.at(5), None, "before the snapshot is forgotten");
        assert_eq!(c.latest_index(), 6);
    }

    #[test]
    fn a_joiner_knows_no_configuration_until_its_first_entry() {
        let mut c = Configs::new(0, None);
        assert!(c.latest().voters.is_empty());
        assert_eq!(c.at(3), None);
        c.push(4, m(&[0, 1, 2, 7]));
        assert_eq!(c.at(3), None);
        assert_eq!(c.at(4), Some(&m(&[0, 1, 2, 7])));
    }
}
