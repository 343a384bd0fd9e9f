//! The key-value state machine every protocol replicates: etcd v3's data model (MVCC
//! revisions, ranges, txns, compaction, leases, watch events) as a deterministic,
//! protocol-agnostic store.
//!
//! Commands arrive from the log as [`Envelope`]s, in index order; applying them is
//! deterministic, so every replica that applies the same prefix holds the same store.
//! Time comes only from the envelopes (the proposer's clock), so leases expire at the same
//! log position everywhere. Each client's requests execute at most once: a repeated
//! request id returns the recorded result instead of running again.
//!
//! Messages mirror etcd's `rpc.proto` field for field, and error messages are etcd's, so a
//! gRPC layer can expose the store as the etcd API one to one.

mod alarm;
mod auth;
mod command;
mod error;
mod hash;
mod lease;
mod mvcc;
mod permission;
mod range;
mod rpc;
mod session;
mod shared_bytes;
mod snapshot;
mod store;
mod txn;
mod watch;
mod write;

pub use alarm::{AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, txn_puts};
pub use auth::{
    AuthRequest, AuthResponse, AuthState, Caller, Permission, PermissionType, ROOT_ROLE, ROOT_USER,
    RoleRecord, UserRecord,
};
pub use command::{Applied, Command, Envelope, Response, TickResponse};
pub use error::{DecodeError, KvError};
pub use hash::KeyHistory;
pub use lease::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveResponse, MAX_LEASE_TTL,
};
pub use range::{KeyRange, prefix_end};
pub use rpc::{
    CompactionRequest, CompactionResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, SortOrder, SortTarget, TxnRequest,
    TxnResponse,
};
pub use session::ANONYMOUS_CLIENT;
pub use snapshot::{BackupRecord, HistoryRecord, SnapshotSource};
pub use store::{KvStore, SignedBy};
pub use txn::MAX_TXN_OPS;
pub use watch::{Event, EventKind};
