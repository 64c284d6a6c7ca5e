#!/usr/bin/env bash
# Soak run of gtm_proxy against gtm_sim (issue 8): steady load, plus
# garbage connections, abrupt backend kills, GTM kill/restart and SIGHUPs,
# for DURATION seconds (default 1800 = 30 minutes). At the end it prints ONE
# JSON object on stdout with the proxy's RSS, open descriptors, backends
# gauge, ledger size and the GTM's open transactions:
#   "idle_start"  before any load,
#   "load_start"  WARMUP seconds into the load,
#   "load_end"    just before the load stops,
#   "idle_end"    SETTLE seconds after every client left,
# and "ok": true when the idle figures show no leak (descriptors, backends,
# ledger and open transactions back to the idle_start values) and the proxy
# is still running. Exit status 0 when ok, 1 otherwise.
#
# Environment: DURATION (1800), BACKENDS (40, steady load), THINK_US (2000),
# WORKERS (2), WARMUP (60), SETTLE (15), GTM_RESTART_EVERY (180),
# HUP_EVERY (30), KILL_EVERY (20), GARBAGE_EVERY (5).
# Progress goes to stderr; the work directory (logs) is kept on failure.
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${DURATION:-1800}
BACKENDS=${BACKENDS:-40}
THINK_US=${THINK_US:-2000}
WORKERS=${WORKERS:-2}
WARMUP=${WARMUP:-60}
SETTLE=${SETTLE:-15}
GTM_RESTART_EVERY=${GTM_RESTART_EVERY:-180}
HUP_EVERY=${HUP_EVERY:-30}
KILL_EVERY=${KILL_EVERY:-20}
GARBAGE_EVERY=${GARBAGE_EVERY:-5}

log() { echo "soak.sh: $*" >&2; }

log "building release binaries"
cargo build --release --bins --quiet >&2
work=$(mktemp -d)
# A copy of the binaries: a rebuild during a long run must not change them.
mkdir -p "$work/bin"
for b in gtm_sim gtm_proxy gtm_bench; do cp "${CARGO_TARGET_DIR:-target}/release/$b" "$work/bin/"; done
bin="$work/bin"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_file() {
    for _ in $(seq 1 200); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    log "no $1"; return 1
}

# ----- GTM ------------------------------------------------------------------
gtm_dir="$work/gtm"
mkdir -p "$gtm_dir"
gtm_port=$(free_port)
start_gtm() {
    rm -f "$gtm_dir/gtm.pid"
    "$bin/gtm_sim" -h 127.0.0.1 -p "$gtm_port" -D "$gtm_dir" --persist -l gtm_sim.log --log-level warn &
    gtm_pid=$!
    pids+=("$gtm_pid")
    for _ in $(seq 1 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$gtm_port),1).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    log "gtm_sim did not come up"; return 1
}
start_gtm

# ----- proxy ----------------------------------------------------------------
proxy_dir="$work/proxy"
mkdir -p "$proxy_dir"
metrics_port=$(free_port)
cat >"$proxy_dir/gtm_proxy.conf" <<EOF
log_min_messages = WARNING
gtm_connect_retry_interval = 200ms
metrics_port = $metrics_port
backend_startup_timeout = 3s
backend_frame_timeout = 3s
EOF
"$bin/gtm_proxy" -D "$proxy_dir" -h 127.0.0.1 -p 0 -s 127.0.0.1 -t "$gtm_port" -i soak_proxy -n "$WORKERS" \
    2>>"$proxy_dir/stderr.log" &
proxy_pid=$!
pids+=("$proxy_pid")
wait_file "$proxy_dir/gtm_proxy.port"
proxy_addr=$(cat "$proxy_dir/gtm_proxy.port")
proxy_port=${proxy_addr##*:}
log "gtm_sim on $gtm_port, gtm_proxy (pid $proxy_pid) on $proxy_port, metrics on $metrics_port, work dir $work"

# One sample of the figures, as a JSON object.
sample() {
    python3 - "$proxy_pid" "$metrics_port" "$gtm_dir/gtm_sim.state" <<'PY'
import json, os, sys, urllib.request
pid, mport, state = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
try:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
except OSError:
    out["proxy_running"] = False
def metric(body, name):
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in body.splitlines() if l.startswith(name + "{"))
try:
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    out["backends"] = metric(body, "gtm_proxy_backends")
    out["ledger_gxids"] = metric(body, "gtm_proxy_ledger_gxids")
    out["link_failures"] = metric(body, "gtm_proxy_gtm_link_failures_total")
    out["errors_sent"] = metric(body, "gtm_proxy_errors_sent_total")
    out["requests"] = metric(body, "gtm_proxy_requests_total")
except Exception as e:
    out["metrics_error"] = str(e)
try:
    with open(state) as f:
        out["gtm_open_txns"] = sum(1 for l in f if l.startswith("txn "))
except OSError as e:
    out["gtm_state_error"] = str(e)
print(json.dumps(out))
PY
}

sleep 2
idle_start=$(sample)
log "idle_start $idle_start"

# ----- steady load ----------------------------------------------------------
"$bin/gtm_bench" --host 127.0.0.1 --port "$proxy_port" --backends "$BACKENDS" --think-us "$THINK_US" \
    --duration "$DURATION" --warmup 0 --max-errors 0 --max-reconnects 1000000 --request-timeout 60 \
    --json "$work/steady.json" >"$work/steady.out" 2>"$work/steady.err" &
steady_pid=$!
pids+=("$steady_pid")

# ----- garbage connections (one python process per burst) -------------------
garbage() {
    python3 - "$proxy_port" <<'PY' 2>/dev/null || true
import random, socket, struct, sys, time
port = int(sys.argv[1])
def startup(name=b"junk"):
    # 64-byte node name, remote type 6 (LE), postmaster flag + 3 pad, client id (LE).
    body = name.ljust(64, b"\0") + struct.pack("<i", 6) + b"\0" * 4 + struct.pack("<I", 0)
    return b"A" + struct.pack(">I", len(body) + 4) + body
held = []
for kind in range(6):
    try:
        s = socket.create_connection(("127.0.0.1", port), 2)
        s.settimeout(2)
        if kind == 0:
            held.append(s)                      # never sends a startup packet
        elif kind == 1:                          # 320 KB of a 1,000,000-byte frame, then close
            s.sendall(startup() + b"C" + struct.pack(">I", 1_000_000) + b"\0" * 320_000)
            s.close()
        elif kind == 2:                          # a partial frame, kept open
            s.sendall(startup() + b"C" + struct.pack(">I", 5000) + b"\0" * 100)
            held.append(s)
        elif kind == 3:                          # 64 KB of 4-byte bad frames
            s.sendall(startup() + b"C\0\0\0\x04" * 13000)
            held.append(s)
        elif kind == 4:                          # random bytes
            s.sendall(bytes(random.getrandbits(8) for _ in range(random.randint(1, 4000))))
            s.close()
        else:                                    # abrupt reset after a startup
            s.sendall(startup())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    except OSError:
        pass
time.sleep(random.uniform(0.5, 4))
for s in held:
    s.close()
PY
}

start=$(date +%s)
now() { echo $(( $(date +%s) - start )); }
load_start=""
next_hup=$HUP_EVERY; next_kill=$KILL_EVERY; next_garbage=0; next_gtm=$GTM_RESTART_EVERY
burst_pid=""; gtm_restarts=0; hups=0; kills=0; bursts=0
while [ "$(now)" -lt "$DURATION" ]; do
    t=$(now)
    if [ -z "$load_start" ] && [ "$t" -ge "$WARMUP" ]; then
        load_start=$(sample); log "load_start $load_start"
    fi
    if [ "$t" -ge "$next_garbage" ]; then
        garbage & bursts=$((bursts + 1)); next_garbage=$((t + GARBAGE_EVERY))
    fi
    if [ "$t" -ge "$next_hup" ]; then
        kill -HUP "$proxy_pid"; hups=$((hups + 1)); next_hup=$((t + HUP_EVERY))
    fi
    if [ "$t" -ge "$next_kill" ]; then
        # Backends killed mid-transaction: a short bench run, SIGKILLed.
        if [ -n "$burst_pid" ]; then kill -9 "$burst_pid" 2>/dev/null || true; wait "$burst_pid" 2>/dev/null || true; kills=$((kills + 1)); fi
        "$bin/gtm_bench" --host 127.0.0.1 --port "$proxy_port" --backends 20 --duration 3600 --warmup 0 \
            --max-errors 0 --json /dev/null >/dev/null 2>&1 &
        burst_pid=$!
        pids+=("$burst_pid")
        next_kill=$((t + KILL_EVERY))
    fi
    if [ "$t" -ge "$next_gtm" ] && [ "$((DURATION - t))" -gt 30 ]; then
        log "GTM kill -9 and restart at ${t}s"
        kill -9 "$gtm_pid"; wait "$gtm_pid" 2>/dev/null || true
        sleep 1
        start_gtm
        gtm_restarts=$((gtm_restarts + 1)); next_gtm=$((t + GTM_RESTART_EVERY))
    fi
    if ! kill -0 "$proxy_pid" 2>/dev/null; then log "gtm_proxy died"; break; fi
    sleep 1
done
[ -n "$load_start" ] || load_start=$(sample)
load_end=$(sample)
log "load_end $load_end"

# ----- stop the load, let the proxy settle -----------------------------------
if [ -n "$burst_pid" ]; then kill -9 "$burst_pid" 2>/dev/null || true; wait "$burst_pid" 2>/dev/null || true; kills=$((kills + 1)); fi
steady_rc=0
wait "$steady_pid" || steady_rc=$?
sleep "$SETTLE"
idle_end=$(sample)
log "idle_end $idle_end"

python3 - "$idle_start" "$load_start" "$load_end" "$idle_end" "$work/steady.json" "$steady_rc" \
    "$DURATION" "$gtm_restarts" "$hups" "$kills" "$bursts" "$work" <<'PY'
import json, sys
idle_start, load_start, load_end, idle_end = (json.loads(a) for a in sys.argv[1:5])
steady_path, steady_rc, duration, restarts, hups, kills, bursts, work = sys.argv[5:]
try:
    steady = json.load(open(steady_path))
    steady = {k: steady.get(k) for k in ("txns", "txn_per_s", "errors", "gxids")}
except (OSError, ValueError) as e:
    steady = {"fatal": f"steady load exited {steady_rc} without a summary ({e})"}
failed = []
if idle_end.get("proxy_running") is False or "fds" not in idle_end:
    failed.append("proxy not running at the end")
for k in ("fds", "backends", "ledger_gxids", "gtm_open_txns"):
    if k in idle_start and k in idle_end and idle_end[k] > idle_start[k]:
        failed.append(f"{k} grew from {idle_start[k]} to {idle_end[k]}")
out = {
    "ok": not failed, "failed": failed,
    "params": {"duration_s": int(duration), "gtm_restarts": int(restarts), "sighups": int(hups),
               "backend_kills": int(kills), "garbage_bursts": int(bursts)},
    "idle_start": idle_start, "load_start": load_start, "load_end": load_end, "idle_end": idle_end,
    "steady_load": steady, "work_dir": work,
}
print(json.dumps(out, indent=1))
sys.exit(0 if not failed else 1)
PY
