//! Replay rules after a lost GTM link, per message type, and the replay
//! limit. A cutting relay sits between the proxy and gtm_sim: when it sees
//! a request of a chosen type it either passes it to the GTM and breaks the
//! link before the answer comes back (the request was carried out, its
//! answer lost), or breaks the link without passing it on.

mod harness;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gtmproxy::codec::request::SeqSession;
use gtmproxy::codec::{MsgType, Request, Response};
use harness::*;

/// One cut: the next request of `msg_type` breaks the link; `deliver` says
/// whether the GTM gets it first.
#[derive(Clone, Copy)]
struct Cut {
    msg_type: MsgType,
    deliver: bool,
    times: u32,
}

#[derive(Default)]
struct Shared {
    cuts: Mutex<Vec<Cut>>,
    /// Requests of a cut type seen (cut or not).
    seen: Mutex<Vec<MsgType>>,
    done: AtomicU32,
    refuse: AtomicBool,
    stop: AtomicBool,
}

struct CutRelay {
    addr: SocketAddr,
    s: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CutRelay {
    fn start(target: SocketAddr) -> CutRelay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let s = Arc::new(Shared::default());
        let s2 = s.clone();
        let thread = std::thread::spawn(move || {
            while !s2.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((down, _)) if s2.refuse.load(Ordering::Relaxed) => drop(down),
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect_timeout(&target, WAIT) else { continue };
                        down.set_nonblocking(false).ok();
                        let s3 = s2.clone();
                        std::thread::spawn(move || link(down, up, s3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CutRelay { addr, s, thread: Some(thread) }
    }

    fn cut(&self, msg_type: MsgType, deliver: bool, times: u32) {
        self.s.cuts.lock().unwrap().push(Cut { msg_type, deliver, times });
    }

    fn cuts_done(&self) -> u32 {
        self.s.done.load(Ordering::Relaxed)
    }

    fn seen(&self, t: MsgType) -> usize {
        self.s.seen.lock().unwrap().iter().filter(|x| **x == t).count()
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.s.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One proxied link: frames from the proxy are passed on one by one until a
/// cut applies; answers are passed back until the link is cut.
fn link(mut down: TcpStream, mut up: TcpStream, s: Arc<Shared>) {
    let cut = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicBool::new(false));
    let (mut u2, mut d2) = (up.try_clone().expect("clone"), down.try_clone().expect("clone"));
    let (cut2, answered2) = (cut.clone(), answered.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        loop {
            match u2.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if cut2.load(Ordering::SeqCst) {
                        answered2.store(true, Ordering::SeqCst);
                        break;
                    }
                    if d2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = d2.shutdown(Shutdown::Write);
    });
    let mut first = true;
    let mut cut_done = false;
    each_frame(&mut down, |bytes| {
        let mut this_cut = None;
        if let Some(cmd) = proxied_command(&bytes).filter(|_| !first) {
            let mut cuts = s.cuts.lock().unwrap();
            if cuts.iter().any(|c| c.msg_type == cmd.msg_type) {
                s.seen.lock().unwrap().push(cmd.msg_type);
            }
            if let Some(c) = cuts.iter_mut().find(|c| c.msg_type == cmd.msg_type && c.times > 0) {
                c.times -= 1;
                this_cut = Some(*c);
            }
        }
        first = false;
        if let Some(c) = this_cut {
            s.done.fetch_add(1, Ordering::SeqCst);
            cut.store(true, Ordering::SeqCst);
            if c.deliver {
                let _ = up.write_all(&bytes);
                let _ = up.write_all(&[b'F', 0, 0, 0, 4]);
                // Let the GTM carry it out: wait (bounded) for its answer.
                let t0 = Instant::now();
                while !answered.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            cut_done = true;
            return false;
        }
        up.write_all(&bytes).is_ok()
    });
    if cut_done {
        let _ = down.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
        return;
    }
    let _ = up.shutdown(Shutdown::Write);
}

fn session() -> SeqSession {
    SeqSession { coord_name: Bytes::from_static(b"cn1\0"), coord_pid: 42 }
}

fn next_val(key: &'static [u8]) -> Request {
    Request::SequenceGetNext { key: Bytes::from_static(key), session: session(), range: 1 }
}

fn value_of(r: Response) -> i64 {
    match r {
        Response::SequenceGetNext { value, .. } => value,
        other => panic!("not a nextval answer: {other:?}"),
    }
}

const CONF: &str = "upstream_timeout = 0\n";

fn setup() -> (Daemon, CutRelay, Daemon) {
    let sim = Daemon::sim(&[]);
    let relay = CutRelay::start(sim.addr);
    let proxy = Daemon::proxy(relay.addr, CONF, 1);
    (sim, relay, proxy)
}

fn create_seq(c: &mut Client, key: &'static [u8]) {
    let r = c.call(&Request::SequenceInit {
        key: Bytes::from_static(key),
        increment: 1,
        min: 1,
        max: 1_000_000,
        start: 1,
        cycle: false,
        gxid: 0,
    });
    assert!(matches!(r, Response::SequenceInit { .. }), "{r:?}");
}

/// A nextval the GTM carried out but whose answer was lost is answered
/// with an `E`, not sent again: the sequence advanced once.
#[test]
fn a_lost_nextval_is_not_run_twice() {
    let (_sim, relay, proxy) = setup();
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    create_seq(&mut c, b"s1\0");
    relay.cut(MsgType::SEQUENCE_GET_NEXT, true, 1);
    let e = c.call_err(&next_val(b"s1\0"));
    assert!(e.message().starts_with("outcome unknown after GTM failover"), "{:?}", e.message());
    assert_eq!(relay.cuts_done(), 1);
    // The lost call advanced the sequence to 1; the next one sees 2.
    assert_eq!(value_of(c.call(&next_val(b"s1\0"))), 2);
}

/// Requests that may already have ended or prepared a transaction are
/// answered "outcome unknown", each on a fresh link.
#[test]
fn written_two_phase_and_commit_requests_are_not_replayed() {
    let (_sim, relay, proxy) = setup();
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let reqs = |g: u32| {
        vec![
            Request::TxnPrepare { gxid: g },
            Request::TxnStartPrepared {
                gxid: g,
                gid: Bytes::from_static(b"gid1\0"),
                nodes: Bytes::from_static(b"dn1\0"),
            },
            Request::TxnCommitPrepared { gxid: g, prepared_gxid: g, waited: vec![] },
            Request::TxnCommit { gxid: g, waited: vec![] },
            Request::TxnCommitMulti(vec![g, g + 1]),
        ]
    };
    for req in reqs(0) {
        let g = c.begin();
        let req = reqs(g).into_iter().find(|r| r.msg_type() == req.msg_type()).unwrap();
        relay.cut(req.msg_type(), false, 1);
        let e = c.call_err(&req);
        assert!(e.message().starts_with("outcome unknown after GTM failover"), "{}: {:?}", req.msg_type(), e.message());
        assert_eq!(relay.seen(req.msg_type()), 1, "{} sent once", req.msg_type());
    }
}

/// Reads and grouped requests whose answers were lost are sent again and
/// answered normally.
#[test]
fn reads_and_grouped_requests_are_replayed() {
    let (_sim, relay, proxy) = setup();
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    // Grouped begin (the proxy sends a begin MULTI), carried out and lost.
    relay.cut(MsgType::TXN_BEGIN_GETGXID_MULTI, true, 1);
    let g = c.begin();
    assert_eq!(relay.seen(MsgType::TXN_BEGIN_GETGXID_MULTI), 2, "sent, lost, sent again");
    // A forwarded single snapshot, lost before it reached the GTM.
    relay.cut(MsgType::SNAPSHOT_GET, false, 1);
    let r = c.call(&Request::SnapshotGet { count: 1, gxid: g });
    assert!(matches!(r, Response::SnapshotGet { .. }), "{r:?}");
    // A grouped commit, carried out and lost: the replay finds the GXID gone
    // and the commit is reported done.
    relay.cut(MsgType::TXN_COMMIT_MULTI, true, 1);
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
    assert_eq!(relay.cuts_done(), 3);
}

/// A request never written to a link is sent once a link is ready, whatever
/// its type: a nextval held while the GTM is away is answered normally.
#[test]
fn held_requests_are_always_sent() {
    let (_sim, relay, proxy) = setup();
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let mut c2 = Client::proxy_backend(proxy.addr, "cn1");
    create_seq(&mut c, b"s2\0");
    // Break the link on a read and keep the GTM away.
    relay.s.refuse.store(true, Ordering::Relaxed);
    relay.cut(MsgType::TXN_GET_NEXT_GXID, false, 1);
    c.send(&Request::TxnGetNextGxid);
    eventually(WAIT, || (relay.cuts_done() == 1).then_some(()));
    // Sent while no link can exist: held, never written.
    c2.send(&next_val(b"s2\0"));
    std::thread::sleep(QUIET);
    relay.s.refuse.store(false, Ordering::Relaxed);
    let r = c.response();
    assert!(matches!(r, Response::TxnGetNextGxid { .. }), "{r:?}");
    assert_eq!(value_of(c2.response()), 1);
}

/// A request whose link breaks every time is answered with an `E` after the
/// replay limit instead of driving a reconnect loop.
#[test]
fn replays_are_limited() {
    let (_sim, relay, proxy) = setup();
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    relay.cut(MsgType::TXN_BEGIN_GETGXID_MULTI, true, 1000);
    let e = c.call_err(&begin_req(b"\0"));
    assert!(e.message().contains("not sent again"), "{:?}", e.message());
    let sent = relay.seen(MsgType::TXN_BEGIN_GETGXID_MULTI);
    assert!((2..=10).contains(&sent), "sent {sent} times");
    // The proxy serves again once the link holds.
    relay.s.cuts.lock().unwrap().clear();
    let g = c.begin();
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
}
