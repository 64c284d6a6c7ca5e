//! Prometheus text-format metrics on `metrics_port` (0 = off).
//!
//! Served by its own small thread with blocking sockets: it only reads the
//! workers' atomic counters, so it can never slow a worker's event loop, and
//! a slow scraper only delays itself.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use super::coalesce::BatchSizes;
use super::worker::WorkerStats;

/// Bind `addr` and serve `GET /metrics` from a background thread.
pub fn spawn(addr: SocketAddr, workers: Vec<Arc<WorkerStats>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("gtm_proxy metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    if let Err(e) = serve(s, &workers) {
                        warn!("metrics request failed: {e}");
                    }
                }
                Err(e) => warn!("metrics accept failed: {e}"),
            }
        }
    })?;
    info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

fn serve(mut s: TcpStream, workers: &[Arc<WorkerStats>]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let first = req.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let (status, body) = if first.starts_with(b"GET /metrics ") || first.starts_with(b"GET / ") {
        ("200 OK", render(workers))
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}

/// The metrics text: one series per worker.
pub fn render(workers: &[Arc<WorkerStats>]) -> String {
    type Get = fn(&WorkerStats) -> u64;
    let series: [(&str, &str, &str, Get); 10] = [
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
    let sizes: Vec<BatchSizes> =
        workers.iter().map(|w| w.batch_sizes.lock().map(|s| s.clone()).unwrap_or_default()).collect();
    BatchSizes::write_prometheus(&mut out, &sizes);
    out
}
