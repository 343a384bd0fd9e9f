//! Fault schedules: what goes wrong, when, and for how long.
//!
//! A schedule is generated from the seed, but it is also a value of its own with a text
//! form, so a failing run's schedule can be shrunk and replayed with `--schedule`. Every
//! fault carries its own duration, so removing one never leaves another half-applied.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use ekmat_core::{DetRng, NodeId, Time};

/// The families of faults a run may inject (`--faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Symmetric partitions: majority/minority, 2|2|1, isolate one node or the leader,
    /// and swap (the leader cut off, then the next one in its place as the first rejoins).
    Partition,
    /// A bridge node that both halves of a split can reach.
    Bridge,
    /// One-way cuts: some nodes can send to others but not hear back.
    Asymmetric,
    /// Message loss.
    Loss,
    /// Message duplication.
    Duplicate,
    /// Large latency jitter, so messages overtake each other.
    Reorder,
    /// A link that holds every message until it unclogs.
    Clog,
    /// Crash and restart: volatile state lost, unsynced writes may be lost.
    Crash,
    /// A node that stops processing for a while (GC pause, CPU starvation).
    Pause,
    /// The leader is asked to hand leadership to another node (an operator's move).
    Transfer,
    /// Membership churn: nodes are added (as learners or voters), promoted, removed
    /// and replaced, while the other faults go on. Two spare nodes join the run.
    Membership,
    /// Clock drift at the edge of the configured bound: one node's clock runs slow, every
    /// other node's fast (the worst case for leader leases).
    Clock,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Partition,
        FaultKind::Bridge,
        FaultKind::Asymmetric,
        FaultKind::Loss,
        FaultKind::Duplicate,
        FaultKind::Reorder,
        FaultKind::Clog,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Transfer,
        FaultKind::Clock,
    ];

    /// Kinds `all` leaves out, since they change the cluster's shape: name them.
    pub const EXTRA: [FaultKind; 1] = [FaultKind::Membership];

    fn known() -> impl Iterator<Item = FaultKind> {
        FaultKind::ALL.into_iter().chain(FaultKind::EXTRA)
    }

    /// How often this kind is drawn relative to the others: the faults that change
    /// leadership and lose volatile state find the most bugs.
    fn weight(self) -> u64 {
        match self {
            FaultKind::Crash | FaultKind::Partition => 3,
            FaultKind::Pause | FaultKind::Membership => 2,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Bridge => "bridge",
            FaultKind::Asymmetric => "asymmetric",
            FaultKind::Loss => "loss",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Reorder => "reorder",
            FaultKind::Clog => "clog",
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::Transfer => "transfer",
            FaultKind::Membership => "membership",
            FaultKind::Clock => "clock",
        }
    }

    /// Parse `all`, `none` or a comma-separated list of names.
    pub fn parse_list(list: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => kinds.extend(FaultKind::ALL),
                "none" => {}
                _ => match FaultKind::known().find(|k| k.name() == word) {
                    Some(k) => kinds.push(k),
                    None => {
                        let known: Vec<&str> = FaultKind::known().map(|k| k.name()).collect();
                        return Err(format!(
                            "unknown fault '{word}' (known: all, none, {})",
                            known.join(", ")
                        ));
                    }
                },
            }
        }
        kinds.sort_unstable();
        kinds.dedup();
        Ok(kinds)
    }
}

/// Which node a fault strikes: one chosen when the schedule is written, the leader at
/// the moment the fault begins, or the next node to win an election after the fault
/// begins (struck within a few milliseconds of winning, before it has replicated much:
/// the histories of the Raft paper's Figure 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Leader,
    NextLeader,
    Node(NodeId),
    /// The next node to install a snapshot (struck mid-install, before or after the
    /// snapshot is durable).
    NextInstall,
    /// The next node to take a new configuration into its log (struck between writing
    /// the configuration and applying it).
    NextReconfiguration,
    /// The next leader whose read lease a quorum renews (struck at once).
    NextLeaseRenewal,
}

impl Target {
    /// Whether the fault waits for something to happen before it strikes.
    pub fn is_armed(self) -> bool {
        matches!(
            self,
            Target::NextLeader
                | Target::NextInstall
                | Target::NextReconfiguration
                | Target::NextLeaseRenewal
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Nodes in different groups cannot reach each other.
    Partition {
        groups: Vec<Vec<NodeId>>,
    },
    /// The target alone on one side.
    Isolate {
        target: Target,
    },
    /// The target with as many others as still leaves it in a minority.
    Split {
        target: Target,
    },
    /// The leader of the moment cut off alone; the moment another node wins an
    /// election, that node is cut off in its place and the first rejoins. Each of the
    /// two leaders may hold entries of its own term that the other lacks, and the first
    /// comes back to re-replicate its own: the histories of the Raft paper's Figure 8.
    Swap,
    /// `left` and `right` cannot reach each other; `bridge` reaches both.
    Bridge {
        bridge: NodeId,
        left: Vec<NodeId>,
        right: Vec<NodeId>,
    },
    /// Messages from `from` to `to` are dropped; the reverse direction works.
    OneWay {
        from: Vec<NodeId>,
        to: Vec<NodeId>,
    },
    Clog {
        from: NodeId,
        to: NodeId,
    },
    Loss {
        percent: u32,
    },
    Duplicate {
        percent: u32,
    },
    Reorder {
        jitter: Duration,
    },
    Crash {
        target: Target,
    },
    Pause {
        target: Target,
    },
    /// Ask the leader of the moment to hand leadership to `target`.
    Transfer {
        target: Target,
    },
    /// Ask the leader of the moment for a membership change of this kind; which nodes
    /// it names is decided then, from the configuration in force.
    Churn {
        change: Churn,
    },
    /// The moment a node (a leader, first) takes into its log a configuration that adds
    /// voters, cut the network between it, the voters it adds and enough others to be a
    /// majority of the new voters, and the rest: with the joint configuration at most
    /// one side can decide; switching straight to the new voters lets both, when a
    /// majority of each set can be disjoint (replacing a voter).
    ConfigSplit,
    /// `target`'s clock runs slow by the drift bound, every other node's fast by it.
    Clock {
        target: Target,
    },
    /// A lease's worst case: `target` is cut off from every other node, its clock slow by
    /// the drift bound and theirs fast. Aimed at `next-lease-renewal`, it strikes a
    /// leader just after a quorum renewed its read lease, so the lease and the
    /// followers' patience run out as close together as the bound allows.
    LeaseCut {
        target: Target,
    },
}

/// The membership changes the nemesis makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Churn {
    /// A node outside the configuration joins as a learner.
    AddLearner,
    /// A node outside the configuration joins as a voter straight away.
    AddVoter,
    /// A learner becomes a voter.
    Promote,
    /// A voter or learner leaves (possibly the leader).
    Remove,
    /// One voter out and another in, in one change.
    Replace,
}

impl Churn {
    const ALL: [Churn; 5] = [
        Churn::AddLearner,
        Churn::AddVoter,
        Churn::Promote,
        Churn::Remove,
        Churn::Replace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Churn::AddLearner => "add-learner",
            Churn::AddVoter => "add-voter",
            Churn::Promote => "promote",
            Churn::Remove => "remove",
            Churn::Replace => "replace",
        }
    }
}

impl Fault {
    pub fn target(&self) -> Option<Target> {
        match self {
            Fault::Isolate { target }
            | Fault::Split { target }
            | Fault::Crash { target }
            | Fault::Pause { target }
            | Fault::Transfer { target }
            | Fault::Clock { target }
            | Fault::LeaseCut { target } => Some(*target),
            Fault::Swap => Some(Target::Leader),
            Fault::ConfigSplit => Some(Target::NextReconfiguration),
            _ => None,
        }
    }

    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Partition { .. } | Fault::Isolate { .. } | Fault::Split { .. } | Fault::Swap => {
                FaultKind::Partition
            }
            Fault::Bridge { .. } => FaultKind::Bridge,
            Fault::OneWay { .. } => FaultKind::Asymmetric,
            Fault::Clog { .. } => FaultKind::Clog,
            Fault::Loss { .. } => FaultKind::Loss,
            Fault::Duplicate { .. } => FaultKind::Duplicate,
            Fault::Reorder { .. } => FaultKind::Reorder,
            Fault::Crash { .. } => FaultKind::Crash,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Transfer { .. } => FaultKind::Transfer,
            Fault::Churn { .. } | Fault::ConfigSplit => FaultKind::Membership,
            Fault::Clock { .. } | Fault::LeaseCut { .. } => FaultKind::Clock,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScheduledFault {
    pub at: Time,
    pub lasts: Duration,
    pub fault: Fault,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Schedule {
    pub faults: Vec<ScheduledFault>,
}

/// How a schedule is drawn from a seed.
#[derive(Clone, Debug)]
pub struct ScheduleShape {
    pub nodes: usize,
    pub kinds: Vec<FaultKind>,
    /// Faults start within `[0, safety)`, and each ends by then.
    pub safety: Duration,
    /// Mean gap between fault starts.
    pub mean_gap: Duration,
}

impl Schedule {
    pub fn generate(shape: &ScheduleShape, rng: &mut DetRng) -> Schedule {
        let mut faults = Vec::new();
        if shape.kinds.is_empty() || shape.nodes == 0 {
            return Schedule { faults };
        }
        let end = shape.safety.as_millis() as u64;
        let gap = shape.mean_gap.as_millis().max(1) as u64;
        let mut t = rng.range(0, gap);
        while t < end {
            let kind = pick_weighted(&shape.kinds, rng);
            let (fault, lasts_ms) = draw(kind, shape.nodes, rng);
            let lasts_ms = lasts_ms.min(end - t).max(1);
            faults.push(ScheduledFault {
                at: Time::from_millis(t),
                lasts: Duration::from_millis(lasts_ms),
                fault,
            });
            t += rng.range(gap / 4, gap * 7 / 4);
        }
        Schedule { faults }
    }

    pub fn len(&self) -> usize {
        self.faults.len()
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// When the last fault ends.
    pub fn end(&self) -> Time {
        self.faults
            .iter()
            .map(|f| f.at + f.lasts)
            .max()
            .unwrap_or(Time::ZERO)
    }

    /// Every node a fault names explicitly must exist.
    pub fn validate(&self, nodes: usize) -> Result<(), String> {
        for f in &self.faults {
            for id in named_nodes(&f.fault) {
                if id.index() >= nodes {
                    return Err(format!(
                        "fault '{f}' names {id}, but there are only {nodes} nodes"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn pick_weighted(kinds: &[FaultKind], rng: &mut DetRng) -> FaultKind {
    let total: u64 = kinds.iter().map(|k| k.weight()).sum();
    let mut draw = rng.range(0, total - 1);
    for &k in kinds {
        if draw < k.weight() {
            return k;
        }
        draw -= k.weight();
    }
    unreachable!("draw below the total weight")
}

fn named_nodes(fault: &Fault) -> Vec<NodeId> {
    match fault {
        Fault::Partition { groups } => groups.concat(),
        Fault::Bridge {
            bridge,
            left,
            right,
        } => [vec![*bridge], left.clone(), right.clone()].concat(),
        Fault::OneWay { from, to } => [from.clone(), to.clone()].concat(),
        Fault::Clog { from, to } => vec![*from, *to],
        _ => match fault.target() {
            Some(Target::Node(n)) => vec![n],
            _ => vec![],
        },
    }
}

fn shuffled_nodes(n: usize, rng: &mut DetRng) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = (0..n as u32).map(NodeId).collect();
    rng.shuffle(&mut ids);
    ids
}

fn target(n: usize, rng: &mut DetRng) -> Target {
    match rng.range(0, 99) {
        0..=34 => Target::Leader,
        35..=59 => Target::NextLeader,
        _ => Target::Node(NodeId(rng.index(n) as u32)),
    }
}

/// One fault of `kind` and how long it lasts, in milliseconds.
fn draw(kind: FaultKind, n: usize, rng: &mut DetRng) -> (Fault, u64) {
    let ids = shuffled_nodes(n, rng);
    match kind {
        FaultKind::Partition => {
            let fault = match rng.range(0, 5) {
                0 if n >= 2 => {
                    let minority = (n - 1) / 2;
                    let (a, b) = ids.split_at(minority.max(1));
                    Fault::Partition {
                        groups: vec![sorted(a), sorted(b)],
                    }
                }
                1 if n >= 5 => Fault::Partition {
                    groups: vec![sorted(&ids[..2]), sorted(&ids[2..4]), sorted(&ids[4..])],
                },
                2 => Fault::Isolate {
                    target: target(n, rng),
                },
                3 => Fault::Split {
                    target: target(n, rng),
                },
                4 => Fault::Swap,
                _ => Fault::Partition {
                    groups: vec![vec![ids[0]], sorted(&ids[1..])],
                },
            };
            (fault, rng.range(300, 4000))
        }
        FaultKind::Bridge if n >= 3 => {
            let half = (n - 1) / 2;
            let fault = Fault::Bridge {
                bridge: ids[0],
                left: sorted(&ids[1..=half]),
                right: sorted(&ids[half + 1..]),
            };
            (fault, rng.range(300, 4000))
        }
        FaultKind::Asymmetric if n >= 2 => {
            let split = rng.range(1, n as u64 - 1) as usize;
            let fault = Fault::OneWay {
                from: sorted(&ids[..split]),
                to: sorted(&ids[split..]),
            };
            (fault, rng.range(300, 3000))
        }
        FaultKind::Clog if n >= 2 => (
            Fault::Clog {
                from: ids[0],
                to: ids[1],
            },
            rng.range(100, 2000),
        ),
        FaultKind::Loss => (
            Fault::Loss {
                percent: rng.range(1, 30) as u32,
            },
            rng.range(500, 5000),
        ),
        FaultKind::Duplicate => (
            Fault::Duplicate {
                percent: rng.range(1, 20) as u32,
            },
            rng.range(500, 5000),
        ),
        FaultKind::Reorder => (
            Fault::Reorder {
                jitter: Duration::from_millis(rng.range(10, 100)),
            },
            rng.range(500, 5000),
        ),
        FaultKind::Crash => (
            Fault::Crash {
                target: target(n, rng),
            },
            rng.range(50, 3000),
        ),
        FaultKind::Pause => (
            Fault::Pause {
                target: target(n, rng),
            },
            rng.range(50, 1500),
        ),
        FaultKind::Transfer => (
            Fault::Transfer {
                target: Target::Node(NodeId(rng.index(n) as u32)),
            },
            0,
        ),
        // Churn, and crashes timed to hit a node mid-change or mid-install.
        FaultKind::Membership => match rng.range(0, 10) {
            0 => (
                Fault::Crash {
                    target: Target::NextReconfiguration,
                },
                rng.range(50, 2000),
            ),
            1 => (
                Fault::Crash {
                    target: Target::NextInstall,
                },
                rng.range(50, 2000),
            ),
            2 => (Fault::ConfigSplit, rng.range(300, 3000)),
            _ => (
                Fault::Churn {
                    change: Churn::ALL[rng.index(Churn::ALL.len())],
                },
                0,
            ),
        },
        FaultKind::Clock if rng.chance(0.5) => (
            Fault::LeaseCut {
                target: Target::NextLeaseRenewal,
            },
            rng.range(300, 1500),
        ),
        FaultKind::Clock => (
            Fault::Clock {
                target: target(n, rng),
            },
            rng.range(500, 5000),
        ),
        // Kinds that need more nodes than the cluster has degrade to a crash.
        _ => draw(FaultKind::Crash, n, rng),
    }
}

fn sorted(ids: &[NodeId]) -> Vec<NodeId> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}

// ---- text form: `@1200ms+800ms crash(leader); @3000ms+2s partition(0,1|2,3,4)` ----

fn list(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|i| i.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(f, "leader"),
            Target::NextLeader => write!(f, "next-leader"),
            Target::NextInstall => write!(f, "next-install"),
            Target::NextReconfiguration => write!(f, "next-reconfiguration"),
            Target::NextLeaseRenewal => write!(f, "next-lease-renewal"),
            Target::Node(n) => write!(f, "{}", n.0),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { groups } => {
                let g: Vec<String> = groups.iter().map(|g| list(g)).collect();
                write!(f, "partition({})", g.join("|"))
            }
            Fault::Isolate { target } => write!(f, "isolate({target})"),
            Fault::Split { target } => write!(f, "split({target})"),
            Fault::Swap => write!(f, "swap(leader)"),
            Fault::ConfigSplit => write!(f, "config-split(next-reconfiguration)"),
            Fault::Bridge {
                bridge,
                left,
                right,
            } => write!(f, "bridge({}/{}|{})", bridge.0, list(left), list(right)),
            Fault::OneWay { from, to } => write!(f, "oneway({}>{})", list(from), list(to)),
            Fault::Clog { from, to } => write!(f, "clog({}>{})", from.0, to.0),
            Fault::Loss { percent } => write!(f, "loss({percent}%)"),
            Fault::Duplicate { percent } => write!(f, "duplicate({percent}%)"),
            Fault::Reorder { jitter } => write!(f, "reorder({}ms)", jitter.as_millis()),
            Fault::Crash { target } => write!(f, "crash({target})"),
            Fault::Pause { target } => write!(f, "pause({target})"),
            Fault::Transfer { target } => write!(f, "transfer({target})"),
            Fault::Churn { change } => write!(f, "churn({})", change.name()),
            Fault::Clock { target } => write!(f, "clock({target})"),
            Fault::LeaseCut { target } => write!(f, "lease-cut({target})"),
        }
    }
}

impl fmt::Display for ScheduledFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "@{}ms+{}ms {}",
            self.at.as_millis(),
            self.lasts.as_millis(),
            self.fault
        )
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.faults.iter().map(|x| x.to_string()).collect();
        write!(f, "{}", parts.join("; "))
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Schedule, String> {
        let faults = s
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_scheduled)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule { faults })
    }
}

fn parse_ms(s: &str) -> Result<u64, String> {
    let digits = s
        .strip_suffix("ms")
        .ok_or_else(|| format!("'{s}': times are written in ms, like 1200ms"))?;
    digits
        .parse()
        .map_err(|_| format!("'{s}' is not a number of milliseconds"))
}

fn parse_scheduled(s: &str) -> Result<ScheduledFault, String> {
    let bad = || format!("'{s}': expected '@<start>ms+<length>ms <fault>(<args>)'");
    let rest = s.strip_prefix('@').ok_or_else(bad)?;
    let (when, fault) = rest.split_once(' ').ok_or_else(bad)?;
    let (at, lasts) = when.split_once('+').ok_or_else(bad)?;
    Ok(ScheduledFault {
        at: Time::from_millis(parse_ms(at)?),
        lasts: Duration::from_millis(parse_ms(lasts)?),
        fault: parse_fault(fault.trim())?,
    })
}

fn parse_ids(s: &str) -> Result<Vec<NodeId>, String> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<u32>()
                .map(NodeId)
                .map_err(|_| format!("'{x}' is not a node number"))
        })
        .collect()
}

fn parse_id(s: &str) -> Result<NodeId, String> {
    let ids = parse_ids(s)?;
    match ids[..] {
        [id] => Ok(id),
        _ => Err(format!("'{s}': expected one node number")),
    }
}

fn parse_target(s: &str) -> Result<Target, String> {
    match s {
        "leader" => Ok(Target::Leader),
        "next-leader" => Ok(Target::NextLeader),
        "next-install" => Ok(Target::NextInstall),
        "next-reconfiguration" => Ok(Target::NextReconfiguration),
        "next-lease-renewal" => Ok(Target::NextLeaseRenewal),
        _ => parse_id(s).map(Target::Node),
    }
}

fn parse_percent(s: &str) -> Result<u32, String> {
    let p: u32 = s
        .strip_suffix('%')
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("'{s}': expected a percentage like 10%"))?;
    if p > 100 {
        return Err(format!("'{s}': a percentage is at most 100%"));
    }
    Ok(p)
}

fn split_pair<'a>(s: &'a str, sep: char, what: &str) -> Result<(&'a str, &'a str), String> {
    s.split_once(sep)
        .ok_or_else(|| format!("'{s}': expected {what}"))
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    let (name, args) = s
        .strip_suffix(')')
        .and_then(|x| x.split_once('('))
        .ok_or_else(|| format!("'{s}': expected name(args)"))?;
    match name {
        "partition" => {
            let groups = args
                .split('|')
                .map(parse_ids)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Fault::Partition { groups })
        }
        "isolate" => Ok(Fault::Isolate {
            target: parse_target(args)?,
        }),
        "split" => Ok(Fault::Split {
            target: parse_target(args)?,
        }),
        "swap" if args == "leader" => Ok(Fault::Swap),
        "swap" => Err(format!("'{s}': swap takes no node: swap(leader)")),
        "config-split" if args == "next-reconfiguration" => Ok(Fault::ConfigSplit),
        "config-split" => Err(format!(
            "'{s}': config-split takes no node: config-split(next-reconfiguration)"
        )),
        "bridge" => {
            let (b, sides) = split_pair(args, '/', "bridge(B/L,..|R,..)")?;
            let (l, r) = split_pair(sides, '|', "bridge(B/L,..|R,..)")?;
            Ok(Fault::Bridge {
                bridge: parse_id(b)?,
                left: parse_ids(l)?,
                right: parse_ids(r)?,
            })
        }
        "oneway" => {
            let (from, to) = split_pair(args, '>', "oneway(A,..>B,..)")?;
            Ok(Fault::OneWay {
                from: parse_ids(from)?,
                to: parse_ids(to)?,
            })
        }
        "clog" => {
            let (from, to) = split_pair(args, '>', "clog(A>B)")?;
            Ok(Fault::Clog {
                from: parse_id(from)?,
                to: parse_id(to)?,
            })
        }
        "loss" => Ok(Fault::Loss {
            percent: parse_percent(args)?,
        }),
        "duplicate" => Ok(Fault::Duplicate {
            percent: parse_percent(args)?,
        }),
        "reorder" => Ok(Fault::Reorder {
            jitter: Duration::from_millis(parse_ms(args)?),
        }),
        "crash" => Ok(Fault::Crash {
            target: parse_target(args)?,
        }),
        "pause" => Ok(Fault::Pause {
            target: parse_target(args)?,
        }),
        "transfer" => Ok(Fault::Transfer {
            target: parse_target(args)?,
        }),
        "churn" => match Churn::ALL.into_iter().find(|c| c.name() == args) {
            Some(change) => Ok(Fault::Churn { change }),
            None => {
                let known: Vec<&str> = Churn::ALL.iter().map(|c| c.name()).collect();
                Err(format!("'{s}': churn takes one of {}", known.join(", ")))
            }
        },
        "clock" => Ok(Fault::Clock {
            target: parse_target(args)?,
        }),
        "lease-cut" => Ok(Fault::LeaseCut {
            target: parse_target(args)?,
        }),
        _ => Err(format!("unknown fault '{name}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_schedules_round_trip_through_text() {
        let shape = ScheduleShape {
            nodes: 5,
            kinds: FaultKind::ALL.to_vec(),
            safety: Duration::from_secs(20),
            mean_gap: Duration::from_millis(700),
        };
        let mut rng = DetRng::new(42);
        for _ in 0..20 {
            let s = Schedule::generate(&shape, &mut rng);
            assert!(!s.is_empty());
            assert!(s.end() <= Time::from_millis(20_000));
            let text = s.to_string();
            assert_eq!(text.parse::<Schedule>().unwrap(), s, "{text}");
        }
    }

    #[test]
    fn every_kind_is_generated() {
        let shape = ScheduleShape {
            nodes: 5,
            kinds: FaultKind::ALL.to_vec(),
            safety: Duration::from_secs(200),
            mean_gap: Duration::from_millis(200),
        };
        let s = Schedule::generate(&shape, &mut DetRng::new(1));
        for kind in FaultKind::ALL {
            assert!(s.faults.iter().any(|f| f.fault.kind() == kind), "{kind:?}");
        }
    }

    #[test]
    fn fault_lists_parse_and_reject_unknown_names() {
        assert_eq!(
            FaultKind::parse_list("all").unwrap().len(),
            FaultKind::ALL.len()
        );
        assert_eq!(
            FaultKind::parse_list("crash, loss,crash").unwrap(),
            vec![FaultKind::Loss, FaultKind::Crash]
        );
        assert!(FaultKind::parse_list("none").unwrap().is_empty());
        assert_eq!(
            FaultKind::parse_list("all,clock").unwrap(),
            FaultKind::parse_list("all").unwrap()
        );
        assert!(
            FaultKind::parse_list("all")
                .unwrap()
                .contains(&FaultKind::Clock)
        );
        let s: Schedule = "@5ms+900ms clock(leader); @7ms+1ms clock(2)"
            .parse()
            .unwrap();
        assert_eq!(
            s.faults[0].fault,
            Fault::Clock {
                target: Target::Leader
            }
        );
        assert_eq!(s.to_string(), "@5ms+900ms clock(leader); @7ms+1ms clock(2)");
        let err = FaultKind::parse_list("crash,meteor").unwrap_err();
        assert!(err.contains("meteor"), "{err}");
    }

    #[test]
    fn malformed_schedules_are_explained() {
        for bad in [
            "crash(1)",
            "@10+5ms crash(1)",
            "@10ms+5ms crash(x)",
            "@1ms+1ms loss(200%)",
            "@1ms+1ms meteor(1)",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
        let err = "@1ms+1ms swap(2)".parse::<Schedule>().unwrap_err();
        assert!(err.contains("swap(leader)"), "{err}");
        let s: Schedule = "@1ms+1ms swap(leader)".parse().unwrap();
        assert_eq!(s.faults[0].fault, Fault::Swap);
        assert_eq!(s.to_string(), "@1ms+1ms swap(leader)");
        let s: Schedule = "@1ms+1ms config-split(next-reconfiguration)"
            .parse()
            .unwrap();
        assert_eq!(s.faults[0].fault, Fault::ConfigSplit);
        assert!("@1ms+1ms config-split(3)".parse::<Schedule>().is_err());
        let s: Schedule = "@5ms+10ms crash(3)".parse().unwrap();
        assert_eq!(
            s.validate(3).unwrap_err(),
            "fault '@5ms+10ms crash(3)' names n3, but there are only 3 nodes"
        );
    }
}
