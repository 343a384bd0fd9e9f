//! The simulator's event queue: earliest time first, ties broken by insertion order, so
//! a run is deterministic. The heap holds only small keys; events wait in a slab, since
//! sifting whole events (messages and all) through the heap was a fifth of the run time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ekmat_core::Time;

#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<(Time, u64, u32)>>,
    slab: Vec<Option<E>>,
    free: Vec<u32>,
    order: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            order: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn push(&mut self, at: Time, event: E) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(event);
                slot
            }
            None => {
                self.slab.push(Some(event));
                u32::try_from(self.slab.len() - 1).expect("fewer than 2^32 pending events")
            }
        };
        self.order += 1;
        self.heap.push(Reverse((at, self.order, slot)));
    }

    pub fn pop(&mut self) -> Option<(Time, E)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let event = self.slab[slot as usize]
            .take()
            .expect("a queued slot holds its event");
        self.free.push(slot);
        Some((at, event))
    }

    /// When the next event is due.
    pub fn next_time(&self) -> Option<Time> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_ties_in_insertion_order() {
        let mut q = EventQueue::default();
        q.push(Time(5), "late");
        q.push(Time(1), "first");
        q.push(Time(1), "second");
        q.push(Time(3), "middle");
        let order: Vec<&str> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["first", "second", "middle", "late"]);
        assert!(q.pop().is_none());
    }

    #[test]
    fn slots_are_reused() {
        let mut q = EventQueue::default();
        for round in 0..10 {
            q.push(Time(round), round);
            q.push(Time(round), round + 100);
            q.pop();
            q.pop();
        }
        assert!(q.slab.len() <= 2);
    }
}
