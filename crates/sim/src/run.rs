//! Running seeds: one seed into a report, many seeds across threads into a summary.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ekmat_core::{DetRng, Time};
use ekmat_linearizability::CheckOptions;

use crate::check::{Linearizability, check_history};
use crate::network::{LatencyRange, LatencyTail, LinkTable};
use crate::protocol::{SimProtocol, Violation};
use crate::schedule::{FaultKind, Schedule, ScheduleShape};
use crate::workload::{HistOp, Status, WorkloadShape};
use crate::world::{RunStats, World, WorldConfig};

/// Seeds a run covers unless told otherwise. Every planted mutant must be caught within
/// this many seeds (a test checks it).
pub const DEFAULT_SEEDS: u64 = 500;

/// What a user chooses for a simulation run (the CLI's flags).
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub nodes: usize,
    pub faults: Vec<FaultKind>,
    pub ops: usize,
    pub clients: usize,
    pub keys: u64,
    /// Length of the safety phase, in which faults happen.
    pub safety: Duration,
    pub liveness_bound: Duration,
    /// Replay exactly this schedule instead of drawing one from the seed.
    pub schedule: Option<Schedule>,
    /// Links whose latency and loss differ from the seed's (a WAN between sites).
    pub links: LinkTable,
    pub trace: bool,
    pub check: CheckOptions,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 5,
            faults: FaultKind::ALL.to_vec(),
            ops: 2000,
            clients: 10,
            keys: 5,
            safety: Duration::from_secs(12),
            liveness_bound: Duration::from_secs(5),
            schedule: None,
            links: LinkTable::default(),
            trace: false,
            check: CheckOptions::default(),
        }
    }
}

impl SimOptions {
    /// The cluster's founding voters plus the spares membership churn adds.
    pub fn total_nodes(&self) -> usize {
        if self.faults.contains(&FaultKind::Membership) {
            self.nodes + SPARES
        } else {
            self.nodes
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        if self.nodes > 64 {
            return Err("--nodes is at most 64".into());
        }
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if let Some(s) = &self.schedule {
            s.validate(self.total_nodes())?;
        }
        Ok(())
    }
}

/// The options a seed decides, printed so a run can be understood and reproduced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Derived {
    pub knobs: String,
    pub latency_us: (u64, u64),
    /// Percent of messages, and how many times slower they are.
    pub latency_tail: (u32, u32),
    /// Replicas snapshot every this many applied entries (0: never).
    pub snapshot_every: u64,
    pub fsync_us: (u64, u64),
    pub think_ms: u64,
    pub fault_gap_ms: u64,
    pub client_timeout_ms: u64,
}

impl fmt::Display for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, snapshot every {} entries, latency {}-{}us (tail: {}% x{}), fsync {}-{}us, client think {}ms, timeout {}ms, mean fault gap {}ms",
            self.knobs,
            self.snapshot_every,
            self.latency_us.0,
            self.latency_us.1,
            self.latency_tail.0,
            self.latency_tail.1,
            self.fsync_us.0,
            self.fsync_us.1,
            self.think_ms,
            self.client_timeout_ms,
            self.fault_gap_ms
        )
    }
}

pub(crate) fn derive<P: SimProtocol>(
    proto: &P,
    opts: &SimOptions,
    seed: u64,
) -> (P, Derived, WorldConfig, Schedule) {
    // A stream of its own, so adding a derived option never shifts the run's others.
    let mut rng = DetRng::new(seed ^ DERIVED_SALT);
    let (proto, knobs) = proto.vary(&mut rng.fork());
    let lat_min = rng.range(100, 3000);
    let lat_max = lat_min + rng.range(200, 12_000);
    let fsync_min = rng.range(50, 1000);
    let fsync_max = fsync_min + rng.range(100, 4000);
    // Spread the operations started before the heal over the safety phase.
    let busy = opts.safety.as_millis() as u64;
    let reserved = (opts.ops / 10).max(opts.clients).min(opts.ops);
    let before_heal = (opts.ops - reserved).max(1) as u64;
    let think_ms = (busy * opts.clients as u64 / before_heal).max(1);
    let fault_gap_ms = rng.range(300, 1200);
    let client_timeout_ms = rng.range(500, 1500);
    let latency_tail = if rng.chance(0.5) {
        (rng.range(1, 5) as u32, rng.range(5, 50) as u32)
    } else {
        (0, 1)
    };
    // Often enough that lagging replicas are sent snapshots under faults; sometimes never.
    let snapshot_every = [0, 25, 100, 400][rng.index(4)];
    let derived = Derived {
        knobs,
        latency_us: (lat_min, lat_max),
        latency_tail,
        snapshot_every,
        fsync_us: (fsync_min, fsync_max),
        think_ms,
        fault_gap_ms,
        client_timeout_ms,
    };
    let us = Duration::from_micros;
    // Membership churn needs nodes outside the cluster to add.
    let spares = opts.total_nodes() - opts.nodes;
    let cfg = WorldConfig {
        seed,
        nodes: opts.nodes + spares,
        voters: opts.nodes,
        latency: LatencyRange {
            min: us(lat_min),
            max: us(lat_max),
        },
        latency_tail: LatencyTail {
            percent: latency_tail.0,
            factor: latency_tail.1,
        },
        links: opts.links.clone(),
        fsync: LatencyRange {
            min: us(fsync_min),
            max: us(fsync_max),
        },
        tick: Duration::from_millis(10),
        workload: WorkloadShape {
            clients: opts.clients,
            ops: opts.ops,
            keys: opts.keys,
            think: Duration::from_millis(think_ms),
            timeout: Duration::from_millis(client_timeout_ms),
        },
        safety: opts.safety,
        liveness_bound: opts.liveness_bound,
        converge_bound: Duration::from_secs(10),
        max_tail: Duration::from_secs(60) + opts.safety / 5,
        snapshot_every,
        max_clock_drift_ppm: proto.max_clock_drift_ppm(),
        trace: opts.trace,
    };
    let schedule = opts.schedule.clone().unwrap_or_else(|| {
        let shape = ScheduleShape {
            nodes: opts.nodes + spares,
            kinds: swarm(&opts.faults, &mut rng),
            safety: opts.safety,
            mean_gap: Duration::from_millis(fault_gap_ms),
        };
        Schedule::generate(&shape, &mut rng)
    });
    (proto, derived, cfg, schedule)
}

/// Swarm testing (Groce et al., ISSTA 2012): each seed draws its faults from a random
/// non-empty subset of the enabled kinds. Some bugs need a fault to be absent — steady
/// loss or jitter keeps breaking up the exact sequence a subtle bug needs.
fn swarm(kinds: &[FaultKind], rng: &mut DetRng) -> Vec<FaultKind> {
    if kinds.len() <= 1 {
        return kinds.to_vec();
    }
    let chosen: Vec<FaultKind> = kinds.iter().copied().filter(|_| rng.chance(0.5)).collect();
    if chosen.is_empty() {
        vec![kinds[rng.index(kinds.len())]]
    } else {
        chosen
    }
}

/// Nodes outside the founding cluster when membership churn is on.
pub const SPARES: usize = 2;

/// Salt of the derived-options stream: a constant, so a seed means the same run in
/// every build.
const DERIVED_SALT: u64 = 0x5eed_0f0b_7a11_0c8e;

#[derive(Clone, Debug, serde::Serialize)]
pub struct SeedReport {
    pub seed: u64,
    pub derived: Derived,
    #[serde(skip)]
    pub schedule: Schedule,
    pub stats: RunStats,
    pub ops: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub violation: Option<Violation>,
    pub linearizability: Linearizability,
    pub trace_hash: u64,
    #[serde(skip)]
    pub trace: Vec<String>,
    /// Every client operation, in invocation order.
    #[serde(skip)]
    pub history: Vec<HistOp>,
    /// Wall-clock time spent simulating and checking (not deterministic).
    pub sim_wall_us: u64,
    pub check_wall_us: u64,
}

/// Run one seed to completion and check it.
pub fn run_seed<P: SimProtocol>(proto: &P, opts: &SimOptions, seed: u64) -> SeedReport {
    run_seed_observed(proto, opts, seed, Duration::MAX, &mut |_| {})
}

/// [`run_seed`], showing the world to `observe` once per `every` of virtual time
/// (scenarios watch leadership and reachability this way).
pub fn run_seed_observed<P: SimProtocol>(
    proto: &P,
    opts: &SimOptions,
    seed: u64,
    every: Duration,
    observe: &mut dyn FnMut(&World<'_, P>),
) -> SeedReport {
    let (proto, derived, cfg, schedule) = derive(proto, opts, seed);
    let started = Instant::now();
    let mut world = match World::new(&proto, cfg, schedule.clone()) {
        Ok(w) => w,
        Err(e) => return setup_failure(seed, derived, schedule, e),
    };
    let panic = catch_unwind(AssertUnwindSafe(|| world.run_observed(every, observe))).err();
    let sim_wall_us = started.elapsed().as_micros() as u64;
    let mut violation = world.violation().cloned();
    if let Some(payload) = panic {
        let msg = panic_message(&payload);
        violation = Some(Violation::new("assertion", world.now(), msg));
    }
    let checked = Instant::now();
    let linearizability = if violation.is_none() {
        let history = world.workload().for_checker();
        let (verdict, v) = check_history(&history, &opts.check, world.now());
        violation = v;
        verdict
    } else {
        Linearizability::Skipped
    };
    let check_wall_us = checked.elapsed().as_micros() as u64;
    let trace_hash = world.trace().hash();
    let trace = world.trace().take_lines();
    let workload = world.workload();
    SeedReport {
        seed,
        derived,
        schedule,
        stats: world.stats().clone(),
        ops: workload.issued(),
        ok: workload.count(Status::Ok),
        failed: workload.count(Status::Failed),
        unknown: workload.count(Status::Unknown),
        violation,
        linearizability,
        trace_hash,
        trace,
        history: workload.history().to_vec(),
        sim_wall_us,
        check_wall_us,
    }
}

fn setup_failure(seed: u64, derived: Derived, schedule: Schedule, e: String) -> SeedReport {
    SeedReport {
        seed,
        derived,
        schedule,
        stats: RunStats::default(),
        ops: 0,
        ok: 0,
        failed: 0,
        unknown: 0,
        violation: Some(Violation::new("setup", Time::ZERO, e)),
        linearizability: Linearizability::Skipped,
        trace_hash: 0,
        trace: Vec::new(),
        history: Vec::new(),
        sim_wall_us: 0,
        check_wall_us: 0,
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "a replica panicked".to_string()
    }
}

/// Totals over many seeds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub seeds: u64,
    pub ops: u64,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    pub elections: u64,
    /// Proofs of misbehaviour reported (Byzantine protocols).
    pub evidence: u64,
    /// Exclusions of convicted replicas, as each replica applied them.
    pub exclusions: u64,
    /// Re-admissions of excluded replicas, as each replica applied them.
    pub readmissions: u64,
    pub faults: u64,
    pub crashes: u64,
    pub reconfigurations: u64,
    pub snapshots_taken: u64,
    pub snapshots_restored: u64,
    pub events: u64,
    pub messages: u64,
    pub sim_seconds: f64,
    pub violations: u64,
    /// The lowest failing seeds (at most [`Summary::LISTED_FAILURES`]).
    pub failing_seeds: Vec<u64>,
    pub linearizability_unknown: u64,
    pub first_failure: Option<SeedReport>,
    pub wall_seconds: f64,
    pub sim_wall_seconds: f64,
    pub check_wall_seconds: f64,
}

impl Summary {
    pub const LISTED_FAILURES: usize = 20;

    pub fn add(&mut self, r: &SeedReport) {
        self.seeds += 1;
        self.ops += r.ops as u64;
        self.ok += r.ok as u64;
        self.failed += r.failed as u64;
        self.unknown += r.unknown as u64;
        self.elections += r.stats.elections;
        self.evidence += r.stats.evidence;
        self.exclusions += r.stats.exclusions;
        self.readmissions += r.stats.readmissions;
        self.faults += r.stats.faults;
        self.crashes += r.stats.crashes;
        self.reconfigurations += r.stats.reconfigurations;
        self.snapshots_taken += r.stats.snapshots_taken;
        self.snapshots_restored += r.stats.snapshots_restored;
        self.events += r.stats.events;
        self.messages += r.stats.messages;
        self.sim_seconds += r.stats.sim_micros as f64 / 1e6;
        self.sim_wall_seconds += r.sim_wall_us as f64 / 1e6;
        self.check_wall_seconds += r.check_wall_us as f64 / 1e6;
        if matches!(r.linearizability, Linearizability::Unknown { .. }) {
            self.linearizability_unknown += 1;
        }
        if r.violation.is_some() {
            self.violations += 1;
            self.failing_seeds.push(r.seed);
            self.failing_seeds.sort_unstable();
            self.failing_seeds.truncate(Self::LISTED_FAILURES);
            let earlier = self.first_failure.as_ref().is_some_and(|f| f.seed < r.seed);
            if !earlier {
                self.first_failure = Some(r.clone());
            }
        }
    }

    /// Simulated events per wall-clock second of simulation (all threads together).
    pub fn events_per_second(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.events as f64 / self.wall_seconds
        } else {
            0.0
        }
    }
}

/// Run `count` seeds starting at `first` on `threads` threads, calling `progress` after
/// each. With `stop_on_failure`, no new seed starts after a violation; seeds already
/// started finish, so the lowest failing seed reported does not depend on timing.
pub fn run_seeds<P: SimProtocol>(
    proto: &P,
    opts: &SimOptions,
    first: u64,
    count: u64,
    threads: usize,
    stop_on_failure: bool,
    progress: &(dyn Fn(&SeedReport) + Sync),
) -> Summary {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    if stop_on_failure && failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        return;
                    }
                    let report = run_seed(proto, opts, first.wrapping_add(i));
                    if report.violation.is_some() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    progress(&report);
                    summary
                        .lock()
                        .expect("no thread panics holding it")
                        .add(&report);
                }
            });
        }
    });
    let mut summary = summary.into_inner().expect("threads joined");
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::RaftSim;

    fn small() -> SimOptions {
        SimOptions {
            ops: 300,
            safety: Duration::from_secs(4),
            ..SimOptions::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_trace_hash() {
        let proto = RaftSim::default();
        let a = run_seed(&proto, &small(), 7);
        let b = run_seed(&proto, &small(), 7);
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.stats.events, b.stats.events);
        let c = run_seed(&proto, &small(), 8);
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "different seeds, different runs"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let opts = SimOptions {
            nodes: 0,
            ..SimOptions::default()
        };
        assert!(opts.validate().is_err());
    }
}
