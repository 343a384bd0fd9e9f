//! Property: replicas fed the same log agree, however they got there. Random command
//! sequences (every kind, duplicate and stale requests, clocks that lag, garbage, protocol
//! no-ops) go to a store, to a twin, and to a store restored from a snapshot of the
//! first at a random point; all must answer alike and end equal. The events the applies
//! reported must also be what the history says happened.

use bytes::Bytes;
use ekmat_core::RequestId;
use ekmat_kv::*;
use proptest::prelude::*;
use proptest::sample::Index;

const KEYS: [&str; 6] = ["a", "ab", "abc", "b", "ba", "c"];

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: usize,
        value: u8,
        lease: u8,
    },
    IgnoreValue {
        key: usize,
    },
    Delete {
        key: usize,
    },
    DeletePrefix {
        key: usize,
    },
    Txn {
        key: usize,
        version: i64,
        then_key: usize,
        else_key: usize,
        clash: bool,
    },
    Range {
        key: usize,
        revision_back: i64,
    },
    Compact {
        back: i64,
    },
    Grant {
        id: u8,
        ttl: i64,
    },
    Revoke {
        id: u8,
    },
    KeepAlive {
        id: u8,
    },
    Tick,
}

#[derive(Clone, Debug)]
enum Entry {
    Command {
        client: u64,
        seq: SeqChoice,
        lag_ms: u64,
        advance_ms: u64,
        op: Op,
    },
    Garbage(Vec<u8>),
    Noop,
}

#[derive(Clone, Copy, Debug)]
enum SeqChoice {
    Next,
    Repeat,
    Stale,
}

fn key(i: usize) -> Bytes {
    Bytes::from_static(KEYS[i].as_bytes())
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    prop_oneof![
        4 => (k.clone(), any::<u8>(), 0u8..4).prop_map(|(key, value, lease)| Op::Put { key, value, lease }),
        1 => k.clone().prop_map(|key| Op::IgnoreValue { key }),
        2 => k.clone().prop_map(|key| Op::Delete { key }),
        1 => k.clone().prop_map(|key| Op::DeletePrefix { key }),
        3 => (k.clone(), 0i64..3, k.clone(), k.clone(), any::<bool>()).prop_map(
            |(key, version, then_key, else_key, clash)| Op::Txn { key, version, then_key, else_key, clash }
        ),
        1 => (k, 0i64..6).prop_map(|(key, revision_back)| Op::Range { key, revision_back }),
        1 => (0i64..8).prop_map(|back| Op::Compact { back }),
        2 => (0u8..4, 0i64..4).prop_map(|(id, ttl)| Op::Grant { id, ttl }),
        1 => (0u8..4).prop_map(|id| Op::Revoke { id }),
        1 => (0u8..4).prop_map(|id| Op::KeepAlive { id }),
        1 => Just(Op::Tick),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let seq = prop_oneof![8 => Just(SeqChoice::Next), 1 => Just(SeqChoice::Repeat), 1 => Just(SeqChoice::Stale)];
    prop_oneof![
        20 => (0u64..4, seq, prop_oneof![4 => Just(0u64), 1 => 0u64..3000], 0u64..1500, op())
            .prop_map(|(client, seq, lag_ms, advance_ms, op)| Entry::Command { client, seq, lag_ms, advance_ms, op }),
        1 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(Entry::Garbage),
        1 => Just(Entry::Noop),
    ]
}

fn command(op: &Op, revision: i64) -> Command {
    match *op {
        Op::Put {
            key: k,
            value,
            lease,
        } => Command::Put(PutRequest {
            lease: i64::from(lease),
            prev_kv: value % 2 == 0,
            ..PutRequest::new(key(k), vec![value])
        }),
        Op::IgnoreValue { key: k } => Command::Put(PutRequest {
            ignore_value: true,
            ..PutRequest::new(key(k), Bytes::new())
        }),
        Op::Delete { key: k } => Command::DeleteRange(DeleteRangeRequest::new(key(k))),
        Op::DeletePrefix { key: k } => Command::DeleteRange(DeleteRangeRequest {
            key: key(k),
            range_end: prefix_end(&key(k)),
            prev_kv: true,
        }),
        Op::Txn {
            key: k,
            version,
            then_key,
            else_key,
            clash,
        } => {
            let mut success = vec![
                RequestOp::Put(PutRequest::new(key(then_key), "then")),
                RequestOp::Range(RangeRequest::range(key(0), "\0")),
            ];
            if clash {
                success.push(RequestOp::DeleteRange(DeleteRangeRequest::new(key(k))));
            }
            Command::Txn(TxnRequest {
                compare: vec![Compare::new(
                    key(k),
                    CompareResult::Equal,
                    CompareTarget::Version(version),
                )],
                success,
                failure: vec![
                    RequestOp::DeleteRange(DeleteRangeRequest::new(key(else_key))),
                    RequestOp::Put(PutRequest::new(key((else_key + 1) % KEYS.len()), "else")),
                ],
            })
        }
        Op::Range {
            key: k,
            revision_back,
        } => Command::Range(RangeRequest {
            revision: revision - revision_back,
            ..RangeRequest::range(key(k), "\0")
        }),
        Op::Compact { back } => Command::Compact(CompactionRequest {
            revision: revision - back,
            physical: false,
        }),
        Op::Grant { id, ttl } => Command::LeaseGrant(LeaseGrantRequest {
            ttl,
            id: i64::from(id),
        }),
        Op::Revoke { id } => Command::LeaseRevoke(LeaseRevokeRequest { id: i64::from(id) }),
        Op::KeepAlive { id } => {
            Command::LeaseKeepAlive(LeaseKeepAliveRequest { id: i64::from(id) })
        }
        Op::Tick => Command::Tick,
    }
}

/// One log entry applied to a store.
fn apply(kv: &mut KvStore, index: u64, entry: &Option<(RequestId, Bytes)>) -> Option<Applied> {
    match entry {
        Some((id, bytes)) => Some(kv.apply(index, *id, bytes)),
        None => {
            kv.skip(index);
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn replicas_agree_however_they_got_there(
        entries in proptest::collection::vec(entry(), 1..120),
        cut in any::<Index>(),
    ) {
        let mut first = KvStore::new();
        let mut twin = KvStore::new();
        let cut = cut.index(entries.len() + 1);
        let mut restored: Option<KvStore> = None;
        let mut seqs = [0u64; 4];
        let mut clock = 0u64;
        let mut reported = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if i == cut {
                restored = Some(KvStore::restore(&first.snapshot()).unwrap());
            }
            // The log entry is built from the first store's state, as a proposer would.
            let logged = match entry {
                Entry::Noop => None,
                Entry::Garbage(bytes) => Some((RequestId { client: 1, seq: seqs[1] + 1 }, Bytes::from(bytes.clone()))),
                Entry::Command { client, seq, lag_ms, advance_ms, op } => {
                    clock += advance_ms;
                    let s = &mut seqs[*client as usize];
                    let seq = match seq {
                        SeqChoice::Next => { *s += 1; *s }
                        SeqChoice::Repeat => *s,
                        SeqChoice::Stale => s.saturating_sub(1),
                    };
                    let envelope = Envelope::new(clock.saturating_sub(*lag_ms), command(op, first.revision()));
                    Some((RequestId { client: *client, seq }, envelope.encode()))
                }
            };
            let index = i as u64 + 1;
            let a = apply(&mut first, index, &logged);
            prop_assert_eq!(&apply(&mut twin, index, &logged), &a);
            if let Some(r) = restored.as_mut() {
                prop_assert_eq!(&apply(r, index, &logged), &a);
            }
            if let Some(Applied::Executed { events, .. }) = a {
                reported.extend(events);
            }
        }
        let restored = restored.unwrap_or_else(|| KvStore::restore(&first.snapshot()).unwrap());
        prop_assert_eq!(&restored, &first);
        prop_assert_eq!(restored.hash(), first.hash());
        prop_assert_eq!(&twin, &first);
        prop_assert_eq!(twin.hash(), first.hash());
        // What the applies reported is what the history holds, from the compaction point.
        let from = first.compact_revision();
        let expected: Vec<Event> = reported.into_iter().filter(|e| e.revision() >= from).collect();
        prop_assert_eq!(first.events_between(from, b"\0", b"\0").unwrap(), expected);
        // And a snapshot of the end state round-trips.
        prop_assert_eq!(KvStore::restore(&first.snapshot()).unwrap(), first);
    }
}
