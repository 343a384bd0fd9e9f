//! A node's configuration: the cluster it belongs to, its members and addresses, and
//! where it keeps its data. Read from TOML; every mistake is reported with what to fix.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ekmat_core::NodeId;
use ekmat_raft::{RaftConfig, ReadMode};
use serde::{Deserialize, Serialize};

use crate::service::compactor::Retention;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Cluster name. With the member list it determines the cluster id, which every
    /// peer connection and every data directory is checked against.
    pub cluster: String,
    /// The consensus protocol the cluster runs.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// This node's member id.
    pub id: u32,
    pub data_dir: PathBuf,
    #[serde(rename = "member")]
    pub members: Vec<Member>,
    /// Hand the protocol a state machine snapshot every this many applied entries, so it
    /// can compact its log (0: never). A snapshot also waits until the entries applied
    /// since the last one add up to that snapshot's size, which bounds the extra disk
    /// writing snapshots cause to what the entries themselves cost.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// PBFT: snapshot the state at the first checkpoint after this many bytes of
    /// executed requests since the last snapshot, or `pbft_snapshot_factor` times that
    /// snapshot's size if more, and drop the executed batches it covers (0: never, and
    /// the executed log grows without bound). Every member must use the same value
    /// (snapshots are vouched for by members that took the same one): peers refuse a
    /// member whose value differs, and log both.
    #[serde(default = "default_pbft_snapshot_bytes")]
    pub pbft_snapshot_bytes: u64,
    /// PBFT: how many times its state's size a member executes between snapshots (at
    /// least `pbft_snapshot_bytes`). Each snapshot encodes and writes the whole state,
    /// so this is what a snapshot costs per byte executed (1/K) traded against the log
    /// kept until the next one: up to K times the state on disk, replayed on a restart,
    /// and the requests in memory (mostly shared with the store's values). 1 to 16;
    /// peers must agree on it, like `pbft_snapshot_bytes`.
    #[serde(default = "default_pbft_snapshot_factor")]
    pub pbft_snapshot_factor: u64,
    /// PBFT: a member refuses a batch whose agreed time (the primary's clock, which
    /// lease expiry follows) is more than this many ms past its own wall clock: how
    /// early a faulty primary can expire leases, and how far correct members' clocks
    /// may disagree before a correct primary is refused. Peers must agree on it.
    #[serde(default = "default_pbft_clock_ahead_ms")]
    pub pbft_clock_ahead_ms: u64,
    /// PBFT: ... or more than this many ms before it: how long past their time a
    /// faulty primary can hold leases. Peers must agree on it.
    #[serde(default = "default_pbft_clock_behind_ms")]
    pub pbft_clock_behind_ms: u64,
    /// PBFT: batches the primary keeps ordering at once (pipelining), 1 to the window
    /// of 32 sequence numbers. Fewer carry more requests each, so less signing,
    /// verifying and messaging per request while the cores are the limit; more keep a
    /// slow link busy. Only the primary uses it: members need not agree on it.
    #[serde(default = "default_pbft_max_inflight")]
    pub pbft_max_inflight: u64,
    /// Rewrite the write-ahead log as one checkpoint once it has grown by this many
    /// bytes (and by twice the last checkpoint, and to twice the protocol's state, so
    /// that the rewrite at least halves it).
    #[serde(default = "default_checkpoint_bytes")]
    pub checkpoint_bytes: u64,
    /// Adapt heartbeat and election timeouts to measured round trips (heartbeat =
    /// mean + 2σ, election = 3 heartbeats, never below the defaults, at most 1 s and
    /// 3 s): fewer needless elections over slow, lossy WAN links.
    #[serde(default)]
    pub adaptive_timeouts: bool,
    /// How the leader makes sure a read sees every committed write: "read-index" (a
    /// heartbeat round per batch of reads, whatever the clocks do) or "lease" (answer at
    /// once while a lease holds; assumes clock rates within `max_clock_drift_ppm`).
    #[serde(default = "default_read_mode")]
    pub read_mode: String,
    /// The bound on clock drift lease reads assume, in parts per million (10000 = 1%).
    #[serde(default = "default_max_clock_drift_ppm")]
    pub max_clock_drift_ppm: u32,
    /// The space quota, in bytes, of the store's size estimate (etcd's
    /// `--quota-backend-bytes`, with its default of 2 GiB; 0 turns the quota off). A write
    /// that would take the store past it raises the NOSPACE alarm, and while that alarm
    /// is raised the cluster refuses writes that add data until an operator frees space
    /// and runs `etcdctl alarm disarm`.
    #[serde(default = "default_quota_backend_bytes")]
    pub quota_backend_bytes: u64,
    /// Every this many milliseconds the leader compares every member's HashKV at one
    /// revision and raises the CORRUPT alarm for members whose data differs (etcd's
    /// `--experimental-corrupt-check-time`; 0, the default as in etcd: never). Each round
    /// hashes the whole key history on every member, so a period shorter than
    /// [`MIN_CORRUPT_CHECK_MS`] is refused.
    #[serde(default)]
    pub corrupt_check_ms: u64,
    /// Before serving clients, compare this member's HashKV with every reachable
    /// peer's at this member's revision, and refuse to start if one with the same
    /// compaction revision differs (etcd's `--experimental-initial-corrupt-check`; off
    /// by default, as in etcd).
    #[serde(default)]
    pub initial_corrupt_check: bool,
    /// etcd's `--auto-compaction-mode`: `periodic` (the default) keeps a time's worth
    /// of key history, `revision` a number of revisions (see `service::compactor`).
    #[serde(default = "default_auto_compaction_mode")]
    pub auto_compaction_mode: String,
    /// etcd's `--auto-compaction-retention`: for `periodic` a duration (`30m`, `1h30m`)
    /// or a number of hours, for `revision` a number of revisions; `"0"`, the default as
    /// in etcd, compacts nothing automatically.
    #[serde(default = "default_auto_compaction_retention")]
    pub auto_compaction_retention: String,
    /// Admission control: the most key operations this member holds in its clients'
    /// writes without an answer yet (a put counts one, a txn its operations: one of a
    /// hundred puts is a hundred puts' work). Past it, writes are refused at once with
    /// etcd's `etcdserver: too many requests` (a client backs off and retries) instead
    /// of queueing: a queue longer than the cluster drains in a moment only adds
    /// latency, and for PBFT, bundles that wait past the view timeout change views,
    /// which costs throughput.
    #[serde(default = "default_max_pending_writes")]
    pub max_pending_writes: usize,
    /// How long an auth token lasts, in seconds (etcd's `--auth-token-ttl`, default 300).
    /// etcd's clients log in again when theirs expires.
    #[serde(default = "default_auth_token_ttl")]
    pub auth_token_ttl: u64,
    /// bcrypt's cost for hashing users' passwords (etcd's `--bcrypt-cost`, default 10,
    /// from 4 to 31): each login checks a hash, which at 10 takes tens of milliseconds.
    #[serde(default = "default_bcrypt_cost")]
    pub bcrypt_cost: u32,
    /// Group commit's wait, in microseconds: once one fsync has covered several writes,
    /// the next fsync starts no sooner than this long after that one began, so more
    /// writes share it. A write that comes alone is synced at once. 0 (the default):
    /// never wait; the writes that arrive during one fsync still share the next.
    /// Waiting saves CPU (fewer flushes and wake-ups: without it a put cost 5-19% more
    /// CPU in a 3-member cluster on two cores) but holds every write back, which
    /// a few concurrent clients feel at once: on one member, 4 clients got 3,630 puts/s
    /// at p50 1.09 ms with 1 ms against 7,832/s at 0.48 ms with 0, while 64 clients on
    /// 3 members gained nothing from it.
    #[serde(default = "default_group_commit_us")]
    pub group_commit_us: u64,
    /// Skip fsync (benchmarks only: acknowledged writes can be lost on power failure).
    #[serde(default)]
    pub unsafe_no_fsync: bool,
    /// Worker threads of the member's async runtime; 0, the default, runs one per core,
    /// and 1 runs everything on the process's main thread (tokio's current-thread
    /// scheduler). `ekmat up` runs every member on one machine and gives each its share
    /// of the cores instead: more runnable threads than cores only add context switches.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub runtime_threads: usize,
    /// PBFT: clients that sign their own requests (`ekmat pbft put ...`), so no member
    /// can write in their name. Every member must register the same ones: peers refuse
    /// a member whose list differs.
    #[serde(rename = "pbft_client", default, skip_serializing_if = "Vec::is_empty")]
    pub pbft_clients: Vec<PbftClient>,
    /// TLS on the client port (etcd's client transport security); none: plain TCP.
    /// Every member of a cluster must have it or none: members advertise their client
    /// URLs as https:// or http:// by their own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_transport_security: Option<crate::tls::TransportSecurity>,
    /// TLS between members (etcd's peer transport security), mutually authenticated
    /// with certificates `trusted_ca_file` signed; none: plain TCP. Every member alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_transport_security: Option<crate::tls::TransportSecurity>,
}

/// A registered PBFT client: its id (its requests' client number) and public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbftClient {
    pub id: u64,
    /// ed25519, 64 hex digits; the client keeps the secret half (`ekmat pbft client-key`).
    pub public_key: String,
    /// The user whose permissions its requests execute with while auth is on (none:
    /// every right on keys). Its key is its credential: no password or token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl PbftClient {
    /// Its `[[pbft_client]]` entry, as a member's configuration file holds it.
    pub fn to_toml_entry(&self) -> String {
        #[derive(Serialize)]
        struct Entry<'a> {
            pbft_client: [&'a PbftClient; 1],
        }
        toml::to_string(&Entry {
            pbft_client: [self],
        })
        .expect("a client entry serializes")
    }
}

/// The shortest corruption-check period accepted: below it the rounds would hash the
/// store nearly without pause.
pub const MIN_CORRUPT_CHECK_MS: u64 = 100;
/// Most worker threads a member's runtime may be given (`runtime_threads`).
pub const MAX_RUNTIME_THREADS: usize = 1024;
/// The longest group-commit wait accepted (`group_commit_us`): 100 ms.
pub const MAX_GROUP_COMMIT_US: u64 = 100_000;

fn default_auto_compaction_mode() -> String {
    "periodic".into()
}

fn default_auto_compaction_retention() -> String {
    "0".into()
}

fn default_auth_token_ttl() -> u64 {
    300
}

fn default_bcrypt_cost() -> u32 {
    10
}

fn default_max_pending_writes() -> usize {
    5_000
}

fn default_group_commit_us() -> u64 {
    0
}

fn default_snapshot_every() -> u64 {
    100_000
}

/// Each snapshot is a whole store written through the write-ahead log, which holds up
/// the messages behind it (measured: p99 of 1.7 s in a 40 s run at 5,000 puts/s with a
/// 60 MB store and 64 MiB here): rare enough at 256 MiB that the log stays bounded
/// without a stall every few seconds.
fn default_pbft_snapshot_bytes() -> u64 {
    256 << 20
}

/// More log than this between snapshots is a restart replaying minutes of writes.
const MAX_PBFT_SNAPSHOT_FACTOR: u64 = 16;

/// Two: against a snapshot every state's size, one every twice it acknowledged 6% more
/// puts at 6% less CPU per put, on average over five 60 s runs at 50,000 offered
/// (docs/pbft.md, "Snapshots every twice the state").
fn default_pbft_snapshot_factor() -> u64 {
    2
}

/// Three: against eight, at 102,000 puts/s offered in Txns of 100 on this 2-core
/// machine, 99,632-101,316/s acknowledged at 17.1-17.3 CPU ms per 1,000 puts against
/// 95,848-97,355 at 18.2-18.5; two did as well there but saturated sooner on single
/// puts (~18,400/s against ~21,400) (docs/pbft.md, "Fewer batches in flight").
fn default_pbft_max_inflight() -> u64 {
    3
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_pbft_clock_ahead_ms() -> u64 {
    ekmat_pbft::config::DEFAULT_CLOCK_AHEAD.as_millis() as u64
}

fn default_pbft_clock_behind_ms() -> u64 {
    ekmat_pbft::config::DEFAULT_CLOCK_BEHIND.as_millis() as u64
}

/// etcd's default space quota (`DefaultQuotaBytes`).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

fn default_quota_backend_bytes() -> u64 {
    DEFAULT_QUOTA_BACKEND_BYTES
}

fn default_checkpoint_bytes() -> u64 {
    64 << 20
}

fn default_read_mode() -> String {
    ReadMode::default().name().into()
}

fn default_max_clock_drift_ppm() -> u32 {
    RaftConfig::new(NodeId(0), vec![NodeId(0)]).max_clock_drift_ppm
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    /// Address peers connect to.
    pub peer: SocketAddr,
    /// Address clients (the etcd v3 gRPC API) connect to.
    pub client: SocketAddr,
    /// Address of the Prometheus `/metrics` and `/health` endpoint, if any.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Added to the running cluster (with `etcdctl member add`) rather than founding it.
    /// A node whose own entry says so starts knowing no configuration and waits for the
    /// leader to send it the log; the cluster id counts only founding members.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined: bool,
    /// The member's ed25519 public key, 64 hex digits (PBFT: every member needs one; the
    /// secret half stays in the member's data directory, see `keys.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

fn default_protocol() -> String {
    "raft".into()
}

/// Protocols the runtime can run.
pub const PROTOCOLS: [&str; 2] = ["raft", "pbft"];

/// Why `n` members cannot run PBFT, if they cannot: it needs n = 3f+1 with f >= 1.
pub fn pbft_size_error(n: usize) -> Option<String> {
    if n >= 4 && (n - 1).is_multiple_of(3) {
        return None;
    }
    let hint = if n < 4 {
        "fewer than 4 members tolerate no Byzantine member".to_string()
    } else {
        let f = (n - 1) / 3;
        format!(
            "{n} members tolerate no more Byzantine members than {} do, and PBFT's quorums of 2f+1 are only safe with exactly 3f+1",
            3 * f + 1
        )
    };
    Some(format!(
        "protocol \"pbft\" needs 3f+1 members (4, 7, 10, ...) to tolerate f >= 1 Byzantine members; this cluster has {n}: {hint}"
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// A Raft member `id` of `members`, with every other setting at its default.
    pub fn new(
        cluster: impl Into<String>,
        id: u32,
        data_dir: PathBuf,
        members: Vec<Member>,
    ) -> NodeConfig {
        NodeConfig {
            cluster: cluster.into(),
            protocol: default_protocol(),
            id,
            data_dir,
            members,
            snapshot_every: default_snapshot_every(),
            pbft_snapshot_bytes: default_pbft_snapshot_bytes(),
            pbft_snapshot_factor: default_pbft_snapshot_factor(),
            pbft_clock_ahead_ms: default_pbft_clock_ahead_ms(),
            pbft_clock_behind_ms: default_pbft_clock_behind_ms(),
            pbft_max_inflight: default_pbft_max_inflight(),
            checkpoint_bytes: default_checkpoint_bytes(),
            max_pending_writes: default_max_pending_writes(),
            auth_token_ttl: default_auth_token_ttl(),
            bcrypt_cost: default_bcrypt_cost(),
            adaptive_timeouts: false,
            read_mode: default_read_mode(),
            max_clock_drift_ppm: default_max_clock_drift_ppm(),
            quota_backend_bytes: default_quota_backend_bytes(),
            corrupt_check_ms: 0,
            initial_corrupt_check: false,
            auto_compaction_mode: default_auto_compaction_mode(),
            auto_compaction_retention: default_auto_compaction_retention(),
            group_commit_us: default_group_commit_us(),
            unsafe_no_fsync: false,
            runtime_threads: 0,
            pbft_clients: Vec::new(),
            client_transport_security: None,
            peer_transport_security: None,
        }
    }

    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configurations always serialize")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.cluster.trim().is_empty() {
            return bad("`cluster` must name the cluster".into());
        }
        if !PROTOCOLS.contains(&self.protocol.as_str()) {
            return bad(format!(
                "unknown protocol '{}' (known: {})",
                self.protocol,
                PROTOCOLS.join(", ")
            ));
        }
        if self.founders().next().is_none() {
            return bad(
                "the cluster needs at least one founding [[member]] (one without `joined = true`)"
                    .into(),
            );
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for m in &self.members {
            if !ids.insert(m.id) {
                return bad(format!("member id {} is listed twice", m.id));
            }
            for addr in [Some(m.peer), Some(m.client), m.metrics]
                .into_iter()
                .flatten()
            {
                if !addrs.insert(addr) {
                    return bad(format!("address {addr} is used twice (member {})", m.id));
                }
            }
        }
        if !ids.contains(&self.id) {
            let known: Vec<String> = ids.iter().map(u32::to_string).collect();
            return bad(format!(
                "this node's id {} is not among the members ({})",
                self.id,
                known.join(", ")
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("`data_dir` must be set".into());
        }
        for m in &self.members {
            if let Some(key) = &m.public_key
                && let Err(e) = crate::keys::parse_public_key(key)
            {
                return bad(format!("member {}'s public_key {key:?}: {e}", m.id));
            }
        }
        if self.max_pending_writes == 0 {
            return bad(
                "max_pending_writes = 0 would refuse every write; it must be at least 1".into(),
            );
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return bad(format!(
                "bcrypt_cost = {} is outside bcrypt's costs, 4 to 31",
                self.bcrypt_cost
            ));
        }
        if self.auth_token_ttl == 0 {
            return bad("auth_token_ttl = 0 would expire every token at once".into());
        }
        if self.group_commit_us > MAX_GROUP_COMMIT_US {
            return bad(format!(
                "group_commit_us = {} is more than {MAX_GROUP_COMMIT_US}: every write that shares an fsync waits up to that long",
                self.group_commit_us
            ));
        }
        if self.runtime_threads > MAX_RUNTIME_THREADS {
            return bad(format!(
                "runtime_threads = {} is more than {MAX_RUNTIME_THREADS}; 0 runs one per core",
                self.runtime_threads
            ));
        }
        if self.corrupt_check_ms > 0 && self.corrupt_check_ms < MIN_CORRUPT_CHECK_MS {
            return bad(format!(
                "corrupt_check_ms = {} is too short: each round hashes the whole key history on every member, so it must be 0 (off) or at least {MIN_CORRUPT_CHECK_MS}",
                self.corrupt_check_ms
            ));
        }
        self.auto_compaction()?;
        if let Some(tls) = &self.client_transport_security {
            tls.validate_client().map_err(ConfigError::Invalid)?;
            let checks = self.initial_corrupt_check || self.corrupt_check_ms > 0;
            if checks && tls.trusted_ca_file.is_none() {
                return bad(
                    "the corruption checks read the other members' client ports over TLS, so client_transport_security needs trusted_ca_file to verify them with".into(),
                );
            }
        }
        if let Some(tls) = &self.peer_transport_security {
            tls.validate_peer().map_err(ConfigError::Invalid)?;
        }
        if self.protocol == "pbft" {
            self.validate_pbft()?;
        } else if let Some(c) = self.pbft_clients.first() {
            return bad(format!(
                "pbft_client {} registers a client that signs its requests, but protocol \"{}\" takes no signed requests (only \"pbft\" does)",
                c.id, self.protocol
            ));
        }
        let Some(read_mode) = ReadMode::from_name(&self.read_mode) else {
            return bad(format!(
                "unknown read_mode '{}' (known: read-index, lease)",
                self.read_mode
            ));
        };
        // The Raft core's own checks: the drift bound, and a lease longer than a heartbeat.
        let voters: Vec<NodeId> = self.members.iter().map(|m| NodeId(m.id)).collect();
        let mut rc = RaftConfig::new(NodeId(self.id), voters);
        rc.read_mode = read_mode;
        rc.max_clock_drift_ppm = self.max_clock_drift_ppm;
        if let Err(e) = rc.validate() {
            return bad(format!(
                "read_mode = \"{}\", max_clock_drift_ppm = {}: {e}",
                self.read_mode, self.max_clock_drift_ppm
            ));
        }
        Ok(())
    }

    /// What `auto_compaction_mode` and `auto_compaction_retention` ask for.
    pub fn auto_compaction(&self) -> Result<Retention, ConfigError> {
        Retention::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)
            .map_err(ConfigError::Invalid)
    }

    /// PBFT's needs: n = 3f+1 members with f >= 1 (its quorums of 2f+1 intersect in a
    /// correct member only then), a public key for each, and a fixed membership.
    fn validate_pbft(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(m) = self.members.iter().find(|m| m.joined) {
            return bad(format!(
                "member {} is marked `joined`, but protocol \"pbft\" has a fixed membership (no members are added at run time)",
                m.id
            ));
        }
        let n = self.members.len();
        if let Some(e) = pbft_size_error(n) {
            return bad(e);
        }
        if !(1..=MAX_PBFT_SNAPSHOT_FACTOR).contains(&self.pbft_snapshot_factor) {
            return bad(format!(
                "pbft_snapshot_factor = {}: it is 1 to {MAX_PBFT_SNAPSHOT_FACTOR} (a member executes that many times its state's size between snapshots, and keeps that much log)",
                self.pbft_snapshot_factor
            ));
        }
        let window = crate::protocol::PBFT_WINDOW;
        if !(1..=window).contains(&self.pbft_max_inflight) {
            return bad(format!(
                "pbft_max_inflight = {}: it is 1 to {window} (the primary orders that many batches at once, within the window of {window} sequence numbers)",
                self.pbft_max_inflight
            ));
        }
        for (name, ms) in [
            ("pbft_clock_ahead_ms", self.pbft_clock_ahead_ms),
            ("pbft_clock_behind_ms", self.pbft_clock_behind_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return bad(format!(
                    "{name} = {ms}: a clock bound is 1 to 3,600,000 ms (correct members' clocks must agree within it)"
                ));
            }
        }
        let mut ids: Vec<u32> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if ids.iter().enumerate().any(|(i, &id)| id as usize != i) {
            return bad(format!(
                "protocol \"pbft\" numbers its members 0..{}: member ids must be exactly those (this cluster has {:?}), since member i is the primary of views i, i+n, ...",
                n - 1,
                ids
            ));
        }
        let missing: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.public_key.is_none())
            .map(|m| m.id.to_string())
            .collect();
        if !missing.is_empty() {
            return bad(format!(
                "protocol \"pbft\" needs every member's `public_key` (64 hex digits); missing for member(s) {}. A node prints its public key when it first generates its signing key (`ekmat up --protocol pbft` writes them for you)",
                missing.join(", ")
            ));
        }
        let mut keys = BTreeSet::new();
        for m in &self.members {
            if !keys.insert(m.public_key.as_deref().unwrap_or_default().to_lowercase()) {
                return bad(format!(
                    "member {}'s public_key is another member's too: each member needs its own key",
                    m.id
                ));
            }
        }
        self.validate_pbft_clients(keys)
    }

    /// One party may register several ids under one key (a gateway keeps one per
    /// request in flight); a member's key may not sign as a client.
    fn validate_pbft_clients(&self, members: BTreeSet<String>) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut ids = BTreeSet::new();
        for c in &self.pbft_clients {
            let reserved = [
                ekmat_pbft::client::ANONYMOUS_CLIENT,
                ekmat_pbft::EXCLUSION_CLIENT,
                ekmat_pbft::READMISSION_CLIENT,
            ];
            if reserved.contains(&c.id) {
                return bad(format!(
                    "pbft_client id {} is reserved by the protocol: pick another",
                    c.id
                ));
            }
            if !ids.insert(c.id) {
                return bad(format!("pbft_client id {} is registered twice", c.id));
            }
            if let Err(e) = crate::keys::parse_public_key(&c.public_key) {
                return bad(format!("pbft_client {}: {e}", c.id));
            }
            if c.user.as_deref() == Some("") {
                return bad(format!(
                    "pbft_client {}: user is empty; leave it out for a client with every right on keys",
                    c.id
                ));
            }
            if members.contains(&c.public_key.to_lowercase()) {
                return bad(format!(
                    "pbft_client {}'s public_key is a member's: a client needs a key of its own",
                    c.id
                ));
            }
        }
        Ok(())
    }

    /// The registered PBFT clients, by id, as their committed requests execute (none
    /// for another protocol, which takes no signed requests).
    pub fn signers(&self) -> std::collections::HashMap<u64, ekmat_kv::SignedBy> {
        if self.protocol != "pbft" {
            return Default::default();
        }
        let signer = |c: &PbftClient| ekmat_kv::SignedBy {
            user: c.user.clone(),
        };
        self.pbft_clients
            .iter()
            .map(|c| (c.id, signer(c)))
            .collect()
    }

    /// The registered PBFT clients' public keys, by client id. Validated configurations
    /// only.
    pub fn client_keys(&self) -> Result<ekmat_pbft::client::ClientRegistry, String> {
        self.pbft_clients
            .iter()
            .map(|c| {
                let key = crate::keys::parse_public_key(&c.public_key)
                    .map_err(|e| format!("pbft_client {}: {e}", c.id))?;
                Ok((c.id, key))
            })
            .collect()
    }

    /// The members' public keys in member-id order (PBFT validator `i` is the i-th
    /// member by id). Validated configurations only.
    pub fn public_keys(&self) -> Result<Vec<ed25519_dalek::VerifyingKey>, String> {
        let mut members: Vec<&Member> = self.members.iter().collect();
        members.sort_by_key(|m| m.id);
        members
            .iter()
            .map(|m| {
                let key = m
                    .public_key
                    .as_deref()
                    .ok_or_else(|| format!("member {} has no public_key", m.id))?;
                crate::keys::parse_public_key(key).map_err(|e| format!("member {}: {e}", m.id))
            })
            .collect()
    }

    pub fn me(&self) -> &Member {
        self.members
            .iter()
            .find(|m| m.id == self.id)
            .expect("validated: this node is a member")
    }

    /// This member's share of `period`: its place among the members times `period / n`.
    /// Members start their periodic heavy work (snapshots, log checkpoints) this far
    /// apart, so no two of them stall at once and a quorum always keeps pace.
    pub fn stagger(&self, period: u64) -> u64 {
        let n = self.members.len().max(1) as u64;
        let rank = self.members.iter().filter(|m| m.id < self.id).count() as u64;
        period / n * rank
    }

    /// The members that founded the cluster (not added at run time).
    pub fn founders(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.joined)
    }

    pub fn member(&self, id: u32) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// A stable id for the cluster: a SHA-256 of its name and its members' ids and peer
    /// addresses (stable across builds, since data directories record it).
    pub fn cluster_id(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let mut members: Vec<(u32, SocketAddr)> = self.founders().map(|m| (m.id, m.peer)).collect();
        members.sort();
        let mut canonical = format!("{}\n", self.cluster);
        for (id, peer) in members {
            canonical.push_str(&format!("{id} {peer}\n"));
        }
        let digest = Sha256::digest(canonical.as_bytes());
        u64::from_be_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
    }

    /// etcd member ids are 64-bit and never zero; ours are small, so shift them clear of 0.
    pub fn member_id(id: u32) -> u64 {
        u64::from(id) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u32) -> Member {
        Member {
            id,
            name: format!("n{id}"),
            peer: format!("127.0.0.1:{}", 12380 + id).parse().unwrap(),
            client: format!("127.0.0.1:{}", 2379 + id).parse().unwrap(),
            metrics: None,
            joined: false,
            public_key: None,
        }
    }

    fn sample() -> NodeConfig {
        NodeConfig::new("test", 1, "/tmp/x".into(), (0..3).map(member).collect())
    }

    #[test]
    fn a_valid_config_round_trips_through_toml() {
        let cfg = sample();
        cfg.validate().unwrap();
        let back: NodeConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn mistakes_are_named() {
        let mut c = sample();
        c.id = 7;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("id 7 is not among")
        );
        let mut c = sample();
        c.members[2].id = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let mut c = sample();
        c.members[2].client = c.members[0].peer;
        assert!(c.validate().unwrap_err().to_string().contains("used twice"));
        let mut c = sample();
        c.read_mode = "hope".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("unknown read_mode 'hope'"), "{err}");
        let mut c = sample();
        c.read_mode = "lease".into();
        c.validate().unwrap();
        c.max_clock_drift_ppm = 2_000_000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("below 1000000 ppm"), "{err}");
        c.max_clock_drift_ppm = 600_000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("longer than the heartbeat interval"), "{err}");
        let mut c = sample();
        c.protocol = "smoke-signals".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("unknown protocol")
        );
    }

    fn pbft(n: u32) -> NodeConfig {
        let mut c = sample();
        c.protocol = "pbft".into();
        c.members = (0..n)
            .map(|id| Member {
                public_key: Some(crate::keys::public_key_hex(
                    &ed25519_dalek::SigningKey::from_bytes(&[id as u8 + 1; 32]).verifying_key(),
                )),
                ..member(id)
            })
            .collect();
        c
    }

    #[test]
    fn pbft_configurations_are_checked() {
        let c = pbft(4);
        c.validate().unwrap();
        assert_eq!(c.public_keys().unwrap().len(), 4);
        pbft(7).validate().unwrap();
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);

        let err = |c: NodeConfig| c.validate().unwrap_err().to_string();
        let mut small = pbft(4);
        small.members.truncate(3);
        assert!(err(small).contains("needs 3f+1 members"));
        let e = err(pbft(5));
        assert!(e.contains("no more Byzantine members than 4"), "{e}");
        let mut c = pbft(4);
        c.members[2].public_key = None;
        let e = err(c);
        assert!(e.contains("missing for member(s) 2"), "{e}");
        let mut c = pbft(4);
        c.members[3].public_key = Some("beef".into());
        let e = err(c);
        assert!(e.contains("member 3's public_key \"beef\""), "{e}");
        let mut c = pbft(4);
        c.members[3].public_key = c.members[0].public_key.clone();
        assert!(err(c).contains("another member's too"));
        let mut c = pbft(4);
        c.members[3].joined = true;
        assert!(err(c).contains("fixed membership"));
        for factor in [0, 17] {
            let mut c = pbft(4);
            c.pbft_snapshot_factor = factor;
            let e = err(c);
            assert!(
                e.contains(&format!("pbft_snapshot_factor = {factor}: it is 1 to 16")),
                "{e}"
            );
        }
        for inflight in [0, 33] {
            let mut c = pbft(4);
            c.pbft_max_inflight = inflight;
            let e = err(c);
            assert!(
                e.contains(&format!("pbft_max_inflight = {inflight}: it is 1 to 32")),
                "{e}"
            );
        }
        let mut c = pbft(4);
        c.members[3].id = 9;
        let e = err(c);
        assert!(e.contains("member ids must be exactly those"), "{e}");
        let mut c = pbft(4);
        c.pbft_clock_ahead_ms = 0;
        let e = err(c);
        assert!(
            e.contains("pbft_clock_ahead_ms = 0: a clock bound is 1"),
            "{e}"
        );
        let mut c = pbft(4);
        c.pbft_clock_behind_ms = 7_200_000;
        assert!(err(c).contains("pbft_clock_behind_ms = 7200000"));
        // Raft ignores public keys, but a malformed one is still a mistake.
        let mut c = sample();
        c.members[0].public_key = Some("xyz".into());
        assert!(err(c).contains("public_key"));
    }

    #[test]
    fn registered_pbft_clients_are_checked() {
        let key = |b: u8| {
            crate::keys::public_key_hex(
                &ed25519_dalek::SigningKey::from_bytes(&[b; 32]).verifying_key(),
            )
        };
        let client = |id: u64, b: u8| PbftClient {
            id,
            public_key: key(b),
            user: None,
        };
        let mut c = pbft(4);
        c.pbft_clients = vec![client(7, 100), client(8, 101)];
        c.validate().unwrap();
        assert_eq!(c.client_keys().unwrap().len(), 2);
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);

        let err = |clients: Vec<PbftClient>| {
            let mut c = pbft(4);
            c.pbft_clients = clients;
            c.validate().unwrap_err().to_string()
        };
        assert!(err(vec![client(0, 100)]).contains("reserved"));
        assert!(err(vec![client(7, 100), client(7, 101)]).contains("registered twice"));
        let e = err(vec![client(7, 1)]);
        assert!(e.contains("is a member's"), "{e}");
        // One party, several ids (a gateway's): allowed.
        let mut c = pbft(4);
        c.pbft_clients = vec![client(7, 100), client(8, 100)];
        c.validate().unwrap();
        let e = err(vec![PbftClient {
            id: 7,
            public_key: "beef".into(),
            user: None,
        }]);
        assert!(e.contains("pbft_client 7"), "{e}");
        let bound = |user: &str| PbftClient {
            user: Some(user.into()),
            ..client(7, 100)
        };
        assert!(err(vec![bound("")]).contains("user is empty"));
        let mut c = pbft(4);
        c.pbft_clients = vec![bound("svc"), client(8, 100)];
        c.validate().unwrap();
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c, "a bound user survives the file");
        let signers = c.signers();
        assert_eq!(signers[&7].user.as_deref(), Some("svc"));
        assert_eq!(signers[&8].user, None);
        let mut raft = sample();
        raft.pbft_clients = vec![client(7, 100)];
        let e = raft.validate().unwrap_err().to_string();
        assert!(e.contains("takes no signed requests"), "{e}");
    }

    #[test]
    fn corruption_checks_over_tls_need_a_ca_to_verify_the_members_with() {
        let mut c = sample();
        c.initial_corrupt_check = true;
        c.client_transport_security = Some(crate::tls::TransportSecurity {
            cert_file: "member.pem".into(),
            key_file: "member-key.pem".into(),
            ..Default::default()
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("needs trusted_ca_file"), "{e}");
        if let Some(tls) = c.client_transport_security.as_mut() {
            tls.trusted_ca_file = Some("ca.pem".into());
        }
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_sample_cluster_configuration_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster");
        for i in 0..3 {
            let cfg = NodeConfig::load(&dir.join(format!("n{i}.toml"))).unwrap();
            assert_eq!(cfg.id, i);
            assert_eq!(cfg.members.len(), 3);
        }
    }

    #[test]
    fn bcrypt_costs_are_bcrypts_and_tokens_last_some_time() {
        let mut c = sample();
        assert_eq!(
            (c.bcrypt_cost, c.auth_token_ttl),
            (10, 300),
            "etcd's defaults"
        );
        c.bcrypt_cost = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("bcrypt_cost = 3 is outside"), "{e}");
        let mut c = sample();
        c.auth_token_ttl = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth_token_ttl = 0"), "{e}");
    }

    #[test]
    fn a_corruption_check_period_is_off_or_not_too_short_and_some_write_is_admitted() {
        let mut c = sample();
        c.corrupt_check_ms = 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("corrupt_check_ms = 1 is too short"), "{e}");
        let mut c = sample();
        c.max_pending_writes = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_pending_writes = 0"), "{e}");
        let mut c = sample();
        c.runtime_threads = MAX_RUNTIME_THREADS + 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("runtime_threads = 1025 is more than 1024"),
            "{e}"
        );
        for ok in [0, MIN_CORRUPT_CHECK_MS, 60_000] {
            let mut c = sample();
            c.corrupt_check_ms = ok;
            assert!(c.validate().is_ok(), "{ok}");
        }
    }

    #[test]
    fn auto_compaction_settings_are_read_from_the_file_and_refused_by_name_if_wrong() {
        let text = sample().to_toml().replace(
            "auto_compaction_retention = \"0\"",
            "auto_compaction_retention = \"30m\"",
        );
        let c: NodeConfig = toml::from_str(&text).unwrap();
        let half_an_hour = Retention::Periodic(std::time::Duration::from_secs(1800));
        assert_eq!(c.auto_compaction().unwrap(), half_an_hour);
        assert_eq!(
            sample().auto_compaction().unwrap(),
            Retention::Off,
            "off by default"
        );
        let mut c = sample();
        c.auto_compaction_mode = "revision".into();
        c.auto_compaction_retention = "30m".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("auto_compaction_retention = \"30m\" for mode \"revision\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = sample()
            .to_toml()
            .replace("cluster = ", "clustr = 1\ncluster = ");
        assert!(toml::from_str::<NodeConfig>(&text).is_err());
    }

    #[test]
    fn the_cluster_id_depends_on_name_and_members() {
        let a = sample();
        let mut b = sample();
        b.id = 0;
        assert_eq!(
            a.cluster_id(),
            b.cluster_id(),
            "the same cluster seen from two nodes"
        );
        b.cluster = "other".into();
        assert_ne!(a.cluster_id(), b.cluster_id());
    }
}
