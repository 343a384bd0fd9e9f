//! `ekmat demo leader-election`: three workers compete for leadership through etcd's
//! Election service, Kubernetes style (seed 001): each holds a lease it renews, the
//! holder of the oldest campaign key leads, and a leader that dies stops renewing, so
//! its lease expires and the next worker in line takes over. The demo kills the leader
//! and shows the handover, with timestamps.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use ekmat_api::etcdserverpb as pb;
use ekmat_api::v3electionpb::{self as el, election_client::ElectionClient};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::client::{Dialer, TlsArgs, status_message};
use crate::exit;
use crate::up::{LocalCluster, UpArgs};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(subcommand)]
    demo: Demo,
}

#[derive(Subcommand, Debug)]
enum Demo {
    /// Three workers campaign for leadership with leases; the leader is killed (it stops
    /// renewing, without resigning) and the next worker takes over once its lease
    /// expires. Seed 001's Kubernetes-style timings are lease 15s, renew every 10s,
    /// retry every 2s (`--lease 15s --renew 10s --retry 2s`); the defaults are shorter
    /// so the demo ends in seconds.
    LeaderElection(LeaderElectionArgs),
}

#[derive(Args, Debug)]
pub struct LeaderElectionArgs {
    /// How long a worker's lease lasts without renewal: how soon a dead leader is
    /// replaced (seed 001: 15s). Whole seconds; the cluster may raise it to its minimum.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How often a worker renews its lease (seed 001: 10s). Must be shorter than --lease.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    renew: Duration,
    /// How long a worker waits before campaigning again after a failed attempt (seed
    /// 001: 2s).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    retry: Duration,
    /// How long the first leader leads before it is killed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lead_for: Duration,
    /// The election's name (its campaign keys live under NAME/).
    #[arg(long, default_value = "ekmat-demo-leader")]
    election: String,
    /// Use this cluster (etcdctl's form, host:port,...) instead of starting a local one.
    #[arg(long)]
    endpoints: Option<String>,
    /// Client port of the local cluster's first member (peers at +100, metrics at +200).
    #[arg(long, default_value_t = 24_379)]
    base_port: u16,
    #[command(flatten)]
    tls: TlsArgs,
}

const WORKERS: usize = 3;

pub fn run(args: DemoArgs) -> u8 {
    let Demo::LeaderElection(args) = args.demo;
    let timings = match Timings::check(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let dialer = match Dialer::from_args(&args.tls) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let endpoints = match args
        .endpoints
        .as_deref()
        .map(|e| dialer.endpoints(e))
        .transpose()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: --endpoints: {e}");
            return exit::USAGE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::VIOLATION;
        }
    };
    let clock = Clock::new();
    match rt.block_on(leader_election(&args, timings, endpoints, &dialer, &clock)) {
        Ok(()) => exit::OK,
        Err(e) => {
            clock.say(&format!("error: {e}"));
            exit::VIOLATION
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Timings {
    /// The lease TTL asked for, in whole seconds.
    ttl: i64,
    renew: Duration,
    retry: Duration,
    lead_for: Duration,
}

impl Timings {
    fn check(args: &LeaderElectionArgs) -> Result<Timings, String> {
        let secs = args.lease.as_secs();
        if secs == 0 || args.lease.subsec_nanos() != 0 {
            return Err(format!(
                "--lease {} must be a whole number of seconds, at least 1s (leases have \
                 whole-second TTLs)",
                humantime::format_duration(args.lease)
            ));
        }
        if args.renew.is_zero() || args.renew >= args.lease {
            return Err(format!(
                "--renew {} must be above zero and shorter than --lease {}, or the lease \
                 expires between renewals",
                humantime::format_duration(args.renew),
                humantime::format_duration(args.lease)
            ));
        }
        if args.retry.is_zero() {
            return Err("--retry must be above zero".into());
        }
        if args.election.is_empty() {
            return Err("--election must not be empty".into());
        }
        let ttl = i64::try_from(secs).map_err(|_| "--lease is too long".to_string())?;
        Ok(Timings {
            ttl,
            renew: args.renew,
            retry: args.retry,
            lead_for: args.lead_for,
        })
    }
}

/// Timestamps for the demo's lines: wall-clock UTC and time since the start. Workers
/// print their own lines, so each is stamped when it happens.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            started: Instant::now(),
        }
    }

    fn say(&self, line: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, ms) = (now.as_secs(), now.subsec_millis());
        let elapsed = self.started.elapsed().as_secs_f64();
        println!(
            "{:02}:{:02}:{:02}.{ms:03} UTC (+{elapsed:6.3}s) {line}",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60
        );
    }
}

/// A worker was elected (it has printed so).
struct Elected {
    worker: usize,
}

async fn leader_election(
    args: &LeaderElectionArgs,
    t: Timings,
    endpoints: Option<Vec<String>>,
    dialer: &Dialer,
    clock: &Clock,
) -> Result<(), String> {
    clock.say(&format!(
        "{WORKERS} workers campaign for \"{}\": lease {}s, renew every {}, retry every {} \
         (seed 001: 15s / 10s / 2s)",
        args.election,
        t.ttl,
        humantime::format_duration(t.renew),
        humantime::format_duration(t.retry)
    ));
    let (mut cluster, data) = match endpoints {
        Some(_) => (None, None),
        None => {
            let data = std::env::temp_dir().join(format!("ekmat-demo-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&data);
            clock.say(&format!(
                "starting a local 3-node cluster (data in {})",
                data.display()
            ));
            let up = UpArgs {
                nodes: 3,
                protocol: "raft".into(),
                data_dir: Some(data.clone()),
                base_port: args.base_port,
                unsafe_no_fsync: false,
                restore: None,
                tls: false,
            };
            (Some(LocalCluster::start(&up, &data)?), Some(data))
        }
    };
    let result = async {
        let endpoints = match (&endpoints, &mut cluster) {
            (Some(e), _) => e.clone(),
            (None, Some(c)) => {
                let (leader, term) = c.wait_for_leader().await?;
                let eps: Vec<String> = c
                    .endpoints()
                    .iter()
                    .map(|e| format!("http://{e}"))
                    .collect();
                clock.say(&format!(
                    "cluster ready: leader n{leader} (term {term}), endpoints {}",
                    c.endpoints().join(",")
                ));
                eps
            }
            (None, None) => return Err("no cluster".to_string()),
        };
        compete(args, t, &endpoints, dialer, clock).await
    }
    .await;
    if let Some(mut c) = cluster {
        clock.say("stopping the local cluster");
        c.stop().await;
    }
    if let Some(data) = data {
        let _ = std::fs::remove_dir_all(data);
    }
    result
}

async fn compete(
    args: &LeaderElectionArgs,
    t: Timings,
    endpoints: &[String],
    dialer: &Dialer,
    clock: &Clock,
) -> Result<(), String> {
    let mut channels = Vec::new();
    for url in endpoints {
        let channel = dialer.connect_without_deadline(url).await;
        channels.push(channel.map_err(|e| format!("cannot connect to {url}: {e}"))?);
    }
    let (tx, mut reports) = mpsc::channel(64);
    // Each worker talks to its own member (round robin): any member serves elections.
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let ch = channels[w % channels.len()].clone();
            tokio::spawn(worker(w, ch, args.election.clone(), t, *clock, tx.clone()))
        })
        .collect();
    let observer = tokio::spawn(observe(channels[0].clone(), args.election.clone(), *clock));
    drop(tx);

    // Generous bounds, so a stuck demo fails rather than hangs.
    let patience = Duration::from_secs(t.ttl as u64 * 3 + 15);
    let first = next_leader(&mut reports, None, patience).await?;
    tokio::time::sleep(t.lead_for).await;
    clock.say(&format!(
        "killing worker-{first}, the leader: it stops renewing its lease and does not resign"
    ));
    workers[first].abort();
    let killed = Instant::now();
    let second = next_leader(&mut reports, Some(first), patience).await?;
    clock.say(&format!(
        "handover: worker-{second} took over from worker-{first} {:.1}s after worker-{first} \
         stopped renewing (lease {}s)",
        killed.elapsed().as_secs_f64(),
        t.ttl
    ));
    // Let the observer report the new leader, then stop. Only one worker may have
    // been told it leads (etcd 3.4, for one, has answered every waiting campaign here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Elected { worker }) = reports.try_recv() {
        clock.say(&format!(
            "warning: worker-{worker} was told it leads too: the server ended two campaigns"
        ));
    }
    for w in &workers {
        w.abort();
    }
    observer.abort();
    clock.say("done");
    Ok(())
}

/// Wait until a worker other than `not` is elected; that worker.
async fn next_leader(
    reports: &mut mpsc::Receiver<Elected>,
    not: Option<usize>,
    patience: Duration,
) -> Result<usize, String> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let elected = tokio::time::timeout_at(deadline, reports.recv())
            .await
            .map_err(|_| format!("no new leader within {patience:?}"))?
            .ok_or("every worker stopped")?;
        if Some(elected.worker) != not {
            return Ok(elected.worker);
        }
    }
}

/// One worker: campaign with a lease kept alive; on any failure, wait `retry` and
/// campaign again with a new lease.
async fn worker(
    w: usize,
    ch: Channel,
    election: String,
    t: Timings,
    clock: Clock,
    out: mpsc::Sender<Elected>,
) {
    loop {
        let err = attempt(w, ch.clone(), &election, t, clock, &out).await;
        clock.say(&format!(
            "worker-{w}: {err}; campaigning again in {}",
            humantime::format_duration(t.retry)
        ));
        if out.is_closed() {
            return;
        }
        tokio::time::sleep(t.retry).await;
    }
}

async fn attempt(
    w: usize,
    ch: Channel,
    election: &str,
    t: Timings,
    clock: Clock,
    out: &mpsc::Sender<Elected>,
) -> String {
    let mut leases = pb::lease_client::LeaseClient::new(ch.clone());
    let grant = leases.lease_grant(pb::LeaseGrantRequest { ttl: t.ttl, id: 0 });
    let lease = match grant.await {
        Ok(g) => g.into_inner(),
        Err(e) => return format!("lease grant failed: {}", status_message(&e)),
    };
    clock.say(&format!(
        "worker-{w}: lease {:x} granted (TTL {}s); campaigning",
        lease.id, lease.ttl
    ));
    let leading = std::sync::atomic::AtomicBool::new(false);
    let renewing = renew(w, leases, lease.id, t.renew, &leading, clock);
    let campaigning = async {
        let mut election_client = ElectionClient::new(ch);
        let req = el::CampaignRequest {
            name: election.as_bytes().to_vec(),
            lease: lease.id,
            value: format!("worker-{w}").into_bytes(),
        };
        match election_client.campaign(req).await {
            Ok(r) => {
                let leader = r.into_inner().leader.unwrap_or_default();
                leading.store(true, std::sync::atomic::Ordering::Relaxed);
                clock.say(&format!(
                    "worker-{w}: elected leader (key {}, create revision {})",
                    String::from_utf8_lossy(&leader.key),
                    leader.rev
                ));
                let _ = out.send(Elected { worker: w }).await;
                // Lead until the lease is lost (or the demo kills this worker).
                std::future::pending::<String>().await
            }
            Err(e) => format!("campaign failed: {}", status_message(&e)),
        }
    };
    tokio::select! {
        err = renewing => err,
        err = campaigning => err,
    }
}

/// Keep `lease` alive every `every`; returns why it stopped.
async fn renew(
    w: usize,
    mut leases: pb::lease_client::LeaseClient<Channel>,
    lease: i64,
    every: Duration,
    leading: &std::sync::atomic::AtomicBool,
    clock: Clock,
) -> String {
    let (tx, rx) = mpsc::channel(1);
    let mut answers = match leases.lease_keep_alive(ReceiverStream::new(rx)).await {
        Ok(a) => a.into_inner(),
        Err(e) => return format!("keep-alive failed: {}", status_message(&e)),
    };
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // the first tick is immediate; the lease was just granted
    loop {
        ticks.tick().await;
        if tx
            .send(pb::LeaseKeepAliveRequest { id: lease })
            .await
            .is_err()
        {
            return "keep-alive stream closed".into();
        }
        match answers.next().await {
            Some(Ok(a)) if a.ttl > 0 => {
                if leading.load(std::sync::atomic::Ordering::Relaxed) {
                    clock.say(&format!(
                        "worker-{w}: renewed its lease as leader (TTL {}s)",
                        a.ttl
                    ));
                }
            }
            Some(Ok(_)) => return format!("lease {lease:x} expired"),
            Some(Err(e)) => return format!("keep-alive failed: {}", status_message(&e)),
            None => return "keep-alive stream ended".into(),
        }
    }
}

/// Report every change of leader the Election service's Observe stream shows.
async fn observe(ch: Channel, election: String, clock: Clock) {
    let mut client = ElectionClient::new(ch);
    let req = el::LeaderRequest {
        name: election.into_bytes(),
    };
    let mut stream = match client.observe(req).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            clock.say(&format!("observer: {}", status_message(&e)));
            return;
        }
    };
    let mut last = Vec::new();
    while let Some(Ok(r)) = stream.next().await {
        let kv = r.kv.unwrap_or_default();
        if kv.key != last {
            clock.say(&format!(
                "observer: the leader is now {}",
                String::from_utf8_lossy(&kv.value)
            ));
            last = kv.key.to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(lease: &str, renew: &str) -> LeaderElectionArgs {
        LeaderElectionArgs {
            lease: humantime::parse_duration(lease).unwrap(),
            renew: humantime::parse_duration(renew).unwrap(),
            retry: Duration::from_secs(2),
            lead_for: Duration::from_secs(1),
            election: "e".into(),
            endpoints: None,
            base_port: 24_379,
            tls: TlsArgs::default(),
        }
    }

    #[test]
    fn the_seeds_timings_are_accepted_and_impossible_ones_refused() {
        assert_eq!(Timings::check(&args("15s", "10s")).unwrap().ttl, 15);
        assert!(Timings::check(&args("1500ms", "1s")).is_err());
        assert!(Timings::check(&args("0s", "1s")).is_err());
        assert!(Timings::check(&args("4s", "4s")).is_err());
        assert!(Timings::check(&args("4s", "0s")).is_err());
    }
}
