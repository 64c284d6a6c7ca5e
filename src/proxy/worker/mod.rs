//! One worker: a mio event loop owning a set of backends and one GTM link.
//!
//! Each poll round: (1) handle readiness — read backend sockets into their
//! buffers, read the GTM link and route its answers; (2) process every
//! backend with unprocessed input (at most one request outstanding each);
//! (3) flush the round's batch upstream, followed by `F`; (4) write backend
//! output. Nothing blocks: a silent or slow backend only ever delays itself.
//!
//! This file is the dispatcher; the work is in two rooms along a request's
//! path:
//! * `backends.rs`, the way in: `on_backend_event` (socket read) →
//!   `process_backend` (one frame at a time) → `handle_request`
//!   ([`admission::admit`](super::admission::admit) into the [`Batcher`])
//!   → `flush_batch` ([`Upstream::send_batch`], the upstream write);
//! * `link.rs`, the way back: `on_upstream_event` (link read) →
//!   `route_answers` ([`Upstream::next_frame`]) → `route_answer`
//!   ([`split_answer`](super::batch::split_answer), then
//!   [`vetting::vet`](super::vetting::vet) per backend, written to its
//!   output) → `write_backends` (socket write). `link` also owns the link's
//!   start-up and failure (`link_ready`, `link_failed`, failover steps).

mod backends;
mod link;
pub mod replay;
mod resolve;
mod stopping;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{error, info};
use mio::{Events, Poll, Token, Waker};
use slab::Slab;

use super::backend::{Backend, READ_CHUNK};
use super::batch::{Batcher, Route};
use super::coalesce::{BatchSizes, Coalescer, HoldPolicy};
use super::failover::{Failover, Policy};
use super::ids::ConnIds;
use super::ledger::{HighWater, Ledger};
use super::metrics::latency::RoundTrips;
use super::metrics::refusals::Refusals;
use super::upstream::{LinkError, Upstream};
use super::vetting::Floors;
use crate::codec::frame;
use crate::codec::Request;
use crate::config::Config;
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
/// Most frames of one backend handled in one round; the rest wait for the
/// next round, so one connection cannot hold its worker.
const FRAMES_PER_ROUND: usize = 32;

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
/// SIGQUIT); what each means is in [`crate::proxy::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopMode {
    /// No new transactions; open ones may end.
    Smart,
    /// Answer what is in flight, then close every backend.
    Fast,
    /// Leave at once.
    Immediate,
}

/// Counters shared with the main thread and the metrics endpoint.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub backends: AtomicUsize,
    pub requests: AtomicU64,
    pub upstream_frames: AtomicU64,
    pub errors_sent: AtomicU64,
    pub link_failures: AtomicU64,
    /// Reconnect orders (gtm_ctl reconnect) carried out: planned moves,
    /// not failures.
    pub reconnect_orders: AtomicU64,
    /// 1 while the GTM link is ready.
    pub link_up: AtomicUsize,
    /// Requests waiting to be sent (held while the link is down).
    pub queued: AtomicUsize,
    /// Answers owed by the GTM.
    pub in_flight: AtomicUsize,
    /// GXIDs in the ledger.
    pub ledger_gxids: AtomicUsize,
    /// Elements per MULTI sent, per type; the worker adds its counts every tick.
    pub batch_sizes: Mutex<BatchSizes>,
    /// Requests sent again on a new link after the link they were in
    /// flight on was lost.
    pub replays: AtomicU64,
    /// Requests answered `E` "outcome unknown after GTM failover".
    pub outcome_unknown: AtomicU64,
    /// Requests answered `E` for being held longer than `hold_timeout`.
    pub hold_timeouts: AtomicU64,
    /// Begin answers refused because the GTM handed out a GXID not above one
    /// this proxy had already handed out (a GTM behind the proxy).
    pub stale_gxids: AtomicU64,
    /// Time from writing each frame upstream to reading its answer.
    pub round_trip: RoundTrips,
    /// Connections this worker turned away, by reason.
    pub refused: Refusals,
    /// Smart stop: nothing is open, held or owed here any more.
    pub drained: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Tick,
    Failover,
    /// A held MULTI type's budget runs out: the round's flush decides again.
    Coalesce,
}

/// Route of the proxy's own requests (rollbacks of GXIDs it refuses or
/// cleans up): its answers are dropped.
const INTERNAL: Route = Route { conn: -1, gen: 0 };

/// What a backend is queued for in this round.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// Parse its buffered frames.
    Process,
    /// Write its buffered output.
    Write,
}

/// Backends with work this round, each listed at most once per kind.
#[derive(Debug, Default)]
struct WorkLists {
    process: Vec<usize>,
    write: Vec<usize>,
    /// Backends that reached [`FRAMES_PER_ROUND`] with input left: processed
    /// again next round, which then does not wait for readiness.
    carry: Vec<usize>,
}

impl WorkLists {
    /// Queue backend `key` for `work` unless it already is.
    fn queue(&mut self, key: usize, b: &mut Backend, work: Work) {
        let (mark, list) = match work {
            Work::Process => (&mut b.queued.process, &mut self.process),
            Work::Write => (&mut b.queued.write, &mut self.write),
        };
        if !*mark {
            *mark = true;
            list.push(key);
        }
    }
}

pub struct Worker {
    poll: Poll,
    cfg: Arc<Config>,
    rx: Receiver<Control>,
    backends: Slab<Backend>,
    ids: ConnIds<Request>,
    up: Upstream,
    batch: Batcher,
    /// When held MULTI types are sent (see [`super::coalesce`]).
    coalesce: Coalescer,
    /// The timer that wakes the loop for the earliest hold deadline.
    coalesce_timer: Option<(TimerId, Instant)>,
    work: WorkLists,
    timers: Timers<TimerKind>,
    failover: Failover,
    failover_timer: Option<TimerId>,
    /// Why the link is down (for the errors held requests get).
    down_reason: String,
    ledger: Ledger,
    high: Arc<HighWater>,
    /// GXID floors for answer vetting (see [`crate::proxy::vetting`]).
    floors: Floors,
    /// Looks the GTM host up off this thread.
    resolver: resolve::Resolver,
    /// The number of the lookup the current connection attempt waits for.
    lookup: Option<u64>,
    /// The current link got its previous client id back: the GTM is a
    /// promoted standby (see `departure`).
    promoted: bool,
    /// How often each request was in flight on a lost link.
    replays: replay::ReplayCounts<Route>,
    /// The GTM's per-element answers that the vetting rules logged.
    verdict_log: crate::logging::RateLimit,
    /// Connection attempts failed since the link was last ready.
    connect_failures: u64,
    /// A link has been ready at least once: this worker's, or, for a
    /// worker started in place of a dead one, any worker's (GXIDs were
    /// handed out). Until then a failed attempt means the GTM is not there
    /// at all (started without it): requests are answered at once instead
    /// of held for a failover.
    ever_ready: bool,
    scratch: Vec<u8>,
    stats: Arc<WorkerStats>,
    /// Wakes the main loop (a smart stop's worker is drained).
    main: Arc<Waker>,
    stopping: Option<(StopMode, Instant)>,
    /// Backends still waiting for their startup packet, and the order they
    /// came in (entries of backends that started or left are skipped).
    starting: usize,
    starting_order: VecDeque<(usize, Route)>,
}

/// A seed for the retry jitter that differs between workers and processes.
fn jitter_seed(id: usize) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (u64::from(std::process::id()) << 32) ^ u64::from(t) ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        (gtm_host, gtm_port): (String, u16),
        rx: Receiver<Control>,
        (stats, main): (Arc<WorkerStats>, Arc<Waker>),
        high: Arc<HighWater>,
    ) -> std::io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let up = Upstream::new(gtm_host, gtm_port, cfg.nodename.clone(), super::keepalive_of(&cfg));
        let policy = Policy::from_config(&cfg);
        let coalesce = Coalescer::new(HoldPolicy::from_config(&cfg));
        let ever_ready = high.get() != 0;
        let w = Worker {
            poll,
            ids: ConnIds::new(crate::proxy::ids::ids_per_link()),
            cfg,
            rx,
            backends: Slab::new(),
            up,
            batch: Batcher::default(),
            coalesce,
            coalesce_timer: None,
            work: WorkLists::default(),
            timers: Timers::new(),
            failover: Failover::new(policy, jitter_seed(id)),
            failover_timer: None,
            down_reason: "not connected yet".into(),
            ledger: Ledger::default(),
            high,
            floors: Floors::default(),
            resolver: resolve::Resolver::spawn(id, waker.clone())?,
            lookup: None,
            promoted: false,
            replays: Default::default(),
            verdict_log: crate::logging::RateLimit::new(5, Duration::from_secs(10)),
            connect_failures: 0,
            ever_ready,
            scratch: vec![0; READ_CHUNK],
            stats,
            main,
            stopping: None,
            starting: 0,
            starting_order: VecDeque::new(),
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
            let timeout = if self.work.carry.is_empty() {
                self.timers.next_timeout(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    error!("poll failed: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.on_control(),
                    UPSTREAM => self.on_upstream_event(ev.is_readable(), ev.is_writable() || ev.is_error()),
                    Token(t) => {
                        let reset = ev.is_error();
                        self.on_backend_event(t - FIRST_BACKEND, ev.is_readable(), ev.is_writable(), reset)
                    }
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
            if self.stop_step(Instant::now()) {
                break;
            }
        }
        self.shutdown_link();
        info!("stopped");
    }

    /// Gauges for the metrics endpoint; plain stores, once per round.
    fn publish_gauges(&self) {
        let s = &self.stats;
        s.link_up.store(self.up.is_ready() as usize, Ordering::Relaxed);
        s.queued.store(self.batch.len(), Ordering::Relaxed);
        s.in_flight.store(self.up.owed(), Ordering::Relaxed);
        s.ledger_gxids.store(self.ledger.len(), Ordering::Relaxed);
    }

    /// Hand the MULTI sizes counted since the last tick to the shared stats.
    /// Never waits: if the metrics reader holds the lock, the next tick does it.
    fn publish_batch_sizes(&mut self) {
        if self.batch.sizes.is_empty() {
            return;
        }
        if let Ok(mut shared) = self.stats.batch_sizes.try_lock() {
            shared.add(&self.batch.sizes);
            self.batch.sizes.reset();
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
                    info!("moving to GTM {host}:{port}");
                    self.up.retarget(host, port);
                    self.stats.reconnect_orders.fetch_add(1, Ordering::Relaxed);
                    self.link_failed(LinkError::ReconnectOrdered);
                }
                Control::Reload(cfg) => {
                    self.failover.policy = Policy::from_config(&cfg);
                    self.coalesce.policy = HoldPolicy::from_config(&cfg);
                    self.up.set_keepalive(super::keepalive_of(&cfg));
                    self.cfg = cfg;
                    info!("configuration reloaded");
                }
                Control::Shutdown(mode) => self.on_stop(mode, Instant::now()),
            }
        }
        self.on_resolved();
    }

    fn on_timer(&mut self, t: TimerKind, now: Instant) {
        match t {
            TimerKind::Tick => {
                self.timers.arm_in(now, TICK, TimerKind::Tick);
                self.publish_batch_sizes();
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
                self.expire_backends(now);
            }
            TimerKind::Coalesce => self.coalesce_timer = None,
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
