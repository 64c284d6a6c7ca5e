//! Hardening of the proxy's main thread, with the real binaries on loopback
//! ports chosen at run time: stop escalation, descriptor exhaustion, the
//! metrics endpoint, client-network access control, a reconnect order while
//! the new GTM is slow to register, and a dead worker.
//!
//! Processes, clients and waits come from the shared harness; every wait is
//! bounded and nothing asserts on elapsed time.

mod harness;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::{ServerFrame, StartupPacket};
use harness::{
    command, eventually_for, file_text, free_port, limit_open_files, metric_sum, proxy_argv, proxy_bin, scrape,
    write_proxy_conf, Client, Daemon, Guarded, WAIT,
};

/// The node name the tests' backends start up with.
const NAME: &str = "hardening";

/// A proxy in front of `gtm` listening on 127.0.0.1.
fn proxy(gtm: SocketAddr, conf: &str, workers: usize) -> Daemon {
    Daemon::proxy(gtm, conf, workers)
}

/// Connect and send a default backend's startup; the answer (ready or a
/// refusal) is read by the caller. None: the proxy closed the link.
fn startup_reply(c: &mut Client, name: &str, remote_type: i32) -> Option<ServerFrame> {
    c.send_startup(name, remote_type, false, 0);
    c.try_recv()
}

fn is_ready(r: &Option<ServerFrame>) -> bool {
    matches!(r, Some(ServerFrame::Ready { .. }))
}

fn fatal_message(r: &Option<ServerFrame>) -> Option<String> {
    match r {
        Some(ServerFrame::Error { fields, .. }) if fields.severity() == "FATAL" => Some(fields.message()),
        _ => None,
    }
}

/// The metrics page, which must answer.
fn metrics(port: u16) -> String {
    scrape(port, "/metrics").expect("the metrics endpoint answers")
}

// ----- stop escalation ------------------------------------------------------

/// A simulator, a proxy with `workers` workers in front of it, and one
/// backend that has begun a transaction (so a smart stop waits for it, for
/// longer than any test runs).
fn serving_proxy(workers: usize) -> (Daemon, Daemon, Client) {
    let sim = Daemon::sim(&[]);
    let proxy = proxy(sim.addr, "smart_shutdown_timeout = 600s\n", workers);
    let mut b = Client::backend(proxy.addr, NAME);
    b.begin();
    (sim, proxy, b)
}

#[test]
fn fast_stop_after_smart_stop_takes_over() {
    let (_sim, mut proxy, mut b) = serving_proxy(2);
    proxy.signal(libc::SIGTERM);
    // Smart: the backend's open transaction keeps being served.
    b.begin();
    assert!(proxy.is_running(), "smart stop must wait for the open transaction");
    proxy.signal(libc::SIGINT);
    let st = proxy.wait_exit(WAIT).expect("SIGINT after SIGTERM must stop the proxy");
    assert_eq!(st.code(), Some(0), "{}", proxy.log());
    assert!(b.try_recv().is_none(), "the backend is closed by the fast stop");
}

#[test]
fn immediate_stop_after_smart_stop_takes_over() {
    let (_sim, mut proxy, mut b) = serving_proxy(1);
    proxy.signal(libc::SIGTERM);
    b.begin();
    proxy.signal(libc::SIGQUIT);
    assert!(proxy.wait_exit(WAIT).is_some(), "SIGQUIT after SIGTERM must stop the proxy");
}

#[test]
fn milder_stop_does_not_weaken_a_fast_stop() {
    let (_sim, mut proxy, mut b) = serving_proxy(1);
    proxy.signal(libc::SIGINT);
    proxy.signal(libc::SIGTERM);
    let code = proxy.wait_exit(WAIT).map(|st| st.code());
    assert_eq!(code, Some(Some(0)), "{}", proxy.log());
    assert!(b.try_recv().is_none());
}

// ----- descriptor exhaustion -------------------------------------------------

#[test]
fn out_of_descriptors_turns_clients_away_and_recovers() {
    const LIMIT: u64 = 48;
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy_with(sim.addr, "", 1, &["-h", "127.0.0.1"], |cmd| limit_open_files(cmd, LIMIT));
    // Far more connections than descriptors: each must get an answer,
    // ready or a FATAL error; none may hang.
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..(LIMIT as usize + 20) {
        let mut c = Client::connect(proxy.addr);
        let r = startup_reply(&mut c, NAME, node_type::DEFAULT);
        if is_ready(&r) {
            served.push(c);
        } else {
            let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected ready or FATAL, got {r:?}"));
            assert!(msg.contains("file descriptors"), "{msg}");
            refused += 1;
        }
    }
    assert!(!served.is_empty(), "some connections fit under the limit");
    assert!(refused > 0, "the limit was reached; log: {}", proxy.log());
    for c in served.iter_mut().take(3) {
        c.begin();
    }
    // Free the descriptors; the proxy serves again.
    drop(served);
    let mut again = eventually_for(WAIT, "a connection to be served again", || {
        let mut c = Client::connect(proxy.addr);
        is_ready(&startup_reply(&mut c, NAME, node_type::DEFAULT)).then_some(c)
    });
    again.begin();
}

#[test]
fn queued_connections_are_answered_without_a_new_arrival() {
    const LIMIT: u64 = 40;
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy_with(sim.addr, "", 1, &["-h", "127.0.0.1"], |cmd| limit_open_files(cmd, LIMIT));
    // Open a burst of connections at once, then only read: the ones beyond
    // the limit sit in the listen queue, and must still get an answer
    // without any later arrival to wake the accept loop.
    let mut conns: Vec<Client> = (0..(LIMIT as usize + 10)).map(|_| Client::connect(proxy.addr)).collect();
    for c in &mut conns {
        c.send_startup(NAME, node_type::DEFAULT, false, 0);
    }
    let mut ready = 0;
    let mut fatal = 0;
    for c in &mut conns {
        let r = c.try_recv();
        if is_ready(&r) {
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

#[test]
fn a_slow_metrics_client_blocks_no_other_scrape() {
    let sim = Daemon::sim(&[]);
    let port = free_port();
    let _proxy = proxy(sim.addr, &format!("metrics_port = {port}\n"), 2);
    let maddr: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually_for(WAIT, "the metrics endpoint", || TcpStream::connect(maddr).ok());
    let _b = Client::backend(_proxy.addr, NAME);
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
        let out = metrics(port);
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("gtm_proxy_backends{worker=\"0\"}"), "{out}");
    }
    assert_eq!(metric_sum(&metrics(port), "gtm_proxy_backends"), 1, "one backend connected");
    // The trickling client is cut off by its deadline.
    assert!(trickler.join().expect("trickler"), "a never-ending request was not cut off");
}

#[test]
fn metrics_bind_to_loopback_by_default() {
    let sim = Daemon::sim(&[]);
    let port = free_port();
    // Listening on every interface must not publish the metrics there.
    let _proxy = Daemon::proxy_args(sim.addr, &format!("metrics_port = {port}\n"), 1, &["-h", "*"]);
    let out = eventually_for(WAIT, "the metrics endpoint", || scrape(port, "/metrics").filter(|s| !s.is_empty()));
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    let other: SocketAddr = format!("127.0.0.2:{port}").parse().expect("addr");
    assert!(TcpStream::connect_timeout(&other, WAIT).is_err(), "metrics reachable on 127.0.0.2");
}

// ----- access control ------------------------------------------------------------

#[test]
fn client_networks_are_checked_at_accept_and_reloaded() {
    let sim = Daemon::sim(&[]);
    let proxy = proxy(sim.addr, "allowed_client_networks = '127.0.0.2/32'\n", 1);
    // From 127.0.0.1: refused with FATAL, before any startup is sent.
    let mut denied = Client::connect_from(Ipv4Addr::new(127, 0, 0, 1), proxy.addr);
    let r = denied.try_recv();
    let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected FATAL, got {r:?}"));
    assert!(msg.contains("127.0.0.1") && msg.contains("not allowed"), "{msg}");
    assert!(denied.try_recv().is_none());
    // From 127.0.0.2: served.
    let mut ok = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr);
    assert!(is_ready(&startup_reply(&mut ok, NAME, node_type::DEFAULT)));
    ok.begin();
    let log = eventually_for(WAIT, "the refusal in the log", || {
        Some(proxy.log()).filter(|l| l.contains("refusing connection from 127.0.0.1"))
    });
    assert!(log.contains("allowed_client_networks"), "{log}");

    // Reload flips it: now only 127.0.0.1 is allowed.
    write_proxy_conf(&proxy.dir, "allowed_client_networks = '127.0.0.1/32, ::1'\n");
    proxy.signal(libc::SIGHUP);
    eventually_for(WAIT, "the reload to allow 127.0.0.1", || {
        let mut c = Client::connect_from(Ipv4Addr::new(127, 0, 0, 1), proxy.addr);
        is_ready(&startup_reply(&mut c, NAME, node_type::DEFAULT)).then_some(())
    });
    let mut now_denied = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr);
    let r = now_denied.try_recv();
    assert!(fatal_message(&r).is_some_and(|m| m.contains("127.0.0.2")), "{r:?}");
    // The connection admitted before the reload keeps its service.
    ok.begin();
}

#[test]
fn an_invalid_network_list_on_reload_keeps_the_running_one() {
    let sim = Daemon::sim(&[]);
    let proxy = proxy(sim.addr, "allowed_client_networks = '127.0.0.1'\n", 1);
    write_proxy_conf(&proxy.dir, "allowed_client_networks = '127.0.0.0/99'\n");
    proxy.signal(libc::SIGHUP);
    eventually_for(WAIT, "the rejected reload in the log", || {
        Some(()).filter(|_| proxy.log().contains("configuration not reloaded"))
    });
    let mut c = Client::backend(proxy.addr, NAME);
    c.begin();
}

#[test]
fn node_names_and_remote_types_are_checked_at_startup_and_reloaded() {
    let sim = Daemon::sim(&[]);
    let conf = "allowed_node_names = 'coord1, dn1'\nallowed_remote_types = 'coordinator, datanode'\n";
    let proxy = proxy(sim.addr, conf, 1);
    let startup = |name: &str, remote_type: i32| {
        let mut c = Client::connect(proxy.addr);
        let r = startup_reply(&mut c, name, remote_type);
        (c, r)
    };
    let (_, r) = startup("intruder", node_type::COORDINATOR);
    let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected FATAL, got {r:?}"));
    assert!(msg.contains("intruder") && msg.contains("allowed_node_names"), "{msg}");
    let (_, r) = startup("coord1", node_type::DEFAULT);
    let msg = fatal_message(&r).unwrap_or_else(|| panic!("expected FATAL, got {r:?}"));
    assert!(msg.contains("allowed_remote_types"), "{msg}");
    let (mut ok, r) = startup("dn1", node_type::DATANODE);
    assert!(is_ready(&r), "{r:?}");
    ok.begin();
    eventually_for(WAIT, "the refusals in the log", || Some(()).filter(|_| proxy.log().contains("allowed_node_names")));

    // Reload: any node name, only the default remote type.
    write_proxy_conf(&proxy.dir, "allowed_remote_types = 'default'\n");
    proxy.signal(libc::SIGHUP);
    let mut anyone = eventually_for(WAIT, "the reload to allow the default type", || {
        let (c, r) = startup("anyone", node_type::DEFAULT);
        is_ready(&r).then_some(c)
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
    let old = Daemon::sim(&[]);
    // A promoted standby is ahead of what the old GTM handed out.
    let new = Daemon::sim(&["-x", "1000000"]);
    let stall = StallRegistration::start(new.addr);
    let proxy = proxy(old.addr, "", 2);
    let mut before = Client::backend(proxy.addr, NAME);
    before.begin();
    std::fs::write(proxy.dir.join("newgtm"), format!("-s 127.0.0.1 -t {}\n", stall.addr.port())).expect("newgtm");
    proxy.signal(libc::SIGUSR1);
    eventually_for(WAIT, "the registration link to reach the new GTM", || {
        (stall.held.load(Ordering::Relaxed) > 0).then_some(())
    });
    // The old GTM goes away: from now on only the new one can answer.
    drop(old);
    // While the registration still waits for its answer, a new backend is
    // accepted and served through the new GTM by the workers.
    let mut after = Client::connect(proxy.addr);
    after.set_timeout(Duration::from_secs(10));
    assert!(is_ready(&startup_reply(&mut after, NAME, node_type::DEFAULT)), "accepted during registration");
    after.begin();
    before.begin();
    assert!(stall.relayed.load(Ordering::Relaxed) >= 2, "both workers moved to the new GTM");
    assert_eq!(stall.held.load(Ordering::Relaxed), 1, "the registration is still unanswered");
}

// ----- a dead worker ---------------------------------------------------------------

#[test]
fn a_dead_worker_is_replaced_and_gets_no_connection() {
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy_with(sim.addr, "", 2, &["-h", "127.0.0.1"], |cmd| {
        // Test-only hook: worker 0's first thread ends at once.
        cmd.env("GTM_PROXY_TEST_WORKER_DIES", "0");
    });
    // Every connection is served, none handed to the dead thread.
    let mut backends: Vec<Client> = (0..8).map(|_| Client::backend(proxy.addr, NAME)).collect();
    for b in &mut backends {
        b.begin();
    }
    let log = eventually_for(WAIT, "the restart in the log", || {
        Some(proxy.log()).filter(|l| l.contains("worker 0 restarted"))
    });
    assert!(log.contains("worker 0 died unexpectedly"), "{log}");
    // The replacement takes its share.
    let mut more: Vec<Client> = (0..8).map(|_| Client::backend(proxy.addr, NAME)).collect();
    for b in &mut more {
        b.begin();
    }
}

/// A worker started in place of a dead one uses the GTM the last reconnect
/// order named, never the configured one it was moved away from.
#[test]
fn a_worker_restarted_after_a_reconnect_order_uses_the_new_gtm() {
    let old = Daemon::sim(&[]);
    let new = Daemon::sim(&["-x", "20000"]);
    let proxy = Daemon::proxy_with(old.addr, "", 1, &["-h", "127.0.0.1"], |cmd| {
        // Test-only hook: worker 0 ends instead of obeying the first order.
        cmd.env("GTM_PROXY_TEST_WORKER_DIES", "0:reconnect");
    });
    let mut c = Client::backend(proxy.addr, NAME);
    assert!(c.begin() < 20000, "served by the configured GTM first");
    std::fs::write(proxy.dir.join("newgtm"), format!("-s 127.0.0.1 -t {}\n", new.addr.port())).expect("newgtm");
    proxy.signal(libc::SIGUSR1);
    let log = eventually_for(WAIT, "the restart in the log", || {
        Some(proxy.log()).filter(|l| l.contains("worker 0 restarted"))
    });
    assert!(log.contains("ending instead of moving"), "the hook fired: {log}");
    // Fresh backends on the new worker: their GXIDs come from the new GTM.
    for _ in 0..3 {
        let mut b = Client::backend(proxy.addr, NAME);
        let g = b.begin();
        assert!(g >= 20000, "GXID {g} came from the GTM the proxy was moved away from");
    }
}

#[test]
fn a_worker_that_keeps_dying_stops_the_proxy_with_fatal() {
    let sim = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write_proxy_conf(dir, "");
    // It may exit before or after it listens, so no port file is awaited:
    // the guard bounds the wait for its exit and kills it past that.
    let mut cmd = command(proxy_bin());
    cmd.args(proxy_argv(dir, sim.addr, 2)).args(["-h", "127.0.0.1", "-p", "0"]);
    cmd.env("GTM_PROXY_TEST_WORKER_DIES", "1:always");
    let out = Guarded::spawn(cmd).finish(WAIT);
    let log = file_text(&dir.join("gtm_proxy.log")) + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("FATAL") && log.contains("worker 1 died"), "{log}");
}
