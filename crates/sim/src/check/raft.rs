//! Raft's safety properties (Raft paper, Figure 3), checked on every effect:
//!
//! - **election safety**: at most one leader per term;
//! - **log matching**: two entries with the same index and term have identical logs up
//!   to them (checked by giving every entry a hash chained over its whole prefix);
//! - **leader completeness**: a new leader holds every entry committed in earlier terms;
//! - **state machine safety**: every replica applies the same entry at each index;
//! - **commit safety**: when an entry is first committed, no replica lacking it could win
//!   an election — it and the replicas whose logs are no more up to date than its own
//!   fall short of a majority of every voter set of the configuration that replica has
//!   in force (whichever configuration that is: old, joint or new). This is the
//!   inductive invariant behind leader completeness (Raft §5.4.3) and behind joint
//!   consensus (thesis §4.3): a committed entry survives in every later configuration's
//!   majority. It is checked when the danger arises rather than when a later election
//!   happens to exploit it;
//! - **durability**: entries a replica acknowledged, and votes it granted, survive its
//!   crash — so committed entries are never lost;
//! - **snapshot safety**: a snapshot that replaces a replica's log covers only committed
//!   entries (the simulator also checks that a restored state machine is the state
//!   replicas had at that index).
//!
//! The checker shadows each replica's log from the writes it asks for, so it sees the
//! log exactly as the replica holds it, durable or not. Shadows are logical logs: entries
//! a snapshot compacted away stay in them.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use ekmat_core::{CommittedEntry, Effect, Membership, NodeId, Time};
use ekmat_raft::{AppendOutcome, Entry, Message, Payload, RaftNode, RaftStable, RaftWrite};
use rustc_hash::{FxHashMap, FxHasher};

use crate::protocol::{ProtocolChecker, Violation};

/// An entry as the checker remembers it: its term and the hash of the log up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    term: u64,
    chain: u64,
}

#[derive(Debug)]
pub struct RaftChecker {
    leaders: BTreeMap<u64, NodeId>,
    logs: Vec<Vec<Link>>,
    /// Chain hash of every (index, term) ever written anywhere.
    seen: FxHashMap<(u64, u64), u64>,
    /// The committed prefix, as applied by whichever replica applied it first — the
    /// leader that committed it — with the term in which it was committed.
    committed: Vec<(Link, u64)>,
    next_apply: Vec<u64>,
    /// Highest index each replica acknowledged to a leader (a durability promise).
    acked: Vec<u64>,
    /// Last real vote each replica granted: (term, candidate).
    votes: Vec<Option<(u64, NodeId)>>,
    /// The configurations each replica's shadow log holds.
    configs: Vec<Configs>,
    /// What the founding members start with (spares start knowing nothing).
    founders: Membership,
}

/// A replica's configuration before its log (bootstrap or snapshot), and those in it.
#[derive(Clone, Debug, Default)]
struct Configs {
    base: Membership,
    in_log: Vec<(u64, Membership)>,
}

impl Configs {
    fn latest(&self) -> &Membership {
        self.in_log.last().map_or(&self.base, |(_, m)| m)
    }

    fn track(&mut self, entries: &[Entry]) {
        for e in entries {
            if let Payload::Config { membership, .. } = &e.payload {
                self.in_log.push((e.index, membership.clone()));
            }
        }
    }
}

fn hash_of(value: impl Hash) -> u64 {
    let mut h = FxHasher::default();
    value.hash(&mut h);
    h.finish()
}

fn entry_payload_hash(e: &Entry) -> u64 {
    match &e.payload {
        Payload::Noop => hash_of(0u8),
        Payload::Command { id, command } => hash_of((1u8, id, command)),
        Payload::Config {
            membership,
            changes,
        } => hash_of((2u8, membership, changes)),
    }
}

fn committed_payload_hash(e: &CommittedEntry) -> u64 {
    match e {
        CommittedEntry::Noop => hash_of(0u8),
        CommittedEntry::Command { id, command } => hash_of((1u8, id, command)),
        CommittedEntry::Membership {
            membership,
            changes,
        } => hash_of((2u8, membership, changes)),
    }
}

/// How many leading entries two shadow logs share. Chain hashes cover the whole prefix,
/// so agreement at an index means agreement up to it.
fn common_prefix(a: &[Link], b: &[Link]) -> u64 {
    let len = a.len().min(b.len());
    let agree = |i: usize| a[i - 1] == b[i - 1];
    let (mut lo, mut hi) = (0, len); // agree(lo) holds (trivially at 0); find the last
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if agree(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo as u64
}

fn chain(prev: u64, index: u64, term: u64, payload: u64) -> u64 {
    let mut h = FxHasher::default();
    (prev, index, term, payload).hash(&mut h);
    h.finish()
}

impl RaftChecker {
    /// A checker for `n` replicas, of which `0..voters` found the cluster.
    pub fn new(n: usize, voters: usize) -> RaftChecker {
        let founders = Membership::of((0..voters as u32).map(NodeId));
        let configs = (0..n)
            .map(|i| Configs {
                base: if i < voters {
                    founders.clone()
                } else {
                    Membership::default()
                },
                in_log: Vec::new(),
            })
            .collect();
        RaftChecker {
            configs,
            founders,
            leaders: BTreeMap::new(),
            logs: vec![Vec::new(); n],
            seen: FxHashMap::default(),
            committed: Vec::new(),
            next_apply: vec![1; n],
            acked: vec![0; n],
            votes: vec![None; n],
        }
    }

    fn append(&mut self, now: Time, node: NodeId, entries: &[Entry]) -> Result<(), Violation> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let n = node.index();
        let keep = (first.index - 1) as usize;
        if keep > self.logs[n].len() {
            let detail = format!(
                "{node} wrote entry {} past its log end {}",
                first.index,
                self.logs[n].len()
            );
            return Err(Violation::new("log-matching", now, detail));
        }
        self.logs[n].truncate(keep);
        self.acked[n] = self.acked[n].min(keep as u64);
        self.configs[n].in_log.retain(|(i, _)| *i <= keep as u64);
        self.configs[n].track(entries);
        for e in entries {
            let prev = self.logs[n].last().map_or(0, |l| l.chain);
            let link = Link {
                term: e.term,
                chain: chain(prev, e.index, e.term, entry_payload_hash(e)),
            };
            self.logs[n].push(link);
            let known = *self.seen.entry((e.index, e.term)).or_insert(link.chain);
            if known != link.chain {
                let detail = format!(
                    "{node} holds an entry at index {} term {} whose log differs from another replica's entry at the same index and term",
                    e.index, e.term
                );
                return Err(Violation::new("log-matching", now, detail));
            }
        }
        Ok(())
    }

    fn applied(
        &mut self,
        now: Time,
        node: NodeId,
        term: u64,
        index: u64,
        entry: &CommittedEntry,
    ) -> Result<(), Violation> {
        let n = node.index();
        if index != self.next_apply[n] {
            let detail = format!(
                "{node} applied index {index}, expected {}",
                self.next_apply[n]
            );
            return Err(Violation::new("apply-order", now, detail));
        }
        self.next_apply[n] += 1;
        let Some(&link) = self.logs[n].get(index as usize - 1) else {
            let detail = format!("{node} applied index {index}, which is not in its log");
            return Err(Violation::new("state-machine-safety", now, detail));
        };
        let prev = if index == 1 {
            0
        } else {
            self.logs[n][index as usize - 2].chain
        };
        let expect = chain(prev, index, link.term, committed_payload_hash(entry));
        if expect != link.chain {
            let detail =
                format!("{node} applied at index {index} something other than its log entry");
            return Err(Violation::new("state-machine-safety", now, detail));
        }
        match self.committed.get(index as usize - 1).map(|(c, _)| c) {
            Some(c) if *c != link => {
                let detail = format!(
                    "{node} applied an entry of term {} at index {index}, where another replica applied one of term {}",
                    link.term, c.term
                );
                Err(Violation::new("state-machine-safety", now, detail))
            }
            Some(_) => Ok(()),
            None => {
                self.committed.push((link, term));
                self.check_commit_safety(now, node, index, link)
            }
        }
    }

    fn last_of(&self, node: usize) -> (u64, u64) {
        let log = &self.logs[node];
        (log.last().map_or(0, |l| l.term), log.len() as u64)
    }

    /// No replica without the entry just committed at `index` can gather, on log
    /// up-to-dateness alone, a quorum of the configuration it has in force.
    fn check_commit_safety(
        &self,
        now: Time,
        by: NodeId,
        index: u64,
        link: Link,
    ) -> Result<(), Violation> {
        let n = self.logs.len();
        for lacking in 0..n {
            let config = self.configs[lacking].latest();
            let id = NodeId(lacking as u32);
            if !config.is_voter(id) || self.logs[lacking].get(index as usize - 1) == Some(&link) {
                continue; // it cannot campaign, or it holds the entry
            }
            let own = self.last_of(lacking);
            let supporters: Vec<NodeId> = (0..n)
                .filter(|&v| self.last_of(v) <= own)
                .map(|v| NodeId(v as u32))
                .collect();
            if config.is_quorum(supporters.iter().copied()) {
                let detail = format!(
                    "{by} committed index {index} (term {}), but {id}, whose log lacks it, could win an election in its configuration ({config}) with the votes of {supporters:?}",
                    link.term
                );
                return Err(Violation::new("commit-safety", now, detail));
            }
        }
        Ok(())
    }

    fn became_leader(&mut self, now: Time, node: NodeId, term: u64) -> Result<(), Violation> {
        if let Some(other) = self.leaders.insert(term, node)
            && other != node
        {
            let detail = format!("{other} and {node} both became leader of term {term}");
            return Err(Violation::new("election-safety", now, detail));
        }
        // Entries committed in this term or later need not be here (a stale leader of
        // an old term can be elected after newer terms committed more).
        let c = self
            .committed
            .iter()
            .rposition(|(_, committed_in)| *committed_in < term)
            .map_or(0, |i| i + 1);
        if c == 0 {
            return Ok(());
        }
        let last = self.committed[c - 1].0;
        let log = &self.logs[node.index()];
        if log.len() < c || log[c - 1].chain != last.chain {
            let detail = format!(
                "{node} became leader of term {term} without the entries committed in earlier terms up to index {c} (its log has {})",
                log.len()
            );
            return Err(Violation::new("leader-completeness", now, detail));
        }
        Ok(())
    }

    /// `prefix` extended by `entries` (which follow it).
    fn chain_from(mut prefix: Vec<Link>, entries: &[Entry]) -> Vec<Link> {
        let mut prev = prefix.last().map_or(0, |l| l.chain);
        for e in entries {
            prev = chain(prev, e.index, e.term, entry_payload_hash(e));
            prefix.push(Link {
                term: e.term,
                chain: prev,
            });
        }
        prefix
    }

    /// The committed prefix up to `index`, or a violation if less is committed.
    fn committed_prefix(
        &self,
        now: Time,
        node: NodeId,
        index: u64,
        term: Option<u64>,
    ) -> Result<Vec<Link>, Violation> {
        let links: Vec<Link> = self
            .committed
            .iter()
            .take(index as usize)
            .map(|(l, _)| *l)
            .collect();
        let agrees = links.len() == index as usize
            && term.is_none_or(|t| index == 0 || links[index as usize - 1].term == t);
        if !agrees {
            let detail = format!(
                "{node} holds a snapshot up to index {index}, but only {} entries are committed (or the terms disagree)",
                self.committed.len()
            );
            return Err(Violation::new("snapshot-safety", now, detail));
        }
        Ok(links)
    }

    /// A snapshot was written: the replica's own (its log is unchanged up to it), or one
    /// from the leader that replaced a log disagreeing with it.
    fn snapshot_written(
        &mut self,
        now: Time,
        node: NodeId,
        snapshot: &ekmat_raft::Snapshot,
    ) -> Result<(), Violation> {
        let (n, index, term) = (node.index(), snapshot.index, snapshot.term);
        let holds = self.logs[n]
            .get(index as usize - 1)
            .is_some_and(|l| l.term == term);
        let configs = &mut self.configs[n];
        configs.base = snapshot.membership.clone();
        if holds {
            configs.in_log.retain(|(i, _)| *i > index);
        } else {
            configs.in_log.clear();
            let replaced = self.committed_prefix(now, node, index, Some(term))?;
            // What it acknowledged of the log it had is only kept where that log agrees
            // with the snapshot; the rest is gone (or back, if the snapshot never
            // reaches disk — then its old log is what it acknowledged).
            let common = common_prefix(&self.logs[n], &replaced);
            self.logs[n] = replaced;
            self.acked[n] = self.acked[n].min(common);
        }
        Ok(())
    }
}

impl ProtocolChecker<RaftNode> for RaftChecker {
    fn on_effect(
        &mut self,
        now: Time,
        node: NodeId,
        replica: &RaftNode,
        effect: &Effect<Message, RaftWrite>,
    ) -> Result<(), Violation> {
        match effect {
            Effect::Persist {
                write: RaftWrite::Append { entries },
                ..
            } => self.append(now, node, entries),
            Effect::Send {
                to,
                msg: Message::VoteResponse(r),
            } if r.granted && !r.pre_vote => {
                self.votes[node.index()] = Some((r.term, *to));
                Ok(())
            }
            Effect::Send {
                msg: Message::AppendResponse(r),
                ..
            } => {
                if let AppendOutcome::Accepted { match_index } = r.outcome {
                    let a = &mut self.acked[node.index()];
                    *a = (*a).max(match_index);
                }
                Ok(())
            }
            Effect::Persist {
                write: RaftWrite::Snapshot { snapshot, .. } | RaftWrite::Compact { snapshot, .. },
                ..
            } => self.snapshot_written(now, node, snapshot),
            Effect::Restore { index, .. } => {
                self.next_apply[node.index()] = index + 1;
                Ok(())
            }
            Effect::Commit(c) => self.applied(now, node, replica.term(), c.index, &c.entry),
            Effect::Event(ekmat_core::Event::BecameLeader { term }) => {
                self.became_leader(now, node, *term)
            }
            _ => Ok(()),
        }
    }

    fn on_recover(
        &mut self,
        now: Time,
        node: NodeId,
        stable: &RaftStable,
    ) -> Result<(), Violation> {
        let n = node.index();
        let snapshot_index = stable.snapshot.as_ref().map_or(0, |s| s.index);
        let base = stable.log.first().map_or(snapshot_index, |e| e.index - 1);
        let prefix = self.committed_prefix(now, node, base, None)?;
        let recovered = Self::chain_from(prefix, &stable.log);
        let acked = self.acked[n] as usize;
        if acked > 0 && recovered.get(acked - 1) != self.logs[n].get(acked - 1) {
            let detail = format!(
                "{node} acknowledged its log up to index {acked} but restarted with {} entries that do not match it",
                recovered.len()
            );
            return Err(Violation::new("durability", now, detail));
        }
        if let Some((term, candidate)) = self.votes[n] {
            let kept =
                stable.term > term || (stable.term == term && stable.vote == Some(candidate));
            if !kept {
                let detail = format!(
                    "{node} granted its vote in term {term} to {candidate} but restarted in term {} having voted for {:?}",
                    stable.term, stable.vote
                );
                return Err(Violation::new("vote-durability", now, detail));
            }
        }
        self.logs[n] = recovered;
        self.next_apply[n] = 1;
        let base = match &stable.snapshot {
            Some(s) => s.membership.clone(),
            None if n < self.founders.voters.len() => self.founders.clone(),
            None => Membership::default(),
        };
        self.configs[n] = Configs {
            base,
            in_log: Vec::new(),
        };
        let after: Vec<Entry> = stable
            .log
            .iter()
            .filter(|e| e.index > snapshot_index)
            .cloned()
            .collect();
        self.configs[n].track(&after);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ekmat_core::{Committed, RequestId};
    use ekmat_raft::{RaftConfig, VoteResponse};

    const T: Time = Time(0);

    fn node(id: u32, term: u64) -> RaftNode {
        let cfg = RaftConfig::new(NodeId(id), (0..5).map(NodeId).collect());
        let stable = RaftStable {
            term,
            ..RaftStable::default()
        };
        RaftNode::recover(cfg, stable, T).unwrap()
    }

    fn cmd(index: u64, term: u64, seq: u64) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Command {
                id: RequestId { client: 1, seq },
                command: Bytes::from_static(b"x"),
            },
        }
    }

    fn write(c: &mut RaftChecker, n: u32, entries: Vec<Entry>) -> Result<(), Violation> {
        let effect = Effect::Persist {
            seq: 1,
            write: RaftWrite::Append { entries },
        };
        c.on_effect(T, NodeId(n), &node(n, 1), &effect)
    }

    fn apply(c: &mut RaftChecker, n: u32, term: u64, e: &Entry) -> Result<(), Violation> {
        let Payload::Command { id, command } = &e.payload else {
            unreachable!()
        };
        let entry = CommittedEntry::Command {
            id: *id,
            command: command.clone(),
        };
        let effect = Effect::Commit(Committed {
            index: e.index,
            entry,
            clock_ms: None,
        });
        c.on_effect(T, NodeId(n), &node(n, term), &effect)
    }

    fn lead(c: &mut RaftChecker, n: u32, term: u64) -> Result<(), Violation> {
        let effect = Effect::Event(ekmat_core::Event::BecameLeader { term });
        c.on_effect(T, NodeId(n), &node(n, term), &effect)
    }

    fn property(r: Result<(), Violation>) -> &'static str {
        r.expect_err("a violation").property
    }

    #[test]
    fn common_prefix_finds_where_two_logs_part() {
        let link = |term, chain| Link { term, chain };
        let a = [link(1, 1), link(1, 2), link(2, 3), link(2, 4)];
        let b = [link(1, 1), link(1, 2), link(3, 9)];
        assert_eq!(common_prefix(&a, &b), 2);
        assert_eq!(common_prefix(&a, &a[..3]), 3);
        assert_eq!(common_prefix(&a, &[]), 0);
        assert_eq!(common_prefix(&a, &[link(5, 5)]), 0);
    }

    #[test]
    fn two_leaders_in_one_term_break_election_safety() {
        let mut c = RaftChecker::new(5, 5);
        lead(&mut c, 0, 3).unwrap();
        lead(&mut c, 0, 3).unwrap();
        assert_eq!(property(lead(&mut c, 1, 3)), "election-safety");
    }

    #[test]
    fn same_index_and_term_with_different_prefixes_break_log_matching() {
        let mut c = RaftChecker::new(5, 5);
        write(&mut c, 0, vec![cmd(1, 1, 1), cmd(2, 2, 2)]).unwrap();
        assert_eq!(
            property(write(&mut c, 1, vec![cmd(1, 1, 9), cmd(2, 2, 2)])),
            "log-matching"
        );
    }

    #[test]
    fn different_entries_applied_at_one_index_break_state_machine_safety() {
        let mut c = RaftChecker::new(5, 5);
        let (a, b) = (cmd(1, 1, 1), cmd(1, 2, 2));
        write(&mut c, 0, vec![a.clone()]).unwrap();
        write(&mut c, 0, vec![a.clone()]).unwrap();
        write(&mut c, 1, vec![a.clone()]).unwrap();
        write(&mut c, 2, vec![a.clone()]).unwrap();
        apply(&mut c, 0, 1, &a).unwrap();
        write(&mut c, 3, vec![b.clone()]).unwrap();
        assert_eq!(property(apply(&mut c, 3, 2, &b)), "state-machine-safety");
    }

    #[test]
    fn a_leader_without_earlier_commits_breaks_leader_completeness() {
        let mut c = RaftChecker::new(5, 5);
        let e = cmd(1, 1, 1);
        for n in 0..3 {
            write(&mut c, n, vec![e.clone()]).unwrap();
        }
        apply(&mut c, 0, 1, &e).unwrap();
        assert_eq!(property(lead(&mut c, 4, 2)), "leader-completeness");
        // A stale leader of the term the entry was committed in is no violation.
        let mut c = RaftChecker::new(5, 5);
        for n in 0..3 {
            write(&mut c, n, vec![e.clone()]).unwrap();
        }
        apply(&mut c, 0, 3, &e).unwrap();
        lead(&mut c, 4, 2).unwrap();
    }

    #[test]
    fn committing_what_an_electable_log_lacks_breaks_commit_safety() {
        // n0..n2 hold a term-1 entry; n3 holds a conflicting term-2 entry, so n3, n4 and
        // either of n1, n2 could elect n3, which lacks the committed entry.
        let mut c = RaftChecker::new(5, 5);
        let old = cmd(1, 1, 1);
        for n in 0..3 {
            write(&mut c, n, vec![old.clone()]).unwrap();
        }
        write(&mut c, 3, vec![cmd(1, 2, 7)]).unwrap();
        assert_eq!(property(apply(&mut c, 0, 3, &old)), "commit-safety");
    }

    #[test]
    fn committing_what_a_majority_protects_is_safe() {
        let mut c = RaftChecker::new(5, 5);
        let e = cmd(1, 3, 1);
        for n in 0..3 {
            write(&mut c, n, vec![e.clone()]).unwrap();
        }
        write(&mut c, 3, vec![cmd(1, 2, 7)]).unwrap();
        apply(&mut c, 0, 3, &e).unwrap();
    }

    #[test]
    fn losing_acknowledged_entries_or_votes_in_a_crash_is_caught() {
        let mut c = RaftChecker::new(5, 5);
        write(&mut c, 1, vec![cmd(1, 1, 1), cmd(2, 1, 2)]).unwrap();
        let ack = Message::AppendResponse(ekmat_raft::AppendResponse {
            term: 1,
            outcome: AppendOutcome::Accepted { match_index: 2 },
            read_seq: 0,
            sent_at_us: 0,
        });
        c.on_effect(
            T,
            NodeId(1),
            &node(1, 1),
            &Effect::Send {
                to: NodeId(0),
                msg: ack,
            },
        )
        .unwrap();
        let lost = RaftStable {
            term: 1,
            vote: None,
            snapshot: None,
            log: vec![cmd(1, 1, 1)],
        };
        assert_eq!(property(c.on_recover(T, NodeId(1), &lost)), "durability");

        let mut c = RaftChecker::new(5, 5);
        let grant = Message::VoteResponse(VoteResponse {
            term: 4,
            granted: true,
            pre_vote: false,
            sent_at_us: 0,
        });
        c.on_effect(
            T,
            NodeId(2),
            &node(2, 4),
            &Effect::Send {
                to: NodeId(3),
                msg: grant,
            },
        )
        .unwrap();
        let forgot = RaftStable {
            term: 4,
            vote: None,
            snapshot: None,
            log: vec![],
        };
        assert_eq!(
            property(c.on_recover(T, NodeId(2), &forgot)),
            "vote-durability"
        );
        let kept = RaftStable {
            term: 4,
            vote: Some(NodeId(3)),
            snapshot: None,
            log: vec![],
        };
        c.on_recover(T, NodeId(2), &kept).unwrap();
    }
}
