//! Timings of the checker on simulator-like histories. Ignored by default
//! because only a release build gives meaningful numbers:
//!
//! ```text
//! cargo test --release -p ekmat-linearizability --test perf -- --ignored --nocapture --test-threads 1
//! ```

mod support;

use std::time::{Duration, Instant};

use ekmat_linearizability::kv::{KvInput, KvModel, KvOutput};
use ekmat_linearizability::{CheckOptions, Operation, Verdict, check};

use support::Workload;

/// Checks `seeds` histories of `workload` and prints the timings.
fn time_workload(name: &str, workload: &Workload, seeds: u64) {
    let mut times = Vec::new();
    for seed in 0..seeds {
        let history = support::simulated(workload, seed);
        let start = Instant::now();
        let verdict = check(&KvModel, &history, &CheckOptions::default()).unwrap();
        times.push(start.elapsed());
        assert_eq!(verdict, Verdict::Linearizable, "{name}, seed {seed}");
    }
    times.sort();
    let total: Duration = times.iter().sum();
    eprintln!(
        "{name}: {seeds} histories, mean {:?}, median {:?}, max {:?}",
        total / seeds as u32,
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn timings_of_simulator_like_histories() {
    time_workload(
        "5 keys, 2000 ops, 10 clients, 3% unknown, unique values",
        &Workload::sim_like(5, 2000),
        100,
    );
    time_workload(
        "5 keys, 2000 ops, 10 clients, 3% unknown, values 0..5",
        &Workload {
            values: 5,
            ..Workload::sim_like(5, 2000)
        },
        100,
    );
    time_workload(
        "1 key, 600 ops, 10 clients, 5% unknown, unique values",
        &Workload {
            unknown_percent: 5,
            ..Workload::sim_like(1, 600)
        },
        100,
    );
    time_workload(
        "1 key, 600 ops, 10 clients, 5% unknown, values 0..5",
        &Workload {
            unknown_percent: 5,
            values: 5,
            ..Workload::sim_like(1, 600)
        },
        100,
    );
}

/// Checks `seeds` histories of `workload`, each with one read (in the middle
/// of the last key's operations) changed to a value never written, and prints
/// the timings and how many were caught before the budget ran out.
fn time_violations(name: &str, workload: &Workload, seeds: u64) {
    let mut times = Vec::new();
    let mut unknown = 0;
    for seed in 0..seeds {
        let mut history = support::simulated(workload, seed);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| {
                matches!(history[i].input, KvInput::Get { .. }) && history[i].ret.is_some()
            })
            .collect();
        let read = reads[reads.len() / 2];
        history[read].output = Some(KvOutput::Value(Some(u64::MAX)));
        let start = Instant::now();
        let verdict = check(&KvModel, &history, &CheckOptions::default()).unwrap();
        times.push(start.elapsed());
        match verdict {
            Verdict::NotLinearizable { .. } => {}
            Verdict::Unknown { .. } => unknown += 1,
            Verdict::Linearizable => panic!("{name}, seed {seed}: missed the violation"),
        }
    }
    times.sort();
    let total: Duration = times.iter().sum();
    eprintln!(
        "{name}, one bad read: {seeds} histories, mean {:?}, median {:?}, max {:?}, {unknown} out of budget",
        total / seeds as u32,
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn timings_of_violations() {
    time_violations(
        "5 keys, 2000 ops, 10 clients, 3% unknown, unique values",
        &Workload::sim_like(5, 2000),
        20,
    );
    time_violations(
        "1 key, 600 ops, 10 clients, 5% unknown, unique values",
        &Workload {
            unknown_percent: 5,
            ..Workload::sim_like(1, 600)
        },
        20,
    );
    time_violations(
        "1 key, 600 ops, 10 clients, 5% unknown, values 0..5",
        &Workload {
            unknown_percent: 5,
            values: 5,
            ..Workload::sim_like(1, 600)
        },
        20,
    );
}

/// 600 writes all concurrent, then a read of a value nobody wrote: the
/// budget must run out, and this shows how long that takes.
#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn time_to_exhaust_the_default_budget() {
    let mut history: Vec<_> = (0..600)
        .map(|i| Operation {
            client: i,
            input: KvInput::Put { key: 0, value: i },
            call: 0,
            ret: Some(100),
            output: Some(KvOutput::Done),
        })
        .collect();
    history.push(Operation {
        client: 600,
        input: KvInput::Get { key: 0 },
        call: 101,
        ret: Some(102),
        output: Some(KvOutput::Value(Some(1000))),
    });
    let start = Instant::now();
    let verdict = check(&KvModel, &history, &CheckOptions::default()).unwrap();
    assert_eq!(verdict, Verdict::Unknown { partition: 0 });
    eprintln!("600 concurrent writes: gave up after {:?}", start.elapsed());
}
