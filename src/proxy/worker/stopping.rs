//! A worker's part of a stop (the modes are described in
//! [`crate::proxy::stop`], whose timeline the main thread owns; the worker
//! does what the mode in force asks):
//! * smart: a backend with no transaction open here may not begin one,
//!   and once nothing is open, held or owed the worker tells the main
//!   thread it is drained;
//! * fast: no new request goes out; held requests are answered with an
//!   error; backends are closed once their answer is in, or after
//!   [`FAST_ANSWER_WAIT`] at the latest;
//! * immediate: the worker ends.

use std::sync::atomic::Ordering;
use std::time::Instant;

use log::info;

use super::{StopMode, Worker};
use crate::codec::Request;
use crate::proxy::batch::Route;
use crate::proxy::stop::FAST_ANSWER_WAIT;
use crate::proxy::SHUTTING_DOWN;

impl Worker {
    /// An order to stop, or to stop more strictly.
    pub(super) fn on_stop(&mut self, mode: StopMode, now: Instant) {
        if self.stopping.is_some_and(|(cur, _)| cur >= mode) {
            return;
        }
        info!("{mode:?} shutdown");
        self.stopping = Some((mode, now));
        if mode == StopMode::Fast && !self.up.is_ready() {
            self.fail_held();
        }
    }

    /// Why a request is refused because of the stop under way, if it is.
    pub(super) fn stop_refusal(&self, route: Route, req: &Request) -> Option<String> {
        match self.stopping? {
            (StopMode::Smart, _) if begins(req) && !self.ledger.has_open(route) => {
                Some(format!("{SHUTTING_DOWN}: no new transaction is started"))
            }
            (StopMode::Smart, _) => None,
            _ => Some(SHUTTING_DOWN.to_string()),
        }
    }

    /// Advance the stop after each round; true once the worker may end.
    pub(super) fn stop_step(&mut self, now: Instant) -> bool {
        let Some((mode, since)) = self.stopping else { return false };
        match mode {
            StopMode::Immediate => true,
            StopMode::Smart => {
                self.report_drained();
                false
            }
            StopMode::Fast => self.close_out(now.duration_since(since) >= FAST_ANSWER_WAIT),
        }
    }

    /// Smart: tell the main thread, once, that nothing here is open, held
    /// or owed.
    fn report_drained(&mut self) {
        if self.stats.drained.load(Ordering::Relaxed) {
            return;
        }
        if self.batch.is_empty() && self.up.owed() == 0 && self.ledger.open_transactions() == 0 {
            self.stats.drained.store(true, Ordering::Relaxed);
            let _ = self.main.wake();
        }
    }

    /// Fast: close every backend that owes nothing (all of them once
    /// `waited_out`); true when none is left and no answer is worth waiting
    /// for.
    fn close_out(&mut self, waited_out: bool) -> bool {
        let done: Vec<usize> =
            self.backends.iter().filter(|(_, b)| waited_out || !b.is_waiting()).map(|(k, _)| k).collect();
        let why = if waited_out { "fast shutdown (answer not received in time)" } else { "fast shutdown" };
        for k in done {
            self.close_backend(k, why);
        }
        self.backends.is_empty() && (self.up.owed() == 0 || waited_out || !self.up.is_ready())
    }

    /// Answer every request held for the GTM link with an error: a fast
    /// stop does not wait for the link to come back.
    fn fail_held(&mut self) {
        let held: Vec<Route> = self.backends.iter().filter(|(_, b)| b.is_waiting()).map(|(_, b)| b.route()).collect();
        for route in held {
            if self.batch.drop_route(route) > 0 {
                self.fail_request(route, SHUTTING_DOWN);
            }
        }
    }
}

/// `req` starts a transaction at the GTM.
fn begins(req: &Request) -> bool {
    matches!(
        req,
        Request::TxnBegin(_)
            | Request::TxnBeginGetGxid(_)
            | Request::TxnBeginGetGxidMulti(_)
            | Request::TxnBeginGetGxidAutovacuum { .. }
    )
}
