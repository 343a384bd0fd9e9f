//! One depth-first WGL search over one partition, advanced a step at a time
//! so that `search` can run two of them side by side.
//!
//! The search builds a linearization one operation at a time. At each point
//! the candidates are the operations called before the earliest pending
//! return; one may go next if the model accepts its recorded output from the
//! current state and the resulting configuration (linearized set, state) was
//! not entered before (Lowe's memo, see `memo`). When no candidate is left,
//! the operation returning there cannot be linearized after the current
//! prefix: a dead end, so the search undoes its latest choice and tries the
//! next sibling. The history is linearizable iff every operation that
//! returned gets linearized; open operations (unknown outcome) may be left
//! out, since if they took effect at all, that could have been last.
//!
//! Each configuration's candidates are tried in up to three passes:
//! 1. read-only operations. If the model accepts one, linearizing it now is
//!    never worse than later: it changes no state and was called before every
//!    pending return, so any continuation that works with it later also works
//!    with it now. The search commits to it and tries no sibling.
//! 2. the other operations that returned, and, for `OpenCalls::InTimeOrder`,
//!    open ones, in call order.
//! 3. for `OpenCalls::Apart`, the open operations: tried only when nothing
//!    else fits.
//!
//! An open operation that would merely overwrite the effect of the open
//! operation linearized just before is skipped: its sibling without that
//! previous operation dominates it (see `overwrites_previous_open`).

use crate::Model;
use crate::entries::{Entries, Event, OpenCalls};
use crate::history::Operation;
use crate::linearized::Linearized;
use crate::memo::Memo;

/// What a finished search decided. Operation indices are local to the slice
/// that was searched.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Linearizable,
    NotLinearizable {
        /// The longest sequence of operations the search linearized.
        longest_prefix: Vec<usize>,
        /// The earliest-returning operation still pending after that prefix.
        stuck_at: Option<usize>,
    },
}

/// A search in progress.
pub(crate) struct Dfs<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Operation<M::Input, M::Output>],
    entries: Entries,
    /// Where open operations are tried: with the others or last.
    open_calls: OpenCalls,
    /// Which operations never change the state.
    read_only: Vec<bool>,
    state: M::State,
    linearized: Linearized,
    /// How many operations that returned are still to be linearized.
    known_left: usize,
    memo: Memo<M::State>,
    stack: Vec<Frame<M::State>>,
    longest: Longest,
    cursor: Cursor,
}

/// Where the search looks next.
#[derive(Clone, Copy)]
enum Cursor {
    /// Pass 1 at a node of the main list.
    Reads(Option<u32>),
    /// Pass 2 at a node of the main list (`None`: past its end, which its
    /// shape rules out; treated as "no return blocks anything").
    Others(Option<u32>),
    /// Pass 3 at a node of the open list, considering only open calls before
    /// `blocked`, the first return of the main list.
    Open { node: Option<u32>, blocked: Blocked },
}

/// The return event that ended pass 2: the earliest pending return.
#[derive(Clone, Copy)]
struct Blocked(Option<u32>);

impl Blocked {
    /// True if an open call at `node` precedes the blocking return.
    fn allows(self, node: u32) -> bool {
        self.0.is_none_or(|ret| node < ret)
    }
}

/// A linearized operation, with what backtracking past it must restore.
struct Frame<S> {
    call: u32,
    /// For an open call taken in pass 3: the `blocked` it was tried under.
    blocked: Blocked,
    state_before: S,
}

/// What became of an attempt to linearize an operation next.
enum Attempt {
    Linearized,
    /// The model does not accept its output in the current state.
    Rejected,
    /// The resulting configuration was entered before (or is dominated).
    Seen,
}

impl<'a, M: Model> Dfs<'a, M> {
    /// A search of `ops` (validated, fewer than `MAX_PARTITION_OPS`).
    pub(crate) fn new(
        model: &'a M,
        ops: &'a [&'a Operation<M::Input, M::Output>],
        open_calls: OpenCalls,
    ) -> Self {
        let entries = Entries::new(ops.iter().map(|op| (op.call, op.ret)), open_calls);
        let linearized = Linearized::new(ops.iter().map(|op| op.ret.is_none()));
        Self {
            model,
            ops,
            cursor: Cursor::Reads(entries.first()),
            entries,
            open_calls,
            read_only: ops.iter().map(|op| model.is_read_only(&op.input)).collect(),
            state: model.init(),
            memo: Memo::new(linearized.open().words().len()),
            linearized,
            known_left: ops.iter().filter(|op| op.ret.is_some()).count(),
            stack: Vec::with_capacity(ops.len()),
            longest: Longest::default(),
        }
    }

    /// Runs at most `steps` steps (tries of a candidate, or backtracks).
    pub(crate) fn run(&mut self, steps: u64) -> Option<Decision> {
        if self.known_left == 0 {
            return Some(Decision::Linearizable);
        }
        for _ in 0..steps {
            if let Some(decision) = self.step() {
                return Some(decision);
            }
        }
        None
    }

    fn step(&mut self) -> Option<Decision> {
        match self.cursor {
            Cursor::Reads(Some(node)) => self.step_reads(node),
            Cursor::Reads(None) => self.move_to(Cursor::Others(self.entries.first())),
            Cursor::Others(Some(node)) => self.step_others(node),
            Cursor::Others(None) => self.start_open_pass(Blocked(None)),
            Cursor::Open {
                node: Some(node),
                blocked,
            } if blocked.allows(node) => self.step_open(node, blocked),
            Cursor::Open { blocked, .. } => self.backtrack(Some(blocked)),
        }
    }

    fn step_reads(&mut self, node: u32) -> Option<Decision> {
        let next = Cursor::Reads(self.entries.after(node));
        match self.entries.event(node) {
            Event::Return => self.move_to(Cursor::Others(self.entries.first())),
            _ if self.is_committed_read(node) => {
                match self.try_linearize(node, Blocked(None)) {
                    Attempt::Linearized => self.restart(),
                    Attempt::Rejected => self.move_to(next),
                    // The read decides this configuration, and what follows
                    // it was explored before.
                    Attempt::Seen => self.backtrack(None),
                }
            }
            _ => self.move_to(next),
        }
    }

    fn step_others(&mut self, node: u32) -> Option<Decision> {
        let next = Cursor::Others(self.entries.after(node));
        match self.entries.event(node) {
            Event::Return => self.start_open_pass(Blocked(Some(node))),
            // Pass 1 found every read-only candidate rejected here.
            _ if self.is_committed_read(node) => self.move_to(next),
            Event::OpenCall if self.overwrites_previous_open(node) => self.move_to(next),
            _ => match self.try_linearize(node, Blocked(None)) {
                Attempt::Linearized => self.restart(),
                Attempt::Rejected | Attempt::Seen => self.move_to(next),
            },
        }
    }

    fn start_open_pass(&mut self, blocked: Blocked) -> Option<Decision> {
        let node = self.entries.first_open();
        self.move_to(Cursor::Open { node, blocked })
    }

    fn step_open(&mut self, node: u32, blocked: Blocked) -> Option<Decision> {
        let next = Cursor::Open {
            node: self.entries.after(node),
            blocked,
        };
        if self.overwrites_previous_open(node) {
            return self.move_to(next);
        }
        match self.try_linearize(node, blocked) {
            Attempt::Linearized => self.restart(),
            Attempt::Rejected | Attempt::Seen => self.move_to(next),
        }
    }

    /// True for the candidates of pass 1: read-only operations that returned.
    fn is_committed_read(&self, node: u32) -> bool {
        matches!(self.entries.event(node), Event::Call { .. })
            && self.read_only[self.entries.op(node)]
    }

    fn move_to(&mut self, cursor: Cursor) -> Option<Decision> {
        self.cursor = cursor;
        None
    }

    /// True if the open operation at `node`, linearized now, would leave the
    /// same state as if it had been linearized instead of the open operation
    /// linearized just before (which precedes it in its list). That sibling
    /// configuration has one open operation fewer and will be tried by the
    /// parent after this one, so it dominates this one.
    fn overwrites_previous_open(&self, node: u32) -> bool {
        let Some(previous) = self.stack.last() else {
            return false;
        };
        if self.entries.event(previous.call) != Event::OpenCall || previous.call > node {
            return false;
        }
        let op = self.ops[self.entries.op(node)];
        let (input, output) = (&op.input, op.output.as_ref());
        let instead = self.model.step(&previous.state_before, input, output);
        instead.is_some() && instead == self.model.step(&self.state, input, output)
    }

    /// Linearizes the operation called at `node` next, if the model accepts
    /// its output and the resulting configuration is new.
    fn try_linearize(&mut self, node: u32, blocked: Blocked) -> Attempt {
        let op = self.entries.op(node);
        let (input, output) = (&self.ops[op].input, self.ops[op].output.as_ref());
        let Some(next_state) = self.model.step(&self.state, input, output) else {
            return Attempt::Rejected;
        };
        self.linearized.insert(op);
        let (known, open) = (self.linearized.known(), self.linearized.open());
        if !self.memo.insert(known, open, &next_state) {
            self.linearized.remove(op);
            return Attempt::Seen;
        }
        self.stack.push(Frame {
            call: node,
            blocked,
            state_before: std::mem::replace(&mut self.state, next_state),
        });
        self.entries.lift(node);
        if self.entries.event(node) != Event::OpenCall {
            self.known_left -= 1;
        }
        Attempt::Linearized
    }

    /// After a linearization: done if every operation that returned is
    /// linearized, else scan the new configuration's candidates.
    fn restart(&mut self) -> Option<Decision> {
        if self.known_left == 0 {
            return Some(Decision::Linearizable);
        }
        self.move_to(Cursor::Reads(self.entries.first()))
    }

    /// A dead end (at the return `blocked`, if given): undo the latest
    /// linearization and move on to that operation's next sibling. A
    /// read-only operation has no sibling worth trying (see pass 1), so undo
    /// past it too.
    fn backtrack(&mut self, blocked: Option<Blocked>) -> Option<Decision> {
        if let Some(Blocked(ret)) = blocked {
            self.longest.record(&self.stack, &self.entries, ret);
        }
        loop {
            let Some(frame) = self.stack.pop() else {
                return Some(std::mem::take(&mut self.longest).into_violation());
            };
            let op = self.entries.op(frame.call);
            self.state = frame.state_before;
            self.linearized.remove(op);
            self.entries.unlift(frame.call);
            let event = self.entries.event(frame.call);
            if event != Event::OpenCall {
                self.known_left += 1;
            }
            if self.is_committed_read(frame.call) {
                continue;
            }
            let node = self.entries.after(frame.call);
            let cursor = match (event, self.open_calls) {
                (Event::OpenCall, OpenCalls::Apart) => Cursor::Open {
                    node,
                    blocked: frame.blocked,
                },
                _ => Cursor::Others(node),
            };
            return self.move_to(cursor);
        }
    }
}

/// The deepest dead end seen so far: the witness reported for a violation.
#[derive(Default)]
struct Longest {
    recorded: bool,
    prefix: Vec<usize>,
    stuck_at: Option<usize>,
}

impl Longest {
    /// Called at a dead end: `stack` is the current linearization and
    /// `blocked` the return event that stopped it. Only a strictly longer
    /// prefix replaces the previous one, so allocation happens at most once per
    /// new depth and ties keep the first (deterministic) witness.
    fn record<S>(&mut self, stack: &[Frame<S>], entries: &Entries, blocked: Option<u32>) {
        if self.recorded && stack.len() <= self.prefix.len() {
            return;
        }
        self.recorded = true;
        self.prefix.clear();
        self.prefix
            .extend(stack.iter().map(|frame| entries.op(frame.call)));
        self.stuck_at = blocked.map(|ret| entries.op(ret));
    }

    fn into_violation(self) -> Decision {
        Decision::NotLinearizable {
            longest_prefix: self.prefix,
            stuck_at: self.stuck_at,
        }
    }
}
