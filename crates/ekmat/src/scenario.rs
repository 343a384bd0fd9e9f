//! `ekmat sim --scenario NAME`: the seeds' stories as scripted, checked runs.

use ekmat_sim::scenario::{self, ScenarioConfig};

use crate::exit;

pub fn list() -> u8 {
    for s in scenario::ALL {
        println!("{}", s.name);
    }
    exit::OK
}

pub fn run(name: &str, json: bool) -> u8 {
    let Some(s) = scenario::find(name) else {
        let known: Vec<&str> = scenario::ALL.iter().map(|s| s.name).collect();
        eprintln!(
            "error: unknown scenario '{name}' (known: {})",
            known.join(", ")
        );
        return exit::USAGE;
    };
    let report = (s.run)(&ScenarioConfig::default());
    if json {
        let out = serde_json::json!({
            "scenario": report.name,
            "passed": report.passed(),
            "story": report.story,
            "checks": report.checks,
            "figures": report.figures,
        });
        println!("{out}");
    } else {
        println!("{report}");
    }
    if report.passed() {
        exit::OK
    } else {
        exit::VIOLATION
    }
}
