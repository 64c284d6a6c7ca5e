//! The listening sockets and what happens to each new connection before a
//! worker gets it: the client-network check, the `max_backends` bound, and
//! surviving descriptor exhaustion.
//!
//! Out of descriptors (EMFILE/ENFILE) a listener cannot accept, and since
//! mio reports readiness only on a new arrival, the connections already
//! queued would wait for the next one. So the acceptor keeps one spare
//! descriptor: when accept fails that way it closes the spare, accepts the
//! oldest waiting connection, tells it with a FATAL `E` that the proxy is out
//! of descriptors, closes it and takes the spare again — until the queue is
//! empty. When even that is not possible (the spare could not be taken back)
//! it retries on a timer, backing off from [`RETRY_MIN`] to [`RETRY_MAX`],
//! without waiting for a new arrival.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};

use super::access::AllowList;
use super::metrics::refusals::Refused;
use super::metrics::ProxyStats;
use super::pool::Pool;
use super::ProxyError;
use crate::config::Config;

pub const RETRY_MIN: Duration = Duration::from_millis(50);
pub const RETRY_MAX: Duration = Duration::from_secs(1);

pub struct Acceptor {
    listeners: Vec<TcpListener>,
    spare: Option<File>,
    /// When to try accepting again after a failure other than WouldBlock.
    retry_at: Option<Instant>,
    backoff: Duration,
    allow: AllowList,
    max_backends: usize,
    /// Applied to every accepted backend; fixed at start-up.
    keepalive: crate::netio::Keepalive,
    exhausted_log: RateLimit,
    refused_log: RateLimit,
    /// Refusals are counted here for the metrics endpoint.
    stats: Arc<ProxyStats>,
    /// A stop is under way: every connection is refused.
    stopping: bool,
}

/// Accept failures that mean "out of descriptors".
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Failures of one connection only; keep accepting.
fn transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted)
        || matches!(e.raw_os_error(), Some(libc::EPROTO) | Some(libc::EPERM))
}

fn take_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

impl Acceptor {
    /// Bind every listen address and register with `registry` (tokens
    /// 0..n).
    pub fn bind(
        cfg: &Config,
        allow: AllowList,
        registry: &Registry,
        stats: Arc<ProxyStats>,
    ) -> Result<Acceptor, ProxyError> {
        let mut listeners = bind_listeners(cfg)?;
        for (i, l) in listeners.iter_mut().enumerate() {
            registry.register(l, Token(i), Interest::READABLE).map_err(|e| ProxyError::Io("register", e))?;
        }
        Ok(Acceptor {
            listeners,
            spare: take_spare(),
            retry_at: None,
            backoff: RETRY_MIN,
            allow,
            max_backends: cfg.max_backends,
            keepalive: super::keepalive_of(cfg),
            exhausted_log: RateLimit::new(Duration::from_secs(10)),
            refused_log: RateLimit::new(Duration::from_secs(10)),
            stats,
            stopping: false,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ProxyError> {
        self.listeners[0].local_addr().map_err(|e| ProxyError::Io("listener address", e))
    }

    /// Settings that SIGHUP may change.
    pub fn reload(&mut self, cfg: &Config, allow: AllowList) {
        self.allow = allow;
        self.max_backends = cfg.max_backends;
        self.keepalive = super::keepalive_of(cfg);
    }

    /// A stop is under way: keep listening, so that a new connection gets
    /// an error naming the shutdown rather than a refused connect, until the
    /// process exits and the kernel refuses it instead.
    pub fn refuse_all(&mut self) {
        self.stopping = true;
    }

    /// How long the main loop may sleep before [`Acceptor::on_timer`] is due.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.retry_at.map(|t| t.saturating_duration_since(now))
    }

    pub fn is_listener(&self, token: Token) -> bool {
        token.0 < self.listeners.len()
    }

    /// A listener is readable.
    pub fn on_ready(&mut self, token: Token, pool: &mut Pool) {
        if self.retry_at.is_none() {
            self.accept_from(token.0, pool);
        }
    }

    /// Retry after a failure, when due.
    pub fn on_timer(&mut self, now: Instant, pool: &mut Pool) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            for i in 0..self.listeners.len() {
                self.accept_from(i, pool);
            }
            if self.retry_at.is_none() {
                self.backoff = RETRY_MIN;
            }
        }
    }

    fn back_off(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }

    fn accept_from(&mut self, i: usize, pool: &mut Pool) {
        loop {
            let Some(l) = self.listeners.get(i) else { return };
            match l.accept() {
                Ok((sock, peer)) => self.admit(sock, peer, pool),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if transient(&e) => {}
                Err(e) if out_of_descriptors(&e) => {
                    if self.exhausted_log.allow() {
                        warn!(
                            "accept failed: {e}; turning waiting connections away{}",
                            self.exhausted_log.suppressed_note()
                        );
                    }
                    if !self.refuse_one_with_spare(i) {
                        self.back_off();
                        return;
                    }
                }
                Err(e) => {
                    if self.exhausted_log.allow() {
                        warn!("accept failed: {e}; retrying shortly{}", self.exhausted_log.suppressed_note());
                    }
                    self.back_off();
                    return;
                }
            }
        }
    }

    /// Free the spare descriptor, accept and refuse one waiting connection,
    /// take the spare back. False when that could not be done.
    fn refuse_one_with_spare(&mut self, i: usize) -> bool {
        if self.spare.take().is_none() {
            self.spare = take_spare();
            return false;
        }
        let progressed = match self.listeners[i].accept() {
            Ok((sock, peer)) => {
                if self.refused_log.allow() {
                    warn!(
                        "refusing connection from {peer}: out of file descriptors{}",
                        self.refused_log.suppressed_note()
                    );
                }
                self.stats.refused.count(Refused::OutOfFds);
                super::refuse(sock, "gtm_proxy is out of file descriptors; try again later");
                true
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        self.spare = take_spare();
        progressed && self.spare.is_some()
    }

    fn admit(&mut self, sock: mio::net::TcpStream, peer: SocketAddr, pool: &mut Pool) {
        if self.stopping {
            if self.refused_log.allow() {
                warn!(
                    "refusing connection from {peer}: {}{}",
                    super::SHUTTING_DOWN,
                    self.refused_log.suppressed_note()
                );
            }
            self.stats.refused.count(Refused::ShuttingDown);
            super::refuse(sock, super::SHUTTING_DOWN);
            return;
        }
        if let Err(deny) = self.allow.check_peer(peer.ip()) {
            super::access::report_denied(&peer, &deny);
            self.stats.refused.count(Refused::Access);
            super::refuse(sock, &deny.to_string());
            return;
        }
        if pool.backends() >= self.max_backends {
            if self.refused_log.allow() {
                warn!(
                    "refusing connection from {peer}: max_backends ({}) reached{}",
                    self.max_backends,
                    self.refused_log.suppressed_note()
                );
            }
            self.stats.refused.count(Refused::MaxBackends);
            super::refuse(sock, "too many connections to gtm_proxy");
            return;
        }
        let _ = sock.set_nodelay(true);
        crate::netio::set_keepalive(&sock, self.keepalive);
        if let Err(s) = pool.dispatch(super::mio_to_std(sock)) {
            warn!("refusing connection from {peer}: no worker is running");
            self.stats.refused.count(Refused::NoWorker);
            super::refuse(mio::net::TcpStream::from_std(s), "gtm_proxy has no running worker");
        }
    }
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
        info!("listening on {addr}");
    }
    if out.is_empty() {
        return Err(ProxyError::Listen(cfg.listen_addresses.clone(), io::Error::other("no listen address")));
    }
    Ok(out)
}

/// At most one log line per period for a repeated event; the next line says
/// how many were left out.
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
    note: u64,
}

impl RateLimit {
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit { every, last: None, suppressed: 0, note: 0 }
    }

    /// Whether to log this occurrence now.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.suppressed += 1;
            return false;
        }
        self.last = Some(now);
        self.note = std::mem::take(&mut self.suppressed);
        true
    }

    /// Suffix for the line just allowed: how many similar lines were left out.
    pub fn suppressed_note(&self) -> String {
        if self.note == 0 {
            String::new()
        } else {
            format!(" ({} similar messages suppressed)", self.note)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_drops() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        assert!(r.allow_at(t0));
        assert_eq!(r.suppressed_note(), "");
        assert!(!r.allow_at(t0 + Duration::from_secs(1)));
        assert!(!r.allow_at(t0 + Duration::from_secs(9)));
        assert!(r.allow_at(t0 + Duration::from_secs(10)));
        assert_eq!(r.suppressed_note(), " (2 similar messages suppressed)");
        assert!(r.allow_at(t0 + Duration::from_secs(30)));
        assert_eq!(r.suppressed_note(), "");
    }

    #[test]
    fn descriptor_errors() {
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(transient(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(!transient(&io::Error::from_raw_os_error(libc::ENOBUFS)));
    }
}
