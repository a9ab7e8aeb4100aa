#!/bin/sh
# Where the data plane's time goes under load: one encrypted single-stream TCP run between two
# `weft router` processes (benches/e2e.sh's weft row), sampled with perf, reported per direction:
# the sending router's `weft-tap` thread (TAP -> seal -> UDP, data out) and the receiving
# router's `weft-sleeve` thread (UDP -> open -> TAP, data in). Root needed.
# Usage: benches/profile.sh [SECONDS] [TOP]  (default 10 s, top 25 functions per direction).
# WEFT_E2E_PERF_UDP=1348 profiles a UDP run of 1348-byte payloads (iperf3 -u -b 0) instead;
# WEFT_E2E_NO_POD_GRO=1 gives the pods plain veths (no coalescing of their UDP);
# WEFT_E2E_ONLY_WEFT=sleeve profiles the plain sleeve (no password) instead of the encrypted one.
# The samples stay in target/profile/{sender,receiver}.data for `perf report -i`.
set -eu
cd "$(dirname "$0")/.."
secs="${1:-10}"
top="${2:-25}"
command -v perf >/dev/null || apt-get install -y linux-perf
cargo build --profile profiling -p weft-router -p weft-benches --bin weft --bin e2e
dir="$PWD/target/profile"
mkdir -p "$dir"
rm -f "$dir/sender.data" "$dir/receiver.data"
echo "load before: $(cat /proc/loadavg)"
WEFT_E2E_ONLY_WEFT="${WEFT_E2E_ONLY_WEFT:-1}" WEFT_E2E_PERF_DIR="$dir" target/profiling/e2e "$secs"
echo "load after: $(cat /proc/loadavg)"
report() { # file thread title
    echo
    echo "== $3: thread $2, self time, % of the thread's samples =="
    # Sorted by thread name here, filtered and scaled below: `perf report --comms` drops some of
    # a thread's user-space samples (libc's memmove among them) from its totals.
    perf report -i "$1" --no-children --sort comm,dso,sym -g none --stdio 2>/dev/null \
        | awk -v t="$2" '$2 == t { sub("%", "", $1); n++; p[n] = $1; $1 = ""; $2 = ""; l[n] = $0; s += p[n] }
            END { for (i = 1; i <= n; i++) printf "%8.2f%% %s\n", 100 * p[i] / s, l[i] }' > "$dir/report.txt"
    head -n "$top" "$dir/report.txt"
    printf -- "-- by object:"
    awk '{ sub("%", "", $1); t[$2] += $1 } END { for (d in t) printf "  %s %.1f%%", d, t[d]; print "" }' "$dir/report.txt"
}
for f in sender receiver; do
    echo
    echo "== $f router: samples per thread =="
    perf report -i "$dir/$f.data" --sort comm -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 8
done
report "$dir/sender.data" weft-tap "out (sending router)"
report "$dir/receiver.data" weft-sleeve "in (receiving router)"
report "$dir/sender.data" weft-sleeve "ACKs in (sending router)"
report "$dir/receiver.data" weft-tap "ACKs out (receiving router)"
