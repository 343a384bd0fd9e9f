//! One watcher of a watch stream: what it watches, how its events are filtered, and how
//! far it has got. Turning events into `WatchResponse`s lives here too.

use bytes::Bytes;
use ekmat_api::{etcdserverpb as pb, mvccpb};
use ekmat_kv::{Event, EventKind, KeyRange};

use super::convert::key_value;

/// Events per response when replaying history (etcd batches history too).
const MAX_HISTORY_EVENTS: usize = 1000;
/// Roughly the most key and value bytes per history response, well under the 4 MiB
/// that many gRPC clients accept by default.
const MAX_HISTORY_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub(super) struct Watcher {
    key: Bytes,
    range_end: Bytes,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    pub progress_notify: bool,
    /// The first revision this watcher has not been sent yet.
    pub next_rev: i64,
    /// Whether events went out since the last progress notification (which they make
    /// unnecessary, as in etcd).
    pub sent_since_progress: bool,
}

impl Watcher {
    /// A watcher from a create request, with etcd's key conventions: an empty key is
    /// `"\0"`, the smallest key (so `key = "", range_end = "\0"` watches everything).
    pub fn new(c: &pb::WatchCreateRequest, next_rev: i64) -> Watcher {
        let key = if c.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            Bytes::copy_from_slice(&c.key)
        };
        // Unknown filter values are ignored, as etcd does.
        let has = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
        Watcher {
            key,
            range_end: Bytes::copy_from_slice(&c.range_end),
            no_put: has(pb::watch_create_request::FilterType::Noput),
            no_delete: has(pb::watch_create_request::FilterType::Nodelete),
            prev_kv: c.prev_kv,
            progress_notify: c.progress_notify,
            next_rev,
            sent_since_progress: false,
        }
    }

    pub fn key(&self) -> &Bytes {
        &self.key
    }

    pub fn range_end(&self) -> &Bytes {
        &self.range_end
    }

    /// Whether `e` is for this watcher: new to it, on its keys, not filtered out.
    fn wants(&self, e: &Event) -> bool {
        let filtered = match e.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        e.revision() >= self.next_rev
            && !filtered
            && KeyRange::new(&self.key, &self.range_end).contains(&e.kv.key)
    }

    fn event(&self, e: &Event) -> mvccpb::Event {
        let kind = match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put,
            EventKind::Delete => mvccpb::event::EventType::Delete,
        };
        mvccpb::Event {
            r#type: kind as i32,
            kv: Some(key_value(e.kv.clone())),
            prev_kv: e.prev_kv.clone().filter(|_| self.prev_kv).map(key_value),
        }
    }

    /// This watcher's share of live `events` (one applied entry's, in revision order):
    /// one `(revision, events)` group per revision, as etcd notifies per revision. Moves
    /// the watcher past them, wanted or not.
    pub fn take_live(&mut self, events: &[Event]) -> Vec<(i64, Vec<mvccpb::Event>)> {
        let mut groups: Vec<(i64, Vec<mvccpb::Event>)> = Vec::new();
        for e in events.iter().filter(|e| self.wants(e)) {
            match groups.last_mut() {
                Some((rev, group)) if *rev == e.revision() => group.push(self.event(e)),
                _ => groups.push((e.revision(), vec![self.event(e)])),
            }
        }
        if let Some(last) = events.last() {
            self.passed(last.revision());
        }
        groups
    }

    /// This watcher's share of `history` (read at store revision `revision`), in
    /// batches of bounded size. Moves the watcher past `revision`.
    pub fn take_history(&mut self, history: &[Event], revision: i64) -> Vec<Vec<mvccpb::Event>> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0;
        for e in history.iter().filter(|e| self.wants(e)) {
            let size = e.kv.key.len() + e.kv.value.len();
            if !batch.is_empty()
                && (batch.len() >= MAX_HISTORY_EVENTS || bytes + size > MAX_HISTORY_BYTES)
            {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.push(self.event(e));
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        self.passed(revision);
        batches
    }

    /// Everything up to `revision` has been considered.
    fn passed(&mut self, revision: i64) {
        self.next_rev = self.next_rev.max(revision + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekmat_kv::KeyValue;

    fn event(kind: EventKind, key: &str, rev: i64) -> Event {
        Event {
            kind,
            kv: KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev_kv: Some(KeyValue::default()),
        }
    }

    fn create(key: &str, range_end: &str) -> pb::WatchCreateRequest {
        pb::WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn live_events_are_grouped_per_revision_and_never_repeated() {
        let mut w = Watcher::new(&create("a", "\0"), 3);
        let events = [
            event(EventKind::Put, "old", 2),
            event(EventKind::Delete, "a", 3),
            event(EventKind::Delete, "b", 3),
            event(EventKind::Put, "c", 4),
        ];
        let groups = w.take_live(&events);
        let shape: Vec<(i64, usize)> = groups.iter().map(|(r, g)| (*r, g.len())).collect();
        assert_eq!(shape, [(3, 2), (4, 1)]);
        assert_eq!(w.next_rev, 5);
        assert!(w.take_live(&events).is_empty(), "already delivered");
        assert!(groups[0].1[0].prev_kv.is_none(), "prev_kv only when asked");
    }

    #[test]
    fn filters_keys_and_prev_kv() {
        let mut c = create("", "\0");
        c.filters = vec![pb::watch_create_request::FilterType::Noput as i32, 99];
        c.prev_kv = true;
        let mut w = Watcher::new(&c, 1);
        let events = [
            event(EventKind::Put, "x", 1),
            event(EventKind::Delete, "y", 2),
        ];
        let groups = w.take_live(&events);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].0, 2);
        assert!(groups[0].1[0].prev_kv.is_some());

        let mut single = Watcher::new(&create("x", ""), 1);
        assert_eq!(single.take_live(&events).len(), 1);
        let mut prefix = Watcher::new(&create("a", "b"), 1);
        assert!(prefix.take_live(&events).is_empty());
    }

    #[test]
    fn history_is_batched_and_moves_the_watcher_past_its_revision() {
        let mut w = Watcher::new(&create("k", ""), 1);
        let history: Vec<Event> = (1..=2500).map(|r| event(EventKind::Put, "k", r)).collect();
        let batches = w.take_history(&history, 2600);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(w.next_rev, 2601);
    }
}
