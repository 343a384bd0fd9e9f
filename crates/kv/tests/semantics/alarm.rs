//! Alarms: raised and cleared through the log, and the writes each one refuses.

use ekmat_kv::*;

use crate::harness::{Harness, b};

fn alarm(
    h: &mut Harness,
    action: AlarmAction,
    member_id: u64,
    alarm: AlarmType,
) -> Vec<AlarmMember> {
    let req = AlarmRequest {
        action,
        member_id,
        alarm,
    };
    match h.run(Command::Alarm(req)).0 {
        Ok(Response::Alarm(r)) => r.alarms,
        other => panic!("expected an alarm response, got {other:?}"),
    }
}

fn nospace(member_id: u64) -> AlarmMember {
    AlarmMember {
        member_id,
        alarm: AlarmType::NoSpace,
    }
}

fn put_txn() -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success: vec![],
        failure: vec![RequestOp::Put(PutRequest::new(b("t"), b("v")))],
    }
}

#[test]
fn raising_lists_and_clearing_answer_as_etcd_does() {
    let mut h = Harness::new();
    assert_eq!(alarm(&mut h, AlarmAction::Get, 0, AlarmType::None), vec![]);
    assert_eq!(
        alarm(&mut h, AlarmAction::Activate, 2, AlarmType::NoSpace),
        vec![nospace(2)]
    );
    // Raising it again answers with it again and changes nothing.
    assert_eq!(
        alarm(&mut h, AlarmAction::Activate, 2, AlarmType::NoSpace),
        vec![nospace(2)]
    );
    alarm(&mut h, AlarmAction::Activate, 1, AlarmType::NoSpace);
    assert_eq!(h.kv.alarms(AlarmType::None), vec![nospace(1), nospace(2)]);
    assert_eq!(
        alarm(&mut h, AlarmAction::Get, 0, AlarmType::Corrupt),
        vec![]
    );
    assert_eq!(
        alarm(&mut h, AlarmAction::Deactivate, 1, AlarmType::NoSpace),
        vec![nospace(1)]
    );
    // Clearing an alarm that is not raised clears nothing.
    assert_eq!(
        alarm(&mut h, AlarmAction::Deactivate, 1, AlarmType::NoSpace),
        vec![]
    );
    assert_eq!(
        alarm(&mut h, AlarmAction::Get, 0, AlarmType::None),
        vec![nospace(2)]
    );
    // Alarms take no revision.
    assert_eq!(h.kv.revision(), 1);
}

#[test]
fn nospace_refuses_what_grows_the_store_and_lets_space_be_freed() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("a", "2");
    h.put("a", "3");
    h.grant(7, 60).unwrap();
    alarm(&mut h, AlarmAction::Activate, 1, AlarmType::NoSpace);
    let refused = |r: Result<Response, KvError>| assert_eq!(r.unwrap_err(), KvError::NoSpace);
    refused(h.run(Command::Put(PutRequest::new(b("b"), b("x")))).0);
    refused(h.run(Command::Txn(put_txn())).0);
    refused(
        h.run(Command::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 0 }))
            .0,
    );
    assert_eq!(
        KvError::NoSpace.to_string(),
        "etcdserver: mvcc: database space exceeded"
    );
    // A txn that only reads and deletes still runs, as do deletes, revocations and
    // compaction: the ways to free space.
    let read_only = TxnRequest {
        failure: vec![],
        success: vec![RequestOp::Range(RangeRequest::new(b("a")))],
        compare: vec![],
    };
    assert!(h.txn(read_only).is_ok());
    let before = h.kv.size_bytes();
    h.compact(4).unwrap();
    assert!(h.kv.size_bytes() < before);
    assert_eq!(h.delete("a", "").deleted, 1);
    assert!(h.revoke(7).0.is_ok());
    alarm(&mut h, AlarmAction::Deactivate, 1, AlarmType::NoSpace);
    assert!(h.put_req(PutRequest::new(b("b"), b("x"))).is_ok());
}

#[test]
fn corrupt_refuses_every_write_but_not_reads() {
    let mut h = Harness::new();
    h.put("a", "1");
    alarm(&mut h, AlarmAction::Activate, 3, AlarmType::Corrupt);
    let req = DeleteRangeRequest {
        key: b("a"),
        range_end: b(""),
        prev_kv: false,
    };
    assert_eq!(h.delete_req(req).unwrap_err(), KvError::Corrupt);
    assert_eq!(h.compact(2).unwrap_err(), KvError::Corrupt);
    assert_eq!(KvError::Corrupt.to_string(), "etcdserver: corrupt cluster");
    assert_eq!(h.value("a").as_deref(), Some("1"));
    alarm(&mut h, AlarmAction::Deactivate, 3, AlarmType::Corrupt);
    assert_eq!(h.delete("a", "").deleted, 1);
}

#[test]
fn the_size_estimate_follows_writes_and_compaction() {
    let mut h = Harness::new();
    assert_eq!(h.kv.size_bytes(), 0);
    h.put("key", "value");
    let one = h.kv.size_bytes();
    assert!(one >= 8);
    h.put("key", &"x".repeat(1000));
    assert!(h.kv.size_bytes() >= one + 1000);
    h.compact(3).unwrap();
    assert!(h.kv.size_bytes() < one + 1000 + one);
    // A restored store estimates the same.
    let restored = KvStore::restore(&h.kv.snapshot()).unwrap();
    assert_eq!(restored.size_bytes(), h.kv.size_bytes());
}

#[test]
fn alarms_survive_a_snapshot_and_count_in_the_replica_hash() {
    let mut h = Harness::new();
    h.put("a", "1");
    let without = h.kv.hash();
    alarm(&mut h, AlarmAction::Activate, 2, AlarmType::NoSpace);
    assert_ne!(h.kv.hash(), without);
    let restored = KvStore::restore(&h.kv.snapshot()).unwrap();
    assert_eq!(restored.alarms(AlarmType::None), vec![nospace(2)]);
    assert_eq!(restored.hash(), h.kv.hash());
}

#[test]
fn a_snapshot_source_hashes_raised_alarms_like_the_store() {
    let mut h = Harness::new();
    h.put("a", "1");
    alarm(&mut h, AlarmAction::Activate, 2, AlarmType::NoSpace);
    assert_eq!(h.kv.snapshot_source().hash32(), h.kv.hash32());
}
