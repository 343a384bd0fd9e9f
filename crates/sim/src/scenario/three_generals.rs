//! Seed 000's three generals, one of them a traitor. The commander (PBFT's primary, n0)
//! orders "attack" to one lieutenant and "retreat" to the other — two batches signed for
//! the same sequence number.
//!
//! With three generals, waiting for n − f = 2 of them (no protocol can wait for more and
//! stay live with one traitor), each loyal lieutenant hears the commander's word backed
//! by one vote — its own — and the two decide differently: no protocol can prevent it
//! (Lamport, Shostak, Pease 1982). With four generals and quorums of 2f+1 = 3, any two
//! quorums share a loyal general, who never backs both orders: the loyal agree, and the
//! traitor's two signed orders convict it.

use std::time::Duration;

use ekmat_core::{NodeId, Time};

use super::{Scenario, ScenarioConfig, ScenarioReport};
use crate::protocols::{Adversary, PbftSim};
use crate::run::{SeedReport, SimOptions, run_seed};

pub const SCENARIO: Scenario = Scenario {
    name: "three-generals",
    about: "one traitorous commander: 3 generals disagree, 4 agree and convict it",
    run,
};

const SEED: u64 = 0;

fn generals(n: usize) -> SeedReport {
    let opts = SimOptions {
        nodes: n,
        faults: vec![],
        ops: 200,
        safety: Duration::from_secs(4),
        ..SimOptions::default()
    };
    let f = 1;
    let proto = PbftSim {
        nodes: n,
        byzantine: f,
        adversaries: vec![Adversary::Equivocate],
        assigned: vec![(NodeId(0), Adversary::Equivocate)],
        byzantine_until: opts.safety,
        quorum: (n < 3 * f + 1).then_some(n - f),
        vary_knobs: false,
        ..PbftSim::default()
    };
    run_seed(&proto, &opts, SEED)
}

fn run(_: &ScenarioConfig) -> ScenarioReport {
    let mut report = ScenarioReport::new(&SCENARIO);
    let three = generals(3);
    report.tell(
        Time::ZERO,
        "3 generals; the commander n0 is a traitor; a decision needs n - f = 2 voices",
    );
    report.tell(
        Time::ZERO,
        "n0 signs 'batch A' for n2 and 'batch B' for n1 at the same sequence number, and votes for both",
    );
    match &three.violation {
        Some(v) => report.tell(Time(v.at_us), format!("the loyal generals part ways: {v}")),
        None => report.tell(Time::ZERO, "no disagreement found (unexpected)"),
    }
    report.expect(
        three
            .violation
            .as_ref()
            .is_some_and(|v| v.property == "agreement"),
        "with n = 3f the simulator finds an agreement violation among the loyal generals",
    );

    let four = generals(4);
    report.tell(
        Time::ZERO,
        "4 generals, the same traitor; a decision needs 2f + 1 = 3 voices",
    );
    report.tell(
        Time(four.stats.sim_micros),
        format!(
            "{} client operations ({} ok); {} proofs of the traitor's equivocation; {} views installed",
            four.ops, four.ok, four.stats.evidence, four.stats.elections
        ),
    );
    report.expect(
        four.stats.evidence > 0,
        "the traitor's two signed orders are evidence",
    );
    report.figure(
        "n = 3 violation",
        format!("{:?}", three.violation.map(|v| v.property)),
    );
    report.figure("n = 4 evidence", four.stats.evidence);
    report.expect_clean_run(&four);
    report
}
