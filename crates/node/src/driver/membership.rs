//! The driver's side of membership: administrative requests (leadership transfer,
//! membership changes), following committed configurations in the member table and the
//! transport, and a joined member publishing its own record.

use std::time::Instant;

use ekmat_core::{Input, MembershipChange, NodeId, Request, RequestKind};
use tokio::sync::oneshot;

use super::{CallError, Driver, PUBLISH_RETRY, PendingAdmin};
use crate::members::MemberRecord;
use crate::protocol::RuntimeProtocol;

impl<P: RuntimeProtocol> Driver<P> {
    pub(super) async fn admin(
        &mut self,
        kind: RequestKind,
        reply: oneshot::Sender<Result<(), CallError>>,
    ) {
        if !P::RECONFIGURES {
            let _ = reply.send(Err(CallError::Unsupported(unsupported(P::NAME, &kind))));
            return;
        }
        let id = self.fresh_id();
        let pending = PendingAdmin {
            reply,
            kind: kind.clone(),
            forwarded: false,
        };
        self.pending_admin.insert(id, pending);
        self.step(Input::Request(Request { id, kind })).await;
    }

    /// A committed configuration: follow it in the member table and the transport.
    pub(super) fn on_membership(
        &mut self,
        membership: &ekmat_core::Membership,
        changes: &[MembershipChange],
    ) {
        for added in self.members.apply(membership, changes) {
            tracing::info!(id = added.id, peer = %added.peer, "member added or updated");
        }
        self.sync_peers();
    }

    /// A member added at run time is known to the others by its peer address alone; it
    /// tells them its name and client address (etcd's publish) once the table holds it,
    /// trying again until its record as committed matches its own.
    pub(super) async fn publish_self(&mut self) {
        if !P::RECONFIGURES {
            return;
        }
        if let Some((since, rx)) = &mut self.publishing {
            let waiting = matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
            if waiting && since.elapsed() < PUBLISH_RETRY {
                return;
            }
            self.publishing = None;
        }
        let Some(known) = self.members.get(self.me.id) else {
            return; // not (yet, or any longer) a member
        };
        let mine = MemberRecord {
            learner: known.learner,
            ..self.me.clone()
        };
        if *known == mine {
            return;
        }
        let change = MembershipChange {
            action: ekmat_core::ChangeAction::Update,
            node: NodeId(mine.id),
            context: crate::members::encode_context(&mine),
        };
        let (tx, rx) = oneshot::channel();
        self.publishing = Some((Instant::now(), rx));
        self.admin(RequestKind::ChangeMembership(vec![change]), tx)
            .await;
    }

    /// The transport sends to exactly the members in the table.
    pub(super) fn sync_peers(&mut self) {
        let gone: Vec<NodeId> = self
            .transport
            .peers()
            .filter(|id| self.members.get(id.0).is_none())
            .collect();
        for id in gone {
            self.transport.remove_peer(id);
        }
        let list = self.members.list();
        for r in &list {
            self.transport.add_peer(NodeId(r.id), r.peer);
        }
        self.members_tx.send_replace(list);
    }
}

/// Why a protocol with a fixed membership refuses an administrative request.
fn unsupported(protocol: &str, kind: &RequestKind) -> String {
    match kind {
        RequestKind::TransferLeadership { .. } => format!(
            "etcdserver: protocol {protocol} does not transfer leadership on request (its primary changes only by view change)"
        ),
        _ => format!(
            "etcdserver: protocol {protocol} has a fixed membership: members, learners and peer addresses cannot be changed at run time"
        ),
    }
}
