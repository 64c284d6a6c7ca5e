//! The event loop: one mio `Poll` per loop thread driving many simulated
//! backends over non-blocking sockets.
//!
//! Lifecycle of one backend slot:
//!
//! ```text
//! Queued ──connect──▶ Connecting ──writable──▶ Handshake ──'R'──▶ Active ◀─┐
//!   ▲                     │                       │                │ txns  │
//!   │ backoff timer       └──── error ────────────┴──── error ─────┴───────┘
//! Backoff ◀──── (reconnect budget left) ──── error ──▶ Stopped (budget spent)
//! Active/... ──run over──▶ Closed (after the open transaction commits, or at the drain deadline)
//! ```
//!
//! Connects are started in waves: at most `connect_concurrency` slots of a
//! loop are between `connect()` and `R`, so a listen backlog is never
//! flooded. Timeouts (connect, request) are checked by a sweep every
//! `SWEEP` (100 ms); think time and reconnect backoff use the crate's
//! [`Timers`], one pending timer per slot. With a ramp, a slot's first
//! connect also waits for its turn in the schedule.
//!
//! The measurement window is shared by all loop threads ([`Shared`]): it
//! opens `warmup` after the last thread finished its initial connects and
//! lasts `duration`. Only answers that arrive inside it are counted.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::account::{self, backoff, io_error, Next, CLOSE_FRAME, MAX_BUFFERED, SCRATCH};
use super::backend::{Backend, BackendError, ErrorKind, Op, Outcome};
use super::shared::{Shared, Window};
use super::stats::Stats;
use super::timeline::Timeline;
use crate::netio::{self, ReadOutcome};
use crate::timers::{TimerId, Timers};

/// Period of the timeout sweep (and the longest poll timeout).
const SWEEP: Duration = Duration::from_millis(100);
/// Poll timeout while a thread waits to learn the window.
const WINDOW_POLL: Duration = Duration::from_millis(1);

/// Settings every loop thread shares.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub addr: SocketAddr,
    pub think: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Reconnects allowed per backend over the run.
    pub max_reconnects: u32,
    /// Connects in flight per loop thread.
    pub connect_concurrency: usize,
    /// After the window closes, how long open transactions get to finish.
    pub drain: Duration,
    /// Process id used in session ids.
    pub pid: u32,
    pub session_ids: bool,
    pub threads: usize,
    /// Initial connects are spread evenly over this long (zero: as fast as
    /// `connect_concurrency` allows).
    pub ramp: Duration,
    /// Backends over all threads (for the ramp schedule).
    pub backends: usize,
    /// Keep a per-100 ms [`Timeline`] of the window.
    pub timeline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a connect slot.
    Queued,
    /// `connect()` issued, not yet writable.
    Connecting,
    /// Startup sent, waiting for `R`.
    Handshake,
    /// Established: idle, thinking or in a transaction.
    Active,
    /// Waiting for the reconnect timer.
    Backoff,
    /// Done (run over).
    Closed,
    /// Gave up after too many errors.
    Stopped,
}

#[derive(Debug)]
struct Slot {
    backend: Backend,
    /// Global backend number (for logs).
    id: usize,
    phase: Phase,
    conn: Option<usize>,
    reconnects: u32,
    /// The first connect attempt has not resolved yet (ramp accounting).
    initial: bool,
    /// Counts against the connects-in-flight bound.
    in_wave: bool,
    connect_started: Instant,
    /// The pending think or backoff timer.
    timer: Option<TimerId>,
}

impl Slot {
    /// The slot's connect attempt has resolved (answered or given up): it no
    /// longer counts against the wave bound, and its first attempt no longer
    /// holds back the end of the ramp.
    fn settle_connect(&mut self, in_flight: &mut usize, ramp_left: &mut usize, shared: &Shared) {
        if self.in_wave {
            self.in_wave = false;
            *in_flight -= 1;
        }
        if self.initial {
            self.initial = false;
            *ramp_left -= 1;
            if *ramp_left == 0 {
                shared.ramp_done();
            }
        }
    }
}

#[derive(Debug)]
struct Conn {
    sock: TcpStream,
    slot: usize,
    connected: bool,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// One loop thread.
pub struct Worker {
    cfg: Arc<LoopConfig>,
    shared: Arc<Shared>,
    thread: usize,
    poll: Poll,
    conns: Slab<Conn>,
    slots: Vec<Slot>,
    queue: VecDeque<usize>,
    in_flight: usize,
    /// Think-time and reconnect-backoff timers, by slot.
    timers: Timers<usize>,
    /// Slots not yet Closed or Stopped.
    live: usize,
    ramp_left: usize,
    window: Option<Window>,
    stopping: bool,
    drain_deadline: Option<Instant>,
    next_sweep: Instant,
    txn_seq: u64,
    scratch: Box<[u8]>,
    stats: Stats,
}

impl Worker {
    /// `backends`: (global number, node name) of the backends this thread drives.
    pub fn new(
        thread: usize,
        backends: Vec<(usize, String)>,
        cfg: Arc<LoopConfig>,
        shared: Arc<Shared>,
    ) -> io::Result<Worker> {
        let now = Instant::now();
        let slots: Vec<Slot> = backends
            .into_iter()
            .map(|(id, node)| Slot {
                backend: Backend::new(&node, cfg.pid, cfg.session_ids),
                id,
                phase: Phase::Queued,
                conn: None,
                reconnects: 0,
                initial: true,
                in_wave: false,
                connect_started: now,
                timer: None,
            })
            .collect();
        let n = slots.len();
        Ok(Worker {
            poll: Poll::new()?,
            conns: Slab::with_capacity(n),
            queue: (0..n).collect(),
            in_flight: 0,
            timers: Timers::new(),
            live: n,
            ramp_left: n,
            window: None,
            stopping: false,
            drain_deadline: None,
            next_sweep: now + SWEEP,
            txn_seq: 0,
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            stats: Stats::default(),
            slots,
            cfg,
            shared,
            thread,
        })
    }

    /// Run until the window has closed and every backend has finished (or
    /// every backend has given up). Returns what was measured.
    pub fn run(mut self) -> io::Result<Stats> {
        let mut events = Events::with_capacity(1024);
        if self.ramp_left == 0 {
            self.shared.ramp_done();
        }
        loop {
            let now = Instant::now();
            self.check_phase(now);
            self.start_connects(now);
            if self.live == 0 {
                break;
            }
            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                let closing = ev.is_read_closed() || ev.is_error();
                let readable = ev.is_readable() || closing;
                self.on_event(ev.token().0, readable, closing, ev.is_writable());
            }
            let now = Instant::now();
            self.fire_timers(now);
            if now >= self.next_sweep {
                self.sweep(now);
            }
        }
        log::debug!("loop thread {} done: {} txns in window", self.thread, self.stats.txns());
        Ok(self.stats)
    }

    fn poll_timeout(&mut self, now: Instant) -> Duration {
        let mut until = self.next_sweep;
        if let Some(t) = self.timers.next_timeout(now) {
            until = until.min(now + t);
        }
        if let Some(w) = self.window {
            if !self.stopping && now < w.end {
                until = until.min(w.end);
            }
        }
        if let Some(d) = self.drain_deadline {
            until = until.min(d);
        }
        if let Some(due) = self.queue.front().and_then(|&i| self.ramp_due(i)) {
            until = until.min(due.max(now));
        }
        let mut timeout = until.saturating_duration_since(now);
        if self.window.is_none() && self.ramp_left == 0 {
            timeout = timeout.min(WINDOW_POLL);
        }
        timeout
    }

    fn check_phase(&mut self, now: Instant) {
        if self.window.is_none() {
            self.window = self.shared.window();
            if let Some(w) = self.window.filter(|_| self.cfg.timeline) {
                self.stats.timeline = Timeline::new(w.start, w.end - w.start);
            }
        }
        if !self.stopping && (self.shared.should_stop() || self.window.is_some_and(|w| now >= w.end)) {
            self.enter_stopping(now);
        }
    }

    fn start_connects(&mut self, now: Instant) {
        while !self.stopping && self.in_flight < self.cfg.connect_concurrency.max(1) {
            let Some(&i) = self.queue.front() else { break };
            if self.ramp_due(i).is_some_and(|due| due > now) {
                break;
            }
            self.queue.pop_front();
            self.connect(i, now);
        }
    }

    /// When slot `i`'s first connect is due under `--ramp` (None: no schedule).
    fn ramp_due(&self, i: usize) -> Option<Instant> {
        let slot = &self.slots[i];
        if self.cfg.ramp.is_zero() || !slot.initial {
            return None;
        }
        let frac = slot.id as f64 / self.cfg.backends.max(1) as f64;
        Some(self.shared.started + self.cfg.ramp.mul_f64(frac))
    }

    fn connect(&mut self, i: usize, now: Instant) {
        if self.slots[i].phase != Phase::Queued {
            return;
        }
        let mut sock = match TcpStream::connect(self.cfg.addr) {
            Ok(s) => s,
            Err(e) => return self.fail(i, ErrorKind::ConnectFailed, Op::Startup, format!("connect: {e}")),
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut sock, Token(key), Interest::READABLE | Interest::WRITABLE) {
            return self.fail(i, ErrorKind::Io, Op::Startup, format!("register: {e}"));
        }
        entry.insert(Conn { sock, slot: i, connected: false, rbuf: BytesMut::new(), wbuf: BytesMut::new() });
        let slot = &mut self.slots[i];
        slot.conn = Some(key);
        slot.phase = Phase::Connecting;
        slot.connect_started = now;
        slot.in_wave = true;
        self.in_flight += 1;
    }

    /// `closing`: the event also reported a hang-up or an error, so the
    /// socket must be read until end of stream.
    fn on_event(&mut self, key: usize, readable: bool, closing: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let i = conn.slot;
        if !conn.connected {
            match connect_status(&conn.sock) {
                Ok(false) => return,
                Ok(true) => {
                    conn.connected = true;
                    let _ = conn.sock.set_nodelay(true);
                    let slot = &mut self.slots[i];
                    slot.phase = Phase::Handshake;
                    slot.backend.start(Instant::now(), &mut conn.wbuf);
                }
                Err(e) => return self.fail(i, ErrorKind::ConnectFailed, Op::Startup, format!("connect: {e}")),
            }
        }
        if readable {
            if let Err(e) = self.read(key, closing) {
                return self.fail(i, e.kind, e.op, e.detail);
            }
        }
        if writable || readable {
            self.flush_or_fail(key);
        }
    }

    /// Read everything available and act on every whole frame.
    fn read(&mut self, key: usize, closing: bool) -> Result<(), BackendError> {
        let Some(conn) = self.conns.get_mut(key) else { return Ok(()) };
        let i = conn.slot;
        let slot = &mut self.slots[i];
        let op = slot.backend.outstanding().map_or(Op::Begin, |o| o.0);
        // A short read drained the socket (edge-triggered epoll reports any
        // later data as a new event), unless the peer also hung up and the end
        // of stream is still to be read. A peer that floods us is cut off at
        // MAX_BUFFERED: only one answer is ever due.
        let eof = match netio::read_into(&mut conn.sock, &mut conn.rbuf, &mut self.scratch, MAX_BUFFERED, !closing) {
            Ok(ReadOutcome::Eof) => true,
            Ok(ReadOutcome::Drained | ReadOutcome::Full) => false,
            Err(e) => return Err(io_error(op, "read", e)),
        };
        let now = Instant::now();
        let mut next = Next::Nothing;
        while let Some(outcome) = slot.backend.poll(&mut conn.rbuf, now, &mut conn.wbuf)? {
            next = account::answered(&mut self.stats, &self.shared, self.window, outcome, now, slot.id);
            if let Outcome::Ready { .. } = outcome {
                slot.phase = Phase::Active;
                slot.settle_connect(&mut self.in_flight, &mut self.ramp_left, &self.shared);
            }
        }
        if eof {
            let op = slot.backend.outstanding().map_or(op, |o| o.0);
            return Err(BackendError::new(ErrorKind::UnexpectedClose, op, "server closed the connection"));
        }
        match next {
            Next::Nothing => {}
            Next::Idle if self.stopping => self.close(i, true),
            Next::Idle if !self.cfg.think.is_zero() => self.set_timer(i, now + self.cfg.think),
            Next::Idle => self.begin(i, now),
        }
        Ok(())
    }

    fn begin(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        let Some(key) = slot.conn else { return };
        let Some(conn) = self.conns.get_mut(key) else { return };
        let seq = self.txn_seq * self.cfg.threads as u64 + self.thread as u64;
        if slot.backend.begin(seq, now, &mut conn.wbuf) {
            self.txn_seq += 1;
            self.flush_or_fail(key);
        }
    }

    fn flush_or_fail(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Err(e) = flush(conn) {
            let i = conn.slot;
            let op = self.slots[i].backend.outstanding().map_or(Op::Begin, |o| o.0);
            let e = io_error(op, "write", e);
            self.fail(i, e.kind, e.op, e.detail);
        }
    }

    fn set_timer(&mut self, i: usize, at: Instant) {
        self.cancel_timer(i);
        self.slots[i].timer = Some(self.timers.arm(at, i));
    }

    fn cancel_timer(&mut self, i: usize) {
        if let Some(t) = self.slots[i].timer.take() {
            self.timers.cancel(t);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for i in self.timers.expired(now) {
            let slot = &mut self.slots[i];
            slot.timer = None;
            match slot.phase {
                Phase::Backoff => {
                    slot.phase = Phase::Queued;
                    self.queue.push_back(i);
                }
                Phase::Active if slot.backend.is_idle() => self.begin(i, now),
                _ => {}
            }
        }
    }

    /// Connect and request timeouts, and the end of the drain period.
    fn sweep(&mut self, now: Instant) {
        self.next_sweep = now + SWEEP;
        let drained = self.drain_deadline.is_some_and(|d| now >= d);
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.phase {
                Phase::Connecting | Phase::Handshake => {
                    if drained {
                        self.close(i, false);
                    } else if now.saturating_duration_since(slot.connect_started) >= self.cfg.connect_timeout {
                        let detail = format!("no answer to startup within {:?}", self.cfg.connect_timeout);
                        self.fail(i, ErrorKind::ConnectTimeout, Op::Startup, detail);
                    }
                }
                Phase::Active => match slot.backend.outstanding() {
                    Some(_) if drained => {
                        self.stats.conns.unfinished_at_end += 1;
                        self.close(i, false);
                    }
                    Some((op, sent)) if now.saturating_duration_since(sent) >= self.cfg.request_timeout => {
                        let detail = format!("no answer within {:?}", self.cfg.request_timeout);
                        self.fail(i, ErrorKind::Timeout, op, detail);
                    }
                    _ if drained => self.close(i, true),
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// The run is over: close everything not in the middle of a transaction;
    /// open transactions get until the drain deadline to commit.
    fn enter_stopping(&mut self, now: Instant) {
        self.stopping = true;
        self.drain_deadline = Some(now + self.cfg.drain);
        self.queue.clear();
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let busy = slot.phase == Phase::Active && slot.backend.outstanding().is_some();
            if !busy && !matches!(slot.phase, Phase::Closed | Phase::Stopped) {
                self.close(i, slot.phase == Phase::Active);
            }
        }
    }

    /// Tear down slot `i`'s connection and retire the slot.
    fn close(&mut self, i: usize, graceful: bool) {
        self.drop_conn(i, graceful);
        self.retire(i, Phase::Closed);
    }

    fn retire(&mut self, i: usize, phase: Phase) {
        let slot = &mut self.slots[i];
        if !matches!(slot.phase, Phase::Closed | Phase::Stopped) {
            self.live -= 1;
        }
        slot.phase = phase;
        self.cancel_timer(i);
    }

    /// Close the socket (sending `X` first if `graceful`) and settle the
    /// slot's bookkeeping; the slot's phase is left to the caller.
    fn drop_conn(&mut self, i: usize, graceful: bool) {
        let slot = &mut self.slots[i];
        if let Some(g) = slot.backend.open_gxid() {
            // The GTM aborts a closed link's transactions.
            self.stats.gxids.ended(g);
        }
        slot.backend.reset();
        slot.settle_connect(&mut self.in_flight, &mut self.ramp_left, &self.shared);
        if let Some(key) = slot.conn.take() {
            if let Some(mut conn) = self.conns.try_remove(key) {
                if graceful && conn.wbuf.is_empty() {
                    let _ = conn.sock.write(CLOSE_FRAME);
                }
                let _ = self.poll.registry().deregister(&mut conn.sock);
            }
        }
    }

    /// Count an error, drop the connection and reconnect (bounded) or give up.
    fn fail(&mut self, i: usize, kind: ErrorKind, op: Op, detail: String) {
        let slot = &self.slots[i];
        let e = BackendError::new(kind, op, detail);
        account::failed(&mut self.stats, &self.shared, &e, slot.id, slot.backend.node_name());
        if matches!(slot.phase, Phase::Queued | Phase::Connecting | Phase::Handshake) {
            self.stats.conns.failed += 1;
        }
        self.drop_conn(i, false);
        let slot = &mut self.slots[i];
        if self.stopping {
            self.retire(i, Phase::Closed);
        } else if slot.reconnects >= self.cfg.max_reconnects {
            log::info!("backend {}: giving up after {} reconnects", slot.id, slot.reconnects);
            self.stats.conns.stopped_backends += 1;
            self.retire(i, Phase::Stopped);
        } else {
            slot.reconnects += 1;
            self.stats.conns.reconnects += 1;
            slot.phase = Phase::Backoff;
            let delay = backoff(slot.reconnects);
            self.set_timer(i, Instant::now() + delay);
        }
    }
}

/// Has a non-blocking connect completed? Ok(false): not yet (spurious wake-up).
fn connect_status(sock: &TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn flush(conn: &mut Conn) -> io::Result<()> {
    if conn.connected {
        netio::write_from(&mut conn.sock, &mut conn.wbuf)?;
    }
    Ok(())
}
