//! A validator's configuration: who the validators are (their public keys), its own
//! secret key, and the protocol's knobs.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use ekmat_core::NodeId;

use crate::client::ClientRegistry;
use crate::crypto::{derive_key, derive_public_keys};

/// Planted bugs the simulator must catch (see `crates/sim/tests/mutants.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mutant {
    #[default]
    None,
    /// Send COMMIT for any digest with 2f matching prepares, without the matching
    /// pre-prepare (and counting anyone's prepares, the primary's too).
    CommitWithoutPrePrepare,
    /// Accept a NEW-VIEW without checking its view-changes or recomputing its pre-prepares.
    AcceptUnverifiedNewView,
    /// Believe every signature.
    SkipSignatureVerification,
    /// Exclude a replica on this replica's own evidence, at once, instead of ordering the
    /// exclusion through consensus.
    ExcludeOnOwnEvidence,
    /// Install a snapshot one replica vouches for, instead of waiting for f+1.
    TrustOneSnapshot,
    /// Take a registered client's requests on their gateway's word, without checking
    /// the client's own signature.
    SkipClientSignatures,
    /// Execute a bundle again when it is ordered again (the record of executed bundles
    /// is kept but not consulted): only the anonymous client's requests, which no
    /// session deduplicates, execute twice.
    ForgetExecutedBundles,
    /// Accept any batch time a primary proposes (see `clock.rs`).
    SkipClockCheck,
    /// Execute on past a checkpoint whose being a snapshot point depends on a size not
    /// known yet, and decide it later (see `snapshot.rs`): points then follow the
    /// host's speed, and differ between replicas.
    SkipSnapshotHold,
}

impl Mutant {
    pub const ALL: [Mutant; 9] = [
        Mutant::CommitWithoutPrePrepare,
        Mutant::AcceptUnverifiedNewView,
        Mutant::SkipSignatureVerification,
        Mutant::ExcludeOnOwnEvidence,
        Mutant::TrustOneSnapshot,
        Mutant::SkipClientSignatures,
        Mutant::ForgetExecutedBundles,
        Mutant::SkipClockCheck,
        Mutant::SkipSnapshotHold,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutant::None => "none",
            Mutant::CommitWithoutPrePrepare => "commit-without-pre-prepare",
            Mutant::AcceptUnverifiedNewView => "accept-unverified-new-view",
            Mutant::SkipSignatureVerification => "skip-signature-verification",
            Mutant::ExcludeOnOwnEvidence => "exclude-on-own-evidence",
            Mutant::TrustOneSnapshot => "trust-one-snapshot",
            Mutant::SkipClientSignatures => "skip-client-signatures",
            Mutant::ForgetExecutedBundles => "forget-executed-bundles",
            Mutant::SkipClockCheck => "skip-clock-check",
            Mutant::SkipSnapshotHold => "skip-snapshot-hold",
        }
    }

    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// How far a batch's time may run ahead of a backup's clock: a faulty primary can
/// expire leases this much early at most. Clocks kept by NTP agree within milliseconds.
pub const DEFAULT_CLOCK_AHEAD: Duration = Duration::from_secs(1);
/// How far it may lag behind: a faulty primary can hold leases past their time this
/// much at most. Generous, because a pre-prepare may wait in a busy backup's queue.
pub const DEFAULT_CLOCK_BEHIND: Duration = Duration::from_secs(10);

/// 2f+1 of `n` validators, with f = (n-1)/3 the most that may be Byzantine.
pub fn byzantine_quorum(n: usize) -> usize {
    2 * (n.saturating_sub(1) / 3) + 1
}

#[derive(Clone, Debug)]
pub struct PbftConfig {
    pub id: NodeId,
    /// Every validator's public key; validator `i` is `NodeId(i)`.
    pub validators: Vec<VerifyingKey>,
    pub secret: SigningKey,
    /// Votes that make a quorum. `None`: 2f+1 with f = (n-1)/3. Setting it to n-f with
    /// n = 3f demonstrates why PBFT needs 3f+1 replicas.
    pub quorum: Option<usize>,
    /// A checkpoint every this many sequence numbers (K).
    pub checkpoint_interval: u64,
    /// A snapshot of the state (see `snapshot.rs`) at the first checkpoint after every
    /// this many bytes of executed requests; the executed batches it covers are dropped.
    /// 0: never, and the executed log is kept whole.
    pub snapshot_bytes: u64,
    /// If not 0, also wait, from one snapshot point to the next, until the bytes
    /// executed in between reach this many times the earlier snapshot's size (K).
    /// Encoding and writing the whole state then costs at most about 1/K byte per byte
    /// executed however large the state grows, and the executed log stays within K
    /// times the state; with points every `snapshot_bytes` alone (0), that cost grows
    /// with the state.
    pub snapshot_size_factor: u64,
    /// A snapshot is sent to a replica behind in chunks of at most this many bytes.
    pub snapshot_chunk_bytes: usize,
    /// Sequence numbers in flight between the watermarks: H = h + this (L = 2K).
    pub window: u64,
    /// Batches the primary keeps in flight at once (pipelining).
    pub max_inflight: u64,
    /// Requests at most per batch.
    pub batch_max: usize,
    /// Request bytes at most per batch ([`crate::message::ClientRequest::size`]), and
    /// so per bundle and per request: a larger request is refused
    /// ([`ekmat_core::Rejection::TooLarge`]), and a bundle or a batch over
    /// [`PbftConfig::batch_limit`] is ignored. Every message must fit the transport's
    /// frame, and a view change carries the batches its sender prepared: this bounds it.
    pub batch_max_bytes: usize,
    /// A gateway signs and sends a bundle once it has this many requests (or on a tick).
    pub bundle_max: usize,
    /// ... or this many request bytes (at most `batch_max_bytes`).
    pub bundle_max_bytes: usize,
    /// How many sequence numbers past the point it was made at a bundle can still
    /// execute (see [`crate::message::Bundle::executable_at`]); executed bundles are
    /// remembered that long. Every validator and client must use the same value.
    pub bundle_horizon: u64,
    /// The view-change timeout; doubled per consecutive failed view, up to 8x.
    pub view_timeout: Duration,
    /// How long a replica waits, behind, before fetching committed batches.
    pub fetch_timeout: Duration,
    /// A backup refuses a batch whose time (see `clock.rs`) is more than this past its
    /// own wall clock, or more than `clock_behind` before it.
    pub clock_ahead: Duration,
    pub clock_behind: Duration,
    /// Clients that sign their own requests, by client id (see `client.rs`): a
    /// request in one's name counts only with its signature, whoever bundled it.
    pub clients: Arc<ClientRegistry>,
    pub mutant: Mutant,
}

/// How much larger than a bundle a proof against its gateway is (the bundle, signed and
/// encoded, with a tag): the request ordering that proof may exceed `batch_max_bytes`
/// by this much, and so may its bundle and batch. Bundles of clients' requests get no
/// slack (see `Pbft::bundle_fits`), so every proof fits it.
pub const EVIDENCE_SLACK: usize = 1024;

impl PbftConfig {
    /// The most request bytes a bundle or a batch may hold: `batch_max_bytes`, plus
    /// room for a proof of misbehaviour that carries a whole bundle.
    pub fn batch_limit(&self) -> usize {
        self.batch_max_bytes + EVIDENCE_SLACK
    }

    /// Request bytes at which a gateway's bundle is full.
    pub(crate) fn bundle_bytes(&self) -> usize {
        self.bundle_max_bytes.min(self.batch_max_bytes)
    }

    /// Validator `id` of `n`, with keys derived from `key_seed`.
    pub fn from_seed(id: NodeId, n: usize, key_seed: u64) -> PbftConfig {
        PbftConfig {
            id,
            validators: derive_public_keys(key_seed, n),
            secret: derive_key(key_seed, id.0),
            quorum: None,
            checkpoint_interval: 16,
            snapshot_bytes: 0,
            snapshot_size_factor: 0,
            snapshot_chunk_bytes: 1 << 20,
            window: 32,
            max_inflight: 8,
            batch_max: 256,
            batch_max_bytes: 1 << 20,
            bundle_max: 1,
            bundle_max_bytes: 1 << 20,
            bundle_horizon: crate::message::BUNDLE_HORIZON,
            view_timeout: Duration::from_millis(400),
            fetch_timeout: Duration::from_millis(300),
            clock_ahead: DEFAULT_CLOCK_AHEAD,
            clock_behind: DEFAULT_CLOCK_BEHIND,
            clients: Arc::default(),
            mutant: Mutant::None,
        }
    }

    pub fn n(&self) -> usize {
        self.validators.len()
    }

    pub fn f(&self) -> usize {
        (self.n().saturating_sub(1)) / 3
    }

    pub fn quorum(&self) -> usize {
        self.quorum.unwrap_or(byzantine_quorum(self.n()))
    }

    /// Refuse configurations the protocol cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.n();
        if self.id.index() >= n {
            return Err(format!(
                "{} is not a validator ({n} validators): a non-validator cannot take part in consensus",
                self.id
            ));
        }
        if self.validators[self.id.index()] != self.secret.verifying_key() {
            return Err(format!(
                "{}'s secret key does not match its public key",
                self.id
            ));
        }
        if self.quorum() > n || self.quorum() == 0 {
            return Err(format!("quorum {} of {n} validators", self.quorum()));
        }
        if self.checkpoint_interval == 0 || self.window < self.checkpoint_interval {
            return Err("the window must hold at least one checkpoint interval".into());
        }
        if self.max_inflight == 0 {
            return Err(
                "max_inflight is 0: a primary with no batch in flight orders nothing".into(),
            );
        }
        // A new view re-issues bundles up to a window past the stable checkpoint, and a
        // gateway may be a window behind when it makes one.
        if self.bundle_horizon < 2 * self.window {
            return Err(format!(
                "the bundle horizon ({}) must be at least twice the window ({})",
                self.bundle_horizon, self.window
            ));
        }
        let max_chunk = crate::snapshot_transfer::MAX_CHUNK_BYTES;
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > max_chunk {
            return Err(format!(
                "snapshot chunks must be 1 to {max_chunk} bytes, not {}",
                self.snapshot_chunk_bytes
            ));
        }
        // A key with a small-order part can make a signature that batch verification
        // takes and single verification refuses: correct replicas would then disagree
        // on a message depending on what arrived with it.
        let keys = self
            .validators
            .iter()
            .map(|k| (String::from("validator"), k));
        let clients = self.clients.iter().map(|(c, k)| (format!("client {c}"), k));
        for (who, key) in keys.chain(clients) {
            if key.is_weak() || !key.to_edwards().is_torsion_free() {
                return Err(format!(
                    "{who}'s public key has a small-order component; generate another key"
                ));
            }
        }
        for reserved in [crate::EXCLUSION_CLIENT, crate::client::ANONYMOUS_CLIENT] {
            if self.clients.contains_key(&reserved) {
                return Err(format!(
                    "client id {reserved} is reserved by the protocol and cannot be a registered client"
                ));
            }
        }
        let bounds = [
            self.max_inflight as usize,
            self.batch_max,
            self.batch_max_bytes,
            self.bundle_max,
            self.bundle_max_bytes,
        ];
        if bounds.contains(&0) {
            return Err("batch, bundle and in-flight bounds must be positive".into());
        }
        Ok(())
    }
}
