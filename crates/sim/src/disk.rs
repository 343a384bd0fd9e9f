//! A replica's disk: what is durable, and what was written but not yet synced. A crash
//! keeps the durable state and a random prefix of the unsynced writes (a torn tail);
//! the rest is lost, as on a real disk without a completed fsync.

use std::collections::VecDeque;

use ekmat_core::{DetRng, Durable};

#[derive(Debug)]
pub struct Disk<S, W> {
    stable: S,
    /// `stable` without the compactions since the last crash, which storage may make
    /// durable lazily (`Durable::is_compaction`): a crash may come back to either.
    uncompacted: Option<S>,
    unsynced: VecDeque<(u64, W)>,
}

impl<S: Durable<W> + Clone + Default, W> Default for Disk<S, W> {
    fn default() -> Self {
        Disk {
            stable: S::default(),
            uncompacted: None,
            unsynced: VecDeque::new(),
        }
    }
}

impl<S: Durable<W> + Clone + Default, W> Disk<S, W> {
    pub fn write(&mut self, seq: u64, write: W) {
        self.unsynced.push_back((seq, write));
    }

    /// Writes up to `seq` reach the platter.
    pub fn sync(&mut self, seq: u64) {
        while self.unsynced.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, w) = self.unsynced.pop_front().expect("front checked");
            self.land(&w);
        }
    }

    fn land(&mut self, write: &W) {
        if S::is_compaction(write) {
            self.uncompacted.get_or_insert_with(|| self.stable.clone());
        } else if let Some(uncompacted) = &mut self.uncompacted {
            uncompacted.apply(write);
        }
        self.stable.apply(write);
    }

    /// Power loss: a prefix of the unsynced writes survives, the rest is gone; and the
    /// compactions since the last crash may be gone too. Sequence numbers restart with
    /// the next incarnation.
    pub fn crash(&mut self, rng: &mut DetRng) -> usize {
        let survive = rng.range(0, self.unsynced.len() as u64) as usize;
        let survivors: Vec<W> = self
            .unsynced
            .drain(..)
            .take(survive)
            .map(|(_, w)| w)
            .collect();
        for w in &survivors {
            self.land(w);
        }
        self.unsynced.clear();
        if let Some(uncompacted) = self.uncompacted.take()
            && rng.range(0, 1) == 0
        {
            self.stable = uncompacted;
        }
        survive
    }

    pub fn stable(&self) -> &S {
        &self.stable
    }

    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Default)]
    struct Sum(Vec<u32>);
    impl Durable<u32> for Sum {
        fn apply(&mut self, w: &u32) {
            self.0.push(*w);
        }
    }

    #[test]
    fn sync_makes_a_prefix_durable_and_a_crash_keeps_a_prefix_of_the_rest() {
        let mut d: Disk<Sum, u32> = Disk::default();
        for seq in 1..=6 {
            d.write(seq, seq as u32 * 10);
        }
        d.sync(2);
        assert_eq!(d.stable().0, vec![10, 20]);
        let kept = d.crash(&mut DetRng::new(3));
        let s = &d.stable().0;
        assert_eq!(s.len(), 2 + kept);
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "survivors are a prefix, in order"
        );
        assert_eq!(d.unsynced(), 0);
    }
}
