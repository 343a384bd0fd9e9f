//! The Wing & Gong search with Lowe's memoisation ("WGL") over one partition,
//! run as two depth-first searches side by side.
//!
//! The searches differ only in when they try operations with an unknown
//! outcome ("open" operations), and the right choice depends on the history:
//! - *eager*, as porcupine does: in call order with everything else. Cheap
//!   when an open operation took effect near its call, or when its effect was
//!   soon overwritten anyway; expensive when it must be kept out for long.
//! - *lazy*: only when nothing else fits. Cheap when open operations mostly
//!   did not matter (the Jepsen etcd logs, where the eager search needs up to
//!   100 times more steps); expensive when one took effect and a whole subtree
//!   must fail before the search tries it.
//!
//! Both are complete and sound, so whichever finishes first decides. They
//! run in alternating slices, 4:1 in favour of the eager one at first and
//! 1:4 later (see `EAGER_HEAD_START`), so the pair costs at most about 5 times
//! the faster one, and usually much less. Like everything here, this is
//! deterministic: slices are counted in steps, not time.

use crate::dfs::{Decision, Dfs};
use crate::entries::OpenCalls;
use crate::history::Operation;
use crate::{Model, SearchOrder};

/// The unit of alternation, in steps: large enough to keep each search's
/// data warm in cache, small enough not to matter.
const SLICE: u64 = 1024;

/// Until the eager search has run this many steps, it gets 4 slices for
/// every one of the lazy search, because on simulator-like histories that are
/// linearizable it is usually the faster one (by up to ~10x), and finishes
/// well within this. A history still undecided after that is more likely
/// not linearizable; proving that means exhausting the search, at which the
/// lazy search is usually the faster one (by up to ~10x), so the shares swap.
const EAGER_HEAD_START: u64 = 256 * SLICE;

/// The result of searching one partition. Operation indices are local to the
/// slice that was searched.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SearchResult {
    Decided(Decision),
    /// `max_steps` ran out first.
    OutOfBudget,
}

/// Decides whether `ops` (one partition, already validated) is linearizable
/// with respect to `model`, spending at most `max_steps` steps in total.
pub(crate) fn search<M: Model>(
    model: &M,
    ops: &[&Operation<M::Input, M::Output>],
    max_steps: u64,
    order: SearchOrder,
) -> SearchResult {
    let has_open = ops.iter().any(|op| op.ret.is_none());
    let only = match order {
        // Without open operations both searches are the same.
        SearchOrder::Both if has_open => return side_by_side(model, ops, max_steps),
        SearchOrder::Both | SearchOrder::Eager => OpenCalls::InTimeOrder,
        SearchOrder::Lazy => OpenCalls::Apart,
    };
    let decision = Dfs::new(model, ops, only).run(max_steps);
    decision.map_or(SearchResult::OutOfBudget, SearchResult::Decided)
}

/// Runs the eager and the lazy search in alternating slices.
fn side_by_side<M: Model>(
    model: &M,
    ops: &[&Operation<M::Input, M::Output>],
    max_steps: u64,
) -> SearchResult {
    let mut eager = Dfs::new(model, ops, OpenCalls::InTimeOrder);
    let mut lazy = None;
    let (mut left, mut eager_used) = (max_steps, 0);
    while left > 0 {
        let (eager_slice, lazy_slice) = slices(eager_used);
        let slice = left.min(eager_slice);
        left -= slice;
        eager_used += slice;
        if let Some(decision) = eager.run(slice) {
            return SearchResult::Decided(decision);
        }
        let slice = left.min(lazy_slice);
        left -= slice;
        let lazy = lazy.get_or_insert_with(|| Dfs::new(model, ops, OpenCalls::Apart));
        if let Some(decision) = lazy.run(slice) {
            return SearchResult::Decided(decision);
        }
    }
    SearchResult::OutOfBudget
}

/// How many steps each search gets next, given how many the eager one has had.
fn slices(eager_used: u64) -> (u64, u64) {
    if eager_used < EAGER_HEAD_START {
        (4 * SLICE, SLICE)
    } else {
        (SLICE, 4 * SLICE)
    }
}
