//! Linearizable reads without writing to the log (Raft thesis §6.4, ReadIndex).
//!
//! The leader records its commit index when a read arrives, then confirms it is still
//! leader by hearing from a quorum in a heartbeat round started after the read arrived.
//! A new leader first waits for an entry of its own term to commit, since only then is
//! its commit index known to cover everything committed before it.
//!
//! In lease mode (`lease.rs`) a read is answered at once while the leader's lease holds,
//! and takes a round as here when it does not.

use std::collections::VecDeque;

use ekmat_core::{Rejection, Reply, RequestId};

use crate::config::Mutant;
use crate::node::{Out, RaftNode};

#[derive(Debug, Default)]
pub struct ReadIndex {
    /// Last confirmation round started. Followers echo it in their responses.
    seq: u64,
    /// Reads with the commit index they must wait for and the round that confirms them.
    pending: VecDeque<(RequestId, u64, u64)>,
    /// Reads that arrived before this term's first commit.
    awaiting_commit: Vec<RequestId>,
}

impl ReadIndex {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Start a confirmation round; returns its number.
    pub fn new_round(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Leadership ended: no pending read can be confirmed any more.
    pub fn abandon(&mut self, out: &mut Out) {
        let ids = self.pending.drain(..).map(|(id, _, _)| id);
        for id in ids.chain(self.awaiting_commit.drain(..)) {
            out.reply(Reply::Rejected {
                id,
                reason: Rejection::LeadershipLost,
            });
        }
    }
}

impl RaftNode {
    pub(crate) fn read(&mut self, id: RequestId, out: &mut Out) {
        if self.cfg.mutant == Mutant::ReadWithoutQuorum {
            out.reply(Reply::ReadReady {
                id,
                index: self.commit,
            });
            return;
        }
        if self.serve_lease_read(id, out) {
            return;
        }
        if self.log.term_at(self.commit) != Some(self.term) {
            self.reads.awaiting_commit.push(id);
            return;
        }
        self.start_read_round(vec![id], out);
    }

    /// Called when the leader's commit index moves.
    pub(crate) fn on_leader_commit(&mut self, out: &mut Out) {
        if self.reads.awaiting_commit.is_empty() || self.log.term_at(self.commit) != Some(self.term)
        {
            return;
        }
        let ids = std::mem::take(&mut self.reads.awaiting_commit);
        self.start_read_round(ids, out);
    }

    fn start_read_round(&mut self, ids: Vec<RequestId>, out: &mut Out) {
        let (seq, index) = (self.reads.new_round(), self.commit);
        self.lease_round_started(seq);
        self.reads
            .pending
            .extend(ids.into_iter().map(|id| (id, index, seq)));
        self.broadcast_heartbeat(out);
        self.confirm_reads(out);
    }

    /// Answer every read whose round a quorum has echoed.
    pub(crate) fn confirm_reads(&mut self, out: &mut Out) {
        let me = self.cfg.id;
        let own = self.reads.seq;
        let progress = &self.progress;
        let confirmed = self.configs.latest().committed_index(|id| {
            if id == me {
                own
            } else {
                progress.get(&id).map_or(0, |p| p.read_ack)
            }
        });
        self.extend_lease(confirmed);
        while let Some(&(id, index, seq)) = self.reads.pending.front() {
            if seq > confirmed {
                break;
            }
            self.reads.pending.pop_front();
            out.reply(Reply::ReadReady { id, index });
        }
    }
}
