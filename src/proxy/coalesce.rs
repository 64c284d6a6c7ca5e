//! When to send a MULTI: adaptive coalescing of grouped requests while the
//! GTM link has work in flight. Pure: the caller brings the clock.
//!
//! The GTM does one lock round and, for `SNAPSHOT_GET_MULTI`, computes one
//! snapshot per MULTI, so that part of its cost per transaction falls as
//! MULTIs grow. (Measured against XL 10's gtm, it stops mattering once
//! MULTIs hold tens of elements: the rest is per element and grows with the
//! number of open transactions; see the README's performance section.)
//! Sending every poll round's requests at once (full pipelining) keeps
//! MULTIs small when rounds are short, which is exactly when the link is
//! busy. The policy, per MULTI type ([`Kind`]):
//!
//! * link idle for this type (fewer than `max_in_flight` MULTIs of the type
//!   owe an answer): send at once — light load pays no latency;
//! * otherwise hold, so the next MULTI accumulates behind the one in flight,
//!   until that answer returns (the worker decides again every round), the
//!   oldest held element has waited `budget`, or a full MULTI (`batch_max`)
//!   is waiting.
//!
//! The hold adapts by itself: it lasts about one GTM round trip, which is
//! short when the GTM is lightly loaded and grows with its load — and so do
//! the MULTIs. `budget` only bounds the worst case (a slow or stalled GTM).
//! A budget of zero is full pipelining.
//!
//! Fairness: a decision releases every held element of the type at once (cut
//! into `batch_max` frames), in arrival order, and a backend has at most one
//! request outstanding; so no backend waits more than one round behind
//! another, and each contributes at most one element per round.
//! Non-groupable forwards and disconnects are never held.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The four MULTI types, in the order they are sent within one flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Begin = 0,
    Commit = 1,
    Rollback = 2,
    Snapshot = 3,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Begin, Kind::Commit, Kind::Rollback, Kind::Snapshot];

    /// Label used in metrics and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Begin => "begin",
            Kind::Commit => "commit",
            Kind::Rollback => "rollback",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// The knobs of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    /// MULTIs of one type that may owe an answer before new elements of
    /// that type are held (>= 1).
    pub max_in_flight: usize,
    /// Longest an element is held; zero = never hold (full pipelining).
    pub budget: Duration,
}

impl HoldPolicy {
    /// The policy the configuration asks for (`batch_hold`, `batch_in_flight`).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        HoldPolicy { max_in_flight: cfg.batch_in_flight.max(1), budget: cfg.batch_hold }
    }

    /// Today's behaviour before this policy: everything goes at once.
    pub const PIPELINE: HoldPolicy = HoldPolicy { max_in_flight: usize::MAX, budget: Duration::ZERO };
}

impl Default for HoldPolicy {
    /// One MULTI per type in flight, the next accumulating behind it, held
    /// at most 2 ms (the configuration's defaults).
    fn default() -> Self {
        HoldPolicy { max_in_flight: 1, budget: Duration::from_millis(2) }
    }
}

/// The decision for one MULTI type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing queued.
    Idle,
    /// Send every queued element now.
    Send,
    /// Keep them; decide again when an answer arrives or after `left`.
    Hold { left: Duration },
}

/// Decide for one MULTI type: `queued` elements waiting, `in_flight`
/// MULTIs of the type owing an answer, the oldest waiting for `held_for`,
/// `full` = elements in a full MULTI (`batch_max`).
pub fn decide(queued: usize, in_flight: usize, held_for: Duration, full: usize, p: HoldPolicy) -> Decision {
    if queued == 0 {
        return Decision::Idle;
    }
    if in_flight < p.max_in_flight.max(1) || queued >= full.max(1) || held_for >= p.budget {
        return Decision::Send;
    }
    Decision::Hold { left: p.budget - held_for }
}

/// Which kinds one flush sends (true) or keeps back (false).
pub type Release = [bool; 4];

/// The per-type hold clocks of one worker, and the policy they follow.
#[derive(Debug, Clone, Default)]
pub struct Coalescer {
    pub policy: HoldPolicy,
    /// When the oldest element now held of each kind was first seen held.
    since: [Option<Instant>; 4],
}

impl Coalescer {
    pub fn new(policy: HoldPolicy) -> Self {
        Coalescer { policy, since: [None; 4] }
    }

    /// Decide every kind at `now`. Returns what to release and, when
    /// something is held, the earliest moment to decide again without an
    /// answer arriving.
    pub fn plan(
        &mut self,
        now: Instant,
        queued: [usize; 4],
        in_flight: [usize; 4],
        full: usize,
    ) -> (Release, Option<Instant>) {
        let mut release = [true; 4];
        let mut wake: Option<Instant> = None;
        for k in Kind::ALL {
            let i = k as usize;
            let since = *self.since[i].get_or_insert(now);
            match decide(queued[i], in_flight[i], now.saturating_duration_since(since), full, self.policy) {
                Decision::Idle | Decision::Send => self.since[i] = None,
                Decision::Hold { left } => {
                    release[i] = false;
                    let at = now + left;
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
            }
        }
        (release, wake)
    }
}

/// Elements per MULTI, one histogram per [`Kind`].
#[derive(Debug, Clone)]
pub struct BatchSizes {
    pub by_kind: [Histogram<u64>; 4],
    /// Elements sent, per kind (exact; the histograms round).
    pub sum: [u64; 4],
}

/// Bucket bounds of the Prometheus histogram: powers of two up to the GTM's
/// MULTI limit.
const BUCKETS: [u64; 15] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];

impl Default for BatchSizes {
    fn default() -> Self {
        let h = || {
            Histogram::new_with_bounds(1, crate::codec::types::MAX_GLOBAL_TRANSACTIONS as u64, 2)
                .expect("constant histogram bounds are valid")
        };
        BatchSizes { by_kind: [h(), h(), h(), h()], sum: [0; 4] }
    }
}

impl BatchSizes {
    pub fn record(&mut self, k: Kind, n: usize) {
        // Sizes are capped at the GTM's limit by the batcher; saturate anyway.
        self.by_kind[k as usize].saturating_record(n.max(1) as u64);
        self.sum[k as usize] += n as u64;
    }

    /// Fold `other` in (the worker hands its counts to the shared stats).
    pub fn add(&mut self, other: &BatchSizes) {
        for (a, b) in self.by_kind.iter_mut().zip(&other.by_kind) {
            // Same bounds on both sides: cannot fail.
            let _ = a.add(b);
        }
        for (a, b) in self.sum.iter_mut().zip(other.sum) {
            *a += b;
        }
    }

    pub fn reset(&mut self) {
        for h in &mut self.by_kind {
            h.reset();
        }
        self.sum = [0; 4];
    }

    /// Append the Prometheus histogram `gtm_proxy_multi_size` for every
    /// worker (label `worker`, and `type` = the MULTI type).
    pub fn write_prometheus(out: &mut String, workers: &[BatchSizes]) {
        use std::fmt::Write as _;
        let name = "gtm_proxy_multi_size";
        let _ = writeln!(out, "# HELP {name} Elements per *_MULTI request sent to the GTM.\n# TYPE {name} histogram");
        for (i, w) in workers.iter().enumerate() {
            for k in Kind::ALL {
                let (h, t) = (&w.by_kind[k as usize], k.name());
                for le in BUCKETS {
                    let n = h.count_between(0, le);
                    let _ = writeln!(out, "{name}_bucket{{worker=\"{i}\",type=\"{t}\",le=\"{le}\"}} {n}");
                }
                let _ = writeln!(out, "{name}_bucket{{worker=\"{i}\",type=\"{t}\",le=\"+Inf\"}} {}", h.len());
                let _ = writeln!(out, "{name}_sum{{worker=\"{i}\",type=\"{t}\"}} {}", w.sum[k as usize]);
                let _ = writeln!(out, "{name}_count{{worker=\"{i}\",type=\"{t}\"}} {}", h.len());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.iter().all(|h| h.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn p(k: usize, budget_ms: u64) -> HoldPolicy {
        HoldPolicy { max_in_flight: k, budget: MS * budget_ms as u32 }
    }

    #[test]
    fn idle_link_sends_at_once_busy_link_holds() {
        assert_eq!(decide(0, 0, Duration::ZERO, 1024, p(1, 2)), Decision::Idle);
        assert_eq!(decide(0, 5, Duration::ZERO, 1024, p(1, 2)), Decision::Idle);
        assert_eq!(decide(3, 0, Duration::ZERO, 1024, p(1, 2)), Decision::Send);
        assert_eq!(decide(3, 1, Duration::ZERO, 1024, p(1, 2)), Decision::Hold { left: 2 * MS });
        // K = 2: a second MULTI may go out, a third waits.
        assert_eq!(decide(3, 1, Duration::ZERO, 1024, p(2, 2)), Decision::Send);
        assert_eq!(decide(3, 2, MS / 2, 1024, p(2, 2)), Decision::Hold { left: 3 * MS / 2 });
    }

    #[test]
    fn budget_and_full_multi_end_the_hold() {
        assert_eq!(decide(3, 1, 2 * MS, 1024, p(1, 2)), Decision::Send);
        assert_eq!(decide(3, 1, 5 * MS, 1024, p(1, 2)), Decision::Send);
        assert_eq!(decide(1024, 1, Duration::ZERO, 1024, p(1, 2)), Decision::Send);
        assert_eq!(decide(1023, 1, Duration::ZERO, 1024, p(1, 2)), Decision::Hold { left: 2 * MS });
    }

    #[test]
    fn zero_budget_and_pipeline_never_hold() {
        for inflight in [0, 1, 7, 1000] {
            assert_eq!(decide(1, inflight, Duration::ZERO, 1024, p(1, 0)), Decision::Send);
            assert_eq!(decide(1, inflight, Duration::ZERO, 1024, HoldPolicy::PIPELINE), Decision::Send);
        }
        // A nonsensical K of 0 behaves as 1, not as "hold forever".
        assert_eq!(decide(1, 0, Duration::ZERO, 1024, p(0, 2)), Decision::Send);
        assert_eq!(decide(1, 0, Duration::ZERO, 0, p(1, 2)), Decision::Send);
    }

    #[test]
    fn plan_keeps_a_clock_per_kind_and_restarts_it_after_a_send() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(p(1, 2));
        // Begin held (one in flight), commit sent (none in flight), nothing else queued.
        let (rel, wake) = c.plan(t0, [5, 3, 0, 0], [1, 0, 0, 0], 1024);
        assert_eq!(rel, [false, true, true, true]);
        assert_eq!(wake, Some(t0 + 2 * MS));
        // One ms later, more begins arrived: the clock runs from the first.
        let (rel, wake) = c.plan(t0 + MS, [9, 0, 0, 2], [1, 1, 0, 1], 1024);
        assert_eq!(rel, [false, true, true, false]);
        assert_eq!(wake, Some(t0 + 2 * MS), "begin's deadline is earlier than snapshot's");
        // Budget spent: begin goes even though its MULTI is still in flight.
        let (rel, wake) = c.plan(t0 + 2 * MS, [9, 0, 0, 2], [1, 1, 0, 1], 1024);
        assert_eq!(rel, [true, true, true, false]);
        assert_eq!(wake, Some(t0 + 3 * MS));
        // The begin clock restarted: a new hold gets a full budget.
        let (rel, wake) = c.plan(t0 + 2 * MS + MS / 2, [1, 0, 0, 0], [2, 0, 0, 0], 1024);
        assert_eq!(rel, [false, true, true, true]);
        assert_eq!(wake, Some(t0 + 4 * MS + MS / 2));
    }

    #[test]
    fn an_answer_releases_what_waited_behind_it() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let (rel, _) = c.plan(t0, [0, 0, 0, 40], [0, 0, 0, 1], 1024);
        assert!(!rel[3]);
        // The snapshot MULTI was answered: in flight 0, send without waiting for the budget.
        let (rel, wake) = c.plan(t0 + MS / 10, [0, 0, 0, 60], [0, 0, 0, 0], 1024);
        assert_eq!(rel, [true; 4]);
        assert_eq!(wake, None);
    }

    #[test]
    fn configuration_defaults_are_the_default_policy() {
        let cfg = crate::config::Config::from_str_with(
            "nodename = 'p'\ngtm_host = 'h'\ngtm_port = 1\n",
            "t",
            &Default::default(),
        )
        .unwrap();
        assert_eq!(HoldPolicy::from_config(&cfg), HoldPolicy::default());
    }

    #[test]
    fn sizes_are_counted_per_kind() {
        let mut s = BatchSizes::default();
        assert!(s.is_empty());
        s.record(Kind::Snapshot, 300);
        s.record(Kind::Snapshot, 100);
        s.record(Kind::Begin, 0);
        s.record(Kind::Commit, 1_000_000);
        assert_eq!(s.by_kind[Kind::Snapshot as usize].len(), 2);
        assert_eq!(s.by_kind[Kind::Begin as usize].min(), 1);
        assert!(s.by_kind[Kind::Commit as usize].max() >= 16384);
        let mut total = BatchSizes::default();
        total.add(&s);
        total.add(&s);
        assert_eq!(total.by_kind[Kind::Snapshot as usize].len(), 4);
        assert_eq!(total.sum[Kind::Snapshot as usize], 800);
        let mut text = String::new();
        BatchSizes::write_prometheus(&mut text, &[total.clone(), BatchSizes::default()]);
        let line = |l: &str| text.lines().find(|x| x.starts_with(l)).map(|x| x.rsplit(' ').next().unwrap().to_string());
        let snap = "gtm_proxy_multi_size_bucket{worker=\"0\",type=\"snapshot\"";
        assert_eq!(line(&format!("{snap},le=\"64\"}}")).as_deref(), Some("0"));
        assert_eq!(line(&format!("{snap},le=\"128\"}}")).as_deref(), Some("2"));
        assert_eq!(line(&format!("{snap},le=\"+Inf\"}}")).as_deref(), Some("4"));
        let sum = "gtm_proxy_multi_size_sum{worker=\"0\",type=\"snapshot\"}";
        assert_eq!(line(sum).as_deref(), Some("800"));
        let begin1 = "gtm_proxy_multi_size_count{worker=\"1\",type=\"begin\"}";
        assert_eq!(line(begin1).as_deref(), Some("0"));
        total.reset();
        assert!(total.is_empty());
    }
}
