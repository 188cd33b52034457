#!/usr/bin/env bash
# HTTP load test: tollgate pinned to CPU 0; the load tool (h2load --h1,
# HTTP/1.1 with keep-alive) and the gateways on CPU 1, so each gateway shares
# its CPU with the load. Every limit is out of reach (scripts/load.yaml), so
# every call is admitted and counted. Prints requests/s and p99 (from
# h2load's per-request log) per row. Compare rows, not days: numbers drift.
#   scripts/load-http.sh [requests] [connections]
#
# Rows: POST /v1/consume, and the same request as gRPC Consume (h2load over
# HTTP/2, one call in flight a connection); GET /v1/forward-auth called directly; the same
# through nginx (examples/nginx, auth_request) and through Caddy
# (examples/caddy, forward_auth) in front of a 200 "hello" served by the
# gateway itself; and that "hello" without tollgate, for the gateway's own
# cost.
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-100000}" conns="${2:-8}"
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
nginx="$(command -v nginx || echo /usr/sbin/nginx)"
cargo build --release --quiet --bin tollgate
bin="${CARGO_TARGET_DIR:-target}/release/tollgate"

work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }

table="$work/table"
row() { printf '%-52s %s\n' "$1" "$2" | tee -a "$table"; }
load() { # url, h2load args...: "N req/s, p99 X ms"
    local url="$1"; shift
    rm -f "$work/requests.log"
    taskset -c 1 h2load --h1 -n "$requests" -c "$conns" --log-file="$work/requests.log" "$@" "$url" \
        > "$work/h2load.out"
    local rps ok p99
    rps="$(awk '/^finished in/ {print $4}' "$work/h2load.out")"
    ok="$(awk '/^status codes:/ {print $3}' "$work/h2load.out")"
    p99="$(cut -f3 "$work/requests.log" | sort -n | awk '{v[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f", v[i] / 1000}')"
    echo "$rps req/s, p99 $p99 ms ($ok of $requests 2xx)"
}

{ cat scripts/load.yaml; printf 'http:\n  forward_auth:\n    subject: { header: X-Api-Key }\n'; } > "$work/tollgate.yaml"
tollgate_port="$(free_port)" grpc_port="$(free_port)"
taskset -c 0 "$bin" serve --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$tollgate_port" \
    --config "$work/tollgate.yaml" --state "$work/state.redb" --log-format text \
    2> "$work/tollgate.log" &
wait_port "$tollgate_port"
tollgate="http://127.0.0.1:$tollgate_port"

printf '{"subject":"key_1","resource":"/api/v1/fetch/people"}' > "$work/consume.json"
row "POST /v1/consume, direct" "$(load "$tollgate/v1/consume" -d "$work/consume.json" -H 'content-type: application/json')"
# The same request as gRPC Consume, same server, same run: h2load over
# HTTP/2 with one stream a connection, as the HTTP/1 rows have one request
# in flight a connection.
python3 - "$work/consume.bin" <<'PY'
import struct, sys
def field(n, s):
    b = s.encode()
    return bytes([n << 3 | 2, len(b)]) + b
msg = field(1, "key_1") + field(3, "/api/v1/fetch/people")
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
PY
grpc_rps="$(taskset -c 1 h2load -n "$requests" -c "$conns" -m 1 -d "$work/consume.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$grpc_port/tollgate.v1.RateLimiter/Consume" | awk '/^finished in/ {print $4}')"
row "gRPC Consume, direct (the same request)" "$grpc_rps req/s"
auth=(-H 'x-api-key: key_1' -H 'x-forwarded-method: GET' -H 'x-forwarded-uri: /api/v1/fetch/people')
row "GET /v1/forward-auth, direct" "$(load "$tollgate/v1/forward-auth" "${auth[@]}")"

# nginx from the example; the app is a second server of the same nginx.
gateway_port="$(free_port)" app_port="$(free_port)"
mkdir -p "$work/nginx"
cp examples/nginx/tollgate.conf "$work/nginx/"
python3 - "$work/nginx/nginx.conf" "$gateway_port" "$tollgate_port" "$app_port" <<'PY'
import sys
out, gw, tg, app = sys.argv[1:]
text = open("examples/nginx/nginx.conf").read()
for a, b in (("127.0.0.1:8000", gw), ("127.0.0.1:8080", tg), ("127.0.0.1:3000", app)):
    text = text.replace(a, "127.0.0.1:" + b)
app_server = f'    server {{\n        listen 127.0.0.1:{app};\n        location / {{ return 200 "hello\\n"; }}\n    }}\n}}\n'
text = text[: text.rstrip().rfind("}")] + app_server
open(out, "w").write(text)
PY
taskset -c 1 "$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e stderr -g 'daemon off;' \
    2> "$work/nginx.log" &
wait_port "$gateway_port"
row "nginx alone: GET / (return 200, no tollgate)" "$(load "http://127.0.0.1:$app_port/")"
row "nginx auth_request: GET / (forward auth + app)" "$(load "http://127.0.0.1:$gateway_port/" -H 'x-api-key: key_1')"

# Caddy from the example; the app is a second site of the same Caddy.
if command -v caddy >/dev/null; then
    gateway_port="$(free_port)" app_port="$(free_port)"
    mkdir -p "$work/caddy"
    sed -e "s/127.0.0.1:8000/127.0.0.1:$gateway_port/; s/127.0.0.1:8080/127.0.0.1:$tollgate_port/; s/127.0.0.1:3000/127.0.0.1:$app_port/" \
        examples/caddy/Caddyfile > "$work/caddy/Caddyfile"
    printf '\nhttp://127.0.0.1:%s {\n\trespond "hello"\n}\n' "$app_port" >> "$work/caddy/Caddyfile"
    HOME="$work/caddy" XDG_CONFIG_HOME="$work/caddy" XDG_DATA_HOME="$work/caddy" GOMAXPROCS=1 \
        taskset -c 1 caddy run --adapter caddyfile --config "$work/caddy/Caddyfile" 2> "$work/caddy.log" &
    wait_port "$gateway_port"
    row "caddy alone: GET / (respond, no tollgate)" "$(load "http://127.0.0.1:$app_port/")"
    row "caddy forward_auth: GET / (forward auth + app)" "$(load "http://127.0.0.1:$gateway_port/" -H 'x-api-key: key_1')"
fi

echo
echo "== summary ($requests requests, $conns connections; tollgate on CPU 0, load and gateway on CPU 1)"
cat "$table"
