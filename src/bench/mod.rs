//! `gtm_bench`: a load generator that drives many simulated Postgres-XL 10
//! backends against a GTM or a GTM proxy.
//!
//! * [`backend`]: one backend as a pure state machine (startup, then
//!   begin → snapshot → commit, each answer validated strictly);
//! * [`model`]: the two load models, [`driver`] (mio event loops holding
//!   thousands of connections) and [`blocking`] (one thread and one blocking
//!   socket per backend, as real backends are), both counting through [`account`];
//! * [`stats`], [`timeline`]: latency histograms, error counts, the GXID
//!   uniqueness check, and the per-100 ms view of a run;
//! * [`spawn`], [`embedded`]: starting a simulator or any proxy binary;
//! * [`run`]: one timed run against one target (progress, CPU, scenario event);
//! * [`scenario`]: the command run at a given second;
//! * [`report`], [`human`], [`plot`]: typed results, the text people read, SVG plots.
//!
//! [`run_all`] ties them together: start what was asked for, then one run,
//! or interleaved repeats against several targets (compare mode).

pub mod account;
pub mod backend;
pub mod blocking;
pub mod cpu;
pub mod driver;
pub mod embedded;
pub mod human;
pub mod model;
pub mod multis;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod shared;
pub mod spawn;
pub mod stats;
pub mod timeline;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use embedded::Role;
use model::Model;
use report::{CompareReport, CompareTarget, Output};
use scenario::Event;
use spawn::{DataDir, Process, Program, SpawnError};

/// Everything a run needs. `Default` gives the CLI defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Explicit targets: (label, HOST:PORT).
    pub targets: Vec<(String, String)>,
    /// Start a simulator (the GTM for proxies we start, and the "direct" target).
    pub spawn_sim: bool,
    /// An existing GTM, for proxies we start and for `direct`.
    pub gtm: Option<String>,
    /// Start a proxy in front of the GTM and target it.
    pub via_proxy: bool,
    /// Also measure straight to the GTM (the baseline of a comparison).
    pub direct: bool,
    pub sim_bin: Option<PathBuf>,
    pub proxy_bin: Option<PathBuf>,
    /// The proxy's data directory (default: a fresh temporary one).
    pub proxy_dir: Option<PathBuf>,
    pub sim_args: Vec<String>,
    pub proxy_args: Vec<String>,
    /// The metrics endpoint of the proxy under load, for MULTI sizes (a spawned
    /// proxy of ours gets one by itself).
    pub proxy_metrics: Option<String>,
    /// Other processes whose CPU to report: (name, pid).
    pub watch: Vec<(String, u32)>,
    /// Runs per target in compare mode.
    pub repeat: usize,
    pub progress: Option<Duration>,
    pub event: Option<Event>,
    pub plot: Option<PathBuf>,
    pub backends: usize,
    /// How backends are carried: event loops (default) or a thread each.
    pub model: Model,
    /// Event-loop threads (loop model only).
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub think: Duration,
    pub ramp: Duration,
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
            targets: Vec::new(),
            spawn_sim: false,
            gtm: None,
            via_proxy: false,
            direct: false,
            sim_bin: None,
            proxy_bin: None,
            proxy_dir: None,
            sim_args: Vec::new(),
            proxy_args: Vec::new(),
            proxy_metrics: None,
            watch: Vec::new(),
            repeat: 3,
            progress: None,
            event: None,
            plot: None,
            backends: 100,
            model: Model::Loop,
            threads: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            think: Duration::ZERO,
            ramp: Duration::ZERO,
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
    /// Node name of backend `i`.
    pub fn node_name_of(&self, i: usize) -> String {
        match &self.node_name {
            Some(n) => n.clone(),
            None if i.is_multiple_of(2) => "cn1".into(),
            None => "dn1".into(),
        }
    }
}

/// `30s`, `2m`, `500ms`, `1.5s`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("not a duration: {s:?} (try 30s, 2m, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "us" | "µs" => v / 1_000_000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("not a duration: {s:?}"))
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid option: {0}")]
    Usage(String),
    #[error("cannot resolve {addr}: {detail}")]
    Resolve { addr: String, detail: String },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("cannot start loop thread: {0}")]
    Thread(std::io::Error),
    #[error("loop thread {thread} failed: {detail}")]
    Loop { thread: usize, detail: String },
    #[error("no connection could be established to {target} ({failed} attempts failed)")]
    NoConnection { target: String, failed: u64 },
    #[error("cannot run the scenario command: {0}")]
    Scenario(std::io::Error),
    #[error("{0}")]
    Plot(String),
}

/// `HOST:PORT` → address.
pub fn resolve_addr(addr: &str) -> Result<SocketAddr, BenchError> {
    let err = |detail: String| BenchError::Resolve { addr: addr.to_owned(), detail };
    addr.to_socket_addrs().map_err(|e| err(e.to_string()))?.next().ok_or_else(|| err("no address".into()))
}

/// One thing under load, with the processes whose CPU matters for it.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub label: String,
    pub addr: SocketAddr,
    /// The target's metrics endpoint, when it is a proxy of ours.
    pub metrics: Option<SocketAddr>,
}

/// What the bench started; dropped (killed) proxy first, then the simulator.
#[derive(Default)]
pub struct Children {
    pub proxy: Option<Process>,
    pub sim: Option<Process>,
    /// The spawned proxy's metrics endpoint (ours only).
    pub proxy_metrics: Option<SocketAddr>,
}

impl Drop for Children {
    fn drop(&mut self) {
        drop(self.proxy.take());
        drop(self.sim.take());
    }
}

fn start_children(cfg: &Config, interrupted: &AtomicBool) -> Result<(Children, Option<SocketAddr>), BenchError> {
    let mut ch = Children::default();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let gtm = if cfg.spawn_sim {
        let program = Program::locate(cfg.sim_bin.as_deref(), Role::Sim);
        let dir = DataDir::temporary("sim")?;
        let addr = SocketAddr::new(loopback, spawn::free_port(loopback)?);
        let args = spawn::sim_args(addr, dir.path(), &cfg.sim_args);
        ch.sim = Some(Process::start("gtm_sim", &program, &args, dir, addr, interrupted)?);
        Some(addr)
    } else {
        cfg.gtm.as_deref().map(resolve_addr).transpose()?
    };
    if cfg.via_proxy {
        let Some(gtm) = gtm else {
            return Err(BenchError::Usage("--via-proxy needs a GTM: --spawn-sim or --gtm HOST:PORT".into()));
        };
        let program = Program::locate(cfg.proxy_bin.as_deref(), Role::Proxy);
        let dir = match &cfg.proxy_dir {
            Some(d) => DataDir::existing(d)?,
            None => DataDir::temporary("proxy")?,
        };
        // XL's proxy wants its configuration file to exist; the flags say the rest.
        // Ours also gets a metrics port, for the MULTI sizes of the window.
        let conf = dir.path().join("gtm_proxy.conf");
        if !conf.exists() {
            let mut text = String::from("# written by gtm_bench; the command-line flags set everything else\n");
            if cfg.proxy_bin.is_none() && cfg.proxy_metrics.is_none() {
                let port = spawn::free_port(loopback)?;
                text.push_str(&format!("metrics_port = {port}\n"));
                ch.proxy_metrics = Some(SocketAddr::new(loopback, port));
            }
            if let Err(e) = std::fs::write(&conf, text) {
                log::warn!("cannot write {}: {e}", conf.display());
                ch.proxy_metrics = None;
            }
        }
        let addr = SocketAddr::new(loopback, spawn::free_port(loopback)?);
        let args = spawn::proxy_args(addr, gtm, dir.path(), &cfg.proxy_args);
        ch.proxy = Some(Process::start("gtm_proxy", &program, &args, dir, addr, interrupted)?);
    }
    if let Some(m) = &cfg.proxy_metrics {
        ch.proxy_metrics = Some(resolve_addr(m)?);
    }
    Ok((ch, gtm))
}

/// The targets, baseline first: the GTM itself (with `--direct`, or when
/// nothing else is named), the proxy we started, then `--target`s in order.
fn targets(cfg: &Config, ch: &Children, gtm: Option<SocketAddr>) -> Result<Vec<TargetInfo>, BenchError> {
    let mut t = Vec::new();
    let named = cfg.via_proxy || !cfg.targets.is_empty();
    if cfg.direct || !named {
        let addr = match gtm {
            Some(a) => a,
            None if cfg.direct => {
                return Err(BenchError::Usage("--direct needs a GTM: --spawn-sim or --gtm HOST:PORT".into()))
            }
            None => resolve_addr("127.0.0.1:6666")?,
        };
        t.push(TargetInfo { label: "direct".into(), addr, metrics: None });
    }
    if let Some(p) = &ch.proxy {
        t.push(TargetInfo { label: "gtm_proxy".into(), addr: p.addr, metrics: ch.proxy_metrics });
    }
    for (label, addr) in &cfg.targets {
        // --proxy-metrics without a spawned proxy: the proxy is the named target.
        let metrics = if ch.proxy.is_none() { ch.proxy_metrics } else { None };
        t.push(TargetInfo { label: label.clone(), addr: resolve_addr(addr)?, metrics });
    }
    Ok(t)
}

/// Start what was asked for, run, and say what happened. Children are
/// stopped before this returns, on every path.
pub fn run_all(cfg: &Config, interrupted: Arc<AtomicBool>) -> Result<Output, BenchError> {
    if cfg.backends == 0 || cfg.threads == 0 || cfg.repeat == 0 {
        return Err(BenchError::Usage("--backends, --threads and --repeat must be at least 1".into()));
    }
    if cfg.model == Model::Threads && cfg.threads > 1 {
        log::warn!("--threads {} ignored: the threads model runs one thread per backend", cfg.threads);
    }
    match crate::netio::raise_fd_limit() {
        Ok(n) if (n as usize) < cfg.backends + 64 => {
            log::warn!("open-file limit is {n}: not enough for {} connections", cfg.backends)
        }
        Ok(n) => log::debug!("open-file limit {n}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    let (mut children, gtm) = start_children(cfg, &interrupted)?;
    let targets = targets(cfg, &children, gtm)?;
    if targets.len() == 1 {
        let out = run::run_one(cfg, &targets[0], &mut children, &interrupted)?;
        if let Some(path) = &cfg.plot {
            plot::write_svg(path, &out.report, &out.txn).map_err(BenchError::Plot)?;
        }
        return Ok(Output::Run(Box::new(out.report)));
    }
    if cfg.event.is_some() || cfg.plot.is_some() {
        return Err(BenchError::Usage("--at and --plot take one target, not a comparison".into()));
    }
    let mut runs: Vec<Vec<report::RunReport>> = vec![Vec::new(); targets.len()];
    'repeats: for r in 0..cfg.repeat {
        for (i, t) in targets.iter().enumerate() {
            if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                break 'repeats;
            }
            log::info!("compare: repeat {}/{} against {} {}", r + 1, cfg.repeat, t.label, t.addr);
            runs[i].push(run::run_one(cfg, t, &mut children, &interrupted)?.report);
        }
    }
    let mut out = Vec::new();
    for (t, runs) in targets.iter().zip(runs) {
        // The target's own process: the proxy we started, or a watched process of the same label.
        let own = if t.label == "gtm_proxy" && children.proxy.is_some() {
            Some("gtm_proxy")
        } else if t.label == "direct" && children.sim.is_some() {
            Some("gtm_sim")
        } else {
            cfg.watch.iter().find(|(n, _)| *n == t.label).map(|(n, _)| n.as_str())
        };
        let median = report::medians(&runs, own);
        out.push(CompareTarget { label: t.label.clone(), addr: t.addr.to_string(), median, ratio: None, runs });
    }
    let base = out.first().map(|t| t.median.txn_per_s).unwrap_or(0.0);
    for t in &mut out {
        t.ratio = (base > 0.0).then(|| (t.median.txn_per_s / base * 100.0).round() / 100.0);
    }
    let ok = out.iter().all(|t| !t.runs.is_empty() && t.runs.iter().all(|r| r.ok));
    Ok(Output::Compare(CompareReport {
        tool: "gtm_bench",
        version: env!("CARGO_PKG_VERSION"),
        schema: report::SCHEMA_VERSION,
        ok,
        repeats: cfg.repeat,
        model: cfg.model.as_str(),
        targets: out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn target_order_puts_the_baseline_first() {
        let cfg = Config { direct: true, targets: vec![("xl".into(), "127.0.0.1:7000".into())], ..Config::default() };
        let gtm: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let t = targets(&cfg, &Children::default(), Some(gtm)).unwrap();
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["direct", "xl"]);
        let none = Config { targets: vec![("a".into(), "127.0.0.1:1".into())], ..Config::default() };
        assert_eq!(targets(&none, &Children::default(), None).unwrap().len(), 1);
        let bad = Config { direct: true, targets: none.targets.clone(), ..Config::default() };
        assert!(targets(&bad, &Children::default(), None).is_err());
    }
}
