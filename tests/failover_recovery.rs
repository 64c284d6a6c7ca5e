//! Recovery after a GTM failure: a GTM restarted on the same port is back in
//! service with default settings long before `gtm_connect_retry_interval`,
//! and after a promotion backends that leave abruptly leave no transaction
//! open on the new GTM.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use gtmproxy::codec::{Request, Response};
use harness::*;

/// Open transactions in a persisted simulator state.
fn open_txns(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("gtm_sim.state")).unwrap_or_default();
    text.lines().filter(|l| l.starts_with("txn ")).map(String::from).collect()
}

/// Wait (bounded) until the GTM's open transactions are `want` in number.
fn wait_open_txns(dir: &Path, want: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let open = open_txns(dir);
        if open.len() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{} transactions open on the GTM, {want} expected: {open:#?}", open.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn commit_ok(c: &mut Client, g: u32) {
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
}

/// kill -9 of the GTM and a restart on the same port 2 s later, default
/// retry settings with a 60 s interval: a request held meanwhile is served
/// once the GTM listens again, well before a whole interval (the bounded
/// wait is 15 s; the time it took is printed, not asserted).
#[test]
fn gtm_restarted_on_the_same_port_is_found_with_default_settings() {
    let mut sim = Daemon::sim(&["--persist"]);
    let proxy = Daemon::proxy(sim.addr, "gtm_connect_retry_interval = 60s\n", 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    commit_ok(&mut c, g);
    sim.kill9();
    std::thread::sleep(Duration::from_secs(2));
    // Held while the GTM is away.
    c.send(&begin_req(b"\0"));
    sim.restart_same_port(&[]);
    let listening = Instant::now();
    c.set_timeout(Duration::from_secs(15));
    let g = match c.response() {
        Response::TxnBeginGetGxid { gxid, .. } => gxid,
        other => panic!("begin answered with {other:?}"),
    };
    eprintln!("first begin answered {:?} after the GTM listened again", listening.elapsed());
    commit_ok(&mut c, g);
}

/// 5 backends open transactions; the GTM dies, a standby is promoted from
/// its state and the proxy is moved to it. Then those backends and 5 more
/// that began after the promotion all die without a goodbye: the new GTM's
/// open transactions go back to their level before the load.
#[test]
fn abrupt_exits_after_a_promotion_leave_nothing_open() {
    let mut active = Daemon::sim(&["--persist"]);
    let conf = "gtm_connect_retry_interval = 200ms\ngtm_connect_retry_count = 2\nerr_wait_idle = 60s\n";
    let proxy = Daemon::proxy(active.addr, conf, 1);
    // A transaction of a direct client (another link) stays open throughout.
    let mut direct = Client::backend(active.addr, "dn1");
    let _foreign = direct.begin();
    wait_open_txns(&active.dir, 1);
    let mut old: Vec<(Client, u32)> = (0..5)
        .map(|_| {
            let mut c = Client::proxy_backend(proxy.addr, "cn1");
            let g = c.begin();
            (c, g)
        })
        .collect();
    wait_open_txns(&active.dir, 6);
    active.kill9();
    drop(direct);
    let standby_dir = tempfile::tempdir().unwrap();
    std::fs::copy(active.dir.join("gtm_sim.state"), standby_dir.path().join("gtm_sim.state")).unwrap();
    let standby = Daemon::sim_in(standby_dir.path(), 0, &["--persist"], None);
    // The promoted GTM keeps what the old one had open (the direct client's
    // transaction included: the standby never saw its link close).
    wait_open_txns(standby_dir.path(), 6);
    std::fs::write(proxy.dir.join("newgtm"), format!("-s 127.0.0.1 -t {}\n", standby.addr.port())).unwrap();
    proxy.signal(libc::SIGUSR1);
    let mut new: Vec<Client> = (0..5).map(|_| Client::proxy_backend(proxy.addr, "cn1")).collect();
    for c in &mut new {
        c.begin();
    }
    wait_open_txns(standby_dir.path(), 11);
    // One old backend commits its transaction from before the promotion and
    // begins another: its identifier is back to normal.
    let (mut stays, g) = old.pop().unwrap();
    commit_ok(&mut stays, g);
    stays.begin();
    wait_open_txns(standby_dir.path(), 11);
    drop(old);
    drop(new);
    // The foreign transaction is left, and the remaining backend's.
    wait_open_txns(standby_dir.path(), 2);
    // It leaves too, abruptly: the normal disconnect ends its transaction.
    drop(stays);
    wait_open_txns(standby_dir.path(), 1);
    let log = proxy.log();
    assert!(log.contains("promoted standby"), "the proxy did not take the new GTM for a promoted standby:\n{log}");
}

/// A reconnect order naming the GTM by host name: the worker has it looked
/// up by its resolver thread and moves there.
#[test]
fn gtm_host_names_are_resolved() {
    let sim = Daemon::sim(&[]);
    let other = Daemon::sim(&["--persist", "-x", "50000"]);
    let proxy = Daemon::proxy(sim.addr, "", 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    commit_ok(&mut c, g);
    std::fs::write(proxy.dir.join("newgtm"), format!("-s localhost -t {}\n", other.addr.port())).unwrap();
    proxy.signal(libc::SIGUSR1);
    let moved = format!("connected to GTM localhost:{}", other.addr.port());
    eventually(WAIT, || proxy.log().contains(&moved).then_some(()));
    // A transaction left open shows up on the other GTM.
    c.begin();
    wait_open_txns(&other.dir, 1);
}
