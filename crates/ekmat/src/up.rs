//! `ekmat up`: a local cluster of real processes, one `ekmat node` child per member.
//!
//! Node i serves clients on `base-port + i`, peers on `base-port + 100 + i`, and metrics
//! on `base-port + 200 + i`. Each member's configuration and log live in its data
//! directory, so a member can be restarted by hand with the printed command, and
//! running `ekmat up` again with the same `--data-dir` brings the cluster back with its
//! data.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use ekmat_node::config::PbftClient;
use ekmat_node::{Member, NodeConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::client::Dialer;
use crate::exit;
use crate::up_tls::LocalPki;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Consensus protocol.
    #[arg(long, default_value = "raft")]
    pub protocol: String,
    /// Where members keep their data (default: a new directory under the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client port of node 0; see the module docs for the other ports.
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
    /// Skip fsync (benchmarks only: a power failure can lose acknowledged writes).
    #[arg(long)]
    pub unsafe_no_fsync: bool,
    /// Start from a backup: a file `etcdctl snapshot save` wrote, from ekmat or from etcd
    /// 3.4 (new data directories only).
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Serve TLS on every port, clients' and peers': a CA and certificates are made in
    /// <data-dir>/tls, and the etcdctl flags to use are printed.
    #[arg(long)]
    pub tls: bool,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

struct Running {
    name: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

fn addr(port: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port as u16))
}

fn node_dir(data: &Path, id: u32) -> PathBuf {
    data.join(format!("n{id}"))
}

/// Each member's share of this machine's cores (at least one), since `ekmat up` runs
/// them all here: on 2 cores, three members with a thread per core each ran 5-9%
/// fewer writes under `etcdctl check perf` than with one each.
fn share_of_cores(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).max(1)
}

fn plan(args: &UpArgs, data: &Path) -> Result<Vec<NodeConfig>, String> {
    if args.nodes == 0 || args.nodes > 50 {
        return Err("--nodes must be between 1 and 50".into());
    }
    let base = u32::from(args.base_port);
    if base == 0 || base + 200 + args.nodes as u32 > 65_535 {
        return Err(format!(
            "--base-port {base} leaves no room for {} nodes' ports",
            args.nodes
        ));
    }
    if args.protocol == "pbft"
        && let Some(e) = ekmat_node::config::pbft_size_error(args.nodes)
    {
        return Err(format!("--nodes {}: {e}", args.nodes));
    }
    let mut members: Vec<Member> = (0..args.nodes as u32)
        .map(|i| Member {
            id: i,
            name: format!("n{i}"),
            client: addr(base + i),
            peer: addr(base + 100 + i),
            metrics: Some(addr(base + 200 + i)),
            joined: false,
            public_key: None,
        })
        .collect();
    if args.protocol == "pbft" {
        // Each member's signing key lives in its own data directory (kept if it is
        // already there, so a cluster restarted on the same --data-dir keeps its keys);
        // every member's configuration lists all the public keys.
        for m in &mut members {
            let dir = node_dir(data, m.id);
            let (key, _) = ekmat_node::keys::load_or_generate(&dir).map_err(|e| e.to_string())?;
            m.public_key = Some(ekmat_node::keys::public_key_hex(&key.verifying_key()));
        }
    }
    let clients = if args.protocol == "pbft" {
        signing_clients(data)?
    } else {
        Vec::new()
    };
    let security = match args.tls {
        true => Some(LocalPki::ensure(data)?.member_security()),
        false => None,
    };
    let cfgs: Vec<NodeConfig> = (0..args.nodes as u32)
        .map(|i| NodeConfig {
            protocol: args.protocol.clone(),
            unsafe_no_fsync: args.unsafe_no_fsync,
            runtime_threads: share_of_cores(args.nodes),
            pbft_clients: clients.clone(),
            client_transport_security: security.clone(),
            peer_transport_security: security.clone(),
            ..NodeConfig::new("ekmat-up", i, node_dir(data, i), members.clone())
        })
        .collect();
    cfgs[0].validate().map_err(|e| e.to_string())?;
    Ok(cfgs)
}

/// The id `ekmat up` registers a signing client under (PBFT), and the first of the
/// ids it registers, under the same key, for a gateway (`ekmat gateway`).
const UP_CLIENT: u64 = 1;
const UP_GATEWAY_CLIENTS: std::ops::RangeInclusive<u64> = 101..=116;

fn client_key_path(data: &Path) -> PathBuf {
    data.join(format!("client-{UP_CLIENT}.key"))
}

/// A PBFT client that signs its requests, its key in the cluster's data directory
/// (kept on a rerun), registered with every member under `UP_CLIENT` and the gateway's
/// ids.
fn signing_clients(data: &Path) -> Result<Vec<PbftClient>, String> {
    let path = client_key_path(data);
    let key = if path.exists() {
        ekmat_node::keys::load_at(&path)
    } else {
        ekmat_node::keys::generate_at(&path)
    }
    .map_err(|e| e.to_string())?;
    let public_key = ekmat_node::keys::public_key_hex(&key.verifying_key());
    Ok(std::iter::once(UP_CLIENT)
        .chain(UP_GATEWAY_CLIENTS)
        .map(|id| PbftClient {
            id,
            public_key: public_key.clone(),
            user: None,
        })
        .collect())
}

/// Fail early and clearly if a port is taken (the node would fail too, less helpfully).
fn check_ports(cfgs: &[NodeConfig]) -> Result<(), String> {
    for m in &cfgs[0].members {
        for (what, a) in [
            ("client", Some(m.client)),
            ("peer", Some(m.peer)),
            ("metrics", m.metrics),
        ] {
            let Some(a) = a else { continue };
            if let Err(e) = TcpListener::bind(a) {
                return Err(format!(
                    "port {} ({}'s {what} port) is not available: {e}; choose another --base-port",
                    a.port(),
                    m.name
                ));
            }
        }
    }
    Ok(())
}

fn spawn(cfg: &NodeConfig) -> Result<Running, String> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config = dir.join("ekmat.toml");
    std::fs::write(&config, cfg.to_toml())
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let log = dir.join("node.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ekmat binary: {e}"))?;
    let child = Command::new(exe)
        .args(["node", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start node n{}: {e}", cfg.id))?;
    Ok(Running {
        name: format!("n{}", cfg.id),
        config,
        log,
        child: Some(child),
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Each member's answer to Status, by member id (`None`: it did not answer).
async fn statuses(
    cfgs: &[NodeConfig],
    dialer: &Dialer,
) -> Vec<(u32, Option<ekmat_api::etcdserverpb::StatusResponse>)> {
    use ekmat_api::etcdserverpb as pb;
    let scheme = match cfgs[0].client_transport_security {
        Some(_) => "https",
        None => "http",
    };
    let mut all = Vec::new();
    for m in &cfgs[0].members {
        let status = match dialer.connect(&format!("{scheme}://{}", m.client)).await {
            Ok(ch) => pb::maintenance_client::MaintenanceClient::new(ch)
                .status(pb::StatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner()),
            Err(_) => None,
        };
        all.push((m.id, status));
    }
    all
}

/// Whether a cluster is ready for clients.
enum Ready {
    /// Some member names a leader that itself agrees it leads, and every member
    /// answers on its client port: (leader's id, term).
    Yes((u32, u64)),
    /// These members did not answer.
    Silent(Vec<u32>),
    NoLeader,
}

impl Ready {
    fn of(all: Vec<(u32, Option<ekmat_api::etcdserverpb::StatusResponse>)>) -> Ready {
        let silent: Vec<u32> = all
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(id, _)| *id)
            .collect();
        let leader = all.into_iter().find_map(|(id, s)| {
            let s = s?;
            let agrees = s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader);
            agrees.then_some((id, s.raft_term))
        });
        match leader {
            Some(_) if !silent.is_empty() => Ready::Silent(silent),
            Some(found) => Ready::Yes(found),
            None => Ready::NoLeader,
        }
    }

    fn why_not(&self) -> String {
        match self {
            Ready::Silent(ids) => format!(
                "a leader was elected but member(s) {ids:?} did not answer on their client \
                 ports within {READY_TIMEOUT:?}; see their logs"
            ),
            _ => format!("no leader was elected within {READY_TIMEOUT:?}; see the members' logs"),
        }
    }
}

/// A cluster of `ekmat node` children, as `ekmat up` and `ekmat bench` run it.
pub struct LocalCluster {
    pub cfgs: Vec<NodeConfig>,
    nodes: Vec<Running>,
    /// How to reach the members' client ports (with `--tls`, as a client of the CA).
    dialer: Dialer,
}

impl LocalCluster {
    /// Check the ports, write each member's configuration and start it.
    pub fn start(args: &UpArgs, data: &Path) -> Result<LocalCluster, String> {
        let cfgs = plan(args, data)?;
        check_ports(&cfgs)?;
        let dialer = match args.tls {
            true => Dialer::from_args(&LocalPki::ensure(data)?.client_args())?,
            false => Dialer::plain(),
        };
        let mut cluster = LocalCluster {
            cfgs,
            nodes: Vec::new(),
            dialer,
        };
        for i in 0..cluster.cfgs.len() {
            let running = spawn(&cluster.cfgs[i])?;
            cluster.nodes.push(running);
        }
        Ok(cluster)
    }

    /// Wait until a leader is elected and every member answers on its client port (a
    /// client given every endpoint, as the benchmarks are, must find each serving):
    /// (the leader's id, its term).
    pub async fn wait_for_leader(&mut self) -> Result<(u32, u64), String> {
        let started = Instant::now();
        loop {
            let ready = Ready::of(statuses(&self.cfgs, &self.dialer).await);
            if let Ready::Yes(found) = ready {
                return Ok(found);
            }
            if check_exits(&mut self.nodes, true).is_some() {
                return Err("a member exited before the cluster was ready".into());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(ready.why_not());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process ids of the members still running.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref()?.id())
            .collect()
    }

    /// Client endpoints, `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.cfgs[0]
            .members
            .iter()
            .map(|m| m.client.to_string())
            .collect()
    }

    pub async fn stop(&mut self) {
        stop_all(&mut self.nodes).await;
    }
}

pub fn run(args: UpArgs) -> u8 {
    let data = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ekmat-up-{}", std::process::id())));
    let cfgs = match plan(&args, &data).and_then(|c| check_ports(&c).map(|()| c)) {
        Ok(cfgs) => cfgs,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if let Some(file) = &args.restore
        && let Err(e) = restore(&cfgs, file)
    {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    rt.block_on(supervise(&args, &data))
}

/// Seed every member with the backup in `file`: all of them, or (on a failure) none.
fn restore(cfgs: &[NodeConfig], file: &Path) -> Result<(), String> {
    for cfg in cfgs {
        let wal = cfg.data_dir.join("wal");
        if std::fs::read_dir(&wal).is_ok_and(|mut d| d.next().is_some()) {
            return Err(format!(
                "{} already holds a log: --restore starts a new cluster in new data directories",
                wal.display()
            ));
        }
    }
    let seed = crate::restore_cmd::prepare_file(&cfgs[0], file)?;
    for (i, cfg) in cfgs.iter().enumerate() {
        if let Err(e) = ekmat_node::backup::plant(cfg, &seed) {
            // The logs written so far (and any part of this one) would keep the
            // cluster from starting, and a rerun from restoring.
            for planted in &cfgs[..=i] {
                for dir in ["wal", "wal.seeding"] {
                    let _ = std::fs::remove_dir_all(planted.data_dir.join(dir));
                }
                let _ = std::fs::remove_file(planted.data_dir.join(ekmat_node::backup::SEED_FILE));
            }
            return Err(format!(
                "cannot restore {} into n{}: {e}",
                file.display(),
                cfg.id
            ));
        }
    }
    let s = seed.summary;
    println!(
        "restored {}: revision {}, {} versions, {} leases",
        file.display(),
        s.revision,
        s.versions,
        s.leases
    );
    Ok(())
}

async fn supervise(args: &UpArgs, data: &Path) -> u8 {
    let mut cluster = match LocalCluster::start(args, data) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::VIOLATION;
        }
    };
    println!(
        "ekmat: {}-node {} cluster, data in {}",
        args.nodes,
        args.protocol,
        data.display()
    );
    for (cfg, n) in cluster.cfgs.iter().zip(&cluster.nodes) {
        let me = cfg.me();
        let metrics = me
            .metrics
            .map_or(String::new(), |m| format!("  metrics http://{m}/metrics"));
        println!(
            "  {}  client {}  peer {}{metrics}  log {}",
            n.name,
            me.client,
            me.peer,
            n.log.display()
        );
    }
    let started = Instant::now();
    let (leader, term) = match cluster.wait_for_leader().await {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            cluster.stop().await;
            return exit::VIOLATION;
        }
    };
    println!(
        "leader: n{leader} (term {term}), elected in {} ms",
        started.elapsed().as_millis()
    );
    println!("ready: {}", cluster.endpoints().join(","));
    if args.tls {
        let flags = LocalPki::ensure(data).map(|p| p.etcdctl_flags());
        println!(
            "TLS on every port: etcdctl --endpoints https://{} {} get k",
            cluster.endpoints()[0],
            flags.unwrap_or_default()
        );
    }
    if args.protocol == "pbft" {
        let config = node_dir(data, 0).join("ekmat.toml");
        let key = client_key_path(data);
        let pki = match args.tls {
            true => LocalPki::ensure(data).ok(),
            false => None,
        };
        let dial = pki.as_ref().map(|p| p.signing_client_flags());
        println!(
            "signing client {UP_CLIENT}: ekmat pbft put KEY VALUE --config {} --client {UP_CLIENT} --key {}{}",
            config.display(),
            key.display(),
            dial.clone().unwrap_or_default()
        );
        println!(
            "gateway for etcd clients: ekmat gateway --config {} --key {} --first-client {} --clients {}{}{}",
            config.display(),
            key.display(),
            UP_GATEWAY_CLIENTS.start(),
            UP_GATEWAY_CLIENTS.count(),
            dial.unwrap_or_default(),
            pki.map(|p| p.gateway_serving_flags()).unwrap_or_default()
        );
    }
    println!("(Ctrl-C stops every node)");

    let mut signal = std::pin::pin!(crate::node_cmd::wait_for_signal());
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => { check_exits(&mut cluster.nodes, false); }
        }
    }
    println!("stopping...");
    cluster.stop().await;
    println!("stopped");
    exit::OK
}

/// Report members that exited. Before the cluster is ready, an exit is fatal.
fn check_exits(nodes: &mut [Running], starting: bool) -> Option<u8> {
    for n in nodes.iter_mut() {
        let Some(child) = n.child.as_mut() else {
            continue;
        };
        if let Ok(Some(status)) = child.try_wait() {
            n.child = None;
            eprintln!(
                "{} exited ({status}); its log {} ends:\n{}",
                n.name,
                n.log.display(),
                tail(&n.log, 5)
            );
            if starting {
                return Some(exit::VIOLATION);
            }
            eprintln!(
                "restart it with: {} node --config {}",
                std::env::current_exe().map_or("ekmat".into(), |p| p.display().to_string()),
                n.config.display()
            );
        }
    }
    None
}

/// SIGTERM every member, wait for them to finish, SIGKILL whoever does not.
async fn stop_all(nodes: &mut [Running]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for n in nodes.iter_mut() {
        let Some(mut child) = n.child.take() else {
            continue;
        };
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "{} did not stop within {STOP_TIMEOUT:?}; killing it",
                n.name
            );
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: usize, base_port: u16) -> UpArgs {
        UpArgs {
            nodes,
            protocol: "raft".into(),
            data_dir: None,
            base_port,
            unsafe_no_fsync: false,
            restore: None,
            tls: false,
        }
    }

    fn status(member_id: u64, leader: u64) -> Option<ekmat_api::etcdserverpb::StatusResponse> {
        Some(ekmat_api::etcdserverpb::StatusResponse {
            header: Some(ekmat_api::etcdserverpb::ResponseHeader {
                member_id,
                ..Default::default()
            }),
            leader,
            raft_term: 3,
            ..Default::default()
        })
    }

    #[test]
    fn a_cluster_is_ready_only_with_a_leader_and_every_member_answering() {
        let all = || {
            vec![
                (0, status(10, 11)),
                (1, status(11, 11)),
                (2, status(12, 11)),
            ]
        };
        assert!(matches!(Ready::of(all()), Ready::Yes((1, 3))));
        let mut one_silent = all();
        one_silent[2].1 = None;
        let ready = Ready::of(one_silent);
        assert!(matches!(&ready, Ready::Silent(ids) if ids == &[2]));
        assert!(
            ready.why_not().contains("[2] did not answer"),
            "{}",
            ready.why_not()
        );
        let leaderless = vec![(0, status(10, 0)), (1, status(11, 0)), (2, status(12, 0))];
        assert!(matches!(Ready::of(leaderless), Ready::NoLeader));
    }

    #[test]
    fn ports_follow_the_documented_layout() {
        let cfgs = plan(&args(3, 2379), Path::new("/tmp/x")).unwrap();
        let m = &cfgs[0].members[2];
        assert_eq!(
            (m.client.port(), m.peer.port(), m.metrics.unwrap().port()),
            (2381, 2481, 2581)
        );
        assert_eq!(cfgs[1].data_dir, Path::new("/tmp/x/n1"));
    }

    #[test]
    fn a_pbft_plan_gives_each_member_a_key_and_every_config_all_public_keys() {
        let dir = std::env::temp_dir().join(format!("ekmat-up-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut a = args(4, 2379);
        a.protocol = "pbft".into();
        let cfgs = plan(&a, &dir).unwrap();
        let keys: Vec<_> = cfgs[0]
            .members
            .iter()
            .map(|m| m.public_key.clone().unwrap())
            .collect();
        assert_eq!(
            keys.iter().collect::<std::collections::BTreeSet<_>>().len(),
            4
        );
        for (i, cfg) in cfgs.iter().enumerate() {
            cfg.validate().unwrap();
            let (secret, fresh) = ekmat_node::keys::load_or_generate(&cfg.data_dir).unwrap();
            assert!(!fresh, "n{i}'s key is in its data directory");
            let public = ekmat_node::keys::public_key_hex(&secret.verifying_key());
            assert_eq!(public, keys[i]);
        }
        // One signing client, its key beside the members' directories, registered alike.
        let client = ekmat_node::keys::load_at(&client_key_path(&dir)).unwrap();
        let public_key = ekmat_node::keys::public_key_hex(&client.verifying_key());
        let ids: Vec<u64> = cfgs[0].pbft_clients.iter().map(|c| c.id).collect();
        assert_eq!(ids[0], UP_CLIENT);
        assert_eq!(ids[1..], UP_GATEWAY_CLIENTS.collect::<Vec<_>>());
        assert!(
            cfgs[0]
                .pbft_clients
                .iter()
                .all(|c| c.public_key == public_key)
        );
        assert!(cfgs.iter().all(|c| c.pbft_clients == cfgs[0].pbft_clients));
        let again = plan(&a, &dir).unwrap();
        assert_eq!(again[0].members, cfgs[0].members, "a rerun keeps the keys");
        assert_eq!(again[0].pbft_clients, cfgs[0].pbft_clients);
        let _ = std::fs::remove_dir_all(&dir);
        a.nodes = 3;
        let err = plan(&a, &dir).unwrap_err();
        assert!(err.contains("3f+1"), "{err}");
        assert!(
            !dir.exists(),
            "no key is generated for a plan that is refused"
        );
    }

    #[test]
    fn impossible_plans_are_refused() {
        assert!(plan(&args(0, 2379), Path::new("/tmp/x")).is_err());
        assert!(plan(&args(3, 65_500), Path::new("/tmp/x")).is_err());
        let mut a = args(3, 2379);
        a.protocol = "smoke".into();
        assert!(
            plan(&a, Path::new("/tmp/x"))
                .unwrap_err()
                .contains("unknown protocol")
        );
    }
}
