//! The standard `process_*` metrics, read from `/proc/self` at each scrape.
//! The parsing is pure and tested on sample texts; a file that cannot be
//! read or parsed leaves its metrics out of the scrape instead of failing
//! it (no `/proc`, another kernel).

use std::fmt::Write as _;

/// What `/proc/self/stat` says, in the units of the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub cpu_seconds: f64,
    pub virtual_bytes: u64,
    pub resident_bytes: u64,
    /// Clock ticks after boot at which the process started.
    pub start_ticks: u64,
}

/// Parse `/proc/self/stat`: fields after the command name (which is in
/// parentheses and may contain spaces and parentheses itself), numbered as
/// in proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24 (pages).
pub fn parse_stat(text: &str, ticks_per_second: u64, page_size: u64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if ticks_per_second == 0 {
        return None;
    }
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks_per_second as f64,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_size),
        start_ticks: field(22)?,
    })
}

/// The soft limit of "Max open files" in `/proc/self/limits`; None when
/// unlimited or absent.
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The boot time (`btime`, Unix seconds) in `/proc/stat`.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a system setting; any name is allowed.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// Append whichever process metrics this system can give.
pub fn write_prometheus(out: &mut String) {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The count includes the descriptor reading the directory itself.
        let n = dir.count().saturating_sub(1);
        metric(out, "process_open_fds", "gauge", "Number of open file descriptors.", n);
    }
    if let Some(n) = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(parse_max_fds) {
        metric(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.", n);
    }
    let (Some(ticks), Some(page)) = (sysconf(libc::_SC_CLK_TCK), sysconf(libc::_SC_PAGESIZE)) else { return };
    let Some(st) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|t| parse_stat(&t, ticks, page)) else {
        return;
    };
    metric(
        out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        st.cpu_seconds,
    );
    metric(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", st.virtual_bytes);
    metric(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", st.resident_bytes);
    if let Some(boot) = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_boot_time) {
        let start = boot as f64 + st.start_ticks as f64 / ticks as f64;
        metric(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (gtm_proxy (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
        250 150 0 0 20 0 5 0 123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields() {
        let s = parse_stat(STAT, 100, 4096).expect("parsed");
        assert_eq!(s.cpu_seconds, 4.0);
        assert_eq!(s.virtual_bytes, 104_857_600);
        assert_eq!(s.resident_bytes, 2560 * 4096);
        assert_eq!(s.start_ticks, 123_456);
        assert_eq!(parse_stat("4242 (x) S 1 2", 100, 4096), None, "too short");
        assert_eq!(parse_stat("no parenthesis", 100, 4096), None);
        assert_eq!(parse_stat(STAT, 0, 4096), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max cpu time              unlimited            unlimited            seconds   \n\
            Max open files            65536                524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(65536));
        assert_eq!(parse_max_fds("Max open files            unlimited            unlimited            files\n"), None);
        assert_eq!(parse_max_fds(""), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1764630000\nprocesses 5\n"), Some(1_764_630_000));
        assert_eq!(parse_boot_time("cpu  1 2 3\n"), None);
    }

    #[test]
    fn this_process_on_linux() {
        let mut out = String::new();
        write_prometheus(&mut out);
        if std::path::Path::new("/proc/self/stat").exists() {
            let fds = out.lines().find_map(|l| l.strip_prefix("process_open_fds ")).expect("open fds");
            assert!(fds.parse::<u64>().expect("number") > 0, "{out}");
            assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
            assert!(out.contains("\nprocess_start_time_seconds "), "{out}");
        }
    }
}
