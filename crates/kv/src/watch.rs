//! The data side of watches: the events each change produces, and the history of events
//! from a past revision so a watch can start there or resume after a disconnect.

use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::mvcc::Mvcc;
use crate::range::KeyRange;
use crate::rpc::KeyValue;

/// etcd's `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key (etcd's `mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// A put's new version; for a delete, the key and the deleting revision
    /// (`mod_revision`), everything else zero.
    pub kv: KeyValue,
    /// The version before the change, if the key existed. Always filled in; a watch that
    /// did not ask for it drops it.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision the change happened at.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// Every event at revision `from` or later on keys in `(key, range_end)`, in order.
/// A watch may start at the compaction point itself, as in etcd; earlier is an error.
pub(crate) fn events_between(
    mvcc: &Mvcc,
    from: i64,
    key: &[u8],
    range_end: &[u8],
) -> Result<Vec<Event>, KvError> {
    if from < mvcc.compact_revision {
        return Err(KvError::Compacted);
    }
    let keys = KeyRange::new(key, range_end);
    let first = mvcc.changes.partition_point(|c| c.main < from);
    let events = mvcc
        .changes
        .range(first..)
        .filter(|c| keys.contains(&c.key))
        .map(|c| {
            let (version, prev) = mvcc
                .change(c)
                .expect("every logged change is in the key's history");
            Event {
                kind: if version.deleted {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                kv: version.kv.clone(),
                prev_kv: prev.cloned(),
            }
        })
        .collect();
    Ok(events)
}
