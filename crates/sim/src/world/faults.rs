//! Faults: when each one strikes, whom it strikes, and how it is undone — network cuts,
//! crashes and restarts, pauses, clock drift, leadership transfers and membership churn.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use ekmat_core::{ChangeAction, Input, MembershipChange, NodeId, Replica};
use ekmat_kv::KvStore;

use super::{Ev, FaultEnd, Msg, World};
use crate::protocol::{ProtocolChecker, SimProtocol, Violation};
use crate::schedule::{Churn, Fault, Target};

impl<'p, P: SimProtocol> World<'p, P> {
    /// How long a `next-leader` fault waits for an election before it lapses.
    const ARM_WINDOW: Duration = Duration::from_secs(5);

    pub(super) fn resolve(
        &mut self,
        target: Target,
        next_leader: Option<NodeId>,
    ) -> Option<NodeId> {
        match target {
            Target::Node(id) => Some(id),
            Target::NextLeader
            | Target::NextInstall
            | Target::NextReconfiguration
            | Target::NextLeaseRenewal => next_leader,
            Target::Leader => self.leader().or_else(|| {
                let up: Vec<NodeId> = (0..self.cfg.nodes as u32)
                    .map(NodeId)
                    .filter(|id| self.nodes[id.index()].replica.is_some())
                    .collect();
                (!up.is_empty()).then(|| up[self.fault_rng.index(up.len())])
            }),
        }
    }

    pub(super) fn start_fault(&mut self, index: usize) {
        if self.healed_at.is_some() {
            return;
        }
        if let Some(t) = self.schedule.faults[index].fault.target()
            && t.is_armed()
        {
            self.armed.push((index, t, self.now + Self::ARM_WINDOW));
            return;
        }
        self.inject(index, None);
    }

    /// `moment` came for `node` (it won an election, installed a snapshot, took in a
    /// configuration): strike it with every fault armed for that, each after a short
    /// delay of its own.
    pub(super) fn fire_armed(&mut self, node: NodeId, moment: Target) {
        let now = self.now;
        self.armed.retain(|(_, _, until)| *until >= now);
        if !self.armed.iter().any(|(_, t, _)| *t == moment) {
            return;
        }
        let (fire, keep) = std::mem::take(&mut self.armed)
            .into_iter()
            .partition(|(_, t, _)| *t == moment);
        self.armed = keep;
        for (index, _, _) in fire {
            // Struck at once: a lease renewal (any delay only shortens the race), a
            // swap's second leader and a leader taking in new voters (before their
            // first entries reach anyone).
            let at_once = moment == Target::NextLeaseRenewal
                || matches!(
                    self.schedule.faults[index].fault,
                    Fault::Swap | Fault::ConfigSplit
                );
            let within = if at_once { 1_000 } else { 30_000 };
            let delay = self.fault_rng.range(0, within);
            self.push(
                now + Duration::from_micros(delay),
                Ev::FaultFire { index, node },
            );
        }
    }

    /// The target with enough random companions to stay a minority.
    pub(super) fn minority_with(&mut self, node: NodeId) -> Vec<NodeId> {
        let mut others: Vec<NodeId> = (0..self.cfg.nodes as u32)
            .map(NodeId)
            .filter(|&id| id != node)
            .collect();
        self.fault_rng.shuffle(&mut others);
        let companions = (self.cfg.nodes - 1) / 2;
        let mut side = vec![node];
        side.extend(others.into_iter().take(companions.saturating_sub(1)));
        side
    }

    /// For `config-split`: `node`, which just took in a new configuration, with the
    /// voters that configuration adds and as many of the voters it keeps as make a
    /// majority of its voters. `None` if the change added no voter.
    fn new_majority_side(&mut self, node: NodeId) -> Option<Vec<NodeId>> {
        let (before, after) = self.reconfigurations.get(&node)?.clone();
        let incoming = &after.voters;
        let outgoing: BTreeSet<NodeId> = before.voters.union(&before.outgoing).copied().collect();
        let added: Vec<NodeId> = incoming.difference(&outgoing).copied().collect();
        if added.is_empty() {
            return None;
        }
        let mut side: Vec<NodeId> = std::iter::once(node)
            .chain(added.into_iter().filter(|&n| n != node))
            .collect();
        let mut kept: Vec<NodeId> = incoming
            .intersection(&outgoing)
            .copied()
            .filter(|n| !side.contains(n))
            .collect();
        self.fault_rng.shuffle(&mut kept);
        let holds = |side: &[NodeId]| side.iter().filter(|n| incoming.contains(n)).count();
        for n in kept {
            if holds(&side) > incoming.len() / 2 {
                break;
            }
            side.push(n);
        }
        side.sort_unstable();
        Some(side)
    }

    /// Ask the live leader, if any, to hand over to `to`. The request's id is no
    /// client's, so its answer is dropped: only the protocol's behaviour matters.
    pub(super) fn ask_leader_to_transfer(&mut self, index: usize, to: NodeId) -> bool {
        let Some(leader) = self.leader().filter(|&l| l != to && !self.is_paused(l)) else {
            return false;
        };
        let request = ekmat_core::Request {
            id: ekmat_core::RequestId {
                client: u64::MAX,
                seq: index as u64,
            },
            kind: ekmat_core::RequestKind::TransferLeadership { to },
        };
        self.step(leader, Input::Request(request));
        true
    }

    /// Ask the live leader, if any, for a membership change of kind `churn`, naming
    /// nodes drawn from the configuration it has in force. The cluster keeps between
    /// three and six voters, so the nemesis never removes what liveness needs.
    pub(super) fn ask_leader_to_change(&mut self, index: usize, churn: Churn) -> bool {
        let Some(leader) = self.leader().filter(|&l| !self.is_paused(l)) else {
            return false;
        };
        let Some(m) = self.replica(leader).and_then(|r| self.proto.membership(r)) else {
            return false;
        };
        let outside: Vec<NodeId> = (0..self.cfg.nodes as u32)
            .map(NodeId)
            .filter(|&id| !m.contains(id))
            .collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let rng = &mut self.fault_rng;
        let mut pick = |from: &[NodeId]| (!from.is_empty()).then(|| from[rng.index(from.len())]);
        let (spare, voter, learner) = (pick(&outside), pick(&voters), pick(&learners));
        use ChangeAction::*;
        let changes = match churn {
            Churn::AddLearner => spare.map(|s| vec![(AddLearner, s)]),
            Churn::AddVoter => spare
                .filter(|_| voters.len() < 6)
                .map(|s| vec![(AddVoter, s)]),
            Churn::Promote => learner
                .filter(|_| voters.len() < 6)
                .map(|l| vec![(Promote, l)]),
            Churn::Remove => match (voter.filter(|_| voters.len() > 3), learner) {
                (Some(v), _) => Some(vec![(Remove, v)]),
                (None, Some(l)) => Some(vec![(Remove, l)]),
                (None, None) => None,
            },
            Churn::Replace => spare
                .zip(voter)
                .map(|(s, v)| vec![(AddVoter, s), (Remove, v)]),
        };
        let Some(changes) = changes else {
            return false;
        };
        let changes = changes
            .into_iter()
            .map(|(action, node)| MembershipChange {
                action,
                node,
                context: Bytes::new(),
            })
            .collect();
        let request = ekmat_core::Request {
            id: ekmat_core::RequestId {
                client: u64::MAX - 1,
                seq: index as u64,
            },
            kind: ekmat_core::RequestKind::ChangeMembership(changes),
        };
        self.step(leader, Input::Request(request));
        true
    }

    pub(super) fn inject(&mut self, index: usize, next_leader: Option<NodeId>) {
        if self.healed_at.is_some() {
            return;
        }
        if let (Fault::Swap, Some(winner)) = (&self.schedule.faults[index].fault, next_leader) {
            // The second act, unless the fault ended while it was on its way.
            if self.swaps.contains(&index) {
                self.swap_in(index, winner);
            }
            return;
        }
        let sf = self.schedule.faults[index].clone();
        let id = index as u64;
        let end_at = self.now + sf.lasts;
        let target = match sf.fault.target() {
            Some(t) => match self.resolve(t, next_leader) {
                Some(node) => Some(node),
                None => return,
            },
            None => None,
        };
        let end = match sf.fault {
            Fault::Partition { ref groups } => {
                self.net.partition(id, groups);
                FaultEnd::Network
            }
            Fault::Isolate { .. } => {
                let node = target.expect("isolate has a target");
                self.net.partition(id, &[vec![node]]);
                FaultEnd::Network
            }
            Fault::Split { .. } => {
                let side = self.minority_with(target.expect("split has a target"));
                self.net.partition(id, &[side]);
                FaultEnd::Network
            }
            Fault::Swap => {
                let node = target.expect("swap has a target");
                self.net.partition(id, &[vec![node]]);
                self.swaps.push(index);
                self.armed.push((index, Target::NextLeader, end_at));
                FaultEnd::Network
            }
            Fault::ConfigSplit => {
                let node = target.expect("config-split has a target");
                let Some(side) = self.new_majority_side(node) else {
                    // A change that adds no voter (learners, leaving a joint
                    // configuration): wait for one that does.
                    let until = self.now + Self::ARM_WINDOW;
                    self.armed.push((index, Target::NextReconfiguration, until));
                    return;
                };
                self.net.partition(id, &[side]);
                FaultEnd::Network
            }
            Fault::Bridge {
                ref left,
                ref right,
                ..
            } => {
                self.net.bridge(id, left, right);
                FaultEnd::Network
            }
            Fault::OneWay { ref from, ref to } => {
                self.net.one_way(id, from, to);
                FaultEnd::Network
            }
            Fault::Clog { from, to } => {
                self.net.clog(id, from, to, end_at);
                FaultEnd::Network
            }
            Fault::Loss { percent } => {
                self.net.set_loss(id, percent);
                FaultEnd::Network
            }
            Fault::Duplicate { percent } => {
                self.net.set_duplicate(id, percent);
                FaultEnd::Network
            }
            Fault::Reorder { jitter } => {
                self.net.set_jitter(id, jitter);
                FaultEnd::Network
            }
            Fault::Crash { .. } => {
                let node = target.expect("crash has a target");
                if !self.crash(node) {
                    return;
                }
                FaultEnd::Restart(node)
            }
            Fault::Pause { .. } => {
                let node = target.expect("pause has a target");
                let slot = &mut self.nodes[node.index()];
                if slot.paused || slot.replica.is_none() {
                    return;
                }
                slot.paused = true;
                FaultEnd::Resume(node)
            }
            Fault::Transfer { .. } => {
                let to = target.expect("transfer has a target");
                if !self.ask_leader_to_transfer(index, to) {
                    return;
                }
                FaultEnd::Instant
            }
            Fault::Churn { change } => {
                if !self.ask_leader_to_change(index, change) {
                    return;
                }
                FaultEnd::Instant
            }
            Fault::Clock { .. } => {
                let slow = target.expect("clock has a target");
                self.clock_faults.push((index, slow));
                self.set_clock_rates();
                FaultEnd::Clock
            }
            Fault::LeaseCut { .. } => {
                let node = target.expect("lease-cut has a target");
                self.net.partition(id, &[vec![node]]);
                self.clock_faults.push((index, node));
                self.set_clock_rates();
                FaultEnd::LeaseCut
            }
        };
        self.stats.faults += 1;
        let now = self.now;
        self.trace.hash_event(now, (6u8, index));
        self.trace.line(now, || match target {
            Some(node) => format!("FAULT {} = {node} for {:?}", sf.fault, sf.lasts),
            None => format!("FAULT {} for {:?}", sf.fault, sf.lasts),
        });
        self.push(end_at, Ev::FaultEnd { index, end });
    }

    /// A `swap`'s second act: `winner`, just elected while the first leader was cut
    /// off, is cut off in its place, and the first rejoins.
    fn swap_in(&mut self, index: usize, winner: NodeId) {
        self.swaps.retain(|&i| i != index);
        let id = index as u64;
        self.net.remove(id);
        self.net.partition(id, &[vec![winner]]);
        let now = self.now;
        self.trace.hash_event(now, (8u8, index));
        self.trace.line(now, || {
            format!("SWAP fault #{index}: {winner} cut off in its turn")
        });
    }

    pub(super) fn end_fault(&mut self, index: usize, end: FaultEnd) {
        let now = self.now;
        self.trace.hash_event(now, (7u8, index));
        match end {
            FaultEnd::Instant => {}
            FaultEnd::Network => {
                self.swaps.retain(|&i| i != index);
                self.armed.retain(|&(i, _, _)| i != index);
                self.net.remove(index as u64);
                self.trace.line(now, || format!("HEAL fault #{index}"));
            }
            FaultEnd::Restart(node) => self.restart(node),
            FaultEnd::Resume(node) => self.resume(node),
            FaultEnd::Clock => {
                self.clock_faults.retain(|&(i, _)| i != index);
                self.set_clock_rates();
            }
            FaultEnd::LeaseCut => {
                self.net.remove(index as u64);
                self.clock_faults.retain(|&(i, _)| i != index);
                self.set_clock_rates();
                self.trace.line(now, || format!("HEAL fault #{index}"));
            }
        }
    }

    /// Clock rates as the latest clock fault in force says: its node slow by the drift
    /// bound, the others fast by it (a slow leader's lease outlasts fast followers'
    /// patience most); without one, every clock keeps real time's pace.
    pub(super) fn set_clock_rates(&mut self) {
        let rho = i32::try_from(self.cfg.max_clock_drift_ppm).expect("bound below 100%");
        let slow = self.clock_faults.last().map(|&(_, n)| n);
        let now = self.now;
        let mut changed = false;
        for (i, slot) in self.nodes.iter_mut().enumerate() {
            let rate = match slow {
                None => 0,
                Some(n) if n.index() == i => -rho,
                Some(_) => rho,
            };
            if slot.clock.rate_ppm() != rate {
                slot.clock.set_rate(now, rate);
                changed = true;
            }
        }
        if !changed {
            return;
        }
        self.trace.line(now, || match slow {
            Some(n) => format!("CLOCKS {n} at -{rho}ppm, the others at +{rho}ppm"),
            None => "CLOCKS back to real time's pace".to_string(),
        });
    }

    /// Returns false if the node was already down.
    pub fn crash(&mut self, node: NodeId) -> bool {
        let slot = &mut self.nodes[node.index()];
        if slot.replica.is_none() {
            return false;
        }
        let kept = slot.disk.crash(&mut self.disk_rng);
        slot.replica = None;
        slot.paused = false;
        slot.backlog.clear();
        slot.pending.clear();
        slot.reads.clear();
        slot.kv = KvStore::new();
        slot.last_snapshot = 0;
        slot.asked_snapshot = None;
        slot.epoch += 1;
        self.stats.crashes += 1;
        let now = self.now;
        self.trace.line(now, || {
            format!("CRASH {node} ({kept} unsynced writes survived)")
        });
        true
    }

    pub fn restart(&mut self, node: NodeId) {
        if self.nodes[node.index()].replica.is_some() {
            return;
        }
        let stable = self.nodes[node.index()].disk.stable().clone();
        if let Err(v) = self.checker.on_recover(self.now, node, &stable) {
            self.fail(v);
        }
        let seed = self.node_seeds.next_u64();
        let local = self.nodes[node.index()].clock.local(self.now);
        match self
            .proto
            .recover(node, self.cfg.voters, seed, stable, local)
        {
            Ok(replica) => {
                let slot = &mut self.nodes[node.index()];
                slot.replica = Some(replica);
                slot.last_sync = self.now;
                let epoch = slot.epoch;
                let now = self.now;
                self.trace.line(now, || format!("RESTART {node}"));
                let next = self.next_tick(node);
                self.push(next, Ev::Tick { node, epoch });
            }
            Err(e) => {
                let v = Violation::new(
                    "recovery",
                    self.now,
                    format!("{node} failed to recover: {e}"),
                );
                self.fail(v);
            }
        }
    }

    pub fn pause(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.index()];
        if slot.replica.is_some() {
            slot.paused = true;
        }
    }

    pub fn resume(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.index()];
        if !slot.paused {
            return;
        }
        slot.paused = false;
        let backlog = std::mem::take(&mut slot.backlog);
        let now = self.now;
        self.trace.line(now, || {
            format!("RESUME {node} ({} queued events)", backlog.len())
        });
        // A stalled process wakes to expired timers and a full socket buffer at once;
        // its timers get to run first, as they may in a real event loop.
        self.trace.hash_event(now, (4u8, node));
        self.step(node, Input::Tick);
        // ... and then takes in what queued up, shown to the core together first, as the
        // runtime's driver shows it what arrived together (`Replica::preview`).
        let queued: Vec<&Msg<P>> = backlog
            .iter()
            .filter_map(|ev| match ev {
                Ev::Deliver { msg, .. } => Some(msg),
                _ => None,
            })
            .collect();
        if let Some(replica) = self.nodes[node.index()].replica.as_mut() {
            replica.preview(&queued);
        }
        for ev in backlog {
            if self.nodes[node.index()].replica.is_none() || self.violation.is_some() {
                break;
            }
            self.deliver_to(node, ev);
        }
    }

    /// The safety phase ends: every fault is repaired.
    pub(super) fn heal(&mut self) {
        self.armed.clear();
        self.clock_faults.clear();
        self.set_clock_rates();
        self.net.heal_all();
        for i in 0..self.cfg.nodes {
            let id = NodeId(i as u32);
            self.restart(id);
            self.resume(id);
        }
        self.healed_at = Some(self.now);
        for client in self.workload.heal() {
            let at = self.now + self.workload.think_time();
            self.push(at, Ev::ClientWake { client });
        }
        let now = self.now;
        self.trace
            .line(now, || "HEAL ALL: liveness phase begins".to_string());
    }
}
