//! `ekmat bench pbft`: PBFT's cost and speed.
//!
//! - **messages per committed batch** for n = 4, 7, 10, 13, measured in the simulator
//!   (no faults, honest replicas), beside the normal case's 2n(n−1) — O(n²);
//! - **throughput and latency** of an in-process cluster: one thread per replica, real
//!   ed25519 signatures on every message, 100-byte operations, gateways bundling
//!   requests and the primary batching bundles. Writes are durable at once (no disk):
//!   this measures the protocol and its cryptography, not fsync. With
//!   `--signed-clients`, the same run again with each gateway's client registered and
//!   signing its own requests (signed before the run, as a client elsewhere would), so
//!   the cost of checking client signatures shows as a ratio.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use ekmat_core::{Effect, Effects, Input, NodeId, Replica, Request, RequestId, RequestKind, Time};
use ekmat_pbft::message::Message;
use ekmat_pbft::{Pbft, PbftConfig};
use ekmat_sim::protocols::PbftSim;
use ekmat_sim::run::{SimOptions, run_seed_observed};
use hdrhistogram::Histogram;

use crate::exit;

#[derive(Args, Debug, Clone)]
pub struct PbftBench {
    /// Replicas in the throughput cluster.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// How long the throughput run lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Requests each gateway keeps outstanding.
    #[arg(long, default_value_t = 8192)]
    pub outstanding: usize,
    /// Requests per gateway bundle (one signature each).
    #[arg(long, default_value_t = 512)]
    pub bundle: usize,
    /// Requests per batch at most.
    #[arg(long, default_value_t = 8192)]
    pub batch: usize,
    #[arg(long, default_value_t = 100)]
    pub op_size: usize,
    /// Skip the message-count table.
    #[arg(long)]
    pub no_messages: bool,
    /// Run the throughput twice, the second time with clients that sign their own
    /// requests (every replica checks every signature), and print the ratio.
    #[arg(long)]
    pub signed_clients: bool,
    /// Requests each signing client signs before the run (it stops submitting when
    /// they run out, which the output reports).
    #[arg(long, default_value_t = 100_000)]
    pub signed_pool: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(b: &PbftBench) -> u8 {
    if b.nodes < 4 || b.outstanding == 0 || b.bundle == 0 || b.batch == 0 {
        eprintln!("error: --nodes >= 4 and positive --outstanding, --bundle, --batch");
        return exit::USAGE;
    }
    let messages = if b.no_messages {
        Vec::new()
    } else {
        [4, 7, 10, 13].into_iter().map(messages_per_batch).collect()
    };
    let t = throughput(b, false);
    let signed = b.signed_clients.then(|| throughput(b, true));
    if b.json {
        let out = serde_json::json!({
            "messages_per_batch": messages,
            "throughput": t,
            "signed_clients": signed,
        });
        println!("{out}");
        return exit::OK;
    }
    for m in &messages {
        let kinds: Vec<String> = m
            .by_kind
            .iter()
            .map(|(kind, per)| format!("{kind} {per:.1}"))
            .collect();
        println!(
            "n={:>2}: {:>6.1} messages per committed batch ({} batches, {} requests); normal case 2n(n-1) = {}; sent: {}",
            m.n,
            m.per_batch,
            m.batches,
            m.requests,
            m.formula,
            kinds.join(", ")
        );
    }
    print_throughput(b, &t, "gateway-vouched requests");
    if let Some(s) = &signed {
        print_throughput(b, s, "requests signed by their clients");
        println!(
            "signed / gateway-vouched: {:.2}x throughput, {:.2}x p50 latency",
            s.ops_per_sec / t.ops_per_sec.max(1.0),
            s.p50_ms / t.p50_ms.max(0.001)
        );
        if s.pool_ran_out {
            println!("note: a client used up its --signed-pool requests; the signed figure is low");
        }
    }
    exit::OK
}

fn print_throughput(b: &PbftBench, t: &Throughput, what: &str) {
    println!(
        "{} replicas, {what}, {}-byte ops, bundles of {}, batches up to {}: {:.0} ops/s over {:.1} s ({} ops, {} batches, {:.0} ops/batch); latency p50 {:.2} ms, p99 {:.2} ms",
        b.nodes,
        b.op_size,
        b.bundle,
        b.batch,
        t.ops_per_sec,
        t.seconds,
        t.ops,
        t.batches,
        t.ops as f64 / t.batches.max(1) as f64,
        t.p50_ms,
        t.p99_ms
    );
    println!(
        "  signatures verified {} ({:.0}/s across replicas), cache hits {}; messages sent {}",
        t.verified,
        t.verified as f64 / t.seconds,
        t.cache_hits,
        t.messages
    );
}

#[derive(Debug, serde::Serialize)]
struct MessageCount {
    n: usize,
    batches: u64,
    requests: u64,
    per_batch: f64,
    formula: u64,
    /// Per committed batch, by message kind, as the simulator counted them sent.
    by_kind: std::collections::BTreeMap<&'static str, f64>,
}

/// One fault-free simulated run of n honest replicas; every message sent, by kind.
fn messages_per_batch(n: usize) -> MessageCount {
    let opts = SimOptions {
        nodes: n,
        faults: vec![],
        ops: 600,
        ..SimOptions::default()
    };
    let proto = PbftSim {
        nodes: n,
        vary_knobs: false,
        ..PbftSim::default()
    };
    let mut batches = 0;
    let report = run_seed_observed(&proto, &opts, 1, Duration::from_millis(100), &mut |w| {
        if let Some(r) = w.replica(NodeId(0)) {
            batches = r.replica().last_executed();
        }
    });
    let per = |x: u64| x as f64 / batches.max(1) as f64;
    let n64 = n as u64;
    MessageCount {
        n,
        batches,
        requests: report.ops as u64,
        per_batch: per(report.stats.messages),
        formula: 2 * n64 * (n64 - 1),
        by_kind: report
            .stats
            .messages_by_kind
            .iter()
            .map(|(kind, count)| (*kind, per(*count)))
            .collect(),
    }
}

#[derive(Debug, Default, serde::Serialize)]
struct Throughput {
    ops: u64,
    batches: u64,
    seconds: f64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    verified: u64,
    cache_hits: u64,
    messages: u64,
    pool_ran_out: bool,
}

enum Cmd {
    Msg(NodeId, Message),
}

struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    executed: AtomicU64,
    /// Replica threads done signing their clients' requests.
    ready: AtomicU64,
}

/// Gateway `i`'s client: its id, and its key if it signs.
fn client_of(i: usize) -> u64 {
    i as u64 + 1
}

fn client_key(i: usize) -> ekmat_pbft::crypto::SigningKey {
    ekmat_pbft::client::derive_client_key(7, client_of(i))
}

fn throughput(b: &PbftBench, signed: bool) -> Throughput {
    let n = b.nodes;
    let (senders, receivers): (Vec<Sender<Cmd>>, Vec<Receiver<Cmd>>) =
        (0..n).map(|_| channel()).unzip();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        executed: AtomicU64::new(0),
        ready: AtomicU64::new(0),
    });
    let clients: Arc<ekmat_pbft::client::ClientRegistry> = Arc::new(if signed {
        (0..n)
            .map(|i| (client_of(i), client_key(i).verifying_key()))
            .collect()
    } else {
        Default::default()
    });
    let warmup = Duration::from_millis(500);
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let mut cfg = PbftConfig::from_seed(NodeId(i as u32), n, 7);
            cfg.bundle_max = b.bundle;
            cfg.batch_max = b.batch;
            cfg.max_inflight = 4;
            cfg.checkpoint_interval = 64;
            cfg.window = 256;
            cfg.view_timeout = Duration::from_secs(5);
            cfg.clients = clients.clone();
            let node = ReplicaThread {
                pbft: Pbft::new(cfg).expect("valid config"),
                rx,
                peers: senders.clone(),
                shared: shared.clone(),
                outstanding: b.outstanding,
                op: Bytes::from(vec![0xab; b.op_size]),
                signed_pool: if signed { b.signed_pool } else { 0 },
            };
            std::thread::spawn(move || node.run())
        })
        .collect();
    if signed {
        eprintln!("signing {} requests per client...", b.signed_pool);
    }
    while shared.ready.load(Ordering::SeqCst) < n as u64 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(warmup);
    shared.measuring.store(true, Ordering::SeqCst);
    let start_ops = shared.executed.load(Ordering::SeqCst);
    let started = Instant::now();
    std::thread::sleep(b.duration);
    let ops = shared.executed.load(Ordering::SeqCst) - start_ops;
    let seconds = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::SeqCst);
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut t = Throughput::default();
    for h in handles {
        let r = h.join().expect("replica thread");
        hist.add(&r.latency).expect("same histogram shape");
        t.verified += r.verified;
        t.cache_hits += r.cache_hits;
        t.messages += r.messages;
        t.batches = t.batches.max(r.batches);
        t.pool_ran_out |= r.pool_ran_out;
    }
    t.ops = ops;
    t.seconds = seconds;
    t.ops_per_sec = ops as f64 / seconds;
    t.p50_ms = hist.value_at_quantile(0.5) as f64 / 1000.0;
    t.p99_ms = hist.value_at_quantile(0.99) as f64 / 1000.0;
    t
}

struct ReplicaThread {
    pbft: Pbft,
    rx: Receiver<Cmd>,
    peers: Vec<Sender<Cmd>>,
    shared: Arc<Shared>,
    outstanding: usize,
    op: Bytes,
    /// Requests its client signs before the run (0: the client does not sign).
    signed_pool: usize,
}

struct ThreadResult {
    latency: Histogram<u64>,
    verified: u64,
    cache_hits: u64,
    messages: u64,
    batches: u64,
    pool_ran_out: bool,
}

impl ReplicaThread {
    /// Feed the replica its gateway's clients (up to `outstanding` requests in flight),
    /// the messages other replicas send it, and a tick per millisecond.
    fn run(mut self) -> ThreadResult {
        let me = self.pbft.id();
        let epoch = Instant::now();
        let now = || Time(epoch.elapsed().as_micros() as u64);
        let mut out = Effects::new();
        let mut sent_at: HashMap<RequestId, Instant> = HashMap::new();
        let mut latency = Histogram::<u64>::new(3).expect("histogram");
        let mut next_seq = 0u64;
        let mut last_tick = Instant::now();
        let mut messages = 0u64;
        let mut signed = self.sign_pool();
        let mut pool_ran_out = false;
        self.shared.ready.fetch_add(1, Ordering::SeqCst);
        while !self.shared.stop.load(Ordering::Relaxed) {
            while sent_at.len() < self.outstanding {
                let (id, input) = if self.signed_pool == 0 {
                    next_seq += 1;
                    let id = RequestId {
                        client: client_of(me.index()),
                        seq: next_seq,
                    };
                    let kind = RequestKind::Write(self.op.clone());
                    (id, Input::Request(Request { id, kind }))
                } else if let Some(r) = signed.next() {
                    // The client's message to this validator, its gateway.
                    let from = NodeId(u32::MAX);
                    let msg = Message::Request(r.clone());
                    (r.id, Input::Message { from, msg })
                } else {
                    pool_ran_out = true;
                    break;
                };
                sent_at.insert(id, Instant::now());
                self.pbft.step(now(), input, &mut out);
            }
            match self.rx.recv_timeout(Duration::from_millis(1)) {
                Ok(Cmd::Msg(from, msg)) => {
                    self.pbft
                        .step(now(), Input::Message { from, msg }, &mut out)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= Duration::from_millis(1) {
                last_tick = Instant::now();
                self.pbft.step(now(), Input::Tick, &mut out);
            }
            let mut persisted = None;
            for e in out.drain() {
                match e {
                    Effect::Send { to, msg } => {
                        messages += 1;
                        let _ = self.peers[to.index()].send(Cmd::Msg(me, msg));
                    }
                    Effect::Persist { seq, .. } => persisted = Some(seq),
                    Effect::Commit(c) => {
                        if let ekmat_core::CommittedEntry::Command { id, .. } = c.entry
                            && let Some(at) = sent_at.remove(&id)
                            && self.shared.measuring.load(Ordering::Relaxed)
                        {
                            let _ = latency.record(at.elapsed().as_micros() as u64);
                        }
                        if me.0 == 0 {
                            self.shared.executed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(seq) = persisted {
                self.pbft.step(now(), Input::Persisted { seq }, &mut out);
            }
        }
        let k = self.pbft.keyring();
        ThreadResult {
            latency,
            verified: k.verified,
            cache_hits: k.cache_hits,
            messages,
            batches: self.pbft.last_executed(),
            pool_ran_out,
        }
    }

    /// The client's requests, signed ahead (a real client signs on its own machine).
    fn sign_pool(&self) -> std::vec::IntoIter<ekmat_pbft::message::ClientRequest> {
        let key = client_key(self.pbft.id().index());
        let client = client_of(self.pbft.id().index());
        let cluster = self.pbft.cluster_id();
        (1..=self.signed_pool as u64)
            .map(|seq| {
                let id = RequestId { client, seq };
                ekmat_pbft::client::sign_request(&key, &cluster, id, Some(self.op.clone()))
            })
            .collect::<Vec<_>>()
            .into_iter()
    }
}
