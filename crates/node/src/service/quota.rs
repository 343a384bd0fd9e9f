//! etcd's space quota: before proposing a write that adds data, the member that took it
//! checks that the store's size estimate plus the write's cost stays under its quota. If
//! not, it raises the NOSPACE alarm through the log (so every member starts refusing
//! such writes at the same entry) and refuses the write, as etcd's quota servers do.

use ekmat_api::etcdserverpb as pb;
use ekmat_kv::{AlarmAction, AlarmRequest, AlarmType, Command, KvError};
use tonic::Status;

use super::{Services, convert};

/// etcd's estimate of a key's metadata in its backend (`kvOverhead`).
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of a lease in its backend (`leaseOverhead`).
pub const LEASE_COST: u64 = 64;

/// What a put costs the quota (etcd's `costPut`).
pub fn put_cost(req: &pb::PutRequest) -> u64 {
    KV_OVERHEAD + (req.key.len() + req.value.len()) as u64
}

/// What a txn costs the quota: the costlier branch's puts (etcd's `costTxn`).
pub fn txn_cost(req: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&req.success).max(branch(&req.failure))
}

impl Services {
    /// Refuse a write costing `cost` bytes if it would take the store past the quota,
    /// raising the NOSPACE alarm for this member first. A write that adds nothing
    /// (`cost == 0`) always passes: deletes are how space is freed.
    pub(super) async fn check_quota(&self, cost: u64) -> Result<(), Status> {
        let quota = self.inner.quota_bytes;
        let size = self.inner.status.borrow().db_size;
        if cost == 0 || quota == 0 || size.saturating_add(cost) < quota {
            return Ok(());
        }
        tracing::warn!(
            size,
            cost,
            quota,
            "space quota exceeded; raising the NOSPACE alarm"
        );
        let raise = Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate,
            member_id: self.inner.member_id,
            alarm: AlarmType::NoSpace,
        });
        // The write is refused whether or not the alarm made it into the log: etcd does
        // the same, and the next write over the quota tries again.
        if let Err(e) = self.write_internal(raise).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
        Err(convert::kv_error(&KvError::NoSpace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                value: bytes::Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn costs_are_etcds() {
        let p = pb::PutRequest {
            key: b"key".to_vec().into(),
            value: b"value".to_vec().into(),
            ..Default::default()
        };
        assert_eq!(put_cost(&p), 256 + 8);
        // The costlier branch counts; reads and deletes cost nothing.
        let txn = pb::TxnRequest {
            success: vec![put("a", "1"), put("b", "2")],
            failure: vec![put("c", "12345678")],
            compare: vec![],
        };
        assert_eq!(txn_cost(&txn), 2 * (256 + 2));
        assert_eq!(txn_cost(&pb::TxnRequest::default()), 0);
    }
}
