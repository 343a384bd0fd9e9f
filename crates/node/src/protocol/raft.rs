//! What the runtime needs from a protocol beyond the replica contract: how to start a
//! replica from what it made durable, and a summary of its state for status and
//! metrics. Everything else goes through `ekmat_core::Replica`.

use ekmat_core::{NodeId, Replica, Time};
use ekmat_raft::{AdaptiveTimeouts, RaftConfig, RaftNode, ReadMode, Role};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::NodeConfig;

/// The protocol's message, durable-write and durable-state types must cross the wire
/// and the disk.
pub trait RuntimeProtocol: 'static {
    type Node: Replica<
            Message: Serialize + DeserializeOwned + Send + Sync + 'static,
            Write: Serialize + DeserializeOwned + Send + 'static,
            Stable: Serialize + DeserializeOwned + Send + 'static,
        > + Send
        + 'static;

    /// A replica restarted from `stable` (the default value on first start).
    fn recover(
        cfg: &NodeConfig,
        stable: <Self::Node as Replica>::Stable,
        now: Time,
    ) -> Result<Self::Node, String>;

    fn status(node: &Self::Node) -> CoreStatus;

    /// The longest a member waits without hearing from a leader before it campaigns:
    /// leases are never granted shorter than a few of these (see `service/lease.rs`).
    fn election_timeout(cfg: &NodeConfig) -> std::time::Duration;
}

/// A protocol-neutral summary of a replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStatus {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub commit: u64,
    pub last_index: u64,
}

pub struct Raft;

impl RuntimeProtocol for Raft {
    type Node = RaftNode;

    fn recover(
        cfg: &NodeConfig,
        stable: ekmat_raft::RaftStable,
        now: Time,
    ) -> Result<RaftNode, String> {
        // A joining node starts knowing no configuration: the leader's log brings it.
        let voters = if cfg.me().joined {
            Vec::new()
        } else {
            cfg.founders().map(|m| NodeId(m.id)).collect()
        };
        let mut rc = RaftConfig::new(NodeId(cfg.id), voters);
        // The core's only randomness (election timeouts) is seeded afresh on every start.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        rc.seed = u64::from(cfg.id) ^ u64::from(std::process::id()) ^ clock;
        rc.max_append_entries = 256;
        rc.max_inflight = 4;
        if cfg.adaptive_timeouts {
            rc.adaptive = Some(AdaptiveTimeouts::default());
        }
        rc.read_mode = ReadMode::from_name(&cfg.read_mode).ok_or("validated: a known read mode")?;
        rc.max_clock_drift_ppm = cfg.max_clock_drift_ppm;
        RaftNode::recover(rc, stable, now).map_err(|e| e.to_string())
    }

    fn election_timeout(cfg: &NodeConfig) -> std::time::Duration {
        let voters = cfg.members.iter().map(|m| NodeId(m.id)).collect();
        RaftConfig::new(NodeId(cfg.id), voters).election_timeout_max
    }

    fn status(node: &RaftNode) -> CoreStatus {
        CoreStatus {
            term: node.term(),
            leader: node.leader(),
            is_leader: node.role() == Role::Leader,
            commit: node.commit_index(),
            last_index: node.log().last_index(),
        }
    }
}
