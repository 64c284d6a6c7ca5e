//! Starting the GTM simulator or a GTM proxy for a run: any binary taking
//! the XL flags (`-D DIR -h HOST -p PORT`, XL's C `gtm_proxy` included).
//!
//! The bench picks a free port itself, passes it with `-p`, and waits until
//! the port accepts TCP connections: no extension of ours (`-p 0`, port
//! files) is needed from the child. Its stdout and stderr go to
//! `<name>.out` in its data directory. [`Process`] stops the child (SIGINT,
//! then SIGKILL) and removes a temporary data directory when dropped, so
//! every exit path of the bench cleans up; PR_SET_PDEATHSIG covers the bench
//! itself being killed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::embedded::Role;

/// How long a child gets to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a child gets to exit after SIGINT before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Bytes of a failed child's output quoted in the error.
const LOG_TAIL: u64 = 2048;

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("could not create a data directory {}: {source}", .path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("could not find a free port: {0}")]
    Port(io::Error),
    #[error("could not start {name} ({program}): {source}")]
    Start { name: String, program: String, source: io::Error },
    #[error("{name} exited ({status}) before accepting connections on {addr}{}", log_suffix(.log))]
    Exited { name: String, status: String, addr: SocketAddr, log: String },
    #[error("{name} did not accept connections on {addr} within {}s{}", .timeout.as_secs(), log_suffix(.log))]
    Timeout { name: String, addr: SocketAddr, timeout: Duration, log: String },
    #[error("interrupted while waiting for {name} to start")]
    Interrupted { name: String },
}

fn log_suffix(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; its output ends with:\n{}", log.trim_end())
    }
}

/// What to execute for a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A binary on disk.
    Path(PathBuf),
    /// This executable, re-run as the daemon of that role (see [`super::embedded`]).
    Embedded(Role),
}

impl Program {
    /// `explicit` if given; else the sibling binary of the running
    /// executable if it exists (a cargo build puts all three side by side);
    /// else the same daemon from this executable.
    pub fn locate(explicit: Option<&Path>, role: Role) -> Program {
        if let Some(p) = explicit {
            return Program::Path(p.to_path_buf());
        }
        match sibling_binary(role.binary()) {
            Ok(p) if p.is_file() => Program::Path(p),
            _ => Program::Embedded(role),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Program::Path(p) => p.display().to_string(),
            Program::Embedded(r) => format!("gtm_bench {}", r.flag()),
        }
    }

    fn command(&self) -> io::Result<Command> {
        match self {
            Program::Path(p) => Ok(Command::new(p)),
            Program::Embedded(r) => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg(r.flag());
                Ok(c)
            }
        }
    }
}

/// The directory holding the running executable joined with `name`.
pub fn sibling_binary(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| io::Error::other("executable has no parent directory"))?;
    Ok(dir.join(name))
}

/// A free loopback port: bound, noted and released (another process could
/// take it in between; the start then fails clearly instead of hanging).
///
/// Taken below the kernel's ephemeral range when it can be: a scenario
/// that kills the simulator and starts another on the same port would
/// otherwise race every client connecting meanwhile, since a freed
/// ephemeral port is soon handed to some outgoing connection, and its
/// bind then fails with "address in use" (seen once in seven runs).
pub fn free_port(ip: std::net::IpAddr) -> Result<u16, SpawnError> {
    let (low, _) = ephemeral_range();
    let floor = 10_000u16;
    if low > floor + 100 {
        let span = u32::from(low - floor);
        let mut x = std::process::id()
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        for _ in 0..200 {
            // xorshift: a different walk for each process and call.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = floor + (x % span) as u16;
            if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).map_err(SpawnError::Port)?;
    Ok(l.local_addr().map_err(SpawnError::Port)?.port())
}

/// The kernel's ephemeral port range (Linux's default when unreadable).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// A data directory: a fresh temporary one (removed on drop) or one the
/// user named (kept).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    temporary: bool,
}

impl DataDir {
    pub fn temporary(label: &str) -> Result<DataDir, SpawnError> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let mut last = io::Error::other("no free name");
        for n in 0..100u32 {
            let path = base.join(format!("gtm_bench.{pid}.{label}.{nanos:x}.{n}"));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(DataDir { path, temporary: true }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(source) => return Err(SpawnError::DataDir { path, source }),
            }
        }
        Err(SpawnError::DataDir { path: base, source: last })
    }

    pub fn existing(path: &Path) -> Result<DataDir, SpawnError> {
        fs::create_dir_all(path).map_err(|source| SpawnError::DataDir { path: path.to_path_buf(), source })?;
        Ok(DataDir { path: path.to_path_buf(), temporary: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                log::warn!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A running daemon with its data directory.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    program: Program,
    child: Child,
    dir: DataDir,
    /// Where it accepts connections.
    pub addr: SocketAddr,
}

impl Process {
    /// Run `program args...` with output to `<dir>/<name>.out`, and wait
    /// until `addr` accepts a TCP connection (the caller put the matching
    /// `-p` in `args`).
    pub fn start(
        name: &str,
        program: &Program,
        args: &[String],
        dir: DataDir,
        addr: SocketAddr,
        interrupted: &AtomicBool,
    ) -> Result<Process, SpawnError> {
        let start_err = |source| SpawnError::Start { name: name.to_owned(), program: program.label(), source };
        let out = File::create(dir.path().join(format!("{name}.out"))).map_err(start_err)?;
        let err = out.try_clone().map_err(start_err)?;
        let mut cmd = program.command().map_err(start_err)?;
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env_remove("RUST_LOG");
        die_with_parent(&mut cmd);
        log::info!("starting {name}: {} {}", program.label(), args.join(" "));
        let child = cmd.spawn().map_err(start_err)?;
        let mut p = Process { name: name.to_owned(), program: program.clone(), child, dir, addr };
        p.wait_accepting(START_TIMEOUT, interrupted)?;
        log::info!("{name} (pid {}) accepts connections on {addr}", p.pid());
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A shell command that starts another of the same daemon (add flags).
    pub fn program_command(&self) -> String {
        match &self.program {
            Program::Path(p) => p.display().to_string(),
            Program::Embedded(r) => {
                let exe = std::env::current_exe().map(|e| e.display().to_string()).unwrap_or_default();
                format!("{exe} {}", r.flag())
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn wait_accepting(&mut self, timeout: Duration, interrupted: &AtomicBool) -> Result<(), SpawnError> {
        let name = self.name.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SpawnError::Exited {
                    name,
                    status: status.to_string(),
                    addr: self.addr,
                    log: self.log_tail(),
                });
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if interrupted.load(Ordering::Relaxed) {
                return Err(SpawnError::Interrupted { name });
            }
            if Instant::now() >= deadline {
                return Err(SpawnError::Timeout { name, addr: self.addr, timeout, log: self.log_tail() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the child's output, for error messages.
    pub fn log_tail(&self) -> String {
        let Ok(mut f) = File::open(self.dir.path().join(format!("{}.out", self.name))) else { return String::new() };
        let len = f.metadata().map_or(0, |m| m.len());
        if f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL))).is_err() {
            return String::new();
        }
        let mut buf = Vec::new();
        let _ = f.take(LOG_TAIL).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Exit status if the child has ended (a child dying mid-run explains a wave of errors).
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
        // SIGINT: a fast stop for XL's daemons and ours (SIGTERM is a smart
        // stop for a proxy, which may wait on owed answers).
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        log::warn!("{} (pid {pid}) ignored SIGINT for {:?}; killing it", self.name, TERM_GRACE);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The child gets SIGKILL when the bench dies, even by SIGKILL.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Arguments for a simulator listening on `addr` with data directory `dir`.
pub fn sim_args(addr: SocketAddr, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut a = vec!["-h".into(), addr.ip().to_string(), "-p".into(), addr.port().to_string(), "-D".into()];
    a.push(dir.display().to_string());
    a.extend(extra.iter().cloned());
    a
}

/// Arguments for a proxy listening on `addr` in front of `gtm`: the flags
/// XL 10's `gtm_proxy` takes.
pub fn proxy_args(addr: SocketAddr, gtm: SocketAddr, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = vec!["-D".into(), dir.display().to_string()];
    a.extend(["-h".into(), addr.ip().to_string(), "-p".into(), addr.port().to_string()]);
    a.extend(["-s".into(), gtm.ip().to_string(), "-t".into(), gtm.port().to_string()]);
    a.extend(["-i".into(), "bench_proxy".into()]);
    a.extend(extra.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> Program {
        Program::Path(PathBuf::from("/bin/sh"))
    }

    #[test]
    fn spawned_ports_stay_below_the_ephemeral_range() {
        let (low, _) = ephemeral_range();
        for _ in 0..20 {
            let p = free_port([127, 0, 0, 1].into()).unwrap();
            assert!(p < low || low <= 10_100, "port {p} is in the ephemeral range starting at {low}");
        }
    }

    #[test]
    fn child_exiting_early_is_reported_with_its_output() {
        let args = vec!["-c".to_string(), "echo no GTM here >&2; exit 3".to_string()];
        let dir = DataDir::temporary("test").unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1].into()).unwrap()));
        let e = Process::start("gtm_sim", &sh(), &args, dir, addr, &AtomicBool::new(false)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SpawnError::Exited { .. }), "{msg}");
        assert!(msg.contains("no GTM here"), "{msg}");
    }

    #[test]
    fn waits_for_the_port_and_kills_on_drop() {
        // The listening socket is this test's own; the child just sleeps.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let args = vec!["-c".to_string(), "exec sleep 30".to_string()];
        let dir = DataDir::temporary("test").unwrap();
        let path = dir.path().to_path_buf();
        let p = Process::start("gtm_proxy", &sh(), &args, dir, addr, &AtomicBool::new(false)).unwrap();
        let pid = p.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(p);
        assert!(!path.exists(), "temporary data directory removed");
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "child gone: {state}");
    }

    #[test]
    fn a_named_data_directory_is_kept() {
        let tmp = std::env::temp_dir().join(format!("gtm_bench.keep.{}", std::process::id()));
        drop(DataDir::existing(&tmp).unwrap());
        assert!(tmp.is_dir());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn xl_flags_only() {
        let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let g: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let args = proxy_args(a, g, Path::new("/d"), &["-n".into(), "2".into()]);
        assert_eq!(args.join(" "), "-D /d -h 127.0.0.1 -p 7001 -s 127.0.0.1 -t 7002 -i bench_proxy -n 2");
        assert_eq!(sim_args(g, Path::new("/s"), &[]).join(" "), "-h 127.0.0.1 -p 7002 -D /s");
    }

    #[test]
    fn missing_sibling_falls_back_to_the_embedded_daemon() {
        // Unit-test executables have no gtm_sim beside them in deps/.
        assert_eq!(Program::locate(None, Role::Sim), Program::Embedded(Role::Sim));
        let p = Path::new("/opt/xl/bin/gtm_proxy");
        assert_eq!(Program::locate(Some(p), Role::Proxy), Program::Path(p.to_path_buf()));
    }
}
