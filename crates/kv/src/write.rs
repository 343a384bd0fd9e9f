//! The writes: put, delete range and lease revocation, keeping the key index, the lease
//! attachments and the event list in step. A caller ends each write with
//! [`Mvcc::finish`](crate::mvcc::Mvcc::finish), which takes the revision.

use bytes::Bytes;

use crate::error::KvError;
use crate::lease::Leases;
use crate::mvcc::Mvcc;
use crate::range::KeyRange;
use crate::rpc::{
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest, PutResponse, ResponseHeader,
};
use crate::watch::{Event, EventKind};

/// The parts of the store a write changes.
pub(crate) struct Writer<'a> {
    pub mvcc: &'a mut Mvcc,
    pub leases: &'a mut Leases,
    pub events: &'a mut Vec<Event>,
}

/// The checks of a put that need no state (etcd makes them in its gRPC layer).
pub(crate) fn check_put_shape(req: &PutRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

/// The checks of a put against the state it will run in.
pub(crate) fn check_put_state(
    mvcc: &Mvcc,
    leases: &Leases,
    req: &PutRequest,
) -> Result<(), KvError> {
    if req.lease != 0 && !leases.contains(req.lease) {
        return Err(KvError::LeaseNotFound);
    }
    if (req.ignore_value || req.ignore_lease) && mvcc.latest(&req.key).is_none() {
        return Err(KvError::KeyNotFound);
    }
    Ok(())
}

pub(crate) fn check_delete_shape(req: &DeleteRangeRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

impl Writer<'_> {
    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.mvcc.read_revision(),
        }
    }

    /// A checked put.
    pub fn put(&mut self, req: PutRequest) -> PutResponse {
        let value = (!req.ignore_value).then_some(req.value);
        let lease = (!req.ignore_lease).then_some(req.lease);
        let (kv, prev) = self.mvcc.put(req.key, value, lease);
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != kv.lease {
            self.leases.detach(old_lease, &kv.key);
            self.leases.attach(kv.lease, &kv.key);
        }
        let prev_kv = if req.prev_kv { prev.clone() } else { None };
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev,
        });
        PutResponse {
            header: self.header(),
            prev_kv,
        }
    }

    /// A checked delete of every key in the range.
    pub fn delete_range(&mut self, req: DeleteRangeRequest) -> DeleteRangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        let doomed: Vec<Bytes> = self
            .mvcc
            .visible(&range, self.mvcc.read_revision())
            .map(|kv| kv.key.clone())
            .collect();
        let mut prev_kvs = Vec::new();
        for key in &doomed {
            if let Some(prev) = self.delete(key)
                && req.prev_kv
            {
                prev_kvs.push(prev);
            }
        }
        DeleteRangeResponse {
            header: self.header(),
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn delete(&mut self, key: &[u8]) -> Option<KeyValue> {
        let (tombstone, prev) = self.mvcc.delete(key)?;
        self.leases.detach(prev.lease, key);
        self.events.push(Event {
            kind: EventKind::Delete,
            kv: tombstone,
            prev_kv: Some(prev.clone()),
        });
        Some(prev)
    }

    /// Revoke a lease, deleting its keys in key order (the same order on every replica).
    pub fn revoke(&mut self, id: i64) -> Result<(), KvError> {
        let lease = self.leases.remove(id).ok_or(KvError::LeaseNotFound)?;
        for key in &lease.keys {
            self.delete(key);
        }
        Ok(())
    }
}
