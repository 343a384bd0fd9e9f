//! Snapshot points that follow the state's size (`PbftConfig::snapshot_size_factor`).

use super::*;

fn following_size(i: u32, n: usize) -> PbftConfig {
    following_size_times(1)(i, n)
}

fn following_size_times(factor: u64) -> impl Fn(u32, usize) -> PbftConfig {
    move |i, n| PbftConfig {
        snapshot_size_factor: factor,
        ..snapshotting(i, n)
    }
}

/// Bytes of commands node `i` executed in indexes `(from, to]`.
fn executed_between(c: &Cluster, i: usize, from: u64, to: u64) -> u64 {
    c.committed[i]
        .iter()
        .filter(|e| e.index > from && e.index <= to)
        .map(|e| match &e.entry {
            CommittedEntry::Command { command, .. } => command.len() as u64,
            _ => 0,
        })
        .sum()
}

/// The size of node `i`'s snapshot at `index`.
fn size_at(c: &Cluster, i: usize, index: u64) -> u64 {
    let upto: Vec<Committed> = c.committed[i]
        .iter()
        .filter(|e| e.index <= index)
        .cloned()
        .collect();
    encode_state(&upto).len() as u64
}

/// The points of a 4-replica cluster that executed 120 requests with `factor`: the same
/// at every replica, each at least 48 bytes and `factor` times the last snapshot's size
/// after the one before.
fn points_following_size(factor: u64) -> Vec<u64> {
    let mut growing = Cluster::with(4, following_size_times(factor));
    growing.one_request_per_batch(120);
    growing.assert_agree(&[0, 1, 2, 3]);
    let points = growing.points[0].clone();
    for i in 1..4 {
        assert_eq!(growing.points[i], points, "n{i} snapshots elsewhere");
    }
    let mut last = 0;
    for &p in &points {
        let between = executed_between(&growing, 0, last, p);
        let wanted = 48.max(if last == 0 {
            0
        } else {
            factor * size_at(&growing, 0, last)
        });
        assert!(
            between >= wanted,
            "{between} bytes executed from {last} to {p}, {wanted} wanted (at least 48, and {factor} times the last snapshot)"
        );
        last = p;
    }
    points
}

#[test]
fn snapshot_points_that_follow_the_size_space_out_as_the_state_grows() {
    let mut fixed = Cluster::with(4, snapshotting);
    fixed.one_request_per_batch(120);
    let points = points_following_size(1);
    // The harness's state takes ~6 bytes per byte of command: points every 48 bytes
    // encode it ~40 times, points that follow its size a handful of times.
    assert!(points.len() >= 2, "points {points:?}");
    assert!(
        points.len() * 3 < fixed.points[0].len(),
        "{points:?} against {:?}",
        fixed.points[0]
    );
}

/// Each gap at least twice the last snapshot's size (`points_following_size` checks
/// that): the second point comes later than at once the size.
#[test]
fn points_at_twice_the_size_come_later() {
    let once = points_following_size(1);
    let twice = points_following_size(2);
    assert!(twice.len() >= 2 && once.len() >= 2, "{twice:?}, {once:?}");
    assert!(
        twice[1] > once[1],
        "{twice:?} against {once:?} at once the size"
    );
}

#[test]
fn replicas_whose_hosts_snapshot_slowly_hold_execution_and_take_the_same_points() {
    let mut c = Cluster::with(4, following_size);
    // n1's and n3's snapshots come 150 ticks (1.5 s) after they ask: later than they
    // would execute the bytes after which the next point comes (the last snapshot's
    // size: ~50 requests, 100 ticks), let alone the 48 after which it may. Two of
    // them hold the others back (no stable checkpoint without them), so neither
    // falls behind the batches the others keep. n2's come 3 ticks late.
    c.snapshot_delay = vec![0, 150, 3, 150];
    c.one_request_per_batch(100);
    c.advance(3000);
    for i in [1, 3] {
        assert!(
            counted(&c, i, "snapshot-point-held") > 0,
            "n{i} did not wait for a snapshot's size"
        );
        assert_eq!(c.node(i).stats().snapshots_installed, 0);
    }
    c.assert_agree(&[0, 1, 2, 3]);
    assert_eq!(c.committed[0].len(), 100);
    assert!(c.points[0].len() >= 2, "points {:?}", c.points[0]);
    for i in 1..4 {
        assert_eq!(
            c.points[i], c.points[0],
            "n{i}'s points follow its host's speed"
        );
    }
}

#[test]
fn a_host_that_tells_a_snapshots_size_first_spares_the_wait() {
    let mut c = Cluster::with(4, following_size);
    c.snapshot_delay = vec![0, 150, 3, 150];
    c.size_first = true;
    c.one_request_per_batch(100);
    c.advance(3000);
    for i in 0..4 {
        assert_eq!(counted(&c, i, "snapshot-point-held"), 0, "n{i} waited");
    }
    c.assert_agree(&[0, 1, 2, 3]);
    assert!(c.points[0].len() >= 2, "points {:?}", c.points[0]);
    for i in 1..4 {
        assert_eq!(
            c.points[i], c.points[0],
            "n{i}'s points follow its host's speed"
        );
    }
}
