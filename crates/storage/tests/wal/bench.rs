//! Group commit's pay-off on this machine's disk: 256-byte records, one `sync` per batch.
//! Ignored by default; run in release:
//!
//! ```sh
//! cargo test --release -p ekmat-storage --test wal bench -- --ignored --nocapture
//! ```
//!
//! The log goes under `EKMAT_BENCH_DIR` if set, else under the target directory's `tmp/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ekmat_storage::{Wal, WalOptions};

const RECORD: usize = 256;
const BUDGET: Duration = Duration::from_secs(2);
const MAX_RECORDS: u64 = 1_000_000;

struct Run {
    records: u64,
    syncs: u64,
    elapsed: Duration,
    sync_latencies: Vec<Duration>,
}

fn bench_dir() -> PathBuf {
    std::env::var_os("EKMAT_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from)
}

fn run(batch: u64, sync: bool) -> Run {
    let base = bench_dir();
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let opts = WalOptions {
        sync,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(tmp.path(), opts).unwrap();
    let payload = vec![0xabu8; RECORD];
    let mut run = Run {
        records: 0,
        syncs: 0,
        elapsed: Duration::ZERO,
        sync_latencies: Vec::new(),
    };
    let start = Instant::now();
    while start.elapsed() < BUDGET && run.records < MAX_RECORDS {
        for _ in 0..batch {
            wal.append(&payload).unwrap();
        }
        let before = Instant::now();
        wal.sync().unwrap();
        run.sync_latencies.push(before.elapsed());
        run.records += batch;
        run.syncs += 1;
    }
    run.elapsed = start.elapsed();
    run
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn report(label: &str, batch: u64, mut run: Run) {
    run.sync_latencies.sort();
    let percentile = |p: f64| {
        let index = ((run.sync_latencies.len() - 1) as f64 * p).round() as usize;
        micros(run.sync_latencies[index])
    };
    let mean = micros(run.sync_latencies.iter().sum::<Duration>()) / run.syncs as f64;
    println!(
        "{label:>8} batch {batch:>5}: {:>10.0} records/s, {:>8.0} syncs/s, sync µs mean {mean:>7.0} p50 {:>7.0} p99 {:>7.0} ({} records in {:.2} s)",
        run.records as f64 / run.elapsed.as_secs_f64(),
        run.syncs as f64 / run.elapsed.as_secs_f64(),
        percentile(0.5),
        percentile(0.99),
        run.records,
        run.elapsed.as_secs_f64(),
    );
}

#[test]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
fn group_commit() {
    println!(
        "256-byte records, one sync per batch, log under {}",
        bench_dir().display()
    );
    for batch in [1, 10, 100, 1000] {
        report("fsync", batch, run(batch, true));
    }
    for batch in [1, 1000] {
        report("no-fsync", batch, run(batch, false));
    }
}
