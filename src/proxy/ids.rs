//! Backend identifiers on one upstream link (the `ph_conid` of the proxy
//! header and the per-element connection id of grouped begins).
//!
//! The GTM keys transactions by (link client id, identifier), and
//! `MSG_BACKEND_DISCONNECT` ends the transactions of one identifier, so an
//! identifier must name exactly one backend at a time. Rules:
//! * an identifier is handed out only while it is free;
//! * when its backend goes with a request outstanding (a backend has at
//!   most one), it stays *draining*, holding the backend's
//!   `MSG_BACKEND_DISCONNECT`, until that request is settled; only then is
//!   it freed, and the caller sends the disconnect before anything a new
//!   holder sends;
//! * freed identifiers are reused oldest-first, so reuse is as late as
//!   possible;
//! * every holder gets a fresh generation, carried in each request's route,
//!   so an answer for a departed backend can never reach a newer one.

use std::collections::VecDeque;

/// Identifiers are non-negative `i16`: -1 is the GTM's "none / grouped".
pub const MAX_IDS: usize = i16::MAX as usize + 1;

/// Test hook (never set in production): `GTM_PROXY_TEST_IDS_PER_LINK=<n>`
/// gives each link only `n` identifiers, so that running out of them can be
/// tested end to end without 32,768 connections (more descriptors than a
/// test machine may grant).
pub const TEST_IDS_ENV: &str = "GTM_PROXY_TEST_IDS_PER_LINK";

/// Identifiers per link: [`MAX_IDS`], unless the test hook lowers it.
pub fn ids_per_link() -> usize {
    std::env::var(TEST_IDS_ENV).ok().and_then(|v| v.parse().ok()).map_or(MAX_IDS, |n: usize| n.clamp(1, MAX_IDS))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot<D> {
    Free,
    /// Held by the backend with this slab key and generation.
    Live {
        key: usize,
        gen: u32,
    },
    /// Its backend has gone while a request was outstanding; `disconnect`
    /// is sent once that request is settled.
    Draining {
        gen: u32,
        disconnect: Option<D>,
    },
}

/// The identifiers of one link. `D` is what must be sent when an identifier
/// is freed (the backend's `MSG_BACKEND_DISCONNECT`).
#[derive(Debug)]
pub struct ConnIds<D> {
    slots: Vec<Slot<D>>,
    free: VecDeque<i16>,
    next_gen: u32,
    limit: usize,
}

impl<D> ConnIds<D> {
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
        self.slots[id as usize] = Slot::Live { key, gen };
        Some((id, gen))
    }

    /// The backend currently holding `id` if it is still the one of
    /// generation `gen`.
    pub fn lookup(&self, id: i16, gen: u32) -> Option<usize> {
        match self.slots.get(usize::try_from(id).ok()?) {
            Some(Slot::Live { key, gen: g }) if *g == gen => Some(*key),
            _ => None,
        }
    }

    /// The backend holding (`id`, `gen`) has gone. Without a request
    /// `outstanding` the identifier is free at once and `disconnect` is
    /// returned, to be sent now; otherwise it drains, keeping `disconnect`
    /// until [`ConnIds::settled`].
    pub fn release(&mut self, id: i16, gen: u32, outstanding: bool, disconnect: Option<D>) -> Option<D> {
        let slot = self.slots.get_mut(usize::try_from(id).ok()?)?;
        match slot {
            Slot::Live { gen: g, .. } if *g == gen => {
                if outstanding {
                    *slot = Slot::Draining { gen, disconnect };
                    None
                } else {
                    *slot = Slot::Free;
                    self.free.push_back(id);
                    disconnect
                }
            }
            _ => None,
        }
    }

    /// A request of (`id`, `gen`) was answered or failed. If that was the
    /// last thing a departed backend waited for, the identifier is free now
    /// and its disconnect is returned, to be sent before anything a new
    /// holder sends.
    pub fn settled(&mut self, id: i16, gen: u32) -> Option<D> {
        let slot = self.slots.get_mut(usize::try_from(id).ok()?)?;
        match slot {
            Slot::Draining { gen: g, disconnect } if *g == gen => {
                let d = disconnect.take();
                *slot = Slot::Free;
                self.free.push_back(id);
                d
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_reused_while_draining() {
        let mut ids = ConnIds::new(2);
        let (a, ga) = ids.alloc(10).unwrap();
        let (b, _) = ids.alloc(11).unwrap();
        assert_ne!(a, b);
        assert!(ids.alloc(12).is_none(), "limit reached");
        assert_eq!(ids.release(a, ga, true, Some("bye a")), None, "drains while its request is outstanding");
        assert!(ids.alloc(12).is_none(), "draining id is not reused");
        assert_eq!(ids.lookup(a, ga), None, "a departed backend is never found");
        assert_eq!(ids.settled(a, ga), Some("bye a"), "the disconnect goes out once settled");
        let (c, gc) = ids.alloc(12).unwrap();
        assert_eq!(c, a);
        assert_ne!(gc, ga);
        assert_eq!(ids.lookup(c, ga), None, "old generation does not reach the new holder");
        assert_eq!(ids.lookup(c, gc), Some(12));
        // A late settlement for the old generation changes nothing, also
        // when the new holder is draining itself (a settlement that ignored
        // the generation would free it here).
        assert_eq!(ids.settled(c, ga), None);
        assert_eq!(ids.lookup(c, gc), Some(12));
        assert_eq!(ids.release(c, gc, true, Some("bye c")), None);
        assert_eq!(ids.settled(c, ga), None, "the old generation does not settle the new holder's request");
        assert_eq!(ids.in_use(), 2);
        assert_eq!(ids.settled(c, gc), Some("bye c"));
    }

    #[test]
    fn an_idle_backend_frees_its_id_at_once() {
        let mut ids = ConnIds::new(1);
        let (a, ga) = ids.alloc(10).unwrap();
        assert_eq!(ids.settled(a, ga), None, "a live holder is not freed by a settlement");
        assert_eq!(ids.release(a, ga, false, Some("bye")), Some("bye"));
        assert_eq!(ids.in_use(), 0);
        assert!(ids.alloc(11).is_some());
    }

    #[test]
    fn reuse_is_oldest_first() {
        let mut ids = ConnIds::<()>::new(100);
        let got: Vec<_> = (0..3).map(|k| ids.alloc(k).unwrap()).collect();
        // Released in an order no lowest-first or highest-first policy follows.
        for i in [1, 2, 0] {
            assert_eq!(ids.release(got[i].0, got[i].1, false, None), None);
        }
        assert_eq!(ids.in_use(), 0);
        let reused: Vec<i16> = (7..10).map(|k| ids.alloc(k).unwrap().0).collect();
        assert_eq!(reused, vec![got[1].0, got[2].0, got[0].0]);
    }
}
