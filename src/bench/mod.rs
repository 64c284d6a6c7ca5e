//! `gtm_bench`: a load generator that drives many simulated Postgres-XL 10
//! backends against a GTM or a GTM proxy.
//!
//! * [`backend`]: one backend as a pure state machine (startup, then
//!   begin → snapshot → commit, each answer validated strictly);
//! * [`driver`]: the mio event loop(s) holding thousands of connections;
//! * [`stats`]: latency histograms, error counts, the GXID uniqueness check;
//! * [`spawn`]: starting `gtm_sim` / `gtm_proxy` for the one-command demo;
//! * [`report`]: the JSON summary and the one-line human summary.
//!
//! [`run`] ties them together.

pub mod backend;
pub mod driver;
pub mod embedded;
pub mod report;
pub mod spawn;
pub mod stats;
pub mod sys;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use driver::{LoopConfig, Shared, Worker};
use embedded::Role;
use report::{CpuReport, CpuUse, Report};
use spawn::{DataDir, Process, Program, SpawnError};
use stats::Stats;

/// Everything a run needs. `Default` gives the CLI defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Start `gtm_sim` and target it (host/port ignored).
    pub spawn_sim: bool,
    /// Start `gtm_proxy` in front of the GTM (spawned or host/port) and target the proxy.
    pub via_proxy: bool,
    /// Override the binaries (default: siblings of the running executable).
    pub sim_bin: Option<PathBuf>,
    pub proxy_bin: Option<PathBuf>,
    /// Extra arguments for the spawned children.
    pub sim_args: Vec<String>,
    pub proxy_args: Vec<String>,
    pub backends: usize,
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub think: Duration,
    /// Every backend uses this node name; default alternates `cn1` / `dn1`.
    pub node_name: Option<String>,
    pub session_ids: bool,
    /// Stop the run at this many errors (0: never).
    pub max_errors: u64,
    pub max_reconnects: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Connects in flight over all loop threads.
    pub connect_concurrency: usize,
    pub drain: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 6666,
            spawn_sim: false,
            via_proxy: false,
            sim_bin: None,
            proxy_bin: None,
            sim_args: Vec::new(),
            proxy_args: Vec::new(),
            backends: 100,
            threads: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            think: Duration::ZERO,
            node_name: None,
            session_ids: true,
            max_errors: 1000,
            max_reconnects: 5,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            connect_concurrency: 256,
            drain: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// The target as given on the command line (before any spawning).
    pub fn target_label(&self) -> String {
        if self.spawn_sim {
            "spawned gtm_sim".into()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Node name of backend `i`.
    pub fn node_name_of(&self, i: usize) -> String {
        match &self.node_name {
            Some(n) => n.clone(),
            None if i.is_multiple_of(2) => "cn1".into(),
            None => "dn1".into(),
        }
    }
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid option: {0}")]
    Usage(String),
    #[error("cannot resolve {host}:{port}: {detail}")]
    Resolve { host: String, port: u16, detail: String },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("cannot start loop thread: {0}")]
    Thread(std::io::Error),
    #[error("loop thread {thread} failed: {detail}")]
    Loop { thread: usize, detail: String },
    #[error("no connection could be established to {target} ({failed} attempts failed)")]
    NoConnection { target: String, failed: u64 },
}

/// Children of a run; the proxy is declared after the sim so it is dropped
/// (killed) first.
#[derive(Default)]
struct Children {
    sim: Option<Process>,
    proxy: Option<Process>,
}

impl Drop for Children {
    fn drop(&mut self) {
        drop(self.proxy.take());
        drop(self.sim.take());
    }
}

pub(crate) fn resolve(host: &str, port: u16) -> Result<SocketAddr, BenchError> {
    let err = |detail: String| BenchError::Resolve { host: host.to_owned(), port, detail };
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| err(e.to_string()))?;
    addrs.next().ok_or_else(|| err("no address".into()))
}

fn start_children(cfg: &Config, interrupted: &AtomicBool) -> Result<(Children, SocketAddr), BenchError> {
    let mut ch = Children::default();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut gtm = if cfg.spawn_sim {
        let program = Program::locate(cfg.sim_bin.as_deref(), Role::Sim);
        let dir = DataDir::temporary("sim")?;
        let addr = SocketAddr::new(loopback, spawn::free_port(loopback)?);
        let args = spawn::sim_args(addr, dir.path(), &cfg.sim_args);
        let sim = Process::start("gtm_sim", &program, &args, dir, addr, interrupted)?;
        ch.sim = Some(sim);
        addr
    } else {
        resolve(&cfg.host, cfg.port)?
    };
    if cfg.via_proxy {
        let program = Program::locate(cfg.proxy_bin.as_deref(), Role::Proxy);
        let dir = DataDir::temporary("proxy")?;
        let addr = SocketAddr::new(loopback, spawn::free_port(loopback)?);
        let args = spawn::proxy_args(addr, gtm, dir.path(), &cfg.proxy_args);
        let proxy = Process::start("gtm_proxy", &program, &args, dir, addr, interrupted)?;
        gtm = proxy.addr;
        ch.proxy = Some(proxy);
    }
    Ok((ch, gtm))
}

/// One CPU reading of every process we watch.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    bench: Duration,
    sim: Option<Duration>,
    proxy: Option<Duration>,
}

fn sample(ch: &Children) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        bench: sys::self_cpu(),
        sim: ch.sim.as_ref().and_then(|s| sys::proc_cpu(s.pid())),
        proxy: ch.proxy.as_ref().and_then(|s| sys::proc_cpu(s.pid())),
    }
}

fn cpu_report(a: Option<CpuSample>, b: Option<CpuSample>) -> CpuReport {
    let (Some(a), Some(b)) = (a, b) else { return CpuReport::default() };
    let wall = b.at.saturating_duration_since(a.at);
    let diff = |x: Option<Duration>, y: Option<Duration>| match (x, y) {
        (Some(x), Some(y)) => Some(CpuUse { cpu: y.saturating_sub(x), wall }),
        _ => None,
    };
    CpuReport {
        bench: Some(CpuUse { cpu: b.bench.saturating_sub(a.bench), wall }),
        sim: diff(a.sim, b.sim),
        proxy: diff(a.proxy, b.proxy),
    }
}

/// Run the benchmark. `interrupted` is set by the caller's signal handler
/// (ctrl-c ends the run early, reporting what was measured so far).
/// Spawned children are killed before this returns, on every path.
pub fn run(cfg: &Config, interrupted: Arc<AtomicBool>) -> Result<Report, BenchError> {
    if cfg.backends == 0 {
        return Err(BenchError::Usage("--backends must be at least 1".into()));
    }
    if cfg.threads == 0 {
        return Err(BenchError::Usage("--threads must be at least 1".into()));
    }
    match sys::raise_nofile_limit() {
        Ok(n) if (n as usize) < cfg.backends + 64 => {
            log::warn!("open-file limit is {n}: not enough for {} connections", cfg.backends)
        }
        Ok(n) => log::debug!("open-file limit {n}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    let (mut children, addr) = start_children(cfg, &interrupted)?;
    let threads = cfg.threads.min(cfg.backends);
    let lcfg = Arc::new(LoopConfig {
        addr,
        think: cfg.think,
        connect_timeout: cfg.connect_timeout,
        request_timeout: cfg.request_timeout,
        max_reconnects: cfg.max_reconnects,
        connect_concurrency: cfg.connect_concurrency.div_ceil(threads).max(1),
        drain: cfg.drain,
        pid: std::process::id(),
        session_ids: cfg.session_ids,
        threads,
    });
    let shared = Arc::new(Shared::new(threads, cfg.warmup, cfg.duration, cfg.max_errors, interrupted));
    log::info!("{} backends on {threads} loop thread(s) against {addr}", cfg.backends);
    let started = Instant::now();
    let mut handles: Vec<JoinHandle<std::io::Result<Stats>>> = Vec::with_capacity(threads);
    for t in 0..threads {
        let mine: Vec<(usize, String)> = (t..cfg.backends).step_by(threads).map(|i| (i, cfg.node_name_of(i))).collect();
        let (lcfg, shared2) = (lcfg.clone(), shared.clone());
        let h = std::thread::Builder::new()
            .name(format!("gtm_bench-{t}"))
            .spawn(move || Worker::new(t, mine, lcfg, shared2)?.run())
            .map_err(|e| {
                shared.request_stop("thread start failed");
                BenchError::Thread(e)
            });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }

    // Watch the window to take CPU readings at its edges, and notice a
    // spawned child dying mid-run.
    let (mut first, mut last) = (None, None);
    let mut exited = [false; 2];
    while !handles.iter().all(|h| h.is_finished()) {
        let now = Instant::now();
        let mut nap = Duration::from_millis(5);
        if let Some(w) = shared.window() {
            if first.is_none() {
                if now >= w.start {
                    first = Some(sample(&children));
                } else {
                    nap = nap.min(w.start - now);
                }
            } else if last.is_none() {
                let stopped = shared.should_stop();
                if now >= w.end || stopped {
                    last = Some(sample(&children));
                } else {
                    nap = nap.min(w.end - now);
                }
            }
        }
        for (c, seen) in [&mut children.sim, &mut children.proxy].into_iter().zip(&mut exited) {
            if let Some(c) = c.as_mut().filter(|_| !*seen) {
                if let Some(status) = c.exit_status() {
                    *seen = true;
                    log::error!("{} exited during the run ({status}); output:\n{}", c.name, c.log_tail());
                    shared.request_stop(&format!("{} exited ({status})", c.name));
                }
            }
        }
        std::thread::sleep(nap);
    }
    if first.is_some() && last.is_none() {
        last = Some(sample(&children));
    }

    let mut stats = Stats::default();
    let mut failure = None;
    for (t, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(e)) => failure = Some(BenchError::Loop { thread: t, detail: e.to_string() }),
            Err(_) => failure = Some(BenchError::Loop { thread: t, detail: "panicked".into() }),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let ended = Instant::now();
    let measured = match shared.window() {
        Some(w) => {
            let end = shared.stopped_at().map_or(w.end, |s| s.min(w.end)).min(ended);
            end.saturating_duration_since(w.start)
        }
        None => Duration::ZERO,
    };
    if stats.conns.established == 0 {
        return Err(BenchError::NoConnection { target: addr.to_string(), failed: stats.conns.failed });
    }
    Ok(Report {
        target: addr.to_string(),
        via_proxy: cfg.via_proxy,
        spawned_sim: children.sim.is_some(),
        spawned_proxy: children.proxy.is_some(),
        backends: cfg.backends,
        threads,
        think: cfg.think,
        session_ids: cfg.session_ids,
        warmup: cfg.warmup,
        duration: cfg.duration,
        measured,
        connect: shared.ramp_done_at().map(|t| t.saturating_duration_since(started)),
        stop_reason: shared.stop_reason(),
        stats,
        cpu: cpu_report(first, last),
    })
}
