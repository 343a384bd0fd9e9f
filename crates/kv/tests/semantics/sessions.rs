//! At-most-once execution, malformed input, and the applied index.

use ekmat_core::RequestId;
use ekmat_kv::*;

use crate::harness::{Harness, b};

fn id(client: u64, seq: u64) -> RequestId {
    RequestId { client, seq }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest::new(b(key), b(value)))
}

#[test]
fn a_repeated_request_returns_its_recorded_result_without_running() {
    let mut h = Harness::new();
    let (first, _) = h.run_as(id(7, 1), put("k", "a"));
    let first = first.unwrap();
    assert_eq!(first.header().revision, 2);
    // A retry of the same request, even with different bytes, is not run again.
    assert_eq!(
        h.apply_as(id(7, 1), put("k", "changed")),
        Applied::Repeated(Ok(first))
    );
    assert_eq!(h.kv.revision(), 2);
    assert_eq!(h.value("k").as_deref(), Some("a"));
    // Errors are recorded too.
    let (err, _) = h.run_as(id(7, 2), put("", "x"));
    assert_eq!(err, Err(KvError::EmptyKey));
    assert_eq!(
        h.apply_as(id(7, 2), put("", "x")),
        Applied::Repeated(Err(KvError::EmptyKey))
    );
}

#[test]
fn an_older_request_is_superseded() {
    let mut h = Harness::new();
    let _ = h.run_as(id(7, 1), put("k", "a"));
    let _ = h.run_as(id(7, 2), put("k", "b"));
    assert_eq!(h.apply_as(id(7, 1), put("k", "a")), Applied::Superseded);
    assert_eq!(h.value("k").as_deref(), Some("b"));
    // Other clients are independent.
    let (r, _) = h.run_as(id(8, 1), put("k", "c"));
    assert!(r.is_ok());
}

#[test]
fn anonymous_requests_are_never_deduplicated() {
    let mut h = Harness::new();
    for _ in 0..3 {
        let (r, _) = h.run_as(id(ANONYMOUS_CLIENT, 1), put("k", "a"));
        assert!(r.is_ok());
    }
    assert_eq!(h.get("k").unwrap().version, 3);
}

#[test]
fn repeated_and_superseded_requests_do_not_move_the_clock() {
    let mut h = Harness::new();
    let _ = h.run_as(id(7, 1), put("k", "a"));
    let _ = h.run_as(id(7, 2), put("k", "b"));
    h.now_ms = 50_000;
    h.apply_as(id(7, 2), put("k", "b"));
    h.apply_as(id(7, 1), put("k", "a"));
    assert_eq!(h.kv.clock_ms(), 0);
}

#[test]
fn malformed_commands_are_skipped_not_fatal() {
    let mut kv = KvStore::new();
    let good = Envelope::new(0, put("k", "v")).encode();
    let mut trailing = good.to_vec();
    trailing.push(0);
    let inputs: [&[u8]; 4] = [&[0xff, 0xff], &[], &good[..good.len() - 1], &trailing];
    for (i, bytes) in inputs.into_iter().enumerate() {
        let index = i as u64 + 1;
        assert!(
            matches!(kv.apply(index, id(1, index), bytes), Applied::Malformed(_)),
            "input {i}"
        );
        assert_eq!(kv.applied_index(), index);
    }
    assert_eq!(kv.revision(), 1);
    // A malformed request leaves no session behind: the client's retry runs.
    assert!(matches!(
        kv.apply(5, id(1, 4), &good),
        Applied::Executed { result: Ok(_), .. }
    ));
}

#[test]
fn absurdly_nested_txns_are_malformed_not_a_stack_overflow() {
    let mut txn = TxnRequest::default();
    for _ in 0..200 {
        txn = TxnRequest {
            success: vec![RequestOp::Txn(txn)],
            ..TxnRequest::default()
        };
    }
    let bytes = Envelope::new(0, Command::Txn(txn)).encode();
    let mut kv = KvStore::new();
    assert!(matches!(
        kv.apply(1, id(0, 0), &bytes),
        Applied::Malformed(_)
    ));
    // Deeper than etcd's op budget allows, but decodable: refused with etcd's error.
    let mut txn = TxnRequest::default();
    for _ in 0..=MAX_TXN_OPS {
        txn = TxnRequest {
            success: vec![RequestOp::Txn(txn)],
            ..TxnRequest::default()
        };
    }
    let bytes = Envelope::new(0, Command::Txn(txn)).encode();
    assert!(matches!(
        kv.apply(2, id(0, 0), &bytes),
        Applied::Executed {
            result: Err(KvError::TooManyOps),
            ..
        }
    ));
}

#[test]
fn skipped_entries_count_as_applied() {
    let mut h = Harness::new();
    h.kv.skip(1);
    h.put("k", "v");
    h.kv.skip(3);
    assert_eq!(h.kv.applied_index(), 3);
    assert_eq!(h.kv.revision(), 2);
}

#[test]
#[should_panic(expected = "out of order")]
fn out_of_order_application_is_a_bug() {
    let mut kv = KvStore::new();
    kv.skip(2);
}

#[test]
fn wrapping_a_borrowed_command_encodes_the_same_bytes() {
    let command = put("k", "v");
    let envelope = Envelope::new(1234, command.clone());
    assert_eq!(Envelope::wrap(1234, &command), envelope.encode());
    assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
}
