//! Range reads: key ranges, limit, count, sort, filters, old revisions.

use ekmat_kv::*;

use crate::harness::{Harness, b, keys};

fn store(keys: &[&str]) -> Harness {
    let mut h = Harness::new();
    for k in keys {
        h.put(k, &format!("v-{k}"));
    }
    h
}

#[test]
fn prefix_end_increments_the_last_byte_that_can_be() {
    assert_eq!(prefix_end(b"a"), b("b"));
    assert_eq!(prefix_end(b"foo/"), b("foo0"));
    assert_eq!(prefix_end(b"a\xff"), b("b"));
    assert_eq!(prefix_end(b"a\xff\xff"), b("b"));
    assert_eq!(prefix_end(b"\xff\xff"), b("\0"));
    assert_eq!(prefix_end(b""), b("\0"));
}

#[test]
fn range_end_forms() {
    let h = store(&["a", "ab", "abc", "b", "c\u{7f}", "d"]);
    // Empty end: the key alone.
    assert_eq!(h.list("ab", ""), ["ab"]);
    assert!(h.list("zz", "").is_empty());
    // [key, end).
    assert_eq!(h.list("ab", "b"), ["ab", "abc"]);
    assert_eq!(h.list("a", "ab"), ["a"]);
    // A prefix.
    let prefix =
        h.kv.range(&RangeRequest::range(b("ab"), prefix_end(b"ab")))
            .unwrap();
    assert_eq!(keys(&prefix.kvs), ["ab", "abc"]);
    // "\0": every key from the key on; with key "\0", every key.
    assert_eq!(h.list("b", "\0"), ["b", "c\u{7f}", "d"]);
    assert_eq!(h.list("\0", "\0"), ["a", "ab", "abc", "b", "c\u{7f}", "d"]);
    // An end at or before the key is an empty range, not an error.
    assert!(h.list("c", "b").is_empty());
    assert!(h.list("c", "c").is_empty());
}

#[test]
fn limit_sets_more_and_count_counts_everything() {
    let h = store(&["a", "b", "c", "d"]);
    let req = RangeRequest {
        limit: 2,
        ..RangeRequest::range(b("a"), b("\0"))
    };
    let resp = h.kv.range(&req).unwrap();
    assert_eq!(keys(&resp.kvs), ["a", "b"]);
    assert!(resp.more);
    assert_eq!(resp.count, 4);
    let exact = RangeRequest {
        limit: 4,
        ..req.clone()
    };
    let resp = h.kv.range(&exact).unwrap();
    assert_eq!((resp.kvs.len(), resp.more, resp.count), (4, false, 4));
    let unlimited = RangeRequest { limit: 0, ..req };
    assert_eq!(h.kv.range(&unlimited).unwrap().kvs.len(), 4);
}

#[test]
fn count_only_and_keys_only() {
    let h = store(&["a", "b", "c"]);
    let counted =
        h.kv.range(&RangeRequest {
            count_only: true,
            limit: 1,
            ..RangeRequest::range(b("a"), b("c"))
        })
        .unwrap();
    assert_eq!(
        (counted.kvs.len(), counted.count, counted.more),
        (0, 2, false)
    );
    let bare =
        h.kv.range(&RangeRequest {
            keys_only: true,
            ..RangeRequest::range(b("a"), b("\0"))
        })
        .unwrap();
    assert_eq!(keys(&bare.kvs), ["a", "b", "c"]);
    assert!(
        bare.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1)
    );
}

#[test]
fn sorting_by_every_target() {
    let mut h = Harness::new();
    h.put("c", "1"); // rev 2
    h.put("a", "3"); // rev 3
    h.put("b", "2"); // rev 4
    h.put("c", "0"); // rev 5: c has version 2
    let sorted = |target, order| {
        let req = RangeRequest {
            sort_target: target,
            sort_order: order,
            ..RangeRequest::range(b("a"), b("\0"))
        };
        keys(&h.kv.range(&req).unwrap().kvs)
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(Key, None), ["a", "b", "c"]);
    assert_eq!(sorted(Key, Ascend), ["a", "b", "c"]);
    assert_eq!(sorted(Key, Descend), ["c", "b", "a"]);
    assert_eq!(sorted(Value, Ascend), ["c", "b", "a"]);
    assert_eq!(sorted(Value, Descend), ["a", "b", "c"]);
    assert_eq!(sorted(Create, Ascend), ["c", "a", "b"]);
    assert_eq!(sorted(Create, Descend), ["b", "a", "c"]);
    assert_eq!(sorted(Mod, Ascend), ["a", "b", "c"]);
    assert_eq!(sorted(Mod, Descend), ["c", "b", "a"]);
    // Ties keep key order.
    assert_eq!(sorted(Version, Ascend), ["a", "b", "c"]);
    assert_eq!(sorted(Version, Descend), ["c", "a", "b"]);
    // A target other than the key with no order sorts ascending, as etcd does.
    assert_eq!(sorted(Value, None), ["c", "b", "a"]);
}

#[test]
fn sort_then_limit() {
    let mut h = Harness::new();
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2")] {
        h.put(k, v);
    }
    let req = RangeRequest {
        sort_target: SortTarget::Value,
        sort_order: SortOrder::Descend,
        limit: 2,
        ..RangeRequest::range(b("a"), b("\0"))
    };
    let resp = h.kv.range(&req).unwrap();
    assert_eq!(keys(&resp.kvs), ["a", "c"]);
    assert!(resp.more);
    assert_eq!(resp.count, 3);
}

#[test]
fn revision_filters_apply_after_counting() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("c", "1"); // 4
    h.put("a", "2"); // 5
    let filtered = |f: &dyn Fn(&mut RangeRequest)| {
        let mut req = RangeRequest::range(b("a"), b("\0"));
        f(&mut req);
        let resp = h.kv.range(&req).unwrap();
        assert_eq!(resp.count, 3, "count ignores the filters");
        keys(&resp.kvs)
    };
    assert_eq!(filtered(&|r| r.min_mod_revision = 4), ["a", "c"]);
    assert_eq!(filtered(&|r| r.max_mod_revision = 3), ["b"]);
    assert_eq!(filtered(&|r| r.min_create_revision = 3), ["b", "c"]);
    assert_eq!(filtered(&|r| r.max_create_revision = 2), ["a"]);
    assert_eq!(
        filtered(&|r| {
            r.min_create_revision = 3;
            r.max_mod_revision = 3
        }),
        ["b"]
    );
}

#[test]
fn reads_at_old_revisions() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("a", "2"); // 4
    h.delete("b", ""); // 5
    assert_eq!(h.value("a").as_deref(), Some("2"));
    assert_eq!(h.get("b"), None);
    let at = |rev| {
        let req = RangeRequest {
            revision: rev,
            ..RangeRequest::range(b("a"), b("\0"))
        };
        let resp = h.kv.range(&req).unwrap();
        assert_eq!(
            resp.header.revision, 5,
            "the header has the current revision"
        );
        resp.kvs
            .iter()
            .map(|kv| format!("{}={}", kv.key.escape_ascii(), kv.value.escape_ascii()))
            .collect::<Vec<_>>()
    };
    assert!(at(1).is_empty());
    assert_eq!(at(2), ["a=1"]);
    assert_eq!(at(3), ["a=1", "b=1"]);
    assert_eq!(at(4), ["a=2", "b=1"]);
    assert_eq!(at(5), ["a=2"]);
    assert_eq!(at(0), ["a=2"]);
    let old = h.get_at("a", 3).unwrap();
    assert_eq!((old.mod_revision, old.version), (2, 1));
}

#[test]
fn a_future_revision_is_an_error() {
    let mut h = Harness::new();
    h.put("a", "1");
    let req = RangeRequest {
        revision: 3,
        ..RangeRequest::new(b("a"))
    };
    assert_eq!(h.kv.range(&req), Err(KvError::FutureRevision));
    assert_eq!(
        KvError::FutureRevision.to_string(),
        "mvcc: required revision is a future revision"
    );
}
