//! `gtm_bench`: drive many simulated Postgres-XL 10 backends against a GTM
//! or GTM proxy and report throughput, latency, errors, CPU and GXID
//! uniqueness — as text for people, or as JSON with `--json`.
//!
//! Exit status: 0 the run was clean (transactions, no errors, no duplicate
//! GXIDs); 1 it ran but found problems; 2 it could not run (bad option,
//! unreachable target, a spawned child that would not start).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gtmproxy::bench::embedded::{self, Role};
use gtmproxy::bench::model::Model;
use gtmproxy::bench::report::Output;
use gtmproxy::bench::scenario::Event;
use gtmproxy::bench::{self, human, parse_duration, Config};

#[derive(Debug, Parser)]
#[command(
    name = "gtm_bench",
    version,
    about = "Load generator simulating Postgres-XL 10 backends against a GTM or GTM proxy",
    after_help = "Durations take a unit: 500ms, 30s, 2m (a bare number is seconds).\n\
                  Several targets (e.g. --direct --via-proxy, or --target twice) make a comparison: \
                  --repeat runs each, interleaved, and a table of medians with ratios to the first.\n\
                  Exit status: 0 clean run; 1 it ran but found errors, duplicate GXIDs or no transactions, \
                  or was stopped early; 2 it could not run."
)]
struct Args {
    /// A GTM or proxy to load, as [LABEL=]HOST:PORT (repeatable).
    #[arg(long, value_name = "[LABEL=]HOST:PORT")]
    target: Vec<String>,
    /// The GTM that proxies started with --via-proxy talk to (and --direct measures).
    #[arg(long, value_name = "HOST:PORT")]
    gtm: Option<String>,
    /// Start the GTM simulator on a free port and use it as the GTM.
    #[arg(long)]
    spawn_sim: bool,
    /// Start a proxy (ours, or --proxy-bin) in front of the GTM and target it.
    #[arg(long)]
    via_proxy: bool,
    /// Also target the GTM itself (the baseline of a comparison).
    #[arg(long)]
    direct: bool,
    /// Proxy binary for --via-proxy, e.g. XL's gtm_proxy (started with -D -h -p -s -t -i only).
    #[arg(long, value_name = "PATH")]
    proxy_bin: Option<PathBuf>,
    /// Data directory for the proxy (default: a fresh temporary one, removed afterwards).
    #[arg(long, value_name = "DIR")]
    proxy_dir: Option<PathBuf>,
    /// Simulator binary for --spawn-sim (default: gtm_sim beside gtm_bench, else built in).
    #[arg(long, value_name = "PATH")]
    sim_bin: Option<PathBuf>,
    /// Extra argument for the spawned simulator (repeatable).
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    sim_arg: Vec<String>,
    /// Extra argument for the spawned proxy (repeatable).
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    proxy_arg: Vec<String>,
    /// Metrics endpoint (HOST:PORT) of the proxy under load, for the MULTI sizes of the
    /// window (a proxy of ours started by --via-proxy gets one by itself)
    #[arg(long, value_name = "HOST:PORT")]
    proxy_metrics: Option<String>,
    /// Report the CPU of another process too, as NAME=PID (repeatable).
    #[arg(long, value_name = "NAME=PID")]
    watch_pid: Vec<String>,
    /// Simulated backends (one TCP connection each).
    #[arg(short = 'c', long, default_value_t = 100)]
    backends: usize,
    /// How backends are carried: `loop` (event loops, many connections each: the most load
    /// one process can offer) or `threads` (one OS thread and one blocking socket per
    /// backend, one request at a time: the shape of real XL backends).
    #[arg(long, default_value = "loop", value_parser = Model::parse, value_name = "loop|threads")]
    model: Model,
    /// Event-loop threads the backends are spread over (loop model).
    #[arg(short = 'j', long, default_value_t = 1)]
    threads: usize,
    /// Measured time (after the warm-up).
    #[arg(short = 'T', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring starts (answers then are not counted).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Pause between a backend's transactions.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    think: Duration,
    /// Spread the backends' first connects evenly over this long.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    ramp: Duration,
    /// Print a progress line to stderr every so often (e.g. 5s).
    #[arg(short = 'P', long, value_parser = parse_duration, value_name = "DURATION")]
    progress: Option<Duration>,
    /// Runs per target when comparing several.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Scenario: run a shell command at this point of the window, as TIME=COMMAND.
    #[arg(long, value_name = "TIME=COMMAND", value_parser = Event::parse)]
    at: Option<Event>,
    /// Write an SVG plot (throughput and p99 over time, latency CDF) here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print the results as JSON (schema in docs/gtm_bench.md) instead of text;
    /// with FILE, write the JSON there and still print the text.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<String>,
    /// Same as --target HOST:PORT (kept for scripts written for earlier versions).
    #[arg(long, hide = true)]
    host: Option<String>,
    /// See --host.
    #[arg(long, hide = true)]
    port: Option<u16>,
    /// Same as --think in microseconds (kept for earlier scripts).
    #[arg(long, hide = true)]
    think_us: Option<u64>,
    /// Node name in every startup packet and session id (default: cn1 and dn1 alternating).
    #[arg(long)]
    node_name: Option<String>,
    /// Begin without a global session id (a lone NUL) instead of a unique NODE_PID_SEQ one.
    #[arg(long)]
    no_session_id: bool,
    /// End the run once this many errors have been counted (0: never).
    #[arg(long, default_value_t = 1000)]
    max_errors: u64,
    /// Reconnects allowed per backend after errors before it gives up.
    #[arg(long, default_value_t = 5)]
    max_reconnects: u32,
    /// Time a connection gets to be accepted and answer the startup packet.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Time a request may wait for its answer.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

fn split_label(s: &str) -> (Option<&str>, &str) {
    match s.split_once('=') {
        Some((l, rest)) => (Some(l), rest),
        None => (None, s),
    }
}

impl Args {
    fn config(&self) -> Result<Config, String> {
        let mut targets: Vec<(String, String)> = self
            .target
            .iter()
            .map(|t| {
                let (label, addr) = split_label(t);
                (label.unwrap_or(addr).to_owned(), addr.to_owned())
            })
            .collect();
        if self.host.is_some() || self.port.is_some() {
            let addr = format!("{}:{}", self.host.as_deref().unwrap_or("127.0.0.1"), self.port.unwrap_or(6666));
            targets.push((addr.clone(), addr));
        }
        let mut watch = Vec::new();
        for w in &self.watch_pid {
            let (Some(name), pid) = split_label(w) else {
                return Err(format!("--watch-pid wants NAME=PID, got {w:?}"));
            };
            let pid: u32 = pid.parse().map_err(|_| format!("--watch-pid: {pid:?} is not a process id"))?;
            watch.push((name.to_owned(), pid));
        }
        Ok(Config {
            targets,
            spawn_sim: self.spawn_sim,
            gtm: self.gtm.clone(),
            via_proxy: self.via_proxy || self.proxy_bin.is_some(),
            direct: self.direct,
            sim_bin: self.sim_bin.clone(),
            proxy_bin: self.proxy_bin.clone(),
            proxy_dir: self.proxy_dir.clone(),
            sim_args: self.sim_arg.clone(),
            proxy_args: self.proxy_arg.clone(),
            proxy_metrics: self.proxy_metrics.clone(),
            watch,
            repeat: self.repeat,
            progress: self.progress,
            event: self.at.clone(),
            plot: self.plot.clone(),
            backends: self.backends,
            model: self.model,
            threads: self.threads,
            duration: self.duration,
            warmup: self.warmup,
            think: self.think_us.map_or(self.think, Duration::from_micros),
            ramp: self.ramp,
            node_name: self.node_name.clone(),
            session_ids: !self.no_session_id,
            max_errors: self.max_errors,
            max_reconnects: self.max_reconnects,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            connect_concurrency: self.connect_concurrency,
            ..Config::default()
        })
    }
}

fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(role) = Role::from_args(&argv) {
        // Re-run by ourselves as gtm_sim / gtm_proxy (see bench::embedded).
        let mut rest = argv;
        rest.remove(1);
        return embedded::main(role, rest);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let output = match args.config() {
        Ok(cfg) => {
            let interrupted = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                // A second signal while the first is being handled exits at once
                // (spawned children die with us through PR_SET_PDEATHSIG).
                let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
                if let Err(e) = signal_hook::flag::register(sig, interrupted.clone()) {
                    log::warn!("cannot install a handler for signal {sig}: {e}");
                }
            }
            bench::run_all(&cfg, interrupted).unwrap_or_else(|e| Output::fatal(e.to_string()))
        }
        Err(e) => Output::fatal(format!("invalid option: {e}")),
    };
    let (text, code) = match &output {
        Output::Run(r) => (human::run_summary(r), if r.ok { 0 } else { 1 }),
        Output::Compare(c) => (human::compare_table(c), if c.ok { 0 } else { 1 }),
        Output::Fatal { fatal, .. } => (format!("gtm_bench: {fatal}\n"), 2),
    };
    let json = || serde_json::to_string_pretty(&output).map(|j| j + "\n").map_err(std::io::Error::other);
    let text_out = || {
        if code == 2 {
            eprint!("{text}");
            Ok(())
        } else {
            print(&text)
        }
    };
    let written = match args.json.as_deref() {
        Some("-") => {
            if code == 2 {
                eprint!("{text}");
            }
            json().and_then(|j| print(&j))
        }
        Some(path) => json().and_then(|j| std::fs::write(path, j)).and_then(|()| text_out()),
        None => text_out(),
    };
    if let Err(e) = written {
        eprintln!("gtm_bench: cannot write the results: {e}");
        return ExitCode::from(2);
    }
    ExitCode::from(code)
}
