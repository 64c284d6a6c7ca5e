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
//! Precedence: built-in default < file < command line ([`ProxyArgs`]).
//! SIGHUP reads the file again; [`keys`] says which keys then apply at once and which
//! need a restart ([`Config::reload`]).

mod cli;
pub mod keys;

pub use cli::{CommandLine, ProxyArgs, ReconnectArgs, SubCommand};
pub use keys::{Reload, Takes};

use std::io;
use std::path::{Path, PathBuf};
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
    #[error("{file}:{line}: unrecognized configuration parameter \"{key}\"{}", did_you_mean(.suggestion))]
    UnknownKey {
        file: String,
        line: usize,
        key: String,
        /// The known key closest to `key`, if any is close.
        suggestion: Option<&'static str>,
    },
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

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(k) => format!(" (did you mean \"{k}\"?)"),
        None => String::new(),
    }
}

fn key_context(key: &Option<String>) -> String {
    match key {
        Some(k) => format!(" in parameter \"{k}\""),
        None => String::new(),
    }
}

pub use crate::logging::{LogLevel, ParseLogLevelError};

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
/// `batch_max`, `batch_hold`, `batch_in_flight`, `max_backends`, `backend_output_limit`, `metrics_port`,
/// `metrics_listen_address`, `allowed_client_networks`, `allowed_node_names`,
/// `allowed_remote_types`, `gtm_required_at_start`, `backend_startup_timeout`,
/// `backend_frame_timeout`, `max_startup_backends`, `backend_error_limit`,
/// `smart_shutdown_timeout`.
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
    /// Longest pause between reconnect attempts to the GTM (default 60 s);
    /// the pauses back off from 100 ms up to it.
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
    /// Extension: Prometheus metrics port, `GET /metrics` on `metrics_listen_address` (default 0 = off).
    pub metrics_port: u16,
    /// Extension: address the metrics endpoint binds to (default 127.0.0.1).
    pub metrics_listen_address: String,
    /// Extension: client networks allowed to connect, comma-separated CIDR (default empty = any).
    pub allowed_client_networks: String,
    /// Extension: node names allowed in startup packets, comma-separated (default empty = any).
    pub allowed_node_names: String,
    /// Extension: remote types allowed in startup packets, comma-separated (default empty = any).
    pub allowed_remote_types: String,
    /// Extension: exit at start when the GTM cannot be reached, as XL does (default off:
    /// listen at once and keep trying the GTM).
    pub gtm_required_at_start: bool,
    /// Extension: a backend must send its startup packet within this (default 5 s;
    /// zero = never).
    pub backend_startup_timeout: Duration,
    /// Extension: a frame a backend started must be complete within this (default 5 s;
    /// zero = never).
    pub backend_frame_timeout: Duration,
    /// Extension: most connections still waiting for their startup packet; the oldest
    /// is closed to make room (default 1000).
    pub max_startup_backends: usize,
    /// Extension: protocol errors one backend connection may cause before it is closed
    /// (default 5).
    pub backend_error_limit: u32,
    /// Extension: longest a smart stop (SIGTERM) waits for open transactions to end
    /// before it goes on as a fast stop (default 3 s; zero = at once).
    pub smart_shutdown_timeout: Duration,
}

/// TCP keepalive settings (`keepalives_*`); 0 keeps the OS default for that parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalives {
    /// Idle seconds before the first probe.
    pub idle: u32,
    /// Seconds between probes.
    pub interval: u32,
    /// Probes before the connection is declared dead.
    pub count: u32,
}

impl Config {
    /// The keepalive settings for sockets opened now.
    pub fn keepalives(&self) -> Keepalives {
        Keepalives { idle: self.keepalives_idle, interval: self.keepalives_interval, count: self.keepalives_count }
    }

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
            metrics_listen_address: "127.0.0.1".to_string(),
            allowed_client_networks: String::new(),
            allowed_node_names: String::new(),
            allowed_remote_types: String::new(),
            gtm_required_at_start: false,
            backend_startup_timeout: Duration::from_secs(5),
            backend_frame_timeout: Duration::from_secs(5),
            max_startup_backends: 1000,
            backend_error_limit: 5,
            smart_shutdown_timeout: Duration::from_secs(3),
        }
    }

    /// Parse file text (path only used for error messages) into a partial config, apply
    /// CLI overrides, check required keys.
    pub fn from_str_with(text: &str, file_label: &str, cli: &ProxyArgs) -> Result<Config, ConfigError> {
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
                SetError::Unknown => ConfigError::UnknownKey {
                    file: file_label.to_string(),
                    line: line_no,
                    key: key.clone(),
                    suggestion: keys::suggest(&key),
                },
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
    pub fn load(data_dir: &Path, cli: &ProxyArgs) -> Result<Config, ConfigError> {
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
            "smart_shutdown_timeout" => c.smart_shutdown_timeout = parse_duration(value)?,
            "upstream_timeout" => c.upstream_timeout = parse_duration(value)?,
            "batch_max" => c.batch_max = parse_int(value, 1, MAX_BATCH as i64)? as usize,
            "batch_hold" => c.batch_hold = parse_duration(value)?,
            "batch_in_flight" => c.batch_in_flight = parse_int(value, 1, 1024)? as usize,
            "max_backends" => c.max_backends = parse_int(value, 1, 1_000_000)? as usize,
            "backend_output_limit" => c.backend_output_limit = parse_bytes(value)? as usize,
            "metrics_port" => c.metrics_port = parse_port(value, 0)?,
            "metrics_listen_address" => c.metrics_listen_address = parse_nonempty(value)?,
            "allowed_client_networks" => {
                crate::proxy::access::parse_networks(value).map_err(SetError::Invalid)?;
                c.allowed_client_networks = value.to_string()
            }
            "allowed_node_names" => c.allowed_node_names = value.to_string(),
            "allowed_remote_types" => {
                crate::proxy::access::parse_remote_types(value).map_err(SetError::Invalid)?;
                c.allowed_remote_types = value.to_string()
            }
            "gtm_required_at_start" => c.gtm_required_at_start = parse_bool(value)?,
            "backend_startup_timeout" => c.backend_startup_timeout = parse_duration(value)?,
            "backend_frame_timeout" => c.backend_frame_timeout = parse_duration(value)?,
            "max_startup_backends" => c.max_startup_backends = parse_int(value, 1, 1_000_000)? as usize,
            "backend_error_limit" => c.backend_error_limit = parse_int(value, 1, 1_000_000)? as u32,
            _ => return Err(SetError::Unknown),
        }
        Ok(())
    }

    /// Apply the command line on top of the file, with the same validation.
    fn apply_cli(&mut self, cli: &ProxyArgs) -> Result<(), ConfigError> {
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

/// PostgreSQL's boolean spellings: on/off, true/false, yes/no, 1/0 (any case).
fn parse_bool(value: &str) -> Result<bool, SetError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(SetError::Invalid("expected on or off".to_string())),
    }
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
mod tests;
