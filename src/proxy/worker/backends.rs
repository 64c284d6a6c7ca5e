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

use log::{debug, info, trace, warn};
use mio::net::TcpStream;
use mio::Token;

use super::{Work, Worker, FIRST_BACKEND, INTERNAL, MAX_BACKEND_FRAME};
use crate::codec::frame::{TAG_CLOSE, TAG_COMMAND, TAG_STARTUP};
use crate::codec::{ClientFrame, RawFrame, StartupPacket};
use crate::proxy::admission::{self, Admission};
use crate::proxy::backend::{Backend, Peer, State};
use crate::proxy::batch::{Forward, Route};
use crate::proxy::ledger::GxState;

impl Worker {
    pub(super) fn add_backend(&mut self, std_sock: std::net::TcpStream) {
        if self.stopping.is_some() {
            return;
        }
        if let Err(e) = std_sock.set_nonblocking(true) {
            warn!("worker {}: cannot make backend socket non-blocking: {e}", self.id);
            return;
        }
        let sock = TcpStream::from_std(std_sock);
        let entry = self.backends.vacant_entry();
        let key = entry.key();
        let Some((conn, gen)) = self.ids.alloc(key) else {
            warn!("worker {}: no backend identifier left on this GTM link; refusing connection", self.id);
            crate::proxy::refuse(sock, "too many connections to this gtm_proxy worker");
            return;
        };
        let mut b = Backend::new(sock, conn, gen);
        if let Err(e) = b.register(self.poll.registry(), Token(key + FIRST_BACKEND)) {
            warn!("worker {}: cannot register backend: {e}", self.id);
            let _ = self.ids.release(conn, gen, false, None);
            return;
        }
        entry.insert(b);
        self.stats.backends.fetch_add(1, Ordering::Relaxed);
        debug!("worker {}: backend {key} accepted as conn id {conn}", self.id);
    }

    pub(super) fn on_backend_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(b) = self.backends.get_mut(key) else { return };
        if writable && !b.wbuf.is_empty() {
            self.work.queue(key, b, Work::Write);
        }
        if readable {
            if let Err(e) = b.read(&mut self.scratch) {
                debug!("worker {}: backend {key} read error: {e}", self.id);
            }
            self.work.queue(key, b, Work::Process);
        }
    }

    /// Parse buffered frames of every queued backend, one request at a time
    /// per backend.
    pub(super) fn process_backends(&mut self) {
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
        loop {
            let Some(b) = self.backends.get_mut(key) else { return };
            let raw = match b.next_frame(MAX_BACKEND_FRAME) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => {
                    warn!("worker {}: backend {key}: {e}; closing it", self.id);
                    b.abort("FATAL", &format!("invalid frame: {e}"));
                    break;
                }
            };
            self.handle_frame(key, raw);
        }
        let Some(b) = self.backends.get_mut(key) else { return };
        if b.should_resume_reading() {
            // Edge-triggered: nothing will tell us the socket still has data.
            let _ = b.read(&mut self.scratch);
            if b.has_input() {
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
        let id = self.id;
        let Some(b) = self.backends.get_mut(key) else { return };
        if b.state() == State::Startup {
            if raw.tag != TAG_STARTUP {
                warn!("worker {id}: backend {key}: first frame is '{}', not a startup packet", raw.tag as char);
                b.abort("ERROR", &format!("Expecting a startup message, but received {}", raw.tag as char));
                return;
            }
            match StartupPacket::decode(&raw.body) {
                Ok(sp) => {
                    match crate::proxy::access::check_startup(&self.cfg, b.peer_addr(), sp.name(), sp.remote_type) {
                        Ok(()) => b.started(Peer::from_startup(&sp)),
                        Err(deny) => {
                            let peer = b.peer_addr().map_or_else(|| format!("backend {key}"), |p| p.to_string());
                            crate::proxy::access::report_denied(&peer, &deny);
                            b.abort("FATAL", &deny.to_string());
                        }
                    }
                }
                Err(e) => {
                    warn!("worker {id}: backend {key}: bad startup packet ({} bytes): {e}", raw.body.len());
                    b.abort("FATAL", &format!("invalid startup packet: {e}"));
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
        if let Some(msg) = self.link_refusal() {
            self.reject(key, &msg);
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
        trace!("worker {}: backend {key} (id {}) request queued", self.id, route.conn);
        if let Some(b) = self.backends.get_mut(key) {
            b.request_sent(Instant::now());
        }
    }

    /// Why a request cannot even be held for the GTM link, if it cannot.
    fn link_refusal(&self) -> Option<String> {
        if self.up.is_ready() {
            return None;
        }
        if !self.failover.holding() {
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

    /// Answer one backend with an `E` and go on with the next frame.
    fn reject(&mut self, key: usize, msg: &str) {
        warn!("worker {}: backend {key}: {msg}", self.id);
        self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = self.backends.get_mut(key) {
            b.send_error("ERROR", msg);
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
                    warn!("worker {}: backend {key} does not read its answers; closing it", self.id);
                    self.close_backend(key, "output limit exceeded");
                    continue;
                }
            }
            if let Err(e) = &flushed {
                debug!("worker {}: backend {key} write error: {e}", self.id);
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
        debug!("worker {}: backend {key} (conn id {}) gone: {why}", self.id, b.conn);
        let left = self.ledger.forget_backend(b.conn, b.gen);
        let mut disc = b.peer.as_ref().map(Peer::disconnect_request);
        for (gxid, _) in left.iter().filter(|(_, s)| *s == GxState::Vacuum) {
            debug!("worker {}: ending autovacuum GXID {gxid} of departed backend {key}", self.id);
            self.batch.rollbacks.push((INTERNAL, *gxid));
        }
        if self.keys_unreliable {
            // After a promotion the GTM's (client id, backend id) keys may
            // name other links' transactions: end only what is provably idle
            // (open, nothing in flight, backend left cleanly) and leave the
            // rest, rather than risk ending a transaction being committed.
            disc = None;
            for (gxid, state) in left.into_iter().filter(|(_, s)| *s != GxState::Vacuum) {
                if state == GxState::Open && b.closed_cleanly() && !b.is_waiting() {
                    info!("worker {}: rolling back GXID {gxid} of departed backend {key}", self.id);
                    self.batch.rollbacks.push((INTERNAL, gxid));
                } else {
                    debug!("worker {}: leaving GXID {gxid} of departed backend {key} to the GTM", self.id);
                }
            }
        }
        if let Some(d) = self.ids.release(b.conn, b.gen, b.is_waiting(), disc) {
            self.batch.disconnects.push((b.conn, d));
        }
    }
}
