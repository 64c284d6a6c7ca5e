//! The proxy's log: Postgres-XL's severity levels carried by the `log` crate, one line
//! format, a log file that SIGHUP reopens, and a rate limiter for messages a peer can
//! trigger.
//!
//! # Levels
//!
//! XL has twelve levels ([`LogLevel`]); `log` has five. Plain `log` macros keep working and
//! mean: `error!` ERROR, `warn!` WARNING, `info!` INFO, `debug!` DEBUG1, `trace!` DEBUG2.
//! Every XL level is reachable with [`xlog!`](crate::xlog): `xlog!(LOG, "...")`,
//! `xlog!(NOTICE, ...)`, `xlog!(FATAL, ...)`. The macro sends the record with the target
//! `xl.LEVEL` (which names the XL level) and a `log` level chosen so that `log`'s global
//! filter never drops a record the XL rule would show ([`LogLevel::carrier`]).
//!
//! `log_min_messages` follows XL's server-log rule: a LOG message is shown unless the
//! minimum is FATAL or PANIC, and a minimum of LOG shows only LOG, FATAL and PANIC. That is
//! the order of [`LogLevel`]'s variants, in which LOG sits between ERROR and FATAL.
//!
//! # Lines
//!
//! `2026-12-02 01:03:34.123 UTC [4242] worker 0 LOG:  message`: UTC time to the
//! millisecond, the process id, the thread (`main`, `worker N`, `signals`) and XL's severity
//! name (DEBUG1..DEBUG5 print as `DEBUG`). Messages about one backend name it themselves.
//!
//! # Reopening
//!
//! [`reopen`] closes the log file and opens its path again (creating it), so that after
//! `mv gtm_proxy.log gtm_proxy.log.1` and a SIGHUP the proxy writes to a fresh file, as
//! logrotate's `create` mode expects.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Log with an XL severity: `xlog!(LOG, "reconnected to {addr}")`. Levels: DEBUG5..DEBUG1,
/// INFO, NOTICE, WARNING, ERROR, LOG, FATAL, PANIC.
#[macro_export]
macro_rules! xlog {
    (DEBUG5, $($arg:tt)+) => { $crate::__xlog!(Debug5, "xl.DEBUG5", $($arg)+) };
    (DEBUG4, $($arg:tt)+) => { $crate::__xlog!(Debug4, "xl.DEBUG4", $($arg)+) };
    (DEBUG3, $($arg:tt)+) => { $crate::__xlog!(Debug3, "xl.DEBUG3", $($arg)+) };
    (DEBUG2, $($arg:tt)+) => { $crate::__xlog!(Debug2, "xl.DEBUG2", $($arg)+) };
    (DEBUG1, $($arg:tt)+) => { $crate::__xlog!(Debug1, "xl.DEBUG1", $($arg)+) };
    (INFO, $($arg:tt)+) => { $crate::__xlog!(Info, "xl.INFO", $($arg)+) };
    (NOTICE, $($arg:tt)+) => { $crate::__xlog!(Notice, "xl.NOTICE", $($arg)+) };
    (WARNING, $($arg:tt)+) => { $crate::__xlog!(Warning, "xl.WARNING", $($arg)+) };
    (ERROR, $($arg:tt)+) => { $crate::__xlog!(Error, "xl.ERROR", $($arg)+) };
    (LOG, $($arg:tt)+) => { $crate::__xlog!(Log, "xl.LOG", $($arg)+) };
    (FATAL, $($arg:tt)+) => { $crate::__xlog!(Fatal, "xl.FATAL", $($arg)+) };
    (PANIC, $($arg:tt)+) => { $crate::__xlog!(Panic, "xl.PANIC", $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __xlog {
    ($variant:ident, $target:literal, $($arg:tt)+) => {
        ::log::log!(target: $target, $crate::logging::LogLevel::$variant.carrier(), $($arg)+)
    };
}

/// Prefix of the targets [`xlog!`](crate::xlog) uses.
const XL_TARGET_PREFIX: &str = "xl.";

/// Postgres-XL's severity levels, in the order `log_min_messages` compares them for the
/// server log (LOG ranks between ERROR and FATAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LogLevel {
    Debug5,
    Debug4,
    Debug3,
    Debug2,
    Debug1,
    Info,
    Notice,
    Warning,
    Error,
    Log,
    Fatal,
    Panic,
}

const ALL_LEVELS: [LogLevel; 12] = [
    LogLevel::Debug5,
    LogLevel::Debug4,
    LogLevel::Debug3,
    LogLevel::Debug2,
    LogLevel::Debug1,
    LogLevel::Info,
    LogLevel::Notice,
    LogLevel::Warning,
    LogLevel::Error,
    LogLevel::Log,
    LogLevel::Fatal,
    LogLevel::Panic,
];

impl LogLevel {
    /// Is a message at `self` written when `log_min_messages` is `min`?
    pub fn shows_at(self, min: LogLevel) -> bool {
        self >= min
    }

    /// The `log` level that carries a message of this severity: DEBUG5..DEBUG2 Trace,
    /// DEBUG1 Debug, INFO and NOTICE Info, WARNING Warn, ERROR, LOG, FATAL and PANIC Error.
    pub fn carrier(self) -> log::Level {
        match self {
            LogLevel::Debug5 | LogLevel::Debug4 | LogLevel::Debug3 | LogLevel::Debug2 => log::Level::Trace,
            LogLevel::Debug1 => log::Level::Debug,
            LogLevel::Info | LogLevel::Notice => log::Level::Info,
            LogLevel::Warning => log::Level::Warn,
            LogLevel::Error | LogLevel::Log | LogLevel::Fatal | LogLevel::Panic => log::Level::Error,
        }
    }

    /// `log`'s global filter for `log_min_messages = self`: the most verbose carrier of
    /// any level shown, so that `log` drops early what would never be written.
    pub fn to_level_filter(self) -> log::LevelFilter {
        ALL_LEVELS
            .iter()
            .filter(|l| l.shows_at(self))
            .map(|l| l.carrier().to_level_filter())
            .max()
            .unwrap_or(log::LevelFilter::Error)
    }

    /// The severity of a `log` record: the `xl.LEVEL` target when [`xlog!`](crate::xlog)
    /// sent it, else the plain mapping (Error ERROR, Warn WARNING, Info INFO, Debug
    /// DEBUG1, Trace DEBUG2).
    pub fn of_record(target: &str, level: log::Level) -> LogLevel {
        if let Some(name) = target.strip_prefix(XL_TARGET_PREFIX) {
            if let Ok(l) = name.parse() {
                return l;
            }
        }
        match level {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warning,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug1,
            log::Level::Trace => LogLevel::Debug2,
        }
    }

    /// The upper-case PostgreSQL name (`"WARNING"`, `"DEBUG3"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Debug5 => "DEBUG5",
            LogLevel::Debug4 => "DEBUG4",
            LogLevel::Debug3 => "DEBUG3",
            LogLevel::Debug2 => "DEBUG2",
            LogLevel::Debug1 => "DEBUG1",
            LogLevel::Info => "INFO",
            LogLevel::Notice => "NOTICE",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
            LogLevel::Log => "LOG",
            LogLevel::Fatal => "FATAL",
            LogLevel::Panic => "PANIC",
        }
    }

    /// The name printed in log lines: as [`LogLevel::as_str`], but `DEBUG` for every
    /// debug level, as XL prints them.
    pub fn label(&self) -> &'static str {
        if *self <= LogLevel::Debug1 {
            "DEBUG"
        } else {
            self.as_str()
        }
    }

    fn from_u8(v: u8) -> LogLevel {
        ALL_LEVELS.get(usize::from(v)).copied().unwrap_or(LogLevel::Warning)
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `log_min_messages` value that is not a level name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown log level \"{0}\" (expected DEBUG5..DEBUG1, INFO, NOTICE, WARNING, ERROR, LOG, FATAL or PANIC)")]
pub struct ParseLogLevelError(pub String);

impl FromStr for LogLevel {
    type Err = ParseLogLevelError;

    /// Case-insensitive; `DEBUG` is accepted as PostgreSQL's alias for `DEBUG2`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("debug") {
            return Ok(LogLevel::Debug2);
        }
        ALL_LEVELS
            .iter()
            .copied()
            .find(|l| l.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| ParseLogLevelError(s.to_string()))
    }
}

// ----- the logger -----------------------------------------------------------------

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    /// A file, opened for appending (created if missing) and reopened by [`reopen`].
    File(PathBuf),
}

impl Destination {
    /// `log_file` as XL reads it: `-` or `stderr` for standard error, else a path
    /// relative to the data directory unless absolute.
    pub fn from_setting(data_dir: &Path, log_file: &str) -> Destination {
        if log_file == "-" || log_file == "stderr" {
            Destination::Stderr
        } else {
            Destination::File(data_dir.join(log_file))
        }
    }
}

/// Dropped from thread names in the prefix (`gtm_proxy worker 0` prints `worker 0`).
const THREAD_NAME_PREFIX: &str = "gtm_proxy ";

struct Logger {
    min: AtomicU8,
    dest: Destination,
    file: Mutex<Option<File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Install the proxy's logger. Fails if the log file cannot be opened or a logger is
/// already installed.
pub fn init(dest: Destination, min: LogLevel) -> io::Result<()> {
    let file = match &dest {
        Destination::File(p) => Some(open_append(p)?),
        Destination::Stderr => None,
    };
    let logger = Logger { min: AtomicU8::new(min as u8), dest, file: Mutex::new(file) };
    if LOGGER.set(logger).is_err() {
        return Err(io::Error::other("logger already installed"));
    }
    let installed: &'static Logger = LOGGER.get().ok_or_else(|| io::Error::other("logger missing"))?;
    log::set_logger(installed).map_err(|e| io::Error::other(e.to_string()))?;
    log::set_max_level(min.to_level_filter());
    Ok(())
}

/// Change `log_min_messages` of the installed logger (SIGHUP).
pub fn set_min_level(min: LogLevel) {
    if let Some(l) = LOGGER.get() {
        l.min.store(min as u8, Ordering::Relaxed);
        log::set_max_level(min.to_level_filter());
    }
}

/// Close the log file and open its path again (after logrotate moved it). A no-op when
/// logging to stderr or before [`init`]. On failure the old file is kept.
pub fn reopen() -> io::Result<()> {
    let Some(l) = LOGGER.get() else { return Ok(()) };
    let Destination::File(path) = &l.dest else { return Ok(()) };
    let fresh = open_append(path)?;
    let mut guard = l.file.lock().unwrap_or_else(|p| p.into_inner());
    *guard = Some(fresh);
    Ok(())
}

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        let min = LogLevel::from_u8(self.min.load(Ordering::Relaxed));
        LogLevel::of_record(meta.target(), meta.level()).shows_at(min)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = LogLevel::of_record(record.target(), record.level());
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        let name = name.strip_prefix(THREAD_NAME_PREFIX).unwrap_or(name);
        let line = format_line(SystemTime::now(), std::process::id(), name, level, record.args());
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // Nowhere to report a failed log write.
        let _ = match guard.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => io::stderr().write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match guard.as_mut() {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        };
    }
}

/// One log line, newline included: `YYYY-MM-DD HH:MM:SS.mmm UTC [PID] THREAD LEVEL:  MSG`.
pub fn format_line(at: SystemTime, pid: u32, thread: &str, level: LogLevel, msg: &fmt::Arguments) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_date(secs / 86_400);
    let tod = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC [{pid}] {thread} {}:  {msg}\n",
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        since.subsec_millis(),
        level.label()
    )
}

/// Year, month (1..=12) and day (1..=31) of a count of days since 1970-01-01.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let mut year = 1970;
    let mut left = days;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if left < len {
            break;
        }
        left -= len;
        year += 1;
    }
    let feb = if is_leap(year) { 29 } else { 28 };
    let months = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for len in months {
        if left < len {
            break;
        }
        left -= len;
        month += 1;
    }
    (year, month, left + 1)
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

// ----- rate limiting --------------------------------------------------------------

/// Limits the messages one connection can cause: at most `burst` per `window`; the rest
/// are counted and reported with the next message let through (or by [`RateLimit::finish`]).
///
/// ```
/// # use gtmproxy::logging::RateLimit;
/// # use std::time::{Duration, Instant};
/// let mut lim = RateLimit::new(2, Duration::from_secs(10));
/// let t = Instant::now();
/// assert!(lim.check(t).is_some());
/// assert!(lim.check(t).is_some());
/// assert!(lim.check(t).is_none()); // suppressed, counted
/// let next = lim.check(t + Duration::from_secs(10)).unwrap();
/// assert_eq!(next.to_string(), " (1 similar message suppressed)");
/// ```
#[derive(Debug, Clone)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// Messages suppressed before the one being let through; displays as
/// `" (N similar messages suppressed)"`, or as nothing when N is 0, to append to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => f.write_str(" (1 similar message suppressed)"),
            n => write!(f, " ({n} similar messages suppressed)"),
        }
    }
}

impl RateLimit {
    /// At most `burst` messages (at least 1) in each `window`.
    pub fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit { burst: burst.max(1), window, window_start: None, used: 0, suppressed: 0 }
    }

    /// One message wants out at `now`: `Some` to log it (with the count suppressed since
    /// the last one let through), `None` to drop it.
    pub fn check(&mut self, now: Instant) -> Option<Suppressed> {
        let expired = match self.window_start {
            None => true,
            Some(s) => now.saturating_duration_since(s) >= self.window,
        };
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(Suppressed(std::mem::take(&mut self.suppressed)))
    }

    /// Messages suppressed and not yet reported (for a summary when the connection ends);
    /// resets the count.
    pub fn finish(&mut self) -> Option<Suppressed> {
        let n = std::mem::take(&mut self.suppressed);
        (n > 0).then_some(Suppressed(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XL 10's numeric severities (src/include/gtm/elog.h) and its server-log rule,
    /// restated here to check the enum order against them.
    fn xl_code(l: LogLevel) -> i32 {
        match l {
            LogLevel::Debug5 => 10,
            LogLevel::Debug4 => 11,
            LogLevel::Debug3 => 12,
            LogLevel::Debug2 => 13,
            LogLevel::Debug1 => 14,
            LogLevel::Log => 15,
            LogLevel::Info => 17,
            LogLevel::Notice => 18,
            LogLevel::Warning => 19,
            LogLevel::Error => 20,
            LogLevel::Fatal => 22,
            LogLevel::Panic => 23,
        }
    }

    fn xl_rule(msg: i32, min: i32) -> bool {
        const LOG: i32 = 15;
        const ERROR: i32 = 20;
        const FATAL: i32 = 22;
        if msg == LOG {
            min == LOG || min <= ERROR
        } else if min == LOG {
            msg >= FATAL
        } else {
            msg >= min
        }
    }

    #[test]
    fn ordering_matches_xl_server_log_rule() {
        for msg in ALL_LEVELS {
            for min in ALL_LEVELS {
                assert_eq!(msg.shows_at(min), xl_rule(xl_code(msg), xl_code(min)), "{msg} at min {min}");
            }
        }
        assert!(LogLevel::Log.shows_at(LogLevel::Error));
        assert!(LogLevel::Log.shows_at(LogLevel::Info));
        assert!(!LogLevel::Log.shows_at(LogLevel::Fatal));
        assert!(!LogLevel::Error.shows_at(LogLevel::Log));
        assert!(!LogLevel::Info.shows_at(LogLevel::Log));
    }

    #[test]
    fn carrier_passes_log_global_filter() {
        // Whatever XL would show must get through `log`'s max level.
        for msg in ALL_LEVELS {
            for min in ALL_LEVELS {
                if msg.shows_at(min) {
                    assert!(msg.carrier() <= min.to_level_filter(), "{msg} at min {min}");
                }
            }
        }
        assert_eq!(LogLevel::Log.to_level_filter(), log::LevelFilter::Error);
        assert_eq!(LogLevel::Warning.to_level_filter(), log::LevelFilter::Warn);
        assert_eq!(LogLevel::Notice.to_level_filter(), log::LevelFilter::Info);
        assert_eq!(LogLevel::Debug1.to_level_filter(), log::LevelFilter::Debug);
        assert_eq!(LogLevel::Debug5.to_level_filter(), log::LevelFilter::Trace);
    }

    #[test]
    fn record_levels() {
        assert_eq!(LogLevel::of_record("gtmproxy::proxy", log::Level::Warn), LogLevel::Warning);
        assert_eq!(LogLevel::of_record("x", log::Level::Error), LogLevel::Error);
        assert_eq!(LogLevel::of_record("x", log::Level::Info), LogLevel::Info);
        assert_eq!(LogLevel::of_record("x", log::Level::Debug), LogLevel::Debug1);
        assert_eq!(LogLevel::of_record("x", log::Level::Trace), LogLevel::Debug2);
        for l in ALL_LEVELS {
            let target = format!("{XL_TARGET_PREFIX}{}", l.as_str());
            assert_eq!(LogLevel::of_record(&target, l.carrier()), l);
        }
        // A malformed xl target falls back to the carrier.
        assert_eq!(LogLevel::of_record("xl.LOUD", log::Level::Warn), LogLevel::Warning);
    }

    #[test]
    fn names() {
        for l in ALL_LEVELS {
            assert_eq!(l.as_str().parse::<LogLevel>(), Ok(l));
            assert_eq!(l.as_str().to_ascii_lowercase().parse::<LogLevel>(), Ok(l));
            assert_eq!(LogLevel::from_u8(l as u8), l);
        }
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug2));
        assert!("verbose".parse::<LogLevel>().is_err());
        assert_eq!(LogLevel::Debug3.label(), "DEBUG");
        assert_eq!(LogLevel::Debug1.label(), "DEBUG");
        assert_eq!(LogLevel::Warning.label(), "WARNING");
        assert_eq!(LogLevel::Log.label(), "LOG");
    }

    #[test]
    fn line_format() {
        // 2026-12-02 01:03:34.123 UTC
        let at = UNIX_EPOCH + Duration::from_millis(1_796_173_414_123);
        let line = format_line(at, 42, "worker 1", LogLevel::Debug4, &format_args!("x {}", 5));
        assert_eq!(line, "2026-12-02 01:03:34.123 UTC [42] worker 1 DEBUG:  x 5\n");
        let line = format_line(UNIX_EPOCH, 1, "main", LogLevel::Log, &format_args!("y"));
        assert_eq!(line, "1970-01-01 00:00:00.000 UTC [1] main LOG:  y\n");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(31), (1970, 2, 1));
        assert_eq!(civil_date(59), (1970, 3, 1));
        // 2000-02-29 is day 11016; 2000 is a leap year, 2100 is not.
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(11_017), (2000, 3, 1));
        assert_eq!(civil_date(47_541), (2100, 3, 1));
        assert_eq!(civil_date(20_789), (2026, 12, 2));
    }

    #[test]
    fn rate_limit_burst_then_suppress() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut lim = RateLimit::new(3, w);
        for _ in 0..3 {
            assert_eq!(lim.check(t0), Some(Suppressed(0)));
        }
        for i in 1..=5u64 {
            assert_eq!(lim.check(t0 + Duration::from_secs(i)), None);
        }
        // The next window lets messages through again and reports the 5 dropped.
        let s = lim.check(t0 + w).expect("new window");
        assert_eq!(s, Suppressed(5));
        assert_eq!(s.to_string(), " (5 similar messages suppressed)");
        assert_eq!(lim.check(t0 + w), Some(Suppressed(0)));
        assert_eq!(lim.finish(), None);
    }

    #[test]
    fn rate_limit_finish_reports_leftovers() {
        let t0 = Instant::now();
        let mut lim = RateLimit::new(1, Duration::from_secs(60));
        assert!(lim.check(t0).is_some());
        assert!(lim.check(t0).is_none());
        assert!(lim.check(t0).is_none());
        assert_eq!(lim.finish(), Some(Suppressed(2)));
        assert_eq!(lim.finish(), None);
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(1).to_string(), " (1 similar message suppressed)");
        // A burst of 0 still lets one message per window through.
        let mut lim = RateLimit::new(0, Duration::from_secs(1));
        assert!(lim.check(t0).is_some());
        assert!(lim.check(t0).is_none());
    }

    #[test]
    fn rate_limit_time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut lim = RateLimit::new(1, Duration::from_secs(10));
        assert!(lim.check(t0).is_some());
        assert!(lim.check(t0 - Duration::from_secs(50)).is_none());
        assert_eq!(lim.check(t0 + Duration::from_secs(10)), Some(Suppressed(1)));
    }
}
