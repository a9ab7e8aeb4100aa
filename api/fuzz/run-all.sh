#!/bin/sh
# Builds every API fuzz target and runs each for SECONDS (default 20).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -eu
secs="${1:-20}"
cd "$(dirname "$0")"
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build
for t in $targets; do
    echo "== $t ($secs s)"
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs"
done
