#!/usr/bin/env bash
# Run courier-gateway and courier-worker together in the dev profile.
#
#   COURIER_BIN_DIR            where the binaries are (default target/debug of this checkout,
#                              or $CARGO_TARGET_DIR/debug)
#   COURIER_GATEWAY_ADDR       default 127.0.0.1:8080
#   COURIER_WORKER_ADMIN_ADDR  default 127.0.0.1:9090
#   COURIER_ADMIN_TOKEN        default dev-admin-token
#   COURIER_PREFIX             default courier-dev. (every queue, exchange and Redis
#                              key of the dev services starts with it; `make reset`
#                              removes them); set it empty for none
#
# Ctrl-C or SIGTERM stops both and exits 0 once both have stopped. If one of them
# exits on its own, the other is stopped and the script exits with the status of
# the first. A second Ctrl-C or SIGTERM while they shut down kills them. If this
# script is killed outright (SIGKILL), the services get SIGTERM from the kernel
# (when setpriv is installed).
#
# From a script, stop it with SIGTERM: a job a script starts in the background
# ignores SIGINT (the shell sets it up so), and so would `make run`, which
# passes SIGTERM on to this script and waits for it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    default_bin_dir=$CARGO_TARGET_DIR/debug
else
    default_bin_dir=$root/target/debug
fi
bin_dir=${COURIER_BIN_DIR:-$default_bin_dir}

export COURIER_PROFILE=dev
export COURIER_GATEWAY_ADDR=${COURIER_GATEWAY_ADDR:-127.0.0.1:8080}
export COURIER_WORKER_ADMIN_ADDR=${COURIER_WORKER_ADMIN_ADDR:-127.0.0.1:9090}
export COURIER_ADMIN_TOKEN=${COURIER_ADMIN_TOKEN:-dev-admin-token}
export COURIER_PREFIX=${COURIER_PREFIX-courier-dev.}

for name in courier-gateway courier-worker; do
    if [[ ! -x $bin_dir/$name ]]; then
        printf 'run-dev: %s/%s not found; build it with: make build (cargo build --bins)\n' "$bin_dir" "$name" >&2
        exit 1
    fi
done

gateway_pid="" worker_pid="" stopping=0

stop_children() { # stop_children SIGNAL
    local pid
    for pid in $gateway_pid $worker_pid; do
        kill -"$1" "$pid" 2>/dev/null || true
    done
}

on_signal() {
    if ((stopping)); then
        printf '\nrun-dev: stopping again; killing gateway and worker\n' >&2
        stop_children KILL
    else
        stopping=1
        printf '\nrun-dev: stopping gateway and worker\n' >&2
        stop_children TERM
    fi
}

trap on_signal INT TERM
# whatever happens to this script, do not leave the services behind
trap 'stop_children TERM' EXIT

# The services get SIGTERM when this script dies, however it dies.
if command -v setpriv >/dev/null 2>&1 && setpriv --pdeathsig TERM true 2>/dev/null; then
    with_parent=(setpriv --pdeathsig TERM)
else
    with_parent=()
fi

"${with_parent[@]}" "$bin_dir/courier-gateway" &
gateway_pid=$!
"${with_parent[@]}" "$bin_dir/courier-worker" &
worker_pid=$!

cat <<EOF
Courier is running (profile: dev)
  API          http://$COURIER_GATEWAY_ADDR
  admin token  $COURIER_ADMIN_TOKEN
  worker admin http://$COURIER_WORKER_ADMIN_ADDR
  prefix       ${COURIER_PREFIX:-(none)} (make reset removes its queues and keys)
  gateway pid $gateway_pid, worker pid $worker_pid
Ctrl-C (or SIGTERM to pid $$) stops both.
EOF

alive() { kill -0 "$1" 2>/dev/null; }

# Wait until a child exits or a signal arrives (a trapped signal interrupts wait).
status=0
while :; do
    status=0
    wait -n || status=$?
    if ((stopping)); then
        break
    fi
    if ! alive "$gateway_pid" || ! alive "$worker_pid"; then
        break
    fi
done

if ((stopping)); then
    # shutdown asked for: wait for both, then exit 0
    for pid in $gateway_pid $worker_pid; do
        while alive "$pid"; do wait "$pid" 2>/dev/null || true; done
    done
    trap - EXIT
    exit 0
fi

# one child exited on its own: report it, stop the other one, exit with its status
if ! alive "$gateway_pid"; then
    first=courier-gateway other=$worker_pid
else
    first=courier-worker other=$gateway_pid
fi
printf 'run-dev: %s exited with status %d; stopping the other service\n' "$first" "$status" >&2
stopping=1
kill -TERM "$other" 2>/dev/null || true
while alive "$other"; do wait "$other" 2>/dev/null || true; done
trap - EXIT
exit "$status"
