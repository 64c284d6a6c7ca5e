//! The GXIDs this worker handed out, per backend, and what became of them.
//!
//! Used for three failover rules:
//! * a snapshot request naming a GXID that is still open here but that the
//!   GTM answers "not found" means the GTM lost the transaction: the backend
//!   must get an error, never a snapshot in which its own transaction looks
//!   finished;
//! * commit/rollback of a GXID handed out before the link was lost, which the
//!   GTM no longer knows, is done (the transaction is open nowhere);
//! * a GTM that hands out a GXID not above the highest one handed out before
//!   the current link was set up is refused (no duplicate transaction ids).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use super::batch::Route;

/// `a` comes after `b` in GXID order (`GlobalTransactionIdFollows`).
pub fn gxid_after(a: u32, b: u32) -> bool {
    crate::codec::types::gxid_precedes(b, a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GxState {
    /// Handed out; no end seen.
    Open,
    /// A commit, rollback or prepare was sent; its outcome may be under way.
    InDoubt,
    /// An autovacuum transaction (`MSG_TXN_BEGIN_GETGXID_AUTOVACUUM`). XL
    /// backends never end these at the GTM: a direct link's close does, but
    /// the GTM records them without a backend id, so
    /// `MSG_BACKEND_DISCONNECT` does not. The proxy ends them itself when
    /// their backend leaves; they are excluded from snapshots, so ending
    /// them cannot change what any transaction sees.
    Vacuum,
}

#[derive(Debug, Default)]
pub struct Ledger {
    by_gxid: HashMap<u32, (Route, GxState)>,
}

impl Ledger {
    pub fn begun(&mut self, route: Route, gxid: u32) {
        self.by_gxid.insert(gxid, (route, GxState::Open));
    }

    pub fn begun_vacuum(&mut self, route: Route, gxid: u32) {
        self.by_gxid.insert(gxid, (route, GxState::Vacuum));
    }

    /// A commit, rollback or prepare was sent for `gxid`.
    pub fn ending(&mut self, gxid: u32) {
        if let Some(e) = self.by_gxid.get_mut(&gxid) {
            if e.1 == GxState::Open {
                e.1 = GxState::InDoubt;
            }
        }
    }

    pub fn ended(&mut self, gxid: u32) {
        self.by_gxid.remove(&gxid);
    }

    pub fn state(&self, gxid: u32) -> Option<GxState> {
        self.by_gxid.get(&gxid).map(|e| e.1)
    }

    pub fn is_open(&self, gxid: u32) -> bool {
        self.state(gxid) == Some(GxState::Open)
    }

    /// A backend left: forget its GXIDs (what the GTM does with them is the
    /// business of `MSG_BACKEND_DISCONNECT`). Returns the ones not ended.
    pub fn forget_backend(&mut self, conn: i16, gen: u32) -> Vec<(u32, GxState)> {
        let gone: Vec<(u32, GxState)> = self
            .by_gxid
            .iter()
            .filter(|(_, (r, _))| r.conn == conn && r.gen == gen)
            .map(|(g, (_, s))| (*g, *s))
            .collect();
        for (g, _) in &gone {
            self.by_gxid.remove(g);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.by_gxid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_gxid.is_empty()
    }
}

/// The highest GXID any worker of this proxy has handed out.
#[derive(Debug, Default)]
pub struct HighWater(AtomicU32);

impl HighWater {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    pub fn observe(&self, gxid: u32) {
        let mut cur = self.0.load(Ordering::Acquire);
        while cur == 0 || gxid_after(gxid, cur) {
            match self.0.compare_exchange_weak(cur, gxid, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circular_order() {
        assert!(gxid_after(10001, 10000));
        assert!(!gxid_after(10000, 10000));
        assert!(!gxid_after(9999, 10000));
        assert!(gxid_after(3, u32::MAX - 5), "wrap-around");
    }

    #[test]
    fn high_water_only_rises() {
        let h = HighWater::default();
        h.observe(10005);
        h.observe(10001);
        assert_eq!(h.get(), 10005);
        h.observe(10010);
        assert_eq!(h.get(), 10010);
    }

    #[test]
    fn ledger_lifecycle() {
        let r = Route { conn: 3, gen: 9 };
        let mut l = Ledger::default();
        l.begun(r, 100);
        l.begun(r, 101);
        assert!(l.is_open(100));
        l.ending(100);
        assert_eq!(l.state(100), Some(GxState::InDoubt));
        l.ended(101);
        assert_eq!(l.forget_backend(3, 9), vec![(100, GxState::InDoubt)]);
        assert!(l.is_empty());
    }
}
