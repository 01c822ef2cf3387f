#!/usr/bin/env bash
# Property-based API testing of the gateway against its own OpenAPI document with
# Schemathesis (installed once into a virtualenv under target/).
#
# Starts courier-gateway in the dev profile under a throwaway prefix on the local
# RabbitMQ and Redis (make services), seeds a tenant with every scope, runs a
# bounded number of generated requests per operation, and fails on any 5xx or any
# response that breaks the document (status codes, content types, bodies).
# Afterwards the prefix's Redis keys and broker queues are removed.
#
#   bash deploy/schemathesis.sh                  # 25 examples per operation
#   SCHEMATHESIS_EXAMPLES=200 bash deploy/schemathesis.sh
#
# COURIER_BIN_DIR (default target/debug) must hold a built courier-gateway.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=${COURIER_BIN_DIR:-$root/target/debug}
examples=${SCHEMATHESIS_EXAMPLES:-25}
amqp_url=${COURIER_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
redis_url=${COURIER_REDIS_URL:-redis://127.0.0.1:6379}
admin_token=schemathesis-admin-token
prefix="st-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')."
venv="$root/target/py-schemathesis"

[[ -x $bin_dir/courier-gateway ]] || {
    echo "schemathesis: $bin_dir/courier-gateway is missing; run cargo build --bins" >&2
    exit 2
}
if [[ ! -x $venv/bin/schemathesis ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
log=$(mktemp)
COURIER_PROFILE=dev COURIER_PREFIX="$prefix" COURIER_AMQP_URL="$amqp_url" \
    COURIER_REDIS_URL="$redis_url" COURIER_ADMIN_TOKEN="$admin_token" \
    COURIER_GATEWAY_ADDR="127.0.0.1:$port" RUST_LOG=warn \
    "$bin_dir/courier-gateway" >"$log" 2>&1 &
gateway=$!

cleanup() {
    kill "$gateway" 2>/dev/null || true
    wait "$gateway" 2>/dev/null || true
    # Everything the run left in Redis and the broker lives under the prefix.
    python3 - "$redis_url" "$prefix" <<'PY' || true
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379))
f = s.makefile("rwb")
def cmd(*args):
    f.write(b"*%d\r\n" % len(args))
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        f.write(b"$%d\r\n%s\r\n" % (len(a), a))
    f.flush()
    return read()
def read():
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t in (b"+", b"-", b":"):
        return rest
    if t == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if t == b"*":
        return [read() for _ in range(int(rest))]
if u.password:
    cmd("AUTH", u.password)
cursor = b"0"
while True:
    cursor, keys = cmd("SCAN", cursor, "MATCH", sys.argv[2] + "*", "COUNT", "500")
    if keys:
        cmd("DEL", *keys)
    if cursor == b"0":
        break
PY
    if command -v rabbitmqctl >/dev/null 2>&1; then
        for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$prefix" || true); do
            rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
        done
        for x in $(rabbitmqctl -q list_exchanges name 2>/dev/null | grep -F "$prefix" || true); do
            rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"schemathesis\">>)." >/dev/null 2>&1 || true
        done
    fi
    rm -f "$log"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null || {
    echo "schemathesis: the gateway did not become ready" >&2
    cat "$log" >&2
    exit 1
}

key=$(curl -fsS -X POST "$base/v1/tenants" \
    -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d '{"id":"fuzz","name":"Schemathesis"}' |
    python3 -c 'import sys,json;print(json.load(sys.stdin)["apiKey"]["key"])')

# Schemathesis keeps its state in the working directory: keep it out of the tree.
cd "$venv"
# The tenant key reaches every tenant route; operator routes answer 401 with it,
# which the document declares. No 5xx, and every answer as documented.
"$venv/bin/schemathesis" run "$base/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$examples" \
    --exclude-path /v1/deliveries/export.csv \
    --no-color
