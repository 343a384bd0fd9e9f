//! Leadership transfer (thesis §3.10): the leader stops taking proposals, brings the
//! target's log up to date, and sends it TimeoutNow; the target campaigns at once, and
//! its vote requests say so, so voters that heard from the leader recently still answer.
//! If the target has not taken over within an election timeout, the leader gives up and
//! takes proposals again.

use ekmat_core::{NodeId, Rejection, Reply, RequestId, Time};

use crate::message::{Message, TimeoutNow};
use crate::node::{Out, RaftNode, Role};

/// A transfer in progress.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub to: NodeId,
    id: RequestId,
    deadline: Time,
    /// TimeoutNow went out: stepping down now means the target took over.
    sent: bool,
}

impl RaftNode {
    pub(crate) fn transfer_leadership(&mut self, id: RequestId, to: NodeId, out: &mut Out) {
        if to == self.cfg.id {
            out.reply(Reply::Done { id });
            return;
        }
        if !self.membership().is_voter(to) || self.transfer.is_some() {
            let reason = Rejection::TransferFailed;
            out.reply(Reply::Rejected { id, reason });
            return;
        }
        self.transfer = Some(Transfer {
            to,
            id,
            deadline: self.now + self.timeouts.election,
            sent: false,
        });
        self.continue_transfer(out);
    }

    /// Send TimeoutNow once the target holds our whole log; until then, replicate to it.
    pub(crate) fn continue_transfer(&mut self, out: &mut Out) {
        let Some(transfer) = self.transfer.filter(|t| !t.sent) else {
            return;
        };
        let to = transfer.to;
        let matched = self.progress.get(&to).map_or(0, |pr| pr.match_index);
        if matched < self.log.last_index() {
            self.send_append(to, out);
            return;
        }
        self.revoke_lease();
        out.send(to, Message::TimeoutNow(TimeoutNow { term: self.term }));
        if let Some(t) = self.transfer.as_mut() {
            t.sent = true;
        }
    }

    /// Give up on a transfer that has not completed within its bound.
    pub(crate) fn transfer_tick(&mut self, out: &mut Out) {
        if let Some(t) = self.transfer
            && self.now >= t.deadline
        {
            self.transfer = None;
            let reason = Rejection::TransferFailed;
            out.reply(Reply::Rejected { id: t.id, reason });
        }
    }

    /// Stepping down ends a transfer: done if the target was told to take over.
    pub(crate) fn end_transfer(&mut self, out: &mut Out) {
        if let Some(t) = self.transfer.take() {
            out.reply(if t.sent {
                Reply::Done { id: t.id }
            } else {
                Reply::Rejected {
                    id: t.id,
                    reason: Rejection::LeadershipLost,
                }
            });
        }
    }

    pub(crate) fn on_timeout_now(&mut self, from: NodeId, msg: TimeoutNow, out: &mut Out) {
        if msg.term == self.term
            && self.role == Role::Follower
            && self.leader == Some(from)
            && self.is_voter()
        {
            self.campaign(true, out);
        }
    }
}
