//! A cluster of real `ekmat node` processes on 127.0.0.1, for tests.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_node::{Member, NodeConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

pub mod workload;

pub fn ekmat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ekmat"))
}

#[allow(unused_imports)] // each test binary uses a different part
pub use ekmat_node::ports::{unused_port as free_port, unused_port_block};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cfgs: Vec<NodeConfig>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    pub fn start(n: u32) -> Cluster {
        Cluster::start_with(n, |_| {})
    }

    /// A cluster whose configurations `tweak` adjusts before the nodes start.
    pub fn start_with(n: u32, tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        let mut c = Cluster::configure(n, tweak);
        for i in 0..n as usize {
            c.spawn(i);
        }
        c
    }

    /// [`Cluster::start_with`] without starting anyone: the caller spawns each member.
    pub fn configure(n: u32, tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: i,
                name: format!("n{i}"),
                peer: addr(free_port()),
                client: addr(free_port()),
                metrics: Some(addr(free_port())),
                joined: false,
                public_key: None,
            })
            .collect();
        let cfgs: Vec<NodeConfig> = (0..n)
            .map(|i| {
                let mut cfg =
                    NodeConfig::new("test", i, dir.path().join(format!("n{i}")), members.clone());
                tweak(&mut cfg);
                cfg
            })
            .collect();
        Cluster {
            dir,
            cfgs,
            children: (0..n).map(|_| None).collect(),
        }
    }

    /// Configure (not start) a node that will join the running cluster: it knows the
    /// founding members and itself, marked `joined`. Returns its index.
    pub fn prepare_joiner(&mut self) -> usize {
        let i = self.cfgs.len();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut members = self.cfgs[0].members.clone();
        members.push(Member {
            id: i as u32,
            name: format!("n{i}"),
            peer: addr(free_port()),
            client: addr(free_port()),
            metrics: None,
            joined: true,
            public_key: None,
        });
        let data = self.dir.path().join(format!("n{i}"));
        self.cfgs
            .push(NodeConfig::new("test", i as u32, data, members));
        self.children.push(None);
        i
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.toml"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.log"))
    }

    pub fn spawn(&mut self, i: usize) {
        self.spawn_with_env(i, &[]);
    }

    /// Start member `i` with `env` set in its environment (a fault to inject).
    pub fn spawn_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let path = self.config_path(i);
        std::fs::write(&path, self.cfgs[i].to_toml()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let child = ekmat()
            .args(["node", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    pub fn pid(&self, i: usize) -> Pid {
        Pid::from_raw(self.children[i].as_ref().expect("running").id() as i32)
    }

    pub fn kill9(&mut self, i: usize) {
        let mut child = self.children[i].take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn pause(&self, i: usize) {
        kill(self.pid(i), Signal::SIGSTOP).unwrap();
    }

    pub fn resume(&self, i: usize) {
        kill(self.pid(i), Signal::SIGCONT).unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.children[i].take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        child.wait().unwrap()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.cfgs[i].me().client)
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.cfgs.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// The index of the member that says it leads, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> usize {
        let started = Instant::now();
        loop {
            for i in 0..self.cfgs.len() {
                if self.children[i].is_none() {
                    continue;
                }
                if let Ok(s) = status(&self.endpoint(i)).await
                    && s.leader != 0
                    && s.header.is_some_and(|h| h.member_id == s.leader)
                {
                    return i;
                }
            }
            assert!(
                started.elapsed() < within,
                "no leader within {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        (0..self.cfgs.len())
            .map(|i| format!("--- n{i} ---\n{}", tail(&self.log(i), 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(mut c) = child.take() {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
                let _ = i;
            }
        }
    }
}

/// A child process stopped when dropped as Ctrl-C stops it (SIGINT: `ekmat up` then
/// stops its members, a gateway its server), killed if it has not exited within 10 s.
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
}

pub async fn status(url: &str) -> Result<pb::StatusResponse, String> {
    let ch = channel(url).await.map_err(|e| e.to_string())?;
    pb::maintenance_client::MaintenanceClient::new(ch)
        .status(pb::StatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

/// Waits until the member at `url` has applied revision `rev`: a follower applies a
/// write a moment after the leader acknowledged it, and etcd answers a request for a
/// revision not applied yet with "future revision".
pub async fn wait_applied(url: &str, rev: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let applied = status(url)
            .await
            .ok()
            .and_then(|s| s.header)
            .map_or(0, |h| h.revision);
        if applied >= rev {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not apply revision {rev} within {within:?} (at {applied})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backup file `etcdctl snapshot save` would write of the member at `url`: the
/// stream's data, then its SHA-256.
pub async fn backup(url: &str) -> Vec<u8> {
    let ch = channel(url).await.unwrap();
    let mut stream = pb::maintenance_client::MaintenanceClient::new(ch)
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut file = Vec::new();
    while let Some(frame) = stream.message().await.unwrap() {
        file.extend(frame.blob);
    }
    file
}

/// Lease `id`'s time to live at the member at `url`, with its keys.
pub async fn lease_ttl(url: &str, id: i64) -> pb::LeaseTimeToLiveResponse {
    pb::lease_client::LeaseClient::new(channel(url).await.unwrap())
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner()
}

/// `ekmat restore FILE --config CONFIG`, run to completion.
pub fn restore(file: &Path, config: &Path) -> std::process::Output {
    ekmat()
        .arg("restore")
        .arg(file)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

pub fn write_config(path: &Path, cfg: &NodeConfig) {
    std::fs::write(path, cfg.to_toml()).unwrap();
}

/// A metric's value in a Prometheus text page.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A metric summed over every member of `c` (the one that counts may change).
#[allow(dead_code)] // not every test binary uses it
pub fn metric_sum(c: &Cluster, name: &str) -> f64 {
    c.cfgs
        .iter()
        .map(|cfg| metric(&scrape(cfg.me().metrics.expect("metrics address")), name))
        .map(|v| v.unwrap_or(0.0))
        .sum()
}

/// Put `key`, returning the revision the put made.
#[allow(dead_code)] // not every test binary uses it
pub async fn put_revision(
    kv: &mut pb::kv_client::KvClient<Channel>,
    key: String,
    value: String,
) -> i64 {
    let put = pb::PutRequest {
        key: key.into_bytes().into(),
        value: value.into_bytes().into(),
        ..Default::default()
    };
    let reply = kv.put(put).await.unwrap().into_inner();
    reply.header.unwrap().revision
}

/// The `/metrics` page of a member's metrics address.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics")
}

/// The whole HTTP/1.0 response (status line, headers, body) to `GET path`.
#[allow(dead_code)] // not every test binary uses it
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// etcdctl (API 3) at `endpoints` with `args` and `stdin`, run to completion: whether
/// it succeeded, its stdout and its stderr.
#[allow(dead_code)] // not every test binary uses it
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Whether etcd's `etcdctl` is installed; if not, a test skips (unless
/// `EKMAT_REQUIRE_ETCDCTL` is set, as in CI: then it fails).
#[allow(dead_code)] // not every test binary uses it
pub fn etcdctl_available() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("EKMAT_REQUIRE_ETCDCTL").is_err(),
            "EKMAT_REQUIRE_ETCDCTL is set but etcdctl is not installed"
        );
        eprintln!("skipped: etcdctl is not installed (apt-get install etcd-client)");
    }
    found
}

/// A real single-member etcd on free ports, killed on drop.
pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

/// `etcdctl snapshot restore`'s arguments that make `dir` the data of an [`Etcd`]
/// member called `name` at `peer` (what [`Etcd::start_restored`] gives its closure).
#[allow(dead_code)] // not every test binary uses it
pub fn etcd_restore_args(file: &Path, name: &str, peer: &str, dir: &Path) -> Vec<String> {
    let file = file.to_str().unwrap();
    let cluster = format!("{name}={peer}");
    let dir = dir.to_str().unwrap();
    [
        "snapshot",
        "restore",
        file,
        "--name",
        name,
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        peer,
        "--data-dir",
        dir,
    ]
    .map(String::from)
    .to_vec()
}

/// The member name and peer URL an [`Etcd`] on `peer` uses; `etcdctl snapshot restore`
/// must be given the same.
pub fn etcd_member(peer: u16) -> (&'static str, String) {
    ("default", format!("http://127.0.0.1:{peer}"))
}

impl Etcd {
    /// Whether etcd is installed; if not, a test skips (unless `EKMAT_REQUIRE_ETCD` is
    /// set, as in CI: then it fails).
    pub fn installed() -> bool {
        let installed = Command::new("etcd").arg("--version").output().is_ok();
        if !installed {
            assert!(
                std::env::var("EKMAT_REQUIRE_ETCD").is_err(),
                "EKMAT_REQUIRE_ETCD is set but etcd is not installed"
            );
            eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        }
        installed
    }

    /// A fresh etcd.
    pub fn start() -> Option<Etcd> {
        if !Etcd::installed() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let client = unused_port_block(2);
        Some(Etcd::spawn(dir, &data, client))
    }

    /// etcd on a data directory made by `restore(name, peer URL, directory)`, which is
    /// given the member name and peer URL the etcd will use.
    pub fn start_restored(restore: impl FnOnce(&str, &str, &Path)) -> Option<Etcd> {
        if !Etcd::installed() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let client = unused_port_block(2);
        let (name, peer_url) = etcd_member(client + 1);
        restore(name, &peer_url, &data);
        Some(Etcd::spawn(dir, &data, client))
    }

    fn spawn(dir: tempfile::TempDir, data: &Path, client: u16) -> Etcd {
        let url = format!("http://127.0.0.1:{client}");
        let (name, peer_url) = etcd_member(client + 1);
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(data)
            .args(["--name", name])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Etcd {
            child,
            url,
            _dir: dir,
        }
    }

    /// Wait until it answers Status.
    pub async fn wait_ready(&self) {
        let started = Instant::now();
        while status(&self.url).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "etcd did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
