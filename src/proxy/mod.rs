//! The GTM proxy daemon: start-up, the accept loop, signals, and shutdown.
//!
//! Threads: the main thread owns the listeners, the registration link and
//! signal handling; `worker_threads` workers ([`worker`]) each own a mio loop,
//! a set of backends and one GTM link. Accepted sockets go to the worker with
//! the fewest backends over a crossbeam channel plus that worker's mio
//! `Waker`. Signals are received by signal-hook on a small thread and handed
//! to the main loop the same way, so no work happens in a signal handler.

pub mod admission;
pub mod backend;
pub mod batch;
pub mod coalesce;
pub mod failover;
pub mod ids;
pub mod ledger;
pub mod metrics;
pub mod registration;
pub mod upstream;
pub mod vetting;
pub mod worker;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Sender};
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::{Config, ProxyArgs};
use crate::control::{self, PidFile};
use crate::netio;
use registration::{Identity, RegLink};
use worker::{Control, StopMode, Worker, WorkerStats};

const MAIN_WAKER: Token = Token(usize::MAX - 1);
/// Name of the file holding the bound `host:port` once the proxy listens
/// (an extension: lets tests and scripts use `-p 0`).
pub const PORT_FILE_NAME: &str = "gtm_proxy.port";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Control(#[from] control::ControlError),
    #[error("{0}")]
    Registration(#[from] registration::RegError),
    #[error("could not listen on {0}: {1}")]
    Listen(String, io::Error),
    #[error("{0}: {1}")]
    Io(&'static str, io::Error),
}

struct WorkerHandle {
    tx: Sender<Control>,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn send(&self, c: Control) {
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }
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
    let mut listeners = bind_listeners(&cfg)?;
    let bound = listeners[0].local_addr().map_err(|e| ProxyError::Io("listener address", e))?;
    for (i, l) in listeners.iter_mut().enumerate() {
        poll.registry().register(l, Token(i), Interest::READABLE).map_err(|e| ProxyError::Io("register", e))?;
    }

    let me = Identity {
        nodename: cfg.nodename.clone(),
        listen_addresses: cfg.listen_addresses.clone(),
        port: bound.port(),
        data_dir: std::fs::canonicalize(&data_dir).unwrap_or(data_dir.clone()).to_string_lossy().into_owned(),
    };
    let mut gtm = (cfg.gtm_host.clone(), cfg.gtm_port);
    let mut reg = match RegLink::register(&gtm.0, gtm.1, &me) {
        Ok(r) => Some(r),
        Err(e) if !cfg.gtm_required_at_start => {
            warn!("cannot register on GTM {}:{} at start: {e}; listening anyway, retrying the GTM", gtm.0, gtm.1);
            None
        }
        Err(e) => return Err(e.into()),
    };

    let mut cfg = Arc::new(cfg);
    let high = Arc::new(ledger::HighWater::default());
    let mut workers = Vec::with_capacity(cfg.worker_threads);
    for i in 0..cfg.worker_threads {
        let (tx, rx) = unbounded();
        let stats = Arc::new(WorkerStats::default());
        let (w, waker) =
            Worker::new(i, cfg.clone(), rx, stats.clone(), high.clone()).map_err(|e| ProxyError::Io("worker", e))?;
        let thread = std::thread::Builder::new()
            .name(format!("gtm_proxy worker {i}"))
            .spawn(move || w.run())
            .map_err(|e| ProxyError::Io("spawn worker", e))?;
        workers.push(WorkerHandle { tx, waker, stats, thread: Some(thread) });
    }

    if cfg.metrics_port != 0 {
        let host = cfg.listen_addresses.split(',').next().map(str::trim).unwrap_or("127.0.0.1");
        let host = if host == "*" { "0.0.0.0" } else { host };
        let addr = (host, cfg.metrics_port).to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| {
            ProxyError::Listen(format!("{host}:{}", cfg.metrics_port), io::Error::other("no address"))
        })?;
        metrics::spawn(addr, workers.iter().map(|w| w.stats.clone()).collect())
            .map_err(|e| ProxyError::Listen(addr.to_string(), e))?;
    }
    let main_waker = Arc::new(Waker::new(poll.registry(), MAIN_WAKER).map_err(|e| ProxyError::Io("waker", e))?);
    let (reg_tx, reg_rx) = unbounded();
    let mut reg_retry =
        reg.is_none().then(|| retry_registration(gtm.clone(), me.clone(), &cfg, reg_tx.clone(), main_waker.clone()));
    let signals = spawn_signal_thread(main_waker)?;
    write_port_file(&data_dir, bound);
    control::notify_ready();
    let mut watchdog = control::Watchdog::from_env();
    crate::xlog!(LOG, "gtm_proxy listening on {bound} with {} workers, GTM {}:{}", workers.len(), gtm.0, gtm.1);

    let mut events = Events::with_capacity(256);
    let mut accepting = true;
    let mut stop: Option<StopMode> = None;
    let mut next_worker = 0usize;
    'main: loop {
        watchdog.tick();
        if let Err(e) = poll.poll(&mut events, Some(std::time::Duration::from_millis(500))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ProxyError::Io("poll", e));
        }
        for ev in events.iter() {
            if ev.token() == MAIN_WAKER {
                while let Ok((to, r)) = reg_rx.try_recv() {
                    // A registration from before a reconnect order is stale.
                    if to == gtm && reg.is_none() {
                        reg = Some(r);
                        reg_retry = None;
                    } else {
                        r.close();
                    }
                }
                while let Ok(sig) = signals.try_recv() {
                    match sig {
                        signal_hook::consts::SIGTERM => stop = Some(StopMode::Smart),
                        signal_hook::consts::SIGINT => stop = Some(StopMode::Fast),
                        signal_hook::consts::SIGQUIT => stop = Some(StopMode::Immediate),
                        signal_hook::consts::SIGHUP => {
                            if let Some(new) = reload(&cfg, cli, &data_dir) {
                                cfg = Arc::new(new);
                                for w in &workers {
                                    w.send(Control::Reload(cfg.clone()));
                                }
                            }
                        }
                        signal_hook::consts::SIGUSR1 => {
                            if let Some(to) = reconnect_order(&data_dir, &gtm) {
                                crate::xlog!(
                                    LOG,
                                    "reconnect ordered: moving from GTM {}:{} to {}:{}",
                                    gtm.0,
                                    gtm.1,
                                    to.0,
                                    to.1
                                );
                                if let Some(r) = reg.take() {
                                    r.close();
                                }
                                if let Some(cancel) = reg_retry.take() {
                                    cancel.store(true, Ordering::Relaxed);
                                }
                                match RegLink::register(&to.0, to.1, &me) {
                                    Ok(r) => reg = Some(r),
                                    Err(e) => error!("registration on the new GTM failed: {e}"),
                                }
                                for w in &workers {
                                    w.send(Control::Reconnect { host: to.0.clone(), port: to.1 });
                                }
                                gtm = to;
                            }
                        }
                        other => warn!("unexpected signal {other}"),
                    }
                }
                continue;
            }
            if !accepting {
                continue;
            }
            let Some(l) = listeners.get(ev.token().0) else { continue };
            loop {
                match l.accept() {
                    Ok((sock, peer)) => {
                        let in_use: usize = workers.iter().map(|w| w.stats.backends.load(Ordering::Relaxed)).sum();
                        if in_use >= cfg.max_backends {
                            warn!("refusing connection from {peer}: max_backends ({}) reached", cfg.max_backends);
                            refuse(sock, "too many connections to gtm_proxy");
                            continue;
                        }
                        let _ = sock.set_nodelay(true);
                        netio::set_keepalive(&sock, keepalive_of(&cfg));
                        let std_sock = mio_to_std(sock);
                        // Least-loaded worker; ties go round-robin.
                        let n = workers.len();
                        let mut best = next_worker % n;
                        for k in 0..n {
                            let i = (next_worker + k) % n;
                            if workers[i].stats.backends.load(Ordering::Relaxed)
                                < workers[best].stats.backends.load(Ordering::Relaxed)
                            {
                                best = i;
                            }
                        }
                        next_worker = next_worker.wrapping_add(1);
                        workers[best].send(Control::NewBackend(std_sock));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!("accept failed: {e}");
                        break;
                    }
                }
            }
        }
        if let Some(mode) = stop {
            if accepting {
                crate::xlog!(LOG, "{mode:?} shutdown requested");
                control::notify_stopping();
                for l in &mut listeners {
                    let _ = poll.registry().deregister(l);
                }
                listeners.clear();
                accepting = false;
                for w in &workers {
                    w.send(Control::Shutdown(mode));
                }
            }
            if mode == StopMode::Immediate {
                break 'main;
            }
            if workers.iter().all(|w| w.thread.as_ref().is_none_or(|t| t.is_finished())) {
                break 'main;
            }
        }
    }
    let mode = stop.unwrap_or(StopMode::Fast);
    if mode != StopMode::Immediate {
        for w in &mut workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(r) = reg.take() {
            r.unregister(&cfg.nodename);
        }
    }
    let _ = std::fs::remove_file(data_dir.join(PORT_FILE_NAME));
    drop(pid);
    crate::xlog!(LOG, "gtm_proxy stopped ({mode:?})");
    Ok(())
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

/// The GTM was not reachable at start: register from a helper thread, every
/// `gtm_connect_retry_interval`, until it works or the returned flag is set. The link
/// reaches the main loop through `tx` (with the GTM it was made to) and a wake-up.
fn retry_registration(
    gtm: (String, u16),
    me: Identity,
    cfg: &Config,
    tx: Sender<((String, u16), RegLink)>,
    waker: Arc<Waker>,
) -> Arc<std::sync::atomic::AtomicBool> {
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = cancel.clone();
    let interval = cfg.gtm_connect_retry_interval.max(std::time::Duration::from_millis(100));
    let spawned = std::thread::Builder::new().name("gtm_proxy registration".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(interval);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match RegLink::register(&gtm.0, gtm.1, &me) {
                Ok(r) => {
                    if tx.send((gtm, r)).is_ok() {
                        let _ = waker.wake();
                    }
                    break;
                }
                Err(e) => log::debug!("registration on GTM {}:{} failed again: {e}", gtm.0, gtm.1),
            }
        }
    });
    if let Err(e) = spawned {
        error!("cannot start the registration retry thread: {e}");
    }
    cancel
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
}

fn mio_to_std(s: mio::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor comes straight from a mio stream we own and is
    // handed over exactly once.
    unsafe { std::net::TcpStream::from_raw_fd(s.into_raw_fd()) }
}

fn bind_listeners(cfg: &Config) -> Result<Vec<TcpListener>, ProxyError> {
    let mut out = Vec::new();
    for host in cfg.listen_addresses.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let host = if host == "*" { "0.0.0.0" } else { host };
        let label = format!("{host}:{}", cfg.port);
        let addrs: Vec<SocketAddr> =
            (host, cfg.port).to_socket_addrs().map_err(|e| ProxyError::Listen(label.clone(), e))?.collect();
        let Some(addr) = addrs.first().copied() else {
            return Err(ProxyError::Listen(label, io::Error::other("no address")));
        };
        let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
            .map_err(|e| ProxyError::Listen(label.clone(), e))?;
        sock.set_reuse_address(true).map_err(|e| ProxyError::Listen(label.clone(), e))?;
        sock.bind(&addr.into()).map_err(|e| ProxyError::Listen(label.clone(), e))?;
        sock.listen(4096).map_err(|e| ProxyError::Listen(label.clone(), e))?;
        sock.set_nonblocking(true).map_err(|e| ProxyError::Listen(label.clone(), e))?;
        out.push(TcpListener::from_std(sock.into()));
    }
    if out.is_empty() {
        return Err(ProxyError::Listen(cfg.listen_addresses.clone(), io::Error::other("no listen address")));
    }
    Ok(out)
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
