#!/bin/sh
# End-to-end throughput: raw veth, kernel VXLAN and weft's sleeve in one run (root needed).
# Usage: benches/e2e.sh [SECONDS]. WEFT_PROFILE=profiling builds the routers with debug info, for
# `perf record -p PID` on them during the run (default: release, the binaries that ship).
set -eu
cd "$(dirname "$0")/.."
profile="${WEFT_PROFILE:-release}"
cargo build --profile "$profile" -p weft-router -p weft-benches --bin weft --bin e2e
dir="$profile"; [ "$profile" != dev ] || dir=debug
exec "target/$dir/e2e" "${1:-5}"
