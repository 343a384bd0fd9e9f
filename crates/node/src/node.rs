//! Starting and stopping one node: claim the data directory, recover the protocol's
//! durable state from the write-ahead log, bind every listener (so a taken port is an
//! error at start, not later), and run the driver until told to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ekmat_core::{Durable, NodeId, Replica, Time};
use ekmat_kv::KvStore;
use ekmat_storage::{Wal, WalOptions};
use tokio::sync::{mpsc, watch};

use crate::config::NodeConfig;
use crate::driver::{CALL_QUEUE, Call, Driver, DriverParts, NodeStatus};
use crate::identity::{self, Identity};
use crate::members::Members;
use crate::protocol::{Pbft, Raft, RuntimeProtocol};
use crate::service::{Services, min_lease_ttl};
use crate::transport::{Security, Transport};
use crate::watch_hub::WatchHub;
use crate::{http, writer};

/// Messages queued from peers before their TCP streams are slowed down.
const INBOUND_QUEUE: usize = 16 * 1024;
/// How far apart members start encoding a snapshot the protocol asked each for at the
/// same point (PBFT), in ms: about the time encoding a few hundred megabytes takes a
/// member under load (0.4-2 s measured).
const REQUESTED_SNAPSHOT_STAGGER_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A certificate, key or CA file of the configuration cannot be used.
    #[error("invalid configuration: {0}")]
    Tls(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("{0}")]
    Storage(String),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the protocol: {0}")]
    Protocol(String),
    #[error("the node stopped: {0}")]
    Failed(String),
}

/// The member's TLS, from its configuration's files.
struct Tls {
    client: Option<crate::tls::ClientTls>,
    peer: Option<crate::tls::PeerTls>,
}

impl Tls {
    fn load(cfg: &NodeConfig) -> Result<Tls, String> {
        let client = cfg.client_transport_security.as_ref();
        let peer = cfg.peer_transport_security.as_ref();
        Ok(Tls {
            client: client.map(crate::tls::ClientTls::load).transpose()?,
            peer: peer.map(crate::tls::PeerTls::load).transpose()?,
        })
    }
}

/// Run the node `cfg` describes until `stop` becomes true.
pub async fn run(cfg: NodeConfig, stop: watch::Receiver<bool>) -> Result<(), NodeError> {
    cfg.validate()?;
    // Read before anything else, so a bad file stops the member before it touches its data.
    let tls = Tls::load(&cfg).map_err(NodeError::Tls)?;
    match cfg.protocol.as_str() {
        "raft" => run_protocol::<Raft>(cfg, tls, stop).await,
        "pbft" => run_protocol::<Pbft>(cfg, tls, stop).await,
        other => Err(NodeError::Protocol(format!("unknown protocol '{other}'"))),
    }
}

async fn run_protocol<P: RuntimeProtocol>(
    cfg: NodeConfig,
    tls: Tls,
    stop: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let started = Instant::now();
    let _lock = identity::claim(&cfg.data_dir, &Identity::of(&cfg))?;
    let (wal, stable) = recover::<P>(&cfg)?;
    let core = P::recover(&cfg, stable.clone(), Time::ZERO).map_err(NodeError::Protocol)?;

    let me = cfg.me().clone();
    let peers: Vec<(NodeId, SocketAddr)> = cfg
        .members
        .iter()
        .filter(|m| m.id != cfg.id)
        .map(|m| (NodeId(m.id), m.peer))
        .collect();
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let mut settings = vec![("protocol".to_string(), cfg.protocol.clone())];
    settings.extend(P::agreed_settings(&cfg));
    let transport = Transport::start(
        NodeId(cfg.id),
        cfg.cluster_id(),
        settings,
        me.peer,
        &peers,
        inbound_tx,
        Security {
            auth: P::link_auth(&core),
            tls: tls.peer,
        },
    )
    .await
    .map_err(|source| NodeError::Bind {
        what: "peers",
        addr: me.peer,
        source,
    })?;
    let client_listener = tokio::net::TcpListener::bind(me.client)
        .await
        .map_err(|source| NodeError::Bind {
            what: "clients",
            addr: me.client,
            source,
        })?;
    let metrics_listener = match me.metrics {
        Some(addr) => Some(http::bind(addr).await.map_err(|source| NodeError::Bind {
            what: "metrics",
            addr,
            source,
        })?),
        None => None,
    };

    let w = writer::spawn::<P>(
        wal,
        stable,
        cfg.checkpoint_bytes,
        cfg.stagger(cfg.checkpoint_bytes),
        // Without fsyncs, there is nothing to share.
        std::time::Duration::from_micros(if cfg.unsafe_no_fsync {
            0
        } else {
            cfg.group_commit_us
        }),
    );
    let (status_tx, status_rx) = watch::channel(NodeStatus::default());
    let (auth_tx, auth_rx) = watch::channel(ekmat_kv::AuthState::default());
    let (calls_tx, calls_rx) = mpsc::channel::<Call>(CALL_QUEUE);
    let members = Members::from_config(&cfg);
    let (members_tx, members_rx) = watch::channel(members.list());
    let hub = WatchHub::new();
    // Before the driver, which registers its gauges once, against this recorder.
    let recorder = http::install_recorder();
    let driver = Driver::<P>::new(DriverParts {
        core,
        kv: KvStore::new(),
        started,
        transport,
        writes: w.queue,
        durable: w.durable,
        status: status_tx,
        auth: auth_tx,
        members,
        members_tx,
        me: Members::own_record(&cfg),
        // A protocol that compacts nothing from snapshots would only pay for them.
        snapshot_every: if P::TAKES_SNAPSHOTS {
            cfg.snapshot_every
        } else {
            0
        },
        snapshot_stagger: cfg.stagger(cfg.snapshot_every),
        requested_snapshot_stagger: Duration::from_millis(
            cfg.stagger(cfg.members.len() as u64 * REQUESTED_SNAPSHOT_STAGGER_MS),
        ),
        hub: hub.clone(),
        signers: cfg.signers(),
    });

    // Open once the member serves (at once, or after its data is checked at start).
    let (open_tx, open_rx) = watch::channel(!cfg.initial_corrupt_check);
    let http_routes = http::router(
        recorder,
        status_rx.clone(),
        open_rx.clone(),
        calls_tx.clone(),
    );
    if let Some(listener) = metrics_listener {
        tokio::spawn(http::serve(listener, http_routes.clone()));
    }
    let calls_tx_for_checks = calls_tx.clone();
    let services = Services::new(
        &cfg,
        calls_tx,
        crate::service::Views {
            status: status_rx,
            members: members_rx,
            auth: auth_rx,
        },
        hub,
        min_lease_ttl(P::election_timeout(&cfg)),
        tls.client,
    );
    let retention = cfg.auto_compaction()?;
    let auto_compaction = tokio::spawn(services.clone().compact_automatically(retention));
    let corruption_check = (cfg.corrupt_check_ms > 0).then(|| {
        let every = std::time::Duration::from_millis(cfg.corrupt_check_ms);
        tokio::spawn(services.clone().check_corruption_every(every))
    });
    let mut grpc_stop = stop.clone();
    let initial_check = cfg.initial_corrupt_check.then(|| services.clone());
    let fail = calls_tx_for_checks;
    let grpc = tokio::spawn(
        services.serve(client_listener, open_rx, http_routes, async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        }),
    );
    if let Some(services) = initial_check {
        tokio::spawn(async move {
            match services.check_initial_hashkv().await {
                Ok(compared) => {
                    tracing::info!(compared, "initial corruption check passed");
                    let _ = open_tx.send(true);
                }
                Err(why) => {
                    tracing::error!(error = %why, "initial corruption check failed: not serving");
                    let _ = fail.send(crate::driver::Call::Fail(why)).await;
                }
            }
        });
    }
    tracing::info!(id = cfg.id, peer = %me.peer, client = %me.client, "node started");
    warn_about_injected_faults();
    warn_if_the_quota_outgrows_memory(cfg.quota_backend_bytes);

    // The driver runs as a task beside the gRPC and peer tasks rather than on the thread
    // that blocks on this future: on a one-worker runtime every call, reply and peer
    // message then stays on one thread instead of costing a cross-thread wake-up.
    let mut task = DriverTask(tokio::spawn(driver.run(inbound_rx, calls_rx, stop)));
    let result = match (&mut task.0).await {
        Ok(result) => result,
        Err(e) => Err(format!("the driver task failed: {e}")),
    };
    grpc.abort();
    auto_compaction.abort();
    if let Some(task) = corruption_check {
        task.abort();
    }
    // Dropping the driver closed the writer's queue; the thread drains it and exits.
    let _ = w.thread.join();
    result.map_err(NodeError::Failed)
}

/// The driver's task, stopped if [`run`] is dropped before it finishes, as it was when
/// the driver ran inside `run`'s own future.
struct DriverTask(tokio::task::JoinHandle<Result<(), String>>);

impl Drop for DriverTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Say which injected faults this process runs with, and which it ignores.
fn warn_about_injected_faults() {
    use crate::query::{CLOCK_FAULT_ENV, EQUIVOCATE_ONCE_ENV, FAULTS_INJECTABLE, clock_fault_ms};
    let set = |name: &str| std::env::var(name).unwrap_or_default().trim().to_string();
    if !FAULTS_INJECTABLE {
        for name in [CLOCK_FAULT_ENV, EQUIVOCATE_ONCE_ENV] {
            if !set(name).is_empty() {
                tracing::warn!(
                    "{name} is set but ignored: this build injects no faults (only test builds do)"
                );
            }
        }
        return;
    }
    let clock = set(CLOCK_FAULT_ENV);
    if !clock.is_empty() && clock.parse::<i64>().is_err() {
        tracing::warn!(
            value = %clock,
            "{CLOCK_FAULT_ENV} is not a number of milliseconds: ignored, the wall clock is not shifted"
        );
    }
    if clock_fault_ms() != 0 {
        tracing::warn!(
            offset_ms = clock_fault_ms(),
            "fault injected ({CLOCK_FAULT_ENV}): this member's wall clock is off"
        );
    }
    let equivocate = set(EQUIVOCATE_ONCE_ENV);
    match equivocate.parse::<u32>() {
        Ok(to) => tracing::warn!(
            "fault injected ({EQUIVOCATE_ONCE_ENV}): this member will equivocate once, to member {to}"
        ),
        Err(_) if !equivocate.is_empty() => tracing::warn!(
            value = %equivocate,
            "{EQUIVOCATE_ONCE_ENV} is not a member id: ignored, this member equivocates to nobody"
        ),
        Err(_) => {}
    }
}

/// Measured: a member's resident memory is about this many times the store's size
/// estimate, which the space quota bounds (the history is in memory, with the log
/// since the last snapshot, the snapshot encoded, and the allocator's overhead).
const MEMORY_PER_ESTIMATED_BYTE: u64 = 4;

/// Say so at start if the space quota lets the store outgrow this machine's memory:
/// the member would be killed for memory long before any write is refused.
fn warn_if_the_quota_outgrows_memory(quota: u64) {
    let Some(total) = physical_memory() else {
        return;
    };
    let needs = quota.saturating_mul(MEMORY_PER_ESTIMATED_BYTE);
    if quota > 0 && needs > total {
        tracing::warn!(
            quota_backend_bytes = quota,
            memory_bytes = total,
            "the space quota lets the store grow to about {} MB of memory ({MEMORY_PER_ESTIMATED_BYTE}x the quota), more than this machine's {} MB: set quota_backend_bytes to at most {} and compact",
            needs >> 20,
            total >> 20,
            total / MEMORY_PER_ESTIMATED_BYTE
        );
    }
}

/// The machine's memory, from /proc/meminfo (Linux), if it can be read.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open the write-ahead log and fold what it holds into the protocol's durable state.
pub(crate) fn recover<P: RuntimeProtocol>(
    cfg: &NodeConfig,
) -> Result<(Wal, <P::Node as Replica>::Stable), NodeError> {
    let dir: PathBuf = cfg.data_dir.join("wal");
    let opts = WalOptions {
        sync: !cfg.unsafe_no_fsync,
        ..WalOptions::default()
    };
    let (wal, recovered) = Wal::open(&dir, opts).map_err(|e| NodeError::Storage(e.to_string()))?;
    if let Some(torn) = &recovered.repaired {
        tracing::warn!(
            file = %torn.file.display(),
            offset = torn.offset,
            discarded = torn.discarded_bytes,
            "repaired a torn write at the end of the log (a crash mid-write); nothing acknowledged was lost"
        );
    }
    let undecodable = |what: &str, e: postcard::Error| {
        NodeError::Storage(format!(
            "the write-ahead log in {} holds a {what} this build cannot read: {e} \
             (a data directory written by another version of ekmat may be in a format \
             this one does not read; run the version that wrote it)",
            dir.display()
        ))
    };
    let mut stable = match &recovered.checkpoint {
        Some(bytes) => postcard::from_bytes(bytes).map_err(|e| undecodable("checkpoint", e))?,
        None => <P::Node as Replica>::Stable::default(),
    };
    for bytes in &recovered.records {
        let write: <P::Node as Replica>::Write =
            postcard::from_bytes(bytes).map_err(|e| undecodable("record", e))?;
        stable.apply(&write);
    }
    tracing::info!(records = recovered.records.len(), "recovered durable state");
    Ok((wal, stable))
}
