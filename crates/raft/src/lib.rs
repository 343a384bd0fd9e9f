//! Raft (Ongaro & Ousterhout 2014; Ongaro's thesis 2014) as a sans-IO [`Replica`]:
//! randomized election timeouts, pre-vote, check-quorum, pipelined and batched log
//! replication with fast conflict backtracking, the current-term commit rule, and
//! linearizable reads by ReadIndex or by leader lease. Durable state leaves as
//! [`RaftWrite`]s, and nothing that depends on an undurable write is sent.
//!
//! | file | idea |
//! |---|---|
//! | `node.rs` | the replica's state and input dispatch |
//! | `election.rs` | timeouts, pre-vote, votes, becoming leader |
//! | `replication.rs` | AppendEntries, heartbeats, check-quorum, commit |
//! | `read_index.rs` | ReadIndex reads |
//! | `lease.rs` | lease-based reads under a clock-drift bound |
//! | `progress.rs` | the leader's per-follower replication window |
//! | `snapshot.rs` | taking snapshots, compacting the log, InstallSnapshot |
//! | `timing.rs` | heartbeat and election timeouts, fixed or adapted to round trips |
//! | `transfer.rs` | leadership transfer (TimeoutNow) |
//! | `membership.rs` | membership changes by joint consensus, learners |
//! | `log.rs` | the log, its durable prefix and snapshot, and what is written to disk |
//!
//! [`Replica`]: ekmat_core::Replica

mod config;
mod election;
mod lease;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod read_index;
mod replication;
mod snapshot;
mod timing;
mod transfer;

pub use config::{ConfigError, Mutant, RaftConfig};
pub use lease::{PPM, ReadMode, lease_duration};
pub use log::{Entry, Payload, RaftLog, RaftStable, RaftWrite, Snapshot};
pub use message::{
    AppendOutcome, AppendRequest, AppendResponse, Message, TimeoutNow, VoteRequest, VoteResponse,
};
pub use node::{RaftNode, Role};
pub use timing::{AdaptiveTimeouts, from_round_trips};
