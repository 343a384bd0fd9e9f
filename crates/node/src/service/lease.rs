//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive (a stream),
//! LeaseTimeToLive and LeaseLeases.
//!
//! Grants, revocations and keep-alives are ordered through the log, so every member
//! holds the same leases with the same deadlines; expiry happens when the leader's
//! ticks move the log's clock past a deadline (see `driver.rs`). A keep-alive for a
//! lease the log renewed within the last half second is answered from a linearizable
//! read instead (see `keep_alive_once`). TimeToLive and Leases are linearizable reads.

use std::time::Duration;

use ekmat_api::etcdserverpb as pb;
use ekmat_kv::{
    Command, KvError, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, MAX_LEASE_TTL,
    Response,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as Reply, Status, Streaming};

use super::{RequestStream, Services, call_error, unexpected_answer};
use crate::driver::CallError;
use crate::query::{Answer, Query};

/// The shortest TTL etcd grants with its default settings (1.5 election timeouts of 1 s,
/// rounded up to whole seconds).
const ETCD_MIN_LEASE_TTL: i64 = 2;

/// Keep-alive answers queued for a client before the stream stops reading its requests.
const KEEP_ALIVE_QUEUE: usize = 16;

/// The shortest TTL a lease is granted, in seconds: three election timeouts rounded up
/// to whole seconds, and never below etcd's default of 2 s. A lease must outlive a leader
/// change, or a holder that keeps it alive could lose it to an election.
pub fn min_lease_ttl(election_timeout: Duration) -> i64 {
    let three = election_timeout.saturating_mul(3).as_millis();
    let secs = i64::try_from(three.div_ceil(1000)).unwrap_or(i64::MAX);
    secs.max(ETCD_MIN_LEASE_TTL)
}

/// How recently a lease must have been renewed through the log for a keep-alive to be
/// answered without another renewal.
const FRESH_MS: u64 = 500;

impl Services {
    /// Restart lease `id`'s TTL. An unknown lease answers TTL 0, as in etcd, which is how
    /// its clients learn that the lease is gone.
    ///
    /// A lease renewed through the log less than [`FRESH_MS`] ago is answered from a
    /// linearizable read instead of another log write: clients that keep a lease alive
    /// in a tight loop (or many keep-alives at once) cost a read each, not an fsync. The
    /// answer then promises at most `FRESH_MS` more than the log holds, less than the
    /// time the answer takes to travel and be acted on.
    async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        if let Ok(Answer::LeaseRemaining {
            header,
            left_ms,
            granted_ttl,
        }) = self.read(Query::LeaseRemaining { id }, true).await
            && left_ms + FRESH_MS >= granted_ttl.unsigned_abs() * 1000
        {
            return Ok(pb::LeaseKeepAliveResponse {
                header: Some(self.header(header.revision)),
                id,
                ttl: granted_ttl,
            });
        }
        let command = Command::LeaseKeepAlive(LeaseKeepAliveRequest { id });
        let (revision, ttl) = match self.write_internal(command).await {
            Ok(Response::LeaseKeepAlive(r)) => (r.header.revision, r.ttl),
            Ok(_) => return Err(unexpected_answer()),
            Err(CallError::Kv(KvError::LeaseNotFound)) => (self.revision(), 0),
            Err(e) => return Err(call_error(&e)),
        };
        Ok(pb::LeaseKeepAliveResponse {
            header: Some(self.header(revision)),
            id,
            ttl,
        })
    }
}

impl Services {
    /// Serve one keep-alive stream (gRPC's, or the JSON gateway's).
    pub(crate) fn keep_alive_session(
        &self,
        requests: impl RequestStream<pb::LeaseKeepAliveRequest>,
    ) -> ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>> {
        let (tx, rx) = mpsc::channel(KEEP_ALIVE_QUEUE);
        tokio::spawn(keep_alive_loop(self.clone(), requests, tx));
        ReceiverStream::new(rx)
    }
}

/// Answer each keep-alive request on `requests` in turn, until the client closes its side
/// or goes away, or an error that is not "lease not found" ends the stream (as in etcd).
async fn keep_alive_loop(
    services: Services,
    mut requests: impl RequestStream<pb::LeaseKeepAliveRequest>,
    answers: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
) {
    while let Some(Ok(req)) = requests.next().await {
        let answer = services.keep_alive_once(req.id).await;
        let failed = answer.is_err();
        if answers.send(answer).await.is_err() || failed {
            return;
        }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for Services {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Reply<pb::LeaseGrantResponse>, Status> {
        // Any caller may grant a lease (etcd asks no permission); a bad token is refused.
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        // Checked before proposing, as etcd does: nothing too large enters the log.
        if r.ttl > MAX_LEASE_TTL {
            return Err(call_error(&CallError::Kv(KvError::LeaseTtlTooLarge)));
        }
        self.check_quota(super::quota::LEASE_COST).await?;
        let ttl = r.ttl.max(self.inner.min_lease_ttl);
        let command = Command::LeaseGrant(LeaseGrantRequest { ttl, id: r.id }).from_caller(caller);
        match self.write(command).await.map_err(|e| call_error(&e))? {
            Response::LeaseGrant(g) => Ok(Reply::new(pb::LeaseGrantResponse {
                header: Some(self.header(g.header.revision)),
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })),
            _ => Err(unexpected_answer()),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Reply<pb::LeaseRevokeResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = request.into_inner().id;
        let command = Command::LeaseRevoke(LeaseRevokeRequest { id }).from_caller(caller);
        match self.write(command).await.map_err(|e| call_error(&e))? {
            Response::LeaseRevoke(r) => Ok(Reply::new(pb::LeaseRevokeResponse {
                header: Some(self.header(r.header.revision)),
            })),
            _ => Err(unexpected_answer()),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Reply<Self::LeaseKeepAliveStream>, Status> {
        Ok(Reply::new(self.keep_alive_session(request.into_inner())))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Reply<pb::LeaseTimeToLiveResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let query = Query::LeaseTimeToLive {
            id: r.id,
            keys: r.keys,
        };
        let query = Query::As(caller, Box::new(query));
        let answer = match self.read(query, true).await {
            Ok(Answer::LeaseTimeToLive(t)) => pb::LeaseTimeToLiveResponse {
                header: Some(self.header(t.header.revision)),
                id: t.id,
                ttl: t.ttl,
                granted_ttl: t.granted_ttl,
                keys: t.keys,
            },
            Ok(_) => return Err(unexpected_answer()),
            // etcd answers an unknown lease with TTL -1, not an error.
            Err(CallError::Kv(KvError::LeaseNotFound)) => pb::LeaseTimeToLiveResponse {
                header: Some(self.header(self.revision())),
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
            Err(e) => return Err(call_error(&e)),
        };
        Ok(Reply::new(answer))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Reply<pb::LeaseLeasesResponse>, Status> {
        match self.read(Query::Leases, true).await {
            Ok(Answer::Leases { header, ids }) => Ok(Reply::new(pb::LeaseLeasesResponse {
                header: Some(self.header(header.revision)),
                leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
            })),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(call_error(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_is_three_election_timeouts_in_whole_seconds_and_at_least_etcds() {
        assert_eq!(min_lease_ttl(Duration::from_millis(300)), 2);
        assert_eq!(min_lease_ttl(Duration::from_millis(700)), 3);
        assert_eq!(min_lease_ttl(Duration::from_secs(1)), 3);
        assert_eq!(min_lease_ttl(Duration::from_millis(1001)), 4);
    }
}
