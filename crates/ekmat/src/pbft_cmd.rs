//! `ekmat pbft verify`: check a committed batch's certificate (served by any PBFT member
//! at `/pbft/certificate/{seq|latest}` on its metrics port) with the validators' public
//! keys alone, as a client that takes no member's word would.
//!
//! `ekmat pbft client-key`, `put`, `get`, `del`: the Client role (`signed_client.rs`), a
//! client that signs its own requests and believes f+1 matching results.
//!
//! `ekmat pbft readmit-vote`, `readmit`: re-admitting an excluded member
//! (`readmit_cmd.rs`).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ekmat_pbft::certificate::BatchCertificate;

use crate::exit;
use crate::signed_client::{self, SignedClientArgs};

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
    /// Generate a client's signing key into a new file (mode 0600) and print the
    /// `[[pbft_client]]` entries every member's configuration needs to register it.
    ClientKey {
        /// Where to write the secret key (refused if the file exists).
        #[arg(long)]
        out: PathBuf,
        /// The client id to register it under (not 0).
        #[arg(long)]
        id: u64,
        /// Register it under this many consecutive ids from `--id` (a gateway needs
        /// one per request in flight).
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Bind it to this user: while auth is on, its requests have the user's
        /// permissions (without: every right on keys).
        #[arg(long)]
        user: Option<String>,
    },
    /// Put a key as a registered client: the request is signed with the client's key,
    /// and the result believed once f+1 members return it alike.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        client: SignedClientArgs,
    },
    /// Read a key, ordered like a write, as a registered client.
    Get {
        key: String,
        #[command(flatten)]
        client: SignedClientArgs,
    },
    /// Delete a key as a registered client.
    Del {
        key: String,
        #[command(flatten)]
        client: SignedClientArgs,
    },
    /// Sign this member's vote to re-admit an excluded member (its operator's
    /// decision); f+1 members' votes re-admit it (`readmit`).
    ReadmitVote(crate::readmit_cmd::VoteArgs),
    /// Hand f+1 validators' votes to a member and wait until it re-admitted the
    /// excluded member (every correct member does, at the same sequence number).
    Readmit(crate::readmit_cmd::ReadmitArgs),
}

pub fn run(args: PbftArgs) -> u8 {
    match args.command {
        PbftCommand::Verify {
            certificate,
            config,
        } => verify(&certificate, &config),
        PbftCommand::ClientKey {
            out,
            id,
            count,
            user,
        } => client_key(&out, id, count, user.as_deref()),
        PbftCommand::Put { key, value, client } => {
            signed_client::run(client, signed_client::put(key, value))
        }
        PbftCommand::Get { key, client } => signed_client::run(client, signed_client::get(key)),
        PbftCommand::Del { key, client } => signed_client::run(client, signed_client::del(key)),
        PbftCommand::ReadmitVote(args) => crate::readmit_cmd::run_vote(args),
        PbftCommand::Readmit(args) => crate::readmit_cmd::run_readmit(args),
    }
}

fn client_key(out: &Path, id: u64, count: u64, user: Option<&str>) -> u8 {
    if user == Some("") {
        eprintln!("error: --user is empty; leave it out for a client with every right on keys");
        return exit::USAGE;
    }
    let Some(last) = count.checked_sub(1).and_then(|c| id.checked_add(c)) else {
        eprintln!("error: --count must be at least 1, and --id plus it must fit in 64 bits");
        return exit::USAGE;
    };
    let reserved = [
        ekmat_pbft::client::ANONYMOUS_CLIENT,
        ekmat_pbft::EXCLUSION_CLIENT,
        ekmat_pbft::READMISSION_CLIENT,
    ];
    if let Some(r) = reserved.iter().find(|r| (id..=last).contains(r)) {
        eprintln!("error: client id {r} is reserved by the protocol: pick other ids");
        return exit::USAGE;
    }
    match ekmat_node::keys::generate_at(out) {
        Ok(key) => {
            let public = ekmat_node::keys::public_key_hex(&key.verifying_key());
            eprintln!(
                "wrote the secret key of client(s) {id}..={last} to {}; register it in every member's configuration:",
                out.display()
            );
            for id in id..=last {
                let entry = ekmat_node::config::PbftClient {
                    id,
                    public_key: public.clone(),
                    user: user.map(String::from),
                };
                print!("{}", entry.to_toml_entry());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
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
                "certificate holds: sequence {} committed in view {} (batch {}, {} bundles, agreed clock {} ms), COMMIT signed by {} of {} validators",
                b.seq,
                b.view,
                cert.digest,
                b.bundles,
                b.clock_ms,
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
