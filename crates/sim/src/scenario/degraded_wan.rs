//! Seed 002's degraded WAN: five replicas in three sites (two in Mumbai, two in Delhi,
//! one in Bangalore) whose links degrade to the seed's figures — Mumbai–Delhi 20 → 200 ms
//! with 5% loss, Mumbai–Bangalore 35 → 350 ms with 12%, Delhi–Bangalore 45 → 90 ms with
//! 2% — half a minute after the cluster starts on a healthy network. No replica fails,
//! so every election after the first is needless. The scenario runs the same hours
//! (several seeds, so the first leader lands in different sites) with fixed 150–300 ms
//! timeouts and with adaptive ones (seed 001: heartbeat = mean(RTT) + 2σ, election =
//! 3 × heartbeat) and counts elections.

use std::time::Duration;

use ekmat_core::{NodeId, Time};
use ekmat_raft::{AdaptiveTimeouts, RaftNode};

use super::{Scenario, ScenarioConfig, ScenarioReport};
use crate::network::{LatencyRange, Link, LinkTable};
use crate::protocols::RaftSim;
use crate::run::{SeedReport, SimOptions, run_seed_observed};
use crate::world::World;

pub const SCENARIO: Scenario = Scenario {
    name: "degraded-wan",
    about: "seed 002's degraded Mumbai/Delhi/Bangalore links: needless elections per hour with fixed vs adaptive timeouts",
    run,
};

const SEEDS: std::ops::Range<u64> = 0..6;
const DEGRADE_AT: Time = Time(30_000_000);
const MUMBAI: [u32; 2] = [0, 1];
const DELHI: [u32; 2] = [2, 3];
const BANGALORE: [u32; 1] = [4];

/// A degraded link: the seed's latency, spread by congestion from ¾ to 1½ times it.
fn degraded(ms: u64, loss_percent: u32) -> Link {
    Link {
        latency: LatencyRange {
            min: Duration::from_millis(ms * 3 / 4),
            max: Duration::from_millis(ms * 3 / 2),
        },
        loss_percent,
    }
}

fn links() -> LinkTable {
    let mut table = LinkTable::starting_at(DEGRADE_AT);
    let mut connect = |a: &[u32], b: &[u32], link: Link| {
        for &x in a {
            for &y in b {
                table.set(NodeId(x), NodeId(y), link);
            }
        }
    };
    connect(&MUMBAI, &DELHI, degraded(200, 5));
    connect(&MUMBAI, &BANGALORE, degraded(350, 12));
    connect(&DELHI, &BANGALORE, degraded(90, 2));
    table
}

fn options(length: Duration) -> SimOptions {
    SimOptions {
        faults: vec![],
        clients: 4,
        ops: (length.as_secs() as usize).max(200),
        safety: length,
        links: links(),
        // Requests cross the slow links too.
        liveness_bound: Duration::from_secs(10),
        ..SimOptions::default()
    }
}

fn protocol(adaptive: bool) -> RaftSim {
    RaftSim {
        adaptive: adaptive.then(AdaptiveTimeouts::default),
        vary_knobs: false,
        ..RaftSim::default()
    }
}

fn per_hour(count: u64, length: Duration) -> f64 {
    count as f64 * 3600.0 / length.as_secs_f64()
}

/// A seed's run, and the leader's timeouts at its end.
fn measure(
    adaptive: bool,
    length: Duration,
    seed: u64,
) -> (SeedReport, Option<(Duration, Duration)>) {
    let mut last = None;
    let end = Time::ZERO + length;
    let run = run_seed_observed(
        &protocol(adaptive),
        &options(length),
        seed,
        Duration::from_secs(1),
        &mut |w: &World<'_, RaftSim>| {
            if w.now() <= end {
                last = w
                    .leader()
                    .and_then(|l| w.replica(l))
                    .map(RaftNode::timeouts);
            }
        },
    );
    (run, last)
}

fn run(cfg: &ScenarioConfig) -> ScenarioReport {
    let mut report = ScenarioReport::new(&SCENARIO);
    let length = cfg.hour();
    report.tell(
        DEGRADE_AT,
        format!(
            "n0, n1 in Mumbai; n2, n3 in Delhi; n4 in Bangalore: the links degrade, for {} simulated minutes per run",
            length.as_secs() / 60
        ),
    );
    // The first election is needed; the rest are not.
    let needless = |r: &SeedReport| r.stats.elections.saturating_sub(1);
    let (mut fixed_needless, mut adaptive_needless, mut fixed_terms, mut adaptive_terms) =
        (0, 0, 0, 0);
    let mut timeouts = None;
    let mut runs = Vec::new();
    for seed in SEEDS {
        let (fixed, _) = measure(false, length, seed);
        let (adaptive, settled) = measure(true, length, seed);
        fixed_needless += needless(&fixed);
        adaptive_needless += needless(&adaptive);
        fixed_terms += fixed.stats.max_term;
        adaptive_terms += adaptive.stats.max_term;
        timeouts = settled.or(timeouts);
        runs.push(fixed);
        runs.push(adaptive);
    }
    let hours = length * SEEDS.count() as u32;
    let (a, b) = (
        per_hour(fixed_needless, hours),
        per_hour(adaptive_needless, hours),
    );
    report.figure(
        "needless elections per simulated hour, fixed 150-300 ms timeouts",
        format!(
            "{a:.1} ({fixed_needless} in {} runs, {fixed_terms} terms)",
            SEEDS.count()
        ),
    );
    report.figure(
        "needless elections per simulated hour, adaptive timeouts",
        format!(
            "{b:.1} ({adaptive_needless} in {} runs, {adaptive_terms} terms)",
            SEEDS.count()
        ),
    );
    if let Some((heartbeat, election)) = timeouts {
        report.figure(
            "adaptive timeouts the leader settled on",
            format!(
                "heartbeat {} ms, election {} ms",
                heartbeat.as_millis(),
                election.as_millis()
            ),
        );
    }
    report.expect(
        b * 2.0 <= a,
        format!(
            "adaptive timeouts at least halve the needless elections ({b:.1} vs {a:.1} per hour)"
        ),
    );
    for run in &runs {
        report.expect_clean_run(run);
    }
    report
}
