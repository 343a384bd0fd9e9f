//! ekmat's own `Exclusions` service (`ekmatpb`): the members PBFT excluded on proof of
//! misbehaviour and re-admitted, and re-admission on the signed votes of f+1
//! validators' operators (`ekmat pbft readmit-vote`, `ekmat pbft readmit`). A vote is
//! signed offline with a validator's key; the member only checks the votes and hands
//! them in for ordering (`ekmat_pbft::readmission`).

use ekmat_api::ekmatpb::{self, exclusions_server::Exclusions};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::Services;
use crate::driver::Call;
use crate::protocol::Readmit;

/// Votes one request may carry: far more than any cluster's f+1.
const MAX_VOTES: usize = 1024;

#[tonic::async_trait]
impl Exclusions for Services {
    async fn list(
        &self,
        _: Request<ekmatpb::ListExclusionsRequest>,
    ) -> Result<Response<ekmatpb::ExclusionsResponse>, Status> {
        self.exclusions().await.map(Response::new)
    }

    async fn readmit(
        &self,
        request: Request<ekmatpb::ReadmitRequest>,
    ) -> Result<Response<ekmatpb::ExclusionsResponse>, Status> {
        let votes: Vec<bytes::Bytes> = request
            .into_inner()
            .votes
            .into_iter()
            .map(Into::into)
            .collect();
        if votes.len() > MAX_VOTES {
            return Err(Status::invalid_argument(format!(
                "{} votes: at most {MAX_VOTES} are taken",
                votes.len()
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Call::Readmit { votes, reply }).await?;
        match answer.await.map_err(|_| stopped())? {
            Ok(()) => self.exclusions().await.map(Response::new),
            Err(Readmit::Unsupported(why)) => Err(Status::unimplemented(why)),
            Err(Readmit::Refused(why)) => Err(Status::failed_precondition(format!(
                "the re-admission does not hold at member {}: {why}",
                self.inner.node_id
            ))),
        }
    }
}

impl Services {
    async fn exclusions(&self) -> Result<ekmatpb::ExclusionsResponse, Status> {
        let (reply, answer) = oneshot::channel();
        self.send(Call::Exclusions { reply }).await?;
        let Some(e) = answer.await.map_err(|_| stopped())? else {
            return Err(Status::unimplemented(format!(
                "protocol {} excludes no member (only pbft does)",
                self.inner.protocol
            )));
        };
        let decisions = |list: Vec<(ekmat_core::NodeId, u64)>| {
            list.into_iter()
                .map(|(id, seq)| ekmatpb::Decision {
                    member: u64::from(id.0),
                    seq,
                })
                .collect()
        };
        Ok(ekmatpb::ExclusionsResponse {
            answered_by: u64::from(self.inner.node_id),
            excluded: decisions(e.excluded),
            readmitted: decisions(e.readmitted),
        })
    }

    async fn send(&self, call: Call) -> Result<(), Status> {
        self.inner.calls.send(call).await.map_err(|_| stopped())
    }
}

fn stopped() -> Status {
    Status::unavailable("etcdserver: server stopped")
}
