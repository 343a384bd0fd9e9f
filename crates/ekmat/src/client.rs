//! Talking to a cluster as a client: endpoints in etcdctl's form, tried in order until
//! one answers.

use std::time::Duration;

use ekmat_api::etcdserverpb as pb;
use tonic::transport::{Channel, Endpoint};

/// Parse etcdctl-style endpoints: `host:port` or `http://host:port`, comma-separated.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        if url.starts_with("https://") {
            return Err(format!(
                "endpoint '{raw}': ekmat's own client commands speak no TLS yet; use http://, or etcdctl with --cacert, --cert and --key for a member that serves TLS"
            ));
        }
        Endpoint::from_shared(url.clone()).map_err(|e| format!("endpoint '{raw}': {e}"))?;
        out.push(url);
    }
    if out.is_empty() {
        return Err("no endpoints given".into());
    }
    Ok(out)
}

pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// The first endpoint that accepts a connection.
pub async fn connect_any(endpoints: &[String]) -> Result<(String, Channel), String> {
    let mut errors = Vec::new();
    for url in endpoints {
        match connect(url).await {
            Ok(ch) => return Ok((url.clone(), ch)),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(format!("no endpoint answered ({})", errors.join("; ")))
}

pub fn kv(ch: Channel) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(ch)
}

/// A gRPC failure as a one-line message (etcd's message when the server sent one).
pub fn status_message(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    }
}
