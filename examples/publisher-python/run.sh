#!/usr/bin/env bash
# Runs publish.py in a virtualenv with its requirements, creating the virtualenv
# on first use (default target/publisher-venv at the repository root; override with
# COURIER_PUBLISHER_VENV). Arguments go to publish.py.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${COURIER_PUBLISHER_VENV:-$root/target/publisher-venv}
stamp=$venv/.requirements

if [[ ! -x $venv/bin/python || ! -f $stamp ]] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    # Concurrent first runs take turns creating the virtualenv.
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if [[ ! -x $venv/bin/python || ! -f $stamp ]] || ! cmp -s "$here/requirements.txt" "$stamp"; then
        python3 -m venv "$venv" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
        cp "$here/requirements.txt" "$stamp"
    fi
    flock -u 9
fi
exec "$venv/bin/python" "$here/publish.py" "$@"
