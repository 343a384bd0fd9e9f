//! The Raft replica: its state, and the dispatch of inputs to the role-specific logic in
//! `election.rs`, `replication.rs` and `read_index.rs`.

use std::collections::BTreeMap;

use ekmat_core::{
    CommittedEntry, DetRng, Effects, Event, Input, Membership, NodeId, PersistGate, Rejection,
    Replica, Reply, Request, RequestId, RequestKind, StepDownReason, Time,
};

use crate::config::{ConfigError, RaftConfig};
use crate::lease::Lease;
use crate::log::{Entry, Payload, RaftLog, RaftStable, RaftWrite, Snapshot};
use crate::membership::Configs;
use crate::message::Message;
use crate::progress::Progress;
use crate::read_index::ReadIndex;
use crate::snapshot::Incoming;
use crate::timing::{RoundTrips, Timeouts};
use crate::transfer::Transfer;

pub(crate) type Out = Effects<Message, RaftWrite>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Debug)]
pub struct RaftNode {
    pub(crate) cfg: RaftConfig,
    /// The configurations this replica knows; the latest is in force.
    pub(crate) configs: Configs,
    /// The membership change this leader is carrying out, and its first entry.
    pub(crate) pending_change: Option<(RequestId, u64)>,
    pub(crate) rng: DetRng,
    pub(crate) now: Time,

    // Persistent: changed only together with a write.
    pub(crate) term: u64,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog,

    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) commit: u64,
    pub(crate) applied: u64,
    pub(crate) gate: PersistGate<Message>,

    pub(crate) election_deadline: Time,
    pub(crate) last_leader_contact: Option<Time>,
    /// Votes in the current (pre-)campaign: true = granted.
    pub(crate) votes: BTreeMap<NodeId, bool>,

    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) heartbeat_deadline: Time,
    pub(crate) quorum_check_deadline: Time,
    pub(crate) reads: ReadIndex,
    pub(crate) lease: Lease,

    /// The latest snapshot: what compacted entries became, and what lagging followers get.
    pub(crate) snapshot: Option<Snapshot>,
    /// A snapshot being received from the leader.
    pub(crate) incoming: Option<Incoming>,
    /// A snapshot recovered from disk, for the driver to restore before anything else.
    pending_restore: Option<Snapshot>,

    /// The heartbeat and election timeouts in force (fixed, or adapted to round trips).
    pub(crate) timeouts: Timeouts,
    pub(crate) round_trips: RoundTrips,
    /// A leadership transfer in progress (leaders only).
    pub(crate) transfer: Option<Transfer>,
}

impl RaftNode {
    /// A brand-new replica with an empty log.
    pub fn new(cfg: RaftConfig, now: Time) -> Result<RaftNode, ConfigError> {
        RaftNode::recover(cfg, RaftStable::default(), now)
    }

    /// A replica restarted from what it had made durable. Its state machine is assumed
    /// empty: the first step restores it from the recovered snapshot (if any), and
    /// committed entries after it are delivered again as the commit index is relearned.
    pub fn recover(
        cfg: RaftConfig,
        stable: RaftStable,
        now: Time,
    ) -> Result<RaftNode, ConfigError> {
        cfg.validate()?;
        let configs = recovered_configs(&cfg, &stable);
        let rng = DetRng::new(cfg.seed);
        let snapshot_at = stable.snapshot.as_ref().map(|s| (s.index, s.term));
        let applied = snapshot_at.map_or(0, |(index, _)| index);
        let mut node = RaftNode {
            cfg,
            configs,
            pending_change: None,
            rng,
            now,
            term: stable.term,
            vote: stable.vote,
            log: RaftLog::recovered(snapshot_at, stable.log),
            role: Role::Follower,
            leader: None,
            commit: applied,
            applied,
            gate: PersistGate::new(),
            election_deadline: now,
            last_leader_contact: None,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            heartbeat_deadline: now,
            quorum_check_deadline: now,
            reads: ReadIndex::default(),
            lease: Lease::default(),
            snapshot: stable.snapshot.clone(),
            incoming: None,
            pending_restore: stable.snapshot,
            timeouts: Timeouts::default(),
            round_trips: RoundTrips::default(),
            transfer: None,
        };
        node.timeouts = node.configured_timeouts();
        let min = node.cfg.election_timeout_min;
        node.lease.started(now, min);
        node.reset_election_deadline();
        Ok(node)
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The heartbeat interval and (shortest) election timeout in force.
    pub fn timeouts(&self) -> (std::time::Duration, std::time::Duration) {
        (self.timeouts.heartbeat, self.timeouts.election)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.cfg.id;
        self.configs.latest().members().filter(move |&m| m != me)
    }

    pub(crate) fn persist_hard_state(&mut self, out: &mut Out) {
        let write = RaftWrite::HardState {
            term: self.term,
            vote: self.vote,
        };
        self.gate.persist(write, out);
    }

    /// Append one entry as leader and ask for it to be made durable.
    pub(crate) fn append_local(&mut self, payload: Payload, out: &mut Out) -> u64 {
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload,
        };
        let index = entry.index;
        self.log.push(entry.clone());
        let seq = self.gate.persist(
            RaftWrite::Append {
                entries: vec![entry],
            },
            out,
        );
        self.log.note_write(seq);
        index
    }

    /// Move the commit index forward and deliver what it covers, in order.
    pub(crate) fn advance_commit(&mut self, index: u64, out: &mut Out) {
        if index <= self.commit {
            return;
        }
        assert!(
            index <= self.log.last_index(),
            "{}: commit {index} beyond log end {}",
            self.cfg.id,
            self.log.last_index()
        );
        self.commit = index;
        while self.applied < self.commit {
            self.applied += 1;
            let entry = self.log.get(self.applied).expect("committed entry in log");
            let committed = match &entry.payload {
                Payload::Noop => CommittedEntry::Noop,
                Payload::Command { id, command } => CommittedEntry::Command {
                    id: *id,
                    command: command.clone(),
                },
                Payload::Config {
                    membership,
                    changes,
                } => CommittedEntry::Membership {
                    membership: membership.clone(),
                    changes: changes.clone(),
                },
            };
            out.commit(self.applied, committed);
        }
        if self.role == Role::Leader {
            self.on_leader_commit(out);
            self.on_config_commit(out);
        }
    }

    /// Step down (or stay down) as follower of `term`, raising the term if it is newer.
    pub(crate) fn become_follower(&mut self, term: u64, leader: Option<NodeId>, out: &mut Out) {
        assert!(term >= self.term, "terms never go backwards");
        if self.role == Role::Leader {
            let reason = if term > self.term {
                StepDownReason::HigherTerm
            } else {
                StepDownReason::LostQuorum
            };
            out.event(Event::SteppedDown {
                term: self.term,
                reason,
            });
            self.progress.clear();
            self.pending_change = None;
            self.reads.abandon(out);
            self.end_transfer(out);
        }
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.persist_hard_state(out);
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_deadline();
    }

    pub(crate) fn reset_election_deadline(&mut self) {
        self.election_deadline = self.draw_election_deadline();
    }

    fn on_request(&mut self, req: Request, out: &mut Out) {
        if self.role != Role::Leader {
            let reason = Rejection::NotLeader {
                leader: self.leader,
            };
            out.reply(Reply::Rejected { id: req.id, reason });
            return;
        }
        match req.kind {
            RequestKind::Write(command) => {
                // Entries proposed while handing over could keep the target behind.
                if self.transfer.is_some()
                    || self.log.last_index() - self.commit >= self.cfg.max_uncommitted as u64
                {
                    out.reply(Reply::Rejected {
                        id: req.id,
                        reason: Rejection::Busy,
                    });
                    return;
                }
                self.append_local(
                    Payload::Command {
                        id: req.id,
                        command,
                    },
                    out,
                );
                self.broadcast_append(out);
            }
            RequestKind::Read => self.read(req.id, out),
            RequestKind::TransferLeadership { to } => self.transfer_leadership(req.id, to, out),
            RequestKind::ChangeMembership(changes) => self.change_membership(req.id, changes, out),
        }
    }

    fn on_tick(&mut self, out: &mut Out) {
        match self.role {
            Role::Leader => {
                self.transfer_tick(out);
                self.leader_tick(out);
            }
            _ if self.now >= self.election_deadline => self.on_election_timeout(out),
            _ => {}
        }
    }

    fn on_persisted(&mut self, seq: u64, out: &mut Out) {
        self.gate.on_persisted(seq, out);
        self.log.on_persisted(seq);
        if self.role == Role::Leader {
            self.maybe_commit(out);
            self.tell_commit(out);
        }
    }

    fn on_message(&mut self, from: NodeId, msg: Message, out: &mut Out) {
        // Messages from non-members count too: a new member's leader may be unknown to
        // its stale configuration, and a removed node's pre-votes are refused anyway.
        if from == self.cfg.id {
            return;
        }
        match msg {
            Message::Vote(req) => self.on_vote_request(from, req, out),
            Message::VoteResponse(resp) => self.on_vote_response(from, resp, out),
            Message::Append(req) => self.on_append(from, req, out),
            Message::AppendResponse(resp) => self.on_append_response(from, resp, out),
            Message::Snapshot(chunk) => self.on_snapshot_chunk(from, chunk, out),
            Message::SnapshotAck(ack) => self.on_snapshot_ack(from, ack, out),
            Message::TimeoutNow(msg) => self.on_timeout_now(from, msg, out),
        }
    }
}

/// The configurations a replica restarts with: its snapshot's (or the bootstrap voters,
/// unless it is joining), then those in its log after the snapshot.
fn recovered_configs(cfg: &RaftConfig, stable: &RaftStable) -> Configs {
    let mut configs = match &stable.snapshot {
        Some(s) => Configs::new(s.index, Some(s.membership.clone())),
        None if cfg.voters.is_empty() => Configs::new(0, None),
        None => Configs::new(0, Some(Membership::of(cfg.voters.iter().copied()))),
    };
    let after = stable.snapshot.as_ref().map_or(0, |s| s.index);
    for e in stable.log.iter().filter(|e| e.index > after) {
        if let Payload::Config { membership, .. } = &e.payload {
            configs.push(e.index, membership.clone());
        }
    }
    configs
}

impl Replica for RaftNode {
    type Message = Message;
    type Write = RaftWrite;
    type Stable = RaftStable;

    fn id(&self) -> NodeId {
        self.cfg.id
    }

    fn step(&mut self, now: Time, input: Input<Message>, out: &mut Out) {
        assert!(
            now >= self.now,
            "time went backwards: {now:?} < {:?}",
            self.now
        );
        self.now = now;
        if let Some(s) = self.pending_restore.take() {
            out.push(ekmat_core::Effect::Restore {
                index: s.index,
                data: s.data,
            });
        }
        match input {
            Input::Message { from, msg } => self.on_message(from, msg, out),
            Input::Request(req) => self.on_request(req, out),
            Input::Tick => self.on_tick(out),
            Input::Persisted { seq } => self.on_persisted(seq, out),
            Input::Snapshot { index, data } => self.on_snapshot_taken(index, data, out),
            Input::SnapshotSize { .. } => {}
        }
        debug_assert!(self.applied <= self.commit && self.commit <= self.log.last_index());
    }
}
