//! Log replication (Raft §5.3) and the commit rule (§5.4.2), with pipelining, batching,
//! fast conflict backtracking, heartbeats and check-quorum.

use ekmat_core::NodeId;

use crate::config::Mutant;
use crate::lease::ReadMode;
use crate::message::{AppendOutcome, AppendRequest, AppendResponse, Echo, Message};
use crate::node::{Out, RaftNode, Role};
use crate::progress::ReplicationState;

impl RaftNode {
    /// Send whatever each follower's window allows.
    pub(crate) fn broadcast_append(&mut self, out: &mut Out) {
        for peer in self.peers().collect::<Vec<_>>() {
            while self.send_append(peer, out) {}
        }
    }

    /// Send one AppendEntries carrying new entries (or a probe) to `to` if its window
    /// allows. Returns true if more could follow at once.
    pub(crate) fn send_append(&mut self, to: NodeId, out: &mut Out) -> bool {
        let max_inflight = self.cfg.max_inflight;
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if !pr.can_send(max_inflight) {
            return false;
        }
        let probing = pr.state == ReplicationState::Probe;
        let next = pr.next_index;
        let prev_index = next - 1;
        let prev_term = self
            .log
            .term_at(prev_index)
            .filter(|_| next >= self.log.first_index());
        let Some(prev_term) = prev_term else {
            // What it needs (the next entry, or the term of the one before) was
            // compacted: it gets the snapshot instead.
            self.start_snapshot(to, out);
            return false;
        };
        let entries = self.log.slice(next, self.cfg.max_append_entries).to_vec();
        if entries.is_empty() && !probing {
            return false;
        }
        let last = prev_index + entries.len() as u64;
        let carried = !entries.is_empty();
        self.send_append_request(to, prev_index, prev_term, entries, out);
        let pr = self.progress.get_mut(&to).expect("checked above");
        pr.sent(last, carried);
        carried && !probing
    }

    /// Send `to` an AppendEntries after `prev_index`, noting the commit index it lets
    /// the follower learn (no further than the entries it vouches for).
    fn send_append_request(
        &mut self,
        to: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<crate::Entry>,
        out: &mut Out,
    ) {
        let told = self.commit.min(prev_index + entries.len() as u64);
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.commit_told = pr.commit_told.max(told);
        }
        out.send(to, self.append_request(prev_index, prev_term, entries));
    }

    /// Tell each follower whose pipeline has drained a commit index it could not learn
    /// otherwise until the next heartbeat. A client waiting on a follower (a write it
    /// forwarded, a read it serves) would otherwise wait a heartbeat interval for its
    /// entry to apply there; under load, appends carrying new entries tell it anyway.
    pub(crate) fn tell_commit(&mut self, out: &mut Out) {
        for peer in self.peers().collect::<Vec<_>>() {
            let Some(pr) = self.progress.get(&peer) else {
                continue;
            };
            let learnable = self.commit.min(pr.match_index);
            if pr.state != ReplicationState::Replicate
                || pr.has_inflight()
                || pr.commit_told >= learnable
            {
                continue;
            }
            let matched = pr.match_index;
            if let Some(term) = self.log.term_at(matched) {
                self.send_append_request(peer, matched, term, Vec::new(), out);
            }
        }
    }

    fn append_request(
        &self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<crate::Entry>,
    ) -> Message {
        Message::Append(AppendRequest {
            term: self.term,
            prev_index,
            prev_term,
            entries,
            commit: self.commit,
            read_seq: self.reads.seq(),
            sent_at_us: self.stamp(),
            election_timeout_us: self.announced_election_timeout(),
        })
    }

    /// Heartbeats assert leadership, carry the commit index and confirm reads; a
    /// follower still being probed gets the probe again, beside the heartbeat.
    pub(crate) fn broadcast_heartbeat(&mut self, out: &mut Out) {
        let stall = self.timeouts.election;
        for peer in self.peers().collect::<Vec<_>>() {
            let pr = self
                .progress
                .get_mut(&peer)
                .expect("leader tracks every peer");
            // A lost message in Replicate leaves the window stuck: fall back to probing.
            if pr.state == ReplicationState::Replicate
                && pr.has_inflight()
                && self.now.since(pr.last_progress) > stall
            {
                pr.become_probe();
            }
            match pr.state {
                // A probe that carries entries is answered only once the follower's disk
                // has them; the heartbeat beside it is answered at once, so a follower
                // whose disk stalls still counts for check-quorum and read confirmations.
                ReplicationState::Probe => {
                    pr.probe_sent = false;
                    let matched = pr.match_index;
                    let probe_is_heartbeat =
                        pr.next_index == matched + 1 && self.log.last_index() <= matched;
                    self.send_append(peer, out);
                    if probe_is_heartbeat {
                        continue;
                    }
                    if let Some(term) = self.log.term_at(matched) {
                        self.send_append_request(peer, matched, term, Vec::new(), out);
                    }
                    continue;
                }
                // Chunks double as the heartbeat, and resend what was lost.
                ReplicationState::Snapshot { .. } => {
                    self.resend_snapshot(peer, out);
                    continue;
                }
                ReplicationState::Replicate => {}
            }
            let prev_index = pr.match_index;
            let Some(prev_term) = self.log.term_at(prev_index) else {
                // Compacted past what this follower holds.
                self.start_snapshot(peer, out);
                continue;
            };
            self.send_append_request(peer, prev_index, prev_term, Vec::new(), out);
        }
    }

    pub(crate) fn leader_tick(&mut self, out: &mut Out) {
        if self.cfg.check_quorum && self.now >= self.quorum_check_deadline {
            if !self.quorum_recently_active() {
                self.become_follower(self.term, None, out);
                return;
            }
            self.quorum_check_deadline = self.now + self.timeouts.election;
        }
        if self.now >= self.heartbeat_deadline {
            self.heartbeat_deadline = self.now + self.timeouts.heartbeat;
            if self.cfg.read_mode == ReadMode::Lease {
                self.lease_heartbeat(out);
            } else {
                self.broadcast_heartbeat(out);
            }
        }
    }

    /// Whether a quorum (counting ourselves) was heard from since the last check; resets
    /// the record for the next round.
    fn quorum_recently_active(&mut self) -> bool {
        let me = self.cfg.id;
        let active: Vec<NodeId> = std::iter::once(me)
            .chain(
                self.progress
                    .iter()
                    .filter(|(_, p)| p.recent_active)
                    .map(|(id, _)| *id),
            )
            .collect();
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        self.membership().is_quorum(active)
    }

    /// A message from a node that leads `term`: rejected (false) if the term is stale,
    /// else the sender is followed and the election timer restarts.
    pub(crate) fn hear_from_leader(
        &mut self,
        from: NodeId,
        term: u64,
        prev_index: u64,
        out: &mut Out,
    ) -> bool {
        if term < self.term {
            // Tell a deposed leader about the newer term so it steps down.
            let outcome = AppendOutcome::Rejected {
                prev_index,
                hint_index: 0,
                hint_term: None,
            };
            self.respond_append(from, outcome, Echo::default(), out);
            return false;
        }
        if term > self.term || self.role != Role::Follower {
            self.become_follower(term, Some(from), out);
        }
        self.leader = Some(from);
        self.last_leader_contact = Some(self.now);
        true
    }

    pub(crate) fn on_append(&mut self, from: NodeId, req: AppendRequest, out: &mut Out) {
        if !self.hear_from_leader(from, req.term, req.prev_index, out) {
            return;
        }
        self.adopt_election_timeout(req.election_timeout_us);
        self.reset_election_deadline();

        // Entries up to our snapshot are committed, so they match the leader's: check
        // consistency from the snapshot on.
        let snap = self.log.snapshot_index();
        let (prev_index, prev_term, entries) = if req.prev_index < snap {
            let skip = (snap - req.prev_index) as usize;
            let rest = req.entries.get(skip..).unwrap_or_default();
            (snap, self.log.snapshot_term(), rest)
        } else {
            (req.prev_index, req.prev_term, &req.entries[..])
        };
        if self.log.term_at(prev_index) != Some(prev_term) {
            let outcome = self.conflict_hint(prev_index);
            self.respond_append(from, outcome, Echo::of(&req), out);
            return;
        }
        let written = self.log.merge(entries, self.commit);
        if let Some(first) = written.first().map(|e| e.index) {
            self.track_configs(first, &written);
            let seq = self
                .gate
                .persist(crate::RaftWrite::Append { entries: written }, out);
            self.log.note_write(seq);
        }
        let last_new = prev_index + entries.len() as u64;
        self.advance_commit(req.commit.min(last_new), out);
        if req.entries.is_empty() {
            self.ack_heartbeat(from, last_new, Echo::of(&req), out);
            return;
        }
        let outcome = AppendOutcome::Accepted {
            match_index: last_new,
        };
        self.respond_append(from, outcome, Echo::of(&req), out);
    }

    /// A heartbeat is answered at once, claiming only the durable part of the match: a
    /// long write in progress (a large snapshot, say) must not silence this follower, or
    /// the leader would lose its quorum, and its reads their confirmations, for as long as
    /// the disk is busy. Nothing in the answer depends on the write: entries up to
    /// `durable_index` are on disk exactly as they are in memory.
    fn ack_heartbeat(&mut self, to: NodeId, matched: u64, echo: Echo, out: &mut Out) {
        let match_index = matched.min(self.log.durable_index());
        let resp = self.append_response(AppendOutcome::Accepted { match_index }, echo);
        out.send(to, resp);
    }

    fn conflict_hint(&self, prev_index: u64) -> AppendOutcome {
        if prev_index > self.log.last_index() {
            return AppendOutcome::Rejected {
                prev_index,
                hint_index: self.log.last_index() + 1,
                hint_term: None,
            };
        }
        AppendOutcome::Rejected {
            prev_index,
            hint_index: self.log.first_index_of_term_ending_at(prev_index),
            hint_term: self.log.term_at(prev_index),
        }
    }

    /// Responses wait for our writes: an acknowledgement must describe a durable log.
    pub(crate) fn respond_append(
        &mut self,
        to: NodeId,
        outcome: AppendOutcome,
        echo: Echo,
        out: &mut Out,
    ) {
        let resp = self.append_response(outcome, echo);
        self.gate.send_when_durable(to, resp, out);
    }

    fn append_response(&self, outcome: AppendOutcome, echo: Echo) -> Message {
        Message::AppendResponse(AppendResponse {
            term: self.term,
            outcome,
            read_seq: echo.read_seq,
            sent_at_us: echo.sent_at_us,
        })
    }

    pub(crate) fn on_append_response(&mut self, from: NodeId, resp: AppendResponse, out: &mut Out) {
        if resp.term > self.term {
            self.become_follower(resp.term, None, out);
            return;
        }
        if self.role != Role::Leader || resp.term != self.term {
            return;
        }
        let now = self.now;
        let Some(pr) = self.progress.get_mut(&from) else {
            return; // no longer a member
        };
        pr.recent_active = true;
        let read_ack = resp.read_seq > pr.read_ack;
        self.on_round_trip(resp.sent_at_us);
        let pr = self.progress.get_mut(&from).expect("tracked");
        if read_ack {
            pr.read_ack = resp.read_seq;
            self.confirm_reads(out);
        }
        match resp.outcome {
            AppendOutcome::Accepted { match_index } => {
                let pr = self.progress.get_mut(&from).expect("tracked");
                if pr.accepted(match_index, now) {
                    self.maybe_commit(out);
                    self.continue_transfer(out);
                }
                while self.send_append(from, out) {}
                self.tell_commit(out);
            }
            AppendOutcome::Rejected {
                prev_index,
                hint_index,
                hint_term,
            } => {
                let next = match hint_term.and_then(|t| self.log.last_index_of_term(t)) {
                    Some(last_of_term) => last_of_term + 1,
                    None => hint_index,
                };
                let pr = self.progress.get_mut(&from).expect("tracked");
                if pr.rejected(prev_index, next) {
                    self.send_append(from, out);
                }
            }
        }
    }

    /// Commit the highest index a quorum holds durably — but only by counting replicas
    /// of an entry from our own term (§5.4.2, Figure 8).
    pub(crate) fn maybe_commit(&mut self, out: &mut Out) {
        let me = self.cfg.id;
        let own = self.log.durable_index();
        let progress = &self.progress;
        let index = self.configs.latest().committed_index(|id| {
            if id == me {
                own
            } else {
                progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        if index <= self.commit {
            return;
        }
        let current_term = self.log.term_at(index) == Some(self.term);
        if current_term || self.cfg.mutant == Mutant::CommitOldTerm {
            self.advance_commit(index, out);
        }
    }
}
