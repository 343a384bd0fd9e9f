//! `ekmat sim`: run a protocol in the deterministic simulator.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use ekmat_raft::{Mutant, ReadMode};
use ekmat_sim::SimProtocol;
use ekmat_sim::protocols::{Adversary, PbftSim, RaftSim};
use ekmat_sim::run::{DEFAULT_SEEDS, SeedReport, SimOptions, Summary, run_seed, run_seeds};
use ekmat_sim::shrink::shrink;
use ekmat_sim::{FaultKind, Schedule};
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit;

const DEFAULT_OPS: usize = 2000;
const DEFAULT_CLIENTS: usize = 10;
const DEFAULT_KEYS: u64 = 5;

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Protocol to simulate.
    #[arg(long, default_value = "raft", value_parser = ["raft", "pbft"])]
    pub protocol: String,
    /// Cluster size.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Number of seeds to run.
    #[arg(long, conflicts_with = "seed")]
    pub seeds: Option<u64>,
    /// Run exactly this seed (and print its details).
    #[arg(long)]
    pub seed: Option<u64>,
    /// First seed of a multi-seed run.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Faults to inject: `all`, `none`, or a comma-separated list of partition, bridge,
    /// asymmetric, loss, duplicate, reorder, clog, crash, pause, transfer, clock — and
    /// membership (churn with two spare nodes), which `all` leaves out: `all,membership`.
    #[arg(long, default_value = "all")]
    pub faults: String,
    /// Plant a known bug (`list` shows them); the simulator must catch it.
    #[arg(long)]
    pub mutant: Option<String>,
    /// Run a named scripted scenario (`list` shows them).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Client operations per seed.
    #[arg(long, default_value_t = DEFAULT_OPS)]
    pub ops: usize,
    /// Concurrent simulated clients.
    #[arg(long, default_value_t = DEFAULT_CLIENTS)]
    pub clients: usize,
    /// Distinct keys the clients use.
    #[arg(long, default_value_t = DEFAULT_KEYS)]
    pub keys: u64,
    /// Replay this fault schedule instead of drawing one from the seed
    /// (as printed by a failing run, e.g. '@1200ms+800ms crash(leader); ...').
    #[arg(long)]
    pub schedule: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print every event of the run (with --seed).
    #[arg(long)]
    pub trace: bool,
    /// Reduce a failing run's fault schedule to a minimal one that still fails.
    #[arg(long)]
    pub shrink: bool,
    /// Keep running seeds after a violation is found.
    #[arg(long)]
    pub keep_going: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Turn pre-vote off.
    #[arg(long)]
    pub no_pre_vote: bool,
    /// Turn check-quorum off.
    #[arg(long)]
    pub no_check_quorum: bool,
    /// PBFT: how many replicas are Byzantine. With fewer than 3f+1 nodes, quorums are
    /// n - f (the most a protocol can wait for), to show why 3f+1 are needed.
    #[arg(long, default_value_t = 0)]
    pub byzantine: usize,
    /// PBFT: what Byzantine replicas do: `all` (one drawn per node per seed) or a
    /// comma-separated list of equivocate, equivocate-backup, silent, forge, corrupt,
    /// replay, mutate, starve, forge-new-view, twins, forge-snapshot, forge-request.
    #[arg(long, default_value = "all")]
    pub adversary: String,
    /// How Raft confirms reads: `read-index` or `lease` (default: lease on half the
    /// seeds, drawn from the seed and printed with the derived options).
    #[arg(long, value_parser = ["read-index", "lease"])]
    pub read_mode: Option<String>,
}

fn usage_error(msg: &str) -> u8 {
    eprintln!("error: {msg}");
    exit::USAGE
}

pub fn run(args: SimArgs) -> u8 {
    if args.scenario.as_deref() == Some("list") {
        return crate::scenario::list();
    }
    if let Some(name) = &args.scenario {
        return crate::scenario::run(name, args.json);
    }
    if args.mutant.as_deref() == Some("list") {
        if args.protocol == "pbft" {
            ekmat_pbft::Mutant::ALL
                .iter()
                .for_each(|m| println!("{}", m.name()));
        } else {
            Mutant::ALL.iter().for_each(|m| println!("{}", m.name()));
        }
        return exit::OK;
    }
    if args.protocol == "pbft" {
        return match build_pbft(&args) {
            Ok((proto, opts)) => dispatch(&args, &proto, &opts),
            Err(e) => usage_error(&e),
        };
    }
    let (proto, opts) = match build(&args) {
        Ok(x) => x,
        Err(e) => return usage_error(&e),
    };
    dispatch(&args, &proto, &opts)
}

fn dispatch<P: SimProtocol>(args: &SimArgs, proto: &P, opts: &SimOptions) -> u8 {
    match args.seed {
        Some(seed) => run_one(args, proto, opts, seed),
        None => run_many(args, proto, opts),
    }
}

/// PBFT's options. Faults that PBFT has no use for (leadership transfer, membership
/// churn) are left out of `all`.
fn build_pbft(args: &SimArgs) -> Result<(PbftSim, SimOptions), String> {
    let mutant = match &args.mutant {
        None => ekmat_pbft::Mutant::None,
        Some(name) => ekmat_pbft::Mutant::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = ekmat_pbft::Mutant::ALL.iter().map(|m| m.name()).collect();
            format!("unknown pbft mutant '{name}' (known: {})", known.join(", "))
        })?,
    };
    if args.byzantine >= args.nodes {
        return Err("--byzantine must be smaller than --nodes".into());
    }
    let faults = pbft_faults(&args.faults)?;
    let opts = sim_options(args, faults)?;
    // n = 3f+1 tolerates f; below that, wait for n - f (no more can be waited for).
    let quorum = (args.nodes < 3 * args.byzantine + 1).then(|| args.nodes - args.byzantine);
    let proto = PbftSim {
        nodes: args.nodes,
        mutant,
        byzantine: args.byzantine,
        adversaries: Adversary::parse_list(&args.adversary)?,
        byzantine_until: opts.safety,
        quorum,
        ..PbftSim::default()
    };
    Ok((proto, opts))
}

/// The faults a PBFT run injects. `all` means every fault PBFT can meet; naming
/// leadership transfer or membership churn, which PBFT's fixed membership and rotating
/// primary have no counterpart for, is an error rather than a fault silently not injected.
fn pbft_faults(list: &str) -> Result<Vec<FaultKind>, String> {
    let unsupported = [FaultKind::Transfer, FaultKind::Membership];
    for word in list.split(',').map(str::trim) {
        if let Some(k) = unsupported.iter().find(|k| k.name() == word) {
            return Err(format!(
                "--faults {word}: PBFT has no {} (its membership is fixed and its primary changes only by view change); \
                 use `all` or a list without {}",
                match k {
                    FaultKind::Transfer => "leadership transfer",
                    _ => "membership changes",
                },
                k.name()
            ));
        }
    }
    Ok(FaultKind::parse_list(list)?
        .into_iter()
        .filter(|k| !unsupported.contains(k))
        .collect())
}

/// The run's options, whatever the protocol, from the flags and the faults it uses.
fn sim_options(args: &SimArgs, faults: Vec<FaultKind>) -> Result<SimOptions, String> {
    if args.trace && args.seed.is_none() {
        return Err("--trace shows one run: give it a --seed".into());
    }
    if args.seeds == Some(0) {
        return Err("--seeds must be at least 1".into());
    }
    let schedule = match &args.schedule {
        None => None,
        Some(text) => Some(
            text.parse::<Schedule>()
                .map_err(|e| format!("bad --schedule: {e}"))?,
        ),
    };
    let opts = SimOptions {
        nodes: args.nodes,
        faults,
        ops: args.ops,
        clients: args.clients,
        keys: args.keys,
        schedule,
        trace: args.trace,
        ..SimOptions::default()
    };
    opts.validate()?;
    Ok(opts)
}

fn build(args: &SimArgs) -> Result<(RaftSim, SimOptions), String> {
    let mutant = match &args.mutant {
        None => Mutant::None,
        Some(name) => Mutant::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mutant '{name}' (known: {})", known.join(", "))
        })?,
    };
    let opts = sim_options(args, FaultKind::parse_list(&args.faults)?)?;
    if mutant == Mutant::ConfigBeforeJoint && !opts.faults.contains(&FaultKind::Membership) {
        return Err(
            "the config-before-joint mutant only shows under membership churn: add --faults membership (or all,membership)"
                .into(),
        );
    }
    let read_mode = args
        .read_mode
        .as_deref()
        .map(|m| ReadMode::from_name(m).expect("clap allows only the names of read modes"));
    if read_mode == Some(ReadMode::Lease) && args.no_check_quorum {
        return Err("--read-mode lease needs check-quorum (drop --no-check-quorum)".into());
    }
    let proto = RaftSim {
        mutant,
        pre_vote: !args.no_pre_vote,
        check_quorum: !args.no_check_quorum,
        read_mode,
        ..RaftSim::default()
    };
    Ok((proto, opts))
}

/// The command line that reproduces `seed` (with `schedule` if it was shrunk).
fn replay_command(args: &SimArgs, seed: u64, schedule: Option<&Schedule>) -> String {
    let mut cmd = format!(
        "ekmat sim --protocol {} --nodes {} --seed {seed}",
        args.protocol, args.nodes
    );
    if args.faults != "all" {
        cmd.push_str(&format!(" --faults {}", args.faults));
    }
    if args.protocol == "pbft" && args.byzantine > 0 {
        cmd.push_str(&format!(
            " --byzantine {} --adversary {}",
            args.byzantine, args.adversary
        ));
    }
    if let Some(m) = &args.mutant {
        cmd.push_str(&format!(" --mutant {m}"));
    }
    if args.ops != DEFAULT_OPS {
        cmd.push_str(&format!(" --ops {}", args.ops));
    }
    if args.clients != DEFAULT_CLIENTS {
        cmd.push_str(&format!(" --clients {}", args.clients));
    }
    if args.keys != DEFAULT_KEYS {
        cmd.push_str(&format!(" --keys {}", args.keys));
    }
    if args.no_pre_vote {
        cmd.push_str(" --no-pre-vote");
    }
    if args.no_check_quorum {
        cmd.push_str(" --no-check-quorum");
    }
    if let Some(m) = &args.read_mode {
        cmd.push_str(&format!(" --read-mode {m}"));
    }
    if let Some(s) = schedule
        .map(ToString::to_string)
        .or_else(|| args.schedule.clone())
    {
        cmd.push_str(&format!(" --schedule '{s}'"));
    }
    cmd
}

fn run_one<P: SimProtocol>(args: &SimArgs, proto: &P, opts: &SimOptions, seed: u64) -> u8 {
    let report = run_seed(proto, opts, seed);
    if args.trace && !args.json {
        for line in &report.trace {
            println!("{line}");
        }
    }
    let mut summary = Summary::default();
    summary.add(&report);
    summary.wall_seconds = (report.sim_wall_us + report.check_wall_us) as f64 / 1e6;
    if !args.json {
        println!("seed {seed}: {}", report.derived);
        println!(
            "schedule ({} faults): {}",
            report.schedule.len(),
            report.schedule
        );
    }
    finish(args, proto, opts, summary)
}

fn run_many<P: SimProtocol>(args: &SimArgs, proto: &P, opts: &SimOptions) -> u8 {
    let count = args.seeds.unwrap_or(DEFAULT_SEEDS);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = if args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} seeds  {msg}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let failures = std::sync::atomic::AtomicU64::new(0);
    let progress = |r: &SeedReport| {
        if r.violation.is_some() {
            let n = failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            bar.set_message(format!("{n} violation(s)"));
        }
        bar.inc(1);
    };
    let summary = run_seeds(
        proto,
        opts,
        args.first_seed,
        count,
        threads,
        !args.keep_going,
        &progress,
    );
    bar.finish_and_clear();
    finish(args, proto, opts, summary)
}

fn finish<P: SimProtocol>(args: &SimArgs, proto: &P, opts: &SimOptions, summary: Summary) -> u8 {
    let failure = summary.first_failure.clone();
    let mut shrunk = None;
    if let (Some(f), true) = (&failure, args.shrink) {
        let property = f.violation.as_ref().map_or("", |v| v.property);
        if !args.json {
            eprintln!(
                "shrinking the {}-fault schedule of seed {}...",
                f.schedule.len(),
                f.seed
            );
        }
        let (schedule, report) = shrink(proto, opts, f.seed, &f.schedule, property, &|_, _| {});
        shrunk = Some((schedule, report));
    }
    let replay = failure
        .as_ref()
        .map(|f| replay_command(args, f.seed, shrunk.as_ref().map(|(s, _)| s)));
    if args.json {
        print_json(
            args,
            &summary,
            replay.as_deref(),
            shrunk.as_ref().map(|(s, _)| s),
        );
    } else {
        print_table(args, &summary);
        if let Some(f) = &failure {
            print_failure(f, replay.as_deref().unwrap_or_default(), shrunk.as_ref());
        }
    }
    if summary.violations > 0 {
        exit::VIOLATION
    } else {
        exit::OK
    }
}

fn print_table(args: &SimArgs, s: &Summary) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["", "value"]);
    let mutant = args.mutant.clone().unwrap_or_else(|| "none".into());
    let rows: Vec<(&str, String)> = vec![
        (
            "protocol",
            format!("{} ({} nodes, mutant: {mutant})", args.protocol, args.nodes),
        ),
        ("faults", args.faults.clone()),
        ("seeds", s.seeds.to_string()),
        (
            "client operations",
            format!(
                "{} (ok {}, failed {}, unknown {})",
                s.ops, s.ok, s.failed, s.unknown
            ),
        ),
        (
            "elections (views installed, for pbft)",
            s.elections.to_string(),
        ),
        ("evidence of misbehaviour", s.evidence.to_string()),
        ("exclusions applied (per replica)", s.exclusions.to_string()),
        (
            "re-admissions applied (per replica)",
            s.readmissions.to_string(),
        ),
        ("configurations committed", s.reconfigurations.to_string()),
        (
            "faults injected",
            format!("{} ({} crashes)", s.faults, s.crashes),
        ),
        ("messages", s.messages.to_string()),
        (
            "snapshots",
            format!(
                "{} taken, {} restored (installs and restarts)",
                s.snapshots_taken, s.snapshots_restored
            ),
        ),
        ("simulated time", format!("{:.0} s", s.sim_seconds)),
        ("violations", violations_cell(s)),
        (
            "linearizability unknown",
            format!("{} (search budget ran out)", s.linearizability_unknown),
        ),
        (
            "simulated events/s",
            format!(
                "{:.0} ({} events in {:.1} s wall)",
                s.events_per_second(),
                s.events,
                s.wall_seconds
            ),
        ),
        (
            "wall time split",
            format!(
                "simulate {:.1} s, check {:.1} s (summed over threads)",
                s.sim_wall_seconds, s.check_wall_seconds
            ),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
}

fn violations_cell(s: &Summary) -> String {
    if s.violations == 0 {
        return "0".into();
    }
    let seeds: Vec<String> = s.failing_seeds.iter().map(ToString::to_string).collect();
    let more = if s.violations as usize > seeds.len() {
        ", ..."
    } else {
        ""
    };
    format!("{} (seeds {}{more})", s.violations, seeds.join(", "))
}

fn print_failure(f: &SeedReport, replay: &str, shrunk: Option<&(Schedule, SeedReport)>) {
    let v = f.violation.as_ref().expect("a failure has a violation");
    println!();
    println!("VIOLATION on seed {}: {v}", f.seed);
    println!("  derived options: {}", f.derived);
    println!("  schedule ({} faults): {}", f.schedule.len(), f.schedule);
    if let Some((s, r)) = shrunk {
        let still = r
            .violation
            .as_ref()
            .map_or("(none)".to_string(), ToString::to_string);
        println!("  shrunk to {} faults: {s}", s.len());
        println!("  which fails with: {still}");
    }
    println!("  replay: {replay}");
    println!("  add --trace to the replay to see every event");
}

fn print_json(args: &SimArgs, s: &Summary, replay: Option<&str>, shrunk: Option<&Schedule>) {
    let failure = s.first_failure.as_ref();
    let out = serde_json::json!({
        "protocol": args.protocol,
        "nodes": args.nodes,
        "mutant": args.mutant.clone().unwrap_or_else(|| "none".into()),
        "faults": args.faults,
        "seeds": s.seeds,
        "ops": s.ops,
        "ok": s.ok,
        "failed": s.failed,
        "unknown": s.unknown,
        "elections": s.elections,
        "view_changes": s.elections,
        "evidence": s.evidence,
        "exclusions": s.exclusions,
        "readmissions": s.readmissions,
        "byzantine": args.byzantine,
        "adversary": args.adversary,
        "faults_injected": s.faults,
        "crashes": s.crashes,
        "reconfigurations": s.reconfigurations,
        "snapshots_taken": s.snapshots_taken,
        "snapshots_restored": s.snapshots_restored,
        "messages": s.messages,
        "events": s.events,
        "sim_seconds": s.sim_seconds,
        "violations": s.violations,
        "failing_seeds": s.failing_seeds,
        "linearizability_unknown": s.linearizability_unknown,
        "first_failing_seed": failure.map(|f| f.seed),
        "violation": failure.and_then(|f| f.violation.clone()),
        "replay": replay,
        "shrunk_schedule": shrunk.map(ToString::to_string),
        "wall_seconds": s.wall_seconds,
        "events_per_second": s.events_per_second(),
    });
    println!("{out}");
}
