//! What can go wrong. Messages are etcd's own wherever etcd has one, so the gRPC layer can
//! pass them through unchanged.

use serde::{Deserialize, Serialize};

/// Why a request failed. A failed request changes nothing (no revision, no event).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// A request (or a txn compare) named the empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put with `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put with `ignore_value` also carried a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` also carried a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn (or a nested txn) with more compares or ops than [`crate::MAX_TXN_OPS`].
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes of one txn touch the same key.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The revision asked for is older than the compaction point.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for has not happened yet.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// No lease with that id exists (it was never granted, was revoked or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant named an id that is in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant asked for more than [`crate::MAX_LEASE_TTL`] seconds.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// [`crate::KvStore::restore`] was given bytes that are not a consistent snapshot.
    #[error("malformed snapshot: {0}")]
    BadSnapshot(String),
    // Variants are serialized by position (recorded results live in snapshots and are
    // compared across replicas): new ones go last.
    /// A NOSPACE alarm is raised and the request would add data.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised: no write runs until it is cleared.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// Auth is on and the request came without a token (or a user was named empty).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name already exists")]
    UserExists,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: role name already exists")]
    RoleExists,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// A wrong user name or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The caller's roles do not allow the request.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that does not verify, expired, or whose user changed since.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Deleting the root user or role, or taking root's role, while auth is on.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthManagement,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
}

/// Bytes that do not decode as an [`crate::Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-value command: {0}")]
pub struct DecodeError(pub(crate) String);
