//! A fixed-size set of operation indices: which operations of a partition are
//! already linearized.
//!
//! The search keeps one of these and flips single bits as it moves forwards
//! and backwards; the memo stores copies of it next to the model state.
//!
//! The memo hashes a set on every lookup, so each set carries a Zobrist
//! fingerprint: the XOR of a fixed pseudo-random word per member, updated in
//! O(1) per flip. Hashing is then one word, not the whole set; equality still
//! compares every word (after the fingerprints, which usually differ first).

use std::hash::{Hash, Hasher};

const BITS: usize = u64::BITS as usize;

/// A set of indices in `0..capacity`, one bit per index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bitset {
    fingerprint: u64,
    words: Box<[u64]>,
}

impl Bitset {
    /// An empty set able to hold the indices `0..capacity`.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            fingerprint: 0,
            words: vec![0; capacity.div_ceil(BITS)].into_boxed_slice(),
        }
    }

    /// Adds `index` to the set.
    pub(crate) fn insert(&mut self, index: usize) {
        if !self.contains(index) {
            self.words[index / BITS] |= 1 << (index % BITS);
            self.fingerprint ^= zobrist(index);
        }
    }

    /// Removes `index` from the set.
    pub(crate) fn remove(&mut self, index: usize) {
        if self.contains(index) {
            self.words[index / BITS] &= !(1 << (index % BITS));
            self.fingerprint ^= zobrist(index);
        }
    }

    /// True if `index` is in the set.
    pub(crate) fn contains(&self, index: usize) -> bool {
        self.words[index / BITS] & (1 << (index % BITS)) != 0
    }

    /// The raw words, for hashing and comparing without cloning.
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }
}

impl Hash for Bitset {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        // Equal sets have equal fingerprints, which is all `Hash` requires.
        hasher.write_u64(self.fingerprint);
    }
}

/// The fingerprint of member `index`: SplitMix64's output function, a
/// fixed bijection that scatters consecutive indices over all 64 bits.
fn zobrist(index: usize) -> u64 {
    let mut z = (index as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_and_remove_across_word_boundaries() {
        let mut set = Bitset::new(130);
        for i in [0, 63, 64, 127, 128, 129] {
            assert!(!set.contains(i));
            set.insert(i);
            assert!(set.contains(i));
        }
        assert_eq!(set.words().len(), 3);
        set.remove(64);
        assert!(!set.contains(64));
        assert!(set.contains(63) && set.contains(127));
    }

    #[test]
    fn equal_sets_compare_equal_regardless_of_history() {
        let mut a = Bitset::new(70);
        let mut b = Bitset::new(70);
        a.insert(3);
        a.insert(69);
        a.remove(3);
        b.insert(69);
        assert_eq!(a, b);
        assert_eq!(a.fingerprint, b.fingerprint);
    }

    #[test]
    fn repeated_flips_keep_the_fingerprint_consistent() {
        let mut set = Bitset::new(10);
        set.insert(4);
        set.insert(4);
        set.remove(5);
        assert_eq!(set.fingerprint, zobrist(4));
        set.remove(4);
        assert_eq!(set.fingerprint, 0);
    }
}
