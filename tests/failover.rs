//! Fault tests: gtm_bench drives 1,000 backends through gtm_proxy while the
//! GTM (gtm_sim) is killed, restarted, replaced by a promoted instance,
//! stopped, or gone for good. Each test checks: no GXID handed out twice, no
//! backend left without an answer, no transaction left open on the GTM, and
//! errors only where the bounds say so.

mod harness;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gtmproxy::codec::Request;
use harness::*;
use serde_json::Value;

const BACKENDS: &str = "1000";

/// Start gtm_bench against `target` for `secs` seconds (no warm-up).
fn bench(target: std::net::SocketAddr, secs: u64) -> Child {
    Command::new(bench_bin())
        .args(["--host", &target.ip().to_string(), "--port", &target.port().to_string()])
        .args(["--backends", BACKENDS, "--duration", &secs.to_string(), "--warmup", "0", "--json", "-"])
        .args(["--max-errors", "0", "--request-timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gtm_bench")
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().expect("bench output");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bench JSON: {e}: {:?}", out.stdout));
    eprintln!(
        "bench: {} txns, {} txn/s, errors {}, txn latency max {} us, gxids {}",
        v["txns"], v["txn_per_s"], v["errors"]["by_kind"], v["latency_us"]["txn"]["max"], v["gxids"]
    );
    v
}

/// Open transactions in a persisted simulator state.
fn open_txns(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("gtm_sim.state")).expect("state file");
    text.lines().filter(|l| l.starts_with("txn ")).map(String::from).collect()
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// The invariants every scenario shares; `errors_allowed` lists error kinds
/// the scenario's bounds permit.
fn check_run(v: &Value, errors_allowed: &[&str]) {
    assert!(num(v, &["txns"]) > 0, "no transactions: {v}");
    assert_eq!(num(v, &["gxids", "duplicates"]), 0, "duplicate GXIDs: {v}");
    assert_eq!(num(v, &["errors", "by_kind", "timeout"]), 0, "a backend waited out its timeout: {v}");
    assert_eq!(num(v, &["errors", "by_kind", "unexpected_close"]), 0, "{v}");
    assert_eq!(num(v, &["connections", "unfinished_at_end"]), 0, "{v}");
    for (kind, n) in v["errors"]["by_kind"].as_object().expect("by_kind") {
        if !errors_allowed.contains(&kind.as_str()) {
            assert_eq!(n.as_u64(), Some(0), "unexpected {kind} errors: {v}");
        }
    }
}

fn wait_no_open_txns(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_txns(dir);
        if open.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "transactions left open on the GTM: {open:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const FAST_RETRY: &str = "gtm_connect_retry_interval = 200ms\nupstream_timeout = 2s\nlog_min_messages = INFO\n";

/// kill -9 of the GTM under load and a restart on the same port from its
/// durable state: in-flight requests are replayed, nobody sees an error.
#[test]
fn gtm_killed_and_restarted() {
    let mut sim = Daemon::sim(&["--persist"]);
    let proxy = Daemon::proxy(sim.addr, FAST_RETRY, 2);
    let b = bench(proxy.addr, 6);
    std::thread::sleep(Duration::from_secs(2));
    sim.kill9();
    std::thread::sleep(Duration::from_millis(500));
    sim.restart_same_port(&[]);
    let v = finish(b);
    check_run(&v, &[]);
    assert_eq!(num(&v, &["errors", "total"]), 0, "{v}");
    wait_no_open_txns(&sim.dir);
    assert!(proxy.log().contains("lost"), "the proxy noticed the failure");
}

/// The GTM dies; a second instance is promoted from its state on another
/// port; the proxy is told through newgtm + SIGUSR1 (what gtm_ctl reconnect
/// does) and carries every backend over without an error.
#[test]
fn promoted_standby_via_newgtm_and_sigusr1() {
    let mut active = Daemon::sim(&["--persist"]);
    let conf = format!("{FAST_RETRY}gtm_connect_retry_count = 2\nerr_wait_idle = 60s\n");
    let proxy = Daemon::proxy(active.addr, &conf, 2);
    let b = bench(proxy.addr, 7);
    std::thread::sleep(Duration::from_secs(2));
    active.kill9();
    let standby_dir = tempfile::tempdir().unwrap();
    std::fs::copy(active.dir.join("gtm_sim.state"), standby_dir.path().join("gtm_sim.state")).unwrap();
    let standby = Daemon::sim_in(standby_dir.path(), 0, &["--persist"], None);
    std::thread::sleep(Duration::from_millis(700));
    let t_order = Instant::now();
    std::fs::write(proxy.dir.join("newgtm"), format!("-s 127.0.0.1 -t {}\n", standby.addr.port())).unwrap();
    proxy.signal(libc::SIGUSR1);
    // The first transaction through the proxy after the order.
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    assert_eq!(
        c.call(&Request::TxnCommitMulti(vec![g])),
        gtmproxy::codec::Response::TxnCommitMulti { statuses: vec![0] }
    );
    eprintln!("first commit {:?} after the reconnect order", t_order.elapsed());
    c.close();
    let v = finish(b);
    check_run(&v, &[]);
    assert_eq!(num(&v, &["errors", "total"]), 0, "{v}");
    wait_no_open_txns(standby_dir.path());
    drop(standby);
}

/// The same order given with our own subcommand.
#[test]
fn reconnect_subcommand_moves_the_proxy() {
    let sim1 = Daemon::sim(&[]);
    let sim2 = Daemon::sim(&["-x", "20000"]);
    let proxy = Daemon::proxy(sim1.addr, FAST_RETRY, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g1 = c.begin();
    assert!(g1 < 20000);
    let st = Command::new(proxy_bin())
        .args(["reconnect", "-D", &proxy.dir.display().to_string(), "-s", "127.0.0.1"])
        .args(["-t", &sim2.addr.port().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let g2 = eventually(Duration::from_secs(10), || {
        let g = c.begin();
        (g >= 20000).then_some(g)
    });
    assert!(g2 >= 20000, "now served by the second GTM");
}

/// A bad or missing newgtm is logged and ignored; the proxy keeps serving.
#[test]
fn bad_newgtm_is_ignored() {
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, FAST_RETRY, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let _ = c.begin();
    // Signals of one kind coalesce: wait for each order to be handled.
    let handled = |n: usize| {
        eventually(Duration::from_secs(5), || {
            (proxy.log().matches("ignoring reconnect order").count() >= n).then_some(())
        })
    };
    proxy.signal(libc::SIGUSR1); // no newgtm at all
    handled(1);
    std::fs::write(proxy.dir.join("newgtm"), "-s 127.0.0.1 -x 99\n").unwrap();
    proxy.signal(libc::SIGUSR1);
    handled(2);
    std::fs::write(proxy.dir.join("newgtm"), "-t notaport\n").unwrap();
    proxy.signal(libc::SIGUSR1);
    handled(3);
    for _ in 0..10 {
        let g = c.begin();
        assert_eq!(
            c.call(&Request::TxnCommitMulti(vec![g])),
            gtmproxy::codec::Response::TxnCommitMulti { statuses: vec![0] }
        );
    }
    let log = proxy.log();
    assert!(log.contains("newgtm"), "the missing file is named: {log}");
    assert!(log.contains("-x"), "the bad option is named: {log}");
}

/// A GTM that stops answering without closing: the silent link is given up
/// after upstream_timeout and its work replayed once the GTM answers again.
/// The GTM aborts the old link's transactions when it sees it closed, so
/// backends whose transaction was open then get an E on their next snapshot
/// (never a snapshot showing it finished); nobody waits out a timeout.
#[test]
fn gtm_that_stops_answering() {
    let sim = Daemon::sim(&["--persist"]);
    let conf = "gtm_connect_retry_interval = 200ms\nupstream_timeout = 1s\nlog_min_messages = INFO\n";
    let proxy = Daemon::proxy(sim.addr, conf, 2);
    let b = bench(proxy.addr, 7);
    std::thread::sleep(Duration::from_secs(2));
    sim.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    sim.signal(libc::SIGCONT);
    let v = finish(b);
    check_run(&v, &["server_error"]);
    assert_eq!(num(&v, &["errors", "by_op", "begin"]), 0, "{v}");
    let log = proxy.log();
    assert!(log.contains("silent"), "{log}");
    wait_no_open_txns(&sim.dir);
}

/// Retry and error-wait stages run out: held requests get a clear E, new
/// ones are refused at once, and the proxy recovers by itself when the GTM
/// comes back.
#[test]
fn err_wait_exhaustion_then_recovery() {
    let mut sim = Daemon::sim(&[]);
    let conf = "gtm_connect_retry_interval = 200ms\ngtm_connect_retry_count = 2\nerr_wait_idle = 500ms\n\
                err_wait_count = 1\nerr_wait_interval = 500ms\nlog_min_messages = INFO\n";
    let proxy = Daemon::proxy(sim.addr, conf, 2);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let _ = c.begin();
    sim.kill9();
    let t0 = Instant::now();
    c.send(&gtmproxy::codec::Request::SnapshotGetMulti(vec![0]));
    match c.recv() {
        gtmproxy::codec::ServerFrame::Error { fields, .. } => {
            assert!(fields.message().starts_with("GTM unavailable"), "{}", fields.message())
        }
        other => panic!("{other:?}"),
    }
    let held_for = t0.elapsed();
    assert!(held_for >= Duration::from_millis(1000), "held through the stages: {held_for:?}");
    assert!(held_for < Duration::from_secs(10), "{held_for:?}");
    // Refused at once now.
    let t1 = Instant::now();
    c.send(&gtmproxy::codec::Request::SnapshotGetMulti(vec![0]));
    assert!(matches!(c.recv(), gtmproxy::codec::ServerFrame::Error { .. }));
    assert!(t1.elapsed() < Duration::from_millis(500));
    // The GTM comes back: the proxy finds it without an order.
    sim.restart_same_port(&["-x", "50000"]);
    let g = eventually(Duration::from_secs(10), || match c.call_frame(&harness::begin_req(b"\0")) {
        gtmproxy::codec::ServerFrame::Result(r) => match r.response().ok()? {
            gtmproxy::codec::Response::TxnBeginGetGxid { gxid, .. } => Some(gxid),
            _ => None,
        },
        _ => None,
    });
    assert!(g >= 50000);
}

/// A new GTM whose GXIDs are not above those already handed out is refused:
/// backends get a clear E instead of a GXID that may be in use, and the
/// proxy says so at ERROR level.
#[test]
fn gtm_behind_the_proxy_is_refused() {
    let sim1 = Daemon::sim(&["-x", "30000"]);
    let sim2 = Daemon::sim(&["-x", "10000"]);
    let proxy = Daemon::proxy(sim1.addr, FAST_RETRY, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    assert!(g >= 30000);
    std::fs::write(proxy.dir.join("newgtm"), format!("-s 127.0.0.1 -t {}\n", sim2.addr.port())).unwrap();
    proxy.signal(libc::SIGUSR1);
    eventually(Duration::from_secs(10), || {
        proxy.log().contains(&format!("moving to GTM 127.0.0.1:{}", sim2.addr.port())).then_some(())
    });
    for _ in 0..3 {
        match c.call_frame(&begin_req(b"\0")) {
            gtmproxy::codec::ServerFrame::Error { fields, .. } => {
                assert_eq!(fields.message(), "GTM handed out a GXID that was already in use")
            }
            other => panic!("a stale GXID reached the backend: {other:?}"),
        }
    }
    assert!(proxy.log().contains("refusing it to avoid duplicate transaction ids"));
    // They are not ended by number (the GTM may hold an older transaction
    // with the same GXID); the log names them for the DBA.
    assert!(proxy.log().contains("GXIDs refused and left open"), "{}", proxy.log());
}

/// Held requests are bounded in time (hold_timeout) and in number
/// (hold_max_requests); past either bound the backend gets a clear E.
#[test]
fn held_requests_are_bounded() {
    let mut sim = Daemon::sim(&[]);
    let conf =
        "gtm_connect_retry_interval = 200ms\nhold_timeout = 1s\nhold_max_requests = 2\nlog_min_messages = INFO\n";
    let proxy = Daemon::proxy(sim.addr, conf, 1);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::proxy_backend(proxy.addr, "cn1")).collect();
    sim.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    clients[0].send(&harness::begin_req(b"\0"));
    clients[1].send(&harness::begin_req(b"\0"));
    std::thread::sleep(Duration::from_millis(100));
    // Third one: over hold_max_requests, refused at once.
    match clients[2].call_frame(&harness::begin_req(b"\0")) {
        gtmproxy::codec::ServerFrame::Error { fields, .. } => {
            assert!(fields.message().contains("hold_max_requests"), "{}", fields.message())
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_millis(900));
    for c in clients.iter_mut().take(2) {
        match c.recv() {
            gtmproxy::codec::ServerFrame::Error { fields, .. } => {
                assert!(fields.message().contains("hold_timeout"), "{}", fields.message())
            }
            other => panic!("{other:?}"),
        }
    }
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "{waited:?}");
}
