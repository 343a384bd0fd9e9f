//! Snapshots: the whole state machine as bytes, and back. Derived indexes (the change
//! log, lease attachments, the expiry queue) are rebuilt on restore rather than stored,
//! so a restored store is checked for consistency instead of trusted.

use std::collections::BTreeMap;

use bytes::Bytes;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::alarm::{AlarmMember, Alarms};
use crate::auth::AuthState;
use crate::error::KvError;
use crate::lease::Leases;
use crate::mvcc::{Mvcc, Version};
use crate::rpc::KeyValue;
use crate::session::{Session, Sessions};
use crate::store::KvStore;

/// Bumped whenever the layout changes; unknown formats are refused, not misread.
/// Format 2 appends the raised alarms to format 1's layout, and format 3 the auth state
/// to format 2's, so the older ones (no alarms, no auth) are still read.
const FORMAT: u32 = 3;
const FORMAT_WITHOUT_AUTH: u32 = 2;
const FORMAT_WITHOUT_ALARMS: u32 = 1;

/// Everything a snapshot holds, taken from the store without copying its data (the key
/// index is a persistent map), so the store can go on applying writes while another
/// thread encodes it.
#[derive(Clone, Serialize)]
pub struct SnapshotSource {
    format: u32,
    applied: u64,
    clock_ms: u64,
    revision: i64,
    compact_revision: i64,
    last_lease_id: i64,
    keys: OrdMap<Bytes, Vec<Version>>,
    /// (id, ttl, deadline in ms) per lease.
    leases: Vec<(i64, i64, u64)>,
    sessions: BTreeMap<u64, Session>,
    #[serde(skip)]
    alarms: Vec<AlarmMember>,
    #[serde(skip)]
    auth: AuthState,
}

/// A summary: the whole key index would flood any log it reached.
impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSource")
            .field("applied", &self.applied)
            .field("revision", &self.revision)
            .field("keys", &self.keys.len())
            .field("leases", &self.leases.len())
            .finish_non_exhaustive()
    }
}

impl SnapshotSource {
    pub(crate) fn of(store: &KvStore) -> SnapshotSource {
        SnapshotSource {
            format: FORMAT,
            applied: store.applied,
            clock_ms: store.clock_ms,
            revision: store.mvcc.revision,
            compact_revision: store.mvcc.compact_revision,
            last_lease_id: store.leases.last_assigned,
            keys: store.mvcc.keys.clone(),
            leases: store
                .leases
                .by_id
                .iter()
                .map(|(&id, l)| (id, l.ttl, l.deadline_ms))
                .collect(),
            sessions: store.sessions.by_client.clone(),
            alarms: store.alarms.active.iter().copied().collect(),
            auth: store.auth.clone(),
        }
    }

    /// The store revision the snapshot was taken at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision before which history was compacted away (0 if never).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The log index the snapshot was taken at.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Users, roles and the auth switch.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    /// Every retained version, in revision order: etcd's backend keeps its key space
    /// this way, one record per (revision, sub-revision).
    pub fn history(&self) -> Vec<HistoryRecord<'_>> {
        let mut records: Vec<HistoryRecord<'_>> = self
            .keys
            .values()
            .flatten()
            .map(|v| HistoryRecord {
                main: v.main(),
                sub: v.sub,
                deleted: v.deleted,
                kv: &v.kv,
            })
            .collect();
        records.sort_unstable_by_key(|r| (r.main, r.sub));
        records
    }

    /// Each lease's id and granted TTL in seconds, by id.
    pub fn lease_ttls(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.iter().map(|&(id, ttl, _)| (id, ttl))
    }

    /// [`KvStore::hash32`] of the store this was taken from, computed from the snapshot
    /// alone (so off the thread that applies writes).
    pub fn hash32(&self) -> u32 {
        crate::hash::fold(crate::hash::hash_parts(crate::hash::StateParts {
            revision: self.revision,
            compact_revision: self.compact_revision,
            clock_ms: self.clock_ms,
            last_lease_id: self.last_lease_id,
            keys: &self.keys,
            leases: self.leases.iter().copied(),
            sessions: &self.sessions,
            alarms: self.alarms.iter().copied(),
            auth: &self.auth,
        }))
    }

    /// The snapshot's bytes: what [`KvStore::restore`] reads.
    pub fn encode(&self) -> Bytes {
        let len = self.encoded_len();
        let bytes = self.encode_into(Vec::with_capacity(len));
        debug_assert_eq!(bytes.len(), len, "sized as written");
        Bytes::from(bytes)
    }

    /// How many bytes [`SnapshotSource::encode`] gives. Sizing first lets a caller
    /// write the store once, into a buffer of the right size: a store of hundreds of
    /// megabytes grown by doubling was copied about twice over, into fresh memory.
    pub fn encoded_len(&self) -> usize {
        [
            postcard::experimental::serialized_size(self),
            postcard::experimental::serialized_size(&self.alarms),
            postcard::experimental::serialized_size(&self.auth),
        ]
        .into_iter()
        .map(|size| size.expect("snapshots always serialize"))
        .sum()
    }

    /// Append the snapshot's bytes (what [`SnapshotSource::encode`] gives) to `buf`.
    /// Callers that sized the buffer with [`SnapshotSource::encoded_len`] check the
    /// length themselves (a second sizing would walk the whole store again).
    pub fn encode_into(&self, buf: Vec<u8>) -> Vec<u8> {
        postcard::to_extend(self, buf)
            .and_then(|bytes| postcard::to_extend(&self.alarms, bytes))
            .and_then(|bytes| postcard::to_extend(&self.auth, bytes))
            .expect("snapshots always serialize")
    }
}

/// One version of one key, at its place in the revision order.
#[derive(Clone, Copy, Debug)]
pub struct HistoryRecord<'a> {
    pub main: i64,
    pub sub: u32,
    /// A deletion: `kv` holds only the key and the deleting revision.
    pub deleted: bool,
    pub kv: &'a KeyValue,
}

#[derive(Deserialize)]
struct Snapshot {
    /// Checked before the rest is decoded.
    _format: u32,
    applied: u64,
    clock_ms: u64,
    revision: i64,
    compact_revision: i64,
    last_lease_id: i64,
    keys: OrdMap<Bytes, Vec<Version>>,
    leases: Vec<(i64, i64, u64)>,
    sessions: BTreeMap<u64, Session>,
}

fn bad(why: impl Into<String>) -> KvError {
    KvError::BadSnapshot(why.into())
}

pub(crate) fn decode(bytes: &[u8]) -> Result<KvStore, KvError> {
    let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(|e| bad(e.to_string()))?;
    if !(FORMAT_WITHOUT_ALARMS..=FORMAT).contains(&format) {
        return Err(bad(format!("format {format}, expected {FORMAT}")));
    }
    let (s, rest): (Snapshot, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
    let (alarms, rest): (Vec<AlarmMember>, &[u8]) = if format >= FORMAT_WITHOUT_AUTH {
        postcard::take_from_bytes(rest).map_err(|e| bad(e.to_string()))?
    } else {
        (Vec::new(), rest)
    };
    let (auth, rest): (AuthState, &[u8]) = if format >= FORMAT {
        postcard::take_from_bytes(rest).map_err(|e| bad(e.to_string()))?
    } else {
        (AuthState::default(), rest)
    };
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    assemble(s, alarms, auth)
}

/// A version as a backup in etcd's layout gives it back: see [`KvStore::from_backup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRecord {
    pub main: i64,
    pub sub: u32,
    pub deleted: bool,
    /// For a deletion only the key counts.
    pub kv: KeyValue,
}

/// The store a backup describes (see [`KvStore::from_backup`]).
pub(crate) fn from_backup(
    applied: u64,
    records: Vec<BackupRecord>,
    leases: &[(i64, i64)],
    compact_revision: i64,
    auth: AuthState,
) -> Result<KvStore, KvError> {
    let mut keys: OrdMap<Bytes, Vec<Version>> = OrdMap::new();
    let mut revision = 1;
    let mut last = None;
    for r in records {
        // One change per (revision, sub-revision), across all keys.
        if last >= Some((r.main, r.sub)) {
            return Err(bad(format!(
                "revision {}.{} out of order or repeated",
                r.main, r.sub
            )));
        }
        last = Some((r.main, r.sub));
        revision = revision.max(r.main);
        let kv = if r.deleted {
            KeyValue {
                key: r.kv.key,
                mod_revision: r.main,
                ..KeyValue::default()
            }
        } else {
            r.kv
        };
        if !r.deleted && kv.mod_revision != r.main {
            return Err(bad(format!(
                "revision {} holds a version modified at {}",
                r.main, kv.mod_revision
            )));
        }
        let version = Version {
            sub: r.sub,
            deleted: r.deleted,
            kv,
        };
        keys.entry(version.kv.key.clone())
            .or_default()
            .push(version);
    }
    let s = Snapshot {
        _format: FORMAT,
        applied,
        clock_ms: 0,
        revision: revision.max(compact_revision),
        compact_revision,
        last_lease_id: leases.iter().map(|&(id, _)| id).max().unwrap_or(0),
        keys,
        // Deadlines on a clock at 0: when the clock starts, each lease restarts from its
        // full TTL (`KvStore::advance_clock`).
        leases: leases
            .iter()
            .map(|&(id, ttl)| (id, ttl, (ttl.max(0) as u64).saturating_mul(1000)))
            .collect(),
        sessions: BTreeMap::new(),
    };
    assemble(s, Vec::new(), auth)
}

/// A store from decoded parts, checked for consistency rather than trusted.
fn assemble(s: Snapshot, alarms: Vec<AlarmMember>, auth: AuthState) -> Result<KvStore, KvError> {
    if s.revision < 1 || s.compact_revision < 0 || s.compact_revision > s.revision {
        return Err(bad(format!(
            "revision {} with compaction at {}",
            s.revision, s.compact_revision
        )));
    }
    let mut leases = Leases::from_parts(&s.leases, s.last_lease_id);
    if leases.by_id.len() != s.leases.len() || leases.contains(0) {
        return Err(bad("duplicate or zero lease id"));
    }
    for (key, versions) in &s.keys {
        check_history(key, versions, s.revision)?;
        if let Some(kv) = versions.last().and_then(Version::live)
            && kv.lease != 0
        {
            if !leases.contains(kv.lease) {
                return Err(bad(format!("key attached to missing lease {}", kv.lease)));
            }
            leases.attach(kv.lease, key);
        }
    }
    Ok(KvStore {
        mvcc: Mvcc::from_parts(s.keys, s.revision, s.compact_revision),
        leases,
        sessions: Sessions {
            by_client: s.sessions,
        },
        alarms: Alarms {
            active: alarms.into_iter().collect(),
        },
        auth,
        clock_ms: s.clock_ms,
        applied: s.applied,
    })
}

/// A key's versions must be its own, in order, and within the store's revisions.
fn check_history(key: &Bytes, versions: &[Version], revision: i64) -> Result<(), KvError> {
    if key.is_empty() || versions.is_empty() {
        return Err(bad("empty key or history"));
    }
    let in_order = versions
        .windows(2)
        .all(|w| (w[0].main(), w[0].sub) < (w[1].main(), w[1].sub));
    let sane = versions.iter().all(|v| {
        v.kv.key == *key
            && (2..=revision).contains(&v.main())
            && (v.deleted || (v.kv.version >= 1 && (1..=v.main()).contains(&v.kv.create_revision)))
    });
    if !in_order || !sane {
        return Err(bad(format!("inconsistent history for key {key:?}")));
    }
    Ok(())
}
