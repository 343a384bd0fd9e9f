//! Five nodes split 2|2|1: no side has a quorum. No write may be acknowledged anywhere,
//! and no term may ever have two leaders; once healed, the cluster serves again.

use std::time::Duration;

use ekmat_core::{NodeId, Time};

use super::{
    SPLIT_AT, SPLIT_FOR, Scenario, ScenarioConfig, ScenarioReport, acknowledged_by, ms, split_run,
};
use crate::run::run_seed_observed;

pub const SCENARIO: Scenario = Scenario {
    name: "three-way-split",
    about: "5 nodes split 2|2|1: no quorum anywhere, then heal",
    run,
};

const SEED: u64 = 3;
/// After this, no node may still act as leader.
const STEP_DOWN_BOUND: Duration = Duration::from_millis(600);

fn run(_: &ScenarioConfig) -> ScenarioReport {
    let mut report = ScenarioReport::new(&SCENARIO);
    let heal_at = SPLIT_AT + SPLIT_FOR;
    let (proto, opts) = split_run("partition(0,1|2,3|4)");
    let mut leader_before = None;
    let mut last_leader_seen = None;
    let mut leaders_late = Vec::new();
    let run = run_seed_observed(&proto, &opts, SEED, Duration::from_millis(5), &mut |w| {
        let now = w.now();
        if now < SPLIT_AT {
            leader_before = w.leader().map(|l| (l, w.max_term()));
        } else if now < heal_at {
            if !w.leaders().is_empty() {
                last_leader_seen = Some(now);
            }
            if now > SPLIT_AT + STEP_DOWN_BOUND {
                leaders_late.extend(w.leaders());
            }
        }
    });

    report.tell(Time::ZERO, format!("seed {SEED}: {}", run.derived));
    if let Some((l, t)) = leader_before {
        report.tell(
            SPLIT_AT,
            format!("{l} leads term {t}; the network splits {{n0, n1}} | {{n2, n3}} | {{n4}}"),
        );
    }
    if let Some(t) = last_leader_seen {
        report.tell(t, "the last leader steps down");
    }
    leaders_late.sort();
    leaders_late.dedup();
    report.expect(
        leaders_late.is_empty(),
        format!(
            "no node acts as leader more than {} into the split (seen: {leaders_late:?})",
            ms(STEP_DOWN_BOUND)
        ),
    );
    let everyone: Vec<NodeId> = (0..5).map(NodeId).collect();
    let acked = acknowledged_by(&run.history, &everyone, SPLIT_AT, heal_at);
    let refused = run
        .history
        .iter()
        .filter(|op| op.call >= SPLIT_AT && op.call < heal_at)
        .count();
    report.tell(
        heal_at,
        format!("the partition heals; {refused} operations were tried during it"),
    );
    report.expect(
        acked.is_empty(),
        format!(
            "no operation invoked during the split was acknowledged ({} were)",
            acked.len()
        ),
    );
    report.expect(
        run.violation
            .as_ref()
            .is_none_or(|v| v.property != "election-safety"),
        "never two leaders in one term",
    );
    report.expect_clean_run(&run);
    report
}
