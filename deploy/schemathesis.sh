#!/usr/bin/env bash
# Property-based API testing of the gateway against its own OpenAPI document with
# Schemathesis (installed once from PyPI into a virtualenv under target/). Part of
# `make test`.
#
# Starts courier-gateway in the dev profile under a throwaway prefix on the local
# RabbitMQ and Redis (make services), so the server starts empty, seeds a tenant
# with every scope, and runs a bounded number of generated requests per operation
# in two passes: the tenant routes with the tenant's key, then the operator
# routes with the admin token. Fails on any 5xx or any response that breaks the
# document (status codes, content types, bodies), and prints the operations and
# test cases of each pass. Afterwards the prefix's Redis keys and broker queues
# are removed.
#
#   bash deploy/schemathesis.sh                  # 25 examples per operation
#   SCHEMATHESIS_EXAMPLES=200 bash deploy/schemathesis.sh
#   SCHEMATHESIS_SEED=1234 bash deploy/schemathesis.sh    # replay a run's seed
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
seed=${SCHEMATHESIS_SEED:-}
venv="$root/target/py-schemathesis"
# Pinned, so a new release's checks do not change what passes.
version=4.32.5

[[ -x $bin_dir/courier-gateway ]] || {
    echo "schemathesis: $bin_dir/courier-gateway is missing; run cargo build --bins" >&2
    exit 2
}
installed() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null
}
if [[ $(installed) != "$version" ]]; then
    echo "schemathesis: installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
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
operator_paths='^/v1/(tenants|admin)(/|$)'
summary=()
failed=0

# One pass over some operations with one caller's credentials; no 5xx, and every
# answer as documented.
run_pass() {
    local name=$1 token=$2 out
    out=$(mktemp)
    shift 2
    echo "schemathesis: $name"
    local status=0
    "$venv/bin/schemathesis" run "$base/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples "$examples" \
        ${seed:+--seed "$seed"} \
        --exclude-path /v1/deliveries/export.csv \
        --no-color "$@" 2>&1 | tee "$out" || status=$?
    # The summary's counts: "Tested: N" operations and the line under "Test cases:".
    local operations cases
    operations=$(sed -n 's/^ *Tested: *\([0-9][0-9]*\).*/\1/p' "$out" | tail -n1)
    cases=$(awk '/^Test cases:/ { getline; sub(/^ +/, ""); line = $0 } END { print line }' "$out")
    rm -f "$out"
    if [[ $status -ne 0 ]]; then
        failed=1
        summary+=("$name: ${operations:-?} operations, ${cases:-no test cases} (FAILED, exit $status)")
    elif [[ -z $operations || -z $cases ]]; then
        failed=1
        summary+=("$name: the run printed no counts (FAILED)")
    else
        summary+=("$name: $operations operations, $cases")
    fi
}

# The tenant key reaches every tenant route; the operator routes are the second pass.
run_pass "tenant routes (tenant key)" "$key" --exclude-path-regex "$operator_paths"
# The operator's: tenants, their keys, the dead-letter queue (the seeded tenant
# may be deleted here, so this pass comes last).
run_pass "operator routes (admin token)" "$admin_token" --include-path-regex "$operator_paths"

echo
echo "schemathesis summary ($examples examples per operation):"
printf '  %s\n' "${summary[@]}"
[[ $failed -eq 0 ]] || {
    echo "schemathesis: failures above (rerun with SCHEMATHESIS_SEED=<the Seed printed> to reproduce)" >&2
    exit 1
}
