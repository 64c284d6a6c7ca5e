//! What happened when: transactions, errors and latency per 100 ms of the
//! measurement window, and what a scenario reader wants from it (the longest
//! stall, the first success after an event's errors).
//!
//! Each loop thread keeps its own [`Timeline`]; they are merged at the end.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Width of one bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Latencies per bucket in microseconds, 2 significant digits (enough for a
/// p99 line; a bucket costs ~10 KB only once something lands in it).
const MAX_US: u64 = 120_000_000;

#[derive(Debug, Clone, Default)]
pub struct Bucket {
    /// Transactions committed.
    pub ok: u64,
    pub errors: u64,
    /// Latency of every answered request (begin, snapshot, commit), µs.
    lat: Option<Histogram<u32>>,
}

impl Bucket {
    pub fn p99_us(&self) -> Option<u64> {
        self.lat.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(0.99))
    }

    fn record(&mut self, d: Duration) {
        let h = self.lat.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_US, 2).expect("constant histogram bounds are valid")
        });
        h.saturating_record((d.as_micros() as u64).clamp(1, MAX_US));
    }

    fn merge(&mut self, o: &Bucket) {
        self.ok += o.ok;
        self.errors += o.errors;
        if let Some(oh) = &o.lat {
            match &mut self.lat {
                Some(h) => {
                    let _ = h.add(oh);
                }
                None => self.lat = Some(oh.clone()),
            }
        }
    }
}

/// Buckets from the window start.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    start: Option<Instant>,
    pub buckets: Vec<Bucket>,
}

impl Timeline {
    /// A timeline covering `len` from `start`.
    pub fn new(start: Instant, len: Duration) -> Self {
        let n = len.as_nanos().div_ceil(BUCKET.as_nanos()) as usize;
        Timeline { start: Some(start), buckets: vec![Bucket::default(); n] }
    }

    fn at(&mut self, now: Instant) -> Option<&mut Bucket> {
        let i = (now.checked_duration_since(self.start?)?.as_nanos() / BUCKET.as_nanos()) as usize;
        self.buckets.get_mut(i)
    }

    pub fn committed(&mut self, now: Instant) {
        if let Some(b) = self.at(now) {
            b.ok += 1;
        }
    }

    pub fn answered(&mut self, now: Instant, latency: Duration) {
        if let Some(b) = self.at(now) {
            b.record(latency);
        }
    }

    pub fn error(&mut self, now: Instant) {
        if let Some(b) = self.at(now) {
            b.errors += 1;
        }
    }

    pub fn merge(&mut self, o: &Timeline) {
        if self.start.is_none() {
            self.start = o.start;
        }
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), Bucket::default());
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            a.merge(b);
        }
    }
}

/// A stretch of buckets without a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stall {
    /// Seconds from the window start.
    pub from_s: f64,
    pub to_s: f64,
}

impl Stall {
    pub fn length_s(&self) -> f64 {
        self.to_s - self.from_s
    }
}

fn secs(i: usize) -> f64 {
    (i as f64 * BUCKET.as_secs_f64() * 10.0).round() / 10.0
}

/// The longest run of buckets with no committed transaction (None if every
/// bucket has one). Ties: the earliest.
pub fn longest_stall(buckets: &[Bucket]) -> Option<Stall> {
    let mut best: Option<(usize, usize)> = None;
    let mut run_start = None;
    for i in 0..=buckets.len() {
        let stalled = buckets.get(i).is_some_and(|b| b.ok == 0);
        match (stalled, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                if best.is_none_or(|(bs, be)| i - s > be - bs) {
                    best = Some((s, i));
                }
                run_start = None;
            }
            _ => {}
        }
    }
    best.map(|(s, e)| Stall { from_s: secs(s), to_s: secs(e) })
}

/// After an event at `event_s`: the first bucket with errors, and the first
/// bucket after that with a committed transaction (seconds from the window start).
pub fn after_event(buckets: &[Bucket], event_s: f64) -> (Option<f64>, Option<f64>) {
    let first = (event_s / BUCKET.as_secs_f64()).floor().max(0.0) as usize;
    let Some(err) = (first..buckets.len()).find(|&i| buckets[i].errors > 0) else { return (None, None) };
    let ok = (err + 1..buckets.len()).find(|&i| buckets[i].ok > 0);
    (Some(secs(err)), ok.map(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oks(v: &[u64]) -> Vec<Bucket> {
        v.iter().map(|&ok| Bucket { ok, ..Bucket::default() }).collect()
    }

    #[test]
    fn longest_stall_is_found() {
        assert_eq!(longest_stall(&oks(&[1, 2, 3])), None);
        assert_eq!(longest_stall(&oks(&[1, 0, 2, 0, 0, 0, 5, 0, 0])), Some(Stall { from_s: 0.3, to_s: 0.6 }));
        assert_eq!(longest_stall(&oks(&[0, 0])), Some(Stall { from_s: 0.0, to_s: 0.2 }));
    }

    #[test]
    fn recovery_after_an_event() {
        let mut b = oks(&[5, 5, 5, 2, 0, 0, 0, 4, 5]);
        b[1].errors = 1; // before the event: ignored
        b[3].errors = 3;
        b[5].errors = 1;
        assert_eq!(after_event(&b, 0.25), (Some(0.3), Some(0.7)));
        assert_eq!(after_event(&oks(&[1, 1]), 0.0), (None, None));
    }

    #[test]
    fn events_land_in_their_bucket_and_merge() {
        let t0 = Instant::now();
        let mut a = Timeline::new(t0, Duration::from_millis(250));
        assert_eq!(a.buckets.len(), 3);
        a.committed(t0 + Duration::from_millis(150));
        a.answered(t0 + Duration::from_millis(150), Duration::from_micros(900));
        a.error(t0 + Duration::from_millis(260)); // last bucket
        a.error(t0 + Duration::from_millis(400)); // past the window: dropped
        let mut m = Timeline::default();
        m.merge(&a);
        m.merge(&a);
        assert_eq!(m.buckets[1].ok, 2);
        assert_eq!(m.buckets[2].errors, 2);
        assert!(m.buckets[1].p99_us().is_some_and(|p| (890..=910).contains(&p)));
        assert_eq!(m.buckets[0].p99_us(), None);
    }
}
