//! `ekmat status`: each member's view — leader, term, commit and applied indexes, and how
//! far each member's state machine lags the leader's commit index.

use std::time::Duration;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use ekmat_api::etcdserverpb as pb;

use crate::client::{Dialer, TlsArgs, status_message};
use crate::exit;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long, env = "ETCDCTL_ENDPOINTS", default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

struct Row {
    endpoint: String,
    status: Result<pb::StatusResponse, String>,
}

async fn query(dialer: &Dialer, url: &str) -> Result<pb::StatusResponse, String> {
    let ch = dialer.connect(url).await.map_err(|e| e.to_string())?;
    let mut m = pb::maintenance_client::MaintenanceClient::new(ch);
    let fut = m.status(pb::StatusRequest {});
    match tokio::time::timeout(Duration::from_secs(3), fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(status_message(&s)),
        Err(_) => Err("timed out".into()),
    }
}

pub fn run(args: StatusArgs) -> u8 {
    let dialer = Dialer::from_args(&args.tls);
    let endpoints = match dialer.and_then(|d| Ok((d.endpoints(&args.endpoints)?, d))) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let rows: Vec<Row> = rt.block_on(async {
        let mut rows = Vec::new();
        let (urls, dialer) = &endpoints;
        for url in urls {
            rows.push(Row {
                endpoint: url.clone(),
                status: query(dialer, url).await,
            });
        }
        rows
    });
    let leader_commit = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .filter(|s| s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader))
        .map(|s| s.raft_index)
        .max();
    if args.json {
        print_json(&rows, leader_commit);
    } else {
        print_table(&rows, leader_commit);
    }
    if rows.iter().all(|r| r.status.is_err()) {
        exit::VIOLATION
    } else {
        exit::OK
    }
}

fn print_table(rows: &[Row], leader_commit: Option<u64>) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "endpoint", "member", "leader", "term", "commit", "applied", "lag", "revision", "error",
    ]);
    for r in rows {
        match &r.status {
            Ok(s) => {
                let member = s.header.as_ref().map_or(0, |h| h.member_id);
                let lag = leader_commit.map_or("?".into(), |c| {
                    c.saturating_sub(s.raft_applied_index).to_string()
                });
                let is_leader = if member == s.leader && member != 0 {
                    "yes"
                } else {
                    ""
                };
                t.add_row(vec![
                    r.endpoint.clone(),
                    format!("{member:x}"),
                    is_leader.into(),
                    s.raft_term.to_string(),
                    s.raft_index.to_string(),
                    s.raft_applied_index.to_string(),
                    lag,
                    s.header.as_ref().map_or(0, |h| h.revision).to_string(),
                    String::new(),
                ]);
            }
            Err(e) => {
                t.add_row(vec![
                    r.endpoint.clone(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    e.clone(),
                ]);
            }
        }
    }
    println!("{t}");
    let leaders: Vec<u64> = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .map(|s| s.leader)
        .collect();
    match leaders.iter().find(|l| **l != 0) {
        Some(l) => println!("leader: member {l:x}"),
        None => println!("leader: none known"),
    }
}

fn print_json(rows: &[Row], leader_commit: Option<u64>) {
    let members: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| match &r.status {
            Ok(s) => serde_json::json!({
                "endpoint": r.endpoint,
                "member_id": s.header.as_ref().map_or(0, |h| h.member_id),
                "leader": s.leader,
                "term": s.raft_term,
                "commit": s.raft_index,
                "applied": s.raft_applied_index,
                "lag": leader_commit.map(|c| c.saturating_sub(s.raft_applied_index)),
                "revision": s.header.as_ref().map_or(0, |h| h.revision),
            }),
            Err(e) => serde_json::json!({ "endpoint": r.endpoint, "error": e }),
        })
        .collect();
    println!("{}", serde_json::json!({ "members": members }));
}
