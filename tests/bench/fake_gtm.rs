//! A tiny in-test fake GTM for tests/bench.rs: a std `TcpListener` with one
//! thread per connection that speaks just enough of the protocol (`R`, and
//! answers to 16/40/24 with the real layouts and unique GXIDs), checks that
//! every request is exactly what an XL 10 backend sends (one at a time), and
//! can be told to misbehave. It stops when dropped (and after 60 s regardless).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::*;

/// How the fake GTM misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
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

pub struct FakeState {
    fault: Fault,
    stop: AtomicBool,
    txns: Mutex<Txns>,
    pub begins: AtomicU32,
    pub commits: AtomicU32,
    pub clients: AtomicU32,
    /// Begins that carried a lone NUL instead of a session id.
    pub bare_begins: AtomicU32,
    /// Anything a real XL 10 backend would not have sent.
    violations: Mutex<Vec<String>>,
}

pub struct FakeGtm {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    accept: Option<JoinHandle<()>>,
}

impl FakeGtm {
    pub fn start(fault: Fault) -> FakeGtm {
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
            bare_begins: AtomicU32::new(0),
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

    pub fn violations(&self) -> Vec<String> {
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
            if sid == b"\0" {
                st.bare_begins.fetch_add(1, Ordering::Relaxed);
            }
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
