//! A linearizability checker for client histories of a replicated store.
//!
//! The algorithm is Wing & Gong's backtracking search with Lowe's
//! memoisation ("WGL", as in porcupine and in Lowe's "Testing for
//! linearizability", 2017), applied per partition: linearizability is
//! compositional, so operations on different keys are checked independently,
//! which keeps each search small. On top of the textbook algorithm:
//! - an accepted read-only operation is linearized without trying its
//!   alternatives (it changes nothing, so nothing is lost);
//! - operations with an unknown outcome may be left out altogether, and the
//!   memo treats a configuration that used more of them as dominated by one
//!   that used fewer (see the `memo` module);
//! - two search orders for those operations run side by side, because each is
//!   far faster than the other on some histories (see the `search` module).
//!
//! Operations whose intervals only touch (`ret == call`) count as concurrent.
//!
//! Searching is exponential in the worst case; [`CheckOptions::max_steps`]
//! bounds it, and a partition that exceeds it is reported as
//! [`Verdict::Unknown`]. Ambiguity is what makes searches long: histories
//! whose writes use distinct values, with few unknown outcomes, check
//! fastest. Proving a violation is harder than finding a linearization (the
//! search must be exhausted up to the violation), so a violation in a
//! partition with many unknown outcomes and few distinct values may come out
//! as `Unknown`.
//!
//! ```
//! use ekmat_linearizability::{check, CheckOptions, Operation, Verdict};
//! use ekmat_linearizability::kv::{KvInput, KvModel, KvOutput};
//!
//! let history = vec![
//!     Operation { client: 1, input: KvInput::Put { key: 7, value: 1 }, call: 0, ret: Some(10), output: Some(KvOutput::Done) },
//!     // A read that starts after the write completed must see it.
//!     Operation { client: 2, input: KvInput::Get { key: 7 }, call: 11, ret: Some(12), output: Some(KvOutput::Value(None)) },
//! ];
//! let verdict = check(&KvModel, &history, &CheckOptions::default()).unwrap();
//! assert!(matches!(verdict, Verdict::NotLinearizable { partition: 7, .. }));
//! ```

mod bitset;
mod dfs;
mod entries;
mod history;
pub mod kv;
mod linearized;
mod memo;
mod search;

pub use history::{HistoryError, Operation};

use dfs::Decision;
use search::SearchResult;

/// A sequential specification of the object whose history is checked.
pub trait Model {
    /// The state of one partition.
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug;
    /// An operation's request.
    type Input: Clone + std::fmt::Debug;
    /// An operation's response.
    type Output: Clone + std::fmt::Debug;

    /// The initial state (of every partition).
    fn init(&self) -> Self::State;

    /// The state after applying `input`, if `output` is a result the operation could have
    /// returned from `state`; None if not. `output == None` means the outcome is unknown
    /// (the op may or may not have taken effect, and its result was never seen): accept any result.
    ///
    /// With `output == None`, return the state as if the operation took effect:
    /// the checker covers "it never did" by leaving the operation out.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Operations with different partition keys never affect each other.
    fn partition_key(&self, input: &Self::Input) -> u64 {
        let _ = input;
        0
    }

    /// True if the input never changes the state (lets unknown-outcome reads be dropped).
    ///
    /// The search also relies on it to linearize an accepted read at once
    /// without trying alternatives, so it must hold for every state and output:
    /// whenever `step` returns `Some`, it returns the state it was given.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }
}

/// Tuning for [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search-step budget per partition. Deterministic (a count, not wall time),
    /// so a verdict never depends on machine load.
    pub max_steps: u64,
}

impl CheckOptions {
    /// The default budget. A release build runs roughly 6 to 15 million steps a
    /// second, so this gives up in under a second (0.3 to 0.8 s measured),
    /// while linearizable partitions of ~600 operations from ~10 concurrent
    /// clients with up to 5% unknown outcomes need from ~10 thousand to a few
    /// hundred thousand steps. Memory grows with the steps taken: 70 to 160 MB
    /// measured when a 600-operation partition exhausts this budget.
    pub const DEFAULT_MAX_STEPS: u64 = 5_000_000;
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_steps: Self::DEFAULT_MAX_STEPS,
        }
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every partition has a linearization.
    Linearizable,
    /// `partition`: the key; `ops`: indices (into the original history slice) of the operations in
    /// that partition; `longest_prefix`: indices of the longest linearized sequence the search found;
    /// `stuck_at`: index of an operation that could not be linearized after that prefix (the earliest-returning one that was pending).
    ///
    /// `ops` lists every operation with that key, including unknown-outcome
    /// read-only ones that the search ignores.
    NotLinearizable {
        partition: u64,
        ops: Vec<usize>,
        longest_prefix: Vec<usize>,
        stuck_at: Option<usize>,
    },
    /// The budget ran out on `partition` before a verdict (not a violation; report it).
    Unknown { partition: u64 },
}

impl Verdict {
    /// True for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks `history` against `model`, one partition at a time in ascending key
/// order. Returns the first violation found; failing that, the first partition
/// whose budget ran out; failing that, [`Verdict::Linearizable`]. Same input,
/// same verdict and witness.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    opts: &CheckOptions,
) -> Result<Verdict, HistoryError> {
    check_with_order(model, history, opts, SearchOrder::Both)
}

/// When the search tries operations whose outcome is unknown. Each order is
/// complete and sound on its own; they differ only in speed, each being much
/// faster than the other on some histories (see the `search` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchOrder {
    /// Run both searches side by side, in favour of `Eager` at first and of
    /// `Lazy` later; the first to finish decides. What [`check`] does.
    #[default]
    Both,
    /// Only the search that tries them in call order with everything else,
    /// as porcupine does.
    Eager,
    /// Only the search that tries them when nothing else fits.
    Lazy,
}

/// [`check`] with a chosen [`SearchOrder`]; for tests and experiments.
pub fn check_with_order<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    opts: &CheckOptions,
    order: SearchOrder,
) -> Result<Verdict, HistoryError> {
    history::validate(history)?;
    let mut first_unknown = None;
    for partition in history::partition(model, history)? {
        let ops: Vec<_> = partition.searched.iter().map(|&i| &history[i]).collect();
        match search::search(model, &ops, opts.max_steps, order) {
            SearchResult::Decided(Decision::Linearizable) => {}
            SearchResult::OutOfBudget => {
                first_unknown.get_or_insert(partition.key);
            }
            SearchResult::Decided(Decision::NotLinearizable {
                longest_prefix,
                stuck_at,
            }) => {
                let global = |local: usize| partition.searched[local];
                return Ok(Verdict::NotLinearizable {
                    partition: partition.key,
                    longest_prefix: longest_prefix.into_iter().map(global).collect(),
                    stuck_at: stuck_at.map(global),
                    ops: partition.ops,
                });
            }
        }
    }
    Ok(match first_unknown {
        Some(partition) => Verdict::Unknown { partition },
        None => Verdict::Linearizable,
    })
}
