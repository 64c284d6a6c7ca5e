//! Stand-in for `logging::RateLimit` of the `ops` branch (same type, same
//! API, copied from it), until that branch is merged: then this file goes
//! and `backend.rs` imports `crate::logging::{RateLimit, Suppressed}`.

use std::fmt;
use std::time::{Duration, Instant};

/// Limits the messages one connection can cause: at most `burst` per `window`; the rest
/// are counted and reported with the next message let through (or by [`RateLimit::finish`]).
///
/// ```
/// # use gtmproxy::proxy::worker::ratelimit::RateLimit;
/// # use std::time::{Duration, Instant};
/// let mut lim = RateLimit::new(2, Duration::from_secs(10));
/// let t = Instant::now();
/// assert!(lim.check(t).is_some());
/// assert!(lim.check(t).is_some());
/// assert!(lim.check(t).is_none()); // suppressed, counted
/// let next = lim.check(t + Duration::from_secs(10)).unwrap();
/// assert_eq!(next.to_string(), " (1 similar message suppressed)");
/// ```
#[derive(Debug, Clone)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// Messages suppressed before the one being let through; displays as
/// `" (N similar messages suppressed)"`, or as nothing when N is 0, to append to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => f.write_str(" (1 similar message suppressed)"),
            n => write!(f, " ({n} similar messages suppressed)"),
        }
    }
}

impl RateLimit {
    /// At most `burst` messages (at least 1) in each `window`.
    pub fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit { burst: burst.max(1), window, window_start: None, used: 0, suppressed: 0 }
    }

    /// One message wants out at `now`: `Some` to log it (with the count suppressed since
    /// the last one let through), `None` to drop it.
    pub fn check(&mut self, now: Instant) -> Option<Suppressed> {
        let expired = match self.window_start {
            None => true,
            Some(s) => now.saturating_duration_since(s) >= self.window,
        };
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(Suppressed(std::mem::take(&mut self.suppressed)))
    }

    /// Messages suppressed and not yet reported (for a summary when the connection ends);
    /// resets the count.
    pub fn finish(&mut self) -> Option<Suppressed> {
        let n = std::mem::take(&mut self.suppressed);
        (n > 0).then_some(Suppressed(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_burst_then_suppress() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut lim = RateLimit::new(3, w);
        for _ in 0..3 {
            assert_eq!(lim.check(t0), Some(Suppressed(0)));
        }
        for i in 1..=5u64 {
            assert_eq!(lim.check(t0 + Duration::from_secs(i)), None);
        }
        // The next window lets messages through again and reports the 5 dropped.
        let s = lim.check(t0 + w).expect("new window");
        assert_eq!(s, Suppressed(5));
        assert_eq!(s.to_string(), " (5 similar messages suppressed)");
        assert_eq!(lim.check(t0 + w), Some(Suppressed(0)));
        assert_eq!(lim.finish(), None);
    }

    #[test]
    fn rate_limit_finish_reports_leftovers() {
        let t0 = Instant::now();
        let mut lim = RateLimit::new(1, Duration::from_secs(60));
        assert!(lim.check(t0).is_some());
        assert!(lim.check(t0).is_none());
        assert!(lim.check(t0).is_none());
        assert_eq!(lim.finish(), Some(Suppressed(2)));
        assert_eq!(lim.finish(), None);
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(1).to_string(), " (1 similar message suppressed)");
        // A burst of 0 still lets one message per window through.
        let mut lim = RateLimit::new(0, Duration::from_secs(1));
        assert!(lim.check(t0).is_some());
        assert!(lim.check(t0).is_none());
    }

    #[test]
    fn rate_limit_time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut lim = RateLimit::new(1, Duration::from_secs(10));
        assert!(lim.check(t0).is_some());
        assert!(lim.check(t0 - Duration::from_secs(50)).is_none());
        assert_eq!(lim.check(t0 + Duration::from_secs(10)), Some(Suppressed(1)));
    }
}
