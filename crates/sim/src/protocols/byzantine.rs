//! Byzantine behaviours for PBFT nodes. A Byzantine node runs the honest replica and
//! rewrites the messages it sends; it can sign anything as itself, and nothing as
//! anyone else (a message it forges for another replica carries a bad signature).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use ekmat_core::{DetRng, Effect, Effects, Input, NodeId, RequestId, Time};
use ekmat_pbft::client::{ClusterId, sign_request};
use ekmat_pbft::crypto::SigningKey;
use ekmat_pbft::crypto::sign;
use ekmat_pbft::message::{
    Batch, Bundle, ClientRequest, Commit, Digest, Encode, Message, NewView, PrePrepare, Prepare,
    Sig, Signed, bundle_digest, sha256,
};
use ekmat_pbft::snapshot::Snapshot;
use ekmat_pbft::snapshot_transfer::{
    ChunkHeader, SnapshotChunk, SnapshotOffer, SnapshotVouch, image_slice,
};
use ekmat_pbft::{Pbft, Write, primary_of};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Adversary {
    /// As primary, send one batch to some backups and another to the rest, and vote
    /// for both.
    Equivocate,
    /// As backup, send prepares and commits for another digest to half the replicas.
    EquivocateBackup,
    /// Send nothing.
    Silent,
    /// Equivocate as primary, and forge the other replicas' prepares and commits for
    /// whichever batch each backup got (their signatures cannot be right).
    Forge,
    /// Corrupt the signature of half the messages it sends.
    Corrupt,
    /// Send old messages it received to random replicas again.
    Replay,
    /// ByzzFuzz-style small mutations of its messages (view, sequence, digest), re-signed
    /// or not.
    Mutate,
    /// As primary, leave out every request of one client (see `Byzantine::ignores`).
    Starve,
    /// As new primary, send a NEW-VIEW whose pre-prepares drop every prepared batch.
    ForgeNewView,
    /// Two honest copies with one identity, each talking to half the cluster.
    Twins,
    /// Lie to a replica that fell behind: at every other snapshot point vouch (with its
    /// own valid signature) for a snapshot of an empty store, a checkpoint newer than
    /// the real one, and serve that image; at the others vouch truthfully and serve
    /// chunks whose bytes are not its state (signed, so well-formed).
    ForgeSnapshot,
    /// As a gateway, add requests in signing clients' names that they never signed to
    /// its own bundles (a client's signed request with its operation changed, or one
    /// unsigned, with a garbage signature, signed with its own key, or signed by the
    /// client for another cluster, as a replay from a cluster registering the same
    /// key would be); as primary, propose those bundles.
    ForgeRequest,
    /// Its wall clock is an hour off (ahead or behind, drawn per seed): as primary it
    /// stamps its batches with that time (`ekmat_pbft`'s `clock.rs`), to expire every
    /// lease at once or none ever; as backup it refuses correct primaries' times.
    SkewClock,
}

/// How far off a `skew-clock` replica's clock is.
const SKEW_MS: i64 = 3_600_000;

impl Adversary {
    pub const ALL: [Adversary; 13] = [
        Adversary::Equivocate,
        Adversary::EquivocateBackup,
        Adversary::Silent,
        Adversary::Forge,
        Adversary::Corrupt,
        Adversary::Replay,
        Adversary::Mutate,
        Adversary::Starve,
        Adversary::ForgeNewView,
        Adversary::Twins,
        Adversary::ForgeSnapshot,
        Adversary::ForgeRequest,
        Adversary::SkewClock,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Adversary::Equivocate => "equivocate",
            Adversary::EquivocateBackup => "equivocate-backup",
            Adversary::Silent => "silent",
            Adversary::Forge => "forge",
            Adversary::Corrupt => "corrupt",
            Adversary::Replay => "replay",
            Adversary::Mutate => "mutate",
            Adversary::Starve => "starve",
            Adversary::ForgeNewView => "forge-new-view",
            Adversary::Twins => "twins",
            Adversary::ForgeSnapshot => "forge-snapshot",
            Adversary::ForgeRequest => "forge-request",
            Adversary::SkewClock => "skew-clock",
        }
    }

    pub fn from_name(name: &str) -> Option<Adversary> {
        Adversary::ALL.into_iter().find(|a| a.name() == name)
    }

    /// `all`, or a comma-separated list of names.
    pub fn parse_list(text: &str) -> Result<Vec<Adversary>, String> {
        if text == "all" {
            return Ok(Adversary::ALL.to_vec());
        }
        text.split(',')
            .map(|n| {
                Adversary::from_name(n.trim()).ok_or_else(|| {
                    let known: Vec<_> = Adversary::ALL.iter().map(|a| a.name()).collect();
                    format!("unknown adversary '{n}' (known: {}, all)", known.join(", "))
                })
            })
            .collect()
    }
}

/// The client whose requests a starving primary leaves out.
const VICTIM_CLIENT: u64 = 1;
/// Messages a replaying node remembers.
const REPLAY_MEMORY: usize = 256;

type Fx = Effects<Message, Write>;

/// A second pre-prepare signed for a slot, its batch, and the first one's digest.
type Twin = (Signed<PrePrepare>, Arc<Batch>, Digest);

pub struct Byzantine {
    kind: Adversary,
    id: NodeId,
    n: usize,
    key: SigningKey,
    until: Time,
    rng: DetRng,
    /// The second pre-prepare (and batch) sent for a (view, seq), and the first's digest.
    twins: BTreeMap<(u64, u64), Twin>,
    received: VecDeque<Message>,
    /// Images of the snapshots a forging replica vouched for falsely, by digest.
    forged: BTreeMap<Digest, Bytes>,
    /// Chunk requests for a forged image, to answer after the honest step.
    forged_asks: Vec<(NodeId, u64, Digest, u64, u64)>,
    /// Signed client requests seen lately, to forge others from.
    client_requests: VecDeque<ClientRequest>,
    /// Own bundles (by digest) and pre-prepares (by view and seq) as forged, so every
    /// replica is sent the same forgery.
    forged_bundles: BTreeMap<Digest, Arc<Signed<Bundle>>>,
    forged_batches: BTreeMap<(u64, u64), (Signed<PrePrepare>, Arc<Batch>)>,
    /// How far off its wall clock is, while active (ms).
    clock_offset: i64,
    /// The cluster its clients sign for.
    cluster: ClusterId,
    /// Forges only inside its pre-prepares, sending its bundles as they were (drawn per
    /// seed): the forgery then reaches backups only within a batch.
    forges_only_in_pre_prepares: bool,
}

impl Byzantine {
    pub fn new(kind: Adversary, id: NodeId, inner: &Pbft, until: Time, seed: u64) -> Byzantine {
        let mut rng = DetRng::new(seed ^ 0xb12a_4711);
        let clock_offset = match kind {
            Adversary::SkewClock if rng.chance(0.5) => SKEW_MS,
            Adversary::SkewClock => -SKEW_MS,
            _ => 0,
        };
        let forges_only_in_pre_prepares = kind == Adversary::ForgeRequest && rng.chance(0.5);
        Byzantine {
            forges_only_in_pre_prepares,
            kind,
            id,
            n: inner.config().n(),
            key: inner.keyring().secret().clone(),
            until,
            rng,
            clock_offset,
            cluster: inner.cluster_id(),
            twins: BTreeMap::new(),
            received: VecDeque::new(),
            forged: BTreeMap::new(),
            forged_asks: Vec::new(),
            client_requests: VecDeque::new(),
            forged_bundles: BTreeMap::new(),
            forged_batches: BTreeMap::new(),
        }
    }

    pub fn active(&self, now: Time) -> bool {
        now < self.until
    }

    /// How far off this node's wall clock is at `now` (ms).
    pub fn clock_offset(&self, now: Time) -> i64 {
        if self.active(now) {
            self.clock_offset
        } else {
            0
        }
    }

    pub fn remember(&mut self, msg: &Message) {
        if let Message::SnapshotFetch(r) = msg
            && self.forged.contains_key(&r.body.digest)
        {
            let b = r.body;
            self.forged_asks
                .push((r.signer, b.seq, b.digest, b.offset, b.len));
        }
        if self.kind == Adversary::ForgeRequest {
            self.remember_client_requests(msg);
        }
        if self.kind == Adversary::Replay {
            if self.received.len() == REPLAY_MEMORY {
                self.received.pop_front();
            }
            self.received.push_back(msg.clone());
        }
    }

    /// Rewrite the effects of one honest step.
    pub fn rewrite(&mut self, now: Time, inner: &Pbft, out: &mut Fx) {
        if now >= self.until {
            self.forged_asks.clear();
            return;
        }
        let effects: Vec<_> = out.drain().collect();
        let mut sends = Vec::new();
        for e in effects {
            match e {
                Effect::Send { to, msg } => self.rewrite_send(inner, to, msg, &mut sends),
                other => out.push(other),
            }
        }
        self.answer_forged(&mut sends);
        if self.kind == Adversary::Replay && !self.received.is_empty() && self.rng.chance(0.2) {
            let msg = self.received[self.rng.index(self.received.len())].clone();
            let to = NodeId(self.rng.index(self.n) as u32);
            sends.push((to, msg));
        }
        for (to, msg) in sends {
            if to != self.id {
                out.send(to, msg);
            }
        }
    }

    fn rewrite_send(
        &mut self,
        inner: &Pbft,
        to: NodeId,
        msg: Message,
        sends: &mut Vec<(NodeId, Message)>,
    ) {
        match self.kind {
            Adversary::Silent => {}
            Adversary::Equivocate => self.equivocate(to, msg, false, sends),
            Adversary::Forge => self.equivocate(to, msg, true, sends),
            Adversary::EquivocateBackup => sends.push((to, self.equivocate_vote(to, msg))),
            Adversary::Corrupt => {
                let mut msg = msg;
                if self.rng.chance(0.5) {
                    corrupt(&mut msg);
                }
                sends.push((to, msg));
            }
            Adversary::Replay => sends.push((to, msg)),
            Adversary::Mutate => {
                let msg = if self.rng.chance(0.2) {
                    self.mutate(msg)
                } else {
                    msg
                };
                sends.push((to, msg));
            }
            Adversary::Starve => sends.push((to, msg)), // see `ignores`
            Adversary::ForgeNewView => sends.push((to, self.forge_new_view(inner, msg))),
            // The first copy talks to its half only; the twin (twins.rs) to the other.
            Adversary::Twins if super::twins::talks_to_twin(to) => {}
            Adversary::Twins => sends.push((to, msg)),
            Adversary::ForgeSnapshot => sends.push((to, self.forge_snapshot(inner, msg))),
            Adversary::ForgeRequest => sends.push((to, self.forge_request(msg))),
            Adversary::SkewClock => sends.push((to, msg)), // see `clock_offset`
        }
    }

    /// A snapshot offer rewritten into a lie (a vouch for an empty store at the same
    /// execution state and index), or a chunk whose bytes are not the state.
    fn forge_snapshot(&mut self, inner: &Pbft, msg: Message) -> Message {
        match msg {
            // Every other snapshot point: a lie. The rest are vouched for truthfully,
            // and their chunks garbled.
            Message::SnapshotOffer(offer)
                if (offer.vouch.body.seq / inner.config().checkpoint_interval)
                    .is_multiple_of(2) =>
            {
                let Some(real) = inner.own_snapshot() else {
                    return Message::SnapshotOffer(offer);
                };
                let mut lie = ekmat_kv::KvStore::new();
                for index in 1..=real.exec.applied {
                    lie.skip(index);
                }
                // Claimed a checkpoint ahead of the real one, so a replica that takes
                // the newest snapshot anyone vouches for takes this one.
                let mut exec = real.exec.clone();
                exec.seq += inner.config().checkpoint_interval;
                let snapshot = Snapshot {
                    exec,
                    app: lie.snapshot(),
                };
                let image = snapshot.image();
                let vouch = SnapshotVouch {
                    seq: snapshot.seq(),
                    digest: snapshot.digest(),
                    len: image.len() as u64,
                };
                self.forged.insert(vouch.digest, image);
                Message::SnapshotOffer(Arc::new(SnapshotOffer {
                    vouch: sign(&self.key, self.id, vouch),
                    stable: offer.stable.clone(),
                }))
            }
            Message::SnapshotChunk(chunk) => {
                let garbled: Vec<u8> = chunk.data.iter().map(|b| b ^ 0x5a).collect();
                let mut header = chunk.header.body;
                header.data = sha256(&garbled);
                Message::SnapshotChunk(Arc::new(SnapshotChunk {
                    header: sign(&self.key, self.id, header),
                    data: Bytes::from(garbled),
                }))
            }
            other => other,
        }
    }

    fn remember_client_requests(&mut self, msg: &Message) {
        let signed: Vec<ClientRequest> = match msg {
            Message::Request(r) => vec![r.clone()],
            Message::Bundle(b) => b.body.requests().to_vec(),
            _ => return,
        };
        for r in signed.into_iter().filter(|r| r.sig.is_some()) {
            if self.client_requests.len() == REPLAY_MEMORY {
                self.client_requests.pop_front();
            }
            self.client_requests.push_back(r);
        }
    }

    /// Its own bundles with a forged request added, and its pre-prepares carrying them.
    fn forge_request(&mut self, msg: Message) -> Message {
        match msg {
            Message::Bundle(b) if b.signer == self.id && !self.forges_only_in_pre_prepares => {
                Message::Bundle(self.forged_bundle(&b))
            }
            Message::PrePrepare { header, batch } if header.signer == self.id => {
                let key = (header.body.view, header.body.seq);
                if !self.forged_batches.contains_key(&key) {
                    let bundles = batch
                        .bundles
                        .iter()
                        .map(|b| {
                            if b.signer == self.id {
                                self.forged_bundle(b)
                            } else {
                                b.clone()
                            }
                        })
                        .collect();
                    let forged = Batch {
                        bundles,
                        clock_ms: batch.clock_ms,
                    };
                    let body = PrePrepare {
                        digest: forged.digest(),
                        ..header.body
                    };
                    let header = sign(&self.key, self.id, body);
                    self.forged_batches.insert(key, (header, Arc::new(forged)));
                }
                let (header, batch) = self.forged_batches[&key].clone();
                Message::PrePrepare { header, batch }
            }
            other => other,
        }
    }

    fn forged_bundle(&mut self, b: &Arc<Signed<Bundle>>) -> Arc<Signed<Bundle>> {
        let d = bundle_digest(b);
        if let Some(f) = self.forged_bundles.get(&d) {
            return f.clone();
        }
        let mut body = b.body.clone();
        let forged_request = self.forged_client_request(body.nonce);
        body.requests_mut().push(forged_request);
        let forged = Arc::new(sign(&self.key, self.id, body));
        self.forged_bundles.insert(d, forged.clone());
        forged
    }

    /// A request in a signing client's name that the client never signed.
    fn forged_client_request(&mut self, nonce: u64) -> ClientRequest {
        let id = RequestId {
            client: VICTIM_CLIENT,
            seq: 1_000_000 + nonce,
        };
        let op = Some(Bytes::from(format!("forged by {} #{nonce}", self.id)));
        match self.rng.index(5) {
            0 if !self.client_requests.is_empty() => {
                let i = self.rng.index(self.client_requests.len());
                let mut r = self.client_requests[i].clone();
                r.op = op;
                r
            }
            1 => ClientRequest { id, op, sig: None },
            2 => ClientRequest {
                id,
                op,
                sig: Some(Sig([0x5a; 64])),
            },
            3 => {
                let elsewhere = [0xe1; 32];
                sign_request(super::pbft::client_key(VICTIM_CLIENT), &elsewhere, id, op)
            }
            _ => sign_request(&self.key, &self.cluster, id, op),
        }
    }

    /// Serve the forged images asked for.
    fn answer_forged(&mut self, sends: &mut Vec<(NodeId, Message)>) {
        for (to, seq, digest, offset, len) in std::mem::take(&mut self.forged_asks) {
            let image = &self.forged[&digest];
            if offset >= image.len() as u64 {
                continue;
            }
            if len == 0 {
                continue;
            }
            let data = image_slice(&Bytes::new(), image, offset, len as usize);
            let header = ChunkHeader {
                seq,
                digest,
                offset,
                data: sha256(&data),
            };
            let chunk = SnapshotChunk {
                header: sign(&self.key, self.id, header),
                data,
            };
            sends.push((to, Message::SnapshotChunk(Arc::new(chunk))));
        }
    }

    /// Backups of view `view` split in two: every other one (by rank) gets the twin.
    fn gets_twin(&self, view: u64, to: NodeId) -> bool {
        let primary = primary_of(view, self.n);
        let rank = (to.0 + self.n as u32 - primary.0) % self.n as u32;
        rank % 2 == 1
    }

    fn equivocate(
        &mut self,
        to: NodeId,
        msg: Message,
        forge: bool,
        sends: &mut Vec<(NodeId, Message)>,
    ) {
        match msg {
            Message::PrePrepare { header, batch } if header.signer == self.id => {
                let key = (header.body.view, header.body.seq);
                if !self.twins.contains_key(&key) {
                    let Some(twin) = self.make_twin(&header, &batch) else {
                        return sends.push((to, Message::PrePrepare { header, batch }));
                    };
                    self.twins.insert(key, twin);
                    self.vote_for_both(&header, forge, sends);
                }
                let (h, b, _) = self.twins[&key].clone();
                if self.gets_twin(key.0, to) {
                    sends.push((
                        to,
                        Message::PrePrepare {
                            header: h,
                            batch: b,
                        },
                    ));
                } else {
                    sends.push((to, Message::PrePrepare { header, batch }));
                }
            }
            Message::Commit(c) if c.signer == self.id => {
                let key = (c.body.view, c.body.seq);
                match self.twins.get(&key) {
                    Some((h, _, _)) if self.gets_twin(key.0, to) => {
                        let body = Commit {
                            digest: h.body.digest,
                            ..c.body
                        };
                        sends.push((to, Message::Commit(sign(&self.key, self.id, body))));
                    }
                    _ => sends.push((to, Message::Commit(c))),
                }
            }
            m => sends.push((to, m)),
        }
    }

    /// The second batch: the same bundles in reverse order, or a null request.
    fn make_twin(&self, header: &Signed<PrePrepare>, batch: &Batch) -> Option<Twin> {
        if batch.is_null() {
            return None;
        }
        let mut twin = Batch::default();
        if batch.bundles.len() > 1 {
            twin.bundles = batch.bundles.iter().rev().cloned().collect();
        }
        let body = PrePrepare {
            digest: twin.digest(),
            ..header.body
        };
        Some((
            sign(&self.key, self.id, body),
            Arc::new(twin),
            header.body.digest,
        ))
    }

    /// Prepares from the primary for both batches, to everyone (honest replicas ignore
    /// a primary's prepares); with `forge`, every other replica's prepare and commit
    /// for the batch each backup got, with signatures it cannot have made.
    fn vote_for_both(
        &mut self,
        header: &Signed<PrePrepare>,
        forge: bool,
        sends: &mut Vec<(NodeId, Message)>,
    ) {
        let (twin, _, _) = &self.twins[&(header.body.view, header.body.seq)];
        let twin = *twin;
        for to in (0..self.n as u32).map(NodeId).filter(|&t| t != self.id) {
            for h in [header, &twin] {
                let body = Prepare {
                    view: h.body.view,
                    seq: h.body.seq,
                    digest: h.body.digest,
                    primary_sig: h.sig,
                };
                sends.push((to, Message::Prepare(sign(&self.key, self.id, body))));
            }
            if forge {
                let theirs = if self.gets_twin(twin.body.view, to) {
                    &twin
                } else {
                    header
                };
                self.forge_votes(theirs, to, sends);
            }
        }
    }

    fn forge_votes(&self, h: &Signed<PrePrepare>, to: NodeId, sends: &mut Vec<(NodeId, Message)>) {
        let bad = Sig([0x5a; 64]);
        for signer in (0..self.n as u32).map(NodeId).filter(|&s| s != self.id) {
            let prepare = Prepare {
                view: h.body.view,
                seq: h.body.seq,
                digest: h.body.digest,
                primary_sig: h.sig,
            };
            let commit = Commit {
                view: h.body.view,
                seq: h.body.seq,
                digest: h.body.digest,
            };
            let p = Signed {
                body: prepare,
                signer,
                sig: bad,
            };
            let c = Signed {
                body: commit,
                signer,
                sig: bad,
            };
            sends.push((to, Message::Prepare(p)));
            sends.push((to, Message::Commit(c)));
        }
    }

    fn equivocate_vote(&mut self, to: NodeId, msg: Message) -> Message {
        if to.0.is_multiple_of(2) {
            return msg;
        }
        match msg {
            Message::Prepare(p) if p.signer == self.id => {
                let body = Prepare {
                    digest: sha256(&p.body.digest),
                    ..p.body
                };
                Message::Prepare(sign(&self.key, self.id, body))
            }
            Message::Commit(c) if c.signer == self.id => {
                let body = Commit {
                    digest: sha256(&c.body.digest),
                    ..c.body
                };
                Message::Commit(sign(&self.key, self.id, body))
            }
            m => m,
        }
    }

    fn mutate(&mut self, msg: Message) -> Message {
        let resign = self.rng.chance(0.5);
        let choice = self.rng.index(3);
        let tweak = |view: &mut u64, seq: &mut u64, digest: &mut Digest| match choice {
            0 => *view += 1,
            1 => *seq += 1,
            _ => digest[0] ^= 0x80,
        };
        match msg {
            Message::Prepare(mut p) if p.signer == self.id => {
                let b = &mut p.body;
                tweak(&mut b.view, &mut b.seq, &mut b.digest);
                Message::Prepare(self.maybe_resign(p, resign))
            }
            Message::Commit(mut c) if c.signer == self.id => {
                let b = &mut c.body;
                tweak(&mut b.view, &mut b.seq, &mut b.digest);
                Message::Commit(self.maybe_resign(c, resign))
            }
            Message::PrePrepare { mut header, batch } if header.signer == self.id => {
                let b = &mut header.body;
                tweak(&mut b.view, &mut b.seq, &mut b.digest);
                let header = self.maybe_resign(header, resign);
                Message::PrePrepare { header, batch }
            }
            mut m => {
                corrupt(&mut m);
                m
            }
        }
    }

    fn maybe_resign<T: Encode + Copy>(&self, s: Signed<T>, resign: bool) -> Signed<T> {
        if resign {
            sign(&self.key, self.id, s.body)
        } else {
            s
        }
    }

    /// A starving replica censors consistently: it ignores the victim's requests and
    /// every bundle holding one, so as primary it never proposes them, while its own
    /// state and signatures stay those of an honest replica (nothing to convict it of).
    /// Only the view timer can end it.
    pub fn ignores(&self, now: Time, input: &Input<Message>) -> bool {
        if self.kind != Adversary::Starve || !self.active(now) {
            return false;
        }
        match input {
            Input::Request(r) => r.id.client == VICTIM_CLIENT,
            Input::Message {
                msg: Message::Request(r),
                ..
            } => r.id.client == VICTIM_CLIENT,
            Input::Message {
                msg: Message::Bundle(b),
                ..
            } => b
                .body
                .requests()
                .iter()
                .any(|r| r.id.client == VICTIM_CLIENT),
            _ => false,
        }
    }

    /// Re-issue every sequence number of a NEW-VIEW as a null request.
    fn forge_new_view(&mut self, _inner: &Pbft, msg: Message) -> Message {
        let Message::NewView(nv) = msg else {
            return msg;
        };
        if nv.signer != self.id {
            return Message::NewView(nv);
        }
        let null = Batch::default().digest();
        let pre_prepares = nv
            .body
            .pre_prepares
            .iter()
            .map(|p| {
                sign(
                    &self.key,
                    self.id,
                    PrePrepare {
                        digest: null,
                        ..p.body
                    },
                )
            })
            .collect();
        let body = NewView {
            view: nv.body.view,
            view_changes: nv.body.view_changes.clone(),
            pre_prepares,
        };
        Message::NewView(Arc::new(sign(&self.key, self.id, body)))
    }
}

/// Flip one bit of the message's (outer) signature.
fn corrupt(msg: &mut Message) {
    fn flip<T: Clone>(s: &mut Signed<T>) {
        s.sig.0[7] ^= 0x01;
    }
    match msg {
        Message::Bundle(b) => flip(Arc::make_mut(b)),
        Message::PrePrepare { header, .. } => flip(header),
        Message::Prepare(p) => flip(p),
        Message::Commit(c) => flip(c),
        Message::Checkpoint(c) => flip(c),
        Message::ViewChange(v) => flip(Arc::make_mut(v)),
        Message::NewView(v) => flip(Arc::make_mut(v)),
        Message::Fetch(f) => flip(f),
        Message::Transfer(t) => flip(Arc::make_mut(t)),
        Message::SnapshotOffer(s) => flip(&mut Arc::make_mut(s).vouch),
        Message::SnapshotFetch(r) => flip(r),
        Message::SnapshotChunk(c) => flip(&mut Arc::make_mut(c).header),
        Message::Request(r) => {
            if let Some(sig) = &mut r.sig {
                sig.0[7] ^= 0x01;
            }
        }
    }
}
