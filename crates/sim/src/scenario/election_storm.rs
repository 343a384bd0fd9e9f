//! Seed 001/002's election storm: an overloaded node — the cluster's first leader —
//! keeps stalling for longer than an election timeout (GC pauses, CPU starvation).
//! Without pre-vote and check-quorum, each time it wakes up it starts an election with a
//! higher term and deposes the healthy leader; with them, the cluster's term stays put.
//! The scenario runs the same storm both ways and reports terms per simulated hour.

use std::time::Duration;

use ekmat_core::{DetRng, NodeId, Time};

use super::{Scenario, ScenarioConfig, ScenarioReport};
use crate::protocols::RaftSim;
use crate::run::{SeedReport, SimOptions, run_seed, run_seed_observed};
use crate::schedule::{Fault, Schedule, ScheduledFault, Target};

pub const SCENARIO: Scenario = Scenario {
    name: "election-storm",
    about: "a slow, overloaded leader stalls again and again: terms per hour with and without pre-vote and check-quorum",
    run,
};

const SEED: u64 = 5;
const STORM_STARTS: Time = Time(2_000_000);

/// Pauses of 100–600 ms every 0.5–2.5 s: longer than an election timeout about half of
/// the time.
fn storm(node: NodeId, length: Duration, rng: &mut DetRng) -> Schedule {
    let mut faults = Vec::new();
    let end = STORM_STARTS + length;
    let mut t = STORM_STARTS;
    while t < end {
        let lasts = Duration::from_millis(rng.range(100, 600));
        faults.push(ScheduledFault {
            at: t,
            lasts,
            fault: Fault::Pause {
                target: Target::Node(node),
            },
        });
        t = t + lasts + Duration::from_millis(rng.range(500, 2500));
    }
    Schedule { faults }
}

fn options(length: Duration, schedule: Option<Schedule>) -> SimOptions {
    SimOptions {
        faults: vec![],
        clients: 4,
        ops: (length.as_secs() as usize).max(200),
        safety: STORM_STARTS.since(Time::ZERO) + length,
        schedule,
        ..SimOptions::default()
    }
}

fn protocol(protected: bool) -> RaftSim {
    RaftSim {
        pre_vote: protected,
        check_quorum: protected,
        vary_knobs: false,
        ..RaftSim::default()
    }
}

fn terms_per_hour(run: &SeedReport, length: Duration) -> f64 {
    run.stats.max_term as f64 * 3600.0 / length.as_secs_f64()
}

fn run(cfg: &ScenarioConfig) -> ScenarioReport {
    let mut report = ScenarioReport::new(&SCENARIO);
    let length = cfg.hour();

    // Find the first leader: it is the node that will be overloaded.
    let mut first_leader = None;
    let probe = options(Duration::from_secs(1), None);
    run_seed_observed(
        &protocol(true),
        &probe,
        SEED,
        Duration::from_millis(5),
        &mut |w| {
            if first_leader.is_none() && w.now() < STORM_STARTS {
                first_leader = w.leader();
            }
        },
    );
    let Some(slow) = first_leader else {
        report.expect(false, "a leader was elected before the storm");
        return report;
    };
    let schedule = storm(slow, length, &mut DetRng::new(SEED));
    report.tell(
        STORM_STARTS,
        format!("{slow}, the first leader, starts stalling: {} pauses of 100-600 ms over {} simulated minutes", schedule.len(), length.as_secs() / 60),
    );
    let opts = options(length, Some(schedule));
    let with = run_seed(&protocol(true), &opts, SEED);
    let without = run_seed(&protocol(false), &opts, SEED);
    let (a, b) = (
        terms_per_hour(&with, length),
        terms_per_hour(&without, length),
    );
    report.figure(
        "terms per simulated hour with pre-vote and check-quorum",
        format!("{a:.0} ({} elections)", with.stats.elections),
    );
    report.figure(
        "terms per simulated hour without them",
        format!("{b:.0} ({} elections)", without.stats.elections),
    );
    report.expect(a * 4.0 <= b, format!("pre-vote and check-quorum cut the term churn at least fourfold ({a:.0} vs {b:.0} terms/hour)"));
    report.expect_clean_run(&with);
    report.expect(
        without.violation.is_none(),
        "the unprotected cluster stays safe too, only unstable",
    );
    report
}
