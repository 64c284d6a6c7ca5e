//! The results of a run as typed records: what `--json` prints (the schema
//! is documented in `docs/gtm_bench.md`) and what the human summary
//! ([`super::human`]) is written from.
//!
//! Latencies are microseconds rounded to 3 significant digits (the
//! histograms' own precision); rates are per second of the measurement
//! window. Errors, connection counts and the GXID check cover the whole run
//! (connects, warm-up, window and drain); throughput and latency cover only
//! the window.

use std::collections::BTreeMap;

use serde::Serialize;

use super::backend::{ErrorKind, Op};
use super::stats::{Latency, Stats};
use super::timeline::{self, Stall};

/// Version of the JSON layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 2;

/// `x` rounded to 3 significant digits.
pub fn sig3(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Top level of `--json`: one run, or a comparison.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Output {
    Run(Box<RunReport>),
    Compare(CompareReport),
    /// The run could not take place (bad option, unreachable target, a child that would not start).
    Fatal {
        tool: &'static str,
        version: &'static str,
        schema: u32,
        ok: bool,
        fatal: String,
    },
}

impl Output {
    pub fn fatal(message: String) -> Output {
        Output::Fatal {
            tool: "gtm_bench",
            version: env!("CARGO_PKG_VERSION"),
            schema: SCHEMA_VERSION,
            ok: false,
            fatal: message,
        }
    }
}

/// One target under one load.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub tool: &'static str,
    pub version: &'static str,
    pub schema: u32,
    /// Ran the whole window, committed transactions, no errors, no duplicate GXIDs.
    pub ok: bool,
    /// Why the run ended before its window did ("interrupted", "error limit reached (...)").
    pub stop_reason: Option<String>,
    pub target: Target,
    pub load: Load,
    /// Length of the measurement window actually run, seconds.
    pub measured_s: f64,
    /// Time until every backend's first connect resolved, seconds.
    pub connect_s: Option<f64>,
    pub txns: u64,
    pub txn_per_s: f64,
    /// Answers to begin, snapshot and commit requests.
    pub ops: u64,
    pub ops_per_s: f64,
    pub latency_us: LatencySet,
    pub errors: Errors,
    pub connections: Connections,
    pub gxids: Gxids,
    /// CPU used during the window by each process watched.
    pub cpu: Vec<Cpu>,
    /// Elements per MULTI the proxy under load sent in the window, per type
    /// (null when its metrics endpoint is not known).
    pub multi_sizes: Option<super::multis::MultiSizes>,
    /// Present with a scenario or `--plot`.
    pub timeline: Option<TimelineReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// "direct", "gtm_proxy", or the label given with the target.
    pub label: String,
    pub addr: String,
    /// What the bench started for this run: "gtm_sim", "gtm_proxy"...
    pub spawned: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// "loop" (event loops) or "threads" (one blocking thread per backend).
    pub model: &'static str,
    pub backends: usize,
    /// OS threads carrying the backends: loop threads, or one per backend.
    pub threads: usize,
    pub think_us: u64,
    pub session_ids: bool,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub ramp_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySet {
    pub begin: LatencyStats,
    pub snapshot: LatencyStats,
    pub commit: LatencyStats,
    /// Begin sent to commit answered.
    pub txn: LatencyStats,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencyStats {
    pub count: u64,
    /// The rest are null when count is 0.
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p99_9: Option<f64>,
    pub max: Option<f64>,
}

impl LatencyStats {
    pub fn of(l: &Latency) -> Self {
        let on = l.count() > 0;
        let q = |v: f64| on.then(|| sig3(v));
        LatencyStats {
            count: l.count(),
            mean: q(l.mean_us()),
            p50: q(l.quantile_us(0.5)),
            p90: q(l.quantile_us(0.9)),
            p99: q(l.quantile_us(0.99)),
            p99_9: q(l.quantile_us(0.999)),
            max: q(l.max_us()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Errors {
    pub total: u64,
    /// Every kind, zeros included; keys as in `ErrorKind::as_str`.
    pub by_kind: BTreeMap<String, u64>,
    /// The request outstanding when the error happened: startup, begin, snapshot, commit.
    pub by_op: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub established: u64,
    pub failed: u64,
    pub reconnects: u64,
    pub stopped_backends: u64,
    pub unfinished_at_end: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gxids {
    pub handed_out: u64,
    pub unique: u64,
    /// GXIDs handed out more than once in the run.
    pub duplicates: u64,
    /// Of those, ones still held by an open transaction of the same loop thread.
    pub duplicates_while_open: u64,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (user + system) over the window.
    pub cpu_s: f64,
    /// cpu_s / window seconds.
    pub cores: f64,
    /// CPU microseconds per answered request.
    pub us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineReport {
    pub bucket_ms: u64,
    pub buckets: Vec<TimelineBucket>,
    pub event: Option<EventReport>,
    /// Longest stretch without a committed transaction.
    pub longest_stall: Option<Stall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineBucket {
    /// Bucket start, seconds from the window start.
    pub t_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub p99_us: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    pub command: String,
    /// Seconds from the window start.
    pub at_s: f64,
    /// How long the command ran, seconds (null if it was still running at the end and was killed).
    pub ran_s: Option<f64>,
    pub exit: Option<String>,
    /// First bucket with errors at or after the event.
    pub first_error_s: Option<f64>,
    /// First bucket with a commit after that.
    pub first_success_after_s: Option<f64>,
}

/// A comparison: the same load against each target, repeats interleaved.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub tool: &'static str,
    pub version: &'static str,
    pub schema: u32,
    pub ok: bool,
    pub repeats: usize,
    /// The load model of every run: "loop" or "threads".
    pub model: &'static str,
    pub targets: Vec<CompareTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareTarget {
    pub label: String,
    pub addr: String,
    pub median: Medians,
    /// median txn/s over the first target's.
    pub ratio: Option<f64>,
    pub runs: Vec<RunReport>,
}

#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Medians {
    pub txn_per_s: f64,
    pub txn_p50_us: Option<f64>,
    pub txn_p99_us: Option<f64>,
    /// CPU µs per request of the target's own process, when the bench watches it.
    pub target_us_per_request: Option<f64>,
}

pub fn errors_of(s: &Stats) -> Errors {
    let by_kind = ErrorKind::ALL.iter().map(|k| (k.as_str().to_owned(), s.errors.get(*k))).collect();
    let by_op = Op::ALL.iter().map(|o| (o.as_str().to_owned(), s.errors.by_op[o.index()])).collect();
    Errors { total: s.errors.total(), by_kind, by_op }
}

pub fn connections_of(s: &Stats) -> Connections {
    let c = &s.conns;
    Connections {
        established: c.established,
        failed: c.failed,
        reconnects: c.reconnects,
        stopped_backends: c.stopped_backends,
        unfinished_at_end: c.unfinished_at_end,
    }
}

pub fn gxids_of(s: &Stats) -> Gxids {
    let g = &s.gxids;
    Gxids {
        handed_out: g.handed_out,
        unique: g.unique(),
        duplicates: g.duplicates,
        duplicates_while_open: g.duplicates_while_open,
        min: g.min,
        max: g.max,
    }
}

pub fn timeline_of(s: &Stats, event: Option<EventReport>) -> TimelineReport {
    let b = &s.timeline.buckets;
    let buckets = b
        .iter()
        .enumerate()
        .map(|(i, x)| TimelineBucket {
            t_s: (i as f64 * timeline::BUCKET.as_secs_f64() * 10.0).round() / 10.0,
            ok: x.ok,
            errors: x.errors,
            p99_us: x.p99_us(),
        })
        .collect();
    let event = event.map(|mut e| {
        let (err, ok) = timeline::after_event(b, e.at_s);
        e.first_error_s = err;
        e.first_success_after_s = ok;
        e
    });
    TimelineReport {
        bucket_ms: timeline::BUCKET.as_millis() as u64,
        buckets,
        event,
        longest_stall: timeline::longest_stall(b),
    }
}

impl RunReport {
    /// The verdict: the whole window ran, something committed, nothing went wrong.
    pub fn verdict(stop_reason: &Option<String>, s: &Stats) -> bool {
        stop_reason.is_none()
            && s.txns() > 0
            && s.errors.total() == 0
            && s.gxids.duplicates == 0
            && s.gxids.duplicates_while_open == 0
    }
}

/// Median of `v` (mean of the middle two for an even count); None if empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Medians of a target's runs; `target_pid_name` names the process whose CPU counts as the target's.
pub fn medians(runs: &[RunReport], target_proc: Option<&str>) -> Medians {
    let mut tps: Vec<f64> = runs.iter().map(|r| r.txn_per_s).collect();
    let mut p50: Vec<f64> = runs.iter().filter_map(|r| r.latency_us.txn.p50).collect();
    let mut p99: Vec<f64> = runs.iter().filter_map(|r| r.latency_us.txn.p99).collect();
    let mut cpu: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.cpu.iter().find(|c| Some(c.name.as_str()) == target_proc).and_then(|c| c.us_per_request))
        .collect();
    Medians {
        txn_per_s: median(&mut tps).map_or(0.0, sig3),
        txn_p50_us: median(&mut p50).map(sig3),
        txn_p99_us: median(&mut p99).map(sig3),
        target_us_per_request: median(&mut cpu).map(sig3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn three_significant_digits() {
        assert_eq!(sig3(982.015), 982.0);
        assert_eq!(sig3(21594.0), 21600.0);
        assert_eq!(sig3(45.312), 45.3);
        assert_eq!(sig3(0.0), 0.0);
        assert_eq!(sig3(1.0049), 1.0);
    }

    #[test]
    fn medians_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn latency_stats_are_null_without_samples() {
        let l = Latency::new();
        assert_eq!(LatencyStats::of(&l).p50, None);
        let mut l = Latency::new();
        l.record(Duration::from_nanos(982_015));
        let s = LatencyStats::of(&l);
        assert_eq!((s.count, s.p50), (1, Some(982.0)));
    }

    #[test]
    fn errors_list_every_kind() {
        let mut s = Stats::default();
        s.errors.add(ErrorKind::Timeout, Op::Commit);
        let e = errors_of(&s);
        assert_eq!(e.total, 1);
        assert_eq!(e.by_kind.len(), ErrorKind::COUNT);
        assert_eq!(e.by_kind["timeout"], 1);
        assert_eq!(e.by_kind["server_error"], 0);
        assert_eq!(e.by_op["commit"], 1);
    }

    #[test]
    fn fatal_output_is_tagged() {
        let v = serde_json::to_value(Output::fatal("no GTM".into())).unwrap();
        assert_eq!(v["mode"], "fatal");
        assert_eq!(v["ok"], false);
        assert_eq!(v["fatal"], "no GTM");
    }
}
