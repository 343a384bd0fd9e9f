use ekmat_core::NodeId;
use ekmat_sim::FaultKind;
use ekmat_sim::protocols::{Adversary, PbftSim};
use ekmat_sim::run::{SimOptions, run_seed_observed};
use std::time::Duration;

#[test]
#[ignore]
fn debug_seed() {
    let seed: u64 = std::env::var("SEED").unwrap().parse().unwrap();
    let adv = std::env::var("ADV").unwrap_or("all".into());
    let byz: usize = std::env::var("BYZ").unwrap_or("1".into()).parse().unwrap();
    let nodes: usize = std::env::var("NODES")
        .unwrap_or("4".into())
        .parse()
        .unwrap();
    let ops: usize = std::env::var("OPS")
        .unwrap_or("300".into())
        .parse()
        .unwrap();
    let opts = SimOptions {
        nodes,
        ops,
        faults: FaultKind::ALL
            .into_iter()
            .filter(|k| !matches!(k, FaultKind::Transfer | FaultKind::Membership))
            .collect(),
        ..SimOptions::default()
    };
    let proto = PbftSim {
        nodes,
        byzantine: byz,
        adversaries: Adversary::parse_list(&adv).unwrap(),
        byzantine_until: opts.safety,
        ..PbftSim::default()
    };
    let r = run_seed_observed(&proto, &opts, seed, Duration::from_millis(1000), &mut |w| {
        eprintln!("--- {}", w.now());
        for i in 0..nodes {
            if let Some(n) = w.replica(NodeId(i as u32)) {
                eprintln!("  {:?}", n.replica());
            }
        }
    });
    eprintln!("{:?} {}", r.violation, r.derived);
}
