//! Lease-based reads (thesis §6.4.1): when a lease answers at once, when it must not,
//! and the follower-side rules it relies on.

mod cluster;

use std::time::Duration;

use cluster::Cluster;
use ekmat_core::{Input, NodeId, Reply, RequestId, RequestKind};
use ekmat_raft::{Message, Mutant, RaftConfig, ReadMode, VoteRequest, lease_duration};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lease_cluster(tweak: impl Fn(&mut RaftConfig)) -> Cluster {
    Cluster::with(3, |cfg| {
        cfg.read_mode = ReadMode::Lease;
        tweak(cfg);
    })
}

/// Whether node `at` has answered read `seq`.
fn read_ready(c: &Cluster, at: NodeId, seq: u64) -> bool {
    let id = RequestId { client: 2, seq };
    c.nodes[at.index()]
        .replies
        .iter()
        .any(|r| matches!(r, Reply::ReadReady { id: got, .. } if *got == id))
}

fn lease(c: &Cluster, at: NodeId) -> Duration {
    let cfg = c.raft(at).config();
    lease_duration(cfg.election_timeout_min, cfg.max_clock_drift_ppm).unwrap()
}

/// Elect, settle, then let every lease lapse without ticks (no heartbeats, no
/// check-quorum), so the next round the test starts is the only one that counts.
fn elected_with_lapsed_lease(c: &mut Cluster) -> NodeId {
    let leader = c.elect();
    c.run_for(ms(100));
    c.now = c.now + ms(400);
    leader
}

#[test]
fn a_held_lease_answers_at_once_without_any_message() {
    let mut c = lease_cluster(|_| {});
    let leader = c.elect();
    c.run_for(ms(100));
    c.isolate(leader);
    let sent = c.sent.len();
    c.read(leader, 1);
    assert!(read_ready(&c, leader, 1), "answered from the lease");
    assert_eq!(c.sent.len(), sent, "no confirmation round");
}

#[test]
fn read_index_mode_still_takes_a_round() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.run_for(ms(100));
    c.isolate(leader);
    c.read(leader, 1);
    c.deliver_all();
    assert!(!read_ready(&c, leader, 1));
}

#[test]
fn an_expired_lease_falls_back_to_a_read_index_round() {
    let mut c = lease_cluster(|_| {});
    let leader = elected_with_lapsed_lease(&mut c);
    c.read(leader, 1);
    assert!(!read_ready(&c, leader, 1), "the lease ran out");
    c.deliver_all();
    assert!(read_ready(&c, leader, 1), "confirmed by the round instead");
}

#[test]
fn the_lease_runs_from_when_the_round_was_sent_not_from_the_acks() {
    for mutant in [Mutant::None, Mutant::ServeLeaseReadPastBound] {
        let mut c = lease_cluster(|cfg| cfg.mutant = mutant);
        let leader = elected_with_lapsed_lease(&mut c);
        let sent_at = c.now;
        c.read(leader, 1); // starts a round at `sent_at`
        c.now = sent_at + ms(30); // the acks take 30 ms
        c.deliver_all();
        assert!(read_ready(&c, leader, 1));
        let l = lease(&c, leader);
        c.now = sent_at + l - ms(1);
        c.read(leader, 2);
        assert!(read_ready(&c, leader, 2), "within the lease");
        c.now = sent_at + l + ms(1); // but well within the acks' time + the lease
        c.read(leader, 3);
        let bug = mutant == Mutant::ServeLeaseReadPastBound;
        assert_eq!(read_ready(&c, leader, 3), bug, "{mutant:?}");
    }
}

#[test]
fn a_cut_off_leader_lease_is_not_renewed_by_its_own_heartbeats() {
    for mutant in [Mutant::None, Mutant::ServeLeaseReadPastBound] {
        let mut c = lease_cluster(|cfg| {
            cfg.max_clock_drift_ppm = 200_000; // a 100 ms lease
            cfg.mutant = mutant;
        });
        let leader = c.elect();
        c.run_for(ms(100));
        c.isolate(leader);
        // Heartbeats go out (and are lost) for longer than the lease, but not for the
        // 150 ms after which check-quorum could depose the leader.
        c.run_for(ms(120));
        assert_eq!(c.leaders(), vec![leader]);
        c.read(leader, 1);
        let bug = mutant == Mutant::ServeLeaseReadPastBound;
        assert_eq!(read_ready(&c, leader, 1), bug, "{mutant:?}");
    }
}

#[test]
fn the_lease_is_shortened_by_the_drift_bound_and_the_mutant_ignores_it() {
    for (mutant, served) in [
        (Mutant::None, false),
        (Mutant::ServeLeaseReadPastBound, true),
    ] {
        let mut c = lease_cluster(|cfg| {
            cfg.max_clock_drift_ppm = 200_000; // lease: 150 ms · 0.8 / 1.2 = 100 ms
            cfg.mutant = mutant;
        });
        let leader = elected_with_lapsed_lease(&mut c);
        let sent_at = c.now;
        c.read(leader, 1);
        c.deliver_all();
        assert!(read_ready(&c, leader, 1));
        c.now = sent_at + ms(120); // past the bound, within election_timeout_min
        c.read(leader, 2);
        assert_eq!(read_ready(&c, leader, 2), served, "{mutant:?}");
    }
}

fn transfer(c: &mut Cluster, at: NodeId, to: NodeId) {
    let req = ekmat_core::Request {
        id: RequestId { client: 9, seq: 1 },
        kind: RequestKind::TransferLeadership { to },
    };
    c.step(at, Input::Request(req));
}

#[test]
fn no_lease_read_while_a_transfer_is_in_progress() {
    let mut c = lease_cluster(|_| {});
    let leader = c.elect();
    c.run_for(ms(100));
    let target = NodeId((leader.0 + 1) % 3);
    c.write(leader, 1, "a");
    // The target cannot catch up, so the transfer stays in progress.
    c.isolate(target);
    transfer(&mut c, leader, target);
    c.read(leader, 1);
    assert!(
        !read_ready(&c, leader, 1),
        "no lease read during a transfer"
    );
    c.deliver_all();
    assert!(read_ready(&c, leader, 1), "a ReadIndex round still works");
}

#[test]
fn once_timeout_now_is_sent_no_lease_read_for_the_rest_of_the_term() {
    let mut c = lease_cluster(|_| {});
    let leader = c.elect();
    c.run_for(ms(100));
    let target = NodeId((leader.0 + 1) % 3);
    let term = c.raft(leader).term();
    transfer(&mut c, leader, target);
    // TimeoutNow went out at once (the target is up to date) but is held up.
    assert!(
        c.queue
            .iter()
            .any(|(_, to, m)| *to == target && matches!(m, Message::TimeoutNow(_)))
    );
    c.cut.insert((leader, target));
    c.deliver_all();
    c.cut.clear();
    // The transfer times out and the leader leads on in the same term...
    c.run_for(ms(300));
    assert_eq!(c.leaders(), vec![leader]);
    assert_eq!(c.raft(leader).term(), term);
    // ...but the late TimeoutNow could still make the target leader at any moment.
    c.isolate(leader);
    c.read(leader, 1);
    assert!(!read_ready(&c, leader, 1), "lease revoked for the term");
}

fn pre_vote(term: u64, last_log_index: u64, last_log_term: u64) -> VoteRequest {
    VoteRequest {
        term,
        last_log_index,
        last_log_term,
        pre_vote: true,
        sent_at_us: 0,
        transfer: false,
    }
}

/// Restart a follower and ask it for a pre-vote at once: granted?
fn restarted_follower_grants_pre_vote(mode: ReadMode) -> bool {
    let mut c = Cluster::with(3, |cfg| cfg.read_mode = mode);
    let leader = c.elect();
    c.run_for(ms(100));
    let follower = NodeId((leader.0 + 1) % 3);
    let candidate = NodeId((leader.0 + 2) % 3);
    c.restart(follower);
    let (term, log) = (c.raft(follower).term(), c.raft(candidate).log());
    let req = pre_vote(term + 1, log.last_index(), log.last_term());
    c.sent.clear();
    c.step(
        follower,
        Input::Message {
            from: candidate,
            msg: Message::Vote(req),
        },
    );
    c.sent
        .iter()
        .any(|(_, to, m)| *to == candidate && matches!(m, Message::VoteResponse(r) if r.granted))
}

#[test]
fn a_restarted_follower_keeps_out_of_elections_for_a_timeout_in_lease_mode() {
    // It may have acknowledged a leader's lease round just before it crashed.
    assert!(!restarted_follower_grants_pre_vote(ReadMode::Lease));
    assert!(restarted_follower_grants_pre_vote(ReadMode::ReadIndex));
}

#[test]
fn followers_that_heard_from_the_leader_refuse_pre_votes_and_votes() {
    let mut c = lease_cluster(|_| {});
    let leader = c.elect();
    c.run_for(ms(100));
    let follower = NodeId((leader.0 + 1) % 3);
    let candidate = NodeId((leader.0 + 2) % 3);
    let (term, log) = (c.raft(follower).term(), c.raft(candidate).log());
    let (idx, lt) = (log.last_index(), log.last_term());
    c.sent.clear();
    for pre in [true, false] {
        let req = VoteRequest {
            pre_vote: pre,
            ..pre_vote(term + 1, idx, lt)
        };
        c.step(
            follower,
            Input::Message {
                from: candidate,
                msg: Message::Vote(req),
            },
        );
    }
    assert!(
        !c.sent
            .iter()
            .any(|(_, _, m)| matches!(m, Message::VoteResponse(r) if r.granted))
    );
    assert_eq!(c.raft(follower).term(), term, "not disrupted");
}
