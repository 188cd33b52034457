#!/usr/bin/env bash
# Quota insight's cost, A/B on one binary: the same server with the top
# subjects, threshold events, usage rollups and traces (exported for real to
# a counting OTLP collector, examples/otlp_sink.rs) all on, then all off,
# alternating, each round a fresh server on CPU 0 and h2load on CPU 1.
# Prints each path's calls/s and the server's CPU time per call (user +
# system, from /proc: steadier than calls/s on a shared machine) per round,
# and the median ratios on/off.
#   scripts/load-insight.sh [calls] [rounds]
# RATIO sets OTEL_TRACES_SAMPLER_ARG for "on" (default 1: every decision).
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-300000}" rounds="${2:-3}" conns=8 streams=16
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
cargo build --release --quiet --bin tollgate --example otlp_sink

work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import struct, sys
def field(n, b):
    b = b.encode() if isinstance(b, str) else b
    return bytes([n << 3 | 2, len(b)]) + b
def frame(name, msg):
    open(f"{sys.argv[1]}/{name}", "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
# LimitRequest{subject: "key_1", resource: "/api/v1/fetch/people"}
frame("consume.bin", field(1, "key_1") + field(3, "/api/v1/fetch/people"))
# RateLimitRequest{domain, descriptors: [{entries: [{api_key: k1}]}]}
for domain in ("load", "plans"):
    frame(f"{domain}.bin", field(1, domain) + field(2, field(1, field(1, "api_key") + field(2, "k1"))))
PY
{ cat scripts/load.yaml; echo 'envoy: { domains: { plans: { subject: api_key } } }'; } > "$work/off.yaml"
{ cat "$work/off.yaml"; echo 'events: { thresholds: [80%, 100%] }'; } > "$work/on.yaml"

addr_of() { # log file: the address it says it listens on
    local a=""
    for _ in $(seq 100); do
        a="$(grep -o 'listening on [0-9.:]*' "$1" | head -1 | cut -d' ' -f3 || true)"
        [ -n "$a" ] && break
        sleep 0.1
    done
    echo "$a"
}
target/release/examples/otlp_sink 127.0.0.1:0 2> "$work/sink.log" > "$work/spans" &
sink=$!
collector="$(addr_of "$work/sink.log")"

serve() { # on|off: starts tollgate on CPU 0, sets $pid and $addr
    local flags=(--top-subjects 0 --usage-hourly-retention 0 --usage-daily-retention 0)
    [ "$1" = on ] && flags=(--otlp-endpoint "http://$collector")
    OTEL_TRACES_SAMPLER_ARG="${RATIO:-1}" taskset -c 0 target/release/tollgate serve \
        --listen 127.0.0.1:0 --config "$work/$1.yaml" --envoy-config scripts/load-rules \
        --log-format text --max-counters 2000000 --state "$work/state-$1.redb" "${flags[@]}" \
        2> "$work/$1.log" &
    pid=$!
    addr="$(addr_of "$work/$1.log")"
}
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; } # clock ticks
h2() { # path, body: calls/s
    taskset -c 1 h2load -n "$calls" -c "$conns" -m "$streams" \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$2" \
        "http://$addr/$1" | awk '/^finished in/ {print $4}'
}
paths=(
    "Consume|tollgate.v1.RateLimiter/Consume|consume.bin"
    "ShouldRateLimit, rules|envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit|load.bin"
    "ShouldRateLimit, plans|envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit|plans.bin"
)
for round in $(seq "$rounds"); do
    for variant in off on; do
        serve "$variant"
        for p in "${paths[@]}"; do
            IFS='|' read -r name path body <<< "$p"
            t0="$(cpu)"
            rps="$(h2 "$path" "$work/$body")"
            us="$(awk -v a="$t0" -v b="$(cpu)" -v n="$calls" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) * 1e6 / hz / n}')"
            echo "$name|$variant|$rps|$us" >> "$work/results"
            printf 'round %s %-4s %-24s %s calls/s, %s µs CPU a call\n' "$round" "$variant" "$name" "$rps" "$us"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true
        rm -f "$work"/state-*
    done
done
kill "$sink"; wait "$sink" 2>/dev/null || true
echo
echo "== on / off, median of $rounds rounds (traces: ratio ${RATIO:-1}, $(cat "$work/spans") spans received)"
python3 - "$work/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, variant, rps, us = line.strip().split("|")
    runs.setdefault(name, {}).setdefault(variant, []).append((float(rps), float(us)))
for name, v in runs.items():
    m = {k: [statistics.median(x[i] for x in v[k]) for i in (0, 1)] for k in ("off", "on")}
    print(f"{name:24} calls/s off {m['off'][0]:>7.0f} on {m['on'][0]:>7.0f} ({m['on'][0] / m['off'][0]:.3f}×)"
          f"   CPU a call off {m['off'][1]:.2f} µs on {m['on'][1]:.2f} µs ({m['on'][1] / m['off'][1]:.3f}×)")
PY
