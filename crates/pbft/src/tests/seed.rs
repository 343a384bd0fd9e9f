//! A cluster started from a restored backup: every founding replica recovers from the
//! same seed snapshot at sequence number 0 and executes on top of it.

use std::sync::Arc;

use bytes::Bytes;
use ekmat_core::{Committed, CommittedEntry, Durable, RequestId};

use super::{Cluster, config, encode_state};
use crate::snapshot::Snapshot;
use crate::{Pbft, PbftStable, Write};

/// A state machine holding one command (`what`) at index 1, as a replica's disk holds
/// it once seeded.
fn seeded(what: &str) -> PbftStable {
    let state = encode_state(&[Committed {
        index: 1,
        entry: CommittedEntry::Command {
            id: RequestId { client: 7, seq: 1 },
            command: Bytes::copy_from_slice(what.as_bytes()),
        },
        clock_ms: Some(0),
    }]);
    let mut stable = PbftStable::default();
    stable.apply(&Write::Snapshot(Arc::new(Snapshot::seed(state, 1))));
    stable
}

/// A cluster of four whose replica i starts from `seeds[i]`.
fn seeded_cluster(seeds: [&str; 4]) -> Cluster {
    let mut c = Cluster::new(4);
    for (i, what) in seeds.into_iter().enumerate() {
        let stable = seeded(what);
        c.nodes[i] = Some(Pbft::recover(config(i as u32, 4), stable.clone(), c.now).unwrap());
        c.disks[i] = stable.clone();
        c.logged[i] = stable;
    }
    c
}

#[test]
fn replicas_seeded_alike_execute_on_top_of_the_seed_and_checkpoints_agree() {
    let mut c = seeded_cluster(["backup"; 4]);
    for s in 1..=12 {
        c.request((s % 4) as usize, 1, s);
        c.run();
    }
    c.advance(50);
    c.assert_agree(&[0, 1, 2, 3]);
    let indexes: Vec<u64> = c.committed[0].iter().map(|e| e.index).collect();
    assert_eq!(indexes, (1..=13).collect::<Vec<_>>(), "the seed, then 12");
    assert!(matches!(
        &c.committed[0][0].entry,
        CommittedEntry::Command { command, .. } if command == "backup"
    ));
    for i in 0..4 {
        assert!(
            c.node(i).low_watermark() >= 8,
            "n{i}: checkpoints stabilise"
        );
    }
}

#[test]
fn a_replica_seeded_with_another_state_signs_another_history() {
    let fresh = Cluster::new(4);
    let mut c = seeded_cluster(["backup", "backup", "backup", "other"]);
    c.request(0, 1, 1);
    c.advance(30);
    assert_eq!(c.node(0).last_executed(), 1);
    assert_eq!(c.node(3).last_executed(), 1);
    assert_eq!(c.node(0).history(), c.node(1).history());
    assert_ne!(c.node(0).history(), c.node(3).history());
    assert_ne!(
        seeded("backup").snapshot.unwrap().exec.history,
        fresh.node(0).history()
    );
}

/// A founder started without the seed runs the batches on an empty store: the first
/// stable checkpoint shows it another history than its own, and it says so (its host
/// stops it) instead of going on.
#[test]
fn a_replica_that_executed_another_history_says_so_at_the_next_stable_checkpoint() {
    let diverged = |c: &Cluster, i: u32| {
        c.events.iter().any(|(n, e)| {
            *n == ekmat_core::NodeId(i)
                && matches!(e, ekmat_core::Event::Counter { name, .. } if *name == crate::DIVERGED_HISTORY)
        })
    };
    let mut c = seeded_cluster(["backup"; 4]);
    c.nodes[3] = Some(Pbft::new(config(3, 4)).unwrap());
    c.disks[3] = PbftStable::default();
    c.logged[3] = PbftStable::default();
    for s in 1..=12 {
        c.request((s % 3) as usize, 1, s);
        c.run();
    }
    c.advance(50);
    assert!(c.node(3).low_watermark() >= 4, "a checkpoint became stable");
    assert!(diverged(&c, 3));
    assert!((0..3).all(|i| !diverged(&c, i)));
}
