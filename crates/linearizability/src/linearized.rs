//! The set of operations a search path has linearized so far.
//!
//! It is kept as two bitsets, one over the operations that returned and one
//! over the open ones (unknown outcome), because the memo compares them
//! differently (see `memo`).

use crate::bitset::Bitset;

/// The linearized operations of one partition.
pub(crate) struct Linearized {
    known: Bitset,
    open: Bitset,
    /// Each operation's position in its own bitset.
    slot: Vec<Slot>,
}

#[derive(Clone, Copy)]
enum Slot {
    Known(usize),
    Open(usize),
}

impl Linearized {
    /// An empty set; `is_open[op]` says whether operation `op` has an unknown
    /// outcome.
    pub(crate) fn new(is_open: impl Iterator<Item = bool>) -> Self {
        let (mut known, mut open) = (0, 0);
        let slot = is_open
            .map(|is_open| {
                let (count, slot): (&mut usize, fn(usize) -> Slot) = if is_open {
                    (&mut open, Slot::Open)
                } else {
                    (&mut known, Slot::Known)
                };
                *count += 1;
                slot(*count - 1)
            })
            .collect();
        Self {
            known: Bitset::new(known),
            open: Bitset::new(open),
            slot,
        }
    }

    pub(crate) fn insert(&mut self, op: usize) {
        match self.slot[op] {
            Slot::Known(i) => self.known.insert(i),
            Slot::Open(i) => self.open.insert(i),
        }
    }

    pub(crate) fn remove(&mut self, op: usize) {
        match self.slot[op] {
            Slot::Known(i) => self.known.remove(i),
            Slot::Open(i) => self.open.remove(i),
        }
    }

    /// The linearized operations that returned.
    pub(crate) fn known(&self) -> &Bitset {
        &self.known
    }

    /// The linearized open operations.
    pub(crate) fn open(&self) -> &Bitset {
        &self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_land_in_the_bitset_of_their_kind() {
        let mut set = Linearized::new([false, true, false, true].into_iter());
        set.insert(2);
        set.insert(3);
        assert_eq!(set.known().words(), &[0b10]);
        assert_eq!(set.open().words(), &[0b10]);
        set.remove(3);
        assert_eq!(set.open().words(), &[0]);
    }
}
