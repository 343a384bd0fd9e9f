//! Between the etcd wire types (`ekmat_api`) and the state machine's (`ekmat_kv`). They
//! mirror each other field for field, so this is bookkeeping — except where the wire
//! allows nonsense (a compare with no operand, an unknown enum value), which becomes a
//! clear `InvalidArgument`.

use bytes::Bytes;
use ekmat_api::{etcdserverpb as pb, mvccpb};
use ekmat_kv as kv;
use tonic::Status;

fn invalid(msg: &str) -> Status {
    Status::invalid_argument(format!("etcdserver: {msg}"))
}

pub fn range_request(r: pb::RangeRequest) -> Result<kv::RangeRequest, Status> {
    let sort_order = match r.sort_order() {
        pb::range_request::SortOrder::None => kv::SortOrder::None,
        pb::range_request::SortOrder::Ascend => kv::SortOrder::Ascend,
        pb::range_request::SortOrder::Descend => kv::SortOrder::Descend,
    };
    let sort_target = match r.sort_target() {
        pb::range_request::SortTarget::Key => kv::SortTarget::Key,
        pb::range_request::SortTarget::Version => kv::SortTarget::Version,
        pb::range_request::SortTarget::Create => kv::SortTarget::Create,
        pb::range_request::SortTarget::Mod => kv::SortTarget::Mod,
        pb::range_request::SortTarget::Value => kv::SortTarget::Value,
    };
    Ok(kv::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put_request(r: pb::PutRequest) -> kv::PutRequest {
    kv::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_request(r: pb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

pub fn txn_request(r: pb::TxnRequest) -> Result<kv::TxnRequest, Status> {
    Ok(kv::TxnRequest {
        compare: r
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: r
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: r
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

fn compare(c: pb::Compare) -> Result<kv::Compare, Status> {
    use pb::compare::TargetUnion as U;
    let result = match pb::compare::CompareResult::try_from(c.result) {
        Ok(pb::compare::CompareResult::Equal) => kv::CompareResult::Equal,
        Ok(pb::compare::CompareResult::Greater) => kv::CompareResult::Greater,
        Ok(pb::compare::CompareResult::Less) => kv::CompareResult::Less,
        Ok(pb::compare::CompareResult::NotEqual) => kv::CompareResult::NotEqual,
        Err(_) => return Err(invalid("unknown compare result")),
    };
    let target = match (
        pb::compare::CompareTarget::try_from(c.target),
        c.target_union,
    ) {
        (Ok(pb::compare::CompareTarget::Version), v) => kv::CompareTarget::Version(match v {
            Some(U::Version(x)) => x,
            _ => 0,
        }),
        (Ok(pb::compare::CompareTarget::Create), v) => kv::CompareTarget::CreateRevision(match v {
            Some(U::CreateRevision(x)) => x,
            _ => 0,
        }),
        (Ok(pb::compare::CompareTarget::Mod), v) => kv::CompareTarget::ModRevision(match v {
            Some(U::ModRevision(x)) => x,
            _ => 0,
        }),
        (Ok(pb::compare::CompareTarget::Value), v) => kv::CompareTarget::Value(match v {
            Some(U::Value(x)) => x,
            _ => Bytes::new(),
        }),
        (Ok(pb::compare::CompareTarget::Lease), v) => kv::CompareTarget::Lease(match v {
            Some(U::Lease(x)) => x,
            _ => 0,
        }),
        (Err(_), _) => return Err(invalid("unknown compare target")),
    };
    Ok(kv::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn request_op(op: pb::RequestOp) -> Result<kv::RequestOp, Status> {
    use pb::request_op::Request as R;
    match op.request {
        Some(R::RequestRange(r)) => Ok(kv::RequestOp::Range(range_request(r)?)),
        Some(R::RequestPut(r)) => Ok(kv::RequestOp::Put(put_request(r))),
        Some(R::RequestDeleteRange(r)) => Ok(kv::RequestOp::DeleteRange(delete_request(r))),
        Some(R::RequestTxn(r)) => Ok(kv::RequestOp::Txn(txn_request(r)?)),
        None => Err(invalid("empty operation in txn request")),
    }
}

pub fn key_value(kv: kv::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// The node fills in the header's cluster, member and term; the state machine the revision.
pub type Header<'a> = dyn Fn(kv::ResponseHeader) -> pb::ResponseHeader + 'a;

pub fn range_response(r: kv::RangeResponse, h: &Header<'_>) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(h(r.header)),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_response(r: kv::PutResponse, h: &Header<'_>) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(h(r.header)),
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub fn delete_response(r: kv::DeleteRangeResponse, h: &Header<'_>) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(h(r.header)),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

pub fn txn_response(r: kv::TxnResponse, h: &Header<'_>) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                kv::ResponseOp::Range(r) => R::ResponseRange(range_response(r, h)),
                kv::ResponseOp::Put(r) => R::ResponsePut(put_response(r, h)),
                kv::ResponseOp::DeleteRange(r) => R::ResponseDeleteRange(delete_response(r, h)),
                kv::ResponseOp::Txn(r) => R::ResponseTxn(txn_response(r, h)),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(h(r.header)),
        succeeded: r.succeeded,
        responses,
    }
}

/// etcd's gRPC status for each state-machine error (its clients match on these).
pub fn kv_error(e: &kv::KvError) -> Status {
    use kv::KvError as E;
    let message = match e {
        E::Compacted | E::FutureRevision => format!("etcdserver: {e}"),
        _ => e.to_string(),
    };
    match e {
        E::Compacted | E::FutureRevision | E::LeaseTtlTooLarge => Status::out_of_range(message),
        E::LeaseNotFound => Status::not_found(message),
        E::LeaseExists => Status::failed_precondition(message),
        E::NoSpace => Status::resource_exhausted(message),
        E::Corrupt => Status::data_loss(message),
        E::PermissionDenied => Status::permission_denied(message),
        E::InvalidAuthToken => Status::unauthenticated(message),
        E::UserExists
        | E::UserNotFound
        | E::RoleExists
        | E::RoleNotFound
        | E::RoleNotGranted
        | E::PermissionNotGranted
        | E::AuthNotEnabled
        | E::RootUserNotExist
        | E::RootRoleNotExist => Status::failed_precondition(message),
        // Including a missing key for ignore_value/ignore_lease, as in etcd.
        _ => Status::invalid_argument(message),
    }
}

/// etcd's permission as ekmat's; an unknown permission type is given back as `Err`.
pub fn permission_in(p: ekmat_api::authpb::Permission) -> Result<kv::Permission, i32> {
    use ekmat_api::authpb::permission::Type;
    let kind = match Type::try_from(p.perm_type) {
        Ok(Type::Read) => kv::PermissionType::Read,
        Ok(Type::Write) => kv::PermissionType::Write,
        Ok(Type::Readwrite) => kv::PermissionType::ReadWrite,
        Err(_) => return Err(p.perm_type),
    };
    Ok(kv::Permission {
        kind,
        key: p.key.into(),
        range_end: p.range_end.into(),
    })
}

/// ekmat's permission as etcd's.
pub fn permission_out(p: kv::Permission) -> ekmat_api::authpb::Permission {
    use ekmat_api::authpb::permission::Type;
    let kind = match p.kind {
        kv::PermissionType::Read => Type::Read,
        kv::PermissionType::Write => Type::Write,
        kv::PermissionType::ReadWrite => Type::Readwrite,
    };
    ekmat_api::authpb::Permission {
        perm_type: kind as i32,
        key: p.key.to_vec(),
        range_end: p.range_end.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_txn_converts_with_its_compares_and_branches() {
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Value as i32,
                key: Bytes::from_static(b"k"),
                target_union: Some(pb::compare::TargetUnion::Value(Bytes::from_static(b"v"))),
                range_end: vec![].into(),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"w"),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let t = txn_request(txn).unwrap();
        assert_eq!(
            t.compare[0].target,
            kv::CompareTarget::Value(Bytes::from_static(b"v"))
        );
        assert!(matches!(t.success[0], kv::RequestOp::Put(_)));
    }

    #[test]
    fn wire_nonsense_is_an_invalid_argument() {
        let bad = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: 99,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            txn_request(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let empty_op = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(
            txn_request(empty_op).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn lease_errors_carry_etcds_codes_and_messages() {
        let cases = [
            (
                kv::KvError::LeaseNotFound,
                tonic::Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                kv::KvError::LeaseExists,
                tonic::Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                kv::KvError::LeaseTtlTooLarge,
                tonic::Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                kv::KvError::KeyNotFound,
                tonic::Code::InvalidArgument,
                "etcdserver: key not found",
            ),
        ];
        for (e, code, message) in cases {
            let s = kv_error(&e);
            assert_eq!((s.code(), s.message()), (code, message));
        }
    }

    #[test]
    fn compaction_errors_carry_etcds_message() {
        let s = kv_error(&kv::KvError::Compacted);
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}
