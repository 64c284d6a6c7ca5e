//! Hostile backends and a hostile GTM answer against the real proxy
//! (issue 8, worker side): stuck partial frames, connections that never
//! start up, floods of bad frames, and a GTM answer of exactly the read cap.
//! In each, the proxy keeps serving the healthy backend, closes the bad
//! connection, and ends with every descriptor released, no backend counted
//! and no transaction left open on the GTM. Evidence is state (metrics,
//! /proc descriptors, the GTM's persisted state, what each socket received),
//! never elapsed time.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gtmproxy::codec::*;
use harness::*;

fn with_metrics(conf: &str) -> (String, u16) {
    let port = free_port();
    (format!("{conf}metrics_port = {port}\n"), port)
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(usize::MAX)
}

/// Open transactions in the simulator's persisted state.
fn open_txns(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("gtm_sim.state")).unwrap_or_default();
    text.lines().filter(|l| l.starts_with("txn ")).count()
}

/// A begin and its commit through `c`: the backend is served.
fn round_trip(c: &mut Client) {
    let g = c.begin();
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
}

/// A proxy in front of a persisting simulator, with metrics, and the
/// proxy's descriptor count before any backend came.
struct Setup {
    sim: Daemon,
    proxy: Daemon,
    mport: u16,
    /// Descriptors of the proxy with every link up and no backend.
    fds_idle: usize,
}

fn setup(conf: &str, workers: usize) -> Setup {
    setup_with_gtm(Daemon::sim(&["--persist"]), None, conf, workers)
}

fn setup_with_gtm(sim: Daemon, gtm: Option<SocketAddr>, conf: &str, workers: usize) -> Setup {
    let (conf, mport) = with_metrics(conf);
    let proxy = Daemon::proxy(gtm.unwrap_or(sim.addr), &conf, workers);
    wait_metrics(mport, "every GTM link up", |m| metric_sum(m, "gtm_proxy_gtm_link_up") == workers as u64);
    let fds_idle = open_fds(proxy.pid());
    Setup { sim, proxy, mport, fds_idle }
}

impl Setup {
    /// Once every client is gone: no backend counted, descriptors back to
    /// the idle count, no transaction open on the GTM.
    fn assert_clean(&self) {
        wait_metrics(self.mport, "no backend left", |m| metric_sum(m, "gtm_proxy_backends") == 0);
        let pid = self.proxy.pid();
        let fds = eventually(WAIT, || {
            let n = open_fds(pid);
            (n <= self.fds_idle).then_some(n)
        });
        assert!(fds <= self.fds_idle);
        eventually(WAIT, || (open_txns(&self.sim.dir) == 0).then_some(()));
        wait_metrics(self.mport, "an empty ledger", |m| metric_sum(m, "gtm_proxy_ledger_gxids") == 0);
    }
}

/// A connection that sent a valid startup packet (the proxy answered `R`).
fn started(addr: SocketAddr) -> Client {
    Client::proxy_backend(addr, "cn1")
}

fn frame_header(tag: u8, len: u32) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// Read frames until the proxy closes the connection; returns them.
fn frames_until_close(c: &mut Client) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match c.try_recv_raw() {
            Some(raw) => out.push(ServerFrame::decode(raw, false).expect("decodable")),
            None => return out,
        }
    }
    panic!("no end of stream after 10000 frames");
}

fn errors(frames: &[ServerFrame]) -> Vec<ErrorFields> {
    frames
        .iter()
        .map(|f| match f {
            ServerFrame::Error { fields, .. } => fields.clone(),
            other => panic!("expected only E frames, got {other:?}"),
        })
        .collect()
}

/// Item 1: connections that send part of a 1,000,000-byte frame (more
/// than the proxy buffers before pausing) and close are let go; one that
/// sends the whole frame gets its answer; one that stops half-way and stays
/// open is closed with `E` once the frame deadline passes.
#[test]
fn partial_frames_complete_or_close() {
    let s = setup("backend_frame_timeout = 1s\n", 1);
    let mut good = started(s.proxy.addr);
    round_trip(&mut good);

    let big = frame_header(b'C', 1_000_000);
    let mut quitters = Vec::new();
    for _ in 0..30 {
        let mut c = started(s.proxy.addr);
        c.send_raw(&big);
        c.send_raw(&vec![0u8; 320_000]);
        let _ = c.sock.shutdown(std::net::Shutdown::Write);
        quitters.push(c);
    }
    // The whole frame completes: the proxy answers it (an error: its body
    // is no GTM message) and serves the connection on.
    let mut whole = started(s.proxy.addr);
    whole.send_raw(&big);
    whole.send_raw(&vec![0u8; 1_000_000 - 4]);
    match whole.recv() {
        ServerFrame::Error { fields, .. } => assert_eq!(fields.severity(), "ERROR", "{}", fields.message()),
        other => panic!("the whole frame was answered with {other:?}"),
    }
    round_trip(&mut whole);
    // Half a frame, then silence: closed with a FATAL E.
    let mut stalled = started(s.proxy.addr);
    stalled.send_raw(&big);
    stalled.send_raw(&vec![0u8; 100_000]);
    let e = errors(&frames_until_close(&mut stalled));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].severity(), "FATAL");

    for c in &mut quitters {
        assert!(c.closed_within(WAIT), "a connection that sent part of a frame and closed is let go");
    }
    round_trip(&mut good);
    drop(quitters);
    whole.close();
    good.close();
    assert!(whole.closed_within(WAIT) && good.closed_within(WAIT));
    s.assert_clean();
}

/// Items 2 and 6: connections that never send a startup packet are closed
/// by the start-up deadline, and at most `max_startup_backends` wait at
/// once (the oldest go first), so a real backend is never locked out.
#[test]
fn silent_connections_are_bounded_and_closed() {
    let s = setup("backend_startup_timeout = 2s\nmax_startup_backends = 4\n", 1);
    let mut silent: Vec<Client> = (0..10).map(|_| Client::connect(s.proxy.addr)).collect();
    // The six oldest make room for the four newest: each gets a FATAL E.
    for c in &mut silent[..6] {
        let e = errors(&frames_until_close(c));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].severity(), "FATAL");
        assert!(e[0].message().contains("start-up"), "{}", e[0].message());
    }
    // With every start-up slot taken, a real backend still gets in.
    let mut good = started(s.proxy.addr);
    round_trip(&mut good);
    // The rest are closed by the deadline.
    // (The newcomer may have pushed out one more of them.)
    for c in &mut silent[6..] {
        let e = errors(&frames_until_close(c));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].severity(), "FATAL");
    }
    round_trip(&mut good);
    drop(silent);
    good.close();
    assert!(good.closed_within(WAIT));
    s.assert_clean();
}

/// Item 3: 1 MB of 4-byte bad frames costs one connection a handful of
/// `E`s and its connection, and the log a handful of lines with a summary,
/// while a backend on the same worker is served throughout.
#[test]
fn bad_frame_flood_closes_the_connection() {
    let s = setup("backend_error_limit = 20\n", 1);
    let mut good = started(s.proxy.addr);
    round_trip(&mut good);
    let mut bad = started(s.proxy.addr);
    let mut w = bad.writer();
    let flood = std::thread::spawn(move || {
        let junk = [b'C', 0, 0, 0, 4].repeat(200_000);
        // The proxy closes the connection part-way: the write then fails.
        let _ = w.write_all(&junk);
    });
    round_trip(&mut good);
    let e = errors(&frames_until_close(&mut bad));
    let (fatal, plain): (Vec<_>, Vec<_>) = e.iter().partition(|f| f.severity() == "FATAL");
    assert_eq!(plain.len(), 19, "errors before the limit: {e:?}");
    assert_eq!(fatal.len(), 1, "{e:?}");
    assert!(fatal[0].message().contains("too many protocol errors"), "{}", fatal[0].message());
    flood.join().expect("flood thread");
    round_trip(&mut good);
    good.close();
    assert!(good.closed_within(WAIT));
    s.assert_clean();
    let log = s.proxy.log();
    let lines = log.lines().filter(|l| l.contains("invalid message")).count();
    assert!(lines <= 5, "{lines} log lines about the bad frames:\n{log}");
    assert!(log.contains("similar message"), "no summary of the suppressed lines:\n{log}");
}

/// Item 7: an answer whose length field is exactly the link's 4 MiB read
/// cap, so that a buffer of exactly the cap holds it but one byte. The
/// worker reads it whole (and fails the link over it: it answers
/// nothing) instead of spinning on a full buffer; its backends are served
/// after the reconnect.
#[test]
fn upstream_answer_of_the_read_cap() {
    let sim = Daemon::sim(&["--persist"]);
    let relay = InjectingRelay::start(sim.addr);
    let mut s = setup_with_gtm(sim, Some(relay.addr), "gtm_connect_retry_interval = 200ms\nupstream_timeout = 0\n", 1);
    assert!(relay.injected.load(Ordering::SeqCst), "the bogus answer went out");
    wait_metrics(s.mport, "the link failed over the bogus answer", |m| {
        metric_sum(m, "gtm_proxy_gtm_link_failures_total") >= 1 && metric_sum(m, "gtm_proxy_gtm_link_up") == 1
    });
    // The idle figure of the link that is up now.
    s.fds_idle = open_fds(s.proxy.pid());
    let mut good = started(s.proxy.addr);
    round_trip(&mut good);
    round_trip(&mut good);
    good.close();
    assert!(good.closed_within(WAIT));
    s.assert_clean();
}

/// A relay to the GTM that, on the first worker link only, follows the
/// GTM's startup answer with an `S` frame whose length field is 4 MiB.
struct InjectingRelay {
    addr: SocketAddr,
    injected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl InjectingRelay {
    fn start(target: SocketAddr) -> InjectingRelay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        l.set_nonblocking(true).expect("nonblocking");
        let injected = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (inj, st) = (injected.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(mut up) = TcpStream::connect_timeout(&target, WAIT) else { continue };
                down.set_nonblocking(false).expect("blocking");
                // Pass the proxy's startup packet on, and look at it: only
                // a worker link (remote type 1) gets the bogus answer.
                let Some(startup) = read_frame(&down, &mut BytesMut::new()) else { continue };
                let mut b = BytesMut::new();
                startup.encode(&mut b);
                if up.write_all(&b).is_err() {
                    continue;
                }
                let worker_link = matches!(
                    StartupPacket::decode(&startup.body),
                    Ok(sp) if sp.remote_type == types::node_type::GTM_PROXY
                );
                let first = worker_link && !inj.swap(true, Ordering::SeqCst);
                let (d2, u2) = (down.try_clone().expect("clone"), up.try_clone().expect("clone"));
                std::thread::spawn(move || copy(down, up));
                std::thread::spawn(move || if first { inject_after_startup(u2, d2) } else { copy(u2, d2) });
            }
        });
        InjectingRelay { addr, injected, stop }
    }
}

impl Drop for InjectingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = from.set_read_timeout(None);
    let _ = to.set_write_timeout(Some(WAIT));
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// One whole frame from `from` (bytes after it stay in `buf`).
fn read_frame(mut from: &TcpStream, buf: &mut BytesMut) -> Option<RawFrame> {
    let _ = from.set_read_timeout(Some(WAIT));
    let mut tmp = [0u8; 4096];
    loop {
        if let Ok(Some(f)) = frame::split(buf, frame::DEFAULT_MAX_FRAME) {
            return Some(f);
        }
        match from.read(&mut tmp) {
            Ok(n) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            _ => return None,
        }
    }
}

/// Pass the GTM's startup answer on, then the bogus frame, then the rest.
fn inject_after_startup(from: TcpStream, mut to: TcpStream) {
    let _ = to.set_write_timeout(Some(WAIT));
    let mut buf = BytesMut::new();
    let Some(startup_answer) = read_frame(&from, &mut buf) else { return };
    let mut out = BytesMut::new();
    startup_answer.encode(&mut out);
    // The frame takes cap + 1 bytes. The first cap of them are sent, and
    // the last one only after a pause, so that the proxy's buffer holds
    // exactly the read cap of an incomplete frame at some point.
    let cap = 4u32 << 20;
    out.extend_from_slice(&frame_header(b'S', cap));
    out.extend_from_slice(&vec![0u8; cap as usize - 5]);
    if to.write_all(&out).is_err() {
        return;
    }
    std::thread::sleep(Duration::from_millis(500));
    out.clear();
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&buf);
    if to.write_all(&out).is_err() {
        return;
    }
    copy(from, to);
}
