//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use ekmat_api::etcdserverpb as pb;
use ekmat_kv::{Command, Response};
use tonic::{Request, Response as Reply, Status};

use super::{Services, call_error, check_size, convert, quota, unexpected_answer};
use crate::query::{Answer, Query};

impl Services {
    /// Order `command` through consensus and answer with `answer(response)`.
    async fn ordered<Resp>(
        &self,
        command: Command,
        answer: impl FnOnce(&Self, Response) -> Option<Resp>,
    ) -> Result<Reply<Resp>, Status> {
        let response = self.write(command).await.map_err(|e| call_error(&e))?;
        answer(self, response)
            .map(Reply::new)
            .ok_or_else(unexpected_answer)
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Services {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Reply<pb::RangeResponse>, Status> {
        let caller = self.caller(&request).await?;
        let req = convert::range_request(request.into_inner())?;
        let linearizable = !req.serializable;
        let query = Query::As(caller, Box::new(Query::Range(req)));
        let answer = self
            .read(query, linearizable)
            .await
            .map_err(|e| call_error(&e))?;
        let Answer::Range(response) = answer else {
            return Err(unexpected_answer());
        };
        Ok(Reply::new(convert::range_response(
            response,
            &self.header_fn(),
        )))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Reply<pb::PutResponse>, Status> {
        check_size(request.get_ref())?;
        let caller = self.caller(&request).await?;
        self.check_quota(quota::put_cost(request.get_ref())).await?;
        let command = Command::Put(convert::put_request(request.into_inner())).from_caller(caller);
        self.ordered(command, |s, r| match r {
            Response::Put(r) => Some(convert::put_response(r, &s.header_fn())),
            _ => None,
        })
        .await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Reply<pb::DeleteRangeResponse>, Status> {
        check_size(request.get_ref())?;
        let caller = self.caller(&request).await?;
        let command =
            Command::DeleteRange(convert::delete_request(request.into_inner())).from_caller(caller);
        self.ordered(command, |s, r| match r {
            Response::DeleteRange(r) => Some(convert::delete_response(r, &s.header_fn())),
            _ => None,
        })
        .await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Reply<pb::TxnResponse>, Status> {
        check_size(request.get_ref())?;
        let caller = self.caller(&request).await?;
        self.check_quota(quota::txn_cost(request.get_ref())).await?;
        let command = Command::Txn(convert::txn_request(request.into_inner())?).from_caller(caller);
        self.ordered(command, |s, r| match r {
            Response::Txn(r) => Some(convert::txn_response(r, &s.header_fn())),
            _ => None,
        })
        .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Reply<pb::CompactionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let command = Command::Compact(ekmat_kv::CompactionRequest {
            revision: r.revision,
            physical: r.physical,
        })
        .from_caller(caller);
        self.ordered(command, |s, r| match r {
            Response::Compact(r) => Some(pb::CompactionResponse {
                header: Some(s.header(r.header.revision)),
            }),
            _ => None,
        })
        .await
    }
}
