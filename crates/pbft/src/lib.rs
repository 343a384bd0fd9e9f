//! PBFT — Practical Byzantine Fault Tolerance (Castro & Liskov, OSDI'99 and TOCS'02) — as
//! a sans-IO ekmat replica.
//!
//! n = 3f+1 validators order batches of client requests so that every correct replica
//! executes the same batches in the same order, whatever f Byzantine replicas do:
//!
//! - [`message`]: the signed messages and their canonical encoding;
//! - [`crypto`]: ed25519 signatures, a verified-signature cache, batch verification;
//! - `normal_case`: pre-prepare, prepare, commit, execute;
//! - `batching`: gateways' signed bundles, the primary's batches and pipeline;
//! - `recent_bundles`: bundles a backup holds, reused when a pre-prepare repeats them;
//! - `clock`: the time each batch executes at, proposed by the primary, bounded by backups;
//! - [`client`]: clients that sign their own requests and check commit proofs;
//! - `checkpoint`: stable checkpoints, garbage collection, watermarks;
//! - `view_change`: VIEW-CHANGE / NEW-VIEW with proofs every replica checks;
//! - `state_transfer`: committed batches fetched with their quorum certificates;
//! - [`snapshot`]: the executed log bounded by snapshots;
//! - [`snapshot_transfer`]: vouches for snapshots, and their images served in chunks;
//! - `snapshot_download`: a snapshot f+1 vouch for, fetched in chunks from one of them;
//! - [`certificate`]: quorum certificates anyone can verify with the public keys;
//! - [`evidence`]: equivocation turned into self-contained proofs;
//! - `exclusion`: a convicted replica excluded at one sequence number, through consensus;
//! - [`readmission`]: an excluded replica re-admitted on f+1 validators' votes, likewise;
//! - [`durable`]: what is persisted so a restarted replica never contradicts itself.
//!
//! Deterministic: no clock, no threads, no randomness; `BTreeMap`s only.

mod batching;
pub mod certificate;
mod checkpoint;
pub mod client;
mod clock;
pub mod config;
pub mod crypto;
pub mod durable;
pub mod evidence;
mod exclusion;
pub mod message;
mod normal_case;
pub mod readmission;
mod recent_bundles;
mod replica;
pub mod snapshot;
mod snapshot_download;
pub mod snapshot_transfer;
mod state_transfer;
mod view_change;

pub use certificate::{CertError, QuorumCertificate};
pub use checkpoint::DIVERGED_HISTORY;
pub use client::{Client, CommitProof, ProofError};
pub use config::{EVIDENCE_SLACK, Mutant, PbftConfig};
pub use durable::{PbftStable, Write};
pub use ekmat_core::{NodeId, Time};
pub use exclusion::EXCLUSION_CLIENT;
pub use message::Message;
pub use readmission::READMISSION_CLIENT;
pub use replica::{Pbft, PbftStats, primary_of};

#[cfg(test)]
mod tests;
