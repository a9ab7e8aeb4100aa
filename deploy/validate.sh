#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/ against the Kubernetes API schemas, offline:
# kubernetes-validate (PyPI) ships the schemas of Kubernetes 1.25 to 1.37; each manifest is
# checked strictly (unknown fields refused) against every version from 1.28 (the oldest weft
# claims) to 1.37. The tool is installed once into a virtualenv under target/ (network needed
# that first time only).
#
#   deploy/validate.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.37.0 # of kubernetes-validate
venv=target/kubernetes-validate-$version
manifests=(deploy/weft.yaml deploy/weft-reset.yaml)
kube_versions=(1.28.0 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0)

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "installing kubernetes-validate $version into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
fi

for k in "${kube_versions[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "${manifests[@]}"
done
objects=$(grep -c '^kind:' "${manifests[@]}" | awk -F: '{n += $2} END {print n}')
echo "deploy: ${manifests[*]} ($objects objects) valid against the Kubernetes ${kube_versions[0]} to ${kube_versions[-1]} schemas (kubernetes-validate $version, --strict)"
