//! `ekmat bench open-loop`: a real cluster of `ekmat node` processes (Raft or PBFT)
//! under open-loop load — puts sent at a fixed arrival rate whatever the cluster does,
//! each latency measured from the time the put was *scheduled*, so a cluster that falls
//! behind shows its queueing in the latencies instead of slowing the clients down
//! (coordinated omission). One fresh cluster per rate.
//!
//! Throughput is the puts acknowledged during the measured window divided by its
//! length; the latencies are those of the puts scheduled inside it (waited for until
//! `--drain` after the window; those still unanswered then count as timed out).

use std::time::{Duration, Instant};

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use ekmat_api::etcdserverpb as pb;
use ekmat_core::DetRng;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::bench::BenchCluster;
use crate::client::connect;
use crate::exit;
use crate::up::UpArgs;

#[derive(Args, Debug, Clone)]
pub struct OpenLoopBench {
    /// Consensus protocol of the cluster.
    #[arg(long, default_value = "pbft", value_parser = ["raft", "pbft"])]
    pub protocol: String,
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Arrival rates to measure, puts per second, comma-separated.
    #[arg(
        long,
        default_value = "10000,25000,50000,100000",
        value_delimiter = ','
    )]
    pub rates: Vec<u64>,
    /// Length of each rate's run, warm-up included.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The first part of each run, not measured.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// How long after the window unanswered puts are waited for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Bytes per put's value.
    #[arg(long, default_value_t = 512)]
    pub value_size: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Puts per request: 1 sends each put as its own Put call; K > 1 sends K puts (to
    /// K distinct keys) in one Txn call, which the cluster orders and applies as one
    /// command — rates and throughput still count puts. It shows what the cluster does
    /// when the cost of one gRPC call per put (client and server side) is shared.
    #[arg(long, default_value_t = 1)]
    pub puts_per_request: u64,
    /// Compact the history this often during each run (etcd's `benchmark put
    /// --compact-interval`); 0 never compacts, and the store keeps every revision.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub compact_every: Duration,
    /// How many revisions each compaction keeps behind the current one (etcd's
    /// `--compact-index-delta`).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(i64).range(0..))]
    pub compact_keep: i64,
    /// gRPC connections, spread over every member (each member takes client requests).
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    /// Client port of the first node of the clusters the benchmark starts.
    #[arg(long, default_value_t = 24_500)]
    pub base_port: u16,
    /// Skip fsync in the nodes (acknowledged writes can be lost on power failure).
    #[arg(long)]
    pub unsafe_no_fsync: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RatePoint {
    pub offered_per_second: u64,
    pub acknowledged_per_second: f64,
    /// Puts scheduled in the window.
    pub scheduled: u64,
    pub acknowledged: u64,
    pub errors: u64,
    pub timed_out: u64,
    pub first_error: Option<String>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The members' CPU time over the window, per second of it: how many of the
    /// machine's cores they kept busy (Linux only).
    pub members_cpu_cores: Option<f64>,
    /// The same for this load generator, which shares the machine with them.
    pub client_cpu_cores: Option<f64>,
    /// The members' CPU time over the window per 1,000 puts acknowledged in it (all
    /// members summed): what a put costs the cluster, steadier run to run than
    /// throughput on a busy machine.
    pub cpu_ms_per_1000_puts: Option<f64>,
    /// Compactions made during the run (`--compact-every`).
    pub compactions: u64,
    /// Compactions that failed for another reason than load, a leader change or a
    /// revision already compacted (those skip a round), and the first one's error.
    pub compaction_errors: u64,
    pub first_compaction_error: Option<String>,
}

/// The most distinct keys a run writes: each is made in memory before the run.
const MAX_KEYS: u64 = 10_000_000;

/// The shortest compaction interval: each round is two requests through consensus.
const MIN_COMPACT_EVERY: Duration = Duration::from_millis(10);

pub fn run(b: &OpenLoopBench) -> u8 {
    if b.rates.is_empty() || b.rates.contains(&0) || b.conns == 0 || b.keys == 0 {
        eprintln!("error: --rates, --conns and --keys must be positive");
        return exit::USAGE;
    }
    if b.keys > MAX_KEYS {
        eprintln!("error: --keys must be at most {MAX_KEYS} (the keys are made up front)");
        return exit::USAGE;
    }
    if b.puts_per_request == 0 || b.puts_per_request > b.keys {
        eprintln!("error: --puts-per-request must be between 1 and --keys");
        return exit::USAGE;
    }
    if !b.compact_every.is_zero()
        && (b.compact_every < MIN_COMPACT_EVERY || b.compact_every >= b.duration)
    {
        eprintln!(
            "error: --compact-every must be 0 (never) or from {MIN_COMPACT_EVERY:?} to less than --duration"
        );
        return exit::USAGE;
    }
    if b.duration <= b.warmup {
        eprintln!("error: --duration must be longer than --warmup");
        return exit::USAGE;
    }
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    // Made once: formatting each put's key cost the generator CPU the members could use.
    let keys: Keys = (0..b.keys)
        .map(|i| bytes::Bytes::from(format!("bench/{i:08}")))
        .collect();
    let mut points = Vec::new();
    for &rate in &b.rates {
        match rt.block_on(one_rate(b, rate, &keys)) {
            Ok(p) => {
                if !b.json {
                    eprintln!(
                        "{rate}/s offered: {:.0}/s acknowledged, p50 {:.1} ms, p99 {:.1} ms{}",
                        p.acknowledged_per_second,
                        p.p50_ms,
                        p.p99_ms,
                        p.cpu_ms_per_1000_puts
                            .map_or(String::new(), |c| format!(", {c:.1} CPU ms per 1,000 puts"))
                    );
                }
                points.push(p);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return exit::VIOLATION;
            }
        }
    }
    if b.json {
        println!(
            "{}",
            serde_json::json!({
                "protocol": b.protocol,
                "nodes": b.nodes,
                "value_size": b.value_size,
                "puts_per_request": b.puts_per_request,
                "fsync": !b.unsafe_no_fsync,
                "compact_every_ms": b.compact_every.as_millis() as u64,
                "compact_keep": b.compact_keep,
                "points": points,
            })
        );
    } else {
        print(b, &points);
    }
    exit::OK
}

/// The keys a run writes.
type Keys = std::sync::Arc<[bytes::Bytes]>;

async fn one_rate(b: &OpenLoopBench, rate: u64, keys: &Keys) -> Result<RatePoint, String> {
    let up = UpArgs {
        nodes: b.nodes,
        protocol: b.protocol.clone(),
        data_dir: None,
        base_port: b.base_port,
        unsafe_no_fsync: b.unsafe_no_fsync,
        restore: None,
        tls: false,
    };
    let cluster = BenchCluster::start("ekmat-bench-open", up).await?;
    let result = load(b, rate, keys, &cluster).await;
    cluster.stop().await;
    result
}

/// CPU time over the measured window, sampled at its start and its end: the members'
/// and this load generator's own.
async fn window_cpu(
    cluster: &BenchCluster,
    window: (Instant, Instant),
) -> (Option<f64>, Option<f64>) {
    let own = || crate::bench::cpu_seconds(&[std::process::id()]);
    tokio::time::sleep_until(window.0.into()).await;
    let before = (cluster.members_cpu_seconds(), own());
    tokio::time::sleep_until(window.1.into()).await;
    let after = (cluster.members_cpu_seconds(), own());
    let spent = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    (spent(after.0, before.0), spent(after.1, before.1))
}

/// What one worker measured.
struct Measured {
    hist: Histogram<u64>,
    scheduled: u64,
    acknowledged_in_window: u64,
    errors: u64,
    timed_out: u64,
    first_error: Option<String>,
}

async fn load(
    b: &OpenLoopBench,
    rate: u64,
    keys: &Keys,
    cluster: &BenchCluster,
) -> Result<RatePoint, String> {
    let endpoints = &cluster.urls;
    let mut channels = Vec::new();
    for i in 0..b.conns {
        let ep = &endpoints[i % endpoints.len()];
        channels.push(connect(ep).await.map_err(|e| format!("{ep}: {e}"))?);
    }
    // One worker per connection, each with an equal share of the arrivals, interleaved.
    let workers = b.conns as u64;
    let k = b.puts_per_request;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = JoinSet::new();
    let compactor_channel = channels.first().cloned();
    for (w, channel) in channels.into_iter().enumerate() {
        let plan = Plan {
            start,
            interval: Duration::from_secs_f64(workers as f64 * k as f64 / rate as f64),
            offset: Duration::from_secs_f64(w as f64 * k as f64 / rate as f64),
            window: (start + b.warmup, start + b.duration),
            drain: b.drain,
            value: bytes::Bytes::from(vec![b'x'; b.value_size]),
            keys: keys.clone(),
            puts: k,
            seed: w as u64 + 1,
        };
        tasks.spawn(worker(channel, plan));
    }
    // In a set, so that it is aborted if this returns early.
    let mut compactor = JoinSet::new();
    if let Some(channel) = compactor_channel.filter(|_| !b.compact_every.is_zero()) {
        let until = start + b.duration;
        compactor.spawn(compact_periodically(
            channel,
            b.compact_every,
            b.compact_keep,
            until,
        ));
    }
    // The workers run on as spawned tasks while this waits out the window.
    let (cpu_seconds, client_cpu_seconds) =
        window_cpu(cluster, (start + b.warmup, start + b.duration)).await;
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let (mut scheduled, mut acked, mut errors, mut timed_out) = (0, 0, 0, 0);
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let m = done.map_err(|e| format!("a load worker failed: {e}"))?;
        let _ = all.add(&m.hist);
        scheduled += m.scheduled;
        acked += m.acknowledged_in_window;
        errors += m.errors;
        timed_out += m.timed_out;
        first_error = first_error.or(m.first_error);
    }
    let compacted = match compactor.join_next().await {
        Some(done) => done.map_err(|e| format!("the compactor failed: {e}"))?,
        None => Compacted::default(),
    };
    let window = (b.duration - b.warmup).as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(RatePoint {
        offered_per_second: rate,
        acknowledged_per_second: acked as f64 / window,
        scheduled,
        acknowledged: all.len() * k,
        errors,
        timed_out,
        first_error,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: all.max() as f64 / 1000.0,
        members_cpu_cores: cpu_seconds.map(|c| c / window),
        client_cpu_cores: client_cpu_seconds.map(|c| c / window),
        cpu_ms_per_1000_puts: cpu_seconds
            .filter(|_| acked > 0)
            .map(|c| c * 1e6 / acked as f64),
        compactions: compacted.made,
        compaction_errors: compacted.errors,
        first_compaction_error: compacted.first_error,
    })
}

/// What the compactor did in one run.
#[derive(Default)]
struct Compacted {
    made: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Every `every` until `until`, compact the history to `keep` revisions behind the
/// current one, as etcd's benchmark does: the store then holds about the keys' latest
/// values rather than every revision. A failed round is counted, not fatal: the puts'
/// measurements are what the run is for.
async fn compact_periodically(
    channel: Channel,
    every: Duration,
    keep: i64,
    until: Instant,
) -> Compacted {
    let mut kv = pb::kv_client::KvClient::new(channel);
    let mut done = Compacted::default();
    loop {
        let next = Instant::now() + every;
        if next >= until {
            return done;
        }
        tokio::time::sleep_until(next.into()).await;
        match compact_once(&mut kv, keep).await {
            Ok(true) => done.made += 1,
            Ok(false) => {}
            Err(s) if transient(&s) => {}
            Err(s) => {
                done.errors += 1;
                let error = format!("{:?}: {}", s.code(), s.message());
                done.first_error.get_or_insert(error);
            }
        }
    }
}

/// Compact to `keep` revisions behind the revision the member answers with. Returns
/// false if there is no revision that far back yet.
async fn compact_once(
    kv: &mut pb::kv_client::KvClient<Channel>,
    keep: i64,
) -> Result<bool, tonic::Status> {
    // Read for its header only: the member's current revision.
    let probe = pb::RangeRequest {
        key: b"bench/".to_vec().into(),
        limit: 1,
        serializable: true,
        ..Default::default()
    };
    let header = kv.range(probe).await?.into_inner().header;
    let revision = header.map_or(0, |h| h.revision) - keep;
    if revision <= 0 {
        return Ok(false);
    }
    let compact = pb::CompactionRequest {
        revision,
        physical: false,
    };
    kv.compact(compact).await.map(|_| true)
}

/// A refusal the next round may not meet: the cluster shedding load (a saturating rate
/// is what the benchmark measures), a leader change, or a member whose revision is
/// behind one already compacted.
fn transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(s.code(), Code::ResourceExhausted | Code::Unavailable)
        || s.message().contains("required revision has been compacted")
}

struct Plan {
    start: Instant,
    /// Between two of this worker's arrivals.
    interval: Duration,
    /// This worker's first arrival after `start`.
    offset: Duration,
    /// Puts scheduled in [window.0, window.1) are measured; none are sent after window.1.
    window: (Instant, Instant),
    drain: Duration,
    value: bytes::Bytes,
    /// The keys written, one picked at random per request (and the ones after it).
    keys: Keys,
    /// Puts per request (more than one: a Txn).
    puts: u64,
    seed: u64,
}

enum Call {
    Put(pb::PutRequest),
    Txn(pb::TxnRequest),
}

/// Send puts at the planned instants, never waiting for earlier ones to be answered.
async fn worker(channel: Channel, plan: Plan) -> Measured {
    let kv = pb::kv_client::KvClient::new(channel);
    let mut rng = DetRng::new(plan.seed);
    let mut m = Measured {
        hist: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        scheduled: 0,
        acknowledged_in_window: 0,
        errors: 0,
        timed_out: 0,
        first_error: None,
    };
    let mut inflight: JoinSet<(Instant, Result<(), String>, Instant)> = JoinSet::new();
    let (from, until) = plan.window;
    let puts = plan.puts;
    let mut next = plan.start + plan.offset;
    let record = |m: &mut Measured, (at, result, done): (Instant, Result<(), String>, Instant)| {
        if result.is_ok() && done >= from && done < until {
            m.acknowledged_in_window += puts;
        }
        if at < from {
            return; // warm-up
        }
        match result {
            Ok(()) => {
                let us = done.saturating_duration_since(at).as_micros().max(1) as u64;
                let _ = m.hist.record(us);
            }
            Err(e) => {
                m.errors += puts;
                m.first_error.get_or_insert(e);
            }
        }
    };
    while next < until {
        tokio::select! {
            biased;
            Some(Ok(done)) = inflight.join_next() => record(&mut m, done),
            _ = tokio::time::sleep_until(next.into()) => {
                // Every arrival due by now goes out, each stamped with its own schedule.
                let now = Instant::now();
                while next <= now && next < until {
                    let at = next;
                    next += plan.interval;
                    if at >= from {
                        m.scheduled += plan.puts;
                    }
                    let mut kv = kv.clone();
                    let n = plan.keys.len() as u64;
                    let first = rng.range(0, n - 1);
                    let put = |i: u64| pb::PutRequest {
                        key: plan.keys[((first + i) % n) as usize].clone(),
                        value: plan.value.clone(),
                        ..Default::default()
                    };
                    let call = if plan.puts == 1 {
                        Call::Put(put(0))
                    } else {
                        Call::Txn(pb::TxnRequest {
                            success: (0..plan.puts)
                                .map(|i| pb::RequestOp {
                                    request: Some(pb::request_op::Request::RequestPut(put(i))),
                                })
                                .collect(),
                            ..Default::default()
                        })
                    };
                    inflight.spawn(async move {
                        let result = match call {
                            Call::Put(req) => kv.put(req).await.map(drop),
                            Call::Txn(req) => kv.txn(req).await.map(drop),
                        };
                        let result =
                            result.map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                        (at, result, Instant::now())
                    });
                }
            }
        }
    }
    let deadline = tokio::time::Instant::from(until + plan.drain);
    loop {
        match tokio::time::timeout_at(deadline, inflight.join_next()).await {
            Ok(Some(Ok(done))) => record(&mut m, done),
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                m.timed_out += inflight.len() as u64 * plan.puts;
                inflight.abort_all();
                break;
            }
        }
    }
    m
}

fn print(b: &OpenLoopBench, points: &[RatePoint]) {
    println!(
        "{} nodes, {}, open loop: {}-byte puts ({}) over {} keys, {} connections spread over every member, {:?} per rate ({:?} warm-up), fsync {}, {}",
        b.nodes,
        b.protocol,
        b.value_size,
        if b.puts_per_request == 1 {
            "one per Put call".to_string()
        } else {
            format!("{} per Txn call", b.puts_per_request)
        },
        b.keys,
        b.conns,
        b.duration,
        b.warmup,
        if b.unsafe_no_fsync { "off" } else { "on" },
        if b.compact_every.is_zero() {
            "every revision kept".to_string()
        } else {
            let failed: u64 = points.iter().map(|p| p.compaction_errors).sum();
            let first = points
                .iter()
                .find_map(|p| p.first_compaction_error.as_ref());
            format!(
                "compacted every {:?} to {} revisions back ({} compactions{})",
                b.compact_every,
                b.compact_keep,
                points.iter().map(|p| p.compactions).sum::<u64>(),
                first.map_or(String::new(), |e| format!(", {failed} failed, first: {e}"))
            )
        }
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "offered/s",
        "acknowledged/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "timed out",
        "members' cores",
        "client's cores",
        "CPU ms / 1k puts",
    ]);
    for p in points {
        let errors = match &p.first_error {
            Some(e) => format!("{} (first: {e})", p.errors),
            None => p.errors.to_string(),
        };
        t.add_row([
            p.offered_per_second.to_string(),
            format!("{:.0}", p.acknowledged_per_second),
            format!("{:.1}", p.p50_ms),
            format!("{:.1}", p.p90_ms),
            format!("{:.1}", p.p99_ms),
            format!("{:.1}", p.max_ms),
            errors,
            p.timed_out.to_string(),
            p.members_cpu_cores
                .map_or("-".into(), |c| format!("{c:.2}")),
            p.client_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
            p.cpu_ms_per_1000_puts
                .map_or("-".into(), |c| format!("{c:.1}")),
        ]);
    }
    println!("{t}");
}
