//! The correct protocol survives every fault across many seeds and cluster sizes.

use std::time::Duration;

use ekmat_sim::FaultKind;
use ekmat_sim::protocols::RaftSim;
use ekmat_sim::run::{SimOptions, Summary, run_seed, run_seeds};

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// No seed of the run found a violation; `what` names the run if one did.
fn assert_clean(summary: &Summary, what: &str) {
    assert_eq!(
        summary.violations,
        0,
        "{what}: first failure: {:?}",
        summary
            .first_failure
            .as_ref()
            .map(|f| (f.seed, &f.violation))
    );
}

#[test]
fn raft_survives_all_faults_on_five_nodes() {
    let summary = run_seeds(
        &RaftSim::default(),
        &SimOptions::default(),
        10_000,
        150,
        threads(),
        false,
        &|_| {},
    );
    assert_clean(&summary, "five nodes");
    assert_eq!(summary.seeds, 150);
    assert!(summary.faults > 150 * 5, "faults were injected");
    assert!(summary.crashes > 0 && summary.elections > 150);
    assert_eq!(summary.ops, 150 * 2000);
}

#[test]
fn raft_survives_membership_churn_with_all_faults() {
    let opts = SimOptions {
        faults: FaultKind::ALL.into_iter().chain(FaultKind::EXTRA).collect(),
        ..SimOptions::default()
    };
    let summary = run_seeds(
        &RaftSim::default(),
        &opts,
        30_000,
        80,
        threads(),
        false,
        &|_| {},
    );
    assert_clean(&summary, "membership churn");
    assert!(
        summary.reconfigurations > 40,
        "only {} configurations committed",
        summary.reconfigurations
    );
}

#[test]
fn raft_survives_on_other_cluster_sizes() {
    for nodes in [1, 2, 3, 4, 7] {
        let opts = SimOptions {
            nodes,
            ops: 600,
            safety: Duration::from_secs(6),
            ..SimOptions::default()
        };
        let summary = run_seeds(
            &RaftSim::default(),
            &opts,
            20_000,
            20,
            threads(),
            false,
            &|_| {},
        );
        assert_clean(&summary, &format!("{nodes} nodes"));
    }
}

#[test]
fn without_faults_every_operation_succeeds() {
    let opts = SimOptions {
        faults: vec![],
        ops: 500,
        safety: Duration::from_secs(4),
        ..SimOptions::default()
    };
    let report = run_seed(&RaftSim::default(), &opts, 1);
    assert!(report.violation.is_none(), "{:?}", report.violation);
    assert_eq!(report.stats.faults, 0);
    assert_eq!(
        report.ok, 500,
        "{} failed, {} unknown",
        report.failed, report.unknown
    );
}

#[test]
fn each_fault_kind_alone_is_survived() {
    for kind in FaultKind::ALL {
        let opts = SimOptions {
            faults: vec![kind],
            ops: 600,
            safety: Duration::from_secs(6),
            ..SimOptions::default()
        };
        let summary = run_seeds(
            &RaftSim::default(),
            &opts,
            30_000,
            8,
            threads(),
            false,
            &|_| {},
        );
        assert_clean(&summary, &format!("{kind:?}"));
        assert!(summary.faults > 0, "{kind:?} was never injected");
    }
}
