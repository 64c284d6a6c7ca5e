//! Operations: what gtm_ctl, logrotate and an operator see of the real `gtm_proxy`
//! binary — the pid and opts files, repeated options, `-D` required, `--version`,
//! `check`, XL's log level names and ordering, and log reopening on SIGHUP.
//!
//! Starts `gtm_sim` and `gtm_proxy` through the shared harness, on loopback ports
//! chosen at run time; every wait is bounded and every process killed at the end.

mod harness;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use gtmproxy::codec::ServerFrame;
use gtmproxy::proxy::metrics::exposition;
use harness::*;

/// The usual start options against `gtm`, in directory `dir`: the harness's,
/// with a loopback listen address and port 0.
fn start_args(dir: &Path, gtm: SocketAddr) -> Vec<String> {
    let mut v = proxy_argv(dir, gtm, 1);
    v.extend(["-h", "127.0.0.1", "-p", "0"].map(String::from));
    v
}

/// A proxy with the usual options, in `dir` with `conf` as its configuration.
fn start_proxy(dir: &Path, gtm: SocketAddr, conf: &str) -> Daemon {
    write_proxy_conf(dir, conf);
    Daemon::proxy_exact(dir, &start_args(dir, gtm))
}

/// A one-shot `gtm_proxy` run (`check`, `status`, `--version`...), bounded.
fn run_proxy(args: &[&str]) -> Output {
    let mut cmd = command(proxy_bin());
    cmd.args(args);
    run_bounded(cmd, WAIT)
}

/// Stop a proxy with SIGINT (`gtm_ctl stop -m fast`) and check it exits 0.
fn stop_fast(p: &mut Daemon) {
    assert_eq!(p.interrupt().code(), Some(0), "fast stop exits 0");
}

#[test]
fn pid_file_tokens_and_opts_file_drive_a_gtm_ctl_restart() {
    let gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    write_proxy_conf(&dir, "");
    let args = start_args(&dir, gtm.addr);
    let mut p = Daemon::proxy_exact(&dir, &args);

    // gtm_ctl status scans three tokens: pid, data directory, integer mode.
    let pid_text = file_text(&dir.join("gtm_proxy.pid"));
    let tokens: Vec<&str> = pid_text.split_whitespace().collect();
    assert_eq!(tokens.len(), 3, "{pid_text:?}");
    assert_eq!(tokens[0].parse::<i32>().expect("pid token"), p.pid());
    assert_eq!(std::fs::canonicalize(tokens[1]).expect("dir token"), std::fs::canonicalize(&dir).expect("dir"));
    assert_eq!(tokens[2].parse::<i32>().expect("mode token"), 1);

    // gtm_proxy.opts: one line, each argument after the program as ` "arg"`.
    let opts = file_text(&dir.join("gtm_proxy.opts"));
    let expected: String = args.iter().map(|a| format!(" \"{a}\"")).collect::<String>() + "\n";
    assert_eq!(opts, expected);
    assert_eq!(opts.lines().count(), 1);
    stop_fast(&mut p);
    assert!(!dir.join("gtm_proxy.pid").exists(), "the pid file is removed at stop");

    // gtm_ctl restart: `"gtm_proxy" -D DIR <opts line>` through the shell, -D repeated.
    let line = opts.trim_end_matches('\n');
    let cmd = format!("exec \"{}\" -D \"{}\" {line}", proxy_bin(), dir.display());
    let mut sh = command("sh");
    sh.arg("-c").arg(&cmd);
    let mut again = Daemon::launch(sh, &dir, &dir.join("gtm_proxy.port"));
    TcpStream::connect_timeout(&again.addr, WAIT).expect("the restarted proxy accepts connections");
    let pid_text = file_text(&dir.join("gtm_proxy.pid"));
    assert_eq!(pid_text.split_whitespace().next().and_then(|t| t.parse::<i32>().ok()), Some(again.pid()));
    // The opts file is rewritten from the restart's command line, each option once, so
    // it does not grow with every restart.
    assert_eq!(file_text(&dir.join("gtm_proxy.opts")), opts);
    stop_fast(&mut again);
}

#[test]
fn repeated_options_take_the_last_value() {
    let gtm = Daemon::sim(&[]);
    let first = tempfile::tempdir().expect("tempdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    write_proxy_conf(&dir, "");
    let mut args = vec!["-D".to_string(), first.path().display().to_string(), "-l".into(), "first.log".into()];
    args.extend(start_args(&dir, gtm.addr));
    args.extend(["-l".to_string(), "second.log".to_string()]);
    let mut p = Daemon::proxy_exact(&dir, &args);
    assert!(dir.join("gtm_proxy.pid").exists());
    assert!(!first.path().join("gtm_proxy.pid").exists(), "the first -D lost");
    assert!(dir.join("second.log").exists());
    assert!(!dir.join("first.log").exists() && !first.path().join("first.log").exists());
    stop_fast(&mut p);
}

#[test]
fn data_dir_is_required() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut cmd = command(proxy_bin());
    cmd.args(["-i", "x", "-s", "127.0.0.1", "-t", "1", "-p", "0"]).current_dir(cwd.path());
    let out = run_bounded(cmd, WAIT);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-D"), "{err}");
    assert!(std::fs::read_dir(cwd.path()).expect("ls").next().is_none(), "nothing written to the cwd");
}

#[test]
fn version_and_help() {
    let out = run_proxy(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    let out = run_proxy(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let h = String::from_utf8_lossy(&out.stdout);
    for word in ["reconnect", "check", "-D <DIR>", "--version"] {
        assert!(h.contains(word), "help lacks {word}: {h}");
    }
}

#[test]
fn check_mode_exit_codes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let d = dir.to_str().expect("utf-8 path");
    let conf = dir.join("gtm_proxy.conf");

    std::fs::write(&conf, "nodename = 'p1'\ngtm_host = 'gtm'\ngtm_port = 6668\nport = 7001\n").expect("write");
    let out = run_proxy(&["check", "-D", d]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("valid") && said.contains("p1") && said.contains("7001"), "{said}");
    // Command-line options are checked as a start would take them.
    let out = run_proxy(&["check", "-D", d, "-p", "7002"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("7002"));
    assert!(!dir.join("gtm_proxy.pid").exists() && !dir.join("gtm_proxy.log").exists(), "check starts nothing");

    // A misspelt key: exit 1, file and line, a suggestion.
    std::fs::write(&conf, "nodename = 'p1'\ngtm_host = 'gtm'\ngtm_prot = 6668\n").expect("write");
    let out = run_proxy(&["check", "-D", d]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gtm_proxy.conf:3:") && err.contains("did you mean \"gtm_port\""), "{err}");

    // A bad value, and a missing required key.
    std::fs::write(&conf, "nodename = 'p1'\ngtm_host = 'gtm'\ngtm_port = 6668\nworker_threads = 0\n").expect("write");
    assert_eq!(run_proxy(&["check", "-D", d]).status.code(), Some(1));
    std::fs::write(&conf, "nodename = 'p1'\ngtm_host = 'gtm'\n").expect("write");
    let out = run_proxy(&["check", "-D", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gtm_port"));
    assert_eq!(run_proxy(&["check"]).status.code(), Some(1), "check needs -D");
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC [PID] ` at the start of a line.
fn has_prefix(line: &str, pid: i32) -> bool {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
        && digits(20..23)
        && line.get(23..).is_some_and(|rest| rest.starts_with(&format!(" UTC [{pid}] ")))
}

/// Start a proxy with `conf`, send one bogus first frame, stop it; return its log.
/// With `warning_shows`, wait for the worker's WARNING before stopping.
fn log_of_a_short_run(conf: &str, warning_shows: bool) -> (String, i32) {
    let gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut p = start_proxy(tmp.path(), gtm.addr, conf);
    let pid = p.pid();
    // A first frame that is not a startup packet: a WARNING from the worker.
    let mut s = TcpStream::connect_timeout(&p.addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    std::io::Write::write_all(&mut s, b"Zjunk-junk-junk").expect("write");
    let mut buf = [0u8; 256];
    let _ = std::io::Read::read(&mut s, &mut buf);
    drop(s);
    if warning_shows {
        eventually_for(WAIT, "the warning", || {
            p.file("gtm_proxy.log").contains("worker 0 WARNING:  backend").then_some(())
        });
    }
    stop_fast(&mut p);
    (p.file("gtm_proxy.log"), pid)
}

#[test]
fn log_level_names_prefix_and_ordering() {
    // WARNING: XL's names, the prefix on every line.
    let (log, pid) = log_of_a_short_run("log_min_messages = WARNING\n", true);
    assert!(log.contains(" worker 0 WARNING:  backend"), "{log}");
    assert!(!log.contains("WARN:"), "{log}");
    assert!(log.contains(" LOG:  gtm_proxy "), "LOG ranks above WARNING: {log}");
    assert!(!log.contains(" INFO:  "), "{log}");
    for line in log.lines() {
        assert!(has_prefix(line, pid), "line without the time and pid prefix: {line:?}");
    }

    // ERROR: LOG still shows (it ranks between ERROR and FATAL), WARNING does not.
    let (log, _) = log_of_a_short_run("log_min_messages = ERROR\n", false);
    assert!(log.contains(" LOG:  gtm_proxy "), "{log}");
    assert!(!log.contains("WARNING:"), "{log}");

    // LOG: only LOG, FATAL and PANIC; no ERROR, WARNING or INFO.
    let (log, _) = log_of_a_short_run("log_min_messages = LOG\n", false);
    assert!(log.contains(" LOG:  "), "{log}");
    assert!(!log.contains("WARNING:") && !log.contains(" INFO:  "), "{log}");

    // FATAL: not even LOG.
    let (log, _) = log_of_a_short_run("log_min_messages = FATAL\n", false);
    assert!(!log.contains(" LOG:  "), "{log}");

    // DEBUG1: debug lines print as DEBUG, INFO and LOG both show.
    let (log, _) = log_of_a_short_run("log_min_messages = DEBUG1\n", true);
    assert!(log.contains(" DEBUG:  "), "{log}");
    assert!(log.contains(" INFO:  ") && log.contains(" LOG:  "), "{log}");
    assert!(!log.contains("DEBUG1:"), "{log}");
    // The prefix names the worker; its messages do not repeat it.
    assert!(log.contains(" worker 0 INFO:  connected to GTM"), "{log}");
    assert!(!log.contains("worker 0: "), "{log}");
}

#[test]
fn sighup_reopens_the_log_file_after_logrotate_moved_it() {
    let gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let mut p = start_proxy(&dir, gtm.addr, "log_min_messages = LOG\n");
    let log = dir.join("gtm_proxy.log");
    let rotated = dir.join("gtm_proxy.log.1");
    eventually_for(WAIT, "the start-up line", || file_text(&log).contains("starting").then_some(()));
    std::fs::rename(&log, &rotated).expect("mv");
    p.signal(libc::SIGHUP);
    eventually_for(WAIT, "a new log file with the reload line", || {
        file_text(&log).contains("configuration reloaded").then_some(())
    });
    assert!(!file_text(&rotated).contains("configuration reloaded"), "the moved file is closed");
    assert!(file_text(&rotated).contains("starting"));
    // Later lines keep going to the new file.
    p.signal(libc::SIGHUP);
    eventually_for(WAIT, "a second reload line", || {
        (file_text(&log).matches("configuration reloaded").count() == 2).then_some(())
    });
    stop_fast(&mut p);
}

#[test]
fn starts_with_standard_descriptors_closed_as_gtm_ctl_does() {
    let gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    write_proxy_conf(&dir, "log_min_messages = LOG\n");
    let line: String = start_args(&dir, gtm.addr).iter().map(|a| format!(" \"{a}\"")).collect();
    let cmd = format!("exec \"{}\"{line} <&- >&- 2>&-", proxy_bin());
    let mut sh = command("sh");
    sh.arg("-c").arg(&cmd);
    let mut p = Daemon::launch(sh, &dir, &dir.join("gtm_proxy.port"));
    TcpStream::connect_timeout(&p.addr, WAIT).expect("accepts connections");
    eventually_for(WAIT, "the start-up line", || p.file("gtm_proxy.log").contains("starting").then_some(()));
    stop_fast(&mut p);
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    write_proxy_conf(&dir, "");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    // Not a Daemon: that waits for the port file, and this test checks the
    // port file is already there when READY arrives.
    let mut cmd = command(proxy_bin());
    cmd.args(start_args(&dir, gtm.addr))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID");
    let p = Guarded::spawn(cmd);
    let mut seen = String::new();
    let recv_until = |want: &str, seen: &mut String| {
        eventually_for(WAIT, want, || {
            let mut buf = [0u8; 512];
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
            seen.contains(want).then_some(())
        })
    };
    recv_until("READY=1", &mut seen);
    // Ready means listening: the port file is there and the proxy accepts.
    let addr = read_port_file(&dir.join("gtm_proxy.port")).expect("port file written before READY");
    TcpStream::connect_timeout(&addr, WAIT).expect("accepts once ready");
    recv_until("WATCHDOG=1", &mut seen);
    p.signal(libc::SIGINT);
    recv_until("STOPPING=1", &mut seen);
    assert_eq!(p.finish(WAIT).status.code(), Some(0));
    assert_eq!(seen.matches("READY=1").count(), 1, "{seen}");
}

#[test]
fn status_summarizes_the_running_proxy() {
    let gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let d = dir.to_str().expect("utf-8 path");
    write_proxy_conf(&dir, &format!("metrics_port = {}\n", free_port()));
    let out = run_proxy(&["status", "-D", d]);
    assert_eq!(out.status.code(), Some(1), "nothing runs yet");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server running"));

    let mut p = Daemon::proxy_exact(&dir, &start_args(&dir, gtm.addr));
    let addr = p.addr;
    let _backend = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    // The running proxy's options come from gtm_proxy.opts (-h, -i, -s, -t), so the
    // metrics endpoint is found on 127.0.0.1.
    let said = eventually_for(WAIT, "a status with the link up and one backend", || {
        let out = run_proxy(&["status", "-D", d]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code() == Some(0) && text.contains("GTM links up: 1 of 1") && text.contains("backends: 1;"))
            .then_some(text)
    });
    assert!(said.contains(&format!("server is running (PID: {})", p.pid())), "{said}");
    assert!(said.contains(&format!("listening on {addr}")), "{said}");
    assert!(said.contains("hold timeouts: 0; stale GXIDs refused: 0; refused connections: 0"), "{said}");
    stop_fast(&mut p);
    assert_eq!(run_proxy(&["status", "-D", d]).status.code(), Some(1));
}

#[test]
fn a_planned_reconnect_logs_at_log_and_is_not_a_link_failure() {
    let gtm1 = Daemon::sim(&[]);
    let gtm2 = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let d = dir.to_str().expect("utf-8 path");
    // LOG shows at ERROR; the ERROR a failure would log shows too.
    let mut p = start_proxy(&dir, gtm1.addr, &format!("metrics_port = {}\nlog_min_messages = ERROR\n", free_port()));
    let status = || String::from_utf8_lossy(&run_proxy(&["status", "-D", d]).stdout).into_owned();
    eventually_for(WAIT, "the first link", || status().contains("GTM links up: 1 of 1").then_some(()));
    let out = run_proxy(&["reconnect", "-D", d, "-s", "127.0.0.1", "-t", &gtm2.addr.port().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let moved = format!("sent again on 127.0.0.1:{}", gtm2.addr.port());
    eventually_for(WAIT, "the reconnect line", || p.file("gtm_proxy.log").contains(&moved).then_some(()));
    let said = eventually_for(WAIT, "the new link", || {
        let s = status();
        s.contains("GTM links up: 1 of 1").then_some(s)
    });
    assert!(said.contains("GTM link failures: 0"), "{said}");
    let log = p.file("gtm_proxy.log");
    assert!(log.contains(" worker 0 LOG:  leaving the GTM link on a reconnect order"), "{log}");
    assert!(!log.contains(" ERROR:  "), "a planned reconnect is not an error: {log}");
    stop_fast(&mut p);
}

#[test]
fn starts_without_the_gtm_and_connects_once_it_is_up() {
    let gtm_port = free_port();
    let gtm_addr: SocketAddr = format!("127.0.0.1:{gtm_port}").parse().expect("addr");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let d = dir.to_str().expect("utf-8 path");
    // A hold_timeout far beyond WAIT: a request held instead of answered would
    // leave the client below without an answer.
    let conf = format!(
        "metrics_port = {}\ngtm_connect_retry_interval = 200ms\nlog_min_messages = INFO\nhold_timeout = 10min\n",
        free_port()
    );
    let mut p = start_proxy(&dir, gtm_addr, &conf);
    TcpStream::connect_timeout(&p.addr, WAIT).expect("accepts while the GTM is down");
    let status = || String::from_utf8_lossy(&run_proxy(&["status", "-D", d]).stdout).into_owned();
    eventually_for(WAIT, "a status with no link", || status().contains("GTM links up: 0 of 1").then_some(()));
    assert!(p.file("gtm_proxy.log").contains("listening anyway"));
    // Until the GTM has been reached once, requests are answered at once, with why.
    let mut early = Client::backend(p.addr, "cn1");
    let e = early.call_err(&begin_req(b"\0"));
    assert!(e.message().starts_with("GTM unavailable: "), "{}", e.message());
    assert!(e.message().contains(&gtm_addr.to_string()), "names the GTM: {}", e.message());

    let sim_tmp = tempfile::tempdir().expect("tempdir");
    let sim_dir = sim_tmp.path().to_path_buf();
    let _gtm = Daemon::sim_in(&sim_dir, gtm_port, &[], Some(sim_tmp));
    eventually_for(WAIT, "the link once the GTM listens", || status().contains("GTM links up: 1 of 1").then_some(()));
    eventually_for(WAIT, "the registration", || {
        p.file("gtm_proxy.log").contains("registered as GTM proxy \"test_proxy\"").then_some(())
    });
    // The backend refused earlier is served now.
    assert!(early.begin() > 0);
    stop_fast(&mut p);

    // gtm_required_at_start = on keeps XL's behaviour: exit at once.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    write_proxy_conf(tmp2.path(), "gtm_required_at_start = on\n");
    let down: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    // Not a Daemon: it never listens.
    let mut cmd = command(proxy_bin());
    cmd.args(start_args(tmp2.path(), down));
    assert_eq!(Guarded::spawn(cmd).finish(WAIT).status.code(), Some(1));
    assert!(file_text(&tmp2.path().join("gtm_proxy.log")).contains(" FATAL:  "));
    assert!(!tmp2.path().join("gtm_proxy.pid").exists());
}

/// The body of one scrape of the metrics endpoint on `port`.
fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of the series written exactly as `series` (name and labels).
fn value_of(body: &str, series: &str) -> Option<f64> {
    let key = format!("{series} ");
    body.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok())
}

/// The `E` a connection is answered with; panics on anything else.
fn error_answer(c: &mut Client) -> String {
    match c.try_recv() {
        Some(ServerFrame::Error { fields, .. }) => fields.message(),
        other => panic!("expected an E, got {other:?}"),
    }
}

#[test]
fn metrics_count_refusals_by_reason_and_round_trips_and_show_the_process() {
    let gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let conf = format!(
        "metrics_port = {port}\nmax_backends = 1\nallowed_client_networks = 127.0.0.1/32\nallowed_node_names = cn1\n\
         backend_startup_timeout = 1s\n"
    );
    let mut p = start_proxy(tmp.path(), gtm.addr, &conf);
    let refused = |b: &str, why: &str| value_of(b, &format!("gtm_proxy_refused_connections_total{{reason=\"{why}\"}}"));
    let before = body_of(&wait_metrics(port, "the endpoint", |_| true)).to_string();
    for why in ["max_backends", "access", "out_of_fds", "no_worker", "startup_timeout", "max_startup_backends"] {
        assert_eq!(refused(&before, why), Some(0.0), "every reason is there from the start: {why}\n{before}");
    }

    // Access: a peer outside allowed_client_networks (at accept), a node name
    // outside allowed_node_names (on the startup packet).
    let mut outsider = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), p.addr);
    let m = error_answer(&mut outsider);
    assert!(m.contains("127.0.0.2"), "{m}");
    let mut stranger = Client::connect(p.addr);
    stranger.send_startup("intruder", gtmproxy::codec::types::node_type::DEFAULT, false, 0);
    let m = error_answer(&mut stranger);
    assert!(m.contains("intruder"), "{m}");
    wait_metrics(port, "the refused backend gone", |b| metric_of(b, "gtm_proxy_backends", 0) == Some(0));
    // A connection that never sends its startup packet.
    let mut silent = Client::connect(p.addr);
    let m = error_answer(&mut silent);
    assert!(m.contains("no startup packet"), "{m}");
    wait_metrics(port, "the silent one gone", |b| metric_of(b, "gtm_proxy_backends", 0) == Some(0));

    // Round trips: one per begin of a lone backend.
    let mut c = Client::backend(p.addr, "cn1");
    c.begin();
    let trips = "gtm_proxy_gtm_round_trip_seconds_count{worker=\"0\"}";
    let first = value_of(body_of(&wait_metrics(port, "a round trip", |_| true)), trips).expect("round-trip count");
    assert!(first >= 1.0, "{first}");
    for _ in 0..5 {
        c.begin();
    }
    let later = value_of(body_of(&wait_metrics(port, "more round trips", |_| true)), trips).expect("count");
    assert!(later >= first + 5.0, "{first} -> {later}");

    // max_backends = 1 and c is connected: the next connection is turned away.
    wait_metrics(port, "one backend", |b| metric_of(b, "gtm_proxy_backends", 0) == Some(1));
    let mut extra = Client::connect(p.addr);
    let m = error_answer(&mut extra);
    assert!(m.contains("too many connections"), "{m}");

    let answer = wait_metrics(port, "the refusals", |b| {
        let b = body_of(b);
        refused(b, "max_backends") == Some(1.0) && refused(b, "access") == Some(2.0)
    });
    assert_eq!(refused(body_of(&answer), "startup_timeout"), Some(1.0), "{answer}");
    assert_eq!(refused(body_of(&answer), "max_startup_backends"), Some(0.0), "{answer}");
    let body = body_of(&answer);
    if let Err(e) = exposition::check(body) {
        panic!("not valid exposition text: {e}\n{body}");
    }
    let info = format!("gtm_proxy_build_info{{version=\"{}\",protocol=\"XL10\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(value_of(body, &info), Some(1.0), "{body}");
    let fds = value_of(body, "process_open_fds").expect("open fds");
    let max = value_of(body, "process_max_fds").expect("max fds");
    assert!(fds > 0.0 && fds <= max, "{fds} of {max}");
    assert!(value_of(body, "process_resident_memory_bytes").is_some_and(|v| v > 0.0), "{body}");
    let started = value_of(body, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!(started > 0.0 && started <= now + 1.0, "{started} vs {now}");
    stop_fast(&mut p);
}

#[test]
fn metrics_count_replays_failure_reconnects_and_hold_timeouts() {
    let mut gtm = Daemon::sim(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut p = start_proxy(tmp.path(), gtm.addr, &format!("metrics_port = {port}\nhold_timeout = 1s\n"));
    let mut c = Client::backend(p.addr, "cn1");
    c.begin();
    // A begin in flight when the GTM dies: sent again on the next link, which
    // never comes; held past hold_timeout, it is answered E.
    gtm.stop();
    c.send(&begin_req(b"\0"));
    wait_metrics(port, "the begin in flight", |b| metric_of(b, "gtm_proxy_in_flight_requests", 0) == Some(1));
    gtm.kill9();
    let m = error_answer(&mut c);
    assert!(m.starts_with("GTM unavailable: ") && m.contains("hold_timeout"), "{m}");
    let answer =
        wait_metrics(port, "the hold timeout", |b| metric_of(b, "gtm_proxy_hold_timeouts_total", 0) == Some(1));
    let body = body_of(&answer);
    assert_eq!(metric_of(body, "gtm_proxy_replays_total", 0), Some(1), "{body}");
    assert_eq!(value_of(body, "gtm_proxy_gtm_reconnects_total{worker=\"0\",cause=\"failure\"}"), Some(1.0), "{body}");
    assert_eq!(value_of(body, "gtm_proxy_gtm_reconnects_total{worker=\"0\",cause=\"order\"}"), Some(0.0), "{body}");
    assert_eq!(metric_of(body, "gtm_proxy_outcome_unknown_total", 0), Some(0), "a begin is safe to send again");
    stop_fast(&mut p);
}
