//! etcd's Cluster service: the member list from the configuration. Changing membership
//! comes with Raft's joint consensus.

use ekmat_api::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::Services;
use crate::config::NodeConfig;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("ekmat does not support {what} yet"))
}

impl Services {
    fn members(&self) -> Vec<pb::Member> {
        self.inner
            .cfg
            .members
            .iter()
            .map(|m| pb::Member {
                id: NodeConfig::member_id(m.id),
                name: if m.name.is_empty() {
                    format!("n{}", m.id)
                } else {
                    m.name.clone()
                },
                peer_ur_ls: vec![format!("http://{}", m.peer)],
                client_ur_ls: vec![format!("http://{}", m.client)],
                is_learner: false,
            })
            .collect()
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Services {
    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(not_yet("adding members"))
    }

    async fn member_remove(
        &self,
        _: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(not_yet("removing members"))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(not_yet("updating members"))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header(self.inner.status.borrow().revision)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(not_yet("promoting learners"))
    }
}
