//! One timed run against one target: the loop threads, and the coordinating
//! thread that reads CPU at the window's edges, prints progress lines, runs
//! the scenario command at its second and notices a child dying.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::driver::LoopConfig;
use super::human;
use super::model::{Drivers, Model};
use super::multis::Scrape;
use super::report::{self, Cpu, EventReport, LatencySet, LatencyStats, Load, RunReport, Target};
use super::scenario::Running;
use super::shared::Shared;
use super::stats::Latency;
use super::{cpu, BenchError, Children, Config, TargetInfo};

/// A run's report, and the transaction latencies the plot's CDF is drawn from.
pub struct RunOutput {
    pub report: RunReport,
    pub txn: Latency,
}

/// CPU readings of every watched process at one instant.
struct CpuSample {
    at: Instant,
    procs: Vec<(String, u32, Option<Duration>)>,
}

fn watched(cfg: &Config, ch: &Children) -> Vec<(String, u32)> {
    let mut v = vec![("gtm_bench".to_string(), std::process::id())];
    for p in [&ch.sim, &ch.proxy].into_iter().flatten() {
        v.push((p.name.clone(), p.pid()));
    }
    v.extend(cfg.watch.iter().cloned());
    v
}

fn sample(procs: &[(String, u32)]) -> CpuSample {
    let me = std::process::id();
    let procs = procs
        .iter()
        .map(|(n, pid)| (n.clone(), *pid, if *pid == me { Some(cpu::self_cpu()) } else { cpu::proc_cpu(*pid) }))
        .collect();
    CpuSample { at: Instant::now(), procs }
}

fn cpu_used(a: &CpuSample, b: &CpuSample, requests: u64) -> Vec<Cpu> {
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    a.procs
        .iter()
        .zip(&b.procs)
        .filter_map(|((name, pid, x), (_, _, y))| {
            let used = y.as_ref()?.saturating_sub(*x.as_ref()?);
            Some(Cpu {
                name: name.clone(),
                pid: *pid,
                cpu_s: report::sig3(used.as_secs_f64()),
                cores: if wall > 0.0 { (used.as_secs_f64() / wall * 100.0).round() / 100.0 } else { 0.0 },
                us_per_request: (requests > 0).then(|| report::sig3(used.as_micros() as f64 / requests as f64)),
            })
        })
        .collect()
}

/// Environment for the scenario command.
fn scenario_env(t: &TargetInfo, ch: &Children) -> Vec<(String, String)> {
    let mut env = vec![("GTM_BENCH_TARGET".to_string(), t.addr.to_string())];
    if let Some(s) = &ch.sim {
        env.push(("GTM_BENCH_SIM_PID".into(), s.pid().to_string()));
        env.push(("GTM_BENCH_SIM_PORT".into(), s.addr.port().to_string()));
        env.push(("GTM_BENCH_SIM_DIR".into(), s.dir().display().to_string()));
        env.push(("GTM_BENCH_SIM_BIN".into(), s.program_command()));
    }
    if let Some(p) = &ch.proxy {
        env.push(("GTM_BENCH_PROXY_PID".into(), p.pid().to_string()));
        env.push(("GTM_BENCH_PROXY_DIR".into(), p.dir().display().to_string()));
        env.push(("GTM_BENCH_PROXY_BIN".into(), p.program_command()));
    }
    env
}

/// Progress line state: the counters at the previous line.
struct Progress {
    every: Duration,
    next: Instant,
    last: (Instant, u64, u64, u64),
}

impl Progress {
    fn tick(&mut self, now: Instant, started: Instant, shared: &Shared, backends: usize) {
        if now < self.next {
            return;
        }
        self.next += self.every;
        let l = &shared.live;
        let (c, a, ns) = (
            l.committed.load(Ordering::Relaxed),
            l.answered.load(Ordering::Relaxed),
            l.latency_ns.load(Ordering::Relaxed),
        );
        let (t0, c0, a0, ns0) = self.last;
        let dt = now.saturating_duration_since(t0).as_secs_f64().max(1e-9);
        let mean = (a > a0).then(|| (ns - ns0) as f64 / (a - a0) as f64 / 1000.0);
        let line = human::progress_line(
            now.saturating_duration_since(started).as_secs_f64(),
            (c - c0) as f64 / dt,
            mean,
            l.errors.load(Ordering::Relaxed),
            l.established.load(Ordering::Relaxed),
            backends,
        );
        eprintln!("{line}");
        self.last = (now, c, a, ns);
    }
}

/// Run the configured load against `t` once.
pub fn run_one(
    cfg: &Config,
    t: &TargetInfo,
    children: &mut Children,
    interrupted: &Arc<AtomicBool>,
) -> Result<RunOutput, BenchError> {
    let threads = cfg.model.threads(cfg);
    let connect_concurrency = match cfg.model {
        Model::Loop => cfg.connect_concurrency.div_ceil(threads).max(1),
        Model::Threads => cfg.connect_concurrency.max(1),
    };
    let lcfg = Arc::new(LoopConfig {
        addr: t.addr,
        think: cfg.think,
        connect_timeout: cfg.connect_timeout,
        request_timeout: cfg.request_timeout,
        max_reconnects: cfg.max_reconnects,
        connect_concurrency,
        drain: cfg.drain,
        pid: std::process::id(),
        session_ids: cfg.session_ids,
        threads,
        ramp: cfg.ramp,
        backends: cfg.backends,
        timeline: cfg.event.is_some() || cfg.plot.is_some(),
    });
    let shared = Arc::new(Shared::new(threads, cfg.warmup, cfg.duration, cfg.max_errors, interrupted.clone()));
    log::info!("{} backends, model {}, on {threads} thread(s) against {} {}", cfg.backends, cfg.model, t.label, t.addr);
    let started = Instant::now();
    let drivers = Drivers::start(cfg, &lcfg, &shared)?;

    let procs = watched(cfg, children);
    let (mut first, mut last) = (None, None);
    // The proxy's MULTI sizes at the window's edges (when its metrics are known).
    let scrape = |at: &str| {
        t.metrics.and_then(|a| {
            Scrape::fetch(a).map_err(|e| log::warn!("cannot read the proxy's metrics at {a} ({at}): {e}")).ok()
        })
    };
    let (mut multis_first, mut multis_last) = (None, None);
    let mut progress = cfg.progress.filter(|p| !p.is_zero()).map(|every| Progress {
        every,
        next: started + every,
        last: (started, 0, 0, 0),
    });
    let mut event: Option<Running> = None;
    let mut event_error = None;
    let mut exited = [false; 2];
    while !drivers.is_finished() {
        let now = Instant::now();
        let mut nap = Duration::from_millis(5);
        if let Some(w) = shared.window() {
            if first.is_none() {
                if now >= w.start {
                    first = Some(sample(&procs));
                    multis_first = scrape("window start");
                } else {
                    nap = nap.min(w.start - now);
                }
            } else if last.is_none() && (now >= w.end || shared.should_stop()) {
                last = Some(sample(&procs));
                multis_last = scrape("window end");
            }
            if let Some(ev) = cfg.event.as_ref().filter(|_| event.is_none() && event_error.is_none()) {
                if now >= w.start + ev.at {
                    match Running::start(ev, &scenario_env(t, children)) {
                        Ok(r) => event = Some(r),
                        Err(e) => {
                            shared.request_stop("scenario command failed to start");
                            event_error = Some(e);
                        }
                    }
                }
            }
        }
        if let Some(r) = event.as_mut() {
            r.poll();
        }
        if let Some(p) = progress.as_mut() {
            p.tick(now, started, &shared, cfg.backends);
        }
        // A child dying is news, unless a scenario is there to kill it.
        if cfg.event.is_none() {
            for (c, seen) in [&mut children.sim, &mut children.proxy].into_iter().zip(&mut exited) {
                if let Some(c) = c.as_mut().filter(|_| !*seen) {
                    if let Some(status) = c.exit_status() {
                        *seen = true;
                        log::error!("{} exited during the run ({status}); output:\n{}", c.name, c.log_tail());
                        shared.request_stop(&format!("{} exited ({status})", c.name));
                    }
                }
            }
        }
        std::thread::sleep(nap);
    }
    if first.is_some() && last.is_none() {
        last = Some(sample(&procs));
        multis_last = scrape("window end");
    }
    let multi_sizes = match (&multis_first, &multis_last) {
        (Some(a), Some(b)) => Some(a.sizes_until(b)),
        _ => None,
    };
    let event_outcome = event.as_mut().map(|r| {
        r.poll();
        let o = r.outcome();
        r.stop_group();
        o
    });
    if let Some(e) = event_error {
        return Err(BenchError::Scenario(e));
    }

    let stats = drivers.join()?;
    let measured = match (shared.window(), shared.stopped_at()) {
        (Some(w), Some(s)) if s < w.end => s.saturating_duration_since(w.start),
        (Some(w), _) => w.end - w.start,
        (None, _) => Duration::ZERO,
    };
    if stats.conns.established == 0 && !interrupted.load(Ordering::Relaxed) {
        return Err(BenchError::NoConnection { target: t.addr.to_string(), failed: stats.conns.failed });
    }
    let cpu = match (&first, &last) {
        (Some(a), Some(b)) => cpu_used(a, b, stats.ops()),
        _ => Vec::new(),
    };
    let stop_reason = shared.stop_reason();
    let per_s = |n: u64| if measured.is_zero() { 0.0 } else { report::sig3(n as f64 / measured.as_secs_f64()) };
    let timeline = lcfg.timeline.then(|| {
        let ev = cfg.event.as_ref().map(|ev| {
            let (ran, exit) = event_outcome.clone().unwrap_or((None, None));
            EventReport {
                command: ev.command.clone(),
                at_s: ev.at.as_secs_f64(),
                ran_s: ran.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0),
                exit,
                first_error_s: None,
                first_success_after_s: None,
            }
        });
        report::timeline_of(&stats, ev)
    });
    let mut spawned = Vec::new();
    for p in [&children.sim, &children.proxy].into_iter().flatten() {
        spawned.push(p.name.clone());
    }
    let report = RunReport {
        tool: "gtm_bench",
        version: env!("CARGO_PKG_VERSION"),
        schema: report::SCHEMA_VERSION,
        ok: RunReport::verdict(&stop_reason, &stats),
        stop_reason,
        target: Target { label: t.label.clone(), addr: t.addr.to_string(), spawned },
        load: Load {
            model: cfg.model.as_str(),
            backends: cfg.backends,
            threads,
            think_us: cfg.think.as_micros() as u64,
            session_ids: cfg.session_ids,
            warmup_s: cfg.warmup.as_secs_f64(),
            duration_s: cfg.duration.as_secs_f64(),
            ramp_s: cfg.ramp.as_secs_f64(),
        },
        measured_s: (measured.as_secs_f64() * 1000.0).round() / 1000.0,
        connect_s: shared
            .ramp_done_at()
            .map(|r| (r.saturating_duration_since(started).as_secs_f64() * 1000.0).round() / 1000.0),
        txns: stats.txns(),
        txn_per_s: per_s(stats.txns()),
        ops: stats.ops(),
        ops_per_s: per_s(stats.ops()),
        latency_us: LatencySet {
            begin: LatencyStats::of(&stats.begin),
            snapshot: LatencyStats::of(&stats.snapshot),
            commit: LatencyStats::of(&stats.commit),
            txn: LatencyStats::of(&stats.txn),
        },
        errors: report::errors_of(&stats),
        connections: report::connections_of(&stats),
        gxids: report::gxids_of(&stats),
        cpu,
        multi_sizes,
        timeline,
    };
    Ok(RunOutput { report, txn: stats.txn })
}
