//! The protocols the simulator knows how to drive.

use std::time::Duration;

use ekmat_core::{DetRng, Membership, NodeId, Time};
use ekmat_raft::{AdaptiveTimeouts, Mutant, RaftConfig, RaftNode, RaftStable, ReadMode, Role};

use crate::check::raft::RaftChecker;
use crate::protocol::SimProtocol;

/// Raft with the options a run can vary.
#[derive(Clone, Debug)]
pub struct RaftSim {
    pub mutant: Mutant,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub election_timeout: (Duration, Duration),
    pub heartbeat: Duration,
    /// Timeouts adapted to measured round trips instead of fixed.
    pub adaptive: Option<AdaptiveTimeouts>,
    pub max_append_entries: usize,
    pub max_inflight: usize,
    pub snapshot_trailing: u64,
    pub snapshot_chunk_bytes: usize,
    /// Draw batch size and in-flight window per seed instead of using the values above.
    pub vary_knobs: bool,
    /// How reads are confirmed; `None`: drawn per seed (lease reads on half the seeds,
    /// when knobs vary and check-quorum is on), always lease for the lease mutant.
    pub read_mode: Option<ReadMode>,
    /// The clock-drift bound the replicas assume and `clock` faults drift by, in ppm.
    /// Far beyond real clocks, so a lease that ignores it is caught.
    pub max_clock_drift_ppm: u32,
}

impl Default for RaftSim {
    fn default() -> Self {
        RaftSim {
            mutant: Mutant::None,
            pre_vote: true,
            check_quorum: true,
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            heartbeat: Duration::from_millis(50),
            adaptive: None,
            max_append_entries: 64,
            max_inflight: 16,
            snapshot_trailing: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            vary_knobs: true,
            read_mode: None,
            max_clock_drift_ppm: 400_000,
        }
    }
}

impl RaftSim {
    fn config(&self, id: NodeId, voters: usize, seed: u64) -> RaftConfig {
        let founders = if id.index() < voters {
            (0..voters as u32).map(NodeId).collect()
        } else {
            Vec::new() // a spare joins later and learns the configuration then
        };
        let mut cfg = RaftConfig::new(id, founders);
        cfg.seed = seed;
        cfg.mutant = self.mutant;
        cfg.pre_vote = self.pre_vote;
        cfg.check_quorum = self.check_quorum;
        (cfg.election_timeout_min, cfg.election_timeout_max) = self.election_timeout;
        cfg.heartbeat_interval = self.heartbeat;
        cfg.adaptive = self.adaptive;
        cfg.max_append_entries = self.max_append_entries;
        cfg.max_inflight = self.max_inflight;
        cfg.snapshot_trailing = self.snapshot_trailing;
        cfg.snapshot_chunk_bytes = self.snapshot_chunk_bytes;
        cfg.read_mode = self.read_mode.unwrap_or_default();
        cfg.max_clock_drift_ppm = self.max_clock_drift_ppm;
        cfg
    }
}

impl SimProtocol for RaftSim {
    type Node = RaftNode;
    type Checker = RaftChecker;

    fn name(&self) -> &'static str {
        "raft"
    }

    fn boot(&self, id: NodeId, voters: usize, seed: u64, now: Time) -> Result<RaftNode, String> {
        RaftNode::new(self.config(id, voters, seed), now).map_err(|e| e.to_string())
    }

    fn recover(
        &self,
        id: NodeId,
        voters: usize,
        seed: u64,
        stable: RaftStable,
        now: Time,
    ) -> Result<RaftNode, String> {
        RaftNode::recover(self.config(id, voters, seed), stable, now).map_err(|e| e.to_string())
    }

    fn leading(&self, node: &RaftNode) -> Option<u64> {
        (node.role() == Role::Leader).then(|| node.term())
    }

    fn term(&self, node: &RaftNode) -> u64 {
        node.term()
    }

    fn checker(&self, n: usize, voters: usize) -> RaftChecker {
        RaftChecker::new(n, voters)
    }

    fn membership(&self, node: &RaftNode) -> Option<Membership> {
        Some(node.membership().clone())
    }

    fn max_clock_drift_ppm(&self) -> u32 {
        self.max_clock_drift_ppm
    }

    fn lease_expires(&self, node: &RaftNode) -> Option<Time> {
        node.lease_expires()
    }

    /// Small batches and windows split a new leader's no-op from the old entries it
    /// re-replicates, as a follower that lags far behind sees in practice.
    fn vary(&self, rng: &mut DetRng) -> (Self, String) {
        let mut v = self.clone();
        if self.vary_knobs {
            v.max_append_entries = [1, 2, 4, 64][rng.index(4)];
            v.max_inflight = [1, 2, 16][rng.index(3)];
            v.snapshot_trailing = [0, 3, 50][rng.index(3)];
            v.snapshot_chunk_bytes = [256, 4096, 1 << 20][rng.index(3)];
            if rng.chance(0.3) {
                v.adaptive = Some(AdaptiveTimeouts::default());
            }
        }
        // Drawn last, so the draws above stay what they were for every seed.
        let lease = if matches!(
            self.mutant,
            Mutant::ServeLeaseReadPastBound | Mutant::LeaseIgnoresDrift
        ) {
            true
        } else {
            self.vary_knobs && self.check_quorum && rng.chance(0.5)
        };
        let drawn = if lease {
            ReadMode::Lease
        } else {
            ReadMode::ReadIndex
        };
        v.read_mode = Some(self.read_mode.unwrap_or(drawn));
        let knobs = format!(
            "raft batch {} entries, {} in flight, {} entries kept behind snapshots, {}-byte snapshot chunks, {} timeouts, {} reads, clock drift bound {} ppm",
            v.max_append_entries,
            v.max_inflight,
            v.snapshot_trailing,
            v.snapshot_chunk_bytes,
            if v.adaptive.is_some() {
                "adaptive"
            } else {
                "fixed"
            },
            v.read_mode.unwrap_or_default().name(),
            v.max_clock_drift_ppm
        );
        (v, knobs)
    }
}

mod byzantine;
mod pbft;
mod twins;

pub use byzantine::Adversary;
pub use pbft::{PbftNode, PbftSim, wall_ms as pbft_wall_ms};
