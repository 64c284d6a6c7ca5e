//! End-to-end tests of the `gtm_bench` binary against a tiny in-test fake
//! GTM ([`fake_gtm`]: one thread per connection, checks that every request is
//! exactly what an XL 10 backend sends, and can be told to misbehave).
//!
//! The output modes (text, `--json`, `-P` progress) and the target, compare
//! and scenario options are tested against the real simulator and proxy,
//! in both load models (`--model loop`, the default, and `--model threads`).
//! No assertion depends on how fast anything runs: counts, states and the
//! shape of the output only.
//!
//! Every loop here is bounded in time: the fake stops when dropped, and
//! every process a test starts is killed on every path (a guard's Drop).

#[path = "bench/fake_gtm.rs"]
mod fake_gtm;
mod harness;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_gtm::{FakeGtm, Fault};
use harness::{command, raise_fd_limit, run_bounded, Client, Daemon, Guarded};
use serde_json::Value;

/// Run `exe args` with output captured, killed if it outlives `limit`.
fn run_limited(exe: &Path, args: &[&str], limit: Duration) -> Output {
    let mut cmd = command(&exe.display().to_string());
    cmd.args(args);
    run_bounded(cmd, limit)
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gtm_bench"))
}

/// Run gtm_bench with `--json`; the parsed output.
fn bench(args: &[&str], limit: Duration) -> (Output, Value) {
    bench_exe(exe(), args, limit)
}

fn bench_exe(exe: &Path, args: &[&str], limit: Duration) -> (Output, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run_limited(exe, &all, limit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    (out, json)
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

fn target(addr: SocketAddr) -> String {
    format!("--target={addr}")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A count that may be absent (error kinds are listed only when they occurred).
fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn clean_run_against_the_fake_gtm() {
    let gtm = FakeGtm::start(Fault::None);
    let t = target(gtm.addr);
    let (out, j) = bench(&[&t, "-c", "50", "-T", "1s", "--warmup", "0s"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["mode"], "run");
    assert_eq!(j["ok"], true);
    assert_eq!(j["target"]["addr"], gtm.addr.to_string());
    assert_eq!(j["load"]["backends"], 50);
    assert_eq!(j["load"]["model"], "loop", "the default model");
    assert!(n(&j["txns"]) > 0);
    let count = |op: &str| n(&j["latency_us"][op]["count"]);
    assert_eq!(n(&j["ops"]), count("begin") + count("snapshot") + count("commit"));
    assert_eq!(n(&j["txns"]), count("commit"));
    assert_eq!(count("txn"), count("commit"));
    assert_eq!(j["errors"]["total"], 0, "{j:#}");
    let kinds = j["errors"]["by_kind"].as_object().unwrap();
    assert!(kinds.len() >= 15 && kinds.values().all(|v| v == 0), "{j:#}");
    assert_eq!(j["gxids"]["duplicates"], 0);
    assert!(n(&j["gxids"]["handed_out"]) >= n(&j["txns"]));
    assert_eq!(j["connections"]["established"], 50);
    assert_eq!(j["connections"]["failed"], 0);
    for op in ["begin", "snapshot", "commit", "txn"] {
        let l = &j["latency_us"][op];
        let q = |k: &str| l[k].as_f64().unwrap();
        assert!(0.0 < q("p50") && q("p50") <= q("p90") && q("p90") <= q("p99") && q("p99") <= q("max"), "{op}: {l}");
    }
    assert_eq!(j["cpu"][0]["name"], "gtm_bench", "{j:#}");
    assert!(j["timeline"].is_null(), "no timeline unless asked for");
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

#[test]
fn human_output_by_default_with_progress_lines() {
    let gtm = FakeGtm::start(Fault::ErrorOnCommitEvery(50));
    let t = target(gtm.addr);
    let args = [&t[..], "-c", "10", "-T", "1s", "--warmup", "0s", "-P", "200ms", "--max-reconnects", "1000000"];
    let out = run_limited(exe(), &args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "errors make the run fail\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.trim_start().starts_with('{'), "{text}");
    for want in ["throughput:", "txn/s", "p50", "p90", "p99", "p99.9", "max", "gtm_bench", "result: FAILED"] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    let errors = text.lines().find(|l| l.starts_with("errors:")).unwrap();
    assert!(errors.contains("server_error") && errors.contains("commit"), "{errors}");
    for op in ["begin", "snapshot", "commit", "txn"] {
        let row = text.lines().find(|l| l.trim_start().starts_with(op)).unwrap();
        assert!(row.contains("µs") || row.contains("ms"), "latency with a unit: {row}");
        let digits = |w: &str| w.chars().filter(char::is_ascii_digit).count();
        let decimals = row.split_whitespace().filter(|w| w.contains('.'));
        assert!(decimals.clone().count() > 0 && decimals.clone().all(|w| digits(w) <= 3), "no false precision: {row}");
    }
    let err = stderr(&out);
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("progress:")).map(|l| l.trim()).collect();
    assert!(!progress.is_empty(), "{err}");
    assert!(progress.iter().all(|l| l.contains("txn/s") && l.ends_with("/10 connected")), "{progress:?}");
}

#[test]
fn no_session_id_and_think_time() {
    let gtm = FakeGtm::start(Fault::None);
    let t = target(gtm.addr);
    let args = [&t[..], "-c", "10", "-T", "1s", "--warmup", "200ms", "--think", "20ms", "--no-session-id", "-j", "2"];
    let (out, j) = bench(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["load"]["session_ids"], false);
    assert_eq!(j["load"]["threads"], 2);
    assert_eq!(j["load"]["think_us"], 20000);
    let begins = gtm.state.begins.load(Ordering::Relaxed);
    assert!(begins > 0);
    assert_eq!(gtm.state.bare_begins.load(Ordering::Relaxed), begins, "every begin without a session id");
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

#[test]
fn duplicate_gxids_are_reported() {
    let gtm = FakeGtm::start(Fault::DuplicateGxidEvery(7));
    let t = target(gtm.addr);
    let (out, j) = bench(&[&t, "-c", "20", "-T", "1s", "--warmup", "0s"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    assert_eq!(j["ok"], false);
    let dups = n(&j["gxids"]["duplicates"]);
    assert!(dups > 0, "{j:#}");
    assert_eq!(n(&j["gxids"]["unique"]) + dups, n(&j["gxids"]["handed_out"]));
}

#[test]
fn server_errors_are_counted_and_backends_reconnect() {
    let gtm = FakeGtm::start(Fault::ErrorOnCommitEvery(50));
    let t = target(gtm.addr);
    let args = [&t[..], "-c", "20", "-T", "1s", "--warmup", "0s", "--max-reconnects", "1000000"];
    let (out, j) = bench(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    let e = &j["errors"];
    let k = n(&e["by_kind"]["server_error"]);
    assert!(k > 0, "{j:#}");
    assert_eq!(n(&e["by_op"]["commit"]), k);
    assert_eq!(n(&e["total"]), k);
    assert!(n(&j["connections"]["reconnects"]) > 0);
    assert!(n(&j["connections"]["established"]) > 20);
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

#[test]
fn a_close_right_after_an_answer_is_noticed_at_once() {
    let gtm = FakeGtm::start(Fault::CloseAfterCommitEvery(20));
    let t = target(gtm.addr);
    let args = [&t[..], "-c", "10", "-T", "1s", "--warmup", "0s", "--max-reconnects", "1000000"];
    let (out, j) = bench(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    let e = &j["errors"];
    let closes = n(&e["by_kind"]["unexpected_close"]);
    assert!(closes > 0, "{j:#}");
    assert_eq!(n(&e["total"]), closes, "nothing but the closes: no timeouts");
    // Blamed on the commit just answered when the FIN came with it, else on the next begin.
    assert_eq!(n(&e["by_op"]["commit"]) + n(&e["by_op"]["begin"]), closes, "{e}");
}

#[test]
fn error_limit_ends_the_run_early() {
    let gtm = FakeGtm::start(Fault::ErrorOnCommitEvery(2));
    let t = target(gtm.addr);
    let args = [&t[..], "-c", "5", "-T", "10m", "--warmup", "0s", "--max-errors", "20"];
    // A 10-minute window that must end by itself long before this bound.
    let (out, j) = bench(&args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    assert!(j["stop_reason"].as_str().unwrap().contains("error limit"), "{j:#}");
    assert!(n(&j["errors"]["total"]) >= 20);
}

#[test]
fn unreachable_target_is_fatal() {
    // A port nobody listens on: bind one, note it, close it.
    let p = port(TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
    let t = format!("--target=127.0.0.1:{p}");
    let (out, j) = bench(&[&t, "-c", "3", "-T", "1s", "--max-reconnects", "1"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(j["mode"], "fatal");
    assert!(j["fatal"].as_str().unwrap().contains("no connection"), "{j:#}");
    assert!(stderr(&out).contains("no connection"));
}

/// A stand-in for a proxy binary that cannot serve: records its arguments
/// and exits at once with a message.
fn stub_proxy(dir: &Path, record: &Path) -> PathBuf {
    let path = dir.join("gtm_proxy");
    let script =
        format!("#!/bin/sh\necho \"$@\" > \"{}\"\necho 'stub: not implemented' >&2\nexit 0\n", record.display());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_stub_proxy_is_reported_as_a_failed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("args");
    let proxy = stub_proxy(tmp.path(), &record);
    let args = ["--spawn-sim", "--via-proxy", "--proxy-bin", proxy.to_str().unwrap()];
    let (out, j) = bench(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let fatal = j["fatal"].as_str().unwrap();
    assert!(fatal.contains("gtm_proxy exited") && fatal.contains("stub: not implemented"), "{fatal}");
    // Only XL's flags: a port chosen by the bench, never our `-p 0` extension.
    let args = std::fs::read_to_string(&record).unwrap();
    let words: Vec<&str> = args.split_whitespace().collect();
    let port = words.iter().position(|w| *w == "-p").map(|i| words[i + 1]).unwrap();
    assert!(port.parse::<u16>().unwrap() > 0, "{args}");
    assert!(words.starts_with(&["-D"]) && words.contains(&"-s") && words.contains(&"-t"), "{args}");
}

/// The README's first command on a fresh clone: `cargo run --bin gtm_bench`
/// builds only gtm_bench, so there is no gtm_sim or gtm_proxy beside it. A
/// copy of the binary alone in a directory must still run the whole demo.
#[test]
fn spawn_sim_via_proxy_works_without_sibling_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let lone = tmp.path().join("gtm_bench");
    std::fs::copy(exe(), &lone).unwrap();
    let args = ["--spawn-sim", "--via-proxy", "-c", "20", "-T", "1s", "--warmup", "0s"];
    let (out, j) = bench_exe(&lone, &args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["target"]["label"], "gtm_proxy");
    assert_eq!(j["target"]["spawned"], serde_json::json!(["gtm_sim", "gtm_proxy"]));
    assert!(n(&j["txns"]) > 0, "{j:#}");
    let names: Vec<&str> = j["cpu"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gtm_bench", "gtm_sim", "gtm_proxy"], "{j:#}");
}

/// Through a proxy of ours the report carries the MULTI sizes of the window,
/// read from the proxy's metrics: spawned (its metrics port chosen by the
/// bench) or named with --proxy-metrics; the direct target has none.
#[test]
fn multi_sizes_of_the_window_through_our_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("run.json");
    let f = file.display().to_string();
    let args = ["--spawn-sim", "--via-proxy", "-c", "50", "-T", "1s", "--warmup", "200ms", "--json", &f];
    let out = run_limited(exe(), &args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let m = &j["multi_sizes"];
    for kind in ["begin", "snapshot", "commit"] {
        assert!(n(&m[kind]["multis"]) >= 1, "{kind}: {j:#}");
        assert!(m[kind]["mean"].as_f64().is_some_and(|x| x >= 1.0), "{kind}: {j:#}");
    }
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("MULTI sizes")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("begin ") && line.contains("MULTIs"), "{line}");

    // A running proxy named by --target, its metrics by --proxy-metrics.
    let sim = Daemon::sim(&[]);
    let mport = harness::free_port();
    let proxy = Daemon::proxy(sim.addr, &format!("metrics_port = {mport}\n"), 1);
    let t = target(proxy.addr);
    let pm = format!("--proxy-metrics=127.0.0.1:{mport}");
    let (out, j) = bench(&[&t, &pm, "-c", "20", "-T", "1s", "--warmup", "0s"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert!(j["multi_sizes"]["begin"]["mean"].as_f64().is_some_and(|x| x >= 1.0), "{j:#}");

    // The GTM itself has no MULTI sizes.
    let (out, j) = bench(&[&target(sim.addr), "-c", "5", "-T", "300ms", "--warmup", "0s"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert!(j["multi_sizes"].is_null(), "{j:#}");
}

#[test]
fn any_target_with_a_watched_pid() {
    let sim = Daemon::sim(&[]);
    let addr = sim.addr;
    let t = format!("--target=mygtm={addr}");
    let w = format!("--watch-pid=mygtm={}", sim.pid());
    let (out, j) = bench(&[&t, &w, "-c", "20", "-T", "1s", "--warmup", "0s"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["target"]["label"], "mygtm");
    assert_eq!(j["target"]["addr"], addr.to_string());
    assert_eq!(j["target"]["spawned"], serde_json::json!([]));
    let cpu = j["cpu"].as_array().unwrap();
    let mine = cpu.iter().find(|c| c["name"] == "mygtm").unwrap_or_else(|| panic!("{j:#}"));
    assert_eq!(mine["pid"], sim.pid());
    assert!(mine["cpu_s"].as_f64().is_some());
}

#[test]
fn compare_runs_each_target_interleaved_with_medians_and_ratios() {
    let args = ["--spawn-sim", "--direct", "--via-proxy", "--repeat", "2", "-c", "20", "-T", "500ms", "--warmup", "0s"];
    let (out, j) = bench(&args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["mode"], "compare");
    assert_eq!(j["repeats"], 2);
    let t = j["targets"].as_array().unwrap();
    let labels: Vec<&str> = t.iter().map(|t| t["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["direct", "gtm_proxy"]);
    assert_eq!(t[0]["ratio"], 1.0);
    for x in t {
        let runs = x["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        let mut tps: Vec<f64> = runs.iter().map(|r| r["txn_per_s"].as_f64().unwrap()).collect();
        tps.sort_by(|a, b| a.total_cmp(b));
        let m = x["median"]["txn_per_s"].as_f64().unwrap();
        assert!(tps[0] * 0.99 <= m && m <= tps[1] * 1.01, "median within the runs: {x:#}");
        assert!(runs.iter().all(|r| r["ok"] == true && r["target"]["label"] == x["label"]));
    }
    let ratio = t[1]["ratio"].as_f64().unwrap();
    let want = t[1]["median"]["txn_per_s"].as_f64().unwrap() / t[0]["median"]["txn_per_s"].as_f64().unwrap();
    assert!((ratio - want).abs() < 0.01, "{ratio} vs {want}");

    // The same comparison as a table.
    let out = run_limited(exe(), &args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ratio") && text.contains("txn p99"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("direct") || l.starts_with("gtm_proxy")
        })
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].contains("1.00"), "{text}");
}

/// A failover through the proxy: at 1 s the scenario kills the simulator,
/// starts a "standby" on the same port continuing from a higher GXID and
/// orders the proxy to it, as `gtm_ctl reconnect` would.
#[test]
fn scenario_failover_reports_a_timeline_and_writes_a_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("failover.svg");
    let pidfile = tmp.path().join("standby.pid");
    let cmd = format!(
        "1s=kill -9 $GTM_BENCH_SIM_PID; D=$GTM_BENCH_SIM_DIR/standby; \
         $GTM_BENCH_SIM_BIN -h 127.0.0.1 -p $GTM_BENCH_SIM_PORT -D $D -x 100000000 >/dev/null 2>&1 & \
         echo $! > {p}; while [ ! -s $D/gtm_sim.port ]; do sleep 0.05; done; \
         $GTM_BENCH_PROXY_BIN reconnect -D $GTM_BENCH_PROXY_DIR -s 127.0.0.1 -t $GTM_BENCH_SIM_PORT",
        p = pidfile.display()
    );
    let at = format!("--at={cmd}");
    let plot = format!("--plot={}", svg.display());
    let args = [
        "--spawn-sim",
        "--via-proxy",
        "-c",
        "20",
        // A generous window: the command (kill, start a simulator, wait
        // for it, order the reconnect) and the recovery after it must both
        // fit, also on a machine whose cores are saturated by other work.
        "-T",
        "15s",
        "--warmup",
        "0s",
        "--max-reconnects",
        "100000",
        &at,
        &plot,
    ];
    let (out, j) = bench(&args, Duration::from_secs(90));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{j:#}\n{}", stderr(&out));
    let tl = &j["timeline"];
    assert_eq!(tl["bucket_ms"], 100);
    assert_eq!(tl["buckets"].as_array().unwrap().len(), 150);
    let ev = &tl["event"];
    assert_eq!(ev["at_s"], 1.0);
    assert_eq!(ev["exit"], "exit status: 0", "{ev:#}");
    let stall = &tl["longest_stall"];
    assert!(stall.is_null() || stall["to_s"].as_f64() > stall["from_s"].as_f64(), "{stall}");
    // Commits came back on the standby once the command had done its work.
    let done = ev["at_s"].as_f64().unwrap() + ev["ran_s"].as_f64().unwrap();
    let ok_after: u64 = tl["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["t_s"].as_f64().unwrap() > done)
        .map(|b| n(&b["ok"]))
        .sum();
    assert!(ok_after > 0, "{tl:#}");
    if ev["first_error_s"].is_number() {
        assert!(ev["first_success_after_s"].as_f64().unwrap() > ev["first_error_s"].as_f64().unwrap());
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("latency CDF") && text.contains("p99"), "{}", &text[..200]);
    // The standby the scenario left running was stopped with its process group.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "standby gone: {stat}");
}

/// The bench must hold 10,000 connections at once, connecting them on a
/// ramp with progress lines (the fake GTM's side lives in this test process,
/// one thread each). A machine that cannot give 10,300 descriptors fails
/// this test, as it fails tests/proxy_scale.rs: the promise is not checked there.
#[test]
fn ten_thousand_connections_on_a_ramp() {
    let limit = raise_fd_limit();
    assert!(limit >= 10_300, "open-file limit {limit} is below 10,300: raise it (ulimit -Hn) to run this test");
    let gtm = FakeGtm::start(Fault::None);
    let t = target(gtm.addr);
    // A long think time keeps the thread-per-connection fake from being the bottleneck.
    let args = [&t[..], "-c", "10000", "-T", "1s", "--warmup", "0s", "--think", "1s", "--ramp", "1s", "-P", "250ms"];
    let (out, j) = bench(&args, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["connections"]["established"], 10000);
    assert_eq!(j["load"]["ramp_s"], 1.0);
    assert_eq!(j["errors"]["total"], 0);
    assert!(n(&j["txns"]) > 0);
    let err = stderr(&out);
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("progress:")).collect();
    assert!(progress.iter().all(|l| l.ends_with("/10000 connected")), "{err}");
    assert!(progress.last().is_some_and(|l| l.ends_with(" 10000/10000 connected")), "{err}");
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

/// `--json FILE` writes the JSON there and still prints the summary; the
/// `--host`/`--port`/`--think-us` of earlier versions still work.
#[test]
fn json_to_a_file_beside_the_text_with_the_old_target_flags() {
    let gtm = FakeGtm::start(Fault::None);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("run.json");
    let p = port(gtm.addr);
    let args = [
        "--host",
        "127.0.0.1",
        "--port",
        &p,
        "--think-us",
        "1000",
        "-c",
        "5",
        "-T",
        "300ms",
        "--warmup",
        "0",
        "--json",
    ];
    let mut args = args.to_vec();
    let f = file.display().to_string();
    args.push(&f);
    let out = run_limited(exe(), &args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("result: OK"), "{}", stdout(&out));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(j["mode"], "run");
    assert_eq!(j["target"]["addr"], gtm.addr.to_string());
    assert!(n(&j["txns"]) > 0);
    assert_eq!(j["load"]["think_us"], 1000);
}

/// The client id the simulator gives the next link: it hands one to every
/// link it accepts, so the difference of two probes counts the links between.
fn next_sim_link(sim: SocketAddr) -> u32 {
    Client::backend(sim, "probe").client_id.expect("the simulator answers startup with a client id")
}

/// `--model threads`: one blocking connection per backend, as real XL
/// backends make. The simulator saw exactly `--backends` links, and the
/// fake (which checks for it) never got a second request before an answer.
#[test]
fn threads_model_against_the_simulator_and_the_fake() {
    let sim = Daemon::sim(&[]);
    let before = next_sim_link(sim.addr);
    let args = [&target(sim.addr)[..], "--model", "threads", "-c", "200", "-T", "1s", "--warmup", "0s"];
    let (out, j) = bench(&args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["load"]["model"], "threads");
    assert_eq!((j["load"]["backends"].as_u64(), j["load"]["threads"].as_u64()), (Some(200), Some(200)));
    assert!(n(&j["txns"]) > 0, "{j:#}");
    assert_eq!(j["errors"]["total"], 0, "{j:#}");
    assert_eq!(j["gxids"]["duplicates"], 0);
    assert_eq!(j["connections"]["established"], 200);
    assert_eq!(j["connections"]["reconnects"], 0);
    assert_eq!(next_sim_link(sim.addr) - before - 1, 200, "links the simulator accepted");

    let gtm = FakeGtm::start(Fault::None);
    let args = [&target(gtm.addr)[..], "--model", "threads", "-c", "20", "-T", "500ms", "--warmup", "0s"];
    let args = [&args[..], &["--think", "1ms", "--no-session-id"]].concat();
    let (out, j) = bench(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    let begins = gtm.state.begins.load(Ordering::Relaxed);
    assert!(begins > 0 && gtm.state.bare_begins.load(Ordering::Relaxed) == begins);
    assert_eq!(gtm.state.clients.load(Ordering::Relaxed) - 1, 20, "connections the fake accepted");
    assert_eq!(gtm.violations(), Vec::<String>::new());
}

/// 1,000 backend threads through the proxy: the proxy holds one connection
/// per backend while the run goes on (its gauge, read from its metrics).
#[test]
fn threads_model_through_the_proxy_with_a_thousand_backends() {
    let sim = Daemon::sim(&[]);
    let mport = harness::free_port();
    let proxy = Daemon::proxy(sim.addr, &format!("metrics_port = {mport}\n"), 1);
    let mut cmd = command(exe().to_str().unwrap());
    // A think time keeps 1,000 threads from saturating a small machine; the
    // window outlasts the metrics reads below by far.
    cmd.args([&target(proxy.addr)[..], "--model", "threads", "-c", "1000", "--think", "5ms"]);
    cmd.args(["-T", "5s", "--warmup", "1s", "--json"]);
    let run = Guarded::spawn(cmd);
    let backends = |m: &str| harness::metric_sum(m, "gtm_proxy_backends");
    let seen = harness::wait_metrics(mport, "1000 backends", |m| backends(m) >= 1000);
    assert_eq!(backends(&seen), 1000, "one connection per backend, no more");
    let out = run.finish(Duration::from_secs(90));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!(j["load"]["model"], "threads");
    assert_eq!(j["connections"]["established"], 1000);
    assert_eq!(j["errors"]["total"], 0, "{j:#}");
    assert!(n(&j["txns"]) > 0, "{j:#}");
}

/// Errors in the threads model are counted, blamed on the right request and
/// followed by reconnects, as in the loop model.
#[test]
fn threads_model_counts_errors_and_reconnects() {
    for (fault, kind) in
        [(Fault::ErrorOnCommitEvery(20), "server_error"), (Fault::CloseAfterCommitEvery(20), "unexpected_close")]
    {
        let gtm = FakeGtm::start(fault);
        let t = target(gtm.addr);
        let args =
            [&t[..], "--model", "threads", "-c", "10", "-T", "1s", "--warmup", "0s", "--max-reconnects", "1000000"];
        let (out, j) = bench(&args, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(1), "{j:#}");
        let e = &j["errors"];
        let k = n(&e["by_kind"][kind]);
        assert!(k > 0 && n(&e["total"]) == k, "{kind} and nothing else: {j:#}");
        let blamed = n(&e["by_op"]["commit"]) + if kind == "unexpected_close" { n(&e["by_op"]["begin"]) } else { 0 };
        assert_eq!(blamed, k, "{e}");
        assert!(n(&j["connections"]["reconnects"]) > 0, "{j:#}");
        assert_eq!(gtm.violations(), Vec::<String>::new());
    }
}

/// Compare and scenario modes name the threads model and keep their shape.
#[test]
fn threads_model_in_compare_and_scenario_modes() {
    let args = ["--spawn-sim", "--direct", "--via-proxy", "--model", "threads", "--repeat", "1", "-c", "20"];
    let args = [&args[..], &["-T", "500ms", "--warmup", "0s"]].concat();
    let (out, j) = bench(&args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    assert_eq!((j["mode"].as_str(), j["model"].as_str()), (Some("compare"), Some("threads")));
    for t in j["targets"].as_array().unwrap() {
        assert!(t["runs"].as_array().unwrap().iter().all(|r| r["load"]["model"] == "threads" && r["ok"] == true));
    }
    let text = stdout(&run_limited(exe(), &args, Duration::from_secs(60)));
    assert!(text.contains("model threads"), "{text}");

    let sim = Daemon::sim(&[]);
    let args =
        [&target(sim.addr)[..], "--model", "threads", "-c", "10", "-T", "1s", "--warmup", "0s", "--at", "300ms=true"];
    let (out, j) = bench(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{j:#}\n{}", stderr(&out));
    let tl = &j["timeline"];
    assert_eq!(tl["buckets"].as_array().unwrap().len(), 10);
    assert_eq!(tl["event"]["exit"], "exit status: 0", "{tl:#}");
    let ok: u64 = tl["buckets"].as_array().unwrap().iter().map(|b| n(&b["ok"])).sum();
    assert_eq!(ok, n(&j["txns"]), "every commit of the window is in the timeline: {tl:#}");
}
