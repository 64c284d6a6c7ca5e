//! `gtm_proxy status -D DIR`: a human summary of the proxy running in a data directory,
//! from its pid and port files, its configuration and (when `metrics_port` is set) its
//! Prometheus endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::Config;

/// How long the metrics endpoint may take to connect and answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest metrics answer read.
const MAX_METRICS: u64 = 1 << 20;

/// Per-series sums over the workers, plus the worker count of each series.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    sums: BTreeMap<String, f64>,
    counts: BTreeMap<String, usize>,
}

/// The samples of Prometheus text: `(name, labels, value)` for each
/// `name{labels} value` line, labels without their braces (empty when there
/// are none); comments and lines without a numeric value are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let v = value.parse::<f64>().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        Some((name, labels, v))
    })
}

/// The value of label `key` in a sample's labels (as [`samples`] gives them).
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
}

impl Figures {
    /// Parse Prometheus text (`name{labels} value` lines; comments ignored).
    pub fn parse(text: &str) -> Figures {
        let mut f = Figures::default();
        for (name, _, v) in samples(text) {
            *f.sums.entry(name.to_string()).or_default() += v;
            *f.counts.entry(name.to_string()).or_default() += 1;
        }
        f
    }

    /// Sum of a series over the workers.
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.sums.get(name).copied()
    }

    /// Number of workers reporting a series.
    pub fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }
}

/// `GET /metrics` from `addr`, the body as text.
pub fn fetch_metrics(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, METRICS_TIMEOUT)?;
    s.set_read_timeout(Some(METRICS_TIMEOUT))?;
    s.set_write_timeout(Some(METRICS_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gtm_proxy\r\nConnection: close\r\n\r\n")?;
    let mut bytes = Vec::new();
    s.take(MAX_METRICS).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        Some((head, _)) => Err(io::Error::other(format!("answered {}", head.lines().next().unwrap_or("")))),
        None => Err(io::Error::other("no HTTP answer")),
    }
}

/// Where the metrics endpoint of `cfg` is reached from this host, if it is on.
pub fn metrics_addr(cfg: &Config) -> Option<SocketAddr> {
    if cfg.metrics_port == 0 {
        return None;
    }
    let host = cfg.listen_addresses.split(',').next().map(str::trim).unwrap_or("127.0.0.1");
    let host = if host == "*" || host == "0.0.0.0" { "127.0.0.1" } else { host };
    (host, cfg.metrics_port).to_socket_addrs().ok()?.next()
}

/// The summary text. `listening` is the content of `gtm_proxy.port`; `figures` the live
/// metrics, or why there are none.
pub fn render(pid: i32, cfg: &Config, listening: Option<&str>, figures: Result<&Figures, String>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "gtm_proxy: server is running (PID: {pid}) in {}", cfg.data_dir.display());
    let _ = writeln!(
        out,
        "listening on {}; nodename \"{}\"; GTM {}:{} (configured); {} workers",
        listening.unwrap_or("(unknown: no gtm_proxy.port)"),
        cfg.nodename,
        cfg.gtm_host,
        cfg.gtm_port,
        cfg.worker_threads
    );
    let f = match figures {
        Ok(f) => f,
        Err(why) => {
            let _ = writeln!(out, "no live figures: {why}");
            return out;
        }
    };
    let n = |name: &str| f.sum(name).map_or_else(|| "?".to_string(), |v| format!("{v}"));
    let _ = writeln!(out, "GTM links up: {} of {}", n("gtm_proxy_gtm_link_up"), f.count("gtm_proxy_gtm_link_up"));
    let _ = writeln!(
        out,
        "backends: {}; requests: {}; errors sent: {}; GTM link failures: {}",
        n("gtm_proxy_backends"),
        n("gtm_proxy_requests_total"),
        n("gtm_proxy_errors_sent_total"),
        n("gtm_proxy_gtm_link_failures_total")
    );
    let _ = writeln!(
        out,
        "held requests: {}; in flight: {}; tracked GXIDs: {}",
        n("gtm_proxy_queued_requests"),
        n("gtm_proxy_in_flight_requests"),
        n("gtm_proxy_ledger_gxids")
    );
    let _ = writeln!(
        out,
        "replayed: {}; outcome unknown: {}; hold timeouts: {}; stale GXIDs refused: {}; refused connections: {}",
        n("gtm_proxy_replays_total"),
        n("gtm_proxy_outcome_unknown_total"),
        n("gtm_proxy_hold_timeouts_total"),
        n("gtm_proxy_stale_gxid_refusals_total"),
        n("gtm_proxy_refused_connections_total")
    );
    let trips = f.sum("gtm_proxy_gtm_round_trip_seconds_count").unwrap_or(0.0);
    if let Some(total) = f.sum("gtm_proxy_gtm_round_trip_seconds_sum").filter(|_| trips > 0.0) {
        let _ = writeln!(out, "GTM round trips: {trips}, mean {:.3} ms", total / trips * 1000.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP gtm_proxy_backends Connected backends.\n\
        # TYPE gtm_proxy_backends gauge\n\
        gtm_proxy_backends{worker=\"0\"} 3\n\
        gtm_proxy_backends{worker=\"1\"} 4\n\
        gtm_proxy_gtm_link_up{worker=\"0\"} 1\n\
        gtm_proxy_gtm_link_up{worker=\"1\"} 0\n\
        gtm_proxy_requests_total{worker=\"0\"} 100\n\
        garbage line\n\
        gtm_proxy_requests_total{worker=\"1\"} x\n\
        gtm_proxy_refused_connections_total{reason=\"access\"} 2\n\
        gtm_proxy_refused_connections_total{reason=\"max_backends\"} 3\n\
        gtm_proxy_gtm_round_trip_seconds_sum{worker=\"0\"} 0.3\n\
        gtm_proxy_gtm_round_trip_seconds_count{worker=\"0\"} 100\n\
        gtm_proxy_gtm_round_trip_seconds_sum{worker=\"1\"} 0.1\n\
        gtm_proxy_gtm_round_trip_seconds_count{worker=\"1\"} 100\n";

    #[test]
    fn parse_sums_per_series() {
        let f = Figures::parse(TEXT);
        assert_eq!(f.sum("gtm_proxy_backends"), Some(7.0));
        assert_eq!(f.count("gtm_proxy_backends"), 2);
        assert_eq!(f.sum("gtm_proxy_gtm_link_up"), Some(1.0));
        assert_eq!(f.sum("gtm_proxy_requests_total"), Some(100.0));
        assert_eq!(f.count("gtm_proxy_requests_total"), 1);
        assert_eq!(f.sum("missing"), None);
    }

    #[test]
    fn samples_and_labels() {
        let all: Vec<_> = samples(TEXT).collect();
        assert_eq!(all.len(), 11, "comments, garbage and non-numeric values skipped: {all:?}");
        assert_eq!(all[0], ("gtm_proxy_backends", "worker=\"0\"", 3.0));
        assert_eq!(samples("up 1\n").collect::<Vec<_>>(), vec![("up", "", 1.0)]);
        assert_eq!(label("worker=\"0\",type=\"begin\"", "type"), Some("begin"));
        assert_eq!(label("worker=\"0\",type=\"begin\"", "worker"), Some("0"));
        assert_eq!(label("worker=\"0\"", "type"), None);
        assert_eq!(label("subtype=\"x\"", "type"), None);
    }

    #[test]
    fn summary_text() {
        let mut cfg = Config::new("px", "gtm", 6668);
        cfg.data_dir = "/data/px".into();
        let f = Figures::parse(TEXT);
        let s = render(42, &cfg, Some("127.0.0.1:6666"), Ok(&f));
        assert!(s.starts_with("gtm_proxy: server is running (PID: 42) in /data/px\n"), "{s}");
        assert!(s.contains("listening on 127.0.0.1:6666; nodename \"px\"; GTM gtm:6668"), "{s}");
        assert!(s.contains("GTM links up: 1 of 2"), "{s}");
        assert!(s.contains("backends: 7; requests: 100; errors sent: ?"), "{s}");
        assert!(s.contains("hold timeouts: ?; stale GXIDs refused: ?; refused connections: 5\n"), "{s}");
        assert!(s.contains("GTM round trips: 200, mean 2.000 ms\n"), "{s}");
        let s = render(42, &cfg, None, Err("metrics_port is 0".into()));
        assert!(s.contains("(unknown: no gtm_proxy.port)") && s.contains("no live figures: metrics_port is 0"), "{s}");
    }

    #[test]
    fn metrics_address() {
        let mut cfg = Config::new("px", "gtm", 6668);
        assert_eq!(metrics_addr(&cfg), None);
        cfg.metrics_port = 9187;
        assert_eq!(metrics_addr(&cfg), Some("127.0.0.1:9187".parse().unwrap()));
        cfg.listen_addresses = "127.0.0.2, 10.0.0.1".into();
        assert_eq!(metrics_addr(&cfg), Some("127.0.0.2:9187".parse().unwrap()));
    }
}
