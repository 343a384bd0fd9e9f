//! What the simulator needs from a protocol beyond the replica contract: how to boot and
//! recover its replicas, who currently leads, and the protocol's own safety checker.

use std::fmt;
use std::hash::Hash;

use ekmat_core::{DetRng, Effect, Membership, NodeId, Replica, Time};

pub trait SimProtocol: Sync + Clone {
    type Node: Replica<Message: Hash>;
    type Checker: ProtocolChecker<Self::Node>;

    fn name(&self) -> &'static str;

    /// A fresh replica `id` of a cluster founded by nodes `0..voters`; a higher `id` is a
    /// spare that knows no configuration until it is added. `seed` feeds its randomness.
    fn boot(&self, id: NodeId, voters: usize, seed: u64, now: Time) -> Result<Self::Node, String>;

    /// Replica `id` restarted from its durable state.
    fn recover(
        &self,
        id: NodeId,
        voters: usize,
        seed: u64,
        stable: <Self::Node as Replica>::Stable,
        now: Time,
    ) -> Result<Self::Node, String>;

    /// The term (view, ballot) in which `node` believes it leads, if it does.
    fn leading(&self, node: &Self::Node) -> Option<u64>;

    /// A short name of `msg`'s kind, by which [`crate::RunStats::messages_by_kind`]
    /// counts what was sent (a protocol that names none is counted as one kind).
    fn message_kind(&self, msg: &<Self::Node as Replica>::Message) -> &'static str {
        let _ = msg;
        "message"
    }

    /// Whether client `client` sends a request that got no answer again, to another
    /// node. A client whose requests no session deduplicates does not: its request
    /// may have executed, and another copy could execute again (an etcd client gives
    /// such a request up as unknown).
    fn resends_unanswered(&self, client: u64) -> bool {
        let _ = client;
        true
    }

    /// `node`'s current term (view, ballot).
    fn term(&self, node: &Self::Node) -> u64;

    /// The checker for `n` nodes of which `0..voters` founded the cluster.
    fn checker(&self, n: usize, voters: usize) -> Self::Checker;

    /// The configuration `node` has in force, for protocols that change membership.
    fn membership(&self, node: &Self::Node) -> Option<Membership> {
        let _ = node;
        None
    }

    /// When `node`'s read lease ends on its own clock, if it leads and holds one
    /// (`next-lease-renewal` faults strike when this moves forward).
    fn lease_expires(&self, node: &Self::Node) -> Option<Time> {
        let _ = node;
        None
    }

    /// The bound on clock drift the protocol assumes, in ppm: `clock` faults drift
    /// exactly this much (0: clocks never drift).
    fn max_clock_drift_ppm(&self) -> u32 {
        0
    }

    /// A copy with the protocol's tunable knobs drawn for one run (FoundationDB's
    /// "buggify": every seed also explores the configuration space), and a line naming
    /// the values drawn. By default the knobs stay as they are.
    fn vary(&self, rng: &mut DetRng) -> (Self, String) {
        let _ = rng;
        (self.clone(), String::new())
    }
}

type FxOf<R> = Effect<<R as Replica>::Message, <R as Replica>::Write>;

/// A protocol's invariants, checked as the run goes.
pub trait ProtocolChecker<R: Replica> {
    /// Every effect a replica emits, in order, with the replica as it is after the step
    /// that emitted them.
    fn on_effect(
        &mut self,
        now: Time,
        node: NodeId,
        replica: &R,
        effect: &FxOf<R>,
    ) -> Result<(), Violation>;

    /// `node` restarted from `stable` (what survived its crash).
    fn on_recover(&mut self, now: Time, node: NodeId, stable: &R::Stable) -> Result<(), Violation>;
}

/// A broken safety or liveness property: the run failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Short name of the property, e.g. `election-safety`.
    pub property: &'static str,
    /// Virtual time, in microseconds, at which it was detected.
    pub at_us: u64,
    pub detail: String,
}

impl Violation {
    pub fn new(property: &'static str, at: Time, detail: impl Into<String>) -> Violation {
        Violation {
            property,
            at_us: at.as_micros(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.property,
            Time(self.at_us),
            self.detail
        )
    }
}
