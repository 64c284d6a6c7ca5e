//! Fault tests: gtm_bench drives 1,000 backends through gtm_proxy while the
//! GTM (gtm_sim) is killed, restarted, replaced by a promoted instance,
//! stopped, or gone for good. Each test checks: no GXID handed out twice, no
//! backend left without an answer, no transaction left open on the GTM, and
//! errors only where the bounds say so.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use gtmproxy::codec::Request;
use harness::*;
use serde_json::Value;

const BACKENDS: &str = "1000";

/// A gtm_bench run, killed if the test ends first.
struct Bench {
    child: Guarded,
    secs: u64,
}

/// Start gtm_bench against `target` for `secs` seconds (no warm-up).
fn bench(target: std::net::SocketAddr, secs: u64) -> Bench {
    let mut cmd = command(bench_bin());
    cmd.args(["--host", &target.ip().to_string(), "--port", &target.port().to_string()])
        .args(["--backends", BACKENDS, "--duration", &secs.to_string(), "--warmup", "0", "--json", "-"])
        .args(["--max-errors", "0", "--request-timeout", "30"]);
    Bench { child: Guarded::spawn(cmd), secs }
}

/// The bench's JSON report. Its run is bounded (duration plus request
/// timeout); past a generous deadline it is killed and the test fails.
fn finish(b: Bench) -> Value {
    let out = b.child.finish(Duration::from_secs(b.secs + 90));
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

/// Fast reconnects. No upstream_timeout: a GTM slowed down by a loaded
/// machine must not be taken for a silent one (the links in these tests fail
/// by closing, which is noticed without a timer).
const FAST_RETRY: &str = "gtm_connect_retry_interval = 200ms\nupstream_timeout = 0\nlog_min_messages = INFO\n";

/// A proxy configuration with the metrics endpoint on a fresh port.
fn with_metrics(conf: &str) -> (String, u16) {
    let port = free_port();
    (format!("{conf}metrics_port = {port}\n"), port)
}

/// Begins refused because the GTM's GXID was not above one the proxy had
/// handed out. After a kill -9, a begin MULTI the GTM recorded but whose
/// answer was lost is replayed; the GTM (restarted from its state, or
/// promoted with it) finds those transactions by session id and answers
/// their old GXIDs, which the proxy cannot tell from a GTM that reissues
/// numbers, so it refuses them (safe direction). Only begins in flight at
/// the kill can be refused so.
fn check_stale_refusals(v: &Value, port: u16) {
    let refused = scrape(port, "/metrics").map(|b| metric_sum(&b, "gtm_proxy_stale_gxid_refusals_total")).unwrap_or(0);
    let begin_errors = num(v, &["errors", "by_op", "begin"]);
    assert_eq!(num(v, &["errors", "by_kind", "server_error"]), begin_errors, "only begins failed: {v}");
    assert_eq!(begin_errors, refused, "every begin error is a stale-GXID refusal: {v}");
    // Each backend has at most one request outstanding.
    let bound = BACKENDS.parse::<u64>().unwrap_or(0);
    assert!(refused <= bound, "{refused} refusals: more than the begins that can be in flight");
    if refused > 0 {
        eprintln!("{refused} begins in flight at the kill were refused as stale");
    }
}

fn link_failures(port: u16) -> u64 {
    scrape(port, "/metrics").map(|b| metric_sum(&b, "gtm_proxy_gtm_link_failures_total")).unwrap_or(0)
}

/// kill -9 of the GTM under load and a restart on the same port from its
/// durable state: in-flight requests are replayed; nobody sees an error but
/// a begin the GTM recorded before dying (see [`check_stale_refusals`]).
#[test]
fn gtm_killed_and_restarted() {
    let mut sim = Daemon::sim(&["--persist"]);
    let (conf, mport) = with_metrics(FAST_RETRY);
    let proxy = Daemon::proxy(sim.addr, &conf, 2);
    let b = bench(proxy.addr, 6);
    // Under load: both workers have answered requests.
    wait_metrics(mport, "answers on both workers", |m| {
        (0..2).all(|w| metric_of(m, "gtm_proxy_gtm_answers_total", w).unwrap_or(0) > 100)
    });
    sim.kill9();
    // Both workers noticed before the GTM is back.
    wait_metrics(mport, "both links lost", |m| {
        (0..2).all(|w| metric_of(m, "gtm_proxy_gtm_link_failures_total", w).unwrap_or(0) >= 1)
    });
    sim.restart_same_port(&[]);
    let v = finish(b);
    check_run(&v, &["server_error"]);
    check_stale_refusals(&v, mport);
    wait_no_open_txns(&sim.dir);
    assert!(link_failures(mport) >= 2, "the proxy noticed the failure");
}

/// The GTM dies; a second instance is promoted from its state on another
/// port; the proxy is told through newgtm + SIGUSR1 (what gtm_ctl reconnect
/// does) and carries every backend over without an error (but the begins
/// of [`check_stale_refusals`]).
#[test]
fn promoted_standby_via_newgtm_and_sigusr1() {
    let mut active = Daemon::sim(&["--persist"]);
    let (conf, mport) = with_metrics(&format!("{FAST_RETRY}gtm_connect_retry_count = 2\nerr_wait_idle = 60s\n"));
    let proxy = Daemon::proxy(active.addr, &conf, 2);
    let b = bench(proxy.addr, 7);
    wait_metrics(mport, "answers on both workers", |m| {
        (0..2).all(|w| metric_of(m, "gtm_proxy_gtm_answers_total", w).unwrap_or(0) > 100)
    });
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
    check_run(&v, &["server_error"]);
    check_stale_refusals(&v, mport);
    wait_no_open_txns(standby_dir.path());
    drop(standby);
}

/// Registered nodes in a persisted simulator state: (type, name) pairs.
fn registered_nodes(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("gtm_sim.state")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("node "))
        .map(|l| {
            let mut f = l.split(' ');
            (f.next().unwrap_or("").to_string(), f.next().unwrap_or("").to_string())
        })
        .collect()
}

/// The simulator's state-file spelling of a byte string.
fn state_hex(b: &[u8]) -> String {
    std::iter::once("x".to_string()).chain(b.iter().map(|x| format!("{x:02x}"))).collect()
}

/// The same order given with our own subcommand; the proxy registers itself
/// on the new GTM (checked in that GTM's own state).
#[test]
fn reconnect_subcommand_moves_the_proxy() {
    let sim1 = Daemon::sim(&[]);
    let sim2 = Daemon::sim(&["-x", "20000", "--persist"]);
    let proxy = Daemon::proxy(sim1.addr, FAST_RETRY, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g1 = c.begin();
    assert!(g1 < 20000);
    assert!(registered_nodes(&sim2.dir).is_empty());
    let mut cmd = command(proxy_bin());
    cmd.args(["reconnect", "-D", &proxy.dir.display().to_string(), "-s", "127.0.0.1"])
        .args(["-t", &sim2.addr.port().to_string()]);
    assert!(run_bounded(cmd, WAIT).status.success());
    let g2 = eventually(WAIT, || {
        let g = c.begin();
        (g >= 20000).then_some(g)
    });
    assert!(g2 >= 20000, "now served by the second GTM");
    let proxy_type = gtmproxy::codec::types::node_type::GTM_PROXY.to_string();
    let me = (proxy_type, state_hex(b"test_proxy"));
    eventually(WAIT, || registered_nodes(&sim2.dir).contains(&me).then_some(()));
}

/// A worker whose GTM link broke re-presents its client id when it
/// reconnects, so the GTM (restarted from its state) keeps its backends'
/// transactions associated with it.
#[test]
fn client_id_is_re_presented_on_reconnect() {
    let mut sim = Daemon::sim(&["--persist"]);
    let relay = Relay::start(sim.addr);
    let (conf, mport) = with_metrics(FAST_RETRY);
    let proxy = Daemon::proxy(relay.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    // The GTM's record of the open transaction names the worker's client id.
    let id: u32 = open_txns(&sim.dir)
        .iter()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[2] == g.to_string()).then(|| f[3].parse().expect("client id"))
        })
        .expect("the transaction is on the GTM");
    assert!(id > 0);
    sim.kill9();
    wait_metrics(mport, "link lost", |m| metric_of(m, "gtm_proxy_gtm_link_failures_total", 0) >= Some(1));
    sim.restart_same_port(&[]);
    wait_metrics(mport, "link up again", |m| metric_of(m, "gtm_proxy_gtm_link_up", 0) == Some(1));
    let worker_ids: Vec<u32> = relay
        .startups()
        .into_iter()
        .filter(|s| s.remote_type == gtmproxy::codec::types::node_type::GTM_PROXY)
        .map(|s| s.client_id)
        .collect();
    assert_eq!(worker_ids, vec![0, id], "first start-up asks for an id, the reconnect re-presents it");
    // And the transaction is still the backend's: it commits.
    assert_eq!(
        c.call(&Request::TxnCommitMulti(vec![g])),
        gtmproxy::codec::Response::TxnCommitMulti { statuses: vec![0] }
    );
}

/// A bad or missing newgtm is logged and ignored; the proxy keeps serving.
#[test]
fn bad_newgtm_is_ignored() {
    let sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics(FAST_RETRY);
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
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
    // The link was never given up for any of the orders.
    let m = scrape(mport, "/metrics").expect("metrics");
    assert_eq!(metric_of(&m, "gtm_proxy_gtm_link_failures_total", 0), Some(0), "{m}");
    assert_eq!(metric_of(&m, "gtm_proxy_gtm_link_up", 0), Some(1), "{m}");
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
    let (conf, mport) =
        with_metrics("gtm_connect_retry_interval = 200ms\nupstream_timeout = 1s\nlog_min_messages = INFO\n");
    let proxy = Daemon::proxy(sim.addr, &conf, 2);
    let b = bench(proxy.addr, 7);
    wait_metrics(mport, "answers on both workers", |m| {
        (0..2).all(|w| metric_of(m, "gtm_proxy_gtm_answers_total", w).unwrap_or(0) > 100)
    });
    sim.stop();
    // The GTM stays stopped until the proxy has given up the silent links
    // (state, not a fixed pause, decides when it comes back).
    wait_metrics(mport, "silent links given up", |m| {
        (0..2).all(|w| metric_of(m, "gtm_proxy_gtm_link_failures_total", w).unwrap_or(0) >= 1)
    });
    sim.cont();
    let v = finish(b);
    check_run(&v, &["server_error"]);
    assert_eq!(num(&v, &["errors", "by_op", "begin"]), 0, "{v}");
    assert!(proxy.log().contains("silent"), "the links were given up for silence");
    wait_no_open_txns(&sim.dir);
}

/// Retry and error-wait stages run out: held requests get a clear E, new
/// ones are refused at once, and the proxy recovers by itself when the GTM
/// comes back.
#[test]
fn err_wait_exhaustion_then_recovery() {
    let mut sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics(
        "gtm_connect_retry_interval = 200ms\ngtm_connect_retry_count = 2\nerr_wait_idle = 3s\n\
         err_wait_count = 1\nerr_wait_interval = 500ms\nhold_timeout = 600s\nlog_min_messages = INFO\n",
    );
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let _ = c.begin();
    sim.kill9();
    wait_metrics(mport, "link down", |m| metric_of(m, "gtm_proxy_gtm_link_up", 0) == Some(0));
    c.send(&gtmproxy::codec::Request::SnapshotGetMulti(vec![0]));
    // Held while the stages run (not refused at once)...
    wait_metrics(mport, "the request held", |m| metric_of(m, "gtm_proxy_queued_requests", 0) == Some(1));
    // ...and failed when they ran out (hold_timeout is far away).
    match c.recv() {
        gtmproxy::codec::ServerFrame::Error { fields, .. } => {
            assert!(fields.message().starts_with("GTM unavailable"), "{}", fields.message());
            assert!(!fields.message().contains("hold_timeout"), "{}", fields.message());
        }
        other => panic!("{other:?}"),
    }
    // Refused at once now: answered with E while nothing is held.
    c.send(&gtmproxy::codec::Request::SnapshotGetMulti(vec![0]));
    assert!(matches!(c.recv(), gtmproxy::codec::ServerFrame::Error { .. }));
    let m = scrape(mport, "/metrics").expect("metrics");
    assert_eq!(metric_of(&m, "gtm_proxy_queued_requests", 0), Some(0), "{m}");
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
    let sim2 = Daemon::sim(&["-x", "10000", "--persist"]);
    let (conf, mport) = with_metrics(FAST_RETRY);
    let proxy = Daemon::proxy(sim1.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    assert!(g >= 30000);
    std::fs::write(proxy.dir.join("newgtm"), format!("-s 127.0.0.1 -t {}\n", sim2.addr.port())).unwrap();
    proxy.signal(libc::SIGUSR1);
    // Moved: the first link was given up and the next one (to sim2) is up.
    wait_metrics(mport, "moved to the second GTM", |m| {
        metric_of(m, "gtm_proxy_gtm_reconnect_orders_total", 0) == Some(1)
            && metric_of(m, "gtm_proxy_gtm_link_up", 0) == Some(1)
    });
    for _ in 0..3 {
        match c.call_frame(&begin_req(b"\0")) {
            gtmproxy::codec::ServerFrame::Error { fields, .. } => {
                assert_eq!(fields.message(), "GTM handed out a GXID that was already in use")
            }
            other => panic!("a stale GXID reached the backend: {other:?}"),
        }
    }
    // On the GTM, the three refused GXIDs are still open: not ended by
    // number (the GTM may hold an older transaction with the same GXID).
    let open: Vec<String> = open_txns(&sim2.dir);
    let gx: Vec<&str> = open.iter().map(|l| l.split(' ').nth(2).unwrap_or("")).collect();
    assert_eq!(gx, vec!["10000", "10001", "10002"], "{open:#?}");
    assert!(proxy.log().contains("refusing it to avoid duplicate transaction ids"));
    // They are not ended by number (the GTM may hold an older transaction
    // with the same GXID); the log names them for the DBA.
    assert!(proxy.log().contains("GXIDs refused and left open"), "{}", proxy.log());
}

/// Held requests are bounded in number (hold_max_requests): past it a
/// request is refused at once with a clear E, while those held are served
/// once the GTM is back.
#[test]
fn held_requests_are_bounded_in_number() {
    let mut sim = Daemon::sim(&[]);
    let (conf, mport) = with_metrics(
        "gtm_connect_retry_interval = 200ms\nhold_timeout = 600s\nhold_max_requests = 2\nlog_min_messages = INFO\n",
    );
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::proxy_backend(proxy.addr, "cn1")).collect();
    sim.kill9();
    wait_metrics(mport, "link down", |m| metric_of(m, "gtm_proxy_gtm_link_up", 0) == Some(0));
    clients[0].send(&harness::begin_req(b"\0"));
    clients[1].send(&harness::begin_req(b"\0"));
    wait_metrics(mport, "two requests held", |m| metric_of(m, "gtm_proxy_queued_requests", 0) == Some(2));
    // Third one: over hold_max_requests, refused while the others wait.
    match clients[2].call_frame(&harness::begin_req(b"\0")) {
        gtmproxy::codec::ServerFrame::Error { fields, .. } => {
            assert!(fields.message().contains("hold_max_requests"), "{}", fields.message())
        }
        other => panic!("{other:?}"),
    }
    let m = scrape(mport, "/metrics").expect("metrics");
    assert_eq!(metric_of(&m, "gtm_proxy_queued_requests", 0), Some(2), "{m}");
    sim.restart_same_port(&[]);
    for c in clients.iter_mut().take(2) {
        match c.response() {
            gtmproxy::codec::Response::TxnBeginGetGxid { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Held requests are bounded in time (hold_timeout): a held request gets a
/// clear E naming the bound, while the proxy keeps retrying.
#[test]
fn held_requests_are_bounded_in_time() {
    let mut sim = Daemon::sim(&[]);
    let (conf, mport) =
        with_metrics("gtm_connect_retry_interval = 200ms\nhold_timeout = 1s\nlog_min_messages = INFO\n");
    let proxy = Daemon::proxy(sim.addr, &conf, 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    sim.kill9();
    wait_metrics(mport, "link down", |m| metric_of(m, "gtm_proxy_gtm_link_up", 0) == Some(0));
    c.send(&harness::begin_req(b"\0"));
    match c.recv() {
        gtmproxy::codec::ServerFrame::Error { fields, .. } => {
            assert!(fields.message().contains("hold_timeout"), "{}", fields.message())
        }
        other => panic!("{other:?}"),
    }
    let m = wait_metrics(mport, "nothing held", |m| metric_of(m, "gtm_proxy_queued_requests", 0) == Some(0));
    assert!(metric_of(&m, "gtm_proxy_errors_sent_total", 0).unwrap_or(0) >= 1, "{m}");
    // Still retrying: the GTM comes back and the same backend is served.
    sim.restart_same_port(&[]);
    let g = eventually(WAIT, || match c.call_frame(&harness::begin_req(b"\0")) {
        gtmproxy::codec::ServerFrame::Result(r) => match r.response().ok()? {
            gtmproxy::codec::Response::TxnBeginGetGxid { gxid, .. } => Some(gxid),
            _ => None,
        },
        _ => None,
    });
    assert!(g > 0);
}
