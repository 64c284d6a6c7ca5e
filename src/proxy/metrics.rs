//! Prometheus text-format metrics on `metrics_listen_address:metrics_port`
//! (port 0 = off).
//!
//! Served by its own thread with a small non-blocking mio loop: it only
//! reads the workers' atomic counters, so it can never slow a worker's event
//! loop. Several scrapes are served at once, a request larger than
//! [`MAX_REQUEST`] is answered 431 and closed, and a connection that has not
//! been answered and written within [`DEADLINE`] is closed, so a slow or
//! silent client costs only its own connection. Plain HTTP/1.x, one request
//! per connection; no crate needed for a single fixed GET.
//!
//! What is served: per-worker counters and gauges ([`WorkerStats`]), the GTM
//! round-trip histogram ([`latency`]), the `*_MULTI` size histogram, refused
//! connections by reason ([`refusals`], counted by the acceptor and the
//! workers), build information, and the standard `process_*` figures
//! ([`process`]). Every family has `# HELP` and `# TYPE`.

pub mod exposition;
pub mod latency;
pub mod process;
pub mod refusals;

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::acceptor::RateLimit;
use super::coalesce::BatchSizes;
use super::worker::WorkerStats;
use refusals::{Refusals, Refused};

/// Longest accepted request head.
pub const MAX_REQUEST: usize = 8192;
/// Time a connection gets from accept to its last byte written.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Scrapes served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    req: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    deadline: Instant,
}

/// Counters of the proxy as a whole (not of one worker).
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections turned away by the acceptor.
    pub refused: Refusals,
}

/// Bind `addr` and serve `GET /metrics` from a background thread.
pub fn spawn(addr: SocketAddr, workers: Vec<Arc<WorkerStats>>, proxy: Arc<ProxyStats>) -> io::Result<SocketAddr> {
    let mut listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    std::thread::Builder::new().name("gtm_proxy metrics".into()).spawn(move || {
        Server {
            poll,
            listener,
            conns: Slab::new(),
            workers,
            proxy,
            accept_failed: false,
            accept_log: RateLimit::new(Duration::from_secs(10)),
        }
        .run();
    })?;
    info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    workers: Vec<Arc<WorkerStats>>,
    proxy: Arc<ProxyStats>,
    /// Accept failed (out of descriptors, say): try again after each poll,
    /// since no new readiness comes for connections already queued.
    accept_failed: bool,
    accept_log: RateLimit,
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(128);
        loop {
            let now = Instant::now();
            let timeout = self.conns.iter().map(|(_, c)| c.deadline.saturating_duration_since(now)).min();
            if let Err(e) = self.poll.poll(&mut events, timeout.or(Some(Duration::from_secs(1)))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("metrics endpoint stopped: poll failed: {e}");
                    return;
                }
            }
            if self.accept_failed {
                self.accept();
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    Token(k) => self.on_event(k),
                }
            }
            let now = Instant::now();
            let late: Vec<usize> = self.conns.iter().filter(|(_, c)| c.deadline <= now).map(|(k, _)| k).collect();
            for k in late {
                debug!("metrics: request not completed within {DEADLINE:?}; closed");
                self.close(k);
            }
        }
    }

    fn accept(&mut self) {
        self.accept_failed = false;
        loop {
            match self.listener.accept() {
                Ok((mut sock, peer)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        debug!("metrics: {MAX_CONNECTIONS} scrapes in progress; closing {peer}");
                        continue;
                    }
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key());
                    if let Err(e) = self.poll.registry().register(&mut sock, token, Interest::READABLE) {
                        warn!("metrics: cannot register a connection: {e}");
                        continue;
                    }
                    entry.insert(Conn {
                        sock,
                        req: Vec::new(),
                        out: Vec::new(),
                        sent: 0,
                        deadline: Instant::now() + DEADLINE,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: retried after the
                    // next poll (at most a second away).
                    if self.accept_log.allow() {
                        warn!("metrics accept failed: {e}{}", self.accept_log.suppressed_note());
                    }
                    self.accept_failed = true;
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else { return };
        let done = if c.out.is_empty() { read_request(c, &self.workers, &self.proxy) } else { Ok(false) };
        let done = done.and_then(|answered| if answered || !c.out.is_empty() { write_answer(c) } else { Ok(false) });
        match done {
            Ok(false) => {
                if !c.out.is_empty() {
                    let _ = self.poll.registry().reregister(&mut c.sock, Token(k), Interest::WRITABLE);
                }
            }
            Ok(true) => self.close(k),
            Err(e) => {
                debug!("metrics request failed: {e}");
                self.close(k);
            }
        }
    }

    fn close(&mut self, k: usize) {
        if let Some(mut c) = self.conns.try_remove(k) {
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
    }
}

/// Read what is there; once the head is complete (or too long, or the peer
/// stopped sending) put the answer in `out`. Returns whether it did.
fn read_request(c: &mut Conn, workers: &[Arc<WorkerStats>], proxy: &ProxyStats) -> io::Result<bool> {
    let mut buf = [0u8; 2048];
    loop {
        match c.sock.read(&mut buf) {
            Ok(0) => {
                c.out = answer(&c.req, workers, proxy);
                return Ok(true);
            }
            Ok(n) => {
                c.req.extend_from_slice(&buf[..n]);
                if head_complete(&c.req) || c.req.len() > MAX_REQUEST {
                    c.out = answer(&c.req, workers, proxy);
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write as much of the answer as the socket takes; true once all is out.
fn write_answer(c: &mut Conn) -> io::Result<bool> {
    while c.sent < c.out.len() {
        match c.sock.write(&c.out[c.sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The request head ends with an empty line.
pub fn head_complete(req: &[u8]) -> bool {
    req.windows(4).any(|w| w == b"\r\n\r\n") || req.windows(2).any(|w| w == b"\n\n")
}

/// The whole HTTP answer to a request head.
pub fn answer(req: &[u8], workers: &[Arc<WorkerStats>], proxy: &ProxyStats) -> Vec<u8> {
    let first = req.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let (status, body) = if req.len() > MAX_REQUEST {
        ("431 Request Header Fields Too Large", "request too large\n".to_string())
    } else if first.starts_with(b"GET /metrics ") || first.starts_with(b"GET / ") {
        ("200 OK", render(workers, proxy))
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_string())
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The `version` of `gtm_proxy_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The metrics text: per-worker series, then the proxy-wide ones.
pub fn render(workers: &[Arc<WorkerStats>], proxy: &ProxyStats) -> String {
    type Get = fn(&WorkerStats) -> u64;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let series: [(&str, &str, &str, Get); 14] = [
        ("gtm_proxy_backends", "gauge", "Connected backends.", |s| s.backends.load(Ordering::Relaxed) as u64),
        ("gtm_proxy_requests_total", "counter", "Backend requests received.", |s| s.requests.load(Ordering::Relaxed)),
        ("gtm_proxy_gtm_answers_total", "counter", "Answers received from the GTM.", |s| {
            s.upstream_frames.load(Ordering::Relaxed)
        }),
        ("gtm_proxy_errors_sent_total", "counter", "Error answers sent to backends.", |s| {
            s.errors_sent.load(Ordering::Relaxed)
        }),
        ("gtm_proxy_gtm_link_failures_total", "counter", "GTM links lost.", |s| {
            s.link_failures.load(Ordering::Relaxed)
        }),
        (
            "gtm_proxy_gtm_reconnect_orders_total",
            "counter",
            "Reconnect orders carried out (planned moves, not failures).",
            |s| s.reconnect_orders.load(Ordering::Relaxed),
        ),
        (
            "gtm_proxy_replays_total",
            "counter",
            "Requests sent again on a new GTM link after the link they were in flight on was lost.",
            |s| s.replays.load(Ordering::Relaxed),
        ),
        (
            "gtm_proxy_outcome_unknown_total",
            "counter",
            "Requests answered E \"outcome unknown after GTM failover\": in flight on a lost link, not safe to send again.",
            |s| s.outcome_unknown.load(Ordering::Relaxed),
        ),
        (
            "gtm_proxy_hold_timeouts_total",
            "counter",
            "Requests answered E after being held for the GTM longer than hold_timeout.",
            |s| s.hold_timeouts.load(Ordering::Relaxed),
        ),
        (
            "gtm_proxy_stale_gxid_refusals_total",
            "counter",
            "Begin answers refused: the GTM handed out a GXID not above one this proxy had already handed out.",
            |s| s.stale_gxids.load(Ordering::Relaxed),
        ),
        ("gtm_proxy_gtm_link_up", "gauge", "1 while the worker's GTM link is ready.", |s| {
            s.link_up.load(Ordering::Relaxed) as u64
        }),
        ("gtm_proxy_queued_requests", "gauge", "Requests waiting to be sent (held while the GTM is down).", |s| {
            s.queued.load(Ordering::Relaxed) as u64
        }),
        ("gtm_proxy_in_flight_requests", "gauge", "Upstream requests awaiting the GTM's answer.", |s| {
            s.in_flight.load(Ordering::Relaxed) as u64
        }),
        ("gtm_proxy_ledger_gxids", "gauge", "GXIDs tracked as handed out and not ended.", |s| {
            s.ledger_gxids.load(Ordering::Relaxed) as u64
        }),
    ];
    let mut out = String::new();
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, w) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(w));
        }
    }

    let name = "gtm_proxy_gtm_reconnects_total";
    let _ = writeln!(
        out,
        "# HELP {name} GTM links left for a new one, by cause: order (gtm_ctl reconnect) or failure (link lost).\n\
         # TYPE {name} counter"
    );
    for (i, w) in workers.iter().enumerate() {
        let _ = writeln!(out, "{name}{{worker=\"{i}\",cause=\"order\"}} {}", load(&w.reconnect_orders));
        let _ = writeln!(out, "{name}{{worker=\"{i}\",cause=\"failure\"}} {}", load(&w.link_failures));
    }

    let name = "gtm_proxy_refused_connections_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections turned away before their first request, by reason.\n# TYPE {name} counter"
    );
    for why in Refused::ALL {
        let n = proxy.refused.get(why) + workers.iter().map(|w| w.refused.get(why)).sum::<u64>();
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", why.label());
    }

    let name = "gtm_proxy_build_info";
    let _ = writeln!(
        out,
        "# HELP {name} This gtm_proxy's version and the GTM protocol it speaks (Postgres-XL 10); always 1.\n\
         # TYPE {name} gauge\n{name}{{version=\"{VERSION}\",protocol=\"XL10\"}} 1"
    );

    let trips: Vec<latency::Snapshot> = workers.iter().map(|w| w.round_trip.snapshot()).collect();
    latency::write_prometheus(&mut out, &trips);
    let sizes: Vec<BatchSizes> =
        workers.iter().map(|w| w.batch_sizes.lock().map(|s| s.clone()).unwrap_or_default()).collect();
    BatchSizes::write_prometheus(&mut out, &sizes);
    process::write_prometheus(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let w = vec![Arc::new(WorkerStats::default())];
        let p = ProxyStats::default();
        w[0].backends.store(3, Ordering::Relaxed);
        let ok = String::from_utf8(answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &w, &p)).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("gtm_proxy_backends{worker=\"0\"} 3\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        let nf = String::from_utf8(answer(b"POST /metrics HTTP/1.1\r\n\r\n", &w, &p)).unwrap();
        assert!(nf.starts_with("HTTP/1.1 404 "), "{nf}");
        let big = vec![b'a'; MAX_REQUEST + 1];
        assert!(String::from_utf8(answer(&big, &w, &p)).unwrap().starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn head_end() {
        assert!(!head_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"));
        assert!(head_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_complete(b"GET /metrics HTTP/1.0\n\n"));
    }

    #[test]
    fn rendered_text_is_valid_exposition_with_every_family() {
        let w = vec![Arc::new(WorkerStats::default()), Arc::new(WorkerStats::default())];
        let p = ProxyStats::default();
        w[0].round_trip.observe(Duration::from_micros(300));
        w[0].round_trip.observe(Duration::from_millis(40));
        w[1].round_trip.observe(Duration::from_secs(30));
        w[0].link_failures.fetch_add(2, Ordering::Relaxed);
        w[1].reconnect_orders.fetch_add(1, Ordering::Relaxed);
        w[1].hold_timeouts.fetch_add(5, Ordering::Relaxed);
        p.refused.count(Refused::MaxBackends);
        w[0].refused.count(Refused::StartupTimeout);
        w[1].refused.count(Refused::StartupTimeout);
        let text = render(&w, &p);
        if let Err(e) = exposition::check(&text) {
            panic!("{e}\n{text}");
        }
        let value = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        for why in Refused::ALL {
            assert!(value(&format!("gtm_proxy_refused_connections_total{{reason=\"{}\"}} ", why.label())).is_some());
        }
        assert_eq!(value("gtm_proxy_refused_connections_total{reason=\"max_backends\"} "), Some("1"));
        assert_eq!(value("gtm_proxy_refused_connections_total{reason=\"startup_timeout\"} "), Some("2"));
        assert_eq!(value("gtm_proxy_refused_connections_total{reason=\"access\"} "), Some("0"));
        assert_eq!(value("gtm_proxy_gtm_reconnects_total{worker=\"0\",cause=\"failure\"} "), Some("2"));
        assert_eq!(value("gtm_proxy_gtm_reconnects_total{worker=\"1\",cause=\"order\"} "), Some("1"));
        assert_eq!(value("gtm_proxy_hold_timeouts_total{worker=\"1\"} "), Some("5"));
        assert_eq!(value("gtm_proxy_gtm_round_trip_seconds_count{worker=\"0\"} "), Some("2"));
        assert_eq!(value("gtm_proxy_gtm_round_trip_seconds_bucket{worker=\"1\",le=\"10\"} "), Some("0"));
        assert_eq!(value("gtm_proxy_gtm_round_trip_seconds_bucket{worker=\"1\",le=\"+Inf\"} "), Some("1"));
        let info = format!("gtm_proxy_build_info{{version=\"{}\",protocol=\"XL10\"}} ", env!("CARGO_PKG_VERSION"));
        assert_eq!(value(&info), Some("1"));
        for family in ["gtm_proxy_replays_total", "gtm_proxy_outcome_unknown_total", "gtm_proxy_multi_size"] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
    }
}
