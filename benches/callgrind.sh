#!/usr/bin/env bash
# Instructions per frame of the in-process data path (benches/benches/datapath.rs), counted by
# callgrind: repeatable on a busy machine, unlike wall-clock figures. Each case is run twice,
# with LO and HI batches of 32 frames; the difference divided by the extra frames is the cost of
# one frame (A's switch, packing, sealing; B's opening, records, delivery), without start-up.
#
#   benches/callgrind.sh [MODE...]     MODE: aes256gcm (default), chacha20poly1305, plain
#   BIN=path/to/datapath-binary benches/callgrind.sh   (an earlier build, for before/after)
#
# Prints, per mode and frame size: instructions per frame and per frame byte.
set -euo pipefail
cd "$(dirname "$0")/.."
LO=${LO:-20}
HI=${HI:-60}
modes=("${@:-aes256gcm}")
bin=${BIN:-$(cargo bench -p weft-benches --bench datapath --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*datapath[^"]*\)".*/\1/p' | tail -n1)}
[ -x "$bin" ] || { echo "callgrind.sh: no bench binary found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ir() { # batches mode size -> total instructions
  DATAPATH_BATCHES=$1 DATAPATH_MODE=$2 DATAPATH_SIZE=$3 valgrind --tool=callgrind \
    --callgrind-out-file="$tmp/out" "$bin" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$tmp/out"
}
printf '%-18s %8s %14s %12s\n' mode size 'instr/frame' 'instr/byte'
for mode in "${modes[@]}"; do
  for size in 64 1400 65549; do
    lo=$(ir "$LO" "$mode" "$size")
    hi=$(ir "$HI" "$mode" "$size")
    frames=$(( (HI - LO) * 32 ))
    awk -v m="$mode" -v s="$size" -v d="$((hi - lo))" -v f="$frames" \
      'BEGIN { printf "%-18s %8d %14.0f %12.2f\n", m, s, d / f, d / f / s }'
  done
done
