//! What the runtime needs from a protocol beyond the replica contract: how to start a
//! replica from what it made durable, and a summary of its state for status and
//! metrics. Everything else goes through `ekmat_core::Replica`.
//!
//! - `raft.rs`: Raft (membership changes, leadership transfer, snapshots);
//! - `pbft.rs`: PBFT (signed messages, keys from the data directory and the
//!   configuration, a fixed membership).

use ekmat_core::{NodeId, Replica, Time};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::NodeConfig;

mod pbft;
mod raft;

pub(crate) use pbft::WINDOW as PBFT_WINDOW;
pub use pbft::{
    Pbft, client_request as pbft_client_request, max_request_bytes as pbft_max_request_bytes,
};
pub use raft::Raft;

/// The protocol's message, durable-write and durable-state types must cross the wire
/// and the disk.
pub trait RuntimeProtocol: 'static {
    type Node: Replica<
            Message: Serialize + DeserializeOwned + Send + Sync + 'static,
            Write: Serialize + DeserializeOwned + Send + 'static,
            Stable: Serialize + DeserializeOwned + Send + 'static,
        > + Send
        + 'static;

    /// The protocol's name in configurations (`protocol = "..."`).
    const NAME: &'static str;

    /// Whether the protocol changes its membership and hands leadership over at run
    /// time. If not, the runtime refuses both with a clear error before they reach it.
    const RECONFIGURES: bool;

    /// Whether the protocol compacts its log from state machine snapshots the driver
    /// hands it. If not, the driver makes none.
    const TAKES_SNAPSHOTS: bool;

    /// Whether the protocol agrees on each entry's time itself ([`Self::observe_clock`]),
    /// so that no one member's clock is the store's. Then every member, not only the
    /// leader, proposes the ticks that expire leases: a faulty leader that proposes
    /// none cannot keep leases alive past their time.
    const AGREES_ON_TIME: bool = false;

    /// A replica restarted from `stable` (the default value on first start).
    fn recover(
        cfg: &NodeConfig,
        stable: <Self::Node as Replica>::Stable,
        now: Time,
    ) -> Result<Self::Node, String>;

    fn status(node: &Self::Node) -> CoreStatus;

    /// Hand the replica the wall clock (ms since the Unix epoch) before a step, for
    /// protocols that agree on time themselves (PBFT's batch time). Cores read no clock.
    fn observe_clock(node: &mut Self::Node, wall_ms: u64) {
        let _ = (node, wall_ms);
    }

    /// The certificate that the batch at `seq` (0: the latest this member holds)
    /// committed, as JSON a client checks with the validators' public keys alone
    /// (`ekmat pbft verify`); `None` if the protocol makes none or no longer holds it.
    fn certificate(node: &Self::Node, seq: u64) -> Option<String> {
        let _ = (node, seq);
        None
    }

    /// The message that hands `request`, which its client signed, to this replica as the
    /// client's gateway; or why the protocol takes no such requests.
    fn signed_request(request: &SignedRequest) -> Result<<Self::Node as Replica>::Message, String> {
        let _ = request;
        Err(format!(
            "protocol {} takes no requests signed by their clients",
            Self::NAME
        ))
    }

    /// Where `request` committed and the proof of it (JSON its client checks with the
    /// validators' public keys), while this replica holds that batch.
    fn request_proof(node: &Self::Node, request: &SignedRequest) -> Option<(u64, String)> {
        let _ = (node, request);
        None
    }

    /// `Some(false)` if another operation its client signed under the same number
    /// executed instead of `request` (which then never will); `None` if unknown.
    fn executed_as_sent(node: &Self::Node, request: &SignedRequest) -> Option<bool> {
        let _ = (node, request);
        None
    }

    /// The members this replica excluded and re-admitted; `None` if the protocol
    /// excludes no one.
    fn exclusions(node: &Self::Node) -> Option<Exclusions> {
        let _ = node;
        None
    }

    /// The message that hands a re-admission (validators' signed `votes`) to this
    /// replica for ordering, or why it does not hold here.
    fn readmission(
        node: &Self::Node,
        votes: &[bytes::Bytes],
    ) -> Result<<Self::Node as Replica>::Message, Readmit> {
        let _ = (node, votes);
        Err(Readmit::Unsupported(format!(
            "protocol {} excludes no member (only pbft does)",
            Self::NAME
        )))
    }

    /// A message a test makes this member send to `to` besides `msg`, as a Byzantine
    /// member would (see `query::EQUIVOCATE_ONCE_ENV`); `None` without such a fault.
    fn injected_fault(
        node: &Self::Node,
        to: NodeId,
        msg: &<Self::Node as Replica>::Message,
    ) -> Option<<Self::Node as Replica>::Message> {
        let _ = (node, to, msg);
        None
    }

    /// The settings, beyond the protocol's name, that every member must run with alike,
    /// as (name, value) pairs: peers compare them when they connect and refuse one that
    /// differs, naming the setting, instead of failing later in ways that look like a
    /// Byzantine peer (signatures that do not verify, snapshots at other points).
    fn agreed_settings(cfg: &NodeConfig) -> Vec<(String, String)> {
        let _ = cfg;
        Vec::new()
    }

    /// The keys that prove which member opened a peer link, for protocols whose members
    /// hold signing keys; `None` takes a link on its hello's word (crash faults only).
    fn link_auth(node: &Self::Node) -> Option<crate::transport::LinkAuth> {
        let _ = node;
        None
    }

    /// The longest a member waits without hearing from a leader before it campaigns:
    /// leases are never granted shorter than a few of these (see `service/lease.rs`).
    fn election_timeout(cfg: &NodeConfig) -> std::time::Duration;
}

/// A request its client signed (PBFT's registered clients), as a host receives it:
/// the client's id, its number for the request, the operation (an encoded
/// `ekmat_kv::Envelope`) and the client's ed25519 signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    pub client: u64,
    pub seq: u64,
    pub op: bytes::Bytes,
    pub signature: [u8; 64],
}

/// Members excluded and re-admitted, each with the sequence number that decided it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    pub excluded: Vec<(NodeId, u64)>,
    pub readmitted: Vec<(NodeId, u64)>,
}

/// Why a re-admission is not ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readmit {
    /// The protocol excludes no one.
    Unsupported(String),
    /// The votes do not hold here (too few, forged, for another exclusion...).
    Refused(String),
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
