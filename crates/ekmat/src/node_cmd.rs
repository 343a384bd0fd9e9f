//! `ekmat node --config FILE`: run one member of a cluster until SIGINT or SIGTERM.

use std::path::PathBuf;

use clap::Args;
use ekmat_node::NodeConfig;
use tokio::sync::watch;

use crate::exit;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's configuration (see examples/cluster/ in the repository).
    #[arg(long)]
    pub config: PathBuf,
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn run(args: NodeArgs) -> u8 {
    let cfg = match NodeConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    init_logging();
    // One thread: the runtime runs on this one, with no worker to hand tasks to.
    let mut builder = if cfg.runtime_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if cfg.runtime_threads > 1 {
        builder.worker_threads(cfg.runtime_threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::VIOLATION;
        }
    };
    let result = rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping");
            let _ = stop_tx.send(true);
        });
        ekmat_node::run(cfg, stop_rx).await
    });
    match result {
        Ok(()) => exit::OK,
        Err(e @ (ekmat_node::NodeError::Config(_) | ekmat_node::NodeError::Tls(_))) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::VIOLATION
        }
    }
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
