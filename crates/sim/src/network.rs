//! The simulated network between replicas: latency drawn per message, and the faults
//! that are currently active (cuts, clogs, loss, duplication, jitter). Several faults
//! can be active at once; each is added and removed under its own id.

use std::time::Duration;

use ekmat_core::{DetRng, NodeId, Time};

/// One-way latency of a healthy link, drawn uniformly per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyRange {
    pub min: Duration,
    pub max: Duration,
}

/// A heavy tail on top of the uniform latency: `percent` of messages take `factor`
/// times as long (a retransmission, a GC pause in a middlebox, a congested queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyTail {
    pub percent: u32,
    pub factor: u32,
}

/// A link with a character of its own (a WAN link between two sites): its latency
/// replaces the network's, its loss adds to any loss fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub latency: LatencyRange,
    pub loss_percent: u32,
}

/// Links that differ from the network's default, both directions alike, from `since`
/// on (before it, they are like every other link).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkTable {
    pub since: Time,
    links: Vec<(NodeId, NodeId, Link)>,
}

impl LinkTable {
    /// A table whose links take effect at `since`.
    pub fn starting_at(since: Time) -> LinkTable {
        LinkTable {
            since,
            links: Vec::new(),
        }
    }

    pub fn set(&mut self, a: NodeId, b: NodeId, link: Link) {
        self.links
            .retain(|(x, y, _)| !((*x, *y) == (a, b) || (*x, *y) == (b, a)));
        self.links.push((a, b, link));
    }

    pub fn get(&self, from: NodeId, to: NodeId) -> Option<Link> {
        self.links
            .iter()
            .find(|(x, y, _)| (*x, *y) == (from, to) || (*x, *y) == (to, from))
            .map(|(_, _, link)| *link)
    }
}

#[derive(Debug)]
pub struct Network {
    n: usize,
    latency: LatencyRange,
    tail: LatencyTail,
    /// Per pair, the link's own character, if it has one, from `links_since` on.
    links: Vec<Option<Link>>,
    links_since: Time,
    /// Directed pairs blocked by each active cut.
    cuts: Vec<(u64, Vec<(NodeId, NodeId)>)>,
    blocked: Vec<bool>,
    clogs: Vec<(u64, NodeId, NodeId, Time)>,
    loss: Vec<(u64, u32)>,
    duplicate: Vec<(u64, u32)>,
    jitter: Vec<(u64, Duration)>,
}

impl Network {
    pub fn new(n: usize, latency: LatencyRange, tail: LatencyTail, table: &LinkTable) -> Network {
        let mut links = vec![None; n * n];
        for from in 0..n {
            for to in 0..n {
                links[from * n + to] = table.get(NodeId(from as u32), NodeId(to as u32));
            }
        }
        Network {
            n,
            latency,
            tail,
            links,
            links_since: table.since,
            cuts: Vec::new(),
            blocked: vec![false; n * n],
            clogs: Vec::new(),
            loss: Vec::new(),
            duplicate: Vec::new(),
            jitter: Vec::new(),
        }
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked[from.index() * self.n + to.index()]
    }

    /// When copies of a message sent now arrive: none if it is lost or cut, two if it
    /// is duplicated.
    pub fn deliveries(&self, from: NodeId, to: NodeId, now: Time, rng: &mut DetRng) -> Vec<Time> {
        if self.is_blocked(from, to) {
            return Vec::new();
        }
        let link =
            self.links[from.index() * self.n + to.index()].filter(|_| now >= self.links_since);
        if rng.chance(f64::from(max_of(&self.loss)) / 100.0) {
            return Vec::new();
        }
        if let Some(link) = link
            && rng.chance(f64::from(link.loss_percent) / 100.0)
        {
            return Vec::new();
        }
        let latency = link.map_or(self.latency, |l| l.latency);
        let copies = if rng.chance(f64::from(max_of(&self.duplicate)) / 100.0) {
            2
        } else {
            1
        };
        let release = self
            .clogs
            .iter()
            .filter(|(_, f, t, _)| *f == from && *t == to)
            .map(|(_, _, _, until)| *until)
            .fold(now, Time::max);
        (0..copies)
            .map(|_| release + self.draw(latency, rng))
            .collect()
    }

    /// Latency of a message that is not subject to faults (client traffic).
    pub fn draw_latency(&self, rng: &mut DetRng) -> Duration {
        self.draw(self.latency, rng)
    }

    fn draw(&self, latency: LatencyRange, rng: &mut DetRng) -> Duration {
        let mut base = rng.range(
            latency.min.as_micros() as u64,
            latency.max.as_micros() as u64,
        );
        if rng.chance(f64::from(self.tail.percent) / 100.0) {
            base *= u64::from(self.tail.factor);
        }
        let jitter = self
            .jitter
            .iter()
            .map(|(_, j)| *j)
            .max()
            .unwrap_or_default();
        let extra = rng.range(0, jitter.as_micros() as u64);
        Duration::from_micros(base + extra)
    }

    /// Cut every link between nodes of different groups. Nodes in no group form one
    /// more group of their own.
    pub fn partition(&mut self, id: u64, groups: &[Vec<NodeId>]) {
        let group_of = |node: NodeId| groups.iter().position(|g| g.contains(&node));
        let mut pairs = Vec::new();
        for a in self.nodes() {
            for b in self.nodes() {
                if a != b && group_of(a) != group_of(b) {
                    pairs.push((a, b));
                }
            }
        }
        self.add_cut(id, pairs);
    }

    /// Cut `left` from `right` in both directions; the bridge reaches everyone.
    pub fn bridge(&mut self, id: u64, left: &[NodeId], right: &[NodeId]) {
        let mut pairs = Vec::new();
        for &a in left {
            for &b in right {
                pairs.push((a, b));
                pairs.push((b, a));
            }
        }
        self.add_cut(id, pairs);
    }

    pub fn one_way(&mut self, id: u64, from: &[NodeId], to: &[NodeId]) {
        let pairs = from
            .iter()
            .flat_map(|&a| to.iter().map(move |&b| (a, b)))
            .collect();
        self.add_cut(id, pairs);
    }

    pub fn clog(&mut self, id: u64, from: NodeId, to: NodeId, until: Time) {
        self.clogs.push((id, from, to, until));
    }

    pub fn set_loss(&mut self, id: u64, percent: u32) {
        self.loss.push((id, percent));
    }

    pub fn set_duplicate(&mut self, id: u64, percent: u32) {
        self.duplicate.push((id, percent));
    }

    pub fn set_jitter(&mut self, id: u64, jitter: Duration) {
        self.jitter.push((id, jitter));
    }

    /// Undo whatever fault `id` did.
    pub fn remove(&mut self, id: u64) {
        let before = self.cuts.len();
        self.cuts.retain(|(c, _)| *c != id);
        if self.cuts.len() != before {
            self.rebuild_blocked();
        }
        self.clogs.retain(|(c, ..)| *c != id);
        self.loss.retain(|(c, _)| *c != id);
        self.duplicate.retain(|(c, _)| *c != id);
        self.jitter.retain(|(c, _)| *c != id);
    }

    /// End every network fault (the start of the liveness phase).
    pub fn heal_all(&mut self) {
        self.cuts.clear();
        self.clogs.clear();
        self.loss.clear();
        self.duplicate.clear();
        self.jitter.clear();
        self.rebuild_blocked();
    }

    fn nodes(&self) -> impl Iterator<Item = NodeId> + use<> {
        (0..self.n as u32).map(NodeId)
    }

    fn add_cut(&mut self, id: u64, pairs: Vec<(NodeId, NodeId)>) {
        self.cuts.push((id, pairs));
        self.rebuild_blocked();
    }

    fn rebuild_blocked(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
        for (_, pairs) in &self.cuts {
            for (a, b) in pairs {
                self.blocked[a.index() * self.n + b.index()] = true;
            }
        }
    }
}

fn max_of(rates: &[(u64, u32)]) -> u32 {
    rates.iter().map(|(_, p)| *p).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network::new(
            5,
            LatencyRange {
                min: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            LatencyTail::default(),
            &LinkTable::default(),
        )
    }

    #[test]
    fn a_link_of_its_own_has_its_latency_and_loss_both_ways() {
        let mut table = LinkTable::default();
        let slow = Link {
            latency: LatencyRange {
                min: Duration::from_millis(200),
                max: Duration::from_millis(201),
            },
            loss_percent: 50,
        };
        table.set(NodeId(0), NodeId(1), slow);
        let net = Network::new(3, net().latency, LatencyTail::default(), &table);
        let mut rng = DetRng::new(1);
        let (mut lost, mut sent) = (0, 0);
        for _ in 0..1000 {
            for (a, b) in [(0, 1), (1, 0)] {
                sent += 1;
                match net.deliveries(NodeId(a), NodeId(b), Time::ZERO, &mut rng)[..] {
                    [] => lost += 1,
                    [t] => assert!(t >= Time(200_000)),
                    _ => unreachable!("no duplication fault is active"),
                }
            }
            let fast = net.deliveries(NodeId(0), NodeId(2), Time::ZERO, &mut rng);
            assert!(fast.len() == 1 && fast[0] <= Time(2_000));
        }
        assert!((800..1200).contains(&lost), "{lost} of {sent} lost");
    }

    #[test]
    fn partitions_cut_across_groups_only_and_heal_by_id() {
        let mut n = net();
        n.partition(1, &[vec![NodeId(0), NodeId(1)]]);
        assert!(n.is_blocked(NodeId(0), NodeId(2)));
        assert!(n.is_blocked(NodeId(3), NodeId(1)));
        assert!(!n.is_blocked(NodeId(0), NodeId(1)));
        assert!(!n.is_blocked(NodeId(2), NodeId(4)));
        n.one_way(2, &[NodeId(2)], &[NodeId(3)]);
        n.remove(1);
        assert!(!n.is_blocked(NodeId(0), NodeId(2)));
        assert!(n.is_blocked(NodeId(2), NodeId(3)));
        assert!(!n.is_blocked(NodeId(3), NodeId(2)));
    }

    #[test]
    fn bridge_reaches_both_sides() {
        let mut n = net();
        n.bridge(1, &[NodeId(0), NodeId(1)], &[NodeId(3), NodeId(4)]);
        assert!(n.is_blocked(NodeId(0), NodeId(4)));
        assert!(!n.is_blocked(NodeId(0), NodeId(2)));
        assert!(!n.is_blocked(NodeId(2), NodeId(4)));
    }

    #[test]
    fn clogged_messages_wait_and_loss_drops() {
        let mut n = net();
        let mut rng = DetRng::new(1);
        n.clog(1, NodeId(0), NodeId(1), Time::from_millis(500));
        let t = n.deliveries(NodeId(0), NodeId(1), Time::ZERO, &mut rng);
        assert!(t[0] >= Time::from_millis(501));
        n.set_loss(2, 100);
        assert!(
            n.deliveries(NodeId(2), NodeId(1), Time::ZERO, &mut rng)
                .is_empty()
        );
        n.remove(2);
        n.set_duplicate(3, 100);
        assert_eq!(
            n.deliveries(NodeId(2), NodeId(1), Time::ZERO, &mut rng)
                .len(),
            2
        );
    }
}
