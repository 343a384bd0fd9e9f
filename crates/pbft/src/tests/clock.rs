//! The agreed clock (`clock.rs`): a batch executes at the time its primary proposed,
//! the same at every replica, and only a time the backups find plausible on their own
//! clocks prepares.

use super::*;
use crate::Mutant;

const HOUR_MS: i64 = 3_600_000;

/// Every replica observes a wall clock; n0 (the primary of view 0) `offset` ms off.
fn clocks_with_primary_off(offset: i64, mutant: Mutant) -> Cluster {
    let mut c = Cluster::with(4, move |i, n| PbftConfig {
        mutant,
        ..config(i, n)
    });
    c.wall_offset = vec![Some(0); 4];
    c.wall_offset[0] = Some(offset);
    c
}

/// The correct replicas' clock now.
fn wall(c: &Cluster) -> u64 {
    WALL_EPOCH_MS + c.now.as_millis()
}

fn counted(c: &Cluster, name: &str) -> u64 {
    c.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Counter { name: n, delta } if *n == name => Some(*delta),
            _ => None,
        })
        .sum()
}

/// The times the commands were delivered at, at node `i`.
fn clocks(c: &Cluster, i: usize) -> Vec<u64> {
    c.committed[i]
        .iter()
        .map(|e| e.clock_ms.expect("PBFT delivers a batch time"))
        .collect()
}

#[test]
fn every_replica_delivers_a_command_at_the_time_its_primary_proposed() {
    let mut c = clocks_with_primary_off(0, Mutant::None);
    c.advance(100);
    let before = wall(&c);
    c.request(2, 1, 1);
    c.advance(50);
    c.assert_agree(&[0, 1, 2, 3]);
    let at = clocks(&c, 1);
    assert_eq!(at.len(), 1);
    assert!(
        (before..=wall(&c)).contains(&at[0]),
        "{} not within the run",
        at[0]
    );
    assert_eq!(c.node(3).executed(1).expect("executed").0.clock_ms, at[0]);
}

#[test]
fn a_primary_whose_clock_runs_an_hour_ahead_is_refused_and_replaced() {
    let mut c = clocks_with_primary_off(HOUR_MS, Mutant::None);
    c.request(1, 1, 1);
    c.advance(3_000);
    assert!(
        counted(&c, "clock-ahead-refused") >= 3,
        "backups refused it"
    );
    assert!(c.node(1).view() >= 1, "the primary was replaced");
    c.assert_agree(&[0, 1, 2, 3]);
    let at = clocks(&c, 2);
    assert_eq!(at.len(), 1, "the request executed once, in a later view");
    assert!(at[0] <= wall(&c), "executed at {} > {}", at[0], wall(&c));
}

#[test]
fn a_primary_whose_clock_lags_a_minute_is_refused_too() {
    let mut c = clocks_with_primary_off(-60_000, Mutant::None);
    c.request(1, 1, 1);
    c.advance(3_000);
    assert!(counted(&c, "clock-behind-refused") >= 3);
    c.assert_agree(&[0, 1, 2, 3]);
    let at = clocks(&c, 3);
    assert_eq!(at.len(), 1);
    assert!(at[0] + 10_000 >= wall(&c), "executed at a minute-old time");
}

/// The check is what stops it: without it, the hour-ahead time is agreed.
#[test]
fn without_the_check_the_hour_ahead_time_is_agreed() {
    let mut c = clocks_with_primary_off(HOUR_MS, Mutant::SkipClockCheck);
    c.request(1, 1, 1);
    c.advance(100);
    c.assert_agree(&[0, 1, 2, 3]);
    let at = clocks(&c, 2);
    assert_eq!(at.len(), 1);
    assert!(
        at[0] > wall(&c) + 3_000_000,
        "{} should be an hour ahead",
        at[0]
    );
}

/// The time is part of the batch digest: a certificate for one time does not certify
/// the same bundles at another.
#[test]
fn the_batch_time_is_certified() {
    let mut c = clocks_with_primary_off(0, Mutant::None);
    c.request(1, 1, 1);
    c.advance(50);
    let (batch, qc) = c.node(2).executed(1).expect("executed").clone();
    let mut later = (*batch).clone();
    later.clock_ms += 1;
    assert_eq!(qc.digest, batch.digest());
    assert_ne!(qc.digest, later.digest());
}
