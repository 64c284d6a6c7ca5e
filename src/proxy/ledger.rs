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
//!   the current link was set up is refused (no duplicate transaction ids);
//! * GXIDs handed out before a link loss are marked *old* until they end.
//!   On the next GTM the (client id, backend id) keys of old transactions
//!   are not reliable (a promoted standby records the client id of its
//!   backup link for transactions replicated after its start, and a link
//!   that did not get its old client id back has a new key anyway), so the
//!   worker ends old GXIDs of departing backends by GXID, and an identifier
//!   with old work on a promoted standby is treated specially until that
//!   work has ended (see the worker's `departure`). A GTM that is behind
//!   the proxy (it hands out GXIDs already handed out) drops the marks: the
//!   old numbers may be someone else's there.

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

#[derive(Debug, Clone, Copy)]
struct Entry {
    route: Route,
    state: GxState,
    /// Handed out before the last link loss (see the module docs).
    old: bool,
}

#[derive(Debug, Default)]
pub struct Ledger {
    by_gxid: HashMap<u32, Entry>,
    /// Old GXIDs per backend identifier.
    old_by_conn: HashMap<i16, u32>,
}

impl Ledger {
    pub fn begun(&mut self, route: Route, gxid: u32) {
        self.insert(gxid, Entry { route, state: GxState::Open, old: false });
    }

    pub fn begun_vacuum(&mut self, route: Route, gxid: u32) {
        self.insert(gxid, Entry { route, state: GxState::Vacuum, old: false });
    }

    fn insert(&mut self, gxid: u32, e: Entry) {
        if let Some(prev) = self.by_gxid.insert(gxid, e) {
            self.unmark(&prev);
        }
    }

    fn unmark(&mut self, e: &Entry) {
        if e.old {
            if let Some(n) = self.old_by_conn.get_mut(&e.route.conn) {
                *n -= 1;
                if *n == 0 {
                    self.old_by_conn.remove(&e.route.conn);
                }
            }
        }
    }

    /// The link was lost: every GXID handed out so far is old.
    pub fn mark_old(&mut self) {
        for e in self.by_gxid.values_mut() {
            if !e.old {
                e.old = true;
                *self.old_by_conn.entry(e.route.conn).or_insert(0) += 1;
            }
        }
    }

    /// The new link is not a promoted standby: nothing is old any more.
    pub fn clear_old(&mut self) {
        for e in self.by_gxid.values_mut() {
            e.old = false;
        }
        self.old_by_conn.clear();
    }

    /// GXIDs from before the last link loss, in all.
    pub fn old_count(&self) -> u32 {
        self.old_by_conn.values().sum()
    }

    /// The identifier `conn` has GXIDs from before the last link loss.
    pub fn has_old_work(&self, conn: i16) -> bool {
        self.old_by_conn.contains_key(&conn)
    }

    /// A commit, rollback or prepare was sent for `gxid`.
    pub fn ending(&mut self, gxid: u32) {
        if let Some(e) = self.by_gxid.get_mut(&gxid) {
            if e.state == GxState::Open {
                e.state = GxState::InDoubt;
            }
        }
    }

    pub fn ended(&mut self, gxid: u32) {
        if let Some(e) = self.by_gxid.remove(&gxid) {
            self.unmark(&e);
        }
    }

    pub fn state(&self, gxid: u32) -> Option<GxState> {
        self.by_gxid.get(&gxid).map(|e| e.state)
    }

    pub fn is_open(&self, gxid: u32) -> bool {
        self.state(gxid) == Some(GxState::Open)
    }

    /// A backend left: forget its GXIDs (what the GTM does with them is the
    /// business of `MSG_BACKEND_DISCONNECT`). Returns the ones not ended,
    /// each with its state and whether it is old.
    pub fn forget_backend(&mut self, conn: i16, gen: u32) -> Vec<(u32, GxState, bool)> {
        let gone: Vec<(u32, GxState, bool)> = self
            .by_gxid
            .iter()
            .filter(|(_, e)| e.route.conn == conn && e.route.gen == gen)
            .map(|(g, e)| (*g, e.state, e.old))
            .collect();
        for (g, _, _) in &gone {
            self.ended(*g);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.by_gxid.len()
    }

    /// Transactions open or ending here, autovacuum ones excepted (they
    /// run for as long as a table takes, and the proxy ends them itself
    /// when their backend leaves). A scan: for stopping only.
    pub fn open_transactions(&self) -> usize {
        self.by_gxid.values().filter(|e| e.state != GxState::Vacuum).count()
    }

    /// `route` has a transaction open or ending here (autovacuum excepted).
    /// A scan: for stopping only.
    pub fn has_open(&self, route: Route) -> bool {
        self.by_gxid.values().any(|e| e.route == route && e.state != GxState::Vacuum)
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
    fn open_transactions_leave_out_autovacuum() {
        let (a, b) = (Route { conn: 1, gen: 1 }, Route { conn: 2, gen: 1 });
        let mut l = Ledger::default();
        l.begun(a, 100);
        l.begun_vacuum(b, 101);
        assert_eq!(l.open_transactions(), 1);
        assert!(l.has_open(a));
        assert!(!l.has_open(b), "an autovacuum transaction does not count");
        assert!(!l.has_open(Route { conn: 1, gen: 2 }), "an identifier's later holder is another backend");
        l.ending(100);
        assert_eq!(l.open_transactions(), 1, "a commit under way still counts");
        assert!(l.has_open(a));
        l.ended(100);
        assert_eq!(l.open_transactions(), 0);
        assert!(!l.has_open(a));
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
        assert_eq!(l.forget_backend(3, 9), vec![(100, GxState::InDoubt, false)]);
        assert!(l.is_empty());
    }

    #[test]
    fn old_work_is_per_identifier_and_ends_with_its_gxids() {
        let (a, b) = (Route { conn: 1, gen: 1 }, Route { conn: 2, gen: 1 });
        let mut l = Ledger::default();
        l.begun(a, 10);
        l.begun(a, 11);
        l.begun(b, 12);
        l.mark_old();
        l.begun(b, 13);
        assert!(l.has_old_work(1) && l.has_old_work(2));
        assert_eq!(l.old_count(), 3);
        l.ended(10);
        assert!(l.has_old_work(1), "one old GXID of identifier 1 is left");
        l.ended(11);
        assert!(!l.has_old_work(1), "back to normal once its old work has ended");
        assert_eq!(l.forget_backend(2, 1).len(), 2);
        assert!(!l.has_old_work(2));
        assert_eq!(l.old_count(), 0);
        l.begun(a, 14);
        l.mark_old();
        l.mark_old();
        assert_eq!(l.old_count(), 1, "marking twice counts once");
        l.clear_old();
        assert!(!l.has_old_work(1));
        l.ended(14);
        assert_eq!(l.old_count(), 0);
    }
}
