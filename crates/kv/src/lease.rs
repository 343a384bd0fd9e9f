//! Leases: etcd's lease messages and the table of live leases with their deadlines on
//! the state machine's log-driven clock.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::rpc::ResponseHeader;

/// The longest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Grant a lease (etcd's `LeaseGrantRequest`). etcd also raises a TTL below its minimum
/// (derived from the election timeout); that is the node's to do before proposing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// Seconds until the lease expires unless kept alive.
    pub ttl: i64,
    /// The id wanted; 0 lets the state machine choose the lowest free id above the last
    /// one it chose.
    pub id: i64,
}

/// etcd's `LeaseGrantResponse` without its `error` string: failures are a [`KvError`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    pub id: i64,
    pub ttl: i64,
}

/// Revoke a lease, deleting every key attached to it in one revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeRequest {
    pub id: i64,
}

/// The answer to a [`LeaseRevokeRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

/// Restart a lease's TTL from the proposer's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveRequest {
    pub id: i64,
}

/// The answer to a [`LeaseKeepAliveRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// The lease's granted TTL, now restarted.
    pub ttl: i64,
}

/// A lease's remaining time (etcd's `LeaseTimeToLiveResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimeToLiveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// Whole seconds left on the state machine's clock.
    pub ttl: i64,
    pub granted_ttl: i64,
    /// The attached keys in key order, if asked for.
    pub keys: Vec<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    pub ttl: i64,
    pub deadline_ms: u64,
    /// Derived from the keys' `lease` fields; key order is the revocation order.
    pub keys: BTreeSet<Bytes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Leases {
    pub by_id: BTreeMap<i64, Lease>,
    /// (deadline, id) of every lease, soonest first.
    expiry: BTreeSet<(u64, i64)>,
    /// The last id the table chose itself.
    pub last_assigned: i64,
}

fn deadline(clock_ms: u64, ttl: i64) -> u64 {
    let ttl_ms = u64::try_from(ttl).unwrap_or(0).saturating_mul(1000);
    clock_ms.saturating_add(ttl_ms)
}

impl Leases {
    /// Rebuild from restored `(id, ttl, deadline)` triples; keys are attached afterwards.
    pub fn from_parts(leases: &[(i64, i64, u64)], last_assigned: i64) -> Leases {
        let mut table = Leases {
            last_assigned,
            ..Leases::default()
        };
        for &(id, ttl, deadline_ms) in leases {
            table.insert(id, ttl, deadline_ms);
        }
        table
    }

    fn insert(&mut self, id: i64, ttl: i64, deadline_ms: u64) {
        self.by_id.insert(
            id,
            Lease {
                ttl,
                deadline_ms,
                keys: BTreeSet::new(),
            },
        );
        self.expiry.insert((deadline_ms, id));
    }

    pub fn contains(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Grant a lease expiring `ttl` seconds after `clock_ms`. Returns its id.
    pub fn grant(&mut self, id: i64, ttl: i64, clock_ms: u64) -> Result<i64, KvError> {
        if ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        let id = match id {
            0 => self.free_id(),
            id if self.contains(id) => return Err(KvError::LeaseExists),
            id => id,
        };
        self.insert(id, ttl, deadline(clock_ms, ttl));
        Ok(id)
    }

    fn free_id(&mut self) -> i64 {
        let mut id = self.last_assigned;
        loop {
            id = id.checked_add(1).unwrap_or(1);
            if !self.contains(id) {
                self.last_assigned = id;
                return id;
            }
        }
    }

    /// Restart the lease's TTL from `clock_ms`. Returns the TTL.
    pub fn keep_alive(&mut self, id: i64, clock_ms: u64) -> Result<i64, KvError> {
        let lease = self.by_id.get_mut(&id).ok_or(KvError::LeaseNotFound)?;
        self.expiry.remove(&(lease.deadline_ms, id));
        lease.deadline_ms = deadline(clock_ms, lease.ttl);
        self.expiry.insert((lease.deadline_ms, id));
        Ok(lease.ttl)
    }

    /// Restart every lease's TTL from `clock_ms`.
    pub fn renew_all(&mut self, clock_ms: u64) {
        self.expiry.clear();
        for (&id, lease) in &mut self.by_id {
            lease.deadline_ms = deadline(clock_ms, lease.ttl);
            self.expiry.insert((lease.deadline_ms, id));
        }
    }

    /// The soonest deadline of any lease.
    pub fn next_deadline(&self) -> Option<u64> {
        self.expiry.first().map(|&(deadline, _)| deadline)
    }

    /// Forget the lease, handing back its attached keys.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.by_id.remove(&id)?;
        self.expiry.remove(&(lease.deadline_ms, id));
        Some(lease)
    }

    pub fn attach(&mut self, id: i64, key: &Bytes) {
        if let Some(lease) = self.by_id.get_mut(&id) {
            lease.keys.insert(key.clone());
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.by_id.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// The leases whose deadline is at or before `clock_ms`, in id order.
    pub fn expired(&self, clock_ms: u64) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .expiry
            .iter()
            .take_while(|(deadline, _)| *deadline <= clock_ms)
            .map(|&(_, id)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether any lease expires at or before `clock_ms` (cheap: checked on every apply).
    pub fn any_expired(&self, clock_ms: u64) -> bool {
        self.expiry
            .first()
            .is_some_and(|(deadline, _)| *deadline <= clock_ms)
    }

    /// Milliseconds left on lease `id` at `clock_ms`, and its granted TTL in seconds.
    pub fn remaining_ms(&self, id: i64, clock_ms: u64) -> Result<(u64, i64), KvError> {
        let lease = self.by_id.get(&id).ok_or(KvError::LeaseNotFound)?;
        Ok((lease.deadline_ms.saturating_sub(clock_ms), lease.ttl))
    }

    pub fn time_to_live(
        &self,
        id: i64,
        keys: bool,
        clock_ms: u64,
    ) -> Result<LeaseTimeToLiveResponse, KvError> {
        let lease = self.by_id.get(&id).ok_or(KvError::LeaseNotFound)?;
        let left_ms = lease.deadline_ms.saturating_sub(clock_ms);
        Ok(LeaseTimeToLiveResponse {
            header: ResponseHeader::default(),
            id,
            // etcd truncates the remaining time to whole seconds.
            ttl: i64::try_from(left_ms / 1000).unwrap_or(i64::MAX),
            granted_ttl: lease.ttl,
            keys: if keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }
}
