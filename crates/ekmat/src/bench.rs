//! `ekmat bench kv`: write then read load against a cluster, with throughput and latency
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
use tonic::transport::Channel;

use crate::client::{connect, parse_endpoints};
use crate::etcd::EtcdCluster;
use crate::exit;
use crate::up::{LocalCluster, UpArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
}

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// Puts, then linearizable reads, from concurrent clients.
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
    /// Also start a local etcd (Debian's etcd-server) and run the same load against it.
    #[arg(long)]
    pub against_etcd: bool,
    /// First port of the clusters the benchmark starts.
    #[arg(long, default_value_t = 23_790)]
    pub base_port: u16,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Phase {
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
    pub writes: Phase,
    pub linearizable_reads: Phase,
    pub serializable_reads: Phase,
}

impl SystemResult {
    fn phases(&self) -> [(&'static str, &Phase); 3] {
        [
            ("writes", &self.writes),
            ("linearizable reads", &self.linearizable_reads),
            ("serializable reads", &self.serializable_reads),
        ]
    }
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
        let eps = parse_endpoints(list)?;
        results.push(load("cluster at --endpoints", &eps, b).await?);
        return Ok(results);
    }
    let data = tempdir("ekmat-bench")?;
    let up = UpArgs {
        nodes: b.nodes,
        protocol: "raft".into(),
        data_dir: Some(data.clone()),
        base_port: b.base_port,
        unsafe_no_fsync: false,
    };
    let mut cluster = LocalCluster::start(&up, &data)?;
    let result = match cluster.wait_for_leader().await {
        Ok(_) => {
            let eps: Vec<String> = cluster
                .endpoints()
                .iter()
                .map(|e| format!("http://{e}"))
                .collect();
            load(&format!("ekmat ({} nodes)", b.nodes), &eps, b).await
        }
        Err(e) => Err(e),
    };
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&data);
    results.push(result?);
    if b.against_etcd {
        let data = tempdir("ekmat-bench-etcd")?;
        let mut etcd = EtcdCluster::start(b.nodes, b.base_port + 1000, &data).await?;
        let eps: Vec<String> = etcd
            .endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let result = load(&format!("etcd 3.4 ({} nodes)", b.nodes), &eps, b).await;
        etcd.stop().await;
        let _ = std::fs::remove_dir_all(&data);
        results.push(result?);
    }
    Ok(results)
}

fn tempdir(prefix: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Read { serializable: bool },
}

async fn load(system: &str, endpoints: &[String], b: &KvBench) -> Result<SystemResult, String> {
    let mut channels = Vec::new();
    for i in 0..b.conns {
        let ep = &endpoints[i % endpoints.len()];
        channels.push(connect(ep).await.map_err(|e| format!("{ep}: {e}"))?);
    }
    let writes = phase(&channels, b, Op::Put).await;
    let linearizable_reads = phase(
        &channels,
        b,
        Op::Read {
            serializable: false,
        },
    )
    .await;
    let serializable_reads = phase(&channels, b, Op::Read { serializable: true }).await;
    Ok(SystemResult {
        system: system.to_string(),
        writes,
        linearizable_reads,
        serializable_reads,
    })
}

async fn phase(channels: &[Channel], b: &KvBench, op: Op) -> Phase {
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let until = started + b.duration;
    let value = vec![b'x'; b.value_size];
    let tasks: Vec<_> = (0..b.clients)
        .map(|c| {
            let mut kv = pb::kv_client::KvClient::new(channels[c % channels.len()].clone());
            let errors = errors.clone();
            let first_error = first_error.clone();
            let value = value.clone();
            let keys = b.keys;
            tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
                let mut rng = DetRng::new(c as u64 + 1);
                while Instant::now() < until {
                    let key = format!("bench/{:08}", rng.range(0, keys - 1)).into_bytes();
                    let t = Instant::now();
                    let result = match op {
                        Op::Put => kv
                            .put(pb::PutRequest {
                                key,
                                value: value.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(drop),
                        Op::Read { serializable } => kv
                            .range(pb::RangeRequest {
                                key,
                                serializable,
                                ..Default::default()
                            })
                            .await
                            .map(drop),
                    };
                    match result {
                        Ok(()) => {
                            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                        }
                        Err(status) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().expect("not poisoned");
                            first.get_or_insert_with(|| {
                                format!("{:?}: {}", status.code(), status.message())
                            });
                        }
                    }
                }
                hist
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(h);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Phase {
        ops: all.len(),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.lock().expect("not poisoned").take(),
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
    for i in 0..3 {
        let name = results[0].phases()[i].0;
        let mut row = vec![name.to_string()];
        for r in results {
            let p = r.phases()[i].1;
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
            let (a, e) = (a.phases()[i].1, e.phases()[i].1);
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
