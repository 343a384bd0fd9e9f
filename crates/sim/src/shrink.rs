//! Shrinking a failing run: remove faults from its schedule while the same property
//! still fails (delta debugging over the fault list), so what is left is a minimal
//! schedule a person can read.

use crate::protocol::SimProtocol;
use crate::run::{SeedReport, SimOptions, run_seed};
use crate::schedule::Schedule;

/// Returns the smallest schedule found that still breaks `property` on `seed`, and the
/// report of running it. `attempt` is called after each trial run.
pub fn shrink<P: SimProtocol>(
    proto: &P,
    opts: &SimOptions,
    seed: u64,
    failing: &Schedule,
    property: &str,
    attempt: &dyn Fn(usize, usize),
) -> (Schedule, SeedReport) {
    let mut trials = 0;
    let mut try_schedule = |candidate: &Schedule| -> Option<SeedReport> {
        trials += 1;
        let opts = SimOptions {
            schedule: Some(candidate.clone()),
            trace: false,
            ..opts.clone()
        };
        let report = run_seed(proto, &opts, seed);
        attempt(trials, candidate.len());
        report
            .violation
            .as_ref()
            .is_some_and(|v| v.property == property)
            .then_some(report)
    };

    let mut best = failing.clone();
    let mut best_report = None;
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < best.len() {
            let mut candidate = best.clone();
            let end = (start + chunk).min(candidate.len());
            candidate.faults.drain(start..end);
            match try_schedule(&candidate) {
                Some(report) => {
                    best = candidate;
                    best_report = Some(report);
                    removed_any = true;
                }
                None => start += chunk,
            }
        }
        if chunk == 1 && !removed_any {
            break;
        }
        if !removed_any {
            chunk = chunk.div_ceil(2);
        }
    }
    let report = match best_report {
        Some(r) => r,
        None => {
            let opts = SimOptions {
                schedule: Some(best.clone()),
                ..opts.clone()
            };
            run_seed(proto, &opts, seed)
        }
    };
    (best, report)
}
