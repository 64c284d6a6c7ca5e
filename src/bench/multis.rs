//! Elements per `*_MULTI` the proxy under load sent during the measured
//! window: its `gtm_proxy_multi_size` histogram (sum and count per type,
//! summed over workers) read at the window's edges, and the difference.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

/// Sum and count of `gtm_proxy_multi_size` per MULTI type, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(pub BTreeMap<String, (f64, f64)>);

/// One MULTI type over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultiSize {
    /// MULTIs sent.
    pub multis: u64,
    /// Elements per MULTI, on average.
    pub mean: f64,
}

/// Per type (`begin`, `commit`, `rollback`, `snapshot`), only the types sent.
pub type MultiSizes = BTreeMap<String, MultiSize>;

impl Scrape {
    /// The histogram's `_sum` and `_count` lines of a Prometheus text page.
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for (name, labels, v) in crate::status::samples(text) {
            let is_sum = match name {
                "gtm_proxy_multi_size_sum" => true,
                "gtm_proxy_multi_size_count" => false,
                _ => continue,
            };
            let Some(kind) = crate::status::label(labels, "type") else { continue };
            let e = s.0.entry(kind.to_owned()).or_default();
            if is_sum {
                e.0 += v;
            } else {
                e.1 += v;
            }
        }
        s
    }

    /// Read the proxy's metrics endpoint now.
    pub fn fetch(addr: SocketAddr) -> std::io::Result<Scrape> {
        crate::status::fetch_metrics(addr).map(|t| Scrape::parse(&t))
    }

    /// What was sent between `self` (earlier) and `later`: per type with
    /// at least one MULTI.
    pub fn sizes_until(&self, later: &Scrape) -> MultiSizes {
        let mut out = MultiSizes::new();
        for (kind, &(sum, count)) in &later.0 {
            let (s0, c0) = self.0.get(kind).copied().unwrap_or_default();
            let (ds, dc) = (sum - s0, count - c0);
            if dc >= 1.0 {
                out.insert(kind.clone(), MultiSize { multis: dc as u64, mean: (ds / dc * 10.0).round() / 10.0 });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP gtm_proxy_multi_size Elements per *_MULTI request sent to the GTM.
# TYPE gtm_proxy_multi_size histogram
gtm_proxy_multi_size_bucket{worker=\"0\",type=\"begin\",le=\"1\"} 3
gtm_proxy_multi_size_sum{worker=\"0\",type=\"begin\"} 40
gtm_proxy_multi_size_count{worker=\"0\",type=\"begin\"} 10
gtm_proxy_multi_size_sum{worker=\"1\",type=\"begin\"} 60
gtm_proxy_multi_size_count{worker=\"1\",type=\"begin\"} 10
gtm_proxy_multi_size_sum{worker=\"0\",type=\"commit\"} 7
gtm_proxy_multi_size_count{worker=\"0\",type=\"commit\"} 7
gtm_proxy_multi_size_sum{worker=\"0\",type=\"rollback\"} 0
gtm_proxy_multi_size_count{worker=\"0\",type=\"rollback\"} 0
gtm_proxy_requests_total{type=\"begin\"} 99
gtm_proxy_multi_size_sum{worker=\"0\",type=\"snapshot\"} garbage
";

    #[test]
    fn sums_workers_per_type_and_skips_what_is_not_the_histogram() {
        let s = Scrape::parse(PAGE);
        assert_eq!(s.0.get("begin"), Some(&(100.0, 20.0)));
        assert_eq!(s.0.get("commit"), Some(&(7.0, 7.0)));
        assert_eq!(s.0.get("rollback"), Some(&(0.0, 0.0)));
        assert_eq!(s.0.get("snapshot"), None);
        assert_eq!(Scrape::parse("").0.len(), 0);
    }

    #[test]
    fn the_window_is_the_difference_and_empty_types_are_left_out() {
        let before = Scrape::parse(PAGE);
        let mut after = before.clone();
        after.0.insert("begin".into(), (100.0 + 300.0, 20.0 + 4.0));
        after.0.insert("snapshot".into(), (9.0, 2.0));
        let w = before.sizes_until(&after);
        assert_eq!(w.get("begin"), Some(&MultiSize { multis: 4, mean: 75.0 }));
        assert_eq!(w.get("snapshot"), Some(&MultiSize { multis: 2, mean: 4.5 }));
        assert_eq!(w.get("commit"), None, "no commit MULTI in the window");
        assert_eq!(w.get("rollback"), None);
        // From nothing (a proxy that started in the window).
        assert_eq!(Scrape::default().sizes_until(&before).get("commit"), Some(&MultiSize { multis: 7, mean: 1.0 }));
    }
}
