//! etcd's backend layout: how etcd 3.4 keeps its key space, leases and compaction point
//! in bbolt buckets, from an ekmat snapshot and back.
//!
//! - `key`: one record per version, keyed by its revision (main as 8 bytes big-endian,
//!   `_`, sub as 8 bytes big-endian, then `t` for a deletion), the value a
//!   `mvccpb.KeyValue` (a deletion's holds only the key, as etcd writes it);
//! - `lease`: the lease id as 8 bytes big-endian to a `leasepb.Lease` (id, TTL);
//! - `meta`: `consistent_index` (the applied log index, 8 bytes big-endian; `etcdctl
//!   snapshot restore` rewrites it), and the compaction point under
//!   `finishedCompactRev` and `scheduledCompactRev` as revision keys.
//!
//! etcd's other buckets (members, auth, alarms) are left out: `snapshot restore`
//! creates the members anew and etcd creates the rest empty.

use ekmat_api::mvccpb;
use ekmat_kv::{HistoryRecord, KeyValue, SnapshotSource};
use prost::Message;

use super::bbolt::{Bucket, BucketSource, Entry};

const KEY: &[u8] = b"key";
const LEASE: &[u8] = b"lease";
const META: &[u8] = b"meta";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
/// A revision key: main, `_`, sub.
const REVISION_LEN: usize = 17;
const TOMBSTONE: u8 = b't';

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// One version as etcd's `key` bucket holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
    pub deleted: bool,
    pub kv: mvccpb::KeyValue,
}

/// What a backup holds, read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdState {
    /// In revision order.
    pub revisions: Vec<Revision>,
    /// (id, TTL in seconds), by id.
    pub leases: Vec<(i64, i64)>,
    pub compact_revision: i64,
    pub consistent_index: u64,
}

impl EtcdState {
    /// The store revision: that of the last record (etcd's `snapshot status` reads it
    /// the same way).
    pub fn revision(&self) -> i64 {
        self.revisions.last().map_or(0, |r| r.main)
    }
}

fn revision_key(main: i64, sub: i64, deleted: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(REVISION_LEN + 1);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if deleted {
        key.push(TOMBSTONE);
    }
    key
}

/// The buckets etcd would hold for the store `source` was taken from, `history` being
/// `source.history()`. The key space's records are encoded as they are written.
pub fn buckets<'a>(
    source: &SnapshotSource,
    history: &'a [HistoryRecord<'a>],
) -> Vec<BucketSource<'a>> {
    let keys = BucketSource {
        name: KEY.to_vec(),
        len: history.len(),
        entry: Box::new(move |i| key_record(&history[i])),
    };
    let leases: Vec<Entry> = source
        .lease_ttls()
        .map(|(id, ttl)| {
            let record = LeaseRecord {
                id,
                ttl,
                remaining_ttl: 0,
            };
            (id.to_be_bytes().to_vec(), record.encode_to_vec())
        })
        .collect();
    let mut meta: Vec<Entry> = vec![(
        CONSISTENT_INDEX.to_vec(),
        source.applied().to_be_bytes().to_vec(),
    )];
    if source.compact_revision() > 0 {
        let rev = revision_key(source.compact_revision(), 0, false);
        meta.push((FINISHED_COMPACT.to_vec(), rev.clone()));
        meta.push((SCHEDULED_COMPACT.to_vec(), rev));
    }
    meta.sort();
    vec![
        keys,
        BucketSource::of(LEASE, leases),
        BucketSource::of(META, meta),
    ]
}

/// One version as etcd's `key` bucket holds it.
fn key_record(r: &HistoryRecord<'_>) -> Entry {
    let value = if r.deleted {
        mvccpb::KeyValue {
            key: r.kv.key.to_vec(),
            ..Default::default()
        }
    } else {
        key_value(r.kv)
    };
    (
        revision_key(r.main, i64::from(r.sub), r.deleted),
        value.encode_to_vec(),
    )
}

fn key_value(kv: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

/// Read etcd's layout back from `buckets` (from ekmat's backups or etcd's own).
pub fn read(buckets: &[Bucket]) -> Result<EtcdState, String> {
    let mut state = EtcdState::default();
    for bucket in buckets {
        match &bucket.name[..] {
            KEY => state.revisions = read_revisions(&bucket.entries)?,
            LEASE => state.leases = read_leases(&bucket.entries)?,
            META => read_meta(&bucket.entries, &mut state)?,
            _ => {}
        }
    }
    Ok(state)
}

fn read_revisions(entries: &[Entry]) -> Result<Vec<Revision>, String> {
    entries
        .iter()
        .map(|(key, value)| {
            let deleted = key.len() == REVISION_LEN + 1 && key[REVISION_LEN] == TOMBSTONE;
            let (main, sub) = parse_revision(key)
                .filter(|_| key.len() == REVISION_LEN || deleted)
                .ok_or_else(|| format!("key bucket: {key:?} is not a revision"))?;
            let kv = mvccpb::KeyValue::decode(&value[..])
                .map_err(|e| format!("key bucket: revision {main}: {e}"))?;
            Ok(Revision {
                main,
                sub,
                deleted,
                kv,
            })
        })
        .collect()
}

fn parse_revision(key: &[u8]) -> Option<(i64, i64)> {
    let main = key.get(..8)?.try_into().ok().map(i64::from_be_bytes)?;
    let sub = key.get(9..17)?.try_into().ok().map(i64::from_be_bytes)?;
    (key[8] == b'_').then_some((main, sub))
}

fn read_leases(entries: &[Entry]) -> Result<Vec<(i64, i64)>, String> {
    entries
        .iter()
        .map(|(_, value)| {
            LeaseRecord::decode(&value[..])
                .map(|l| (l.id, l.ttl))
                .map_err(|e| format!("lease bucket: {e}"))
        })
        .collect()
}

fn read_meta(entries: &[Entry], state: &mut EtcdState) -> Result<(), String> {
    for (key, value) in entries {
        match &key[..] {
            CONSISTENT_INDEX => {
                let bytes = value.as_slice().try_into().map_err(|_| {
                    format!("meta bucket: consistent_index of {} bytes", value.len())
                })?;
                state.consistent_index = u64::from_be_bytes(bytes);
            }
            FINISHED_COMPACT => {
                state.compact_revision = parse_revision(value)
                    .ok_or("meta bucket: finishedCompactRev is not a revision")?
                    .0;
            }
            _ => {}
        }
    }
    Ok(())
}
