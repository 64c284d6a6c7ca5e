#!/usr/bin/env bash
# End-to-end load run, two parts, one JSON object on stdout:
#
# * "compare": the same load straight to a freshly spawned gtm_sim (the
#   one-hop floor: a mio server answering the same requests) and through a
#   freshly spawned gtm_proxy in front of it, interleaved REPEAT times, by
#   gtm_bench's compare mode (schema: docs/gtm_bench.md, "mode": "compare"),
#   once per gtm_bench load model of MODELS, keyed by model: "loop" (event
#   loops, the most offered load) and "threads" (a blocking thread per
#   backend, one request at a time, as real backends).
#   "floor" repeats, per model, its medians of CPU per request: the proxy's,
#   gtm_sim's answering directly, and their ratio (same run).
# * "idle": the proxy's RSS with no backend and with IDLE_BACKENDS backends
#   connected and idle (startup done, no request), by scripts/gtm_cost.py idle.
#
# Exit status: the worst of gtm_bench's for the compare parts (0 every run
# clean, 1 a run found errors, 2 a run could not take place); 2 if the idle
# part failed.
#
# Usage: scripts/load.sh [extra gtm_bench options for the compare part...]
# Environment: BACKENDS (1000), DURATION (10s), WARMUP (2s), THREADS (1, loop model),
#              REPEAT (3), MODELS ("loop threads"), IDLE_BACKENDS (10000; 0 skips the idle part).
set -euo pipefail

cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-1000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
REPEAT=${REPEAT:-3}
IDLE_BACKENDS=${IDLE_BACKENDS:-10000}
MODELS=${MODELS:-loop threads}

echo "load.sh: building release binaries" >&2
cargo build --release --bins --quiet >&2
bin="${CARGO_TARGET_DIR:-target}/release"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

args=(--spawn-sim --direct --via-proxy --repeat "$REPEAT" --backends "$BACKENDS" --duration "$DURATION"
      --warmup "$WARMUP" --threads "$THREADS" "$@")
rc=0
for model in $MODELS; do
    echo "load.sh: compare, model $model" >&2
    r=0
    "$bin/gtm_bench" "${args[@]}" --model "$model" --json >"$tmp/compare.$model.json" || r=$?
    if [ "$r" -gt "$rc" ]; then rc=$r; fi
done

echo '{}' >"$tmp/idle.json"
if [ "$IDLE_BACKENDS" -gt 0 ]; then
    echo "load.sh: proxy RSS at 0 and $IDLE_BACKENDS idle backends" >&2
    scripts/gtm_cost.py idle --ours "$bin" --backends "$IDLE_BACKENDS" >"$tmp/idle.json" || rc=2
fi

python3 - "$tmp" "$MODELS" <<'PY'
import json, os, sys
tmp, models = sys.argv[1], sys.argv[2].split()


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"mode": "fatal", "ok": False, "fatal": f"{path}: {e}"}


def floor_of(cmp):
    per_req = {t["label"]: t["median"].get("target_us_per_request") for t in cmp.get("targets", [])}
    px, sim = per_req.get("gtm_proxy"), per_req.get("direct")
    return {
        "proxy_us_per_request": px,
        "gtm_sim_direct_us_per_request": sim,
        "ratio": round(px / sim, 3) if px and sim else None,
    }


cmp = {m: load(os.path.join(tmp, f"compare.{m}.json")) for m in models}
floor = {m: floor_of(c) for m, c in cmp.items()}
idle = load(os.path.join(tmp, "idle.json"))
print(json.dumps({"compare": cmp, "floor": floor, "idle": idle}, indent=2))
PY
exit "$rc"
