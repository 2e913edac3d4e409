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
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY='*' no_proxy='*'

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
cd "$ROOT"
mkdir -p loadtest/out
if [ -z "$OUTPUT" ]; then
    if [ "$QUICK" = 1 ]; then OUTPUT=loadtest/out/RESULTS-ops-quick.md; else OUTPUT=loadtest/RESULTS-ops.md; fi
fi
log() { printf '%s ops-cost.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
command -v python3 > /dev/null || die "python3 is missing (it writes the report table)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-ops-cost.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
    git worktree remove --force "$TMP/baseline-src" 2> /dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # name url
    for _ in $(seq 150); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$2" || true)" = 200 ] && return 0
        sleep 0.1
    done
    die "$1 did not answer on $2"
}
LABELS=(); URLS=(); SPIDS=()
start() { # label binary [env...] -- [serve args...]
    local label=$1 binary=$2 port
    shift 2
    local -a env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    port=$(free_port)
    mkdir -p "$TMP/$label-data"
    env "${env[@]}" "$binary" serve --listen "127.0.0.1:$port" --data "$TMP/$label-data" "$@" \
        > "$TMP/$label.log" 2>&1 &
    PIDS+=("$!"); SPIDS+=("$!"); LABELS+=("$label"); URLS+=("http://127.0.0.1:$port")
    wait_ready "$label" "http://127.0.0.1:$port/v2/"
}
start baseline "$TMP/portcullis-baseline" -- 
start metrics "$TMP/portcullis-current" PORTCULLIS_LOG__ACCESS=false --
METRICS_PORT=$(free_port)
start metrics+log "$TMP/portcullis-current" -- --metrics-listen "127.0.0.1:$METRICS_PORT"
# A scraper, as Prometheus would be (every second here, every 15 s or so in practice).
(while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" || true; done) &
PIDS+=("$!")

JSONL=loadtest/out/results-ops.jsonl
: > "$JSONL"
n=${#LABELS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for scenario in small blob; do
        for ((k = 0; k < n; k++)); do
            i=$(((k + r) % n))
            log "round $((r + 1)): $scenario against ${LABELS[$i]}"
            sync
            timeout --kill-after=10 300 "$LT" run --json -s "$scenario" --url "${URLS[$i]}" \
                --label "${LABELS[$i]}" --repo-prefix "ops-${LABELS[$i]//+/-}" \
                --server-pid "${SPIDS[$i]}" --duration "$DURATION" >> "$JSONL" ||
                die "$scenario against ${LABELS[$i]} failed"
        done
    done
done
ACCESS_LINES=$(grep -c '"\?access' "$TMP/metrics+log.log" || true)

python3 - "$JSONL" "$OUTPUT" "$BASE_REV" "$(git rev-parse --short HEAD)" "$ROUNDS" "$DURATION" "$ACCESS_LINES" << 'EOF'
import json, sys
jsonl, output, base, head, rounds, duration, access_lines = sys.argv[1:]
runs = [json.loads(l) for l in open(jsonl) if l.strip()]
best = {}
for r in runs:
    if not r.get("ran") or r.get("errors"):
        sys.exit(f"{r['scenario']} against {r['target']} counted errors: {r.get('error_samples')}")
    key = (r["scenario"], r["target"])
    if key not in best or r["req_per_s"] > best[key]["req_per_s"]:
        best[key] = r
targets = ["baseline", "metrics", "metrics+log"]
lines = [
    "# What metrics and the access log cost",
    "",
    f"Written by `loadtest/ops-cost.sh`: portcullis at {base} (before metrics and access logs) "
    f"against this tree ({head}) with metrics only (`log.access = false`) and as it ships "
    "(metrics scraped every second, one access-log line per request written to a file), "
    f"plain HTTP on loopback, {rounds} round(s) of {duration} s per scenario in rotating order, "
    "each target's best round. Server CPU per request is the server's CPU time over the "
    "run divided by the requests it answered (the load generator shares the 2 cores, so "
    "it is the steadier figure).",
    "",
    "| scenario | target | req/s | vs baseline | server CPU µs/request | vs baseline | p99 ms |",
    "|---|---|---|---|---|---|---|",
]
for scenario in ["small", "blob"]:
    base_run = best[(scenario, "baseline")]
    base_cpu = base_run["server_cpu_s"] / base_run["ops"] * 1e6
    for t in targets:
        r = best[(scenario, t)]
        cpu = r["server_cpu_s"] / r["ops"] * 1e6
        lines.append(
            f"| {scenario} | {t} | {r['req_per_s']:.0f} | {r['req_per_s'] / base_run['req_per_s']:.3f} "
            f"| {cpu:.1f} | {cpu / base_cpu:.3f} | {r['p99_ms']:.2f} |"
        )
lines += ["", f"Access-log lines written by `metrics+log` during the run: {access_lines}.", ""]
open(output, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
log "results: $OUTPUT"
