//! Raft as the runtime runs it.

use ekmat_core::{NodeId, Time};
use ekmat_raft::{AdaptiveTimeouts, RaftConfig, RaftNode, ReadMode, Role};

use super::{CoreStatus, RuntimeProtocol};
use crate::config::NodeConfig;

pub struct Raft;

impl RuntimeProtocol for Raft {
    type Node = RaftNode;
    const NAME: &'static str = "raft";
    const RECONFIGURES: bool = true;
    const TAKES_SNAPSHOTS: bool = true;

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
