//! The bundle horizon: a bundle executes only within `bundle_horizon` sequence numbers
//! of the point its gateway made it at, so replicas remember executed bundles only that
//! long and still execute each at most once, and a gateway whose bundle outlived its
//! horizon bundles the requests again.

use std::sync::Arc;

use super::*;
use crate::message::bundle_digest;

const HORIZON: u64 = 16;

fn short_horizon(i: u32, n: usize) -> PbftConfig {
    PbftConfig {
        bundle_horizon: HORIZON,
        ..config(i, n)
    }
}

/// The batch that executed the anonymous request 1 (gateway n1) at sequence number 1.
fn one_anonymous_request_executed(c: &mut Cluster) -> Arc<Batch> {
    c.request(1, 0, 1);
    c.advance(50);
    c.node(0).executed(1).expect("executed").0.clone()
}

/// The runtime's requests are the anonymous client's (each gateway numbers its own), so
/// nothing but the bundle record keeps one from executing twice.
#[test]
fn a_bundle_ordered_again_past_its_horizon_executes_nowhere() {
    let mut c = Cluster::with(4, short_horizon);
    let batch = one_anonymous_request_executed(&mut c);
    let digest = bundle_digest(&batch.bundles[0]);
    assert!(c.node(0).executed_bundles.contains_key(&digest));
    // Past the horizon, the record forgets it.
    for s in 1..=HORIZON + 8 {
        c.request(2, 9, s);
        c.advance(20);
    }
    let executed = c.node(0).last_executed();
    assert!(executed > HORIZON + 1, "{executed}");
    assert!(!c.node(0).executed_bundles.contains_key(&digest));
    let before: Vec<usize> = (0..4).map(|i| c.committed[i].len()).collect();

    c.primary_orders_again(batch);
    for (i, before) in before.into_iter().enumerate() {
        assert_eq!(
            c.node(i).last_executed(),
            executed + 1,
            "n{i} executed the batch"
        );
        assert_eq!(
            c.committed[i].len(),
            before,
            "n{i} executed the anonymous request again"
        );
        assert_eq!(counted(&c, i, "expired-bundle"), 1, "n{i}");
    }
    c.assert_agree(&[0, 1, 2, 3]);
}

/// Within the horizon the record still holds it: ordered again, it is a duplicate.
#[test]
fn a_bundle_ordered_again_within_its_horizon_is_a_duplicate() {
    let mut c = Cluster::with(4, short_horizon);
    let batch = one_anonymous_request_executed(&mut c);
    c.primary_orders_again(batch);
    for i in 0..4 {
        assert_eq!(c.committed[i].len(), 1, "n{i}");
        assert_eq!(counted(&c, i, "duplicate-bundle"), 1, "n{i}");
    }
}

#[test]
fn the_record_of_executed_bundles_stays_within_the_horizon() {
    let mut c = Cluster::with(4, short_horizon);
    for s in 1..=100 {
        c.request((s % 4) as usize, 0, s);
        c.advance(20);
    }
    for i in 0..4 {
        let node = c.node(i);
        assert_eq!(c.committed[i].len(), 100, "n{i}");
        // One bundle per sequence number here: at most a horizon of them, plus those
        // executed since the last checkpoint's pruning.
        let bound = (HORIZON + node.config().checkpoint_interval) as usize;
        assert!(
            node.executed_bundles.len() <= bound,
            "n{i} remembers {} bundles",
            node.executed_bundles.len()
        );
    }
}

/// n1's bundle reaches nobody while the others' requests carry execution past its
/// horizon: n1 then bundles the request again, and it executes once.
#[test]
fn a_bundle_that_outlived_its_horizon_is_bundled_again_and_executes_once() {
    let mut c = Cluster::with(4, short_horizon);
    c.cut = Box::new(|from, _, msg| from == NodeId(1) && matches!(msg, Message::Bundle(_)));
    c.request(1, 0, 7);
    c.run();
    // No time passes (so no view timer fires): execution moves on message by message.
    for s in 1..=HORIZON + 8 {
        c.request(2, 9, s);
        c.run();
    }
    let lost = |c: &Cluster| {
        c.committed[0]
            .iter()
            .all(|e| !matches!(&e.entry, CommittedEntry::Command { id, .. } if id.client == 0))
    };
    assert!(lost(&c), "the bundle was cut off");
    assert!(counted(&c, 1, "rebundled") >= 1);
    c.cut = Box::new(|_, _, _| false);
    c.advance(300);
    for i in 0..4 {
        let times = c.committed[i]
            .iter()
            .filter(|e| matches!(&e.entry, CommittedEntry::Command { id, .. } if id.client == 0 && id.seq == 7))
            .count();
        assert_eq!(times, 1, "n{i}");
    }
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_horizon_shorter_than_two_windows_is_refused() {
    let cfg = PbftConfig {
        bundle_horizon: 15,
        ..config(0, 4)
    };
    let e = cfg.validate().unwrap_err();
    assert!(e.contains("bundle horizon"), "{e}");
}

#[test]
fn a_primary_with_no_batch_in_flight_is_refused() {
    let cfg = PbftConfig {
        max_inflight: 0,
        ..config(0, 4)
    };
    let e = cfg.validate().unwrap_err();
    assert!(e.contains("max_inflight is 0"), "{e}");
}

/// n1's signed bundle of the anonymous request 42, made "at" `created`, sent to every
/// other replica.
fn bundle_made_at(c: &mut Cluster, created: u64) {
    let request = crate::message::ClientRequest {
        id: RequestId { client: 0, seq: 42 },
        op: Some(Bytes::from_static(b"op 0/42")),
        sig: None,
    };
    let bundle = crate::message::Bundle::new(NodeId(1), 5, created, vec![request]);
    let signed = Arc::new(crate::crypto::sign(&config(1, 4).secret, NodeId(1), bundle));
    for to in [0, 2, 3] {
        let msg = Message::Bundle(signed.clone());
        c.input(
            to,
            Input::Message {
                from: NodeId(1),
                msg,
            },
        );
    }
}

fn executed_42(c: &Cluster, i: usize) -> usize {
    c.committed[i]
        .iter()
        .filter(|e| matches!(&e.entry, CommittedEntry::Command { id, .. } if id.client == 0 && id.seq == 42))
        .count()
}

/// A bundle claiming a point a few sequence numbers ahead (replicas differ by that
/// much) waits, without starting the view timer, until execution passes that point;
/// one claiming a point more than a window ahead is refused.
#[test]
fn a_bundle_made_later_than_here_waits_without_changing_the_view() {
    let mut c = Cluster::with(4, short_horizon);
    let window = c.node(0).config().window;
    bundle_made_at(&mut c, window + 1);
    assert!(c.node(0).pending.is_empty(), "more than a window ahead");
    bundle_made_at(&mut c, 3);
    assert_eq!(c.node(0).pending.len(), 1);
    c.advance(2_000); // five view timeouts
    for i in 0..4 {
        assert_eq!(c.node(i).view, 0, "n{i} changed views");
        assert_eq!(executed_42(&c, i), 0, "n{i}");
    }
    for s in 1..=3 {
        c.request(2, 9, s);
        c.advance(20);
    }
    c.advance(100);
    for i in 0..4 {
        assert_eq!(executed_42(&c, i), 1, "n{i}");
        assert_eq!(c.node(i).view, 0, "n{i} changed views");
    }
    c.assert_agree(&[0, 1, 2, 3]);
}

/// n1's bundle executes while n1 hears nothing; the others move past its horizon and
/// drop the batches behind snapshots; n1 catches up by installing one. The snapshot's
/// record forgot the bundle, so whether it executed is unknown to n1: bundled again,
/// the anonymous request would execute twice (the simulator found this). It is dropped
/// instead, its outcome unknown, as a timed-out etcd request's is.
#[test]
fn a_gateway_that_catches_up_by_snapshot_does_not_bundle_again_what_may_have_executed() {
    let mut c = Cluster::with(4, |i, n| PbftConfig {
        bundle_horizon: HORIZON,
        ..snapshotting(i, n)
    });
    c.cut = Box::new(|from, to, _| to == NodeId(1) && from != NodeId(1));
    c.request(1, 0, 7);
    c.run();
    for s in 1..=3 * HORIZON {
        c.request(2, 9, s);
        c.run();
    }
    let times = |c: &Cluster, i: usize| {
        c.committed[i]
            .iter()
            .filter(|e| matches!(&e.entry, CommittedEntry::Command { id, .. } if id.client == 0 && id.seq == 7))
            .count()
    };
    assert_eq!(times(&c, 0), 1, "the bundle reached the others");
    // Healed, with more requests (checkpoints tell n1 how far behind it is).
    c.cut = Box::new(|_, _, _| false);
    for s in 3 * HORIZON + 1..=3 * HORIZON + 8 {
        c.request(2, 9, s);
        c.advance(200);
    }
    c.advance(1000);
    assert!(
        counted(&c, 1, "snapshot-installed") >= 1,
        "n1 caught up by snapshot"
    );
    for i in [0, 2, 3] {
        assert_eq!(times(&c, i), 1, "n{i} executed the anonymous request again");
    }
    assert_eq!(counted(&c, 1, "rebundled"), 0);
    assert_eq!(counted(&c, 1, "bundle-outcome-unknown"), 1);
    c.assert_agree(&[0, 1, 2, 3]);
}
