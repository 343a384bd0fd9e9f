//! Runs are functions of their seed: they replay exactly, from the seed alone or with
//! their schedule written out, and failing schedules shrink to ones that still fail.

use ekmat_raft::Mutant;
use ekmat_sim::Schedule;
use ekmat_sim::protocols::RaftSim;
use ekmat_sim::run::{SimOptions, run_seed};
use ekmat_sim::shrink::shrink;

#[test]
fn a_seed_replays_to_the_same_trace_hash() {
    let opts = SimOptions {
        ops: 500,
        ..SimOptions::default()
    };
    let a = run_seed(&RaftSim::default(), &opts, 42);
    let b = run_seed(&RaftSim::default(), &opts, 42);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.stats.events, b.stats.events);
}

#[test]
fn a_written_out_schedule_replays_the_same_run() {
    let opts = SimOptions {
        ops: 500,
        ..SimOptions::default()
    };
    let original = run_seed(&RaftSim::default(), &opts, 43);
    let text = original.schedule.to_string();
    let replay_opts = SimOptions {
        schedule: Some(text.parse::<Schedule>().unwrap()),
        ..opts
    };
    let replayed = run_seed(&RaftSim::default(), &replay_opts, 43);
    assert_eq!(original.trace_hash, replayed.trace_hash);
}

#[test]
fn tracing_does_not_change_the_run() {
    let opts = SimOptions {
        ops: 300,
        ..SimOptions::default()
    };
    let quiet = run_seed(&RaftSim::default(), &opts, 44);
    let traced = run_seed(
        &RaftSim::default(),
        &SimOptions {
            trace: true,
            ..opts
        },
        44,
    );
    assert_eq!(quiet.trace_hash, traced.trace_hash);
    assert!(traced.trace.len() > 100);
    assert!(traced.trace.iter().any(|l| l.contains("BecameLeader")));
}

#[test]
fn a_failing_schedule_shrinks_and_still_fails() {
    let proto = RaftSim {
        mutant: Mutant::ForgetVotePersist,
        ..RaftSim::default()
    };
    let opts = SimOptions::default();
    let failing = (0..50)
        .map(|seed| run_seed(&proto, &opts, seed))
        .find(|r| r.violation.is_some())
        .expect("the mutant fails within 50 seeds");
    let property = failing.violation.as_ref().unwrap().property;
    let (small, report) = shrink(
        &proto,
        &opts,
        failing.seed,
        &failing.schedule,
        property,
        &|_, _| {},
    );
    assert!(
        small.len() < failing.schedule.len(),
        "{} -> {}",
        failing.schedule.len(),
        small.len()
    );
    assert_eq!(report.violation.map(|v| v.property), Some(property));
}
