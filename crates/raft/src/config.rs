//! Raft's knobs, their defaults, and the planted bugs the simulator must catch.

use std::time::Duration;

use ekmat_core::NodeId;

use crate::lease::{PPM, ReadMode, lease_duration};
use crate::timing::AdaptiveTimeouts;

#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub id: NodeId,
    /// The voters a new cluster starts with, including `id`. Empty for a node joining
    /// an existing cluster: it learns the configuration from the leader.
    pub voters: Vec<NodeId>,
    /// Election timeouts are drawn uniformly from this range, afresh each time.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub heartbeat_interval: Duration,
    /// Ask for pre-votes before raising the term (Ongaro's thesis §9.6), so a node that
    /// was cut off cannot disrupt a healthy leader when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down,
    /// and followers that heard from a leader recently ignore vote requests (thesis §4.2.3).
    pub check_quorum: bool,
    /// Entries per AppendEntries message.
    pub max_append_entries: usize,
    /// AppendEntries messages in flight to one follower before the leader waits for acks.
    pub max_inflight: usize,
    /// Uncommitted entries a leader accepts before answering `Busy`.
    pub max_uncommitted: usize,
    /// Entries kept behind a snapshot, so a follower slightly behind gets entries rather
    /// than the whole snapshot.
    pub snapshot_trailing: u64,
    /// Bytes of snapshot per InstallSnapshot message.
    pub snapshot_chunk_bytes: usize,
    /// Adapt the heartbeat and election timeouts to measured round trips (seed 001),
    /// never going below the fixed ones above.
    pub adaptive: Option<AdaptiveTimeouts>,
    /// How reads are confirmed: ReadIndex rounds, or a leader lease (`lease.rs`).
    pub read_mode: ReadMode,
    /// The bound ρ on clock drift, in parts per million: every clock's rate is within
    /// 1 ± ρ of real time. Lease reads shorten their lease by it.
    pub max_clock_drift_ppm: u32,
    /// Seed of the core's only randomness (election timeouts).
    pub seed: u64,
    pub mutant: Mutant,
}

impl RaftConfig {
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> RaftConfig {
        RaftConfig {
            id,
            voters,
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            pre_vote: true,
            check_quorum: true,
            max_append_entries: 64,
            max_inflight: 16,
            max_uncommitted: 10_000,
            snapshot_trailing: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            adaptive: None,
            read_mode: ReadMode::ReadIndex,
            // 1%: far above quartz (~100 ppm) and NTP's slew limit (500 ppm).
            max_clock_drift_ppm: 10_000,
            seed: u64::from(id.0),
            mutant: Mutant::None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.voters.is_empty() && !self.voters.contains(&self.id) {
            return Err(ConfigError::NotAVoter(self.id));
        }
        let mut sorted = self.voters.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateVoter(w[0]));
        }
        if self.election_timeout_min.is_zero()
            || self.election_timeout_min > self.election_timeout_max
        {
            return Err(ConfigError::ElectionTimeoutRange);
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.election_timeout_min
        {
            return Err(ConfigError::HeartbeatTooSlow);
        }
        if self.max_append_entries == 0
            || self.max_inflight == 0
            || self.max_uncommitted == 0
            || self.snapshot_chunk_bytes == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        if let Some(a) = self.adaptive
            && (a.window == 0 || a.heartbeat_max < self.heartbeat_interval)
        {
            return Err(ConfigError::AdaptiveBounds);
        }
        if self.max_clock_drift_ppm >= PPM {
            return Err(ConfigError::ClockDrift(self.max_clock_drift_ppm));
        }
        if self.read_mode == ReadMode::Lease {
            // Followers' stickiness, which the lease relies on, comes with check-quorum.
            if !self.check_quorum {
                return Err(ConfigError::LeaseWithoutCheckQuorum);
            }
            let lease = lease_duration(self.election_timeout_min, self.max_clock_drift_ppm)
                .expect("drift checked above");
            if lease <= self.heartbeat_interval {
                return Err(ConfigError::LeaseTooShort {
                    lease,
                    heartbeat: self.heartbeat_interval,
                });
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("node {0} is not among the voters")]
    NotAVoter(NodeId),
    #[error("node {0} is listed twice among the voters")]
    DuplicateVoter(NodeId),
    #[error("election timeout range must be non-empty, non-zero and min <= max")]
    ElectionTimeoutRange,
    #[error("heartbeat interval must be non-zero and shorter than the minimum election timeout")]
    HeartbeatTooSlow,
    #[error("batch and in-flight limits must be at least 1")]
    ZeroLimit,
    #[error(
        "adaptive timeouts need a window of at least 1 and a heartbeat bound no shorter than the heartbeat interval"
    )]
    AdaptiveBounds,
    #[error("max clock drift must be below 1000000 ppm (100%), got {0} ppm")]
    ClockDrift(u32),
    #[error(
        "lease reads need check_quorum: without it followers vote while a leader's lease holds"
    )]
    LeaseWithoutCheckQuorum,
    #[error(
        "the lease (election_timeout_min x (1-drift)/(1+drift) = {lease:?}) must be longer than the heartbeat interval ({heartbeat:?}); lower the drift bound or raise the election timeout"
    )]
    LeaseTooShort {
        lease: Duration,
        heartbeat: Duration,
    },
}

/// A deliberately planted bug. The simulator's checkers must catch every one of them;
/// each names the rule of the Raft paper it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mutant {
    #[default]
    None,
    /// Commit an entry from an earlier term by counting replicas (Raft paper, Figure 8).
    CommitOldTerm,
    /// Grant votes without checking that the candidate's log is at least as up to date.
    VoteWithoutLogCheck,
    /// Grant a vote without making it durable first.
    ForgetVotePersist,
    /// Answer a read from the leader's commit index without first confirming, with a
    /// heartbeat round, that it is still the leader (thesis §6.4): a deposed leader
    /// that has not noticed yet serves stale reads.
    ReadWithoutQuorum,
    /// Install a snapshot from the leader even if it is older than what this replica
    /// already committed (Raft §7: such a snapshot must be ignored), rolling its state
    /// machine back.
    InstallStaleSnapshot,
    /// Switch straight to a new set of voters instead of through the joint
    /// configuration (thesis §4.3): a majority of the old voters and a majority of the
    /// new ones may then decide different things.
    ConfigBeforeJoint,
    /// Serve lease reads past the bound (thesis §6.4.1): a lease of the whole
    /// `election_timeout_min`, ignoring the clock-drift bound, renewed by every round the
    /// leader sends rather than by a quorum's echo of it. A leader cut off from the
    /// quorum keeps serving reads while a new leader commits writes.
    ServeLeaseReadPastBound,
    /// A lease of the whole `election_timeout_min`, renewed only by a quorum's echo as it
    /// should be, but ignoring the clock-drift bound: a leader whose clock runs slow
    /// still serves reads after followers with fast clocks have elected a successor.
    LeaseIgnoresDrift,
}

impl Mutant {
    pub const ALL: [Mutant; 8] = [
        Mutant::CommitOldTerm,
        Mutant::VoteWithoutLogCheck,
        Mutant::ForgetVotePersist,
        Mutant::ReadWithoutQuorum,
        Mutant::InstallStaleSnapshot,
        Mutant::ConfigBeforeJoint,
        Mutant::ServeLeaseReadPastBound,
        Mutant::LeaseIgnoresDrift,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutant::None => "none",
            Mutant::CommitOldTerm => "commit-old-term",
            Mutant::VoteWithoutLogCheck => "vote-without-log-check",
            Mutant::ForgetVotePersist => "forget-vote-persist",
            Mutant::ReadWithoutQuorum => "read-without-quorum",
            Mutant::InstallStaleSnapshot => "install-stale-snapshot",
            Mutant::ConfigBeforeJoint => "config-before-joint",
            Mutant::ServeLeaseReadPastBound => "serve-lease-read-past-bound",
            Mutant::LeaseIgnoresDrift => "lease-ignores-drift",
        }
    }

    pub fn from_name(name: &str) -> Option<Mutant> {
        std::iter::once(Mutant::None)
            .chain(Mutant::ALL)
            .find(|m| m.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    #[test]
    fn defaults_are_valid() {
        RaftConfig::new(NodeId(0), ids(5)).validate().unwrap();
    }

    #[test]
    fn bad_configs_are_named() {
        let mut c = RaftConfig::new(NodeId(9), ids(3));
        assert_eq!(c.validate(), Err(ConfigError::NotAVoter(NodeId(9))));
        c.voters = vec![NodeId(9), NodeId(1), NodeId(1)];
        assert_eq!(c.validate(), Err(ConfigError::DuplicateVoter(NodeId(1))));
        let mut c = RaftConfig::new(NodeId(0), ids(3));
        c.heartbeat_interval = c.election_timeout_min;
        assert_eq!(c.validate(), Err(ConfigError::HeartbeatTooSlow));
    }

    #[test]
    fn lease_configs_are_checked() {
        let mut c = RaftConfig::new(NodeId(0), ids(3));
        c.read_mode = ReadMode::Lease;
        c.validate().unwrap();
        c.max_clock_drift_ppm = PPM;
        assert_eq!(c.validate(), Err(ConfigError::ClockDrift(PPM)));
        // 150 ms · 0.5 / 1.5 = 50 ms: no longer than a heartbeat.
        c.max_clock_drift_ppm = 500_000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::LeaseTooShort { .. })
        ));
        c.max_clock_drift_ppm = 10_000;
        c.check_quorum = false;
        assert_eq!(c.validate(), Err(ConfigError::LeaseWithoutCheckQuorum));
        // ReadIndex does not care about either.
        c.read_mode = ReadMode::ReadIndex;
        c.validate().unwrap();
    }

    #[test]
    fn mutant_names_round_trip() {
        for m in Mutant::ALL {
            assert_eq!(Mutant::from_name(m.name()), Some(m));
        }
        assert_eq!(Mutant::from_name("nope"), None);
    }
}
