//! etcd's Maintenance service: Status (what `ekmat status` and `etcdctl endpoint status`
//! show), Alarm (`alarm.rs`), Defragment, HashKV, Snapshot (`snapshot.rs`) and
//! MoveLeader. Hash answers a hash of the whole replicated state (etcd hashes its bbolt
//! file, which ekmat does not have).

use ekmat_api::etcdserverpb as pb;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{Services, call_error, unexpected_answer};
use crate::config::NodeConfig;
use crate::driver::{Call, CallError};
use crate::query::{Answer, Query};

/// The etcd API version ekmat implements, reported where etcd reports its own version.
pub const API_VERSION: &str = "3.4.0";

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Services {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // Anyone may list and clear alarms, as in etcd 3.4, but not with a bad token.
        self.caller(&request).await?;
        self.alarm_request(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = *self.inner.status.borrow();
        let errors = self.status_errors(s.core.leader.is_some()).await;
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.header(s.revision)),
            version: API_VERSION.into(),
            // The store's size estimate: ekmat keeps no file that grows and shrinks
            // separately from its data, so the size and the size in use are one.
            db_size: s.db_size as i64,
            leader: s.core.leader.map_or(0, |l| NodeConfig::member_id(l.0)),
            raft_index: s.core.commit,
            raft_term: s.core.term,
            raft_applied_index: s.applied,
            errors,
            db_size_in_use: s.db_size as i64,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.check_maintainer(&request).await?;
        // The state machine lives in memory: there is nothing to defragment.
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.header(self.inner.status.borrow().revision)),
        }))
    }

    /// etcd hashes its whole backend file; ekmat hashes its whole replicated state (data
    /// with history, revisions, leases, the log's clock, client sessions), served from
    /// this member's own applied state. Members agree once they have applied the same
    /// entries; the values differ from etcd's, which depend on its file layout. Like
    /// HashKV, it is computed off the driver, from a view of the state taken when asked.
    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.check_maintainer(&request).await?;
        match self.read(Query::Hash, false).await {
            Ok(Answer::Hash { header, hash }) => Ok(Response::new(pb::HashResponse {
                header: Some(self.header(header.revision)),
                hash,
            })),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(call_error(&e)),
        }
    }

    /// Served from this member's own applied state, as etcd does: compare members at
    /// a revision they have all applied.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        // Root only, as in etcd 3.4, or another member checking for corruption.
        self.check_hash_reader(&request).await?;
        let revision = request.get_ref().revision;
        match self.read(Query::HashKv { revision }, false).await {
            Ok(Answer::HashKv {
                header,
                hash,
                compact_revision,
            }) => Ok(Response::new(pb::HashKvResponse {
                header: Some(self.header(header.revision)),
                hash,
                compact_revision,
            })),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(call_error(&e)),
        }
    }

    type SnapshotStream = BoxStream<pb::SnapshotResponse>;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_maintainer(&request).await?;
        self.snapshot_stream().await.map(Response::new)
    }

    /// etcd's MoveLeader: only the leader takes it; the answer comes once it has
    /// stepped down for the target.
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.check_maintainer(&request).await?;
        let target = request.get_ref().target_id;
        let Some(to) = self
            .member_by_etcd_id(target)
            .map(|m| ekmat_core::NodeId(m.id))
        else {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        };
        let result = self.call(|reply| Call::MoveLeader { to, reply }).await;
        match result {
            Ok(()) => Ok(Response::new(pb::MoveLeaderResponse {
                header: Some(self.header(self.inner.status.borrow().revision)),
            })),
            Err(CallError::NotLeader { .. }) => {
                Err(Status::failed_precondition("etcdserver: not leader"))
            }
            Err(e) => Err(call_error(&e)),
        }
    }
}
