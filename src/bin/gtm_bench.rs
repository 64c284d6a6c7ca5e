//! `gtm_bench`: drive many simulated Postgres-XL 10 backends against a GTM or
//! GTM proxy and report throughput, latency, errors and GXID uniqueness as JSON.
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
use gtmproxy::bench::{self, report, Config};

#[derive(Debug, Parser)]
#[command(
    name = "gtm_bench",
    version,
    about = "Load generator simulating Postgres-XL 10 backends against a GTM or GTM proxy",
    after_help = "The JSON summary goes to --json (stdout by default), a one-line summary to stderr.\n\
                  Exit status: 0 clean run; 1 it ran but found errors, duplicate GXIDs or no transactions, \
                  or was stopped early; 2 it could not run."
)]
struct Args {
    /// GTM or proxy host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// GTM or proxy port.
    #[arg(long, default_value_t = 6666)]
    port: u16,
    /// Simulated backends (one TCP connection each).
    #[arg(long, default_value_t = 100)]
    backends: usize,
    /// Event-loop threads the backends are spread over.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (answers then are not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Pause between a backend's transactions, in microseconds.
    #[arg(long, default_value_t = 0)]
    think_us: u64,
    /// Node name in every startup packet and session id (default: cn1 and dn1 alternating).
    #[arg(long)]
    node_name: Option<String>,
    /// Begin without a global session id (a lone NUL) instead of a unique NODE_PID_SEQ one.
    #[arg(long)]
    no_session_id: bool,
    /// Where to write the JSON summary ("-" for stdout).
    #[arg(long, default_value = "-")]
    json: String,
    /// End the run once this many errors have been counted (0: never).
    #[arg(long, default_value_t = 1000)]
    max_errors: u64,
    /// Reconnects allowed per backend after errors before it gives up.
    #[arg(long, default_value_t = 5)]
    max_reconnects: u32,
    /// Seconds a connection gets to be accepted and answer the startup packet.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds a request may wait for its answer.
    #[arg(long, default_value_t = 20.0)]
    request_timeout: f64,
    /// Connects in flight at once (the connection ramp proceeds in waves of this size).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Start gtm_sim (next to this executable) on an ephemeral port and target it.
    #[arg(long)]
    spawn_sim: bool,
    /// Start gtm_proxy (next to this executable) in front of the GTM and target the proxy.
    #[arg(long)]
    via_proxy: bool,
    /// gtm_sim binary to use instead of the sibling one.
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// gtm_proxy binary to use instead of the sibling one.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Extra argument for the spawned gtm_sim (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    sim_arg: Vec<String>,
    /// Extra argument for the spawned gtm_proxy (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    proxy_arg: Vec<String>,
}

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} must be a non-negative number of seconds"))
}

impl Args {
    fn config(&self) -> Result<Config, String> {
        Ok(Config {
            host: self.host.clone(),
            port: self.port,
            spawn_sim: self.spawn_sim,
            via_proxy: self.via_proxy,
            sim_bin: self.sim_bin.clone(),
            proxy_bin: self.proxy_bin.clone(),
            sim_args: self.sim_arg.clone(),
            proxy_args: self.proxy_arg.clone(),
            backends: self.backends,
            threads: self.threads,
            duration: secs("duration", self.duration)?,
            warmup: secs("warmup", self.warmup)?,
            think: Duration::from_micros(self.think_us),
            node_name: self.node_name.clone(),
            session_ids: !self.no_session_id,
            max_errors: self.max_errors,
            max_reconnects: self.max_reconnects,
            connect_timeout: secs("connect-timeout", self.connect_timeout)?,
            request_timeout: secs("request-timeout", self.request_timeout)?,
            connect_concurrency: self.connect_concurrency,
            ..Config::default()
        })
    }
}

fn write_json(dest: &str, v: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)? + "\n";
    if dest == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    } else {
        std::fs::write(dest, text)
    }
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
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gtm_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is being handled exits at once
        // (spawned children die with us through PR_SET_PDEATHSIG).
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
        if let Err(e) = signal_hook::flag::register(sig, interrupted.clone()) {
            log::warn!("cannot install a handler for signal {sig}: {e}");
        }
    }
    let (json, code) = match bench::run(&cfg, interrupted) {
        Ok(r) => {
            eprintln!("{}", r.summary_line());
            (r.to_json(), if r.ok() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("gtm_bench: {e}");
            (report::fatal_json(&cfg.target_label(), cfg.via_proxy, cfg.backends, &e.to_string()), 2)
        }
    };
    if let Err(e) = write_json(&args.json, &json) {
        eprintln!("gtm_bench: cannot write the JSON summary to {}: {e}", args.json);
        return ExitCode::from(2);
    }
    ExitCode::from(code)
}
