//! Membership changes by joint consensus, learners, and removed nodes.

mod cluster;

use std::time::Duration;

use bytes::Bytes;
use cluster::Cluster;
use ekmat_core::{
    ChangeAction, ChangeError, CommittedEntry, Input, Membership, MembershipChange, NodeId,
    Rejection, Reply, Request, RequestId, RequestKind,
};
use ekmat_raft::{Mutant, Role};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ids(list: &[u32]) -> std::collections::BTreeSet<NodeId> {
    list.iter().copied().map(NodeId).collect()
}

fn change(c: &mut Cluster, at: NodeId, seq: u64, changes: &[(ChangeAction, u32)]) {
    let changes = changes
        .iter()
        .map(|&(action, node)| MembershipChange {
            action,
            node: NodeId(node),
            context: Bytes::new(),
        })
        .collect();
    let req = Request {
        id: RequestId { client: 7, seq },
        kind: RequestKind::ChangeMembership(changes),
    };
    c.step(at, Input::Request(req));
}

fn reply(c: &Cluster, at: NodeId, seq: u64) -> Option<Reply> {
    let id = RequestId { client: 7, seq };
    c.nodes[at.index()]
        .replies
        .iter()
        .find(|r| matches!(r, Reply::Done { id: i } | Reply::Rejected { id: i, .. } if *i == id))
        .cloned()
}

fn done(seq: u64) -> Option<Reply> {
    Some(Reply::Done {
        id: RequestId { client: 7, seq },
    })
}

fn commands(c: &Cluster, id: NodeId) -> usize {
    c.nodes[id.index()]
        .committed
        .iter()
        .filter(|e| matches!(e.entry, CommittedEntry::Command { .. }))
        .count()
}

#[test]
fn a_learner_receives_the_log_never_votes_and_can_be_promoted() {
    let mut c = Cluster::with_joiners(3, 1, |_| {});
    let leader = c.elect();
    c.write(leader, 1, "before");
    change(&mut c, leader, 1, &[(ChangeAction::AddLearner, 3)]);
    c.run_for(ms(200));
    assert_eq!(reply(&c, leader, 1), done(1));
    let learner = NodeId(3);
    assert_eq!(
        commands(&c, learner),
        1,
        "the learner got the earlier write"
    );
    assert!(c.raft(learner).membership().learners.contains(&learner));
    // Cut off from everyone, a learner never campaigns.
    let term = c.raft(learner).term();
    c.isolate(learner);
    c.run_for(ms(2_000));
    assert_eq!(c.raft(learner).term(), term);
    c.heal();
    change(&mut c, leader, 2, &[(ChangeAction::Promote, 3)]);
    c.run_for(ms(300));
    assert_eq!(reply(&c, leader, 2), done(2));
    let m = c.raft(leader).membership().clone();
    assert_eq!(m.voters, ids(&[0, 1, 2, 3]));
    assert!(!m.is_joint() && m.learners.is_empty());
    assert_eq!(c.raft(learner).membership(), &m);
}

#[test]
fn replacing_a_voter_passes_through_the_joint_configuration() {
    let mut c = Cluster::with_joiners(3, 1, |_| {});
    let leader = c.elect();
    let gone = NodeId((leader.0 + 1) % 3);
    change(
        &mut c,
        leader,
        1,
        &[(ChangeAction::AddVoter, 3), (ChangeAction::Remove, gone.0)],
    );
    // The joint configuration is in force at once on the leader.
    let joint = c.raft(leader).membership().clone();
    assert!(joint.is_joint());
    assert!(joint.outgoing.contains(&gone) && !joint.voters.contains(&gone));
    c.run_for(ms(300));
    assert_eq!(reply(&c, leader, 1), done(1));
    let settled = c.raft(leader).membership().clone();
    assert!(!settled.is_joint());
    assert!(settled.voters.contains(&NodeId(3)) && !settled.contains(gone));
    // The committed log carries both configurations, in order.
    let configs: Vec<Membership> = c.nodes[3]
        .committed
        .iter()
        .filter_map(|e| match &e.entry {
            CommittedEntry::Membership { membership, .. } => Some(membership.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(configs, vec![joint, settled]);
    // The removed node is no longer needed: writes commit without it.
    c.isolate(gone);
    c.write(leader, 1, "after");
    c.run_for(ms(200));
    assert_eq!(commands(&c, NodeId(3)), 1);
}

#[test]
fn a_removed_leader_steps_down_after_the_new_configuration_commits() {
    let mut c = Cluster::with_joiners(3, 0, |_| {});
    let leader = c.elect();
    change(&mut c, leader, 1, &[(ChangeAction::Remove, leader.0)]);
    c.run_for(ms(100));
    assert_eq!(reply(&c, leader, 1), done(1));
    assert_ne!(c.raft(leader).role(), Role::Leader);
    c.run_for(ms(1_000));
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], leader, "the removed node never campaigns");
    let term = c.raft(leaders[0]).term();
    // Left running and cut off, the removed node cannot disturb the new leader.
    c.isolate(leader);
    c.run_for(ms(2_000));
    c.heal();
    c.run_for(ms(2_000));
    assert_eq!(c.leaders(), leaders);
    assert_eq!(c.raft(leaders[0]).term(), term);
}

#[test]
fn one_change_at_a_time_and_bad_changes_are_named() {
    let mut c = Cluster::with_joiners(3, 2, |_| {});
    let leader = c.elect();
    change(&mut c, leader, 1, &[(ChangeAction::AddVoter, 3)]);
    change(&mut c, leader, 2, &[(ChangeAction::AddVoter, 4)]);
    assert_eq!(
        reply(&c, leader, 2),
        Some(Reply::Rejected {
            id: RequestId { client: 7, seq: 2 },
            reason: Rejection::ChangeInProgress
        })
    );
    c.run_for(ms(300));
    assert_eq!(reply(&c, leader, 1), done(1));
    change(&mut c, leader, 3, &[(ChangeAction::Promote, 4)]);
    assert_eq!(
        reply(&c, leader, 3),
        Some(Reply::Rejected {
            id: RequestId { client: 7, seq: 3 },
            reason: Rejection::InvalidChange(ChangeError::NotLearner(NodeId(4)))
        })
    );
    let follower = NodeId((leader.0 + 1) % 3);
    change(&mut c, follower, 4, &[(ChangeAction::AddVoter, 4)]);
    assert!(matches!(
        reply(&c, follower, 4),
        Some(Reply::Rejected {
            reason: Rejection::NotLeader { .. },
            ..
        })
    ));
}

#[test]
fn configurations_survive_a_restart_and_an_uncommitted_one_is_reverted() {
    let mut c = Cluster::with_joiners(3, 1, |_| {});
    let leader = c.elect();
    change(&mut c, leader, 1, &[(ChangeAction::AddLearner, 3)]);
    c.run_for(ms(200));
    for i in 0..4 {
        c.restart(NodeId(i));
    }
    assert!(c.raft(NodeId(1)).membership().learners.contains(&NodeId(3)));
    assert!(c.raft(NodeId(3)).membership().learners.contains(&NodeId(3)));
    // A change only the old leader holds is undone when a new leader overwrites it.
    let leader = c.elect();
    for i in 0..4 {
        if NodeId(i) != leader {
            c.isolate(NodeId(i));
        }
    }
    change(&mut c, leader, 2, &[(ChangeAction::Promote, 3)]);
    assert!(c.raft(leader).membership().is_joint());
    c.run_for(ms(1_000));
    c.heal();
    for i in 0..3 {
        if NodeId(i) != leader {
            c.cut.insert((leader, NodeId(i)));
            c.cut.insert((NodeId(i), leader));
        }
    }
    c.run_for(ms(1_000));
    c.heal();
    c.run_for(ms(1_000));
    assert!(!c.raft(leader).membership().is_joint(), "reverted");
    assert!(c.raft(leader).membership().learners.contains(&NodeId(3)));
}

#[test]
fn the_config_before_joint_mutant_skips_the_joint_phase() {
    let mut c = Cluster::with_joiners(3, 1, |cfg| cfg.mutant = Mutant::ConfigBeforeJoint);
    let leader = c.elect();
    change(&mut c, leader, 1, &[(ChangeAction::AddVoter, 3)]);
    assert!(!c.raft(leader).membership().is_joint());
}

#[test]
fn a_learner_that_has_not_caught_up_is_not_promoted() {
    let mut c = Cluster::with_joiners(3, 1, |_| {});
    let leader = c.elect();
    c.isolate(NodeId(3));
    change(&mut c, leader, 1, &[(ChangeAction::AddLearner, 3)]);
    for seq in 1..=20 {
        c.write(leader, seq, "v");
    }
    c.run_for(ms(200));
    change(&mut c, leader, 2, &[(ChangeAction::Promote, 3)]);
    assert_eq!(
        reply(&c, leader, 2),
        Some(Reply::Rejected {
            id: RequestId { client: 7, seq: 2 },
            reason: Rejection::InvalidChange(ChangeError::NotCaughtUp(NodeId(3)))
        })
    );
    c.heal();
    c.run_for(ms(300));
    change(&mut c, leader, 3, &[(ChangeAction::Promote, 3)]);
    c.run_for(ms(300));
    assert_eq!(reply(&c, leader, 3), done(3));
}
