//! Starting `gtm_sim` / `gtm_proxy` for `--spawn-sim` and `--via-proxy`.
//!
//! Each child gets its own fresh data directory, writes `<name>.port`
//! (`host:port`) there once it listens, and has its stdout and stderr sent
//! to `<name>.log` in the same directory. [`Spawned`] kills the child
//! (SIGTERM, then SIGKILL) and removes the directory when dropped, so every
//! exit path of the bench (normal end, error, ctrl-c, panic unwinding)
//! cleans up; PR_SET_PDEATHSIG covers the bench itself being killed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long a child gets to write its port file.
pub const PORT_FILE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Bytes of a failed child's log quoted in the error.
const LOG_TAIL: u64 = 2048;

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("could not create a temporary directory under {}: {source}", .base.display())]
    TempDir { base: PathBuf, source: io::Error },
    #[error("could not start {} ({}): {source}", .name, .path.display())]
    Start { name: &'static str, path: PathBuf, source: io::Error },
    #[error("{name} exited ({status}) before writing {port_file}{}", log_suffix(.log))]
    Exited { name: &'static str, status: String, port_file: String, log: String },
    #[error("{name} did not write a valid {port_file} within {}s{}", .timeout.as_secs(), log_suffix(.log))]
    PortFileTimeout { name: &'static str, port_file: String, timeout: Duration, log: String },
    #[error("interrupted while waiting for {name} to start")]
    Interrupted { name: &'static str },
}

fn log_suffix(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; its output ends with:\n{}", log.trim_end())
    }
}

/// A directory removed (recursively) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir, SpawnError> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for n in 0..100u32 {
            let path = base.join(format!("gtm_bench.{pid}.{label}.{nanos:x}.{n}"));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => return Err(SpawnError::TempDir { base, source }),
            }
        }
        let source = last.unwrap_or_else(|| io::Error::other("no free name"));
        Err(SpawnError::TempDir { base, source })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            log::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// A running child with its data directory.
#[derive(Debug)]
pub struct Spawned {
    pub name: &'static str,
    child: Child,
    /// Dropped after the child is dead (field order matters for nothing
    /// here: `Drop for Spawned` kills the child first).
    dir: TempDir,
    pub addr: SocketAddr,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Start `bin` with `args` (the caller includes `-D dir`), wait for
    /// `<dir>/<name>.port` and return the address it names.
    pub fn start(
        name: &'static str,
        bin: &Path,
        dir: TempDir,
        args: &[String],
        interrupted: &AtomicBool,
    ) -> Result<Spawned, SpawnError> {
        let log_path = dir.path().join(format!("{name}.log"));
        let open_log = || File::create(&log_path);
        let start_err = |source| SpawnError::Start { name, path: bin.to_path_buf(), source };
        let stdout = open_log().map_err(start_err)?;
        let stderr = stdout.try_clone().map_err(start_err)?;
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the bench even if it is SIGKILLed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        log::info!("starting {} {}", bin.display(), args.join(" "));
        let child = cmd.spawn().map_err(start_err)?;
        let mut s = Spawned { name, child, dir, addr: SocketAddr::from(([0, 0, 0, 0], 0)) };
        s.addr = s.wait_port_file(PORT_FILE_TIMEOUT, interrupted)?;
        log::info!("{name} (pid {}) listens on {}", s.pid(), s.addr);
        Ok(s)
    }

    fn wait_port_file(&mut self, timeout: Duration, interrupted: &AtomicBool) -> Result<SocketAddr, SpawnError> {
        let name = self.name;
        let port_file = format!("{name}.port");
        let path = self.dir.path().join(&port_file);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                if let Some(addr) = parse_port_file(&text) {
                    return Ok(addr);
                }
            }
            if interrupted.load(Ordering::Relaxed) {
                return Err(SpawnError::Interrupted { name });
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SpawnError::Exited { name, status: status.to_string(), port_file, log: self.log_tail() });
            }
            if Instant::now() >= deadline {
                return Err(SpawnError::PortFileTimeout { name, port_file, timeout, log: self.log_tail() });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of the child's output, for error messages.
    pub fn log_tail(&self) -> String {
        let path = self.dir.path().join(format!("{}.log", self.name));
        let Ok(mut f) = File::open(path) else { return String::new() };
        let len = f.metadata().map_or(0, |m| m.len());
        if f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL))).is_err() {
            return String::new();
        }
        let mut buf = Vec::new();
        let _ = f.take(LOG_TAIL).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Still running? (A child that died mid-run explains a wave of errors.)
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        log::warn!("{} (pid {pid}) ignored SIGTERM for {:?}; killing it", self.name, TERM_GRACE);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `host:port` (optionally followed by a newline) → address. None while the
/// file is empty or half-written.
pub fn parse_port_file(text: &str) -> Option<SocketAddr> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Some(a);
    }
    let (_, port) = t.rsplit_once(':')?;
    if port.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    t.to_socket_addrs().ok()?.next()
}

/// The directory holding the running executable: sibling binaries of a
/// cargo build live there.
pub fn sibling_binary(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| io::Error::other("executable has no parent directory"))?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_file_parsing() {
        assert_eq!(parse_port_file("127.0.0.1:6666\n"), Some(SocketAddr::from(([127, 0, 0, 1], 6666))));
        assert_eq!(parse_port_file("[::1]:5\n"), "[::1]:5".parse().ok());
        assert!(parse_port_file("localhost:7").is_some_and(|a| a.port() == 7));
        assert_eq!(parse_port_file(""), None);
        assert_eq!(parse_port_file("127.0.0.1:"), None);
        assert_eq!(parse_port_file("127.0.0.1"), None);
    }

    #[test]
    fn child_exiting_early_is_reported_with_its_output() {
        let args = vec!["-c".to_string(), "echo no GTM here >&2; exit 3".to_string()];
        let dir = TempDir::new("test").unwrap();
        let e = Spawned::start("gtm_sim", Path::new("/bin/sh"), dir, &args, &AtomicBool::new(false)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SpawnError::Exited { .. }), "{msg}");
        assert!(msg.contains("no GTM here"), "{msg}");
    }

    #[test]
    fn port_file_is_read_and_child_killed_on_drop() {
        // The script finds its data directory as the one holding its log (stdout).
        let args = vec![
            "-c".to_string(),
            "d=$(dirname \"$(readlink /proc/$$/fd/1)\"); echo 127.0.0.1:4321 > \"$d/gtm_sim.port\"; exec sleep 30"
                .to_string(),
        ];
        let dir = TempDir::new("test").unwrap();
        let path = dir.path().to_path_buf();
        let s = Spawned::start("gtm_sim", Path::new("/bin/sh"), dir, &args, &AtomicBool::new(false)).unwrap();
        assert_eq!(s.addr, SocketAddr::from(([127, 0, 0, 1], 4321)));
        let pid = s.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(s);
        assert!(!path.exists(), "data directory removed");
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "child gone: {state}");
    }
}
