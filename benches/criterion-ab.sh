#!/usr/bin/env bash
# Wall-clock before/after of the in-process data path on a noisy machine: two builds of the
# criterion bench `datapath` (copy target/release/deps/datapath-* aside before and after a change)
# are run alternately, benchmark by benchmark, ROUNDS times; prints each run's median throughput
# estimate (frame bytes per second), so drift in the machine's load hits both alike.
#
#   benches/criterion-ab.sh BEFORE_BIN AFTER_BIN [GROUP_REGEX]
#
# GROUP_REGEX defaults to the bytes groups of aes256gcm and plain.
set -euo pipefail
before=$1
after=$2
filter=${3:-'datapath/bytes/(aes256gcm|plain)/'}
rounds=${ROUNDS:-3}
benches=$("$before" --bench --list 2>/dev/null | sed -n 's/: benchmark$//p' | grep -E "$filter")
for bench in $benches; do
  for r in $(seq "$rounds"); do
    for side in before after; do
      bin=$before
      [ "$side" = after ] && bin=$after
      v=$("$bin" --bench --warm-up-time 1 --measurement-time 3 "^${bench}\$" 2>&1 \
        | grep 'thrpt:' | sed -n '1s/.*thrpt: *\[[^ ]* [^ ]* \([^ ]* [^ ]*\).*/\1/p')
      echo "$bench $r $side $v"
    done
  done
done
