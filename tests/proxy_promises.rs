//! One test per promise the proxy makes in README and proxy.conf.example
//! that the other suites do not reach: stop modes, admission bounds,
//! reload, listeners, balancing, keepalives, GTM-link timers, and where a
//! grouped begin's answer goes. Evidence is state (metrics, GTM-side state,
//! what the relay saw), not log text or elapsed time.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gtmproxy::codec::*;
use harness::*;

fn with_metrics(conf: &str) -> (String, u16) {
    let port = free_port();
    (format!("{conf}metrics_port = {port}\n"), port)
}

fn m0(body: &str, name: &str) -> u64 {
    metric_of(body, name, 0).unwrap_or_else(|| panic!("{name} missing:\n{body}"))
}

fn round_trip(c: &mut Client) {
    let g = c.begin();
    commit_ok(c, g);
}

fn commit_ok(c: &mut Client, g: u32) {
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
}

/// SIGQUIT stops at once: backends are cut and the process exits, without
/// waiting for them.
#[test]
fn sigquit_stops_at_once() {
    let sim = Daemon::sim(&[]);
    let mut proxy = Daemon::proxy(sim.addr, "", 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let _ = c.begin();
    proxy.signal(libc::SIGQUIT);
    assert!(proxy.wait_exit(WAIT).is_some(), "the proxy exits with a backend still connected");
    assert!(c.closed_within(WAIT), "the backend is cut");
}

/// Fast stop with a request in flight: that request is still answered, then
/// the backend is closed and the proxy exits cleanly. An idle backend is
/// closed without waiting.
#[test]
fn fast_stop_answers_work_in_flight() {
    let sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("");
    let mut proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut busy = Client::proxy_backend(proxy.addr, "cn1");
    let mut idle = Client::proxy_backend(proxy.addr, "cn1");
    let _ = idle.begin();
    sim.stop();
    busy.send(&begin_req(b"\0"));
    wait_metrics(mport, "one request in flight", |m| m0(m, "gtm_proxy_in_flight_requests") == 1);
    proxy.signal(libc::SIGINT);
    assert!(idle.closed_within(WAIT), "an idle backend is closed at once");
    sim.cont();
    match busy.response() {
        Response::TxnBeginGetGxid { gxid, .. } => assert!(gxid > 0),
        other => panic!("{other:?}"),
    }
    assert!(busy.closed_within(WAIT), "then the busy one is closed");
    assert_eq!(proxy.exit_code(WAIT), Some(0));
}

/// Smart stop waits for what the GTM owes: a backend that left with a
/// request in flight is disconnected upstream (after the answer) before the
/// proxy exits.
#[test]
fn smart_stop_waits_for_owed_answers() {
    let sim = Daemon::sim(&[]);
    let relay = Relay::start(sim.addr);
    let (conf, mport) = with_metrics("smart_shutdown_timeout = 600s\n");
    let mut proxy = Daemon::proxy(relay.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    sim.stop();
    c.send(&Request::SnapshotGetMulti(vec![g]));
    wait_metrics(mport, "the snapshot in flight", |m| m0(m, "gtm_proxy_in_flight_requests") == 1);
    c.close();
    proxy.signal(libc::SIGTERM);
    // No backend is left; only the GTM's answer is owed. The proxy is still
    // there to take it: its metrics endpoint answers and shows it owed.
    wait_metrics(mport, "still owed after SIGTERM", |m| m0(m, "gtm_proxy_in_flight_requests") == 1);
    sim.cont();
    assert_eq!(proxy.exit_code(WAIT), Some(0));
    let frames = relay.worker_frames();
    let pos = |f: &dyn Fn(&ClientFrame) -> bool| frames.iter().position(f);
    let snap = pos(&|f| matches!(f, ClientFrame::Command(c) if c.msg_type == MsgType::SNAPSHOT_GET_MULTI));
    let disc = pos(&|f| matches!(f, ClientFrame::Command(c) if c.msg_type == MsgType::BACKEND_DISCONNECT));
    assert!(snap.expect("snapshot sent") < disc.expect("disconnect sent before exiting"), "{frames:?}");
}

/// max_backends: one more connection is refused with an E and closed; once
/// a backend leaves there is room again.
#[test]
fn max_backends_is_enforced() {
    let sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("max_backends = 2\n");
    let proxy = Daemon::proxy(sim.addr, &conf, 2);
    let mut a = Client::proxy_backend(proxy.addr, "cn1");
    let mut b = Client::proxy_backend(proxy.addr, "cn1");
    wait_metrics(mport, "two backends", |m| metric_sum(m, "gtm_proxy_backends") == 2);
    let mut third = Client::connect(proxy.addr);
    match third.recv() {
        ServerFrame::Error { fields, .. } => assert!(fields.message().contains("too many connections"), "{fields:?}"),
        other => panic!("{other:?}"),
    }
    assert!(third.closed_within(WAIT));
    let _ = b.begin();
    a.close();
    wait_metrics(mport, "one backend", |m| metric_sum(m, "gtm_proxy_backends") == 1);
    let mut d = Client::proxy_backend(proxy.addr, "cn1");
    round_trip(&mut d);
}

/// backend_output_limit: a backend that floods requests and never reads
/// its answers is closed once its unsent output passes the limit; others
/// are served meanwhile.
#[test]
fn backend_output_limit_closes_a_backend_that_does_not_read() {
    let sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("backend_output_limit = 4kB\n");
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut ok = Client::proxy_backend(proxy.addr, "cn1");
    let hog = Client::proxy_backend(proxy.addr, "cn1");
    let mut flood = BytesMut::new();
    for _ in 0..200_000 {
        encode_command(&mut flood, None, &Request::SnapshotGetMulti(vec![0]));
    }
    let mut w = hog.writer();
    // Ends when everything is written or the proxy closes the hog (bounded by
    // the socket's write timeout).
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &flood));
    wait_metrics(mport, "the hog closed", |m| m0(m, "gtm_proxy_backends") == 1);
    round_trip(&mut ok);
    let _ = writer.join();
    let mut hog = hog;
    assert!(hog.closed_within(WAIT), "the proxy closed the hog's connection");
}

/// Keepalives: `keepalives_idle` is applied to accepted backend sockets (the
/// kernel's keepalive timer on the proxy's side of the connection runs with
/// that idle time instead of the OS default of two hours).
#[test]
fn keepalives_are_applied_to_backend_sockets() {
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, "keepalives_idle = 7\nkeepalives_interval = 3\nkeepalives_count = 2\n", 1);
    let c = Client::proxy_backend(proxy.addr, "cn1");
    let mine = c.sock.local_addr().expect("local addr");
    // /proc/net/tcp: the proxy's socket has local = proxy port, remote = ours;
    // its timer column is "2:<ticks>" (keepalive) with ticks ≤ 7 s.
    let (timer, ticks) = eventually(WAIT, || {
        let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
        text.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = |s: &str| u16::from_str_radix(s.rsplit(':').next()?, 16).ok();
            (port(f[1]) == Some(proxy.addr.port()) && port(f[2]) == Some(mine.port())).then(|| {
                let (t, when) = f[5].split_once(':').expect("timer field");
                (t.to_string(), u64::from_str_radix(when, 16).expect("ticks"))
            })
        })
    });
    assert_eq!(u8::from_str_radix(&timer, 16), Ok(2), "keepalive timer armed on the proxy's socket");
    // Clock ticks are 100 per second on Linux; 7 s idle, not 7200 s.
    assert!(ticks <= 7 * 100, "keepalive due in {ticks} ticks");
}

/// upstream_timeout = 0: a GTM that stays silent with an answer owed is
/// never given up; the answer arrives when it resumes.
#[test]
fn upstream_timeout_zero_never_gives_up_a_silent_gtm() {
    let sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("upstream_timeout = 0\n");
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    sim.stop();
    c.send(&begin_req(b"\0"));
    wait_metrics(mport, "the begin in flight", |m| m0(m, "gtm_proxy_in_flight_requests") == 1);
    // Longer than any upstream_timeout the other tests use (1 s).
    c.expect_silence(Duration::from_secs(2));
    let m = scrape(mport, "/metrics").expect("metrics");
    assert_eq!(m0(&m, "gtm_proxy_gtm_link_failures_total"), 0, "{m}");
    assert_eq!(m0(&m, "gtm_proxy_gtm_link_up"), 1, "{m}");
    sim.cont();
    let g = match c.response() {
        Response::TxnBeginGetGxid { gxid, .. } => gxid,
        other => panic!("{other:?}"),
    };
    commit_ok(&mut c, g);
}

/// gtm_connect_retry_idle: after losing the GTM the proxy pauses that long
/// before its first reconnect attempt, even though the GTM is back at once
/// (with the default 0 and a 200 ms interval it would be up again at once).
#[test]
fn gtm_connect_retry_idle_delays_the_first_reconnect() {
    let mut sim = Daemon::sim(&[]);
    let relay = Relay::start(sim.addr);
    let (conf, mport) = with_metrics("gtm_connect_retry_interval = 200ms\ngtm_connect_retry_idle = 600s\n");
    let proxy = Daemon::proxy(relay.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let _ = c.begin();
    let workers_before = relay.worker_streams().len();
    sim.kill9();
    wait_metrics(mport, "link lost", |m| m0(m, "gtm_proxy_gtm_link_failures_total") == 1);
    sim.restart_same_port(&[]);
    // The GTM answers directly...
    let _ = Client::backend(sim.addr, "probe").call(&Request::TxnGetNextGxid);
    // ...but the proxy waits out retry_idle: no new worker link, link down.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(relay.worker_streams().len(), workers_before, "no reconnect attempt during retry_idle");
    let m = scrape(mport, "/metrics").expect("metrics");
    assert_eq!(m0(&m, "gtm_proxy_gtm_link_up"), 0, "{m}");
}

/// A commit replayed after a link failure, for a GXID at or below the
/// highest one handed out before the failure, which the new GTM does not
/// know (it lost it with its state): reported done, not failed.
#[test]
fn commits_below_the_replay_floor_are_reported_done() {
    let mut sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("gtm_connect_retry_interval = 200ms\n");
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    sim.kill9();
    wait_metrics(mport, "link lost", |m| m0(m, "gtm_proxy_gtm_link_failures_total") == 1);
    // A fresh GTM (no state) with GXIDs above the proxy's.
    sim.restart_same_port(&["-x", "50000"]);
    wait_metrics(mport, "link up", |m| m0(m, "gtm_proxy_gtm_link_up") == 1);
    // The same commit straight to that GTM fails: it does not know g.
    let mut direct = Client::backend(sim.addr, "probe");
    match direct.call(&Request::TxnCommitMulti(vec![g])) {
        Response::TxnCommitMulti { statuses } => assert_ne!(statuses, vec![0], "the GTM does not know {g}"),
        other => panic!("{other:?}"),
    }
    commit_ok(&mut c, g);
}

/// SIGHUP changes more than the log level: hold_max_requests switches from
/// "fail at once" to holding. Command-line values still win over the file
/// on reload: a gtm_port in the file does not move the proxy off the GTM
/// given with -t.
#[test]
fn sighup_applies_hold_bounds_and_keeps_command_line_values() {
    let mut sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("gtm_connect_retry_interval = 200ms\nhold_max_requests = 0\n");
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let _ = c.begin();
    sim.kill9();
    wait_metrics(mport, "link down", |m| m0(m, "gtm_proxy_gtm_link_up") == 0);
    let e = c.call_err(&begin_req(b"\0"));
    assert!(e.message().starts_with("GTM unavailable"), "{}", e.message());
    let bogus = free_port();
    std::fs::write(
        proxy.dir.join("gtm_proxy.conf"),
        format!(
            "log_min_messages = INFO\ngtm_connect_retry_interval = 200ms\nhold_max_requests = 10\n\
             hold_timeout = 600s\nmetrics_port = {mport}\ngtm_port = {bogus}\nlog_file = other.log\n"
        ),
    )
    .expect("conf");
    proxy.signal(libc::SIGHUP);
    // Reloaded when a request is held instead of refused; until then each
    // attempt is refused with an E.
    let mut pending = false;
    eventually(WAIT, || {
        if !pending {
            c.send(&begin_req(b"\0"));
            pending = true;
        }
        if let Some(raw) = c.recv_within(Duration::from_millis(20)) {
            assert_eq!(raw.tag, b'E', "refused while not yet reloaded");
            pending = false;
            return None;
        }
        let m = scrape(mport, "/metrics")?;
        (m0(&m, "gtm_proxy_queued_requests") == 1).then_some(())
    });
    // The file's gtm_port lost to -t without a word; log_file (not on the
    // command line) is reported as needing a restart.
    let log = proxy.log();
    assert!(log.contains("\"log_file\" cannot be changed"), "{log}");
    assert!(!log.contains("\"gtm_port\" cannot be changed"), "{log}");
    let m = scrape(mport, "/metrics").expect("metrics");
    assert_eq!(m0(&m, "gtm_proxy_queued_requests"), 1, "{m}");
    // The GTM comes back on the -t port: the held begin is served there.
    sim.restart_same_port(&["-x", "50000"]);
    match c.response() {
        Response::TxnBeginGetGxid { gxid, .. } => commit_ok(&mut c, gxid),
        other => panic!("{other:?}"),
    }
}

/// Several listen addresses: the proxy serves on each.
#[test]
fn several_listen_addresses() {
    let sim = Daemon::sim(&[]);
    let port = free_port();
    let p = port.to_string();
    let proxy = Daemon::proxy_args(sim.addr, "", 1, &["-h", "127.0.0.1,127.0.0.2", "-p", &p]);
    for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let addr = SocketAddr::from((ip, port));
        let mut c = Client::proxy_backend(addr, "cn1");
        round_trip(&mut c);
    }
    assert_eq!(proxy.addr.port(), port);
}

/// New backends go to the least-loaded worker.
#[test]
fn backends_are_balanced_across_workers() {
    let sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("");
    let proxy = Daemon::proxy(sim.addr, &conf, 3);
    let mut cs: Vec<Client> = (0..6).map(|_| Client::proxy_backend(proxy.addr, "cn1")).collect();
    wait_metrics(mport, "two backends on each of three workers", |m| {
        (0..3).all(|w| metric_of(m, "gtm_proxy_backends", w) == Some(2))
    });
    for c in cs.iter_mut() {
        let g = c.begin();
        commit_ok(c, g);
    }
}

/// A grouped begin's answers go to the right backends: each backend's GXID
/// is, on the GTM, the transaction begun with its own session id and the
/// connection id the proxy gave that backend in the MULTI.
#[test]
fn multi_elements_map_to_their_backends() {
    const N: usize = 12;
    let sim = Daemon::sim(&["--persist"]);
    let relay = Relay::start(sim.addr);
    let (conf, mport) = with_metrics("");
    let proxy = Daemon::proxy(relay.addr, &conf, 1);
    let mut cs: Vec<Client> = (0..N).map(|_| Client::proxy_backend(proxy.addr, "cn1")).collect();
    let mut sessions: Vec<Vec<u8>> = Vec::new();
    let mut gxids: Vec<u32> = Vec::new();
    let mut grouped = 0;
    // Rounds until one was grouped (the GTM is stopped while the begins
    // arrive, so they nearly always are at once).
    for round in 0..10 {
        let start = scrape(mport, "/metrics").map(|m| m0(&m, "gtm_proxy_requests_total")).expect("metrics");
        sim.stop();
        let these: Vec<Vec<u8>> = (0..N).map(|i| format!("cn1_77_{round}_{i}\0").into_bytes()).collect();
        for (c, s) in cs.iter_mut().zip(&these) {
            c.send(&Request::TxnBeginGetGxid(Begin {
                isolation: 1,
                read_only: false,
                session_id: Bytes::from(s.clone()),
            }));
        }
        wait_metrics(mport, "all begins received", |m| m0(m, "gtm_proxy_requests_total") == start + N as u64);
        sim.cont();
        for c in cs.iter_mut() {
            match c.response() {
                Response::TxnBeginGetGxid { gxid, .. } => gxids.push(gxid),
                other => panic!("{other:?}"),
            }
        }
        sessions.extend(these);
        grouped = largest_begin_multi(&relay);
        if grouped > 1 {
            break;
        }
    }
    assert!(grouped > 1, "some begins were grouped");
    // The proxy's grouped begin: session -> connection id.
    let mut conn_of = std::collections::HashMap::new();
    for f in relay.worker_frames() {
        if let ClientFrame::Command(c) = f {
            if let Ok(Request::TxnBeginGetGxidMulti(v)) = c.request() {
                for e in v {
                    conn_of.insert(e.begin.session_id.to_vec(), e.conn_id);
                }
            }
        }
    }
    // The GTM's record: gxid -> (session, connection id).
    let state = std::fs::read_to_string(sim.dir.join("gtm_sim.state")).expect("state");
    let hex =
        |b: &[u8]| std::iter::once("x".to_string()).chain(b.iter().map(|x| format!("{x:02x}"))).collect::<String>();
    for i in 0..gxids.len() {
        let line = state
            .lines()
            .find(|l| l.starts_with("txn ") && l.split(' ').nth(2) == Some(&gxids[i].to_string()))
            .unwrap_or_else(|| panic!("GXID {} of backend {i} not on the GTM:\n{state}", gxids[i]));
        let f: Vec<&str> = line.split(' ').collect();
        // The GTM keeps the session without its terminating NUL.
        let s = &sessions[i];
        assert_eq!(f[11], hex(&s[..s.len() - 1]), "backend {i} got the GXID of another session");
        let conn = conn_of[&sessions[i]];
        assert_eq!(f[4], conn.to_string(), "backend {i}'s transaction is under its own connection id");
    }
    let mut distinct = gxids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), gxids.len());
}

fn largest_begin_multi(relay: &Relay) -> usize {
    relay
        .worker_frames()
        .into_iter()
        .filter_map(|f| match f {
            ClientFrame::Command(c) => match c.request() {
                Ok(Request::TxnBeginGetGxidMulti(v)) => Some(v.len()),
                _ => None,
            },
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// One worker's backend identifiers run out: the next connection is refused
/// with a FATAL `E` and closed while every other backend keeps its own; once
/// one leaves, its identifier serves a newcomer. A link has 32,768
/// identifiers (the proxy header's non-negative i16) — more connections than
/// this machine's open-file limit allows a test — so the test hook
/// `GTM_PROXY_TEST_IDS_PER_LINK` lowers it to 3 for this proxy; the code path
/// is the one a full link takes.
#[test]
fn identifiers_run_out_on_one_worker() {
    let sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics("");
    let tmp = tempfile::tempdir().expect("tempdir");
    write_proxy_conf(tmp.path(), &conf);
    let mut cmd = command(proxy_bin());
    cmd.args(proxy_argv(tmp.path(), sim.addr, 1)).args(["-h", "127.0.0.1", "-p", "0"]);
    cmd.env(gtmproxy::proxy::ids::TEST_IDS_ENV, "3");
    let proxy = Daemon::launch(cmd, tmp.path(), &tmp.path().join("gtm_proxy.port"));
    let mut held: Vec<Client> = (0..3).map(|_| Client::proxy_backend(proxy.addr, "cn1")).collect();
    let gxids: Vec<u32> = held.iter_mut().map(|c| c.begin()).collect();
    let mut extra = Client::connect(proxy.addr);
    match extra.recv() {
        ServerFrame::Error { fields, .. } => {
            assert_eq!(fields.severity(), "FATAL", "{fields:?}");
            assert!(fields.message().contains("too many connections"), "{fields:?}");
        }
        other => panic!("the connection past the last identifier got {other:?}"),
    }
    assert!(extra.closed_within(WAIT), "refused and closed");
    // The others keep their identifiers and are served.
    for (c, g) in held.iter_mut().zip(&gxids) {
        assert!(c.begin() > *g);
    }
    let m = scrape(mport, "/metrics").expect("metrics");
    assert_eq!(m0(&m, "gtm_proxy_backends"), 3, "{m}");
    let mut gone = held.pop().expect("three held");
    gone.close();
    wait_metrics(mport, "one backend gone", |m| m0(m, "gtm_proxy_backends") == 2);
    let mut newcomer = Client::proxy_backend(proxy.addr, "cn1");
    round_trip(&mut newcomer);
}
