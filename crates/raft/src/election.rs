//! Leader election (Raft §5.2, §5.4.1) with pre-vote (thesis §9.6) and protection against
//! disruptive servers (thesis §4.2.3).

use ekmat_core::{Event, NodeId, VoteResult};

use crate::config::Mutant;
use crate::log::Payload;
use crate::message::{Message, VoteRequest, VoteResponse};
use crate::node::{Out, RaftNode, Role};
use crate::progress::Progress;

impl RaftNode {
    pub(crate) fn on_election_timeout(&mut self, out: &mut Out) {
        // Learners, joiners and removed nodes never campaign.
        if !self.is_voter() {
            self.reset_election_deadline();
            return;
        }
        self.assert_campaign_respects_leases();
        if self.cfg.pre_vote {
            self.start_pre_vote(out);
        } else {
            self.campaign(false, out);
        }
    }

    /// Ask whether a real election could be won, without raising our term: a node cut
    /// off from the leader cannot then inflate terms and depose it on return.
    fn start_pre_vote(&mut self, out: &mut Out) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.reset_election_deadline();
        let term = self.term + 1;
        out.event(Event::Campaign {
            term,
            pre_vote: true,
        });
        self.start_tally();
        let req = self.vote_request(term, true, false);
        for peer in self.peers().collect::<Vec<_>>() {
            out.send(peer, Message::Vote(req.clone()));
        }
        self.count_votes(out);
    }

    /// Stand for election in the next term (`transfer`: because the leader asked).
    pub(crate) fn campaign(&mut self, transfer: bool, out: &mut Out) {
        self.role = Role::Candidate;
        self.leader = None;
        self.term += 1;
        self.vote = Some(self.cfg.id);
        self.persist_hard_state(out);
        self.reset_election_deadline();
        out.event(Event::Campaign {
            term: self.term,
            pre_vote: false,
        });
        self.start_tally();
        let req = self.vote_request(self.term, false, transfer);
        for peer in self.peers().collect::<Vec<_>>() {
            self.gate
                .send_when_durable(peer, Message::Vote(req.clone()), out);
        }
        self.count_votes(out);
    }

    fn start_tally(&mut self) {
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
    }

    fn vote_request(&self, term: u64, pre_vote: bool, transfer: bool) -> VoteRequest {
        VoteRequest {
            term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote,
            sent_at_us: self.stamp(),
            transfer,
        }
    }

    /// A leader was heard from within the minimum election timeout (a leader counts itself).
    fn heard_from_leader_recently(&self) -> bool {
        if self.role == Role::Leader {
            return true;
        }
        self.lease_stickiness(self.leader.is_some())
    }

    fn candidate_log_ok(&self, req: &VoteRequest) -> bool {
        self.cfg.mutant == Mutant::VoteWithoutLogCheck
            || self
                .log
                .is_up_to_date(req.last_log_index, req.last_log_term)
    }

    pub(crate) fn on_vote_request(&mut self, from: NodeId, req: VoteRequest, out: &mut Out) {
        if req.pre_vote {
            self.answer_pre_vote(from, &req, out);
        } else {
            self.answer_vote(from, &req, out);
        }
    }

    /// A pre-vote changes nothing here; it is granted if a real vote could be.
    fn answer_pre_vote(&mut self, from: NodeId, req: &VoteRequest, out: &mut Out) {
        let granted = req.term > self.term
            && !self.heard_from_leader_recently()
            && self.candidate_log_ok(req);
        let term = if granted { req.term } else { self.term };
        let resp = VoteResponse {
            term,
            granted,
            pre_vote: true,
            sent_at_us: req.sent_at_us,
        };
        out.send(from, Message::VoteResponse(resp));
    }

    fn answer_vote(&mut self, from: NodeId, req: &VoteRequest, out: &mut Out) {
        if req.term > self.term {
            if self.cfg.check_quorum && !req.transfer && self.heard_from_leader_recently() {
                return; // a disruptive server: our leader is alive, so ignore it
            }
            self.become_follower(req.term, None, out);
        }
        let can_vote = req.term == self.term && self.vote.is_none_or(|v| v == from);
        let granted = can_vote && self.candidate_log_ok(req);
        let resp = Message::VoteResponse(VoteResponse {
            term: self.term,
            granted,
            pre_vote: false,
            sent_at_us: req.sent_at_us,
        });
        if !granted {
            self.gate.send_when_durable(from, resp, out);
            return;
        }
        self.vote = Some(from);
        self.reset_election_deadline();
        if self.cfg.mutant == Mutant::ForgetVotePersist {
            out.send(from, resp);
        } else {
            self.persist_hard_state(out);
            self.gate.send_when_durable(from, resp, out);
        }
    }

    pub(crate) fn on_vote_response(&mut self, from: NodeId, resp: VoteResponse, out: &mut Out) {
        // Even a late answer says how long answers take: a candidate whose rounds keep
        // timing out before the votes arrive learns to wait longer.
        self.on_round_trip(resp.sent_at_us);
        if !resp.granted && resp.term > self.term {
            self.become_follower(resp.term, None, out);
            return;
        }
        let expected = match (resp.pre_vote, self.role) {
            (true, Role::PreCandidate) => self.term + 1,
            (false, Role::Candidate) => self.term,
            _ => return,
        };
        if resp.term != expected {
            return;
        }
        self.votes.insert(from, resp.granted);
        self.count_votes(out);
    }

    fn count_votes(&mut self, out: &mut Out) {
        let granted = self.votes.iter().filter(|(_, g)| **g).map(|(id, _)| *id);
        let rejected = self.votes.iter().filter(|(_, g)| !**g).map(|(id, _)| *id);
        let result = self.membership().vote_result(granted, rejected);
        match (result, self.role) {
            (VoteResult::Won, Role::PreCandidate) => self.campaign(false, out),
            (VoteResult::Won, Role::Candidate) => self.become_leader(out),
            (VoteResult::Lost, _) => self.become_follower(self.term, None, out),
            _ => {}
        }
    }

    fn become_leader(&mut self, out: &mut Out) {
        assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.votes.clear();
        out.event(Event::BecameLeader { term: self.term });
        let next = self.log.last_index() + 1;
        let now = self.now;
        self.progress = self
            .peers()
            .map(|p| (p, Progress::new(next, now)))
            .collect();
        self.heartbeat_deadline = now + self.timeouts.heartbeat;
        self.quorum_check_deadline = now + self.timeouts.election;
        self.lease_term_started();
        // Committing an entry of our own term commits every earlier one (§5.4.2), and
        // ReadIndex needs one before it can answer (§6.4).
        self.append_local(Payload::Noop, out);
        self.broadcast_append(out);
        self.maybe_commit(out);
    }
}
