//! etcd's Lock service (`v3lockpb.Lock`): Lock waits in the line for a name (see
//! `queue.rs`) and answers with the key whose existence is the lock; Unlock deletes it.
//! This is etcd's `concurrency.Mutex`, run inside the server on the node's own KV, lease
//! and watch paths, as etcd's server runs it.

use bytes::Bytes;
use ekmat_api::v3lockpb as pb;
use tonic::{Request, Response as Reply, Status};

use super::Services;
use super::queue::{Abandon, WaitError, line_prefix};

/// What etcd (3.5 and later) answers a Lock whose session ended while it waited.
pub const SESSION_EXPIRED: &str = "mutex: session is expired";

#[tonic::async_trait]
impl pb::lock_server::Lock for Services {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Reply<pb::LockResponse>, Status> {
        let caller = self
            .check_line(
                &request,
                &request.get_ref().name,
                true,
                super::election::READ_WRITE,
            )
            .await?;
        let req = request.into_inner();
        let lease = self.session_lease(req.lease).await?;
        let (place, joined, first) = self.join(&caller, &req.name, lease, Bytes::new()).await?;
        // Uncontended (or already held by this lease): no wait, the txn's header.
        let revision = if first.is_none_or(|kv| kv.create_revision == place.rev) {
            joined.header.revision
        } else {
            // Dropped with the call if the client goes away; etcd's Mutex also gives up
            // its key when the wait fails for any other reason.
            let abandon = Abandon::new(self, &place);
            match self.wait_turn(&line_prefix(&req.name), &place).await {
                Ok(revision) => {
                    abandon.keep();
                    revision
                }
                Err(WaitError::KeyLost) => {
                    abandon.keep();
                    return Err(Status::unknown(SESSION_EXPIRED));
                }
                Err(WaitError::Status(s)) => return Err(s),
            }
        };
        Ok(Reply::new(pb::LockResponse {
            header: Some(self.header(revision)),
            key: place.key.to_vec(),
        }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Reply<pb::UnlockResponse>, Status> {
        let write = [ekmat_kv::PermissionType::Write];
        let caller = self
            .check_line(&request, &request.get_ref().key, false, &write)
            .await?;
        let key = Bytes::from(request.into_inner().key);
        let revision = self.delete_key(&caller, key).await?;
        Ok(Reply::new(pb::UnlockResponse {
            header: Some(self.header(revision)),
        }))
    }
}
