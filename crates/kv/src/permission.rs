//! Which commands a caller may run while auth is on, checked when the command applies
//! (so against the users and roles as they stand at its place in the log, as etcd's auth
//! applier checks them).

use crate::auth::{AuthRequest, AuthState, Caller, PermissionType};
use crate::command::Command;
use crate::error::KvError;
use crate::lease::Leases;
use crate::rpc::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};

use PermissionType::{Read, Write};

/// Whether `caller` may run `command` now.
pub(crate) fn authorize(
    auth: &AuthState,
    leases: &Leases,
    caller: &Caller,
    command: &Command,
) -> Result<(), KvError> {
    if !auth.enabled() {
        return Ok(());
    }
    let check = Check {
        auth,
        leases,
        caller,
    };
    match command {
        Command::Range(r) => auth.check_keys(caller, &r.key, &r.range_end, Read),
        Command::Put(p) => check.put(p),
        Command::DeleteRange(d) => check.delete(d),
        Command::Txn(t) => check.txn(t),
        Command::LeaseRevoke(r) => check.lease_keys(r.id),
        Command::Auth(request) => check.auth_request(request),
        // etcd asks no permission for these: a lease holds nothing until keys are
        // put with it, alarms guard the cluster itself, and compaction (etcd 3.4 lets
        // anyone compact) drops only history.
        Command::Compact(_)
        | Command::LeaseGrant(_)
        | Command::LeaseKeepAlive(_)
        | Command::Alarm(_)
        | Command::Tick
        | Command::LeaseRenewAll => Ok(()),
        // One caller per command.
        Command::As(..) => Err(KvError::PermissionDenied),
    }
}

struct Check<'a> {
    auth: &'a AuthState,
    leases: &'a Leases,
    caller: &'a Caller,
}

impl Check<'_> {
    fn keys(&self, key: &[u8], range_end: &[u8], wanted: PermissionType) -> Result<(), KvError> {
        self.auth.check_keys(self.caller, key, range_end, wanted)
    }

    fn put(&self, p: &PutRequest) -> Result<(), KvError> {
        self.keys(&p.key, b"", Write)?;
        // Attaching a lease whose keys the caller could not write would let it delete
        // them by revoking the lease.
        self.lease_keys(p.lease)?;
        if p.prev_kv {
            self.keys(&p.key, b"", Read)?;
        }
        Ok(())
    }

    fn delete(&self, d: &DeleteRangeRequest) -> Result<(), KvError> {
        self.keys(&d.key, &d.range_end, Write)?;
        if d.prev_kv {
            self.keys(&d.key, &d.range_end, Read)?;
        }
        Ok(())
    }

    fn txn(&self, t: &TxnRequest) -> Result<(), KvError> {
        for c in &t.compare {
            self.keys(&c.key, &c.range_end, Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                RequestOp::Range(r) => self.keys(&r.key, &r.range_end, Read)?,
                RequestOp::Put(p) => self.put(p)?,
                RequestOp::DeleteRange(d) => self.delete(d)?,
                RequestOp::Txn(t) => self.txn(t)?,
            }
        }
        Ok(())
    }

    /// Every key attached to lease `id` must be writable (revoking deletes them).
    fn lease_keys(&self, id: i64) -> Result<(), KvError> {
        let Some(lease) = self.leases.by_id.get(&id) else {
            return Ok(());
        };
        lease
            .keys
            .iter()
            .try_for_each(|key| self.keys(key, b"", Write))
    }

    fn admin(&self) -> Result<(), KvError> {
        self.auth.may_administer(self.caller)
    }

    fn auth_request(&self, request: &AuthRequest) -> Result<(), KvError> {
        if *request == AuthRequest::Status {
            return Ok(()); // whether auth is on is no secret
        }
        if request.needs_admin() {
            return self.admin();
        }
        let user = self.auth.user(self.caller)?;
        let own = match (request, self.caller) {
            (AuthRequest::UserGet { name }, Caller::User { name: me, .. }) => name == me,
            (AuthRequest::RoleGet { name }, _) => user.roles.contains(name),
            _ => true,
        };
        if own || AuthState::is_admin(user) {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }
}
