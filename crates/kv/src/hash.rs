//! A hash of the replicated state for comparing replicas. Hand-rolled rather than
//! `std`'s hashers, whose output may change between Rust releases and whose integer
//! hashing follows the platform's byte order: replicas built differently must agree.

use std::collections::BTreeMap;

use bytes::Bytes;
use imbl::OrdMap;

use crate::alarm::AlarmMember;
use crate::session::Session;

use crate::error::KvError;
use crate::mvcc::Version;
use crate::store::KvStore;

/// Word-at-a-time multiplicative hashing (FxHash's step) with a final avalanche. Not
/// collision resistant against an adversary; replicas are not adversaries.
struct StableHasher(u64);

const SEED: u64 = 0x6b76_2d68_6173_6831; // "kv-hash1"
const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl StableHasher {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }

    fn int(&mut self, i: i64) {
        self.word(i as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        let mut chunks = b.chunks_exact(8);
        for chunk in &mut chunks {
            self.word(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last));
        }
    }

    fn finish(&self) -> u64 {
        // splitmix64's finalizer, so every input bit reaches every output bit.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn version(h: &mut StableHasher, v: &Version) {
    h.word(u64::from(v.sub) << 1 | u64::from(v.deleted));
    h.int(v.kv.create_revision);
    h.int(v.kv.mod_revision);
    h.int(v.kv.version);
    h.int(v.kv.lease);
    h.bytes(&v.kv.value);
}

/// What etcd's HashKV reads: the key history and the revisions bounding it. Taken from
/// a store in O(1) (the key index is a persistent map), so the hashing, which visits
/// every retained version, can run on another thread while the store moves on.
#[derive(Clone)]
pub struct KeyHistory {
    keys: OrdMap<Bytes, Vec<Version>>,
    revision: i64,
    compact_revision: i64,
}

impl KeyHistory {
    pub(crate) fn of(store: &KvStore) -> KeyHistory {
        KeyHistory {
            keys: store.mvcc.keys.clone(),
            revision: store.mvcc.revision,
            compact_revision: store.mvcc.compact_revision,
        }
    }

    /// The store's revision when this was taken.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The store's compaction revision when this was taken.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// etcd's HashKV: a hash of every key version held with a revision at or below
    /// `revision` (0: the current one), for comparing members' data. Returns the hash
    /// folded to 32 bits and the revision it covers.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), KvError> {
        let upto = if revision <= 0 {
            self.revision
        } else {
            revision
        };
        if upto > self.revision {
            return Err(KvError::FutureRevision);
        }
        if upto < self.compact_revision {
            return Err(KvError::Compacted);
        }
        let mut h = StableHasher(SEED);
        h.int(self.compact_revision);
        for (key, versions) in &self.keys {
            let held: Vec<&Version> = versions
                .iter()
                .filter(|v| v.kv.mod_revision <= upto)
                .collect();
            if held.is_empty() {
                continue;
            }
            h.bytes(key);
            for v in held {
                version(&mut h, v);
            }
        }
        let full = h.finish();
        Ok((fold(full), upto))
    }
}

/// A 64-bit hash folded to the 32 bits etcd's hash answers carry.
pub(crate) fn fold(full: u64) -> u32 {
    (full ^ (full >> 32)) as u32
}

/// The parts of the replicated state [`hash`] covers, borrowed from a store or from a
/// snapshot's source (which hashes the same, away from the store).
pub(crate) struct StateParts<'a, L, A> {
    pub revision: i64,
    pub compact_revision: i64,
    pub clock_ms: u64,
    pub last_lease_id: i64,
    pub keys: &'a OrdMap<Bytes, Vec<Version>>,
    /// (id, ttl, deadline in ms) per lease, in id order.
    pub leases: L,
    pub sessions: &'a BTreeMap<u64, Session>,
    /// Raised alarms, in order.
    pub alarms: A,
    pub auth: &'a crate::auth::AuthState,
}

pub(crate) fn hash(store: &KvStore) -> u64 {
    hash_parts(StateParts {
        revision: store.mvcc.revision,
        compact_revision: store.mvcc.compact_revision,
        clock_ms: store.clock_ms,
        last_lease_id: store.leases.last_assigned,
        keys: &store.mvcc.keys,
        leases: store
            .leases
            .by_id
            .iter()
            .map(|(&id, l)| (id, l.ttl, l.deadline_ms)),
        sessions: &store.sessions.by_client,
        alarms: store.alarms.active.iter().copied(),
        auth: &store.auth,
    })
}

pub(crate) fn hash_parts<L, A>(parts: StateParts<'_, L, A>) -> u64
where
    L: ExactSizeIterator<Item = (i64, i64, u64)>,
    A: ExactSizeIterator<Item = AlarmMember>,
{
    let mut h = StableHasher(SEED);
    h.int(parts.revision);
    h.int(parts.compact_revision);
    h.word(parts.clock_ms);
    h.int(parts.last_lease_id);
    h.word(parts.keys.len() as u64);
    for (key, versions) in parts.keys {
        h.bytes(key);
        h.word(versions.len() as u64);
        for v in versions {
            version(&mut h, v);
        }
    }
    h.word(parts.leases.len() as u64);
    for (id, ttl, deadline_ms) in parts.leases {
        h.int(id);
        h.int(ttl);
        h.word(deadline_ms);
    }
    h.word(parts.sessions.len() as u64);
    for (&client, session) in parts.sessions {
        h.word(client);
        h.word(session.seq);
        // Results are small and rare next to the data; their encoding is canonical.
        let result = postcard::to_stdvec(&session.result).expect("results always serialize");
        h.bytes(&result);
    }
    // Only when raised, so stores without alarms hash as they did before alarms existed.
    if parts.alarms.len() > 0 {
        h.word(parts.alarms.len() as u64);
        for a in parts.alarms {
            h.word(a.member_id);
            h.word(a.alarm as u64);
        }
    }
    // Likewise only once auth was ever touched; its encoding is canonical (ordered maps).
    if *parts.auth != crate::auth::AuthState::default() {
        let auth = postcard::to_stdvec(parts.auth).expect("auth state always serializes");
        h.bytes(&auth);
    }
    h.finish()
}
