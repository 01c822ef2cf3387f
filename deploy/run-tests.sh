#!/usr/bin/env bash
# Runs the whole test suite and the README walk-through (tests/walkthrough.py),
# then prints how long each suite (test binary, or the walk-through) took,
# slowest first, and one line of totals over every test binary (cargo prints a
# result line per binary, the last of which may be an empty doc-test run).
set -uo pipefail

cargo="${CARGO:-cargo}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

"$cargo" test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The README's walk-through, run verbatim against the dev services (it needs the
# built binaries, as the end-to-end tests do). Its time and result are written in
# cargo's form so that they count below like any suite.
echo
echo "     Running tests/walkthrough.py" | tee -a "$log"
started=$(date +%s.%N)
python3 "$(dirname "${BASH_SOURCE[0]}")/../tests/walkthrough.py"
walkthrough=$?
seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
if ((walkthrough == 0)); then
    echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in ${seconds}s" | tee -a "$log"
else
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in ${seconds}s" | tee -a "$log"
    status=1
fi

echo
echo "suite times (seconds, slowest first):"
awk '/^ *Running / {
        suite = $2; sub(/^tests\//, "", suite)
        if ($2 == "unittests") { suite = $4; sub(/^.*\//, "", suite); sub(/-[0-9a-f]+\)$/, "", suite); suite = suite " (unit)" }
     }
     /^ *Doc-tests / { suite = "doc-tests " $2 }
     /^test result:/ && suite != "" {
        t = $NF; sub(/s$/, "", t); printf "%9.2f  %s\n", t, suite; suite = ""
     }' "$log" | sort -rn | awk '$1 >= 0.5' | head -40

awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) passed += $(i-1)
            if ($(i) ~ /^failed;?$/) failed += $(i-1)
            if ($(i) ~ /^ignored;?$/) ignored += $(i-1)
        }
     }
     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
