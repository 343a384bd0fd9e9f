//! The key-value messages of etcd's `rpc.proto` and `kv.proto`, field for field (snake
//! case, `Bytes` for keys and values, `i64` for revisions, ids and TTLs), so the gRPC
//! layer converts them one to one.

use std::cell::Cell;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

/// etcd's `ResponseHeader`, as far as the state machine knows it. `cluster_id`,
/// `member_id` and `raft_term` belong to the node, which adds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// The store's revision when the request completed.
    pub revision: i64,
}

/// One version of a key (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Bytes,
    /// The revision of the put that created the key (0 in a deletion event).
    pub create_revision: i64,
    /// The revision of the last change to the key.
    pub mod_revision: i64,
    /// 1 when created, +1 per put; 0 in a deletion event.
    pub version: i64,
    pub value: Bytes,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// How a range response is ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order; with a sort target other than the key, ascending.
    #[default]
    None,
    Ascend,
    Descend,
}

/// What a range response is ordered by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// Read the keys in a range (etcd's `RangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Bytes,
    /// Empty: just `key`. `"\0"`: every key `>= key`. Otherwise `[key, range_end)`.
    pub range_end: Bytes,
    /// At most this many keys (0: no limit); `more` says whether some were left out.
    pub limit: i64,
    /// Read as of this revision (0 or less: the current one).
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Whether the node may serve the read locally without a quorum (node's concern).
    pub serializable: bool,
    pub keys_only: bool,
    /// Only count the keys: `kvs` is empty, `count` is set.
    pub count_only: bool,
    /// Filters; 0 means no bound. They apply after counting, as in etcd.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// A read of one key.
    pub fn new(key: impl Into<Bytes>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        }
    }

    /// A read of `[key, range_end)` (with etcd's meanings of an empty and a `"\0"` end).
    pub fn range(key: impl Into<Bytes>, range_end: impl Into<Bytes>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..RangeRequest::default()
        }
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    /// The keys read, in the order asked for.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    pub more: bool,
    /// How many keys are in the range at the revision read (before the revision
    /// filters and the limit, as in etcd).
    pub count: i64,
}

/// Write one key (etcd's `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub key: Bytes,
    /// Decoded from a logged command, a slice of it (`shared_bytes.rs`).
    #[serde(deserialize_with = "crate::shared_bytes::deserialize")]
    pub value: Bytes,
    /// Attach the key to this lease (0: none; detaches it from any earlier lease).
    pub lease: i64,
    /// Return the key's previous version.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl PutRequest {
    /// A plain put of `value` at `key`.
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        }
    }
}

/// The answer to a [`PutRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub header: ResponseHeader,
    /// The previous version, if asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// Delete the keys in a range (etcd's `DeleteRangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    pub key: Bytes,
    /// As in [`RangeRequest::range_end`].
    pub range_end: Bytes,
    /// Return the deleted versions.
    pub prev_kv: bool,
}

impl DeleteRangeRequest {
    /// A delete of one key.
    pub fn new(key: impl Into<Bytes>) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        }
    }
}

/// The answer to a [`DeleteRangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted versions, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// One operation of a txn branch (etcd's `RequestOp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

/// The answer to one [`RequestOp`] (etcd's `ResponseOp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

/// How a key's field must relate to the compare's operand (etcd's `Compare.CompareResult`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareResult {
    #[default]
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// The field compared and the operand. etcd spreads this over a `target` enum and a
/// `target_union` oneof; one enum cannot disagree with itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Bytes),
    Lease(i64),
}

/// A txn guard (etcd's `Compare`): `key`'s `target` field `result` the operand. With a
/// `range_end`, every key in the range must satisfy it; an empty range compares a
/// missing key (version, revisions and lease 0), except that a value compare against a
/// missing key always fails, as in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Bytes,
    pub range_end: Bytes,
}

impl Compare {
    /// A compare of one key.
    pub fn new(key: impl Into<Bytes>, result: CompareResult, target: CompareTarget) -> Compare {
        Compare {
            result,
            target,
            key: key.into(),
            range_end: Bytes::new(),
        }
    }
}

/// If every compare holds, run `success`, otherwise `failure` (etcd's `TxnRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub header: ResponseHeader,
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// One response per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// Drop history before `revision` (etcd's `CompactionRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    pub revision: i64,
    /// etcd waits for the backend to reclaim space; the in-memory store always has.
    pub physical: bool,
}

/// The answer to a [`CompactionRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionResponse {
    pub header: ResponseHeader,
}

/// The deepest txn nesting a command may have. etcd's own budget (each level spends at
/// least one of [`crate::MAX_TXN_OPS`]) rejects anything deeper; refusing it while
/// decoding keeps hostile bytes from exhausting the stack.
pub(crate) const MAX_TXN_DEPTH: u32 = crate::MAX_TXN_OPS as u32 + 2;

thread_local! {
    static TXN_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Counts txn nesting while one decode is in progress, on this thread.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Option<DepthGuard> {
        TXN_DEPTH.with(|d| {
            if d.get() >= MAX_TXN_DEPTH {
                return None;
            }
            d.set(d.get() + 1);
            Some(DepthGuard)
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        TXN_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

#[derive(Deserialize)]
#[serde(rename = "TxnRequest")]
struct TxnRequestRepr {
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

impl<'de> Deserialize<'de> for TxnRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TxnRequest, D::Error> {
        let _depth =
            DepthGuard::enter().ok_or_else(|| serde::de::Error::custom("txn nested too deeply"))?;
        let TxnRequestRepr {
            compare,
            success,
            failure,
        } = TxnRequestRepr::deserialize(deserializer)?;
        Ok(TxnRequest {
            compare,
            success,
            failure,
        })
    }
}
