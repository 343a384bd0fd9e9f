//! Behaviour of the Raft core against the rules of the paper, one rule per test.

mod cluster;

use std::time::Duration;

use cluster::Cluster;
use ekmat_core::{
    CommittedEntry, Input, NodeId, Rejection, Replica, Reply, RequestId, RequestKind,
};
use ekmat_raft::{
    AppendOutcome, AppendRequest, Entry, Message, Mutant, Payload, RaftConfig, RaftNode,
    RaftStable, Role, VoteRequest,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn commands(c: &Cluster, id: NodeId) -> Vec<u64> {
    c.nodes[id.index()]
        .committed
        .iter()
        .filter(|e| matches!(e.entry, CommittedEntry::Command { .. }))
        .map(|e| e.index)
        .collect()
}

#[test]
fn single_node_elects_itself_and_commits() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    c.write(leader, 1, "a");
    assert_eq!(
        commands(&c, leader),
        vec![2],
        "entry 1 is the leader's no-op"
    );
}

#[test]
fn three_nodes_elect_one_leader_and_replicate_everywhere() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    for seq in 1..=5 {
        c.write(leader, seq, "v");
    }
    c.deliver_all();
    c.run_for(ms(100)); // a heartbeat carries the commit index to followers
    for i in 0..3 {
        assert_eq!(commands(&c, NodeId(i)), vec![2, 3, 4, 5, 6], "node {i}");
    }
}

#[test]
fn followers_learn_a_commit_within_a_round_trip_not_a_heartbeat() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.write(leader, 1, "a");
    // No time passes, so no heartbeat is due: what carries the commit index is the
    // leader's answer to the acknowledgements. A client waiting on a follower for its
    // entry to apply there would otherwise wait a heartbeat interval.
    c.deliver_all();
    for i in 0..3 {
        assert_eq!(commands(&c, NodeId(i)), vec![2], "node {i}");
    }
}

#[test]
fn followers_refuse_writes_and_name_the_leader() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let follower = NodeId((leader.0 + 1) % 3);
    c.write(follower, 1, "x");
    let replies = &c.nodes[follower.index()].replies;
    assert!(matches!(
        replies.last(),
        Some(Reply::Rejected { reason: Rejection::NotLeader { leader: Some(l) }, .. }) if *l == leader
    ));
}

#[test]
fn a_vote_is_not_sent_before_it_is_durable() {
    let mut c = Cluster::new(3);
    c.auto_sync = false;
    let req = VoteRequest {
        term: 1,
        last_log_index: 0,
        last_log_term: 0,
        pre_vote: false,
        sent_at_us: 0,
        transfer: false,
    };
    c.step(
        NodeId(1),
        Input::Message {
            from: NodeId(0),
            msg: Message::Vote(req),
        },
    );
    assert!(c.queue.is_empty(), "grant left before the vote was on disk");
    c.sync_all(NodeId(1));
    assert!(matches!(&c.queue[0].2, Message::VoteResponse(r) if r.granted));
    assert_eq!(c.nodes[1].stable.vote, Some(NodeId(0)));
}

#[test]
fn forget_vote_persist_mutant_sends_the_grant_early() {
    let mut c = Cluster::with(3, |cfg| cfg.mutant = Mutant::ForgetVotePersist);
    c.auto_sync = false;
    let req = VoteRequest {
        term: 1,
        last_log_index: 0,
        last_log_term: 0,
        pre_vote: false,
        sent_at_us: 0,
        transfer: false,
    };
    c.step(
        NodeId(1),
        Input::Message {
            from: NodeId(0),
            msg: Message::Vote(req),
        },
    );
    c.sync_all(NodeId(1));
    assert!(matches!(&c.queue[0].2, Message::VoteResponse(r) if r.granted));
    assert_eq!(
        c.nodes[1].stable.vote, None,
        "the mutant never wrote its vote"
    );
}

#[test]
fn votes_go_only_to_up_to_date_candidates() {
    let stable = RaftStable {
        term: 3,
        vote: None,
        snapshot: None,
        log: vec![entry(1, 1), entry(2, 3)],
    };
    for (mutant, expect) in [(Mutant::None, false), (Mutant::VoteWithoutLogCheck, true)] {
        let mut cfg = RaftConfig::new(NodeId(1), vec![NodeId(0), NodeId(1), NodeId(2)]);
        cfg.mutant = mutant;
        let mut node = RaftNode::recover(cfg, stable.clone(), ekmat_core::Time::ZERO).unwrap();
        let mut out = ekmat_core::Effects::new();
        let stale = VoteRequest {
            term: 4,
            last_log_index: 5,
            last_log_term: 2,
            pre_vote: false,
            sent_at_us: 0,
            transfer: false,
        };
        node.step(
            ekmat_core::Time::ZERO,
            Input::Message {
                from: NodeId(0),
                msg: Message::Vote(stale),
            },
            &mut out,
        );
        assert_eq!(node.vote().is_some(), expect, "{mutant:?}");
    }
}

#[test]
fn a_leader_steps_down_when_it_sees_a_higher_term() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let term = c.raft(leader).term();
    let other = NodeId((leader.0 + 1) % 3);
    let msg = Message::Append(AppendRequest {
        term: term + 1,
        prev_index: 0,
        prev_term: 0,
        entries: vec![],
        commit: 0,
        read_seq: 0,
        sent_at_us: 0,
        election_timeout_us: 0,
    });
    c.step(leader, Input::Message { from: other, msg });
    assert_eq!(c.raft(leader).role(), Role::Follower);
    assert_eq!(c.raft(leader).term(), term + 1);
}

#[test]
fn a_conflicting_follower_suffix_is_replaced() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let lagging = NodeId((leader.0 + 1) % 3);
    c.isolate(lagging);
    for seq in 1..=70 {
        c.write(leader, seq, "v");
    }
    c.deliver_all();
    c.heal();
    c.run_for(ms(500));
    let want: Vec<u64> = (2..=71).collect();
    assert_eq!(
        commands(&c, lagging),
        want,
        "caught up across several batches"
    );
}

#[test]
fn a_follower_rejects_a_mismatched_previous_entry_with_a_hint() {
    let stable = RaftStable {
        term: 3,
        vote: None,
        snapshot: None,
        log: vec![entry(1, 1), entry(2, 2), entry(3, 2), entry(4, 2)],
    };
    let cfg = RaftConfig::new(NodeId(1), vec![NodeId(0), NodeId(1), NodeId(2)]);
    let mut node = RaftNode::recover(cfg, stable, ekmat_core::Time::ZERO).unwrap();
    let mut out = ekmat_core::Effects::new();
    let msg = Message::Append(AppendRequest {
        term: 3,
        prev_index: 4,
        prev_term: 3,
        entries: vec![],
        commit: 0,
        read_seq: 0,
        sent_at_us: 0,
        election_timeout_us: 0,
    });
    node.step(
        ekmat_core::Time::ZERO,
        Input::Message {
            from: NodeId(0),
            msg,
        },
        &mut out,
    );
    let resp = out.drain().find_map(|e| match e {
        ekmat_core::Effect::Send {
            msg: Message::AppendResponse(r),
            ..
        } => Some(r),
        _ => None,
    });
    assert_eq!(
        resp.unwrap().outcome,
        AppendOutcome::Rejected {
            prev_index: 4,
            hint_index: 2,
            hint_term: Some(2)
        }
    );
}

/// Figure 8 of the Raft paper: an entry from an earlier term, replicated on a majority
/// by a later leader, must not be committed by counting until an entry of the leader's
/// own term is.
#[test]
fn old_term_entries_are_not_committed_by_counting() {
    for (mutant, expect_commit) in [(Mutant::None, false), (Mutant::CommitOldTerm, true)] {
        let stable = RaftStable {
            term: 3,
            vote: None,
            snapshot: None,
            log: vec![entry(1, 1), entry(2, 2)],
        };
        let mut cfg = RaftConfig::new(NodeId(0), (0..5).map(NodeId).collect());
        cfg.mutant = mutant;
        cfg.pre_vote = false;
        let mut node = RaftNode::recover(cfg, stable, ekmat_core::Time::ZERO).unwrap();
        let mut out = ekmat_core::Effects::new();
        let later = ekmat_core::Time::from_millis(1000);
        node.step(later, Input::Tick, &mut out);
        node.step(later, Input::Persisted { seq: 1 }, &mut out);
        for voter in [1, 2] {
            let msg = Message::VoteResponse(ekmat_raft::VoteResponse {
                term: 4,
                granted: true,
                pre_vote: false,
                sent_at_us: 0,
            });
            node.step(
                later,
                Input::Message {
                    from: NodeId(voter),
                    msg,
                },
                &mut out,
            );
        }
        assert_eq!(node.role(), Role::Leader);
        // Followers 1 and 2 confirm index 2 (term 2) but not yet the no-op at 3.
        for f in [1, 2] {
            let msg = Message::AppendResponse(ekmat_raft::AppendResponse {
                term: 4,
                outcome: AppendOutcome::Accepted { match_index: 2 },
                read_seq: 0,
                sent_at_us: 0,
            });
            node.step(
                later,
                Input::Message {
                    from: NodeId(f),
                    msg,
                },
                &mut out,
            );
        }
        assert_eq!(node.commit_index() == 2, expect_commit, "{mutant:?}");
    }
}

#[test]
fn read_index_waits_for_a_quorum_round() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.run_for(ms(100));
    let f1 = NodeId((leader.0 + 1) % 3);
    let f2 = NodeId((leader.0 + 2) % 3);
    c.isolate(f1);
    c.cut.insert((leader, f2));
    c.read(leader, 1);
    c.deliver_all();
    assert!(
        !c.nodes[leader.index()]
            .replies
            .iter()
            .any(|r| matches!(r, Reply::ReadReady { .. }))
    );
    c.heal();
    c.run_for(ms(60));
    assert!(
        c.nodes[leader.index()]
            .replies
            .iter()
            .any(|r| matches!(r, Reply::ReadReady { .. }))
    );
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.isolate(leader);
    c.run_for(ms(400));
    assert_ne!(c.raft(leader).role(), Role::Leader);
    c.read(leader, 1);
    assert!(matches!(
        c.nodes[leader.index()].replies.last(),
        Some(Reply::Rejected {
            reason: Rejection::NotLeader { .. },
            ..
        })
    ));
}

#[test]
fn pre_vote_keeps_an_isolated_node_from_raising_its_term() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let loner = NodeId((leader.0 + 1) % 3);
    let term = c.raft(leader).term();
    c.isolate(loner);
    c.run_for(ms(2000));
    assert_eq!(
        c.raft(loner).term(),
        term,
        "pre-vote failed to hold the term"
    );
    c.heal();
    c.run_for(ms(500));
    assert_eq!(
        c.leaders(),
        vec![leader],
        "the healthy leader was not disturbed"
    );
}

#[test]
fn without_pre_vote_an_isolated_node_inflates_its_term() {
    let mut c = Cluster::with(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    let leader = c.elect();
    let loner = NodeId((leader.0 + 1) % 3);
    let term = c.raft(leader).term();
    c.isolate(loner);
    c.run_for(ms(2000));
    assert!(c.raft(loner).term() > term + 3);
}

#[test]
fn a_restarted_node_keeps_its_term_vote_and_log() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.write(leader, 1, "a");
    c.deliver_all();
    let (term, last) = (c.raft(leader).term(), c.raft(leader).log().last_index());
    c.restart(leader);
    assert_eq!(c.raft(leader).term(), term);
    assert_eq!(c.raft(leader).log().last_index(), last);
    assert_eq!(c.raft(leader).vote(), Some(leader));
    c.elect();
    c.run_for(ms(200));
    assert_eq!(commands(&c, leader), vec![2], "re-applied after restart");
}

#[test]
fn entries_appended_before_their_write_is_durable_do_not_count_for_the_leader() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    c.auto_sync = false;
    c.write(leader, 1, "a");
    assert!(commands(&c, leader).is_empty(), "committed before durable");
    c.sync_all(leader);
    assert_eq!(commands(&c, leader), vec![2]);
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Noop,
    }
}

#[test]
fn a_follower_behind_the_compaction_point_catches_up_from_a_snapshot() {
    let mut c = Cluster::with(3, |cfg| {
        cfg.snapshot_trailing = 2;
        cfg.snapshot_chunk_bytes = 4; // several chunks
    });
    let leader = c.elect();
    let lagging = NodeId((leader.0 + 1) % 3);
    c.isolate(lagging);
    for seq in 1..=20 {
        c.write(leader, seq, "v");
    }
    c.deliver_all();
    let applied = c.raft(leader).commit_index();
    let data = bytes::Bytes::from_static(b"state-machine-at-21");
    c.step(
        leader,
        Input::Snapshot {
            index: applied,
            data: data.clone(),
        },
    );
    assert_eq!(c.raft(leader).log().snapshot_index(), applied);
    assert!(
        c.raft(leader).log().first_index() > 2,
        "the log was compacted"
    );
    c.heal();
    c.run_for(ms(500));
    let node = &c.nodes[lagging.index()];
    assert_eq!(
        node.restored,
        vec![(applied, data)],
        "the lagging follower restored the snapshot"
    );
    c.write(leader, 21, "after");
    c.deliver_all();
    c.run_for(ms(200));
    let later: Vec<u64> = commands(&c, lagging);
    assert_eq!(
        later,
        vec![applied + 1],
        "commits continue right after the snapshot"
    );
    assert_eq!(
        c.nodes[lagging.index()]
            .stable
            .snapshot
            .as_ref()
            .unwrap()
            .index,
        applied
    );
}

#[test]
fn a_restarted_node_restores_its_snapshot_first() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    for seq in 1..=5 {
        c.write(leader, seq, "v");
    }
    let data = bytes::Bytes::from_static(b"at-6");
    c.step(
        leader,
        Input::Snapshot {
            index: 6,
            data: data.clone(),
        },
    );
    c.restart(leader);
    c.step(leader, Input::Tick);
    assert_eq!(c.nodes[0].restored, vec![(6, data)]);
    assert_eq!(c.raft(leader).commit_index(), 6);
    c.elect();
    c.write(leader, 6, "next");
    assert_eq!(
        commands(&c, leader),
        vec![8],
        "index 7 is the new leader's no-op"
    );
}

#[test]
fn stale_or_premature_snapshots_are_ignored() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    c.write(leader, 1, "v");
    c.step(
        leader,
        Input::Snapshot {
            index: 9,
            data: bytes::Bytes::new(),
        },
    );
    assert_eq!(
        c.raft(leader).log().snapshot_index(),
        0,
        "ahead of what was applied"
    );
    c.step(
        leader,
        Input::Snapshot {
            index: 2,
            data: bytes::Bytes::new(),
        },
    );
    c.step(
        leader,
        Input::Snapshot {
            index: 1,
            data: bytes::Bytes::new(),
        },
    );
    assert_eq!(
        c.raft(leader).log().snapshot_index(),
        2,
        "snapshots only move forward"
    );
}

fn transfer(c: &mut Cluster, at: NodeId, to: NodeId, seq: u64) {
    let req = ekmat_core::Request {
        id: RequestId { client: 9, seq },
        kind: RequestKind::TransferLeadership { to },
    };
    c.step(at, Input::Request(req));
}

fn transfer_reply(c: &Cluster, at: NodeId, seq: u64) -> Option<Reply> {
    c.nodes[at.index()]
        .replies
        .iter()
        .find(|r| match r {
            Reply::Done { id } | Reply::Rejected { id, .. } => *id == RequestId { client: 9, seq },
            _ => false,
        })
        .cloned()
}

#[test]
fn leadership_moves_to_the_named_node_in_the_next_term() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let term = c.raft(leader).term();
    let target = NodeId((leader.0 + 1) % 3);
    // The target lags: it must be caught up before it is told to take over.
    c.isolate(target);
    c.write(leader, 1, "a");
    c.run_for(Duration::from_millis(100));
    c.heal();
    transfer(&mut c, leader, target, 1);
    c.write(leader, 2, "refused while handing over");
    c.run_for(Duration::from_millis(100));
    assert_eq!(c.leaders(), vec![target]);
    assert_eq!(
        c.raft(target).term(),
        term + 1,
        "no pre-vote round, no wasted term"
    );
    assert_eq!(
        transfer_reply(&c, leader, 1),
        Some(Reply::Done {
            id: RequestId { client: 9, seq: 1 }
        })
    );
    assert!(c.nodes[leader.index()].replies.iter().any(|r| matches!(
        r,
        Reply::Rejected {
            id: RequestId { client: 1, seq: 2 },
            reason: Rejection::Busy
        }
    )));
    let a = c.nodes[target.index()]
        .committed
        .iter()
        .filter(|e| matches!(e.entry, CommittedEntry::Command { .. }))
        .count();
    assert_eq!(
        a, 1,
        "the new leader holds the write made before the transfer"
    );
}

#[test]
fn a_transfer_to_an_unreachable_node_gives_up_and_the_leader_leads_on() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let term = c.raft(leader).term();
    let target = NodeId((leader.0 + 1) % 3);
    c.isolate(target);
    transfer(&mut c, leader, target, 1);
    c.run_for(Duration::from_millis(600));
    assert_eq!(
        transfer_reply(&c, leader, 1),
        Some(Reply::Rejected {
            id: RequestId { client: 9, seq: 1 },
            reason: Rejection::TransferFailed
        })
    );
    assert_eq!(c.leaders(), vec![leader]);
    assert_eq!(c.raft(leader).term(), term);
    c.write(leader, 3, "accepted again");
    c.run_for(Duration::from_millis(50));
    assert!(!c.nodes[leader.index()].replies.iter().any(|r| matches!(
        r,
        Reply::Rejected {
            id: RequestId { client: 1, seq: 3 },
            ..
        }
    )));
}

#[test]
fn a_transfer_to_an_unknown_node_or_on_a_follower_is_refused() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    transfer(&mut c, leader, NodeId(7), 1);
    assert!(matches!(
        transfer_reply(&c, leader, 1),
        Some(Reply::Rejected {
            reason: Rejection::TransferFailed,
            ..
        })
    ));
    let follower = NodeId((leader.0 + 1) % 3);
    transfer(&mut c, follower, leader, 2);
    assert!(matches!(
        transfer_reply(&c, follower, 2),
        Some(Reply::Rejected {
            reason: Rejection::NotLeader { .. },
            ..
        })
    ));
}

/// Followers whose disks stall for several election timeouts stop acknowledging new
/// entries, but they are alive: the leader must keep counting them (check-quorum, read
/// confirmations) rather than step down for a lost quorum that it still has.
#[test]
fn a_leader_keeps_its_quorum_while_its_followers_disks_stall() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.run_for(ms(100));
    let term = c.raft(leader).term();
    c.auto_sync = false;
    for seq in 1..=150 {
        c.write(leader, seq, "a");
        c.run_for(ms(10));
        c.sync_all(leader);
    }
    assert_eq!(c.leaders(), vec![leader], "stepped down for a slow disk");
    assert_eq!(c.raft(leader).term(), term);
    // Each stalled follower gets about one probe and one heartbeat per heartbeat
    // interval, not a window of appends every time.
    let appends = c
        .sent
        .iter()
        .filter(|(from, _, m)| {
            *from == leader && matches!(m, Message::Append(a) if !a.entries.is_empty())
        })
        .count();
    assert!(appends < 2 * 150, "{appends} appends with entries in 1.5 s");
    assert!(
        commands(&c, leader).is_empty(),
        "committed what no follower made durable"
    );
    c.auto_sync = true;
    for i in 0..3 {
        c.sync_all(NodeId(i));
    }
    c.run_for(ms(200));
    assert_eq!(commands(&c, leader).len(), 150);
}
