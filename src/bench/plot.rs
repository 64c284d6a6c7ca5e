//! `--plot FILE.svg`: throughput and p99 latency per 100 ms over the window
//! (with the scenario event marked), and the latency CDF of transactions.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunReport;
use super::stats::Latency;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 860;

/// Write the three panels to `path`.
pub fn write_svg(path: &Path, r: &RunReport, txn: &Latency) -> Result<(), String> {
    let tl = r.timeline.as_ref().ok_or("no timeline was kept")?;
    let bucket_s = tl.bucket_ms as f64 / 1000.0;
    let end_s = (tl.buckets.len() as f64 * bucket_s).max(bucket_s);
    let tps: Vec<(f64, f64)> = tl.buckets.iter().map(|b| (b.t_s, b.ok as f64 / bucket_s)).collect();
    let p99: Vec<(f64, f64)> = tl.buckets.iter().filter_map(|b| Some((b.t_s, b.p99_us? as f64 / 1000.0))).collect();
    let errs: Vec<(f64, f64)> = tl.buckets.iter().filter(|b| b.errors > 0).map(|b| (b.t_s, 0.0)).collect();
    let max_tps = tps.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let max_p99 = p99.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
    let event = tl.event.as_ref().map(|e| e.at_s);
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!("gtm_bench: {} backends → {} {}", r.load.backends, r.target.label, r.target.addr);
    let root = root.titled(&title, ("sans-serif", 18)).map_err(|e| err(&e))?;
    let panels = root.split_evenly((3, 1));

    let mut c = ChartBuilder::on(&panels[0])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("committed transactions per second (100 ms buckets; red: errors)", ("sans-serif", 14))
        .build_cartesian_2d(0.0..end_s, 0.0..max_tps)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("s")
        .y_desc("txn/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(tps, &BLUE)).map_err(|e| err(&e))?;
    c.draw_series(errs.iter().map(|&(t, _)| Rectangle::new([(t, 0.0), (t + bucket_s, max_tps * 0.03)], RED.filled())))
        .map_err(|e| err(&e))?;
    if let Some(at) = event {
        c.draw_series(LineSeries::new(vec![(at, 0.0), (at, max_tps)], BLACK.stroke_width(2))).map_err(|e| err(&e))?;
    }

    let mut c = ChartBuilder::on(&panels[1])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("p99 request latency per 100 ms (ms)", ("sans-serif", 14))
        .build_cartesian_2d(0.0..end_s, 0.0..max_p99)
        .map_err(|e| err(&e))?;
    let ms_decimals = if max_p99 >= 10.0 { 0 } else { 1 };
    c.configure_mesh()
        .x_desc("s")
        .y_desc("ms")
        .y_label_formatter(&|v| format!("{v:.ms_decimals$}"))
        .draw()
        .map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(p99, &MAGENTA)).map_err(|e| err(&e))?;
    if let Some(at) = event {
        c.draw_series(LineSeries::new(vec![(at, 0.0), (at, max_p99)], BLACK.stroke_width(2))).map_err(|e| err(&e))?;
    }

    let cdf = latency_cdf(txn);
    let (lo, hi) = match (cdf.first(), cdf.last()) {
        (Some(a), Some(b)) => (a.0.max(0.001), (b.0 * 1.2).max(a.0 * 2.0).max(0.01)),
        _ => (0.001, 1.0),
    };
    let mut c = ChartBuilder::on(&panels[2])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("transaction latency CDF (begin sent → commit answered), ms, log scale", ("sans-serif", 14))
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(|e| err(&e))?;
    c.configure_mesh().x_desc("ms").y_desc("fraction").draw().map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(cdf, &GREEN)).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// (latency ms, fraction at or below) points of a latency histogram.
pub fn latency_cdf(l: &Latency) -> Vec<(f64, f64)> {
    let qs = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0];
    if l.count() == 0 {
        return Vec::new();
    }
    qs.iter().map(|&q| (l.quantile_us(q) / 1000.0, q)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cdf_is_monotonic() {
        let mut l = Latency::new();
        for us in [10, 20, 30, 5000] {
            l.record(Duration::from_micros(us));
        }
        let c = latency_cdf(&l);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(c.last().unwrap().1, 1.0);
        assert!(latency_cdf(&Latency::new()).is_empty());
    }
}
