//! Hardening of the proxy's main thread, with the real binaries on loopback
//! ports chosen at run time: stop escalation, descriptor exhaustion, the
//! metrics endpoint, client-network access control, a reconnect order while
//! the new GTM is slow to register, and a dead worker.
//!
//! The helpers are self-contained (process spawning, a blocking GTM client)
//! so that this file does not depend on the shared harness while it is being
//! reworked. Every wait is bounded; nothing asserts on elapsed time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::{encode_command, Begin, Request, Response, ServerFrame, StartupPacket};

const WAIT: Duration = Duration::from_secs(20);

/// Poll `f` until it gives a value, for at most `within`.
fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A spawned daemon, killed when dropped.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    fn spawn(mut cmd: Command, tmp: tempfile::TempDir, port_file: &str) -> Daemon {
        let dir = tmp.path().to_path_buf();
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().expect("spawn");
        let pf = dir.join(port_file);
        let addr = eventually(WAIT, "the daemon to listen", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("daemon exited before listening: {st}; {}", read(&dir.join("stderr.log")));
            }
            std::fs::read_to_string(&pf).ok()?.trim().parse::<SocketAddr>().ok()
        });
        Daemon { child: Some(child), dir, addr, _tmp: tmp }
    }

    fn sim() -> Daemon {
        Self::sim_with(&[])
    }

    fn sim_with(extra: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gtm_sim"));
        cmd.args(["-h", "127.0.0.1", "-p", "0", "-D"]).arg(tmp.path()).args(extra);
        Daemon::spawn(cmd, tmp, "gtm_sim.port")
    }

    /// A proxy in front of `gtm` with `conf` as gtm_proxy.conf; `setup` may
    /// adjust the command (environment, limits) before it starts.
    fn proxy(gtm: SocketAddr, listen: &str, conf: &str, workers: usize, setup: impl FnOnce(&mut Command)) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("gtm_proxy.conf"), conf).expect("conf");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gtm_proxy"));
        cmd.arg("-D").arg(tmp.path());
        cmd.args(["-h", listen, "-p", "0", "-s", &gtm.ip().to_string(), "-t", &gtm.port().to_string()]);
        cmd.args(["-i", "hardening_proxy", "-n", &workers.to_string()]);
        setup(&mut cmd);
        Daemon::spawn(cmd, tmp, "gtm_proxy.port")
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Exit status code once it exited within `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log(&self) -> String {
        read(&self.dir.join("gtm_proxy.log")) + &read(&self.dir.join("stderr.log"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A blocking client speaking like an XL backend.
struct Client {
    sock: TcpStream,
    buf: BytesMut,
}

/// What came back on a connection.
#[derive(Debug)]
enum Reply {
    Frame(ServerFrame),
    Closed,
    TimedOut,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect_timeout(&addr, WAIT).expect("connect"))
    }

    /// Connect from a chosen local address (any 127/8 address works on
    /// loopback).
    fn connect_from(local: Ipv4Addr, addr: SocketAddr) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::V4(SocketAddrV4::new(local, 0)).into()).expect("bind local address");
        s.connect_timeout(&addr.into(), WAIT).expect("connect");
        Self::from_stream(s.into())
    }

    fn from_stream(sock: TcpStream) -> Client {
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = sock.set_nodelay(true);
        Client { sock, buf: BytesMut::new() }
    }

    fn send_startup(&mut self, name: &str, remote_type: i32) {
        let mut b = BytesMut::new();
        StartupPacket::new(name, remote_type, false, 0).encode(&mut b);
        let _ = self.sock.write_all(&b);
    }

    fn reply(&mut self) -> Reply {
        let mut chunk = [0u8; 8192];
        loop {
            match frame::split(&mut self.buf, DEFAULT_MAX_FRAME) {
                Ok(Some(f)) => return Reply::Frame(ServerFrame::decode(f, false).expect("decodable answer")),
                Ok(None) => {}
                Err(e) => panic!("bad framing from the proxy: {e}"),
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => return Reply::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Reply::TimedOut
                }
                Err(_) => return Reply::Closed,
            }
        }
    }

    /// Start up as a default backend; panics unless answered with ready.
    fn backend(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.send_startup("hardening", node_type::DEFAULT);
        match c.reply() {
            Reply::Frame(ServerFrame::Ready { .. }) => c,
            other => panic!("startup answered with {other:?}"),
        }
    }

    fn begin(&mut self) -> u32 {
        let req = Request::TxnBeginGetGxid(Begin {
            isolation: 1,
            read_only: false,
            session_id: bytes::Bytes::from_static(b"\0"),
        });
        let mut b = BytesMut::new();
        encode_command(&mut b, None, &req);
        self.sock.write_all(&b).expect("write");
        match self.reply() {
            Reply::Frame(ServerFrame::Result(r)) => match r.response().expect("typed result") {
                Response::TxnBeginGetGxid { gxid, .. } => gxid,
                other => panic!("begin answered {other:?}"),
            },
            other => panic!("begin answered {other:?}"),
        }
    }
}

fn fatal_message(r: &Reply) -> Option<String> {
    match r {
        Reply::Frame(ServerFrame::Error { fields, .. }) if fields.severity() == "FATAL" => Some(fields.message()),
        _ => None,
    }
}

/// A loopback port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

// ----- stop escalation ------------------------------------------------------

#[test]
fn fast_stop_after_smart_stop_takes_over() {
    let sim = Daemon::sim();
    let mut proxy = Daemon::proxy(sim.addr, "127.0.0.1", "", 2, |_| {});
    let mut b = Client::backend(proxy.addr);
    b.begin();
    proxy.signal(libc::SIGTERM);
    // Smart: the connected backend keeps being served.
    b.begin();
    assert!(proxy.running(), "smart stop must wait for the backend");
    proxy.signal(libc::SIGINT);
    let code = proxy.wait_exit(WAIT).expect("SIGINT after SIGTERM must stop the proxy");
    assert_eq!(code, Some(0), "{}", proxy.log());
    assert!(matches!(b.reply(), Reply::Closed), "the backend is closed by the fast stop");
}

#[test]
fn immediate_stop_after_smart_stop_takes_over() {
    let sim = Daemon::sim();
    let mut proxy = Daemon::proxy(sim.addr, "127.0.0.1", "", 1, |_| {});
    let mut b = Client::backend(proxy.addr);
    b.begin();
    proxy.signal(libc::SIGTERM);
    b.begin();
    proxy.signal(libc::SIGQUIT);
    assert!(proxy.wait_exit(WAIT).is_some(), "SIGQUIT after SIGTERM must stop the proxy");
}

#[test]
fn milder_stop_does_not_weaken_a_fast_stop() {
    let sim = Daemon::sim();
    let mut proxy = Daemon::proxy(sim.addr, "127.0.0.1", "", 1, |_| {});
    let mut b = Client::backend(proxy.addr);
    b.begin();
    proxy.signal(libc::SIGINT);
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(WAIT), Some(Some(0)), "{}", proxy.log());
    assert!(matches!(b.reply(), Reply::Closed));
}

// ----- descriptor exhaustion -------------------------------------------------

#[test]
fn out_of_descriptors_turns_clients_away_and_recovers() {
    const LIMIT: u64 = 48;
    let sim = Daemon::sim();
    let proxy = Daemon::proxy(sim.addr, "127.0.0.1", "", 1, |cmd| {
        // SAFETY: setrlimit is async-signal-safe; run in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: LIMIT, rlim_max: LIMIT };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    // Far more connections than descriptors: each must get an answer,
    // ready or a FATAL error; none may hang.
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..(LIMIT as usize + 20) {
        let mut c = Client::connect(proxy.addr);
        c.send_startup("hardening", node_type::DEFAULT);
        match c.reply() {
            Reply::Frame(ServerFrame::Ready { .. }) => served.push(c),
            r => {
                let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected ready or FATAL, got {r:?}"));
                assert!(msg.contains("file descriptors"), "{msg}");
                refused += 1;
            }
        }
    }
    assert!(!served.is_empty(), "some connections fit under the limit");
    assert!(refused > 0, "the limit was reached; log: {}", proxy.log());
    for c in served.iter_mut().take(3) {
        c.begin();
    }
    // Free the descriptors; the proxy serves again.
    drop(served);
    let mut again = eventually(WAIT, "a connection to be served again", || {
        let mut c = Client::connect(proxy.addr);
        c.send_startup("hardening", node_type::DEFAULT);
        matches!(c.reply(), Reply::Frame(ServerFrame::Ready { .. })).then_some(c)
    });
    again.begin();
}

#[test]
fn queued_connections_are_answered_without_a_new_arrival() {
    const LIMIT: u64 = 40;
    let sim = Daemon::sim();
    let proxy = Daemon::proxy(sim.addr, "127.0.0.1", "", 1, |cmd| {
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: LIMIT, rlim_max: LIMIT };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    // Open a burst of connections at once, then only read: the ones beyond
    // the limit sit in the listen queue, and must still get an answer
    // without any later arrival to wake the accept loop.
    let mut conns: Vec<Client> = (0..(LIMIT as usize + 10)).map(|_| Client::connect(proxy.addr)).collect();
    for c in &mut conns {
        c.send_startup("hardening", node_type::DEFAULT);
    }
    let mut ready = 0;
    let mut fatal = 0;
    for c in &mut conns {
        let r = c.reply();
        if matches!(r, Reply::Frame(ServerFrame::Ready { .. })) {
            ready += 1;
        } else if fatal_message(&r).is_some() {
            fatal += 1;
        } else {
            panic!("a queued connection got {r:?}; log: {}", proxy.log());
        }
    }
    assert!(ready > 0 && fatal > 0, "ready {ready}, refused {fatal}");
}

// ----- metrics -----------------------------------------------------------------

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to metrics");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_slow_metrics_client_blocks_no_other_scrape() {
    let sim = Daemon::sim();
    let port = free_port();
    let proxy = Daemon::proxy(sim.addr, "127.0.0.1", &format!("metrics_port = {port}\n"), 2, |_| {});
    let maddr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    eventually(WAIT, "the metrics endpoint", || TcpStream::connect(maddr).ok());
    let _b = Client::backend(proxy.addr);
    // One client trickles a request that never ends, a byte at a time (each
    // read succeeds, so only an overall deadline stops it); another sends
    // nothing at all.
    let mut slow = TcpStream::connect(maddr).expect("connect");
    let trickler = std::thread::spawn(move || {
        for _ in 0..150 {
            if slow.write_all(b"x").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let _silent = TcpStream::connect(maddr).expect("connect");
    for _ in 0..3 {
        let out = scrape(maddr);
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("gtm_proxy_backends{worker=\"0\"}"), "{out}");
    }
    let total: u64 = scrape(maddr)
        .lines()
        .filter(|l| l.starts_with("gtm_proxy_backends{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 1, "one backend connected");
    // The trickling client is cut off by its deadline.
    assert!(trickler.join().expect("trickler"), "a never-ending request was not cut off");
}

#[test]
fn metrics_bind_to_loopback_by_default() {
    let sim = Daemon::sim();
    let port = free_port();
    // Listening on every interface must not publish the metrics there.
    let _proxy = Daemon::proxy(sim.addr, "*", &format!("metrics_port = {port}\n"), 1, |_| {});
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let out = eventually(WAIT, "the metrics endpoint", || Some(scrape(local)).filter(|s| !s.is_empty()));
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    let other: SocketAddr = format!("127.0.0.2:{port}").parse().expect("addr");
    assert!(TcpStream::connect_timeout(&other, WAIT).is_err(), "metrics reachable on 127.0.0.2");
}

// ----- access control ------------------------------------------------------------

#[test]
fn client_networks_are_checked_at_accept_and_reloaded() {
    let sim = Daemon::sim();
    let proxy = Daemon::proxy(sim.addr, "127.0.0.1", "allowed_client_networks = '127.0.0.2/32'\n", 1, |_| {});
    // From 127.0.0.1: refused with FATAL, before any startup is sent.
    let mut denied = Client::connect_from(Ipv4Addr::new(127, 0, 0, 1), proxy.addr);
    let r = denied.reply();
    let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected FATAL, got {r:?}"));
    assert!(msg.contains("127.0.0.1") && msg.contains("not allowed"), "{msg}");
    assert!(matches!(denied.reply(), Reply::Closed));
    // From 127.0.0.2: served.
    let mut ok = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr);
    ok.send_startup("hardening", node_type::DEFAULT);
    assert!(matches!(ok.reply(), Reply::Frame(ServerFrame::Ready { .. })));
    ok.begin();
    let log = eventually(WAIT, "the refusal in the log", || {
        Some(proxy.log()).filter(|l| l.contains("refusing connection from 127.0.0.1"))
    });
    assert!(log.contains("allowed_client_networks"), "{log}");

    // Reload flips it: now only 127.0.0.1 is allowed.
    std::fs::write(proxy.dir.join("gtm_proxy.conf"), "allowed_client_networks = '127.0.0.1/32, ::1'\n").expect("conf");
    proxy.signal(libc::SIGHUP);
    eventually(WAIT, "the reload to allow 127.0.0.1", || {
        let mut c = Client::connect_from(Ipv4Addr::new(127, 0, 0, 1), proxy.addr);
        c.send_startup("hardening", node_type::DEFAULT);
        matches!(c.reply(), Reply::Frame(ServerFrame::Ready { .. })).then_some(())
    });
    let mut now_denied = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr);
    let r = now_denied.reply();
    assert!(fatal_message(&r).is_some_and(|m| m.contains("127.0.0.2")), "{r:?}");
    // The connection admitted before the reload keeps its service.
    ok.begin();
}

#[test]
fn an_invalid_network_list_on_reload_keeps_the_running_one() {
    let sim = Daemon::sim();
    let proxy = Daemon::proxy(sim.addr, "127.0.0.1", "allowed_client_networks = '127.0.0.1'\n", 1, |_| {});
    std::fs::write(proxy.dir.join("gtm_proxy.conf"), "allowed_client_networks = '127.0.0.0/99'\n").expect("conf");
    proxy.signal(libc::SIGHUP);
    eventually(WAIT, "the rejected reload in the log", || {
        Some(()).filter(|_| proxy.log().contains("configuration not reloaded"))
    });
    let mut c = Client::backend(proxy.addr);
    c.begin();
}

#[test]
fn node_names_and_remote_types_are_checked_at_startup_and_reloaded() {
    let sim = Daemon::sim();
    let conf = "allowed_node_names = 'coord1, dn1'\nallowed_remote_types = 'coordinator, datanode'\n";
    let proxy = Daemon::proxy(sim.addr, "127.0.0.1", conf, 1, |_| {});
    let startup = |name: &str, remote_type: i32| {
        let mut c = Client::connect(proxy.addr);
        c.send_startup(name, remote_type);
        let r = c.reply();
        (c, r)
    };
    let (_, r) = startup("intruder", node_type::COORDINATOR);
    let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected FATAL, got {r:?}"));
    assert!(msg.contains("intruder") && msg.contains("allowed_node_names"), "{msg}");
    let (_, r) = startup("coord1", node_type::DEFAULT);
    let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected FATAL, got {r:?}"));
    assert!(msg.contains("allowed_remote_types"), "{msg}");
    let (mut ok, r) = startup("dn1", node_type::DATANODE);
    assert!(matches!(r, Reply::Frame(ServerFrame::Ready { .. })), "{r:?}");
    ok.begin();
    eventually(WAIT, "the refusals in the log", || Some(()).filter(|_| proxy.log().contains("allowed_node_names")));

    // Reload: any node name, only the default remote type.
    std::fs::write(proxy.dir.join("gtm_proxy.conf"), "allowed_remote_types = 'default'\n").expect("conf");
    proxy.signal(libc::SIGHUP);
    let mut anyone = eventually(WAIT, "the reload to allow the default type", || {
        let (c, r) = startup("anyone", node_type::DEFAULT);
        matches!(r, Reply::Frame(ServerFrame::Ready { .. })).then_some(c)
    });
    anyone.begin();
    let (_, r) = startup("dn1", node_type::DATANODE);
    assert!(fatal_message(&r).is_some(), "{r:?}");
}

// ----- reconnect order while the new GTM is slow to register -------------------

/// In front of a real GTM: relays every link, except that a registration
/// link (a postmaster startup) gets no answer at all.
struct StallRegistration {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
    relayed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StallRegistration {
    fn start(gtm: SocketAddr) -> StallRegistration {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let held = Arc::new(AtomicUsize::new(0));
        let relayed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, r, s) = (held.clone(), relayed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut keep = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).expect("blocking");
                        c.set_read_timeout(Some(WAIT)).expect("timeout");
                        let mut buf = BytesMut::new();
                        let mut chunk = [0u8; 4096];
                        let first = loop {
                            if let Ok(Some(f)) = frame::split(&mut buf, DEFAULT_MAX_FRAME) {
                                break Some(f);
                            }
                            match c.read(&mut chunk) {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => break None,
                            }
                        };
                        let Some(first) = first else { continue };
                        let sp = StartupPacket::decode(&first.body).expect("startup packet");
                        if sp.is_postmaster {
                            h.fetch_add(1, Ordering::Relaxed);
                            keep.push(c);
                            continue;
                        }
                        let mut up = TcpStream::connect(gtm).expect("connect to the GTM");
                        let mut head = BytesMut::new();
                        first.encode(&mut head);
                        up.write_all(&head).expect("relay");
                        up.write_all(&buf).expect("relay");
                        c.set_read_timeout(None).expect("timeout");
                        let (mut c2, mut up2) = (c.try_clone().expect("clone"), up.try_clone().expect("clone"));
                        std::thread::spawn(move || std::io::copy(&mut c2, &mut up2));
                        std::thread::spawn(move || std::io::copy(&mut up, &mut c));
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StallRegistration { addr, held, relayed, stop }
    }
}

impl Drop for StallRegistration {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn reconnect_order_does_not_wait_for_a_slow_registration() {
    let old = Daemon::sim();
    // A promoted standby is ahead of what the old GTM handed out.
    let new = Daemon::sim_with(&["-x", "1000000"]);
    let stall = StallRegistration::start(new.addr);
    let proxy = Daemon::proxy(old.addr, "127.0.0.1", "", 2, |_| {});
    let mut before = Client::backend(proxy.addr);
    before.begin();
    std::fs::write(proxy.dir.join("newgtm"), format!("-s 127.0.0.1 -t {}\n", stall.addr.port())).expect("newgtm");
    proxy.signal(libc::SIGUSR1);
    eventually(WAIT, "the registration link to reach the new GTM", || {
        (stall.held.load(Ordering::Relaxed) > 0).then_some(())
    });
    // The old GTM goes away: from now on only the new one can answer.
    drop(old);
    // While the registration still waits for its answer, a new backend is
    // accepted and served through the new GTM by the workers.
    let mut after = Client::connect(proxy.addr);
    after.sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    after.send_startup("hardening", node_type::DEFAULT);
    assert!(matches!(after.reply(), Reply::Frame(ServerFrame::Ready { .. })), "accepted during registration");
    after.begin();
    before.begin();
    assert!(stall.relayed.load(Ordering::Relaxed) >= 2, "both workers moved to the new GTM");
    assert_eq!(stall.held.load(Ordering::Relaxed), 1, "the registration is still unanswered");
}

// ----- a dead worker ---------------------------------------------------------------

#[test]
fn a_dead_worker_is_replaced_and_gets_no_connection() {
    let sim = Daemon::sim();
    let proxy = Daemon::proxy(sim.addr, "127.0.0.1", "", 2, |cmd| {
        // Test-only hook: worker 0's first thread ends at once.
        cmd.env("GTM_PROXY_TEST_WORKER_DIES", "0");
    });
    // Every connection is served, none handed to the dead thread.
    let mut backends: Vec<Client> = (0..8).map(|_| Client::backend(proxy.addr)).collect();
    for b in &mut backends {
        b.begin();
    }
    let log =
        eventually(WAIT, "the restart in the log", || Some(proxy.log()).filter(|l| l.contains("worker 0 restarted")));
    assert!(log.contains("worker 0 died unexpectedly"), "{log}");
    // The replacement takes its share.
    let mut more: Vec<Client> = (0..8).map(|_| Client::backend(proxy.addr)).collect();
    for b in &mut more {
        b.begin();
    }
}

#[test]
fn a_worker_that_keeps_dying_stops_the_proxy_with_fatal() {
    let sim = Daemon::sim();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gtm_proxy"))
        .arg("-D")
        .arg(dir)
        .args(["-h", "127.0.0.1", "-p", "0", "-s", "127.0.0.1", "-t", &sim.addr.port().to_string()])
        .args(["-i", "hardening_proxy", "-n", "2"])
        .env("GTM_PROXY_TEST_WORKER_DIES", "1:always")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr log"))
        .spawn()
        .expect("spawn");
    let status = eventually(WAIT, "the proxy to give up", || child.try_wait().ok().flatten());
    let log = read(&dir.join("gtm_proxy.log")) + &read(&dir.join("stderr.log"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("FATAL") && log.contains("worker 1 died"), "{log}");
}
