//! Backend identifiers on one upstream link (the `ph_conid` of the proxy
//! header and the per-element connection id of grouped begins).
//!
//! The GTM keys transactions by (link client id, identifier), and
//! `MSG_BACKEND_DISCONNECT` ends the transactions of one identifier, so an
//! identifier must name exactly one backend at a time. Rules:
//! * an identifier is handed out only while it is free;
//! * when its backend goes, it stays *draining* until nothing is in flight
//!   for it, and is freed only after that (the caller then sends
//!   `MSG_BACKEND_DISCONNECT` before anything a new holder sends);
//! * freed identifiers are reused oldest-first, so reuse is as late as
//!   possible;
//! * every holder gets a fresh generation, carried in each request's route,
//!   so an answer for a departed backend can never reach a newer one.

use std::collections::VecDeque;

/// Identifiers are non-negative `i16`: -1 is the GTM's "none / grouped".
pub const MAX_IDS: usize = i16::MAX as usize + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// Held by the backend with this slab key and generation.
    Live {
        key: usize,
        gen: u32,
        inflight: u32,
    },
    /// Its backend has gone; requests are still in flight.
    Draining {
        gen: u32,
        inflight: u32,
    },
}

#[derive(Debug)]
pub struct ConnIds {
    slots: Vec<Slot>,
    free: VecDeque<i16>,
    next_gen: u32,
    limit: usize,
}

/// What happened to an identifier when its in-flight count changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Still in use.
    No,
    /// The departed backend's last request was answered: the identifier is
    /// free now and `MSG_BACKEND_DISCONNECT` must be sent for it.
    Drained,
}

impl ConnIds {
    pub fn new(limit: usize) -> Self {
        ConnIds { slots: Vec::new(), free: VecDeque::new(), next_gen: 1, limit: limit.clamp(1, MAX_IDS) }
    }

    /// Identifiers that are not free (live or draining).
    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Take an identifier for the backend with slab key `key`.
    pub fn alloc(&mut self, key: usize) -> Option<(i16, u32)> {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let id = if let Some(id) = self.free.pop_front() {
            id
        } else if self.slots.len() < self.limit {
            self.slots.push(Slot::Free);
            (self.slots.len() - 1) as i16
        } else {
            return None;
        };
        self.slots[id as usize] = Slot::Live { key, gen, inflight: 0 };
        Some((id, gen))
    }

    /// The backend currently holding `id` if it is still the one of
    /// generation `gen`.
    pub fn lookup(&self, id: i16, gen: u32) -> Option<usize> {
        match self.slots.get(usize::try_from(id).ok()?) {
            Some(Slot::Live { key, gen: g, .. }) if *g == gen => Some(*key),
            _ => None,
        }
    }

    /// A request for (`id`, `gen`) was queued or sent.
    pub fn add_inflight(&mut self, id: i16, gen: u32) {
        if let Some(Slot::Live { gen: g, inflight, .. } | Slot::Draining { gen: g, inflight }) =
            self.slots.get_mut(id as usize)
        {
            if *g == gen {
                *inflight += 1;
            }
        }
    }

    /// A request for (`id`, `gen`) was answered or dropped.
    pub fn done_inflight(&mut self, id: i16, gen: u32) -> Released {
        let Some(slot) = self.slots.get_mut(id as usize) else { return Released::No };
        match slot {
            Slot::Live { gen: g, inflight, .. } if *g == gen => {
                *inflight = inflight.saturating_sub(1);
                Released::No
            }
            Slot::Draining { gen: g, inflight } if *g == gen => {
                *inflight = inflight.saturating_sub(1);
                if *inflight == 0 {
                    *slot = Slot::Free;
                    self.free.push_back(id);
                    Released::Drained
                } else {
                    Released::No
                }
            }
            _ => Released::No,
        }
    }

    /// The backend holding `id` has gone. Returns `Drained` when nothing was
    /// in flight (the identifier is free now).
    pub fn release(&mut self, id: i16, gen: u32) -> Released {
        let Some(slot) = self.slots.get_mut(id as usize) else { return Released::No };
        match *slot {
            Slot::Live { gen: g, inflight, .. } if g == gen => {
                if inflight == 0 {
                    *slot = Slot::Free;
                    self.free.push_back(id);
                    Released::Drained
                } else {
                    *slot = Slot::Draining { gen, inflight };
                    Released::No
                }
            }
            _ => Released::No,
        }
    }

    pub fn inflight(&self, id: i16) -> u32 {
        match self.slots.get(id as usize) {
            Some(Slot::Live { inflight, .. } | Slot::Draining { inflight, .. }) => *inflight,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_reused_while_in_flight() {
        let mut ids = ConnIds::new(2);
        let (a, ga) = ids.alloc(10).unwrap();
        let (b, _) = ids.alloc(11).unwrap();
        assert_ne!(a, b);
        assert!(ids.alloc(12).is_none(), "limit reached");
        ids.add_inflight(a, ga);
        assert_eq!(ids.release(a, ga), Released::No);
        assert!(ids.alloc(12).is_none(), "draining id is not reused");
        assert_eq!(ids.lookup(a, ga), None, "a departed backend is never found");
        assert_eq!(ids.done_inflight(a, ga), Released::Drained);
        let (c, gc) = ids.alloc(12).unwrap();
        assert_eq!(c, a);
        assert_ne!(gc, ga);
        assert_eq!(ids.lookup(c, ga), None, "old generation does not reach the new holder");
        assert_eq!(ids.lookup(c, gc), Some(12));
        // A late completion for the old generation changes nothing: the new
        // holder's count (1, so a wrong decrement would show) stays.
        ids.add_inflight(c, gc);
        assert_eq!(ids.done_inflight(c, ga), Released::No);
        assert_eq!(ids.inflight(c), 1);
    }

    #[test]
    fn reuse_is_oldest_first() {
        let mut ids = ConnIds::new(100);
        let got: Vec<_> = (0..3).map(|k| ids.alloc(k).unwrap()).collect();
        // Released in an order no lowest-first or highest-first policy follows.
        for i in [1, 2, 0] {
            assert_eq!(ids.release(got[i].0, got[i].1), Released::Drained);
        }
        let reused: Vec<i16> = (7..10).map(|k| ids.alloc(k).unwrap().0).collect();
        assert_eq!(reused, vec![got[1].0, got[2].0, got[0].0]);
    }
}
