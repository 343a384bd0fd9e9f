//! etcd v3 semantics of the state machine, scenario by scenario, through the public API.

mod alarm;
mod auth;
mod compaction;
mod harness;
mod hash_kv;
mod lease;
mod props;
mod range;
mod revisions;
mod sessions;
mod snapshot;
mod txn;
mod watch;
