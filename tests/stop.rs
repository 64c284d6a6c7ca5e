//! Stopping the proxy on a running cluster, the way `gtm_ctl` and
//! `pgxc_ctl` do it (their command sequences, read in XL 10's
//! `src/bin/gtm_ctl/gtm_ctl.c` and `contrib/pgxc_ctl/gtm_cmd.c`), with
//! long-lived backends connected as coordinators and datanodes keep them:
//! every stop mode ends while they stay connected, open transactions end
//! during a smart stop, everything else is refused with an error naming the
//! shutdown, and the proxy leaves the GTM's node table in every mode.
//!
//! gtm_ctl itself is XL's C program; what it does is replayed here: `stop`
//! sends SIGTERM (smart, the default), SIGINT (`-m fast`) or SIGQUIT
//! (`-m immediate`) to the pid in `gtm_proxy.pid`, then waits up to `-t`
//! (default 60 s) for that file to go, exiting 0 if it went and 1 if not;
//! `start` runs `gtm_proxy -D DIR`; `reconnect -o "-s H -t P"` writes
//! `newgtm` and sends SIGUSR1.

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gtmproxy::codec::types::node_type;
use gtmproxy::codec::{Request, Response, ServerFrame};
use harness::*;

const NAME: &str = "gtm_pxy1";
/// gtm_ctl's default `-t`.
const GTM_CTL_WAIT: Duration = Duration::from_secs(60);

// ----- gtm_ctl and pgxc_ctl, replayed ----------------------------------------

/// `initgtm -Z gtm_proxy -D DIR` writes the sample file with four settings
/// made active (initgtm's defaults); pgxc_ctl's `init gtm_proxy` appends its
/// own lines after them, so the last value of a key must win. The only
/// change: `port = 0` instead of the configured port, so that the test
/// binds at run time (the bound port is read from `gtm_proxy.port`).
fn pgxc_ctl_init(dir: &Path, gtm: SocketAddr, extra: &str) {
    let initgtm = "nodename = 'one'\nport = 6666\ngtm_host = 'localhost'\ngtm_port = 6668\n";
    let appended = format!(
        "nodename = '{NAME}'\nlisten_addresses = '*'\nport = 0\ngtm_host = '{}'\ngtm_port = {}\n\
         worker_threads = 1\ngtm_connect_retry_interval = 1\n{extra}",
        gtm.ip(),
        gtm.port()
    );
    std::fs::write(dir.join("gtm_proxy.conf"), format!("{initgtm}{appended}")).expect("conf");
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("gtm_proxy.pid")
}

/// `gtm_ctl stop -Z gtm_proxy -D DIR [-m MODE]`: its exit status.
fn gtm_ctl_stop(dir: &Path, sig: i32) -> i32 {
    let Ok(text) = std::fs::read_to_string(pid_file(dir)) else { return 1 };
    let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()) else { return 1 };
    // SAFETY: signalling the proxy this test started.
    unsafe {
        libc::kill(pid, sig);
    }
    let deadline = Instant::now() + GTM_CTL_WAIT;
    while pid_file(dir).exists() {
        if Instant::now() > deadline {
            return 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    0
}

/// `gtm_ctl start -Z gtm_proxy -D DIR`.
fn gtm_ctl_start(dir: &Path) -> Daemon {
    Daemon::proxy_exact(dir, &["-D".to_string(), dir.display().to_string()])
}

/// `pgxc_ctl start gtm_proxy`: an immediate stop first if a pid file is
/// there, then a start.
fn pgxc_ctl_start(dir: &Path, old: Option<&mut Daemon>) -> Daemon {
    if pid_file(dir).exists() {
        assert_eq!(gtm_ctl_stop(dir, libc::SIGQUIT), 0, "the immediate stop before a start");
    }
    if let Some(old) = old {
        old.wait_exit(WAIT).expect("the old proxy exits");
    }
    gtm_ctl_start(dir)
}

/// `pgxc_ctl kill gtm_proxy`: SIGKILL, then the pid file removed.
fn pgxc_ctl_kill(dir: &Path, p: &mut Daemon) {
    p.kill9();
    let _ = std::fs::remove_file(pid_file(dir));
}

/// `gtm_ctl reconnect -Z gtm_proxy -D DIR -o "-s H -t P"`, then the two
/// lines pgxc_ctl appends to gtm_proxy.conf.
fn pgxc_ctl_reconnect(dir: &Path, p: &Daemon, to: SocketAddr) {
    std::fs::write(dir.join("newgtm"), format!("-s {} -t {}\n", to.ip(), to.port())).expect("newgtm");
    p.signal(libc::SIGUSR1);
    let mut conf = std::fs::read_to_string(dir.join("gtm_proxy.conf")).expect("conf");
    conf.push_str(&format!("gtm_host = '{}'\ngtm_port = {}\n", to.ip(), to.port()));
    std::fs::write(dir.join("gtm_proxy.conf"), conf).expect("conf");
}

// ----- what the GTM and the backends see --------------------------------------

/// The simulator's state-file spelling of a byte string.
fn state_hex(b: &[u8]) -> String {
    std::iter::once("x".to_string()).chain(b.iter().map(|x| format!("{x:02x}"))).collect()
}

/// This proxy's entries in the GTM's node table (persisted simulator
/// state): the status of each (0 connected, 1 disconnected).
fn proxy_nodes(gtm_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(gtm_dir.join("gtm_sim.state")).unwrap_or_default();
    let (t, name) = (node_type::GTM_PROXY.to_string(), state_hex(NAME.as_bytes()));
    text.lines()
        .filter_map(|l| l.strip_prefix("node "))
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 6 && f[0] == t && f[1] == name)
        .map(|f| f[6].to_string())
        .collect()
}

/// Transactions the GTM holds open.
fn open_txns(gtm_dir: &Path) -> usize {
    let text = std::fs::read_to_string(gtm_dir.join("gtm_sim.state")).unwrap_or_default();
    text.lines().filter(|l| l.starts_with("txn ")).count()
}

fn wait_no_open_txns(gtm_dir: &Path) {
    eventually_for(WAIT, "no transaction left open at the GTM", || (open_txns(gtm_dir) == 0).then_some(()));
}

/// A connection started up as a coordinator or datanode backend does.
fn node_backend(addr: SocketAddr, remote_type: i32) -> Client {
    let mut c = Client::connect(addr);
    c.startup(if remote_type == node_type::DATANODE { "dn1" } else { "cn1" }, remote_type, false, 0);
    c
}

/// What one looping coordinator backend saw.
#[derive(Debug, Default)]
struct Tally {
    committed: u64,
    /// Transactions begun whose snapshot or commit did not succeed.
    broken: Vec<String>,
    /// The error its last begin got, if the loop ended so.
    refused: Option<String>,
}

/// A coordinator backend looping begin → snapshot → commit until a begin is
/// refused or the connection closes; signals `started` after its first
/// commit.
fn coordinator(addr: SocketAddr, started: Arc<AtomicBool>) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        let mut c = node_backend(addr, node_type::COORDINATOR);
        let mut t = Tally::default();
        loop {
            if !c.try_send(&begin_req(b"\0")) {
                return t;
            }
            let g = match c.try_recv() {
                Some(ServerFrame::Result(r)) => match r.response() {
                    Ok(Response::TxnBeginGetGxid { gxid, .. }) => gxid,
                    other => panic!("begin answered {other:?}"),
                },
                Some(ServerFrame::Error { fields, .. }) => {
                    t.refused = Some(fields.message());
                    return t;
                }
                Some(other) => panic!("begin answered {other:?}"),
                None => return t,
            };
            for req in [Request::SnapshotGetMulti(vec![g]), Request::TxnCommitMulti(vec![g])] {
                let sent = c.try_send(&req);
                match c.try_recv().filter(|_| sent) {
                    Some(ServerFrame::Result(_)) => {}
                    other => t.broken.push(format!("{req:?} of GXID {g}: {other:?}")),
                }
            }
            t.committed += 1;
            started.store(true, Ordering::Relaxed);
        }
    })
}

/// `n` looping coordinators and `n` idle datanode connections, all through
/// the proxy at `addr`, running once each coordinator has committed.
struct Load {
    coordinators: Vec<(Arc<AtomicBool>, std::thread::JoinHandle<Tally>)>,
    _datanodes: Vec<Client>,
}

impl Load {
    fn start(addr: SocketAddr, n: usize) -> Load {
        let coordinators: Vec<_> = (0..n)
            .map(|_| {
                let s = Arc::new(AtomicBool::new(false));
                (s.clone(), coordinator(addr, s))
            })
            .collect();
        let datanodes = (0..n).map(|_| node_backend(addr, node_type::DATANODE)).collect();
        for (s, _) in &coordinators {
            eventually_for(WAIT, "every coordinator committing", || s.load(Ordering::Relaxed).then_some(()));
        }
        Load { coordinators, _datanodes: datanodes }
    }

    /// Wait for every coordinator's loop to end.
    fn join(self) -> Vec<Tally> {
        self.coordinators.into_iter().map(|(_, h)| h.join().expect("coordinator")).collect()
    }

    /// [`Load::join`], and every transaction begun must have ended well.
    fn finish(self) -> Vec<Tally> {
        let tallies = self.join();
        for t in &tallies {
            assert!(t.broken.is_empty(), "an open transaction was cut by the stop: {:?}", t.broken);
            assert!(t.committed > 0);
        }
        tallies
    }
}

fn shutdown_refusals(tallies: &[Tally]) -> usize {
    tallies.iter().filter(|t| t.refused.as_deref().is_some_and(|m| m.contains("gtm_proxy is shutting down"))).count()
}

// ----- the tests ------------------------------------------------------------

/// The cluster step: `gtm_ctl stop -Z gtm_proxy` with no options,
/// under load from coordinators and datanodes that never disconnect on
/// their own. gtm_ctl returns 0; every transaction begun before the stop
/// ends well; the begins after it are refused naming the shutdown; the
/// proxy has left the GTM's node table and the GTM holds nothing open.
#[test]
fn smart_stop_ends_under_load_with_backends_connected() {
    let sim = Daemon::sim(&["--persist"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    // Longer than any test runs: the stop must end because nothing is
    // open, not because the timeout passed.
    pgxc_ctl_init(tmp.path(), sim.addr, "smart_shutdown_timeout = 600s\n");
    let mut proxy = gtm_ctl_start(tmp.path());
    assert_eq!(proxy_nodes(&sim.dir), vec!["0"], "registered once");
    let load = Load::start(proxy.addr, 8);
    assert_eq!(gtm_ctl_stop(tmp.path(), libc::SIGTERM), 0, "gtm_ctl stop returns 0\n{}", proxy.log());
    assert_eq!(proxy.exit_code(WAIT), Some(0));
    let tallies = load.finish();
    assert!(shutdown_refusals(&tallies) > 0, "begins after the stop are refused naming it: {tallies:?}");
    assert_eq!(proxy_nodes(&sim.dir), Vec::<String>::new(), "unregistered");
    wait_no_open_txns(&sim.dir);
    let log = proxy.log();
    assert!(log.contains("gtm_proxy is shutting down: no new transaction is started"), "{log}");
}

/// While a smart stop waits for an open transaction: that transaction is
/// served to its end; a backend without one may not begin; a new
/// connection is refused at once with a FATAL error naming the shutdown
/// (counted under `shutting_down`). Once the transaction ends, the proxy
/// exits.
#[test]
fn smart_stop_serves_open_transactions_and_refuses_the_rest() {
    let sim = Daemon::sim(&[]);
    let mport = free_port();
    let conf = format!("smart_shutdown_timeout = 600s\nmetrics_port = {mport}\n");
    let mut proxy = Daemon::proxy(sim.addr, &conf, 2);
    let mut open = node_backend(proxy.addr, node_type::COORDINATOR);
    let mut idle = node_backend(proxy.addr, node_type::COORDINATOR);
    let g = open.begin();
    proxy.signal(libc::SIGTERM);
    // A new connection: FATAL, then closed.
    let fatal = eventually_for(WAIT, "a new connection refused", || {
        let mut c = Client::connect(proxy.addr);
        c.send_startup("cn1", node_type::COORDINATOR, false, 0);
        match c.try_recv() {
            Some(ServerFrame::Error { fields, .. }) => Some((fields, c.closed_within(WAIT))),
            Some(ServerFrame::Ready { .. }) => None, // accepted before the signal landed
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(fatal.0.severity(), "FATAL");
    assert!(fatal.0.message().contains("gtm_proxy is shutting down"), "{:?}", fatal.0);
    assert!(fatal.1, "and closed");
    let e = idle.call_err(&begin_req(b"\0"));
    assert!(e.message().contains("gtm_proxy is shutting down"), "{e:?}");
    assert!(matches!(open.call(&Request::SnapshotGetMulti(vec![g])), Response::SnapshotGetMulti { .. }));
    // XL takes a second GXID to commit a two-phase transaction: a backend
    // with a transaction open may still begin.
    let aux = open.begin();
    assert_eq!(open.call(&Request::TxnCommitMulti(vec![aux])), Response::TxnCommitMulti { statuses: vec![0] });
    let body = scrape(mport, "/metrics").expect("metrics while stopping");
    assert_eq!(refused(&body, "shutting_down"), 1, "{body}");
    assert!(proxy.is_running(), "the open transaction is waited for");
    assert_eq!(open.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
    assert_eq!(proxy.exit_code(WAIT), Some(0));
    assert!(open.closed_within(WAIT) && idle.closed_within(WAIT));
}

fn refused(body: &str, reason: &str) -> u64 {
    let key = format!("gtm_proxy_refused_connections_total{{reason=\"{reason}\"}}");
    body.lines().filter_map(|l| l.strip_prefix(key.as_str())).filter_map(|v| v.trim().parse::<u64>().ok()).sum()
}

/// A backend idle in a transaction does not hold the stop: after
/// `smart_shutdown_timeout` it goes on as a fast stop, gtm_ctl returns 0,
/// the backend is closed, and the GTM ends the transaction with the link.
#[test]
fn smart_stop_gives_up_on_an_idle_transaction_after_its_timeout() {
    let sim = Daemon::sim(&["--persist"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    pgxc_ctl_init(tmp.path(), sim.addr, "smart_shutdown_timeout = 300ms\n");
    let mut proxy = gtm_ctl_start(tmp.path());
    let mut c = node_backend(proxy.addr, node_type::COORDINATOR);
    let _g = c.begin();
    assert_eq!(open_txns(&sim.dir), 1);
    assert_eq!(gtm_ctl_stop(tmp.path(), libc::SIGTERM), 0);
    assert_eq!(proxy.exit_code(WAIT), Some(0));
    assert!(c.closed_within(WAIT), "the backend is closed");
    wait_no_open_txns(&sim.dir);
    assert_eq!(proxy_nodes(&sim.dir), Vec::<String>::new(), "unregistered");
    assert!(proxy.log().contains("transactions still open after smart_shutdown_timeout"));
}

/// Every stop mode unregisters, so that the next start registers cleanly:
/// the GTM lists the proxy once while it runs and not at all after each
/// stop, and no start has its registration refused.
#[test]
fn every_stop_mode_unregisters_and_the_next_start_registers_cleanly() {
    let sim = Daemon::sim(&["--persist"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pgxc_ctl_init(dir, sim.addr, "");
    for (sig, mode) in [(libc::SIGTERM, "smart"), (libc::SIGINT, "fast"), (libc::SIGQUIT, "immediate")] {
        let mut proxy = pgxc_ctl_start(dir, None);
        assert_eq!(proxy_nodes(&sim.dir), vec!["0"], "{mode}: registered once");
        // Long-lived backends, one of them inside a transaction.
        let mut cn = node_backend(proxy.addr, node_type::COORDINATOR);
        let _dn = node_backend(proxy.addr, node_type::DATANODE);
        let _g = cn.begin();
        assert_eq!(gtm_ctl_stop(dir, sig), 0, "{mode}: gtm_ctl stop returns 0");
        proxy.wait_exit(WAIT).expect("exits");
        assert_eq!(proxy_nodes(&sim.dir), Vec::<String>::new(), "{mode}: unregistered");
        wait_no_open_txns(&sim.dir);
    }
    let log = std::fs::read_to_string(dir.join("gtm_proxy.log")).unwrap_or_default();
    assert!(!log.contains("refused to register"), "{log}");
}

/// pgxc_ctl's `start` runs an immediate stop before starting when a pid
/// file is there: the proxy that was running leaves the node table, the
/// new one registers without a refusal.
#[test]
fn pgxc_ctl_start_over_a_running_proxy() {
    let sim = Daemon::sim(&["--persist"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pgxc_ctl_init(dir, sim.addr, "");
    let mut old = pgxc_ctl_start(dir, None);
    let load = Load::start(old.addr, 4);
    let proxy = pgxc_ctl_start(dir, Some(&mut old));
    // An immediate stop cuts the backends, mid-transaction or not.
    let tallies = load.join();
    assert!(tallies.iter().all(|t| t.committed > 0), "{tallies:?}");
    let other = |t: &Tally| t.refused.as_deref().is_some_and(|m| !m.contains("gtm_proxy is shutting down"));
    assert!(!tallies.iter().any(other), "{tallies:?}");
    assert_eq!(proxy_nodes(&sim.dir), vec!["0"], "registered once");
    let mut c = node_backend(proxy.addr, node_type::COORDINATOR);
    let g = c.begin();
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
    let log = std::fs::read_to_string(dir.join("gtm_proxy.log")).unwrap_or_default();
    assert!(!log.contains("refused to register"), "{log}");
}

/// After `pgxc_ctl kill gtm_proxy` (SIGKILL) nothing could unregister: the
/// next start finds itself still listed, serves anyway, and says why in
/// the log at WARNING, the default log_min_messages.
#[test]
fn a_start_after_kill_9_carries_on_and_says_why() {
    let sim = Daemon::sim(&["--persist"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pgxc_ctl_init(dir, sim.addr, "");
    let mut proxy = pgxc_ctl_start(dir, None);
    pgxc_ctl_kill(dir, &mut proxy);
    assert_eq!(proxy_nodes(&sim.dir), vec!["0"], "still listed after SIGKILL");
    let proxy = pgxc_ctl_start(dir, None);
    let mut c = node_backend(proxy.addr, node_type::COORDINATOR);
    let g = c.begin();
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
    let log = std::fs::read_to_string(dir.join("gtm_proxy.log")).unwrap_or_default();
    let line = log.lines().find(|l| l.contains("refused to register")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("WARNING") && line.contains("killed before it could unregister"), "{line}");
}

/// pgxc_ctl's failover: `failover gtm` (the standby, here a simulator
/// started from the active one's state, takes over), then `reconnect
/// gtm_proxy all`; then `stop gtm_proxy all`. The proxy stops on the new
/// GTM and leaves its node table.
#[test]
fn pgxc_ctl_failover_reconnect_then_stop() {
    let mut active = Daemon::sim(&["--persist"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pgxc_ctl_init(dir, active.addr, "smart_shutdown_timeout = 600s\n");
    let mut proxy = pgxc_ctl_start(dir, None);
    let mut cn = node_backend(proxy.addr, node_type::COORDINATOR);
    let g = cn.begin();
    assert_eq!(cn.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
    active.kill9();
    let standby_dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(active.dir.join("gtm_sim.state"), standby_dir.path().join("gtm_sim.state")).expect("copy");
    let standby = Daemon::sim_in(standby_dir.path(), 0, &["--persist"], None);
    pgxc_ctl_reconnect(dir, &proxy, standby.addr);
    let g = eventually_for(WAIT, "a transaction on the new GTM", || {
        let mut c = node_backend(proxy.addr, node_type::COORDINATOR);
        c.send(&begin_req(b"\0"));
        match c.try_recv() {
            Some(ServerFrame::Result(r)) => match r.response() {
                Ok(Response::TxnBeginGetGxid { gxid, .. }) => Some((c, gxid)),
                _ => None,
            },
            _ => None,
        }
    });
    let (mut c, gxid) = g;
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![gxid])), Response::TxnCommitMulti { statuses: vec![0] });
    assert_eq!(proxy_nodes(standby_dir.path()), vec!["0"], "listed once on the new GTM");
    assert_eq!(gtm_ctl_stop(dir, libc::SIGTERM), 0);
    assert_eq!(proxy.exit_code(WAIT), Some(0));
    assert_eq!(proxy_nodes(standby_dir.path()), Vec::<String>::new(), "unregistered from the new GTM");
    assert!(cn.closed_within(WAIT) && c.closed_within(WAIT));
}
