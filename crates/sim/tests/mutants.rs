//! The checkers bite: every planted bug is caught within the default number of seeds
//! (the `ekmat sim --mutant NAME` contract), and the correct protocol is not accused.

use ekmat_raft::Mutant;
use ekmat_sim::protocols::RaftSim;
use ekmat_sim::run::{DEFAULT_SEEDS, SimOptions, Summary, run_seeds};
use ekmat_sim::schedule::FaultKind;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn hunt(mutant: Mutant) -> Summary {
    hunt_with(mutant, SimOptions::default())
}

fn hunt_with(mutant: Mutant, opts: SimOptions) -> Summary {
    let proto = RaftSim {
        mutant,
        ..RaftSim::default()
    };
    run_seeds(&proto, &opts, 0, DEFAULT_SEEDS, threads(), true, &|_| {})
}

fn assert_caught(mutant: Mutant, properties: &[&str]) {
    assert_caught_in(hunt(mutant), mutant, properties);
}

fn assert_caught_in(summary: Summary, mutant: Mutant, properties: &[&str]) {
    let failure = summary
        .first_failure
        .unwrap_or_else(|| panic!("{} survived {DEFAULT_SEEDS} seeds", mutant.name()));
    let v = failure.violation.expect("a failure carries its violation");
    assert!(
        properties.contains(&v.property),
        "{} was caught, but by an unexpected property: {v}",
        mutant.name()
    );
}

#[test]
fn committing_an_old_term_entry_by_counting_is_caught() {
    assert_caught(
        Mutant::CommitOldTerm,
        &[
            "commit-safety",
            "leader-completeness",
            "state-machine-safety",
            "linearizability",
        ],
    );
}

#[test]
fn voting_without_the_log_check_is_caught() {
    assert_caught(
        Mutant::VoteWithoutLogCheck,
        &[
            "leader-completeness",
            "commit-safety",
            "state-machine-safety",
            "assertion",
        ],
    );
}

#[test]
fn forgetting_to_persist_the_vote_is_caught() {
    assert_caught(
        Mutant::ForgetVotePersist,
        &["vote-durability", "election-safety"],
    );
}

#[test]
fn reading_without_a_quorum_round_is_caught_by_linearizability() {
    assert_caught(Mutant::ReadWithoutQuorum, &["linearizability"]);
}

#[test]
fn installing_a_stale_snapshot_is_caught() {
    assert_caught(
        Mutant::InstallStaleSnapshot,
        &["state-machine-rollback", "apply-order", "assertion"],
    );
}

/// Under membership faults alone (churn, and `config-split` striking the moment a
/// leader takes in voters it adds) 81 of 500 seeds catch it, the first on seed 1;
/// mixed with every other kind, 7 of 500 (2026-12-07).
#[test]
fn skipping_the_joint_configuration_is_caught_under_membership_churn() {
    let opts = SimOptions {
        faults: vec![FaultKind::Membership],
        ..SimOptions::default()
    };
    assert_caught_in(
        hunt_with(Mutant::ConfigBeforeJoint, opts),
        Mutant::ConfigBeforeJoint,
        &[
            "commit-safety",
            "election-safety",
            "leader-completeness",
            "state-machine-safety",
            "linearizability",
        ],
    );
}

#[test]
fn serving_lease_reads_past_the_bound_is_caught_by_linearizability() {
    assert_caught(Mutant::ServeLeaseReadPastBound, &["linearizability"]);
}

/// The bug shows only when clocks drift at the moment a lease is cut off: under every
/// kind of fault that is about one seed in a thousand (so which seed first finds it moves
/// with any change to message timing); under clock faults alone, one in fifteen.
#[test]
fn a_lease_that_ignores_the_clock_drift_bound_is_caught_by_linearizability() {
    let opts = SimOptions {
        faults: vec![FaultKind::Clock],
        ..SimOptions::default()
    };
    assert_caught_in(
        hunt_with(Mutant::LeaseIgnoresDrift, opts),
        Mutant::LeaseIgnoresDrift,
        &["linearizability"],
    );
}
