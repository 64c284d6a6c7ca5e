//! Configuration: `gtm_proxy.conf` in the data directory plus command-line overrides.
//!
//! The file uses the PostgreSQL GUC syntax that Postgres-XL 10's `gtm_proxy` reads:
//!
//! ```text
//! # comment to end of line
//! name = value          # the '=' is optional: "name value" works too
//! name = 'quoted value' # '' inside quotes is a literal quote
//! ```
//!
//! Keys are case-insensitive; a key given twice takes its last value. Every XL 10 key is
//! accepted with its XL 10 default, the Postgres-XC 1.0 failover keys are accepted too
//! (XL 10 itself rejects them), and a few keys are extensions of this proxy (see
//! [`Config`]). Unlike XL 10, a value that is unknown, malformed or out of range is
//! reported with the file name, line number and key ([`ConfigError`]).
//!
//! Precedence: built-in default < file < command line ([`CliOverrides`]).
//! Values are read once at start-up.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE_NAME: &str = "gtm_proxy.conf";

/// Longest node name the GTM protocol can carry (`SP_NODE_NAME`, NUL-padded, 64 bytes).
pub const MAX_NODENAME_LEN: usize = 64;

/// Largest element count of one `*_MULTI` request the GTM can take (its fixed arrays).
pub const MAX_BATCH: usize = 16384;

/// Largest accepted duration, in seconds (the C `int` range the GUC code uses).
const MAX_DURATION_SECS: i128 = i32::MAX as i128;

/// Largest plain integer accepted for counts (the C `int` range).
const INT_MAX: i64 = i32::MAX as i64;

/// Bounds of `backend_output_limit`, in bytes.
const MIN_OUTPUT_LIMIT: i64 = 4096;
const MAX_OUTPUT_LIMIT: i64 = 1 << 30;

/// An invalid configuration, from the file or from the command line.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A key that neither XL 10, XC 1.0 nor this proxy knows.
    #[error("{file}:{line}: unrecognized configuration parameter \"{key}\"")]
    UnknownKey { file: String, line: usize, key: String },
    /// A value of the wrong shape (not a number, unknown unit, empty, too long...).
    #[error("{file}:{line}: invalid value for parameter \"{key}\": \"{value}\" ({reason})")]
    InvalidValue { file: String, line: usize, key: String, value: String, reason: String },
    /// A well-formed value outside the parameter's range.
    #[error("{file}:{line}: {value} is outside the valid range for parameter \"{key}\" ({min}{unit} .. {max}{unit})")]
    OutOfRange {
        file: String,
        line: usize,
        key: String,
        value: String,
        min: i64,
        max: i64,
        /// Unit of `min` and `max` (`""` or `"s"`).
        unit: &'static str,
    },
    /// A line that is not `name [=] value [# comment]`.
    #[error("{file}:{line}: syntax error{}: {detail}", key_context(.key))]
    Syntax {
        file: String,
        line: usize,
        /// The key of the line, when the error comes after it.
        key: Option<String>,
        detail: String,
    },
    /// A command-line option with an unacceptable value.
    #[error("command line option {option}: invalid value for parameter \"{key}\": \"{value}\" ({reason})")]
    InvalidOption { option: &'static str, key: &'static str, value: String, reason: String },
    /// A mandatory key set neither in the file nor on the command line.
    #[error("{file}: parameter \"{key}\" is required but not set (set it in the file or with {option})")]
    MissingRequired { file: String, key: &'static str, option: &'static str },
    /// The file exists but could not be read.
    #[error("could not read configuration file \"{}\": {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn key_context(key: &Option<String>) -> String {
    match key {
        Some(k) => format!(" in parameter \"{k}\""),
        None => String::new(),
    }
}

/// `log_min_messages` levels, in PostgreSQL's order for server logs (LOG ranks between
/// ERROR and FATAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

impl LogLevel {
    /// The `log` crate filter for this level: DEBUG5..DEBUG2 -> Trace, DEBUG1 -> Debug,
    /// INFO/NOTICE/LOG -> Info, WARNING -> Warn, ERROR/FATAL/PANIC -> Error.
    pub fn to_level_filter(&self) -> log::LevelFilter {
        match self {
            LogLevel::Debug5 | LogLevel::Debug4 | LogLevel::Debug3 | LogLevel::Debug2 => log::LevelFilter::Trace,
            LogLevel::Debug1 => log::LevelFilter::Debug,
            LogLevel::Info | LogLevel::Notice | LogLevel::Log => log::LevelFilter::Info,
            LogLevel::Warning => log::LevelFilter::Warn,
            LogLevel::Error | LogLevel::Fatal | LogLevel::Panic => log::LevelFilter::Error,
        }
    }

    /// The upper-case PostgreSQL name (`"WARNING"`).
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
        let level = match s.trim().to_ascii_lowercase().as_str() {
            "debug5" => LogLevel::Debug5,
            "debug4" => LogLevel::Debug4,
            "debug3" => LogLevel::Debug3,
            "debug2" | "debug" => LogLevel::Debug2,
            "debug1" => LogLevel::Debug1,
            "info" => LogLevel::Info,
            "notice" => LogLevel::Notice,
            "warning" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "log" => LogLevel::Log,
            "fatal" => LogLevel::Fatal,
            "panic" => LogLevel::Panic,
            _ => return Err(ParseLogLevelError(s.to_string())),
        };
        Ok(level)
    }
}

/// The complete, validated configuration.
///
/// XL 10 keys: `nodename`, `listen_addresses`, `port`, `gtm_host`, `gtm_port`,
/// `worker_threads`, `gtm_connect_retry_interval`, `keepalives_*`, `log_file`,
/// `log_min_messages`, `error_reporter`, `status_reader`, `data_dir` (and `config_file`,
/// parsed and ignored).
///
/// Postgres-XC 1.0 keys (rejected by XL 10, accepted here for failover tuning):
/// `gtm_connect_retry_idle`, `gtm_connect_retry_count`, `err_wait_idle`, `err_wait_count`,
/// `err_wait_interval`.
///
/// Extensions of this proxy: `hold_max_requests`, `hold_timeout`, `upstream_timeout`,
/// `batch_max`, `batch_hold`, `batch_in_flight`, `max_backends`, `backend_output_limit`,
/// `metrics_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Node name used for registration and in startup packets (required; may be empty;
    /// at most 64 bytes).
    pub nodename: String,
    /// Address to listen on: one host name / address, or `*` for all (default `*`).
    pub listen_addresses: String,
    /// Listen port (default 6666).
    pub port: u16,
    /// GTM host (required).
    pub gtm_host: String,
    /// GTM port (required).
    pub gtm_port: u16,
    /// Number of worker threads, each with its own GTM link (default 2, >= 1).
    pub worker_threads: usize,
    /// Sleep between reconnect attempts to the GTM (default 60 s).
    pub gtm_connect_retry_interval: Duration,
    /// XC 1.0: sleep before the first reconnect attempt (default 0).
    pub gtm_connect_retry_idle: Duration,
    /// XC 1.0: number of reconnect attempts (default 10000).
    pub gtm_connect_retry_count: u32,
    /// XC 1.0: first sleep of the "wait for gtm_ctl reconnect" stage (default 0).
    pub err_wait_idle: Duration,
    /// XC 1.0: number of further sleeps in that stage (default 0).
    pub err_wait_count: u32,
    /// XC 1.0: length of each further sleep (default 0).
    pub err_wait_interval: Duration,
    /// TCP keepalive idle time in seconds for accepted sockets (0 = OS default).
    pub keepalives_idle: u32,
    /// TCP keepalive probe interval in seconds (0 = OS default).
    pub keepalives_interval: u32,
    /// TCP keepalive probe count (0 = OS default).
    pub keepalives_count: u32,
    /// Log file, relative to the data directory unless absolute (default `gtm_proxy.log`).
    pub log_file: String,
    /// Minimum level written to the log (default WARNING).
    pub log_min_messages: LogLevel,
    /// Parsed for compatibility, unused.
    pub error_reporter: Option<String>,
    /// Parsed for compatibility, unused.
    pub status_reader: Option<String>,
    /// Data directory (command line `-D` wins over the file; default `.`).
    pub data_dir: PathBuf,
    /// Extension: most requests held while no GTM link is usable (default 100000).
    pub hold_max_requests: usize,
    /// Extension: how long a held request may wait for the GTM (default 30 s).
    pub hold_timeout: Duration,
    /// Extension: a GTM link silent this long while answers are owed is declared dead
    /// (default 10 s; zero = never).
    pub upstream_timeout: Duration,
    /// Extension: most elements in one `*_MULTI` request (default 1024, 1..=16384).
    pub batch_max: usize,
    /// Extension: longest a grouped request is held so that its MULTI grows behind the
    /// one in flight (default 2 ms; zero = send every round, full pipelining).
    pub batch_hold: Duration,
    /// Extension: MULTIs of one type in flight before new ones are held (default 1, 1..=1024).
    pub batch_in_flight: usize,
    /// Extension: most concurrent backend connections (default 20000).
    pub max_backends: usize,
    /// Extension: cap of one backend's unsent output, in bytes (default 1 MiB).
    pub backend_output_limit: usize,
    /// Extension: Prometheus metrics port, `GET /metrics` on the first listen address (default 0 = off).
    pub metrics_port: u16,
}

/// Values given on the command line; each `Some` wins over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `-D DIR`
    pub data_dir: Option<PathBuf>,
    /// `-h ADDR`
    pub listen_addresses: Option<String>,
    /// `-p PORT`
    pub port: Option<u16>,
    /// `-s HOST`
    pub gtm_host: Option<String>,
    /// `-t PORT`
    pub gtm_port: Option<u16>,
    /// `-i NAME`
    pub nodename: Option<String>,
    /// `-n N`
    pub worker_threads: Option<usize>,
    /// `-l FILE`
    pub log_file: Option<String>,
}

/// Command line of XL 10's `gtm_proxy`. `-h` is the listen address, so help is only
/// `--help` (or `-?`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Parser)]
#[command(name = "gtm_proxy", about = "GTM proxy for Postgres-XL 10", disable_help_flag = true)]
pub struct ProxyArgs {
    /// Data directory (holds gtm_proxy.conf, gtm_proxy.pid, gtm_proxy.log)
    #[arg(short = 'D', value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (listen_addresses)
    #[arg(short = 'h', value_name = "ADDR")]
    pub listen_addresses: Option<String>,
    /// Port to listen on (port)
    #[arg(short = 'p', value_name = "PORT")]
    pub port: Option<u16>,
    /// GTM host (gtm_host)
    #[arg(short = 's', value_name = "HOST")]
    pub gtm_host: Option<String>,
    /// GTM port (gtm_port)
    #[arg(short = 't', value_name = "PORT")]
    pub gtm_port: Option<u16>,
    /// Node name (nodename)
    #[arg(short = 'i', value_name = "NAME")]
    pub nodename: Option<String>,
    /// Number of worker threads (worker_threads)
    #[arg(short = 'n', value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Log file (log_file)
    #[arg(short = 'l', value_name = "FILE")]
    pub log_file: Option<String>,
    /// Print help
    #[arg(long = "help", short = '?', action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl ProxyArgs {
    /// The command-line values as overrides for [`Config::load`].
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            data_dir: self.data_dir.clone(),
            listen_addresses: self.listen_addresses.clone(),
            port: self.port,
            gtm_host: self.gtm_host.clone(),
            gtm_port: self.gtm_port,
            nodename: self.nodename.clone(),
            worker_threads: self.worker_threads,
            log_file: self.log_file.clone(),
        }
    }
}

impl Config {
    /// A configuration with every default and the three required values.
    pub fn new(nodename: &str, gtm_host: &str, gtm_port: u16) -> Config {
        Config {
            nodename: nodename.to_string(),
            listen_addresses: "*".to_string(),
            port: 6666,
            gtm_host: gtm_host.to_string(),
            gtm_port,
            worker_threads: 2,
            gtm_connect_retry_interval: Duration::from_secs(60),
            gtm_connect_retry_idle: Duration::ZERO,
            gtm_connect_retry_count: 10000,
            err_wait_idle: Duration::ZERO,
            err_wait_count: 0,
            err_wait_interval: Duration::ZERO,
            keepalives_idle: 0,
            keepalives_interval: 0,
            keepalives_count: 0,
            log_file: "gtm_proxy.log".to_string(),
            log_min_messages: LogLevel::Warning,
            error_reporter: None,
            status_reader: None,
            data_dir: PathBuf::from("."),
            hold_max_requests: 100_000,
            hold_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(10),
            batch_max: 1024,
            batch_hold: Duration::from_millis(2),
            batch_in_flight: 1,
            max_backends: 20_000,
            backend_output_limit: 1 << 20,
            metrics_port: 0,
        }
    }

    /// Parse file text (path only used for error messages) into a partial config, apply
    /// CLI overrides, check required keys.
    pub fn from_str_with(text: &str, file_label: &str, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let mut b = Builder::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (idx, raw_line) in text.split('\n').enumerate() {
            let line_no = idx + 1;
            let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
            let (key, value) = match parse_line(line) {
                Ok(Some(kv)) => kv,
                Ok(None) => continue,
                Err(LineError { key, detail }) => {
                    return Err(ConfigError::Syntax { file: file_label.to_string(), line: line_no, key, detail })
                }
            };
            b.set(&key, &value).map_err(|e| match e {
                SetError::Unknown => {
                    ConfigError::UnknownKey { file: file_label.to_string(), line: line_no, key: key.clone() }
                }
                SetError::Invalid(reason) => ConfigError::InvalidValue {
                    file: file_label.to_string(),
                    line: line_no,
                    key: key.clone(),
                    value: value.clone(),
                    reason,
                },
                SetError::Range { min, max, unit } => ConfigError::OutOfRange {
                    file: file_label.to_string(),
                    line: line_no,
                    key: key.clone(),
                    value: value.clone(),
                    min,
                    max,
                    unit,
                },
            })?;
        }
        b.apply_cli(cli)?;
        b.finish(file_label)
    }

    /// Load DIR/gtm_proxy.conf (a missing file is fine: then everything must come from
    /// CLI) and apply overrides. The resulting `data_dir` is `data_dir`.
    pub fn load(data_dir: &Path, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let path = data_dir.join(CONFIG_FILE_NAME);
        let label = path.display().to_string();
        let text = match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => {
                    let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                    let line = good.iter().filter(|&&c| c == b'\n').count() + 1;
                    return Err(ConfigError::Syntax {
                        file: label,
                        line,
                        key: None,
                        detail: "invalid UTF-8".to_string(),
                    });
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::info!("configuration file \"{label}\" not found, using defaults and command line");
                String::new()
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let mut cli = cli.clone();
        cli.data_dir = Some(data_dir.to_path_buf());
        Config::from_str_with(&text, &label, &cli)
    }
}

/// Why one `key = value` was refused.
#[derive(Debug)]
enum SetError {
    Unknown,
    Invalid(String),
    Range { min: i64, max: i64, unit: &'static str },
}

/// A configuration under construction: defaults, then the file, then the command line.
struct Builder {
    cfg: Config,
    nodename: Option<String>,
    gtm_host: Option<String>,
    gtm_port: Option<u16>,
}

impl Builder {
    fn new() -> Builder {
        Builder { cfg: Config::new("", "", 0), nodename: None, gtm_host: None, gtm_port: None }
    }

    /// Set one key (any case) from its textual value.
    fn set(&mut self, key: &str, value: &str) -> Result<(), SetError> {
        let c = &mut self.cfg;
        match key.to_ascii_lowercase().as_str() {
            "nodename" => self.nodename = Some(parse_nodename(value)?),
            "listen_addresses" => c.listen_addresses = parse_nonempty(value)?,
            // 0 = any free port (an extension; the bound port goes to gtm_proxy.port).
            "port" => c.port = parse_port(value, 0)?,
            "gtm_host" => self.gtm_host = Some(parse_nonempty(value)?),
            "gtm_port" => self.gtm_port = Some(parse_port(value, 1)?),
            "worker_threads" => c.worker_threads = parse_int(value, 1, 1024)? as usize,
            "gtm_connect_retry_interval" => c.gtm_connect_retry_interval = parse_duration(value)?,
            "gtm_connect_retry_idle" => c.gtm_connect_retry_idle = parse_duration(value)?,
            "gtm_connect_retry_count" => c.gtm_connect_retry_count = parse_int(value, 0, INT_MAX)? as u32,
            "err_wait_idle" => c.err_wait_idle = parse_duration(value)?,
            "err_wait_count" => c.err_wait_count = parse_int(value, 0, INT_MAX)? as u32,
            "err_wait_interval" => c.err_wait_interval = parse_duration(value)?,
            "keepalives_idle" => c.keepalives_idle = parse_int(value, 0, INT_MAX)? as u32,
            "keepalives_interval" => c.keepalives_interval = parse_int(value, 0, INT_MAX)? as u32,
            "keepalives_count" => c.keepalives_count = parse_int(value, 0, INT_MAX)? as u32,
            "log_file" => c.log_file = parse_nonempty(value)?,
            "log_min_messages" => {
                c.log_min_messages = value.parse().map_err(|_| {
                    SetError::Invalid(
                        "expected DEBUG5..DEBUG1, INFO, NOTICE, WARNING, ERROR, LOG, FATAL or PANIC".to_string(),
                    )
                })?
            }
            "error_reporter" => c.error_reporter = Some(value.to_string()),
            "status_reader" => c.status_reader = Some(value.to_string()),
            "data_dir" => c.data_dir = PathBuf::from(parse_nonempty(value)?),
            "config_file" => {
                log::debug!("ignoring config_file = \"{value}\" (the file is always DATA_DIR/{CONFIG_FILE_NAME})");
            }
            "hold_max_requests" => c.hold_max_requests = parse_int(value, 0, 100_000_000)? as usize,
            "hold_timeout" => c.hold_timeout = parse_duration(value)?,
            "upstream_timeout" => c.upstream_timeout = parse_duration(value)?,
            "batch_max" => c.batch_max = parse_int(value, 1, MAX_BATCH as i64)? as usize,
            "batch_hold" => c.batch_hold = parse_duration(value)?,
            "batch_in_flight" => c.batch_in_flight = parse_int(value, 1, 1024)? as usize,
            "max_backends" => c.max_backends = parse_int(value, 1, 1_000_000)? as usize,
            "backend_output_limit" => c.backend_output_limit = parse_bytes(value)? as usize,
            "metrics_port" => c.metrics_port = parse_port(value, 0)?,
            _ => return Err(SetError::Unknown),
        }
        Ok(())
    }

    /// Apply the command line on top of the file, with the same validation.
    fn apply_cli(&mut self, cli: &CliOverrides) -> Result<(), ConfigError> {
        if let Some(dir) = &cli.data_dir {
            self.cfg.data_dir = dir.clone();
        }
        let items: [(&'static str, &'static str, Option<String>); 7] = [
            ("-h", "listen_addresses", cli.listen_addresses.clone()),
            ("-p", "port", cli.port.map(|p| p.to_string())),
            ("-s", "gtm_host", cli.gtm_host.clone()),
            ("-t", "gtm_port", cli.gtm_port.map(|p| p.to_string())),
            ("-i", "nodename", cli.nodename.clone()),
            ("-n", "worker_threads", cli.worker_threads.map(|n| n.to_string())),
            ("-l", "log_file", cli.log_file.clone()),
        ];
        for (option, key, value) in items {
            let Some(value) = value else { continue };
            self.set(key, &value).map_err(|e| {
                let reason = match e {
                    SetError::Invalid(r) => r,
                    SetError::Range { min, max, unit } => {
                        format!("must be between {min}{unit} and {max}{unit}")
                    }
                    SetError::Unknown => "unknown parameter".to_string(),
                };
                ConfigError::InvalidOption { option, key, value: value.clone(), reason }
            })?;
        }
        Ok(())
    }

    fn finish(self, file_label: &str) -> Result<Config, ConfigError> {
        let missing = |key, option| ConfigError::MissingRequired { file: file_label.to_string(), key, option };
        let mut cfg = self.cfg;
        cfg.nodename = self.nodename.ok_or_else(|| missing("nodename", "-i"))?;
        cfg.gtm_host = self.gtm_host.ok_or_else(|| missing("gtm_host", "-s"))?;
        cfg.gtm_port = self.gtm_port.ok_or_else(|| missing("gtm_port", "-t"))?;
        Ok(cfg)
    }
}

/// A syntax error on one line: the key, if already read, and what is wrong.
struct LineError {
    key: Option<String>,
    detail: String,
}

impl LineError {
    fn new(key: Option<String>, detail: String) -> LineError {
        LineError { key, detail }
    }
}

/// Split one line into `(key, value)`; `None` for blank and comment-only lines. On a
/// syntax error, returns a [`LineError`].
fn parse_line(line: &str) -> Result<Option<(String, String)>, LineError> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let first_ok = rest.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok {
        return Err(LineError::new(None, format!("expected a parameter name at \"{}\"", excerpt(rest))));
    }
    let key_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len());
    let key = rest[..key_end].to_ascii_lowercase();
    let mut rest = rest[key_end..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    if rest.is_empty() || rest.starts_with('#') {
        return Err(LineError::new(Some(key), "missing value".to_string()));
    }
    let (value, after) = if let Some(body) = rest.strip_prefix('\'') {
        match parse_quoted(body) {
            Some(v) => v,
            None => return Err(LineError::new(Some(key), "unterminated quoted string".to_string())),
        }
    } else {
        let end = rest.find(|c: char| c.is_whitespace() || c == '#').unwrap_or(rest.len());
        (rest[..end].to_string(), &rest[end..])
    };
    let after = after.trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return Err(LineError::new(Some(key), format!("unexpected text after the value: \"{}\"", excerpt(after))));
    }
    Ok(Some((key, value)))
}

/// Read a single-quoted string body (after the opening quote): `''` is a quote, and the
/// backslash escapes of PostgreSQL (`\n`, `\t`, `\\`, `\'`, ...). Returns the value and
/// the text after the closing quote, or `None` if the quote is not closed.
fn parse_quoted(body: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => {
                if matches!(chars.peek(), Some((_, '\''))) {
                    chars.next();
                    out.push('\'');
                } else {
                    return Some((out, &body[i + 1..]));
                }
            }
            '\\' => {
                let (_, e) = chars.next()?;
                out.push(match e {
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    other => other,
                });
            }
            other => out.push(other),
        }
    }
    None
}

/// The start of `s`, for error messages.
fn excerpt(s: &str) -> String {
    s.chars().take(32).collect()
}

fn parse_nonempty(value: &str) -> Result<String, SetError> {
    if value.is_empty() {
        Err(SetError::Invalid("must not be empty".to_string()))
    } else {
        Ok(value.to_string())
    }
}

fn parse_nodename(value: &str) -> Result<String, SetError> {
    if value.len() > MAX_NODENAME_LEN {
        return Err(SetError::Invalid(format!("longer than {MAX_NODENAME_LEN} bytes")));
    }
    if value.contains('\0') {
        return Err(SetError::Invalid("contains a NUL character".to_string()));
    }
    Ok(value.to_string())
}

/// Split `"  -12 ms "` into a signed integer and the trimmed unit (`"ms"`). The integer
/// saturates far outside every range, so overflow reports as out of range.
fn split_number(value: &str) -> Result<(i128, &str), SetError> {
    let t = value.trim();
    let (neg, unsigned) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits_end = unsigned.find(|c: char| !c.is_ascii_digit()).unwrap_or(unsigned.len());
    if digits_end == 0 {
        return Err(SetError::Invalid("expected an integer".to_string()));
    }
    let magnitude: i128 = unsigned[..digits_end].parse().unwrap_or(i128::MAX / 2);
    let n = if neg { -magnitude } else { magnitude };
    Ok((n, unsigned[digits_end..].trim()))
}

fn parse_int(value: &str, min: i64, max: i64) -> Result<i64, SetError> {
    let (n, unit) = split_number(value)?;
    if !unit.is_empty() {
        return Err(SetError::Invalid("expected an integer".to_string()));
    }
    if n < i128::from(min) || n > i128::from(max) {
        return Err(SetError::Range { min, max, unit: "" });
    }
    Ok(n as i64)
}

fn parse_port(value: &str, min: i64) -> Result<u16, SetError> {
    Ok(parse_int(value, min, i64::from(u16::MAX))? as u16)
}

/// A duration: plain integer seconds, or with a unit `ms`, `s`, `min`, `h`, `d`.
fn parse_duration(value: &str) -> Result<Duration, SetError> {
    let (n, unit) = split_number(value)?;
    let ms_per_unit: i128 = match unit.to_ascii_lowercase().as_str() {
        "" | "s" => 1000,
        "ms" => 1,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(SetError::Invalid("valid units are \"ms\", \"s\", \"min\", \"h\" and \"d\"".to_string())),
    };
    let ms = n.saturating_mul(ms_per_unit);
    if !(0..=MAX_DURATION_SECS * 1000).contains(&ms) {
        return Err(SetError::Range { min: 0, max: MAX_DURATION_SECS as i64, unit: "s" });
    }
    Ok(Duration::from_millis(ms as u64))
}

/// A size: plain bytes, or with a unit `B`, `kB`, `MB`, `GB` (powers of 1024, any case).
fn parse_bytes(value: &str) -> Result<i64, SetError> {
    let (n, unit) = split_number(value)?;
    let mult: i128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => return Err(SetError::Invalid("valid units are \"B\", \"kB\", \"MB\" and \"GB\"".to_string())),
    };
    let bytes = n.saturating_mul(mult);
    if !(i128::from(MIN_OUTPUT_LIMIT)..=i128::from(MAX_OUTPUT_LIMIT)).contains(&bytes) {
        return Err(SetError::Range { min: MIN_OUTPUT_LIMIT, max: MAX_OUTPUT_LIMIT, unit: "" });
    }
    Ok(bytes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const REQUIRED: &str = "nodename = 'p1'\ngtm_host = 'gtm.example'\ngtm_port = 16001\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_with(text, "gtm_proxy.conf", &CliOverrides::default())
    }

    fn parse_ok(extra: &str) -> Config {
        match parse(&format!("{REQUIRED}{extra}")) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn parse_err(extra: &str) -> ConfigError {
        match parse(&format!("{REQUIRED}{extra}")) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults() {
        let c = parse_ok("");
        let mut expected = Config::new("p1", "gtm.example", 16001);
        assert_eq!(c, expected);
        assert_eq!(c.listen_addresses, "*");
        assert_eq!(c.port, 6666);
        assert_eq!(c.worker_threads, 2);
        assert_eq!(c.gtm_connect_retry_interval, Duration::from_secs(60));
        assert_eq!(c.gtm_connect_retry_idle, Duration::ZERO);
        assert_eq!(c.gtm_connect_retry_count, 10000);
        assert_eq!(c.err_wait_idle, Duration::ZERO);
        assert_eq!(c.err_wait_count, 0);
        assert_eq!(c.err_wait_interval, Duration::ZERO);
        assert_eq!((c.keepalives_idle, c.keepalives_interval, c.keepalives_count), (0, 0, 0));
        assert_eq!(c.log_file, "gtm_proxy.log");
        assert_eq!(c.log_min_messages, LogLevel::Warning);
        assert_eq!(c.error_reporter, None);
        assert_eq!(c.status_reader, None);
        assert_eq!(c.data_dir, PathBuf::from("."));
        assert_eq!(c.hold_max_requests, 100_000);
        assert_eq!(c.hold_timeout, Duration::from_secs(30));
        assert_eq!(c.upstream_timeout, Duration::from_secs(10));
        assert_eq!(c.batch_max, 1024);
        assert_eq!(c.batch_hold, Duration::from_millis(2));
        assert_eq!(c.batch_in_flight, 1);
        assert_eq!(c.max_backends, 20_000);
        assert_eq!(c.backend_output_limit, 1024 * 1024);
        assert_eq!(c.metrics_port, 0);
        expected.port = 1;
        assert_ne!(c, expected);
    }

    #[test]
    fn every_key() {
        let c = parse_ok(
            "listen_addresses = '127.0.0.1'
             port = 7000
             worker_threads = 8
             gtm_connect_retry_interval = 5
             gtm_connect_retry_idle = 2
             gtm_connect_retry_count = 7
             err_wait_idle = 3
             err_wait_count = 4
             err_wait_interval = 6
             keepalives_idle = 11
             keepalives_interval = 12
             keepalives_count = 13
             log_file = 'proxy.log'
             log_min_messages = debug1
             error_reporter = 'rep'
             status_reader = 'rd'
             data_dir = '/var/lib/proxy'
             config_file = '/etc/other.conf'
             hold_max_requests = 500
             hold_timeout = 45
             upstream_timeout = 0
             batch_max = 16384
             batch_hold = 0
             batch_in_flight = 4
             max_backends = 300
             backend_output_limit = 65536
             metrics_port = 9187
            ",
        );
        assert_eq!(c.nodename, "p1");
        assert_eq!(c.gtm_host, "gtm.example");
        assert_eq!(c.gtm_port, 16001);
        assert_eq!(c.listen_addresses, "127.0.0.1");
        assert_eq!(c.port, 7000);
        assert_eq!(c.worker_threads, 8);
        assert_eq!(c.gtm_connect_retry_interval, Duration::from_secs(5));
        assert_eq!(c.gtm_connect_retry_idle, Duration::from_secs(2));
        assert_eq!(c.gtm_connect_retry_count, 7);
        assert_eq!(c.err_wait_idle, Duration::from_secs(3));
        assert_eq!(c.err_wait_count, 4);
        assert_eq!(c.err_wait_interval, Duration::from_secs(6));
        assert_eq!(c.keepalives_idle, 11);
        assert_eq!(c.keepalives_interval, 12);
        assert_eq!(c.keepalives_count, 13);
        assert_eq!(c.log_file, "proxy.log");
        assert_eq!(c.log_min_messages, LogLevel::Debug1);
        assert_eq!(c.error_reporter.as_deref(), Some("rep"));
        assert_eq!(c.status_reader.as_deref(), Some("rd"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/proxy"));
        assert_eq!(c.hold_max_requests, 500);
        assert_eq!(c.hold_timeout, Duration::from_secs(45));
        assert_eq!(c.upstream_timeout, Duration::ZERO);
        assert_eq!(c.batch_max, 16384);
        assert_eq!(c.batch_hold, Duration::ZERO);
        assert_eq!(c.batch_in_flight, 4);
        assert_eq!(c.max_backends, 300);
        assert_eq!(c.backend_output_limit, 65536);
        assert_eq!(c.metrics_port, 9187);
    }

    #[test]
    fn syntax_variants() {
        // No '=', keys in any case, tabs, CRLF, comments, BOM, duplicate keys.
        let c = parse(
            "\u{feff}# header comment\r\n\
             \r\n\
             NodeName\t'n'   # trailing comment\r\n\
             GTM_HOST=h\r\n\
             gtm_port=1\n\
             port 1234\n\
             port = 4321 #last wins\n\
             \t   \n\
             log_file = 'a#b' # hash inside quotes\n",
        )
        .expect("valid");
        assert_eq!(c.nodename, "n");
        assert_eq!(c.gtm_host, "h");
        assert_eq!(c.gtm_port, 1);
        assert_eq!(c.port, 4321);
        assert_eq!(c.log_file, "a#b");
    }

    #[test]
    fn quoting() {
        let c = parse_ok("error_reporter = 'it''s \\'here\\' \\\\ \\t'\nstatus_reader = ''\n");
        assert_eq!(c.error_reporter.as_deref(), Some("it's 'here' \\ \t"));
        assert_eq!(c.status_reader.as_deref(), Some(""));
        let c = parse_ok("listen_addresses = '*'\nport = '7001'\n");
        assert_eq!(c.listen_addresses, "*");
        assert_eq!(c.port, 7001);
        // An empty node name is accepted, as in XL 10.
        let c = Config::from_str_with("nodename = ''\ngtm_host = h\ngtm_port = 2", "f", &CliOverrides::default())
            .expect("valid");
        assert_eq!(c.nodename, "");
        // Unquoted '*' works too.
        assert_eq!(parse_ok("listen_addresses = *").listen_addresses, "*");
    }

    #[test]
    fn durations_with_units() {
        let d = |v: &str| parse_ok(&format!("hold_timeout = '{v}'")).hold_timeout;
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("500 ms"), Duration::from_millis(500));
        assert_eq!(d("7s"), Duration::from_secs(7));
        assert_eq!(d("7"), Duration::from_secs(7));
        assert_eq!(d("2min"), Duration::from_secs(120));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1d"), Duration::from_secs(86400));
        assert_eq!(d("+3"), Duration::from_secs(3));
        assert_eq!(parse_ok("upstream_timeout = 250ms").upstream_timeout, Duration::from_millis(250));
        assert_eq!(parse_ok("gtm_connect_retry_interval = 1min").gtm_connect_retry_interval, Duration::from_secs(60));
        assert!(matches!(parse_err("hold_timeout = 5us"), ConfigError::InvalidValue { .. }));
        assert!(matches!(parse_err("hold_timeout = '1.5s'"), ConfigError::InvalidValue { .. }));
        assert!(matches!(parse_err("hold_timeout = -1"), ConfigError::OutOfRange { .. }));
        assert!(matches!(
            parse_err("hold_timeout = 99999999999999999999999999999999999999999999d"),
            ConfigError::OutOfRange { .. }
        ));
    }

    #[test]
    fn output_limit_units() {
        let b = |v: &str| parse_ok(&format!("backend_output_limit = '{v}'")).backend_output_limit;
        assert_eq!(b("4096"), 4096);
        assert_eq!(b("64kB"), 65536);
        assert_eq!(b("2MB"), 2 << 20);
        assert_eq!(b("1GB"), 1 << 30);
        assert!(matches!(parse_err("backend_output_limit = 100"), ConfigError::OutOfRange { .. }));
        assert!(matches!(parse_err("backend_output_limit = 2GB"), ConfigError::OutOfRange { .. }));
        assert!(matches!(parse_err("backend_output_limit = 3TB"), ConfigError::InvalidValue { .. }));
    }

    #[test]
    fn log_levels() {
        let all = [
            ("DEBUG5", LogLevel::Debug5, log::LevelFilter::Trace),
            ("debug4", LogLevel::Debug4, log::LevelFilter::Trace),
            ("Debug3", LogLevel::Debug3, log::LevelFilter::Trace),
            ("debug2", LogLevel::Debug2, log::LevelFilter::Trace),
            ("debug1", LogLevel::Debug1, log::LevelFilter::Debug),
            ("info", LogLevel::Info, log::LevelFilter::Info),
            ("notice", LogLevel::Notice, log::LevelFilter::Info),
            ("warning", LogLevel::Warning, log::LevelFilter::Warn),
            ("ERROR", LogLevel::Error, log::LevelFilter::Error),
            ("log", LogLevel::Log, log::LevelFilter::Info),
            ("fatal", LogLevel::Fatal, log::LevelFilter::Error),
            ("panic", LogLevel::Panic, log::LevelFilter::Error),
        ];
        for (name, level, filter) in all {
            assert_eq!(name.parse::<LogLevel>(), Ok(level));
            assert_eq!(level.to_level_filter(), filter);
            assert_eq!(level.to_string().parse::<LogLevel>(), Ok(level));
            assert_eq!(parse_ok(&format!("log_min_messages = '{name}'")).log_min_messages, level);
        }
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug2));
        assert!("verbose".parse::<LogLevel>().is_err());
        assert!(LogLevel::Error < LogLevel::Log && LogLevel::Log < LogLevel::Fatal);
        let e = parse_err("log_min_messages = loud").to_string();
        assert!(e.contains("gtm_proxy.conf:4:") && e.contains("\"log_min_messages\""), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_key() {
        let e = parse_err("\n# c\nfoo_bar = 1\n");
        assert!(
            matches!(&e, ConfigError::UnknownKey { file, line: 6, key } if file == "gtm_proxy.conf" && key == "foo_bar"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "gtm_proxy.conf:6: unrecognized configuration parameter \"foo_bar\"");
    }

    #[test]
    fn invalid_value_names_file_line_key() {
        let e = parse(&format!("{REQUIRED}\n\n\n\n\n\n\n\nport = abc\n")).expect_err("bad port");
        assert!(e.to_string().starts_with("gtm_proxy.conf:12: invalid value for parameter \"port\": \"abc\""), "{e}");
        assert!(matches!(e, ConfigError::InvalidValue { line: 12, .. }));
        for bad in [
            "worker_threads = two",
            "keepalives_idle = 1s",
            "gtm_host = ''",
            "listen_addresses = ''",
            "log_file = ''",
            "data_dir = ''",
        ] {
            let e = parse_err(bad);
            assert!(matches!(e, ConfigError::InvalidValue { line: 4, .. }), "{bad}: {e:?}");
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(e.to_string().contains(&format!("\"{key}\"")), "{e}");
        }
        let long = "x".repeat(65);
        assert!(matches!(parse_err(&format!("nodename = '{long}'")), ConfigError::InvalidValue { .. }));
        let ok64 = "y".repeat(64);
        assert_eq!(parse_ok(&format!("nodename = '{ok64}'")).nodename, ok64);
    }

    #[test]
    fn out_of_range_names_file_line_key() {
        for (bad, key) in [
            ("port = 65536", "port"),
            ("gtm_port = 70000", "gtm_port"),
            ("worker_threads = 0", "worker_threads"),
            ("batch_max = 0", "batch_max"),
            ("batch_max = 16385", "batch_max"),
            ("batch_in_flight = 0", "batch_in_flight"),
            ("batch_in_flight = 1025", "batch_in_flight"),
            ("batch_hold = -1", "batch_hold"),
            ("max_backends = 0", "max_backends"),
            ("keepalives_count = -1", "keepalives_count"),
            ("gtm_connect_retry_count = 99999999999999999999999", "gtm_connect_retry_count"),
            ("metrics_port = 65536", "metrics_port"),
        ] {
            let e = parse_err(bad);
            assert!(matches!(&e, ConfigError::OutOfRange { line: 4, key: k, .. } if k == key), "{bad}: {e:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("gtm_proxy.conf:4: "), "{msg}");
            assert!(msg.contains(&format!("parameter \"{key}\"")), "{msg}");
        }
        assert_eq!(
            parse_err("batch_max = 0").to_string(),
            "gtm_proxy.conf:4: 0 is outside the valid range for parameter \"batch_max\" (1 .. 16384)"
        );
        assert_eq!(parse_ok("metrics_port = 0").metrics_port, 0);
        assert_eq!(parse_ok("hold_max_requests = 0").hold_max_requests, 0);
    }

    #[test]
    fn syntax_errors_name_file_line_key() {
        for (bad, key) in [
            ("port = 1 2", Some("port")),
            ("port =", Some("port")),
            ("port = # nothing", Some("port")),
            ("log_file = 'unterminated", Some("log_file")),
            ("log_file = 'a' b", Some("log_file")),
            ("= 5", None),
            ("1port = 5", None),
            ("'q' = 5", None),
        ] {
            let e = parse_err(bad);
            match &e {
                ConfigError::Syntax { file, line, key: k, .. } => {
                    assert_eq!(file, "gtm_proxy.conf");
                    assert_eq!(*line, 4, "{bad}");
                    assert_eq!(k.as_deref(), key, "{bad}");
                }
                other => panic!("{bad}: expected a syntax error, got {other:?}"),
            }
            let msg = e.to_string();
            assert!(msg.starts_with("gtm_proxy.conf:4: syntax error"), "{msg}");
            if let Some(key) = key {
                assert!(msg.contains(&format!("\"{key}\"")), "{msg}");
            }
        }
    }

    #[test]
    fn missing_required() {
        for (text, key) in [
            ("gtm_host = h\ngtm_port = 1", "nodename"),
            ("nodename = n\ngtm_port = 1", "gtm_host"),
            ("nodename = n\ngtm_host = h", "gtm_port"),
        ] {
            let e = Config::from_str_with(text, "gtm_proxy.conf", &CliOverrides::default()).expect_err("missing");
            assert!(matches!(&e, ConfigError::MissingRequired { key: k, .. } if *k == key), "{e:?}");
            assert!(e.to_string().contains(&format!("\"{key}\"")), "{e}");
            assert!(e.to_string().starts_with("gtm_proxy.conf: "), "{e}");
        }
    }

    #[test]
    fn cli_overrides_win() {
        let cli = CliOverrides {
            data_dir: Some(PathBuf::from("/data/p")),
            listen_addresses: Some("10.0.0.1".into()),
            port: Some(7777),
            gtm_host: Some("other".into()),
            gtm_port: Some(16003),
            nodename: Some("cli_name".into()),
            worker_threads: Some(5),
            log_file: Some("cli.log".into()),
        };
        let text = format!(
            "{REQUIRED}listen_addresses = '*'\nport = 1\nworker_threads = 3\nlog_file = f.log\ndata_dir = '/x'\n"
        );
        let c = Config::from_str_with(&text, "f", &cli).expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/data/p"));
        assert_eq!(c.listen_addresses, "10.0.0.1");
        assert_eq!(c.port, 7777);
        assert_eq!(c.gtm_host, "other");
        assert_eq!(c.gtm_port, 16003);
        assert_eq!(c.nodename, "cli_name");
        assert_eq!(c.worker_threads, 5);
        assert_eq!(c.log_file, "cli.log");

        // Everything from the command line, nothing in the file.
        let c = Config::from_str_with("", "f", &cli).expect("valid");
        assert_eq!(c.nodename, "cli_name");
        // File values stay when the command line is silent.
        let c = Config::from_str_with(&text, "f", &CliOverrides::default()).expect("valid");
        assert_eq!((c.port, c.worker_threads), (1, 3));
        assert_eq!(c.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn cli_values_are_validated() {
        let cli = CliOverrides { worker_threads: Some(0), ..Default::default() };
        let e = Config::from_str_with(REQUIRED, "f", &cli).expect_err("0 workers");
        assert!(matches!(&e, ConfigError::InvalidOption { option: "-n", key: "worker_threads", .. }), "{e:?}");
        assert!(e.to_string().contains("-n"), "{e}");
        let cli = CliOverrides { gtm_port: Some(0), ..Default::default() };
        assert!(matches!(
            Config::from_str_with(REQUIRED, "f", &cli),
            Err(ConfigError::InvalidOption { option: "-t", .. })
        ));
        // `-p 0` is allowed: listen on any free port.
        let cli = CliOverrides { port: Some(0), ..Default::default() };
        assert_eq!(Config::from_str_with(REQUIRED, "f", &cli).expect("port 0").port, 0);
    }

    #[test]
    fn load_from_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Missing file: everything from the command line.
        let cli = CliOverrides {
            nodename: Some("n".into()),
            gtm_host: Some("h".into()),
            gtm_port: Some(5),
            ..Default::default()
        };
        let c = Config::load(dir.path(), &cli).expect("no file is fine");
        assert_eq!(c.data_dir, dir.path());
        assert!(matches!(
            Config::load(dir.path(), &CliOverrides::default()),
            Err(ConfigError::MissingRequired { key: "nodename", .. })
        ));
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), format!("{REQUIRED}port = 6000\n")).expect("write");
        let c = Config::load(dir.path(), &CliOverrides::default()).expect("valid");
        assert_eq!((c.port, c.gtm_port), (6000, 16001));
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), "nodename = n\nbogus = 1\n").expect("write");
        let e = Config::load(dir.path(), &CliOverrides::default()).expect_err("bad key");
        assert!(e.to_string().contains("gtm_proxy.conf:2:"), "{e}");
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), b"nodename = n\nx = '\xff'\n").expect("write");
        assert!(matches!(Config::load(dir.path(), &CliOverrides::default()), Err(ConfigError::Syntax { line: 2, .. })));
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../proxy.conf.example");
        let c = Config::from_str_with(text, "proxy.conf.example", &CliOverrides::default()).expect("example parses");
        let expected = Config::new(&c.nodename, &c.gtm_host, c.gtm_port);
        assert_eq!(c, expected, "the example only documents defaults");
        // Uncommenting every `#key = value` line must also parse, and give the defaults.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.chars().next().is_some_and(|ch| ch.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mut c2 =
            Config::from_str_with(&uncommented, "x", &CliOverrides::default()).expect("uncommented example parses");
        assert_eq!(c2.error_reporter.as_deref(), Some(""));
        assert_eq!(c2.status_reader.as_deref(), Some(""));
        c2.error_reporter = None;
        c2.status_reader = None;
        assert_eq!(c2, expected);
        // Every key of the parser is documented in the example.
        for key in [
            "nodename",
            "listen_addresses",
            "port",
            "gtm_host",
            "gtm_port",
            "worker_threads",
            "gtm_connect_retry_interval",
            "gtm_connect_retry_idle",
            "gtm_connect_retry_count",
            "err_wait_idle",
            "err_wait_count",
            "err_wait_interval",
            "keepalives_idle",
            "keepalives_interval",
            "keepalives_count",
            "log_file",
            "log_min_messages",
            "error_reporter",
            "status_reader",
            "data_dir",
            "config_file",
            "hold_max_requests",
            "hold_timeout",
            "upstream_timeout",
            "batch_max",
            "batch_hold",
            "batch_in_flight",
            "max_backends",
            "backend_output_limit",
            "metrics_port",
        ] {
            let documented = uncommented.lines().any(|l| l.starts_with(&format!("{key} =")));
            assert!(documented, "{key} missing from proxy.conf.example");
        }
    }

    #[test]
    fn proxy_args() {
        use clap::CommandFactory;
        ProxyArgs::command().debug_assert();
        let args = ProxyArgs::try_parse_from([
            "gtm_proxy",
            "-D",
            "/d",
            "-h",
            "0.0.0.0",
            "-p",
            "6667",
            "-s",
            "gtm",
            "-t",
            "6668",
            "-i",
            "px",
            "-n",
            "4",
            "-l",
            "x.log",
        ])
        .expect("parses");
        assert_eq!(
            args.overrides(),
            CliOverrides {
                data_dir: Some(PathBuf::from("/d")),
                listen_addresses: Some("0.0.0.0".into()),
                port: Some(6667),
                gtm_host: Some("gtm".into()),
                gtm_port: Some(6668),
                nodename: Some("px".into()),
                worker_threads: Some(4),
                log_file: Some("x.log".into()),
            }
        );
        let none = ProxyArgs::try_parse_from(["gtm_proxy"]).expect("parses");
        assert_eq!(none.overrides(), CliOverrides::default());
        let help = ProxyArgs::try_parse_from(["gtm_proxy", "--help"]).expect_err("help");
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = ProxyArgs::try_parse_from(["gtm_proxy", "-?"]).expect_err("help");
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(ProxyArgs::try_parse_from(["gtm_proxy", "-w", "5"]).is_err());
        assert!(ProxyArgs::try_parse_from(["gtm_proxy", "-p", "x"]).is_err());
        assert!(ProxyArgs::try_parse_from(["gtm_proxy", "-h"]).is_err());
    }
}
