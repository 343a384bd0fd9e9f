//! The `ekmat` command line.

mod scenario;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ekmat",
    version,
    about = "Consensus protocols, proved in a deterministic simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a protocol in the deterministic simulator under faults, over many seeds.
    Sim(sim::SimArgs),
}

/// Exit codes other tools rely on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const VIOLATION: u8 = 1;
    pub const USAGE: u8 = 2;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Sim(args) => sim::run(args),
    };
    ExitCode::from(code)
}
