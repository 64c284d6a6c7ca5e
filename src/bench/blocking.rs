//! The `threads` load model: one OS thread per backend, one blocking
//! [`TcpStream`], one request at a time — what a Postgres-XL coordinator or
//! datanode backend process does with its GTM connection.
//!
//! Each thread runs the same [`Backend`] state machine as the event loop and
//! counts through [`account`]. Its life:
//!
//! ```text
//! ramp turn ─▶ connect (≤ connect_concurrency at once) ─▶ 'R' ─▶ [think ─▶ begin ─▶ snapshot ─▶ commit]* ─▶ X
//!                 ▲                                                          │ error
//!                 └──── backoff (reconnect budget left) ◀────────────────────┘ (else the thread ends)
//! ```
//!
//! Nothing blocks for long: reads time out every [`SLICE`] so a waiting
//! backend notices the end of the run and its own request timeout, writes
//! time out after the request timeout, and every pause (ramp turn, think
//! time, backoff, a connect slot) is taken in slices too. After the window,
//! an open transaction gets until the drain deadline to commit, as in the
//! loop model.
//!
//! Stats go to a few shared shards rather than one per thread: a [`Stats`]
//! holds four latency histograms, too big to keep a thousand of.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::account::{self, backoff, io_error, Next, CLOSE_FRAME, MAX_BUFFERED};
use super::backend::{Backend, BackendError, ErrorKind, Op, Outcome};
use super::driver::LoopConfig;
use super::shared::{Shared, Window};
use super::stats::Stats;
use super::timeline::Timeline;
use super::BenchError;

/// Stack of a backend thread: the protocol needs little, and a thousand
/// threads with the default 2 MiB would reserve 2 GiB of address space.
pub const STACK: usize = 64 * 1024;
/// Longest a backend blocks before looking at the clock and the run again.
const SLICE: Duration = Duration::from_millis(100);
/// Read chunk (an answer is 17 to a few thousand bytes).
const CHUNK: usize = 4096;
/// Stats shards; backend `i` counts into shard `i % SHARDS`.
const SHARDS: usize = 16;

/// The backend threads of one run.
pub struct Backends {
    handles: Vec<(usize, JoinHandle<()>)>,
    shards: Arc<Vec<Mutex<Stats>>>,
}

impl Backends {
    /// One thread per `(number, node name)`. If a thread cannot start, the
    /// run is stopped and the started ones are waited for.
    pub fn start(
        backends: Vec<(usize, String)>,
        cfg: &Arc<LoopConfig>,
        shared: &Arc<Shared>,
    ) -> Result<Backends, BenchError> {
        let shards: Arc<Vec<Mutex<Stats>>> = Arc::new((0..SHARDS).map(|_| Mutex::default()).collect());
        let gate = Arc::new(Gate::new(cfg.connect_concurrency.max(1)));
        let mut handles = Vec::with_capacity(backends.len());
        for (id, node) in backends {
            let client = Client::new(id, &node, cfg.clone(), shared.clone(), shards.clone(), gate.clone());
            let h = std::thread::Builder::new().name(format!("backend-{id}")).stack_size(STACK).spawn(move || {
                let mut c = client;
                c.run();
            });
            match h {
                Ok(h) => handles.push((id, h)),
                Err(e) => {
                    shared.request_stop("thread start failed");
                    for (_, h) in handles {
                        let _ = h.join();
                    }
                    return Err(BenchError::Thread(e));
                }
            }
        }
        Ok(Backends { handles, shards })
    }

    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(|(_, h)| h.is_finished())
    }

    /// Wait for every backend thread; the merged stats.
    pub fn join(self) -> Result<Stats, BenchError> {
        let mut failure = None;
        for (id, h) in self.handles {
            if h.join().is_err() {
                failure = Some(BenchError::Loop { thread: id, detail: "backend thread panicked".into() });
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut stats = Stats::default();
        for shard in self.shards.iter() {
            stats.merge(std::mem::take(&mut *lock(shard)));
        }
        Ok(stats)
    }
}

/// A poisoned shard still holds valid counts (a panic is reported by `join`).
fn lock(m: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects in flight: at most `n` backends between `connect()` and `R`.
struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate { free: Mutex::new(n), cv: Condvar::new() }
    }

    /// Wait for a slot, looking at `give_up` every [`SLICE`]; None once it says so.
    fn acquire(&self, mut give_up: impl FnMut() -> bool) -> Option<Permit<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            if give_up() {
                return None;
            }
            free = match self.cv.wait_timeout(free, SLICE) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        *free -= 1;
        Some(Permit(self))
    }
}

/// A connect slot, given back when dropped.
struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// One backend thread.
struct Client {
    backend: Backend,
    id: usize,
    cfg: Arc<LoopConfig>,
    shared: Arc<Shared>,
    shards: Arc<Vec<Mutex<Stats>>>,
    gate: Arc<Gate>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    chunk: Box<[u8]>,
    reconnects: u32,
    /// The first connect has not resolved yet (it holds back the window).
    initial: bool,
    txn_seq: u64,
    window: Option<Window>,
    /// Set once the run is over: open transactions may finish until then.
    drain_deadline: Option<Instant>,
}

impl Drop for Client {
    /// However the thread ends, its first connect no longer holds back the window.
    fn drop(&mut self) {
        self.settle_initial();
    }
}

impl Client {
    fn new(
        id: usize,
        node: &str,
        cfg: Arc<LoopConfig>,
        shared: Arc<Shared>,
        shards: Arc<Vec<Mutex<Stats>>>,
        gate: Arc<Gate>,
    ) -> Client {
        Client {
            backend: Backend::new(node, cfg.pid, cfg.session_ids),
            id,
            cfg,
            shared,
            shards,
            gate,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            chunk: vec![0u8; CHUNK].into_boxed_slice(),
            reconnects: 0,
            initial: true,
            txn_seq: 0,
            window: None,
            drain_deadline: None,
        }
    }

    fn run(&mut self) {
        if !self.ramp_turn() {
            return;
        }
        loop {
            let result = match self.connect() {
                Ok(Some(mut sock)) => self.session(&mut sock),
                Ok(None) => return,
                Err(e) => Err((e, true)),
            };
            match result {
                Ok(()) => return,
                Err((e, connecting)) if !self.failed(&e, connecting) => return,
                Err(_) => {}
            }
        }
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.shards[self.id % SHARDS])
    }

    /// Learn the window (starting this shard's timeline) and whether the run
    /// is over; the first time it is, the drain period starts.
    fn stopping(&mut self, now: Instant) -> bool {
        if self.window.is_none() {
            self.window = self.shared.window();
            if let Some(w) = self.window.filter(|_| self.cfg.timeline) {
                let mut st = self.stats();
                if st.timeline.buckets.is_empty() {
                    st.timeline = Timeline::new(w.start, w.end - w.start);
                }
            }
        }
        if self.drain_deadline.is_some() {
            return true;
        }
        if self.shared.should_stop() || self.window.is_some_and(|w| now >= w.end) {
            self.drain_deadline = Some(now + self.cfg.drain);
            return true;
        }
        false
    }

    /// Sleep until `until` in slices; false if the run ended meanwhile.
    fn nap_until(&mut self, until: Instant, stop: impl Fn(&mut Self, Instant) -> bool) -> bool {
        loop {
            let now = Instant::now();
            if stop(self, now) {
                return false;
            }
            if now >= until {
                return true;
            }
            std::thread::sleep((until - now).min(SLICE));
        }
    }

    /// Wait for this backend's first connect under `--ramp`.
    fn ramp_turn(&mut self) -> bool {
        if self.cfg.ramp.is_zero() {
            return true;
        }
        let frac = self.id as f64 / self.cfg.backends.max(1) as f64;
        let due = self.shared.started + self.cfg.ramp.mul_f64(frac);
        self.nap_until(due, |c, _| c.shared.should_stop())
    }

    fn settle_initial(&mut self) {
        if self.initial {
            self.initial = false;
            self.shared.ramp_done();
        }
    }

    /// Connect and start up. Ok(None): the run ended first.
    fn connect(&mut self) -> Result<Option<TcpStream>, BackendError> {
        let stop = |c: &mut Self| c.stopping(Instant::now());
        let gate = self.gate.clone();
        let Some(_permit) = gate.acquire(|| stop(self)) else { return Ok(None) };
        let started = Instant::now();
        let limit = self.cfg.connect_timeout.max(Duration::from_millis(1));
        let mut sock = TcpStream::connect_timeout(&self.cfg.addr, limit).map_err(|e| {
            let kind =
                if e.kind() == io::ErrorKind::TimedOut { ErrorKind::ConnectTimeout } else { ErrorKind::ConnectFailed };
            BackendError::new(kind, Op::Startup, format!("connect: {e}"))
        })?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(SLICE))?;
            s.set_write_timeout(Some(self.cfg.request_timeout.max(SLICE)))
        };
        setup(&sock).map_err(|e| io_error(Op::Startup, "socket options", e))?;
        self.rbuf.clear();
        self.wbuf.clear();
        self.backend.start(started, &mut self.wbuf);
        self.send(&mut sock)?;
        match self.answer(&mut sock, (started, self.cfg.connect_timeout), ErrorKind::ConnectTimeout)? {
            Some(outcome) => {
                self.account(outcome);
                self.settle_initial();
                Ok(Some(sock))
            }
            // The drain ended before the startup was answered.
            None => Ok(None),
        }
    }

    /// Transactions until the run is over, then an orderly close. An error
    /// comes with `false`: it did not happen while connecting.
    fn session(&mut self, sock: &mut TcpStream) -> Result<(), (BackendError, bool)> {
        loop {
            if self.stopping(Instant::now()) {
                let _ = sock.write_all(CLOSE_FRAME);
                return Ok(());
            }
            if !self.cfg.think.is_zero() {
                let until = Instant::now() + self.cfg.think;
                if !self.nap_until(until, Self::stopping) {
                    continue;
                }
            }
            match self.transaction(sock) {
                Ok(true) => {}
                Ok(false) => {
                    self.stats().conns.unfinished_at_end += 1;
                    self.forget_open_txn();
                    return Ok(());
                }
                Err(e) => return Err((e, false)),
            }
        }
    }

    /// Begin, snapshot, commit. Ok(false): the drain deadline passed first.
    fn transaction(&mut self, sock: &mut TcpStream) -> Result<bool, BackendError> {
        let seq = self.txn_seq * self.cfg.backends.max(1) as u64 + self.id as u64;
        if !self.backend.begin(seq, Instant::now(), &mut self.wbuf) {
            let detail = "begin while a request is outstanding";
            return Err(BackendError::new(ErrorKind::Io, Op::Begin, detail));
        }
        self.txn_seq += 1;
        loop {
            self.send(sock)?;
            let sent = self.backend.outstanding().map_or_else(Instant::now, |(_, sent)| sent);
            let Some(outcome) = self.answer(sock, (sent, self.cfg.request_timeout), ErrorKind::Timeout)? else {
                return Ok(false);
            };
            if self.account(outcome) == Next::Idle {
                // Anything beyond the commit's answer is unsolicited.
                let mut spare = BytesMut::new();
                self.backend.poll(&mut self.rbuf, Instant::now(), &mut spare)?;
                return Ok(true);
            }
        }
    }

    fn send(&mut self, sock: &mut TcpStream) -> Result<(), BackendError> {
        let op = self.backend.outstanding().map_or(Op::Begin, |o| o.0);
        let r = sock.write_all(&self.wbuf);
        self.wbuf.clear();
        r.map_err(|e| io_error(op, "write", e))
    }

    /// Read until the outstanding request is answered. `timeout` is the
    /// error once `limit.1` has passed since `limit.0`; Ok(None): the drain
    /// deadline passed first.
    fn answer(
        &mut self,
        sock: &mut TcpStream,
        limit: (Instant, Duration),
        timeout: ErrorKind,
    ) -> Result<Option<Outcome>, BackendError> {
        loop {
            let now = Instant::now();
            if let Some(outcome) = self.backend.poll(&mut self.rbuf, now, &mut self.wbuf)? {
                return Ok(Some(outcome));
            }
            let op = self.backend.outstanding().map_or(Op::Begin, |o| o.0);
            self.stopping(now);
            if self.drain_deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if now.saturating_duration_since(limit.0) >= limit.1 {
                let detail = format!("no answer within {:?}", limit.1);
                return Err(BackendError::new(timeout, op, detail));
            }
            if self.rbuf.len() >= MAX_BUFFERED {
                return Err(BackendError::new(ErrorKind::Malformed, op, "more bytes than any answer"));
            }
            match sock.read(&mut self.chunk) {
                Ok(0) => return Err(BackendError::new(ErrorKind::UnexpectedClose, op, "server closed the connection")),
                Ok(n) => self.rbuf.extend_from_slice(&self.chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(op, "read", e)),
            }
        }
    }

    fn account(&mut self, outcome: Outcome) -> Next {
        account::answered(&mut self.stats(), &self.shared, self.window, outcome, Instant::now(), self.id)
    }

    /// The connection is gone: the GTM aborts its open transaction.
    fn forget_open_txn(&mut self) {
        if let Some(g) = self.backend.open_gxid() {
            self.stats().gxids.ended(g);
        }
        self.backend.reset();
    }

    /// Count `e` and decide: true to reconnect (after the backoff), false to end.
    fn failed(&mut self, e: &BackendError, connecting: bool) -> bool {
        {
            let mut st = self.stats();
            account::failed(&mut st, &self.shared, e, self.id, self.backend.node_name());
            if connecting {
                st.conns.failed += 1;
            }
        }
        self.forget_open_txn();
        self.settle_initial();
        if self.stopping(Instant::now()) {
            return false;
        }
        if self.reconnects >= self.cfg.max_reconnects {
            log::info!("backend {}: giving up after {} reconnects", self.id, self.reconnects);
            self.stats().conns.stopped_backends += 1;
            return false;
        }
        self.reconnects += 1;
        self.stats().conns.reconnects += 1;
        let until = Instant::now() + backoff(self.reconnects);
        self.nap_until(until, Self::stopping)
    }
}
