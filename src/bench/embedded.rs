//! The simulator and the proxy run from this crate's library when their own
//! binaries are not next to `gtm_bench`.
//!
//! `cargo run --release --bin gtm_bench` builds only `gtm_bench`, so on a
//! fresh clone `target/release/gtm_sim` and `target/release/gtm_proxy` do not
//! exist. The library holds both daemons, so `gtm_bench` re-executes itself
//! with a role flag as first argument ([`Role::flag`]) and then behaves as
//! that daemon, taking the same `-D -h -p ...` flags. They still run as
//! separate processes: their CPU is measured apart from the bench's, and a
//! scenario can kill and restart them.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{CommandLine, Config};
use crate::sim::server::{Server, ServerError};
use crate::sim::{persist, Gtm, GtmConfig, DEFAULT_FIRST_GXID};

/// A daemon `gtm_bench` can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sim,
    Proxy,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Sim, Role::Proxy];

    /// First argument that turns `gtm_bench` into this daemon.
    pub fn flag(self) -> &'static str {
        match self {
            Role::Sim => "--embedded-gtm-sim",
            Role::Proxy => "--embedded-gtm-proxy",
        }
    }

    /// The binary this role stands in for.
    pub fn binary(self) -> &'static str {
        match self {
            Role::Sim => "gtm_sim",
            Role::Proxy => "gtm_proxy",
        }
    }

    /// The role asked for by `argv[1]`, if any.
    pub fn from_args(args: &[OsString]) -> Option<Role> {
        let first = args.get(1)?.to_str()?;
        Role::ALL.into_iter().find(|r| r.flag() == first)
    }
}

/// Run as `role` with `args` (argv without the role flag) until a stop signal.
pub fn main(role: Role, args: Vec<OsString>) -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).try_init();
    let result = match role {
        Role::Sim => run_sim(args),
        Role::Proxy => run_proxy(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", role.binary());
            ExitCode::from(1)
        }
    }
}

/// The `gtm_sim` flags the bench and its scenarios use.
#[derive(Debug, Parser)]
#[command(name = "gtm_sim", disable_help_flag = true)]
struct SimArgs {
    #[arg(short = 'h', default_value = "127.0.0.1")]
    host: String,
    #[arg(short = 'p', default_value_t = 6666)]
    port: u16,
    #[arg(short = 'D')]
    data_dir: PathBuf,
    #[arg(short = 'x', default_value_t = DEFAULT_FIRST_GXID)]
    first_gxid: u32,
    #[arg(long)]
    persist: bool,
}

fn run_sim(args: Vec<OsString>) -> Result<(), String> {
    let a = SimArgs::try_parse_from(args).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&a.data_dir).map_err(|e| format!("cannot create {}: {e}", a.data_dir.display()))?;
    let host = if a.host == "*" { "0.0.0.0" } else { a.host.as_str() };
    let addr = super::resolve(host, a.port).map_err(|e| e.to_string())?;
    let loaded = if a.persist {
        persist::load(&a.data_dir, Box::new(crate::sim::gtm_now)).map_err(|e| e.to_string())?
    } else {
        None
    };
    let gtm = loaded.unwrap_or_else(|| Gtm::with_system_clock(GtmConfig { first_gxid: a.first_gxid }));
    let persist_dir = a.persist.then(|| a.data_dir.clone());
    let mut server = Server::bind(addr, gtm, persist_dir.clone()).map_err(|e| e.to_string())?;
    if let Some(dir) = &persist_dir {
        persist::save(server.gtm(), dir).map_err(|e| e.to_string())?;
    }
    let handle = server.shutdown_handle();
    on_stop_signal(move || handle.shutdown())?;
    // As gtm_sim does: the bound address in DIR/gtm_sim.port, written whole
    // (scripts wait for it before pointing a proxy here).
    let bound = server.local_addr().map_err(|e| e.to_string())?;
    let port_file = a.data_dir.join("gtm_sim.port");
    let tmp = a.data_dir.join("gtm_sim.port.tmp");
    std::fs::write(&tmp, format!("{bound}\n"))
        .and_then(|()| std::fs::rename(&tmp, &port_file))
        .map_err(|e| format!("cannot write {}: {e}", port_file.display()))?;
    log::info!("embedded gtm_sim listening on {bound}");
    match server.run() {
        Ok(()) => Ok(()),
        Err(ServerError::WouldCrash(e)) => {
            log::error!("{e}");
            std::process::exit(crate::sim::EXIT_WOULD_CRASH)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `gtm_proxy reconnect -D DIR -s HOST -t PORT`: what `gtm_ctl reconnect -Z gtm_proxy` does.
#[derive(Debug, Parser)]
#[command(name = "gtm_proxy reconnect")]
struct ReconnectArgs {
    #[arg(short = 'D')]
    data_dir: PathBuf,
    #[arg(short = 's')]
    host: Option<String>,
    #[arg(short = 't')]
    port: Option<u16>,
}

fn run_proxy(mut args: Vec<OsString>) -> Result<(), String> {
    if let Some(a0) = args.first_mut() {
        *a0 = "gtm_proxy".into();
    }
    if args.get(1).is_some_and(|a| a == "reconnect") {
        let r = ReconnectArgs::try_parse_from(&args[1..]).map_err(|e| e.to_string())?;
        let mut opts = Vec::new();
        opts.extend(r.host.map(|h| format!("-s {h}")));
        opts.extend(r.port.map(|p| format!("-t {p}")));
        let pid = crate::control::send_reconnect(&r.data_dir, &opts.join(" ")).map_err(|e| e.to_string())?;
        eprintln!("gtm_proxy: reconnect order sent to PID {pid}");
        return Ok(());
    }
    let argv: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let pa = CommandLine::parse_from_args(&argv).map_err(|e| e.to_string())?.args;
    let dir = pa.data_dir.clone().unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cfg = Config::load(&dir, &pa).map_err(|e| e.to_string())?;
    // The proxy handles its own signals; its log goes to our stderr.
    crate::proxy::run(cfg, &pa, &argv).map_err(|e| e.to_string())
}

/// Call `stop` from a small thread on the first SIGTERM, SIGINT or SIGQUIT.
fn on_stop_signal(stop: impl FnOnce() + Send + 'static) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT]).map_err(|e| format!("signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                stop();
            }
        })
        .map(|_| ())
        .map_err(|e| format!("signal thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_flags_round_trip() {
        for r in Role::ALL {
            let argv: Vec<OsString> = vec!["gtm_bench".into(), r.flag().into(), "-D".into()];
            assert_eq!(Role::from_args(&argv), Some(r));
        }
        assert_eq!(Role::from_args(&["gtm_bench".into(), "--backends".into()]), None);
        assert_eq!(Role::from_args(&["gtm_bench".into()]), None);
    }
}
