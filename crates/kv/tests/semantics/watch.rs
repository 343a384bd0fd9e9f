//! Watch events: what each apply reports, and the history a watch starts or resumes from.

use ekmat_kv::*;

use crate::harness::{Harness, b};

fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let prev = match &e.prev_kv {
                Some(p) => format!(" (was {})", p.value.escape_ascii()),
                None => String::new(),
            };
            let kind = match e.kind {
                EventKind::Put => "put",
                EventKind::Delete => "del",
            };
            format!(
                "{}@{} {kind} {}={}{prev}",
                e.kv.key.escape_ascii(),
                e.revision(),
                e.kv.key.escape_ascii(),
                e.kv.value.escape_ascii()
            )
        })
        .collect()
}

/// foo=1@2 bar=1@3 foo=2@4 del foo@5 txn{baz=1, bar=2}@6
fn history() -> (Harness, Vec<Event>) {
    let mut h = Harness::new();
    let mut all = Vec::new();
    let mut run = |h: &mut Harness, c| all.extend(h.run(c).1);
    run(&mut h, Command::Put(PutRequest::new(b("foo"), b("1"))));
    run(&mut h, Command::Put(PutRequest::new(b("bar"), b("1"))));
    run(&mut h, Command::Put(PutRequest::new(b("foo"), b("2"))));
    run(
        &mut h,
        Command::DeleteRange(DeleteRangeRequest::new(b("foo"))),
    );
    let txn = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest::new(b("baz"), b("1"))),
            RequestOp::Put(PutRequest::new(b("bar"), b("2"))),
        ],
        ..TxnRequest::default()
    };
    run(&mut h, Command::Txn(txn));
    (h, all)
}

#[test]
fn every_apply_reports_its_events_with_previous_versions() {
    let (_, events) = history();
    assert_eq!(
        summary(&events),
        [
            "foo@2 put foo=1",
            "bar@3 put bar=1",
            "foo@4 put foo=2 (was 1)",
            "foo@5 del foo= (was 2)",
            "baz@6 put baz=1",
            "bar@6 put bar=2 (was 1)",
        ]
    );
    // A delete event carries the key and the deleting revision only.
    let del = &events[3];
    assert_eq!(
        (del.kv.create_revision, del.kv.version, del.kv.lease),
        (0, 0, 0)
    );
    let created = &events[0];
    assert_eq!((created.kv.version, created.kv.create_revision), (1, 2));
}

#[test]
fn history_from_a_revision_matches_what_applies_reported() {
    let (h, events) = history();
    for from in 0..=7 {
        let expected: Vec<Event> = events
            .iter()
            .filter(|e| e.revision() >= from)
            .cloned()
            .collect();
        assert_eq!(h.kv.events_between(from, b"\0", b"\0").unwrap(), expected);
    }
    assert!(h.kv.events_between(100, b"\0", b"\0").unwrap().is_empty());
}

#[test]
fn history_is_filtered_by_key_range() {
    let (h, _) = history();
    let foo = h.kv.events_between(1, b"foo", b"").unwrap();
    assert_eq!(
        summary(&foo),
        [
            "foo@2 put foo=1",
            "foo@4 put foo=2 (was 1)",
            "foo@5 del foo= (was 2)"
        ]
    );
    let ba = h.kv.events_between(4, b"ba", &prefix_end(b"ba")).unwrap();
    assert_eq!(summary(&ba), ["baz@6 put baz=1", "bar@6 put bar=2 (was 1)"]);
    let from_c = h.kv.events_between(1, b"c", b"\0").unwrap();
    assert_eq!(from_c.len(), 3);
}

#[test]
fn a_watch_resumes_after_a_disconnect_without_gaps() {
    let (mut h, _) = history();
    // The watcher saw up to revision 4, then lost its stream.
    let last_seen = 4;
    h.put("foo", "3");
    h.delete("bar", "");
    let resumed = h.kv.events_between(last_seen + 1, b"\0", b"\0").unwrap();
    assert_eq!(
        summary(&resumed),
        [
            "foo@5 del foo= (was 2)",
            "baz@6 put baz=1",
            "bar@6 put bar=2 (was 1)",
            "foo@7 put foo=3",
            "bar@8 del bar= (was 2)",
        ]
    );
}

#[test]
fn a_watch_can_start_at_the_compaction_point_but_not_before() {
    let (mut h, _) = history();
    h.compact(5).unwrap();
    assert_eq!(
        h.kv.events_between(4, b"\0", b"\0"),
        Err(KvError::Compacted)
    );
    let from_point = h.kv.events_between(5, b"\0", b"\0").unwrap();
    assert_eq!(
        summary(&from_point),
        [
            "foo@5 del foo= (was 2)",
            "baz@6 put baz=1",
            "bar@6 put bar=2 (was 1)",
        ]
    );
}

#[test]
fn lease_expiry_events_reach_watchers_too() {
    let mut h = Harness::new();
    h.now_ms = 1_000;
    h.grant(1, 1).unwrap();
    h.put_req(PutRequest {
        lease: 1,
        ..PutRequest::new(b("eph"), b("x"))
    })
    .unwrap();
    let expired = h.tick(2_000);
    assert_eq!(summary(&expired), ["eph@3 del eph= (was x)"]);
    assert_eq!(h.kv.events_between(3, b"eph", b"").unwrap(), expired);
}
