//! `ekmat bench kv`: puts, linearizable and serializable reads, transactions and lease
//! keep-alives against a cluster, one phase after another, with throughput and latency
//! percentiles. Against a cluster it starts itself, against `--endpoints` (any etcd v3
//! cluster), or `--against-etcd`: ekmat and a local etcd in one run, side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use ekmat_api::etcdserverpb as pb;
use ekmat_core::DetRng;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::client::{Dialer, TlsArgs, Token, kv, login};
use crate::etcd::EtcdCluster;
use crate::exit;
use crate::up::{LocalCluster, UpArgs};
use tonic::service::interceptor::InterceptedService;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
}

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// Puts, reads, transactions and lease keep-alives, from concurrent clients.
    Kv(KvBench),
    /// PBFT: an in-process cluster with real signatures, and messages per batch vs n.
    Pbft(crate::bench_pbft::PbftBench),
    /// A real cluster (Raft or PBFT) under open-loop puts at fixed arrival rates.
    OpenLoop(crate::bench_open::OpenLoopBench),
}

#[derive(Args, Debug, Clone)]
pub struct KvBench {
    /// Size of the cluster to start (ignored with --endpoints).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Concurrent clients, each with one request outstanding.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Distinct keys written and read.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Length of each phase (writes, then reads).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Run against this cluster instead of starting one.
    #[arg(long)]
    pub endpoints: Option<String>,
    /// TLS for the cluster at --endpoints (etcdctl's flags).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Log in to the cluster at --endpoints as this user (`name:password`, etcdctl's
    /// `--user`), for a cluster with auth enabled: every request then carries the token.
    #[arg(long, env = "ETCDCTL_USER", requires = "endpoints")]
    pub user: Option<String>,
    /// Also start a local etcd (Debian's etcd-server) and run the same load against it.
    #[arg(long)]
    pub against_etcd: bool,
    /// First port of the clusters the benchmark starts.
    #[arg(long, default_value_t = 23_790)]
    pub base_port: u16,
    /// Which phases to run, in order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "puts,linearizable-reads,serializable-reads,txns,lease-keepalives"
    )]
    pub phases: Vec<Op>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub ops: u64,
    pub errors: u64,
    /// The first error's message, so a run with errors says what they were.
    pub first_error: Option<String>,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SystemResult {
    pub system: String,
    pub phases: Vec<Phase>,
}

pub fn run(args: BenchArgs) -> u8 {
    let b = match args.kind {
        BenchKind::Kv(b) => b,
        BenchKind::Pbft(p) => return crate::bench_pbft::run(&p),
        BenchKind::OpenLoop(o) => return crate::bench_open::run(&o),
    };
    if b.clients == 0 || b.conns == 0 || b.keys == 0 || b.duration.is_zero() {
        eprintln!("error: --clients, --conns, --keys and --duration must be positive");
        return exit::USAGE;
    }
    if b.phases.is_empty() {
        eprintln!("error: --phases names no phase");
        return exit::USAGE;
    }
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match rt.block_on(run_all(&b)) {
        Ok(results) => {
            if b.json {
                println!("{}", serde_json::json!({ "results": results }));
            } else {
                print(&b, &results);
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::VIOLATION
        }
    }
}

async fn run_all(b: &KvBench) -> Result<Vec<SystemResult>, String> {
    let mut results = Vec::new();
    if let Some(list) = &b.endpoints {
        let dialer = Dialer::from_args(&b.tls)?;
        let eps = dialer.endpoints(list)?;
        results.push(load("cluster at --endpoints", &dialer, &eps, b).await?);
        return Ok(results);
    }
    let up = UpArgs {
        nodes: b.nodes,
        protocol: "raft".into(),
        data_dir: None,
        base_port: b.base_port,
        unsafe_no_fsync: false,
        restore: None,
        tls: false,
    };
    let cluster = BenchCluster::start("ekmat-bench", up).await?;
    let result = load(
        &format!("ekmat ({} nodes)", b.nodes),
        &Dialer::plain(),
        &cluster.urls,
        b,
    )
    .await;
    cluster.stop().await;
    results.push(result?);
    if b.against_etcd {
        let data = tempdir("ekmat-bench-etcd")?;
        let mut etcd = EtcdCluster::start(b.nodes, b.base_port + 1000, &data).await?;
        let eps = urls(&etcd.endpoints);
        let result = load(
            &format!("etcd 3.4 ({} nodes)", b.nodes),
            &Dialer::plain(),
            &eps,
            b,
        )
        .await;
        etcd.stop().await;
        let _ = std::fs::remove_dir_all(&data);
        results.push(result?);
    }
    Ok(results)
}

/// A local ekmat cluster of real processes, started for one measurement in a fresh
/// temporary directory, with a leader.
pub struct BenchCluster {
    cluster: LocalCluster,
    data: std::path::PathBuf,
    /// The members' client URLs.
    pub urls: Vec<String>,
}

impl BenchCluster {
    /// Start `up` (its `data_dir` is replaced by a fresh directory named after `prefix`)
    /// and wait for a leader.
    pub async fn start(prefix: &str, mut up: UpArgs) -> Result<BenchCluster, String> {
        let data = tempdir(prefix)?;
        up.data_dir = Some(data.clone());
        let mut cluster = LocalCluster::start(&up, &data)?;
        if let Err(e) = cluster.wait_for_leader().await {
            cluster.stop().await;
            let _ = std::fs::remove_dir_all(&data);
            return Err(e);
        }
        let urls = urls(&cluster.endpoints());
        Ok(BenchCluster {
            cluster,
            data,
            urls,
        })
    }

    /// CPU time (user and system) the members have used so far, in seconds; `None`
    /// where the platform does not tell (it is read from Linux's `/proc`).
    pub fn members_cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(&self.cluster.pids())
    }

    /// Stop every member and remove the data.
    pub async fn stop(mut self) {
        self.cluster.stop().await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The CPU time (user and system) processes `pids` have used so far, in seconds; `None`
/// where the platform does not tell (it is read from Linux's `/proc`).
pub fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let mut total = 0u64;
    for &pid in pids {
        total += process_cpu_ticks(pid)?;
    }
    Some(total as f64 / ticks as f64)
}

/// A process's user and system time, in clock ticks, from `/proc/<pid>/stat` (fields
/// 14 and 15, counted after the command name, which may hold spaces).
fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `host:port` endpoints as the URLs gRPC connects to.
fn urls(endpoints: &[String]) -> Vec<String> {
    endpoints.iter().map(|e| format!("http://{e}")).collect()
}

fn tempdir(prefix: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// One kind of operation a phase repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// Put a random key.
    Puts,
    /// Get a random key through the leader's read barrier.
    LinearizableReads,
    /// Get a random key from the member's own state.
    SerializableReads,
    /// A transaction: if the key exists, put it, else read it.
    Txns,
    /// One keep-alive of the client's own lease, on its LeaseKeepAlive stream.
    LeaseKeepalives,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Puts => "puts",
            Op::LinearizableReads => "linearizable reads",
            Op::SerializableReads => "serializable reads",
            Op::Txns => "txns",
            Op::LeaseKeepalives => "lease keep-alives",
        }
    }
}

async fn load(
    system: &str,
    dialer: &Dialer,
    endpoints: &[String],
    b: &KvBench,
) -> Result<SystemResult, String> {
    let mut channels = Vec::new();
    for i in 0..b.conns {
        let ep = &endpoints[i % endpoints.len()];
        channels.push(dialer.connect(ep).await.map_err(|e| format!("{ep}: {e}"))?);
    }
    let token = match (&b.user, endpoints) {
        (Some(user), [ep, ..]) => login(&channels[0], Some(user))
            .await
            .map_err(|e| format!("logging in at {ep}: {e}"))?,
        _ => Token::default(),
    };
    let mut phases = Vec::new();
    for &op in &b.phases {
        phases.push(phase(&channels, &token, b, op).await);
    }
    Ok(SystemResult {
        system: system.to_string(),
        phases,
    })
}

/// A lease and the open stream that keeps it alive.
struct KeepAlive {
    id: i64,
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

impl KeepAlive {
    async fn open(channel: Channel, token: Token) -> Result<KeepAlive, tonic::Status> {
        let mut lease = pb::lease_client::LeaseClient::with_interceptor(channel, token);
        let id = lease
            .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
            .await?
            .into_inner()
            .id;
        let (requests, rx) = mpsc::channel(1);
        // etcd sends the stream's response headers only with its first answer, so the
        // first keep-alive must be on its way before the call can return.
        let _ = requests.try_send(pb::LeaseKeepAliveRequest { id });
        let responses = lease
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut keep_alive = KeepAlive {
            id,
            requests,
            responses,
        };
        keep_alive.answer().await?;
        Ok(keep_alive)
    }

    async fn renew(&mut self) -> Result<(), tonic::Status> {
        let request = pb::LeaseKeepAliveRequest { id: self.id };
        if self.requests.send(request).await.is_err() {
            return Err(tonic::Status::unavailable("keep-alive stream closed"));
        }
        self.answer().await
    }

    async fn answer(&mut self) -> Result<(), tonic::Status> {
        match self.responses.message().await? {
            Some(r) if r.ttl > 0 => Ok(()),
            Some(_) => Err(tonic::Status::not_found("lease expired")),
            None => Err(tonic::Status::unavailable("keep-alive stream ended")),
        }
    }
}

/// One client's connection and, in the keep-alive phase, its lease.
struct Worker {
    kv: pb::kv_client::KvClient<InterceptedService<Channel, Token>>,
    keep_alive: Option<KeepAlive>,
}

impl Worker {
    async fn start(channel: Channel, token: Token, op: Op) -> Result<Worker, tonic::Status> {
        let keep_alive = match op {
            Op::LeaseKeepalives => Some(KeepAlive::open(channel.clone(), token.clone()).await?),
            _ => None,
        };
        Ok(Worker {
            kv: kv(channel, token),
            keep_alive,
        })
    }

    async fn run(
        &mut self,
        op: Op,
        key: Vec<u8>,
        value: &bytes::Bytes,
    ) -> Result<(), tonic::Status> {
        let key = bytes::Bytes::from(key);
        let read = |serializable| pb::RangeRequest {
            key: key.clone(),
            serializable,
            ..Default::default()
        };
        let put = || pb::PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        match op {
            Op::Puts => self.kv.put(put()).await.map(drop),
            Op::LinearizableReads => self.kv.range(read(false)).await.map(drop),
            Op::SerializableReads => self.kv.range(read(true)).await.map(drop),
            Op::Txns => {
                use pb::compare::{CompareResult, CompareTarget, TargetUnion};
                use pb::request_op::Request;
                let txn = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: CompareResult::Greater as i32,
                        target: CompareTarget::Version as i32,
                        key: key.clone(),
                        target_union: Some(TargetUnion::Version(0)),
                        ..Default::default()
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(Request::RequestPut(put())),
                    }],
                    failure: vec![pb::RequestOp {
                        request: Some(Request::RequestRange(read(false))),
                    }],
                };
                self.kv.txn(txn).await.map(drop)
            }
            Op::LeaseKeepalives => match &mut self.keep_alive {
                Some(k) => k.renew().await,
                None => Err(tonic::Status::internal("no lease")),
            },
        }
    }
}

/// Errors counted across a phase's clients, with the first one's message.
#[derive(Clone, Default)]
struct Errors {
    count: Arc<AtomicU64>,
    first: Arc<std::sync::Mutex<Option<String>>>,
}

impl Errors {
    fn record(&self, status: &tonic::Status) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().expect("not poisoned");
        first.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

async fn phase(channels: &[Channel], token: &Token, b: &KvBench, op: Op) -> Phase {
    let errors = Errors::default();
    let started = Instant::now();
    let until = started + b.duration;
    let value = bytes::Bytes::from(vec![b'x'; b.value_size]);
    let tasks: Vec<_> = (0..b.clients)
        .map(|c| {
            let channel = channels[c % channels.len()].clone();
            let token = token.clone();
            let errors = errors.clone();
            let value = value.clone();
            let keys = b.keys;
            tokio::spawn(async move {
                let mut hist = histogram();
                let mut worker = match Worker::start(channel, token, op).await {
                    Ok(w) => w,
                    Err(status) => {
                        errors.record(&status);
                        return hist;
                    }
                };
                let mut rng = DetRng::new(c as u64 + 1);
                while Instant::now() < until {
                    let key = format!("bench/{:08}", rng.range(0, keys - 1)).into_bytes();
                    let t = Instant::now();
                    match worker.run(op, key, &value).await {
                        Ok(()) => {
                            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                        }
                        Err(status) => errors.record(&status),
                    }
                }
                hist
            })
        })
        .collect();
    let mut all = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(h);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Phase {
        name: op.name(),
        ops: all.len(),
        errors: errors.count.load(Ordering::Relaxed),
        first_error: errors.first.lock().expect("not poisoned").take(),
        per_second: all.len() as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: all.max() as f64 / 1000.0,
    }
}

fn print(b: &KvBench, results: &[SystemResult]) {
    println!(
        "{} clients over {} connections, {}-byte values, {} keys, {:?} per phase, fsync on",
        b.clients, b.conns, b.value_size, b.keys, b.duration
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["phase".to_string()];
    for r in results {
        header.push(r.system.clone());
    }
    if results.len() == 2 {
        header.push("ratio".into());
    }
    t.set_header(header);
    for i in 0..results[0].phases.len() {
        let mut row = vec![results[0].phases[i].name.to_string()];
        for r in results {
            let p = &r.phases[i];
            let errors = match &p.first_error {
                Some(e) => format!("{} errors, first: {e}", p.errors),
                None => format!("{} errors", p.errors),
            };
            row.push(format!(
                "{:.0}/s  p50 {:.2} ms  p99 {:.2} ms  ({errors})",
                p.per_second, p.p50_ms, p.p99_ms
            ));
        }
        if let [a, e] = results {
            let (a, e) = (&a.phases[i], &e.phases[i]);
            if a.ops == 0 || e.ops == 0 {
                row.push("n/a (a side completed nothing)".into());
                t.add_row(row);
                continue;
            }
            row.push(format!(
                "{:.2}x throughput, {:.2}x p99",
                a.per_second / e.per_second.max(1e-9),
                a.p99_ms / e.p99_ms.max(1e-9)
            ));
        }
        t.add_row(row);
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_time_is_read_and_grows_as_it_works() {
        let me = [std::process::id()];
        let before = cpu_seconds(&me).expect("Linux's /proc tells");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = cpu_seconds(&me).unwrap();
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert!(cpu_seconds(&[u32::MAX]).is_none(), "no such process");
    }
}
