//! Test harness shared by the integration tests: run `gtm_sim` as a child process
//! on an ephemeral loopback port, and talk to it (or to any GTM-protocol server)
//! with a small blocking client.
//!
//! * [`Sim`]: spawn (`-p 0 -D <tempdir>`, ready when the port file appears),
//!   [`Sim::kill9`], [`Sim::stop`] (SIGSTOP), [`Sim::cont`], [`Sim::terminate`],
//!   [`Sim::restart`] (same port, same data directory). Dropping a `Sim` kills
//!   (SIGKILL) and reaps it.
//! * [`Client`]: connect, startup with any remote type, send typed requests with
//!   or without proxy header, `F`, `X`, raw bytes; read one frame (typed or raw)
//!   with a timeout, or check that nothing arrives / the link is closed.
//!
//! Every wait is bounded ([`TIMEOUT`] unless a shorter one is given).

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, RawFrame};
use gtmproxy::codec::{encode_command, encode_flush, ErrorFields, Request, Response, ServerFrame, StartupPacket};

/// Upper bound for every wait of the harness.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for by default.
pub const QUIET: Duration = Duration::from_millis(200);
/// The simulator binary built by cargo for this test run.
pub const SIM_BIN: &str = env!("CARGO_BIN_EXE_gtm_sim");
/// Name of the port file the simulator always writes in its data directory.
pub const PORT_FILE: &str = "gtm_sim.port";

/// How to start a simulator.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// `--persist`.
    pub persist: bool,
    /// `-x`.
    pub first_gxid: Option<u32>,
    /// Anything else for the command line.
    pub extra_args: Vec<String>,
}

impl SimOptions {
    pub fn persistent() -> Self {
        SimOptions { persist: true, ..Default::default() }
    }
}

/// A running `gtm_sim` child process.
pub struct Sim {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    opts: SimOptions,
    _tmp: Option<tempfile::TempDir>,
}

impl Sim {
    /// A fresh simulator in a new temporary data directory.
    pub fn start() -> Sim {
        Sim::start_with(SimOptions::default())
    }

    pub fn start_with(opts: SimOptions) -> Sim {
        let tmp = tempfile::tempdir().expect("create a temporary data directory");
        let dir = tmp.path().to_path_buf();
        let mut sim = Sim::spawn(&dir, 0, opts);
        sim._tmp = Some(tmp);
        sim
    }

    /// A simulator in a directory the caller owns (e.g. to start a second
    /// instance on the state of a first one).
    pub fn start_in(dir: &Path, opts: SimOptions) -> Sim {
        Sim::spawn(dir, 0, opts)
    }

    fn spawn(dir: &Path, port: u16, opts: SimOptions) -> Sim {
        let port_file = dir.join(PORT_FILE);
        let _ = std::fs::remove_file(&port_file);
        let mut cmd = Command::new(SIM_BIN);
        cmd.arg("-h").arg("127.0.0.1").arg("-p").arg(port.to_string()).arg("-D").arg(dir);
        cmd.arg("-l").arg("gtm_sim.log").arg("--log-level").arg("debug");
        if opts.persist {
            cmd.arg("--persist");
        }
        if let Some(x) = opts.first_gxid {
            cmd.arg("-x").arg(x.to_string());
        }
        cmd.args(&opts.extra_args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn gtm_sim");
        let deadline = Instant::now() + TIMEOUT;
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Ok(a) = text.trim().parse::<SocketAddr>() {
                    break a;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("gtm_sim exited during start-up with {status}; log:\n{}", read_log(dir));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gtm_sim did not write {} within {TIMEOUT:?}", port_file.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Sim { child: Some(child), addr, dir: dir.to_path_buf(), opts, _tmp: None }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// The simulator's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    fn signal(&self, sig: i32) {
        let pid = self.pid();
        assert!(pid > 0, "gtm_sim is not running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// SIGKILL and reap: like a crashed GTM host.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the simulator stops answering but keeps its sockets.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Sim::stop`].
    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(TIMEOUT).expect("gtm_sim did not exit after SIGTERM")
    }

    /// Wait up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the current process (if still running) and start again on the same
    /// port with the same data directory and options.
    pub fn restart(&mut self) {
        self.kill9();
        let mut next = Sim::spawn(&self.dir.clone(), self.addr.port(), self.opts.clone());
        self.child = next.child.take();
        self.addr = next.addr;
    }

    /// A new client connected to this simulator.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("gtm_sim.log")).unwrap_or_default()
}

/// A blocking GTM-protocol client over a `std` TCP stream.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    /// Frames carry the proxy header (startup said remote type 1).
    pub proxied: bool,
    /// Client id from the `R` answer.
    pub client_id: Option<u32>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the GTM");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
        Client { stream, buf: BytesMut::new(), proxied: false, client_id: None }
    }

    /// Send a startup packet and read the `R` answer; returns the client id.
    pub fn startup(&mut self, name: &str, remote_type: i32, is_postmaster: bool, client_id: u32) -> u32 {
        let sp = StartupPacket::new(name, remote_type, is_postmaster, client_id);
        let mut b = BytesMut::new();
        sp.encode(&mut b);
        self.send_raw(&b);
        self.proxied = remote_type == 1;
        match self.read_frame() {
            ServerFrame::Ready { client_id } => {
                self.client_id = Some(client_id);
                client_id
            }
            other => panic!("expected R, got {other:?}"),
        }
    }

    /// A plain backend link (remote type 6).
    pub fn backend(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.startup("cn1", 6, false, 0);
        c
    }

    /// A proxy worker link (remote type 1, proxy header on).
    pub fn proxy(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.startup("proxy1", 1, false, 0);
        c
    }

    /// A second handle on the socket, to write from another thread while this
    /// one reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the socket")
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the GTM");
    }

    /// Send one `C` frame; `header` only on proxy links.
    pub fn send(&mut self, header: Option<i16>, req: &Request) {
        let mut b = BytesMut::new();
        encode_command(&mut b, header, req);
        self.send_raw(&b);
    }

    /// `F`.
    pub fn flush(&mut self) {
        let mut b = BytesMut::new();
        encode_flush(&mut b);
        self.send_raw(&b);
    }

    /// `X`.
    pub fn close(&mut self) {
        self.send_raw(&[b'X', 0, 0, 0, 4]);
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), ErrorKind> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut);
        }
        self.stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
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

    /// The next whole frame, as raw bytes (tag, length, body), within `timeout`.
    pub fn try_read_raw(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            match frame::check(&self.buf, 1 << 30) {
                Ok(n) => return Some(self.buf.split_to(n).to_vec()),
                Err(gtmproxy::codec::FrameError::Incomplete) => {}
                Err(e) => panic!("the GTM sent a broken frame: {e}"),
            }
            if self.fill(deadline).is_err() {
                return None;
            }
        }
    }

    pub fn read_raw(&mut self) -> Vec<u8> {
        self.try_read_raw(TIMEOUT).expect("no frame from the GTM within the timeout")
    }

    pub fn try_read_frame(&mut self, timeout: Duration) -> Option<ServerFrame> {
        let raw = self.try_read_raw(timeout)?;
        let rf = RawFrame { tag: raw[0], body: bytes::Bytes::copy_from_slice(&raw[5..]) };
        Some(ServerFrame::decode(rf, self.proxied).expect("decode a frame from the GTM"))
    }

    pub fn read_frame(&mut self) -> ServerFrame {
        self.try_read_frame(TIMEOUT).expect("no frame from the GTM within the timeout")
    }

    /// Send a request and read one frame.
    pub fn request(&mut self, header: Option<i16>, req: &Request) -> ServerFrame {
        self.send(header, req);
        self.read_frame()
    }

    /// Send a request on a direct link and decode its `S` answer.
    pub fn call(&mut self, req: &Request) -> Response {
        match self.request(None, req) {
            ServerFrame::Result(r) => r.response().expect("decode the result"),
            other => panic!("expected S for {req:?}, got {other:?}"),
        }
    }

    /// Send a request on a direct link and expect an `E`.
    pub fn call_err(&mut self, req: &Request) -> ErrorFields {
        match self.request(None, req) {
            ServerFrame::Error { fields, .. } => fields,
            other => panic!("expected E for {req:?}, got {other:?}"),
        }
    }

    /// Bytes that arrived but do not (yet) form a whole frame, after waiting `d`.
    pub fn partial_bytes(&mut self, d: Duration) -> usize {
        let deadline = Instant::now() + d;
        while self.fill(deadline).is_ok() {}
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
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ErrorKind::TimedOut) => panic!("the GTM did not close the link"),
                Err(_) => return,
            }
        }
    }
}
