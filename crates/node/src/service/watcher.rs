//! One watcher of a watch stream: what it watches, how its events are filtered, and how
//! far it has got. Turning events into `WatchResponse`s lives here too.

use bytes::Bytes;
use ekmat_api::{etcdserverpb as pb, mvccpb};
use ekmat_kv::{Event, EventKind, KeyRange};
use prost::Message;

use super::convert::key_value;

/// Revisions per response when replaying history, as in etcd (`watchBatchMaxRevs`).
const MAX_HISTORY_REVISIONS: usize = 1000;
/// Roughly the most key and value bytes per history response, well under the 4 MiB
/// that many gRPC clients accept by default (etcd has no such bound). Responses are
/// only ever cut between revisions, as etcd cuts them past 1,000 revisions: a client
/// sees each revision's events together, and one revision larger than this goes whole.
const MAX_HISTORY_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub(super) struct Watcher {
    key: Bytes,
    range_end: Bytes,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    pub progress_notify: bool,
    /// Whether responses past etcd's fragment size (its request size limit plus 512
    /// KiB) go out in fragments.
    pub fragment: bool,
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
            fragment: c.fragment,
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
        let groups = self.per_revision(events);
        if let Some(last) = events.last() {
            self.passed(last.revision());
        }
        groups
    }

    /// This watcher's share of `history` (read at store revision `revision`), in
    /// batches of whole revisions, bounded in revisions and bytes. Moves the watcher
    /// past `revision`.
    pub fn take_history(&mut self, history: &[Event], revision: i64) -> Vec<Vec<mvccpb::Event>> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let (mut revisions, mut bytes) = (0, 0);
        for (_, group) in self.per_revision(history) {
            let size: usize = group.iter().map(payload).sum();
            if revisions > 0
                && (revisions >= MAX_HISTORY_REVISIONS || bytes + size > MAX_HISTORY_BYTES)
            {
                batches.push(std::mem::take(&mut batch));
                (revisions, bytes) = (0, 0);
            }
            revisions += 1;
            bytes += size;
            batch.extend(group);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        self.passed(revision);
        batches
    }

    /// The events this watcher wants, grouped by revision.
    fn per_revision(&self, events: &[Event]) -> Vec<(i64, Vec<mvccpb::Event>)> {
        let mut groups: Vec<(i64, Vec<mvccpb::Event>)> = Vec::new();
        for e in events.iter().filter(|e| self.wants(e)) {
            match groups.last_mut() {
                Some((rev, group)) if *rev == e.revision() => group.push(self.event(e)),
                _ => groups.push((e.revision(), vec![self.event(e)])),
            }
        }
        groups
    }

    /// Everything up to `revision` has been considered.
    fn passed(&mut self, revision: i64) {
        self.next_rev = self.next_rev.max(revision + 1);
    }
}

/// The key and value bytes an event carries (its previous version's too).
fn payload(e: &mvccpb::Event) -> usize {
    [&e.kv, &e.prev_kv]
        .into_iter()
        .flatten()
        .map(|kv| kv.key.len() + kv.value.len())
        .sum()
}

/// etcd's fragmentation, for a watcher that asked for it: a response of `limit` bytes
/// or more (encoded) with several events goes out in pieces of fewer than `limit`
/// bytes each (a piece of one event may be larger), every piece but the last marked
/// `fragment`, for the client to join. Anything else goes out as it is.
pub fn fragments(mut resp: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    if resp.events.len() < 2 || resp.encoded_len() < limit {
        return vec![resp];
    }
    let events = std::mem::take(&mut resp.events);
    let template = pb::WatchResponse {
        fragment: true,
        ..resp
    };
    let empty = template.encoded_len();
    let mut pieces = Vec::new();
    let mut piece = template.clone();
    let mut size = empty;
    for event in events {
        let grown = prost::encoding::message::encoded_len(EVENTS_TAG, &event);
        if !piece.events.is_empty() && size + grown >= limit {
            pieces.push(std::mem::replace(&mut piece, template.clone()));
            size = empty;
        }
        size += grown;
        piece.events.push(event);
    }
    piece.fragment = false;
    pieces.push(piece);
    pieces
}

/// `WatchResponse.events`' field number.
const EVENTS_TAG: u32 = 11;

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
            key: key.as_bytes().to_vec().into(),
            range_end: range_end.as_bytes().to_vec().into(),
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

    fn valued(key: &str, rev: i64, value_len: usize) -> Event {
        let mut e = event(EventKind::Put, key, rev);
        e.kv.value = Bytes::from(vec![b'v'; value_len]);
        e
    }

    fn revisions(batch: &[mvccpb::Event]) -> Vec<i64> {
        let mut revs: Vec<i64> = batch
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        revs.dedup();
        revs
    }

    #[test]
    fn history_is_batched_by_whole_revisions_and_moves_the_watcher_past_its_revision() {
        let mut w = Watcher::new(&create("k", "l"), 1);
        // Two keys per revision: 2,500 revisions, 5,000 events.
        let history: Vec<Event> = (1..=2500)
            .flat_map(|r| {
                [
                    event(EventKind::Put, "k1", r),
                    event(EventKind::Put, "k2", r),
                ]
            })
            .collect();
        let batches = w.take_history(&history, 2600);
        let shape: Vec<usize> = batches.iter().map(|b| revisions(b).len()).collect();
        assert_eq!(
            shape,
            [1000, 1000, 500],
            "1,000 revisions per response, as etcd"
        );
        assert!(batches.iter().all(|b| b.len() == 2 * revisions(b).len()));
        assert_eq!(w.next_rev, 2601);
    }

    #[test]
    fn a_byte_bound_cuts_history_between_revisions_never_inside_one() {
        let mut w = Watcher::new(&create("k", "l"), 1);
        // Revision 2 alone is bigger than the bound: it goes whole, in one response.
        let big = MAX_HISTORY_BYTES / 4 + 1;
        let mut history = vec![valued("k0", 1, 10)];
        history.extend((0..6).map(|i| valued(&format!("k{i}"), 2, big)));
        history.push(valued("k0", 3, 10));
        let batches = w.take_history(&history, 3);
        let shape: Vec<Vec<i64>> = batches.iter().map(|b| revisions(b)).collect();
        assert_eq!(shape, [vec![1], vec![2], vec![3]]);
        assert_eq!(batches[1].len(), 6);
    }

    fn response(events: usize, value_len: usize) -> pb::WatchResponse {
        let w = Watcher::new(&create("k", "l"), 1);
        pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 3,
            events: (0..events)
                .map(|i| w.event(&valued(&format!("k{i}"), 9, value_len)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_large_response_goes_out_in_fragments_under_the_limit_that_join_up_again() {
        let limit = 10_000;
        let whole = response(25, 1_000);
        let pieces = fragments(whole.clone(), limit);
        assert_eq!(pieces.len(), 3);
        let flags: Vec<bool> = pieces.iter().map(|p| p.fragment).collect();
        assert_eq!(flags, [true, true, false], "all but the last are fragments");
        for p in &pieces {
            assert!(p.encoded_len() < limit, "{} bytes", p.encoded_len());
            assert_eq!((p.watch_id, p.header), (3, whole.header));
        }
        // Each piece but the last is as full as the limit allows.
        for (p, next) in pieces.iter().zip(&pieces[1..]) {
            let mut fuller = p.clone();
            fuller.events.push(next.events[0].clone());
            assert!(fuller.encoded_len() >= limit);
        }
        let joined: Vec<mvccpb::Event> = pieces.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, whole.events);
    }

    #[test]
    fn small_responses_and_single_events_are_never_fragmented() {
        let small = response(3, 10);
        assert_eq!(fragments(small.clone(), 10_000), [small]);
        let one_big = response(1, 50_000);
        assert_eq!(fragments(one_big.clone(), 10_000), [one_big]);
        // Two events that each exceed the limit: one per piece.
        let pieces = fragments(response(2, 50_000), 10_000);
        let shape: Vec<(usize, bool)> = pieces
            .iter()
            .map(|p| (p.events.len(), p.fragment))
            .collect();
        assert_eq!(shape, [(1, true), (1, false)]);
    }
}
