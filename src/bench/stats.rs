//! Counters, latency histograms and the GXID uniqueness check, kept per loop
//! thread and merged at the end of the run.

use std::collections::HashSet;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::backend::{ErrorKind, Op};
use super::timeline::Timeline;

/// Highest latency the histograms resolve (longer ones are clamped): well
/// above the 20 s request timeout.
const MAX_LATENCY_NS: u64 = 120_000_000_000;

/// Latency distribution in nanoseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant histogram bounds are valid");
        Latency { hist }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail; saturate rather than panic regardless.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Value at `q` (0..=1) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_us(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }

    pub fn mean_us(&self) -> f64 {
        self.hist.mean() / 1000.0
    }
}

/// Errors by kind and by the operation that was outstanding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub by_kind: [u64; ErrorKind::COUNT],
    pub by_op: [u64; 4],
}

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind, op: Op) {
        self.by_kind[kind.index()] += 1;
        self.by_op[op.index()] += 1;
    }

    pub fn total(&self) -> u64 {
        self.by_kind.iter().sum()
    }

    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.by_kind[kind.index()]
    }

    pub fn merge(&mut self, o: &ErrorCounts) {
        for (a, b) in self.by_kind.iter_mut().zip(o.by_kind) {
            *a += b;
        }
        for (a, b) in self.by_op.iter_mut().zip(o.by_op) {
            *a += b;
        }
    }
}

/// Connection bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnCounts {
    /// Connections that got their `R`.
    pub established: u64,
    /// Connection attempts that failed before `R` (refused, timed out, rejected).
    pub failed: u64,
    /// Reconnect attempts made after an error.
    pub reconnects: u64,
    /// Backends that gave up (reconnect budget exhausted).
    pub stopped_backends: u64,
    /// Requests still unanswered when the drain period ended.
    pub unfinished_at_end: u64,
}

impl ConnCounts {
    pub fn merge(&mut self, o: &ConnCounts) {
        self.established += o.established;
        self.failed += o.failed;
        self.reconnects += o.reconnects;
        self.stopped_backends += o.stopped_backends;
        self.unfinished_at_end += o.unfinished_at_end;
    }
}

/// GXID uniqueness over the whole run (warm-up and drain included). A GTM
/// never hands the same GXID out twice short of 2^32 wrap-around, and with a
/// unique session id per transaction it must not share one between open
/// transactions either.
#[derive(Debug, Clone, Default)]
pub struct GxidCheck {
    seen: HashSet<u32>,
    open: HashSet<u32>,
    pub handed_out: u64,
    /// GXIDs handed out that had already been handed out earlier in the run.
    pub duplicates: u64,
    /// Of those, GXIDs that were still held by another open transaction of
    /// this loop thread (the definite "same GXID to two open transactions" bug).
    pub duplicates_while_open: u64,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

impl GxidCheck {
    /// A begin returned `gxid`. Returns false when it is a duplicate.
    pub fn began(&mut self, gxid: u32) -> bool {
        self.handed_out += 1;
        self.min = Some(self.min.map_or(gxid, |m| m.min(gxid)));
        self.max = Some(self.max.map_or(gxid, |m| m.max(gxid)));
        if !self.open.insert(gxid) {
            self.duplicates_while_open += 1;
        }
        if self.seen.insert(gxid) {
            true
        } else {
            self.duplicates += 1;
            false
        }
    }

    /// The transaction holding `gxid` ended (commit, or its link closed).
    pub fn ended(&mut self, gxid: u32) {
        self.open.remove(&gxid);
    }

    pub fn unique(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Merge another thread's record: a GXID seen by both is a duplicate.
    pub fn merge(&mut self, o: GxidCheck) {
        self.handed_out += o.handed_out;
        self.duplicates += o.duplicates;
        self.duplicates_while_open += o.duplicates_while_open;
        self.min = match (self.min, o.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, o.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for g in o.seen {
            if !self.seen.insert(g) {
                self.duplicates += 1;
            }
        }
    }
}

/// Everything one loop thread measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Per-op latency, only for answers that arrived inside the measurement window.
    pub begin: Latency,
    pub snapshot: Latency,
    pub commit: Latency,
    /// Begin sent → commit answered, for transactions committed inside the window.
    pub txn: Latency,
    pub errors: ErrorCounts,
    pub conns: ConnCounts,
    pub gxids: GxidCheck,
    /// Per-100 ms view of the window (empty unless asked for).
    pub timeline: Timeline,
}

impl Stats {
    pub fn txns(&self) -> u64 {
        self.txn.count()
    }

    pub fn ops(&self) -> u64 {
        self.begin.count() + self.snapshot.count() + self.commit.count()
    }

    pub fn merge(&mut self, o: Stats) {
        self.begin.merge(&o.begin);
        self.snapshot.merge(&o.snapshot);
        self.commit.merge(&o.commit);
        self.txn.merge(&o.txn);
        self.errors.merge(&o.errors);
        self.conns.merge(&o.conns);
        self.gxids.merge(o.gxids);
        self.timeline.merge(&o.timeline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gxid_duplicates_within_and_across_threads() {
        let mut a = GxidCheck::default();
        assert!(a.began(10));
        assert!(a.began(11));
        assert!(!a.began(10)); // 10 still open
        assert_eq!((a.duplicates, a.duplicates_while_open), (1, 1));
        a.ended(11);
        assert!(!a.began(11)); // reused after commit: still a duplicate, not while open
        assert_eq!((a.duplicates, a.duplicates_while_open), (2, 1));

        let mut b = GxidCheck::default();
        b.began(12);
        b.began(10);
        a.merge(b);
        assert_eq!(a.handed_out, 6);
        assert_eq!(a.unique(), 3);
        assert_eq!(a.duplicates, 3);
        assert_eq!((a.min, a.max), (Some(10), Some(12)));
    }

    #[test]
    fn latency_merge_and_quantiles() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=100 {
            a.record(Duration::from_micros(us));
        }
        b.record(Duration::from_secs(1000)); // clamped, not a panic
        a.merge(&b);
        assert_eq!(a.count(), 101);
        assert!((a.quantile_us(0.5) - 51.0).abs() < 0.1);
        assert!(a.max_us() >= 119_000_000.0);
    }

    #[test]
    fn error_counts() {
        let mut e = ErrorCounts::default();
        e.add(ErrorKind::ServerError, Op::Begin);
        e.add(ErrorKind::Timeout, Op::Commit);
        let mut f = ErrorCounts::default();
        f.add(ErrorKind::ServerError, Op::Snapshot);
        e.merge(&f);
        assert_eq!(e.total(), 3);
        assert_eq!(e.get(ErrorKind::ServerError), 2);
        assert_eq!(e.by_op, [0, 1, 1, 1]);
    }
}
