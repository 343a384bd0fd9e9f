//! The Client role over a real PBFT cluster (`ekmat pbft put|get|del`): a party outside
//! consensus that signs its own requests with its key, so no member can write in its
//! name, and believes a result only when f+1 members return it alike (one of them is
//! correct) — PBFT's client rule — checking each member's commit proof with the
//! validators' public keys alone.
//!
//! It hands the request to one member (`Submit`) and asks every other member for the
//! outcome (`AwaitOutcome`); if no f+1 agree within half its patience, it hands the
//! request to every member, as a PBFT client retransmits to all when the primary is
//! slow (the members execute it once: the request keeps its number).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use ekmat_api::ekmatpb::{self, signed_requests_client::SignedRequestsClient};
use ekmat_kv::{Command, Envelope, KvError, Response};
use ekmat_node::NodeConfig;
use ekmat_pbft::message::ClientRequest;
use ekmat_pbft::{Client, CommitProof};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::client::{Dialer, TlsArgs, status_message};
use crate::exit;

#[derive(Args, Debug, Clone)]
pub struct SignedClientArgs {
    /// A member's configuration: the members' addresses and public keys, and the
    /// registered clients.
    #[arg(long)]
    pub config: PathBuf,
    /// This client's registered id (its `[[pbft_client]]` entry).
    #[arg(long)]
    pub client: u64,
    /// The file holding this client's secret key (`ekmat pbft client-key`).
    #[arg(long = "key", value_name = "FILE")]
    pub key_file: PathBuf,
    /// The request's number: higher than any this client used before (default: the
    /// microseconds since 1970, which a client sending one request at a time never
    /// repeats). Sending a request again with its number executes it at most once.
    #[arg(long)]
    pub seq: Option<u64>,
    /// The member to hand the request to (default: one picked by the request number).
    #[arg(long)]
    pub via: Option<u32>,
    /// How long to wait for f+1 matching results.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: SigningTlsArgs,
}

/// etcdctl's TLS flags, for members that serve TLS on their client port; the client
/// certificate's key is `--cert-key`, as `--key` is the signing key. `ETCDCTL_CACERT`,
/// `ETCDCTL_CERT` and `ETCDCTL_KEY` stand in for them, as with etcdctl.
#[derive(Args, Debug, Clone, Default)]
pub struct SigningTlsArgs {
    /// CA certificate (PEM) to verify the members with.
    #[arg(long, env = "ETCDCTL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) the members' CA signed, for members that ask for one.
    #[arg(long, env = "ETCDCTL_CERT", requires = "cert_key")]
    pub cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, env = "ETCDCTL_KEY", requires = "cert")]
    pub cert_key: Option<PathBuf>,
}

impl SigningTlsArgs {
    pub fn dialer(&self) -> Result<Dialer, String> {
        let args = TlsArgs {
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.cert_key.clone(),
        };
        Dialer::from_flags(&args, "cert-key")
    }
}

/// Why a member gave no result: `refusal` is set when it refused the request outright
/// (a request f+1 members refuse alike is refused by a correct one).
struct Problem {
    refusal: Option<String>,
    text: String,
}

impl From<String> for Problem {
    fn from(text: String) -> Problem {
        Problem {
            refusal: None,
            text,
        }
    }
}

/// Run `command` as client `args.client`; print its result once f+1 members agree.
pub fn run(args: SignedClientArgs, command: Command) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::VIOLATION;
        }
    };
    runtime.block_on(async move {
        match execute(&args, command).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
        }
    })
}

async fn execute(args: &SignedClientArgs, command: Command) -> Result<u8, String> {
    let cfg = NodeConfig::load(&args.config).map_err(|e| e.to_string())?;
    let (client, members) = prepare(args, &cfg)?;
    let seq = args.seq.unwrap_or_else(micros_since_epoch);
    let mut client = client.resume_after(seq.saturating_sub(1));
    let request = client.request(Some(Envelope::wrap(0, &command)));
    let via = args
        .via
        .map(|v| v as usize)
        .unwrap_or(seq as usize % members.len());
    if via >= members.len() {
        return Err(format!(
            "--via {via}: the cluster has members 0..{}",
            members.len() - 1
        ));
    }
    let f = members.len().saturating_sub(1) / 3;
    Ok(
        match execute_signed(&client, &members, &request, via, args.timeout).await {
            Ok(agreed) => report(&request, f, &agreed),
            Err(Failed::Refused { why, members }) => refused(&request, &why, &members),
            Err(Failed::NoQuorum { most, problems }) => give_up(&request, f, most, &problems),
        },
    )
}

/// What f+1 members returned alike for a request.
pub struct Agreed {
    /// The result, as the members encoded it (`Result<Response, KvError>`).
    pub result: Vec<u8>,
    /// Who returned it, and where each proved it committed (if it still held the batch).
    pub members: Vec<(u32, Option<u64>)>,
    /// Members that returned another result.
    pub dissenting: usize,
    /// Members that gave none, and why.
    pub problems: Vec<String>,
}

impl Agreed {
    pub fn decode(&self) -> Result<Result<Response, KvError>, String> {
        postcard::from_bytes(&self.result)
            .map_err(|e| format!("the members agree on a result this client cannot read: {e}"))
    }
}

/// Why no result was believed.
pub enum Failed {
    /// f+1 members refused the request alike: the request itself is at fault.
    Refused { why: String, members: Vec<u32> },
    /// Not f+1 members returned the same result in time (`most` did): the request's
    /// outcome is unknown.
    NoQuorum { most: usize, problems: Vec<String> },
}

/// Hand `request` (signed by `client`) to member `via`, ask every other member for its
/// outcome, and return the result once f+1 members return it alike, each proof checked.
pub async fn execute_signed(
    client: &Client,
    members: &[Member],
    request: &ClientRequest,
    via: usize,
    timeout: Duration,
) -> Result<Agreed, Failed> {
    let f = members.len().saturating_sub(1) / 3;
    let mut asks: Asks = JoinSet::new();
    for (i, member) in members.iter().enumerate() {
        let ask = ask(i as u32, member.clone(), request.clone(), i == via, timeout);
        asks.spawn(ask);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut retransmitted = false;
    let mut agreeing: BTreeMap<Vec<u8>, Vec<(u32, Option<Proven>)>> = BTreeMap::new();
    // Each member counts once (after a retransmission it may answer twice); a member
    // that answered, or refused, is not asked again.
    let mut heard = BTreeSet::new();
    let mut problems = Vec::new();
    let mut refusals: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    loop {
        let patience = if retransmitted {
            deadline
        } else {
            deadline - timeout / 2
        };
        match tokio::time::timeout_at(patience, asks.join_next()).await {
            Ok(Some(Ok((member, answer)))) => {
                if !heard.insert(member) {
                    continue;
                }
                match answer.and_then(|o| decoded(member, o)) {
                    Ok((result, proof)) => {
                        let same = agreeing.entry(result.clone()).or_default();
                        same.push((member, proof));
                        if same.len() <= f {
                            continue;
                        }
                        // f+1 alike: one proof that holds is enough; a member whose
                        // proof does not hold no longer counts.
                        let proven = prove(client, request, same, &mut problems);
                        if same.len() > f {
                            let same_len = same.len();
                            let members = same
                                .iter()
                                .map(|(m, _)| (*m, proven.filter(|(p, _)| p == m).map(|(_, s)| s)))
                                .collect();
                            let dissenting =
                                agreeing.values().map(Vec::len).sum::<usize>() - same_len;
                            return Ok(Agreed {
                                result,
                                members,
                                dissenting,
                                problems,
                            });
                        }
                    }
                    Err(problem) => {
                        if let Some(why) = problem.refusal {
                            let same = refusals.entry(why.clone()).or_default();
                            same.push(member);
                            if same.len() > f {
                                let members = same.clone();
                                return Err(Failed::Refused { why, members });
                            }
                        }
                        problems.push(problem.text);
                        // The member it went to cannot take it: go to all at once.
                        if member as usize == via && !retransmitted {
                            retransmitted = true;
                            resend(&mut asks, members, via, &heard, request, deadline);
                        }
                    }
                }
            }
            Ok(Some(Err(e))) => problems.push(format!("a request task failed: {e}")),
            Ok(None) | Err(_) if retransmitted || heard.len() == members.len() => {
                let most = agreeing.values().map(Vec::len).max().unwrap_or(0);
                return Err(Failed::NoQuorum { most, problems });
            }
            Ok(None) | Err(_) => {
                // No f+1 yet: the member it went to may be slow or faulty.
                retransmitted = true;
                resend(&mut asks, members, via, &heard, request, deadline);
            }
        }
    }
}

type Asks = JoinSet<(u32, Result<ekmatpb::Outcome, Problem>)>;

/// Hand the request to every member but `via` not heard from yet (PBFT's client
/// retransmission to all replicas).
fn resend(
    asks: &mut Asks,
    members: &[Member],
    via: usize,
    heard: &BTreeSet<u32>,
    request: &ClientRequest,
    deadline: tokio::time::Instant,
) {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    for (i, member) in members.iter().enumerate() {
        if i != via && !heard.contains(&(i as u32)) {
            asks.spawn(ask(i as u32, member.clone(), request.clone(), true, left));
        }
    }
}

/// The client (its key registered under its id) and the members' client URLs in id
/// order.
fn prepare(args: &SignedClientArgs, cfg: &NodeConfig) -> Result<(Client, Vec<Member>), String> {
    let ids = args.client..=args.client;
    let dialer = args.tls.dialer()?;
    let (mut clients, members) =
        registered_clients(cfg, &args.config, ids, &args.key_file, &dialer)?;
    Ok((clients.remove(0), members))
}

/// Clients `ids`, all with the key in `key_file`, if `cfg` (read from `path`) registers
/// that key under each of those ids; and the members in id order, reached through
/// `dialer` (which must speak TLS if the members serve it).
pub fn registered_clients(
    cfg: &NodeConfig,
    path: &Path,
    ids: std::ops::RangeInclusive<u64>,
    key_file: &Path,
    dialer: &Dialer,
) -> Result<(Vec<Client>, Vec<Member>), String> {
    if cfg.protocol != "pbft" {
        return Err(format!(
            "{}: protocol {} takes no signed requests (only pbft does)",
            path.display(),
            cfg.protocol
        ));
    }
    let security = cfg.client_transport_security.as_ref();
    let tls = security.is_some();
    if tls && !dialer.speaks_tls() {
        return Err(format!(
            "{}: the members serve TLS on their client ports: give --cacert, the CA that signed their certificates (and --cert and --cert-key, a client certificate it signed, if they ask for one)",
            path.display()
        ));
    }
    // As in etcd, a trusted CA on the client port means clients need its certificate.
    let asked = security.is_some_and(|s| s.trusted_ca_file.is_some() || s.client_cert_auth);
    if asked && !dialer.shows_certificate() {
        return Err(format!(
            "{}: the members admit only clients with a certificate their CA signed: give --cert and --cert-key",
            path.display()
        ));
    }
    let key = ekmat_node::keys::load_at(key_file).map_err(|e| e.to_string())?;
    let mine = ekmat_node::keys::public_key_hex(&key.verifying_key());
    let validators = cfg.public_keys()?;
    let mut clients = Vec::new();
    for id in ids {
        match cfg.pbft_clients.iter().find(|c| c.id == id) {
            Some(c) if c.public_key.eq_ignore_ascii_case(&mine) => {}
            Some(c) => {
                return Err(format!(
                    "{} registers client {id} with public key {}, but {} holds the key of {mine}",
                    path.display(),
                    c.public_key,
                    key_file.display()
                ));
            }
            None => {
                return Err(format!(
                    "client {id} is not registered in {}: add to every member's configuration\n\n[[pbft_client]]\nid = {id}\npublic_key = \"{mine}\"\n\nand restart the members",
                    path.display(),
                ));
            }
        }
        clients.push(Client::new(id, key.clone(), validators.clone())?);
    }
    let mut members: Vec<_> = cfg.members.iter().collect();
    members.sort_by_key(|m| m.id);
    let members = members
        .iter()
        .map(|m| {
            let scheme = if tls { "https" } else { "http" };
            Member::new(format!("{scheme}://{}", m.client), dialer)
        })
        .collect::<Result<_, _>>()?;
    Ok((clients, members))
}

/// A member's client address and a channel to it, connected on first use (and again
/// after it breaks), shared by every request.
#[derive(Clone)]
pub struct Member {
    url: String,
    channel: Channel,
}

impl Member {
    fn new(url: String, dialer: &Dialer) -> Result<Member, String> {
        let channel = dialer.connect_lazy(&url)?;
        Ok(Member { url, channel })
    }
}

/// Member `member`'s outcome: it is handed the request first if `submit`.
async fn ask(
    member: u32,
    to: Member,
    request: ClientRequest,
    submit: bool,
    wait: Duration,
) -> (u32, Result<ekmatpb::Outcome, Problem>) {
    (member, ask_one(member, to, request, submit, wait).await)
}

/// Refusals that stand whoever is asked: the request itself is at fault.
fn refusal(status: &tonic::Status) -> Option<String> {
    use tonic::Code;
    matches!(
        status.code(),
        Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::InvalidArgument
    )
    .then(|| status.message().to_string())
}

async fn ask_one(
    member: u32,
    to: Member,
    request: ClientRequest,
    submit: bool,
    wait: Duration,
) -> Result<ekmatpb::Outcome, Problem> {
    let url = to.url;
    let mut rpc = SignedRequestsClient::new(to.channel);
    let message = ekmatpb::SignedRequest {
        client: request.id.client,
        seq: request.id.seq,
        op: request.op.clone().unwrap_or_default().to_vec(),
        signature: request.sig.map(|s| s.0.to_vec()).unwrap_or_default(),
        wait_ms: wait.as_millis().max(1) as u64,
    };
    let mut call = tonic::Request::new(message);
    call.set_timeout(wait + Duration::from_secs(1));
    let answer = if submit {
        rpc.submit(call).await
    } else {
        rpc.await_outcome(call).await
    };
    let outcome = answer.map_err(|s| Problem {
        refusal: refusal(&s),
        text: format!(
            "member {member} ({url}): {}",
            ekmat_node::with_causes(status_message(&s), &s)
        ),
    })?;
    let outcome = outcome.into_inner();
    if outcome.member != u64::from(member) {
        let text = format!(
            "member {member} ({url}) answered as member {}",
            outcome.member
        );
        return Err(text.into());
    }
    Ok(outcome)
}

/// The batch a member named and its proof that the request committed there.
type Proven = (u64, CommitProof);

/// A member's result and the proof it sent (if it still held the batch).
fn decoded(member: u32, o: ekmatpb::Outcome) -> Result<(Vec<u8>, Option<Proven>), Problem> {
    if o.proof_json.is_empty() {
        return Ok((o.result, None));
    }
    let proof: CommitProof = serde_json::from_str(&o.proof_json)
        .map_err(|e| format!("member {member} sent a proof that does not parse: {e}"))?;
    Ok((o.result, Some((o.batch_seq, proof))))
}

/// The first member among `agreeing` whose proof holds for `request`, and where it
/// proved the request committed. Members checked before it whose proof does not hold
/// are taken out, and said why (checking signatures is what a client spends most on,
/// so the rest are not checked: their results match f+1 others anyway).
fn prove(
    client: &Client,
    request: &ClientRequest,
    agreeing: &mut Vec<(u32, Option<Proven>)>,
    problems: &mut Vec<String>,
) -> Option<(u32, u64)> {
    let mut i = 0;
    while i < agreeing.len() {
        let (member, proof) = &agreeing[i];
        let Some((named, proof)) = proof else {
            i += 1;
            continue;
        };
        let held = match client.verify(request, proof) {
            Ok(()) if proof.qc.seq == *named => Ok(*named),
            Ok(()) => Err(format!(
                "member {member} named batch {named} for a proof of batch {}",
                proof.qc.seq
            )),
            Err(e) => Err(format!(
                "member {member} sent a proof that does not hold: {e}"
            )),
        };
        match held {
            Ok(seq) => return Some((*member, seq)),
            Err(problem) => {
                problems.push(problem);
                agreeing.remove(i);
            }
        }
    }
    None
}

fn report(request: &ClientRequest, f: usize, agreed: &Agreed) -> u8 {
    let code = match agreed.decode() {
        Ok(Ok(response)) => {
            print_response(&response);
            exit::OK
        }
        Ok(Err(e)) => {
            println!("refused: {e}");
            exit::VIOLATION
        }
        Err(e) => {
            println!("{e}");
            exit::VIOLATION
        }
    };
    let members: Vec<String> = agreed.members.iter().map(|(m, _)| m.to_string()).collect();
    let proven: Vec<String> = agreed
        .members
        .iter()
        .filter_map(|(m, at)| at.map(|s| format!("member {m} (batch {s})")))
        .collect();
    eprintln!(
        "request {} of client {}: the same result from members {} (f+1 = {} needed)",
        request.id.seq,
        request.id.client,
        members.join(", "),
        f + 1
    );
    if proven.is_empty() {
        eprintln!(
            "commit proof: none sent (those members no longer hold the batch: a snapshot covers it)"
        );
    } else {
        eprintln!(
            "commit proof verified with the validators' public keys: {}",
            proven.join(", ")
        );
    }
    if agreed.dissenting > 0 {
        eprintln!(
            "warning: {} member(s) answered a different result",
            agreed.dissenting
        );
    }
    for p in &agreed.problems {
        eprintln!("warning: {p}");
    }
    code
}

fn refused(request: &ClientRequest, why: &str, members: &[u32]) -> u8 {
    let members: Vec<String> = members.iter().map(u32::to_string).collect();
    eprintln!(
        "error: request {} of client {} refused by members {}: {why}",
        request.id.seq,
        request.id.client,
        members.join(", ")
    );
    exit::VIOLATION
}

fn give_up(request: &ClientRequest, f: usize, most: usize, problems: &[String]) -> u8 {
    eprintln!(
        "error: no {} members returned the same result for request {} of client {} (at most {most} did); its outcome is unknown: send it again with --seq {}",
        f + 1,
        request.id.seq,
        request.id.client,
        request.id.seq
    );
    for p in problems {
        eprintln!("  {p}");
    }
    exit::VIOLATION
}

fn print_response(response: &Response) {
    match response {
        Response::Put(r) => println!("OK (revision {})", r.header.revision),
        Response::DeleteRange(r) => println!("{}", r.deleted),
        Response::Range(r) => {
            for kv in &r.kvs {
                println!("{}", String::from_utf8_lossy(&kv.key));
                println!("{}", String::from_utf8_lossy(&kv.value));
            }
        }
        other => println!("{other:?}"),
    }
}

pub fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// The command for `put KEY VALUE`, `get KEY`, `del KEY`.
pub fn put(key: String, value: String) -> Command {
    Command::Put(ekmat_kv::PutRequest::new(
        Bytes::from(key),
        Bytes::from(value),
    ))
}

pub fn get(key: String) -> Command {
    Command::Range(ekmat_kv::RangeRequest::new(Bytes::from(key)))
}

pub fn del(key: String) -> Command {
    Command::DeleteRange(ekmat_kv::DeleteRangeRequest::new(Bytes::from(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_serving_tls_need_the_tls_flags_and_are_told_which() {
        let mut cfg = NodeConfig::new("c", 0, "/tmp/none".into(), Vec::new());
        cfg.protocol = "pbft".into();
        cfg.client_transport_security = Some(ekmat_node::tls::TransportSecurity::default());
        let path = Path::new("member.toml");
        let plain = Dialer::plain();
        let err = registered_clients(&cfg, path, 1..=1, Path::new("k"), &plain)
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("member.toml: the members serve TLS") && err.contains("--cacert"),
            "{err}"
        );
        // Members with a trusted CA admit only clients with its certificate.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "a CA").unwrap();
        let ca_only = SigningTlsArgs {
            cacert: Some(ca.clone()),
            ..Default::default()
        };
        let security = cfg.client_transport_security.as_mut().unwrap();
        security.trusted_ca_file = Some(ca);
        let err = registered_clients(
            &cfg,
            path,
            1..=1,
            Path::new("k"),
            &ca_only.dialer().unwrap(),
        )
        .err()
        .unwrap_or_default();
        assert!(err.ends_with("give --cert and --cert-key"), "{err}");
    }

    #[test]
    fn the_tls_key_flag_is_named_in_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "a certificate").unwrap();
        let args = SigningTlsArgs {
            cacert: None,
            cert: Some(cert),
            cert_key: Some(dir.path().join("missing-key.pem")),
        };
        let err = args.dialer().err().unwrap_or_default();
        assert!(
            err.starts_with("--cert-key ") && err.contains("missing-key.pem"),
            "{err}"
        );
        std::fs::write(dir.path().join("missing-key.pem"), "a key").unwrap();
        let err = args.dialer().err().unwrap_or_default();
        assert_eq!(
            err,
            "--cert and --cert-key need --cacert, the CA to verify the members with"
        );
    }
}
