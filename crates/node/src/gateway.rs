//! etcd's JSON gateway: every method of the etcd v3 API also answers `POST /v3/...` on
//! the client port (and `/v3beta/...`, which etcd 3.4 still serves), with the request and
//! response in proto3's JSON mapping as etcd's grpc-gateway writes it: the .proto's field
//! names, 64-bit integers as strings, bytes in base64, zero values left out. Errors come
//! as `{"error","message","code"}` with the HTTP status grpc-gateway gives the gRPC code.
//! Streams (watch, lease keep-alive, election observe, snapshot) take a sequence of JSON
//! requests as the body and answer one `{"result": ...}` line per response. A login's
//! token comes in the `Authorization` header, as etcd's gateway takes it.
//!
//! Each route calls the same service the gRPC method does, so the two cannot disagree.

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use ekmat_api::etcdserverpb as pb;
use ekmat_api::{v3electionpb as election, v3lockpb as lock};
use ekmat_kv::Caller;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};

use election::election_server::Election;
use lock::lock_server::Lock;
use pb::auth_server::Auth;
use pb::cluster_server::Cluster;
use pb::kv_server::Kv;
use pb::lease_server::Lease;
use pb::maintenance_server::Maintenance;

use crate::service::{MAX_REQUEST_BYTES, Services};

/// Requests queued from a streaming body before the service has taken them.
const REQUEST_QUEUE: usize = 16;
/// The largest body taken: etcd's request limit in base64 (4/3 of it), with room for
/// the JSON around it. What passes is then held to etcd's limit by the service itself.
const MAX_BODY: usize = 2 * MAX_REQUEST_BYTES;
/// etcd's error for a request over its size limit.
const TOO_LARGE: &str = "etcdserver: request is too large";

/// The gateway's routes, under `/v3` and `/v3beta`. While `open` is false (the member
/// checks its data at start) every route answers 503, as its gRPC twin answers Unavailable.
pub fn router(services: Services, open: watch::Receiver<bool>) -> Router {
    let api = routes(&Gateway { services, open });
    Router::new()
        .nest("/v3", api.clone())
        .nest("/v3beta", api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(allow_cross_origin))
}

#[derive(Clone)]
struct Gateway {
    services: Services,
    open: watch::Receiver<bool>,
}

/// One of the services' methods, as a closure the routes can call.
macro_rules! method {
    ($method:path) => {
        |s: Services, r| async move { $method(&s, r).await }
    };
}

fn routes(g: &Gateway) -> Router {
    Router::new()
        .route(
            "/watch",
            g.bidi(|s, caller, requests| s.watch_session(caller, requests)),
        )
        .route(
            "/lease/keepalive",
            g.bidi(|s, _, requests| s.keep_alive_session(requests)),
        )
        .route("/kv/range", g.unary(method!(Kv::range)))
        .route("/kv/put", g.unary(method!(Kv::put)))
        .route("/kv/deleterange", g.unary(method!(Kv::delete_range)))
        .route("/kv/txn", g.unary(method!(Kv::txn)))
        .route("/kv/compaction", g.unary(method!(Kv::compact)))
        .route("/lease/grant", g.unary(method!(Lease::lease_grant)))
        .route("/lease/revoke", g.unary(method!(Lease::lease_revoke)))
        .route("/kv/lease/revoke", g.unary(method!(Lease::lease_revoke)))
        .route(
            "/lease/timetolive",
            g.unary(method!(Lease::lease_time_to_live)),
        )
        .route(
            "/kv/lease/timetolive",
            g.unary(method!(Lease::lease_time_to_live)),
        )
        .route("/lease/leases", g.unary(method!(Lease::lease_leases)))
        .route("/kv/lease/leases", g.unary(method!(Lease::lease_leases)))
        .route("/cluster/member/add", g.unary(method!(Cluster::member_add)))
        .route(
            "/cluster/member/remove",
            g.unary(method!(Cluster::member_remove)),
        )
        .route(
            "/cluster/member/update",
            g.unary(method!(Cluster::member_update)),
        )
        .route(
            "/cluster/member/list",
            g.unary(method!(Cluster::member_list)),
        )
        .route(
            "/cluster/member/promote",
            g.unary(method!(Cluster::member_promote)),
        )
        .route("/maintenance/alarm", g.unary(method!(Maintenance::alarm)))
        .route("/maintenance/status", g.unary(method!(Maintenance::status)))
        .route(
            "/maintenance/defragment",
            g.unary(method!(Maintenance::defragment)),
        )
        // etcd maps Hash and HashKV both to this path; Hash is the one that answers.
        .route("/maintenance/hash", g.unary(method!(Maintenance::hash)))
        .route(
            "/maintenance/snapshot",
            g.server_stream(method!(Maintenance::snapshot)),
        )
        .route(
            "/maintenance/transfer-leadership",
            g.unary(method!(Maintenance::move_leader)),
        )
        .route("/election/campaign", g.unary(method!(Election::campaign)))
        .route("/election/proclaim", g.unary(method!(Election::proclaim)))
        .route("/election/leader", g.unary(method!(Election::leader)))
        .route(
            "/election/observe",
            g.server_stream(method!(Election::observe)),
        )
        .route("/election/resign", g.unary(method!(Election::resign)))
        .route("/lock/lock", g.unary(method!(Lock::lock)))
        .route("/lock/unlock", g.unary(method!(Lock::unlock)))
        .route("/auth/enable", g.unary(method!(Auth::auth_enable)))
        .route("/auth/disable", g.unary(method!(Auth::auth_disable)))
        .route("/auth/status", g.unary(method!(Auth::auth_status)))
        .route("/auth/authenticate", g.unary(method!(Auth::authenticate)))
        .route("/auth/user/add", g.unary(method!(Auth::user_add)))
        .route("/auth/user/get", g.unary(method!(Auth::user_get)))
        .route("/auth/user/list", g.unary(method!(Auth::user_list)))
        .route("/auth/user/delete", g.unary(method!(Auth::user_delete)))
        .route(
            "/auth/user/changepw",
            g.unary(method!(Auth::user_change_password)),
        )
        .route("/auth/user/grant", g.unary(method!(Auth::user_grant_role)))
        .route(
            "/auth/user/revoke",
            g.unary(method!(Auth::user_revoke_role)),
        )
        .route("/auth/role/add", g.unary(method!(Auth::role_add)))
        .route("/auth/role/get", g.unary(method!(Auth::role_get)))
        .route("/auth/role/list", g.unary(method!(Auth::role_list)))
        .route("/auth/role/delete", g.unary(method!(Auth::role_delete)))
        .route(
            "/auth/role/grant",
            g.unary(method!(Auth::role_grant_permission)),
        )
        .route(
            "/auth/role/revoke",
            g.unary(method!(Auth::role_revoke_permission)),
        )
}

type Answer<T> = Result<tonic::Response<T>, Status>;
/// A bidirectional call's requests, as its session takes them.
type Requests<Req> = Pin<Box<dyn Stream<Item = Result<Req, Status>> + Send>>;
/// A body as the unary routes take it: whole, within [`MAX_BODY`].
type WholeBody = Result<Bytes, BytesRejection>;

impl Gateway {
    /// Refused while the member does not serve clients yet.
    fn serving(&self) -> Result<(), Status> {
        if *self.open.borrow() {
            return Ok(());
        }
        Err(Status::unavailable(
            "etcdserver: not capable: this member is checking its data against its peers' before it serves",
        ))
    }

    /// The one request of a unary or server-streaming call, or the answer refusing it.
    fn request<Req: DeserializeOwned + Default>(&self, body: WholeBody) -> Result<Req, Status> {
        self.serving()?;
        let body = body.map_err(|rejected| {
            if rejected.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Status::invalid_argument(TOO_LARGE)
            } else {
                Status::invalid_argument(rejected.body_text())
            }
        })?;
        first_value(&body)
    }

    /// A route for a method that takes one request and gives one response.
    fn unary<Req, Resp, F, Fut>(&self, call: F) -> MethodRouter
    where
        Req: DeserializeOwned + Default + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Services, Request<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Answer<Resp>> + Send + 'static,
    {
        self.one_request(call, |reply: Resp| json(StatusCode::OK, &reply))
    }

    /// A route for a method that takes one request and answers a stream.
    fn server_stream<Req, Resp, S, F, Fut>(&self, call: F) -> MethodRouter
    where
        Req: DeserializeOwned + Default + Send + 'static,
        Resp: Serialize + Send + 'static,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
        F: Fn(Services, Request<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Answer<S>> + Send + 'static,
    {
        self.one_request(call, results::<Resp, S>)
    }

    /// A route for a method that takes one request: its reply as `answer` writes it.
    fn one_request<Req, Out, F, Fut>(&self, call: F, answer: fn(Out) -> Response) -> MethodRouter
    where
        Req: DeserializeOwned + Default + Send + 'static,
        Out: Send + 'static,
        F: Fn(Services, Request<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Answer<Out>> + Send + 'static,
    {
        let g = self.clone();
        with_preflight(post(
            move |headers: HeaderMap, body: WholeBody| async move {
                let request = match g.request(body) {
                    Ok(r) => r,
                    Err(refused) => return error(refused),
                };
                // The Authorization header reaches the service as grpc-gateway passes it.
                let request = Request::from_parts(
                    MetadataMap::from_headers(headers),
                    Default::default(),
                    request,
                );
                match call(g.services.clone(), request).await {
                    Ok(reply) => answer(reply.into_inner()),
                    Err(status) => error(status),
                }
            },
        ))
    }

    /// A route for a bidirectional stream: the body's JSON values are the requests, taken
    /// as they arrive. A malformed first request is refused with an error answer, as
    /// grpc-gateway refuses it; a later one ends the client's side of the stream only
    /// (a watch then goes on sending events).
    fn bidi<Req, Resp, S, F>(&self, session: F) -> MethodRouter
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
        F: Fn(&Services, Caller, Requests<Req>) -> S + Clone + Send + Sync + 'static,
    {
        let g = self.clone();
        with_preflight(post(move |headers: HeaderMap, body: Body| async move {
            if let Err(refused) = g.serving() {
                return error(refused);
            }
            let caller = match g
                .services
                .caller_of(&MetadataMap::from_headers(headers))
                .await
            {
                Ok(caller) => caller,
                Err(refused) => return error(refused),
            };
            let mut values = json_values::<Req>(body);
            let requests: Requests<Req> = match values.next().await {
                Some(Ok(first)) => {
                    Box::pin(tokio_stream::once(Ok(first)).chain(values.take_while(Result::is_ok)))
                }
                Some(Err(status)) => return error(status),
                None => Box::pin(tokio_stream::empty()),
            };
            results(session(&g.services, caller, requests))
        }))
    }
}

/// Answer a CORS preflight (`OPTIONS`) as etcd does, so pages may call the route.
fn with_preflight(route: MethodRouter) -> MethodRouter {
    route.options(|| async { StatusCode::OK })
}

/// The body's first JSON value; an empty body or `null` is the empty request, as in
/// grpc-gateway, and anything after the first value is not read.
fn first_value<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Option<T>>();
    match values.next() {
        None => Ok(T::default()),
        Some(Ok(value)) => Ok(value.unwrap_or_default()),
        Some(Err(e)) => Err(Status::invalid_argument(e.to_string())),
    }
}

/// The JSON values of a body that may arrive in pieces, each as soon as it is whole.
/// A value that grows past [`MAX_BODY`] unfinished ends the stream with etcd's
/// "request is too large", so a client cannot make the member buffer without bound.
fn json_values<T: DeserializeOwned + Send + 'static>(
    body: Body,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        let mut pending: Vec<u8> = Vec::new();
        loop {
            match next_value::<T>(&mut pending) {
                Ok(Some(value)) => {
                    if tx.send(Ok(value)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) if pending.len() > MAX_BODY => {
                    let _ = tx.send(Err(Status::invalid_argument(TOO_LARGE))).await;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                    return;
                }
            }
            // The session may end first (a keep-alive failed, the client went away).
            let chunk = tokio::select! {
                chunk = chunks.next() => chunk,
                () = tx.closed() => return,
            };
            match chunk {
                Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    let _ = tx.send(Err(Status::cancelled(e.to_string()))).await;
                    return;
                }
                None if pending.iter().all(u8::is_ascii_whitespace) => return,
                None => {
                    let message = "the request body ends inside a JSON value";
                    let _ = tx.send(Err(Status::invalid_argument(message))).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Take the first whole JSON value off `pending`: None if it holds none yet.
fn next_value<T: DeserializeOwned>(pending: &mut Vec<u8>) -> Result<Option<T>, serde_json::Error> {
    let mut values = serde_json::Deserializer::from_slice(pending).into_iter::<T>();
    match values.next() {
        Some(Ok(value)) => {
            let used = values.byte_offset();
            pending.drain(..used);
            Ok(Some(value))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

/// A streamed answer: one `{"result": ...}` line per response, and an error that ends the
/// stream as one `{"error": ...}` line, as grpc-gateway streams them.
fn results<Resp, S>(responses: S) -> Response
where
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    #[derive(Serialize)]
    struct Result_<T> {
        result: T,
    }
    #[derive(Serialize)]
    struct StreamError {
        error: StreamErrorBody,
    }
    #[derive(Serialize)]
    struct StreamErrorBody {
        grpc_code: i32,
        http_code: u16,
        message: String,
        http_status: &'static str,
    }
    let lines = responses.map(|item| {
        let mut line = match item {
            Ok(result) => serde_json::to_vec(&Result_ { result }),
            Err(status) => {
                let http = http_status(status.code());
                serde_json::to_vec(&StreamError {
                    error: StreamErrorBody {
                        grpc_code: status.code() as i32,
                        http_code: http.as_u16(),
                        message: status.message().to_string(),
                        http_status: http.canonical_reason().unwrap_or(""),
                    },
                })
            }
        }
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(line))
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json<T: Serialize>(code: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error(Status::internal(e.to_string())),
    }
}

/// grpc-gateway's error body, with the HTTP status it gives the code.
fn error(status: Status) -> Response {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        message: &'a str,
        code: i32,
    }
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    json(http_status(status.code()), &body)
}

/// The HTTP status grpc-gateway (v1, as in etcd 3.4) answers a gRPC code with.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        // Seen from etcd 3.4 (a role not found): v1 answers 412, v2 400.
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// etcd's gateway lets pages from any origin call it.
async fn allow_cross_origin(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_read_as_etcds_gateway_reads_it() {
        let empty: pb::RangeRequest = first_value(b"").unwrap();
        assert_eq!(empty, pb::RangeRequest::default());
        let null: pb::RangeRequest = first_value(b" null ").unwrap();
        assert_eq!(null, pb::RangeRequest::default());
        let r: pb::RangeRequest =
            first_value(br#"{"key":"Zm9v","revision":"3","keys_only":true,"limit":2,"x":1}"#)
                .unwrap();
        assert_eq!(
            (&r.key[..], r.revision, r.keys_only, r.limit),
            (&b"foo"[..], 3, true, 2)
        );
        let camel: pb::RangeRequest =
            first_value(br#"{"rangeEnd":"AA==","sort_order":"DESCEND"}"#).unwrap();
        assert_eq!(camel.range_end, vec![0]);
        assert_eq!(
            camel.sort_order,
            pb::range_request::SortOrder::Descend as i32
        );
        let bad = first_value::<pb::RangeRequest>(br#"{"key":1}"#).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
    }

    #[test]
    fn stream_bodies_yield_each_value_once_it_is_whole() {
        let mut pending = br#"{"ID":"5"} {"ID":"#.to_vec();
        let first: Option<pb::LeaseKeepAliveRequest> = next_value(&mut pending).unwrap();
        assert_eq!(first.unwrap().id, 5);
        assert!(
            next_value::<pb::LeaseKeepAliveRequest>(&mut pending)
                .unwrap()
                .is_none()
        );
        pending.extend_from_slice(br#""6"}"#);
        assert_eq!(
            next_value::<pb::LeaseKeepAliveRequest>(&mut pending)
                .unwrap()
                .unwrap()
                .id,
            6
        );
        assert!(
            next_value::<pb::LeaseKeepAliveRequest>(&mut pending)
                .unwrap()
                .is_none()
        );
        let mut broken = b"{]".to_vec();
        assert!(next_value::<pb::LeaseKeepAliveRequest>(&mut broken).is_err());
    }

    #[test]
    fn responses_are_written_as_etcds_gateway_writes_them() {
        let header = pb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        };
        let status = pb::StatusResponse {
            header: Some(header),
            version: "3.4.0".into(),
            db_size: 20480,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"4"},"version":"3.4.0","dbSize":"20480"}"#
        );
    }
}
