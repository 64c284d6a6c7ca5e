//! A small timer set for an event loop: deadlines in a binary heap, each
//! with a handle, cancelled lazily. The loop asks [`Timers::next_timeout`]
//! for its poll timeout and then drains [`Timers::expired`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::{Duration, Instant};

/// Identifies one armed timer; used to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

#[derive(Debug)]
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    payload: std::collections::HashMap<u64, T>,
    cancelled: HashSet<u64>,
    next: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new(), payload: Default::default(), cancelled: HashSet::new(), next: 0 }
    }
}

impl<T> Timers<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn arm(&mut self, at: Instant, what: T) -> TimerId {
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse((at, id)));
        self.payload.insert(id, what);
        TimerId(id)
    }

    pub fn arm_in(&mut self, now: Instant, after: Duration, what: T) -> TimerId {
        self.arm(now + after, what)
    }

    pub fn cancel(&mut self, id: TimerId) {
        if self.payload.remove(&id.0).is_some() {
            self.cancelled.insert(id.0);
        }
    }

    pub fn is_armed(&self, id: TimerId) -> bool {
        self.payload.contains_key(&id.0)
    }

    pub fn len(&self) -> usize {
        self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    fn skip_cancelled(&mut self) {
        while let Some(Reverse((_, id))) = self.heap.peek() {
            if self.cancelled.remove(id) {
                self.heap.pop();
            } else {
                break;
            }
        }
    }

    /// How long the loop may sleep; None when no timer is armed.
    pub fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        self.skip_cancelled();
        self.heap.peek().map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// Remove and return every timer due at `now`, earliest first.
    pub fn expired(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        loop {
            self.skip_cancelled();
            match self.heap.peek() {
                Some(Reverse((at, _))) if *at <= now => {
                    let Some(Reverse((_, id))) = self.heap.pop() else { break };
                    if let Some(p) = self.payload.remove(&id) {
                        out.push(p);
                    }
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_honours_cancel() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.arm(t0 + Duration::from_millis(30), "c");
        let b = t.arm(t0 + Duration::from_millis(20), "b");
        t.arm(t0 + Duration::from_millis(10), "a");
        assert_eq!(t.next_timeout(t0), Some(Duration::from_millis(10)));
        t.cancel(b);
        assert!(!t.is_armed(b));
        assert_eq!(t.expired(t0 + Duration::from_millis(5)), Vec::<&str>::new());
        assert_eq!(t.expired(t0 + Duration::from_millis(40)), vec!["a", "c"]);
        assert!(t.is_empty());
        assert_eq!(t.next_timeout(t0), None);
    }
}
