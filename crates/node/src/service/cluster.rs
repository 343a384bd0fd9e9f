//! etcd's Cluster service: the member list, and membership changes carried out by the
//! protocol (Raft's joint consensus). A member added here starts as a record with its
//! peer address only; the node itself is then started with `joined = true`.

use std::net::SocketAddr;

use bytes::Bytes;
use ekmat_api::etcdserverpb as pb;
use ekmat_core::{ChangeAction, MembershipChange, NodeId};
use tonic::{Request, Response, Status};

use super::{Services, call_error};
use crate::config::NodeConfig;
use crate::driver::Call;
use crate::members::{MemberRecord, encode_context, next_id};

/// The schemes of the members' URLs: `https` where their ports serve TLS.
#[derive(Clone, Copy)]
struct Schemes {
    client: &'static str,
    peer: &'static str,
}

fn to_pb(m: &MemberRecord, schemes: Schemes) -> pb::Member {
    pb::Member {
        id: NodeConfig::member_id(m.id),
        // etcd shows a member that has not started yet with no name and no client URLs.
        name: match (&m.client, m.name.is_empty()) {
            (None, _) => String::new(),
            (Some(_), true) => format!("n{}", m.id),
            (Some(_), false) => m.name.clone(),
        },
        peer_ur_ls: vec![format!("{}://{}", schemes.peer, m.peer)],
        client_ur_ls: m
            .client
            .iter()
            .map(|c| format!("{}://{c}", schemes.client))
            .collect(),
        is_learner: m.learner,
    }
}

/// `scheme://IP:PORT` as a socket address; the scheme must be the one the members'
/// peer ports speak (`https` with peer TLS).
fn peer_addr(url: &str, scheme: &str) -> Result<SocketAddr, Status> {
    let Some(rest) = url.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) else {
        let why = if scheme == "https" {
            "the members' peer ports speak TLS (peer_transport_security)"
        } else {
            "the members' peer ports speak no TLS (no peer_transport_security)"
        };
        return Err(Status::invalid_argument(format!(
            "peer URL {url:?} must be {scheme}://IP:PORT: {why}"
        )));
    };
    rest.trim_end_matches('/').parse().map_err(|_| {
        Status::invalid_argument(format!("peer URL {url:?} is not {scheme}://IP:PORT"))
    })
}

impl Services {
    pub(crate) fn members(&self) -> Vec<pb::Member> {
        let schemes = self.schemes();
        self.inner
            .members
            .borrow()
            .iter()
            .map(|m| to_pb(m, schemes))
            .collect()
    }

    /// The member with etcd's 64-bit `id`, if there is one.
    pub(crate) fn member_by_etcd_id(&self, id: u64) -> Option<MemberRecord> {
        let members = self.inner.members.borrow();
        members
            .iter()
            .find(|m| NodeConfig::member_id(m.id) == id)
            .cloned()
    }

    /// The member list once a change is committed. This member may not have applied the
    /// change yet (the leader answered a forwarded request), so `edit` applies it to the
    /// list as well; applying it twice changes nothing.
    fn members_after(&self, edit: impl Fn(&mut Vec<MemberRecord>)) -> Vec<pb::Member> {
        let mut list = self.inner.members.borrow().clone();
        edit(&mut list);
        list.iter().map(|m| to_pb(m, self.schemes())).collect()
    }

    async fn change(&self, action: ChangeAction, node: u32, context: Bytes) -> Result<(), Status> {
        let changes = vec![MembershipChange {
            action,
            node: NodeId(node),
            context,
        }];
        self.call(|reply| Call::ChangeMembership { changes, reply })
            .await
            .map_err(|e| call_error(&e))
    }

    /// The one peer address `urls` names, if no member other than `except` has it.
    fn free_peer(&self, urls: &[String], except: Option<u32>) -> Result<SocketAddr, Status> {
        let [url] = urls else {
            let scheme = self.schemes().peer;
            return Err(Status::invalid_argument(format!(
                "give exactly one peer URL ({scheme}://IP:PORT)"
            )));
        };
        let peer = peer_addr(url, self.schemes().peer)?;
        let members = self.inner.members.borrow();
        if members
            .iter()
            .any(|m| m.peer == peer && Some(m.id) != except)
        {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        Ok(peer)
    }

    fn existing(&self, id: u64) -> Result<MemberRecord, Status> {
        self.member_by_etcd_id(id)
            .ok_or_else(|| Status::not_found("etcdserver: member not found"))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Services {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.check_admin(&request).await?;
        let req = request.into_inner();
        let peer = self.free_peer(&req.peer_ur_ls, None)?;
        let id = next_id(&self.inner.members.borrow());
        let record = MemberRecord {
            id,
            name: String::new(),
            peer,
            client: None,
            learner: req.is_learner,
        };
        let action = if req.is_learner {
            ChangeAction::AddLearner
        } else {
            ChangeAction::AddVoter
        };
        self.change(action, id, encode_context(&record)).await?;
        let members = self.members_after(|list| {
            if !list.iter().any(|m| m.id == id) {
                list.push(record.clone());
            }
        });
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.cluster_header()),
            member: Some(to_pb(&record, self.schemes())),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.check_admin(&request).await?;
        let m = self.existing(request.get_ref().id)?;
        self.change(ChangeAction::Remove, m.id, Bytes::new())
            .await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.cluster_header()),
            members: self.members_after(|list| list.retain(|r| r.id != m.id)),
        }))
    }

    /// A member's new peer address, carried through the log like an addition.
    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.check_admin(&request).await?;
        let req = request.into_inner();
        let m = self.existing(req.id)?;
        let peer = self.free_peer(&req.peer_ur_ls, Some(m.id))?;
        let record = MemberRecord { peer, ..m.clone() };
        self.change(ChangeAction::Update, m.id, encode_context(&record))
            .await?;
        let members = self.members_after(|list| {
            for r in list.iter_mut().filter(|r| r.id == m.id) {
                r.peer = peer;
            }
        });
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.cluster_header()),
            members,
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.cluster_header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.check_admin(&request).await?;
        let m = self.existing(request.get_ref().id)?;
        if !m.learner {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member",
            ));
        }
        self.change(ChangeAction::Promote, m.id, Bytes::new())
            .await?;
        let members = self.members_after(|list| {
            for r in list.iter_mut().filter(|r| r.id == m.id) {
                r.learner = false;
            }
        });
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.cluster_header()),
            members,
        }))
    }
}

impl Services {
    fn schemes(&self) -> Schemes {
        let scheme = |tls: bool| if tls { "https" } else { "http" };
        Schemes {
            client: scheme(self.inner.tls.is_some()),
            peer: scheme(self.inner.peer_tls),
        }
    }

    /// Cluster answers' header: etcd's carries no store revision (its cluster service
    /// answers from membership, not from the store).
    fn cluster_header(&self) -> pb::ResponseHeader {
        self.header(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_must_be_plain_http_addresses() {
        assert_eq!(
            peer_addr("http://127.0.0.1:2380", "http").unwrap(),
            "127.0.0.1:2380".parse().unwrap()
        );
        assert!(peer_addr("https://127.0.0.1:2380", "http").is_err());
        assert!(peer_addr("http://example.com:2380", "http").is_err());
        assert!(peer_addr("https://127.0.0.1:2380", "https").is_ok());
        let e = peer_addr("http://127.0.0.1:2380", "https").unwrap_err();
        assert!(e.message().contains("speak TLS"), "{e}");
    }
}
