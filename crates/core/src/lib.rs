//! ekmat's foundation: the replica contract every protocol implements, quorum math,
//! identifiers, driver-supplied time and a seeded RNG. No I/O and no clocks live here.

mod id;
mod membership;
mod persist;
mod quorum;
mod replica;
mod rng;
mod time;

pub use id::{NodeId, RequestId};
pub use membership::{ChangeAction, ChangeError, Membership, MembershipChange};
pub use persist::PersistGate;
pub use quorum::{QuorumSet, VoteResult};
pub use replica::{
    Committed, CommittedEntry, Durable, Effect, Effects, Event, Input, Rejection, Replica, Reply,
    Request, RequestKind, StepDownReason,
};
pub use rng::DetRng;
pub use time::Time;
