#!/bin/sh
# Data plane queues: PAIRS alternating runs of benches/e2e.sh over the encrypted sleeve, one with
# the routers' default queues and one with --dataplane-threads=N (default 2), each as ratios to
# kernel VXLAN measured in its own run; prints the TCP rows of each run (root needed).
# Usage: benches/queues.sh [PAIRS] [N] [SECONDS]. The order within a pair alternates, so a
# trend in the machine's load weighs on both.
set -eu
cd "$(dirname "$0")/.."
pairs="${1:-3}"; n="${2:-2}"; secs="${3:-5}"
run() { # $1: label, $2: router flags
    out=$(WEFT_E2E_ONLY=encrypted WEFT_E2E_ROUTER_ARGS="$2" benches/e2e.sh "$secs" 2>&1) || { echo "$out"; exit 1; }
    echo "$out" | grep -E '^TCP, ' | sed "s/^/$1: /"
}
i=1
while [ "$i" -le "$pairs" ]; do
    if [ $((i % 2)) -eq 1 ]; then
        run "default   " ""; run "queues=$n  " "--dataplane-threads=$n"
    else
        run "queues=$n  " "--dataplane-threads=$n"; run "default   " ""
    fi
    i=$((i + 1))
done
