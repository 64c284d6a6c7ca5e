//! The one integration-test harness: start the real binaries (`gtm_sim`,
//! `gtm_proxy`, `gtm_bench`) on loopback ports chosen at run time, talk to
//! them with a blocking GTM-protocol client, record what the proxy sends
//! upstream with a relay, and read the proxy's metrics endpoint.
//!
//! Rules it enforces for every test:
//! * every wait is bounded ([`WAIT`] unless a shorter one is given): socket
//!   connect, read and write timeouts, process exits, port files;
//! * every process a test starts is killed and reaped when its guard is
//!   dropped, on every path (panics included): [`Daemon`], [`Guarded`];
//! * the runner's `RUST_LOG` never reaches the daemons; the harness sets
//!   their log level itself (`--log-level` for the simulator,
//!   `log_min_messages` for the proxy), so log-based evidence is stable.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::{
    encode_command, encode_flush, ClientFrame, ErrorFields, RawFrame, Request, Response, ServerFrame, StartupPacket,
};

/// Upper bound of every wait of the harness.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long "nothing arrives" is watched for by default.
pub const QUIET: Duration = Duration::from_millis(200);

pub fn sim_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gtm_sim")
}

pub fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gtm_proxy")
}

pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gtm_bench")
}

/// A command prepared the way the harness starts every daemon: no `RUST_LOG`
/// from the runner, stdin closed.
pub fn command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

/// Start `cmd`'s process with at most `n` open descriptors (RLIMIT_NOFILE
/// lowered in the child before exec), to drive it out of descriptors.
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    // SAFETY: the closure only calls setrlimit (async-signal-safe) in the
    // forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Guarded {
    child: Option<Child>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

impl Guarded {
    /// Spawn with stdout and stderr captured (drained by threads, so a chatty
    /// child never blocks on a full pipe).
    pub fn spawn(mut cmd: Command) -> Guarded {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn a test process");
        let drain = |r: Option<Box<dyn Read + Send>>| {
            r.map(|mut r| {
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = r.read_to_end(&mut v);
                    v
                })
            })
        };
        let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        Guarded { child: Some(child), out, err }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: i32) {
        signal_pid(self.pid(), sig);
    }

    /// Wait for the exit within `within`; past it the child is killed and
    /// the test fails.
    pub fn finish(mut self, within: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a test process did not exit within {within:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let join = |h: Option<JoinHandle<Vec<u8>>>| h.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        Output { status, stdout: join(self.out.take()), stderr: join(self.err.take()) }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `Command::output` with a deadline: the child is killed past `within`.
pub fn run_bounded(cmd: Command, within: Duration) -> Output {
    Guarded::spawn(cmd).finish(within)
}

/// A spawned daemon, killed (SIGKILL) and reaped when dropped.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    bin: String,
    args: Vec<String>,
    port_file: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Send `sig` to our child `pid`.
fn signal_pid(pid: i32, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The address in a daemon's port file, if it is there and whole.
pub fn read_port_file(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A file's text; empty if it is not there (yet).
pub fn file_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_port_file(path: &Path, child: &mut Child, dir: &Path) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(a) = read_port_file(path) {
            return a;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("daemon exited before listening: {st}; log:\n{}", read_logs(dir));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no port file {} after {WAIT:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_logs(dir: &Path) -> String {
    ["gtm_proxy.log", "gtm_sim.log", "stderr.log"].iter().map(|f| file_text(&dir.join(f))).collect()
}

/// Write `conf` as `dir/gtm_proxy.conf`, with `log_min_messages = INFO`
/// ahead of it unless it sets a level itself.
pub fn write_proxy_conf(dir: &Path, conf: &str) {
    let conf =
        if conf.contains("log_min_messages") { conf.to_string() } else { format!("log_min_messages = INFO\n{conf}") };
    std::fs::write(dir.join("gtm_proxy.conf"), conf).expect("conf");
}

/// The options the harness starts a proxy with: data directory `dir`, the
/// GTM at `gtm`, node name `test_proxy`, `workers` workers (no listen
/// address or port).
pub fn proxy_argv(dir: &Path, gtm: SocketAddr, workers: usize) -> Vec<String> {
    vec![
        "-D".to_string(),
        dir.display().to_string(),
        "-s".into(),
        gtm.ip().to_string(),
        "-t".into(),
        gtm.port().to_string(),
        "-i".into(),
        "test_proxy".into(),
        "-n".into(),
        workers.to_string(),
    ]
}

impl Daemon {
    fn start(bin: &str, args: Vec<String>, dir: PathBuf, port_file: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
        let mut cmd = command(bin);
        cmd.args(&args);
        let mut d = Self::launch(cmd, &dir, &port_file);
        d._tmp = tmp;
        d
    }

    /// Start a prepared command (any arguments and environment, even a
    /// `sh -c` line that execs the daemon) and wait for its port file.
    /// `dir` is where its logs are read from; the caller keeps it. Like
    /// every daemon of the harness: no `RUST_LOG`, stdin closed, stdout
    /// discarded, stderr appended to `dir/stderr.log`. A restart runs the
    /// same program and arguments, not the environment.
    pub fn launch(mut cmd: Command, dir: &Path, port_file: &Path) -> Daemon {
        let bin = cmd.get_program().to_string_lossy().into_owned();
        let args = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let mut child = Self::spawn_cmd(&mut cmd, dir, port_file);
        let addr = wait_port_file(port_file, &mut child, dir);
        let (dir, port_file) = (dir.to_path_buf(), port_file.to_path_buf());
        Daemon { child: Some(child), dir, addr, bin, args, port_file, _tmp: None }
    }

    fn spawn_child(bin: &str, args: &[String], dir: &Path, port_file: &Path) -> Child {
        Self::spawn_cmd(command(bin).args(args), dir, port_file)
    }

    fn spawn_cmd(cmd: &mut Command, dir: &Path, port_file: &Path) -> Child {
        let _ = std::fs::remove_file(port_file);
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stderr.log")).expect("log");
        cmd.env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(stderr));
        cmd.spawn().expect("spawn daemon")
    }

    /// A fresh `gtm_sim` in its own temporary data directory.
    pub fn sim(extra: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        Self::sim_in(&dir, 0, extra, Some(tmp))
    }

    /// `gtm_sim` on `dir` (a restart or a promoted standby reuses one). It
    /// logs to `gtm_sim.log` there, at level info unless `extra` says
    /// otherwise.
    pub fn sim_in(dir: &Path, port: u16, extra: &[&str], tmp: Option<tempfile::TempDir>) -> Daemon {
        let mut args: Vec<String> = vec!["-h", "127.0.0.1", "-p"].into_iter().map(String::from).collect();
        args.push(port.to_string());
        args.push("-D".into());
        args.push(dir.display().to_string());
        args.extend(["-l".to_string(), "gtm_sim.log".to_string()]);
        if !extra.contains(&"--log-level") {
            args.extend(["--log-level".to_string(), "info".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let _ = std::fs::remove_file(dir.join("gtm.pid"));
        Self::start(sim_bin(), args, dir.to_path_buf(), dir.join("gtm_sim.port"), tmp)
    }

    /// A `gtm_proxy` in front of `gtm`, with `conf` as its gtm_proxy.conf
    /// (nodename and GTM address come from the command line).
    pub fn proxy(gtm: SocketAddr, conf: &str, workers: usize) -> Daemon {
        Self::proxy_args(gtm, conf, workers, &["-h", "127.0.0.1"])
    }

    /// Like [`Daemon::proxy`] with further command-line arguments (`-h` must
    /// be among them; `-p 0` unless they give `-p`). `log_min_messages = INFO` unless `conf` sets a level.
    pub fn proxy_args(gtm: SocketAddr, conf: &str, workers: usize, extra: &[&str]) -> Daemon {
        Self::proxy_with(gtm, conf, workers, extra, |_| {})
    }

    /// Like [`Daemon::proxy_args`], with `setup` adjusting the command
    /// (environment, [`limit_open_files`]) before it starts. A restart does
    /// not repeat `setup`.
    pub fn proxy_with(
        gtm: SocketAddr,
        conf: &str,
        workers: usize,
        extra: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        write_proxy_conf(&dir, conf);
        let mut args = proxy_argv(&dir, gtm, workers);
        if !extra.contains(&"-p") {
            args.extend(["-p".to_string(), "0".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = command(proxy_bin());
        cmd.args(&args);
        setup(&mut cmd);
        let mut d = Self::launch(cmd, &dir, &dir.join("gtm_proxy.port"));
        d._tmp = Some(tmp);
        d
    }

    /// A `gtm_proxy` with exactly `args` (nothing added, `-p` included),
    /// whose data directory `dir` the caller prepared and keeps.
    pub fn proxy_exact(dir: &Path, args: &[String]) -> Daemon {
        let mut cmd = command(proxy_bin());
        cmd.args(args);
        Self::launch(cmd, dir, &dir.join("gtm_proxy.port"))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: i32) {
        signal_pid(self.pid(), sig);
    }

    /// SIGSTOP: the daemon stops answering but keeps its sockets.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Daemon::stop`].
    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL and reap: like a crashed host.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(WAIT).expect("no exit after SIGTERM")
    }

    /// SIGINT (a fast stop), then wait (bounded) for the exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal(libc::SIGINT);
        self.wait_exit(WAIT).expect("no exit after SIGINT")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Restart with the same arguments (same port unless it was 0, same dir).
    pub fn restart_same_port(&mut self, extra: &[&str]) {
        self.kill9();
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "-p") {
            args[i + 1] = self.addr.port().to_string();
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let _ = std::fs::remove_file(self.dir.join("gtm.pid"));
        let deadline = Instant::now() + WAIT;
        loop {
            let mut child = Self::spawn_child(&self.bin, &args, &self.dir, &self.port_file);
            // The port may linger briefly; retry until it binds.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(2) {
                if self.port_file.exists() {
                    self.addr = wait_port_file(&self.port_file, &mut child, &self.dir);
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "could not restart {}", self.bin);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit code after a bounded wait (None: still running, or killed by a signal).
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        self.wait_exit(within).and_then(|s| s.code())
    }

    /// Everything the daemon logged so far (log file and stderr).
    pub fn log(&self) -> String {
        read_logs(&self.dir)
    }

    /// The text of `name` in the daemon's directory (empty if not there).
    pub fn file(&self, name: &str) -> String {
        file_text(&self.dir.join(name))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Relay plumbing: read `down` until it ends, handing `f` each whole frame
/// as sent; stop early when `f` returns false.
pub fn each_frame(down: &mut TcpStream, mut f: impl FnMut(Vec<u8>) -> bool) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = match down.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Ok(total) = frame::check(&pending, DEFAULT_MAX_FRAME * 4) {
            let bytes: Vec<u8> = pending.drain(..total).collect();
            if !f(bytes) {
                return;
            }
        }
    }
}

/// The command in a whole frame a proxy sent its GTM (proxy header
/// included), if the frame is one.
pub fn proxied_command(bytes: &[u8]) -> Option<gtmproxy::codec::Command> {
    if bytes.first() != Some(&frame::TAG_COMMAND) {
        return None;
    }
    let raw = frame::split(&mut BytesMut::from(bytes), DEFAULT_MAX_FRAME * 4).ok()??;
    match ClientFrame::decode(raw, true).ok()? {
        ClientFrame::Command(c) => Some(c),
        _ => None,
    }
}

/// A free loopback port (for `metrics_port`), chosen below the kernel's
/// ephemeral range: a port from that range can be taken by any outgoing
/// connection of the tests running alongside before the daemon binds it.
pub fn free_port() -> u16 {
    gtmproxy::bench::spawn::free_port([127, 0, 0, 1].into()).expect("a free port")
}

/// One HTTP GET on the metrics endpoint, every step bounded. None if the
/// endpoint does not answer (yet).
pub fn scrape(port: u16, path: &str) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The value of `name{worker="N"}` in a metrics body.
pub fn metric_of(body: &str, name: &str, worker: usize) -> Option<u64> {
    let key = format!("{name}{{worker=\"{worker}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok())
}

/// The sum of a metric over all workers.
pub fn metric_sum(body: &str, name: &str) -> u64 {
    let key = format!("{name}{{worker=");
    body.lines()
        .filter(|l| l.starts_with(&key))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Poll the metrics endpoint until `pred` holds on the body; returns it.
pub fn wait_metrics(port: u16, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Some(b) = scrape(port, "/metrics") {
            if pred(&b) {
                return b;
            }
            last = b;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what} within {WAIT:?}:\n{last}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking GTM-protocol client (a backend, a proxy worker link, a probe).
pub struct Client {
    pub sock: TcpStream,
    buf: BytesMut,
    /// Frames carry the proxy header (startup said remote type 1).
    pub proxied: bool,
    /// Client id from the `R` answer.
    pub client_id: Option<u32>,
    timeout: Duration,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect_timeout(&addr, WAIT).expect("connect"))
    }

    /// Connect from the local address `local` (any 127/8 address works on
    /// loopback), to be seen by the server as another host.
    pub fn connect_from(local: Ipv4Addr, addr: SocketAddr) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::V4(SocketAddrV4::new(local, 0)).into()).expect("bind local address");
        s.connect_timeout(&addr.into(), WAIT).expect("connect");
        Self::from_stream(s.into())
    }

    fn from_stream(sock: TcpStream) -> Client {
        sock.set_nodelay(true).expect("nodelay");
        sock.set_write_timeout(Some(WAIT)).expect("write timeout");
        sock.set_read_timeout(Some(WAIT)).expect("read timeout");
        Client { sock, buf: BytesMut::new(), proxied: false, client_id: None, timeout: WAIT }
    }

    /// Send a startup packet and read the `R` answer; returns the client id.
    pub fn startup(&mut self, name: &str, remote_type: i32, postmaster: bool, client_id: u32) -> u32 {
        self.send_startup(name, remote_type, postmaster, client_id);
        match self.recv() {
            ServerFrame::Ready { client_id } => {
                self.client_id = Some(client_id);
                client_id
            }
            other => panic!("startup answered with {other:?}"),
        }
    }

    /// Send a startup packet without reading the answer (which may be `R`
    /// or an `E` refusal; read it with [`Client::try_recv`]).
    pub fn send_startup(&mut self, name: &str, remote_type: i32, postmaster: bool, client_id: u32) {
        self.proxied = remote_type == node_type::GTM_PROXY;
        let mut b = BytesMut::new();
        StartupPacket::new(name, remote_type, postmaster, client_id).encode(&mut b);
        self.send_raw(&b);
    }

    /// Connect and start up as a default backend (remote type 6).
    pub fn backend(addr: SocketAddr, name: &str) -> Client {
        let mut c = Client::connect(addr);
        c.startup(name, node_type::DEFAULT, false, 0);
        c
    }

    /// A backend of a proxy: a proxy always answers client id 0.
    pub fn proxy_backend(addr: SocketAddr, name: &str) -> Client {
        let c = Client::backend(addr, name);
        assert_eq!(c.client_id, Some(0), "a proxy always answers client id 0");
        c
    }

    /// A proxy worker link (remote type 1, proxy header on).
    pub fn worker_link(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.startup("proxy1", node_type::GTM_PROXY, false, 0);
        c
    }

    /// A second handle on the socket, to write from another thread.
    pub fn writer(&self) -> TcpStream {
        self.sock.try_clone().expect("clone the socket")
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.sock.write_all(b).expect("write");
    }

    /// One `C` frame without proxy header; false if the link is gone.
    pub fn try_send(&mut self, req: &Request) -> bool {
        let mut b = BytesMut::new();
        encode_command(&mut b, None, req);
        self.sock.write_all(&b).is_ok()
    }

    /// One `C` frame without proxy header.
    pub fn send(&mut self, req: &Request) {
        let mut b = BytesMut::new();
        encode_command(&mut b, None, req);
        self.send_raw(&b);
    }

    /// One `C` frame with a proxy header.
    pub fn send_proxied(&mut self, header: i16, req: &Request) {
        let mut b = BytesMut::new();
        encode_command(&mut b, Some(header), req);
        self.send_raw(&b);
    }

    /// `F`.
    pub fn flush(&mut self) {
        let mut b = BytesMut::new();
        encode_flush(&mut b);
        self.send_raw(&b);
    }

    /// `X`, then no more writes from this side.
    pub fn close(&mut self) {
        let _ = self.sock.write_all(&[b'X', 0, 0, 0, 4]);
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    /// How long the `recv*` family waits for a frame.
    pub fn set_timeout(&mut self, d: Duration) {
        self.timeout = d;
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), ErrorKind> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut);
        }
        self.sock.set_read_timeout(Some(left)).expect("read timeout");
        let mut tmp = [0u8; 65536];
        match self.sock.read(&mut tmp) {
            Ok(0) => Err(ErrorKind::UnexpectedEof),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(ErrorKind::TimedOut),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e.kind()),
        }
    }

    /// The next whole frame within `within`: Ok(None) if the link closed
    /// first, Err on timeout.
    fn next_raw(&mut self, within: Duration) -> Result<Option<RawFrame>, ErrorKind> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(f) = frame::split(&mut self.buf, DEFAULT_MAX_FRAME * 4).expect("valid framing") {
                return Ok(Some(f));
            }
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ErrorKind::TimedOut) => return Err(ErrorKind::TimedOut),
                Err(_) => return Ok(None),
            }
        }
    }

    /// None on EOF; panics if nothing arrives within the timeout.
    pub fn try_recv_raw(&mut self) -> Option<RawFrame> {
        let t = self.timeout;
        self.next_raw(t).unwrap_or_else(|_| panic!("no answer within {t:?}"))
    }

    /// The next whole frame within `within`, if any.
    pub fn recv_within(&mut self, within: Duration) -> Option<RawFrame> {
        self.next_raw(within).ok().flatten()
    }

    pub fn recv_raw(&mut self) -> RawFrame {
        self.try_recv_raw().expect("connection closed while an answer was expected")
    }

    /// The bytes of the next whole frame, as on the wire.
    pub fn recv_bytes(&mut self) -> Vec<u8> {
        let f = self.recv_raw();
        let mut b = BytesMut::new();
        f.encode(&mut b);
        b.to_vec()
    }

    /// The next frame, or None if the link closed first; panics if nothing
    /// arrives within the timeout.
    pub fn try_recv(&mut self) -> Option<ServerFrame> {
        let raw = self.try_recv_raw()?;
        Some(ServerFrame::decode(raw, self.proxied).expect("decodable answer"))
    }

    pub fn recv(&mut self) -> ServerFrame {
        let raw = self.recv_raw();
        ServerFrame::decode(raw, self.proxied).expect("decodable answer")
    }

    pub fn response(&mut self) -> Response {
        match self.recv() {
            ServerFrame::Result(r) => r.response().expect("typed result"),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    pub fn call(&mut self, req: &Request) -> Response {
        self.send(req);
        self.response()
    }

    pub fn call_frame(&mut self, req: &Request) -> ServerFrame {
        self.send(req);
        self.recv()
    }

    /// Send a request and expect an `E`.
    pub fn call_err(&mut self, req: &Request) -> ErrorFields {
        match self.call_frame(req) {
            ServerFrame::Error { fields, .. } => fields,
            other => panic!("expected E for {req:?}, got {other:?}"),
        }
    }

    pub fn begin(&mut self) -> u32 {
        match self.call(&begin_req(b"\0")) {
            Response::TxnBeginGetGxid { gxid, .. } => gxid,
            other => panic!("begin answered {other:?}"),
        }
    }

    /// Bytes that arrived but do not (yet) form a whole frame, after `d`.
    pub fn partial_bytes(&mut self, d: Duration) -> usize {
        let deadline = Instant::now() + d;
        while self.fill(deadline).is_ok() {}
        self.buf.len()
    }

    /// Read until at least `n` bytes are buffered (bounded); returns how many.
    pub fn buffer_at_least(&mut self, n: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        while self.buf.len() < n {
            if self.fill(deadline).is_err() {
                break;
            }
        }
        self.buf.len()
    }

    /// Nothing at all arrives for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        match self.fill(deadline) {
            Err(ErrorKind::TimedOut) => assert!(self.buf.is_empty(), "unexpected bytes {:02x?}", &self.buf[..]),
            Err(e) => panic!("link failed while expecting silence: {e:?}"),
            Ok(()) => panic!("unexpected bytes {:02x?}", &self.buf[..]),
        }
    }

    /// The server closes the link (after any frames still buffered here).
    pub fn expect_eof(&mut self) {
        assert!(self.closed_within(WAIT), "the server did not close the link");
    }

    /// True if the peer closed the connection within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }
}

pub fn begin_req(session: &'static [u8]) -> Request {
    Request::TxnBeginGetGxid(gtmproxy::codec::Begin {
        isolation: 1,
        read_only: false,
        session_id: bytes::Bytes::from_static(session),
    })
}

/// A TCP relay between the proxy and the GTM that records every byte the
/// proxy sends upstream.
pub struct Relay {
    pub addr: SocketAddr,
    pub upstream_bytes: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = l.local_addr().expect("addr");
        l.set_nonblocking(true).expect("nonblocking");
        let rec = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec2, stop2) = (rec.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect_timeout(&target, WAIT) else { continue };
                        down.set_nonblocking(false).ok();
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let (d2, u2) = (down.try_clone().expect("clone"), up.try_clone().expect("clone"));
                        let rec = rec2.clone();
                        std::thread::spawn(move || pump(down, up, Some(rec)));
                        std::thread::spawn(move || pump(u2, d2, None));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay { addr, upstream_bytes: rec, stop, thread: Some(thread) }
    }

    /// Client frames the proxy sent on its worker links (streams starting
    /// with a remote type 1 startup packet; registration links are skipped).
    pub fn worker_frames(&self) -> Vec<ClientFrame> {
        self.worker_streams().into_iter().flatten().collect()
    }

    /// The same, one list per worker link, in connection order.
    pub fn worker_streams(&self) -> Vec<Vec<ClientFrame>> {
        let bytes = self.upstream_bytes.lock().expect("lock").clone();
        let mut out = Vec::new();
        for stream in split_streams(&bytes) {
            let mut b = BytesMut::from(&stream[..]);
            let mut frames = Vec::new();
            while let Ok(Some(raw)) = frame::split(&mut b, DEFAULT_MAX_FRAME * 4) {
                frames.push(raw);
            }
            let proxied = matches!(
                frames.first().map(|f| ClientFrame::decode(f.clone(), false)),
                Some(Ok(ClientFrame::Startup(ref s))) if s.remote_type == node_type::GTM_PROXY
            );
            if proxied {
                out.push(frames.into_iter().filter_map(|f| ClientFrame::decode(f, true).ok()).collect());
            }
        }
        out
    }

    /// Startup packets of every recorded link (workers and registration).
    pub fn startups(&self) -> Vec<StartupPacket> {
        let bytes = self.upstream_bytes.lock().expect("lock").clone();
        split_streams(&bytes)
            .into_iter()
            .filter_map(|s| {
                let mut b = BytesMut::from(&s[..]);
                let raw = frame::split(&mut b, DEFAULT_MAX_FRAME * 4).ok()??;
                match ClientFrame::decode(raw, false).ok()? {
                    ClientFrame::Startup(sp) => Some(sp),
                    _ => None,
                }
            })
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Each recorded chunk is appended as (stream id, length, bytes), so the
/// streams can be told apart; they come back in connection order.
fn split_streams(b: &[u8]) -> Vec<Vec<u8>> {
    let mut i = 0;
    let mut streams: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    while i + 8 <= b.len() {
        let id = u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let n = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        i += 8;
        streams.entry(id).or_default().extend_from_slice(&b[i..(i + n).min(b.len())]);
        i += n;
    }
    streams.into_values().collect()
}

static STREAM_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn pump(mut from: TcpStream, mut to: TcpStream, rec: Option<Arc<Mutex<Vec<u8>>>>) {
    let id = STREAM_ID.fetch_add(1, Ordering::Relaxed);
    let _ = to.set_write_timeout(Some(WAIT));
    let mut buf = [0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(r) = &rec {
                    let mut g = r.lock().expect("lock");
                    g.extend_from_slice(&id.to_le_bytes());
                    g.extend_from_slice(&(n as u32).to_le_bytes());
                    g.extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Raise this process's open-file limit (for many client sockets).
pub fn raise_fd_limit() -> u64 {
    gtmproxy::netio::raise_fd_limit().unwrap_or(0)
}

/// Poll `f` until it returns Some, bounded by `within`.
pub fn eventually<T>(within: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually_for(within, "a condition", f)
}

/// [`eventually`], naming `what` is waited for if it never comes.
pub fn eventually_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
