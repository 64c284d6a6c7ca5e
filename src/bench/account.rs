//! What both load models ([`super::driver`]'s event loop and
//! [`super::blocking`]'s thread per backend) do with a backend's answers and
//! errors: count them into [`Stats`] (only answers inside the window are
//! measured), feed the live counters behind progress lines, check GXID
//! uniqueness, log the first errors, and pace reconnects.
//!
//! The per-backend protocol itself is [`super::backend::Backend`]; this is
//! the bookkeeping around it, so the two models cannot drift apart in what
//! they count.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::backend::{BackendError, ErrorKind, Op, Outcome};
use super::shared::{LiveCounters, Shared, Window};
use super::stats::Stats;
use crate::codec::frame::DEFAULT_MAX_FRAME;

/// First reconnect delay; doubles per attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Read chunk of the event loop.
pub const SCRATCH: usize = 64 * 1024;
/// Most bytes buffered from one connection: one maximal frame plus a chunk.
pub const MAX_BUFFERED: usize = DEFAULT_MAX_FRAME + SCRATCH;
/// The `X` frame: orderly close.
pub const CLOSE_FRAME: &[u8] = b"X\x00\x00\x00\x04";

/// What the model does after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The backend queued its next request itself (or nothing happened).
    Nothing,
    /// The backend is idle: begin, think, or close.
    Idle,
}

/// Everything an answer changes: the window's measurements, the live
/// counters, the established count and the GXID check. `id` names the
/// backend in the log.
pub fn answered(
    stats: &mut Stats,
    shared: &Shared,
    window: Option<Window>,
    outcome: Outcome,
    now: Instant,
    id: usize,
) -> Next {
    let next = record(stats, window, outcome, now);
    count_live(&shared.live, outcome);
    match outcome {
        Outcome::Ready { .. } => stats.conns.established += 1,
        Outcome::Began { gxid, .. } => {
            if !stats.gxids.began(gxid) && shared.may_warn() {
                log::warn!("backend {id}: duplicate gxid {gxid}");
            }
        }
        Outcome::Committed { gxid, .. } => stats.gxids.ended(gxid),
        Outcome::Snapshot { .. } => {}
    }
    next
}

/// Count one error (the run's error limit included) and log it: the first
/// few at warn level, the rest at debug.
pub fn failed(stats: &mut Stats, shared: &Shared, e: &BackendError, id: usize, node: &str) {
    stats.errors.add(e.kind, e.op);
    stats.timeline.error(Instant::now());
    shared.count_error();
    if shared.may_warn() {
        log::warn!("backend {id} ({node}): {e}");
    } else {
        log::debug!("backend {id}: {e}");
    }
}

/// Count one answer if it arrived inside the window.
pub fn record(stats: &mut Stats, window: Option<Window>, outcome: Outcome, now: Instant) -> Next {
    let counted = window.is_some_and(|w| w.contains(now));
    match outcome {
        Outcome::Ready { .. } => return Next::Idle,
        Outcome::Began { latency, .. } if counted => {
            stats.begin.record(latency);
            stats.timeline.answered(now, latency);
        }
        Outcome::Snapshot { latency, .. } if counted => {
            stats.snapshot.record(latency);
            stats.timeline.answered(now, latency);
        }
        Outcome::Committed { latency, txn, .. } => {
            if counted {
                stats.commit.record(latency);
                stats.txn.record(txn);
                stats.timeline.answered(now, latency);
                stats.timeline.committed(now);
            }
            return Next::Idle;
        }
        _ => {}
    }
    Next::Nothing
}

/// Feed the live counters behind the progress lines.
fn count_live(live: &LiveCounters, outcome: Outcome) {
    let latency = match outcome {
        Outcome::Ready { .. } => {
            live.established.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Outcome::Committed { latency, .. } => {
            live.committed.fetch_add(1, Ordering::Relaxed);
            latency
        }
        Outcome::Began { latency, .. } | Outcome::Snapshot { latency, .. } => latency,
    };
    live.answered.fetch_add(1, Ordering::Relaxed);
    live.latency_ns.fetch_add(latency.as_nanos() as u64, Ordering::Relaxed);
}

/// Delay before reconnect attempt number `attempt` (from 1).
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_MIN.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(BACKOFF_MAX)
}

/// A socket error as a backend error: resets and broken pipes are the peer
/// closing; a blocking socket's timeout is a request timeout.
pub fn io_error(op: Op, what: &str, e: io::Error) -> BackendError {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            ErrorKind::UnexpectedClose
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Io,
    };
    BackendError::new(kind, op, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(2), Duration::from_millis(20));
        assert_eq!(backoff(8), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn only_answers_inside_the_window_count() {
        let t0 = Instant::now();
        let w = Window { start: t0 + Duration::from_secs(1), end: t0 + Duration::from_secs(2) };
        let mut s = Stats::default();
        let c = Outcome::Committed { gxid: 1, latency: Duration::from_micros(5), txn: Duration::from_micros(9) };
        assert_eq!(record(&mut s, Some(w), c, t0), Next::Idle);
        assert_eq!(record(&mut s, None, c, t0 + Duration::from_millis(1500)), Next::Idle);
        assert_eq!(s.txns(), 0);
        record(&mut s, Some(w), c, t0 + Duration::from_millis(1500));
        let b = Outcome::Began { gxid: 1, latency: Duration::from_micros(5) };
        assert_eq!(record(&mut s, Some(w), b, t0 + Duration::from_millis(1999)), Next::Nothing);
        record(&mut s, Some(w), b, t0 + Duration::from_secs(2));
        assert_eq!((s.txns(), s.ops()), (1, 2));
    }

    #[test]
    fn answers_count_connections_and_gxids_whatever_the_window() {
        let shared = Shared::new(1, Duration::ZERO, Duration::ZERO, 0, Default::default());
        let mut s = Stats::default();
        let now = Instant::now();
        let ready = Outcome::Ready { client_id: 0, latency: Duration::from_micros(3) };
        assert_eq!(answered(&mut s, &shared, None, ready, now, 0), Next::Idle);
        let b = Outcome::Began { gxid: 7, latency: Duration::from_micros(5) };
        answered(&mut s, &shared, None, b, now, 0);
        answered(&mut s, &shared, None, b, now, 1);
        assert_eq!((s.conns.established, s.gxids.handed_out, s.gxids.duplicates), (1, 2, 1));
        assert_eq!(shared.live.established.load(Ordering::Relaxed), 1);
        assert_eq!(shared.live.answered.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_blocking_read_timeout_is_a_request_timeout() {
        let e = io_error(Op::Commit, "read", io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!((e.kind, e.op), (ErrorKind::Timeout, Op::Commit));
        let e = io_error(Op::Begin, "write", io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(e.kind, ErrorKind::UnexpectedClose);
    }
}
