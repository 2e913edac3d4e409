# Shared by the side-by-side cost scripts (ops-cost.sh, token-cost.sh): servers on
# loopback ports of their own, load-generator rounds in rotating order, cleanup.
# Source it after setting ROUNDS and DURATION; it defines TMP, PIDS, LT (set by the
# caller after building), and the functions below.

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY='*' no_proxy='*'

log() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
command -v python3 > /dev/null || die "python3 is missing (it writes the report table)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-side-by-side.XXXXXX")
PIDS=()
# Callers may define cleanup_extra (run before TMP is removed).
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
    if declare -F cleanup_extra > /dev/null; then cleanup_extra; fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() { # name url [status...]: until the URL answers with one of the statuses (200)
    local name=$1 url=$2 code
    shift 2
    local -a ok=("${@:-200}")
    for _ in $(seq 150); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        for want in "${ok[@]}"; do [ "$code" = "$want" ] && return 0; done
        sleep 0.1
    done
    die "$name did not answer on $url"
}

# One server per label; AUTH holds each label's credentials for the load generator.
LABELS=(); URLS=(); SPIDS=(); AUTH=()
start() { # label binary auth-args [env...] -- [serve args...]
    local label=$1 binary=$2 auth=$3 port
    shift 3
    local -a env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    port=$(free_port)
    mkdir -p "$TMP/$label-data"
    env "${env[@]}" "$binary" serve --listen "127.0.0.1:$port" --data "$TMP/$label-data" "$@" \
        > "$TMP/$label.log" 2>&1 &
    PIDS+=("$!"); SPIDS+=("$!"); LABELS+=("$label"); URLS+=("http://127.0.0.1:$port"); AUTH+=("$auth")
    wait_ready "$label" "http://127.0.0.1:$port/v2/" 200 401
}

run_rounds() { # jsonl scenario... : every scenario against every label, ROUNDS times, rotating
    local jsonl=$1 r k i n=${#LABELS[@]} scenario
    shift
    : > "$jsonl"
    for ((r = 0; r < ROUNDS; r++)); do
        for scenario in "$@"; do
            for ((k = 0; k < n; k++)); do
                i=$(((k + r) % n))
                log "round $((r + 1)): $scenario against ${LABELS[$i]}"
                sync
                # shellcheck disable=SC2086 # AUTH entries are argument lists
                timeout --kill-after=10 300 "$LT" run --json -s "$scenario" --url "${URLS[$i]}" \
                    --label "${LABELS[$i]}" --repo-prefix "cost-${LABELS[$i]//+/-}" \
                    --server-pid "${SPIDS[$i]}" --duration "$DURATION" ${AUTH[$i]} >> "$jsonl" ||
                    die "$scenario against ${LABELS[$i]} failed"
            done
        done
    done
}
