#!/usr/bin/env bash
# End-to-end load run. Builds the release binaries, then runs gtm_bench twice
# with the same parameters against a freshly spawned gtm_sim:
#   1. directly (the baseline),
#   2. through a freshly spawned gtm_proxy,
# and prints ONE JSON object on stdout:
#   {"ok": bool, "failed": [...], "ratio": proxy txn/s / direct txn/s | null,
#    "params": {...}, "direct": <gtm_bench JSON>, "via_proxy": <gtm_bench JSON>}
# A run that could not happen (e.g. a stub proxy that never listens) shows up
# as {"ok": false, "fatal": "..."} under its key, "failed" says why, the ratio
# is null and the script exits 1. Nothing is ever filled in for a failed run.
#
# Usage: scripts/load.sh [extra gtm_bench options...]
# Environment: BACKENDS (1000), DURATION (10), WARMUP (2), THREADS (1).
# Human-readable progress and the bench's one-line summaries go to stderr.
set -euo pipefail

cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-1000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-1}

echo "load.sh: building release binaries" >&2
cargo build --release --bins --quiet >&2
bin="${CARGO_TARGET_DIR:-target}/release"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

common=(--backends "$BACKENDS" --duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS" "$@")

echo "load.sh: baseline, $BACKENDS backends straight to gtm_sim" >&2
direct_rc=0
"$bin/gtm_bench" --spawn-sim "${common[@]}" --json "$work/direct.json" || direct_rc=$?

echo "load.sh: the same load through gtm_proxy" >&2
proxy_rc=0
"$bin/gtm_bench" --spawn-sim --via-proxy "${common[@]}" --json "$work/proxy.json" || proxy_rc=$?

python3 - "$work/direct.json" "$direct_rc" "$work/proxy.json" "$proxy_rc" \
    "$BACKENDS" "$DURATION" "$WARMUP" "$THREADS" <<'PY'
import json
import sys

direct_path, direct_rc, proxy_path, proxy_rc, backends, duration, warmup, threads = sys.argv[1:]


def load(path, rc):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"ok": False, "fatal": f"gtm_bench exited with status {rc} without a summary ({e})"}


runs = {"direct": load(direct_path, direct_rc), "via_proxy": load(proxy_path, proxy_rc)}
failed = []
for name, r in runs.items():
    if r.get("fatal"):
        failed.append(f"{name}: run failed: {r['fatal']}")
    elif not r.get("ok"):
        why = []
        if r.get("stop_reason"):
            why.append(f"stopped early ({r['stop_reason']})")
        if r.get("errors", {}).get("total"):
            kinds = {k: v for k, v in r["errors"]["by_kind"].items() if v}
            why.append(f"{r['errors']['total']} errors {kinds}")
        if r.get("gxids", {}).get("duplicates"):
            why.append(f"{r['gxids']['duplicates']} duplicate gxids")
        if not r.get("txns"):
            why.append("no transactions")
        failed.append(f"{name}: " + ("; ".join(why) or "not ok"))

ratio = None
d, p = runs["direct"], runs["via_proxy"]
if not d.get("fatal") and not p.get("fatal") and d.get("txn_per_s") and p.get("txn_per_s") is not None:
    ratio = round(p["txn_per_s"] / d["txn_per_s"], 4)

out = {
    "ok": not failed,
    "failed": failed,
    "ratio": ratio,
    "params": {"backends": int(backends), "duration_s": float(duration), "warmup_s": float(warmup),
               "threads": int(threads)},
    "direct": d,
    "via_proxy": p,
}
json.dump(out, sys.stdout, indent=2)
print()
for f in failed:
    print(f"load.sh: {f}", file=sys.stderr)
if ratio is not None:
    print(f"load.sh: proxy/direct txn/s ratio {ratio}", file=sys.stderr)
sys.exit(0 if not failed else 1)
PY
