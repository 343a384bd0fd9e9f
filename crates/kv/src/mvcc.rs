//! The multi-version key index: every key's versions since the compaction point, the
//! store revision, and a revision-ordered log of changes for watches.
//!
//! A write opens implicitly with its first change and ends with [`Mvcc::finish`]: all of
//! its changes share the main revision `revision + 1` and are told apart by a sub-revision,
//! as in etcd; `finish` makes that revision current. A write that changed nothing leaves
//! the revision alone.

use std::collections::VecDeque;

use bytes::Bytes;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::range::KeyRange;
use crate::rpc::KeyValue;

/// One change to a key: a put, or a deletion (a tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Version {
    /// Order among the changes of one revision.
    pub sub: u32,
    pub deleted: bool,
    /// The key's version; for a deletion only the key and the deleting revision are set,
    /// which is what etcd's DELETE event carries.
    pub kv: KeyValue,
}

/// What one version adds to the store's size estimate beyond its key and value: about
/// what etcd's backend spends on a revision key and a key's metadata.
pub(crate) const VERSION_OVERHEAD: u64 = 64;

impl Version {
    /// This version's share of [`Mvcc::bytes`].
    fn cost(&self) -> u64 {
        (self.kv.key.len() + self.kv.value.len()) as u64 + VERSION_OVERHEAD
    }

    pub fn main(&self) -> i64 {
        self.kv.mod_revision
    }

    fn order(&self) -> (i64, u32) {
        (self.main(), self.sub)
    }

    /// The key's value as of this version, if it exists.
    pub fn live(&self) -> Option<&KeyValue> {
        (!self.deleted).then_some(&self.kv)
    }
}

/// Where a change is in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub main: i64,
    pub sub: u32,
    pub key: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mvcc {
    /// Every key with retained history, its versions in (main, sub) order. A persistent
    /// map: a snapshot takes it in O(1) and serializes it on another thread while writes
    /// go on, instead of copying hundreds of megabytes on the apply path.
    pub keys: OrdMap<Bytes, Vec<Version>>,
    /// Every change with main revision `>= compact_revision`, in order. Derivable from
    /// `keys`; kept so a watch resumes in time proportional to what it missed.
    pub changes: VecDeque<Change>,
    pub revision: i64,
    /// Reads before this revision fail; 0 until the first compaction.
    pub compact_revision: i64,
    /// An estimate of the space the retained history takes: what the space quota and
    /// Status's database size measure. Derived, like `changes`.
    pub bytes: u64,
    /// Changes made so far by the write in progress.
    pending: u32,
}

impl Default for Mvcc {
    fn default() -> Mvcc {
        Mvcc {
            keys: OrdMap::new(),
            changes: VecDeque::new(),
            // etcd's first revision: an empty store is at 1, its first write makes 2.
            revision: 1,
            compact_revision: 0,
            bytes: 0,
            pending: 0,
        }
    }
}

impl Mvcc {
    /// Rebuild from restored parts, deriving the change log.
    pub fn from_parts(
        keys: OrdMap<Bytes, Vec<Version>>,
        revision: i64,
        compact_revision: i64,
    ) -> Mvcc {
        let mut changes: Vec<Change> = keys
            .iter()
            .flat_map(|(key, versions)| {
                versions
                    .iter()
                    .filter(|v| v.main() >= compact_revision)
                    .map(|v| Change {
                        main: v.main(),
                        sub: v.sub,
                        key: key.clone(),
                    })
            })
            .collect();
        changes.sort_by_key(|c| (c.main, c.sub));
        let bytes = keys.values().flatten().map(Version::cost).sum();
        Mvcc {
            bytes,
            keys,
            changes: changes.into(),
            revision,
            compact_revision,
            pending: 0,
        }
    }

    /// The revision reads see: the current one, or the one the write in progress will
    /// get (so a txn's reads see its own writes, as in etcd).
    pub fn read_revision(&self) -> i64 {
        self.revision + i64::from(self.pending > 0)
    }

    /// The revision a read asking for `requested` (0 or less: the current one) reads.
    pub fn resolve(&self, requested: i64) -> Result<i64, KvError> {
        self.check_revision(requested)?;
        Ok(if requested <= 0 {
            self.read_revision()
        } else {
            requested
        })
    }

    /// Whether a read at `requested` could be served (against committed revisions).
    pub fn check_revision(&self, requested: i64) -> Result<(), KvError> {
        if requested > self.revision {
            return Err(KvError::FutureRevision);
        }
        if requested > 0 && requested < self.compact_revision {
            return Err(KvError::Compacted);
        }
        Ok(())
    }

    /// The key's value now (including the write in progress).
    pub fn latest(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key)?.last()?.live()
    }

    /// Every key in `range` that exists as of `rev`, in key order.
    pub fn visible<'a>(
        &'a self,
        range: &KeyRange<'a>,
        rev: i64,
    ) -> impl Iterator<Item = &'a KeyValue> + 'a {
        let (single, span) = match *range {
            KeyRange::Single(key) => (self.keys.get_key_value(key), None),
            _ => (None, Some(self.keys.range::<_, [u8]>(range.bounds()))),
        };
        single
            .into_iter()
            .chain(span.into_iter().flatten())
            .filter_map(move |(_, versions)| visible(versions, rev))
    }

    /// Write `key`; `None` keeps the key's current value or lease (which the caller has
    /// checked exists). Returns the new version and the one it replaced, if any.
    pub fn put(
        &mut self,
        key: Bytes,
        value: Option<Bytes>,
        lease: Option<i64>,
    ) -> (KeyValue, Option<KeyValue>) {
        let main = self.revision + 1;
        let sub = self.next_sub();
        // Share the index's copy of a known key: cloning a freshly decoded `Bytes` costs an
        // allocation, and a put is the hot path of every replica. One lookup finds both.
        let Some((known, versions)) = self.keys.get_key_value_mut(&key) else {
            // A new key: one more walk of the index, to insert it with its version.
            let (kv, version) = new_version(key.clone(), main, sub, None, value, lease);
            self.bytes += version.cost();
            self.keys.insert(key.clone(), vec![version]);
            self.log(main, sub, key);
            return (kv, None);
        };
        let key = known.clone();
        let prev = versions.last().and_then(Version::live).cloned();
        let (kv, version) = new_version(key.clone(), main, sub, prev.as_ref(), value, lease);
        self.bytes += version.cost();
        versions.push(version);
        self.log(main, sub, key);
        (kv, prev)
    }

    /// Delete `key` if it exists. Returns the tombstone and the deleted version.
    pub fn delete(&mut self, key: &[u8]) -> Option<(KeyValue, KeyValue)> {
        let main = self.revision + 1;
        let sub = self.pending;
        let (key, versions) = self.keys.get_key_value_mut(key)?;
        let prev = versions.last()?.live()?.clone();
        let key = key.clone();
        let tombstone = KeyValue {
            key: key.clone(),
            mod_revision: main,
            ..KeyValue::default()
        };
        let version = Version {
            sub,
            deleted: true,
            kv: tombstone.clone(),
        };
        let cost = version.cost();
        versions.push(version);
        self.pending += 1; // what `next_sub` does, once the borrow of `versions` allows
        self.bytes += cost;
        self.log(main, sub, key);
        Some((tombstone, prev))
    }

    fn next_sub(&mut self) -> u32 {
        let sub = self.pending;
        self.pending += 1;
        sub
    }

    fn log(&mut self, main: i64, sub: u32, key: Bytes) {
        self.changes.push_back(Change { main, sub, key });
    }

    /// End the write in progress. Returns whether it changed anything (and so took a
    /// revision).
    pub fn finish(&mut self) -> bool {
        if self.pending == 0 {
            return false;
        }
        self.revision += 1;
        self.pending = 0;
        true
    }

    /// Drop the history before `rev`. Reads at `rev` and later, and the events from `rev`
    /// on (with their previous versions), stay available.
    pub fn compact(&mut self, rev: i64) -> Result<(), KvError> {
        if rev <= self.compact_revision {
            return Err(KvError::Compacted);
        }
        if rev > self.revision {
            return Err(KvError::FutureRevision);
        }
        self.compact_revision = rev;
        let mut freed = 0;
        // Only keys with history to drop are touched: the others stay shared with any
        // snapshot being taken.
        let trimmed: Vec<(Bytes, usize)> = self
            .keys
            .iter()
            .filter_map(|(key, versions)| {
                let keep_from = compacted_prefix(versions, rev);
                (keep_from > 0).then(|| (key.clone(), keep_from))
            })
            .collect();
        for (key, keep_from) in trimmed {
            let versions = self.keys.get_mut(&key).expect("listed above");
            freed += versions.drain(..keep_from).map(|v| v.cost()).sum::<u64>();
            if versions.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.bytes -= freed;
        let first_kept = self.changes.partition_point(|c| c.main < rev);
        self.changes.drain(..first_kept);
        Ok(())
    }

    /// The version a change made, and the version before it if the key then existed.
    pub fn change(&self, change: &Change) -> Option<(&Version, Option<&KeyValue>)> {
        let versions = self.keys.get(&change.key)?;
        let at = versions.partition_point(|v| v.order() < (change.main, change.sub));
        let version = versions
            .get(at)
            .filter(|v| v.order() == (change.main, change.sub))?;
        let prev = at.checked_sub(1).and_then(|p| versions[p].live());
        Some((version, prev))
    }
}

/// How many of a key's oldest versions a compaction at `rev` drops. The last version
/// before `rev` stays, unless it was a deletion: it is what reads at `rev` see and the
/// previous value of the first event from `rev`.
fn compacted_prefix(versions: &[Version], rev: i64) -> usize {
    let first_kept = versions.partition_point(|v| v.main() < rev);
    match first_kept.checked_sub(1) {
        Some(last_before) if !versions[last_before].deleted => last_before,
        _ => first_kept,
    }
}

/// The version a put at (`main`, `sub`) writes over `prev`, the key's live version if
/// any (`None` keeps its value or lease), and the key-value it shows.
fn new_version(
    key: Bytes,
    main: i64,
    sub: u32,
    prev: Option<&KeyValue>,
    value: Option<Bytes>,
    lease: Option<i64>,
) -> (KeyValue, Version) {
    let (create_revision, version) = match prev {
        Some(p) => (p.create_revision, p.version + 1),
        None => (main, 1),
    };
    let kv = KeyValue {
        key,
        create_revision,
        mod_revision: main,
        version,
        value: value
            .or_else(|| prev.map(|p| p.value.clone()))
            .unwrap_or_default(),
        lease: lease.or_else(|| prev.map(|p| p.lease)).unwrap_or_default(),
    };
    let version = Version {
        sub,
        deleted: false,
        kv: kv.clone(),
    };
    (kv, version)
}

/// The latest version at or before `rev`, if it is not a deletion.
fn visible(versions: &[Version], rev: i64) -> Option<&KeyValue> {
    if let Some(last) = versions.last()
        && last.main() <= rev
    {
        return last.live(); // the common case: reading the present
    }
    let after = versions.partition_point(|v| v.main() <= rev);
    versions[..after].last()?.live()
}
