//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use ekmat_api::etcdserverpb as pb;
use ekmat_api::etcdserverpb::kv_client::KvClient;
use ekmat_kv::{Command, Response};
use tonic::transport::Channel;
use tonic::{Request, Response as Reply, Status};

use super::{Services, check_size, convert, forwarded};
use crate::driver::Call;

impl Services {
    /// Order `command` through consensus and answer with `answer(response)`; if this node
    /// is not the leader, forward the original request to the leader and pass its answer
    /// through unchanged.
    async fn ordered<Req, Resp>(
        &self,
        request: Request<Req>,
        command: Command,
        answer: impl FnOnce(&Self, Response) -> Option<Resp>,
        forward: impl AsyncFnOnce(KvClient<Channel>, Request<Req>) -> Result<Reply<Resp>, Status>,
    ) -> Result<Reply<Resp>, Status> {
        match self.call(|reply| Call::Write { command, reply }).await {
            Ok(response) => answer(self, response)
                .map(Reply::new)
                .ok_or_else(|| Status::internal("the state machine answered another request")),
            Err(e) => {
                let channel = self.forward_target(&request, &e)?;
                forward(KvClient::new(channel), forwarded(request.into_inner())).await
            }
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Services {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Reply<pb::RangeResponse>, Status> {
        let req = convert::range_request(request.get_ref().clone())?;
        let linearizable = !req.serializable;
        let result = self
            .call(|reply| Call::Read {
                request: req,
                linearizable,
                reply,
            })
            .await;
        match result {
            Ok(r) => Ok(Reply::new(convert::range_response(r, &self.header_fn()))),
            Err(e) => {
                let channel = self.forward_target(&request, &e)?;
                KvClient::new(channel)
                    .range(forwarded(request.into_inner()))
                    .await
            }
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Reply<pb::PutResponse>, Status> {
        check_size(request.get_ref())?;
        let command = Command::Put(convert::put_request(request.get_ref().clone()));
        self.ordered(
            request,
            command,
            |s, r| match r {
                Response::Put(r) => Some(convert::put_response(r, &s.header_fn())),
                _ => None,
            },
            async |mut c, r| c.put(r).await,
        )
        .await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Reply<pb::DeleteRangeResponse>, Status> {
        check_size(request.get_ref())?;
        let command = Command::DeleteRange(convert::delete_request(request.get_ref().clone()));
        self.ordered(
            request,
            command,
            |s, r| match r {
                Response::DeleteRange(r) => Some(convert::delete_response(r, &s.header_fn())),
                _ => None,
            },
            async |mut c, r| c.delete_range(r).await,
        )
        .await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Reply<pb::TxnResponse>, Status> {
        check_size(request.get_ref())?;
        let command = Command::Txn(convert::txn_request(request.get_ref().clone())?);
        self.ordered(
            request,
            command,
            |s, r| match r {
                Response::Txn(r) => Some(convert::txn_response(r, &s.header_fn())),
                _ => None,
            },
            async |mut c, r| c.txn(r).await,
        )
        .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Reply<pb::CompactionResponse>, Status> {
        let r = request.get_ref();
        let command = Command::Compact(ekmat_kv::CompactionRequest {
            revision: r.revision,
            physical: r.physical,
        });
        self.ordered(
            request,
            command,
            |s, r| match r {
                Response::Compact(r) => Some(pb::CompactionResponse {
                    header: Some(s.header(r.header.revision)),
                }),
                _ => None,
            },
            async |mut c, r| c.compact(r).await,
        )
        .await
    }
}
