//! `gtm_proxy`: drop-in replacement for Postgres-XL 10's GTM proxy.
//!
//! Usage as XL's: `gtm_proxy -D DIR [-h ADDR] [-p PORT] [-s GTM_HOST] [-t GTM_PORT]
//! [-i NAME] [-n WORKERS] [-l LOGFILE]`. Extra: `gtm_proxy reconnect -D DIR
//! -s HOST -t PORT` does what `gtm_ctl reconnect -Z gtm_proxy` does.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use gtmproxy::config::{Config, ProxyArgs};
use gtmproxy::control;

#[derive(Debug, Parser)]
#[command(name = "gtm_proxy reconnect", about = "Order a running gtm_proxy to move to another GTM")]
struct ReconnectArgs {
    /// Data directory of the running proxy
    #[arg(short = 'D', value_name = "DIR")]
    data_dir: std::path::PathBuf,
    /// New GTM host
    #[arg(short = 's', value_name = "HOST")]
    host: Option<String>,
    /// New GTM port
    #[arg(short = 't', value_name = "PORT")]
    port: Option<u16>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("reconnect") {
        return reconnect(&argv);
    }
    let args = match ProxyArgs::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    let dir = args.data_dir.clone().unwrap_or_else(|| ".".into());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("gtm_proxy: cannot create data directory {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    let cfg = match Config::load(&dir, &args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gtm_proxy: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = init_logging(&cfg) {
        eprintln!("gtm_proxy: cannot open log file: {e}");
        return ExitCode::from(1);
    }
    match gtmproxy::proxy::run(cfg, &args.overrides(), &argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("FATAL: {e}");
            eprintln!("gtm_proxy: {e}");
            ExitCode::from(1)
        }
    }
}

/// Log to `log_file` (relative to the data directory), or to stderr when it
/// is `-` or `stderr`. `RUST_LOG` may override `log_min_messages`.
fn init_logging(cfg: &Config) -> std::io::Result<()> {
    // The logger passes everything and `log`'s global maximum does the
    // filtering, so that SIGHUP can change log_min_messages. RUST_LOG, when
    // set, filters per module and wins.
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Trace);
    let rust_log = std::env::var("RUST_LOG").ok();
    if let Some(spec) = &rust_log {
        b.parse_filters(spec);
    }
    b.format(|f, r| {
        writeln!(
            f,
            "{} [{}] {}:  {}",
            f.timestamp_micros(),
            std::thread::current().name().unwrap_or("main"),
            r.level(),
            r.args()
        )
    });
    if cfg.log_file != "-" && cfg.log_file != "stderr" {
        let path = cfg.data_dir.join(&cfg.log_file);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        b.target(env_logger::Target::Pipe(Box::new(file)));
    }
    b.init();
    if rust_log.is_none() {
        log::set_max_level(cfg.log_min_messages.to_level_filter());
    }
    Ok(())
}

fn reconnect(argv: &[String]) -> ExitCode {
    let args = match ReconnectArgs::try_parse_from(argv.iter().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(1);
        }
    };
    let mut opts = Vec::new();
    if let Some(h) = &args.host {
        opts.push(format!("-s {h}"));
    }
    if let Some(p) = args.port {
        opts.push(format!("-t {p}"));
    }
    match control::send_reconnect(&args.data_dir, &opts.join(" ")) {
        Ok(pid) => {
            eprintln!("gtm_proxy: reconnect order sent to PID {pid}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gtm_proxy: {e}");
            ExitCode::from(1)
        }
    }
}
