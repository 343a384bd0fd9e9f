//! A local etcd cluster (Debian's `etcd-server`), started so benchmarks can compare ekmat
//! with etcd on the same machine, under the same load and the same durability.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::client::connect;

pub struct EtcdCluster {
    children: Vec<Child>,
    pub endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Start `n` members with clients on `base+i` and peers on `base+100+i`.
    pub async fn start(n: usize, base: u16, data: &Path) -> Result<EtcdCluster, String> {
        let which = std::process::Command::new("etcd").arg("--version").output();
        if which.is_err() {
            return Err("etcd is not installed (Debian: apt-get install etcd-server)".into());
        }
        let peer = |i: usize| format!("http://127.0.0.1:{}", base as usize + 100 + i);
        let client = |i: usize| format!("http://127.0.0.1:{}", base as usize + i);
        let initial: Vec<String> = (0..n).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut children = Vec::new();
        for i in 0..n {
            let dir = data.join(format!("e{i}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args([
                    "--listen-client-urls",
                    &client(i),
                    "--advertise-client-urls",
                    &client(i),
                ])
                .args([
                    "--listen-peer-urls",
                    &peer(i),
                    "--initial-advertise-peer-urls",
                    &peer(i),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "ekmat-bench",
                ])
                .args(["--log-outputs", "stderr", "--logger", "zap"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start etcd: {e}"))?;
            children.push(child);
        }
        let endpoints: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", base as usize + i))
            .collect();
        let cluster = EtcdCluster {
            children,
            endpoints,
        };
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    async fn wait_for_leader(&self) -> Result<(), String> {
        use ekmat_api::etcdserverpb as pb;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            for e in &self.endpoints {
                if let Ok(ch) = connect(&format!("http://{e}")).await
                    && let Ok(r) = pb::maintenance_client::MaintenanceClient::new(ch)
                        .status(pb::StatusRequest {})
                        .await
                    && r.into_inner().leader != 0
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err("etcd elected no leader within 30 s".into())
    }

    pub async fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
    }
}
