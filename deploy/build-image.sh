#!/usr/bin/env bash
# Builds the weft image with podman, without any image registry (needs root, network access to
# a Debian mirror the first time, and a Rust toolchain).
#
#   deploy/build-image.sh [TAG]        TAG defaults to localhost/weft:latest
#
# 1. Installs podman and debootstrap from Debian's packages if they are missing.
# 2. The base image (WEFT_BASE_IMAGE, default localhost/weft-base:bookworm), once: a Debian
#    bookworm minbase root filesystem from debootstrap (WEFT_DEBIAN_MIRROR, default
#    http://deb.debian.org/debian) with nftables (the router runs `nft`) and kmod (`modprobe
#    br_netfilter`), apt's caches, documentation and translations removed, imported with
#    `podman import`. Later builds reuse it;
#    `podman rmi` it to rebuild.
# 3. `cargo build --release --locked` of weft and weft-cni, copied stripped of debug info into
#    target/image-context with the conflist and weft-install-cni.
# 4. `podman build -f deploy/Containerfile` of that context. Prints the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-localhost/weft:latest}
base=${WEFT_BASE_IMAGE:-localhost/weft-base:bookworm}
mirror=${WEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" != 0 ]; then
    echo "build-image.sh: run it as root (debootstrap and rootful podman need it)" >&2
    exit 1
fi

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if podman image exists "$base"; then
    echo "base image $base: present (podman rmi it to rebuild)"
else
    root=$(mktemp -d "${TMPDIR:-/tmp}/weft-base-XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "base image $base: debootstrap --variant=minbase bookworm from $mirror (takes a few minutes)"
    debootstrap --variant=minbase --include=nftables,kmod bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
        tail -20 "$root.log" >&2
        echo "build-image.sh: debootstrap failed (whole log: $root.log)" >&2
        exit 1
    }
    rm -f "$root.log"
    rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    tar -C "$root" --numeric-owner -c . | podman import --quiet --message "Debian bookworm minbase with nftables and kmod, for weft" - "$base" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi

echo "building weft and weft-cni (cargo build --release --locked)"
cargo build --release --locked -p weft-router -p weft-cni
ctx=target/image-context
rm -rf "$ctx"
mkdir -p "$ctx"
for b in weft weft-cni; do
    objcopy --strip-debug "target/release/$b" "$ctx/$b"
done
cp deploy/10-weft.conflist deploy/install-cni.sh "$ctx/"

podman build --quiet --network none --build-arg "BASE=$base" -f deploy/Containerfile -t "$tag" "$ctx" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image built: $tag, $((size / 1000000)) MB ($(du -sh "$ctx/weft" | cut -f1) weft, $(du -sh "$ctx/weft-cni" | cut -f1) weft-cni, on $base)"
