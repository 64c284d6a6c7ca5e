//! Files in the proxy data directory that other tools rely on, and `gtm_ctl reconnect`.
//!
//! * `gtm_proxy.pid`: `PID\nABSOLUTE_DATA_DIR\n1\n`, mode 0600, created exclusively,
//!   removed at shutdown ([`PidFile`]). `gtm_ctl stop`/`reconnect` read the pid;
//!   `gtm_ctl status` reads three tokens (pid, directory, integer mode: 1 active, as the
//!   GTM writes it).
//! * `gtm_proxy.opts`: the command-line arguments, ` "arg"` each, newline-terminated
//!   ([`write_opts`]).
//! * `newgtm`: written by `gtm_ctl reconnect -Z gtm_proxy -D DIR -o "-s HOST -t PORT"`
//!   (the `-o` string plus a newline), followed by SIGUSR1 to the proxy
//!   ([`write_newgtm`], [`send_reconnect`]); the proxy reads it with [`read_newgtm`].
//!
//! * systemd: [`notify_ready`], [`notify_stopping`] and the [`Watchdog`] speak the
//!   `sd_notify` protocol when the proxy runs under a `Type=notify` unit, and do nothing
//!   otherwise.
//!
//! Unlike XL 10, a bad or missing `newgtm` is an ordinary error for the caller to log and
//! ignore, never a reason to exit.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Pid file name inside the data directory.
pub const PID_FILE_NAME: &str = "gtm_proxy.pid";
/// Third line of the pid file: the integer mode `gtm_ctl status` reads (1 = active).
pub const PID_FILE_MODE: &str = "1\n";
/// Options file name inside the data directory.
pub const OPTS_FILE_NAME: &str = "gtm_proxy.opts";
/// Reconnect options file name inside the data directory.
pub const NEWGTM_FILE_NAME: &str = "newgtm";

/// Largest `newgtm` / pid file read; anything longer is cut (and then fails to parse).
const MAX_CONTROL_FILE: u64 = 64 * 1024;

/// How often [`PidFile::create`] retries after removing a stale file (another process
/// may be racing for the same file).
const PID_CREATE_ATTEMPTS: usize = 100;

/// Errors of the pid, opts and newgtm files and of signalling the proxy.
#[derive(Debug, Error)]
pub enum ControlError {
    /// A file-system operation failed.
    #[error("could not {action} \"{}\": {source}", .path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The pid file names a live process.
    #[error("another gtm_proxy (PID {pid}) may be running in {}", .dir.display())]
    AlreadyRunning { pid: i32, dir: PathBuf },
    /// The pid file does not start with a positive process id.
    #[error("bogus data in pid file \"{}\": {detail}", .path.display())]
    BogusPidFile { path: PathBuf, detail: String },
    /// No pid file: the proxy is not running in that directory.
    #[error("pid file \"{}\" does not exist: is gtm_proxy running?", .path.display())]
    NoPidFile { path: PathBuf },
    /// The process named by the pid file does not exist.
    #[error("gtm_proxy (PID {pid}) is not running")]
    NotRunning { pid: i32 },
    /// `kill()` failed for another reason (typically EPERM).
    #[error("could not send {signal} to PID {pid}: {source}")]
    Signal { pid: i32, signal: &'static str, source: io::Error },
    /// No `newgtm` file when a reconnect was signalled.
    #[error("reconnect options file \"{}\" does not exist", .path.display())]
    NoNewGtmFile { path: PathBuf },
    /// A `newgtm` token other than `-s` / `-t`.
    #[error("invalid reconnect option \"{token}\" (expected -s HOST and/or -t PORT)")]
    UnknownNewGtmOption { token: String },
    /// `-s` or `-t` without a value.
    #[error("reconnect option {option} requires a value")]
    MissingNewGtmValue { option: &'static str },
    /// `-t` with something that is not a port number.
    #[error("invalid port in reconnect options: \"{value}\" (expected 1..65535)")]
    InvalidNewGtmPort { value: String },
    /// Neither `-s` nor `-t`.
    #[error("empty reconnect options: expected -s HOST and/or -t PORT")]
    EmptyNewGtm,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ControlError + 'a {
    move |source| ControlError::Io { action, path: path.to_path_buf(), source }
}

/// The proxy's pid file; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: i32,
}

impl PidFile {
    /// Create `DIR/gtm_proxy.pid` exclusively (mode 0600) with `PID\nABSOLUTE_DIR\n1\n`.
    ///
    /// An existing file whose process is gone (or is this process or its parent, as after
    /// a container restart that reuses pids) is replaced; one naming a live process gives
    /// [`ControlError::AlreadyRunning`]; an unreadable one [`ControlError::BogusPidFile`].
    pub fn create(data_dir: &Path) -> Result<PidFile, ControlError> {
        PidFile::create_named(data_dir, PID_FILE_NAME, PID_FILE_MODE)
    }

    /// Like [`PidFile::create`] for another server's pid file: `DIR/file_name` with
    /// `PID\nABSOLUTE_DIR\n` followed by `trailer` (the GTM writes its mode, `"1\n"`).
    pub fn create_named(data_dir: &Path, file_name: &str, trailer: &str) -> Result<PidFile, ControlError> {
        let abs_dir = std::path::absolute(data_dir).map_err(io_err("resolve", data_dir))?;
        let path = abs_dir.join(file_name);
        let my_pid = std::process::id() as i32;
        let content = format!("{my_pid}\n{}\n{trailer}", abs_dir.display());

        for _ in 0..PID_CREATE_ATTEMPTS {
            let open = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
            let mut file = match open {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let other = match read_pid_file(&path) {
                        Ok(pid) => pid,
                        // Removed between our create and our read: try again.
                        Err(ControlError::NoPidFile { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    let parent = unsafe { libc::getppid() };
                    if other != my_pid && other != parent && process_alive(other) {
                        return Err(ControlError::AlreadyRunning { pid: other, dir: abs_dir });
                    }
                    log::info!("removing stale pid file \"{}\" (PID {other})", path.display());
                    match fs::remove_file(&path) {
                        Ok(()) => continue,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("remove old pid file", &path)(e)),
                    }
                }
                Err(e) => return Err(io_err("create pid file", &path)(e)),
            };
            let written = file.write_all(content.as_bytes()).and_then(|()| file.sync_all());
            if let Err(e) = written {
                let _ = fs::remove_file(&path);
                return Err(io_err("write pid file", &path)(e));
            }
            return Ok(PidFile { path, pid: my_pid });
        }
        Err(ControlError::Io {
            action: "create pid file",
            path,
            source: io::Error::new(io::ErrorKind::AlreadyExists, "the file keeps being re-created by another process"),
        })
    }

    /// The absolute path of the pid file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid written to the file (this process).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only remove the file if it is still ours.
        match read_pid_file(&self.path) {
            Ok(pid) if pid == self.pid => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!("could not remove pid file \"{}\": {e}", self.path.display());
                }
            }
            Ok(pid) => log::warn!("pid file \"{}\" now names PID {pid}, leaving it", self.path.display()),
            Err(ControlError::NoPidFile { .. }) => {}
            Err(e) => log::warn!("{e}; leaving it"),
        }
    }
}

/// Is there a process with this pid (possibly owned by another user)?
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Read at most [`MAX_CONTROL_FILE`] bytes; `None` if the file does not exist.
fn read_small(path: &Path) -> Result<Option<String>, ControlError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONTROL_FILE).read_to_end(&mut bytes).map_err(io_err("read", path))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn read_pid_file(path: &Path) -> Result<i32, ControlError> {
    let text = read_small(path)?.ok_or_else(|| ControlError::NoPidFile { path: path.to_path_buf() })?;
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(ControlError::BogusPidFile {
            path: path.to_path_buf(),
            detail: "the file is empty (another gtm_proxy may be starting, or one crashed \
                     while starting; remove the file if no gtm_proxy runs in this directory)"
                .to_string(),
        });
    }
    match first.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(ControlError::BogusPidFile {
            path: path.to_path_buf(),
            detail: format!("\"{}\" is not a process id", first.escape_default()),
        }),
    }
}

/// The pid in `DIR/gtm_proxy.pid` (its first line).
pub fn read_pid(data_dir: &Path) -> Result<i32, ControlError> {
    read_pid_file(&data_dir.join(PID_FILE_NAME))
}

/// The pid of the proxy running in `data_dir`: [`ControlError::NoPidFile`] or
/// [`ControlError::NotRunning`] when there is none.
pub fn running_pid(data_dir: &Path) -> Result<i32, ControlError> {
    let pid = read_pid(data_dir)?;
    if !process_alive(pid) {
        return Err(ControlError::NotRunning { pid });
    }
    Ok(pid)
}

/// Write `DIR/gtm_proxy.opts` as XL 10 does: `args` is the whole command line
/// (`std::env::args()`); the program path `args[0]` is skipped, and each other argument is
/// written as ` "arg"` (no escaping), followed by a newline.
///
/// Unlike XL, an option given more than once is written once, with its last value
/// ([`effective_options`]): `gtm_ctl restart` runs `gtm_proxy -D DIR` plus this line, so
/// XL's file gains one `"-D" "DIR"` per restart until gtm_ctl's command buffer overflows.
pub fn write_opts(data_dir: &Path, args: &[String]) -> Result<(), ControlError> {
    let mut text = String::new();
    for arg in effective_options(args.get(1..).unwrap_or_default()) {
        text.push_str(" \"");
        text.push_str(&arg);
        text.push('"');
    }
    text.push('\n');
    let path = data_dir.join(OPTS_FILE_NAME);
    fs::write(&path, text).map_err(io_err("write", &path))
}

/// The arguments saved in `DIR/gtm_proxy.opts` (the running proxy's command line);
/// empty if there is no such file.
pub fn read_opts(data_dir: &Path) -> Result<Vec<String>, ControlError> {
    let text = read_small(&data_dir.join(OPTS_FILE_NAME))?.unwrap_or_default();
    Ok(parse_opts(&text))
}

/// The arguments of an opts line: ` "arg"` each, no escaping, so every second piece
/// between double quotes.
pub fn parse_opts(text: &str) -> Vec<String> {
    let line = text.lines().next().unwrap_or("");
    line.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

/// Options of the proxy that take a value (all of them do).
const VALUE_OPTIONS: &[char] = &['D', 'h', 'p', 's', 't', 'i', 'n', 'l'];

/// `args` (without the program name) with each repeated option kept once, at its first
/// position, with its last value; `-Xvalue` is written as `-X value`. Anything that is not
/// a known option with its value leaves `args` unchanged.
pub fn effective_options(args: &[String]) -> Vec<String> {
    let mut pairs: Vec<(char, &str)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut chars = a.chars();
        let flag = match (chars.next(), chars.next()) {
            (Some('-'), Some(c)) if VALUE_OPTIONS.contains(&c) => c,
            _ => return args.to_vec(),
        };
        let value = if a.len() > 2 {
            &a[2..]
        } else {
            match args.get(i + 1) {
                Some(v) => {
                    i += 1;
                    v.as_str()
                }
                None => return args.to_vec(),
            }
        };
        i += 1;
        match pairs.iter_mut().find(|(f, _)| *f == flag) {
            Some(p) => p.1 = value,
            None => pairs.push((flag, value)),
        }
    }
    pairs.into_iter().flat_map(|(f, v)| [format!("-{f}"), v.to_string()]).collect()
}

/// Target of a `gtm_ctl reconnect`: the new GTM host and/or port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGtm {
    pub host: Option<String>,
    pub port: Option<u16>,
}

/// Strip one pair of matching surrounding quotes (`'h'` or `"h"`), which users sometimes
/// put inside the `-o` string.
fn unquote(v: &str) -> &str {
    for q in ['\'', '"'] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Parse `newgtm` text: tokens separated by spaces, tabs or newlines; `-s HOST` and
/// `-t PORT` (also `-sHOST`, `-tPORT`); at least one of them; the last occurrence wins.
pub fn parse_newgtm(text: &str) -> Result<NewGtm, ControlError> {
    let mut tokens = text.split([' ', '\t', '\n', '\r']).filter(|t| !t.is_empty());
    let mut out = NewGtm { host: None, port: None };
    while let Some(tok) = tokens.next() {
        let (option, attached) = match tok {
            "-s" | "-t" => (tok, None),
            t if t.len() > 2 && (t.starts_with("-s") || t.starts_with("-t")) => (&t[..2], Some(&t[2..])),
            _ => return Err(ControlError::UnknownNewGtmOption { token: tok.to_string() }),
        };
        let option: &'static str = if option == "-s" { "-s" } else { "-t" };
        let value = match attached {
            Some(v) => v,
            None => match tokens.next() {
                Some(v) if !v.starts_with('-') => v,
                _ => return Err(ControlError::MissingNewGtmValue { option }),
            },
        };
        let value = unquote(value);
        if option == "-s" {
            if value.is_empty() {
                return Err(ControlError::MissingNewGtmValue { option });
            }
            out.host = Some(value.to_string());
        } else {
            match value.parse::<u16>() {
                Ok(p) if p > 0 => out.port = Some(p),
                _ => return Err(ControlError::InvalidNewGtmPort { value: value.to_string() }),
            }
        }
    }
    if out.host.is_none() && out.port.is_none() {
        return Err(ControlError::EmptyNewGtm);
    }
    Ok(out)
}

/// Read and parse `DIR/newgtm`.
pub fn read_newgtm(data_dir: &Path) -> Result<NewGtm, ControlError> {
    let path = data_dir.join(NEWGTM_FILE_NAME);
    let text = read_small(&path)?.ok_or(ControlError::NoNewGtmFile { path })?;
    parse_newgtm(&text)
}

/// Write `DIR/newgtm` as `gtm_ctl reconnect` does: `opts` plus a newline, mode 0600. The
/// file is replaced atomically, so a proxy reading it never sees half of it.
pub fn write_newgtm(data_dir: &Path, opts: &str) -> Result<(), ControlError> {
    let path = data_dir.join(NEWGTM_FILE_NAME);
    let tmp = data_dir.join(format!("{NEWGTM_FILE_NAME}.tmp"));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(opts.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &path)(e));
    }
    Ok(())
}

/// What `gtm_ctl reconnect -Z gtm_proxy -D DIR -o OPTS` does: read the pid from
/// `gtm_proxy.pid`, write `newgtm`, send SIGUSR1. Unlike gtm_ctl, `opts` is checked
/// first, so a typo is reported here instead of in the proxy's log. Returns the pid.
pub fn send_reconnect(data_dir: &Path, opts: &str) -> Result<i32, ControlError> {
    parse_newgtm(opts)?;
    let pid = read_pid(data_dir)?;
    if !process_alive(pid) {
        return Err(ControlError::NotRunning { pid });
    }
    write_newgtm(data_dir, opts)?;
    // SAFETY: plain kill(2) on a pid read from the pid file.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Err(ControlError::NotRunning { pid });
        }
        return Err(ControlError::Signal { pid, signal: "SIGUSR1", source });
    }
    Ok(pid)
}

/// Tell systemd (`Type=notify`) that the proxy is ready: it listens and its GTM link is
/// up. Does nothing outside systemd.
pub fn notify_ready() {
    notify(sd_notify::NotifyState::Ready);
}

/// Tell systemd that the proxy is stopping.
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

fn notify(state: sd_notify::NotifyState) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(std::slice::from_ref(&state)) {
        Ok(()) => log::debug!("told systemd: {state}"),
        Err(e) => log::warn!("could not notify systemd: {e}"),
    }
}

/// systemd's watchdog (`WatchdogSec=` in the unit): pinged from the main loop at half the
/// configured period, so a stuck main loop gets the proxy restarted.
#[derive(Debug)]
pub struct Watchdog {
    period: Option<std::time::Duration>,
    last: Option<std::time::Instant>,
}

impl Watchdog {
    /// Enabled when systemd set `WATCHDOG_USEC` (and `WATCHDOG_PID`, if set, is ours).
    pub fn from_env() -> Watchdog {
        let period = sd_notify::watchdog_enabled().map(|d| d / 2);
        if let Some(p) = period {
            log::info!("systemd watchdog enabled, pinging every {p:?}");
        }
        Watchdog { period, last: None }
    }

    /// Ping if half the watchdog period has passed since the last ping.
    pub fn tick(&mut self) {
        let Some(period) = self.period else { return };
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < period) {
            return;
        }
        self.last = Some(now);
        notify(sd_notify::NotifyState::Watchdog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// A pid that cannot exist (above any Linux pid_max).
    const DEAD_PID: i32 = i32::MAX;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn pid_file_create_and_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(PID_FILE_NAME);
        {
            let pf = PidFile::create(dir.path()).expect("create");
            assert_eq!(pf.path(), path);
            assert_eq!(pf.pid(), std::process::id() as i32);
            let text = fs::read_to_string(&path).expect("read");
            let abs = std::path::absolute(dir.path()).expect("abs");
            assert_eq!(text, format!("{}\n{}\n1\n", std::process::id(), abs.display()));
            // The three tokens gtm_ctl status scans: pid, directory, integer mode.
            let tokens: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(tokens.len(), 3, "{text}");
            assert_eq!(tokens[0].parse::<i32>().expect("pid"), std::process::id() as i32);
            assert_eq!(tokens[2].parse::<i32>().expect("mode"), 1);
            assert_eq!(mode(&path), 0o600);
            assert_eq!(read_pid(dir.path()).expect("pid"), std::process::id() as i32);
        }
        assert!(!path.exists(), "dropped pid file is removed");
    }

    #[test]
    fn named_pid_file_with_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let pf = PidFile::create_named(dir.path(), "gtm.pid", "1\n").unwrap();
        let text = fs::read_to_string(dir.path().join("gtm.pid")).unwrap();
        let abs = std::path::absolute(dir.path()).unwrap();
        assert_eq!(text, format!("{}\n{}\n1\n", std::process::id(), abs.display()));
        drop(pf);
        assert!(!dir.path().join("gtm.pid").exists());
    }

    #[test]
    fn pid_file_relative_dir_is_made_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cwd = std::env::current_dir().expect("cwd");
        let rel = pathdiff_or_abs(dir.path(), &cwd);
        let pf = PidFile::create(&rel).expect("create");
        let text = fs::read_to_string(pf.path()).expect("read");
        let second = text.lines().nth(1).expect("second line");
        assert!(Path::new(second).is_absolute(), "{second}");
    }

    /// A relative path to `target` from `cwd` if one is simple to build, else `target`.
    fn pathdiff_or_abs(target: &Path, cwd: &Path) -> PathBuf {
        let depth = cwd.components().count().saturating_sub(1);
        let mut p = PathBuf::new();
        for _ in 0..depth {
            p.push("..");
        }
        for c in target.components().skip(1) {
            p.push(c);
        }
        p
    }

    #[test]
    fn stale_pid_file_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(PID_FILE_NAME);
        fs::write(&path, format!("{DEAD_PID}\n/old/dir\n")).expect("write");
        let pf = PidFile::create(dir.path()).expect("stale file replaced");
        assert_eq!(read_pid(dir.path()).expect("pid"), pf.pid());
        // A pid file naming this very process (pid reuse after a restart) is stale too.
        drop(pf);
        fs::write(&path, format!("{}\n/x\n", std::process::id())).expect("write");
        let pf = PidFile::create(dir.path()).expect("own pid is stale");
        drop(pf);
        // A reaped child is gone.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let child_pid = child.id() as i32;
        child.wait().expect("wait");
        fs::write(&path, format!("{child_pid}\n/x\n")).expect("write");
        let _pf = PidFile::create(dir.path()).expect("dead child's pid is stale");
    }

    #[test]
    fn live_pid_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(PID_FILE_NAME);
        // PID 1 always exists (kill gives 0 or EPERM).
        fs::write(&path, "1\n/elsewhere\n").expect("write");
        let e = PidFile::create(dir.path()).expect_err("alive");
        assert!(matches!(e, ControlError::AlreadyRunning { pid: 1, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with("another gtm_proxy (PID 1) may be running in "), "{msg}");
        // The other instance's file is untouched.
        assert_eq!(fs::read_to_string(&path).expect("read"), "1\n/elsewhere\n");
    }

    #[test]
    fn bogus_pid_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(PID_FILE_NAME);
        for bad in ["", "\n", "abc\n", "-5\n", "0\n", "99999999999\n"] {
            fs::write(&path, bad).expect("write");
            assert!(matches!(PidFile::create(dir.path()), Err(ControlError::BogusPidFile { .. })), "{bad:?}");
            assert!(matches!(read_pid(dir.path()), Err(ControlError::BogusPidFile { .. })), "{bad:?}");
        }
    }

    #[test]
    fn drop_leaves_foreign_pid_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pf = PidFile::create(dir.path()).expect("create");
        fs::write(pf.path(), "1\n/x\n").expect("overwrite");
        let path = pf.path().to_path_buf();
        drop(pf);
        assert!(path.exists());
    }

    #[test]
    fn read_pid_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(read_pid(dir.path()), Err(ControlError::NoPidFile { .. })));
        fs::write(dir.path().join(PID_FILE_NAME), "4242\n/d\n").expect("write");
        assert_eq!(read_pid(dir.path()).expect("pid"), 4242);
        fs::write(dir.path().join(PID_FILE_NAME), "4243").expect("write");
        assert_eq!(read_pid(dir.path()).expect("pid"), 4243);
    }

    #[test]
    fn opts_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args: Vec<String> =
            ["/usr/bin/gtm_proxy", "-D", "/data/p", "-i", "px"].iter().map(|s| s.to_string()).collect();
        write_opts(dir.path(), &args).expect("write");
        let text = fs::read_to_string(dir.path().join(OPTS_FILE_NAME)).expect("read");
        assert_eq!(text, " \"-D\" \"/data/p\" \"-i\" \"px\"\n");
        // What gtm_ctl restart runs: the opts line does not grow with each restart.
        let restart: Vec<String> =
            ["gtm_proxy", "-D", "/data/p", "-D", "/data/p", "-i", "px"].iter().map(|s| s.to_string()).collect();
        write_opts(dir.path(), &restart).expect("write");
        let again = fs::read_to_string(dir.path().join(OPTS_FILE_NAME)).expect("read");
        assert_eq!(again, text);
        write_opts(dir.path(), &args[..1]).expect("write");
        let text = fs::read_to_string(dir.path().join(OPTS_FILE_NAME)).expect("read");
        assert_eq!(text, "\n");
    }

    #[test]
    fn newgtm_parse_good() {
        let both = NewGtm { host: Some("127.0.0.1".into()), port: Some(16003) };
        assert_eq!(parse_newgtm("-s 127.0.0.1 -t 16003\n").expect("ok"), both);
        assert_eq!(parse_newgtm("  -t\t16003 \n -s  127.0.0.1  ").expect("ok"), both);
        assert_eq!(parse_newgtm("-s127.0.0.1 -t16003").expect("ok"), both);
        assert_eq!(parse_newgtm("-s '127.0.0.1' -t \"16003\"").expect("ok"), both);
        assert_eq!(parse_newgtm("-s a -s b\r\n").expect("ok"), NewGtm { host: Some("b".into()), port: None });
        assert_eq!(parse_newgtm("-t 1").expect("ok"), NewGtm { host: None, port: Some(1) });
    }

    #[test]
    fn newgtm_parse_bad() {
        assert!(matches!(parse_newgtm(""), Err(ControlError::EmptyNewGtm)));
        assert!(matches!(parse_newgtm(" \n\t"), Err(ControlError::EmptyNewGtm)));
        assert!(matches!(
            parse_newgtm("-s h -x 1"),
            Err(ControlError::UnknownNewGtmOption { token }) if token == "-x"
        ));
        assert!(matches!(
            parse_newgtm("host -t 1"),
            Err(ControlError::UnknownNewGtmOption { token }) if token == "host"
        ));
        assert!(matches!(parse_newgtm("-s"), Err(ControlError::MissingNewGtmValue { option: "-s" })));
        assert!(matches!(parse_newgtm("-s -t 5"), Err(ControlError::MissingNewGtmValue { option: "-s" })));
        assert!(matches!(parse_newgtm("-s h -t"), Err(ControlError::MissingNewGtmValue { option: "-t" })));
        assert!(matches!(parse_newgtm("-s ''"), Err(ControlError::MissingNewGtmValue { option: "-s" })));
        for port in ["abc", "0", "65536", "-1x", "16003x"] {
            let text = format!("-s h -t {port}");
            let r = parse_newgtm(&text);
            assert!(
                matches!(
                    &r,
                    Err(ControlError::InvalidNewGtmPort { .. }) | Err(ControlError::MissingNewGtmValue { .. })
                ),
                "{port}: {r:?}"
            );
        }
        let e = parse_newgtm("-s h -t abc").expect_err("bad port");
        assert_eq!(e.to_string(), "invalid port in reconnect options: \"abc\" (expected 1..65535)");
    }

    #[test]
    fn newgtm_file_roundtrip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(read_newgtm(dir.path()), Err(ControlError::NoNewGtmFile { .. })));
        write_newgtm(dir.path(), "-s 127.0.0.1 -t 16003").expect("write");
        let path = dir.path().join(NEWGTM_FILE_NAME);
        assert_eq!(fs::read_to_string(&path).expect("read"), "-s 127.0.0.1 -t 16003\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            read_newgtm(dir.path()).expect("parse"),
            NewGtm { host: Some("127.0.0.1".into()), port: Some(16003) }
        );
        // Overwritten each time, mode fixed even if it was looser.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_newgtm(dir.path(), "-t 7").expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "-t 7\n");
        assert_eq!(mode(&path), 0o600);
        assert!(!dir.path().join("newgtm.tmp").exists());
        write_newgtm(dir.path(), "-q").expect("write");
        assert!(matches!(read_newgtm(dir.path()), Err(ControlError::UnknownNewGtmOption { .. })));
    }

    #[test]
    fn send_reconnect_signals_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No pid file.
        assert!(matches!(send_reconnect(dir.path(), "-s h -t 1"), Err(ControlError::NoPidFile { .. })));
        // Bad options are refused before anything is written.
        fs::write(dir.path().join(PID_FILE_NAME), format!("{DEAD_PID}\n/x\n")).expect("write");
        assert!(matches!(send_reconnect(dir.path(), "-s h -t x"), Err(ControlError::InvalidNewGtmPort { .. })));
        assert!(!dir.path().join(NEWGTM_FILE_NAME).exists());
        // Dead process.
        assert!(matches!(send_reconnect(dir.path(), "-s h -t 1"), Err(ControlError::NotRunning { pid: DEAD_PID })));
        // A live child: SIGUSR1's default action terminates it.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        fs::write(dir.path().join(PID_FILE_NAME), format!("{pid}\n/x\n")).expect("write");
        let sent = send_reconnect(dir.path(), "-s newhost -t 16003");
        let status = child.wait().expect("wait");
        assert_eq!(sent.expect("sent"), pid);
        assert_eq!(status.signal(), Some(libc::SIGUSR1));
        assert_eq!(
            read_newgtm(dir.path()).expect("newgtm"),
            NewGtm { host: Some("newhost".into()), port: Some(16003) }
        );
    }

    #[test]
    fn effective_options_last_value_first_position() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(effective_options(&v(&["-D", "/a", "-p", "1", "-D", "/b"])), v(&["-D", "/b", "-p", "1"]));
        assert_eq!(effective_options(&v(&["-D/a", "-i", "x", "-ix2"])), v(&["-D", "/a", "-i", "x2"]));
        assert_eq!(effective_options(&v(&[])), v(&[]));
        // Not options as expected: written as given.
        for odd in [&["-D"][..], &["-q", "1"][..], &["check", "-D", "/d"][..], &["-"][..]] {
            assert_eq!(effective_options(&v(odd)), v(odd), "{odd:?}");
        }
    }

    #[test]
    fn opts_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_opts(dir.path()).expect("no file"), Vec::<String>::new());
        let args: Vec<String> =
            ["gtm_proxy", "-D", "/d ir", "-i", "", "-p", "0"].iter().map(|s| s.to_string()).collect();
        write_opts(dir.path(), &args).expect("write");
        assert_eq!(read_opts(dir.path()).expect("read"), args[1..].to_vec());
        assert_eq!(parse_opts(" \"-D\" \"x\"\n\"-i\""), vec!["-D", "x"]);
    }
}
