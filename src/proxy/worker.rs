//! One worker: a mio event loop owning a set of backends and one GTM link.
//!
//! Each poll round: (1) handle readiness — read backend sockets into their
//! buffers, read the GTM link and route its answers; (2) process every
//! backend with unprocessed input (at most one request outstanding each);
//! (3) flush the round's batch upstream, followed by `F`; (4) write backend
//! output. Nothing blocks: a silent or slow backend only ever delays itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, error, info, trace, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::admission::{self, Admission};
use super::backend::{Backend, Peer, Phase, READ_CHUNK, READ_PAUSE};
use super::batch::{split_answer, Batcher, Forward, Route};
use super::failover::{Action, Failover, Policy};
use super::ids::{ConnIds, Released};
use super::ledger::{GxState, HighWater, Ledger};
use super::upstream::{Incoming, LinkError, Upstream};
use super::vetting::{self, Floors, Verdict};
use crate::codec::frame::{self, TAG_CLOSE, TAG_COMMAND, TAG_STARTUP};
use crate::codec::{ClientFrame, Request, ServerFrame, StartupPacket};
use crate::config::Config;
use crate::netio::ReadOutcome;
use crate::timers::{TimerId, Timers};

const WAKER: Token = Token(0);
const UPSTREAM: Token = Token(1);
const FIRST_BACKEND: usize = 2;
/// Housekeeping period: silent-link and held-request checks.
const TICK: Duration = Duration::from_millis(250);
/// Longest a connection attempt may take to reach the startup answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted from a backend.
const MAX_BACKEND_FRAME: usize = frame::DEFAULT_MAX_FRAME;

/// Orders from the main thread.
#[derive(Debug)]
pub enum Control {
    NewBackend(std::net::TcpStream),
    /// Move to another GTM (gtm_ctl reconnect).
    Reconnect {
        host: String,
        port: u16,
    },
    Shutdown(StopMode),
    /// SIGHUP: settings that can change while running.
    Reload(Arc<Config>),
}

/// Stop modes, as `gtm_ctl stop -m smart|fast|immediate` (SIGTERM, SIGINT,
/// SIGQUIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopMode {
    /// Stop accepting; wait for backends to leave.
    Smart,
    /// Answer what is in flight, then close every backend.
    Fast,
    /// Leave at once.
    Immediate,
}

/// Counters shared with the main thread (and, later, the metrics endpoint).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub backends: AtomicUsize,
    pub requests: AtomicU64,
    pub upstream_frames: AtomicU64,
    pub errors_sent: AtomicU64,
    pub link_failures: AtomicU64,
    /// 1 while the GTM link is ready.
    pub link_up: AtomicUsize,
    /// Requests waiting to be sent (held while the link is down).
    pub queued: AtomicUsize,
    /// Answers owed by the GTM.
    pub in_flight: AtomicUsize,
    /// GXIDs in the ledger.
    pub ledger_gxids: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Tick,
    Failover,
}

/// Route of the proxy's own requests (rollbacks of GXIDs it refuses or
/// cleans up): its answers are dropped.
const INTERNAL: Route = Route { conn: -1, gen: 0 };

pub struct Worker {
    id: usize,
    poll: Poll,
    cfg: Arc<Config>,
    rx: Receiver<Control>,
    backends: Slab<Backend>,
    ids: ConnIds,
    up: Upstream,
    batch: Batcher,
    /// Disconnect messages for identifiers still draining, by identifier.
    draining_peers: HashMap<i16, Request>,
    to_process: Vec<usize>,
    to_write: Vec<usize>,
    timers: Timers<TimerKind>,
    failover: Failover,
    failover_timer: Option<TimerId>,
    /// Why the link is down (for the errors held requests get).
    down_reason: String,
    ledger: Ledger,
    high: Arc<HighWater>,
    /// GXID floors for answer vetting (see [`vetting`]).
    floors: Floors,
    /// The GTM granted the client id this link had before: it is a promoted
    /// standby, where (client id, backend id) may match other links'
    /// transactions, so `MSG_BACKEND_DISCONNECT` is not safe any more.
    keys_unreliable: bool,
    /// Connection attempts failed since the link was last ready.
    connect_failures: u64,
    scratch: Vec<u8>,
    stats: Arc<WorkerStats>,
    stopping: Option<(StopMode, Instant)>,
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        rx: Receiver<Control>,
        stats: Arc<WorkerStats>,
        high: Arc<HighWater>,
    ) -> std::io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let up = Upstream::new(cfg.gtm_host.clone(), cfg.gtm_port, cfg.nodename.clone(), super::keepalive_of(&cfg));
        let policy = Policy::from_config(&cfg);
        let w = Worker {
            id,
            poll,
            ids: ConnIds::new(crate::proxy::ids::MAX_IDS),
            cfg,
            rx,
            backends: Slab::new(),
            up,
            batch: Batcher::default(),
            draining_peers: HashMap::new(),
            to_process: Vec::new(),
            to_write: Vec::new(),
            timers: Timers::new(),
            failover: Failover::new(policy),
            failover_timer: None,
            down_reason: "not connected yet".into(),
            ledger: Ledger::default(),
            high,
            floors: Floors::default(),
            keys_unreliable: false,
            connect_failures: 0,
            scratch: vec![0; READ_CHUNK],
            stats,
            stopping: None,
        };
        Ok((w, waker))
    }

    /// Run until stopped.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let now = Instant::now();
        self.timers.arm_in(now, TICK, TimerKind::Tick);
        self.connect_upstream();
        loop {
            let timeout = self.timers.next_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    error!("worker {}: poll failed: {e}", self.id);
                    break;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.on_control(),
                    UPSTREAM => self.on_upstream_event(ev.is_readable(), ev.is_writable() || ev.is_error()),
                    Token(t) => self.on_backend_event(t - FIRST_BACKEND, ev.is_readable(), ev.is_writable()),
                }
            }
            let now = Instant::now();
            for t in self.timers.expired(now) {
                self.on_timer(t, now);
            }
            self.process_backends();
            self.flush_batch();
            self.write_backends();
            self.publish_gauges();
            if self.finished() {
                break;
            }
        }
        self.shutdown_link();
        info!("worker {} stopped", self.id);
    }

    /// Gauges for the metrics endpoint; plain stores, once per round.
    fn publish_gauges(&self) {
        let s = &self.stats;
        s.link_up.store(self.up.is_ready() as usize, Ordering::Relaxed);
        s.queued.store(self.batch.len(), Ordering::Relaxed);
        s.in_flight.store(self.up.owed(), Ordering::Relaxed);
        s.ledger_gxids.store(self.ledger.len(), Ordering::Relaxed);
    }

    fn finished(&mut self) -> bool {
        let Some((mode, since)) = self.stopping else { return false };
        match mode {
            StopMode::Immediate => true,
            StopMode::Fast => {
                // Close backends that owe nothing; give the rest a bounded wait.
                let idle: Vec<usize> = self.backends.iter().filter(|(_, b)| !b.busy).map(|(k, _)| k).collect();
                for k in idle {
                    self.close_backend(k, "fast shutdown");
                }
                let waited_out = since.elapsed() > Duration::from_secs(5);
                if waited_out {
                    let all: Vec<usize> = self.backends.iter().map(|(k, _)| k).collect();
                    for k in all {
                        self.close_backend(k, "fast shutdown (answer not received in time)");
                    }
                }
                self.backends.is_empty() && (self.up.owed() == 0 || waited_out || !self.up.is_ready())
            }
            StopMode::Smart => self.backends.is_empty() && self.up.owed() == 0,
        }
    }

    /// Send the last disconnects and close the link politely.
    fn shutdown_link(&mut self) {
        if self.up.is_ready() {
            self.flush_batch();
            self.up.say_goodbye();
        }
        self.up.close(self.poll.registry());
    }

    // ----- control channel -------------------------------------------------

    fn on_control(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Control::NewBackend(s) => self.add_backend(s),
                Control::Reconnect { host, port } => {
                    info!("worker {}: moving to GTM {host}:{port}", self.id);
                    self.up.retarget(host, port);
                    self.link_failed(LinkError::ReconnectOrdered);
                }
                Control::Reload(cfg) => {
                    self.failover.policy = Policy::from_config(&cfg);
                    self.cfg = cfg;
                    info!("worker {}: configuration reloaded", self.id);
                }
                Control::Shutdown(mode) => {
                    info!("worker {}: {mode:?} shutdown", self.id);
                    self.stopping = Some((mode, Instant::now()));
                }
            }
        }
    }

    fn add_backend(&mut self, std_sock: std::net::TcpStream) {
        if self.stopping.is_some() {
            return;
        }
        if let Err(e) = std_sock.set_nonblocking(true) {
            warn!("worker {}: cannot make backend socket non-blocking: {e}", self.id);
            return;
        }
        let mut sock = TcpStream::from_std(std_sock);
        let entry = self.backends.vacant_entry();
        let key = entry.key();
        let Some((conn, gen)) = self.ids.alloc(key) else {
            warn!("worker {}: no backend identifier left on this GTM link; refusing connection", self.id);
            super::refuse(sock, "too many connections to this gtm_proxy worker");
            return;
        };
        if let Err(e) = self.poll.registry().register(&mut sock, Token(key + FIRST_BACKEND), Interest::READABLE) {
            warn!("worker {}: cannot register backend: {e}", self.id);
            self.ids.release(conn, gen);
            return;
        }
        entry.insert(Backend::new(sock, conn, gen));
        self.stats.backends.fetch_add(1, Ordering::Relaxed);
        debug!("worker {}: backend {key} accepted as conn id {conn}", self.id);
    }

    // ----- backends --------------------------------------------------------

    fn on_backend_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(b) = self.backends.get_mut(key) else { return };
        if writable && !b.wbuf.is_empty() && !b.write_queued {
            b.write_queued = true;
            self.to_write.push(key);
        }
        if readable {
            match b.read(&mut self.scratch) {
                Ok(ReadOutcome::Drained | ReadOutcome::Full) => {}
                Ok(ReadOutcome::Eof) => b.closing = true,
                Err(e) => {
                    debug!("worker {}: backend {key} read error: {e}", self.id);
                    b.closing = true;
                }
            }
            if !b.queued {
                b.queued = true;
                self.to_process.push(key);
            }
        }
    }

    /// Parse buffered frames of every backend that has some, one request at
    /// a time per backend.
    fn process_backends(&mut self) {
        let mut i = 0;
        // Answers delivered below may queue more backends; keep going.
        while i < self.to_process.len() {
            let key = self.to_process[i];
            i += 1;
            if let Some(b) = self.backends.get_mut(key) {
                b.queued = false;
            } else {
                continue;
            }
            self.process_backend(key);
        }
        self.to_process.clear();
    }

    fn process_backend(&mut self, key: usize) {
        loop {
            let Some(b) = self.backends.get_mut(key) else { return };
            if b.busy {
                break;
            }
            let raw = match frame::split(&mut b.rbuf, MAX_BACKEND_FRAME) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => {
                    warn!("worker {}: backend {key}: {e}; closing it", self.id);
                    b.send_error("FATAL", &format!("invalid frame: {e}"));
                    b.closing = true;
                    b.rbuf.clear();
                    break;
                }
            };
            self.handle_frame(key, raw);
        }
        let Some(b) = self.backends.get_mut(key) else { return };
        if b.read_paused && b.rbuf.len() < READ_PAUSE {
            // Edge-triggered: nothing will tell us the socket still has data.
            match b.read(&mut self.scratch) {
                Ok(ReadOutcome::Drained | ReadOutcome::Full) => {}
                Ok(ReadOutcome::Eof) | Err(_) => b.closing = true,
            }
            if !b.busy && !b.rbuf.is_empty() && !b.queued {
                b.queued = true;
                self.to_process.push(key);
            }
        }
        if !b.wbuf.is_empty() && !b.write_queued {
            b.write_queued = true;
            self.to_write.push(key);
        }
        if b.closing && !b.busy && b.wbuf.is_empty() {
            self.close_backend(key, "closed by peer");
        }
    }

    fn handle_frame(&mut self, key: usize, raw: crate::codec::RawFrame) {
        let id = self.id;
        let Some(b) = self.backends.get_mut(key) else { return };
        if b.phase == Phase::Startup {
            if raw.tag != TAG_STARTUP {
                warn!("worker {id}: backend {key}: first frame is '{}', not a startup packet", raw.tag as char);
                b.send_error("ERROR", &format!("Expecting a startup message, but received {}", raw.tag as char));
                b.closing = true;
                b.rbuf.clear();
                return;
            }
            match StartupPacket::decode(&raw.body) {
                Ok(sp) => {
                    b.peer = Some(Peer::from_startup(&sp));
                    b.phase = Phase::Ready;
                    crate::codec::startup::encode_ready(&mut b.wbuf, 0);
                }
                Err(e) => {
                    warn!("worker {id}: backend {key}: bad startup packet ({} bytes): {e}", raw.body.len());
                    b.send_error("FATAL", &format!("invalid startup packet: {e}"));
                    b.closing = true;
                    b.rbuf.clear();
                }
            }
            return;
        }
        match raw.tag {
            TAG_COMMAND => {}
            TAG_CLOSE => {
                b.closing = true;
                b.clean_close = true;
                return;
            }
            other => {
                self.reject(key, &format!("invalid frontend message type {other}"));
                return;
            }
        }
        let cmd = match ClientFrame::decode(raw, false) {
            Ok(ClientFrame::Command(c)) => c,
            Ok(_) => return,
            Err(e) => {
                self.reject(key, &format!("invalid message: {e}"));
                return;
            }
        };
        let req = match cmd.request() {
            Ok(r) => r,
            Err(e) => {
                self.reject(key, &format!("invalid {} message: {e}", cmd.msg_type));
                return;
            }
        };
        let route = Route { conn: b.conn, gen: b.gen };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if !self.up.is_ready() {
            if !self.failover.holding() {
                let msg = format!("GTM unavailable: {}", self.down_reason);
                self.reject(key, &msg);
                return;
            }
            if self.batch.len() >= self.cfg.hold_max_requests {
                let msg = format!(
                    "GTM unavailable: {} (hold_max_requests = {} requests already waiting)",
                    self.down_reason, self.cfg.hold_max_requests
                );
                self.reject(key, &msg);
                return;
            }
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
        self.enqueued(key, route);
    }

    fn enqueued(&mut self, key: usize, route: Route) {
        trace!("worker {}: backend {key} (id {}) request queued", self.id, route.conn);
        self.ids.add_inflight(route.conn, route.gen);
        if let Some(b) = self.backends.get_mut(key) {
            b.busy = true;
            b.since = Instant::now();
        }
    }

    /// Answer one backend with an `E` and go on with the next frame.
    fn reject(&mut self, key: usize, msg: &str) {
        warn!("worker {}: backend {key}: {msg}", self.id);
        self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = self.backends.get_mut(key) {
            b.send_error("ERROR", msg);
        }
    }

    fn write_backends(&mut self) {
        let limit = self.cfg.backend_output_limit;
        let mut keys = std::mem::take(&mut self.to_write);
        for &key in &keys {
            let Some(b) = self.backends.get_mut(key) else { continue };
            b.write_queued = false;
            match b.flush() {
                Ok(true) => {
                    if b.want_write {
                        // Drained: readable interest only, so that writable
                        // edges stop waking this loop.
                        b.want_write = false;
                        let _ = self.poll.registry().reregister(
                            &mut b.sock,
                            Token(key + FIRST_BACKEND),
                            Interest::READABLE,
                        );
                    }
                    if b.closing && !b.busy {
                        self.close_backend(key, "closed by peer");
                    }
                }
                Ok(false) => {
                    if b.wbuf.len() > limit {
                        warn!("worker {}: backend {key} does not read its answers; closing it", self.id);
                        self.close_backend(key, "output limit exceeded");
                    } else if !b.want_write {
                        b.want_write = true;
                        let _ = self.poll.registry().reregister(
                            &mut b.sock,
                            Token(key + FIRST_BACKEND),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                }
                Err(e) => {
                    debug!("worker {}: backend {key} write error: {e}", self.id);
                    b.wbuf.clear();
                    b.closing = true;
                    if !b.busy {
                        self.close_backend(key, "write error");
                    }
                }
            }
        }
        keys.clear();
        if self.to_write.is_empty() {
            self.to_write = keys;
        }
    }

    /// Drop the backend's socket. Its identifier drains: once nothing is in
    /// flight for it, `MSG_BACKEND_DISCONNECT` is sent and it can be reused.
    fn close_backend(&mut self, key: usize, why: &str) {
        if !self.backends.contains(key) {
            return;
        }
        let mut b = self.backends.remove(key);
        let _ = self.poll.registry().deregister(&mut b.sock);
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
                if state == GxState::Open && b.clean_close && !b.busy {
                    info!("worker {}: rolling back GXID {gxid} of departed backend {key}", self.id);
                    self.batch.rollbacks.push((INTERNAL, gxid));
                } else {
                    debug!("worker {}: leaving GXID {gxid} of departed backend {key} to the GTM", self.id);
                }
            }
        }
        match self.ids.release(b.conn, b.gen) {
            Released::Drained => {
                if let Some(d) = disc {
                    self.batch.disconnects.push((b.conn, d));
                }
            }
            Released::No => {
                if let Some(d) = disc {
                    self.draining_peers.insert(b.conn, d);
                }
            }
        }
    }

    // ----- upstream --------------------------------------------------------

    fn connect_upstream(&mut self) {
        if let Err(e) = self.up.connect(self.poll.registry(), UPSTREAM) {
            self.link_failed(e);
        }
    }

    fn on_upstream_event(&mut self, readable: bool, writable: bool) {
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
        info!("worker {}: connected to GTM {addr} as client id {client_id}", self.id);
        if same_client_id {
            warn!(
                "worker {}: GTM {addr} granted this link's previous client id {client_id}: \
                 treating it as a promoted standby (backend disconnects are no longer sent)",
                self.id
            );
            self.keys_unreliable = true;
        }
        self.floors.link = self.high.get();
        self.failover.on_connected();
        self.connect_failures = 0;
        if let Some(t) = self.failover_timer.take() {
            self.timers.cancel(t);
        }
        if !self.batch.is_empty() {
            info!("worker {}: sending {} held requests", self.id, self.batch.len());
        }
    }

    /// Split one answer per backend, vet each, and queue it for its backend.
    fn route_answer(&mut self, f: &ServerFrame) -> Result<(), LinkError> {
        let Some(pending) = self.up.pop_owed() else { return Err(LinkError::Unsolicited) };
        self.stats.upstream_frames.fetch_add(1, Ordering::Relaxed);
        let mut delivered = Vec::with_capacity(pending.len());
        let mut refused = Vec::new();
        let (id, floors) = (self.id, self.floors);
        let res = split_answer(&pending, f, |route, gxid, answer| {
            delivered.push(route);
            let verdict = vetting::vet(&mut self.ledger, &self.high, floors, &pending, route, gxid, answer);
            match verdict {
                Verdict::Pass => {}
                Verdict::DuplicateGxid { gxid, floor } => {
                    error!(
                        "worker {id}: GTM handed out GXID {gxid}, not above GXID {floor} already handed \
                         out by this proxy: refusing it to avoid duplicate transaction ids"
                    );
                    refused.push(gxid);
                }
                Verdict::AlreadyEnded { gxid, .. } => {
                    warn!("worker {id}: GTM does not know GXID {gxid} any more; its end is reported as done")
                }
                Verdict::Lost { gxid } => {
                    error!("worker {id}: GTM lost open transaction {gxid}; its backend must abort")
                }
            }
            trace!("worker {id}: answer for id {} (gxid {gxid}): {answer:?}, {verdict:?}", route.conn);
            if let Some(key) = self.ids.lookup(route.conn, route.gen) {
                if let Some(b) = self.backends.get_mut(key) {
                    if verdict.write(answer, &mut b.wbuf) {
                        self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    b.busy = false;
                    if !b.queued {
                        b.queued = true;
                        self.to_process.push(key);
                    }
                }
            }
        });
        if !refused.is_empty() {
            // Not rolled back: a GTM whose counter is behind may hold an
            // older transaction with the same GXID, and ending that one
            // could make a commit in progress look finished. Left for the
            // DBA, who has to repair the GTM anyway.
            error!("worker {}: GXIDs refused and left open on GTM {}: {refused:?}", self.id, self.up.addr_string());
        }
        if let Err(e) = res {
            // Put the entry back: the owner decides what to do with it.
            self.up.unpop_owed(pending);
            return Err(LinkError::OutOfStep(e));
        }
        for route in delivered {
            self.request_done(route);
        }
        Ok(())
    }

    fn request_done(&mut self, route: Route) {
        if self.ids.done_inflight(route.conn, route.gen) == Released::Drained {
            if let Some(d) = self.draining_peers.remove(&route.conn) {
                self.batch.disconnects.push((route.conn, d));
            }
        }
    }

    fn flush_batch(&mut self) {
        if !self.up.is_ready() || self.batch.is_empty() {
            return;
        }
        if let Err(e) = self.up.send_batch(&mut self.batch, self.cfg.batch_max) {
            self.link_failed(e);
        }
    }

    /// The GTM link is unusable (or a connection attempt failed). Work that
    /// was sent and not answered goes back in front of the held requests, to
    /// be replayed on the next link; the failover stages decide when that is.
    fn link_failed(&mut self, err: LinkError) {
        let ordered = matches!(err, LinkError::ReconnectOrdered);
        let was_ready = self.up.is_ready();
        self.up.close(self.poll.registry());
        let owed = self.up.owed();
        if was_ready {
            self.stats.link_failures.fetch_add(1, Ordering::Relaxed);
            error!(
                "worker {}: GTM link {} lost: {err}; {owed} requests in flight will be replayed, {} held",
                self.id,
                self.up.addr_string(),
                self.batch.len()
            );
        } else if !ordered {
            // Log the first failures, then ever more rarely: a GTM that is
            // down for an hour must not flood the log.
            self.connect_failures += 1;
            let n = self.connect_failures;
            if n <= 3 || n.is_power_of_two() {
                warn!("worker {}: cannot connect to GTM {} (attempt {n}): {err}", self.id, self.up.addr_string());
            } else {
                debug!("worker {}: cannot connect to GTM {} (attempt {n}): {err}", self.id, self.up.addr_string());
            }
        }
        self.up.requeue_owed(&mut self.batch);
        if was_ready {
            self.floors.replay = self.high.get();
        }
        if !ordered {
            self.down_reason = format!("{err} (GTM {})", self.up.addr_string());
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

    fn perform(&mut self, action: Action) {
        if let Some(t) = self.failover_timer.take() {
            self.timers.cancel(t);
        }
        match action {
            Action::Connect => self.connect_upstream(),
            Action::Wait(d) => {
                self.failover_timer = Some(self.timers.arm_in(Instant::now(), d, TimerKind::Failover));
            }
            Action::FailHeldAndWait(d) => {
                error!(
                    "worker {}: GTM unavailable, giving up on {} held requests; still retrying every {d:?}",
                    self.id,
                    self.batch.len()
                );
                let msg = format!("GTM unavailable: {}", self.down_reason);
                for route in self.batch.take_routes() {
                    self.fail_request(route, &msg);
                }
                self.failover_timer = Some(self.timers.arm_in(Instant::now(), d, TimerKind::Failover));
            }
        }
    }

    /// Answer a request that will not reach the GTM with an `E`.
    fn fail_request(&mut self, route: Route, msg: &str) {
        if let Some(key) = self.ids.lookup(route.conn, route.gen) {
            if let Some(b) = self.backends.get_mut(key) {
                b.send_error("ERROR", msg);
                b.busy = false;
                self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
                if !b.queued {
                    b.queued = true;
                    self.to_process.push(key);
                }
            }
        }
        self.request_done(route);
    }

    /// Held requests older than `hold_timeout` get an `E`.
    fn expire_held(&mut self, now: Instant) {
        let limit = self.cfg.hold_timeout;
        let expired: Vec<Route> = self
            .backends
            .iter()
            .filter(|(_, b)| b.busy && now.duration_since(b.since) > limit)
            .map(|(_, b)| Route { conn: b.conn, gen: b.gen })
            .collect();
        for route in expired {
            if self.batch.drop_route(route) > 0 {
                let msg = format!("GTM unavailable: {} (request held longer than hold_timeout)", self.down_reason);
                warn!("worker {}: backend id {}: {msg}", self.id, route.conn);
                self.fail_request(route, &msg);
            }
        }
    }

    fn on_timer(&mut self, t: TimerKind, now: Instant) {
        match t {
            TimerKind::Tick => {
                self.timers.arm_in(now, TICK, TimerKind::Tick);
                let limit = self.cfg.upstream_timeout;
                if !limit.is_zero() && self.up.silent_longer_than(now, limit) {
                    let n = self.up.owed();
                    self.link_failed(LinkError::Silent(limit, n));
                }
                let attempt_limit = if limit.is_zero() { CONNECT_TIMEOUT } else { limit.min(CONNECT_TIMEOUT) };
                if self.up.attempt_longer_than(now, attempt_limit) {
                    // A GTM that accepts but never answers (stopped process).
                    self.link_failed(LinkError::StartupTimeout(attempt_limit));
                }
                if !self.up.is_ready() && !self.batch.is_empty() {
                    self.expire_held(now);
                }
            }
            TimerKind::Failover => {
                self.failover_timer = None;
                if self.up.is_down() {
                    let action = self.failover.on_timer();
                    self.perform(action);
                }
            }
        }
    }
}
