//! A real network partition: members in Docker containers, each with an address of its
//! own on a private bridge network, and the leader (Raft, three members) or primary
//! (PBFT, four) cut off from its peers with iptables in its network namespace while
//! the test (on the host) still reaches it. The cut-off member must acknowledge no
//! write and serve no stale linearizable read; the others elect a leader (change
//! views) and go on; once the partition heals, every member holds the same value.
//! Then random faults follow (a member cut off, the members split in halves, a link's
//! packets dropped one way, a member killed and restarted, or none, each for 1–2.5 s)
//! for 8 s, or `EKMAT_PARTITION_SECS` (a soak). Clients on every member run
//! throughout, and their history must be linearizable.
//!
//! The containers run this build's `ekmat` (bind-mounted) on an image holding only the
//! C libraries it links, imported from the host: nothing is pulled from a registry.
//! Skipped, saying so, where Docker, `nsenter` or `iptables` is missing or the test is
//! not root; with `EKMAT_REQUIRE_DOCKER` set it fails instead.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ekmat_api::etcdserverpb as pb;
use ekmat_linearizability::kv::KvModel;
use ekmat_linearizability::{CheckOptions, Verdict, check};
use ekmat_node::{Member, NodeConfig};
use support::workload::{CLIENTS, History, client_loop, final_reads};

/// How long the clients run around the targeted partition (random ones follow).
const TARGETED_FOR: Duration = Duration::from_secs(14);

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn docker(args: &[&str]) -> Result<String, String> {
    run(Command::new("docker").args(args))
}

/// Whether this machine can run the test; if not, why.
fn unavailable() -> Option<String> {
    if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        return Some(format!("no Docker engine ({e})"));
    }
    if run(Command::new("id").arg("-u")).as_deref() != Ok("0") {
        return Some("not root (entering a container's network namespace needs it)".into());
    }
    for tool in ["nsenter", "iptables"] {
        if run(Command::new(tool).arg("--version")).is_err() {
            return Some(format!("no {tool}"));
        }
    }
    None
}

/// The containers, network and image of one run, removed on drop.
struct Lab {
    protocol: &'static str,
    members: u32,
    tag: String,
    dir: tempfile::TempDir,
    subnet_prefix: String,
    containers: Vec<String>,
    /// Each container's first process, whose network namespace is the member's.
    pids: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.tag]);
        let _ = docker(&["rmi", &self.image()]);
    }
}

impl Lab {
    fn new(protocol: &'static str, members: u32) -> Lab {
        let pid = std::process::id();
        Lab {
            protocol,
            members,
            tag: format!("ekmat-partition-{protocol}-{pid}"),
            dir: tempfile::tempdir().unwrap(),
            // A /24 of 172.31/16 (Raft) or 172.30/16 (PBFT) picked by the process id,
            // so parallel runs differ.
            subnet_prefix: match protocol {
                "raft" => format!("172.31.{}", 1 + pid % 250),
                _ => format!("172.30.{}", 1 + pid % 250),
            },
            containers: Vec::new(),
            pids: Vec::new(),
        }
    }

    fn image(&self) -> String {
        format!("{}:libs", self.tag)
    }

    fn ip(&self, id: u32) -> String {
        format!("{}.{}", self.subnet_prefix, 11 + id)
    }

    fn url(&self, id: u32) -> String {
        format!("http://{}:2379", self.ip(id))
    }

    /// An image of the shared libraries `binary` links (as `ldd` lists them), and
    /// nothing else: the binary itself is bind-mounted.
    fn import_image(&self, binary: &Path) {
        let listed = run(Command::new("ldd").arg(binary)).unwrap();
        let libs: Vec<&str> = listed
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
            .collect();
        assert!(!libs.is_empty(), "ldd listed no libraries: {listed}");
        let mut tar = Command::new("tar");
        tar.args(["-ch", "-f", "-", "-P"]).args(&libs);
        let tarball = self.dir.path().join("libs.tar");
        let bytes = tar.output().unwrap();
        assert!(bytes.status.success(), "tar of {libs:?}");
        std::fs::write(&tarball, bytes.stdout).unwrap();
        docker(&["import", tarball.to_str().unwrap(), &self.image()]).unwrap();
    }

    fn start(&mut self, binary: &Path) {
        let subnet = format!("{}.0/24", self.subnet_prefix);
        docker(&["network", "create", "--subnet", &subnet, &self.tag]).unwrap();
        let mut members: Vec<Member> = (0..self.members)
            .map(|id| Member {
                id,
                name: format!("n{id}"),
                peer: format!("{}:2380", self.ip(id)).parse().unwrap(),
                client: format!("{}:2379", self.ip(id)).parse().unwrap(),
                metrics: None,
                joined: false,
                public_key: None,
            })
            .collect();
        if self.protocol == "pbft" {
            // Each member's signing key in its data directory, every public key listed.
            for m in &mut members {
                let (key, _) = ekmat_node::keys::load_or_generate(&self.host_dir(m.id)).unwrap();
                m.public_key = Some(ekmat_node::keys::public_key_hex(&key.verifying_key()));
            }
        }
        for id in 0..self.members {
            let host_dir = self.host_dir(id);
            let cfg = NodeConfig {
                protocol: self.protocol.into(),
                ..NodeConfig::new("docker-partition", id, "/data".into(), members.clone())
            };
            std::fs::write(host_dir.join("ekmat.toml"), cfg.to_toml()).unwrap();
            let name = format!("{}-n{id}", self.tag);
            let bin = format!("{}:/ekmat:ro", binary.display());
            let data = format!("{}:/data", host_dir.display());
            let ip = self.ip(id);
            let image = self.image();
            docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &self.tag,
                "--ip",
                &ip,
                "-v",
                &bin,
                "-v",
                &data,
                &image,
                "/ekmat",
                "node",
                "--config",
                "/data/ekmat.toml",
            ])
            .unwrap();
            let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &name]).unwrap();
            self.containers.push(name);
            self.pids.push(pid);
        }
    }

    fn host_dir(&self, id: u32) -> PathBuf {
        let dir = self.dir.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Run `iptables` in member `id`'s network namespace.
    fn iptables(&self, id: u32, args: &[&str]) {
        let pid = &self.pids[id as usize];
        run(Command::new("nsenter")
            .args(["-t", pid, "-n", "iptables"])
            .args(args))
        .unwrap();
    }

    /// Cut the link between members `a` and `b`, both ways (rules at `a` only).
    fn cut(&self, a: u32, b: u32) {
        let ip = self.ip(b);
        self.iptables(a, &["-A", "INPUT", "-s", &ip, "-j", "DROP"]);
        self.iptables(a, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"]);
    }

    /// Cut member `id` off from every other member; the host still reaches it.
    fn isolate(&self, id: u32) {
        for other in (0..self.members).filter(|&o| o != id) {
            self.cut(id, other);
        }
    }

    fn heal(&self, id: u32) {
        self.iptables(id, &["-F"]);
    }

    fn heal_all(&self) {
        for id in 0..self.members {
            self.heal(id);
        }
    }

    /// One random fault for a while: a member cut off, the members split in two
    /// halves (none of which is a quorum for PBFT's four), a half-open link (packets
    /// dropped one way only: TCP then stalls both ways, but the other end's segments
    /// still arrive), a member killed (SIGKILL) and started again on its data, or
    /// none. Says which.
    fn random_fault(&mut self, rng: &mut u64) -> String {
        self.heal_all();
        let n = u64::from(self.members);
        match next(rng) % 5 {
            0 => {
                let id = (next(rng) % n) as u32;
                self.isolate(id);
                format!("n{id} cut off")
            }
            1 => {
                // Shuffle, then the first half against the rest.
                let mut order: Vec<u32> = (0..self.members).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, (next(rng) % (i as u64 + 1)) as usize);
                }
                let (a, b) = order.split_at(order.len() / 2);
                for &x in a {
                    for &y in b {
                        self.cut(x, y);
                    }
                }
                format!("{a:?} split from {b:?}")
            }
            2 => {
                let a = (next(rng) % n) as u32;
                let b = (a + 1 + (next(rng) % (n - 1)) as u32) % self.members;
                let ip = self.ip(b);
                self.iptables(a, &["-A", "INPUT", "-s", &ip, "-j", "DROP"]);
                format!("n{b}'s packets to n{a} dropped, n{a}'s to n{b} not")
            }
            3 => {
                let id = (next(rng) % n) as u32;
                self.crash_restart(id);
                format!("n{id} killed and restarted")
            }
            _ => "healed".into(),
        }
    }

    /// Kill member `id` with SIGKILL and start it again: it recovers from its data
    /// directory, in a new network namespace (its address is kept).
    fn crash_restart(&mut self, id: u32) {
        let name = &self.containers[id as usize];
        docker(&["kill", "-s", "KILL", name]).unwrap();
        docker(&["start", name]).unwrap();
        self.pids[id as usize] = docker(&["inspect", "-f", "{{.State.Pid}}", name]).unwrap();
    }

    fn logs(&self) -> String {
        self.containers
            .iter()
            .map(|c| {
                let out = Command::new("docker")
                    .args(["logs", "--tail", "30", c])
                    .output();
                let text = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
                format!("--- {c}\n{}", text.unwrap_or_default())
            })
            .collect()
    }
}

/// xorshift64*: the nemesis's choices, reproducible from the seed it prints.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// How long random faults go on after the targeted one: `EKMAT_PARTITION_SECS`
/// (a soak), else a few seconds.
fn nemesis_for() -> Duration {
    match std::env::var("EKMAT_PARTITION_SECS") {
        Ok(s) => match s.parse() {
            Ok(secs) => Duration::from_secs(secs),
            Err(e) => panic!("EKMAT_PARTITION_SECS={s}: {e} (give whole seconds)"),
        },
        Err(_) => Duration::from_secs(8),
    }
}

/// Remove what runs of this test left behind when they were killed before cleaning up
/// (their process is gone): containers, networks and images named after them.
fn sweep_leftovers() {
    let gone = |name: &str| {
        let pid = name
            .trim_start_matches("ekmat-partition-")
            .split(['-', ':'])
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
    };
    // What lists each kind by name, and what removes one.
    let kinds: [(&[&str], &[&str]); 3] = [
        (&["ps", "-a", "--format", "{{.Names}}"], &["rm", "-f"]),
        (
            &["network", "ls", "--format", "{{.Name}}"],
            &["network", "rm"],
        ),
        (
            &["images", "--format", "{{.Repository}}:{{.Tag}}"],
            &["rmi"],
        ),
    ];
    for (list, remove) in kinds {
        let names = docker(list).unwrap_or_default();
        for name in names.lines() {
            if name.starts_with("ekmat-partition-") && gone(name) {
                let _ = docker(&[remove, &[name]].concat());
            }
        }
    }
}

/// The leader member `from` reports, as an ekmat member id.
async fn leader_seen_by(lab: &Lab, from: u32) -> Option<u32> {
    let status = support::status(&lab.url(from)).await.ok()?;
    (status.leader != 0).then(|| (status.leader - 1) as u32)
}

async fn wait_for_leader(lab: &Lab, among: &[u32], not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for &m in among {
            if let Some(l) = leader_seen_by(lab, m).await
                && among.contains(&l)
                && Some(l) != not
            {
                return l;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no leader among {among:?} in 30 s\n{}", lab.logs());
}

async fn kv(lab: &Lab, id: u32) -> pb::kv_client::KvClient<tonic::transport::Channel> {
    let ch = support::channel(&lab.url(id))
        .await
        .expect("reach the member");
    pb::kv_client::KvClient::new(ch)
}

/// Put `k` = `value` at the members in `among`, one after another, until one takes it
/// (within 30 s): its revision.
async fn put_until_taken(lab: &Lab, among: &[u32], value: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tried = Vec::new();
    for &m in among.iter().cycle() {
        match put(lab, m, value).await {
            Ok(revision) => return revision,
            Err(e) => tried.push(format!("n{m}: {}", e.message())),
        }
        if Instant::now() > deadline {
            panic!(
                "no member of {among:?} took a put: {tried:?}\n{}",
                lab.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!("cycle never ends")
}

/// Put `k` = `value` at member `id`: the revision it was written at.
async fn put(lab: &Lab, id: u32, value: &str) -> Result<i64, tonic::Status> {
    let request = pb::PutRequest {
        key: b"k".to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let answer = kv(lab, id).await.put(request).await?.into_inner();
    Ok(answer.header.map_or(0, |h| h.revision))
}

async fn get(lab: &Lab, id: u32, serializable: bool) -> Result<Option<String>, tonic::Status> {
    let request = pb::RangeRequest {
        key: b"k".to_vec().into(),
        serializable,
        ..Default::default()
    };
    let answer = kv(lab, id).await.range(request).await?.into_inner();
    Ok(answer
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_through_real_partitions_loses_nothing_and_stays_linearizable() {
    through_partitions("raft", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbft_through_real_partitions_loses_nothing_and_stays_linearizable() {
    through_partitions("pbft", 4).await;
}

async fn through_partitions(protocol: &'static str, members: u32) {
    if let Some(why) = unavailable() {
        assert!(
            std::env::var("EKMAT_REQUIRE_DOCKER").is_err(),
            "EKMAT_REQUIRE_DOCKER is set but {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ekmat"));
    sweep_leftovers();
    let mut lab = Lab::new(protocol, members);
    lab.import_image(&binary);
    lab.start(&binary);
    let all: Vec<u32> = (0..members).collect();
    let old = wait_for_leader(&lab, &all, None).await;
    put(&lab, old, "before")
        .await
        .expect("a put before the partition");
    // Clients on every member all along, their history checked at the end.
    let history: History = Arc::default();
    let t0 = Instant::now();
    let urls: Vec<String> = all.iter().map(|&m| lab.url(m)).collect();
    let nemesis_for = nemesis_for();
    let load_until = t0 + TARGETED_FOR + nemesis_for;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (urls, history) = (urls.clone(), history.clone());
            tokio::spawn(client_loop(id, urls, history, t0, load_until))
        })
        .collect();

    eprintln!("leader n{old}; cutting it off from its peers");
    lab.isolate(old);
    let rest: Vec<u32> = all.iter().copied().filter(|&m| m != old).collect();
    // The cut-off leader cannot commit: its put is never acknowledged.
    let alone = tokio::time::timeout(Duration::from_secs(5), put(&lab, old, "alone")).await;
    assert!(
        !matches!(alone, Ok(Ok(_))),
        "the isolated leader acknowledged a write\n{}",
        lab.logs()
    );
    // The others go on: a put at one of them commits once they elect a leader (Raft)
    // or, its request not ordered by the cut-off primary, change views (PBFT).
    let after = put_until_taken(&lab, &rest, "after").await;
    let new = wait_for_leader(&lab, &rest, Some(old)).await;
    eprintln!(
        "n{new} leads the rest, a put there at revision {after}; the cut-off one's: {alone:?}"
    );
    // Nor does it serve a linearizable read: it would be stale now.
    let read = tokio::time::timeout(Duration::from_secs(3), get(&lab, old, false)).await;
    assert!(
        !matches!(read, Ok(Ok(Some(ref v))) if v != "after"),
        "stale linearizable read at the isolated member: {read:?}"
    );

    eprintln!("linearizable read at the cut-off member: {read:?}; healing");
    lab.heal(old);
    // Raft overwrites the cut-off leader's entry. A PBFT member's request may still be
    // ordered once its bundle gets through (the client was never told either way), so
    // there the value may be either.
    let allowed: &[&str] = match protocol {
        "raft" => &["after"],
        _ => &["after", "alone"],
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(v)) = get(&lab, old, false).await {
            assert!(allowed.contains(&v.as_str()), "{v} at the healed member");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no read at the healed member\n{}",
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The healed member takes writes again, and every member ends with the same value.
    let last = put_until_taken(&lab, &[old], "healed").await;
    for &m in &all {
        support::wait_applied(&lab.url(m), last, Duration::from_secs(30)).await;
        let value = get(&lab, m, true).await.unwrap();
        assert_eq!(value.as_deref(), Some("healed"), "member {m}");
    }

    // Then random faults until shortly before the clients stop, and all healed.
    let mut rng = t0.elapsed().as_nanos() as u64 | 1;
    eprintln!("{protocol}: random faults for {nemesis_for:?}, seed {rng}");
    while Instant::now() + Duration::from_secs(3) < load_until {
        let fault = lab.random_fault(&mut rng);
        eprintln!("{protocol}: {fault}");
        tokio::time::sleep(Duration::from_millis(1000 + next(&mut rng) % 1500)).await;
    }
    lab.heal_all();
    let healed_at = Instant::now();
    let settled = put_until_taken(&lab, &all, "settled").await;
    let took = healed_at.elapsed();
    eprintln!("{protocol}: all healed; a write taken {took:?} later");
    for &m in &all {
        support::wait_applied(&lab.url(m), settled, Duration::from_secs(30)).await;
    }

    for c in clients {
        c.await.unwrap();
    }
    if let Err(e) = final_reads(&lab.url(old), &history, t0).await {
        panic!("{e}\n{}", lab.logs());
    }
    let history = history.lock().unwrap().clone();
    let ok = history.iter().filter(|o| o.ret.is_some()).count();
    let unknown = history.len() - ok;
    // The default search budget suits the default run; a soak's history is hundreds of
    // times longer, and so is the search it needs.
    let options = CheckOptions {
        max_steps: (history.len() as u64 * 200).max(CheckOptions::DEFAULT_MAX_STEPS),
    };
    let verdict = check(&KvModel, &history, &options).unwrap();
    assert_eq!(verdict, Verdict::Linearizable, "{ok} ok, {unknown} unknown");
    assert!(
        ok > 50,
        "the clients got too little done: {ok} ok, {unknown} unknown"
    );
    eprintln!("{protocol}: history of {ok} ok and {unknown} unknown operations, linearizable");
}
