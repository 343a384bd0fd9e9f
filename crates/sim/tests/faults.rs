//! Faults do what their names say, seen from outside the protocol: who is cut off, and
//! when.

use std::time::Duration;

use ekmat_core::NodeId;
use ekmat_raft::Mutant;
use ekmat_sim::Schedule;
use ekmat_sim::SimProtocol;
use ekmat_sim::protocols::RaftSim;
use ekmat_sim::run::{SimOptions, run_seed, run_seed_observed};
use ekmat_sim::world::World;

/// Whether `node` can reach none of the others, nor they it.
fn alone<P: SimProtocol>(w: &World<'_, P>, node: NodeId) -> bool {
    (0..w.nodes() as u32)
        .map(NodeId)
        .filter(|&o| o != node)
        .all(|o| !w.reachable(node, o) && !w.reachable(o, node))
}

/// `swap(leader)` cuts the leader off, then, once another node has won, cuts that one
/// off instead and lets the first back: two leaders, each cut off in its turn.
#[test]
fn a_swap_cuts_off_the_next_leader_in_place_of_the_first() {
    let opts = SimOptions {
        ops: 300,
        schedule: Some("@2000ms+3000ms swap(leader)".parse::<Schedule>().unwrap()),
        ..SimOptions::default()
    };
    let (start, end) = (Duration::from_millis(2000), Duration::from_millis(5000));
    let mut first = None;
    // Each change of who is cut off, with who led (in the highest term) when it was seen.
    let mut cut_off: Vec<(Vec<NodeId>, Option<NodeId>)> = Vec::new();
    let run = run_seed_observed(
        &RaftSim::default(),
        &opts,
        7,
        Duration::from_millis(1),
        &mut |w| {
            let now = Duration::from_micros(w.now().as_micros());
            if now < start {
                first = w.leader();
            } else if now < end {
                let alone: Vec<NodeId> = (0..w.nodes() as u32)
                    .map(NodeId)
                    .filter(|&n| alone(w, n))
                    .collect();
                if cut_off.last().map(|(a, _)| a) != Some(&alone) {
                    cut_off.push((alone, w.leader()));
                }
            }
        },
    );
    assert!(run.violation.is_none(), "{:?}", run.violation);
    let first = first.expect("a leader before the fault");
    let [(was, _), (now, leading)] = &cut_off[..] else {
        panic!("one node cut off, then another: {cut_off:?}");
    };
    assert_eq!(was, &vec![first], "{cut_off:?}");
    let [second] = now[..] else {
        panic!("one node cut off in the first's place: {cut_off:?}");
    };
    assert_ne!(second, first);
    assert_eq!(
        *leading,
        Some(second),
        "the node cut off second had just won: {cut_off:?}"
    );
}

/// The fault exists for the Raft paper's Figure 8: three swaps a run, and nothing else,
/// catch a leader that commits an old term's entry by counting its replicas (the first
/// leader comes back and counts them while the second holds a later term's entry).
/// Without the swap's second act the same schedule is three isolated leaders, which
/// catch nothing.
#[test]
fn swaps_expose_committing_an_old_term_entry_by_counting() {
    let proto = RaftSim {
        mutant: Mutant::CommitOldTerm,
        ..RaftSim::default()
    };
    let swaps =
        "@3000ms+2000ms swap(leader); @6000ms+2000ms swap(leader); @9000ms+2000ms swap(leader)";
    let opts = SimOptions {
        schedule: Some(swaps.parse::<Schedule>().unwrap()),
        ..SimOptions::default()
    };
    let caught = (0..20)
        .filter_map(|seed| run_seed(&proto, &opts, seed).violation)
        .collect::<Vec<_>>();
    assert!(!caught.is_empty(), "no seed of 20 caught it");
    for v in caught {
        assert_eq!(v.property, "commit-safety", "{v}");
    }
    let isolations = swaps.replace("swap(leader)", "isolate(leader)");
    let opts = SimOptions {
        schedule: Some(isolations.parse::<Schedule>().unwrap()),
        ..SimOptions::default()
    };
    for seed in 0..20 {
        let r = run_seed(&proto, &opts, seed);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
    }
}

/// `config-split` strikes the moment a leader takes in a new set of voters: it and a
/// majority of the new set on one side, the rest on the other. With the joint
/// configuration only one side can decide; switching straight to the new set after
/// replacing a voter lets both, and commit safety catches it on most seeds.
#[test]
fn a_config_split_exposes_skipping_the_joint_configuration() {
    let schedule = "@3000ms+2000ms config-split(next-reconfiguration); @3500ms+1ms churn(replace); \
                    @7000ms+2000ms config-split(next-reconfiguration); @7500ms+1ms churn(replace)";
    let opts = SimOptions {
        faults: vec![ekmat_sim::FaultKind::Membership],
        schedule: Some(schedule.parse::<Schedule>().unwrap()),
        ..SimOptions::default()
    };
    let skipping = RaftSim {
        mutant: Mutant::ConfigBeforeJoint,
        ..RaftSim::default()
    };
    let caught: Vec<_> = (0..10)
        .filter_map(|seed| run_seed(&skipping, &opts, seed).violation)
        .collect();
    assert!(caught.len() >= 5, "{} of 10 seeds caught it", caught.len());
    for v in &caught {
        assert_eq!(v.property, "commit-safety", "{v}");
    }
    for seed in 0..10 {
        let r = run_seed(&RaftSim::default(), &opts, seed);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
    }
}
