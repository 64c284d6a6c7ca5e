//! The GTM round-trip histogram: time from writing a frame to the GTM link
//! to reading its answer, in fixed buckets from 100 µs to 10 s.
//!
//! The worker observes once per answered frame (a `*_MULTI` is one round
//! trip, however many backends it carries): one relaxed atomic add on the
//! bucket and one on the sum, so the metrics thread reads it without any
//! lock and the hot path never waits.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets in microseconds (the `le` labels are these
/// in seconds); one more bucket holds everything above the last.
pub const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Round trips of one worker's GTM link.
#[derive(Debug, Default)]
pub struct RoundTrips {
    /// Observations per bucket (not cumulative); the last is above 10 s.
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

/// The index of the bucket for `d`: the first bound it does not exceed.
pub fn bucket_of(d: Duration) -> usize {
    let ns = d.as_nanos();
    BOUNDS_US.iter().position(|&b| ns <= u128::from(b) * 1000).unwrap_or(BOUNDS_US.len())
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub buckets: [u64; BUCKETS],
    pub sum_ns: u64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl RoundTrips {
    pub fn observe(&self, d: Duration) {
        self.buckets[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot { sum_ns: self.sum_ns.load(Ordering::Relaxed), ..Default::default() };
        for (to, from) in s.buckets.iter_mut().zip(&self.buckets) {
            *to = from.load(Ordering::Relaxed);
        }
        s
    }
}

/// A bound in microseconds as a Prometheus `le` label in seconds.
fn seconds_label(us: u64) -> String {
    let s = format!("{:.6}", us as f64 / 1e6);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub const NAME: &str = "gtm_proxy_gtm_round_trip_seconds";

/// The histogram family, one series set per worker: cumulative buckets,
/// `+Inf` equal to `_count`, `_sum` in seconds.
pub fn write_prometheus(out: &mut String, workers: &[Snapshot]) {
    let _ = writeln!(
        out,
        "# HELP {NAME} Time from writing a frame to the GTM to receiving its answer.\n# TYPE {NAME} histogram"
    );
    for (i, s) in workers.iter().enumerate() {
        let mut cumulative = 0;
        for (b, us) in BOUNDS_US.iter().enumerate() {
            cumulative += s.buckets[b];
            let _ = writeln!(out, "{NAME}_bucket{{worker=\"{i}\",le=\"{}\"}} {cumulative}", seconds_label(*us));
        }
        let count = s.count();
        let _ = writeln!(out, "{NAME}_bucket{{worker=\"{i}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{NAME}_sum{{worker=\"{i}\"}} {}", s.sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{NAME}_count{{worker=\"{i}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_up_to_their_bound() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(100)), 0);
        assert_eq!(bucket_of(Duration::from_nanos(100_001)), 1);
        assert_eq!(bucket_of(Duration::from_millis(1)), 3);
        assert_eq!(bucket_of(Duration::from_secs(10)), BOUNDS_US.len() - 1);
        assert_eq!(bucket_of(Duration::from_secs(11)), BOUNDS_US.len());
    }

    #[test]
    fn labels_are_seconds() {
        assert_eq!(seconds_label(100), "0.0001");
        assert_eq!(seconds_label(2_500), "0.0025");
        assert_eq!(seconds_label(1_000_000), "1");
        assert_eq!(seconds_label(2_500_000), "2.5");
    }

    #[test]
    fn rendered_buckets_are_cumulative() {
        let rt = RoundTrips::default();
        rt.observe(Duration::from_micros(50));
        rt.observe(Duration::from_millis(3));
        rt.observe(Duration::from_secs(20));
        let s = rt.snapshot();
        assert_eq!(s.count(), 3);
        let mut text = String::new();
        write_prometheus(&mut text, &[s]);
        let value = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_else(|| panic!("{k}"))
        };
        assert_eq!(value(&format!("{NAME}_bucket{{worker=\"0\",le=\"0.0001\"}}")), "1");
        assert_eq!(value(&format!("{NAME}_bucket{{worker=\"0\",le=\"0.0025\"}}")), "1");
        assert_eq!(value(&format!("{NAME}_bucket{{worker=\"0\",le=\"0.005\"}}")), "2");
        assert_eq!(value(&format!("{NAME}_bucket{{worker=\"0\",le=\"10\"}}")), "2");
        assert_eq!(value(&format!("{NAME}_bucket{{worker=\"0\",le=\"+Inf\"}}")), "3");
        assert_eq!(value(&format!("{NAME}_count{{worker=\"0\"}}")), "3");
        let sum: f64 = value(&format!("{NAME}_sum{{worker=\"0\"}}")).parse().expect("sum");
        assert!((sum - 20.00305).abs() < 1e-9, "{sum}");
    }
}
