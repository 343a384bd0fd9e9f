//! Revision arithmetic, versions, and the put and delete options.

use ekmat_kv::*;

use crate::harness::{Harness, b};

#[test]
fn an_empty_store_is_at_revision_one() {
    let h = Harness::new();
    assert_eq!(h.kv.revision(), 1);
    assert_eq!(h.kv.compact_revision(), 0);
    assert_eq!(
        h.kv.range(&RangeRequest::new(b("a")))
            .unwrap()
            .header
            .revision,
        1
    );
}

#[test]
fn each_put_takes_one_revision_and_counts_versions() {
    let mut h = Harness::new();
    assert_eq!(h.put("a", "1").header.revision, 2);
    assert_eq!(h.put("b", "1").header.revision, 3);
    assert_eq!(h.put("a", "2").header.revision, 4);
    let a = h.get("a").unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.lease),
        (2, 4, 2, 0)
    );
    assert_eq!(a.value, b("2"));
    assert_eq!(h.kv.revision(), 4);
}

#[test]
fn a_delete_resets_the_version_and_the_create_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("a", "2");
    let del = h.delete("a", "");
    assert_eq!((del.deleted, del.header.revision), (1, 4));
    assert_eq!(h.get("a"), None);
    h.put("a", "3");
    let a = h.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[test]
fn a_delete_of_nothing_takes_no_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let del = h.delete("zzz", "");
    assert_eq!((del.deleted, del.header.revision), (0, 2));
    let del = h.delete("b", "c");
    assert_eq!((del.deleted, del.header.revision), (0, 2));
    assert_eq!(h.kv.revision(), 2);
}

#[test]
fn a_range_delete_takes_one_revision_for_every_key() {
    let mut h = Harness::new();
    for k in ["a1", "a2", "a3", "b"] {
        h.put(k, "v");
    }
    let del = h
        .delete_req(DeleteRangeRequest {
            key: b("a"),
            range_end: prefix_end(b"a"),
            prev_kv: true,
        })
        .unwrap();
    assert_eq!(del.deleted, 3);
    assert_eq!(del.header.revision, 6);
    assert_eq!(keys_of(&del.prev_kvs), ["a1", "a2", "a3"]);
    assert_eq!(h.list("\0", "\0"), ["b"]);
}

fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    crate::harness::keys(kvs)
}

#[test]
fn delete_returns_previous_versions_only_when_asked() {
    let mut h = Harness::new();
    h.put("a", "1");
    let del = h.delete_req(DeleteRangeRequest::new(b("a"))).unwrap();
    assert_eq!(del.deleted, 1);
    assert!(del.prev_kvs.is_empty());
}

#[test]
fn reads_take_no_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let (result, events) = h.run(Command::Range(RangeRequest::new(b("a"))));
    let Ok(Response::Range(r)) = result else {
        panic!("{result:?}")
    };
    assert_eq!((r.kvs.len(), r.header.revision), (1, 2));
    assert!(events.is_empty());
    assert_eq!(h.kv.revision(), 2);
}

#[test]
fn the_empty_key_is_refused_everywhere() {
    let mut h = Harness::new();
    let err = Err(KvError::EmptyKey);
    assert_eq!(h.put_req(PutRequest::new(b(""), b("v"))).map(|_| ()), err);
    assert_eq!(
        h.delete_req(DeleteRangeRequest::new(b(""))).map(|_| ()),
        err
    );
    assert_eq!(h.kv.range(&RangeRequest::new(b(""))).map(|_| ()), err);
    let txn = TxnRequest {
        compare: vec![Compare::new(
            b(""),
            CompareResult::Equal,
            CompareTarget::Version(0),
        )],
        ..TxnRequest::default()
    };
    assert_eq!(h.txn(txn).map(|_| ()), err);
    assert_eq!(
        KvError::EmptyKey.to_string(),
        "etcdserver: key is not provided"
    );
    assert_eq!(h.kv.revision(), 1);
}

#[test]
fn put_returns_the_previous_version_when_asked() {
    let mut h = Harness::new();
    let first = h
        .put_req(PutRequest {
            prev_kv: true,
            ..PutRequest::new(b("a"), b("1"))
        })
        .unwrap();
    assert_eq!(first.prev_kv, None);
    let second = h
        .put_req(PutRequest {
            prev_kv: true,
            ..PutRequest::new(b("a"), b("2"))
        })
        .unwrap();
    let prev = second.prev_kv.unwrap();
    assert_eq!(
        (prev.value, prev.mod_revision, prev.version),
        (b("1"), 2, 1)
    );
    assert_eq!(h.put("a", "3").prev_kv, None);
}

#[test]
fn ignore_value_and_ignore_lease_keep_what_the_key_has() {
    let mut h = Harness::new();
    h.grant(7, 100).unwrap();
    h.put_req(PutRequest {
        lease: 7,
        ..PutRequest::new(b("a"), b("1"))
    })
    .unwrap();
    // A new value, same lease.
    h.put_req(PutRequest {
        ignore_lease: true,
        ..PutRequest::new(b("a"), b("2"))
    })
    .unwrap();
    let a = h.get("a").unwrap();
    assert_eq!((a.value.clone(), a.lease, a.version), (b("2"), 7, 2));
    // Same value, no lease.
    h.put_req(PutRequest {
        ignore_value: true,
        ..PutRequest::new(b("a"), b(""))
    })
    .unwrap();
    let a = h.get("a").unwrap();
    assert_eq!((a.value, a.lease, a.version), (b("2"), 0, 3));
    assert!(h.kv.lease_time_to_live(7, true).unwrap().keys.is_empty());
}

#[test]
fn ignore_flags_fail_the_way_etcd_does() {
    let mut h = Harness::new();
    let missing = h.put_req(PutRequest {
        ignore_value: true,
        ..PutRequest::new(b("a"), b(""))
    });
    assert_eq!(missing, Err(KvError::KeyNotFound));
    assert_eq!(
        KvError::KeyNotFound.to_string(),
        "etcdserver: key not found"
    );
    let missing = h.put_req(PutRequest {
        ignore_lease: true,
        ..PutRequest::new(b("a"), b("v"))
    });
    assert_eq!(missing, Err(KvError::KeyNotFound));
    h.put("a", "1");
    let both = h.put_req(PutRequest {
        ignore_value: true,
        ..PutRequest::new(b("a"), b("v"))
    });
    assert_eq!(both, Err(KvError::ValueProvided));
    let both = h.put_req(PutRequest {
        ignore_lease: true,
        lease: 5,
        ..PutRequest::new(b("a"), b("v"))
    });
    assert_eq!(both, Err(KvError::LeaseProvided));
    assert_eq!(h.kv.revision(), 2);
}
