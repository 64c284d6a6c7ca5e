//! The GTM proxy daemon: start-up, the main loop, signals, and shutdown.
//!
//! Threads: the main thread owns the listeners ([`acceptor`]), the
//! registration link and signal handling, and never blocks on a peer;
//! `worker_threads` workers ([`worker`], managed by [`pool`]) each own a mio
//! loop, a set of backends and one GTM link. Accepted sockets go to the live
//! worker with the fewest backends over a crossbeam channel plus that
//! worker's mio `Waker`. Signals are received by signal-hook on a small
//! thread and handed to the main loop the same way, so no work happens in a
//! signal handler; a worker's death and the outcome of a registration run
//! in the background ([`registration::register_in_background`]) wake the
//! main loop likewise. Stop signals escalate ([`escalate`]): a stricter stop
//! always takes over one under way.

pub mod acceptor;
pub mod access;
pub mod admission;
pub mod backend;
pub mod batch;
pub mod coalesce;
pub mod failover;
pub mod ids;
pub mod ledger;
pub mod metrics;
pub mod pool;
pub mod registration;
pub mod stop;
pub mod upstream;
pub mod vetting;
pub mod worker;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use log::{error, info, warn};
use mio::{Events, Poll, Token, Waker};

use crate::config::{Config, ProxyArgs};
use crate::control::{self, PidFile};
use crate::netio;
use acceptor::Acceptor;
use access::AllowList;
use pool::Pool;
use registration::{Identity, RegLink, Registered};
use stop::{Closing, Stop};
use worker::{Control, StopMode};

const MAIN_WAKER: Token = Token(usize::MAX - 1);
/// Name of the file holding the bound `host:port` once the proxy listens
/// (an extension: lets tests and scripts use `-p 0`).
pub const PORT_FILE_NAME: &str = "gtm_proxy.port";
/// What a connection or request refused because of a stop is told.
pub const SHUTTING_DOWN: &str = "gtm_proxy is shutting down";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Control(#[from] control::ControlError),
    #[error("{0}")]
    Registration(#[from] registration::RegError),
    #[error("{0}")]
    Workers(#[from] pool::PoolError),
    #[error("could not listen on {0}: {1}")]
    Listen(String, io::Error),
    #[error("{0}: {1}")]
    Io(&'static str, io::Error),
    #[error("invalid access control list: {0}")]
    Access(String),
}

/// Run the proxy until a stop signal. `cli` are the command-line values
/// (they keep winning over the file on reload); `argv` is written to
/// `gtm_proxy.opts` as XL does.
pub fn run(cfg: Config, cli: &ProxyArgs, argv: &[String]) -> Result<(), ProxyError> {
    let data_dir = cfg.data_dir.clone();
    let pid = PidFile::create(&data_dir)?;
    if let Err(e) = control::write_opts(&data_dir, argv) {
        warn!("cannot write gtm_proxy.opts: {e}");
    }
    match netio::raise_fd_limit() {
        Ok(n) => info!("open file limit is {n}"),
        Err(e) => warn!("cannot raise the open file limit: {e}"),
    }

    let mut poll = Poll::new().map_err(|e| ProxyError::Io("poll", e))?;
    let allow = AllowList::from_config(&cfg).map_err(ProxyError::Access)?;
    let proxy_stats = Arc::new(metrics::ProxyStats::default());
    let mut acceptor = Acceptor::bind(&cfg, allow, poll.registry(), proxy_stats.clone())?;
    let bound = acceptor.local_addr()?;

    let me = Identity {
        nodename: cfg.nodename.clone(),
        listen_addresses: cfg.listen_addresses.clone(),
        port: bound.port(),
        data_dir: std::fs::canonicalize(&data_dir).unwrap_or(data_dir.clone()).to_string_lossy().into_owned(),
    };
    let gtm = (cfg.gtm_host.clone(), cfg.gtm_port);
    let mut reg = match RegLink::register(&gtm.0, gtm.1, &me) {
        Ok(r) => Some(r),
        Err(e) if !cfg.gtm_required_at_start => {
            warn!("cannot register on GTM {}:{} at start: {e}; listening anyway, retrying the GTM", gtm.0, gtm.1);
            None
        }
        Err(e) => return Err(e.into()),
    };

    let mut cfg = Arc::new(cfg);
    let main_waker = Arc::new(Waker::new(poll.registry(), MAIN_WAKER).map_err(|e| ProxyError::Io("waker", e))?);
    let mut pool = Pool::spawn(cfg.worker_threads, &cfg, main_waker.clone())?;

    if cfg.metrics_port != 0 {
        let host = cfg.metrics_listen_address.as_str();
        let host = if host == "*" { "0.0.0.0" } else { host };
        let addr = (host, cfg.metrics_port).to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| {
            ProxyError::Listen(format!("{host}:{}", cfg.metrics_port), io::Error::other("no address"))
        })?;
        metrics::spawn(addr, pool.stats(), proxy_stats).map_err(|e| ProxyError::Listen(addr.to_string(), e))?;
    }
    let signals = spawn_signal_thread(main_waker.clone())?;
    let (reg_tx, reg_rx) = unbounded::<Registered>();
    // Which registration is current: a reconnect order makes earlier ones stale.
    let reg_generation = Arc::new(AtomicU64::new(0));
    if reg.is_none() {
        // The GTM was not reachable at start: keep trying it in the background.
        let retry = cfg.gtm_connect_retry_interval.max(Duration::from_millis(100));
        if let Err(e) = registration::register_in_background(
            None,
            gtm.clone(),
            me.clone(),
            (0, reg_generation.clone()),
            Some(retry),
            reg_tx.clone(),
            main_waker.clone(),
        ) {
            error!("cannot start the registration retry thread: {e}");
        }
    }
    write_port_file(&data_dir, bound);
    control::notify_ready();
    let mut watchdog = control::Watchdog::from_env();
    crate::xlog!(LOG, "gtm_proxy listening on {bound} with {} workers, GTM {}:{}", pool.len(), gtm.0, gtm.1);

    let mut events = Events::with_capacity(256);
    let mut stop: Option<Stop> = None;
    let outcome = 'main: loop {
        watchdog.tick();
        let now = Instant::now();
        let timeout = [acceptor.timeout(now), stop.as_ref().and_then(|s| s.timeout(now))]
            .into_iter()
            .flatten()
            .fold(Duration::from_millis(500), Duration::min);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(ProxyError::Io("poll", e));
        }
        let mut woken = false;
        for ev in events.iter() {
            if ev.token() == MAIN_WAKER {
                woken = true;
            } else if acceptor.is_listener(ev.token()) {
                acceptor.on_ready(ev.token(), &mut pool);
            }
        }
        acceptor.on_timer(Instant::now(), &mut pool);
        if woken {
            // A dead worker first, so that nothing below is sent to it.
            if let Err(e) = pool.reap(&cfg, stop.is_some()) {
                break Err(e.into());
            }
            while let Ok(r) = reg_rx.try_recv() {
                match r.result {
                    Ok(link) if r.generation == reg_generation.load(Ordering::Relaxed) => reg = Some(link),
                    Ok(stale) => stale.close(),
                    Err(e) => error!("registration on the new GTM failed: {e}"),
                }
            }
            while let Ok(sig) = signals.try_recv() {
                let asked = match sig {
                    signal_hook::consts::SIGTERM => StopMode::Smart,
                    signal_hook::consts::SIGINT => StopMode::Fast,
                    signal_hook::consts::SIGQUIT => StopMode::Immediate,
                    signal_hook::consts::SIGHUP => {
                        if let Some(new) = reload(&cfg, cli, &data_dir) {
                            match AllowList::from_config(&new) {
                                Ok(allow) => {
                                    acceptor.reload(&new, allow);
                                    cfg = Arc::new(new);
                                    pool.broadcast(|| Control::Reload(cfg.clone()));
                                }
                                Err(e) => error!("configuration not reloaded: invalid access control list: {e}"),
                            }
                        }
                        continue;
                    }
                    signal_hook::consts::SIGUSR1 => {
                        if let Some(to) = reconnect_order(&data_dir, pool.gtm()) {
                            let from = pool.gtm();
                            crate::xlog!(
                                LOG,
                                "reconnect ordered: moving from GTM {}:{} to {}:{}",
                                from.0,
                                from.1,
                                to.0,
                                to.1
                            );
                            // Workers first: they must not keep sending to the
                            // old GTM while the registration link moves.
                            pool.reconnect(to.clone());
                            let generation = reg_generation.fetch_add(1, Ordering::Relaxed) + 1;
                            let started = registration::register_in_background(
                                reg.take(),
                                to.clone(),
                                me.clone(),
                                (generation, reg_generation.clone()),
                                None,
                                reg_tx.clone(),
                                main_waker.clone(),
                            );
                            if let Err(e) = started {
                                error!("cannot start the registration on the new GTM: {e}");
                            }
                        }
                        continue;
                    }
                    other => {
                        warn!("unexpected signal {other}");
                        continue;
                    }
                };
                on_stop_signal(&mut stop, asked, &cfg, &mut acceptor, &pool);
            }
        }
        if let Some(s) = stop.as_mut() {
            advance_stop(s, &pool);
        }
        match stop.map(|s| s.mode()) {
            Some(StopMode::Immediate) => break Ok(()),
            Some(_) if pool.all_finished() => break 'main Ok(()),
            _ => {}
        }
    };
    let mode = stop.map_or(StopMode::Immediate, |s| s.mode());
    if outcome.is_err() {
        // Leave at once; the caller logs the FATAL line.
        pool.broadcast(|| Control::Shutdown(StopMode::Immediate));
    } else if mode != StopMode::Immediate {
        pool.join();
    }
    // In every mode, so that the next start registers cleanly.
    registration::unregister_within(reg.take(), pool.gtm(), &cfg.nodename, registration::UNREGISTER_BUDGET);
    let _ = std::fs::remove_file(data_dir.join(PORT_FILE_NAME));
    drop(pid);
    if outcome.is_ok() {
        crate::xlog!(LOG, "gtm_proxy stopped ({mode:?})");
    }
    outcome
}

/// A stop signal: the first one starts the stop (new connections are
/// refused from now on), a stricter one takes over.
fn on_stop_signal(stop: &mut Option<Stop>, asked: StopMode, cfg: &Config, acceptor: &mut Acceptor, pool: &Pool) {
    let mode = match stop {
        None => {
            control::notify_stopping();
            acceptor.refuse_all();
            *stop = Some(Stop::new(asked, Instant::now(), cfg.smart_shutdown_timeout));
            asked
        }
        Some(s) => match s.escalate(asked) {
            Some(m) => m,
            None => {
                info!("{asked:?} shutdown requested; {:?} shutdown already under way", s.mode());
                return;
            }
        },
    };
    match mode {
        StopMode::Smart => crate::xlog!(
            LOG,
            "Smart shutdown requested: refusing new connections and transactions; \
             waiting at most {:?} for open transactions to end",
            cfg.smart_shutdown_timeout
        ),
        _ => crate::xlog!(LOG, "{mode:?} shutdown requested"),
    }
    pool.broadcast(|| Control::Shutdown(mode));
}

/// A smart stop goes on as a fast one once the workers are drained or its
/// time is up.
fn advance_stop(stop: &mut Stop, pool: &Pool) {
    match stop.step(Instant::now(), pool.drained()) {
        None => return,
        Some(Closing::Drained) => crate::xlog!(LOG, "smart shutdown: no transaction open; closing the backends"),
        Some(Closing::TimedOut(t)) => crate::xlog!(
            LOG,
            "smart shutdown: transactions still open after smart_shutdown_timeout ({t:?}); shutting down fast"
        ),
    }
    pool.broadcast(|| Control::Shutdown(StopMode::Fast));
}

/// SIGHUP: reopen the log file (logrotate) and read gtm_proxy.conf again
/// (command-line values still win); [`Config::reload`] decides which changes
/// apply now. A file with an error is reported and the running configuration kept.
fn reload(cur: &Config, cli: &ProxyArgs, data_dir: &Path) -> Option<Config> {
    if let Err(e) = crate::logging::reopen() {
        error!("could not reopen the log file: {e}");
    }
    let new = match Config::load(data_dir, cli) {
        Ok(c) => c,
        Err(e) => {
            error!("configuration not reloaded: {e}");
            return None;
        }
    };
    let r = cur.reload(new);
    for key in &r.kept {
        warn!("parameter \"{key}\" cannot be changed without restarting gtm_proxy; kept");
    }
    crate::logging::set_min_level(r.config.log_min_messages);
    crate::xlog!(
        LOG,
        "configuration reloaded; changed: {}",
        if r.applied.is_empty() { "none".to_string() } else { r.applied.join(", ") }
    );
    Some(r.config)
}

/// The keepalive settings of `cfg`.
pub(crate) fn keepalive_of(cfg: &Config) -> netio::Keepalive {
    netio::Keepalive { idle: cfg.keepalives_idle, interval: cfg.keepalives_interval, count: cfg.keepalives_count }
}

/// Read `newgtm`; a bad or missing file is logged and ignored.
fn reconnect_order(data_dir: &Path, current: &(String, u16)) -> Option<(String, u16)> {
    match control::read_newgtm(data_dir) {
        Ok(n) => Some((n.host.unwrap_or_else(|| current.0.clone()), n.port.unwrap_or(current.1))),
        Err(e) => {
            error!("ignoring reconnect order: {e}");
            None
        }
    }
}

/// Turn a connection away with a FATAL `E` (best effort) and close it.
pub(crate) fn refuse(mut sock: mio::net::TcpStream, msg: &str) {
    let mut b = bytes::BytesMut::new();
    crate::codec::encode_error(&mut b, None, &crate::codec::ErrorFields::new("FATAL", msg));
    let _ = io::Write::write(&mut sock, &b);
    // Take in what the peer already sent (its startup packet, typically):
    // closing with unread input resets the connection at once.
    let mut junk = [0u8; 2048];
    for _ in 0..4 {
        match io::Read::read(&mut sock, &mut junk) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
}

pub(crate) fn mio_to_std(s: mio::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor comes straight from a mio stream we own and is
    // handed over exactly once.
    unsafe { std::net::TcpStream::from_raw_fd(s.into_raw_fd()) }
}

fn write_port_file(dir: &Path, addr: SocketAddr) {
    let tmp = dir.join(format!("{PORT_FILE_NAME}.tmp"));
    let res = std::fs::write(&tmp, format!("{addr}\n")).and_then(|_| std::fs::rename(&tmp, dir.join(PORT_FILE_NAME)));
    if let Err(e) = res {
        warn!("cannot write {PORT_FILE_NAME}: {e}");
    }
}

fn spawn_signal_thread(waker: Arc<Waker>) -> Result<crossbeam_channel::Receiver<i32>, ProxyError> {
    use signal_hook::consts::*;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1])
        .map_err(|e| ProxyError::Io("signal handlers", e))?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name("gtm_proxy signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(s).is_err() {
                    break;
                }
                let _ = waker.wake();
            }
        })
        .map_err(|e| ProxyError::Io("spawn signal thread", e))?;
    Ok(rx)
}
