#!/usr/bin/env bash
# gRPC load test: tollgate's Consume and Envoy's ShouldRateLimit against a
# bare tonic server that answers without limiting, each pinned to CPU 0, with
# h2load pinned to CPU 1.
#   scripts/load.sh [calls] [connections] [streams per connection]
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-300000}" conns="${2:-8}" streams="${3:-16}"
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
cargo build --release --quiet --bin tollgate --example bare

work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# One gRPC frame: LimitRequest{subject: "key_1", resource: "/api/v1/fetch/people"}.
python3 - "$work/request.bin" <<'PY'
import struct, sys
def field(n, s):
    b = s.encode()
    return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, "key_1") + field(3, "/api/v1/fetch/people")
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
PY
# RateLimitRequest{domain: "load", descriptors: [{entries: [{api_key: k1}]}]}.
python3 - "$work/rls.bin" <<'PY'
import struct, sys
def field(n, b):
    b = b.encode() if isinstance(b, str) else b
    return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, "load") + field(2, field(1, field(1, "api_key") + field(2, "k1")))
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
PY

run() { # name, path, body, command...
    local name="$1" path="$2" body="$3"; shift 3
    taskset -c 0 "$@" 2> "$work/$name.log" &
    local pid=$! addr=""
    for _ in $(seq 100); do
        addr="$(grep -o 'listening on [0-9.:]*' "$work/$name.log" | head -1 | cut -d' ' -f3 || true)"
        [ -n "$addr" ] && break
        sleep 0.1
    done
    local rps
    rps="$(taskset -c 1 h2load -n "$calls" -c "$conns" -m "$streams" \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$body" \
        "http://$addr/$path" | tee "$work/$name.h2load" \
        | awk '/^finished in/ {print $4}')"
    grep -E '^requests:' "$work/$name.h2load" | sed "s/^/$name /"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$name: $rps calls/s"
}
consume=tollgate.v1.RateLimiter/Consume
rls=envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
run bare "$consume" "$work/request.bin" target/release/examples/bare 127.0.0.1:0
run bare-rls "$rls" "$work/rls.bin" target/release/examples/bare 127.0.0.1:0
run tollgate "$consume" "$work/request.bin" \
    target/release/tollgate serve --listen 127.0.0.1:0 --config scripts/load.yaml --log-format text --state "$work/state.redb"
run envoy "$rls" "$work/rls.bin" \
    target/release/tollgate serve --listen 127.0.0.1:0 --config scripts/load.yaml --envoy-config scripts/load-rules \
    --log-format text --state "$work/state-envoy.redb"

# The same Consume counted in Redis (redis-server shares CPU 1 with h2load):
# decisions per second, and Redis calls per decision.
if command -v redis-server >/dev/null; then
    port=$((20000 + RANDOM % 10000))
    taskset -c 1 redis-server --port "$port" --save "" --appendonly no >/dev/null &
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
    run tollgate-redis "$consume" "$work/request.bin" \
        target/release/tollgate serve --listen 127.0.0.1:0 --config scripts/load.yaml --log-format text \
        --store "redis://127.0.0.1:$port" --store-timeout 1s
    echo "redis calls: $(redis-cli -p "$port" info commandstats | grep -E 'cmdstat_(evalsha|eval):' | tr '\n' ' ')"
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
fi
