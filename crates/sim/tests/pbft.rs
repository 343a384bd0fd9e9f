//! PBFT under the simulator's faults and Byzantine adversaries.

use std::time::Duration;

use ekmat_sim::FaultKind;
use ekmat_sim::protocols::{Adversary, PbftSim};
use ekmat_sim::run::{SimOptions, run_seed};

fn opts(nodes: usize) -> SimOptions {
    SimOptions {
        nodes,
        ops: 300,
        safety: Duration::from_secs(4),
        faults: pbft_faults(),
        ..SimOptions::default()
    }
}

fn pbft_faults() -> Vec<FaultKind> {
    FaultKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, FaultKind::Transfer | FaultKind::Membership))
        .collect()
}

fn sim(nodes: usize, byzantine: usize, adversaries: Vec<Adversary>) -> PbftSim {
    PbftSim {
        nodes,
        byzantine,
        adversaries,
        byzantine_until: Duration::from_secs(4),
        ..PbftSim::default()
    }
}

#[test]
fn honest_pbft_survives_crashes_and_partitions() {
    let proto = sim(4, 0, vec![]);
    for seed in 0..20 {
        let r = run_seed(&proto, &opts(4), seed);
        assert!(
            r.violation.is_none(),
            "seed {seed}: {:?} ({})",
            r.violation,
            r.derived
        );
    }
}
