#!/usr/bin/env bash
# gRPC load test: every server pinned to CPU 0, every load tool to CPU 1.
# Prints one table: tollgate's paths beside a bare tonic server that answers
# without limiting (examples/bare.rs), in the same run. Compare ratios, not
# absolute numbers: they drift between runs and days.
#   scripts/load.sh [calls] [connections] [streams per connection]
#
# Rows: Consume and ShouldRateLimit with one key (h2load); ShouldRateLimit
# over 1,000,000 distinct keys, warm, and the server's memory per counter
# (steady and peak, with the journal on and off)
# (examples/load.rs); latency at one call in flight (one connection, one call
# at a time); Decide streams; a reserve then a settle against one Consume;
# Consume counted in Redis, with Redis's CPU time
# per decision (INFO commandstats and INFO cpu over the run).
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-300000}" conns="${2:-8}" streams="${3:-16}"
keys="${KEYS:-1000000}"
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
cargo build --release --quiet --bin tollgate --example bare --example load

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

table="$work/table"
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$table"; }

start() { # name, command...: starts a server on CPU 0, sets $pid and $addr
    local name="$1"; shift
    taskset -c 0 "$@" 2> "$work/$name.log" &
    pid=$! addr=""
    for _ in $(seq 100); do
        addr="$(grep -o 'listening on [0-9.:]*' "$work/$name.log" | head -1 | cut -d' ' -f3 || true)"
        [ -n "$addr" ] && break
        sleep 0.1
    done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
h2() { # path, body: calls/s
    taskset -c 1 h2load -n "$calls" -c "$conns" -m "$streams" \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$2" \
        "http://$addr/$1" | awk '/^finished in/ {print $4}'
}
load() { taskset -c 1 target/release/examples/load "$addr" "$@"; }
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$pid/status"; }
hwm() { awk '/VmHWM/ {print $2 * 1024}' "/proc/$pid/status"; }

consume=tollgate.v1.RateLimiter/Consume
rls=envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
tollgate=(target/release/tollgate serve --listen 127.0.0.1:0 --config scripts/load.yaml
    --envoy-config scripts/load-rules --log-format text --max-counters 2000000)

start bare target/release/examples/bare 127.0.0.1:0
row "bare: Consume (empty Decision)" "$(h2 "$consume" "$work/request.bin") calls/s"
row "bare: ShouldRateLimit (OK)" "$(h2 "$rls" "$work/rls.bin") calls/s"
row "bare: latency, Consume" "$(load latency --calls 20000 | cut -d: -f2-)"
row "bare: latency, ShouldRateLimit" "$(load latency --path envoy --calls 20000 | cut -d: -f2-)"
row "bare: Decide stream (8 streams)" "$(load stream --seconds 5 | cut -d: -f2-)"
stop

start tollgate "${tollgate[@]}" --state "$work/state.redb"
row "tollgate: Consume, 3 limits" "$(h2 "$consume" "$work/request.bin") calls/s"
row "tollgate: ShouldRateLimit, one key" "$(h2 "$rls" "$work/rls.bin") calls/s"
row "tollgate: latency, Consume" "$(load latency --calls 20000 | cut -d: -f2-)"
row "tollgate: latency, ShouldRateLimit" "$(load latency --path envoy --calls 20000 | cut -d: -f2-)"
row "tollgate: Decide stream (8 streams)" "$(load stream --keys 1000 --seconds 5 | cut -d: -f2-)"
# Reserve then settle (two calls) against one Consume, same keys and load.
plain="$(load consume --keys 1000 --seconds 5 | awk '{print $2}')"
pairs="$(load reserve --keys 1000 --seconds 5 | awk '{print $2}')"
row "tollgate: Consume, 1,000 keys (load tool)" "$plain calls/s"
row "tollgate: reserve + settle, 1,000 keys" "$pairs pairs/s"
row "tollgate: reserve + settle / Consume" "$(awk -v a="$plain" -v b="$pairs" 'BEGIN {printf "%.2fx the cost", a / b}')"
stop

# Memory per counter: one hour-long counter per key, so all of them are held
# when memory is read. Steady is VmRSS after the load, peak VmHWM; both less
# the server's RSS before it. With the journal (the default) and without.
keyed=(target/release/tollgate serve --listen 127.0.0.1:0 --config scripts/load.yaml
    --envoy-config scripts/load-rules-hour --log-format text --max-counters 2000000)
for journal in on off; do
    flags=()
    [ "$journal" = off ] && flags=(--journal-interval 0)
    start "tollgate-keys-$journal" "${keyed[@]}" --state "$work/keys-$journal.redb" "${flags[@]}"
    before="$(rss)"
    out="$(load envoy --keys "$keys" --warm --seconds 10 2>/dev/null | cut -d: -f2-)"
    sleep 2 # one more journal flush
    steady="$(rss)" peak="$(hwm)"
    [ "$journal" = on ] && row "tollgate: ShouldRateLimit, $keys keys, warm" "$out"
    row "tollgate: memory per counter, journal $journal" \
        "steady $(( (steady - before) / keys )) B, peak $(( (peak - before) / keys )) B"
    stop
done

# The same Consume counted in Redis (redis-server shares CPU 1 with the load).
if command -v redis-server >/dev/null; then
    port=$((20000 + RANDOM % 10000))
    taskset -c 1 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work" >/dev/null &
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
    cpu() { redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }
    start tollgate-redis "${tollgate[@]}" --store "redis://127.0.0.1:$port" --store-timeout 1s \
        --metrics-listen 127.0.0.1:0
    metrics="$(grep -o 'metrics on http://[0-9.:]*' "$work/tollgate-redis.log" | head -1 | cut -d' ' -f3)"
    redis-cli -p "$port" config resetstat >/dev/null
    c0="$(cpu)"
    rps="$(h2 "$consume" "$work/request.bin")"
    c1="$(cpu)"
    trips="$(curl -s "$metrics/metrics" | scripts/quantiles.py tollgate_store_round_trip_seconds)"
    stop
    evals="$(redis-cli -p "$port" info commandstats | awk -F'[=,:]' '/^cmdstat_evalsha:/ {print $3}')"
    row "tollgate + redis: Consume, 3 limits" "$rps calls/s"
    row "tollgate + redis: script calls per decision" "$(awk -v e="$evals" -v n="$calls" 'BEGIN {printf "%.3f", e / n}')"
    row "tollgate + redis: script round trip" "$trips"
    row "tollgate + redis: Redis CPU per decision" "$(awk -v a="$c0" -v b="$c1" -v n="$calls" 'BEGIN {printf "%.2f µs", (b - a) * 1e6 / n}')"
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
fi

echo
echo "== summary"
cat "$table"
