//! PBFT in the simulator: validators with keys derived from a fixed seed, some of them
//! Byzantine. A Byzantine node runs the honest replica and rewrites what it sends
//! (`byzantine.rs`), so it knows everything an honest replica knows and holds its own
//! key, but no other replica's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ekmat_core::{
    Committed, CommittedEntry, DetRng, Effect, Effects, Input, NodeId, Replica, Reply, RequestId,
    RequestKind, Time,
};
use ekmat_pbft::client::{
    ANONYMOUS_CLIENT, ClientRegistry, ClusterId, derive_client_key, sign_request,
};
use ekmat_pbft::crypto::{SigningKey, derive_key};
use ekmat_pbft::message::{ClientRequest, Digest, Message, sha256};
use ekmat_pbft::readmission::{Readmission, ReadmitVote, vote};
use ekmat_pbft::{Mutant, Pbft, PbftConfig, PbftStable, READMISSION_CLIENT, Write};

use super::byzantine::{Adversary, Byzantine};
use super::twins::{Twin, talks_to_twin};
use crate::check::pbft::PbftChecker;
use crate::protocol::SimProtocol;

/// The correct replicas' wall clock at simulated time zero (ms since the Unix epoch):
/// PBFT's clocks do not drift in the simulator, so a correct replica's wall clock is
/// this plus the simulated time.
pub const WALL_EPOCH_MS: u64 = 1_700_000_000_000;

/// The validators' keys are derived from this (the same in every run: keys are not
/// what the simulator explores).
const KEY_SEED: u64 = 0x00ec_3a71;

/// Clients with odd ids up to this sign their own requests (registered with every
/// validator); the others' requests stand on their gateway's word (see [`anonymous`]).
/// Every kind runs in every seed.
const LAST_SIGNING_CLIENT: u64 = 255;

/// Whether client `client` signs its requests.
pub fn signs(client: u64) -> bool {
    client % 2 == 1 && client <= LAST_SIGNING_CLIENT
}

/// Whether client `client` is anonymous, as the real cluster's etcd clients are: its
/// requests reach the replica under client 0 (the runtime's gateway numbering), which
/// no session deduplicates, so only the record of executed bundles keeps them from
/// executing twice. Every seed has such clients (ids 2 mod 4); the other even ids
/// carry their id on their gateway's word.
pub fn anonymous(client: u64) -> bool {
    client % 4 == 2
}

/// The id an anonymous client's request has inside the replica: client 0, numbered
/// uniquely (its gateway's numbering in the runtime).
fn anonymize(id: RequestId) -> RequestId {
    assert!(
        id.seq < 1 << 32,
        "a simulated client sends fewer than 2^32 requests"
    );
    RequestId {
        client: ANONYMOUS_CLIENT,
        seq: id.client << 32 | id.seq,
    }
}

/// The client's own id again, in what the replica answers and commits.
fn identify(id: &mut RequestId) {
    if id.client == ANONYMOUS_CLIENT && id.seq >> 32 != 0 {
        *id = RequestId {
            client: id.seq >> 32,
            seq: id.seq & 0xffff_ffff,
        };
    }
}

/// A correct replica's wall clock at (its own) simulated time `now`.
pub fn wall_ms(now: Time) -> u64 {
    WALL_EPOCH_MS + now.as_millis()
}

fn identify_effect(effect: &mut Effect<Message, Write>) {
    match effect {
        Effect::Commit(Committed {
            entry: CommittedEntry::Command { id, .. },
            ..
        })
        | Effect::Reply(
            Reply::Rejected { id, .. } | Reply::ReadReady { id, .. } | Reply::Done { id },
        ) => identify(id),
        _ => {}
    }
}

/// The signing clients' keys (derived once per process), and the registry every
/// validator is configured with.
fn client_keys() -> &'static (BTreeMap<u64, SigningKey>, Arc<ClientRegistry>) {
    static KEYS: OnceLock<(BTreeMap<u64, SigningKey>, Arc<ClientRegistry>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret: BTreeMap<u64, SigningKey> = (1..=LAST_SIGNING_CLIENT)
            .filter(|&c| signs(c))
            .map(|c| (c, derive_client_key(KEY_SEED, c)))
            .collect();
        let public = secret
            .iter()
            .map(|(c, k)| (*c, k.verifying_key()))
            .collect();
        (secret, Arc::new(public))
    })
}

/// Signing client `client`'s key.
pub(super) fn client_key(client: u64) -> &'static SigningKey {
    &client_keys().0[&client]
}

/// A signing client's request as it sends it to a validator of `cluster`; `None` for
/// the others.
fn signed_request(cluster: &ClusterId, r: &ekmat_core::Request) -> Option<Message> {
    let key = client_keys().0.get(&r.id.client)?;
    let op = match &r.kind {
        RequestKind::Write(op) => Some(op.clone()),
        RequestKind::Read => None,
        _ => return None,
    };
    Some(Message::Request(sign_request(key, cluster, r.id, op)))
}

#[derive(Clone, Debug)]
pub struct PbftSim {
    /// Cluster size (the Byzantine cast is drawn from `0..nodes`).
    pub nodes: usize,
    pub mutant: Mutant,
    /// How many replicas are Byzantine.
    pub byzantine: usize,
    /// The behaviours Byzantine replicas draw from (one per node per seed).
    pub adversaries: Vec<Adversary>,
    /// Byzantine replicas behave until this time after the start, then turn honest
    /// (faults stop for the liveness phase).
    pub byzantine_until: Duration,
    /// Quorum override: n - f for the 3f+1 demonstration; `None`: 2f+1.
    pub quorum: Option<usize>,
    /// Draw the protocol's knobs per seed.
    pub vary_knobs: bool,
    pub checkpoint_interval: u64,
    pub max_inflight: u64,
    pub batch_max: usize,
    pub batch_max_bytes: usize,
    pub view_timeout: Duration,
    /// A snapshot after every this many bytes of requests (0: never; see
    /// `ekmat_pbft::snapshot`).
    pub snapshot_bytes: u64,
    /// If not 0, snapshot points also wait for bytes executed to reach this many times
    /// the last snapshot's size (`PbftConfig::snapshot_size_factor`).
    pub snapshot_size_factor: u64,
    /// Snapshots go to a replica behind in chunks of at most this many bytes.
    pub snapshot_chunk_bytes: usize,
    /// How long past its making a bundle can execute (see `Bundle::executable_at`).
    pub bundle_horizon: u64,
    /// The Byzantine nodes and what each does: drawn per seed by `vary`, unless set.
    pub assigned: Vec<(NodeId, Adversary)>,
}

impl Default for PbftSim {
    fn default() -> Self {
        PbftSim {
            nodes: 4,
            mutant: Mutant::None,
            byzantine: 0,
            adversaries: Adversary::ALL.to_vec(),
            byzantine_until: Duration::from_secs(12),
            quorum: None,
            vary_knobs: true,
            checkpoint_interval: 16,
            max_inflight: 8,
            batch_max: 256,
            batch_max_bytes: 1 << 20,
            view_timeout: Duration::from_millis(300),
            snapshot_bytes: 0,
            snapshot_size_factor: 0,
            snapshot_chunk_bytes: 1 << 20,
            bundle_horizon: ekmat_pbft::message::BUNDLE_HORIZON,
            assigned: Vec::new(),
        }
    }
}

impl PbftSim {
    fn config(&self, id: NodeId, voters: usize) -> PbftConfig {
        let mut cfg = PbftConfig::from_seed(id, voters, KEY_SEED);
        cfg.mutant = self.mutant;
        cfg.quorum = self.quorum;
        cfg.checkpoint_interval = self.checkpoint_interval;
        cfg.window = 2 * self.checkpoint_interval;
        cfg.max_inflight = self.max_inflight;
        cfg.batch_max = self.batch_max;
        cfg.batch_max_bytes = self.batch_max_bytes;
        cfg.view_timeout = self.view_timeout;
        cfg.snapshot_bytes = self.snapshot_bytes;
        cfg.snapshot_size_factor = self.snapshot_size_factor;
        cfg.snapshot_chunk_bytes = self.snapshot_chunk_bytes;
        cfg.bundle_horizon = self.bundle_horizon.max(2 * cfg.window);
        cfg.clients = client_keys().1.clone();
        cfg
    }

    fn wrap(&self, inner: Pbft, id: NodeId, seed: u64) -> PbftNode {
        let adversary = self
            .assigned
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, a)| *a);
        let until = Time::ZERO + self.byzantine_until;
        let twin = (adversary == Some(Adversary::Twins))
            .then(|| Twin::new(&inner))
            .flatten();
        let operators = (0..self.nodes as u32)
            .map(NodeId)
            .filter(|&n| !self.is_byzantine(n))
            .collect();
        PbftNode {
            byzantine: adversary.map(|a| Byzantine::new(a, id, &inner, until, seed)),
            inner,
            twin,
            submitted: Vec::new(),
            readmit_at: until + READMIT_AFTER,
            operators,
            readmissions_asked: BTreeSet::new(),
        }
    }

    pub fn is_byzantine(&self, id: NodeId) -> bool {
        self.assigned.iter().any(|(n, _)| *n == id)
    }
}

/// How long after the Byzantine replicas turn honest the honest validators' operators
/// vote to re-admit the replicas excluded meanwhile (`ekmat_pbft::readmission`).
const READMIT_AFTER: Duration = Duration::from_secs(1);

/// A validator as the simulator runs it: the replica, what clients submitted to it
/// (for the validity check), and, if Byzantine, its adversary.
pub struct PbftNode {
    inner: Pbft,
    byzantine: Option<Byzantine>,
    /// The second copy of a Twins node.
    twin: Option<Twin>,
    submitted: Vec<(ekmat_core::RequestId, Digest)>,
    /// From this time on, an honest node hands in the re-admission of every replica it
    /// holds excluded, on the votes of f+1 honest validators (their operators').
    readmit_at: Time,
    /// The honest validators, whose operators vote.
    operators: Vec<NodeId>,
    /// Exclusions (replica, sequence number) this node handed a re-admission in for.
    readmissions_asked: BTreeSet<(NodeId, u64)>,
}

impl PbftNode {
    /// Once the faults stopped, hand in the re-admission of each replica excluded here
    /// (once per exclusion), signed by f+1 honest validators other than it.
    fn readmit(&mut self, now: Time, out: &mut Effects<Message, Write>) {
        if self.byzantine.is_some() || now < self.readmit_at {
            return;
        }
        let need = (self.inner.config().n() - 1) / 3 + 1;
        let cluster = self.inner.cluster_id();
        let excluded: Vec<(NodeId, u64)> = self
            .inner
            .excluded()
            .iter()
            .map(|(&c, &s)| (c, s))
            .collect();
        for (convict, excluded_at) in excluded {
            if !self.readmissions_asked.insert((convict, excluded_at)) {
                continue;
            }
            let target = ReadmitVote {
                cluster,
                convict,
                excluded_at,
            };
            let votes: Vec<_> = self
                .operators
                .iter()
                .filter(|&&v| v != convict)
                .take(need)
                .map(|&v| vote(&derive_key(KEY_SEED, v.0), v, target))
                .collect();
            if votes.len() < need {
                continue;
            }
            let request = ClientRequest {
                id: RequestId {
                    client: READMISSION_CLIENT,
                    seq: 0,
                },
                op: Some(Readmission { votes }.encode()),
                sig: None,
            };
            let from = self.inner.id();
            let msg = Message::Request(request);
            self.inner.step(now, Input::Message { from, msg }, out);
        }
    }

    pub fn replica(&self) -> &Pbft {
        &self.inner
    }

    /// Every write request clients handed this node since it (re)started.
    pub fn submitted(&self) -> &[(ekmat_core::RequestId, Digest)] {
        &self.submitted
    }

    pub fn is_byzantine(&self) -> bool {
        self.byzantine.is_some()
    }
}

impl PbftNode {
    /// A Twins node routes the twin's half of the cluster to the twin, ticks both, and
    /// sends what the twin sends. True if the input was the twin's alone.
    fn step_twin(
        &mut self,
        now: Time,
        input: &Input<Message>,
        out: &mut Effects<Message, Write>,
    ) -> bool {
        let active = self.byzantine.as_ref().is_some_and(|b| b.active(now));
        let Some(twin) = self.twin.as_mut().filter(|_| active) else {
            return false;
        };
        let wall = wall_ms(now);
        let (sends, twin_only) = match input {
            Input::Message { from, .. } if talks_to_twin(*from) => {
                (twin.step(now, wall, input.clone()), true)
            }
            Input::Tick => (twin.step(now, wall, Input::Tick), false),
            _ => (Vec::new(), false),
        };
        for (to, msg) in sends {
            out.send(to, msg);
        }
        twin_only
    }
}

impl Replica for PbftNode {
    type Message = Message;
    type Write = Write;
    type Stable = PbftStable;

    fn id(&self) -> NodeId {
        self.inner.id()
    }

    fn preview(&mut self, msgs: &[&Message]) {
        self.inner.preview(msgs);
    }

    fn step(&mut self, now: Time, input: Input<Message>, out: &mut Effects<Message, Write>) {
        if let Input::Request(r) = &input
            && let RequestKind::Write(op) = &r.kind
        {
            self.submitted.push((r.id, sha256(op)));
            out.event(ekmat_core::Event::Counter {
                name: "submitted",
                delta: 1,
            });
        }
        // A signing client signs its request and sends it to this validator.
        let input = match &input {
            Input::Request(r) => match signed_request(&self.inner.cluster_id(), r) {
                Some(msg) => Input::Message {
                    from: self.inner.id(),
                    msg,
                },
                None => input,
            },
            _ => input,
        };
        if let (Some(b), Input::Message { msg, .. }) = (&mut self.byzantine, &input) {
            b.remember(msg);
        }
        if self
            .byzantine
            .as_ref()
            .is_some_and(|b| b.ignores(now, &input))
        {
            return;
        }
        if self.step_twin(now, &input, out) {
            return;
        }
        let input = match input {
            Input::Request(mut r) if anonymous(r.id.client) => {
                r.id = anonymize(r.id);
                Input::Request(r)
            }
            other => other,
        };
        let offset = self.byzantine.as_ref().map_or(0, |b| b.clock_offset(now));
        self.inner
            .observe_clock(wall_ms(now).saturating_add_signed(offset));
        let tick = matches!(input, Input::Tick);
        self.inner.step(now, input, out);
        if tick {
            self.readmit(now, out);
        }
        if let Some(b) = &mut self.byzantine {
            b.rewrite(now, &self.inner, out);
        }
        out.iter_mut().for_each(identify_effect);
    }
}

impl SimProtocol for PbftSim {
    type Node = PbftNode;
    type Checker = PbftChecker;

    fn name(&self) -> &'static str {
        "pbft"
    }

    fn boot(&self, id: NodeId, voters: usize, seed: u64, _now: Time) -> Result<PbftNode, String> {
        let inner = Pbft::new(self.config(id, voters))?;
        Ok(self.wrap(inner, id, seed))
    }

    fn recover(
        &self,
        id: NodeId,
        voters: usize,
        seed: u64,
        stable: PbftStable,
        now: Time,
    ) -> Result<PbftNode, String> {
        let inner = Pbft::recover(self.config(id, voters), stable, now)?;
        Ok(self.wrap(inner, id, seed))
    }

    fn leading(&self, node: &PbftNode) -> Option<u64> {
        let r = &node.inner;
        (r.is_primary() && r.is_normal()).then(|| r.view())
    }

    fn message_kind(&self, msg: &Message) -> &'static str {
        msg.kind()
    }

    fn term(&self, node: &PbftNode) -> u64 {
        node.inner.view()
    }

    fn resends_unanswered(&self, client: u64) -> bool {
        !anonymous(client)
    }

    fn checker(&self, n: usize, voters: usize) -> PbftChecker {
        let honest = (0..n as u32)
            .map(|i| !self.is_byzantine(NodeId(i)))
            .collect();
        PbftChecker::new(voters, honest)
    }

    /// Knobs and the Byzantine cast are drawn per seed. The primary of view 0 is
    /// Byzantine on half the seeds, since a faulty primary is where PBFT is tested most.
    fn vary(&self, rng: &mut DetRng) -> (Self, String) {
        let mut v = self.clone();
        if self.vary_knobs {
            v.checkpoint_interval = [2, 4, 16][rng.index(3)];
            // Batching is what keeps PBFT ahead of its clients: a batch of one request
            // with one in flight falls behind ten clients on slow links, and clients
            // that time out only add to the queue.
            v.max_inflight = [2, 4, 8][rng.index(3)];
            v.batch_max = [8, 64, 256][rng.index(3)];
            v.view_timeout = Duration::from_millis([150, 300, 500][rng.index(3)]);
        }
        // A cast fixed in advance (scenarios) is kept; otherwise it is drawn.
        if self.assigned.is_empty() {
            v.assigned = self.cast(rng);
        }
        if self.vary_knobs {
            // Drawn last, so the draws before it stay what they were for each seed.
            // A seed's requests add up to tens of kilobytes: tens of snapshots, or a few.
            v.snapshot_bytes = [0, 1024, 4096][rng.index(3)];
            // A seed's store grows to a hundred kilobytes or so: one chunk, or dozens.
            v.snapshot_chunk_bytes = [4096, 1 << 20][rng.index(2)];
            // The least horizon the window allows on half the seeds: bundles then
            // expire under view changes and slow primaries, and gateways bundle again.
            v.bundle_horizon = [
                4 * v.checkpoint_interval,
                ekmat_pbft::message::BUNDLE_HORIZON,
            ][rng.index(2)];
            // Batches cut by bytes (a few requests each) on half the seeds.
            v.batch_max_bytes = [1 << 20, 256][rng.index(2)];
            // Points that follow the state's size, as a real cluster's do, on a quarter:
            // at once or at twice the size (a real cluster's default) after the last.
            v.snapshot_size_factor = [0, 0, 0, 0, 0, 0, 1, 2][rng.index(8)];
        }
        let cast: Vec<String> = v
            .assigned
            .iter()
            .map(|(n, a)| format!("{n} {}", a.name()))
            .collect();
        let knobs = format!(
            "pbft checkpoint every {}, snapshot every {} bytes{} (chunks of {}), bundle horizon {}, {} batches in flight, {} requests and {} bytes per batch, view timeout {:?}, byzantine: [{}]",
            v.checkpoint_interval,
            v.snapshot_bytes,
            match v.snapshot_size_factor {
                0 => String::new(),
                1 => " or the last snapshot's size".to_string(),
                k => format!(" or {k} times the last snapshot's size"),
            },
            v.snapshot_chunk_bytes,
            v.bundle_horizon,
            v.max_inflight,
            v.batch_max,
            v.batch_max_bytes,
            v.view_timeout,
            cast.join(", ")
        );
        (v, knobs)
    }
}

impl PbftSim {
    fn cast(&self, rng: &mut DetRng) -> Vec<(NodeId, Adversary)> {
        if self.byzantine == 0 || self.adversaries.is_empty() {
            return Vec::new();
        }
        let mut ids: Vec<u32> = (0..self.nodes.max(1) as u32).collect();
        rng.shuffle(&mut ids);
        if rng.chance(0.5)
            && let Some(pos) = ids.iter().position(|&i| i == 0)
        {
            ids.swap(0, pos);
        }
        ids.into_iter()
            .take(self.byzantine)
            .map(|i| {
                let a = self.adversaries[rng.index(self.adversaries.len())];
                (NodeId(i), a)
            })
            .collect()
    }
}
