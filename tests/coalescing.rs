//! The coalescing promise, end to end: while a begin MULTI is in flight,
//! later begins wait behind it, and its answer releases every one of them
//! in a single MULTI, in arrival order — no backend waits more than one
//! round behind another. A gate relay between the proxy and gtm_sim holds
//! the GTM's answers until the test opens it, and records the MULTIs the
//! proxy sends.

mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gtmproxy::codec::{Request, Response};
use harness::*;

#[derive(Default)]
struct Gate {
    /// While set, answers from the GTM are kept back.
    closed: AtomicBool,
    /// Session ids of the elements of each begin MULTI sent, in order.
    begin_multis: Mutex<Vec<Vec<Vec<u8>>>>,
    stop: AtomicBool,
}

struct GateRelay {
    addr: SocketAddr,
    g: Arc<Gate>,
}

impl GateRelay {
    fn start(target: SocketAddr) -> GateRelay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let g = Arc::new(Gate::default());
        let g2 = g.clone();
        std::thread::spawn(move || {
            while !g2.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect_timeout(&target, WAIT) else { continue };
                        down.set_nonblocking(false).ok();
                        let g3 = g2.clone();
                        std::thread::spawn(move || link(down, up, g3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        GateRelay { addr, g }
    }

    fn begin_multis(&self) -> Vec<Vec<Vec<u8>>> {
        self.g.begin_multis.lock().expect("lock").clone()
    }
}

impl Drop for GateRelay {
    fn drop(&mut self) {
        self.g.stop.store(true, Ordering::Relaxed);
        self.g.closed.store(false, Ordering::Relaxed);
    }
}

/// One link: requests pass at once (begin MULTIs are recorded); answers
/// pass unless the gate is closed, and the held bytes go out when it opens.
fn link(mut down: TcpStream, mut up: TcpStream, g: Arc<Gate>) {
    let (mut from_gtm, mut to_proxy) = (up.try_clone().expect("clone"), down.try_clone().expect("clone"));
    let g2 = g.clone();
    std::thread::spawn(move || {
        from_gtm.set_read_timeout(Some(Duration::from_millis(10))).ok();
        let mut held = Vec::new();
        let mut buf = [0u8; 65536];
        while !g2.stop.load(Ordering::Relaxed) {
            match from_gtm.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => held.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            if !g2.closed.load(Ordering::SeqCst) && !held.is_empty() {
                if to_proxy.write_all(&held).is_err() {
                    break;
                }
                held.clear();
            }
        }
        let _ = to_proxy.shutdown(std::net::Shutdown::Write);
    });
    each_frame(&mut down, |bytes| {
        if let Some(Ok(Request::TxnBeginGetGxidMulti(v))) = proxied_command(&bytes).map(|c| c.request()) {
            let sessions = v.iter().map(|e| e.begin.session_id.to_vec()).collect();
            g.begin_multis.lock().expect("lock").push(sessions);
        }
        up.write_all(&bytes).is_ok()
    });
    let _ = up.shutdown(std::net::Shutdown::Write);
}

fn queued(port: u16) -> u64 {
    scrape(port, "/metrics").map(|b| metric_sum(&b, "gtm_proxy_queued_requests")).unwrap_or(0)
}

fn expect_gxid(c: &mut Client) -> u32 {
    match c.response() {
        Response::TxnBeginGetGxid { gxid, .. } => gxid,
        other => panic!("begin answered {other:?}"),
    }
}

#[test]
fn begins_behind_an_in_flight_multi_go_together_in_arrival_order() {
    let sim = Daemon::sim(&[]);
    let relay = GateRelay::start(sim.addr);
    let mport = free_port();
    // Only an answer releases the held begins: the budget is far away.
    let conf = format!("batch_hold = 60s\nbatch_in_flight = 1\nupstream_timeout = 0\nmetrics_port = {mport}\n");
    let proxy = Daemon::proxy(relay.addr, &conf, 1);
    let mut first = Client::backend(proxy.addr, "cn1");
    first.begin(); // the link is up and idle
    let mut others: Vec<Client> = (0..3).map(|_| Client::backend(proxy.addr, "cn1")).collect();

    relay.g.closed.store(true, Ordering::SeqCst);
    let before = relay.begin_multis().len();
    first.send(&begin_req(b"first\0"));
    // The link was idle for begins: it went out at once, alone.
    let sent = eventually_for(WAIT, "the first begin upstream", || {
        let m = relay.begin_multis();
        (m.len() > before).then(|| m[before].clone())
    });
    assert_eq!(sent, vec![b"first\0".to_vec()]);
    // The rest arrive one by one while it is in flight: each is held.
    let names: [&'static [u8]; 3] = [b"b\0", b"c\0", b"d\0"];
    for (i, (c, name)) in others.iter_mut().zip(names).enumerate() {
        c.send(&begin_req(name));
        eventually_for(WAIT, "the begin held", || (queued(mport) == i as u64 + 1).then_some(()));
    }
    assert_eq!(relay.begin_multis().len(), before + 1, "nothing else went upstream while one was in flight");

    relay.g.closed.store(false, Ordering::SeqCst);
    let g_first = expect_gxid(&mut first);
    let multis = eventually_for(WAIT, "the held begins upstream", || {
        let m = relay.begin_multis();
        (m.len() > before + 1).then_some(m)
    });
    assert_eq!(multis[before + 1], names.iter().map(|n| n.to_vec()).collect::<Vec<_>>(), "one MULTI, in arrival order");
    let gxids: Vec<u32> = others.iter_mut().map(expect_gxid).collect();
    assert!(gxids.iter().all(|g| *g > g_first), "{g_first} then {gxids:?}");
    assert_eq!(gxids.windows(2).filter(|w| w[1] == w[0] + 1).count(), 2, "consecutive GXIDs: {gxids:?}");
    assert_eq!(queued(mport), 0);
}
