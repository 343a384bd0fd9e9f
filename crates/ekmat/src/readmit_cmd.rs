//! `ekmat pbft readmit-vote` and `ekmat pbft readmit`: re-admitting a member PBFT
//! excluded on proof of misbehaviour. Each validator's operator decides alone and signs
//! a vote with that member's key (`readmit-vote`, on the member's host: the key stays
//! in its data directory); anyone then hands f+1 votes of distinct validators, other
//! than the excluded member, to a member (`readmit`), and every correct member
//! re-admits it at the same sequence number once the request is ordered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use ekmat_api::ekmatpb::{self, exclusions_client::ExclusionsClient};
use ekmat_core::NodeId;
use ekmat_node::NodeConfig;
use ekmat_pbft::message::Signed;
use ekmat_pbft::readmission::{Readmission, ReadmitVote, vote};
use tonic::transport::{Channel, Endpoint};

use crate::exit;

#[derive(Args, Debug)]
pub struct VoteArgs {
    /// The excluded member's id.
    pub member: u32,
    /// This member's configuration: the vote is signed with its key, from its data
    /// directory.
    #[arg(long)]
    pub config: PathBuf,
    /// The sequence number that excluded it (default: asked of this member).
    #[arg(long)]
    pub excluded_at: Option<u64>,
    /// Where to write the vote (default: stdout), one line of hex.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReadmitArgs {
    /// Vote files, as `ekmat pbft readmit-vote` wrote them: f+1 of distinct validators.
    #[arg(required = true)]
    pub votes: Vec<PathBuf>,
    /// A member's configuration: the validators' public keys, and the member the
    /// votes are handed to.
    #[arg(long)]
    pub config: PathBuf,
    /// How long to wait for the re-admission to be executed there.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

pub fn run_vote(args: VoteArgs) -> u8 {
    report(block_on(sign_vote(&args)))
}

pub fn run_readmit(args: ReadmitArgs) -> u8 {
    report(block_on(readmit(&args)))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(f)
}

/// Usage errors exit 2; a re-admission not seen executed in time, 1.
enum Failure {
    Usage(String),
    NotExecuted(String),
}

fn report(result: Result<(), Failure>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(Failure::NotExecuted(e)) => {
            eprintln!("error: {e}");
            exit::VIOLATION
        }
    }
}

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::Usage(e.to_string())
}

fn load(config: &Path) -> Result<NodeConfig, Failure> {
    let cfg = NodeConfig::load(config).map_err(|e| usage(format!("{}: {e}", config.display())))?;
    if cfg.protocol != "pbft" {
        return Err(usage(format!(
            "{}: protocol {} excludes no member (only pbft does)",
            config.display(),
            cfg.protocol
        )));
    }
    Ok(cfg)
}

async fn connect(cfg: &NodeConfig) -> Result<ExclusionsClient<Channel>, Failure> {
    let url = format!("http://{}", cfg.me().client);
    let channel = Endpoint::from_shared(url.clone())
        .map_err(usage)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| usage(format!("cannot reach member {} at {url}: {e}", cfg.id)))?;
    Ok(ExclusionsClient::new(channel))
}

async fn list(
    client: &mut ExclusionsClient<Channel>,
) -> Result<ekmatpb::ExclusionsResponse, Failure> {
    client
        .list(ekmatpb::ListExclusionsRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| usage(s.message()))
}

async fn sign_vote(args: &VoteArgs) -> Result<(), Failure> {
    let cfg = load(&args.config)?;
    if args.member == cfg.id {
        return Err(usage("a member cannot vote to re-admit itself"));
    }
    let key_file = ekmat_node::keys::key_path(&cfg.data_dir);
    let key = ekmat_node::keys::load_at(&key_file).map_err(usage)?;
    let validators = cfg.public_keys().map_err(usage)?;
    if validators.get(cfg.id as usize) != Some(&key.verifying_key()) {
        return Err(usage(format!(
            "the key in {} is not member {}'s in the configuration",
            key_file.display(),
            cfg.id
        )));
    }
    let excluded_at = match args.excluded_at {
        Some(seq) => seq,
        None => {
            let now = list(&mut connect(&cfg).await?).await?;
            let found = now
                .excluded
                .iter()
                .find(|d| d.member == u64::from(args.member));
            found.map(|d| d.seq).ok_or_else(|| {
                usage(format!(
                    "member {} is not excluded at member {} (give --excluded-at to vote anyway)",
                    args.member, cfg.id
                ))
            })?
        }
    };
    let body = ReadmitVote {
        cluster: ekmat_pbft::client::cluster_id(&validators),
        convict: NodeId(args.member),
        excluded_at,
    };
    let signed = vote(&key, NodeId(cfg.id), body);
    let line = ekmat_node::keys::to_hex(&postcard::to_stdvec(&signed).expect("a vote encodes"));
    match &args.out {
        Some(path) => std::fs::write(path, format!("{line}\n"))
            .map_err(|e| usage(format!("cannot write {}: {e}", path.display())))?,
        None => println!("{line}"),
    }
    eprintln!(
        "member {} votes to re-admit member {}, excluded at sequence {excluded_at}",
        cfg.id, args.member
    );
    Ok(())
}

fn read_vote(path: &Path) -> Result<Signed<ReadmitVote>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let bytes = hex::decode(text.trim())
        .map_err(|e| usage(format!("{}: not a vote ({e})", path.display())))?;
    postcard::from_bytes(&bytes).map_err(|e| usage(format!("{}: not a vote ({e})", path.display())))
}

async fn readmit(args: &ReadmitArgs) -> Result<(), Failure> {
    let cfg = load(&args.config)?;
    let votes = args
        .votes
        .iter()
        .map(|p| read_vote(p))
        .collect::<Result<Vec<_>, _>>()?;
    // Checked here first, so a mistake is named before anything is sent.
    let validators = cfg.public_keys().map_err(usage)?;
    let f = (validators.len() - 1) / 3;
    let cluster = ekmat_pbft::client::cluster_id(&validators);
    let target = Readmission {
        votes: votes.clone(),
    }
    .verify(&validators, &cluster, f)
    .map_err(|e| usage(format!("the votes do not re-admit anyone: {e}")))?;
    let member = u64::from(target.convict.0);
    let mut client = connect(&cfg).await?;
    let encoded = votes
        .iter()
        .map(|v| postcard::to_stdvec(v).expect("a vote encodes"))
        .collect();
    client
        .readmit(ekmatpb::ReadmitRequest { votes: encoded })
        .await
        .map_err(|s| usage(s.message()))?;
    let started = Instant::now();
    loop {
        let now = list(&mut client).await?;
        let readmitted = now.readmitted.iter().find(|d| d.member == member);
        let excluded = now.excluded.iter().any(|d| d.member == member);
        if let (Some(d), false) = (readmitted, excluded) {
            println!(
                "member {member} re-admitted at sequence {} (as member {} executed it)",
                d.seq, now.answered_by
            );
            return Ok(());
        }
        if started.elapsed() > args.timeout {
            return Err(Failure::NotExecuted(format!(
                "member {} did not execute the re-admission of member {member} within {:?}",
                now.answered_by, args.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
