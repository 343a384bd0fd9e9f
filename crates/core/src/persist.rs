//! Holding messages back until the writes they depend on are durable.
//!
//! A vote must not leave before the vote is on disk, nor an append acknowledgement before
//! the entries are: otherwise a crash makes the replica forget a promise others rely on.
//! Cores route such messages through a [`PersistGate`] instead of sending them directly.

use std::collections::VecDeque;

use crate::{Effect, Effects, NodeId};

#[derive(Debug)]
pub struct PersistGate<M> {
    /// Sequence number of the last write requested.
    written: u64,
    /// Every write `<= durable` has been reported durable.
    durable: u64,
    held: VecDeque<(u64, NodeId, M)>,
}

impl<M> Default for PersistGate<M> {
    fn default() -> Self {
        PersistGate {
            written: 0,
            durable: 0,
            held: VecDeque::new(),
        }
    }
}

impl<M> PersistGate<M> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the driver to make `write` durable; returns its sequence number.
    pub fn persist<W>(&mut self, write: W, out: &mut Effects<M, W>) -> u64 {
        self.written += 1;
        out.push(Effect::Persist {
            seq: self.written,
            write,
        });
        self.written
    }

    /// Sequence number of the most recent write.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// True when every write requested so far is durable.
    pub fn all_durable(&self) -> bool {
        self.durable == self.written
    }

    /// Send `msg` once every write requested so far is durable (at once if it already is).
    pub fn send_when_durable<W>(&mut self, to: NodeId, msg: M, out: &mut Effects<M, W>) {
        if self.all_durable() {
            out.send(to, msg);
        } else {
            self.held.push_back((self.written, to, msg));
        }
    }

    /// Record that writes up to `seq` are durable and release what waited for them.
    /// Returns true if durability advanced.
    pub fn on_persisted<W>(&mut self, seq: u64, out: &mut Effects<M, W>) -> bool {
        let seq = seq.min(self.written);
        if seq <= self.durable {
            return false;
        }
        self.durable = seq;
        while self.held.front().is_some_and(|(s, _, _)| *s <= seq) {
            let (_, to, msg) = self.held.pop_front().expect("front checked");
            out.send(to, msg);
        }
        true
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fx = Effects<&'static str, &'static str>;

    fn sends(out: &mut Fx) -> Vec<&'static str> {
        out.drain()
            .filter_map(|e| match e {
                Effect::Send { msg, .. } => Some(msg),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn message_waits_for_its_write_and_no_longer() {
        let mut gate = PersistGate::new();
        let mut out = Fx::new();
        let seq = gate.persist("vote", &mut out);
        gate.send_when_durable(NodeId(1), "grant", &mut out);
        assert_eq!(sends(&mut out), Vec::<&str>::new());
        gate.on_persisted(seq, &mut out);
        assert_eq!(sends(&mut out), vec!["grant"]);
        gate.send_when_durable(NodeId(1), "later", &mut out);
        assert_eq!(sends(&mut out), vec!["later"]);
    }

    #[test]
    fn partial_durability_releases_only_what_it_covers() {
        let mut gate = PersistGate::new();
        let mut out = Fx::new();
        let first = gate.persist("a", &mut out);
        gate.send_when_durable(NodeId(1), "after-a", &mut out);
        gate.persist("b", &mut out);
        gate.send_when_durable(NodeId(1), "after-b", &mut out);
        gate.on_persisted(first, &mut out);
        assert_eq!(sends(&mut out), vec!["after-a"]);
        assert!(!gate.all_durable());
        gate.on_persisted(first + 1, &mut out);
        assert_eq!(sends(&mut out), vec!["after-b"]);
    }

    #[test]
    fn stale_or_future_reports_are_harmless() {
        let mut gate: PersistGate<&str> = PersistGate::new();
        let mut out = Fx::new();
        gate.persist("a", &mut out);
        assert!(gate.on_persisted(99, &mut out));
        assert_eq!(gate.durable(), 1);
        assert!(!gate.on_persisted(1, &mut out));
    }
}
