//! Leases: grant, attach, keep-alive, revoke, and expiry decided by the log's clock.

use bytes::Bytes;
use ekmat_kv::*;

use crate::harness::{Harness, b};

fn put_with_lease(h: &mut Harness, key: &str, lease: i64) -> Result<PutResponse, KvError> {
    h.put_req(PutRequest {
        lease,
        ..PutRequest::new(b(key), b("v"))
    })
}

#[test]
fn grant_assigns_ids_and_refuses_taken_ones() {
    let mut h = Harness::new();
    assert_eq!(h.grant(0, 10).unwrap().id, 1);
    assert_eq!(h.grant(3, 10).unwrap().id, 3);
    assert_eq!(h.grant(0, 10).unwrap().id, 2);
    assert_eq!(h.grant(0, 10).unwrap().id, 4, "3 is taken");
    assert_eq!(h.grant(3, 10).map(|_| ()), Err(KvError::LeaseExists));
    assert_eq!(
        KvError::LeaseExists.to_string(),
        "etcdserver: lease already exists"
    );
    assert_eq!(
        h.grant(0, MAX_LEASE_TTL + 1).map(|_| ()),
        Err(KvError::LeaseTtlTooLarge)
    );
    let granted = h.grant(100, 30).unwrap();
    assert_eq!(
        (granted.id, granted.ttl, granted.header.revision),
        (100, 30, 1)
    );
    assert_eq!(h.kv.leases(), [1, 2, 3, 4, 100]);
    assert_eq!(h.kv.revision(), 1, "leases take no revision");
}

#[test]
fn a_put_needs_its_lease_to_exist() {
    let mut h = Harness::new();
    assert_eq!(
        put_with_lease(&mut h, "a", 9).map(|_| ()),
        Err(KvError::LeaseNotFound)
    );
    assert_eq!(
        KvError::LeaseNotFound.to_string(),
        "etcdserver: requested lease not found"
    );
    h.grant(9, 10).unwrap();
    put_with_lease(&mut h, "a", 9).unwrap();
    assert_eq!(h.get("a").unwrap().lease, 9);
}

#[test]
fn revoke_deletes_the_attached_keys_in_one_revision() {
    let mut h = Harness::new();
    h.grant(1, 10).unwrap();
    h.grant(2, 10).unwrap();
    put_with_lease(&mut h, "b", 1).unwrap(); // 2
    put_with_lease(&mut h, "a", 1).unwrap(); // 3
    put_with_lease(&mut h, "c", 2).unwrap(); // 4
    put_with_lease(&mut h, "d", 1).unwrap(); // 5
    put_with_lease(&mut h, "d", 2).unwrap(); // 6: d moves to lease 2
    let ttl = h.kv.lease_time_to_live(1, true).unwrap();
    assert_eq!(ttl.keys, [b("a"), b("b")]);
    let (result, events) = h.revoke(1);
    assert_eq!(result.unwrap().header().revision, 7);
    let deleted: Vec<(EventKind, Bytes, i64)> = events
        .iter()
        .map(|e| (e.kind, e.kv.key.clone(), e.revision()))
        .collect();
    assert_eq!(
        deleted,
        [
            (EventKind::Delete, b("a"), 7),
            (EventKind::Delete, b("b"), 7)
        ]
    );
    assert_eq!(h.list("\0", "\0"), ["c", "d"]);
    assert_eq!(h.kv.leases(), [2]);
    assert_eq!(h.revoke(1).0.map(|_| ()), Err(KvError::LeaseNotFound));
    // A lease with no keys goes without a revision.
    h.grant(3, 10).unwrap();
    assert_eq!(h.revoke(3).0.unwrap().header().revision, 7);
}

#[test]
fn deleting_or_overwriting_a_key_detaches_it() {
    let mut h = Harness::new();
    h.grant(1, 10).unwrap();
    put_with_lease(&mut h, "a", 1).unwrap();
    put_with_lease(&mut h, "b", 1).unwrap();
    h.put("a", "no lease");
    h.delete("b", "");
    assert!(h.kv.lease_time_to_live(1, true).unwrap().keys.is_empty());
    let (_, events) = h.revoke(1);
    assert!(events.is_empty());
    assert_eq!(h.value("a").as_deref(), Some("no lease"));
}

#[test]
fn leases_expire_by_the_log_clock() {
    let mut h = Harness::new();
    h.now_ms = 1_000;
    h.grant(1, 10).unwrap(); // deadline 11_000
    put_with_lease(&mut h, "a", 1).unwrap(); // 2
    assert!(h.tick(10_999).is_empty());
    assert_eq!(h.kv.lease_time_to_live(1, false).unwrap().ttl, 0);
    let events = h.tick(11_000);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].revision()),
        (EventKind::Delete, 3)
    );
    assert_eq!(events[0].prev_kv.as_ref().unwrap().lease, 1);
    assert_eq!(h.get("a"), None);
    assert!(h.kv.leases().is_empty());
    assert_eq!(h.keep_alive(1).map(|_| ()), Err(KvError::LeaseNotFound));
}

#[test]
fn any_command_moves_the_clock_and_expiry_comes_first() {
    let mut h = Harness::new();
    h.now_ms = 1_000;
    h.grant(1, 1).unwrap();
    put_with_lease(&mut h, "a", 1).unwrap(); // 2
    h.now_ms = 5_000;
    // The put runs after the expiry, which took revision 3.
    let (result, events) = h.run(Command::Put(PutRequest::new(b("b"), b("v"))));
    assert_eq!(result.unwrap().header().revision, 4);
    let kinds: Vec<(EventKind, i64)> = events.iter().map(|e| (e.kind, e.revision())).collect();
    assert_eq!(kinds, [(EventKind::Delete, 3), (EventKind::Put, 4)]);
    // Even a failing command's clock expires leases.
    h.grant(2, 1).unwrap();
    put_with_lease(&mut h, "c", 2).unwrap(); // 5
    h.now_ms = 7_000;
    let (result, events) = h.run(Command::Put(PutRequest::new(b(""), b("v"))));
    assert_eq!(result, Err(KvError::EmptyKey));
    assert_eq!(events.len(), 1);
    assert_eq!(h.kv.revision(), 6);
}

#[test]
fn a_clock_that_goes_backwards_changes_nothing() {
    let mut h = Harness::new();
    h.now_ms = 10_000;
    h.grant(1, 5).unwrap(); // deadline 15_000
    h.grant(2, 20).unwrap(); // deadline 30_000
    put_with_lease(&mut h, "a", 1).unwrap();
    put_with_lease(&mut h, "b", 2).unwrap();
    h.tick(16_000);
    assert_eq!(h.kv.leases(), [2]);
    // A lagging proposer's clock neither revives lease 1 nor moves time back.
    h.tick(1_000);
    assert_eq!(h.kv.clock_ms(), 16_000);
    assert_eq!(h.kv.leases(), [2]);
    assert_eq!(h.get("a"), None);
    // A keep-alive stamped in the past renews from the store's clock.
    h.now_ms = 2_000;
    assert_eq!(h.keep_alive(2).unwrap().ttl, 20); // deadline 36_000
    assert_eq!(h.kv.lease_time_to_live(2, false).unwrap().ttl, 20);
    assert!(h.tick(35_999).is_empty());
    assert_eq!(h.tick(36_000).len(), 1);
}

#[test]
fn keep_alive_restarts_the_ttl() {
    let mut h = Harness::new();
    h.grant(1, 10).unwrap(); // deadline 10_000
    put_with_lease(&mut h, "a", 1).unwrap();
    h.now_ms = 8_000;
    let kept = h.keep_alive(1).unwrap();
    assert_eq!((kept.id, kept.ttl), (1, 10)); // deadline 18_000
    assert!(h.tick(17_000).is_empty());
    let ttl = h.kv.lease_time_to_live(1, true).unwrap();
    assert_eq!((ttl.id, ttl.ttl, ttl.granted_ttl), (1, 1, 10));
    assert_eq!(ttl.keys, [b("a")]);
    assert!(h.kv.lease_time_to_live(1, false).unwrap().keys.is_empty());
    assert_eq!(h.tick(18_000).len(), 1);
    assert_eq!(
        h.kv.lease_time_to_live(1, false).map(|_| ()),
        Err(KvError::LeaseNotFound)
    );
    assert_eq!(h.keep_alive(7).map(|_| ()), Err(KvError::LeaseNotFound));
}

#[test]
fn leases_expiring_together_go_in_id_order_one_revision_each() {
    let mut h = Harness::new();
    h.grant(3, 5).unwrap();
    h.now_ms = 1_000;
    h.grant(1, 4).unwrap(); // both due at 5_000
    h.grant(2, 100).unwrap();
    put_with_lease(&mut h, "x", 3).unwrap(); // 2
    put_with_lease(&mut h, "y", 1).unwrap(); // 3
    put_with_lease(&mut h, "z", 2).unwrap(); // 4
    let events = h.tick(6_000);
    let order: Vec<(Bytes, i64)> = events
        .iter()
        .map(|e| (e.kv.key.clone(), e.revision()))
        .collect();
    assert_eq!(order, [(b("y"), 5), (b("x"), 6)]);
    assert_eq!(h.kv.leases(), [2]);
}

#[test]
fn renew_all_restarts_every_lease_before_its_clock_expires_any() {
    let mut h = Harness::new();
    h.grant(1, 5).unwrap(); // deadline 5_000
    h.grant(2, 20).unwrap(); // deadline 20_000
    put_with_lease(&mut h, "a", 1).unwrap();
    assert_eq!(h.kv.next_lease_deadline(), Some(5_000));
    // A new leader's clock is past lease 1's deadline: the renewal still saves it.
    h.now_ms = 9_000;
    let (result, events) = h.run(Command::LeaseRenewAll);
    assert!(matches!(result, Ok(Response::LeaseRenewAll(_))));
    assert!(events.is_empty());
    assert_eq!(h.kv.leases(), [1, 2]);
    assert_eq!(h.kv.next_lease_deadline(), Some(14_000));
    assert_eq!(h.kv.lease_time_to_live(2, false).unwrap().ttl, 20);
    assert!(h.tick(13_999).is_empty());
    assert_eq!(h.tick(14_000).len(), 1, "lease 1 expires a full TTL later");
    assert_eq!(h.kv.next_lease_deadline(), Some(29_000));
}

#[test]
fn time_to_live_at_counts_from_the_later_of_two_clocks() {
    let mut h = Harness::new();
    h.now_ms = 1_000;
    h.grant(1, 10).unwrap(); // deadline 11_000
    assert_eq!(h.kv.lease_time_to_live_at(1, false, 4_500).unwrap().ttl, 6);
    assert_eq!(h.kv.lease_time_to_live_at(1, false, 0).unwrap().ttl, 10);
    assert_eq!(h.kv.lease_time_to_live_at(1, false, 99_000).unwrap().ttl, 0);
}

/// A backup's leases carry no time: their deadlines count from a clock at 0, and each
/// restarts its full TTL when the restored store's clock starts, whatever entry starts
/// it (under PBFT another member's put may be ordered before any renewal).
#[test]
fn restored_leases_restart_their_ttl_when_the_clock_starts() {
    let leased = BackupRecord {
        main: 2,
        sub: 0,
        deleted: false,
        kv: KeyValue {
            key: b("a"),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b("v"),
            lease: 5,
        },
    };
    let start = 1_700_000_000_000;
    let mut h = Harness {
        kv: KvStore::from_backup(1, vec![leased], &[(5, 60)], 0, AuthState::default()).unwrap(),
        now_ms: start,
    };
    h.put("b", "v");
    assert!(
        h.tick(start + 59_999).is_empty(),
        "a full TTL from the start"
    );
    let expired = h.tick(start + 60_000);
    assert_eq!(expired.len(), 1);
    assert_eq!(h.get("a"), None);
}
