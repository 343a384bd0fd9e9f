//! The etcd v3 gRPC API: KV, Lease, Watch, Maintenance (status, alarms, HashKV, snapshot,
//! defragment, move-leader), Cluster (members), Auth (users, roles, permissions, login:
//! `auth.rs`), and the Election and Lock services built on them. Writes that add data
//! pass the space quota first (`quota.rs`); the leader can compare members' data now and
//! then (`corruption.rs`).
//!
//! Handlers turn requests into calls on the driver; the driver forwards what this member
//! cannot order to the leader, so clients may talk to any member.

mod alarm;
mod auth;
mod authority;
pub(crate) use authority::AuthorityFix;
mod cluster;
pub mod compactor;
pub use maintenance::API_VERSION;
pub mod convert;
pub mod corruption;
pub mod election;
mod exclusion;
mod gate;
mod kv;
mod lease;
pub mod lock;
mod maintenance;
mod queue;
mod quota;
mod signed;
pub mod snapshot;
mod watch;
mod watcher;

pub use lease::min_lease_ttl;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ekmat_api::etcdserverpb as pb;
use ekmat_api::{ekmatpb, v3electionpb, v3lockpb};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::config::NodeConfig;
use crate::driver::{Call, CallError, NodeStatus, WriteSlot};
use crate::members::MemberRecord;
use crate::query::{Answer, Query};
use crate::watch_hub::WatchHub;

/// etcd's default limit on a request's size (`--max-request-bytes`).
pub const MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;
/// How long a request may wait for consensus before the client is told it timed out
/// (its outcome is then unknown, as with etcd).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// A client's stream of requests, whatever carries it: gRPC, or the JSON gateway.
pub trait RequestStream<T>:
    tokio_stream::Stream<Item = Result<T, Status>> + Unpin + Send + 'static
{
}
impl<T, S> RequestStream<T> for S where
    S: tokio_stream::Stream<Item = Result<T, Status>> + Unpin + Send + 'static
{
}

#[derive(Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

struct Inner {
    cluster_id: u64,
    member_id: u64,
    calls: mpsc::Sender<Call>,
    status: tokio::sync::watch::Receiver<NodeStatus>,
    /// The member table, as the driver follows committed configurations.
    members: tokio::sync::watch::Receiver<Vec<MemberRecord>>,
    /// Users, roles and the auth switch, as this member applied them.
    auth: tokio::sync::watch::Receiver<ekmat_kv::AuthState>,
    /// How long tokens last, in seconds, and bcrypt's cost for new passwords.
    auth_token_ttl: u64,
    bcrypt_cost: u32,
    hub: WatchHub,
    /// Granted TTLs below this many seconds are raised to it.
    min_lease_ttl: i64,
    /// The space quota of the store's size estimate (0: none).
    quota_bytes: u64,
    /// Writes taken from clients and not answered yet, and the most admitted.
    writes_in_flight: Arc<AtomicUsize>,
    max_pending_writes: usize,
    /// This member's id (`[[member]] id`).
    node_id: u32,
    /// PBFT's registered clients, whose signed requests `signed.rs` takes.
    clients: ekmat_pbft::client::ClientRegistry,
    /// What those clients sign their requests for (PBFT's validator keys, digested).
    signing_cluster: ekmat_pbft::client::ClusterId,
    /// The protocol, which may take no signed requests at all.
    protocol: String,
    /// The largest signed request PBFT orders (see `protocol::pbft_max_request_bytes`).
    pbft_request_bytes: usize,
    /// TLS on the client ports (this member's, and by assumption every member's).
    tls: Option<crate::tls::ClientTls>,
    /// Whether the peer ports speak TLS (every member's alike).
    peer_tls: bool,
}

/// What the driver publishes for the services to read without calling it.
pub struct Views {
    pub status: tokio::sync::watch::Receiver<NodeStatus>,
    pub members: tokio::sync::watch::Receiver<Vec<MemberRecord>>,
    pub auth: tokio::sync::watch::Receiver<ekmat_kv::AuthState>,
}

impl Services {
    pub fn new(
        cfg: &NodeConfig,
        calls: mpsc::Sender<Call>,
        views: Views,
        hub: WatchHub,
        min_lease_ttl: i64,
        tls: Option<crate::tls::ClientTls>,
    ) -> Services {
        Services {
            inner: Arc::new(Inner {
                cluster_id: cfg.cluster_id(),
                member_id: NodeConfig::member_id(cfg.id),
                calls,
                status: views.status,
                members: views.members,
                auth: views.auth,
                auth_token_ttl: cfg.auth_token_ttl,
                bcrypt_cost: cfg.bcrypt_cost,
                hub,
                min_lease_ttl,
                quota_bytes: cfg.quota_backend_bytes,
                writes_in_flight: Arc::new(AtomicUsize::new(0)),
                max_pending_writes: cfg.max_pending_writes,
                node_id: cfg.id,
                clients: cfg.client_keys().unwrap_or_default(),
                signing_cluster: cfg
                    .public_keys()
                    .map(|keys| ekmat_pbft::client::cluster_id(&keys))
                    .unwrap_or_default(),
                protocol: cfg.protocol.clone(),
                pbft_request_bytes: crate::protocol::pbft_max_request_bytes(cfg),
                tls,
                peer_tls: cfg.peer_transport_security.is_some(),
            }),
        }
    }

    /// Serve clients on `listener` until `shutdown`: etcd's gRPC API, and `http` (the
    /// `/metrics`, `/health` and `/version` etcd serves on its client port) to HTTP/1.1
    /// clients; while `open` is false, only what peers' checks at start need (`gate.rs`).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        open: tokio::sync::watch::Receiver<bool>,
        http: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        use tokio_stream::StreamExt;
        let tls = self.inner.tls.clone();
        let routes = self.routes(open, http);
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes);
        let result = match tls {
            Some(tls) => {
                let incoming = tls.incoming(listener);
                server
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            None => {
                // The listener was bound by the node (so a taken port fails at start),
                // which means tonic never sets TCP_NODELAY on what it accepts: without
                // it, Nagle's algorithm and delayed ACKs hold small responses back ~40 ms.
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                        conn.map(|stream| {
                            let _ = stream.set_nodelay(true);
                            AuthorityFix::new(stream)
                        })
                    });
                server
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "client API stopped");
        }
    }

    /// etcd's gRPC services, its JSON gateway and `http`, on one port.
    fn routes(
        &self,
        open: tokio::sync::watch::Receiver<bool>,
        http: axum::Router,
    ) -> tonic::service::Routes {
        let routes = tonic::service::Routes::new(
            pb::kv_server::KvServer::new(self.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES * 2),
        )
        .add_service(pb::lease_server::LeaseServer::new(self.clone()))
        .add_service(pb::watch_server::WatchServer::new(self.clone()))
        .add_service(pb::maintenance_server::MaintenanceServer::new(self.clone()))
        .add_service(pb::cluster_server::ClusterServer::new(self.clone()))
        .add_service(pb::auth_server::AuthServer::new(self.clone()))
        .add_service(v3electionpb::election_server::ElectionServer::new(
            self.clone(),
        ))
        .add_service(v3lockpb::lock_server::LockServer::new(self.clone()))
        .add_service(ekmatpb::exclusions_server::ExclusionsServer::new(
            self.clone(),
        ))
        .add_service(
            ekmatpb::signed_requests_server::SignedRequestsServer::new(self.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES * 2),
        );
        // The gate applies to the API alone: etcd's HTTP endpoints are always served.
        let gateway = crate::gateway::router(self.clone(), open.clone());
        let api = routes.into_axum_router().layer(gate::layer(open));
        let routes = api
            .merge(http)
            .merge(gateway)
            .fallback(crate::http::not_found);
        tonic::service::Routes::from(routes)
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.member_id,
            revision,
            raft_term: self.inner.status.borrow().core.term,
        }
    }

    /// The store revision this member has applied (for headers of answers that did not
    /// come from the state machine).
    fn revision(&self) -> i64 {
        self.inner.status.borrow().revision
    }

    fn header_fn(
        &self,
    ) -> impl Fn(ekmat_kv::ResponseHeader) -> pb::ResponseHeader + Send + Sync + '_ {
        move |h| self.header(h.revision)
    }

    /// Serve `query`, after a read barrier if `linearizable`.
    async fn read(&self, query: Query, linearizable: bool) -> Result<Answer, CallError> {
        self.call(|reply| Call::Read {
            query,
            linearizable,
            reply,
        })
        .await
    }

    /// Order a client's `command` through the log and return the state machine's
    /// response.
    ///
    /// Admission control: with `max_pending_writes` of clients' key operations already
    /// waiting for their answers (a txn counts its operations, see
    /// [`ekmat_kv::Command::operations`]), it is refused at once with etcd's "too many
    /// requests" (clients back off and retry) rather than queued where the driver or the
    /// protocol is the bottleneck: a longer queue only adds latency (past the request
    /// timeout, work done for nothing), and for PBFT, bundles waiting past the view
    /// timeout change views. The driver holds the write's slot until the write
    /// is answered or refused, even if its caller gave up meanwhile (it may still be
    /// ordered), or, if it never is, for a while after (see `ABANDONED_WRITE_TTL`).
    pub(super) async fn write(
        &self,
        command: ekmat_kv::Command,
    ) -> Result<ekmat_kv::Response, CallError> {
        let slot = Some(self.admit_write(command.operations())?);
        self.call(|reply| Call::Write {
            command,
            reply,
            slot,
        })
        .await
    }

    /// Order a write the node owes on its own account — a lease renewal, an alarm, the
    /// removal of an abandoned waiter's key — past admission control: refusing those
    /// under load would lose leases, locks and alarms to the very load it sheds.
    pub(super) async fn write_internal(
        &self,
        command: ekmat_kv::Command,
    ) -> Result<ekmat_kv::Response, CallError> {
        self.call(|reply| Call::Write {
            command,
            reply,
            slot: None,
        })
        .await
    }

    /// A write of `weight` operations is taken while fewer than the bound wait, so one
    /// larger than the bound still gets in when the member is idle enough.
    fn admit_write(&self, weight: usize) -> Result<WriteSlot, CallError> {
        let in_flight = &self.inner.writes_in_flight;
        let slot = WriteSlot::new(in_flight.clone(), weight);
        if in_flight.fetch_add(weight, Ordering::Relaxed) >= self.inner.max_pending_writes {
            metrics::counter!("ekmat_writes_refused_total").increment(1);
            return Err(CallError::Busy);
        }
        Ok(slot)
    }

    /// Send a call to the driver and wait for its answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CallError>>) -> Call,
    ) -> Result<T, CallError> {
        let started = std::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        self.inner
            .calls
            .send(make(tx))
            .await
            .map_err(|_| CallError::Stopped)?;
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Stopped),
            Err(_) => Err(CallError::Timeout),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("ekmat_request_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// etcd's gRPC status for a call that could not be served here.
pub fn call_error(e: &CallError) -> Status {
    match e {
        CallError::NotLeader { .. } => Status::unavailable("etcdserver: no leader"),
        CallError::Busy => Status::resource_exhausted("etcdserver: too many requests"),
        CallError::LeadershipLost => Status::unavailable("etcdserver: leader changed"),
        CallError::Kv(e) => convert::kv_error(e),
        CallError::Timeout => Status::unavailable("etcdserver: request timed out"),
        CallError::TransferFailed => Status::deadline_exceeded(e.to_string()),
        CallError::Stopped => Status::unavailable("etcdserver: server stopped"),
        CallError::ChangeInProgress => Status::unavailable(e.to_string()),
        CallError::InvalidChange(ekmat_core::ChangeError::NotMember(_)) => {
            Status::not_found(e.to_string())
        }
        CallError::InvalidChange(_) => Status::failed_precondition(e.to_string()),
        CallError::Unsupported(why) => Status::unimplemented(why.clone()),
        CallError::TooLarge => Status::invalid_argument(e.to_string()),
    }
}

fn check_size<T: prost::Message>(req: &T) -> Result<(), Status> {
    if req.encoded_len() > MAX_REQUEST_BYTES {
        return Err(Status::invalid_argument("etcdserver: request is too large"));
    }
    Ok(())
}

/// The driver answered a call with another call's kind of answer (a bug, not a client
/// error).
fn unexpected_answer() -> Status {
    Status::internal("the state machine answered another request")
}
