#!/bin/sh
# One ping's trip through weft's encrypted sleeve, step by step: brings up benches/e2e.sh's
# encrypted bed (WEFT_E2E_HOLD keeps it idle for a while), records scheduler, network-device and
# system-call trace points on all CPUs around 5 pings 200 ms apart (`perf record -a`), and prints
# the last echo's events from the request leaving the client pod to the ping process waking for
# its reply, in µs from the request (other processes' events left out). Root needed.
# Usage: benches/trace-ping.sh. The samples stay in target/profile/trace.data.
set -eu
cd "$(dirname "$0")/.."
command -v perf >/dev/null || apt-get install -y linux-perf
cargo build --release -p weft-router -p weft-benches --bin weft --bin e2e
dir="$PWD/target/profile"
mkdir -p "$dir"
log="$dir/trace-e2e.log"
WEFT_E2E_HOLD=30 WEFT_E2E_QUICK=1 WEFT_E2E_ONLY=encrypted target/release/e2e 1 >"$log" 2>&1 &
e2e=$!
trap 'wait $e2e || true' EXIT
held=""
for _ in $(seq 1 90); do
    held=$(grep "e2e: holding" "$log" || true)
    [ -z "$held" ] || break
    kill -0 "$e2e" 2>/dev/null || { cat "$log"; echo "trace-ping: the bench ended before its bed was up" >&2; exit 1; }
    sleep 1
done
[ -n "$held" ] || { echo "trace-ping: no bed after 90 s" >&2; exit 1; }
# "e2e: holding for 30 s: client pod NS (ADDR), server pod NS (ADDR), routers ..."
client=$(echo "$held" | sed 's/.*client pod \([^ ]*\) .*/\1/')
server_addr=$(echo "$held" | sed 's/.*server pod [^ ]* (\([0-9.]*\)).*/\1/')
echo "client pod namespace $client, server $server_addr"
ip netns exec "$client" ping -q -c 20 -i 0.05 "$server_addr" | tail -1
perf record -q -o "$dir/trace.data" -a \
    -e sched:sched_switch -e sched:sched_wakeup \
    -e net:net_dev_queue -e net:netif_receive_skb -e net:netif_rx \
    -e syscalls:sys_enter_read -e syscalls:sys_exit_read -e syscalls:sys_enter_writev -e syscalls:sys_exit_writev -e syscalls:sys_exit_sendmsg \
    -e syscalls:sys_enter_sendmsg -e syscalls:sys_enter_recvmmsg -e syscalls:sys_exit_recvmmsg \
    -e syscalls:sys_enter_poll -e syscalls:sys_exit_poll \
    -- ip netns exec "$client" ping -c 5 -i 0.2 "$server_addr" | tail -1
perf script -i "$dir/trace.data" -F comm,tid,cpu,time,event,trace 2>/dev/null \
    | grep -v '^ *perf ' > "$dir/trace.txt"
# The last request: the ping process queueing a 98-byte frame on its pod's eth0.
start=$(grep -n '^ *ping .*net_dev_queue: dev=eth0 .*len=98' "$dir/trace.txt" | tail -1 | cut -d: -f1)
[ -n "$start" ] || { echo "trace-ping: no echo request in the trace" >&2; exit 1; }
tail -n "+$start" "$dir/trace.txt" | awk '
    { t = $4; sub(":", "", t); if (!t0) t0 = t; line = $0; sub(/^ +/, "", line)
      printf "%+8.1f µs  %s\n", (t - t0) * 1e6, substr(line, 1, 170) }
    /sched_wakeup: comm=ping / { exit }'
