//! The `ekmat` command line.

mod bench;
mod bench_open;
mod bench_pbft;
mod client;
mod demo;
mod etcd;
mod gateway;
mod kv_cmd;
mod node_cmd;
mod pbft_cmd;
mod readmit_cmd;
mod restore_cmd;
mod scenario;
mod signed_client;
mod sim;
mod status_cmd;
mod up;
mod up_tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's malloc: with a store that compacts, PBFT members under
/// load spent a tenth of their CPU in glibc's `_int_malloc`, and with jemalloc
/// acknowledged 3-11% more puts at 4-10% less CPU each; Raft's puts rose 26-30% (README,
/// "Speed"; docs/pbft.md, "jemalloc").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "ekmat",
    version,
    about = "Consensus protocols, proved in a deterministic simulator and run as a real cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local cluster of real processes and keep it running until Ctrl-C.
    Up(up::UpArgs),
    /// Run one cluster member from a configuration file.
    Node(node_cmd::NodeArgs),
    /// Seed a new member's data directory from a backup (`etcdctl snapshot save`'s file,
    /// from ekmat or etcd 3.4), as `etcdctl snapshot restore` does for etcd.
    Restore(restore_cmd::RestoreArgs),
    /// Read and write keys (etcdctl-compatible output).
    Kv(kv_cmd::KvArgs),
    /// Show each member's leader, term, indexes and lag.
    Status(status_cmd::StatusArgs),
    /// Run a protocol in the deterministic simulator under faults, over many seeds.
    Sim(sim::SimArgs),
    /// Measure a cluster under load (optionally beside a local etcd).
    Bench(bench::BenchArgs),
    /// Demonstrations on a real cluster: `leader-election`.
    Demo(demo::DemoArgs),
    /// PBFT client tools: `verify` a committed batch's certificate; `client-key`, and
    /// `put`/`get`/`del` as a client that signs its requests.
    Pbft(pbft_cmd::PbftArgs),
    /// PBFT's Gateway as a process of its own: etcd's KV API for etcd clients, each
    /// request signed and believed on f+1 matching results from the members.
    Gateway(gateway::GatewayArgs),
}

/// Exit codes other tools rely on.
pub mod exit {
    pub const OK: u8 = 0;
    /// A violation was found, or a command failed.
    pub const VIOLATION: u8 = 1;
    pub const USAGE: u8 = 2;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Node(args) => node_cmd::run(args),
        Command::Restore(args) => restore_cmd::run(args),
        Command::Kv(args) => kv_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Pbft(args) => pbft_cmd::run(args),
        Command::Gateway(args) => gateway::run(args),
    };
    ExitCode::from(code)
}
