//! The history as doubly linked lists of call and return events in time
//! order, as in Wing & Gong's algorithm and porcupine.
//!
//! Linearizing an operation "lifts" its events out of the lists;
//! backtracking puts them back. Because backtracking is strictly last-in,
//! first-out, a removed node still remembers its neighbours and can be
//! relinked in O(1) (the "dancing links" trick). Nodes live in index-based
//! arrays: no pointers, no reference counting, no allocation while searching.
//!
//! An operation may be linearized next iff it was called before every other
//! unlinearized operation returned: exactly the calls in front of the first
//! return event in the *main* list. Operations with an unknown outcome
//! ("open" operations) never return, so their calls either sit in the main
//! list at their time, as in porcupine, or apart in an *open* list, for a
//! search that tries them last. Then one is available iff its call came
//! before that first return, which is a comparison of node numbers because
//! nodes are numbered in time order.

/// Marks "no node" in the link arrays.
const NONE: u32 = u32::MAX;
/// The sentinel in front of the main list.
const MAIN_HEAD: u32 = 0;
/// The sentinel in front of the open list.
const OPEN_HEAD: u32 = 1;
/// The first event node; events are numbered in time order from here.
const FIRST_EVENT: u32 = 2;

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A list's sentinel.
    Head,
    /// The call of an operation that returned, at node `ret`.
    Call { ret: u32 },
    /// The return of an operation.
    Return,
    /// The call of an operation with an unknown outcome (it never returns).
    OpenCall,
}

/// Where the calls of open operations go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenCalls {
    /// In the main list, in time order with everything else.
    InTimeOrder,
    /// In the open list.
    Apart,
}

/// Two lists over one set of nodes: the sentinels, then one node per event.
pub(crate) struct Entries {
    next: Vec<u32>,
    prev: Vec<u32>,
    /// The operation (index into the partition) each node belongs to.
    op: Vec<u32>,
    event: Vec<Event>,
}

/// When an event happens. Calls sort before returns at the same instant, so
/// operations whose intervals merely touch count as concurrent: a checker must
/// never report a violation that a coarse clock could have invented.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EventKey {
    time: u64,
    is_return: bool,
    op: u32,
}

impl Entries {
    /// Builds the lists from each operation's `(call, ret)` times, `ret: None`
    /// meaning the outcome is unknown. The caller guarantees `ret >= call` and
    /// fewer than `u32::MAX / 2 - 2` operations.
    pub(crate) fn new(
        times: impl ExactSizeIterator<Item = (u64, Option<u64>)>,
        open_calls: OpenCalls,
    ) -> Self {
        let mut events = Vec::with_capacity(2 * times.len());
        let mut open = Vec::with_capacity(times.len());
        for (op, (call, ret)) in (0u32..).zip(times) {
            events.push(EventKey {
                time: call,
                is_return: false,
                op,
            });
            if let Some(time) = ret {
                events.push(EventKey {
                    time,
                    is_return: true,
                    op,
                });
            }
            open.push(ret.is_none());
        }
        events.sort_unstable();
        Self::link(&events, &open, open_calls)
    }

    /// Numbers the sorted events from `FIRST_EVENT` and threads the two
    /// lists; `open[op]` says whether operation `op` never returns.
    fn link(events: &[EventKey], open: &[bool], open_calls: OpenCalls) -> Self {
        let len = FIRST_EVENT as usize + events.len();
        let mut entries = Self {
            next: vec![NONE; len],
            prev: vec![NONE; len],
            op: vec![NONE; len],
            event: vec![Event::Head; len],
        };
        let mut call_node = vec![NONE; open.len()];
        let (mut main_tail, mut open_tail) = (MAIN_HEAD, OPEN_HEAD);
        for (node, key) in (FIRST_EVENT..).zip(events) {
            let op = key.op as usize;
            entries.op[node as usize] = key.op;
            let tail = if key.is_return {
                entries.event[node as usize] = Event::Return;
                entries.event[call_node[op] as usize] = Event::Call { ret: node };
                &mut main_tail
            } else if open[op] {
                entries.event[node as usize] = Event::OpenCall;
                match open_calls {
                    OpenCalls::InTimeOrder => &mut main_tail,
                    OpenCalls::Apart => &mut open_tail,
                }
            } else {
                call_node[op] = node;
                &mut main_tail
            };
            entries.next[*tail as usize] = node;
            entries.prev[node as usize] = *tail;
            *tail = node;
        }
        entries
    }

    /// The first event of the main list; `None` once every operation that
    /// returned has been linearized.
    pub(crate) fn first(&self) -> Option<u32> {
        self.after(MAIN_HEAD)
    }

    /// The earliest open call not yet linearized.
    pub(crate) fn first_open(&self) -> Option<u32> {
        self.after(OPEN_HEAD)
    }

    /// The node after `node` in its list.
    pub(crate) fn after(&self, node: u32) -> Option<u32> {
        Some(self.next[node as usize]).filter(|&next| next != NONE)
    }

    /// What `node` stands for.
    pub(crate) fn event(&self, node: u32) -> Event {
        self.event[node as usize]
    }

    /// The operation `node` belongs to.
    pub(crate) fn op(&self, node: u32) -> usize {
        self.op[node as usize] as usize
    }

    /// Removes a call and, if it has one, its return from the lists.
    pub(crate) fn lift(&mut self, call: u32) {
        self.unlink(call);
        if let Event::Call { ret } = self.event(call) {
            self.unlink(ret);
        }
    }

    /// Undoes the most recent `lift`, which must have been of `call`.
    pub(crate) fn unlift(&mut self, call: u32) {
        if let Event::Call { ret } = self.event(call) {
            self.relink(ret);
        }
        self.relink(call);
    }

    fn unlink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = next;
        if next != NONE {
            self.prev[next as usize] = prev;
        }
    }

    fn relink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = node;
        if next != NONE {
            self.prev[next as usize] = node;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list's events as (op, event), front to back.
    fn walk(entries: &Entries, first: Option<u32>) -> Vec<(usize, Event)> {
        let mut out = Vec::new();
        let mut cursor = first;
        while let Some(node) = cursor {
            out.push((entries.op(node), entries.event(node)));
            cursor = entries.after(node);
        }
        out
    }

    fn ops(list: Vec<(usize, Event)>) -> Vec<(usize, bool)> {
        list.into_iter()
            .map(|(op, event)| (op, event != Event::Return))
            .collect()
    }

    #[test]
    fn events_are_in_time_order_with_calls_first_and_open_calls_apart() {
        // op 0: [0, 5]; op 1: [5, 9]; op 2: [1, never]
        let times = [(0, Some(5)), (5, Some(9)), (1, None)];
        let entries = Entries::new(times.into_iter(), OpenCalls::Apart);
        let main = walk(&entries, entries.first());
        assert_eq!(
            ops(main),
            vec![(0, true), (1, true), (0, false), (1, false)]
        );
        let open = walk(&entries, entries.first_open());
        assert_eq!(open, vec![(2, Event::OpenCall)]);
        let together = Entries::new(times.into_iter(), OpenCalls::InTimeOrder);
        assert_eq!(
            walk(&together, together.first())[..2],
            [(0, Event::Call { ret: 5 }), (2, Event::OpenCall)]
        );
        assert_eq!(together.first_open(), None);
        // Node numbers follow time: the open call (t=1) precedes op 0's return (t=5).
        let open_call = entries.first_open().unwrap();
        let first_return = (FIRST_EVENT..).find(|&n| entries.event(n) == Event::Return);
        assert!(open_call < first_return.unwrap());
    }

    #[test]
    fn lift_and_unlift_restore_the_lists() {
        let times = [(0, Some(3)), (1, Some(2)), (4, Some(6)), (0, None)];
        let mut entries = Entries::new(times.into_iter(), OpenCalls::Apart);
        let before = walk(&entries, entries.first());
        let second = entries.after(entries.first().unwrap()).unwrap();
        assert_eq!(entries.op(second), 1);
        entries.lift(second);
        let first = entries.first().unwrap();
        entries.lift(first);
        let open = entries.first_open().unwrap();
        entries.lift(open);
        assert_eq!(
            ops(walk(&entries, entries.first())),
            vec![(2, true), (2, false)]
        );
        assert_eq!(entries.first_open(), None);
        entries.unlift(open);
        entries.unlift(first);
        entries.unlift(second);
        assert_eq!(walk(&entries, entries.first()), before);
        assert_eq!(entries.first_open(), Some(open));
    }
}
