//! The run's results: the JSON summary (stdout or a file) and the one-line
//! human summary (stderr).
//!
//! JSON schema (all latencies in microseconds, rates per second of the
//! measurement window):
//!
//! ```text
//! {
//!   "tool": "gtm_bench", "version": "0.1.0",
//!   "ok": bool,                  // ran the whole window, txns > 0, no errors, no duplicate GXIDs
//!   "fatal": string|null,        // set when the run could not happen at all (then most fields are absent)
//!   "stop_reason": string|null,  // "interrupted", "error limit reached (...)", ...
//!   "target": "host:port", "via": "direct"|"proxy", "spawned": {"sim": bool, "proxy": bool},
//!   "backends": n, "threads": n, "think_us": n, "session_ids": bool,
//!   "warmup_s": f, "duration_s": f,   // as requested
//!   "measured_s": f,                  // actual window length
//!   "connect_s": f|null,              // time until every backend's first connect resolved
//!   "txns": n, "txn_per_s": f, "ops": n, "ops_per_s": f,   // ops = begin + snapshot + commit answers
//!   "latency_us": {"begin"|"snapshot"|"commit"|"txn":
//!                  {"count", "mean", "p50", "p90", "p99", "p99_9", "max"}},
//!   "errors": {"total": n, "by_kind": {"server_error": n, ...every kind...},
//!              "by_op": {"startup"|"begin"|"snapshot"|"commit": n}},
//!   "connections": {"established", "failed", "reconnects", "stopped_backends", "unfinished_at_end"},
//!   "gxids": {"handed_out", "unique", "duplicates", "duplicates_while_open", "min", "max"},
//!          // duplicates: GXIDs handed out more than once in the run (across all loop threads);
//!          // duplicates_while_open: of those, ones still held by an open transaction of the
//!          // same loop thread (exact with --threads 1)
//!   "cpu": {"window_s": f, "bench": CPU, "sim": CPU|null, "proxy": CPU|null}
//!          // CPU = {"cpu_us": n, "cores": f, "us_per_request": f}
//! }
//! ```
//!
//! Errors, connection counts and the GXID check cover the whole run
//! (connects, warm-up, window and drain); throughput and latency cover
//! only the window.

use std::time::Duration;

use serde_json::{json, Value};

use super::backend::{ErrorKind, Op};
use super::stats::{Latency, Stats};

/// CPU time a process used during the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuUse {
    pub cpu: Duration,
    pub wall: Duration,
}

impl CpuUse {
    fn json(&self, requests: u64) -> Value {
        let us = self.cpu.as_micros() as u64;
        let wall = self.wall.as_secs_f64();
        json!({
            "cpu_us": us,
            "cores": if wall > 0.0 { round3(self.cpu.as_secs_f64() / wall) } else { 0.0 },
            "us_per_request": if requests > 0 { json!(round3(us as f64 / requests as f64)) } else { Value::Null },
        })
    }
}

/// CPU of each process over the window (None: not measured / not spawned).
#[derive(Debug, Clone, Default)]
pub struct CpuReport {
    pub bench: Option<CpuUse>,
    pub sim: Option<CpuUse>,
    pub proxy: Option<CpuUse>,
}

/// Everything the JSON says.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    pub via_proxy: bool,
    pub spawned_sim: bool,
    pub spawned_proxy: bool,
    pub backends: usize,
    pub threads: usize,
    pub think: Duration,
    pub session_ids: bool,
    pub warmup: Duration,
    pub duration: Duration,
    pub measured: Duration,
    pub connect: Option<Duration>,
    pub stop_reason: Option<String>,
    pub stats: Stats,
    pub cpu: CpuReport,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn latency_json(l: &Latency) -> Value {
    if l.count() == 0 {
        return json!({ "count": 0 });
    }
    json!({
        "count": l.count(),
        "mean": round3(l.mean_us()),
        "p50": round3(l.quantile_us(0.5)),
        "p90": round3(l.quantile_us(0.9)),
        "p99": round3(l.quantile_us(0.99)),
        "p99_9": round3(l.quantile_us(0.999)),
        "max": round3(l.max_us()),
    })
}

impl Report {
    pub fn txn_per_s(&self) -> f64 {
        per_s(self.stats.txns(), self.measured)
    }

    pub fn ops_per_s(&self) -> f64 {
        per_s(self.stats.ops(), self.measured)
    }

    /// The run measured something and found nothing wrong.
    pub fn ok(&self) -> bool {
        self.stop_reason.is_none()
            && self.stats.txns() > 0
            && self.stats.errors.total() == 0
            && self.stats.gxids.duplicates == 0
            && self.stats.gxids.duplicates_while_open == 0
    }

    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let by_kind: serde_json::Map<String, Value> =
            ErrorKind::ALL.iter().map(|k| (k.as_str().to_owned(), json!(s.errors.get(*k)))).collect();
        let by_op: serde_json::Map<String, Value> =
            Op::ALL.iter().map(|o| (o.as_str().to_owned(), json!(s.errors.by_op[o.index()]))).collect();
        let requests = s.ops();
        let cpu = |c: &Option<CpuUse>| c.as_ref().map_or(Value::Null, |c| c.json(requests));
        let window_s = [&self.cpu.bench, &self.cpu.sim, &self.cpu.proxy]
            .iter()
            .find_map(|c| c.map(|c| round3(c.wall.as_secs_f64())));
        json!({
            "tool": "gtm_bench",
            "version": env!("CARGO_PKG_VERSION"),
            "ok": self.ok(),
            "fatal": Value::Null,
            "stop_reason": self.stop_reason,
            "target": self.target,
            "via": if self.via_proxy { "proxy" } else { "direct" },
            "spawned": { "sim": self.spawned_sim, "proxy": self.spawned_proxy },
            "backends": self.backends,
            "threads": self.threads,
            "think_us": self.think.as_micros() as u64,
            "session_ids": self.session_ids,
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.duration.as_secs_f64(),
            "measured_s": round3(self.measured.as_secs_f64()),
            "connect_s": self.connect.map(|d| round3(d.as_secs_f64())),
            "txns": s.txns(),
            "txn_per_s": round3(self.txn_per_s()),
            "ops": s.ops(),
            "ops_per_s": round3(self.ops_per_s()),
            "latency_us": {
                "begin": latency_json(&s.begin),
                "snapshot": latency_json(&s.snapshot),
                "commit": latency_json(&s.commit),
                "txn": latency_json(&s.txn),
            },
            "errors": { "total": s.errors.total(), "by_kind": by_kind, "by_op": by_op },
            "connections": {
                "established": s.conns.established,
                "failed": s.conns.failed,
                "reconnects": s.conns.reconnects,
                "stopped_backends": s.conns.stopped_backends,
                "unfinished_at_end": s.conns.unfinished_at_end,
            },
            "gxids": {
                "handed_out": s.gxids.handed_out,
                "unique": s.gxids.unique(),
                "duplicates": s.gxids.duplicates,
                "duplicates_while_open": s.gxids.duplicates_while_open,
                "min": s.gxids.min,
                "max": s.gxids.max,
            },
            "cpu": {
                "window_s": window_s,
                "bench": cpu(&self.cpu.bench),
                "sim": cpu(&self.cpu.sim),
                "proxy": cpu(&self.cpu.proxy),
            },
        })
    }

    /// One line for people.
    pub fn summary_line(&self) -> String {
        let s = &self.stats;
        let mut line = format!(
            "gtm_bench: {} ({}) {} backends, {:.1} s: {:.0} txn/s ({:.0} ops/s), txn p50 {:.0} us p99 {:.0} us, \
             errors {}, duplicate gxids {}, connections {} ok / {} failed",
            self.target,
            if self.via_proxy { "via proxy" } else { "direct" },
            self.backends,
            self.measured.as_secs_f64(),
            self.txn_per_s(),
            self.ops_per_s(),
            s.txn.quantile_us(0.5),
            s.txn.quantile_us(0.99),
            s.errors.total(),
            s.gxids.duplicates,
            s.conns.established,
            s.conns.failed,
        );
        if let Some(p) = self.cpu.proxy {
            if s.ops() > 0 {
                line.push_str(&format!(", proxy {:.2} cpu-us/request", p.cpu.as_micros() as f64 / s.ops() as f64));
            }
        }
        if let Some(r) = &self.stop_reason {
            line.push_str(&format!(" [stopped early: {r}]"));
        }
        line.push_str(if self.ok() { " — OK" } else { " — FAILED" });
        line
    }
}

fn per_s(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// The JSON of a run that could not take place (bad target, a child that
/// would not start...).
pub fn fatal_json(target: &str, via_proxy: bool, backends: usize, message: &str) -> Value {
    json!({
        "tool": "gtm_bench",
        "version": env!("CARGO_PKG_VERSION"),
        "ok": false,
        "fatal": message,
        "target": target,
        "via": if via_proxy { "proxy" } else { "direct" },
        "backends": backends,
        "txns": 0,
        "txn_per_s": 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            target: "127.0.0.1:1".into(),
            via_proxy: false,
            spawned_sim: false,
            spawned_proxy: false,
            backends: 2,
            threads: 1,
            think: Duration::ZERO,
            session_ids: true,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
            measured: Duration::from_secs(2),
            connect: Some(Duration::from_millis(3)),
            stop_reason: None,
            stats: Stats::default(),
            cpu: CpuReport::default(),
        }
    }

    #[test]
    fn json_has_every_error_kind_and_rates() {
        let mut r = report();
        for us in [10, 20, 30] {
            r.stats.txn.record(Duration::from_micros(us));
            r.stats.begin.record(Duration::from_micros(us));
        }
        r.stats.errors.add(ErrorKind::ServerError, Op::Commit);
        r.cpu.proxy = Some(CpuUse { cpu: Duration::from_millis(10), wall: Duration::from_secs(2) });
        let v = r.to_json();
        assert_eq!(v["txns"], 3);
        assert_eq!(v["txn_per_s"], 1.5);
        assert_eq!(v["ops"], 3);
        assert_eq!(v["errors"]["total"], 1);
        assert_eq!(v["errors"]["by_kind"]["server_error"], 1);
        assert_eq!(v["errors"]["by_op"]["commit"], 1);
        assert_eq!(v["errors"]["by_kind"].as_object().unwrap().len(), ErrorKind::COUNT);
        // hdrhistogram reports the top of the 3-significant-digit bucket.
        assert!((v["latency_us"]["txn"]["p50"].as_f64().unwrap() - 20.0).abs() < 0.05);
        assert_eq!(v["latency_us"]["snapshot"]["count"], 0);
        assert_eq!(v["cpu"]["proxy"]["us_per_request"], 3333.333);
        assert_eq!(v["cpu"]["proxy"]["cores"], 0.005);
        assert_eq!(v["ok"], false);
        assert!(r.summary_line().contains("FAILED"));
    }

    #[test]
    fn ok_needs_transactions_and_no_errors() {
        let mut r = report();
        assert!(!r.ok());
        r.stats.txn.record(Duration::from_micros(1));
        assert!(r.ok());
        r.stats.gxids.began(5);
        r.stats.gxids.began(5);
        assert!(!r.ok());
        assert_eq!(r.to_json()["gxids"]["duplicates"], 1);
    }

    #[test]
    fn fatal_json_says_why() {
        let v = fatal_json("127.0.0.1:1", true, 5, "gtm_proxy exited");
        assert_eq!(v["ok"], false);
        assert_eq!(v["fatal"], "gtm_proxy exited");
        assert_eq!(v["via"], "proxy");
    }
}
