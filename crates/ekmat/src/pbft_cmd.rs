//! `ekmat pbft verify`: check a committed batch's certificate (served by any PBFT member
//! at `/pbft/certificate/{seq|latest}` on its metrics port) with the validators' public
//! keys alone, as a client that takes no member's word would.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ekmat_pbft::certificate::BatchCertificate;

use crate::exit;

#[derive(Args, Debug)]
pub struct PbftArgs {
    #[command(subcommand)]
    command: PbftCommand,
}

#[derive(Subcommand, Debug)]
enum PbftCommand {
    /// Check a batch certificate (JSON, from a file or `-` for stdin) against the
    /// public keys in a member's configuration; exit 1 if it does not hold.
    Verify {
        /// The certificate, as `/pbft/certificate/{seq}` serves it (`-`: stdin).
        certificate: PathBuf,
        /// A member's configuration file: its `[[member]]` public keys are the
        /// validators'.
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn run(args: PbftArgs) -> u8 {
    match args.command {
        PbftCommand::Verify {
            certificate,
            config,
        } => verify(&certificate, &config),
    }
}

fn verify(certificate: &Path, config: &Path) -> u8 {
    let keys = match ekmat_node::NodeConfig::load(config)
        .map_err(|e| e.to_string())
        .and_then(|c| c.public_keys())
    {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("error: {}: {e}", config.display());
            return exit::USAGE;
        }
    };
    let text = match read(certificate) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {}: {e}", certificate.display());
            return exit::USAGE;
        }
    };
    let cert: BatchCertificate = match serde_json::from_str(&text) {
        Ok(cert) => cert,
        Err(e) => {
            eprintln!("error: not a batch certificate: {e}");
            return exit::USAGE;
        }
    };
    match cert.verify(&keys) {
        Ok(b) => {
            let signers: Vec<String> = b.signers.iter().map(|n| n.to_string()).collect();
            println!(
                "certificate holds: sequence {} committed in view {} (batch {}, {} bundles), COMMIT signed by {} of {} validators",
                b.seq,
                b.view,
                cert.digest,
                b.bundles,
                signers.join(", "),
                keys.len()
            );
            exit::OK
        }
        Err(e) => {
            println!("certificate does NOT hold: {e}");
            exit::VIOLATION
        }
    }
}

fn read(path: &Path) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
    }
}
