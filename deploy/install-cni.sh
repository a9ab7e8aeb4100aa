#!/bin/sh
# weft-install-cni (in the weft image): copies weft-cni into the node's CNI binary directory and,
# with --conf, the conflist into its CNI configuration directory, both mounted into the container
# (WEFT_CNI_BIN_DIR, default /host/opt/cni/bin; WEFT_CNI_CONF_DIR, default /host/etc/cni/net.d).
# Each file is written beside its target and renamed over it, so a kubelet never runs or reads a
# half-written one. On Kubernetes the router writes the conflist itself once it can serve ADDs
# (--write-cni-conf), so the DaemonSet's init container installs the binary only.
set -eu

bin_dir=${WEFT_CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${WEFT_CNI_CONF_DIR:-/host/etc/cni/net.d}
conf=no
for arg in "$@"; do
    case $arg in
        --conf) conf=yes ;;
        -h | --help)
            echo "usage: weft-install-cni [--conf]   (WEFT_CNI_BIN_DIR=$bin_dir, WEFT_CNI_CONF_DIR=$conf_dir)"
            exit 0
            ;;
        *)
            echo "weft-install-cni: unknown argument $arg (usage: weft-install-cni [--conf])" >&2
            exit 2
            ;;
    esac
done

# install SOURCE DIR NAME MODE: SOURCE to DIR/NAME, atomically.
install_file() {
    if [ ! -d "$2" ]; then
        echo "weft-install-cni: $2 is not a directory: mount the node's directory there" >&2
        exit 1
    fi
    cp "$1" "$2/.$3.tmp"
    chmod "$4" "$2/.$3.tmp"
    mv -f "$2/.$3.tmp" "$2/$3"
    echo "installed $2/$3"
}

install_file /usr/local/bin/weft-cni "$bin_dir" weft-cni 755
if [ "$conf" = yes ]; then
    install_file /etc/weft/10-weft.conflist "$conf_dir" 10-weft.conflist 644
fi
