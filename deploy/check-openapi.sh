#!/usr/bin/env bash
# Validates proto-schemas/openapi.json as an OpenAPI 3.1 document with
# openapi-spec-validator (installed once into a virtualenv under target/).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/target/py-openapi"
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<1'
fi
"$venv/bin/python" - "$root/proto-schemas/openapi.json" <<'PY'
import sys
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

spec, _ = read_from_filename(sys.argv[1])
validate(spec)
print(f"openapi: {sys.argv[1]} is a valid OpenAPI {spec['openapi']} document ({len(spec['paths'])} paths)")
PY
