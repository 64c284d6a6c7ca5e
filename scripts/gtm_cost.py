#!/usr/bin/env python3
"""GTM cost per transaction through a proxy: ours (coalescing and full
pipelining) against XL's C gtm_proxy, against the real XL gtm or gtm_sim;
the cluster-scale table (K proxies x M backends against one GTM); the proxy's
idle memory. Prints one JSON object on stdout; progress goes to stderr.

It builds nothing: it takes binary directories as arguments.

  scripts/gtm_cost.py compare --ours target/release --xl /work/pgxl/inst/bin --gtm xl
  scripts/gtm_cost.py compare --ours target/release --xl /work/pgxl/inst/bin --gtm sim
  scripts/gtm_cost.py cluster --ours target/release --gtm sim --total 1000
  scripts/gtm_cost.py cluster --ours target/release --xl /work/pgxl/inst/bin --gtm xl --reps 3
  scripts/gtm_cost.py idle --ours target/release --backends 10000

compare: 1 proxy worker, BACKENDS backends (gtm_bench), the proxies taken in
turn within each repetition (interleaved), REPS repetitions, medians. Every
run is made in each gtm_bench load model of --models (default both, results
keyed by model): "loop" (event loops, the most offered load) and "threads"
(one blocking thread per backend, one request at a time: real backends'
shape). cluster does the same per cell; idle uses the loop model.
GTM CPU and proxy CPU come from /proc/<pid>/stat (utime+stime) sampled
during the bench's measured window; per transaction = CPU rate / txn rate.
Ratios are taken against XL's C proxy within the same run.

The real gtm and XL's proxy run as user `pgxl` (`su pgxl -c`), data
directories under --run-dir (owned by pgxl, mode 700), loopback only.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CLK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("gtm_cost:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def find_pid(needle, owner_uid=None, timeout=10.0):
    """PID of the process whose command line contains `needle`."""
    end = time.time() + timeout
    me = os.getpid()
    while time.time() < end:
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                if owner_uid is not None and os.stat(f"/proc/{d}").st_uid != owner_uid:
                    continue
            except OSError:
                continue
            if needle in cmd and not cmd.startswith("su ") and "bash -c" not in cmd:
                return int(d)
        time.sleep(0.1)
    return None


class Server:
    """A server process we started; stopped by its own PID."""

    def __init__(self, name, popen, pid, port, metrics_port=None, data_dir=None):
        self.name, self.popen, self.pid, self.port = name, popen, pid, port
        self.metrics_port, self.data_dir = metrics_port, data_dir

    def multi_sizes(self):
        """Mean elements per MULTI by type, from our proxy's metrics."""
        if not self.metrics_port:
            return None
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=3) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return None
        sums, counts = {}, {}
        for line in data.decode(errors="replace").splitlines():
            for prefix, into in (("gtm_proxy_multi_size_sum{", sums), ("gtm_proxy_multi_size_count{", counts)):
                if line.startswith(prefix):
                    t = line.split('type="', 1)[1].split('"', 1)[0]
                    into[t] = into.get(t, 0) + float(line.rsplit(" ", 1)[1])
        return {t: {"multis": int(counts[t]), "mean": round(sums[t] / counts[t], 1)} for t in counts if counts[t]}

    def alive(self):
        return cpu_ticks(self.pid) is not None

    def log_tail(self, n=20):
        """The last lines of the server's log files (before its data directory goes)."""
        out = []
        for name in ("gtm.log", "gtm_proxy.log"):
            path = os.path.join(self.data_dir or "", name)
            try:
                with open(path, errors="replace") as f:
                    out += [f"{name}: {l.rstrip()}" for l in f.readlines()[-n:]]
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        if not self.alive():
            log(f"{self.name} (pid {self.pid}) had exited before its stop; log:\n{self.log_tail()}")
        for sig in (15, 9):
            if self.pid and cpu_ticks(self.pid) is not None:
                try:
                    os.kill(self.pid, sig)
                except OSError:
                    pass
                for _ in range(50):
                    if cpu_ticks(self.pid) is None:
                        break
                    time.sleep(0.1)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def pgxl_uid():
    import pwd

    return pwd.getpwnam("pgxl").pw_uid


def pgxl_dir(run_dir, name):
    d = os.path.join(run_dir, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def pgxl_own(d):
    subprocess.run(["chown", "-R", "pgxl:pgxl", d], check=True)
    os.chmod(d, 0o700)


def start_xl_gtm(xl, run_dir):
    d = pgxl_dir(run_dir, f"gtm_cost_gtm_{os.getpid()}")
    port = free_port()
    with open(os.path.join(d, "gtm.conf"), "w") as f:
        f.write(f"nodename = 'gtm_cost'\nlisten_addresses = '127.0.0.1'\nport = {port}\n")
    open(os.path.join(d, "gtm.control"), "w").close()
    return start_as_pgxl("xl_gtm", f"{xl}/gtm", d, port, "-l gtm.log")


def start_sim(ours, tag):
    d = tempfile.mkdtemp(prefix=f"gtm_cost_{tag}_")
    port = free_port()
    cmd = ["nice", "-n", "5", f"{ours}/gtm_sim", "-h", "127.0.0.1", "-p", str(port), "-D", d, "--log-level", "warn"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_port(port):
        p.kill()
        raise RuntimeError("gtm_sim did not start")
    return Server("gtm_sim", p, p.pid, port, data_dir=d)


def start_ours(ours, gtm_port, tag, hold_ms, workers=1):
    d = tempfile.mkdtemp(prefix=f"gtm_cost_{tag}_")
    port, mport = free_port(), free_port()
    with open(os.path.join(d, "gtm_proxy.conf"), "w") as f:
        f.write(
            f"nodename = '{tag}'\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
            f"gtm_host = '127.0.0.1'\ngtm_port = {gtm_port}\nworker_threads = {workers}\n"
            f"batch_hold = {hold_ms}ms\nmax_backends = 100000\nmetrics_port = {mport}\n"
        )
    p = subprocess.Popen(
        ["nice", "-n", "5", f"{ours}/gtm_proxy", "-D", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if not wait_port(port):
        p.kill()
        raise RuntimeError(f"our gtm_proxy ({tag}) did not start; see {d}")
    return Server(tag, p, p.pid, port, mport, data_dir=d)


def start_xl_proxy(xl, run_dir, gtm_port, tag):
    d = pgxl_dir(run_dir, f"gtm_cost_{tag}_{os.getpid()}")
    port = free_port()
    with open(os.path.join(d, "gtm_proxy.conf"), "w") as f:
        f.write(
            f"nodename = '{tag}'\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
            f"gtm_host = '127.0.0.1'\ngtm_port = {gtm_port}\nworker_threads = 1\n"
        )
    return start_as_pgxl(tag, f"{xl}/gtm_proxy", d, port)


def start_as_pgxl(label, binary, d, port, extra=""):
    """Start an XL server binary on data directory d as user pgxl; wait for its port."""
    pgxl_own(d)
    cmd = f"exec nice -n 5 {binary} -D {d} {extra}".rstrip()
    p = subprocess.Popen(["su", "pgxl", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = find_pid(f"{binary} -D {d}", pgxl_uid())
    if not pid or not wait_port(port):
        raise RuntimeError(f"{binary} did not start")
    return Server(label, p, pid, port, data_dir=d)


class Sampler(threading.Thread):
    """CPU ticks of some PIDs every 100 ms, with timestamps."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.samples, self.stop_flag = pids, [], False

    def run(self):
        while not self.stop_flag:
            self.samples.append((time.time(), [cpu_ticks(p) for p in self.pids]))
            time.sleep(0.1)

    def rate(self, t0, t1):
        """CPU seconds per second of each PID between t0 and t1."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return [None] * len(self.pids)
        (a_t, a), (b_t, b) = inside[0], inside[-1]
        return [
            None if x is None or y is None else (y - x) / CLK / (b_t - a_t) for x, y in zip(a, b)
        ]


BENCH_ARGS = []


def bench(ours, ports, backends, duration, warmup, watch, model="loop", think_us=0):
    """Run one gtm_bench per port (backends split evenly) at once, in load
    model `model`; return their summaries and the CPU rate of each watched
    PID in the window where all of them measured."""
    sampler = Sampler(watch)
    sampler.start()
    procs = []
    for port in ports:
        out = tempfile.NamedTemporaryFile(prefix="gtm_cost_bench_", suffix=".json", delete=False)
        cmd = ["nice", "-n", "5", f"{ours}/gtm_bench", "--port", str(port), "--backends", str(backends // len(ports))]
        cmd += ["--duration", str(duration), "--warmup", str(warmup), "--json", out.name, "--think-us", str(think_us)]
        cmd += ["--model", model]
        cmd += BENCH_ARGS
        procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out.name))
    for p, _ in procs:
        p.wait()
    end = time.time()
    sampler.stop_flag = True
    sampler.join()
    results = []
    for _, path in procs:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, ValueError) as e:
            results.append({"ok": False, "fatal": str(e)})
        os.unlink(path)
    # The measured window ends as the bench stops; leave its teardown out.
    t1 = end - 0.3
    t0 = t1 - duration + 0.5
    return results, sampler.rate(t0, t1)


def summarize(results, rates, names):
    ok = all(r.get("ok") for r in results)
    for r in results:
        if r.get("fatal") or not r.get("ok"):
            log(f"bench not ok: fatal={r.get('fatal')!r} stop_reason={r.get('stop_reason')!r} errors={r.get('errors')}")
    tps = sum(r.get("txn_per_s") or 0 for r in results)
    p99 = max((r.get("latency_us", {}).get("txn", {}).get("p99") or 0) for r in results)
    models = sorted({r.get("load", {}).get("model") for r in results} - {None})
    out = {"ok": ok, "model": ",".join(models) or None, "txn_per_s": round(tps, 1), "txn_p99_us": p99}
    out["errors"] = sum(r.get("errors", {}).get("total", 0) for r in results)
    # Mean latency per step (µs, weighted by count across benches): with
    # txn/s they give, by Little's law, how many transactions are open.
    for op in ("begin", "snapshot", "commit", "txn"):
        stats = [r.get("latency_us", {}).get(op, {}) for r in results]
        n = sum(s.get("count") or 0 for s in stats)
        tot = sum((s.get("count") or 0) * (s.get("mean") or 0) for s in stats)
        out[f"{op}_mean_us"] = round(tot / n, 1) if n else None
    for name, rate in zip(names, rates):
        out[f"{name}_cpu_us_per_txn"] = None if rate is None or not tps else round(rate * 1e6 / tps, 3)
    return out


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def cmd_compare(a):
    gtm = start_xl_gtm(a.xl, a.run_dir) if a.gtm == "xl" else start_sim(a.ours, "sim")
    log(f"GTM ({a.gtm}) pid {gtm.pid} port {gtm.port}")
    setups = {
        "xl_proxy": lambda: start_xl_proxy(a.xl, a.run_dir, gtm.port, "gtm_cost_xlpx"),
        "ours_coalescing": lambda: start_ours(a.ours, gtm.port, "ours_coalesce", a.hold_ms),
        "ours_pipelining": lambda: start_ours(a.ours, gtm.port, "ours_pipeline", 0),
    }
    setups = {k: v for k, v in setups.items() if k == "xl_proxy" or k in a.variants}
    runs = {m: {k: [] for k in setups} for m in a.models}
    try:
        for rep in range(a.reps):
            for name, start in setups.items():
                px = start()
                try:
                    for model in a.models:
                        log(f"rep {rep + 1}/{a.reps}: {name}, model {model}")
                        res, rates = bench(a.ours, [px.port], a.backends, a.duration, a.warmup, [gtm.pid, px.pid], model)
                        s = summarize(res, rates, ["gtm", "proxy"])
                        s["proxy_rss_kib"] = rss_kib(px.pid)
                        s["multi_sizes"] = px.multi_sizes()
                        runs[model][name].append(s)
                        log(json.dumps(s))
                        if not gtm.alive():
                            raise RuntimeError(f"the GTM exited during the {name} run ({model})")
                finally:
                    px.stop()
    finally:
        gtm.stop()
    keys = ["gtm_cpu_us_per_txn", "proxy_cpu_us_per_txn", "txn_p99_us", "txn_per_s"]
    med = {m: {n: {k: median_of(r, k) for k in keys} for n, r in by.items()} for m, by in runs.items()}
    ratios = {}
    for m, by in med.items():
        xl = by["xl_proxy"]
        ratios[m] = {
            n: {k: (round(by[n][k] / xl[k], 3) if by[n][k] and xl[k] else None) for k in keys}
            for n in by
            if n != "xl_proxy"
        }
    return {
        "mode": "compare",
        "gtm": a.gtm,
        "params": vars(a) | {"func": None},
        "ok": all(r["ok"] for by in runs.values() for rs in by.values() for r in rs),
        "medians": med,
        "ratio_to_xl_proxy": ratios,
        "runs": runs,
    }


def cmd_cluster(a):
    """Every (K, mode, model) cell once per repetition, cells interleaved
    within a repetition; the table has the medians, "runs" every run."""
    gtm = start_xl_gtm(a.xl, a.run_dir) if a.gtm == "xl" else start_sim(a.ours, "sim")
    log(f"GTM ({a.gtm}) pid {gtm.pid} port {gtm.port}")
    modes = [m for m in (("ours_coalescing", a.hold_ms), ("ours_pipelining", 0), ("direct", None)) if m[0] in a.modes]
    runs = {}
    try:
        for rep in range(a.reps):
            for k in a.proxies:
                for mode, hold in modes:
                    pxs = []
                    try:
                        if hold is not None:
                            pxs = [start_ours(a.ours, gtm.port, f"c{k}_{i}", hold) for i in range(k)]
                        ports = [p.port for p in pxs] or [gtm.port] * k
                        watch = [gtm.pid] + [p.pid for p in pxs]
                        for model in a.models:
                            log(f"rep {rep + 1}/{a.reps} K={k} M={a.total // k}: {mode}, model {model}")
                            res, rates = bench(a.ours, ports, a.total, a.duration, a.warmup, watch, model)
                            s = summarize(res, rates[:1], ["gtm"])
                            px_rates = [r for r in rates[1:] if r is not None]
                            if px_rates and s["txn_per_s"]:
                                s["proxies_cpu_us_per_txn"] = round(sum(px_rates) * 1e6 / s["txn_per_s"], 3)
                            runs.setdefault((k, mode, model), []).append(s)
                            log(json.dumps({"K": k, "mode": mode} | s))
                            if not gtm.alive():
                                raise RuntimeError(f"the GTM exited during K={k} {mode} ({model})")
                    finally:
                        for p in pxs:
                            p.stop()
    finally:
        gtm.stop()
    keys = ["gtm_cpu_us_per_txn", "proxies_cpu_us_per_txn", "txn_per_s", "txn_p99_us"]
    table = [
        {"K": k, "M": a.total // k, "mode": mode, "model": model, "ok": all(r["ok"] for r in rs)}
        | {x: median_of(rs, x) for x in keys}
        for (k, mode, model), rs in runs.items()
    ]
    return {
        "mode": "cluster",
        "gtm": a.gtm,
        "params": vars(a) | {"func": None},
        "table": table,
        "runs": [{"K": k, "mode": mode, "model": model, "runs": rs} for (k, mode, model), rs in runs.items()],
    }


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cmd_idle(a):
    """Proxy RSS with no backend, then with BACKENDS backends connected and
    idle (startup done, no request: gtm_bench with a think time longer than
    the run, which thinks before its first transaction)."""
    gtm = start_sim(a.ours, "idle_sim")
    px = start_ours(a.ours, gtm.port, "idle_proxy", a.hold_ms)
    b = None
    try:
        time.sleep(0.5)
        at0, fds0 = rss_kib(px.pid), open_fds(px.pid) or 0
        log(f"{a.backends} backends connecting, then idle")
        cmd = ["nice", "-n", "5", f"{a.ours}/gtm_bench", "--target", f"127.0.0.1:{px.port}", "--backends", str(a.backends)]
        cmd += ["--duration", "120s", "--warmup", "0s", "--think", "1h", "--json", "/dev/null", "--model", "loop"]
        b = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait (bounded) until the proxy holds every backend's connection and its RSS settles.
        end, connected = time.time() + 90, 0
        while time.time() < end and b.poll() is None:
            connected = (open_fds(px.pid) or 0) - fds0
            if connected >= a.backends:
                break
            time.sleep(0.2)
        time.sleep(2)
        at_n = rss_kib(px.pid)
        connected = (open_fds(px.pid) or 0) - fds0
    finally:
        if b is not None and b.poll() is None:
            b.send_signal(2)
            try:
                b.wait(timeout=30)
            except subprocess.TimeoutExpired:
                b.kill()
                b.wait()
        px.stop()
        gtm.stop()
    return {
        "mode": "idle",
        "backends": a.backends,
        "backends_connected": connected,
        "proxy_rss_kib_idle_0": at0,
        "proxy_rss_kib_idle_n": at_n,
        "kib_per_backend": round((at_n - at0) / max(connected, 1), 3) if at0 and at_n else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    for name, fn in (("compare", cmd_compare), ("cluster", cmd_cluster), ("idle", cmd_idle)):
        p = sub.add_parser(name)
        p.set_defaults(func=fn)
        p.add_argument("--ours", required=True, help="directory with gtm_proxy, gtm_sim, gtm_bench")
        p.add_argument("--hold-ms", type=int, default=2, help="batch_hold of the coalescing proxy")
        if name != "idle":
            p.add_argument("--xl", default="/work/pgxl/inst/bin", help="directory with XL's gtm and gtm_proxy")
            p.add_argument("--gtm", choices=["xl", "sim"], default="sim")
            p.add_argument("--run-dir", default="/work/pgxl/run")
            p.add_argument("--duration", type=int, default=10)
            p.add_argument("--warmup", type=int, default=2)
            p.add_argument("--bench-arg", action="append", default=[], help="extra gtm_bench option (repeatable)")
            models = ["loop", "threads"]
            p.add_argument("--models", nargs="+", choices=models, default=models, help="gtm_bench load models to run")
        if name == "compare":
            p.add_argument("--backends", type=int, default=1000)
            p.add_argument("--reps", type=int, default=3)
            variants = ["ours_coalescing", "ours_pipelining"]
            p.add_argument("--variants", nargs="+", choices=variants, default=variants, help="our proxies to run")
        if name == "cluster":
            p.add_argument("--total", type=int, default=1000, help="K*M, backends in all")
            p.add_argument("--proxies", type=int, nargs="+", default=[1, 2, 4, 8])
            p.add_argument("--reps", type=int, default=1, help="repetitions (cells interleaved); the table has medians")
            modes = ["ours_coalescing", "ours_pipelining", "direct"]
            p.add_argument("--modes", nargs="+", choices=modes, default=modes)
        if name == "idle":
            p.add_argument("--backends", type=int, default=10000)
    a = ap.parse_args()
    BENCH_ARGS.extend(getattr(a, "bench_arg", []))
    out = a.func(a)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
