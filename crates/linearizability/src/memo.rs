//! Lowe's memoisation, extended with a dominance rule for operations whose
//! outcome is unknown.
//!
//! A configuration of the search is (linearized operations, model state).
//! Lowe's observation: two search paths reaching the same configuration have
//! the same futures, so the second can be cut off. That turns Wing & Gong's
//! exponential search into one that is usually fast.
//!
//! Operations with an unknown outcome ("open" operations) may be left out of
//! a linearization altogether, and they never block anything. So if the
//! search entered (K, O, s) — K the linearized operations that returned, O the
//! linearized open ones, s the state — then (K, O', s) with O' ⊇ O has no
//! future that (K, O, s) lacks: it only has fewer open operations left to
//! use. It can be cut off too. For every (K, s) the memo therefore keeps the
//! minimal open sets it was entered with (an antichain), and a configuration
//! is new only if none of them is a subset of its open set. Without open
//! operations this is exactly Lowe's rule.
//!
//! The search asks "seen before?" far more often than it inserts, so lookups
//! borrow the live bitsets and state instead of cloning them; only a genuinely
//! new configuration is copied into the map. Borrowing a two-part key out of a
//! `HashMap` takes the usual trick of a trait object as the `Borrow` target.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use rustc_hash::FxHashMap;

use crate::bitset::Bitset;

/// The configurations the search has entered.
pub(crate) struct Memo<S> {
    /// For each (returned operations linearized, state): the minimal sets of
    /// open operations linearized with it, each `open_words` words long,
    /// concatenated.
    seen: FxHashMap<Config<S>, Vec<u64>>,
    open_words: usize,
}

impl<S: Clone + Eq + Hash> Memo<S> {
    /// A memo for open-operation sets of `open_words` words each.
    pub(crate) fn new(open_words: usize) -> Self {
        Self {
            seen: FxHashMap::default(),
            open_words,
        }
    }

    /// Records the configuration; returns false if it is dominated by one
    /// recorded before (including an identical one).
    pub(crate) fn insert(&mut self, known: &Bitset, open: &Bitset, state: &S) -> bool {
        debug_assert_eq!(open.words().len(), self.open_words);
        let probe = ConfigRef { known, state };
        let Some(antichain) = self.seen.get_mut(&probe as &dyn ConfigView<S>) else {
            let config = Config {
                known: known.clone(),
                state: state.clone(),
            };
            self.seen.insert(config, open.words().to_vec());
            return true;
        };
        add_if_minimal(antichain, open.words(), self.open_words)
    }
}

/// Adds `set` to `antichain` (sets of `width` words, concatenated) unless one
/// of them is a subset of it; drops the ones it is a subset of. Returns whether
/// it was added.
fn add_if_minimal(antichain: &mut Vec<u64>, set: &[u64], width: usize) -> bool {
    if width == 0 {
        // Only the empty set exists, and it is present already.
        return false;
    }
    let chunks = antichain.chunks_exact(width);
    if chunks.clone().any(|old| is_subset(old, set)) {
        return false;
    }
    let mut kept = 0;
    for i in 0..antichain.len() / width {
        let old = i * width..(i + 1) * width;
        if !is_subset(set, &antichain[old.clone()]) {
            antichain.copy_within(old, kept * width);
            kept += 1;
        }
    }
    antichain.truncate(kept * width);
    antichain.extend_from_slice(set);
    true
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(a, b)| a & !b == 0)
}

/// A stored configuration key.
struct Config<S> {
    known: Bitset,
    state: S,
}

/// A configuration key borrowed from the search's live variables.
struct ConfigRef<'a, S> {
    known: &'a Bitset,
    state: &'a S,
}

/// What stored and borrowed keys have in common; hashing and equality are
/// defined on this view so that both agree.
trait ConfigView<S> {
    fn known(&self) -> &Bitset;
    fn state(&self) -> &S;
}

impl<S> ConfigView<S> for Config<S> {
    fn known(&self) -> &Bitset {
        &self.known
    }
    fn state(&self) -> &S {
        &self.state
    }
}

impl<S> ConfigView<S> for ConfigRef<'_, S> {
    fn known(&self) -> &Bitset {
        self.known
    }
    fn state(&self) -> &S {
        self.state
    }
}

impl<'a, S: 'a> Borrow<dyn ConfigView<S> + 'a> for Config<S> {
    fn borrow(&self) -> &(dyn ConfigView<S> + 'a) {
        self
    }
}

impl<S: Hash> Hash for dyn ConfigView<S> + '_ {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        self.known().hash(hasher);
        self.state().hash(hasher);
    }
}

impl<S: Eq> PartialEq for dyn ConfigView<S> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.known() == other.known() && self.state() == other.state()
    }
}

impl<S: Eq> Eq for dyn ConfigView<S> + '_ {}

// `Borrow` requires the owned key to hash and compare exactly like its view.
impl<S: Hash> Hash for Config<S> {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        (self as &dyn ConfigView<S>).hash(hasher);
    }
}

impl<S: Eq> PartialEq for Config<S> {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn ConfigView<S>) == (other as &dyn ConfigView<S>)
    }
}

impl<S: Eq> Eq for Config<S> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(capacity: usize, members: &[usize]) -> Bitset {
        let mut set = Bitset::new(capacity);
        for &m in members {
            set.insert(m);
        }
        set
    }

    #[test]
    fn without_open_operations_a_configuration_is_new_only_once() {
        let mut memo = Memo::new(0);
        let none = Bitset::new(0);
        let mut known = Bitset::new(100);
        assert!(memo.insert(&known, &none, &7u64));
        assert!(!memo.insert(&known, &none, &7u64));
        assert!(memo.insert(&known, &none, &8u64), "same set, other state");
        known.insert(99);
        assert!(memo.insert(&known, &none, &7u64), "same state, other set");
        assert!(!memo.insert(&known, &none, &7u64));
    }

    #[test]
    fn more_open_operations_linearized_is_dominated() {
        let mut memo = Memo::new(2);
        let known = set(10, &[1, 2]);
        assert!(memo.insert(&known, &set(70, &[3]), &0u64));
        assert!(!memo.insert(&known, &set(70, &[3]), &0u64));
        assert!(!memo.insert(&known, &set(70, &[3, 65]), &0u64));
        assert!(
            memo.insert(&known, &set(70, &[65]), &0u64),
            "not a superset"
        );
        assert!(
            memo.insert(&known, &set(70, &[3, 65]), &1u64),
            "other state"
        );
        assert!(
            memo.insert(&set(10, &[1]), &set(70, &[3, 65]), &0u64),
            "other known set"
        );
    }

    #[test]
    fn a_smaller_open_set_replaces_its_supersets() {
        let mut antichain = Vec::new();
        assert!(add_if_minimal(&mut antichain, &[0b110], 1));
        assert!(add_if_minimal(&mut antichain, &[0b011], 1));
        assert!(add_if_minimal(&mut antichain, &[0b010], 1));
        assert_eq!(antichain, vec![0b010]);
        assert!(!add_if_minimal(&mut antichain, &[0b111], 1));
        assert!(add_if_minimal(&mut antichain, &[0b000], 1));
        assert_eq!(antichain, vec![0b000]);
    }
}
