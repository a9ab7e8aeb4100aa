#!/usr/bin/env bash
# Instructions per frame of the in-process data path (benches/benches/datapath.rs), counted by
# callgrind: repeatable on a busy machine, unlike wall-clock figures. Each case is run twice,
# with LO and HI batches of 32 frames; the difference divided by the extra frames is the cost of
# one frame (A's switch, packing, sealing; B's opening, records, delivery), without start-up.
#
#   benches/callgrind.sh [MODE...]     MODE: aes256gcm (default), chacha20poly1305, plain
#   BIN=path/to/datapath-binary benches/callgrind.sh   (an earlier build, for before/after)
#
# Prints, per mode and frame size: instructions per frame and per frame byte, and how many of
# those per frame are the benchmark's stand-in copies for the kernel (not the router's work).
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
ir() { # batches mode size -> total instructions, and those of the benchmark's stand-in copies
  DATAPATH_BATCHES=$1 DATAPATH_MODE=$2 DATAPATH_SIZE=$3 valgrind --tool=callgrind \
    --callgrind-out-file="$tmp/out" "$bin" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$tmp/out")
  # The copies the benchmark makes in the kernel's stead (into B's receive buffer, to its "TAP"):
  # memcpy called from the benchmark's own functions. Callgrind counts a large copy's `rep movsb`
  # one instruction per byte, so these weigh more than they cost; they are shown apart.
  copies=$(callgrind_annotate --tree=caller "$tmp/out" 2>/dev/null | awk '
    /^$/ { n = 0; next }
    / \* .*__memcpy/ { for (i = 0; i < n; i++) if (c[i] ~ /< .*datapath::/) { v = c[i]; sub(/^ */, "", v); sub(/ .*/, "", v); gsub(/,/, "", v); s += v } n = 0; next }
    / < / { c[n++] = $0 }
    END { print s + 0 }')
  echo "$total $copies"
}
printf '%-18s %8s %14s %12s %22s\n' mode size 'instr/frame' 'instr/byte' 'of which stand-in copies'
for mode in "${modes[@]}"; do
  for size in 64 1400 65549; do
    read -r lo lo_copies < <(ir "$LO" "$mode" "$size")
    read -r hi hi_copies < <(ir "$HI" "$mode" "$size")
    frames=$(( (HI - LO) * 32 ))
    awk -v m="$mode" -v s="$size" -v d="$((hi - lo))" -v c="$((hi_copies - lo_copies))" -v f="$frames" \
      'BEGIN { printf "%-18s %8d %14.0f %12.2f %22.0f\n", m, s, d / f, d / f / s, c / f }'
  done
done
