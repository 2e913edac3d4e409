#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 10) on a scratch copy of its corpus;
# fails on any crash. Used by .ci/run; builds once with the nightly toolchain, in the
# dev profile: it compiles faster than -O (no optimisation) and keeps debug assertions (overflow
# checks) on, at fewer runs per second, which a smoke run of seconds can spare.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-10}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build --dev
for target in $(cargo +nightly fuzz list); do
    scratch=$(mktemp -d)
    cp -r "corpus/$target/." "$scratch/" 2>/dev/null || true
    log="$scratch.log"
    if ! cargo +nightly fuzz run --dev "$target" "$scratch" -- -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target FAILED (the input is in fuzz/artifacts/$target/)"
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz: $target ok, $runs runs in ${seconds}s"
    rm -rf "$scratch" "$log"
done
