//! Lease-based reads (Raft thesis §6.4.1), an option beside ReadIndex.
//!
//! A leader whose heartbeat round a quorum acknowledged answers reads at once from its
//! commit index, without a round of its own, until its lease runs out.
//!
//! # Why it is safe
//!
//! With check-quorum, a follower grants neither a vote nor a pre-vote while it has heard
//! from a leader within `election_timeout_min` of its own clock (`election.rs`), and never
//! campaigns itself that soon (its election deadline is at least that far from the last
//! contact). A leader that sent a round at its local time `s` and heard a quorum echo it
//! knows that every member of that quorum heard from it at or after `s`, so no other
//! leader can be elected (every election quorum meets that quorum) before each of them
//! has waited `election_timeout_min` on its own clock. If every clock's rate is within
//! `1 ± ρ` of real time, that wait is at least `election_timeout_min / (1 + ρ)` real time,
//! while a lease of `election_timeout_min · (1 − ρ) / (1 + ρ)` on the leader's clock lasts
//! at most `election_timeout_min / (1 + ρ)` real time. Until then the leader's commit index
//! covers every committed write, once it has committed an entry of its own term.
//!
//! The lease starts when the round was *sent*: every message carries the latest round's
//! sequence number (`read_seq`), so an echo of round `k` proves the follower heard from
//! us no earlier than when round `k` started.
//!
//! Three ways around the followers' stickiness are closed:
//! - Leadership transfer: the target of TimeoutNow campaigns at once and voters answer it
//!   even if they heard from us. No lease read is served while a transfer is in progress,
//!   and once TimeoutNow has gone out none for the rest of the term (it may arrive late).
//! - Restarts: a restarted follower has forgotten when it last heard from a leader, so in
//!   lease mode it grants no (pre-)vote for `election_timeout_min` after it starts.
//! - A stale answer with a higher term can make a follower forget its leader; in lease
//!   mode stickiness goes by the time of the last contact alone.

use std::collections::VecDeque;
use std::time::Duration;

use ekmat_core::{Reply, RequestId, Time};

use crate::config::Mutant;
use crate::node::{Out, RaftNode, Role};

/// How a leader makes sure a read sees every committed write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// A heartbeat round per batch of reads (thesis §6.4): safe whatever the clocks do.
    #[default]
    ReadIndex,
    /// Answer at once while a lease holds (thesis §6.4.1); safe if clock rates stay
    /// within `max_clock_drift_ppm` of each other's. Needs check-quorum.
    Lease,
}

impl ReadMode {
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::ReadIndex => "read-index",
            ReadMode::Lease => "lease",
        }
    }

    pub fn from_name(name: &str) -> Option<ReadMode> {
        [ReadMode::ReadIndex, ReadMode::Lease]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// Parts per million.
pub const PPM: u32 = 1_000_000;

/// How long a lease lasts on the leader's clock: `election_timeout_min · (1 − ρ) / (1 + ρ)`
/// with `ρ = drift_ppm / 10⁶`, rounded down. None if `ρ >= 1` (no clock can be trusted).
pub fn lease_duration(election_timeout_min: Duration, drift_ppm: u32) -> Option<Duration> {
    if drift_ppm >= PPM {
        return None;
    }
    let e = election_timeout_min.as_micros();
    let (ppm, rho) = (u128::from(PPM), u128::from(drift_ppm));
    let us = e * (ppm - rho) / (ppm + rho);
    Some(Duration::from_micros(us as u64))
}

/// A leader's lease, and a restarted node's vote embargo.
#[derive(Debug, Default)]
pub(crate) struct Lease {
    /// Rounds started this term, with our clock when each started, oldest first; the
    /// first is the term's start (messages then carried the sequence number as it was).
    rounds: VecDeque<(u64, Time)>,
    /// The lease holds while `now < until`.
    until: Option<Time>,
    /// The latest round a quorum has echoed.
    confirmed: u64,
    /// TimeoutNow went out this term: its target may be elected at any moment.
    revoked: bool,
    /// (Pre-)votes wait until then after a restart.
    no_votes_before: Time,
}

impl Lease {
    /// A node (re)starts at `now`: for all it knows it acknowledged a leader just before.
    pub fn started(&mut self, now: Time, election_timeout_min: Duration) {
        self.no_votes_before = now + election_timeout_min;
    }
}

impl RaftNode {
    fn lease_mode(&self) -> bool {
        self.cfg.read_mode == ReadMode::Lease
    }

    /// How long a lease lasts on our clock (the mutant ignores the drift bound).
    pub(crate) fn lease_length(&self) -> Duration {
        if matches!(
            self.cfg.mutant,
            Mutant::ServeLeaseReadPastBound | Mutant::LeaseIgnoresDrift
        ) {
            return self.cfg.election_timeout_min;
        }
        lease_duration(self.cfg.election_timeout_min, self.cfg.max_clock_drift_ppm)
            .expect("validated: drift below 100%")
    }

    /// We became leader: no lease yet; rounds are counted from here.
    pub(crate) fn lease_term_started(&mut self) {
        let now = self.now;
        let seq = self.reads.seq();
        let lease = &mut self.lease;
        lease.rounds.clear();
        lease.rounds.push_back((seq, now));
        lease.until = None;
        lease.revoked = false;
        lease.confirmed = 0;
    }

    /// Round `seq` starts now (it goes out with every message from here on).
    pub(crate) fn lease_round_started(&mut self, seq: u64) {
        if !self.lease_mode() || self.role != Role::Leader {
            return;
        }
        if let Some(&(last, _)) = self.lease.rounds.back() {
            assert!(
                seq > last,
                "lease rounds only go forward: {seq} after {last}"
            );
        }
        self.lease.rounds.push_back((seq, self.now));
        if self.cfg.mutant == Mutant::ServeLeaseReadPastBound && self.lease.until.is_some() {
            // The planted bug: a round renews the lease when sent, echoed or not, so a
            // cut-off leader's lease outlives the quorum's patience.
            self.lease.until = Some(self.now + self.lease_length());
        }
    }

    /// A leader's heartbeat in lease mode starts a round, so the lease keeps renewing.
    pub(crate) fn lease_heartbeat(&mut self, out: &mut Out) {
        let seq = self.reads.new_round();
        self.lease_round_started(seq);
        self.broadcast_heartbeat(out);
        self.confirm_reads(out);
    }

    /// A quorum (counting us) has echoed round `confirmed` or later: the lease runs from
    /// when that round started.
    pub(crate) fn extend_lease(&mut self, confirmed: u64) {
        if !self.lease_mode() || self.role != Role::Leader || confirmed <= self.lease.confirmed {
            return;
        }
        self.lease.confirmed = confirmed;
        let rounds = &mut self.lease.rounds;
        // Keep the newest round at or before `confirmed`; older ones can only give less.
        while rounds.len() > 1 && rounds[1].0 <= confirmed {
            rounds.pop_front();
        }
        let Some(&(seq, started)) = rounds.front().filter(|(seq, _)| *seq <= confirmed) else {
            return; // nothing this term confirmed yet
        };
        assert!(started <= self.now && seq <= self.reads.seq());
        let until = started + self.lease_length();
        self.lease.until = Some(self.lease.until.map_or(until, |u| u.max(until)));
    }

    /// When the lease ends on this node's clock, if it leads and holds one.
    pub fn lease_expires(&self) -> Option<Time> {
        self.lease_holds().then_some(self.lease.until).flatten()
    }

    /// Whether a read may be answered from the lease now.
    pub(crate) fn lease_holds(&self) -> bool {
        self.lease_mode()
            && self.role == Role::Leader
            && self.transfer.is_none()
            && !self.lease.revoked
            && self.lease.until.is_some_and(|until| self.now < until)
    }

    /// Answer `id` from the lease if it holds and our commit index is known to be
    /// complete. Returns false if the caller must fall back to ReadIndex.
    pub(crate) fn serve_lease_read(&mut self, id: RequestId, out: &mut Out) -> bool {
        if !self.lease_holds() || self.log.term_at(self.commit) != Some(self.term) {
            return false;
        }
        // A lease runs from a round already started, so never past a lease from now.
        let until = self.lease.until.expect("a holding lease has an end");
        assert!(
            until <= self.now + self.lease_length(),
            "lease beyond its length"
        );
        out.reply(Reply::ReadReady {
            id,
            index: self.commit,
        });
        true
    }

    /// A new configuration is in force: a lease a quorum of the old one granted says
    /// nothing about the new one's voters, so it is recomputed from the echoes, counted
    /// by the configuration now in force.
    pub(crate) fn lease_config_changed(&mut self) {
        self.lease.until = None;
        self.lease.confirmed = 0;
    }

    /// TimeoutNow is going out: its target may be elected at once, before any lease of
    /// ours would end.
    pub(crate) fn revoke_lease(&mut self) {
        self.lease.revoked = true;
        self.lease.until = None;
    }

    /// In lease mode a restarted node keeps out of elections for a while (see above).
    pub(crate) fn vote_embargo(&self) -> bool {
        self.lease_mode() && self.now < self.lease.no_votes_before
    }

    /// Stickiness: `leader_known` is whether we still follow someone. In lease mode the
    /// time of the last contact alone decides (a stale higher-term answer may have made
    /// us forget the leader a quorum acknowledged).
    pub(crate) fn lease_stickiness(&self, leader_known: bool) -> bool {
        let recent = self
            .last_leader_contact
            .is_some_and(|t| self.now.since(t) < self.timeouts.election);
        if self.lease_mode() {
            recent || self.vote_embargo()
        } else {
            leader_known && recent
        }
    }

    /// Our own election timer fired: in lease mode it must not beat a lease we
    /// acknowledged (we would vote for ourselves).
    pub(crate) fn assert_campaign_respects_leases(&self) {
        if !self.lease_mode() {
            return;
        }
        let min = self.cfg.election_timeout_min;
        assert!(
            self.last_leader_contact
                .is_none_or(|t| self.now.since(t) >= min),
            "{}: election timer fired within {min:?} of hearing from a leader",
            self.cfg.id
        );
        assert!(
            !self.vote_embargo(),
            "{}: election timer fired before the restart embargo ended",
            self.cfg.id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_shrinks_with_the_drift_bound() {
        let e = Duration::from_millis(150);
        assert_eq!(lease_duration(e, 0), Some(e));
        // ρ = 20%: 150 · 0.8 / 1.2 = 100 ms.
        assert_eq!(lease_duration(e, 200_000), Some(Duration::from_millis(100)));
        // ρ = 1%: 150 · 0.99 / 1.01 = 147.0297 ms, rounded down.
        assert_eq!(
            lease_duration(e, 10_000),
            Some(Duration::from_micros(147_029))
        );
        assert_eq!(lease_duration(e, PPM), None);
        assert_eq!(lease_duration(e, PPM - 1), Some(Duration::ZERO));
    }

    #[test]
    fn a_lease_never_outlasts_the_shortest_real_wait_of_a_fast_follower() {
        // Leader slow by ρ, followers fast by ρ: the lease's real length must not exceed
        // the real time a follower waits before voting.
        let e = Duration::from_millis(150);
        for ppm in [0u32, 100, 10_000, 100_000, 200_000, 500_000] {
            let rho = f64::from(ppm) / 1e6;
            let lease = lease_duration(e, ppm).unwrap().as_secs_f64();
            let leader_real = lease / (1.0 - rho);
            let follower_real = e.as_secs_f64() / (1.0 + rho);
            assert!(leader_real <= follower_real + 1e-12, "{ppm} ppm");
        }
    }

    #[test]
    fn read_modes_have_names() {
        for m in [ReadMode::ReadIndex, ReadMode::Lease] {
            assert_eq!(ReadMode::from_name(m.name()), Some(m));
        }
        assert_eq!(ReadMode::from_name("quorum"), None);
    }
}
