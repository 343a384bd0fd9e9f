//! Behaviour of a whole cluster, driven by a tiny deterministic in-memory harness:
//! messages delivered in FIFO order, writes durable at once.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use ekmat_core::{
    Committed, CommittedEntry, Durable, Effect, Effects, Event, Input, NodeId, Replica, Request,
    RequestId, RequestKind, Time,
};

use crate::message::{Batch, Digest, Message};
use crate::{Pbft, PbftConfig, PbftStable, Write, evidence};

const KEY_SEED: u64 = 99;

type Cut = Box<dyn Fn(NodeId, NodeId, &Message) -> bool>;

struct Cluster {
    nodes: Vec<Option<Pbft>>,
    disks: Vec<PbftStable>,
    /// The same writes without compactions: what a crash that lost them leaves.
    logged: Vec<PbftStable>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    now: Time,
    committed: Vec<Vec<Committed>>,
    replies: Vec<Vec<ekmat_core::Reply>>,
    events: Vec<(NodeId, Event)>,
    /// Drop messages this returns true for.
    cut: Cut,
    /// Per node, answer snapshot requests this many ticks late (0: at once).
    snapshot_delay: Vec<u64>,
    /// Tell a snapshot's size at once when the snapshot itself comes late.
    size_first: bool,
    /// Requested snapshots not handed over yet: (due tick, node, index, data).
    asked: VecDeque<(u64, usize, u64, Bytes)>,
    ticks: u64,
    /// Nodes whose writes are not reported durable until `sync`, and the last write
    /// each holds back.
    slow_disk: Vec<bool>,
    unsynced: Vec<Option<u64>>,
    /// Nodes given a wall clock (see `clock.rs`): `WALL_EPOCH_MS` plus the harness's
    /// time plus this offset (ms). `None`: the node observes no clock.
    wall_offset: Vec<Option<i64>>,
    /// Bytes each node wrote (its writes encoded as the log encodes them).
    written: Vec<usize>,
    /// The indexes each node asked for snapshots at (its snapshot points).
    points: Vec<Vec<u64>>,
}

/// The wall clock at the harness's time zero, for nodes given one.
const WALL_EPOCH_MS: u64 = 1_700_000_000_000;

fn config(i: u32, n: usize) -> PbftConfig {
    let mut c = PbftConfig::from_seed(NodeId(i), n, KEY_SEED);
    c.checkpoint_interval = 4;
    c.window = 8;
    c.max_inflight = 4;
    c
}

/// With a snapshot at the first checkpoint after every 48 bytes of requests (the
/// tests' requests are 7 to 9 bytes: about every other checkpoint).
fn snapshotting(i: u32, n: usize) -> PbftConfig {
    PbftConfig {
        snapshot_bytes: 48,
        ..config(i, n)
    }
}

/// The harness's state machine is the list of commands a replica delivered; this is its
/// snapshot encoding (index, clock, client, request number, command length, command).
fn encode_state(committed: &[Committed]) -> Bytes {
    let mut out = Vec::new();
    for c in committed {
        let CommittedEntry::Command { id, command } = &c.entry else {
            panic!("PBFT delivers commands only");
        };
        let clock = c
            .clock_ms
            .expect("PBFT delivers commands at their batch's time");
        for word in [c.index, clock, id.client, id.seq, command.len() as u64] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(command);
    }
    Bytes::from(out)
}

fn decode_state(mut bytes: &[u8]) -> Vec<Committed> {
    let word = |b: &mut &[u8]| {
        let (w, rest) = b.split_at(8);
        *b = rest;
        u64::from_le_bytes(w.try_into().unwrap())
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (index, clock, client, seq, len) = (
            word(&mut bytes),
            word(&mut bytes),
            word(&mut bytes),
            word(&mut bytes),
            word(&mut bytes),
        );
        let (command, rest) = bytes.split_at(len as usize);
        bytes = rest;
        out.push(Committed {
            index,
            entry: CommittedEntry::Command {
                id: RequestId { client, seq },
                command: Bytes::copy_from_slice(command),
            },
            clock_ms: Some(clock),
        });
    }
    out
}

fn last_index(committed: &[Committed]) -> u64 {
    committed.last().map_or(0, |c| c.index)
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster::with(n, config)
    }

    fn with(n: usize, config: impl Fn(u32, usize) -> PbftConfig) -> Cluster {
        Cluster {
            nodes: (0..n as u32)
                .map(|i| Some(Pbft::new(config(i, n)).unwrap()))
                .collect(),
            disks: vec![PbftStable::default(); n],
            logged: vec![PbftStable::default(); n],
            queue: VecDeque::new(),
            now: Time::ZERO,
            committed: vec![Vec::new(); n],
            replies: vec![Vec::new(); n],
            events: Vec::new(),
            cut: Box::new(|_, _, _| false),
            snapshot_delay: vec![0; n],
            size_first: false,
            asked: VecDeque::new(),
            ticks: 0,
            slow_disk: vec![false; n],
            unsynced: vec![None; n],
            wall_offset: vec![None; n],
            written: vec![0; n],
            points: vec![Vec::new(); n],
        }
    }

    fn input(&mut self, i: usize, input: Input<Message>) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        if let Some(offset) = self.wall_offset[i] {
            let wall = (WALL_EPOCH_MS + self.now.as_millis()).saturating_add_signed(offset);
            node.observe_clock(wall);
        }
        let mut out = Effects::new();
        node.step(self.now, input, &mut out);
        let me = NodeId(i as u32);
        let mut persisted = None;
        let mut snapshot = None;
        for e in out.drain() {
            match e {
                Effect::Send { to, msg } => {
                    if !(self.cut)(me, to, &msg) {
                        self.queue.push_back((me, to, msg));
                    }
                }
                Effect::Persist { seq, write } => {
                    self.written[i] += postcard::to_stdvec(&write).unwrap().len();
                    self.disks[i].apply(&write);
                    if !<PbftStable as Durable<Write>>::is_compaction(&write) {
                        self.logged[i].apply(&write);
                    }
                    persisted = Some(seq);
                }
                Effect::Commit(c) => self.committed[i].push(c),
                Effect::Event(ev) => self.events.push((me, ev)),
                Effect::Reply(r) => self.replies[i].push(r),
                Effect::Restore { index, data } => {
                    let state = decode_state(&data);
                    assert_eq!(last_index(&state), index, "a snapshot of another index");
                    assert!(
                        index >= last_index(&self.committed[i]),
                        "n{i} would go back"
                    );
                    self.committed[i] = state;
                }
                Effect::WantSnapshot { index } => {
                    assert_eq!(last_index(&self.committed[i]), index);
                    self.points[i].push(index);
                    snapshot = Some((index, encode_state(&self.committed[i])));
                }
            }
        }
        if let Some(seq) = persisted {
            if self.slow_disk[i] {
                self.unsynced[i] = Some(seq);
            } else {
                self.input(i, Input::Persisted { seq });
            }
        }
        if let Some((index, data)) = snapshot {
            if self.snapshot_delay[i] == 0 {
                self.input(i, Input::Snapshot { index, data });
            } else {
                let due = self.ticks + self.snapshot_delay[i];
                let size = data.len() as u64;
                self.asked.push_back((due, i, index, data));
                self.asked.make_contiguous().sort_by_key(|a| a.0);
                if self.size_first {
                    self.input(i, Input::SnapshotSize { index, size });
                }
            }
        }
    }

    fn request(&mut self, at: usize, client: u64, seq: u64) {
        let r = Request {
            id: RequestId { client, seq },
            kind: RequestKind::Write(Bytes::from(format!("op {client}/{seq}"))),
        };
        self.input(at, Input::Request(r));
    }

    fn run(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            self.input(to.index(), Input::Message { from, msg });
        }
    }

    /// [`Cluster::run`], but each replica gets what is queued for it in bursts it
    /// previews first (as the node's driver hands over what arrived together).
    fn run_previewing(&mut self) {
        while !self.queue.is_empty() {
            let queued: Vec<_> = self.queue.drain(..).collect();
            for i in 0..self.nodes.len() {
                let burst: Vec<_> = queued.iter().filter(|(_, to, _)| to.index() == i).collect();
                if let Some(node) = self.nodes[i].as_mut() {
                    let msgs: Vec<&Message> = burst.iter().map(|(_, _, m)| m).collect();
                    node.preview(&msgs);
                }
                for (from, _, msg) in burst {
                    self.input(
                        i,
                        Input::Message {
                            from: *from,
                            msg: msg.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Let `ms` of time pass, ticking every 10ms and delivering everything between.
    fn advance(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now = self.now + Duration::from_millis(10);
            self.ticks += 1;
            while self.asked.front().is_some_and(|a| a.0 <= self.ticks) {
                let (_, i, index, data) = self.asked.pop_front().expect("checked");
                self.input(i, Input::Snapshot { index, data });
            }
            for i in 0..self.nodes.len() {
                self.input(i, Input::Tick);
            }
            self.run();
        }
    }

    /// Client 1's requests 1..=`count` at n0, each given time to execute alone.
    fn one_request_per_batch(&mut self, count: u64) {
        for s in 1..=count {
            self.request(0, 1, s);
            self.advance(20);
        }
    }

    /// Report node `i`'s held-back writes durable.
    fn sync(&mut self, i: usize) {
        if let Some(seq) = self.unsynced[i].take() {
            self.input(i, Input::Persisted { seq });
        }
    }

    /// n0 (the primary) orders `batch` again at its next sequence number, as a faulty
    /// primary may (or one across a view change), and the cluster runs 50 ms.
    fn primary_orders_again(&mut self, batch: std::sync::Arc<Batch>) {
        let primary = self.nodes[0].as_mut().unwrap();
        let next = primary.next_seq + 1;
        let mut out = Effects::new();
        primary.issue_pre_prepare(next, batch, &mut out);
        primary.gate.on_persisted(u64::MAX, &mut out);
        for e in out.drain() {
            if let Effect::Send { to, msg } = e {
                self.queue.push_back((NodeId(0), to, msg));
            }
        }
        self.advance(50);
    }

    /// Whether node `i` holds a pre-prepare for `seq`.
    fn took_pre_prepare(&self, i: usize, seq: u64) -> bool {
        self.node(i)
            .log
            .get(&seq)
            .is_some_and(|s| s.pre_prepare.is_some())
    }

    fn node(&self, i: usize) -> &Pbft {
        self.nodes[i].as_ref().unwrap()
    }

    fn assert_agree(&self, live: &[usize]) {
        let first = &self.committed[live[0]];
        for &i in live {
            assert_eq!(&self.committed[i], first, "n{i} executed differently");
        }
    }
}

#[test]
fn four_replicas_order_requests_and_agree() {
    let mut c = Cluster::new(4);
    for s in 1..=10 {
        c.request((s % 4) as usize, 1, s);
        c.run();
    }
    c.advance(50);
    assert_eq!(c.committed[0].len(), 10);
    c.assert_agree(&[0, 1, 2, 3]);
    let indexes: Vec<u64> = c.committed[2].iter().map(|e| e.index).collect();
    assert_eq!(indexes, (1..=10).collect::<Vec<_>>());
}

#[test]
fn batches_are_cut_by_bytes_as_well_as_by_requests() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let bound = 100; // three of these requests ("op 1/N", 6-7 bytes each: 30-31)
    let mut c = Cluster::with(4, |i, n| PbftConfig {
        batch_max_bytes: bound,
        max_inflight: 1,
        ..config(i, n)
    });
    let batches = Rc::new(RefCell::new(Vec::new()));
    let seen = batches.clone();
    c.cut = Box::new(move |_, _, msg| {
        if let Message::PrePrepare { batch, .. } = msg {
            seen.borrow_mut().push((batch.bundles.len(), batch.size()));
        }
        false
    });
    for s in 1..=20 {
        c.request(0, 1, s); // the primary's own requests queue behind one in flight
    }
    c.advance(500);
    assert_eq!(c.committed[0].len(), 20);
    c.assert_agree(&[0, 1, 2, 3]);
    let batches = batches.borrow();
    assert!(
        batches.iter().all(|&(_, bytes)| bytes <= bound),
        "{batches:?}"
    );
    assert!(
        batches.iter().any(|&(bundles, _)| bundles == 3),
        "{batches:?}"
    );
}

#[test]
fn every_executed_batch_carries_a_verifiable_quorum_certificate() {
    let mut c = Cluster::new(4);
    c.request(1, 1, 1);
    c.advance(30);
    let (batch, qc) = c.node(3).executed(1).expect("executed").clone();
    assert_eq!(qc.digest, batch.digest());
    let keys = crate::crypto::derive_public_keys(KEY_SEED, 4);
    assert_eq!(qc.verify(&keys, 3), Ok(()));
}

#[test]
fn checkpoints_become_stable_and_collect_garbage() {
    let mut c = Cluster::new(4);
    for s in 1..=12 {
        c.request(0, 1, s);
        c.run();
    }
    c.advance(50);
    for i in 0..4 {
        assert!(
            c.node(i).low_watermark() >= 8,
            "n{i}: {}",
            c.node(i).low_watermark()
        );
        assert!(c.node(i).log.keys().all(|s| *s > c.node(i).low_watermark()));
    }
    assert!(
        c.disks[2].checkpoint.seq >= 8,
        "stable checkpoints are durable"
    );
}

/// Every checkpoint vote is lost until the primary has filled the window: no later
/// checkpoint can stabilise then, so the votes are sent again and the window moves.
#[test]
fn lost_checkpoint_votes_are_sent_again_and_the_window_moves() {
    let mut c = Cluster::new(4);
    c.cut = Box::new(|_, _, m| matches!(m, Message::Checkpoint(_)));
    for s in 1..=12 {
        c.request(0, 1, s);
        c.run();
    }
    let window = c.node(0).config().window;
    assert_eq!(
        c.node(0).last_executed(),
        window,
        "stopped at the high watermark"
    );
    assert_eq!(c.node(0).stable.seq, 0);
    c.cut = Box::new(|_, _, _| false);
    c.advance(500);
    for i in 0..4 {
        assert!(
            c.node(i).stable.seq >= window,
            "n{i}: {}",
            c.node(i).stable.seq
        );
    }
    assert_eq!(c.committed[0].len(), 12);
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_silent_primary_is_replaced_and_the_backlog_executes() {
    let mut c = Cluster::new(4);
    c.cut = Box::new(|from, _, _| from == NodeId(0));
    c.request(1, 7, 1);
    c.request(2, 8, 1);
    c.advance(3000);
    for i in 1..4 {
        assert!(c.node(i).view() >= 1, "n{i} still in view 0");
        assert_eq!(c.committed[i].len(), 2, "n{i}");
    }
    c.assert_agree(&[1, 2, 3]);
    assert!(
        c.events
            .iter()
            .any(|(_, e)| matches!(e, Event::BecameLeader { term: 1 }))
    );
}

/// A new primary passes its NEW-VIEW on to a replica still asking for the view only
/// once the writes behind it (the re-issued pre-prepares) are durable: sent before, a
/// crash that lost them let the primary re-issue those sequence numbers with other
/// batches, and be convicted of equivocation (seen in the simulator).
#[test]
fn a_new_view_is_passed_to_a_laggard_only_once_durable() {
    let view_changes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = view_changes.clone();
    let mut c = Cluster::new(4);
    c.cut = Box::new(move |from, to, msg| {
        if from == NodeId(3) && to == NodeId(1) && matches!(msg, Message::ViewChange(_)) {
            seen.borrow_mut().push(msg.clone());
        }
        from == NodeId(0) // a silent primary
    });
    c.request(1, 7, 1);
    // n1's disk keeps up until it starts changing views, then falls behind.
    c.slow_disk[1] = true;
    while c.node(1).view() == 0 {
        assert!(
            c.now < Time::ZERO + Duration::from_secs(10),
            "no view change"
        );
        c.sync(1);
        c.advance(10);
    }
    while !c.node(1).is_normal() {
        c.advance(10);
    }
    assert!(
        c.unsynced[1].is_some(),
        "the new view's writes are not durable yet"
    );
    let new_views_to_n3 = |c: &Cluster| {
        c.queue
            .iter()
            .filter(|(f, to, m)| {
                (*f, *to) == (NodeId(1), NodeId(3)) && matches!(m, Message::NewView(_))
            })
            .count()
    };
    c.queue.clear();
    let vc = view_changes
        .borrow()
        .last()
        .cloned()
        .expect("n3 asked for view 1");
    c.input(
        1,
        Input::Message {
            from: NodeId(3),
            msg: vc,
        },
    );
    assert_eq!(new_views_to_n3(&c), 0, "passed on before it was durable");
    c.sync(1);
    // Its broadcast, and the copy passed on to n3 as a laggard.
    assert_eq!(new_views_to_n3(&c), 2, "passed on once durable");
}

/// A replica's own COMMIT counts towards its certificate only once the writes before
/// it are durable: a certificate leaves in transfers and commit proofs, and one holding
/// a COMMIT whose prepare could still be lost would let the replica, restarted, commit
/// another batch at that sequence number.
#[test]
fn a_replica_executes_on_its_own_commit_only_once_durable() {
    let mut c = Cluster::new(4);
    // n1 hears no COMMIT from n3: it needs its own for a quorum.
    c.cut = Box::new(|from, to, _| (from, to) == (NodeId(3), NodeId(1)));
    c.slow_disk[1] = true;
    c.request(0, 7, 1);
    c.advance(50);
    assert_eq!(c.committed[0].len(), 1);
    assert!(
        c.node(1).executed(1).is_none(),
        "n1 executed on a COMMIT not durable"
    );
    c.sync(1);
    c.run();
    let (_, qc) = c.node(1).executed(1).expect("executed once durable");
    assert!(qc.sigs.iter().any(|(s, _)| *s == NodeId(1)));
}

#[test]
fn a_primary_that_leaves_one_client_out_while_executing_others_is_replaced() {
    let mut c = Cluster::new(4);
    // Replica 0, the primary, ignores every bundle with a request of client 1 (as if
    // it never saw them; it proposes the others).
    c.cut = Box::new(|_, to, m| {
        to == NodeId(0)
            && matches!(m, Message::Bundle(b) if b.body.requests().iter().any(|r| r.id.client == 1))
    });
    c.request(1, 1, 1);
    // Others' requests keep executing all along: progress alone must not excuse the
    // primary.
    for s in 1..=40 {
        c.request(2, 9, s);
        c.advance(100);
    }
    let victim =
        |e: &Committed| matches!(&e.entry, CommittedEntry::Command { id, .. } if id.client == 1);
    for i in 1..4 {
        assert!(c.node(i).view() >= 1, "n{i} still in view 0");
        assert_eq!(
            c.committed[i].iter().filter(|e| victim(e)).count(),
            1,
            "n{i}"
        );
        assert_eq!(c.committed[i].len(), 41, "n{i}");
    }
    c.assert_agree(&[1, 2, 3]);
}

#[test]
fn view_change_timeouts_double_up_to_eight_times_and_reset_on_progress() {
    let mut c = Cluster::new(4);
    // Every primary fails to lead: its pre-prepares and NEW-VIEWs are lost.
    c.cut = Box::new(|_, _, m| matches!(m, Message::PrePrepare { .. } | Message::NewView(_)));
    c.request(1, 1, 1);
    let base = c.node(1).cfg.view_timeout;
    assert_eq!(c.node(1).timeout(), base);
    c.advance(40_000);
    assert_eq!(c.node(1).timeout(), base * 8, "capped at 8x");
    c.cut = Box::new(|_, _, _| false);
    c.advance(40_000);
    assert_eq!(c.committed[1].len(), 1);
    assert_eq!(c.node(1).timeout(), base, "progress resets it");
}

#[test]
fn a_restarted_replica_replays_its_executed_batches_and_keeps_its_view() {
    let mut c = Cluster::new(4);
    for s in 1..=5 {
        c.request(0, 1, s);
        c.run();
    }
    c.advance(50);
    let stable = c.disks[2].clone();
    c.nodes[2] = Some(Pbft::recover(config(2, 4), stable, c.now).unwrap());
    c.committed[2].clear();
    c.request(3, 1, 6);
    c.advance(100);
    assert_eq!(c.committed[2].len(), 6);
    c.assert_agree(&[0, 1, 2, 3]);
}

/// A batch a replica prepared is on its disk (in the prepared certificate) when it
/// executes it, and is not written again; one it only fetched is written whole. Either
/// way a restart from the disk replays every executed batch.
#[test]
fn an_executed_batch_is_written_once() {
    const OP: usize = 4 << 10;
    let mut c = Cluster::new(4);
    let request = |s: u64| Request {
        id: RequestId { client: 1, seq: s },
        kind: RequestKind::Write(Bytes::from(vec![s as u8; OP])),
    };
    c.cut = Box::new(|_, to, _| to == NodeId(3));
    for s in 1..=20 {
        c.input(0, Input::Request(request(s)));
        c.advance(20);
    }
    let batches = 20 * OP;
    assert_eq!(c.node(1).last_executed(), 20);
    assert!(
        c.written[1] < batches * 3 / 2,
        "n1 prepared and executed {batches} bytes of batches and wrote {}",
        c.written[1]
    );
    c.cut = Box::new(|_, _, _| false);
    c.input(0, Input::Request(request(21)));
    c.advance(2000);
    assert_eq!(c.node(3).last_executed(), 21);
    assert!(c.node(3).stats().fetched > 0, "n3 fetched what it missed");
    assert!(c.written[3] >= batches, "n3 wrote {}", c.written[3]);
    for i in [1, 3] {
        let stable = c.disks[i].clone();
        assert_eq!(stable.executed.len(), 21, "n{i}'s disk");
        c.nodes[i] = Some(Pbft::recover(config(i as u32, 4), stable, c.now).unwrap());
        c.committed[i].clear();
    }
    c.advance(100);
    for i in [1, 3] {
        assert_eq!(
            c.committed[i].len(),
            21,
            "n{i} replayed its executed batches"
        );
    }
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_replica_cut_off_catches_up_by_state_transfer() {
    let mut c = Cluster::new(4);
    c.cut = Box::new(|_, to, _| to == NodeId(3));
    c.one_request_per_batch(20);
    assert!(c.committed[3].is_empty());
    c.cut = Box::new(|_, _, _| false);
    c.request(0, 1, 21);
    c.advance(2000);
    assert_eq!(c.committed[3].len(), 21);
    assert!(c.node(3).stats().fetched > 0);
    c.assert_agree(&[0, 1, 2, 3]);
}

/// Re-sign the primary's queued pre-prepare for replica 3 over another batch.
fn primary_equivocates_to_3(c: &mut Cluster) {
    let primary_key = config(0, 4).secret;
    let mut swapped = 0;
    let queue = std::mem::take(&mut c.queue);
    for (from, to, msg) in queue {
        let msg = match msg {
            Message::PrePrepare { header, .. } if to == NodeId(3) => {
                swapped += 1;
                let batch = std::sync::Arc::new(Batch::default());
                let mut body = header.body;
                body.digest = batch.digest();
                let header = crate::crypto::sign(&primary_key, NodeId(0), body);
                Message::PrePrepare { header, batch }
            }
            m => m,
        };
        c.queue.push_back((from, to, msg));
    }
    assert_eq!(swapped, 1);
}

#[test]
fn an_equivocating_primary_is_convicted_by_its_own_signatures() {
    let mut c = Cluster::new(4);
    c.request(0, 1, 1);
    primary_equivocates_to_3(&mut c);
    c.advance(50);
    let proofs: Vec<_> = c
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Evidence { against, proof, .. } => Some((*against, proof.clone())),
            _ => None,
        })
        .collect();
    assert!(!proofs.is_empty(), "equivocation noticed");
    let keys = crate::crypto::derive_public_keys(KEY_SEED, 4);
    for (against, proof) in proofs {
        assert_eq!(against, NodeId(0));
        assert_eq!(evidence::verify(&proof, &keys), Ok(NodeId(0)));
    }
    c.assert_agree(&[0, 1, 2]);
}

#[test]
fn a_convicted_primary_is_excluded_by_every_replica_at_one_sequence_number() {
    let mut c = Cluster::new(4);
    c.request(0, 1, 1);
    primary_equivocates_to_3(&mut c);
    c.advance(3000);
    let at = c.node(1).excluded().get(&NodeId(0)).copied();
    assert!(at.is_some(), "the proof was ordered and executed");
    for i in 0..4 {
        let excluded: Vec<_> = c.node(i).excluded().iter().collect();
        assert_eq!(excluded, [(&NodeId(0), &at.unwrap())], "n{i}");
    }
    // Views led by the convict are skipped; the others go on without it.
    for i in 1..4 {
        assert_ne!(crate::primary_of(c.node(i).view(), 4), NodeId(0), "n{i}");
    }
    let before = c.committed[1].len();
    c.request(1, 1, 2);
    c.request(2, 2, 1);
    c.advance(500);
    assert_eq!(c.committed[1].len(), before + 2);
    c.assert_agree(&[1, 2, 3]);
    // The convict's clients are sent to the primary.
    c.request(0, 3, 1);
    let primary = crate::primary_of(c.node(1).view(), 4);
    assert!(matches!(
        c.replies[0].last(),
        Some(ekmat_core::Reply::Rejected {
            reason: ekmat_core::Rejection::NotLeader { leader: Some(p) },
            ..
        }) if *p == primary
    ));
    // A restarted replica excludes the convict again as it replays its batches, at the
    // same sequence number, without counting a second exclusion.
    let counted = |c: &Cluster| {
        c.events
            .iter()
            .filter(|(n, e)| {
                *n == NodeId(2)
                    && matches!(
                        e,
                        Event::Counter {
                            name: "exclusion",
                            ..
                        }
                    )
            })
            .count()
    };
    assert_eq!(counted(&c), 1);
    let stable = c.disks[2].clone();
    c.nodes[2] = Some(Pbft::recover(config(2, 4), stable, c.now).unwrap());
    c.advance(500);
    let excluded: Vec<_> = c.node(2).excluded().iter().collect();
    assert_eq!(excluded, [(&NodeId(0), &at.unwrap())]);
    assert_eq!(counted(&c), 1);
}

#[test]
fn an_exclusion_with_a_forged_proof_excludes_nobody() {
    let mut c = Cluster::new(4);
    let keys = crate::crypto::derive_public_keys(KEY_SEED, 4);
    let statement = |digest: u8| {
        let body = crate::message::Commit {
            view: 0,
            seq: 1,
            digest: [digest; 32],
        };
        evidence::Statement::of(&crate::crypto::sign(&config(2, 4).secret, NodeId(2), body))
    };
    let mut forged = evidence::proof(&statement(1), &statement(2)).to_vec();
    forged[20] ^= 1;
    assert!(evidence::verify(&forged, &keys).is_err());
    // A Byzantine gateway (replica 1) submits the forged proof as an exclusion.
    let bundle = crate::message::Bundle::new(
        NodeId(1),
        77,
        0,
        vec![crate::message::ClientRequest {
            id: RequestId {
                client: crate::EXCLUSION_CLIENT,
                seq: 2,
            },
            op: Some(Bytes::from(forged)),
            sig: None,
        }],
    );
    let signed = std::sync::Arc::new(crate::crypto::sign(&config(1, 4).secret, NodeId(1), bundle));
    for to in [0, 2, 3] {
        c.queue
            .push_back((NodeId(1), NodeId(to), Message::Bundle(signed.clone())));
    }
    c.request(0, 1, 1);
    c.advance(200);
    for i in 0..4 {
        assert!(c.node(i).excluded().is_empty(), "n{i}");
    }
    assert!(c.events.iter().any(|(_, e)| matches!(
        e,
        Event::Counter {
            name: "invalid-exclusion",
            ..
        }
    )));
    assert_eq!(c.committed[2].len(), 1, "the client request still executes");
}

#[test]
fn a_client_cannot_use_the_exclusion_client_id() {
    let mut node = Pbft::new(config(0, 4)).unwrap();
    let id = RequestId {
        client: crate::EXCLUSION_CLIENT,
        seq: 1,
    };
    let r = Request {
        id,
        kind: RequestKind::Write(Bytes::from_static(b"x")),
    };
    let mut out = Effects::new();
    node.step(Time::ZERO, Input::Request(r), &mut out);
    let effects: Vec<_> = out.drain().collect();
    assert!(matches!(
        effects[..],
        [Effect::Reply(ekmat_core::Reply::Rejected {
            reason: ekmat_core::Rejection::ReservedClient,
            ..
        })]
    ));
}

#[test]
fn a_gateway_sends_its_bundle_to_the_primary_alone() {
    let mut c = Cluster::new(4);
    c.request(2, 1, 1);
    let bundles: Vec<NodeId> = c
        .queue
        .iter()
        .filter(|(_, _, m)| matches!(m, Message::Bundle(_)))
        .map(|(_, to, _)| *to)
        .collect();
    assert_eq!(bundles, vec![NodeId(0)]);
    c.run();
    for i in 0..4 {
        assert_eq!(c.committed[i].len(), 1, "n{i}");
    }
}

#[test]
fn a_message_with_a_bad_signature_is_dropped_and_counted() {
    let mut c = Cluster::new(4);
    // n2's bundle goes to the primary, n0.
    c.request(2, 1, 1);
    for (_, _, msg) in c.queue.iter_mut() {
        if let Message::Bundle(b) = msg {
            let mut forged = (**b).clone();
            forged.sig.0[5] ^= 0xff;
            *b = std::sync::Arc::new(forged);
        }
    }
    c.run();
    assert_eq!(c.node(0).stats().bad_signatures, 1);
}

#[test]
fn messages_previewed_together_are_verified_as_one_batch_and_act_as_alone() {
    let mut alone = Cluster::new(4);
    let mut together = Cluster::new(4);
    for c in [&mut alone, &mut together] {
        for seq in 1..=6 {
            c.request((seq % 4) as usize, 1, seq);
        }
    }
    alone.run();
    together.run_previewing();
    for i in 0..4 {
        assert_eq!(together.committed[i], alone.committed[i], "n{i}");
        let (a, t) = (alone.node(i).keyring(), together.node(i).keyring());
        assert_eq!(
            t.verified, a.verified,
            "n{i}: each signature checked once either way"
        );
        assert!(
            t.cache_hits > a.cache_hits,
            "n{i}: handlers found the batch's checks"
        );
    }
    assert_eq!(alone.committed[0].len(), 6);
}

#[test]
fn a_forged_prepare_among_previewed_messages_is_still_dropped_and_counted() {
    let mut c = Cluster::new(4);
    c.request(0, 1, 1);
    let mut forged = false;
    while !c.queue.is_empty() && !forged {
        for (_, to, msg) in c.queue.iter_mut() {
            if let (Message::Prepare(p), 2) = (msg, to.index())
                && !forged
            {
                p.sig.0[5] ^= 0xff;
                forged = true;
            }
        }
        if !forged {
            let (from, to, msg) = c.queue.pop_front().unwrap();
            c.input(to.index(), Input::Message { from, msg });
        }
    }
    assert!(forged, "a prepare to n2 was sent");
    c.run_previewing();
    assert_eq!(c.node(2).stats().bad_signatures, 1);
    c.assert_agree(&[0, 1, 2, 3]);
    assert_eq!(c.committed[2].len(), 1, "the other prepares carried it");
}

#[test]
fn a_non_validator_cannot_act_as_one() {
    let mut cfg = config(0, 4);
    cfg.id = NodeId(4);
    let err = Pbft::new(cfg).expect_err("refused");
    assert!(err.contains("not a validator"), "{err}");
    let mut cfg = config(1, 4);
    cfg.secret = config(2, 4).secret;
    assert!(Pbft::new(cfg).is_err(), "someone else's key");
}

#[test]
fn the_same_request_bytes_execute_at_most_once() {
    let mut c = Cluster::new(4);
    c.request(1, 5, 1);
    c.request(1, 5, 1); // the same request submitted twice: two bundles
    c.advance(50);
    assert_eq!(c.committed[0].len(), 1);
    let _ = Write::View {
        view: 0,
        normal: true,
    };
}

/// Two gateways number their own requests as the anonymous client 0 (the runtime does):
/// one gateway's numbers far above the other's must not make the other's look old.
#[test]
fn anonymous_requests_of_two_gateways_all_execute() {
    let mut c = Cluster::new(4);
    for s in 0..20 {
        c.request(1, 0, 1_000_000 + s);
        c.request(2, 0, 10 + s);
        c.run();
    }
    c.advance(50);
    assert_eq!(c.committed[0].len(), 40);
    c.assert_agree(&[0, 1, 2, 3]);
}

/// A signed bundle ordered twice (as across a view change) executes once.
#[test]
fn a_bundle_ordered_twice_executes_once() {
    let mut c = Cluster::new(4);
    c.request(1, 0, 1);
    c.advance(50);
    assert_eq!(c.committed[0].len(), 1);
    let (batch, _) = c.node(0).executed(1).expect("executed").clone();
    c.primary_orders_again(batch);
    for i in 0..4 {
        assert_eq!(c.node(i).last_executed(), 2, "n{i}");
        assert_eq!(c.committed[i].len(), 1, "n{i} executed the bundle twice");
    }
}

/// Everything a replica sends or writes crosses the wire and the disk in postcard.
#[test]
fn messages_writes_and_state_survive_serialization() {
    let mut c = Cluster::new(4);
    for s in 1..=6 {
        c.request(1, 3, s);
        c.run();
    }
    c.advance(50);
    let (batch, qc) = c.node(2).executed(1).unwrap().clone();
    let write = Write::Executed {
        batch: batch.clone(),
        qc: qc.clone(),
    };
    let bytes = postcard::to_stdvec(&write).unwrap();
    let Write::Executed { batch: b2, qc: q2 } = postcard::from_bytes(&bytes).unwrap() else {
        panic!("another write came back");
    };
    assert_eq!((&*b2, &q2), (&*batch, &qc));
    let keys = crate::crypto::derive_public_keys(KEY_SEED, 4);
    assert_eq!(
        q2.verify(&keys, 3),
        Ok(()),
        "signatures survive the round trip"
    );
    let msg = Message::PrePrepare {
        header: c.node(0).log.values().next().map_or_else(
            || {
                crate::crypto::sign(
                    &crate::crypto::derive_key(KEY_SEED, 0),
                    NodeId(0),
                    header(&batch),
                )
            },
            |s| s.pre_prepare.as_ref().unwrap().0,
        ),
        batch,
    };
    let back: Message = postcard::from_bytes(&postcard::to_stdvec(&msg).unwrap()).unwrap();
    assert_eq!(back, msg);
    let stable = c.disks[2].clone();
    let back: PbftStable = postcard::from_bytes(&postcard::to_stdvec(&stable).unwrap()).unwrap();
    assert_eq!(back.executed.len(), stable.executed.len());
    assert_eq!(back.checkpoint, stable.checkpoint);
}

fn header(batch: &Batch) -> crate::message::PrePrepare {
    crate::message::PrePrepare {
        view: 0,
        seq: 1,
        digest: batch.digest(),
    }
}

/// A bundle's signature covers its requests (through their digest): changing one
/// request's bytes, number or client breaks it, and changes the bundle's digest.
#[test]
fn a_bundle_signature_covers_every_request() {
    use crate::message::{Bundle, ClientRequest, bundle_digest};
    let key = crate::crypto::derive_key(KEY_SEED, 1);
    let mut ring = crate::crypto::Keyring::new(
        NodeId(0),
        crate::crypto::derive_public_keys(KEY_SEED, 4),
        crate::crypto::derive_key(KEY_SEED, 0),
    );
    let request = |seq: u64, op: &str| ClientRequest {
        id: RequestId { client: 0, seq },
        op: Some(Bytes::from(op.to_string())),
        sig: None,
    };
    let signed = crate::crypto::sign(
        &key,
        NodeId(1),
        Bundle::new(NodeId(1), 1, 0, vec![request(1, "a"), request(2, "b")]),
    );
    assert!(ring.verify(&signed));
    assert_eq!(
        crate::message::signed_digest(&crate::crypto::SigItem::of(&signed)),
        bundle_digest(&signed),
        "the digest from the verified bytes is the bundle's digest"
    );
    let changes: [fn(&mut Bundle); 4] = [
        |b| b.requests_mut()[1].op = Some(Bytes::from_static(b"c")),
        |b| b.requests_mut()[1].id.seq = 3,
        |b| b.requests_mut()[0].id.client = 9,
        |b| b.requests_mut()[1].op = None,
    ];
    for change in changes {
        let mut forged = signed.clone();
        change(&mut forged.body);
        assert!(!ring.verify(&forged), "{:?}", forged.body);
        assert_ne!(bundle_digest(&forged), bundle_digest(&signed));
    }
}

#[test]
fn snapshots_bound_the_executed_log_in_memory_and_on_disk() {
    let mut c = Cluster::with(4, snapshotting);
    c.one_request_per_batch(80);
    assert_eq!(c.committed[0].len(), 80);
    let mut written = Vec::new();
    for i in 0..4 {
        let node = c.node(i);
        assert!(
            node.last_executed() >= 80,
            "n{i} executed {}",
            node.last_executed()
        );
        assert!(
            node.executed.len() <= 8,
            "n{i} holds {} batches",
            node.executed.len()
        );
        // Each writes its snapshot in its own turn: n{i} 16·i batches after the point.
        let disk = &c.disks[i];
        let snapshot = disk.snapshot.as_ref().expect("a snapshot on disk");
        assert!(disk.executed.keys().all(|&s| s > snapshot.seq()));
        assert!(
            disk.executed.len() <= 8 + 16 * i,
            "n{i}: {} on disk",
            disk.executed.len()
        );
        written.push(snapshot.seq());
    }
    assert!(written[0] > written[3], "turns: {written:?}");
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_replica_behind_every_held_batch_installs_a_snapshot_f_plus_1_vouch_for() {
    let mut c = Cluster::with(4, snapshotting);
    c.cut = Box::new(|_, to, _| to == NodeId(3));
    c.one_request_per_batch(30);
    assert!(c.committed[3].is_empty());
    assert!(
        c.node(0).executed(1).is_none(),
        "batch 1 was dropped behind a snapshot"
    );
    c.cut = Box::new(|_, _, _| false);
    c.request(0, 1, 31);
    c.advance(2000);
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    // Logged, not left to a lazy compaction: restarted from what a crash must keep,
    // n3 starts from the snapshot it installed, with no batches below it to replay.
    let restarted = Pbft::recover(snapshotting(3, 4), c.logged[3].clone(), c.now).unwrap();
    assert!(restarted.last_executed() >= 16);
    assert_eq!(c.committed[3].len(), 31);
    c.assert_agree(&[0, 1, 2, 3]);
    // Installed state counts for at-most-once: a request it never executed itself, sent
    // again, does not execute again.
    c.request(2, 1, 5);
    c.advance(200);
    assert_eq!(c.committed[3].len(), 31);
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_restarted_replica_recovers_from_its_snapshot_and_the_batches_after_it() {
    let mut c = Cluster::with(4, snapshotting);
    c.one_request_per_batch(40);
    // n1: the first backup to write its snapshot (n0 writes first, n1 a turn later).
    let stable = c.disks[1].clone();
    assert!(stable.snapshot.is_some() && !stable.executed.is_empty());
    c.nodes[1] = Some(Pbft::recover(snapshotting(1, 4), stable, c.now).unwrap());
    c.committed[1].clear();
    c.request(3, 1, 41);
    c.advance(200);
    assert_eq!(c.committed[1].len(), 41);
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_restart_that_lost_its_own_snapshot_replays_the_batches_it_covered() {
    let mut c = Cluster::with(4, snapshotting);
    c.one_request_per_batch(40);
    // n1's snapshot was written as a compaction, which storage may lose in a crash:
    // its log still holds every batch.
    assert!(c.disks[1].snapshot.is_some());
    let logged = c.logged[1].clone();
    assert!(logged.snapshot.is_none());
    assert!(logged.executed.contains_key(&1));
    c.nodes[1] = Some(Pbft::recover(snapshotting(1, 4), logged, c.now).unwrap());
    c.committed[1].clear();
    c.request(3, 1, 41);
    c.advance(200);
    assert_eq!(c.committed[1].len(), 41);
    c.assert_agree(&[0, 1, 2, 3]);
}

/// `signer`'s vouch for `snapshot`, with no stable checkpoint.
fn offer_of(snapshot: &crate::snapshot::Snapshot, signer: u32) -> Message {
    let vouch = crate::snapshot_transfer::SnapshotVouch {
        seq: snapshot.seq(),
        digest: snapshot.digest(),
        len: snapshot.image().len() as u64,
    };
    let key = crate::crypto::derive_key(KEY_SEED, signer);
    let offer = crate::snapshot_transfer::SnapshotOffer {
        vouch: crate::crypto::sign(&key, NodeId(signer), vouch),
        stable: Default::default(),
    };
    Message::SnapshotOffer(std::sync::Arc::new(offer))
}

/// The whole of `image` in one chunk, signed by `signer`, for the snapshot vouched for
/// as `vouched`.
fn chunk_of(vouched: &crate::snapshot::Snapshot, image: Bytes, signer: u32) -> Message {
    signed_chunk(vouched.seq(), vouched.digest(), 0, image, signer)
}

/// `data` as `signer` would send it, at `offset` of the image vouched for as (`seq`,
/// `digest`).
fn signed_chunk(seq: u64, digest: Digest, offset: u64, data: Bytes, signer: u32) -> Message {
    let header = crate::snapshot_transfer::ChunkHeader {
        seq,
        digest,
        offset,
        data: crate::message::sha256(&data),
    };
    let key = crate::crypto::derive_key(KEY_SEED, signer);
    let chunk = crate::snapshot_transfer::SnapshotChunk {
        header: crate::crypto::sign(&key, NodeId(signer), header),
        data,
    };
    Message::SnapshotChunk(std::sync::Arc::new(chunk))
}

/// `real` with its first command's bytes replaced by what `change` makes of them.
fn with_first_command(
    real: &crate::snapshot::Snapshot,
    change: impl Fn(&Bytes) -> Bytes,
) -> crate::snapshot::Snapshot {
    let mut state = decode_state(&real.app);
    let Some(Committed {
        entry: CommittedEntry::Command { command, .. },
        ..
    }) = state.first_mut()
    else {
        panic!("the snapshot holds commands");
    };
    *command = change(command);
    crate::snapshot::Snapshot {
        exec: real.exec.clone(),
        app: encode_state(&state),
    }
}

/// Who sent each snapshot chunk, and how many bytes, as the cluster runs.
type ChunkLog = std::rc::Rc<std::cell::RefCell<Vec<(NodeId, u64, usize)>>>;

/// The image length each snapshot was vouched for with, as the cluster runs.
type VouchedLens = std::rc::Rc<std::cell::RefCell<BTreeMap<u64, u64>>>;

/// Let everything through, logging snapshot chunks (sender, snapshot, bytes) and the
/// image length each snapshot was vouched for with.
fn log_chunks(c: &mut Cluster) -> (ChunkLog, VouchedLens) {
    log_chunks_dropping(c, |_, _| false)
}

/// As `log_chunks`, but chunks `drop` returns true for (given their sender and the
/// chunks delivered so far) are dropped, and not logged.
fn log_chunks_dropping(
    c: &mut Cluster,
    drop: impl Fn(NodeId, &[(NodeId, u64, usize)]) -> bool + 'static,
) -> (ChunkLog, VouchedLens) {
    let chunks: ChunkLog = Default::default();
    let lens: VouchedLens = Default::default();
    let (seen, vouched) = (chunks.clone(), lens.clone());
    c.cut = Box::new(move |from, _, msg| {
        match msg {
            Message::SnapshotChunk(ch) => {
                let mut seen = seen.borrow_mut();
                if drop(from, &seen) {
                    return true;
                }
                seen.push((from, ch.header.body.seq, ch.data.len()));
            }
            Message::SnapshotOffer(o) => {
                vouched
                    .borrow_mut()
                    .insert(o.vouch.body.seq, o.vouch.body.len);
            }
            _ => {}
        }
        false
    });
    (chunks, lens)
}

fn from(i: u32, msg: Message) -> Input<Message> {
    Input::Message {
        from: NodeId(i),
        msg,
    }
}

/// n0's real snapshot, once n3 is behind every batch the others hold.
fn n3_behind_a_snapshot(c: &mut Cluster) -> crate::snapshot::Snapshot {
    c.cut = Box::new(|_, to, _| to == NodeId(3));
    c.one_request_per_batch(20);
    (**c.node(0).own_snapshot().expect("n0 took a snapshot")).clone()
}

fn one_forged_snapshot_to_a_replica_behind(mutant: crate::Mutant) -> Cluster {
    let mut c = Cluster::with(4, |i, n| PbftConfig {
        mutant: if i == 3 { mutant } else { crate::Mutant::None },
        ..snapshotting(i, n)
    });
    let real = n3_behind_a_snapshot(&mut c);
    // Validly signed by n0, self-consistent, and a lie: one command's bytes changed.
    let lie = with_first_command(&real, |_| Bytes::from_static(b"forged"));
    c.input(3, from(0, offer_of(&lie, 0)));
    c.input(3, from(0, chunk_of(&lie, lie.image(), 0)));
    c
}

#[test]
fn one_replica_vouching_for_a_snapshot_is_not_enough() {
    let c = one_forged_snapshot_to_a_replica_behind(crate::Mutant::None);
    assert_eq!(c.node(3).stats().snapshots_installed, 0);
    assert_eq!(c.node(3).last_executed(), 0);
}

#[test]
fn the_trust_one_snapshot_mutant_installs_a_lie() {
    let c = one_forged_snapshot_to_a_replica_behind(crate::Mutant::TrustOneSnapshot);
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    assert!(c.node(3).last_executed() >= 16);
    let forged = &c.committed[3];
    assert_ne!(
        forged,
        &c.committed[0][..forged.len()],
        "it took the forged state"
    );
}

#[test]
fn snapshots_answered_later_than_the_next_point_still_bound_the_log() {
    let mut c = Cluster::with(4, snapshotting);
    // Points come every 8 batches, 16 ticks apart; each answer takes 24 ticks, so the
    // next request is always out before the last answer is in.
    c.snapshot_delay = vec![24; 4];
    c.one_request_per_batch(60);
    // Checked while requests are still coming, not once they stop and the last
    // answer is the newest request.
    for i in 0..4 {
        let node = c.node(i);
        let own = node.own_snapshot.as_ref().expect("a snapshot kept");
        assert!(
            own.snapshot.seq() >= 40,
            "n{i} kept one at {}",
            own.snapshot.seq()
        );
        assert!(
            node.executed.len() <= 24,
            "n{i} holds {}",
            node.executed.len()
        );
    }
    c.advance(500);
    c.assert_agree(&[0, 1, 2, 3]);
}

fn counted(c: &Cluster, node: usize, counter: &str) -> usize {
    c.events
        .iter()
        .filter(|(n, e)| {
            n.index() == node && matches!(e, Event::Counter { name, .. } if *name == counter)
        })
        .count()
}

#[test]
fn a_garbled_image_under_real_vouches_is_refused_counted_and_fetched_from_another_voucher() {
    let mut c = Cluster::with(4, snapshotting);
    let real = n3_behind_a_snapshot(&mut c);
    c.input(3, from(0, offer_of(&real, 0)));
    c.input(3, from(1, offer_of(&real, 1)));
    // f+1 vouch: n3 asks n0, the first of them, which answers with the right length
    // and a well-formed image of another state: its first command's bytes changed.
    let other = with_first_command(&real, |command| Bytes::from(vec![b'x'; command.len()]));
    assert_eq!(other.image().len(), real.image().len());
    c.input(3, from(0, chunk_of(&real, other.image(), 0)));
    assert_eq!(c.node(3).last_executed(), 0);
    assert_eq!(counted(&c, 3, "bad-snapshot"), 1);
    // n0 served that image alone: it is not asked again.
    c.queue.clear();
    let (chunks, _) = log_chunks(&mut c);
    c.advance(500);
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    let senders: std::collections::BTreeSet<NodeId> = chunks.borrow().iter().map(|c| c.0).collect();
    assert_eq!(senders, [NodeId(1)].into(), "fetched again from n1 alone");
    c.request(0, 1, 21);
    c.advance(1000);
    assert_eq!(c.committed[3].len(), 21);
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_snapshot_larger_than_a_chunk_crosses_once_in_chunks_from_one_voucher() {
    let mut c = Cluster::with(4, |i, n| PbftConfig {
        snapshot_chunk_bytes: 16,
        ..snapshotting(i, n)
    });
    n3_behind_a_snapshot(&mut c);
    let (chunks, lens) = log_chunks(&mut c);
    c.request(0, 1, 21);
    c.advance(1000);
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    assert_eq!(c.committed[3].len(), 21);
    c.assert_agree(&[0, 1, 2, 3]);
    let chunks = chunks.borrow();
    let senders: std::collections::BTreeSet<NodeId> = chunks.iter().map(|c| c.0).collect();
    assert_eq!(senders.len(), 1, "one voucher sent the image: {senders:?}");
    let seqs: std::collections::BTreeSet<u64> = chunks.iter().map(|c| c.1).collect();
    assert_eq!(seqs.len(), 1);
    let seq = *seqs.first().unwrap();
    assert!(chunks.iter().all(|c| c.2 <= 16));
    let sent: usize = chunks.iter().map(|c| c.2).sum();
    assert_eq!(sent as u64, lens.borrow()[&seq], "each byte crossed once");
    assert!(
        chunks.len() > 8,
        "more chunks than the window: {}",
        chunks.len()
    );
}

#[test]
fn a_voucher_that_stops_mid_download_is_replaced_and_the_bytes_so_far_kept() {
    let mut c = Cluster::with(4, |i, n| PbftConfig {
        snapshot_chunk_bytes: 16,
        ..snapshotting(i, n)
    });
    n3_behind_a_snapshot(&mut c);
    // n0, asked first, sends its first five chunks, then goes quiet.
    let (delivered, lens) = log_chunks_dropping(&mut c, |from, seen| {
        from == NodeId(0) && seen.iter().filter(|c| c.0 == from).count() >= 5
    });
    c.request(0, 1, 21);
    c.advance(2000);
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    assert_eq!(c.committed[3].len(), 21);
    c.assert_agree(&[0, 1, 2, 3]);
    assert!(counted(&c, 3, "snapshot-voucher-late") >= 1);
    let delivered = delivered.borrow();
    let from_n0 = delivered.iter().filter(|c| c.0 == NodeId(0)).count();
    assert_eq!(from_n0, 5);
    assert!(
        delivered.iter().any(|c| c.0 != NodeId(0)),
        "another voucher took over"
    );
    let seq = delivered[0].1;
    let sent: usize = delivered.iter().map(|c| c.2).sum();
    assert_eq!(
        sent as u64,
        lens.borrow()[&seq],
        "the first five chunks were not sent again"
    );
}

/// A durable state whose snapshot does not decode (one written by a build with another
/// execution state, say) is refused, never read as a state without its snapshot: the
/// replica would restart from sequence number 0 with an empty store.
#[test]
fn a_durable_state_whose_snapshot_does_not_decode_is_refused() {
    let mut c = Cluster::with(4, snapshotting);
    c.one_request_per_batch(20);
    let now = &c.disks[0];
    assert!(now.snapshot.is_some());
    let bytes = postcard::to_stdvec(now).unwrap();
    let back: PbftStable = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.snapshot, now.snapshot);
    assert_eq!(back.executed.len(), now.executed.len());
    // The snapshot is the last field: an execution state one byte short of today's.
    let exec = postcard::to_stdvec(&now.snapshot.as_ref().unwrap().exec).unwrap();
    let at = bytes
        .windows(exec.len())
        .position(|w| w == &exec[..])
        .unwrap();
    let mut older = bytes.clone();
    older.remove(at + exec.len() - 1);
    assert!(postcard::from_bytes::<PbftStable>(&older).is_err());
    older.truncate(at);
    assert!(postcard::from_bytes::<PbftStable>(&older).is_err());
}

#[test]
fn a_replaced_snapshot_is_still_served_to_a_replica_fetching_it() {
    let mut c = Cluster::with(4, snapshotting);
    c.one_request_per_batch(20);
    // Someone was sent n0's vouch for its snapshot, then n0 moved on.
    let first = c.nodes[0]
        .as_mut()
        .unwrap()
        .own_vouch()
        .expect("a snapshot")
        .body;
    for s in 21..=30 {
        c.request(0, 1, s);
        c.advance(20);
    }
    assert!(c.node(0).own_snapshot().expect("a snapshot").seq() > first.seq);
    c.run();
    let ask = crate::snapshot_transfer::ChunkRequest {
        seq: first.seq,
        digest: first.digest,
        offset: 0,
        len: 16,
    };
    let key = crate::crypto::derive_key(KEY_SEED, 3);
    let msg = Message::SnapshotFetch(crate::crypto::sign(&key, NodeId(3), ask));
    c.input(0, from(3, msg));
    let served = c.queue.iter().any(|(f, to, m)| {
        (*f, *to) == (NodeId(0), NodeId(3))
            && matches!(m, Message::SnapshotChunk(ch) if ch.header.body.seq == first.seq && ch.data.len() == 16)
    });
    assert!(served, "n0 served its replaced snapshot");
}

/// n = 7, f = 2. n6 is behind; only n0, n1 and n2 vouch (f+1). n0 never sends a chunk;
/// n1 answers its first window with well-signed wrong bytes, then nothing; n2 is
/// correct. The first image mixes n1's and n2's bytes, so both are suspected, and n0 is
/// the only voucher left unsuspected: asked alone, it must not be asked for ever.
#[test]
fn two_byzantine_vouchers_cannot_keep_a_replica_from_a_correct_third() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut c = Cluster::with(7, |i, n| PbftConfig {
        snapshot_chunk_bytes: 16,
        ..snapshotting(i, n)
    });
    c.cut = Box::new(|_, to, _| to == NodeId(6));
    c.one_request_per_batch(20);
    let real = (**c.node(2).own_snapshot().expect("n2 took a snapshot")).clone();
    let asked_of_n1: Rc<RefCell<Vec<crate::snapshot_transfer::ChunkRequest>>> = Rc::default();
    let log = asked_of_n1.clone();
    c.cut = Box::new(move |from, to, msg| match msg {
        // Only the vouches given below reach n6.
        Message::SnapshotOffer(_) => to == NodeId(6),
        Message::SnapshotChunk(_) => from == NodeId(0) || from == NodeId(1),
        Message::SnapshotFetch(r) if to == NodeId(1) && from == NodeId(6) => {
            log.borrow_mut().push(r.body);
            true
        }
        _ => false,
    });
    for i in 0..3 {
        c.input(6, from(i, offer_of(&real, i)));
    }
    let mut answered = false;
    for _ in 0..300 {
        c.advance(10);
        let asks = std::mem::take(&mut *asked_of_n1.borrow_mut());
        if answered || asks.is_empty() {
            continue;
        }
        answered = true;
        for r in asks {
            let data = Bytes::from(vec![0x5a; r.len as usize]);
            c.input(6, from(1, signed_chunk(r.seq, r.digest, r.offset, data, 1)));
        }
    }
    assert!(answered, "n6 asked n1");
    assert_eq!(counted(&c, 6, "bad-snapshot"), 1);
    assert_eq!(c.node(6).stats().snapshots_installed, 1);
}

mod bundle_horizon;
mod client;
mod clock;
mod readmission;
mod seed;
mod serve_budget;
mod size_bounds;
mod snapshot_points;
