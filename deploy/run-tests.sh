#!/usr/bin/env bash
# Runs the whole test suite and ends with one line of totals over every test binary
# (cargo prints a result line per binary, the last of which may be an empty doc-test run).
set -uo pipefail

cargo="${CARGO:-cargo}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

"$cargo" test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) passed += $(i-1)
            if ($(i) ~ /^failed;?$/) failed += $(i-1)
            if ($(i) ~ /^ignored;?$/) ignored += $(i-1)
        }
     }
     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
