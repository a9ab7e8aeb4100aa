#!/bin/sh
# End-to-end comparison: raw veth, kernel VXLAN, and weft's encrypted sleeve, plain sleeve and
# fast path (TCP 1 and 4 streams, UDP packet rate, ping RTT, CPU) in one run, as ratios to
# kernel VXLAN, every pod with weft's default MTU 1376 (root needed).
# Usage: benches/e2e.sh [SECONDS]. WEFT_E2E_ONLY=fastpath measures only the fast path and kernel
# VXLAN (any comma-separated list of veth, encrypted, sleeve, fastpath); WEFT_E2E_MTU=N sets the
# pods' MTU; WEFT_E2E_PAIRS=N runs N alternating pairs of single-stream TCP over kernel VXLAN and
# the fast path and prints their ratios. WEFT_PROFILE=profiling builds the routers with debug info, for
# `perf record -p PID` on them during the run (default: release, the binaries that ship);
# benches/profile.sh does that.
set -eu
cd "$(dirname "$0")/.."
profile="${WEFT_PROFILE:-release}"
cargo build --profile "$profile" -p weft-router -p weft-benches --bin weft --bin e2e
dir="$profile"; [ "$profile" != dev ] || dir=debug
exec "target/$dir/e2e" "${1:-5}"
