//! Transactions: etcd's request checks (op budget, duplicate keys), compares, and
//! execution as one write.
//!
//! As in etcd, every compare of the txn and of the nested txns on the chosen branches is
//! evaluated against the state before the txn (the "path"), the chosen ops are checked,
//! and only then do they run, so a txn either fails with nothing changed or runs whole.
//! Its reads see its own earlier writes.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use crate::error::KvError;
use crate::lease::Leases;
use crate::mvcc::Mvcc;
use crate::range::{KeyRange, range};
use crate::rpc::{
    Compare, CompareResult, CompareTarget, KeyValue, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use crate::write::{Writer, check_delete_shape, check_put_shape, check_put_state};

/// The most compares, or ops in one branch, a txn may have (etcd's default
/// `--max-txn-ops`). A nested txn's budget is what its parent left.
pub const MAX_TXN_OPS: usize = 128;

/// Run a txn as one write. The caller finishes the write.
pub(crate) fn txn(w: &mut Writer<'_>, req: TxnRequest) -> Result<TxnResponse, KvError> {
    check_shape(&req, MAX_TXN_OPS)?;
    check_duplicates(&req.success)?;
    check_duplicates(&req.failure)?;
    let mut path = Vec::new();
    choose_path(w.mvcc, &req, &mut path);
    // etcd checks every chosen put before any chosen range.
    check_path(w.mvcc, w.leases, &req, &path, &mut 0, Check::Puts)?;
    check_path(w.mvcc, w.leases, &req, &path, &mut 0, Check::Ranges)?;
    Ok(execute(w, req, &path, &mut 0))
}

fn check_shape(req: &TxnRequest, max_ops: usize) -> Result<(), KvError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_ops {
        return Err(KvError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(KvError::EmptyKey),
            RequestOp::Range(_) => {}
            RequestOp::Put(p) => check_put_shape(p)?,
            RequestOp::DeleteRange(d) => check_delete_shape(d)?,
            RequestOp::Txn(t) => check_shape(t, max_ops - ops)?,
        }
    }
    Ok(())
}

fn check_duplicates(ops: &[RequestOp]) -> Result<(), KvError> {
    let writes = ops
        .iter()
        .filter(|op| !matches!(op, RequestOp::Range(_)))
        .count();
    let nested = ops.iter().any(|op| matches!(op, RequestOp::Txn(_)));
    // One write cannot clash with itself (the common compare-and-swap shape).
    if writes <= 1 && !nested {
        return Ok(());
    }
    check_intervals(ops).map(|_| ())
}

/// The keys a branch puts and the ranges it deletes, including its nested txns'.
type Writes<'a> = (BTreeSet<&'a [u8]>, Vec<KeyRange<'a>>);

/// etcd's duplicate-key rule: within a branch (nested txns included, their two branches
/// being exclusive) no key is put twice, and no put falls in a deleted range. Deletes may
/// overlap each other.
fn check_intervals(ops: &[RequestOp]) -> Result<Writes<'_>, KvError> {
    let mut dels: Vec<KeyRange<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(KeyRange::new(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[KeyRange<'_>], key: &[u8]| dels.iter().any(|d| d.contains(key));
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (then_puts, then_dels) = check_intervals(&t.success)?;
        let (else_puts, else_dels) = check_intervals(&t.failure)?;
        for &key in &then_puts {
            if puts.contains(key) || deleted(&dels, key) {
                return Err(KvError::DuplicateKey);
            }
        }
        puts.extend(&then_puts);
        for &key in &else_puts {
            // The same key in both branches is fine: only one of them runs.
            if (puts.contains(key) && !then_puts.contains(key)) || deleted(&dels, key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(key);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if !puts.insert(&p.key) || deleted(&dels, &p.key) {
            return Err(KvError::DuplicateKey);
        }
    }
    Ok((puts, dels))
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// Evaluate the compares of the txn and of the nested txns on the chosen branches, in
/// pre-order, against the state before the txn.
fn choose_path(mvcc: &Mvcc, req: &TxnRequest, path: &mut Vec<bool>) {
    let succeeded = req.compare.iter().all(|c| compare(mvcc, c));
    path.push(succeeded);
    for op in branch(req, succeeded) {
        if let RequestOp::Txn(t) = op {
            choose_path(mvcc, t, path);
        }
    }
}

/// Whether every key in the compare's range satisfies it. An empty range compares a
/// missing key's zero fields, except that a value compare on a missing key fails (etcd
/// cannot tell a missing value from an empty one, so it never matches).
fn compare(mvcc: &Mvcc, c: &Compare) -> bool {
    let keys = KeyRange::new(&c.key, &c.range_end);
    let mut any = false;
    for kv in mvcc.visible(&keys, mvcc.read_revision()) {
        if !holds(c, kv) {
            return false;
        }
        any = true;
    }
    any || (!matches!(c.target, CompareTarget::Value(_)) && holds(c, &KeyValue::default()))
}

fn holds(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(r) => kv.create_revision.cmp(r),
        CompareTarget::ModRevision(r) => kv.mod_revision.cmp(r),
        CompareTarget::Value(v) => kv.value.as_ref().cmp(v.as_ref()),
        CompareTarget::Lease(l) => kv.lease.cmp(l),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Ranges,
}

/// Check the ops on the chosen path against the state before the txn.
fn check_path(
    mvcc: &Mvcc,
    leases: &Leases,
    req: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
    check: Check,
) -> Result<(), KvError> {
    let succeeded = path[*cursor];
    *cursor += 1;
    for op in branch(req, succeeded) {
        match (op, check) {
            (RequestOp::Put(p), Check::Puts) => check_put_state(mvcc, leases, p)?,
            (RequestOp::Range(r), Check::Ranges) => mvcc.check_revision(r.revision)?,
            (RequestOp::Txn(t), _) => check_path(mvcc, leases, t, path, cursor, check)?,
            _ => {}
        }
    }
    Ok(())
}

fn execute(w: &mut Writer<'_>, req: TxnRequest, path: &[bool], cursor: &mut usize) -> TxnResponse {
    let succeeded = path[*cursor];
    *cursor += 1;
    let ops = if succeeded { req.success } else { req.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(match op {
            RequestOp::Range(r) => ResponseOp::Range(
                range(w.mvcc, &r).expect("a range's key and revision were checked"),
            ),
            RequestOp::Put(p) => ResponseOp::Put(w.put(p)),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(w.delete_range(d)),
            RequestOp::Txn(t) => ResponseOp::Txn(execute(w, t, path, cursor)),
        });
    }
    TxnResponse {
        header: ResponseHeader {
            revision: w.mvcc.read_revision(),
        },
        succeeded,
        responses,
    }
}
