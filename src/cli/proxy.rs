//! `gtm_proxy`'s entry point: drop-in replacement for Postgres-XL 10's GTM proxy.
//!
//! Usage as XL's: `gtm_proxy -D DIR [-h ADDR] [-p PORT] [-s GTM_HOST] [-t GTM_PORT]
//! [-i NAME] [-n WORKERS] [-l LOGFILE]` (an option given twice takes its last value).
//! Extras: `gtm_proxy check -D DIR [options]` validates the configuration and exits;
//! `gtm_proxy status -D DIR` summarizes the running proxy;
//! `gtm_proxy reconnect -D DIR -s HOST -t PORT` does what `gtm_ctl reconnect -Z gtm_proxy`
//! does; `--version`.

use std::process::ExitCode;

use crate::config::{CommandLine, Config, ProxyArgs, ReconnectArgs, SubCommand};
use crate::logging::{self, Destination};
use crate::{control, status, xlog};

/// Run `gtm_proxy` with `argv` (program name first): start the proxy, or one of
/// its subcommands.
pub fn main(argv: Vec<String>) -> ExitCode {
    // gtm_ctl starts the proxy with descriptors 0-2 closed; without this the first
    // sockets or files opened would take their place and stray stderr output would
    // land in them.
    ensure_standard_fds();
    let cl = match CommandLine::parse_from_args(&argv) {
        Ok(cl) => cl,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    match cl.command {
        Some(SubCommand::Reconnect(r)) => reconnect(&r),
        Some(SubCommand::Check(args)) => check(&args),
        Some(SubCommand::Status(args)) => status(&args),
        None => start(&cl.args, &argv),
    }
}

fn load(args: &ProxyArgs) -> Result<Config, String> {
    let dir = args.data_dir.clone().ok_or("the data directory must be given with -D DIR")?;
    Config::load(&dir, args).map_err(|e| e.to_string())
}

fn start(args: &ProxyArgs, argv: &[String]) -> ExitCode {
    if let Some(dir) = &args.data_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("gtm_proxy: cannot create data directory {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    }
    let cfg = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gtm_proxy: {e}");
            return ExitCode::from(1);
        }
    };
    let dest = Destination::from_setting(&cfg.data_dir, &cfg.log_file);
    if let Err(e) = logging::init(dest, cfg.log_min_messages) {
        eprintln!("gtm_proxy: cannot open log file \"{}\": {e}", cfg.log_file);
        return ExitCode::from(1);
    }
    xlog!(LOG, "gtm_proxy {} starting in {}", env!("CARGO_PKG_VERSION"), cfg.data_dir.display());
    match crate::proxy::run(cfg, args, argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            xlog!(FATAL, "{e}");
            eprintln!("gtm_proxy: {e}");
            ExitCode::from(1)
        }
    }
}

/// `gtm_proxy check`: load the configuration as a start would, print the outcome.
fn check(args: &ProxyArgs) -> ExitCode {
    match load(args) {
        Ok(cfg) => {
            println!(
                "gtm_proxy: configuration in \"{}\" is valid: nodename \"{}\", listening on {}:{}, GTM {}:{}, {} workers",
                cfg.data_dir.display(),
                cfg.nodename,
                cfg.listen_addresses,
                cfg.port,
                cfg.gtm_host,
                cfg.gtm_port,
                cfg.worker_threads
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gtm_proxy: {e}");
            ExitCode::from(1)
        }
    }
}

/// `gtm_proxy status`: is a proxy running in DIR, and how is it doing.
fn status(args: &ProxyArgs) -> ExitCode {
    let Some(dir) = &args.data_dir else { return ExitCode::from(1) };
    let pid = match control::running_pid(dir) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("gtm_proxy: no server running: {e}");
            return ExitCode::from(1);
        }
    };
    // The running proxy's own options (gtm_proxy.opts), then those given here.
    let saved = control::read_opts(dir).ok().and_then(|o| ProxyArgs::parse_options(&o).ok()).unwrap_or_default();
    let cfg = match load(&saved.overridden_by(args)) {
        Ok(c) => c,
        Err(e) => {
            println!("gtm_proxy: server is running (PID: {pid}); its configuration does not load now: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let listening = std::fs::read_to_string(dir.join(crate::proxy::PORT_FILE_NAME)).ok();
    let figures = match status::metrics_addr(&cfg) {
        None => Err("metrics_port is 0 (set it to see live figures)".to_string()),
        Some(addr) => status::fetch_metrics(addr)
            .map(|text| status::Figures::parse(&text))
            .map_err(|e| format!("metrics endpoint {addr}: {e}")),
    };
    print!(
        "{}",
        status::render(pid, &cfg, listening.as_deref().map(str::trim), figures.as_ref().map_err(Clone::clone))
    );
    ExitCode::SUCCESS
}

fn reconnect(args: &ReconnectArgs) -> ExitCode {
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

/// Open /dev/null on any of descriptors 0, 1 and 2 that is closed.
fn ensure_standard_fds() {
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: open returns the lowest free descriptor, which is `fd` here since the
        // lower ones are open; a plain C string literal is passed.
        let got = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if got >= 0 && got != fd {
            // SAFETY: duplicate onto the closed slot, then drop the extra descriptor.
            unsafe {
                libc::dup2(got, fd);
                libc::close(got);
            }
        }
    }
}
