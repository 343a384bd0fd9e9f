//! Compaction: what it keeps, what it drops, and its errors.

use ekmat_kv::*;

use crate::harness::{Harness, b};

/// a=1@2 b=1@3 a=2@4 del b@5 c=1@6 a=3@7
fn history() -> Harness {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("b", "1");
    h.put("a", "2");
    h.delete("b", "");
    h.put("c", "1");
    h.put("a", "3");
    assert_eq!(h.kv.revision(), 7);
    h
}

#[test]
fn reads_before_the_compaction_point_fail_and_from_it_on_work() {
    let mut h = history();
    let resp = h.compact(4).unwrap();
    assert_eq!(resp.header.revision, 7, "compaction takes no revision");
    assert_eq!(h.kv.compact_revision(), 4);
    for rev in 1..4 {
        let req = RangeRequest {
            revision: rev,
            ..RangeRequest::range(b("a"), b("\0"))
        };
        assert_eq!(h.kv.range(&req), Err(KvError::Compacted), "rev {rev}");
    }
    assert_eq!(
        KvError::Compacted.to_string(),
        "mvcc: required revision has been compacted"
    );
    // At the compaction point, the state as of that revision is intact.
    assert_eq!(h.get_at("a", 4).unwrap().value, b("2"));
    assert_eq!(h.get_at("b", 4).unwrap().value, b("1"));
    assert_eq!(h.get_at("b", 5), None);
    assert_eq!(h.get_at("a", 6).unwrap().value, b("2"));
    assert_eq!(h.value("a").as_deref(), Some("3"));
    // Versions and create revisions survive compaction.
    let a = h.get("a").unwrap();
    assert_eq!((a.create_revision, a.version), (2, 3));
}

#[test]
fn compacted_history_is_gone() {
    let mut h = history();
    let before = h.kv.snapshot().len();
    h.compact(6).unwrap();
    // Deleted keys leave nothing behind, and superseded versions are dropped.
    assert!(h.kv.snapshot().len() < before);
    assert_eq!(
        h.kv.events_between(1, b"\0", b"\0"),
        Err(KvError::Compacted)
    );
    let events = h.kv.events_between(6, b"\0", b"\0").unwrap();
    let revs: Vec<i64> = events.iter().map(Event::revision).collect();
    assert_eq!(revs, [6, 7]);
    // The event at the compaction point still knows what it replaced.
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b("2"));
    // Compacting at the head leaves the live keys and the last event.
    h.compact(7).unwrap();
    let events = h.kv.events_between(7, b"\0", b"\0").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kv.value, b("3"));
    assert_eq!(h.list("\0", "\0"), ["a", "c"]);
}

#[test]
fn compaction_errors() {
    let mut h = history();
    assert_eq!(h.compact(8).map(|_| ()), Err(KvError::FutureRevision));
    h.compact(5).unwrap();
    assert_eq!(h.compact(5).map(|_| ()), Err(KvError::Compacted));
    assert_eq!(h.compact(3).map(|_| ()), Err(KvError::Compacted));
    h.compact(7).unwrap();
    assert_eq!(h.kv.compact_revision(), 7);
    assert_eq!(h.kv.revision(), 7);
}

#[test]
fn writes_after_compaction_continue_the_history() {
    let mut h = history();
    h.compact(7).unwrap();
    h.put("b", "2");
    let b_kv = h.get("b").unwrap();
    assert_eq!((b_kv.create_revision, b_kv.version), (8, 1));
    h.put("a", "4");
    let a = h.get("a").unwrap();
    assert_eq!((a.create_revision, a.version, a.mod_revision), (2, 4, 9));
    assert_eq!(h.get_at("a", 7).unwrap().value, b("3"));
}
