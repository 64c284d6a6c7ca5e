//! CPU-time readings of the bench itself and of the processes it watches.

use std::time::Duration;

/// User + system CPU time of this process.
pub fn self_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU time of process `pid`, from `/proc/PID/stat` (clock-tick
/// resolution, typically 10 ms). None if the process is gone.
pub fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat_cpu(&stat, clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime (field 14) + stime (field 15) of a `/proc/PID/stat` line. The
/// command name (field 2) is parenthesised and may contain spaces, so fields
/// are counted from the last ')'.
fn parse_proc_stat_cpu(stat: &str, ticks_per_s: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace(); // field 3 (state) onwards
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_micros(ticks.saturating_mul(1_000_000) / ticks_per_s.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields() {
        let line = "4242 (gtm proxy) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 123 0 0";
        assert_eq!(parse_proc_stat_cpu(line, 100), Some(Duration::from_millis(2870)));
        assert_eq!(parse_proc_stat_cpu("garbage", 100), None);
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(proc_cpu(std::process::id()).is_some());
        let _ = self_cpu();
    }
}
