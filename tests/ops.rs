//! Operations: what gtm_ctl, logrotate and an operator see of the real `gtm_proxy`
//! binary — the pid and opts files, repeated options, `-D` required, `--version`,
//! `check`, XL's log level names and ordering, and log reopening on SIGHUP.
//!
//! Self-contained: starts `gtm_sim` and `gtm_proxy` on loopback ports chosen at run time;
//! every wait is bounded.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gtm_proxy")
}

/// Poll `f` until it gives `Some`, for at most `within`.
fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A spawned process, killed when dropped.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Exit code once the process ended, within `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read_addr(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Wait for a daemon's port file; panics if the process exits first.
fn wait_listening(p: &mut Proc, port_file: &Path) -> SocketAddr {
    eventually(WAIT, "the port file", || {
        assert!(p.running(), "daemon exited before listening");
        read_addr(port_file)
    })
}

/// A GTM simulator in its own temporary directory.
struct Gtm {
    _proc: Proc,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn gtm() -> Gtm {
    gtm_on(0)
}

/// A GTM simulator on `port` (0: any free port).
fn gtm_on(port: u16) -> Gtm {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_gtm_sim"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-D"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gtm_sim");
    let mut proc = Proc { child: Some(child) };
    let addr = wait_listening(&mut proc, &dir.path().join("gtm_sim.port"));
    Gtm { _proc: proc, addr, _dir: dir }
}

/// The usual start options against `gtm`, in directory `dir`.
fn proxy_args(dir: &Path, gtm: SocketAddr) -> Vec<String> {
    let mut v: Vec<String> = vec!["-D".into(), dir.display().to_string()];
    for (o, val) in [
        ("-h", "127.0.0.1".to_string()),
        ("-p", "0".into()),
        ("-s", gtm.ip().to_string()),
        ("-t", gtm.port().to_string()),
        ("-i", "ops_proxy".into()),
        ("-n", "1".into()),
    ] {
        v.push(o.into());
        v.push(val);
    }
    v
}

fn spawn_proxy(args: &[String]) -> Proc {
    let child = Command::new(proxy_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gtm_proxy");
    Proc { child: Some(child) }
}

fn run_proxy(args: &[&str]) -> Output {
    Command::new(proxy_bin()).args(args).stdin(Stdio::null()).output().expect("run gtm_proxy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Stop a proxy with SIGINT (`gtm_ctl stop -m fast`) and check it exits 0.
fn stop_fast(p: &mut Proc) {
    p.signal(libc::SIGINT);
    assert_eq!(p.wait_exit(WAIT), Some(0), "fast stop exits 0");
}

#[test]
fn pid_file_tokens_and_opts_file_drive_a_gtm_ctl_restart() {
    let gtm = gtm();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let args = proxy_args(&dir, gtm.addr);
    let mut p = spawn_proxy(&args);
    wait_listening(&mut p, &dir.join("gtm_proxy.port"));

    // gtm_ctl status scans three tokens: pid, data directory, integer mode.
    let pid_text = read(&dir.join("gtm_proxy.pid"));
    let tokens: Vec<&str> = pid_text.split_whitespace().collect();
    assert_eq!(tokens.len(), 3, "{pid_text:?}");
    assert_eq!(tokens[0].parse::<i32>().expect("pid token"), p.pid());
    assert_eq!(std::fs::canonicalize(tokens[1]).expect("dir token"), std::fs::canonicalize(&dir).expect("dir"));
    assert_eq!(tokens[2].parse::<i32>().expect("mode token"), 1);

    // gtm_proxy.opts: one line, each argument after the program as ` "arg"`.
    let opts = read(&dir.join("gtm_proxy.opts"));
    let expected: String = args.iter().map(|a| format!(" \"{a}\"")).collect::<String>() + "\n";
    assert_eq!(opts, expected);
    assert_eq!(opts.lines().count(), 1);
    stop_fast(&mut p);
    assert!(!dir.join("gtm_proxy.pid").exists(), "the pid file is removed at stop");

    // gtm_ctl restart: `"gtm_proxy" -D DIR <opts line>` through the shell, -D repeated.
    let line = opts.trim_end_matches('\n');
    let cmd = format!("exec \"{}\" -D \"{}\" {line}", proxy_bin(), dir.display());
    let child = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    let mut again = Proc { child: Some(child) };
    let addr = wait_listening(&mut again, &dir.join("gtm_proxy.port"));
    TcpStream::connect_timeout(&addr, WAIT).expect("the restarted proxy accepts connections");
    let pid_text = read(&dir.join("gtm_proxy.pid"));
    assert_eq!(pid_text.split_whitespace().next().and_then(|t| t.parse::<i32>().ok()), Some(again.pid()));
    // The opts file is rewritten from the restart's command line, each option once, so
    // it does not grow with every restart.
    assert_eq!(read(&dir.join("gtm_proxy.opts")), opts);
    stop_fast(&mut again);
}

#[test]
fn repeated_options_take_the_last_value() {
    let gtm = gtm();
    let first = tempfile::tempdir().expect("tempdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let mut args = vec!["-D".to_string(), first.path().display().to_string(), "-l".into(), "first.log".into()];
    args.extend(proxy_args(&dir, gtm.addr));
    args.extend(["-l".to_string(), "second.log".to_string()]);
    let mut p = spawn_proxy(&args);
    wait_listening(&mut p, &dir.join("gtm_proxy.port"));
    assert!(dir.join("gtm_proxy.pid").exists());
    assert!(!first.path().join("gtm_proxy.pid").exists(), "the first -D lost");
    assert!(dir.join("second.log").exists());
    assert!(!dir.join("first.log").exists() && !first.path().join("first.log").exists());
    stop_fast(&mut p);
}

#[test]
fn data_dir_is_required() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = Command::new(proxy_bin())
        .args(["-i", "x", "-s", "127.0.0.1", "-t", "1", "-p", "0"])
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()
        .expect("run");
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
    let gtm = gtm();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("gtm_proxy.conf"), conf).expect("conf");
    let mut p = spawn_proxy(&proxy_args(&dir, gtm.addr));
    let addr = wait_listening(&mut p, &dir.join("gtm_proxy.port"));
    let pid = p.pid();
    // A first frame that is not a startup packet: a WARNING from the worker.
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    std::io::Write::write_all(&mut s, b"Zjunk-junk-junk").expect("write");
    let mut buf = [0u8; 256];
    let _ = std::io::Read::read(&mut s, &mut buf);
    drop(s);
    if warning_shows {
        eventually(WAIT, "the warning", || {
            read(&dir.join("gtm_proxy.log")).contains("WARNING:  worker 0: backend").then_some(())
        });
    }
    stop_fast(&mut p);
    (read(&dir.join("gtm_proxy.log")), pid)
}

#[test]
fn log_level_names_prefix_and_ordering() {
    // WARNING: XL's names, the prefix on every line.
    let (log, pid) = log_of_a_short_run("log_min_messages = WARNING\n", true);
    assert!(log.contains(" WARNING:  worker 0: backend"), "{log}");
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
}

#[test]
fn sighup_reopens_the_log_file_after_logrotate_moved_it() {
    let gtm = gtm();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("gtm_proxy.conf"), "log_min_messages = LOG\n").expect("conf");
    let mut p = spawn_proxy(&proxy_args(&dir, gtm.addr));
    wait_listening(&mut p, &dir.join("gtm_proxy.port"));
    let log = dir.join("gtm_proxy.log");
    let rotated = dir.join("gtm_proxy.log.1");
    eventually(WAIT, "the start-up line", || read(&log).contains("starting").then_some(()));
    std::fs::rename(&log, &rotated).expect("mv");
    p.signal(libc::SIGHUP);
    eventually(WAIT, "a new log file with the reload line", || {
        read(&log).contains("configuration reloaded").then_some(())
    });
    assert!(!read(&rotated).contains("configuration reloaded"), "the moved file is closed");
    assert!(read(&rotated).contains("starting"));
    // Later lines keep going to the new file.
    p.signal(libc::SIGHUP);
    eventually(WAIT, "a second reload line", || {
        (read(&log).matches("configuration reloaded").count() == 2).then_some(())
    });
    stop_fast(&mut p);
}

#[test]
fn starts_with_standard_descriptors_closed_as_gtm_ctl_does() {
    let gtm = gtm();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().to_path_buf();
    std::fs::write(dir.join("gtm_proxy.conf"), "log_min_messages = LOG\n").expect("conf");
    let line: String = proxy_args(&dir, gtm.addr).iter().map(|a| format!(" \"{a}\"")).collect();
    let cmd = format!("exec \"{}\"{line} <&- >&- 2>&-", proxy_bin());
    let child = Command::new("sh").arg("-c").arg(&cmd).spawn().expect("sh");
    let mut p = Proc { child: Some(child) };
    let addr = wait_listening(&mut p, &dir.join("gtm_proxy.port"));
    TcpStream::connect_timeout(&addr, WAIT).expect("accepts connections");
    eventually(WAIT, "the start-up line", || read(&dir.join("gtm_proxy.log")).contains("starting").then_some(()));
    stop_fast(&mut p);
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let gtm = gtm();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let child = Command::new(proxy_bin())
        .args(proxy_args(&dir, gtm.addr))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut p = Proc { child: Some(child) };
    let mut seen = String::new();
    let recv_until = |want: &str, seen: &mut String| {
        eventually(WAIT, want, || {
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
    let addr = read_addr(&dir.join("gtm_proxy.port")).expect("port file written before READY");
    TcpStream::connect_timeout(&addr, WAIT).expect("accepts once ready");
    recv_until("WATCHDOG=1", &mut seen);
    p.signal(libc::SIGINT);
    recv_until("STOPPING=1", &mut seen);
    assert_eq!(p.wait_exit(WAIT), Some(0));
    assert_eq!(seen.matches("READY=1").count(), 1, "{seen}");
}

/// A loopback port free at the time of the call.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

#[test]
fn status_summarizes_the_running_proxy() {
    let gtm = gtm();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let d = dir.to_str().expect("utf-8 path");
    std::fs::write(dir.join("gtm_proxy.conf"), format!("metrics_port = {}\n", free_port())).expect("conf");
    let out = run_proxy(&["status", "-D", d]);
    assert_eq!(out.status.code(), Some(1), "nothing runs yet");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server running"));

    let mut p = spawn_proxy(&proxy_args(&dir, gtm.addr));
    let addr = wait_listening(&mut p, &dir.join("gtm_proxy.port"));
    let _backend = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    // The running proxy's options come from gtm_proxy.opts (-h, -i, -s, -t), so the
    // metrics endpoint is found on 127.0.0.1.
    let said = eventually(WAIT, "a status with the link up and one backend", || {
        let out = run_proxy(&["status", "-D", d]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code() == Some(0) && text.contains("GTM links up: 1 of 1") && text.contains("backends: 1;"))
            .then_some(text)
    });
    assert!(said.contains(&format!("server is running (PID: {})", p.pid())), "{said}");
    assert!(said.contains(&format!("listening on {addr}")), "{said}");
    stop_fast(&mut p);
    assert_eq!(run_proxy(&["status", "-D", d]).status.code(), Some(1));
}

#[test]
fn a_planned_reconnect_logs_at_log_and_is_not_a_link_failure() {
    let gtm1 = gtm();
    let gtm2 = gtm();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let d = dir.to_str().expect("utf-8 path");
    // LOG shows at ERROR; the ERROR a failure would log shows too.
    std::fs::write(dir.join("gtm_proxy.conf"), format!("metrics_port = {}\nlog_min_messages = ERROR\n", free_port()))
        .expect("conf");
    let mut p = spawn_proxy(&proxy_args(&dir, gtm1.addr));
    wait_listening(&mut p, &dir.join("gtm_proxy.port"));
    let status = || String::from_utf8_lossy(&run_proxy(&["status", "-D", d]).stdout).into_owned();
    eventually(WAIT, "the first link", || status().contains("GTM links up: 1 of 1").then_some(()));
    let out = run_proxy(&["reconnect", "-D", d, "-s", "127.0.0.1", "-t", &gtm2.addr.port().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let moved = format!("replayed on 127.0.0.1:{}", gtm2.addr.port());
    eventually(WAIT, "the reconnect line", || read(&dir.join("gtm_proxy.log")).contains(&moved).then_some(()));
    let said = eventually(WAIT, "the new link", || {
        let s = status();
        s.contains("GTM links up: 1 of 1").then_some(s)
    });
    assert!(said.contains("GTM link failures: 0"), "{said}");
    let log = read(&dir.join("gtm_proxy.log"));
    assert!(log.contains(" LOG:  worker 0: leaving the GTM link on a reconnect order"), "{log}");
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
    let conf = format!("metrics_port = {}\ngtm_connect_retry_interval = 200ms\nlog_min_messages = INFO\n", free_port());
    std::fs::write(dir.join("gtm_proxy.conf"), &conf).expect("conf");
    let mut p = spawn_proxy(&proxy_args(&dir, gtm_addr));
    let addr = wait_listening(&mut p, &dir.join("gtm_proxy.port"));
    TcpStream::connect_timeout(&addr, WAIT).expect("accepts while the GTM is down");
    let status = || String::from_utf8_lossy(&run_proxy(&["status", "-D", d]).stdout).into_owned();
    eventually(WAIT, "a status with no link", || status().contains("GTM links up: 0 of 1").then_some(()));
    assert!(read(&dir.join("gtm_proxy.log")).contains("listening anyway"));

    let _gtm = gtm_on(gtm_port);
    eventually(WAIT, "the link once the GTM listens", || status().contains("GTM links up: 1 of 1").then_some(()));
    eventually(WAIT, "the registration", || {
        read(&dir.join("gtm_proxy.log")).contains("registered as GTM proxy \"ops_proxy\"").then_some(())
    });
    stop_fast(&mut p);

    // gtm_required_at_start = on keeps XL's behaviour: exit at once.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp2.path().join("gtm_proxy.conf"), "gtm_required_at_start = on\n").expect("conf");
    let down: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut q = spawn_proxy(&proxy_args(tmp2.path(), down));
    assert_eq!(q.wait_exit(WAIT), Some(1));
    assert!(read(&tmp2.path().join("gtm_proxy.log")).contains(" FATAL:  "));
    assert!(!tmp2.path().join("gtm_proxy.pid").exists());
}
