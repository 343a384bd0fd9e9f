//! Transactions: compares, branches, revisions, reading own writes, etcd's request checks.

use bytes::Bytes;
use ekmat_kv::*;

use crate::harness::{Harness, b, keys};

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare::new(b(key), result, target)
}

fn put(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest::new(b(key), b(value)))
}

fn get(key: &str) -> RequestOp {
    RequestOp::Range(RangeRequest::new(b(key)))
}

fn del(key: &str, range_end: &str) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: b(key),
        range_end: b(range_end),
        prev_kv: false,
    })
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// Whether a txn with the one compare succeeds.
fn holds(h: &mut Harness, c: Compare) -> bool {
    h.txn(txn(vec![c], vec![], vec![])).unwrap().succeeded
}

#[test]
fn several_puts_share_one_revision() {
    let mut h = Harness::new();
    let resp = h
        .txn(txn(
            vec![],
            vec![put("a", "1"), put("b", "1"), put("c", "1")],
            vec![],
        ))
        .unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.revision, 2);
    assert_eq!(h.kv.revision(), 2);
    for k in ["a", "b", "c"] {
        assert_eq!(h.get(k).unwrap().mod_revision, 2);
    }
}

#[test]
fn a_txn_that_writes_nothing_takes_no_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let read = h.txn(txn(vec![], vec![get("a")], vec![])).unwrap();
    assert_eq!(read.header.revision, 2);
    let empty_delete = h.txn(txn(vec![], vec![del("zz", "")], vec![])).unwrap();
    assert_eq!(empty_delete.header.revision, 2);
    // The branch that did not run does not count.
    let failed = h
        .txn(txn(
            vec![cmp("a", CompareResult::Equal, CompareTarget::Version(9))],
            vec![put("a", "2")],
            vec![get("a")],
        ))
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(h.kv.revision(), 2);
}

#[test]
fn the_failure_branch_runs_when_a_compare_fails() {
    let mut h = Harness::new();
    h.put("a", "1");
    let resp = h
        .txn(txn(
            vec![
                cmp("a", CompareResult::Equal, CompareTarget::Value(b("1"))),
                cmp("a", CompareResult::Equal, CompareTarget::Version(2)),
            ],
            vec![put("x", "success")],
            vec![put("x", "failure"), get("a")],
        ))
        .unwrap();
    assert!(!resp.succeeded);
    assert_eq!(h.value("x").as_deref(), Some("failure"));
    assert_eq!(resp.responses.len(), 2);
    let ResponseOp::Range(r) = &resp.responses[1] else {
        panic!("{resp:?}")
    };
    assert_eq!(r.kvs[0].value, b("1"));
}

#[test]
fn compare_targets_and_results() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut h = Harness::new();
    h.grant(5, 60).unwrap();
    h.put("a", "m"); // create 2, mod 2
    h.put_req(PutRequest {
        lease: 5,
        ..PutRequest::new(b("a"), b("m"))
    })
    .unwrap(); // mod 3, version 2, lease 5
    let cases = [
        (Version(2), Equal, true),
        (Version(1), Greater, true),
        (Version(3), Less, true),
        (Version(2), NotEqual, false),
        (CreateRevision(2), Equal, true),
        (CreateRevision(3), Less, true),
        (ModRevision(3), Equal, true),
        (ModRevision(2), Greater, true),
        (ModRevision(3), Greater, false),
        (Value(b("m")), Equal, true),
        (Value(b("a")), Greater, true),
        (Value(b("z")), Less, true),
        (Value(b("mm")), Less, true),
        (Value(b("m")), NotEqual, false),
        (Lease(5), Equal, true),
        (Lease(0), NotEqual, true),
    ];
    for (target, result, expect) in cases {
        let c = cmp("a", result, target.clone());
        assert_eq!(holds(&mut h, c), expect, "{target:?} {result:?}");
    }
}

#[test]
fn a_missing_key_compares_as_zero_except_by_value() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut h = Harness::new();
    assert!(holds(&mut h, cmp("x", Equal, Version(0))));
    assert!(holds(&mut h, cmp("x", Equal, CreateRevision(0))));
    assert!(holds(&mut h, cmp("x", Equal, ModRevision(0))));
    assert!(holds(&mut h, cmp("x", Equal, Lease(0))));
    assert!(holds(&mut h, cmp("x", Less, Version(1))));
    // etcd cannot tell a missing value from an empty one, so no value compare matches.
    assert!(!holds(&mut h, cmp("x", Equal, Value(b("")))));
    assert!(!holds(&mut h, cmp("x", NotEqual, Value(b("v")))));
    // A deleted key is missing again.
    h.put("x", "v");
    h.delete("x", "");
    assert!(holds(&mut h, cmp("x", Equal, CreateRevision(0))));
}

#[test]
fn a_range_compare_needs_every_key_to_hold() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut h = Harness::new();
    h.put("k1", "1");
    h.put("k2", "1");
    h.put("k2", "2");
    let range = |result, target| Compare {
        range_end: prefix_end(b"k"),
        ..cmp("k", result, target)
    };
    assert!(holds(&mut h, range(Greater, Version(0))));
    assert!(!holds(&mut h, range(Equal, Version(1))));
    assert!(holds(&mut h, range(Less, ModRevision(5))));
    // An empty range compares a missing key.
    let empty = Compare {
        range_end: b("zz"),
        ..cmp("x", Equal, CreateRevision(0))
    };
    assert!(holds(&mut h, empty));
    let from_key = Compare {
        range_end: b("\0"),
        ..cmp("k2", Equal, Version(2))
    };
    assert!(holds(&mut h, from_key));
}

#[test]
fn reads_see_the_txns_own_writes_and_compares_see_the_state_before() {
    let mut h = Harness::new();
    h.put("a", "old");
    h.put("b", "doomed");
    let nested = TxnRequest {
        // Evaluated before the outer txn's put, as in etcd.
        compare: vec![cmp(
            "a",
            CompareResult::Equal,
            CompareTarget::Value(b("old")),
        )],
        success: vec![get("a")],
        failure: vec![],
    };
    let resp = h
        .txn(txn(
            vec![],
            vec![
                put("a", "new"),
                get("a"),
                RequestOp::Txn(nested),
                del("b", ""),
                get("b"),
            ],
            vec![],
        ))
        .unwrap();
    let values: Vec<Option<Bytes>> = resp
        .responses
        .iter()
        .filter_map(|r| match r {
            ResponseOp::Range(r) => Some(r.kvs.first().map(|kv| kv.value.clone())),
            ResponseOp::Txn(t) => {
                assert!(t.succeeded, "the nested compare saw the old value");
                match &t.responses[0] {
                    ResponseOp::Range(r) => Some(r.kvs.first().map(|kv| kv.value.clone())),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    assert_eq!(values, [Some(b("new")), Some(b("new")), None]);
    // The in-txn responses carry the revision the txn is writing.
    let ResponseOp::Put(p) = &resp.responses[0] else {
        panic!()
    };
    assert_eq!(p.header.revision, 4);
    assert_eq!(resp.header.revision, 4);
    assert_eq!(h.value("a").as_deref(), Some("new"));
    assert_eq!(h.get("b"), None);
}

#[test]
fn duplicate_keys_are_refused_the_way_etcd_does() {
    let mut h = Harness::new();
    let dup = Err(KvError::DuplicateKey);
    let run = |h: &mut Harness, success| h.txn(txn(vec![], success, vec![])).map(|_| ());
    assert_eq!(run(&mut h, vec![put("a", "1"), put("a", "2")]), dup);
    assert_eq!(run(&mut h, vec![put("a1", "1"), del("a", "b")]), dup);
    assert_eq!(run(&mut h, vec![del("a", "\0"), put("z", "1")]), dup);
    let nested = |success, failure| RequestOp::Txn(txn(vec![], success, failure));
    // A nested put against an outer put, either order.
    assert_eq!(
        run(
            &mut h,
            vec![put("a", "1"), nested(vec![put("a", "2")], vec![])]
        ),
        dup
    );
    assert_eq!(
        run(
            &mut h,
            vec![nested(vec![], vec![put("a", "2")]), put("a", "1")]
        ),
        dup
    );
    // A nested delete covering an outer put.
    assert_eq!(
        run(
            &mut h,
            vec![nested(vec![del("a", "")], vec![]), put("a", "1")]
        ),
        dup
    );
    assert_eq!(
        KvError::DuplicateKey.to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    assert_eq!(h.kv.revision(), 1);
    // Allowed: the same key in both branches of a nested txn, overlapping deletes,
    // and the same key in the outer success and failure branches.
    assert_eq!(
        run(
            &mut h,
            vec![nested(vec![put("a", "1")], vec![put("a", "2")])]
        ),
        Ok(())
    );
    assert_eq!(run(&mut h, vec![del("a", "c"), del("b", "d")]), Ok(()));
    let both = h.txn(txn(vec![], vec![put("a", "1")], vec![put("a", "2")]));
    assert!(both.is_ok());
}

#[test]
fn too_many_operations_are_refused() {
    let mut h = Harness::new();
    let puts = |n: usize| {
        (0..n)
            .map(|i| put(&format!("k{i:03}"), "v"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        h.txn(txn(vec![], puts(MAX_TXN_OPS + 1), vec![]))
            .map(|_| ()),
        Err(KvError::TooManyOps)
    );
    assert_eq!(
        KvError::TooManyOps.to_string(),
        "etcdserver: too many operations in txn request"
    );
    let compares = (0..=MAX_TXN_OPS)
        .map(|_| cmp("a", CompareResult::Equal, CompareTarget::Version(0)))
        .collect();
    assert_eq!(
        h.txn(txn(compares, vec![], vec![])).map(|_| ()),
        Err(KvError::TooManyOps)
    );
    // A nested txn spends what its parent left: 100 + 29 > 128.
    let nested = RequestOp::Txn(txn(vec![], puts(29), vec![]));
    let mut ops: Vec<RequestOp> = (0..99).map(|i| get(&format!("r{i}"))).collect();
    ops.push(nested);
    assert_eq!(
        h.txn(txn(vec![], ops.clone(), vec![])).map(|_| ()),
        Err(KvError::TooManyOps)
    );
    ops.pop();
    ops.push(RequestOp::Txn(txn(vec![], puts(28), vec![])));
    assert!(h.txn(txn(vec![], ops, vec![])).is_ok());
    assert!(h.txn(txn(vec![], puts(MAX_TXN_OPS), vec![])).is_ok());
}

#[test]
fn a_txn_that_cannot_run_whole_changes_nothing() {
    let mut h = Harness::new();
    h.put("a", "1");
    let with_lease = RequestOp::Put(PutRequest {
        lease: 42,
        ..PutRequest::new(b("b"), b("1"))
    });
    let resp = h.txn(txn(vec![], vec![put("c", "1"), with_lease], vec![]));
    assert_eq!(resp.map(|_| ()), Err(KvError::LeaseNotFound));
    let future = RequestOp::Range(RangeRequest {
        revision: 10,
        ..RangeRequest::new(b("a"))
    });
    let resp = h.txn(txn(vec![], vec![put("c", "1"), future], vec![]));
    assert_eq!(resp.map(|_| ()), Err(KvError::FutureRevision));
    let ignore = RequestOp::Put(PutRequest {
        ignore_value: true,
        ..PutRequest::new(b("missing"), b(""))
    });
    let resp = h.txn(txn(vec![], vec![put("c", "1"), ignore], vec![]));
    assert_eq!(resp.map(|_| ()), Err(KvError::KeyNotFound));
    assert_eq!(h.kv.revision(), 2);
    assert_eq!(h.get("c"), None);
    // Only the branch that runs is checked.
    let bad = RequestOp::Put(PutRequest {
        lease: 42,
        ..PutRequest::new(b("b"), b("1"))
    });
    let resp = h
        .txn(txn(
            vec![cmp("a", CompareResult::Equal, CompareTarget::Version(1))],
            vec![put("c", "1")],
            vec![bad],
        ))
        .unwrap();
    assert!(resp.succeeded);
}

#[test]
fn a_txn_can_delete_a_range_and_read_it_back_empty() {
    let mut h = Harness::new();
    for k in ["p/1", "p/2", "q"] {
        h.put(k, "v");
    }
    let resp = h
        .txn(txn(
            vec![],
            vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b("p/"),
                    range_end: prefix_end(b"p/"),
                    prev_kv: true,
                }),
                RequestOp::Range(RangeRequest::range(b("\0"), b("\0"))),
            ],
            vec![],
        ))
        .unwrap();
    let ResponseOp::DeleteRange(d) = &resp.responses[0] else {
        panic!()
    };
    assert_eq!(keys(&d.prev_kvs), ["p/1", "p/2"]);
    let ResponseOp::Range(r) = &resp.responses[1] else {
        panic!()
    };
    assert_eq!(keys(&r.kvs), ["q"]);
    assert_eq!(h.kv.revision(), 5);
}
