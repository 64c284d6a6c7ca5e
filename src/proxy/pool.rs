//! The worker threads as the main thread sees them: spawning, handing out
//! connections, orders, and noticing a worker that died.
//!
//! A dead worker is respawned. Its backends lost their connections when it
//! died (its sockets and GTM link closed with it, so the GTM ends that
//! link's transactions); the other workers' backends keep their service, and
//! a supervisor restart would cost them theirs. Deaths are reported at once:
//! each worker thread carries a guard whose drop (normal return or panic
//! unwinding) sends its index to the main loop and wakes it. A worker that
//! keeps dying is a bug that a respawn cannot fix, so after
//! [`MAX_DEATHS`] deaths within [`DEATH_WINDOW`] the proxy stops with a
//! FATAL error and lets its supervisor decide. A connection is only handed
//! to a worker whose thread is running; one whose send fails comes back and
//! goes to another.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use log::{error, warn};
use mio::Waker;

use super::ledger::HighWater;
use super::worker::{Control, Worker, WorkerStats};
use crate::config::Config;

/// Deaths tolerated within [`DEATH_WINDOW`] before the proxy gives up.
pub const MAX_DEATHS: usize = 3;
pub const DEATH_WINDOW: Duration = Duration::from_secs(60);

/// Test hook (never set in production): `GTM_PROXY_TEST_WORKER_DIES=<index>`
/// makes that worker's first thread end at once, as a crashed worker would;
/// `<index>:always` makes every thread of that worker end so;
/// `<index>:reconnect` makes its thread end when the first reconnect order
/// comes, so that the worker started in its place must find the new GTM.
pub const TEST_DEATH_ENV: &str = "GTM_PROXY_TEST_WORKER_DIES";

struct Handle {
    tx: Sender<Control>,
    /// The pool's own end of the worker's channel: it outlives the worker,
    /// so an order or a connection sent just as the worker dies stays
    /// queued and is served by the worker started in its place.
    rx: Receiver<Control>,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
    thread: Option<JoinHandle<()>>,
    /// Set once its death was reported and until it is respawned.
    dead: bool,
}

/// Sends the worker's index to the main loop when its thread ends.
struct DeathNotice {
    index: usize,
    tx: Sender<usize>,
    main: Arc<Waker>,
}

impl Drop for DeathNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(self.index);
        let _ = self.main.wake();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("worker {0}: {1}")]
    Spawn(usize, std::io::Error),
    #[error("worker {0} died {1} times within {2:?}; stopping so that the supervisor restarts gtm_proxy")]
    Crashing(usize, usize, Duration),
}

pub struct Pool {
    handles: Vec<Handle>,
    high: Arc<HighWater>,
    deaths_tx: Sender<usize>,
    deaths: Receiver<usize>,
    main: Arc<Waker>,
    recent_deaths: VecDeque<Instant>,
    next: usize,
    /// The GTM workers are to use: the configured one until a reconnect
    /// order moves it. A worker started in place of a dead one starts here.
    gtm: (String, u16),
    /// The test hook: which worker, and when it dies.
    test_death: Option<(usize, TestDeath)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TestDeath {
    FirstStart,
    EveryStart,
    FirstReconnect,
}

impl Pool {
    pub fn spawn(n: usize, cfg: &Arc<Config>, main: Arc<Waker>) -> Result<Pool, PoolError> {
        let (deaths_tx, deaths) = unbounded();
        let test_death = std::env::var(TEST_DEATH_ENV).ok().and_then(|v| {
            let (i, when) = v.trim().split_once(':').unwrap_or((v.trim(), ""));
            let when = match when {
                "always" => TestDeath::EveryStart,
                "reconnect" => TestDeath::FirstReconnect,
                _ => TestDeath::FirstStart,
            };
            Some((i.parse().ok()?, when))
        });
        let mut pool = Pool {
            handles: Vec::with_capacity(n),
            high: Arc::new(HighWater::default()),
            deaths_tx,
            deaths,
            main,
            recent_deaths: VecDeque::new(),
            next: 0,
            gtm: (cfg.gtm_host.clone(), cfg.gtm_port),
            test_death,
        };
        for i in 0..n {
            let h = pool.start(i, cfg, Arc::new(WorkerStats::default()), unbounded())?;
            pool.handles.push(h);
        }
        Ok(pool)
    }

    fn start(
        &mut self,
        i: usize,
        cfg: &Arc<Config>,
        stats: Arc<WorkerStats>,
        (tx, rx): (Sender<Control>, Receiver<Control>),
    ) -> Result<Handle, PoolError> {
        let (w, waker) = Worker::new(
            i,
            cfg.clone(),
            self.gtm.clone(),
            rx.clone(),
            (stats.clone(), self.main.clone()),
            self.high.clone(),
        )
        .map_err(|e| PoolError::Spawn(i, e))?;
        let notice = DeathNotice { index: i, tx: self.deaths_tx.clone(), main: self.main.clone() };
        let die_now = match self.test_death {
            Some((d, TestDeath::EveryStart)) => d == i,
            Some((d, TestDeath::FirstStart)) if d == i => {
                self.test_death = None;
                true
            }
            _ => false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("gtm_proxy worker {i}"))
            .spawn(move || {
                let _notice = notice;
                if die_now {
                    error!("worker {i}: ending at once ({TEST_DEATH_ENV} test hook)");
                    return;
                }
                w.run()
            })
            .map_err(|e| PoolError::Spawn(i, e))?;
        Ok(Handle { tx, rx, waker, stats, thread: Some(thread), dead: false })
    }

    /// Counters, for the metrics endpoint (kept across respawns).
    pub fn stats(&self) -> Vec<Arc<WorkerStats>> {
        self.handles.iter().map(|h| h.stats.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Backends connected, over all workers.
    pub fn backends(&self) -> usize {
        self.handles.iter().filter(|h| !h.dead).map(|h| h.stats.backends.load(Ordering::Relaxed)).sum()
    }

    fn alive(h: &Handle) -> bool {
        !h.dead && h.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Hand a new connection to the live worker with the fewest backends
    /// (ties round-robin). Gives the socket back when no worker is alive.
    /// A worker that dies after the check leaves the connection queued on
    /// its channel, for the worker started in its place ([`Pool::reap`]).
    pub fn dispatch(&mut self, sock: std::net::TcpStream) -> Result<(), std::net::TcpStream> {
        let loads: Vec<Option<usize>> =
            self.handles.iter().map(|h| Self::alive(h).then(|| h.stats.backends.load(Ordering::Relaxed))).collect();
        let Some(best) = least_loaded(&loads, self.next) else { return Err(sock) };
        self.next = self.next.wrapping_add(1);
        let h = &self.handles[best];
        // Cannot fail: the pool holds a receiving end itself.
        let _ = h.tx.send(Control::NewBackend(sock));
        let _ = h.waker.wake();
        Ok(())
    }

    /// The GTM the workers use now.
    pub fn gtm(&self) -> &(String, u16) {
        &self.gtm
    }

    /// A reconnect order: every worker moves to `to`, and so does any worker
    /// started later in place of a dead one.
    pub fn reconnect(&mut self, to: (String, u16)) {
        self.gtm = to.clone();
        let dying = match self.test_death {
            Some((d, TestDeath::FirstReconnect)) => {
                self.test_death = None;
                Some(d)
            }
            _ => None,
        };
        self.send_each(|i| {
            if dying == Some(i) {
                error!("worker {i}: ending instead of moving ({TEST_DEATH_ENV} test hook)");
                Control::Shutdown(super::worker::StopMode::Immediate)
            } else {
                Control::Reconnect { host: to.0.clone(), port: to.1 }
            }
        });
    }

    /// Send an order to every live worker.
    pub fn broadcast(&self, make: impl Fn() -> Control) {
        self.send_each(|_| make());
    }

    /// Send each live worker the order `make` gives for its index.
    fn send_each(&self, make: impl Fn(usize) -> Control) {
        for (i, h) in self.handles.iter().enumerate().filter(|(_, h)| !h.dead) {
            if h.tx.send(make(i)).is_ok() {
                let _ = h.waker.wake();
            }
        }
    }

    /// Handle reported deaths: respawn unless stopping. Errors when workers
    /// die too often.
    pub fn reap(&mut self, cfg: &Arc<Config>, stopping: bool) -> Result<(), PoolError> {
        while let Ok(i) = self.deaths.try_recv() {
            let Some(h) = self.handles.get_mut(i) else { continue };
            if let Some(t) = h.thread.take() {
                if t.join().is_err() {
                    error!("worker {i} panicked");
                }
            }
            h.dead = true;
            if stopping {
                continue;
            }
            let now = Instant::now();
            self.recent_deaths.push_back(now);
            while self.recent_deaths.front().is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW) {
                self.recent_deaths.pop_front();
            }
            if self.recent_deaths.len() >= MAX_DEATHS {
                return Err(PoolError::Crashing(i, self.recent_deaths.len(), DEATH_WINDOW));
            }
            error!("worker {i} died unexpectedly; its backends were disconnected; starting a new worker {i}");
            let stats = self.handles[i].stats.clone();
            // Its backends are gone with it; per-request counters keep counting.
            stats.backends.store(0, Ordering::Relaxed);
            stats.link_up.store(0, Ordering::Relaxed);
            // The same channel: what was queued for the dead worker goes to
            // the new one.
            let chan = (self.handles[i].tx.clone(), self.handles[i].rx.clone());
            let h = self.start(i, cfg, stats, chan)?;
            // It reads its channel when woken: there may be work queued already.
            let _ = h.waker.wake();
            self.handles[i] = h;
            warn!("worker {i} restarted");
        }
        Ok(())
    }

    /// Smart stop: every worker still running has nothing open, held or
    /// owed.
    pub fn drained(&self) -> bool {
        self.handles.iter().all(|h| h.dead || !Self::alive(h) || h.stats.drained.load(Ordering::Relaxed))
    }

    /// Every worker thread has ended.
    pub fn all_finished(&self) -> bool {
        self.handles.iter().all(|h| h.thread.as_ref().is_none_or(|t| t.is_finished()))
    }

    pub fn join(&mut self) {
        for h in &mut self.handles {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Index of the smallest load among the live (`Some`) entries, scanning
/// from `start` so that ties rotate.
pub fn least_loaded(loads: &[Option<usize>], start: usize) -> Option<usize> {
    let n = loads.len();
    let mut best: Option<(usize, usize)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if let Some(l) = loads[i] {
            if best.is_none_or(|(_, b)| l < b) {
                best = Some((i, l));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn picks_least_loaded_live_worker() {
        assert_eq!(least_loaded(&[Some(3), Some(1), Some(2)], 0), Some(1));
        // A dead worker (None) is never picked, however idle it looks.
        assert_eq!(least_loaded(&[None, Some(5), Some(7)], 0), Some(1));
        assert_eq!(least_loaded(&[None, None], 1), None);
        assert_eq!(least_loaded(&[], 0), None);
        // Ties rotate with the start.
        assert_eq!(least_loaded(&[Some(0), Some(0), Some(0)], 0), Some(0));
        assert_eq!(least_loaded(&[Some(0), Some(0), Some(0)], 1), Some(1));
        assert_eq!(least_loaded(&[Some(0), Some(0), Some(0)], 5), Some(2));
    }
}
