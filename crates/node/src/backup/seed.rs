//! Starting a member from a backup, as `etcdctl snapshot restore` starts an etcd member.
//! Every founder is seeded alike from the same file, so they start in agreement:
//!
//! - Raft: the backup's store becomes the member's snapshot at log index 1, term 1, with
//!   the founding members as its configuration. A member added later receives the state
//!   as a snapshot, since no member's log holds anything before index 2.
//! - PBFT: the store becomes the replica's snapshot at sequence number 0 (index 1),
//!   whose history digest is the store's own (`ekmat_pbft::snapshot::Snapshot::seed`):
//!   members seeded from different files never form a stable checkpoint together. The
//!   digest is also written beside the log ([`SEED_FILE`]) and compared by peers when
//!   they connect (`protocol/pbft.rs`), so a founder started without the seed (or
//!   with another) is refused rather than running the batches on an empty store.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use ekmat_core::{Membership, NodeId};
use ekmat_kv::{BackupRecord, KvStore};
use ekmat_raft::{RaftWrite, Snapshot};
use ekmat_storage::{Wal, WalOptions};

use crate::config::NodeConfig;
use crate::identity::{self, Identity};
use crate::members::Members;
use crate::node::NodeError;

/// Where a seeded PBFT member keeps its seed's history digest (hex).
pub const SEED_FILE: &str = "pbft.seed";

/// The log position (the store's applied index) and Raft term the backup's state takes.
const SEED_INDEX: u64 = 1;
const SEED_TERM: u64 = 1;

/// What a member was seeded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeded {
    pub revision: i64,
    /// Versions retained (the history since the compaction point).
    pub versions: usize,
    pub leases: usize,
}

/// A backup made ready to seed the founding members of one cluster.
pub struct Seed {
    /// The member's first log records, encoded.
    records: Vec<Vec<u8>>,
    /// PBFT: the seed's history digest, which peers compare.
    pbft_seed: Option<String>,
    /// The cluster it was prepared for: its protocol and founding members.
    protocol: String,
    founders: BTreeSet<NodeId>,
    pub summary: Seeded,
    /// Buckets the backup held that are not restored, with their entry counts.
    pub left_out: Vec<(String, usize)>,
}

impl Seed {
    /// What the backup held that the restore leaves out, if anything, as a warning.
    pub fn warning(&self) -> Option<String> {
        (!self.left_out.is_empty()).then(|| {
            let parts: Vec<String> = self
                .left_out
                .iter()
                .map(|(name, n)| format!("{name} ({n} entries)"))
                .collect();
            format!(
                "left out of the restore: {} (ekmat has no alarms to restore them into)",
                parts.join(", ")
            )
        })
    }
}

/// Seed the new member `cfg` describes with the backup in `file` ([`prepare`], then
/// [`plant`]).
pub fn seed(cfg: &NodeConfig, file: &[u8]) -> Result<Seeded, NodeError> {
    let seed = prepare(cfg, file.to_vec())?;
    plant(cfg, &seed)?;
    Ok(seed.summary)
}

/// Read the backup in `file` and build the log records every founding member of the
/// cluster `cfg` belongs to starts from (the same for each). Refused for a protocol
/// other than Raft and PBFT, for a joining member, and for a file that is no backup or
/// holds an inconsistent store (each with a one-line reason).
pub fn prepare(cfg: &NodeConfig, file: Vec<u8>) -> Result<Seed, NodeError> {
    cfg.validate()?;
    if !matches!(cfg.protocol.as_str(), "raft" | "pbft") {
        return Err(NodeError::Protocol(format!(
            "starting from a backup is supported for Raft and PBFT clusters, not {}",
            cfg.protocol
        )));
    }
    if cfg.me().joined {
        return Err(NodeError::Protocol(
            "a joining member gets its state from the cluster, not from a backup".into(),
        ));
    }
    let state = super::decode(&file).map_err(|e| NodeError::Storage(format!("backup: {e}")))?;
    drop(file);
    let summary = Seeded {
        revision: state.revision(),
        versions: state.revisions.len(),
        leases: state.leases.len(),
    };
    let records = state
        .revisions
        .into_iter()
        .map(|r| {
            let sub = u32::try_from(r.sub)
                .map_err(|_| format!("revision {} has sub-revision {}", r.main, r.sub))?;
            Ok(BackupRecord {
                main: r.main,
                sub,
                deleted: r.deleted,
                kv: ekmat_kv::KeyValue {
                    key: r.kv.key,
                    create_revision: r.kv.create_revision,
                    mod_revision: r.kv.mod_revision,
                    version: r.kv.version,
                    value: r.kv.value,
                    lease: r.kv.lease,
                },
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| NodeError::Storage(format!("backup: {e}")))?;
    let kv = KvStore::from_backup(
        SEED_INDEX,
        records,
        &state.leases,
        state.compact_revision,
        state.auth,
    )
    .map_err(|e| NodeError::Storage(format!("backup: {e}")))?;
    // Each form of the store is let go once the next is made: a large backup is held
    // about twice, not four times.
    let encoded = kv.snapshot();
    drop(kv);
    let founders: BTreeSet<NodeId> = cfg.founders().map(|m| NodeId(m.id)).collect();
    let (records, pbft_seed) = if cfg.protocol == "pbft" {
        let (records, digest) = pbft_records(encoded);
        (records, Some(digest))
    } else {
        (raft_records(cfg, encoded, &founders), None)
    };
    Ok(Seed {
        records,
        pbft_seed,
        protocol: cfg.protocol.clone(),
        founders,
        summary,
        left_out: state.left_out,
    })
}

/// A term to start in, and the store as the snapshot at index 1 with the founders as
/// the configuration.
fn raft_records(cfg: &NodeConfig, kv: Bytes, founders: &BTreeSet<NodeId>) -> Vec<Vec<u8>> {
    let snapshot = Snapshot {
        index: SEED_INDEX,
        term: SEED_TERM,
        membership: Membership::of(founders.iter().copied()),
        data: Members::from_config(cfg).wrap_snapshot(kv),
    };
    let writes = [
        RaftWrite::HardState {
            term: SEED_TERM,
            vote: None,
        },
        RaftWrite::Snapshot {
            snapshot,
            keep_from: SEED_INDEX + 1,
        },
    ];
    writes.iter().map(encode).collect()
}

/// The store as the replica's snapshot at sequence number 0, and its history digest
/// (hex). PBFT keeps the member table out of its snapshots (replicas vouch for them
/// byte for byte; the table comes from each member's configuration), so the seed does
/// too.
fn pbft_records(kv: Bytes) -> (Vec<Vec<u8>>, String) {
    let app = Members::default().wrap_snapshot(kv);
    let snapshot = ekmat_pbft::snapshot::Snapshot::seed(app, SEED_INDEX);
    let digest = crate::keys::to_hex(&snapshot.exec.history);
    let records = vec![encode(&ekmat_pbft::Write::Snapshot(Arc::new(snapshot)))];
    (records, digest)
}

fn encode<T: serde::Serialize>(write: &T) -> Vec<u8> {
    postcard::to_stdvec(write).expect("log records always serialize")
}

/// Write `seed` as the first log records of the new member `cfg` describes (one of the
/// founders `seed` was prepared for). Refused if its data directory holds a log.
pub fn plant(cfg: &NodeConfig, seed: &Seed) -> Result<(), NodeError> {
    cfg.validate()?;
    let founders: BTreeSet<NodeId> = cfg.founders().map(|m| NodeId(m.id)).collect();
    if cfg.me().joined || founders != seed.founders || cfg.protocol != seed.protocol {
        return Err(NodeError::Protocol(
            "this seed was prepared for another cluster's founding members".into(),
        ));
    }
    if let Some(digest) = &seed.pbft_seed {
        write_synced(
            &cfg.data_dir.join(SEED_FILE),
            format!("{digest}\n").as_bytes(),
        )?;
    }
    write_log(cfg, &seed.records)
}

fn write_synced(path: &std::path::Path, bytes: &[u8]) -> Result<(), NodeError> {
    let cannot =
        |e: std::io::Error| NodeError::Storage(format!("cannot write {}: {e}", path.display()));
    let mut file = std::fs::File::create(path).map_err(cannot)?;
    std::io::Write::write_all(&mut file, bytes).map_err(cannot)?;
    file.sync_all().map_err(cannot)
}

/// Write the seed as the member's first log records, in a directory holding none.
fn write_log(cfg: &NodeConfig, records: &[Vec<u8>]) -> Result<(), NodeError> {
    let _lock = identity::claim(&cfg.data_dir, &Identity::of(cfg))?;
    let dir = cfg.data_dir.join("wal");
    let storage = |e: ekmat_storage::WalError| NodeError::Storage(e.to_string());
    let io = |what: &str, path: &std::path::Path, e: std::io::Error| {
        NodeError::Storage(format!("cannot {what} {}: {e}", path.display()))
    };
    if dir.exists() {
        let (_, recovered) = Wal::open(&dir, WalOptions::default()).map_err(storage)?;
        if recovered.checkpoint.is_some() || !recovered.records.is_empty() {
            return Err(NodeError::Storage(format!(
                "{} already holds a log: a backup seeds only a new member",
                dir.display()
            )));
        }
    }
    // Written beside the log and renamed into place once durable: a crash midway
    // leaves no log that starts without the seed (a member restarted on it would
    // start from an empty store), only a directory the next restore replaces.
    let seeding = cfg.data_dir.join("wal.seeding");
    if seeding.exists() {
        std::fs::remove_dir_all(&seeding).map_err(|e| io("remove", &seeding, e))?;
    }
    let opts = WalOptions {
        sync: !cfg.unsafe_no_fsync,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(&seeding, opts).map_err(storage)?;
    for record in records {
        wal.append(record).map_err(storage)?;
    }
    wal.sync().map_err(storage)?;
    drop(wal);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io("remove", &dir, e))?;
    }
    std::fs::rename(&seeding, &dir).map_err(|e| io("rename into place", &seeding, e))?;
    std::fs::File::open(&cfg.data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", &cfg.data_dir, e))?;
    Ok(())
}
