#!/usr/bin/env bash
# Validates every manifest under deploy/kubernetes/ against the Kubernetes
# schemas, offline: kubernetes-validate (PyPI) ships them. --strict rejects
# fields the schema does not know (a misspelt or misplaced key), and a
# resource whose kind or apiVersion has no schema fails too (the tool itself
# only warns and passes it). Also checks that the example ConfigMaps carry
# examples/saas.yaml and examples/envoy/ratelimit/ verbatim, files the test
# suite already proves valid.
#   scripts/validate-kubernetes.sh          (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes the manifests are meant for: lifecycle.preStop.sleep
# is on by default from 1.30, and 1.32 is the oldest schema set that
# kubernetes-validate 1.37.0 (scripts/tools.sh) ships.
kubernetes_version=1.32.0

if [ -z "${TOLLGATE_TOOLS:-}" ]; then
    source scripts/tools.sh
fi
python="$TOLLGATE_TOOLS/python3"
echo "kubernetes-validate $("$python" -m kubernetes_validate --version), Kubernetes $kubernetes_version schemas, strict"

mapfile -t manifests < <(find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if [ "${#manifests[@]}" -eq 0 ]; then
    echo "no manifests under deploy/kubernetes" >&2
    exit 1
fi

# --quiet prints only problems: ERROR (invalid), WARN (no schema for the
# kind: not validated at all), FATAL (no such Kubernetes version). Any line
# is a failure.
status=0
problems="$("$python" -m kubernetes_validate --strict --quiet -k "$kubernetes_version" "${manifests[@]}" 2>&1)" || status=$?
if [ "$status" -ne 0 ] || [ -n "$problems" ]; then
    echo "$problems" >&2
    echo "deploy/kubernetes: manifests do not validate against Kubernetes $kubernetes_version" >&2
    exit 1
fi

"$python" - "${manifests[@]}" <<'PY'
import pathlib, sys
import yaml

# ConfigMap name -> {key: the file in the repository it must equal}.
rules = pathlib.Path("examples/envoy/ratelimit")
expected = {
    "tollgate-config": {"tollgate.yaml": pathlib.Path("examples/saas.yaml")},
    "tollgate-ratelimit": {p.name: p for p in sorted(rules.glob("*.yaml"))},
}
resources = 0
problems = []
for name in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(name)):
        if not doc:
            continue
        resources += 1
        if doc.get("kind") != "ConfigMap" or doc["metadata"]["name"] not in expected:
            continue
        want = expected[doc["metadata"]["name"]]
        data = doc.get("data") or {}
        if sorted(data) != sorted(want):
            problems.append(f"{name}: {doc['metadata']['name']}: keys {sorted(data)}, expected {sorted(want)}")
            continue
        for key, path in want.items():
            if data[key] != path.read_text():
                problems.append(f"{name}: {doc['metadata']['name']}: {key} differs from {path}")
if problems:
    print("\n".join(problems), file=sys.stderr)
    print("copy the files from examples/ into the ConfigMaps (or change both)", file=sys.stderr)
    sys.exit(1)
print(f"deploy/kubernetes: {resources} resources in {len(sys.argv) - 1} files valid; ConfigMaps match examples/")
PY
