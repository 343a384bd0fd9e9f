//! A tiny synchronous cluster for behaviour tests: messages are delivered in FIFO order
//! when the test says so, links can be cut, and writes become durable on demand.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use ekmat_core::{
    Committed, Durable, Effect, Effects, Input, NodeId, Replica, Reply, Request, RequestId,
    RequestKind, Time,
};
use ekmat_raft::{Message, RaftConfig, RaftNode, RaftStable, RaftWrite, Role};

pub struct Node {
    pub raft: RaftNode,
    pub stable: RaftStable,
    pub unsynced: Vec<(u64, RaftWrite)>,
    pub committed: Vec<Committed>,
    pub replies: Vec<Reply>,
    /// Snapshots the core asked the state machine to restore: (index, data).
    pub restored: Vec<(u64, bytes::Bytes)>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub now: Time,
    pub queue: VecDeque<(NodeId, NodeId, Message)>,
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Make writes durable as soon as they are requested.
    pub auto_sync: bool,
    pub sent: Vec<(NodeId, NodeId, Message)>,
}

pub fn config(id: u32, n: u32) -> RaftConfig {
    let mut cfg = RaftConfig::new(NodeId(id), (0..n).map(NodeId).collect());
    cfg.seed = 100 + u64::from(id);
    cfg
}

impl Cluster {
    pub fn new(n: u32) -> Cluster {
        Cluster::with(n, |_| {})
    }

    pub fn with(n: u32, tweak: impl Fn(&mut RaftConfig)) -> Cluster {
        Cluster::with_joiners(n, 0, tweak)
    }

    /// `voters` founding members, then `joiners` nodes that start knowing no
    /// configuration, as nodes about to be added do.
    pub fn with_joiners(voters: u32, joiners: u32, tweak: impl Fn(&mut RaftConfig)) -> Cluster {
        let nodes = (0..voters + joiners)
            .map(|i| {
                let mut cfg = config(i, voters);
                if i >= voters {
                    cfg.voters.clear();
                }
                tweak(&mut cfg);
                Node {
                    raft: RaftNode::new(cfg, Time::ZERO).unwrap(),
                    stable: RaftStable::default(),
                    unsynced: Vec::new(),
                    committed: Vec::new(),
                    replies: Vec::new(),
                    restored: Vec::new(),
                }
            })
            .collect();
        Cluster {
            nodes,
            now: Time::ZERO,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            auto_sync: true,
            sent: Vec::new(),
        }
    }

    pub fn step(&mut self, id: NodeId, input: Input<Message>) {
        let mut out = Effects::new();
        self.nodes[id.index()].raft.step(self.now, input, &mut out);
        let mut synced = None;
        for effect in out.drain() {
            let node = &mut self.nodes[id.index()];
            match effect {
                Effect::Send { to, msg } => {
                    self.sent.push((id, to, msg.clone()));
                    self.queue.push_back((id, to, msg));
                }
                Effect::Persist { seq, write } => {
                    node.unsynced.push((seq, write));
                    if self.auto_sync {
                        synced = Some(seq);
                    }
                }
                Effect::Commit(c) => node.committed.push(c),
                Effect::Restore { index, data } => node.restored.push((index, data)),
                Effect::Reply(r) => node.replies.push(r),
                // Raft takes snapshots at its driver's cadence and never asks for one.
                Effect::WantSnapshot { .. } => unreachable!("raft asked for a snapshot"),
                Effect::Event(_) => {}
            }
        }
        if let Some(seq) = synced {
            self.sync(id, seq);
        }
    }

    /// Make node `id`'s writes up to `seq` durable and tell it so.
    pub fn sync(&mut self, id: NodeId, seq: u64) {
        let node = &mut self.nodes[id.index()];
        let (done, rest): (Vec<_>, Vec<_>) = node.unsynced.drain(..).partition(|(s, _)| *s <= seq);
        node.unsynced = rest;
        for (_, w) in &done {
            node.stable.apply(w);
        }
        self.step(id, Input::Persisted { seq });
    }

    pub fn sync_all(&mut self, id: NodeId) {
        if let Some(&(seq, _)) = self.nodes[id.index()].unsynced.last() {
            self.sync(id, seq);
        }
    }

    /// Deliver queued messages until none are left (or `limit` were delivered).
    pub fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while let Some((from, to, msg)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "message storm");
            if self.cut.contains(&(from, to)) {
                continue;
            }
            self.step(to, Input::Message { from, msg });
        }
    }

    /// Advance time by `d` in 10 ms ticks, delivering everything after each tick.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = self.now + Duration::from_millis(10);
            for i in 0..self.nodes.len() {
                self.step(NodeId(i as u32), Input::Tick);
            }
            self.deliver_all();
        }
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.raft.role() == Role::Leader)
            .map(|n| n.raft.config().id)
            .collect()
    }

    pub fn elect(&mut self) -> NodeId {
        for _ in 0..50 {
            self.run_for(Duration::from_millis(100));
            if let [leader] = self.leaders()[..] {
                return leader;
            }
        }
        panic!("no single leader emerged: {:?}", self.leaders());
    }

    pub fn isolate(&mut self, id: NodeId) {
        for i in 0..self.nodes.len() as u32 {
            if NodeId(i) != id {
                self.cut.insert((id, NodeId(i)));
                self.cut.insert((NodeId(i), id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn write(&mut self, at: NodeId, seq: u64, value: &'static str) {
        let req = Request {
            id: RequestId { client: 1, seq },
            kind: RequestKind::Write(Bytes::from_static(value.as_bytes())),
        };
        self.step(at, Input::Request(req));
    }

    pub fn read(&mut self, at: NodeId, seq: u64) {
        let req = Request {
            id: RequestId { client: 2, seq },
            kind: RequestKind::Read,
        };
        self.step(at, Input::Request(req));
    }

    pub fn raft(&self, id: NodeId) -> &RaftNode {
        &self.nodes[id.index()].raft
    }

    /// Restart `id` from its durable state, losing unsynced writes.
    pub fn restart(&mut self, id: NodeId) {
        let node = &mut self.nodes[id.index()];
        let cfg = node.raft.config().clone();
        node.unsynced.clear();
        node.committed.clear();
        node.replies.clear();
        node.restored.clear();
        node.raft = RaftNode::recover(cfg, node.stable.clone(), self.now).unwrap();
        self.queue.retain(|(_, to, _)| *to != id);
    }
}
