#!/usr/bin/env bash
# loadtest/ops-cost.sh: what metrics and the access log cost, side by side in one run.
#
# Three servers on loopback, plain HTTP, each on a data directory of its own:
#   baseline    portcullis built from --baseline REV (default: the last commit before
#               metrics and access logs existed), so neither is there;
#   metrics     this tree's portcullis with log.access = false: every request counted
#               in the metrics, no access line;
#   metrics+log this tree's portcullis as it ships: metrics, a metrics listener that is
#               scraped every second, and one access-log line per request, written to
#               a file (as journald or a container runtime would take it).
# The `small` (HEAD/GET manifest, keep-alive, 64 connections) and `blob` (1 MiB blob
# GET) scenarios of portcullis-loadtest run against the three in turn, --rounds times,
# in a rotating order; the report keeps each target's best round (the machine is shared
# and noisy) and gives req/s and server CPU per request next to the baseline's.
#
# Usage: loadtest/ops-cost.sh [--baseline REV] [--rounds N] [--duration S] [--quick]
#        [--output FILE]   (default loadtest/RESULTS-ops.md; --quick: debug binaries,
#        1 s runs, 1 round, loadtest/out/RESULTS-ops-quick.md)
set -euo pipefail

BASELINE=efef7cc
ROUNDS=3
DURATION=8
QUICK=0
OUTPUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --baseline) BASELINE=${2:?--baseline needs a git revision}; shift ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        --quick) QUICK=1; ROUNDS=1; DURATION=1 ;;
        --output) OUTPUT=${2:?--output needs a file}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "ops-cost.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
cd "$ROOT"
# shellcheck source=lib/side-by-side.sh
. "$HERE/lib/side-by-side.sh"
mkdir -p loadtest/out
if [ -z "$OUTPUT" ]; then
    if [ "$QUICK" = 1 ]; then OUTPUT=loadtest/out/RESULTS-ops-quick.md; else OUTPUT=loadtest/RESULTS-ops.md; fi
fi
cleanup_extra() { git worktree remove --force "$TMP/baseline-src" 2> /dev/null || true; }

# --- binaries: this tree's, then the baseline's (built in the same target dir, so only
# the portcullis crate itself compiles again) -------------------------------------------
if [ "$QUICK" = 1 ]; then PROFILE=(); BIN=target/debug; else PROFILE=(--release); BIN=target/release; fi
log "building this tree (${PROFILE[*]:-debug})"
cargo build --quiet "${PROFILE[@]}" --bin portcullis --bin portcullis-loadtest
cp "$BIN/portcullis" "$TMP/portcullis-current"
LT=$ROOT/$BIN/portcullis-loadtest
BASE_REV=$(git rev-parse --short "$BASELINE")
log "building the baseline $BASE_REV"
git worktree add --detach --quiet "$TMP/baseline-src" "$BASE_REV"
(cd "$TMP/baseline-src" && CARGO_TARGET_DIR="$ROOT/target" cargo build --quiet "${PROFILE[@]}" --bin portcullis)
cp "$BIN/portcullis" "$TMP/portcullis-baseline"
# Put this tree's binary back where cargo and compare.sh expect it.
cargo build --quiet "${PROFILE[@]}" --bin portcullis

start baseline "$TMP/portcullis-baseline" "" --
start metrics "$TMP/portcullis-current" "" PORTCULLIS_LOG__ACCESS=false --
METRICS_PORT=$(free_port)
start metrics+log "$TMP/portcullis-current" "" -- --metrics-listen "127.0.0.1:$METRICS_PORT"
# A scraper, as Prometheus would be (every second here, every 15 s or so in practice).
(while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" || true; done) &
PIDS+=("$!")

JSONL=loadtest/out/results-ops.jsonl
run_rounds "$JSONL" small blob
ACCESS_LINES=$(grep -c '"\?access' "$TMP/metrics+log.log" || true)

TABLE=$(python3 "$HERE/lib/cost_table.py" "$JSONL" baseline,metrics,metrics+log small,blob)
{
    echo "# What metrics and the access log cost"
    echo
    echo "Written by \`loadtest/ops-cost.sh\`: portcullis at $BASE_REV (before metrics and access logs)" \
        "against this tree ($(git rev-parse --short HEAD)) with metrics only (\`log.access = false\`) and as it ships" \
        "(metrics scraped every second, one access-log line per request written to a file)," \
        "plain HTTP on loopback, $ROUNDS round(s) of $DURATION s per scenario in rotating order," \
        "each target's best round. Server CPU per request is the server's CPU time over the" \
        "run divided by the requests it answered (the load generator shares the 2 cores, so" \
        "it is the steadier figure)."
    echo
    echo "$TABLE"
    echo
    echo "Access-log lines written by \`metrics+log\` during the run: $ACCESS_LINES."
} > "$OUTPUT"
cat "$OUTPUT"
log "results: $OUTPUT"
