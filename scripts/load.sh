#!/usr/bin/env bash
# End-to-end load run: the same load straight to a freshly spawned gtm_sim
# (the baseline) and through a freshly spawned gtm_proxy in front of it,
# interleaved REPEAT times, using gtm_bench's compare mode. Prints the
# comparison as JSON on stdout (schema: docs/gtm_bench.md, "mode": "compare":
# medians per target, the ratio to the baseline, every run, CPU per process);
# without --json, the same command prints the table for people. Exit
# status as gtm_bench's: 0 every
# run clean, 1 a run found errors, 2 a run could not take place.
#
# Usage: scripts/load.sh [extra gtm_bench options...]
# Environment: BACKENDS (1000), DURATION (10s), WARMUP (2s), THREADS (1), REPEAT (3).
set -euo pipefail

cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-1000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
REPEAT=${REPEAT:-3}

echo "load.sh: building release binaries" >&2
cargo build --release --bins --quiet >&2
bin="${CARGO_TARGET_DIR:-target}/release"

args=(--spawn-sim --direct --via-proxy --repeat "$REPEAT" --backends "$BACKENDS" --duration "$DURATION"
      --warmup "$WARMUP" --threads "$THREADS" "$@")
rc=0
"$bin/gtm_bench" "${args[@]}" --json || rc=$?
exit "$rc"
