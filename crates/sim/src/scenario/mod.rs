//! Named, scripted runs that tell one story each from the seeds, and check that the
//! story ends the way the protocol promises (`ekmat sim --scenario NAME`).

mod degraded_wan;
mod election_storm;
mod monsoon;
mod three_generals;
mod three_way_split;

use std::fmt;
use std::time::Duration;

use ekmat_core::{NodeId, Time};

use crate::protocols::RaftSim;
use crate::run::{SeedReport, SimOptions};
use crate::workload::{HistOp, Status};

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&ScenarioConfig) -> ScenarioReport,
}

/// How much of a scenario to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScenarioConfig {
    /// Shorter runs, for tests of unoptimised builds.
    pub quick: bool,
}

impl ScenarioConfig {
    /// How long an hour-long scenario runs: ten minutes when quick.
    fn hour(&self) -> Duration {
        if self.quick {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(3600)
        }
    }
}

pub const ALL: &[Scenario] = &[
    monsoon::SCENARIO,
    three_way_split::SCENARIO,
    election_storm::SCENARIO,
    degraded_wan::SCENARIO,
    three_generals::SCENARIO,
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

/// One expected outcome and whether it held.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub expectation: String,
    pub held: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ScenarioReport {
    pub name: &'static str,
    pub about: &'static str,
    /// What happened, in order.
    pub story: Vec<String>,
    #[serde(skip)]
    told: Vec<Time>,
    pub checks: Vec<Check>,
    /// Measured figures, for the scenarios that measure something.
    pub figures: Vec<(String, String)>,
}

impl ScenarioReport {
    fn new(s: &Scenario) -> ScenarioReport {
        ScenarioReport {
            name: s.name,
            about: s.about,
            story: Vec::new(),
            told: Vec::new(),
            checks: Vec::new(),
            figures: Vec::new(),
        }
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.held)
    }

    /// Add to the story, kept in time order.
    fn tell(&mut self, at: Time, line: impl Into<String>) {
        let entry = format!("[{at:>9}] {}", line.into());
        let pos = self.told.partition_point(|t| *t <= at);
        self.told.insert(pos, at);
        self.story.insert(pos, entry);
    }

    fn expect(&mut self, held: bool, expectation: impl Into<String>) {
        self.checks.push(Check {
            expectation: expectation.into(),
            held,
        });
    }

    fn figure(&mut self, name: impl Into<String>, value: impl fmt::Display) {
        self.figures.push((name.into(), value.to_string()));
    }

    /// The whole run's own checkers: protocol invariants, liveness after healing,
    /// convergence, and linearizability of the client history.
    fn expect_clean_run(&mut self, run: &SeedReport) {
        let verdict = match &run.violation {
            None => format!(
                "no invariant, liveness, convergence or linearizability violation ({} client operations: {} ok, {} failed, {} unknown)",
                run.ops, run.ok, run.failed, run.unknown
            ),
            Some(v) => format!("no violation — but found {v}"),
        };
        self.expect(run.violation.is_none(), verdict);
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario {}: {}", self.name, self.about)?;
        for line in &self.story {
            writeln!(f, "  {line}")?;
        }
        for (name, value) in &self.figures {
            writeln!(f, "  {name}: {value}")?;
        }
        for c in &self.checks {
            let mark = if c.held { "ok  " } else { "FAIL" };
            writeln!(f, "  [{mark}] {}", c.expectation)?;
        }
        write!(f, "{}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

/// When the partition scenarios cut the network, and for how long.
const SPLIT_AT: Time = Time(3_000_000);
const SPLIT_FOR: Duration = Duration::from_secs(4);

/// Raft with its default knobs, and a run whose only fault is `fault` (in schedule
/// syntax), from `SPLIT_AT` for `SPLIT_FOR`.
fn split_run(fault: &str) -> (RaftSim, SimOptions) {
    let schedule = format!(
        "@{}ms+{}ms {fault}",
        SPLIT_AT.as_millis(),
        SPLIT_FOR.as_millis()
    );
    let opts = SimOptions {
        faults: vec![],
        ops: 1500,
        safety: Duration::from_secs(9),
        schedule: Some(schedule.parse().expect("scenario schedules parse")),
        ..SimOptions::default()
    };
    let proto = RaftSim {
        vary_knobs: false,
        ..RaftSim::default()
    };
    (proto, opts)
}

/// Writes (and reads) invoked in `[from, until)` that some node in `nodes` answered ok
/// before `until`.
fn acknowledged_by<'h>(
    history: &'h [HistOp],
    nodes: &[NodeId],
    from: Time,
    until: Time,
) -> Vec<&'h HistOp> {
    history
        .iter()
        .filter(|op| op.status == Status::Ok && op.call >= from && op.call < until)
        .filter(|op| op.ret.is_some_and(|r| r < until))
        .filter(|op| op.answered_by.is_some_and(|n| nodes.contains(&n)))
        .collect()
}

fn is_write(op: &HistOp) -> bool {
    !matches!(op.input, ekmat_linearizability::kv::KvInput::Get { .. })
}

fn ids(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    format!("{{{}}}", names.join(", "))
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
