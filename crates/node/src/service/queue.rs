//! The waiting line etcd's Lock and Election services share (etcd's `concurrency`
//! recipes, run inside the server as etcd runs them): each waiter puts a key
//! `name/<lease in hex>` attached to its lease, and its turn comes when no key under
//! `name/` was created before its own. A waiter waits for the deletion of the key just
//! ahead of it (never for the whole line, so a release wakes one waiter, not all),
//! hearing of deletions from the watch hub rather than by polling.
//!
//! Unlike etcd 3.4, a waiter whose own key goes away while it waits (its lease expired
//! or was revoked) is told so at once, instead of waiting for the key ahead and then
//! being told it holds what it no longer does.

use bytes::Bytes;
use ekmat_kv::{
    Caller, Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventKind,
    KeyValue, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, Response,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse, prefix_end,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use super::{Services, call_error, unexpected_answer};
use crate::driver::CallError;
use crate::watch_hub::Published;

/// The TTL of the lease etcd's server grants a Lock or Campaign that names none (its
/// `concurrency` package's default session TTL).
const DEFAULT_SESSION_TTL: i64 = 60;

/// A waiter's key in the line for `name`: etcd formats the lease id with `%x`.
pub fn waiter_key(name: &[u8], lease: i64) -> Bytes {
    let mut key = name.to_vec();
    let hex = if lease < 0 {
        format!("/-{:x}", lease.unsigned_abs())
    } else {
        format!("/{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    Bytes::from(key)
}

/// The prefix every waiter's key for `name` starts with.
pub fn line_prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
}

/// A place in a line: the key and the revision that created it.
#[derive(Clone, Debug)]
pub struct Place {
    pub key: Bytes,
    pub rev: i64,
    pub lease: i64,
}

/// Why a waiter stopped waiting without its turn.
pub enum WaitError {
    /// Its own key went away (its lease expired or was revoked, or someone deleted it).
    KeyLost,
    /// The cluster could not answer.
    Status(Status),
}

impl From<Status> for WaitError {
    fn from(s: Status) -> WaitError {
        WaitError::Status(s)
    }
}

impl Services {
    /// Order `command` through the log.
    async fn order(&self, command: Command) -> Result<Response, Status> {
        self.write(command).await.map_err(|e| inner_error(&e))
    }

    /// `caller`'s txn.
    pub(super) async fn txn(
        &self,
        caller: &Caller,
        txn: TxnRequest,
    ) -> Result<TxnResponse, Status> {
        match self
            .order(Command::Txn(txn).from_caller(caller.clone()))
            .await?
        {
            Response::Txn(r) => Ok(r),
            _ => Err(unexpected_answer()),
        }
    }

    /// A linearizable read, as etcd's recipes make.
    pub(super) async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        match self.read(crate::query::Query::Range(req), true).await {
            Ok(crate::query::Answer::Range(r)) => Ok(r),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(inner_error(&e)),
        }
    }

    /// The revision after deleting `key` unconditionally, as `caller` (etcd's Unlock).
    pub(super) async fn delete_key(&self, caller: &Caller, key: Bytes) -> Result<i64, Status> {
        let delete = Command::DeleteRange(DeleteRangeRequest::new(key));
        match self.order(delete.from_caller(caller.clone())).await? {
            Response::DeleteRange(r) => Ok(r.header.revision),
            _ => Err(unexpected_answer()),
        }
    }

    /// Delete `key` if it is still the version created at `rev` (etcd's Resign, as
    /// `caller`; none: the member's own cleanup of an abandoned waiter's key); the
    /// revision after.
    pub(super) async fn delete_if_created(
        &self,
        key: Bytes,
        rev: i64,
        caller: Option<&Caller>,
    ) -> Result<i64, Status> {
        let txn = TxnRequest {
            compare: vec![created_at(&key, rev)],
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest::new(key))],
            failure: vec![],
        };
        let command = match caller {
            Some(caller) => Command::Txn(txn).from_caller(caller.clone()),
            None => Command::Txn(txn),
        };
        // Also the cleanup of an abandoned waiter's key, which must not be shed.
        match self.write_internal(command).await {
            Ok(Response::Txn(r)) => Ok(r.header.revision),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(inner_error(&e)),
        }
    }

    /// The lease a waiter's key is attached to: the one asked for, or, for none, a new
    /// one of etcd's default session TTL, as etcd's server grants.
    pub(super) async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let ttl = DEFAULT_SESSION_TTL.max(self.inner.min_lease_ttl);
        match self
            .order(Command::LeaseGrant(LeaseGrantRequest { ttl, id: 0 }))
            .await?
        {
            Response::LeaseGrant(g) => Ok(g.id),
            _ => Err(unexpected_answer()),
        }
    }

    /// Join the line for `name` with `value` (or find the place this lease already
    /// holds): "if the key was never created, put it; else read it", plus, in the same
    /// txn, the line's first key. Returns the place, the txn's answer and the first key.
    pub(super) async fn join(
        &self,
        caller: &Caller,
        name: &[u8],
        lease: i64,
        value: Bytes,
    ) -> Result<(Place, TxnResponse, Option<KeyValue>), Status> {
        let key = waiter_key(name, lease);
        let prefix = line_prefix(name);
        let first = RequestOp::Range(RangeRequest {
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            limit: 1,
            ..RangeRequest::range(prefix.clone(), prefix_end(&prefix))
        });
        let put = PutRequest {
            lease,
            ..PutRequest::new(key.clone(), value)
        };
        let txn = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![RequestOp::Put(put), first.clone()],
            failure: vec![RequestOp::Range(RangeRequest::new(key.clone())), first],
        };
        let resp = self.txn(caller, txn).await?;
        let rev = if resp.succeeded {
            resp.header.revision
        } else {
            match resp.responses.first() {
                Some(ResponseOp::Range(r)) => r.kvs.first().map_or(0, |kv| kv.create_revision),
                _ => return Err(unexpected_answer()),
            }
        };
        let first = match resp.responses.get(1) {
            Some(ResponseOp::Range(r)) => r.kvs.first().cloned(),
            _ => return Err(unexpected_answer()),
        };
        // The key vanished between the compare and the read: impossible in one txn.
        if rev == 0 {
            return Err(unexpected_answer());
        }
        Ok((Place { key, rev, lease }, resp, first))
    }

    /// Wait until no key under `prefix` was created before `place` (etcd's
    /// `waitDeletes`), and return the revision of the read that found none.
    pub(super) async fn wait_turn(&self, prefix: &Bytes, place: &Place) -> Result<i64, WaitError> {
        loop {
            // Subscribed before reading, so no deletion after the reads is missed.
            let mut hub = self.inner.hub.subscribe();
            let mine = self.range(RangeRequest::new(place.key.clone())).await?;
            if mine.kvs.first().map(|kv| kv.create_revision) != Some(place.rev) {
                return Err(WaitError::KeyLost);
            }
            let ahead = self
                .range(RangeRequest {
                    sort_order: SortOrder::Descend,
                    sort_target: SortTarget::Create,
                    limit: 1,
                    max_create_revision: place.rev - 1,
                    ..RangeRequest::range(prefix.clone(), prefix_end(prefix))
                })
                .await?;
            let Some(ahead) = ahead.kvs.first() else {
                return Ok(ahead.header.revision);
            };
            // Any deletion of the key ahead or of our own sends us round again to
            // re-read; so does having missed events (the reads then catch up).
            loop {
                match hub.recv().await {
                    Ok(Published::Events(events)) => {
                        if events.iter().any(|e| {
                            e.kind == EventKind::Delete
                                && (e.kv.key == ahead.key || e.kv.key == place.key)
                        }) {
                            break;
                        }
                    }
                    Ok(Published::Reset) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => {
                        return Err(Status::unknown("etcdserver: server stopped").into());
                    }
                }
            }
        }
    }
}

/// An error of a KV or lease call made on a Lock or Election call's behalf. etcd's
/// server makes those calls through its in-process client, which hands the services
/// its errors without their gRPC codes: a client sees `Unknown` with etcd's message
/// (for example "etcdserver: requested lease not found"), and matches on the message.
fn inner_error(e: &CallError) -> Status {
    Status::unknown(call_error(e).message())
}

/// "`key` was created at `rev`" (0: the key does not exist).
fn created_at(key: &Bytes, rev: i64) -> Compare {
    Compare::new(
        key.clone(),
        CompareResult::Equal,
        CompareTarget::CreateRevision(rev),
    )
}

/// Deletes a waiter's key if the call waiting for its turn is dropped (the client
/// cancelled or went away), as etcd's server does when the call's context ends.
pub struct Abandon {
    services: Services,
    place: Option<Place>,
}

impl Abandon {
    pub fn new(services: &Services, place: &Place) -> Abandon {
        Abandon {
            services: services.clone(),
            place: Some(place.clone()),
        }
    }

    /// The waiter keeps its key.
    pub fn keep(mut self) {
        self.place = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(place) = self.place.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let services = self.services.clone();
        runtime.spawn(async move {
            if let Err(e) = services.delete_if_created(place.key, place.rev, None).await {
                tracing::debug!(error = %e, "could not delete an abandoned waiter's key");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiter_keys_are_the_name_a_slash_and_the_lease_in_hex() {
        assert_eq!(
            waiter_key(b"job", 0x694d_8a1c_2b3e_4f10),
            "job/694d8a1c2b3e4f10"
        );
        assert_eq!(waiter_key(b"job", 26), "job/1a");
        assert_eq!(waiter_key(b"", 1), "/1");
        assert_eq!(line_prefix(b"job"), "job/");
    }
}
