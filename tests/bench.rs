//! End-to-end tests of the `gtm_bench` binary against a tiny in-test fake
//! GTM: a std `TcpListener` with one thread per connection that speaks just
//! enough of the protocol (`R`, and answers to 16/40/24 with the real
//! layouts and unique GXIDs), checks that every request is exactly what an
//! XL 10 backend sends, and can be told to misbehave.
//!
//! Every loop here is bounded in time: the fake stops when dropped, and the
//! bench process is killed if it outlives its deadline.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::*;
use serde_json::Value;

/// How the fake GTM misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Every Nth begin gets the GXID of the previous begin again.
    DuplicateGxidEvery(u32),
    /// Every Nth commit is answered with an `E` frame.
    ErrorOnCommitEvery(u32),
    /// The connection is closed right after every Nth commit answer.
    CloseAfterCommitEvery(u32),
}

#[derive(Default)]
struct Txns {
    next: u32,
    latest_completed: u32,
    open: BTreeSet<u32>,
}

struct FakeState {
    fault: Fault,
    stop: AtomicBool,
    txns: Mutex<Txns>,
    begins: AtomicU32,
    commits: AtomicU32,
    clients: AtomicU32,
    /// Anything a real XL 10 backend would not have sent.
    violations: Mutex<Vec<String>>,
}

struct FakeGtm {
    addr: SocketAddr,
    state: Arc<FakeState>,
    accept: Option<JoinHandle<()>>,
}

impl FakeGtm {
    fn start(fault: Fault) -> FakeGtm {
        // std's bind() listens with a backlog of 128, fewer than the bench's
        // 256 connects in flight: overflowing SYNs would be retried only after
        // a second or more.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        sock.listen(1024).unwrap();
        let listener: TcpListener = sock.into();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            fault,
            stop: AtomicBool::new(false),
            txns: Mutex::new(Txns { next: 10000, latest_completed: 9999, open: BTreeSet::new() }),
            begins: AtomicU32::new(0),
            commits: AtomicU32::new(0),
            clients: AtomicU32::new(1),
            violations: Mutex::new(Vec::new()),
        });
        let (st, st2) = (state.clone(), state.clone());
        let accept = std::thread::spawn(move || {
            // Bounded: stops when the test drops the fake (and after 60 s regardless).
            let deadline = Instant::now() + Duration::from_secs(60);
            while !st.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        // Small stacks: the 10,000-connection test runs one thread per connection.
                        let spawned = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || serve(s, &st));
                        if let Err(e) = spawned {
                            violation(&st2, format!("cannot start a connection thread: {e}"));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        FakeGtm { addr, state, accept: Some(accept) }
    }

    fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }
}

impl Drop for FakeGtm {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn violation(st: &FakeState, v: String) {
    let mut l = st.violations.lock().unwrap();
    if l.len() < 20 {
        l.push(v);
    }
}

/// One connection. Blocking reads: the thread ends when the bench closes
/// the connection, which it always does by exiting at the latest.
fn serve(mut s: TcpStream, st: &FakeState) {
    s.set_nodelay(true).unwrap();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let mut out = BytesMut::new();
    let mut started = false;
    loop {
        loop {
            let raw = match frame::split(&mut buf, DEFAULT_MAX_FRAME) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => return violation(st, format!("framing: {e}")),
            };
            if !buf.is_empty() {
                violation(st, "a second request before the answer to the first".into());
            }
            out.clear();
            let mut keep = true;
            match ClientFrame::decode(raw, false) {
                Ok(ClientFrame::Startup(sp)) if !started => {
                    if sp.remote_type != node_type::DEFAULT || sp.is_postmaster || sp.client_id != 0 {
                        violation(st, format!("startup {sp:?}"));
                    }
                    if !matches!(sp.name(), b"cn1" | b"dn1") {
                        violation(st, format!("node name {:?}", sp.name_lossy()));
                    }
                    started = true;
                    startup::encode_ready(&mut out, st.clients.fetch_add(1, Ordering::Relaxed) + 1);
                }
                Ok(ClientFrame::Command(c)) if started => match c.request() {
                    Ok(req) => keep = answer(st, req, &mut out),
                    Err(e) => violation(st, format!("request {}: {e}", c.msg_type)),
                },
                Ok(ClientFrame::Close) => return,
                other => return violation(st, format!("unexpected frame {other:?}")),
            }
            if s.write_all(&out).is_err() || !keep {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answer one request; false: close the connection once the answer is sent.
fn answer(st: &FakeState, req: Request, out: &mut BytesMut) -> bool {
    let mut t = st.txns.lock().unwrap();
    match req {
        Request::TxnBeginGetGxid(b) => {
            if b.isolation != 1 || b.read_only {
                violation(st, format!("begin {b:?}"));
            }
            let sid = &b.session_id[..];
            let shaped = sid == b"\0"
                || sid.ends_with(b"\0")
                    && (sid.starts_with(b"cn1_") || sid.starts_with(b"dn1_"))
                    && sid.iter().filter(|&&c| c == b'_').count() == 2;
            if !shaped {
                violation(st, format!("session id {:?}", String::from_utf8_lossy(sid)));
            }
            let n = st.begins.fetch_add(1, Ordering::Relaxed) + 1;
            let gxid = match st.fault {
                Fault::DuplicateGxidEvery(k) if n.is_multiple_of(k) => t.next - 1,
                _ => {
                    t.next += 1;
                    t.next - 1
                }
            };
            t.open.insert(gxid);
            encode_result(out, None, &Response::TxnBeginGetGxid { gxid, timestamp: 848615791432038 });
        }
        Request::SnapshotGetMulti(v) => {
            if v.len() != 1 {
                violation(st, format!("snapshot of {v:?}"));
            }
            let xmax = t.latest_completed + 1;
            let xip: Vec<u32> = t.open.range(..xmax).copied().collect();
            let xmin = xip.first().copied().unwrap_or(xmax);
            let snapshot = Snapshot { xmin, xmax, xip };
            encode_result(out, None, &Response::SnapshotGetMulti { statuses: vec![0; v.len()], snapshot });
        }
        Request::TxnCommitMulti(v) => {
            if v.len() != 1 {
                violation(st, format!("commit of {v:?}"));
            }
            let n = st.commits.fetch_add(1, Ordering::Relaxed) + 1;
            if let Fault::ErrorOnCommitEvery(k) = st.fault {
                if n.is_multiple_of(k) {
                    encode_error(out, None, &ErrorFields::new("ERROR", "fake commit failure"));
                    return true;
                }
            }
            for g in &v {
                t.open.remove(g);
                t.latest_completed = t.latest_completed.max(*g);
            }
            encode_result(out, None, &Response::TxnCommitMulti { statuses: vec![0; v.len()] });
            if let Fault::CloseAfterCommitEvery(k) = st.fault {
                return !n.is_multiple_of(k);
            }
        }
        other => violation(st, format!("unexpected request {:?}", other.msg_type())),
    }
    true
}

/// Run gtm_bench, killing it if it is still running after `limit`.
fn bench(args: &[&str], envs: &[(&str, String)], limit: Duration) -> (Output, Value) {
    bench_exe(Path::new(env!("CARGO_BIN_EXE_gtm_bench")), args, envs, limit)
}

fn bench_exe(exe: &Path, args: &[&str], envs: &[(&str, String)], limit: Duration) -> (Output, Value) {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("gtm_bench still running after {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    (out, json)
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn clean_run_against_the_fake_gtm() {
    let gtm = FakeGtm::start(Fault::None);
    let p = port(gtm.addr);
    let args = ["--port", &p, "--backends", "50", "--duration", "2", "--warmup", "0", "--json", "-"];
    let (out, j) = bench(&args, &[], Duration::from_secs(15));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{err}");
    assert_eq!(j["ok"], true);
    assert_eq!(j["target"], format!("127.0.0.1:{p}"));
    assert_eq!(j["via"], "direct");
    assert_eq!(j["backends"], 50);
    assert!(j["txns"].as_u64().unwrap() > 0);
    assert!(j["txn_per_s"].as_f64().unwrap() > 0.0);
    let count = |op: &str| j["latency_us"][op]["count"].as_u64().unwrap();
    assert_eq!(j["ops"].as_u64().unwrap(), count("begin") + count("snapshot") + count("commit"));
    assert_eq!(j["txns"].as_u64().unwrap(), count("commit"));
    assert_eq!(count("txn"), count("commit"));
    assert_eq!(j["errors"]["total"], 0, "{j:#}");
    assert_eq!(j["gxids"]["duplicates"], 0);
    assert_eq!(j["gxids"]["duplicates_while_open"], 0);
    assert!(j["gxids"]["handed_out"].as_u64().unwrap() >= j["txns"].as_u64().unwrap());
    assert_eq!(j["connections"]["established"], 50);
    assert_eq!(j["connections"]["failed"], 0);
    let m = j["measured_s"].as_f64().unwrap();
    assert!((1.9..2.5).contains(&m), "measured {m}");
    for op in ["begin", "snapshot", "commit", "txn"] {
        let l = &j["latency_us"][op];
        assert!(l["count"].as_u64().unwrap() > 0, "{op}");
        let (p50, p99, max) = (l["p50"].as_f64().unwrap(), l["p99"].as_f64().unwrap(), l["max"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{op}: {l}");
    }
    assert!(err.contains("txn/s") && err.contains("OK"), "{err}");
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

#[test]
fn no_session_id_and_think_time() {
    let gtm = FakeGtm::start(Fault::None);
    let p = port(gtm.addr);
    let args = [
        "--port",
        &p,
        "--backends",
        "10",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--think-us",
        "20000",
        "--no-session-id",
        "--threads",
        "2",
    ];
    let (out, j) = bench(&args, &[], Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    // 10 backends thinking 20 ms between transactions: well under 500 txn/s.
    let tps = j["txn_per_s"].as_f64().unwrap();
    assert!(tps > 50.0 && tps < 500.0, "{tps}");
    assert_eq!(j["session_ids"], false);
    assert_eq!(j["threads"], 2);
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

#[test]
fn duplicate_gxids_are_reported() {
    let gtm = FakeGtm::start(Fault::DuplicateGxidEvery(7));
    let p = port(gtm.addr);
    let args = ["--port", &p, "--backends", "20", "--duration", "1", "--warmup", "0"];
    let (out, j) = bench(&args, &[], Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    assert_eq!(j["ok"], false);
    let dups = j["gxids"]["duplicates"].as_u64().unwrap();
    assert!(dups > 0, "{j:#}");
    let handed = j["gxids"]["handed_out"].as_u64().unwrap();
    assert_eq!(j["gxids"]["unique"].as_u64().unwrap() + dups, handed);
    assert!(stderr(&out).contains("duplicate gxids"));
}

#[test]
fn server_errors_are_counted_and_backends_reconnect() {
    let gtm = FakeGtm::start(Fault::ErrorOnCommitEvery(50));
    let p = port(gtm.addr);
    let args = ["--port", &p, "--backends", "20", "--duration", "1", "--warmup", "0", "--max-reconnects", "1000000"];
    let (out, j) = bench(&args, &[], Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    let e = &j["errors"];
    let n = e["by_kind"]["server_error"].as_u64().unwrap();
    assert!(n > 0, "{j:#}");
    assert_eq!(e["by_op"]["commit"].as_u64().unwrap(), n);
    assert_eq!(e["total"].as_u64().unwrap(), n);
    assert!(j["connections"]["reconnects"].as_u64().unwrap() > 0);
    assert!(j["connections"]["established"].as_u64().unwrap() > 20);
    assert!(j["txns"].as_u64().unwrap() > 0);
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

#[test]
fn a_close_right_after_an_answer_is_noticed_at_once() {
    let gtm = FakeGtm::start(Fault::CloseAfterCommitEvery(20));
    let p = port(gtm.addr);
    let args = ["--port", &p, "--backends", "10", "--duration", "1", "--warmup", "0", "--max-reconnects", "1000000"];
    let (out, j) = bench(&args, &[], Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    let e = &j["errors"];
    let closes = e["by_kind"]["unexpected_close"].as_u64().unwrap();
    assert!(closes > 0, "{j:#}");
    assert_eq!(e["total"].as_u64().unwrap(), closes, "nothing but the closes: no timeouts");
    // Blamed on the commit just answered when the FIN came with it, else on the next begin.
    let by_op = |op: &str| e["by_op"][op].as_u64().unwrap();
    assert_eq!(by_op("commit") + by_op("begin"), closes, "{e}");
    // Without noticing the close at once, each would stall a backend for the 20 s request timeout.
    assert!(j["txns"].as_u64().unwrap() > 10 * closes, "{j:#}");
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

#[test]
fn error_limit_ends_the_run_early() {
    let gtm = FakeGtm::start(Fault::ErrorOnCommitEvery(2));
    let p = port(gtm.addr);
    let args = ["--port", &p, "--backends", "5", "--duration", "10", "--warmup", "0", "--max-errors", "20"];
    let started = Instant::now();
    let (out, j) = bench(&args, &[], Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(8), "stopped early");
    assert!(j["stop_reason"].as_str().unwrap().contains("error limit"), "{j:#}");
    assert!(j["errors"]["total"].as_u64().unwrap() >= 20);
}

#[test]
fn unreachable_target_is_fatal() {
    // A port nobody listens on: bind one, note it, close it.
    let p = port(TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
    let args = ["--port", &p, "--backends", "3", "--duration", "1", "--max-reconnects", "1"];
    let (out, j) = bench(&args, &[], Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(j["ok"], false);
    assert!(j["fatal"].as_str().unwrap().contains("no connection"), "{j:#}");
}

/// A stand-in for a proxy binary that cannot serve: records its arguments
/// and exits at once with a message.
fn stub_proxy(dir: &Path, record: &Path) -> PathBuf {
    let path = dir.join("gtm_proxy");
    let script =
        format!("#!/bin/sh\necho \"$@\" > \"{}\"\necho 'stub: not implemented' >&2\nexit 0\n", record.display());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The README's first command on a fresh clone: `cargo run --bin gtm_bench`
/// builds only gtm_bench, so there is no gtm_sim or gtm_proxy beside it. A
/// copy of the binary alone in a directory must still run the whole demo.
#[test]
fn spawn_sim_via_proxy_works_without_sibling_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let lone = tmp.path().join("gtm_bench");
    std::fs::copy(env!("CARGO_BIN_EXE_gtm_bench"), &lone).unwrap();
    assert!(!tmp.path().join("gtm_sim").exists() && !tmp.path().join("gtm_proxy").exists());
    let args = ["--spawn-sim", "--via-proxy", "--backends", "20", "--duration", "1", "--warmup", "0"];
    let (out, j) = bench_exe(&lone, &args, &[], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["via"], "proxy");
    assert!(j["txns"].as_u64().unwrap() > 0, "{j:#}");
    assert!(j["cpu"]["proxy"]["cpu_us"].is_u64() && j["cpu"]["sim"]["cpu_us"].is_u64(), "{j:#}");
    assert_eq!(j["errors"]["total"], 0, "{j:#}");
}

#[test]
fn a_stub_proxy_is_reported_as_a_failed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("args");
    let proxy = stub_proxy(tmp.path(), &record);
    let args = ["--spawn-sim", "--via-proxy", "--proxy-bin", proxy.to_str().unwrap()];
    let (out, j) = bench(&args, &[], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(j["ok"], false);
    let fatal = j["fatal"].as_str().unwrap();
    assert!(fatal.contains("gtm_proxy exited") && fatal.contains("stub: not implemented"), "{fatal}");
    // Only XL's flags: a port chosen by the bench, never our `-p 0` extension.
    let args = std::fs::read_to_string(&record).unwrap();
    let words: Vec<&str> = args.split_whitespace().collect();
    let port = words.iter().position(|w| *w == "-p").map(|i| words[i + 1]).unwrap();
    assert!(port.parse::<u16>().unwrap() > 0, "{args}");
    assert!(words.starts_with(&["-D"]) && words.contains(&"-s") && words.contains(&"-t"), "{args}");
}

/// Raise this process's open-file limit to `want` if the hard limit allows.
fn raise_nofile(want: u64) -> bool {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only access the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_max < want {
            return false;
        }
        lim.rlim_cur = lim.rlim_cur.max(want);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

/// The bench must hold 10,000 connections at once (the fake GTM's side of
/// them lives in this test process, one thread each).
#[test]
fn ten_thousand_connections() {
    if !raise_nofile(10_300) {
        eprintln!("skipped: the open-file hard limit is below 10,300");
        return;
    }
    let gtm = FakeGtm::start(Fault::None);
    let p = port(gtm.addr);
    // A long think time keeps the thread-per-connection fake from being the bottleneck.
    let args = ["--port", &p, "--backends", "10000", "--duration", "1", "--warmup", "0", "--think-us", "1000000"];
    let (out, j) = bench(&args, &[], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    eprintln!("{}connect_s {}", stderr(&out), j["connect_s"]);
    assert_eq!(j["connections"]["established"], 10000);
    assert_eq!(j["errors"]["total"], 0);
    assert!(j["txns"].as_u64().unwrap() > 0);
    assert_eq!(gtm.violations(), Vec::<String>::new());
}
