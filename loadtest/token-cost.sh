#!/usr/bin/env bash
# loadtest/token-cost.sh: Docker token authentication against Basic, side by side.
#
# Three servers built from this tree, plain HTTP on loopback, data directories of
# their own, the same admin login:
#   basic-htpasswd  [auth] htpasswd (bcrypt cost 10) and [[access]]-free defaults: the
#                   set-up before accounts; every request carries Basic credentials;
#   basic-accounts  [accounts] enabled: the same Basic credentials, checked against the
#                   accounts directory (and its policy) instead;
#   token           [accounts] enabled with auth.token = true: every request carries a
#                   bearer token from /token (fetched once, valid for the run), checked
#                   by its signature alone.
# The `small` (HEAD/GET manifest, keep-alive, 64 connections) and `blob` (1 MiB blob GET)
# scenarios run against each in turn, --rounds times in rotating order; the report
# keeps each target's best round and compares req/s and server CPU per request with
# basic-htpasswd's. The target (issue 12): token within 10% of Basic.
#
# Usage: loadtest/token-cost.sh [--rounds N] [--duration S] [--quick] [--output FILE]
#        (default loadtest/RESULTS-token.md; --quick: debug binaries, 1 s runs, 1 round,
#        loadtest/out/RESULTS-token-quick.md)
set -euo pipefail

ROUNDS=3
DURATION=8
QUICK=0
OUTPUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        --quick) QUICK=1; ROUNDS=1; DURATION=1 ;;
        --output) OUTPUT=${2:?--output needs a file}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "token-cost.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
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
    if [ "$QUICK" = 1 ]; then OUTPUT=loadtest/out/RESULTS-token-quick.md; else OUTPUT=loadtest/RESULTS-token.md; fi
fi

if [ "$QUICK" = 1 ]; then PROFILE=(); BIN=target/debug; else PROFILE=(--release); BIN=target/release; fi
log "building this tree (${PROFILE[*]:-debug})"
cargo build --quiet "${PROFILE[@]}" --bin portcullis --bin portcullis-loadtest
PC=$ROOT/$BIN/portcullis
LT=$ROOT/$BIN/portcullis-loadtest
USER_NAME=loadtest
PASSWORD=loadtest-password
CREDS="--user $USER_NAME --password $PASSWORD"

# basic-htpasswd
printf '%s\n' "$PASSWORD" | "$PC" htpasswd add "$TMP/htpasswd" "$USER_NAME" --password-stdin --cost 10 > /dev/null
printf '[auth]\nhtpasswd = "%s"\n' "$TMP/htpasswd" > "$TMP/htpasswd.toml"
start basic-htpasswd "$PC" "$CREDS" -- --config "$TMP/htpasswd.toml"

# basic-accounts and token: the admin account is made before each server starts.
accounts_server() { # label token(true/false) auth-args
    mkdir -p "$TMP/$1-data"
    printf '[accounts]\nenabled = true\n[auth]\ntoken = %s\ntoken_ttl_secs = 3600\n' "$2" > "$TMP/$1.toml"
    printf '%s\n' "$PASSWORD" | "$PC" user add "$USER_NAME" --admin --password-stdin \
        --config "$TMP/$1.toml" --data "$TMP/$1-data" > /dev/null
    start "$1" "$PC" "$3" -- --config "$TMP/$1.toml"
}
accounts_server basic-accounts false "$CREDS"
# The token server's URL is known only once it runs: start it, then fetch the token
# for the repositories the scenarios use (cost-token/small, cost-token/blob).
accounts_server token true ""
TOKEN_URL="${URLS[2]}/token?service=portcullis&scope=repository:cost-token/small:pull,push&scope=repository:cost-token/blob:pull,push"
TOKEN=$(curl -sf -u "$USER_NAME:$PASSWORD" "$TOKEN_URL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') ||
    die "no token from $TOKEN_URL"
AUTH[2]="--bearer $TOKEN"

JSONL=loadtest/out/results-token.jsonl
run_rounds "$JSONL" small blob
TABLE=$(python3 "$HERE/lib/cost_table.py" "$JSONL" basic-htpasswd,basic-accounts,token small,blob)
{
    echo "# Docker token authentication against Basic"
    echo
    echo "Written by \`loadtest/token-cost.sh\` at $(git rev-parse --short HEAD): three servers of this tree," \
        "plain HTTP on loopback, $ROUNDS round(s) of $DURATION s per scenario in rotating order, each" \
        "target's best round. \`basic-htpasswd\`: Basic credentials on every request against an htpasswd file" \
        "(bcrypt, verified once and cached); \`basic-accounts\`: the same against the accounts directory;" \
        "\`token\`: a bearer token from \`/token\` on every request, checked by its signature (HS256) with no" \
        "lookup. Server CPU per request is the server's CPU time over the run divided by the requests it" \
        "answered (the load generator shares the 2 cores, so it is the steadier figure)."
    echo
    echo "$TABLE"
} > "$OUTPUT"
cat "$OUTPUT"
log "results: $OUTPUT"
