//! The node's HTTP endpoint: Prometheus `/metrics` and `/health`.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::driver::NodeStatus;

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
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}
