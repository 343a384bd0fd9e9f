//! Snapshots, restore, and the replica hash.

use ekmat_core::RequestId;
use ekmat_kv::*;

use crate::harness::{Harness, b};

/// A store with a bit of everything: history, a compaction, leases, sessions, a clock.
fn busy() -> Harness {
    let mut h = Harness::new();
    h.now_ms = 1_000;
    h.grant(1, 30).unwrap();
    h.grant(2, 5).unwrap();
    for i in 0..20 {
        h.put(&format!("k{}", i % 7), &format!("v{i}"));
    }
    h.put_req(PutRequest {
        lease: 1,
        ..PutRequest::new(b("leased"), b("x"))
    })
    .unwrap();
    h.put_req(PutRequest {
        lease: 2,
        ..PutRequest::new(b("short"), b("x"))
    })
    .unwrap();
    h.delete("k3", "");
    h.compact(12).unwrap();
    let _ = h.run_as(
        RequestId { client: 9, seq: 4 },
        Command::Put(PutRequest::new(b("k1"), b("session"))),
    );
    h.tick(2_000);
    h
}

#[test]
fn a_snapshot_restores_to_an_equal_store() {
    let h = busy();
    let restored = KvStore::restore(&h.kv.snapshot()).unwrap();
    assert_eq!(restored, h.kv);
    assert_eq!(restored.hash(), h.kv.hash());
    assert_eq!(restored.applied_index(), h.kv.applied_index());
    assert_eq!(restored.clock_ms(), 2_000);
    assert_eq!(restored.compact_revision(), 12);
    assert_eq!(
        restored.lease_time_to_live(1, true).unwrap().keys,
        [b("leased")]
    );
}

#[test]
fn a_restored_store_carries_on_exactly_like_the_original() {
    let mut a = busy();
    let mut b_ = Harness {
        kv: KvStore::restore(&a.kv.snapshot()).unwrap(),
        now_ms: a.now_ms,
    };
    for h in [&mut a, &mut b_] {
        h.put("k1", "after");
        // The session survived: the repeat is recognised.
        let repeat = h.apply_as(
            RequestId { client: 9, seq: 4 },
            Command::Put(PutRequest::new(b("k1"), b("session"))),
        );
        assert!(matches!(repeat, Applied::Repeated(Ok(_))));
        // Lease 2 (deadline 6_000) expires on both at the same point.
        let expired = h.tick(6_000);
        assert_eq!(expired.len(), 1);
        h.grant(0, 10).unwrap();
    }
    assert_eq!(a.kv, b_.kv);
    assert_eq!(a.kv.hash(), b_.kv.hash());
    assert_eq!(
        a.kv.events_between(12, b"\0", b"\0"),
        b_.kv.events_between(12, b"\0", b"\0")
    );
}

#[test]
fn a_snapshot_from_before_alarms_or_auth_still_restores() {
    let h = busy();
    let now = h.kv.snapshot().to_vec();
    assert_eq!(now[0], 3);
    // Format 2 is format 3 without the trailing auth state (here: the empty one, five
    // zero bytes: the switch, the revision, no users, no roles, no secret).
    let (v2, auth) = now.split_at(now.len() - 5);
    assert_eq!(auth, [0; 5]);
    let mut v2 = v2.to_vec();
    v2[0] = 2;
    assert_eq!(KvStore::restore(&v2).unwrap().hash(), h.kv.hash());
    // Format 1 is format 2 without the trailing alarm list (here: empty, one byte).
    let mut v1 = v2;
    assert_eq!(v1.pop(), Some(0));
    v1[0] = 1;
    assert_eq!(KvStore::restore(&v1).unwrap().hash(), h.kv.hash());
}

#[test]
fn garbage_is_not_a_snapshot() {
    assert!(matches!(
        KvStore::restore(&[]),
        Err(KvError::BadSnapshot(_))
    ));
    assert!(matches!(
        KvStore::restore(&[1, 2, 3, 4, 5]),
        Err(KvError::BadSnapshot(_))
    ));
    let good = busy().kv.snapshot();
    // Another format version.
    let mut other = good.to_vec();
    other[0] = 9;
    assert!(matches!(
        KvStore::restore(&other),
        Err(KvError::BadSnapshot(_))
    ));
    // Every truncation fails cleanly.
    for len in 0..good.len() {
        assert!(KvStore::restore(&good[..len]).is_err(), "length {len}");
    }
}

#[test]
fn the_hash_follows_the_state() {
    let mut a = Harness::new();
    let mut b_ = Harness::new();
    assert_eq!(a.kv.hash(), b_.kv.hash());
    a.put("k", "1");
    assert_ne!(a.kv.hash(), b_.kv.hash());
    b_.put("k", "1");
    assert_eq!(a.kv.hash(), b_.kv.hash());
    // Same live data, different history: different hashes.
    a.put("k", "2");
    b_.put("k", "3");
    b_.put("k", "2");
    assert_ne!(a.kv.hash(), b_.kv.hash());
    // The applied index is not part of it.
    let mut c = Harness::new();
    c.kv.skip(1);
    assert_eq!(c.kv.hash(), KvStore::new().hash());
}

#[test]
fn the_hash_is_stable_across_builds() {
    // Pinned: a change here means replicas of different versions would disagree.
    assert_eq!(KvStore::new().hash(), 0x60b6_bc8b_a26b_bab6);
}

#[test]
fn a_snapshot_source_hashes_like_the_store_it_was_taken_from() {
    let mut h = busy();
    let source = h.kv.snapshot_source();
    assert_eq!(source.hash32(), h.kv.hash32());
    let before = h.kv.hash32();
    h.put("k1", "later");
    assert_ne!(h.kv.hash32(), before);
    // Taken earlier, it still hashes the store as it was then.
    assert_eq!(source.hash32(), before);
}
