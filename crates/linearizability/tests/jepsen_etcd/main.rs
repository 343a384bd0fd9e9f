//! Checks the Jepsen etcd logs collected by ahorn's linearizability-checker
//! (as shipped in the `todc-utils` package) against their published verdicts.

mod locate;
mod log;
mod register;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use ekmat_linearizability::kv::{KvInput, KvModel, KvOutput};
use ekmat_linearizability::{
    CheckOptions, Model, Operation, SearchOrder, Verdict, check, check_with_order,
};

use register::{RegisterInput, RegisterModel, RegisterOutput};

/// The logs are numbered `000..=LAST_LOG`.
const LAST_LOG: u32 = 102;
/// Jepsen could not boot etcd in this run; the log holds no operations.
const NO_HISTORY: u32 = 95;
/// The logs whose histories are linearizable; every other one is not. From
/// ahorn/linearizability-checker, lt.cc (commit 9b589ae, line 5400), as
/// repeated in todc-utils' `tests/linearizability/etcd.rs`.
const LINEARIZABLE: &[u32] = &[
    2, 5, 7, 18, 25, 31, 38, 45, 48, 49, 51, 53, 56, 67, 75, 76, 80, 87, 92, 98, 100, 101, 102,
];

/// The published verdict of log `n`; `None` for the one without a history.
fn expected(n: u32) -> Option<bool> {
    (n != NO_HISTORY).then(|| LINEARIZABLE.contains(&n))
}

fn log_name(n: u32) -> String {
    format!("etcd_{n:03}.log")
}

fn read_log(dir: &Path, n: u32) -> Vec<log::RegisterOp> {
    let path = dir.join(log_name(n));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    log::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_log_directory_holds_exactly_the_expected_logs() {
    let dir = &locate::etcd_logs().logs;
    let found: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("etcd_") && name.ends_with(".log"))
        .collect();
    let wanted: BTreeSet<String> = (0..=LAST_LOG).map(log_name).collect();
    assert_eq!(found, wanted, "in {}", dir.display());
}

/// Guards the table above against transcription errors by comparing it with
/// the copy in the package the logs came from.
#[test]
fn the_verdict_table_matches_the_one_shipped_with_the_logs() {
    let Some(path) = &locate::etcd_logs().verdicts else {
        eprintln!("logs came from an override directory; no table to compare with");
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let mut theirs = Vec::new();
    for line in text.lines().map(str::trim) {
        // e.g. `test_002: ("002", true),`; commented-out entries are skipped.
        let Some(rest) = line.strip_prefix("test_") else {
            continue;
        };
        let (_, entry) = rest.split_once("(\"").expect("an entry");
        let (number, verdict) = entry.split_once("\", ").expect("a verdict");
        theirs.push((number.parse::<u32>().unwrap(), verdict.starts_with("true")));
    }
    let ours: Vec<(u32, bool)> = (0..=LAST_LOG)
        .filter_map(|n| expected(n).map(|v| (n, v)))
        .collect();
    assert_eq!(ours, theirs, "vs {}", path.display());
}

#[test]
fn the_log_without_a_history_parses_to_an_empty_one() {
    let dir = &locate::etcd_logs().logs;
    let history = read_log(dir, NO_HISTORY);
    assert!(history.is_empty());
    let verdict = check(&RegisterModel, &history, &CheckOptions::default()).unwrap();
    assert_eq!(verdict, Verdict::Linearizable);
}

/// What checking one log produced.
struct Outcome {
    log: u32,
    ops: usize,
    verdict: Verdict,
    took: Duration,
}

fn check_log(dir: &Path, n: u32, order: SearchOrder) -> Outcome {
    let history = read_log(dir, n);
    let start = Instant::now();
    let verdict = check_with_order(&RegisterModel, &history, &CheckOptions::default(), order)
        .unwrap_or_else(|e| panic!("{}: {e}", log_name(n)));
    let took = start.elapsed();
    if let Verdict::NotLinearizable {
        longest_prefix,
        stuck_at,
        ..
    } = &verdict
    {
        assert_witness_replays(&history, longest_prefix, *stuck_at);
    }
    Outcome {
        log: n,
        ops: history.len(),
        verdict,
        took,
    }
}

/// The reported prefix must be a sequence the model accepts, and the op it
/// got stuck at must not be part of it.
fn assert_witness_replays(history: &[log::RegisterOp], prefix: &[usize], stuck_at: Option<usize>) {
    let mut state = RegisterModel.init();
    for &i in prefix {
        let op = &history[i];
        state = RegisterModel
            .step(&state, &op.input, op.output.as_ref())
            .unwrap_or_else(|| panic!("witness op {i} ({op:?}) rejected from {state:?}"));
    }
    let stuck = stuck_at.expect("a violation names the op it got stuck at");
    assert!(!prefix.contains(&stuck));
}

/// `None` for a budget that ran out, which never matches a published verdict.
fn verdict_as_bool(verdict: &Verdict) -> Option<bool> {
    match verdict {
        Verdict::Linearizable => Some(true),
        Verdict::NotLinearizable { .. } => Some(false),
        Verdict::Unknown { .. } => None,
    }
}

/// Checks every log with a history using `order`, and reports all
/// mismatches together, with timings.
fn check_every_log(order: SearchOrder) {
    let dir = &locate::etcd_logs().logs;
    let outcomes: Vec<Outcome> = (0..=LAST_LOG)
        .filter(|&n| n != NO_HISTORY)
        .map(|n| check_log(dir, n, order))
        .collect();
    let total: Duration = outcomes.iter().map(|o| o.took).sum();
    let slowest = outcomes.iter().max_by_key(|o| o.took).unwrap();
    eprintln!(
        "{order:?}: checked {} etcd logs in {total:?}; slowest {} ({} ops) took {:?}",
        outcomes.len(),
        log_name(slowest.log),
        slowest.ops,
        slowest.took
    );
    let mismatches: Vec<String> = outcomes
        .iter()
        .filter(|o| verdict_as_bool(&o.verdict) != expected(o.log))
        .map(|o| {
            format!(
                "{} ({} ops, {:?}): expected linearizable={:?}, got {:?}",
                log_name(o.log),
                o.ops,
                o.took,
                expected(o.log),
                o.verdict
            )
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{order:?}:\n{}",
        mismatches.join("\n")
    );
}

/// What `check` does.
#[test]
fn every_etcd_log_gets_its_published_verdict() {
    check_every_log(SearchOrder::Both);
}

/// Each search alone is complete too, only slower on some logs.
#[test]
fn every_etcd_log_gets_its_published_verdict_from_the_eager_search_alone() {
    check_every_log(SearchOrder::Eager);
}

#[test]
fn every_etcd_log_gets_its_published_verdict_from_the_lazy_search_alone() {
    check_every_log(SearchOrder::Lazy);
}

/// The register is one key of the KV map: the crate's own model must reach
/// the same verdicts.
#[test]
fn every_etcd_log_gets_its_published_verdict_through_the_kv_model() {
    let dir = &locate::etcd_logs().logs;
    for n in (0..=LAST_LOG).filter(|&n| n != NO_HISTORY) {
        let history: Vec<_> = read_log(dir, n).into_iter().map(as_kv).collect();
        let verdict = check(&KvModel, &history, &CheckOptions::default()).unwrap();
        assert_eq!(
            verdict_as_bool(&verdict),
            expected(n),
            "{}: {verdict:?}",
            log_name(n)
        );
    }
}

/// A register operation as the same operation on KV key 0.
fn as_kv(op: log::RegisterOp) -> Operation<KvInput, KvOutput> {
    let key = 0;
    let input = match op.input {
        RegisterInput::Read => KvInput::Get { key },
        RegisterInput::Write(value) => KvInput::Put { key, value },
        RegisterInput::Cas(from, to) => KvInput::Cas {
            key,
            expected: Some(from),
            new: to,
        },
    };
    let output = op.output.map(|output| match output {
        RegisterOutput::Read(value) => KvOutput::Value(value),
        RegisterOutput::Written => KvOutput::Done,
        RegisterOutput::Cas(swapped) => KvOutput::Cas(swapped),
    });
    Operation {
        client: op.client,
        input,
        call: op.call,
        ret: op.ret,
        output,
    }
}
