//! Shared test harness: start the real binaries (`gtm_sim`, `gtm_proxy`) on
//! loopback ports chosen at run time, a blocking backend client, and a
//! recording TCP relay to see every byte the proxy sends upstream.
//! Every wait is bounded in time.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::{encode_command, ClientFrame, RawFrame, Request, Response, ServerFrame, StartupPacket};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn sim_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gtm_sim")
}

pub fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gtm_proxy")
}

pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gtm_bench")
}

/// A spawned daemon, killed (SIGKILL) when dropped.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    bin: String,
    args: Vec<String>,
    port_file: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn wait_port_file(path: &Path, child: &mut Child) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(a) = s.trim().parse::<SocketAddr>() {
                return a;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("daemon exited before listening: {st}");
        }
        assert!(Instant::now() < deadline, "no port file {} after {WAIT:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    fn start(bin: &str, args: Vec<String>, dir: PathBuf, port_file: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
        let _ = std::fs::remove_file(&port_file);
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stderr.log")).expect("log"),
            ))
            .spawn()
            .expect("spawn daemon");
        let addr = wait_port_file(&port_file, &mut child);
        Daemon { child: Some(child), dir, addr, bin: bin.to_string(), args, port_file, _tmp: tmp }
    }

    /// A fresh `gtm_sim` in its own temporary data directory.
    pub fn sim(extra: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        Self::sim_in(&dir, 0, extra, Some(tmp))
    }

    /// `gtm_sim` on `dir` (a restart or a promoted standby reuses one).
    pub fn sim_in(dir: &Path, port: u16, extra: &[&str], tmp: Option<tempfile::TempDir>) -> Daemon {
        let mut args: Vec<String> = vec!["-h", "127.0.0.1", "-p"].into_iter().map(String::from).collect();
        args.push(port.to_string());
        args.push("-D".into());
        args.push(dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let _ = std::fs::remove_file(dir.join("gtm.pid"));
        Self::start(sim_bin(), args, dir.to_path_buf(), dir.join("gtm_sim.port"), tmp)
    }

    /// A `gtm_proxy` in front of `gtm`, with `conf` as its gtm_proxy.conf
    /// (nodename and GTM address come from the command line).
    pub fn proxy(gtm: SocketAddr, conf: &str, workers: usize) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("gtm_proxy.conf"), conf).expect("conf");
        let args: Vec<String> = vec![
            "-D".to_string(),
            dir.display().to_string(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            "0".into(),
            "-s".into(),
            gtm.ip().to_string(),
            "-t".into(),
            gtm.port().to_string(),
            "-i".into(),
            "test_proxy".into(),
            "-n".into(),
            workers.to_string(),
        ];
        Self::start(proxy_bin(), args, dir.clone(), dir.join("gtm_proxy.port"), Some(tmp))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
        let _ = std::fs::remove_file(&self.port_file);
        let deadline = Instant::now() + WAIT;
        loop {
            let mut child = Command::new(&self.bin)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("respawn");
            // The port may linger briefly; retry until it binds.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(2) {
                if self.port_file.exists() {
                    self.addr = wait_port_file(&self.port_file, &mut child);
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

    /// Wait (bounded) for the process to exit; returns its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("gtm_proxy.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default());
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking GTM client speaking like an XL backend.
pub struct Client {
    pub sock: TcpStream,
    buf: BytesMut,
    proxied: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let sock = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        sock.set_nodelay(true).expect("nodelay");
        Client { sock, buf: BytesMut::new(), proxied: false }
    }

    /// Connect and start up as a default backend; returns the client id.
    pub fn backend(addr: SocketAddr, name: &str) -> Client {
        let mut c = Client::connect(addr);
        let id = c.startup(name, node_type::DEFAULT, false, 0);
        assert_eq!(id, 0, "a proxy always answers client id 0");
        c
    }

    pub fn startup(&mut self, name: &str, remote_type: i32, postmaster: bool, client_id: u32) -> u32 {
        self.proxied = remote_type == node_type::GTM_PROXY;
        let mut b = BytesMut::new();
        StartupPacket::new(name, remote_type, postmaster, client_id).encode(&mut b);
        self.send_raw(&b);
        match self.recv() {
            ServerFrame::Ready { client_id } => client_id,
            other => panic!("startup answered with {other:?}"),
        }
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.sock.write_all(b).expect("write");
    }

    pub fn send(&mut self, req: &Request) {
        let mut b = BytesMut::new();
        encode_command(&mut b, None, req);
        self.send_raw(&b);
    }

    pub fn send_proxied(&mut self, header: i16, req: &Request) {
        let mut b = BytesMut::new();
        encode_command(&mut b, Some(header), req);
        self.send_raw(&b);
    }

    pub fn flush_frame(&mut self) {
        let mut b = BytesMut::new();
        gtmproxy::codec::encode_flush(&mut b);
        self.send_raw(&b);
    }

    /// The next whole frame, raw.
    pub fn recv_raw(&mut self) -> RawFrame {
        self.try_recv_raw().expect("connection closed while an answer was expected")
    }

    /// None on EOF.
    pub fn try_recv_raw(&mut self) -> Option<RawFrame> {
        let deadline = Instant::now() + WAIT;
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(f) = frame::split(&mut self.buf, DEFAULT_MAX_FRAME * 4).expect("valid framing") {
                return Some(f);
            }
            assert!(Instant::now() < deadline, "no answer within {WAIT:?}");
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The bytes of the next whole frame, as on the wire.
    pub fn recv_bytes(&mut self) -> Vec<u8> {
        let f = self.recv_raw();
        let mut b = BytesMut::new();
        f.encode(&mut b);
        b.to_vec()
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

    pub fn begin(&mut self) -> u32 {
        match self.call(&begin_req(b"\0")) {
            Response::TxnBeginGetGxid { gxid, .. } => gxid,
            other => panic!("begin answered {other:?}"),
        }
    }

    pub fn set_timeout(&mut self, d: Duration) {
        self.sock.set_read_timeout(Some(d)).expect("timeout");
    }

    /// True if the peer closed the connection (reads EOF within `within`).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.sock.set_read_timeout(Some(within)).expect("timeout");
        let mut b = [0u8; 1024];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn close(self) {
        let mut s = self.sock;
        let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
        let _ = s.shutdown(Shutdown::Both);
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
            let mut pumps = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect(target) else { continue };
                        down.set_nonblocking(false).ok();
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let (d2, u2) = (down.try_clone().expect("clone"), up.try_clone().expect("clone"));
                        // Only the worker link (remote type 1) is recorded.
                        let rec = rec2.clone();
                        pumps.push(std::thread::spawn(move || pump(down, up, Some(rec))));
                        pumps.push(std::thread::spawn(move || pump(u2, d2, None)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay { addr, upstream_bytes: rec, stop, thread: Some(thread) }
    }

    /// Client frames the proxy sent on its worker links (startup packets
    /// with remote type 1 start a recorded stream; registration links are
    /// skipped).
    pub fn worker_frames(&self) -> Vec<ClientFrame> {
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
                out.extend(frames.into_iter().filter_map(|f| ClientFrame::decode(f, true).ok()));
            }
        }
        out
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

/// Each recorded connection's bytes are appended as a block prefixed by
/// its length, so the streams can be told apart.
fn split_streams(b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut streams: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    while i + 8 <= b.len() {
        let id = u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let n = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        i += 8;
        streams.entry(id).or_default().extend_from_slice(&b[i..(i + n).min(b.len())]);
        i += n;
    }
    out.extend(streams.into_values());
    out
}

static STREAM_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn pump(mut from: TcpStream, mut to: TcpStream, rec: Option<Arc<Mutex<Vec<u8>>>>) {
    let id = STREAM_ID.fetch_add(1, Ordering::Relaxed);
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
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
