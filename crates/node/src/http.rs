//! The node's HTTP endpoints: Prometheus `/metrics`, `/health` and `/version`, as etcd
//! serves them, and (PBFT) `/pbft/certificate/{seq|latest}`, a committed batch's
//! certificate for clients that trust the validators' public keys and nothing else.
//! They are served on the metrics address, and on the client port to requests that are
//! not gRPC, where etcd serves them (`etcdctl check datascale` and health probes look
//! there); anything else there that is not gRPC gets 404, as from etcd.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{Call, NodeStatus};

/// How often histograms' samples are folded into their buckets when nobody scrapes:
/// until then the recorder holds every sample.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Install the process-wide metrics recorder, and the task that keeps its memory
/// bounded. None if one is already installed (then `/metrics` is served empty).
pub fn install_recorder() -> Option<PrometheusHandle> {
    let handle = new_recorder();
    if handle.is_none() {
        tracing::warn!("a metrics recorder was installed already: /metrics will be empty");
    }
    if let Some(handle) = handle.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    handle
}

fn new_recorder() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ])
        .expect("buckets are non-empty")
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    Some(handle)
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serve `router` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

/// The endpoints. `/health` is 200 while a leader is known and the member serves
/// (`open`: not while it checks its data at start), 503 otherwise.
pub fn router(
    handle: Option<PrometheusHandle>,
    status: watch::Receiver<NodeStatus>,
    open: watch::Receiver<bool>,
    calls: mpsc::Sender<Call>,
) -> Router {
    let metrics_status = status.clone();
    let health_status = status;
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                let status = *metrics_status.borrow();
                async move {
                    record_gauges(&status);
                    handle.map(|h| h.render()).unwrap_or_default()
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let s = *health_status.borrow();
                let serving = *open.borrow();
                async move { health(&s, serving) }
            }),
        )
        .route(
            "/version",
            get(|| async {
                let v = crate::service::API_VERSION;
                let body = format!("{{\"etcdserver\":\"{v}\",\"etcdcluster\":\"{v}\"}}");
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }),
        )
        .route(
            "/pbft/certificate/{seq}",
            get(move |Path(seq): Path<String>| certificate(calls.clone(), seq)),
        )
}

fn health(s: &NodeStatus, serving: bool) -> (StatusCode, String) {
    match s.core.leader {
        Some(_) if !serving => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"health\":\"false\",\"reason\":\"checking its data against its peers'\"}\n"
                .to_string(),
        ),
        Some(leader) => (
            StatusCode::OK,
            format!(
                "{{\"health\":\"true\",\"leader\":{},\"term\":{},\"applied\":{}}}\n",
                leader.0, s.core.term, s.applied
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"health\":\"false\",\"reason\":\"no leader\"}\n".to_string(),
        ),
    }
}

/// Gauges read at scrape time: the process's own (named as Prometheus' Go client names
/// them, which etcd's tools read) and etcd's server gauges.
fn record_gauges(s: &NodeStatus) {
    if let Some(rss) = resident_memory_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!("etcd_server_has_leader").set(flag(s.core.leader.is_some()));
    metrics::gauge!("etcd_server_is_leader").set(flag(s.core.is_leader));
    metrics::gauge!("etcd_mvcc_db_total_size_in_bytes").set(s.db_size as f64);
}

/// This process's resident set (Linux: `VmRSS` of `/proc/self/status`).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The answer to a request on the client port that no route takes: gRPC's
/// Unimplemented to a gRPC call, 404 to anything else (as etcd answers a probe of a
/// path it does not serve).
pub async fn not_found(request: axum::http::Request<axum::body::Body>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let path = request.uri().path().to_string();
        tonic::Status::unimplemented(format!("unknown method {path}"))
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
    }
}

/// The certificate of the batch at `seq` (a number, or `latest`).
async fn certificate(calls: mpsc::Sender<Call>, seq: String) -> (StatusCode, String) {
    let n = match seq.as_str() {
        "latest" => 0,
        text => match text.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                let msg = format!("'{seq}' is not a sequence number (1, 2, ... or latest)\n");
                return (StatusCode::BAD_REQUEST, msg);
            }
        },
    };
    let (reply, answer) = oneshot::channel();
    if calls
        .send(Call::Certificate { seq: n, reply })
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is stopping\n".into(),
        );
    }
    match answer.await {
        Ok(Some(json)) => (StatusCode::OK, json + "\n"),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!(
                "no certificate for sequence {seq} here: the protocol makes none (raft), the batch is not executed yet, or a snapshot covers it\n"
            ),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is stopping\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekmat_core::NodeId;

    #[test]
    fn health_needs_a_leader_and_a_member_that_serves() {
        let mut s = NodeStatus::default();
        assert_eq!(health(&s, true).0, StatusCode::SERVICE_UNAVAILABLE);
        s.core.leader = Some(NodeId(1));
        assert_eq!(health(&s, true).0, StatusCode::OK);
        let (code, body) = health(&s, false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("checking its data"), "{body}");
    }

    #[tokio::test]
    async fn an_unknown_grpc_method_is_answered_as_grpc_and_anything_else_with_404() {
        let ask = |content_type: &'static str| {
            let request = axum::http::Request::post("/etcdserverpb.Nothing/Here")
                .header(axum::http::header::CONTENT_TYPE, content_type)
                .body(axum::body::Body::empty())
                .unwrap();
            not_found(request)
        };
        let grpc = ask("application/grpc").await;
        assert_eq!(
            grpc.status(),
            StatusCode::OK,
            "gRPC errors travel in trailers"
        );
        assert_eq!(grpc.headers()["grpc-status"], "12", "Unimplemented");
        assert_eq!(ask("text/plain").await.status(), StatusCode::NOT_FOUND);
    }
}
