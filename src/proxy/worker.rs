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

use bytes::BytesMut;
use crossbeam_channel::Receiver;
use log::{debug, error, info, trace, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::backend::{Backend, Peer, Phase, READ_CHUNK, READ_PAUSE};
use super::batch::{split_answer, Answer, Batcher, Forward, Pending, Route};
use super::failover::{Action, Failover, Policy};
use super::ids::{ConnIds, Released};
use super::ledger::{gxid_after, GxState, HighWater, Ledger};
use super::upstream::{LinkError, LinkState, Upstream};
use crate::codec::frame::{self, TAG_CLOSE, TAG_COMMAND, TAG_STARTUP};
use crate::codec::{ClientFrame, ErrorFields, MsgType, Request, ResultType, ServerFrame, StartupPacket};
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
    /// Highest GXID handed out by this proxy when the current link became
    /// ready: the GTM must hand out GXIDs above it.
    link_floor: u32,
    /// Highest GXID handed out before the last link loss: an unknown-GXID
    /// answer to a commit or rollback of such a GXID means it is done.
    replay_floor: u32,
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
            link_floor: 0,
            replay_floor: 0,
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
        s.in_flight.store(self.up.fifo.len(), Ordering::Relaxed);
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
                self.backends.is_empty() && (self.up.fifo.is_empty() || waited_out || !self.up.is_ready())
            }
            StopMode::Smart => self.backends.is_empty() && self.up.fifo.is_empty(),
        }
    }

    /// Send the last disconnects and close the link politely.
    fn shutdown_link(&mut self) {
        if self.up.is_ready() {
            self.flush_batch();
            crate::codec::encode_close(&mut self.up.wbuf);
            let _ = self.up.flush();
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
                    self.up.host = host;
                    self.up.port = port;
                    self.link_failed(LinkError::Refused("reconnect ordered".into()), true);
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
        match &req {
            Request::TxnCommitMulti(v) | Request::TxnRollbackMulti(v) => v.iter().for_each(|g| self.ledger.ending(*g)),
            Request::TxnRollback { gxid }
            | Request::TxnCommit { gxid, .. }
            | Request::TxnPrepare { gxid }
            | Request::TxnStartPrepared { gxid, .. } => self.ledger.ending(*gxid),
            Request::TxnCommitPrepared { gxid, prepared_gxid, .. } => {
                self.ledger.ending(*gxid);
                self.ledger.ending(*prepared_gxid);
            }
            _ => {}
        }
        if let Some(why) = endangers_gtm(&req) {
            self.reject(key, &format!("{} refused by gtm_proxy: {why}", cmd.msg_type));
            return;
        }
        let grouped = match req {
            Request::TxnBeginGetGxid(bg) => {
                self.batch.begins.push((route, bg));
                None
            }
            Request::TxnRollback { gxid } => {
                self.batch.rollbacks.push((route, gxid));
                None
            }
            Request::TxnCommitMulti(ref v) if v.len() == 1 => {
                self.batch.commits.push((route, v[0]));
                None
            }
            Request::SnapshotGetMulti(ref v) if v.len() == 1 => {
                self.batch.snapshots.push((route, v[0]));
                None
            }
            other => Some(other),
        };
        let Some(req) = grouped else {
            self.enqueued(key, route);
            return;
        };
        match classify(&req) {
            Class::Group => {
                // Handled above; classify agrees with that match.
                self.reject(key, "internal error: grouped request not queued");
            }
            Class::Forward => {
                let ends = match &req {
                    Request::TxnCommit { gxid, .. } => [*gxid, 0],
                    Request::TxnCommitPrepared { gxid, prepared_gxid, .. } => [*gxid, *prepared_gxid],
                    _ => [0; 2],
                };
                self.batch.forwards.push_back(Forward { route, msg_type: cmd.msg_type, payload: cmd.payload, ends });
                self.enqueued(key, route);
            }
            Class::RewriteBeginMulti => {
                let Request::TxnBeginGetGxidMulti(mut elems) = req else { return };
                for e in &mut elems {
                    e.conn_id = route.conn;
                }
                let mut payload = BytesMut::new();
                Request::TxnBeginGetGxidMulti(elems).encode_payload(&mut payload);
                self.batch.forwards.push_back(Forward {
                    route,
                    msg_type: cmd.msg_type,
                    payload: payload.freeze(),
                    ends: [0; 2],
                });
                self.enqueued(key, route);
            }
            Class::Refuse(why) => {
                self.reject(key, &format!("{} is not accepted by gtm_proxy: {why}", cmd.msg_type));
            }
            Class::Unknown => {
                self.reject(key, &format!("invalid frontend message type {}", cmd.msg_type.0));
            }
        }
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
            self.link_failed(e, false);
        }
    }

    fn on_upstream_event(&mut self, readable: bool, writable: bool) {
        if writable {
            if let Err(e) = self.up.on_writable() {
                self.link_failed(e, false);
                return;
            }
        }
        if readable {
            loop {
                if let Err(e) = self.up.read(&mut self.scratch) {
                    // Route what did arrive before reporting the failure.
                    let _ = self.route_answers();
                    self.link_failed(e, false);
                    return;
                }
                if let Err(e) = self.route_answers() {
                    self.link_failed(e, false);
                    return;
                }
                if !self.up.read_paused() {
                    break;
                }
            }
        }
    }

    /// Decode whole frames from the GTM and hand each answer to its backends.
    fn route_answers(&mut self) -> Result<(), LinkError> {
        loop {
            let raw = match frame::split(&mut self.up.rbuf, frame::DEFAULT_MAX_FRAME * 4) {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(()),
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            };
            let proxied = self.up.state == LinkState::Ready;
            let f = ServerFrame::decode(raw, proxied).map_err(|e| LinkError::Protocol(e.to_string()))?;
            if self.up.state == LinkState::Starting {
                match f {
                    ServerFrame::Ready { client_id } => {
                        info!(
                            "worker {}: connected to GTM {} as client id {client_id}",
                            self.id,
                            self.up.addr_string()
                        );
                        let asked = self.up.client_id;
                        if asked != 0 && asked == client_id {
                            warn!(
                                "worker {}: GTM {} granted this link's previous client id {client_id}: \
                                 treating it as a promoted standby (backend disconnects are no longer sent)",
                                self.id,
                                self.up.addr_string()
                            );
                            self.keys_unreliable = true;
                        }
                        self.up.client_id = client_id;
                        self.up.state = LinkState::Ready;
                        self.up.last_read = Instant::now();
                        self.link_floor = self.high.get();
                        self.failover.on_connected();
                        self.connect_failures = 0;
                        if let Some(t) = self.failover_timer.take() {
                            self.timers.cancel(t);
                        }
                        if !self.batch.is_empty() {
                            info!("worker {}: sending {} held requests", self.id, self.batch.len());
                        }
                        continue;
                    }
                    ServerFrame::Error { fields, .. } => return Err(LinkError::Refused(fields.message())),
                    _ => return Err(LinkError::Protocol("expected the startup answer".into())),
                }
            }
            let Some(pending) = self.up.fifo.pop_front() else {
                return Err(LinkError::Protocol("answer received while none was owed".into()));
            };
            self.stats.upstream_frames.fetch_add(1, Ordering::Relaxed);
            let mut delivered = Vec::with_capacity(pending.len());
            let mut refused = Vec::new();
            let (link_floor, replay_floor) = (self.link_floor, self.replay_floor);
            let is_commit = matches!(pending, Pending::Commit(_));
            let id = self.id;
            let res = split_answer(&pending, &f, |route, gxid, answer| {
                delivered.push(route);
                let owned_err: ErrorFields;
                let owned_ans: Answer<'_>;
                let mut a = answer;
                match answer {
                    Answer::Begin { gxid, .. } => {
                        let stale = link_floor != 0 && !gxid_after(*gxid, link_floor);
                        if stale || self.ledger.state(*gxid).is_some() {
                            error!(
                                "worker {id}: GTM handed out GXID {gxid}, not above GXID {link_floor} already handed \
                                 out by this proxy: refusing it to avoid duplicate transaction ids"
                            );
                            refused.push(*gxid);
                            owned_err = ErrorFields::new("ERROR", "GTM handed out a GXID that was already in use")
                                .with_detail(&format!(
                                    "GXID {gxid} is not above {link_floor}, the highest GXID handed out before; \
                                     the GTM's state is behind this proxy's"
                                ));
                            owned_ans = Answer::Error(&owned_err);
                            a = &owned_ans;
                        } else {
                            self.ledger.begun(route, *gxid);
                            self.high.observe(*gxid);
                        }
                    }
                    Answer::CommitOk | Answer::RollbackOk { .. } => self.ledger.ended(gxid),
                    Answer::Result {
                        result_type: ResultType::TXN_COMMIT_RESULT | ResultType::TXN_COMMIT_PREPARED_RESULT,
                        payload,
                    } if payload.len() == 8 && payload[4..8] == [0, 0, 0, 0] => {
                        if let Pending::Forward(f) = &pending {
                            self.ledger.ended(f.ends[0]);
                            self.ledger.ended(f.ends[1]);
                        }
                    }
                    Answer::Result { result_type: ResultType::TXN_BEGIN_GETGXID_AUTOVACUUM_RESULT, payload }
                        if payload.len() == 4 =>
                    {
                        let vac = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        self.ledger.begun_vacuum(route, vac);
                        self.high.observe(vac);
                    }
                    Answer::ElementFailed { status: -1, .. }
                        if replay_floor != 0 && gxid != 0 && !gxid_after(gxid, replay_floor) =>
                    {
                        warn!("worker {id}: GTM does not know GXID {gxid} any more; its end is reported as done");
                        self.ledger.ended(gxid);
                        owned_ans = if is_commit { Answer::CommitOk } else { Answer::RollbackOk { gxid } };
                        a = &owned_ans;
                    }
                    Answer::Snapshot { status: crate::codec::types::status::NOT_FOUND, .. }
                        if gxid != 0 && self.ledger.is_open(gxid) =>
                    {
                        error!("worker {id}: GTM lost open transaction {gxid}; its backend must abort");
                        owned_err =
                            ErrorFields::new("ERROR", "transaction is unknown to the GTM").with_detail(&format!(
                                "GXID {gxid} was handed out by this proxy and is still open, but the GTM no longer \
                                 knows it (GTM restart or failover lost it); the transaction must be aborted"
                            ));
                        owned_ans = Answer::Error(&owned_err);
                        a = &owned_ans;
                        self.ledger.ended(gxid);
                    }
                    _ => {}
                }
                trace!("worker {id}: answer for id {} (gxid {gxid}): {a:?}", route.conn);
                if let Some(key) = self.ids.lookup(route.conn, route.gen) {
                    if let Some(b) = self.backends.get_mut(key) {
                        a.encode(&mut b.wbuf);
                        b.busy = false;
                        if matches!(a, Answer::Error(_) | Answer::ElementFailed { .. }) {
                            self.stats.errors_sent.fetch_add(1, Ordering::Relaxed);
                        }
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
                self.up.fifo.push_front(pending);
                return Err(LinkError::Protocol(e.to_string()));
            }
            for route in delivered {
                self.request_done(route);
            }
        }
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
        let n = self.batch.flush(self.cfg.batch_max, &mut self.up.wbuf, &mut self.up.fifo);
        if n > 0 && self.up.fifo.len() == n {
            // Nothing was owed before: the silence clock starts now.
            self.up.last_read = Instant::now();
        }
        if let Err(e) = self.up.flush() {
            self.link_failed(e, false);
        }
    }

    /// The GTM link is unusable (or a connection attempt failed). Work that
    /// was sent and not answered goes back in front of the held requests, to
    /// be replayed on the next link; the failover stages decide when that is.
    fn link_failed(&mut self, err: LinkError, ordered: bool) {
        let was = self.up.state;
        self.up.close(self.poll.registry());
        let owed = self.up.fifo.len();
        if was == LinkState::Ready {
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
        while let Some(p) = self.up.fifo.pop_back() {
            self.batch.requeue(p);
        }
        if was == LinkState::Ready {
            self.replay_floor = self.high.get();
        }
        if !ordered {
            self.down_reason = format!("{err} (GTM {})", self.up.addr_string());
        }
        let action = if ordered {
            self.failover.on_reconnect_order()
        } else if was == LinkState::Ready {
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
                if self.up.is_ready()
                    && !limit.is_zero()
                    && !self.up.fifo.is_empty()
                    && now.duration_since(self.up.last_read) > limit
                {
                    let n = self.up.fifo.len();
                    self.link_failed(LinkError::Silent(limit, n), false);
                }
                let attempt_limit = if limit.is_zero() { CONNECT_TIMEOUT } else { limit.min(CONNECT_TIMEOUT) };
                if matches!(self.up.state, LinkState::Connecting | LinkState::Starting)
                    && now.duration_since(self.up.attempt_started) > attempt_limit
                {
                    // A GTM that accepts but never answers (stopped process).
                    self.link_failed(LinkError::StartupTimeout(attempt_limit), false);
                }
                if !self.up.is_ready() && !self.batch.is_empty() {
                    self.expire_held(now);
                }
            }
            TimerKind::Failover => {
                self.failover_timer = None;
                if self.up.state == LinkState::Down {
                    let action = self.failover.on_timer();
                    self.perform(action);
                }
            }
        }
    }
}

/// Requests the real GTM answers by crashing or corrupting memory (see the
/// simulator's notes); no XL backend sends them, so refusing them costs
/// nothing and keeps one bad client from taking the cluster's GTM down.
fn endangers_gtm(req: &Request) -> Option<&'static str> {
    use Request::*;
    const MAX: usize = crate::codec::types::MAX_GLOBAL_TRANSACTIONS;
    match req {
        TxnCommitMulti(v) | TxnRollbackMulti(v) | SnapshotGetMulti(v) if v.is_empty() || v.len() > MAX => {
            Some("the element count must be between 1 and 16384")
        }
        TxnBeginGetGxidMulti(v) if v.is_empty() || v.len() > MAX => {
            Some("the element count must be between 1 and 16384")
        }
        SnapshotGet { count, .. } | SnapshotGxidGet { count, .. } if *count != 1 => Some("the count must be 1"),
        _ => None,
    }
}

/// What the proxy does with a request type.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// Grouped into a `*_MULTI`.
    Group,
    /// Sent 1:1 with the backend's identifier in the header.
    Forward,
    /// A backend's own begin MULTI: forwarded with every element's
    /// connection id set to the backend's identifier.
    RewriteBeginMulti,
    /// A GTM message no backend may send through a proxy.
    Refuse(&'static str),
    /// Not an XL 10 message type.
    Unknown,
}

fn classify(req: &Request) -> Class {
    use Request::*;
    match req {
        TxnBeginGetGxid(_) | TxnRollback { .. } => Class::Group,
        TxnCommitMulti(v) | SnapshotGetMulti(v) if v.len() == 1 => Class::Group,
        TxnBeginGetGxidMulti(_) => Class::RewriteBeginMulti,
        BackendDisconnect { .. } => Class::Refuse("only the proxy sends it"),
        SequenceGetLast { .. } => Class::Refuse("the GTM never answers it"),
        Other { msg_type, .. } => match *msg_type {
            MsgType::TXN_GET_STATUS | MsgType::TXN_GET_ALL_PREPARED => Class::Refuse("the GTM never answers it"),
            MsgType::NODE_LIST | MsgType::TXN_GXID_LIST | MsgType::SEQUENCE_LIST => Class::Forward,
            t if t.name().is_some() => Class::Refuse("standby and internal messages are not proxied"),
            _ => Class::Unknown,
        },
        _ => Class::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn classification() {
        let b = crate::codec::Begin { isolation: 1, read_only: false, session_id: Bytes::from_static(b"\0") };
        assert_eq!(classify(&Request::TxnBeginGetGxid(b.clone())), Class::Group);
        assert_eq!(classify(&Request::TxnCommitMulti(vec![1])), Class::Group);
        assert_eq!(classify(&Request::TxnCommitMulti(vec![1, 2])), Class::Forward);
        assert_eq!(classify(&Request::SnapshotGetMulti(vec![0])), Class::Group);
        assert_eq!(classify(&Request::TxnRollback { gxid: 5 }), Class::Group);
        assert_eq!(classify(&Request::TxnBegin(b)), Class::Forward);
        assert_eq!(classify(&Request::TxnGetGxid { handle: 1 }), Class::Forward);
        assert_eq!(classify(&Request::SnapshotGxidGet { count: 1, gxid: 3 }), Class::Forward);
        assert!(matches!(classify(&Request::SequenceGetLast { key: Bytes::new() }), Class::Refuse(_)));
        let other = |t| Request::Other { msg_type: MsgType(t), payload: Bytes::new() };
        assert!(matches!(classify(&other(59)), Class::Refuse(_)));
        assert!(matches!(classify(&other(12)), Class::Refuse(_)));
        assert_eq!(classify(&other(99)), Class::Unknown);
        assert_eq!(classify(&other(9)), Class::Forward);
    }
}
