//! State the loop threads and the coordinating thread share: the
//! measurement window, the stop request with its reason, the error count
//! behind `--max-errors`, and live counters for progress lines.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Margin between the window being decided and it opening, so every loop
/// thread knows the window before its first countable answer.
const WINDOW_SYNC: Duration = Duration::from_millis(10);
/// Errors and duplicate GXIDs logged at warn level per run; the rest go to debug.
const WARN_BUDGET: u32 = 10;

/// The measurement window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub(super) fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// State shared by the threads driving backends (loop threads, or one
/// thread per backend) and the coordinating thread. `threads` in [`Shared::new`]
/// is how many of them report the end of their initial connects.
#[derive(Debug)]
pub struct Shared {
    stop: AtomicBool,
    stop_reason: Mutex<Option<String>>,
    stopped_at: OnceLock<Instant>,
    errors: AtomicU64,
    max_errors: u64,
    warned: AtomicU32,
    ramping: AtomicUsize,
    ramp_done_at: OnceLock<Instant>,
    window: OnceLock<Window>,
    warmup: Duration,
    duration: Duration,
    /// Set by SIGINT/SIGTERM.
    interrupted: Arc<AtomicBool>,
    /// When the first loop thread started (the ramp schedule's origin).
    pub(super) started: Instant,
    /// Live counters for progress lines (whole run, not just the window).
    pub live: LiveCounters,
}

/// Counters the coordinating thread reads while the run goes on.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub committed: AtomicU64,
    pub answered: AtomicU64,
    pub latency_ns: AtomicU64,
    pub established: AtomicU64,
    pub errors: AtomicU64,
}

impl Shared {
    pub fn new(
        threads: usize,
        warmup: Duration,
        duration: Duration,
        max_errors: u64,
        interrupted: Arc<AtomicBool>,
    ) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            stopped_at: OnceLock::new(),
            errors: AtomicU64::new(0),
            max_errors,
            warned: AtomicU32::new(0),
            ramping: AtomicUsize::new(threads),
            ramp_done_at: OnceLock::new(),
            window: OnceLock::new(),
            warmup,
            duration,
            interrupted,
            started: Instant::now(),
            live: LiveCounters::default(),
        }
    }

    /// End the run early (first reason wins).
    pub fn request_stop(&self, reason: &str) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            let _ = self.stopped_at.set(Instant::now());
            if let Ok(mut r) = self.stop_reason.lock() {
                *r = Some(reason.to_owned());
            }
        }
    }

    pub fn should_stop(&self) -> bool {
        if self.interrupted.load(Ordering::Relaxed) {
            self.request_stop("interrupted");
        }
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop_reason(&self) -> Option<String> {
        self.stop_reason.lock().ok().and_then(|r| r.clone())
    }

    pub fn stopped_at(&self) -> Option<Instant> {
        self.stopped_at.get().copied()
    }

    pub fn window(&self) -> Option<Window> {
        self.window.get().copied()
    }

    /// When the last loop thread finished its initial connects.
    pub fn ramp_done_at(&self) -> Option<Instant> {
        self.ramp_done_at.get().copied()
    }

    /// A loop thread finished its initial connects; the last one opens the window.
    pub(super) fn ramp_done(&self) {
        if self.ramping.fetch_sub(1, Ordering::SeqCst) == 1 {
            let now = Instant::now();
            let _ = self.ramp_done_at.set(now);
            let start = now + WINDOW_SYNC + self.warmup;
            let _ = self.window.set(Window { start, end: start + self.duration });
        }
    }

    /// Whether the next problem may be logged at warn level (the first
    /// [`WARN_BUDGET`] of the run may), so thousands of backends failing at
    /// once do not flood the terminal.
    pub(super) fn may_warn(&self) -> bool {
        self.warned.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < WARN_BUDGET).then_some(n + 1)).is_ok()
    }

    pub(super) fn count_error(&self) {
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_errors > 0 && n >= self.max_errors {
            self.request_stop(&format!("error limit reached ({n} errors)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_window_opens_when_the_last_thread_ramps() {
        let s = Shared::new(2, Duration::from_secs(1), Duration::from_secs(3), 0, Arc::default());
        s.ramp_done();
        assert!(s.window().is_none());
        s.ramp_done();
        let w = s.window().unwrap();
        assert_eq!(w.end - w.start, Duration::from_secs(3));
        assert!(w.start >= s.ramp_done_at().unwrap() + Duration::from_secs(1));
    }

    #[test]
    fn error_limit_stops_the_run() {
        let s = Shared::new(1, Duration::ZERO, Duration::ZERO, 2, Arc::default());
        s.count_error();
        assert!(!s.should_stop());
        s.count_error();
        assert!(s.should_stop());
        assert!(s.stop_reason().unwrap().contains("error limit"));
    }
}
