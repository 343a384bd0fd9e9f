//! Seed 002's Mumbai monsoon: a 5-node cluster splits 2|3 with the leader on the small
//! side. The minority leader must step down, the majority must elect a leader and keep
//! serving, the minority must acknowledge no write, and after healing every log must
//! converge.

use std::time::Duration;

use ekmat_core::{NodeId, Time};

use super::{
    SPLIT_AT, SPLIT_FOR, Scenario, ScenarioConfig, ScenarioReport, acknowledged_by, ids, is_write,
    ms, split_run,
};
use crate::run::run_seed_observed;

pub const SCENARIO: Scenario = Scenario {
    name: "monsoon-partition",
    about: "5 nodes split 2|3 with the leader in the minority, then heal",
    run,
};

const SEED: u64 = 2;
/// Check-quorum must depose the minority leader within two maximum election timeouts.
const STEP_DOWN_BOUND: Duration = Duration::from_millis(600);
/// The majority must elect a leader within this.
const ELECTION_BOUND: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Seen {
    old_leader: Option<(NodeId, u64)>,
    minority: Vec<NodeId>,
    stepped_down: Option<Time>,
    new_leader: Option<(Time, NodeId, u64)>,
}

fn run(_: &ScenarioConfig) -> ScenarioReport {
    let mut report = ScenarioReport::new(&SCENARIO);
    let heal_at = SPLIT_AT + SPLIT_FOR;
    let (proto, opts) = split_run("split(leader)");
    let mut seen = Seen::default();
    let run = run_seed_observed(&proto, &opts, SEED, Duration::from_millis(5), &mut |w| {
        let now = w.now();
        if now < SPLIT_AT {
            seen.old_leader = w.leader().map(|l| (l, w.max_term()));
            return;
        }
        if seen.minority.is_empty() && now < heal_at {
            let n = w.nodes() as u32;
            seen.minority = (0..n)
                .map(NodeId)
                .filter(|&a| {
                    (0..n).filter(|&b| w.reachable(a, NodeId(b))).count() <= (n as usize - 1) / 2
                })
                .collect();
        }
        let Some((old, old_term)) = seen.old_leader else {
            return;
        };
        let leaders = w.leaders();
        if seen.stepped_down.is_none() && !leaders.iter().any(|(l, t)| *l == old && *t == old_term)
        {
            seen.stepped_down = Some(now);
        }
        if seen.new_leader.is_none()
            && let Some((l, t)) = leaders
                .iter()
                .find(|(l, t)| *t > old_term && !seen.minority.contains(l))
        {
            seen.new_leader = Some((now, *l, *t));
        }
    });

    let Some((old, old_term)) = seen.old_leader else {
        report.expect(false, "a leader was elected before the partition");
        return report;
    };
    let majority: Vec<NodeId> = (0..5)
        .map(NodeId)
        .filter(|n| !seen.minority.contains(n))
        .collect();
    report.tell(Time::ZERO, format!("seed {SEED}: {}", run.derived));
    report.tell(
        SPLIT_AT,
        format!(
            "{old} leads term {old_term}; the network splits {} | {}",
            ids(&seen.minority),
            ids(&majority)
        ),
    );
    report.expect(
        seen.minority.contains(&old),
        format!("the leader {old} is on the minority side"),
    );

    match seen.stepped_down {
        Some(t) => {
            report.tell(t, format!("{old} steps down: it cannot reach a quorum"));
            let took = t.since(SPLIT_AT);
            report.expect(
                took <= STEP_DOWN_BOUND,
                format!(
                    "the minority leader stepped down within {} (took {})",
                    ms(STEP_DOWN_BOUND),
                    ms(took)
                ),
            );
        }
        None => report.expect(false, "the minority leader stepped down"),
    }
    match seen.new_leader {
        Some((t, l, term)) => {
            report.tell(
                t,
                format!("{l} is elected leader of term {term} by the majority"),
            );
            let took = t.since(SPLIT_AT);
            report.expect(
                took <= ELECTION_BOUND,
                format!(
                    "the majority elected a leader within {} (took {})",
                    ms(ELECTION_BOUND),
                    ms(took)
                ),
            );
        }
        None => report.expect(false, "the majority elected a new leader"),
    }

    let minority_acks: Vec<_> = acknowledged_by(&run.history, &seen.minority, SPLIT_AT, heal_at)
        .into_iter()
        .filter(|op| is_write(op))
        .collect();
    report.expect(
        minority_acks.is_empty(),
        format!(
            "no write invoked during the partition was acknowledged by the minority ({} were)",
            minority_acks.len()
        ),
    );
    let majority_acks = acknowledged_by(&run.history, &majority, SPLIT_AT, heal_at)
        .into_iter()
        .filter(|op| is_write(op))
        .count();
    report.tell(
        heal_at,
        format!("the partition heals; meanwhile the majority acknowledged {majority_acks} writes"),
    );
    report.expect(
        majority_acks > 0,
        "the majority kept acknowledging writes during the partition",
    );
    report.expect_clean_run(&run);
    report.figure(
        "writes acknowledged by the majority during the partition",
        majority_acks,
    );
    report
}
