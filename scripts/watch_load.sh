#!/usr/bin/env bash
# WatchQuota at scale: starts tollgate, opens WATCHERS streams (default
# 10,000, each on its own subject: the worst case, one publisher each), and
# reports the server's memory per watcher and the update latency.
#   scripts/watch_load.sh [watchers] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
watchers="${1:-10000}" conns="${2:-20}"
cargo build --release --quiet --bin tollgate --example watchers
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/tollgate serve --listen 127.0.0.1:0 --state "$work/state.redb" 2> "$work/server.log" &
server=$!
for _ in $(seq 100); do
    addr="$(grep -o 'listening on [0-9.:]*' "$work/server.log" | head -1 | cut -d' ' -f3 || true)"
    [ -n "$addr" ] && break
    sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
before="$(rss)"
target/release/examples/watchers "$addr" "$watchers" "$conns" | while read -r line; do
    echo "$line"
    if [ "$line" = "ready" ]; then
        after="$(rss)"
        echo "server RSS: ${before} kB idle, ${after} kB with $watchers watchers: $(( (after - before) * 1024 / watchers )) bytes per watcher"
    fi
done
