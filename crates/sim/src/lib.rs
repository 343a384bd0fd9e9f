//! ekmat's deterministic simulator: every protocol core, driven with virtual time over a
//! seeded network and disk, under partitions, loss, duplication, reordering, clogged
//! links, crashes, pauses and clock drift, with checkers for the protocol's invariants
//! and for linearizability of what clients saw. One `u64` seed decides a whole run.

pub mod check;
pub mod clock;
pub mod disk;
pub mod network;
pub mod protocol;
pub mod protocols;
mod queue;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod shrink;
pub mod trace;
pub mod workload;
pub mod world;

pub use protocol::{ProtocolChecker, SimProtocol, Violation};
pub use run::{SeedReport, SimOptions, Summary, run_seed, run_seeds};
pub use schedule::{Fault, FaultKind, Schedule, ScheduledFault, Target};
