//! The node's HTTP endpoint: Prometheus `/metrics`, `/health`, and (PBFT)
//! `/pbft/certificate/{seq|latest}`, a committed batch's certificate for clients that
//! trust the validators' public keys and nothing else.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{Call, NodeStatus};

/// Install the process-wide metrics recorder. Returns None if one is already installed.
pub fn install_recorder() -> Option<PrometheusHandle> {
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

/// Serve until the process ends. `/health` is 200 while a leader is known, 503 otherwise.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Option<PrometheusHandle>,
    status: watch::Receiver<NodeStatus>,
    calls: mpsc::Sender<Call>,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.map(|h| h.render()).unwrap_or_default() }
            }),
        )
        .route(
            "/health",
            get(move || {
                let status = status.clone();
                async move {
                    let s = *status.borrow();
                    match s.core.leader {
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
            }),
        )
        .route(
            "/pbft/certificate/{seq}",
            get(move |Path(seq): Path<String>| certificate(calls.clone(), seq)),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
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
