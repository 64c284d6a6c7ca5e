//! The backend side of a worker: accepting a backend, reading its frames,
//! admitting its requests into the batch, writing its answers, and letting
//! it go.
//!
//! A request's way in: [`Worker::on_backend_event`] reads the socket and
//! queues the backend; [`Worker::process_backend`] takes one frame at a time
//! (none while a request is outstanding); [`Worker::handle_request`] runs
//! it through [`admission::admit`] into the batch, which the worker sends
//! upstream at the end of the round.

use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{debug, trace, warn};
use mio::net::TcpStream;
use mio::Token;

use super::{Work, Worker, FIRST_BACKEND, FRAMES_PER_ROUND, MAX_BACKEND_FRAME};
use crate::codec::frame::{TAG_CLOSE, TAG_COMMAND, TAG_STARTUP};
use crate::codec::{ClientFrame, RawFrame, StartupPacket};
use crate::proxy::admission::{self, Admission};
use crate::proxy::backend::{Backend, Deadlines, Peer, State};
use crate::proxy::batch::{Forward, Route};
use crate::proxy::metrics::refusals::Refused;

impl Worker {
    pub(super) fn add_backend(&mut self, std_sock: std::net::TcpStream) {
        if let Err(e) = std_sock.set_nonblocking(true) {
            warn!("cannot make backend socket non-blocking: {e}");
            return;
        }
        let sock = TcpStream::from_std(std_sock);
        if self.stopping.is_some() {
            // Dispatched just before the stop reached this worker.
            self.stats.refused.count(Refused::ShuttingDown);
            crate::proxy::refuse(sock, crate::proxy::SHUTTING_DOWN);
            return;
        }
        let entry = self.backends.vacant_entry();
        let key = entry.key();
        let Some((conn, gen)) = self.ids.alloc(key) else {
            warn!("no backend identifier left on this GTM link; refusing connection");
            self.stats.refused.count(Refused::NoIdentifier);
            crate::proxy::refuse(sock, "too many connections to this gtm_proxy worker");
            return;
        };
        let mut b = Backend::new(sock, conn, gen);
        if let Err(e) = b.register(self.poll.registry(), Token(key + FIRST_BACKEND)) {
            warn!("cannot register backend: {e}");
            let _ = self.ids.release(conn, gen, false, None);
            return;
        }
        let route = b.route();
        entry.insert(b);
        self.stats.backends.fetch_add(1, Ordering::Relaxed);
        debug!("backend {key} accepted as conn id {conn}");
        self.starting += 1;
        self.starting_order.push_back((key, route));
        self.limit_starting();
    }

    /// Keep the connections still in start-up within this worker's share of
    /// `max_startup_backends`: the oldest goes first (a real backend sends
    /// its startup packet at once, so the oldest are the likeliest idlers).
    /// In a connect storm the oldest may well have sent its startup packet
    /// already, unread yet: it is read and served first, and only a
    /// connection that still has not started is closed.
    fn limit_starting(&mut self) {
        let workers = self.cfg.worker_threads.max(1);
        let limit = self.cfg.max_startup_backends.div_ceil(workers).max(1);
        while self.starting > limit {
            let Some((key, route)) = self.starting_order.pop_front() else { break };
            let starting =
                |w: &Self| w.backends.get(key).is_some_and(|b| b.route() == route && b.state() == State::Startup);
            if !starting(self) {
                continue;
            }
            if let Some(b) = self.backends.get_mut(key) {
                let _ = b.read(&mut self.scratch, MAX_BACKEND_FRAME);
            }
            self.process_backend(key);
            if starting(self) {
                self.stats.refused.count(Refused::MaxStartupBackends);
                self.drop_with_error(key, "too many connections in start-up");
            }
        }
    }

    /// Deadlines of the backends' input (start-up, incomplete frames); also
    /// forgets start-up entries of backends that started or left.
    pub(super) fn expire_backends(&mut self, now: Instant) {
        let d = Deadlines { startup: self.cfg.backend_startup_timeout, frame: self.cfg.backend_frame_timeout };
        let late: Vec<(usize, &'static str, bool)> = self
            .backends
            .iter()
            .filter_map(|(k, b)| b.overdue(now, d).map(|why| (k, why, b.state() == State::Startup)))
            .collect();
        for (key, why, starting) in late {
            if starting {
                self.stats.refused.count(Refused::StartupTimeout);
            }
            self.drop_with_error(key, why);
        }
        let backends = &self.backends;
        self.starting_order
            .retain(|(k, r)| backends.get(*k).is_some_and(|b| b.route() == *r && b.state() == State::Startup));
    }

    /// Close a backend at once with a FATAL `E` (written best effort: its
    /// socket buffer is normally empty when this is used).
    fn drop_with_error(&mut self, key: usize, why: &str) {
        let Some(b) = self.backends.get_mut(key) else { return };
        self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
        b.send_error("FATAL", why);
        let _ = b.flush();
        let now = Instant::now();
        if let Some(s) = b.may_log(now) {
            warn!("backend {key}: {why}; closing it{s}");
        }
        self.close_backend(key, why);
    }

    pub(super) fn on_backend_event(&mut self, key: usize, readable: bool, writable: bool, reset: bool) {
        let Some(b) = self.backends.get_mut(key) else { return };
        if writable && !b.wbuf.is_empty() {
            self.work.queue(key, b, Work::Write);
        }
        if readable {
            if let Err(e) = b.read(&mut self.scratch, MAX_BACKEND_FRAME) {
                debug!("backend {key} read error: {e}");
            }
        }
        if reset {
            b.reset();
        }
        if readable || reset {
            self.work.queue(key, b, Work::Process);
        }
    }

    /// Parse buffered frames of every queued backend, one request at a time
    /// per backend.
    pub(super) fn process_backends(&mut self) {
        for key in std::mem::take(&mut self.work.carry) {
            if let Some(b) = self.backends.get_mut(key) {
                self.work.queue(key, b, Work::Process);
            }
        }
        let mut i = 0;
        // Answers delivered below may queue more backends; keep going.
        while i < self.work.process.len() {
            let key = self.work.process[i];
            i += 1;
            if let Some(b) = self.backends.get_mut(key) {
                b.queued.process = false;
            } else {
                continue;
            }
            self.process_backend(key);
        }
        self.work.process.clear();
    }

    fn process_backend(&mut self, key: usize) {
        let mut handled = 0;
        loop {
            let Some(b) = self.backends.get_mut(key) else { return };
            if handled == FRAMES_PER_ROUND {
                if b.has_input() {
                    self.work.carry.push(key);
                }
                break;
            }
            let raw = match b.next_frame(MAX_BACKEND_FRAME) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => {
                    self.log_backend(key, &format!("{e}; closing it"));
                    if let Some(b) = self.backends.get_mut(key) {
                        b.abort("FATAL", &format!("invalid frame: {e}"));
                    }
                    break;
                }
            };
            handled += 1;
            self.handle_frame(key, raw);
        }
        let Some(b) = self.backends.get_mut(key) else { return };
        b.settle(Instant::now());
        if b.should_resume_reading(MAX_BACKEND_FRAME) {
            // Edge-triggered: nothing will tell us the socket still has data.
            let _ = b.read(&mut self.scratch, MAX_BACKEND_FRAME);
            if b.has_input() || b.finished() {
                self.work.queue(key, b, Work::Process);
            }
        }
        if !b.wbuf.is_empty() {
            self.work.queue(key, b, Work::Write);
        }
        if b.finished() {
            self.close_backend(key, "closed by peer");
        }
    }

    fn handle_frame(&mut self, key: usize, raw: RawFrame) {
        let Some(b) = self.backends.get_mut(key) else { return };
        if b.state() == State::Startup {
            if raw.tag != TAG_STARTUP {
                let msg = format!("Expecting a startup message, but received {}", raw.tag as char);
                self.stats.refused.count(Refused::BadStartup);
                self.log_backend(key, &msg);
                if let Some(b) = self.backends.get_mut(key) {
                    b.abort("ERROR", &msg);
                }
                return;
            }
            match StartupPacket::decode(&raw.body) {
                Ok(sp) => {
                    match crate::proxy::access::check_startup(&self.cfg, b.peer_addr(), sp.name(), sp.remote_type) {
                        Ok(()) => {
                            b.started(Peer::from_startup(&sp));
                            self.starting = self.starting.saturating_sub(1);
                        }
                        Err(deny) => {
                            let peer = b.peer_addr().map_or_else(|| format!("backend {key}"), |p| p.to_string());
                            crate::proxy::access::report_denied(&peer, &deny);
                            self.stats.refused.count(Refused::Access);
                            b.abort("FATAL", &deny.to_string());
                        }
                    }
                }
                Err(e) => {
                    let n = raw.body.len();
                    self.log_backend(key, &format!("bad startup packet ({n} bytes): {e}"));
                    self.stats.refused.count(Refused::BadStartup);
                    if let Some(b) = self.backends.get_mut(key) {
                        b.abort("FATAL", &format!("invalid startup packet: {e}"));
                    }
                }
            }
            return;
        }
        match raw.tag {
            TAG_COMMAND => {}
            TAG_CLOSE => {
                b.close_input(true);
                return;
            }
            other => {
                self.reject(key, &format!("invalid frontend message type {other}"));
                return;
            }
        }
        let route = b.route();
        match ClientFrame::decode(raw, false) {
            Ok(ClientFrame::Command(cmd)) => self.handle_request(key, route, cmd),
            Ok(_) => {}
            Err(e) => self.reject(key, &format!("invalid message: {e}")),
        }
    }

    /// One request of a started backend: refused at once, or into the batch.
    fn handle_request(&mut self, key: usize, route: Route, cmd: crate::codec::Command) {
        let req = match cmd.request() {
            Ok(r) => r,
            Err(e) => {
                self.reject(key, &format!("invalid {} message: {e}", cmd.msg_type));
                return;
            }
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(msg) = self.stop_refusal(route, &req).or_else(|| self.link_refusal()) {
            self.answer_error(key, &msg);
            return;
        }
        admission::for_each_ending(&req, |g| self.ledger.ending(g));
        match admission::admit(cmd.msg_type, cmd.payload, req, route.conn) {
            Admission::Group(g) => self.batch.group(route, g),
            Admission::Forward { payload, ends } => {
                self.batch.forwards.push_back(Forward { route, msg_type: cmd.msg_type, payload, ends })
            }
            Admission::Refuse(why) => {
                self.reject(key, &why.to_string());
                return;
            }
        }
        trace!("backend {key} (id {}) request queued", route.conn);
        if let Some(b) = self.backends.get_mut(key) {
            b.request_sent(Instant::now());
        }
    }

    /// Why a request cannot even be held for the GTM link, if it cannot.
    fn link_refusal(&self) -> Option<String> {
        if self.up.is_ready() {
            return None;
        }
        if self.gtm_absent() || !self.failover.holding() {
            return Some(format!("GTM unavailable: {}", self.down_reason));
        }
        if self.batch.len() >= self.cfg.hold_max_requests {
            return Some(format!(
                "GTM unavailable: {} (hold_max_requests = {} requests already waiting)",
                self.down_reason, self.cfg.hold_max_requests
            ));
        }
        None
    }

    /// A protocol error of one backend: answer it with an `E` and go on
    /// with the next frame; the `backend_error_limit`-th error is answered
    /// with a FATAL `E` instead, and the connection closes.
    fn reject(&mut self, key: usize, msg: &str) {
        let limit = self.cfg.backend_error_limit;
        let Some(b) = self.backends.get_mut(key) else { return };
        if !b.protocol_error(limit) {
            self.answer_error(key, msg);
            return;
        }
        let why = format!("{msg}; too many protocol errors ({limit}), closing the connection");
        self.log_backend(key, &why);
        self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = self.backends.get_mut(key) {
            b.abort("FATAL", &why);
        }
    }

    /// Answer one backend's request with an `E` (logged, rate-limited per
    /// backend).
    fn answer_error(&mut self, key: usize, msg: &str) {
        self.log_backend(key, msg);
        self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = self.backends.get_mut(key) {
            b.send_error("ERROR", msg);
        }
    }

    /// A warning about one backend, within its log rate limit; lines over
    /// the limit are counted and reported with the next one let through, or
    /// when the backend goes.
    fn log_backend(&mut self, key: usize, msg: &str) {
        let Some(b) = self.backends.get_mut(key) else { return };
        if let Some(s) = b.may_log(Instant::now()) {
            warn!("backend {key}: {msg}{s}");
        }
    }

    /// Write the output of every backend queued for it.
    pub(super) fn write_backends(&mut self) {
        let limit = self.cfg.backend_output_limit;
        let mut keys = std::mem::take(&mut self.work.write);
        for &key in &keys {
            let Some(b) = self.backends.get_mut(key) else { continue };
            b.queued.write = false;
            let flushed = b.flush();
            if let Ok(false) = flushed {
                if b.wbuf.len() > limit {
                    warn!("backend {key} does not read its answers; closing it");
                    self.close_backend(key, "output limit exceeded");
                    continue;
                }
            }
            if let Err(e) = &flushed {
                debug!("backend {key} write error: {e}");
                b.broken();
            }
            // Writable interest only while output waits, so that writable
            // edges stop waking this loop once it is drained.
            let _ = b.update_interest(self.poll.registry(), Token(key + FIRST_BACKEND));
            if b.closing_idle() && b.wbuf.is_empty() {
                let why = if flushed.is_err() { "write error" } else { "closed by peer" };
                self.close_backend(key, why);
            }
        }
        keys.clear();
        if self.work.write.is_empty() {
            self.work.write = keys;
        }
    }

    /// Drop the backend's socket. Its identifier drains: once nothing is in
    /// flight for it, `MSG_BACKEND_DISCONNECT` is sent and it can be reused.
    pub(super) fn close_backend(&mut self, key: usize, why: &str) {
        if !self.backends.contains(key) {
            return;
        }
        let mut b = self.backends.remove(key);
        b.deregister(self.poll.registry());
        self.stats.backends.fetch_sub(1, Ordering::Relaxed);
        if b.state() == State::Startup {
            self.starting = self.starting.saturating_sub(1);
        }
        debug!("backend {key} (conn id {}) gone: {why}", b.conn);
        if let Some(s) = b.log_summary() {
            warn!("backend {key} gone: {why}{s}");
        }
        let disc = self.departure(b.conn, b.gen, b.peer.as_ref().map(Peer::disconnect_request));
        if let Some(d) = self.ids.release(b.conn, b.gen, b.is_waiting(), disc) {
            self.batch.disconnects.push((b.conn, d));
        }
    }
}
