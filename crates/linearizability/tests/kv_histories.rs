//! Hand-built KV histories with known verdicts.

use ekmat_linearizability::kv::{KvInput, KvModel, KvOutput};
use ekmat_linearizability::{CheckOptions, HistoryError, Operation, Verdict, check};

type KvOp = Operation<KvInput, KvOutput>;

fn get(key: u64) -> KvInput {
    KvInput::Get { key }
}

fn put(key: u64, value: u64) -> KvInput {
    KvInput::Put { key, value }
}

fn cas(key: u64, expected: Option<u64>, new: u64) -> KvInput {
    KvInput::Cas { key, expected, new }
}

fn delete(key: u64) -> KvInput {
    KvInput::Delete { key }
}

fn value(v: Option<u64>) -> KvOutput {
    KvOutput::Value(v)
}

/// A completed operation.
fn ok(client: u64, input: KvInput, call: u64, ret: u64, output: KvOutput) -> KvOp {
    Operation {
        client,
        input,
        call,
        ret: Some(ret),
        output: Some(output),
    }
}

/// An operation whose outcome the client never learned.
fn unknown(client: u64, input: KvInput, call: u64) -> KvOp {
    Operation {
        client,
        input,
        call,
        ret: None,
        output: None,
    }
}

fn verdict(history: &[KvOp]) -> Verdict {
    check(&KvModel, history, &CheckOptions::default()).expect("a well-formed history")
}

fn assert_violation_on(history: &[KvOp], key: u64) -> (Vec<usize>, Vec<usize>, Option<usize>) {
    match verdict(history) {
        Verdict::NotLinearizable {
            partition,
            ops,
            longest_prefix,
            stuck_at,
        } => {
            assert_eq!(partition, key);
            (ops, longest_prefix, stuck_at)
        }
        other => panic!("expected a violation on key {key}, got {other:?}"),
    }
}

#[test]
fn an_empty_history_is_linearizable() {
    assert_eq!(verdict(&[]), Verdict::Linearizable);
}

#[test]
fn a_sequential_history_is_linearizable() {
    let history = [
        ok(1, get(1), 0, 1, value(None)),
        ok(1, put(1, 5), 2, 3, KvOutput::Done),
        ok(2, get(1), 4, 5, value(Some(5))),
        ok(2, cas(1, Some(5), 6), 6, 7, KvOutput::Cas(true)),
        ok(1, cas(1, Some(5), 7), 8, 9, KvOutput::Cas(false)),
        ok(1, get(1), 10, 11, value(Some(6))),
        ok(3, delete(1), 12, 13, KvOutput::Done),
        ok(3, get(1), 14, 15, value(None)),
        ok(2, cas(1, None, 8), 16, 17, KvOutput::Cas(true)),
        ok(2, get(1), 18, 19, value(Some(8))),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    // Two overlapping writes, and reads during and after them that only make
    // sense if the second-called write took effect first.
    let history = [
        ok(1, put(1, 1), 0, 10, KvOutput::Done),
        ok(2, put(1, 2), 1, 9, KvOutput::Done),
        ok(3, get(1), 2, 3, value(Some(2))),
        ok(3, get(1), 11, 12, value(Some(1))),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn intervals_that_only_touch_count_as_concurrent() {
    // The read is called at the instant the write returns: it may precede it.
    let history = [
        ok(1, put(1, 1), 0, 5, KvOutput::Done),
        ok(2, get(1), 5, 6, value(None)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn a_stale_read_is_a_violation() {
    let history = [
        ok(1, put(1, 1), 0, 1, KvOutput::Done),
        ok(1, put(1, 2), 2, 3, KvOutput::Done),
        ok(2, get(1), 4, 5, value(Some(1))),
    ];
    let (ops, prefix, stuck_at) = assert_violation_on(&history, 1);
    assert_eq!(ops, vec![0, 1, 2]);
    assert_eq!(prefix, vec![0, 1]);
    assert_eq!(stuck_at, Some(2));
}

#[test]
fn a_lost_write_is_a_violation() {
    let history = [
        ok(1, put(1, 7), 0, 1, KvOutput::Done),
        ok(2, get(1), 2, 3, value(None)),
    ];
    let (_, prefix, stuck_at) = assert_violation_on(&history, 1);
    assert_eq!(prefix, vec![0]);
    assert_eq!(stuck_at, Some(1));
}

#[test]
fn two_successful_swaps_from_the_same_value_are_a_violation() {
    let history = [
        ok(1, put(1, 0), 0, 1, KvOutput::Done),
        ok(2, cas(1, Some(0), 1), 2, 5, KvOutput::Cas(true)),
        ok(3, cas(1, Some(0), 2), 3, 6, KvOutput::Cas(true)),
    ];
    assert_violation_on(&history, 1);
}

#[test]
fn a_failed_swap_must_have_seen_another_value() {
    let history = [
        ok(1, put(1, 0), 0, 1, KvOutput::Done),
        ok(2, cas(1, Some(0), 1), 2, 3, KvOutput::Cas(false)),
    ];
    assert_violation_on(&history, 1);
}

#[test]
fn an_unknown_write_that_a_later_read_sees_took_effect() {
    let history = [
        unknown(1, put(1, 5), 0),
        ok(2, get(1), 3, 4, value(Some(5))),
        ok(2, get(1), 5, 6, value(Some(5))),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn an_unknown_write_never_seen_may_never_have_happened() {
    let history = [
        unknown(1, put(1, 5), 0),
        ok(2, get(1), 3, 4, value(None)),
        ok(2, get(1), 5, 6, value(None)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn an_unknown_write_takes_effect_at_most_once() {
    // Seen, then overwritten, then seen again: it cannot have happened twice.
    let history = [
        unknown(1, put(1, 5), 0),
        ok(2, get(1), 3, 4, value(Some(5))),
        ok(2, put(1, 6), 5, 6, KvOutput::Done),
        ok(2, get(1), 7, 8, value(Some(5))),
    ];
    assert_violation_on(&history, 1);
}

#[test]
fn an_unknown_write_cannot_take_effect_before_its_call() {
    let history = [
        ok(2, get(1), 0, 1, value(Some(5))),
        unknown(1, put(1, 5), 2),
    ];
    assert_violation_on(&history, 1);
}

#[test]
fn an_unknown_read_is_ignored_but_listed() {
    let history = [
        ok(1, put(1, 1), 0, 1, KvOutput::Done),
        unknown(2, get(1), 2),
        ok(3, get(1), 3, 4, value(Some(2))),
    ];
    let (ops, prefix, stuck_at) = assert_violation_on(&history, 1);
    assert_eq!(ops, vec![0, 1, 2]);
    assert_eq!(prefix, vec![0]);
    assert_eq!(stuck_at, Some(2));
}

#[test]
fn reading_a_value_never_written_is_a_violation() {
    let history = [
        ok(1, put(1, 1), 0, 1, KvOutput::Done),
        ok(2, get(1), 0, 10, value(Some(42))),
    ];
    assert_violation_on(&history, 1);
}

#[test]
fn only_the_bad_key_is_named() {
    let history = [
        ok(1, put(1, 1), 0, 1, KvOutput::Done),
        ok(1, put(2, 1), 0, 1, KvOutput::Done),
        ok(2, get(1), 2, 3, value(Some(1))),
        ok(1, put(3, 3), 2, 3, KvOutput::Done),
        // Key 2 was written before this read started; it cannot be absent.
        ok(2, get(2), 4, 5, value(None)),
        ok(3, get(3), 4, 5, value(Some(3))),
    ];
    let (ops, _, stuck_at) = assert_violation_on(&history, 2);
    assert_eq!(ops, vec![1, 4]);
    assert_eq!(stuck_at, Some(4));
}

#[test]
fn of_several_bad_keys_the_lowest_is_named() {
    let history = [
        ok(1, get(9), 0, 1, value(Some(1))),
        ok(1, get(4), 0, 1, value(Some(1))),
        ok(1, get(7), 0, 1, value(Some(1))),
    ];
    let (ops, _, _) = assert_violation_on(&history, 4);
    assert_eq!(ops, vec![1]);
}

#[test]
fn the_verdict_is_deterministic() {
    let history = [
        ok(1, put(1, 1), 0, 10, KvOutput::Done),
        ok(2, put(1, 2), 0, 10, KvOutput::Done),
        ok(3, put(1, 3), 0, 10, KvOutput::Done),
        ok(4, get(1), 11, 12, value(Some(4))),
    ];
    let first = verdict(&history);
    assert!(matches!(first, Verdict::NotLinearizable { .. }));
    for _ in 0..5 {
        assert_eq!(verdict(&history), first);
    }
}

#[test]
fn a_return_before_the_call_is_rejected() {
    let history = [
        ok(1, put(1, 1), 0, 1, KvOutput::Done),
        ok(1, get(1), 5, 4, value(Some(1))),
    ];
    let err = check(&KvModel, &history, &CheckOptions::default()).unwrap_err();
    assert_eq!(
        err,
        HistoryError::ReturnBeforeCall {
            index: 1,
            call: 5,
            ret: 4
        }
    );
    assert_eq!(
        err.to_string(),
        "operation 1 returns at 4, before its call at 5"
    );
}

#[test]
fn a_return_without_output_is_rejected() {
    let mut op = ok(1, put(1, 1), 0, 1, KvOutput::Done);
    op.output = None;
    let err = check(&KvModel, &[op], &CheckOptions::default()).unwrap_err();
    assert_eq!(err, HistoryError::ReturnWithoutOutput { index: 0 });
}

#[test]
fn an_output_without_return_is_rejected() {
    let mut op = ok(1, put(1, 1), 0, 1, KvOutput::Done);
    op.ret = None;
    let history = [ok(1, get(1), 0, 1, value(None)), op];
    let err = check(&KvModel, &history, &CheckOptions::default()).unwrap_err();
    assert_eq!(err, HistoryError::OutputWithoutReturn { index: 1 });
}

#[test]
fn extreme_times_are_handled() {
    let history = [
        ok(1, put(1, 1), 0, u64::MAX, KvOutput::Done),
        ok(2, get(1), u64::MAX, u64::MAX, value(Some(1))),
        unknown(3, put(1, 2), u64::MAX),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

/// Every write overlaps every other, and the final read sees a value nobody
/// wrote: proving that takes exploring every subset of the writes.
fn hopeless_history(writes: u64) -> Vec<KvOp> {
    let mut history: Vec<KvOp> = (0..writes)
        .map(|i| ok(i, put(1, i), 0, 100, KvOutput::Done))
        .collect();
    history.push(ok(writes, get(1), 101, 102, value(Some(writes))));
    history
}

#[test]
fn a_small_budget_gives_up_with_unknown() {
    let history = hopeless_history(40);
    let opts = CheckOptions { max_steps: 10_000 };
    assert_eq!(
        check(&KvModel, &history, &opts).unwrap(),
        Verdict::Unknown { partition: 1 }
    );
}

#[test]
fn the_default_budget_gives_up_on_a_hopeless_history_promptly() {
    let history = hopeless_history(60);
    let start = std::time::Instant::now();
    let verdict = check(&KvModel, &history, &CheckOptions::default()).unwrap();
    assert_eq!(verdict, Verdict::Unknown { partition: 1 });
    eprintln!("gave up after {:?}", start.elapsed());
}

#[test]
fn a_violation_beats_an_unknown_on_a_lower_key() {
    let mut history = hopeless_history(40);
    history.push(ok(100, put(2, 1), 0, 1, KvOutput::Done));
    history.push(ok(100, get(2), 2, 3, value(None)));
    let opts = CheckOptions { max_steps: 10_000 };
    let verdict = check(&KvModel, &history, &opts).unwrap();
    assert!(
        matches!(verdict, Verdict::NotLinearizable { partition: 2, .. }),
        "{verdict:?}"
    );
}
