//! The text people read: the end-of-run summary (in the spirit of pgbench's),
//! the compare table, progress lines. Pure functions of the typed reports.

use std::fmt::Write;

use super::report::{sig3, CompareReport, LatencyStats, RunReport, TimelineReport};

/// A latency in microseconds with a fitting unit and 3 significant digits.
pub fn fmt_us(us: f64) -> String {
    let (v, unit) = if us < 1_000.0 {
        (us, "µs")
    } else if us < 1_000_000.0 {
        (us / 1_000.0, "ms")
    } else {
        (us / 1_000_000.0, "s")
    };
    let v = sig3(v);
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.decimals$} {unit}")
}

/// A rate with no false precision: whole numbers from 100 up.
pub fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{:.0}", r)
    } else {
        format!("{:.1}", r)
    }
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), fmt_us)
}

fn latency_row(out: &mut String, name: &str, l: &LatencyStats) {
    let _ = writeln!(
        out,
        "  {name:<9}{:>10}{:>11}{:>11}{:>11}{:>11}{:>11}",
        l.count,
        opt_us(l.p50),
        opt_us(l.p90),
        opt_us(l.p99),
        opt_us(l.p99_9),
        opt_us(l.max)
    );
}

/// The summary of one run.
pub fn run_summary(r: &RunReport) -> String {
    let mut o = String::new();
    let t = &r.target;
    let spawned = if t.spawned.is_empty() { String::new() } else { format!(" (started: {})", t.spawned.join(", ")) };
    let _ = writeln!(o, "target: {} {}{}", t.label, t.addr, spawned);
    let l = &r.load;
    let carried = if l.model == "threads" {
        "one blocking thread each".to_string()
    } else {
        format!("{} event-loop thread(s)", l.threads)
    };
    let _ = writeln!(
        o,
        "load: {} backends, model {} ({carried}), think {}, warm-up {:.1} s, window {:.1} s (measured {:.1} s)",
        l.backends,
        l.model,
        if l.think_us == 0 { "none".into() } else { fmt_us(l.think_us as f64) },
        l.warmup_s,
        l.duration_s,
        r.measured_s
    );
    if let Some(c) = r.connect_s {
        let _ = writeln!(o, "connect ramp: every backend's first connect resolved in {c:.2} s");
    }
    let _ = writeln!(
        o,
        "throughput: {} txn/s ({} transactions), {} requests/s",
        fmt_rate(r.txn_per_s),
        r.txns,
        fmt_rate(r.ops_per_s)
    );
    let _ = writeln!(o, "latency:   {:>9}{:>11}{:>11}{:>11}{:>11}{:>11}", "count", "p50", "p90", "p99", "p99.9", "max");
    let ls = &r.latency_us;
    for (name, s) in [("begin", &ls.begin), ("snapshot", &ls.snapshot), ("commit", &ls.commit), ("txn", &ls.txn)] {
        latency_row(&mut o, name, s);
    }
    if r.errors.total == 0 {
        let _ = writeln!(o, "errors: none");
    } else {
        let nonzero = |m: &std::collections::BTreeMap<String, u64>| -> Vec<String> {
            m.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect()
        };
        let (kinds, ops) = (nonzero(&r.errors.by_kind), nonzero(&r.errors.by_op));
        let _ = writeln!(o, "errors: {} ({}; during {})", r.errors.total, kinds.join(", "), ops.join(", "));
    }
    let c = &r.connections;
    let _ = writeln!(
        o,
        "connections: {} established, {} failed, {} reconnects, {} backends gave up",
        c.established, c.failed, c.reconnects, c.stopped_backends
    );
    let g = &r.gxids;
    let _ = writeln!(o, "gxids: {} handed out, {} duplicates", g.handed_out, g.duplicates);
    if !r.cpu.is_empty() {
        let _ = writeln!(
            o,
            "cpu during the window:  {:<14}{:>8}{:>9}{:>8}{:>14}",
            "process", "pid", "cpu", "cores", "per request"
        );
        for p in &r.cpu {
            let per = p.us_per_request.map_or_else(|| "-".into(), fmt_us);
            let _ = writeln!(
                o,
                "                        {:<14}{:>8}{:>8.2}s{:>8.2}{:>14}",
                p.name, p.pid, p.cpu_s, p.cores, per
            );
        }
    }
    if let Some(m) = &r.multi_sizes {
        let _ = writeln!(o, "{}", multi_sizes_line(m));
    }
    if let Some(tl) = &r.timeline {
        timeline_summary(&mut o, tl);
    }
    if let Some(why) = &r.stop_reason {
        let _ = writeln!(o, "stopped early: {why}");
    }
    let _ = writeln!(o, "result: {}", if r.ok { "OK" } else { "FAILED" });
    o
}

fn timeline_summary(o: &mut String, tl: &TimelineReport) {
    if let Some(e) = &tl.event {
        let ran = e.ran_s.map_or_else(|| "still running at the end".into(), |s| format!("ran {s:.2} s"));
        let exit = e.exit.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(o, "event at {:.1} s: `{}` ({ran}, {exit})", e.at_s, e.command);
        match (e.first_error_s, e.first_success_after_s) {
            (None, _) => {
                let _ = writeln!(o, "  no errors after the event");
            }
            (Some(err), Some(ok)) => {
                let _ = writeln!(o, "  first errors at {err:.1} s, first commit after them at {ok:.1} s");
            }
            (Some(err), None) => {
                let _ = writeln!(o, "  first errors at {err:.1} s, no commit after them before the window ended");
            }
        }
    }
    match tl.longest_stall {
        Some(s) => {
            let _ = writeln!(
                o,
                "longest stall without a commit: {:.1} s (from {:.1} s to {:.1} s, {} ms buckets)",
                s.length_s(),
                s.from_s,
                s.to_s,
                tl.bucket_ms
            );
        }
        None => {
            let _ = writeln!(o, "no stall: every {} ms of the window had commits", tl.bucket_ms);
        }
    }
}

/// The side-by-side table of a comparison.
pub fn compare_table(c: &CompareReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "compare: {} target(s), {} interleaved repeat(s) each, model {}; medians",
        c.targets.len(),
        c.repeats,
        c.model
    );
    let w = c.targets.iter().map(|t| t.label.len()).max().unwrap_or(6).max(6);
    let _ = writeln!(
        o,
        "  {:<w$}  {:<21}{:>10}{:>8}{:>11}{:>11}{:>12}  runs (txn/s)",
        "target", "address", "txn/s", "ratio", "txn p50", "txn p99", "cpu/req"
    );
    for t in &c.targets {
        let m = &t.median;
        let runs: Vec<String> = t.runs.iter().map(|r| fmt_rate(r.txn_per_s)).collect();
        let _ = writeln!(
            o,
            "  {:<w$}  {:<21}{:>10}{:>8}{:>11}{:>11}{:>12}  {}",
            t.label,
            t.addr,
            fmt_rate(m.txn_per_s),
            t.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
            opt_us(m.txn_p50_us),
            opt_us(m.txn_p99_us),
            opt_us(m.target_us_per_request),
            runs.join(" ")
        );
    }
    let failed: Vec<&str> =
        c.targets.iter().filter(|t| t.runs.iter().any(|r| !r.ok)).map(|t| t.label.as_str()).collect();
    if failed.is_empty() {
        let _ = writeln!(o, "result: OK");
    } else {
        let _ = writeln!(o, "result: FAILED (runs with errors or no transactions: {})", failed.join(", "));
    }
    o
}

/// One progress line, like pgbench's `-P`.
pub fn progress_line(
    at_s: f64,
    txn_per_s: f64,
    mean_us: Option<f64>,
    errors: u64,
    established: u64,
    backends: usize,
) -> String {
    let lat = mean_us.map_or_else(|| "-".into(), fmt_us);
    format!(
        "progress: {at_s:.1} s, {} txn/s, request latency {lat} avg, {errors} errors, {established}/{backends} connected",
        fmt_rate(txn_per_s)
    )
}

/// `MULTI sizes in the window (elements per MULTI): begin 120.9 (2478), ...`
pub fn multi_sizes_line(m: &super::multis::MultiSizes) -> String {
    if m.is_empty() {
        return "MULTI sizes in the window: no MULTI sent".into();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {:.1} ({} MULTIs)", v.mean, v.multis)).collect();
    format!("MULTI sizes in the window (mean elements per MULTI): {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_precision() {
        assert_eq!(fmt_us(45.312), "45.3 µs");
        assert_eq!(fmt_us(982.015), "982 µs");
        assert_eq!(fmt_us(1681.0), "1.68 ms");
        assert_eq!(fmt_us(21594.0), "21.6 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
        assert_eq!(fmt_rate(18586.4), "18586");
        assert_eq!(fmt_rate(12.34), "12.3");
    }

    #[test]
    fn progress_reads_like_pgbench() {
        let l = progress_line(5.0, 1234.4, Some(810.0), 0, 200, 200);
        assert_eq!(l, "progress: 5.0 s, 1234 txn/s, request latency 810 µs avg, 0 errors, 200/200 connected");
    }
}
