//! The GTM side of a worker: the link's start-up, answers on their way
//! back to the backends, and what happens when the link fails.
//!
//! An answer's way back: [`Worker::on_upstream_event`] reads the link;
//! [`Worker::route_answers`] takes each whole frame from [`Upstream`](crate::proxy::upstream::Upstream);
//! [`Worker::route_answer`] matches it to the oldest owed frame, splits it
//! per backend ([`split_answer`]), vets each part ([`vetting::vet`]) and
//! writes the verdict into the backend's output, which the worker writes at
//! the end of the round.

use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{debug, error, info, trace, warn};

use super::replay::{self, Rule, MAX_REPLAYS, OUTCOME_UNKNOWN};
use super::resolve::Resolver;
use super::{TimerKind, Work, Worker, INTERNAL, UPSTREAM};
use crate::codec::{Request, ServerFrame};
use crate::proxy::batch::{self, split_answer, Pending, Route};
use crate::proxy::failover::Action;
use crate::proxy::ledger::GxState;
use crate::proxy::upstream::{Incoming, LinkError};
use crate::proxy::vetting::{self, Verdict};

impl Worker {
    /// Start a connection attempt: at once to a literal address, else after
    /// the resolver thread has looked the host up ([`Worker::on_resolved`]).
    pub(super) fn connect_upstream(&mut self) {
        let (host, port) = (self.up.host().to_string(), self.up.port());
        if let Some(addr) = Resolver::literal(&host, port) {
            return self.connect_to(addr);
        }
        match self.resolver.request(&host, port) {
            Ok(n) => {
                self.lookup = Some(n);
                self.up.start_resolving(self.poll.registry());
            }
            Err(e) => self.link_failed(LinkError::Resolve(self.up.addr_string(), e)),
        }
    }

    fn connect_to(&mut self, addr: std::net::SocketAddr) {
        if let Err(e) = self.up.connect(self.poll.registry(), UPSTREAM, addr) {
            self.link_failed(e);
        }
    }

    /// Answers of the resolver thread: the current attempt goes on (or
    /// fails); answers to earlier attempts are dropped.
    pub(super) fn on_resolved(&mut self) {
        while let Some((n, res)) = self.resolver.try_result() {
            if self.lookup != Some(n) || !self.up.is_resolving() {
                continue;
            }
            self.lookup = None;
            match res {
                Ok(addr) => self.connect_to(addr),
                Err(e) => self.link_failed(LinkError::Resolve(self.up.addr_string(), e)),
            }
        }
    }

    pub(super) fn on_upstream_event(&mut self, readable: bool, writable: bool) {
        if writable {
            if let Err(e) = self.up.on_writable() {
                self.link_failed(e);
                return;
            }
        }
        if readable {
            loop {
                if let Err(e) = self.up.read(&mut self.scratch) {
                    // Route what did arrive before reporting the failure.
                    let _ = self.route_answers();
                    self.link_failed(e);
                    return;
                }
                if let Err(e) = self.route_answers() {
                    self.link_failed(e);
                    return;
                }
                if !self.up.read_paused() {
                    break;
                }
            }
        }
    }

    /// Take every whole frame the GTM sent: the startup answer, or answers
    /// for the backends.
    fn route_answers(&mut self) -> Result<(), LinkError> {
        while let Some(incoming) = self.up.next_frame()? {
            match incoming {
                Incoming::Ready { client_id, same_client_id } => self.link_ready(client_id, same_client_id),
                Incoming::Answer(f) => self.route_answer(&f)?,
            }
        }
        Ok(())
    }

    /// The GTM answered the startup packet: requests flow again.
    fn link_ready(&mut self, client_id: u32, same_client_id: bool) {
        let addr = self.up.addr_string();
        info!("connected to GTM {addr} as client id {client_id}");
        if same_client_id {
            warn!(
                "GTM {addr} granted this link's previous client id {client_id}: treating it as \
                 a promoted standby; {} GXIDs from before are ended by GXID, not by backend disconnect",
                self.ledger.old_count()
            );
        }
        self.promoted = same_client_id;
        self.ever_ready = true;
        self.floors.link = self.high.get();
        self.failover.on_connected();
        self.connect_failures = 0;
        if let Some(t) = self.failover_timer.take() {
            self.timers.cancel(t);
        }
        if !self.batch.is_empty() {
            info!("sending {} held requests", self.batch.len());
        }
    }

    /// Never linked and an attempt failed: the GTM is not there at all (the
    /// proxy started without it), so holding requests would only delay
    /// their answer.
    pub(super) fn gtm_absent(&self) -> bool {
        !self.ever_ready && self.connect_failures > 0
    }

    /// Split one answer per backend, vet each, and queue it for its backend.
    fn route_answer(&mut self, f: &ServerFrame) -> Result<(), LinkError> {
        let Some((pending, sent)) = self.up.pop_owed() else { return Err(LinkError::Unsolicited) };
        self.stats.upstream_frames.fetch_add(1, Ordering::Relaxed);
        self.stats.round_trip.observe(sent.elapsed());
        let mut delivered = Vec::with_capacity(pending.len());
        let mut refused = Vec::new();
        let floors = self.floors;
        let res = split_answer(&pending, f, |route, gxid, answer| {
            delivered.push(route);
            let verdict = vetting::vet(&mut self.ledger, &self.high, floors, &pending, route, gxid, answer);
            if verdict != Verdict::Pass {
                if let Some(suppressed) = self.verdict_log.check(Instant::now()) {
                    log_verdict(verdict, suppressed);
                }
            }
            if let Verdict::DuplicateGxid { gxid, .. } = verdict {
                self.stats.stale_gxids.fetch_add(1, Ordering::Relaxed);
                refused.push(gxid);
                // This GTM is behind: old GXID numbers may belong to others
                // here, so they must never be rolled back by number.
                self.ledger.clear_old();
            }
            trace!("answer for id {} (gxid {gxid}): {answer:?}, {verdict:?}", route.conn);
            if let Some(key) = self.ids.lookup(route.conn, route.gen) {
                if let Some(b) = self.backends.get_mut(key) {
                    if verdict.write(answer, &mut b.wbuf) {
                        self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    b.answered();
                    self.work.queue(key, b, Work::Process);
                }
            }
        });
        if !refused.is_empty() {
            // Not rolled back: a GTM whose counter is behind may hold an
            // older transaction with the same GXID, and ending that one
            // could make a commit in progress look finished. Left for the
            // DBA, who has to repair the GTM anyway.
            error!("GXIDs refused and left open on GTM {}: {refused:?}", self.up.addr_string());
        }
        if let Err(e) = res {
            // Put the entry back: the owner decides what to do with it.
            self.up.unpop_owed(pending, sent);
            return Err(LinkError::OutOfStep(e));
        }
        for route in delivered {
            self.request_done(route);
        }
        Ok(())
    }

    /// The request of `route` is settled (answered or failed): a departed
    /// backend's identifier may be free now, after its disconnect.
    fn request_done(&mut self, route: Route) {
        self.replays.settled(route);
        if let Some(d) = self.ids.settled(route.conn, route.gen) {
            self.batch.disconnects.push((route.conn, d));
        }
    }

    /// Send what the round collected. The coalescing policy decides per
    /// MULTI type whether to send now or let it grow behind the MULTI in
    /// flight; a held type is decided again when an answer arrives (every
    /// round ends here) or when its hold budget runs out (a timer).
    pub(super) fn flush_batch(&mut self) {
        if !self.up.is_ready() || self.batch.is_empty() {
            return;
        }
        let now = Instant::now();
        let owed = batch::in_flight(self.up.owed_frames());
        let (release, wake) = self.coalesce.plan(now, self.batch.queued(), owed, self.cfg.batch_max);
        self.batch.keep = release.map(|r| !r);
        if let Some(at) = wake {
            if self.coalesce_timer.is_none_or(|(_, armed)| at < armed) {
                if let Some((t, _)) = self.coalesce_timer.take() {
                    self.timers.cancel(t);
                }
                self.coalesce_timer = Some((self.timers.arm(at, TimerKind::Coalesce), at));
            }
        }
        if let Err(e) = self.up.send_batch(&mut self.batch, self.cfg.batch_max) {
            self.link_failed(e);
        }
    }

    /// The GTM link is unusable (or a connection attempt failed). Work that
    /// was sent and not answered goes back in front of the held requests, to
    /// be replayed on the next link; the failover stages decide when that is.
    pub(super) fn link_failed(&mut self, err: LinkError) {
        let ordered = matches!(err, LinkError::ReconnectOrdered);
        let was_ready = self.up.is_ready();
        self.up.close(self.poll.registry());
        let owed = self.up.owed();
        if was_ready && ordered {
            crate::xlog!(
                LOG,
                "leaving the GTM link on a reconnect order; {owed} requests in flight are sent again on {} \
                 or failed by their replay rule",
                self.up.addr_string()
            );
        } else if was_ready {
            self.stats.link_failures.fetch_add(1, Ordering::Relaxed);
            error!(
                "GTM link {} lost: {err}; {owed} requests in flight (sent again or failed by their replay rule), {} held",
                self.up.addr_string(),
                self.batch.len()
            );
        } else if !ordered {
            // Log the first failures, then ever more rarely: a GTM that is
            // down for an hour must not flood the log.
            self.connect_failures += 1;
            let n = self.connect_failures;
            if n <= 3 || n.is_power_of_two() {
                warn!("cannot connect to GTM {} (attempt {n}): {err}", self.up.addr_string());
            } else {
                debug!("cannot connect to GTM {} (attempt {n}): {err}", self.up.addr_string());
            }
        }
        self.settle_owed();
        if was_ready {
            self.floors.replay = self.high.get();
            self.ledger.mark_old();
        }
        if !ordered {
            self.down_reason = format!("{err} (GTM {})", self.up.addr_string());
            if self.gtm_absent() && !self.batch.is_empty() {
                // What arrived before this attempt failed is answered now,
                // as what arrives after it will be (see `link_refusal`).
                let msg = format!("GTM unavailable: {}", self.down_reason);
                for route in self.batch.take_routes() {
                    self.fail_request(route, &msg);
                }
            }
        }
        let action = if ordered {
            self.failover.on_reconnect_order()
        } else if was_ready {
            self.failover.on_link_lost()
        } else {
            self.failover.on_attempt_failed()
        };
        self.perform(action);
    }

    /// The link is gone with answers owed: each owed request is sent again
    /// or answered with an `E`, by its message type's rule and the replay
    /// limit (see [`replay`](super::replay)). Held requests stay held.
    fn settle_owed(&mut self) {
        let owed = self.up.take_owed();
        let gtm = self.up.addr_string();
        let mut failed: Vec<(Route, String)> = Vec::new();
        // Newest first, each put in front: the replay keeps the old order.
        for p in owed.into_iter().rev() {
            let what = match &p {
                Pending::Forward(f) => f.msg_type.to_string(),
                _ => "grouped request".to_string(),
            };
            match replay::rule(&p) {
                Rule::OutcomeUnknown => {
                    for route in p.routes() {
                        self.stats.outcome_unknown.fetch_add(1, Ordering::Relaxed);
                        failed.push((
                            route,
                            format!(
                                "{OUTCOME_UNKNOWN}: {what} was sent to GTM {gtm}, whose link was lost before it \
                             answered; it may have been carried out and is not sent again"
                            ),
                        ));
                    }
                }
                Rule::Replay => {
                    let mut over = Vec::new();
                    let mut again = 0;
                    for route in p.routes() {
                        if self.replays.lost_once_more(route) {
                            again += 1;
                        } else {
                            over.push(route);
                        }
                    }
                    self.stats.replays.fetch_add(again, Ordering::Relaxed);
                    let p = if over.is_empty() { Some(p) } else { without_routes(p, &over) };
                    for route in over {
                        failed.push((
                            route,
                            format!(
                                "{what} not sent again: the GTM link was lost {} times while it was in flight \
                             (last: GTM {gtm})",
                                MAX_REPLAYS + 1
                            ),
                        ));
                    }
                    if let Some(p) = p {
                        self.batch.requeue(p);
                    }
                }
            }
        }
        for (route, msg) in failed {
            warn!("backend id {}: {msg}", route.conn);
            self.fail_request(route, &msg);
        }
    }

    pub(super) fn perform(&mut self, action: Action) {
        if let Some(t) = self.failover_timer.take() {
            self.timers.cancel(t);
        }
        match action {
            Action::Connect => self.connect_upstream(),
            Action::Wait(d) => {
                self.failover_timer = Some(self.timers.arm_in(Instant::now(), d, TimerKind::Failover));
            }
            Action::FailHeldAndWait(d) => {
                error!("GTM unavailable, giving up on {} held requests; still retrying every {d:?}", self.batch.len());
                let msg = format!("GTM unavailable: {}", self.down_reason);
                for route in self.batch.take_routes() {
                    self.fail_request(route, &msg);
                }
                self.failover_timer = Some(self.timers.arm_in(Instant::now(), d, TimerKind::Failover));
            }
        }
    }

    /// A backend has left: end what it left open and return the
    /// `MSG_BACKEND_DISCONNECT` to send once its identifier is free, if any.
    ///
    /// Normally the disconnect does it all. GXIDs from before a link loss
    /// (old, see the ledger) are the exception: the new GTM may key them
    /// differently (a promoted standby keys replicated transactions by the
    /// client id of its backup link; a link with a new client id has a new
    /// key), so the disconnect may miss them. Those that are provably not
    /// prepared and not being ended (open: no commit, rollback or prepare
    /// was ever asked for) are rolled back by GXID, however the backend
    /// left; the others are left to the GTM and logged.
    ///
    /// On a promoted standby (this link got its old client id back) the
    /// disconnect could also hit another link's old transactions keyed the
    /// same way by coincidence; so while the identifier has old work no
    /// disconnect is sent and its open GXIDs are all rolled back by GXID.
    /// Once its old work has ended, the identifier is back to normal.
    pub(super) fn departure(&mut self, conn: i16, gen: u32, disconnect: Option<Request>) -> Option<Request> {
        let special = self.promoted && self.ledger.has_old_work(conn);
        let left = self.ledger.forget_backend(conn, gen);
        for (gxid, state, old) in &left {
            match state {
                GxState::Vacuum => {
                    debug!("ending autovacuum GXID {gxid} of departed backend id {conn}");
                    self.batch.rollbacks.push((INTERNAL, *gxid));
                }
                GxState::Open if *old || special => {
                    info!("rolling back GXID {gxid} of departed backend id {conn} (from before the GTM link was lost)");
                    self.batch.rollbacks.push((INTERNAL, *gxid));
                }
                GxState::InDoubt if *old => warn!(
                    "GXID {gxid} of departed backend id {conn} was being ended or prepared when the GTM \
                     link was lost; left to the GTM"
                ),
                _ => {}
            }
        }
        if special {
            None
        } else {
            disconnect
        }
    }

    /// Answer a request that will not reach the GTM with an `E`.
    pub(super) fn fail_request(&mut self, route: Route, msg: &str) {
        if let Some(key) = self.ids.lookup(route.conn, route.gen) {
            if let Some(b) = self.backends.get_mut(key) {
                b.send_error("ERROR", msg);
                b.answered();
                self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
                self.work.queue(key, b, Work::Process);
            }
        }
        self.request_done(route);
    }

    /// Held requests older than `hold_timeout` get an `E`.
    pub(super) fn expire_held(&mut self, now: Instant) {
        let limit = self.cfg.hold_timeout;
        let expired: Vec<Route> = self
            .backends
            .iter()
            .filter(|(_, b)| b.waiting_since().is_some_and(|since| now.duration_since(since) > limit))
            .map(|(_, b)| b.route())
            .collect();
        for route in expired {
            if self.batch.drop_route(route) > 0 {
                self.stats.hold_timeouts.fetch_add(1, Ordering::Relaxed);
                let msg = format!("GTM unavailable: {} (request held longer than hold_timeout)", self.down_reason);
                warn!("backend id {}: {msg}", route.conn);
                self.fail_request(route, &msg);
            }
        }
    }
}

/// `p` without the elements of `routes`; None when nothing is left.
fn without_routes(p: Pending, routes: &[Route]) -> Option<Pending> {
    let keep = |r: &Route| !routes.contains(r);
    let p = match p {
        Pending::Forward(f) => return keep(&f.route).then_some(Pending::Forward(f)),
        Pending::Begin(v) => Pending::Begin(v.into_iter().filter(|(r, _)| keep(r)).collect()),
        Pending::Commit(v) => Pending::Commit(v.into_iter().filter(|(r, _)| keep(r)).collect()),
        Pending::Rollback(v) => Pending::Rollback(v.into_iter().filter(|(r, _)| keep(r)).collect()),
        Pending::Snapshot(v) => Pending::Snapshot(v.into_iter().filter(|(r, _)| keep(r)).collect()),
    };
    (!p.is_empty()).then_some(p)
}

/// Say what vetting changed, if anything.
/// One line per vetted element the GTM made notable, rate-limited by the
/// caller: a GTM that is behind answers every element of every MULTI so.
fn log_verdict(verdict: Verdict, suppressed: crate::logging::Suppressed) {
    match verdict {
        Verdict::Pass => {}
        Verdict::DuplicateGxid { gxid, floor } => error!(
            "GTM handed out GXID {gxid}, not above GXID {floor} already handed \
             out by this proxy: refusing it to avoid duplicate transaction ids{suppressed}"
        ),
        Verdict::AlreadyEnded { gxid, .. } => {
            warn!("GTM does not know GXID {gxid} any more; its end is reported as done{suppressed}")
        }
        Verdict::Lost { gxid } => error!("GTM lost open transaction {gxid}; its backend must abort{suppressed}"),
    }
}
