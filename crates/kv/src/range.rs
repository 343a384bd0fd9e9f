//! Key ranges with etcd's conventions, and range reads: revision, filters, sort, limit.

use std::cmp::Ordering;
use std::ops::Bound;

use bytes::Bytes;

use crate::error::KvError;
use crate::mvcc::Mvcc;
use crate::rpc::{KeyValue, RangeRequest, RangeResponse, ResponseHeader, SortOrder, SortTarget};

/// The `range_end` that makes a request cover every key starting with `prefix` (etcd's
/// prefix end: the prefix with its last byte below 0xff incremented and the rest cut).
/// A prefix of only 0xff bytes (or the empty one) has no such end: the answer is `"\0"`,
/// meaning every key from `prefix` on.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            Bytes::from(end)
        }
        None => Bytes::from_static(b"\0"),
    }
}

/// The keys a `(key, range_end)` pair names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// `range_end` empty: just the key.
    Single(&'a [u8]),
    /// `range_end == "\0"`: every key from `key` on (with `key == "\0"`, every key).
    From(&'a [u8]),
    /// `[key, range_end)`; empty if `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(start, end) => start <= k && k < end,
        }
    }

    /// The entries of `map` whose keys are in the range.
    /// The bounds of the keys in this range, for a map's `range`.
    pub fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeyRange::Single(key) => (Bound::Included(key), Bound::Included(key)),
            KeyRange::From(key) => (Bound::Included(key), Bound::Unbounded),
            // `BTreeMap::range` panics on reversed bounds: an inverted range is empty.
            KeyRange::Between(start, end) if end <= start => {
                (Bound::Included(start), Bound::Excluded(start))
            }
            KeyRange::Between(start, end) => (Bound::Included(start), Bound::Excluded(end)),
        }
    }
}

/// Serve a range read against the current state (or the write in progress).
pub(crate) fn range(mvcc: &Mvcc, req: &RangeRequest) -> Result<RangeResponse, KvError> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    let rev = mvcc.resolve(req.revision)?;
    let keys = KeyRange::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let order = match (req.sort_target, req.sort_order) {
        (SortTarget::Key, order) => order,
        // etcd sorts by any other target ascending unless told otherwise.
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    let reordered = req.sort_target != SortTarget::Key || order == SortOrder::Descend;
    let limit = usize::try_from(req.limit).unwrap_or(0);
    // In key order without filters, one past the limit is enough to know there is more.
    let keep = if req.count_only {
        0
    } else if limit > 0 && !filtered && !reordered {
        limit + 1
    } else {
        usize::MAX
    };
    let mut count = 0i64;
    let mut kvs = Vec::new();
    for kv in mvcc.visible(&keys, rev) {
        count += 1;
        if kvs.len() < keep {
            kvs.push(kv.clone());
        }
    }
    if filtered {
        kvs.retain(|kv| passes_filters(req, kv));
    }
    if reordered {
        sort(&mut kvs, req.sort_target, order);
    }
    let more = limit > 0 && kvs.len() > limit;
    if more {
        kvs.truncate(limit);
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(RangeResponse {
        header: ResponseHeader {
            revision: mvcc.read_revision(),
        },
        kvs,
        more,
        count,
    })
}

fn passes_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    let above = |v: i64, min: i64| min == 0 || v >= min;
    let below = |v: i64, max: i64| max == 0 || v <= max;
    above(kv.mod_revision, req.min_mod_revision)
        && below(kv.mod_revision, req.max_mod_revision)
        && above(kv.create_revision, req.min_create_revision)
        && below(kv.create_revision, req.max_create_revision)
}

/// Sort `kvs` (in key order) by `target`; stable, so ties stay in key order.
fn sort(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
        _ => kvs.sort_by(by),
    }
}
