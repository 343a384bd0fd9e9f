//! `ekmat restore FILE --config ekmat.toml`: seed one new member from a backup, as
//! `etcdctl snapshot restore` prepares an etcd member's data directory. Run it for every
//! founding member, each with its own configuration and the same file, then start them
//! with `ekmat node`. (`ekmat up --restore` does both for a local cluster.)

use std::path::{Path, PathBuf};

use clap::Args;
use ekmat_node::NodeConfig;
use ekmat_node::backup::{Seed, plant, prepare};

use crate::exit;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A file `etcdctl snapshot save` wrote, from ekmat or from etcd 3.4.
    pub file: PathBuf,
    /// The new member's configuration: a founding member of a Raft or PBFT cluster
    /// whose data directory holds no log yet.
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(args: RestoreArgs) -> u8 {
    match restore(&args) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

fn restore(args: &RestoreArgs) -> Result<(), String> {
    let cfg = NodeConfig::load(&args.config).map_err(|e| e.to_string())?;
    let file = &args.file;
    let seed = prepare_file(&cfg, file)?;
    plant(&cfg, &seed).map_err(|e| format!("cannot restore {}: {e}", file.display()))?;
    let s = seed.summary;
    println!(
        "restored {} into {}: revision {}, {} versions, {} leases; start it with `ekmat node --config {}`",
        file.display(),
        cfg.data_dir.display(),
        s.revision,
        s.versions,
        s.leases,
        args.config.display()
    );
    Ok(())
}

/// Read the backup in `file` and make it ready to seed the founders of `cfg`'s cluster,
/// warning about what it holds that is not restored.
pub fn prepare_file(cfg: &NodeConfig, file: &Path) -> Result<Seed, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let seed =
        prepare(cfg, bytes).map_err(|e| format!("cannot restore {}: {e}", file.display()))?;
    if let Some(warning) = seed.warning() {
        eprintln!("warning: {warning}");
    }
    Ok(seed)
}
