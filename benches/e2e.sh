#!/bin/sh
# End-to-end throughput: raw veth, kernel VXLAN and weft's sleeve in one run (root needed).
# Usage: benches/e2e.sh [SECONDS]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p weft-router -p weft-benches --bin weft --bin e2e
exec target/release/e2e "${1:-5}"
