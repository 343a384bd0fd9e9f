//! `ekmat gateway`: PBFT's Gateway role as a process of its own. It serves etcd's KV
//! API (Put, Range, DeleteRange, Txn, Compact) to etcd's clients and takes no part in
//! consensus: each request becomes one signed with the gateway's client key (a
//! registered client, see `signed_client.rs`), handed to one member, and answered once
//! f+1 members return the same result, their commit proofs checked with the validators'
//! public keys. An etcd client that trusts its gateway thus trusts no single member: a
//! Byzantine member can neither make up an answer nor write in the gateway's name.
//!
//! A member keeps each client's latest result only, so every request in flight needs a
//! client id of its own: the gateway holds `--clients N` consecutive ids from
//! `--first-client`, all registered under its one key (`ekmat pbft client-key --count`),
//! and a request waits for a free one. Reads are ordered like writes (there is no
//! cheaper way for a gateway to be sure of a read).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use ekmat_api::etcdserverpb::{self as pb, kv_server::KvServer};
use ekmat_kv::{Command, Envelope, Response};
use ekmat_node::NodeConfig;
use ekmat_node::service::convert;
use ekmat_node::tls::{ClientTls, TransportSecurity};
use ekmat_pbft::Client;
use tokio::sync::Semaphore;
use tonic::{Request, Status};

use crate::exit;
use crate::signed_client::{
    Failed, Member, SigningTlsArgs, execute_signed, micros_since_epoch, registered_clients,
};

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// A member's configuration: the members' addresses and public keys, and the
    /// registered clients.
    #[arg(long)]
    config: PathBuf,
    /// The file holding the gateway's secret key (`ekmat pbft client-key --count`).
    #[arg(long = "key", value_name = "FILE")]
    key_file: PathBuf,
    /// The first of the gateway's registered client ids.
    #[arg(long)]
    first_client: u64,
    /// How many consecutive ids it holds: the most requests it has in flight.
    #[arg(long, default_value_t = 16)]
    clients: u64,
    /// Where etcd clients connect.
    #[arg(long, default_value = "127.0.0.1:2390")]
    listen: SocketAddr,
    /// How long a request waits for f+1 matching results before it is answered
    /// "request timed out" (its outcome unknown, as etcd's).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How it reaches members that serve TLS.
    #[command(flatten)]
    members_tls: SigningTlsArgs,
    /// Serve TLS at --listen with this certificate (PEM, leaf first), as etcd's
    /// grpc-proxy does with its --cert-file.
    #[arg(long, requires = "key_file_tls", value_name = "FILE")]
    cert_file: Option<PathBuf>,
    /// The key of --cert-file (PEM).
    #[arg(
        long = "key-file",
        id = "key_file_tls",
        requires = "cert_file",
        value_name = "FILE"
    )]
    key_file_tls: Option<PathBuf>,
    /// Admit only clients with a certificate this CA (PEM) signed.
    #[arg(long, requires = "cert_file", value_name = "FILE")]
    trusted_ca_file: Option<PathBuf>,
}

impl GatewayArgs {
    /// What --listen serves with, if TLS.
    fn serving_tls(&self) -> Option<TransportSecurity> {
        let (cert_file, key_file) = (self.cert_file.clone()?, self.key_file_tls.clone()?);
        Some(TransportSecurity {
            cert_file,
            key_file,
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.trusted_ca_file.is_some(),
            crl_file: None,
        })
    }
}

pub fn run(args: GatewayArgs) -> u8 {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::VIOLATION;
        }
    };
    runtime.block_on(async move {
        let gateway = match Gateway::new(&args) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return exit::USAGE;
            }
        };
        let tls = match args.serving_tls().map(|t| ClientTls::load(&t)).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("error: {}", as_flags(&e));
                return exit::USAGE;
            }
        };
        eprintln!(
            "ekmat gateway: etcd KV API on {}{} for a {}-member PBFT cluster, clients {}..={} (f+1 = {} matching results per answer)",
            args.listen,
            if tls.is_some() { " (TLS)" } else { "" },
            gateway.inner.members.len(),
            args.first_client,
            args.first_client + args.clients - 1,
            gateway.inner.f + 1
        );
        let server = tonic::transport::Server::builder().add_service(KvServer::new(gateway));
        let stop = crate::node_cmd::wait_for_signal();
        let served = match tls {
            // Sets TCP_NODELAY on what it accepts, as below.
            Some(tls) => {
                let incoming = tls.incoming(listener);
                server.serve_with_incoming_shutdown(incoming, stop).await
            }
            None => {
                // As the members do (see `Services::serve`): without TCP_NODELAY on
                // accepted connections, Nagle's algorithm and delayed ACKs hold small
                // answers back.
                use tokio_stream::StreamExt;
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                        conn.inspect(|stream| {
                            let _ = stream.set_nodelay(true);
                        })
                    });
                server.serve_with_incoming_shutdown(incoming, stop).await
            }
        };
        match served {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("error: the gateway stopped: {e}");
                exit::VIOLATION
            }
        }
    })
}

/// A member's TLS error, which names its configuration's settings, in the gateway's
/// flags instead.
fn as_flags(error: &str) -> String {
    let error = error.replace("client_transport_security: ", "");
    [
        ("cert_file", "--cert-file"),
        ("key_file", "--key-file"),
        ("trusted_ca_file", "--trusted-ca-file"),
    ]
    .iter()
    .fold(error, |e, (setting, flag)| e.replace(setting, flag))
}

#[derive(Clone)]
struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    /// The members, in id order.
    members: Vec<Member>,
    f: usize,
    cluster_id: u64,
    timeout: Duration,
    /// Client ids not in use, and how many there are.
    idle: Mutex<Vec<Client>>,
    free: Semaphore,
    /// Which member the next request goes to (round robin).
    next: AtomicUsize,
}

impl Gateway {
    fn new(args: &GatewayArgs) -> Result<Gateway, String> {
        let cfg = NodeConfig::load(&args.config).map_err(|e| e.to_string())?;
        if args.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        let last = args
            .first_client
            .checked_add(args.clients - 1)
            .ok_or("--first-client plus --clients must fit in 64 bits")?;
        // Each id numbers its requests from the clock's microseconds, so a gateway that
        // restarts goes on above every number it used before.
        let start = micros_since_epoch();
        let ids = args.first_client..=last;
        let dialer = args.members_tls.dialer()?;
        let (clients, members) =
            registered_clients(&cfg, &args.config, ids, &args.key_file, &dialer)?;
        let idle: Vec<Client> = clients.into_iter().map(|c| c.resume_after(start)).collect();
        Ok(Gateway {
            inner: Arc::new(Inner {
                f: members.len().saturating_sub(1) / 3,
                members,
                cluster_id: cfg.cluster_id(),
                timeout: args.timeout,
                free: Semaphore::new(idle.len()),
                idle: Mutex::new(idle),
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// Execute `command` as one of the gateway's clients; the response once f+1 members
    /// agree on it.
    async fn execute(&self, command: Command) -> Result<Response, Status> {
        let inner = &self.inner;
        let _permit = inner
            .free
            .acquire()
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let mut client = inner
            .idle
            .lock()
            .expect("no panic holds the lock")
            .pop()
            .expect("a permit means an idle client");
        let request = client.request(Some(Envelope::wrap(0, &command)));
        let via = inner.next.fetch_add(1, Ordering::Relaxed) % inner.members.len();
        let outcome = execute_signed(&client, &inner.members, &request, via, inner.timeout).await;
        inner
            .idle
            .lock()
            .expect("no panic holds the lock")
            .push(client);
        match outcome {
            Ok(agreed) => match agreed.decode() {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(convert::kv_error(&e)),
                Err(e) => Err(Status::internal(e)),
            },
            Err(Failed::Refused { why, members }) => {
                tracing::warn!(?members, why, "members refused a request");
                Err(Status::invalid_argument(why))
            }
            Err(Failed::NoQuorum { most, problems }) => {
                tracing::warn!(most, ?problems, "no f+1 matching results in time");
                Err(Status::unavailable("etcdserver: request timed out"))
            }
        }
    }

    fn header(&self, h: ekmat_kv::ResponseHeader) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.inner.cluster_id,
            // Not a member: etcd's clients only print it.
            member_id: 0,
            revision: h.revision,
            raft_term: 0,
        }
    }
}

type Reply<T> = tonic::Response<T>;

impl Gateway {
    /// Execute `command` and answer with what `pick` makes of its response, or a
    /// server error if the members answered another kind of request.
    async fn ordered<T>(
        &self,
        command: Command,
        pick: impl FnOnce(Response, &convert::Header<'_>) -> Option<T>,
    ) -> Result<Reply<T>, Status> {
        let response = self.execute(command).await?;
        pick(response, &|h| self.header(h))
            .map(Reply::new)
            .ok_or_else(|| Status::internal("the members answered another kind of request"))
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Gateway {
    async fn range(
        &self,
        r: Request<pb::RangeRequest>,
    ) -> Result<Reply<pb::RangeResponse>, Status> {
        let command = Command::Range(convert::range_request(r.into_inner())?);
        self.ordered(command, |r, h| match r {
            Response::Range(r) => Some(convert::range_response(r, h)),
            _ => None,
        })
        .await
    }

    async fn put(&self, r: Request<pb::PutRequest>) -> Result<Reply<pb::PutResponse>, Status> {
        let command = Command::Put(convert::put_request(r.into_inner()));
        self.ordered(command, |r, h| match r {
            Response::Put(r) => Some(convert::put_response(r, h)),
            _ => None,
        })
        .await
    }

    async fn delete_range(
        &self,
        r: Request<pb::DeleteRangeRequest>,
    ) -> Result<Reply<pb::DeleteRangeResponse>, Status> {
        let command = Command::DeleteRange(convert::delete_request(r.into_inner()));
        self.ordered(command, |r, h| match r {
            Response::DeleteRange(r) => Some(convert::delete_response(r, h)),
            _ => None,
        })
        .await
    }

    async fn txn(&self, r: Request<pb::TxnRequest>) -> Result<Reply<pb::TxnResponse>, Status> {
        let command = Command::Txn(convert::txn_request(r.into_inner())?);
        self.ordered(command, |r, h| match r {
            Response::Txn(r) => Some(convert::txn_response(r, h)),
            _ => None,
        })
        .await
    }

    async fn compact(
        &self,
        r: Request<pb::CompactionRequest>,
    ) -> Result<Reply<pb::CompactionResponse>, Status> {
        let r = r.into_inner();
        let command = Command::Compact(ekmat_kv::CompactionRequest {
            revision: r.revision,
            physical: r.physical,
        });
        self.ordered(command, |r, h| match r {
            Response::Compact(r) => Some(pb::CompactionResponse {
                header: Some(h(r.header)),
            }),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_file_that_does_not_read_is_named_by_its_flag() {
        let missing = TransportSecurity {
            cert_file: "/nonexistent/gw.pem".into(),
            key_file: "/nonexistent/gw-key.pem".into(),
            ..Default::default()
        };
        let err = ClientTls::load(&missing).err().unwrap_or_default();
        let err = as_flags(&err);
        assert!(
            err.starts_with("--cert-file /nonexistent/gw.pem: "),
            "{err}"
        );
    }
}
