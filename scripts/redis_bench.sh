#!/usr/bin/env bash
# Redis store measurements: memory per counter and script throughput, running
# the real decision script (src/storage/redis/consume.lua) with redis-benchmark
# over 100,000 distinct counters per algorithm.
#   scripts/redis_bench.sh [counters]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
port=$((20000 + RANDOM % 10000))
taskset -c 0 redis-server --port "$port" --save "" --appendonly no >/dev/null &
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
script="$(cat src/storage/redis/consume.lua)"
used() { redis-cli -p "$port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }

for alg in f s t r; do
    redis-cli -p "$port" flushall >/dev/null
    before="$(used)"
    # Key and identity as tollgate writes them for a per-subject limit.
    out="$(taskset -c 1 redis-benchmark -p "$port" -n "$((n * 2))" -r "$n" -c 16 -P 1 -q \
        EVAL "$script" 1 "tg:{key___rand_int__}:|subject||requests|86400000000000|x$alg" \
        '' 1 "$alg" 1000 86400000 1 1 0 1 1 1)"
    keys="$(redis-cli -p "$port" dbsize)"
    after="$(used)"
    echo "$alg: $keys counters, $(( (after - before) / keys )) bytes each; $(echo "$out" | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)"
done
redis-cli -p "$port" info commandstats | grep -E 'cmdstat_(eval|evalsha):' || true
