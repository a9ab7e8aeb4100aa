#!/usr/bin/env bash
# End-to-end test of the weft image, on this machine (root needed; not part of scripts/test: the
# first run builds the base image, about 2.5 minutes, after a release build of 4-5 minutes on
# two cores; later runs take about 12 seconds):
#
#   deploy/image-test.sh
#
# 1. Builds the image with deploy/build-image.sh (tag localhost/weft:test).
# 2. Makes a test bed of two hosts: network namespaces wimg-PID-h1 and wimg-PID-h2 joined by a
#    veth (192.0.2.11/24 and 192.0.2.12/24), nothing else; removed by a trap on exit, failure
#    included, with the containers, pod namespaces and files of the run. Leftovers of runs whose
#    process is gone are swept first.
# 3. Runs the router from the image on each host as a DaemonSet pod would: podman, privileged,
#    in the host's namespace (--network ns:/run/netns/...), /dev/net/tun, state and API socket
#    directories mounted, the password from a mounted file, the other host as its peer.
# 4. Installs weft-cni and the conflist on each host with the image's weft-install-cni into
#    per-host directories of the run (never this machine's /opt/cni/bin or /etc/cni/net.d).
# 5. Attaches a pod on each host with cnitool through the installed weft-cni (the installed
#    conflist, its apiSocket pointed at the host's socket of this run) and pings across.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "image-test.sh: run it as root (namespaces, podman)" >&2
    exit 1
fi
# runc rather than Debian's crun 1.8, which refuses hosts with a hybrid cgroup hierarchy (as this
# one); limits no higher than this shell's, which podman's defaults exceed and which cannot be
# raised without CAP_SYS_RESOURCE.
command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc >/dev/null
run_opts=(--runtime runc --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=32768:32768")
for tool in cnitool jq ip; do
    command -v $tool >/dev/null || { echo "image-test.sh: $tool is missing (scripts/install-deps installs it)" >&2; exit 1; }
done

start=$(date +%s)
tag=localhost/weft:test
p="wimg-$$"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/weft-image-test-XXXXXX")

# Leftovers of earlier runs that died: containers and namespaces named wimg-PID-*, PID gone.
for c in $(podman ps -a --format '{{.Names}}' | grep '^wimg-[0-9]*-' || true); do
    pid=${c#wimg-}; pid=${pid%%-*}
    [ -d "/proc/$pid" ] || podman rm -f -t 0 "$c" >/dev/null
done
for n in $(ip netns list | awk '{print $1}' | grep '^wimg-[0-9]*-' || true); do
    pid=${n#wimg-}; pid=${pid%%-*}
    [ -d "/proc/$pid" ] || ip netns del "$n"
done

cleanup() {
    local rc=$?
    for h in h1 h2; do
        if [ $rc != 0 ] && podman container exists "$p-$h"; then
            echo "--- router log of $h ---" >&2
            podman logs "$p-$h" 2>&1 | tail -30 >&2
        fi
        podman rm -f -t 2 "$p-$h" >/dev/null 2>&1 || true
    done
    for n in $(ip netns list | awk '{print $1}' | grep "^$p-" || true); do
        ip netns del "$n" || echo "image-test.sh: could not delete namespace $n" >&2
    done
    rm -rf "$tmp"
    [ $rc = 0 ] || echo "image-test.sh: FAILED (everything of this run removed)" >&2
}
trap cleanup EXIT

# 1. The image.
t0=$(date +%s)
deploy/build-image.sh "$tag"
echo "  (build step: $(($(date +%s) - t0)) s)"

# 2. The test bed.
for h in h1 h2 p1 p2; do
    ip netns add "$p-$h"
    ip -n "$p-$h" link set lo up
done
ip -n "$p-h1" link add eth0 type veth peer name eth0 netns "$p-h2"
ip -n "$p-h1" addr add 192.0.2.11/24 dev eth0
ip -n "$p-h2" addr add 192.0.2.12/24 dev eth0
ip -n "$p-h1" link set eth0 up
ip -n "$p-h2" link set eth0 up
head -c 24 /dev/urandom | base64 >"$tmp/password"
chmod 600 "$tmp/password"

# 3. The routers, from the image.
declare -A peer=([h1]=192.0.2.12 [h2]=192.0.2.11)
for h in h1 h2; do
    mkdir -p "$tmp/$h/state" "$tmp/$h/run" "$tmp/$h/cni-bin" "$tmp/$h/net.d"
    podman run "${run_opts[@]}" -d --name "$p-$h" --privileged --network "ns:/run/netns/$p-$h" --device /dev/net/tun \
        -v "$tmp/$h/state:/var/lib/weft" -v "$tmp/$h/run:/run/weft" -v "$tmp/password:/etc/weft-password/password:ro" \
        -e WEFT_PASSWORD_FILE=/etc/weft-password/password -e WEFT_NICKNAME="$h" -e WEFT_PEERS="${peer[$h]}" \
        "$tag" router >/dev/null
done
for h in h1 h2; do
    for _ in $(seq 60); do
        if podman exec "$p-$h" weft status 2>/dev/null | grep -q 'IPAM: ready'; then
            break
        fi
        podman container inspect -f '{{.State.Running}}' "$p-$h" | grep -q true || { echo "router $h exited" >&2; exit 1; }
        sleep 1
    done
    podman exec "$p-$h" weft status | grep -q 'IPAM: ready' || { echo "router $h: IPAM not ready within 60 s" >&2; podman exec "$p-$h" weft status >&2; exit 1; }
done
echo "router started from the image on h1 and h2 (podman --privileged --network ns:/run/netns/$p-hN): IPAM ready"
podman exec "$p-h1" weft status | sed 's/^/  h1: /'
echo "  h1: nftables, by the router in its container:"
ip netns exec "$p-h1" nft list table ip weft | grep masquerade | sed 's/^[[:space:]]*/    /'
echo "  h1: net.ipv4.ip_forward = $(ip netns exec "$p-h1" cat /proc/sys/net/ipv4/ip_forward)"

# 4. weft-cni and the conflist, installed by the image.
for h in h1 h2; do
    podman run "${run_opts[@]}" --rm --network none --entrypoint /usr/local/bin/weft-install-cni \
        -v "$tmp/$h/cni-bin:/host/opt/cni/bin" -v "$tmp/$h/net.d:/host/etc/cni/net.d" "$tag" --conf | sed "s/^/  $h: /"
done

# 5. A pod on each host, attached by cnitool through the installed weft-cni and portmap.
declare -A ip4
for i in 1 2; do
    h=h$i
    mkdir -p "$tmp/$h/conf"
    jq --arg s "$tmp/$h/run/weft.sock" '.plugins[0].apiSocket = $s' "$tmp/$h/net.d/10-weft.conflist" >"$tmp/$h/conf/10-weft.conflist"
    out=$(ip netns exec "$p-$h" env NETCONFPATH="$tmp/$h/conf" CNI_PATH="$tmp/$h/cni-bin:/usr/lib/cni" \
        cnitool add weft "/run/netns/$p-p$i")
    ip4[$i]=$(jq -r '.ips[0].address' <<<"$out")
    echo "a pod attached on $h by the installed weft-cni: p$i ${ip4[$i]} (interfaces: $(jq -r '[.interfaces[].name] | join(", ")' <<<"$out"))"
done
dst=${ip4[2]%/*}
ping_out=$(ip netns exec "$p-p1" ping -n -c 3 -W 2 "$dst")
echo "pod p1 on h1 pinging pod p2 on h2 ($dst): $(grep -E 'packets transmitted' <<<"$ping_out")"
grep -q ' 0% packet loss' <<<"$ping_out" || { echo "$ping_out" >&2; exit 1; }
echo "image test passed in $(($(date +%s) - start)) s"
