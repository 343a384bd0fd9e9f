//! Clock drift as a fault: it changes what nodes do, the run stays a function of its
//! seed, and lease reads stay linearizable under it.

use std::time::Duration;

use ekmat_raft::ReadMode;
use ekmat_sim::protocols::RaftSim;
use ekmat_sim::run::{SimOptions, run_seed};
use ekmat_sim::{FaultKind, Schedule};

fn opts(schedule: &str) -> SimOptions {
    SimOptions {
        ops: 400,
        safety: Duration::from_secs(5),
        schedule: Some(schedule.parse::<Schedule>().unwrap()),
        ..SimOptions::default()
    }
}

fn lease() -> RaftSim {
    RaftSim {
        read_mode: Some(ReadMode::Lease),
        ..RaftSim::default()
    }
}

#[test]
fn drifting_clocks_change_the_run_and_replay_exactly() {
    let drift = opts("@100ms+4800ms clock(leader)");
    let a = run_seed(&lease(), &drift, 11);
    let b = run_seed(&lease(), &drift, 11);
    assert!(a.violation.is_none(), "{:?}", a.violation);
    assert_eq!(a.stats.faults, 1);
    assert_eq!(a.trace_hash, b.trace_hash);
    let steady = run_seed(&lease(), &opts(""), 11);
    assert_ne!(
        a.trace_hash, steady.trace_hash,
        "nodes' timers follow their clocks"
    );
}

#[test]
fn lease_reads_survive_clock_faults_and_partitions() {
    let o = SimOptions {
        faults: vec![FaultKind::Clock, FaultKind::Partition],
        ops: 600,
        safety: Duration::from_secs(6),
        ..SimOptions::default()
    };
    for seed in 40_000..40_010 {
        let r = run_seed(&lease(), &o, seed);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
    }
}
