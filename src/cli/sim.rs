//! `gtm_sim`'s entry point: a simulated Postgres-XL 10 GTM. Takes the real `gtm`'s flags, so
//! scripts written for the real GTM can start it unchanged.
//!
//! Exit status: 0 after SIGTERM / SIGINT / SIGQUIT / SIGHUP, 1 on start-up or I/O
//! errors (including a corrupt state file), 3 when a request would have crashed
//! the real GTM.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::control::PidFile;
use crate::sim::server::{Server, ServerError};
use crate::sim::{persist, Gtm, GtmConfig, DEFAULT_FIRST_GXID, EXIT_WOULD_CRASH};
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};

#[derive(Debug, Parser)]
#[command(
    name = "gtm_sim",
    about = "Simulated Postgres-XL 10 GTM (answers like the real gtm, byte for byte)",
    disable_help_flag = true
)]
struct Args {
    /// Listen address (as the real gtm's -h; "*" = all interfaces).
    #[arg(short = 'h', value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// Listen port; 0 picks a free one (see --port-file).
    #[arg(short = 'p', value_name = "PORT", default_value_t = 6666)]
    port: u16,
    /// Data directory (created if missing): gtm.pid, gtm_sim.port, gtm_sim.state.
    #[arg(short = 'D', value_name = "DIR")]
    data_dir: PathBuf,
    /// Node name (used in log lines only).
    #[arg(short = 'n', value_name = "NAME", default_value = "gtm_sim")]
    node_name: String,
    /// First GXID of a fresh GTM.
    #[arg(short = 'x', value_name = "GXID", default_value_t = DEFAULT_FIRST_GXID)]
    first_gxid: u32,
    /// Accepted for compatibility (forces -x on the real gtm); no effect here.
    #[arg(short = 'f')]
    force_xid: bool,
    /// Log file (relative paths are inside the data directory, as for the real
    /// gtm); default: standard error.
    #[arg(short = 'l', value_name = "LOGFILE")]
    log_file: Option<PathBuf>,
    /// Keep durable state in DIR/gtm_sim.state and continue from it at start.
    #[arg(long)]
    persist: bool,
    /// Also write the bound host:port here (atomically) once listening.
    #[arg(long, value_name = "PATH")]
    port_file: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or an env_logger spec).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Name of the port file always written in the data directory.
const PORT_FILE: &str = "gtm_sim.port";

/// Run `gtm_sim` with `argv` (program name first) until a stop signal.
pub fn main(argv: Vec<String>) -> ExitCode {
    let args = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    if let Err(e) = fs::DirBuilder::new().recursive(true).mode(0o700).create(&args.data_dir) {
        eprintln!("gtm_sim: could not create data directory \"{}\": {e}", args.data_dir.display());
        return ExitCode::from(1);
    }
    if let Err(e) = init_logging(&args) {
        eprintln!("gtm_sim: {e}");
        return ExitCode::from(1);
    }
    // Thousands of links need more descriptors than the usual soft limit.
    if let Err(e) = crate::netio::raise_fd_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServerError::WouldCrash(_)) => {
            // Like a crashed GTM: the pid file stays behind.
            std::process::exit(EXIT_WOULD_CRASH);
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(args: &Args) -> Result<(), String> {
    let spec = args.log_level.clone().or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".into());
    let mut b = env_logger::Builder::new();
    b.parse_filters(&spec);
    if let Some(f) = &args.log_file {
        let path = if f.is_absolute() { f.clone() } else { args.data_dir.join(f) };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("could not open log file \"{}\": {e}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(file)));
    }
    b.try_init().map_err(|e| e.to_string())
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, ServerError> {
    let host = if host == "*" { "0.0.0.0" } else { host };
    (host, port)
        .to_socket_addrs()
        .map_err(|source| ServerError::Io { action: "resolve the listen address", source })?
        .next()
        .ok_or_else(|| ServerError::Io {
            action: "resolve the listen address",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("no address for {host}")),
        })
}

/// Write `text` to `path` atomically (temp file + rename).
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

fn run(args: &Args) -> Result<(), ServerError> {
    // A stale port file must never pass for the ready signal of this run.
    let _ = fs::remove_file(args.data_dir.join(PORT_FILE));
    let gtm = if args.persist {
        match persist::load(&args.data_dir, Box::new(crate::sim::gtm_now))? {
            Some(g) => {
                log::info!(
                    "continuing from {}: next GXID {}, {} open transaction(s), starting client id {}",
                    args.data_dir.join(persist::STATE_FILE).display(),
                    g.next_gxid(),
                    g.open_txn_count(),
                    g.starting_client_id()
                );
                g
            }
            None => Gtm::with_system_clock(GtmConfig { first_gxid: args.first_gxid }),
        }
    } else {
        Gtm::with_system_clock(GtmConfig { first_gxid: args.first_gxid })
    };
    let addr = resolve(&args.host, args.port)?;
    let persist_dir = args.persist.then(|| args.data_dir.clone());
    let mut server = Server::bind(addr, gtm, persist_dir.clone())?;
    if let Some(dir) = &persist_dir {
        // The file exists from the start, so a kill -9 at any point leaves state.
        persist::save(server.gtm(), dir)?;
    }
    let pid_file = PidFile::create_named(&args.data_dir, "gtm.pid", "1\n")
        .map_err(|e| ServerError::Io { action: "create gtm.pid", source: std::io::Error::other(e.to_string()) })?;
    let bound = server.local_addr()?;
    let port_text = format!("{bound}\n");
    let mut port_files = vec![args.data_dir.join(PORT_FILE)];
    port_files.extend(args.port_file.clone());
    for p in &port_files {
        write_atomic(p, &port_text).map_err(|source| ServerError::Io { action: "write the port file", source })?;
    }
    log::info!(
        "gtm_sim \"{}\" listening on {bound}, data directory \"{}\"{}",
        args.node_name,
        args.data_dir.display(),
        if args.persist { ", persistent" } else { "" }
    );

    let handle = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1])
        .map_err(|source| ServerError::Io { action: "install signal handlers", source })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    log::info!("SIGUSR1 (promote) ignored: gtm_sim always runs as the active GTM");
                    continue;
                }
                log::info!("received signal {sig}, shutting down");
                handle.shutdown();
                break;
            }
        })
        .map_err(|source| ServerError::Io { action: "start the signal thread", source })?;

    let result = server.run();
    if result.is_ok() {
        for p in &port_files {
            let _ = fs::remove_file(p);
        }
        drop(pid_file);
    } else {
        std::mem::forget(pid_file);
    }
    result
}
