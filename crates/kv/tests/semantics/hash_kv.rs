//! HashKV: members that applied the same writes agree; a hash at a revision ignores what
//! came after it; etcd's errors for future and compacted revisions.

use ekmat_kv::*;

use crate::harness::Harness;

fn writes(h: &mut Harness, last: &str) {
    h.put("a", "1");
    h.put("b", "1");
    h.delete("b", "");
    h.put("a", last);
}

#[test]
fn replicas_with_the_same_writes_agree_and_a_different_value_disagrees() {
    let (mut x, mut y, mut z) = (Harness::new(), Harness::new(), Harness::new());
    writes(&mut x, "2");
    writes(&mut y, "2");
    writes(&mut z, "3");
    assert_eq!(x.kv.hash_kv(0), y.kv.hash_kv(0));
    assert_ne!(x.kv.hash_kv(0).unwrap().0, z.kv.hash_kv(0).unwrap().0);
    assert_eq!(x.kv.hash_kv(0).unwrap().1, x.kv.revision());
}

#[test]
fn a_hash_at_a_revision_ignores_later_writes() {
    let mut h = Harness::new();
    writes(&mut h, "2");
    let at = h.kv.revision();
    let before = h.kv.hash_kv(at).unwrap();
    h.put("c", "1");
    assert_eq!(h.kv.hash_kv(at).unwrap(), before);
    assert_ne!(h.kv.hash_kv(0).unwrap().0, before.0);
}

#[test]
fn future_and_compacted_revisions_are_refused_as_etcd_does() {
    let mut h = Harness::new();
    writes(&mut h, "2");
    let now = h.kv.revision();
    assert_eq!(h.kv.hash_kv(now + 1), Err(KvError::FutureRevision));
    h.compact(now - 1).unwrap();
    assert_eq!(h.kv.hash_kv(now - 2), Err(KvError::Compacted));
    assert!(h.kv.hash_kv(now - 1).is_ok());
}

#[test]
fn a_key_history_taken_earlier_hashes_the_store_as_it_was_then() {
    let mut h = Harness::new();
    writes(&mut h, "2");
    let then = h.kv.hash_kv(0).unwrap();
    let history = h.kv.key_history();
    h.put("a", "3");
    h.compact(h.kv.revision()).unwrap();
    assert_eq!(history.hash_kv(0), Ok(then));
    assert_eq!(history.revision(), then.1);
    assert_eq!(history.compact_revision(), 0);
    assert_ne!(h.kv.hash_kv(0).unwrap().0, then.0);
}
