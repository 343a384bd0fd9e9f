//! etcd's Election service (`v3electionpb.Election`). Campaigners wait in the line for
//! an election's name (see `queue.rs`); the first in line leads, and its key's value is
//! the election's proclamation. This is etcd's `concurrency.Election`, run inside the
//! server on the node's own KV, lease and watch paths, as etcd's server runs it; the
//! error messages are etcd's, which clients match on.

use bytes::Bytes;
use ekmat_api::v3electionpb as pb;
use ekmat_kv::{
    Caller, EventKind, KeyValue, PermissionType, PutRequest, RangeRequest, RequestOp, ResponseOp,
    SortOrder, SortTarget, TxnRequest, prefix_end,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as Reply, Status};

use super::queue::{Abandon, Place, WaitError, line_prefix};
use super::{Services, convert};
use crate::watch_hub::Published;

/// etcd's `ErrElectionNotLeader`.
pub const NOT_LEADER: &str = "election: not leader";
/// etcd's `ErrElectionNoLeader`.
pub const NO_LEADER: &str = "election: no leader";
/// etcd's `ErrMissingLeaderKey`.
pub const MISSING_LEADER: &str = "\"leader\" field must be provided";
/// A campaigner whose key went away while it waited (its lease expired or was revoked).
/// etcd 3.4 has no answer for this (its campaigner waits on); this one follows the
/// wording of etcd's `mutex: session is expired`.
pub const SESSION_EXPIRED: &str = "election: session expired";

/// Leader responses queued for an observer before the stream waits for it to read.
const OBSERVE_QUEUE: usize = 16;

type Observed = mpsc::Sender<Result<pb::LeaderResponse, Status>>;

impl Services {
    /// Put `value` at the leader's key if the key is still the one created at `rev`
    /// (etcd's `Proclaim`); the revision after.
    async fn proclaim_at(
        &self,
        caller: &Caller,
        place: &Place,
        value: Bytes,
    ) -> Result<i64, Status> {
        let put = PutRequest {
            lease: place.lease,
            ..PutRequest::new(place.key.clone(), value)
        };
        let txn = TxnRequest {
            compare: vec![still_created(place)],
            success: vec![RequestOp::Put(put)],
            failure: vec![],
        };
        let resp = self.txn(caller, txn).await?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(resp.header.revision)
    }

    /// The key under `prefix` created first, and the revision read at.
    async fn first_created(&self, prefix: &Bytes) -> Result<(Option<KeyValue>, i64), Status> {
        let resp = self
            .range(RangeRequest {
                sort_order: SortOrder::Ascend,
                sort_target: SortTarget::Create,
                limit: 1,
                ..RangeRequest::range(prefix.clone(), prefix_end(prefix))
            })
            .await?;
        Ok((resp.kvs.into_iter().next(), resp.header.revision))
    }
}

fn still_created(place: &Place) -> ekmat_kv::Compare {
    ekmat_kv::Compare::new(
        place.key.clone(),
        ekmat_kv::CompareResult::Equal,
        ekmat_kv::CompareTarget::CreateRevision(place.rev),
    )
}

fn place_of(leader: Option<pb::LeaderKey>) -> Result<(Vec<u8>, Place), Status> {
    let leader = leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
    Ok((
        leader.name,
        Place {
            key: Bytes::from(leader.key),
            rev: leader.rev,
            lease: leader.lease,
        },
    ))
}

/// What joining a line takes: reading it, and writing one's own key in it.
pub(super) const READ_WRITE: &[PermissionType] = &[PermissionType::Read, PermissionType::Write];

#[tonic::async_trait]
impl pb::election_server::Election for Services {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Reply<pb::CampaignResponse>, Status> {
        let caller = self
            .check_line(&request, &request.get_ref().name, true, READ_WRITE)
            .await?;
        let req = request.into_inner();
        let lease = self.session_lease(req.lease).await?;
        let value = Bytes::from(req.value);
        let (place, joined, _) = self.join(&caller, &req.name, lease, value.clone()).await?;
        // Until it leads, a campaign whose client goes away resigns, as in etcd.
        let abandon = Abandon::new(self, &place);
        if !joined.succeeded {
            // This lease already campaigns: etcd proclaims the new value (and resigns,
            // by dropping `abandon`, if it cannot).
            let current = match joined.responses.first() {
                Some(ResponseOp::Range(r)) => r.kvs.first().map(|kv| kv.value.clone()),
                _ => None,
            };
            if current.as_ref() != Some(&value) {
                self.proclaim_at(&caller, &place, value).await?;
            }
        }
        let waited = self.wait_turn(&line_prefix(&req.name), &place).await;
        // Other failures keep the key, as etcd's campaign does: only a cancelled call
        // resigns.
        abandon.keep();
        match waited {
            Ok(_) => {}
            Err(WaitError::KeyLost) => return Err(Status::unknown(SESSION_EXPIRED)),
            Err(WaitError::Status(s)) => return Err(s),
        }
        Ok(Reply::new(pb::CampaignResponse {
            // etcd answers with the header of the txn that joined the line.
            header: Some(self.header(joined.header.revision)),
            leader: Some(pb::LeaderKey {
                name: req.name,
                key: place.key.to_vec(),
                rev: place.rev,
                lease: place.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Reply<pb::ProclaimResponse>, Status> {
        let (_, place) = place_of(request.get_ref().leader.clone())?;
        // The txn compares the key and puts it: both read and write, as in etcd.
        let caller = self
            .check_line(&request, &place.key, false, READ_WRITE)
            .await?;
        let req = request.into_inner();
        let revision = self
            .proclaim_at(&caller, &place, Bytes::from(req.value))
            .await?;
        Ok(Reply::new(pb::ProclaimResponse {
            header: Some(self.header(revision)),
        }))
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Reply<pb::LeaderResponse>, Status> {
        self.check_line(
            &request,
            &request.get_ref().name,
            true,
            &[PermissionType::Read],
        )
        .await?;
        let name = request.into_inner().name;
        let (first, revision) = self.first_created(&line_prefix(&name)).await?;
        let kv = first.ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Reply::new(pb::LeaderResponse {
            header: Some(self.header(revision)),
            kv: Some(convert::key_value(kv)),
        }))
    }

    type ObserveStream = ReceiverStream<Result<pb::LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Reply<Self::ObserveStream>, Status> {
        self.check_line(
            &request,
            &request.get_ref().name,
            true,
            &[PermissionType::Read],
        )
        .await?;
        let prefix = line_prefix(&request.into_inner().name);
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE);
        let services = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = services.observe_loop(prefix, &tx) => {}
                () = tx.closed() => {}
            }
        });
        Ok(Reply::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Reply<pb::ResignResponse>, Status> {
        let (_, place) = place_of(request.get_ref().leader.clone())?;
        let caller = self
            .check_line(&request, &place.key, false, READ_WRITE)
            .await?;
        // Not (or no longer) the leader's key: nothing to do, and no error, as in etcd.
        let revision = self
            .delete_if_created(place.key, place.rev, Some(&caller))
            .await?;
        Ok(Reply::new(pb::ResignResponse {
            header: Some(self.header(revision)),
        }))
    }
}

impl Services {
    /// Send the election's leader, then every new value it proclaims; when it goes,
    /// the next (etcd's `Election.Observe`). Returns when the observer is gone or the
    /// node stops.
    async fn observe_loop(&self, prefix: Bytes, out: &Observed) {
        let send = |kv: KeyValue, revision: i64| {
            out.send(Ok(pb::LeaderResponse {
                header: Some(self.header(revision)),
                kv: Some(convert::key_value(kv)),
            }))
        };
        'leaders: loop {
            // Subscribed before reading: every change after the read arrives.
            let mut hub = self.inner.hub.subscribe();
            let (first, read_at) = match self.first_created(&prefix).await {
                Ok(found) => found,
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            };
            let (leader, seen) = match first {
                Some(kv) => (kv, read_at),
                // No leader yet: the first key put under the prefix will be.
                None => loop {
                    match hub.recv().await {
                        Ok(Published::Events(events)) => {
                            let put = events.iter().find(|e| {
                                e.kind == EventKind::Put
                                    && e.revision() > read_at
                                    && e.kv.key.starts_with(&prefix)
                            });
                            if let Some(e) = put {
                                break (e.kv.clone(), e.revision());
                            }
                        }
                        Ok(Published::Reset) | Err(RecvError::Lagged(_)) => continue 'leaders,
                        Err(RecvError::Closed) => return,
                    }
                },
            };
            let key = leader.key.clone();
            if send(leader, seen).await.is_err() {
                return;
            }
            // Follow the leader's key until it is deleted.
            loop {
                match hub.recv().await {
                    Ok(Published::Events(events)) => {
                        for e in events.iter() {
                            if e.kv.key != key || e.revision() <= seen {
                                continue;
                            }
                            if e.kind == EventKind::Delete {
                                continue 'leaders;
                            }
                            if send(e.kv.clone(), e.revision()).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Missed events: start over from what the store holds now.
                    Ok(Published::Reset) | Err(RecvError::Lagged(_)) => continue 'leaders,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }
}
