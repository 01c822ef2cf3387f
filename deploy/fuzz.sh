#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for a bounded time and
# prints, per target, how many inputs it executed and whether it found a crash.
#
# Each target starts from its committed seeds (fuzz/seeds/<target>, replayed
# first, so an input that once crashed stays a regression test) and from the
# local corpus (fuzz/corpus/<target>, not committed). A crash, a leak, a timeout
# or an out-of-memory fails the run; libFuzzer writes the input under
# fuzz/artifacts/<target>/ and the log ends with how to reproduce it.
#
# Runs on the stable toolchain without sanitizers (`-s none`). cargo-fuzz is
# installed into target/tools when it is not on PATH (crates.io only).
#
#   bash deploy/fuzz.sh                      # 60 s per target
#   FUZZ_SECONDS=30 bash deploy/fuzz.sh      # CI
#   FUZZ_TARGETS="ingest_event" bash deploy/fuzz.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo=${CARGO:-cargo}
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-ingest_event webhook_input target_policy sealed_secret batch_codec}
tools=$root/target/tools

log() { echo "fuzz: $*"; }
die() {
    echo "fuzz: $*" >&2
    exit 1
}

[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a whole number of seconds, not '$seconds'"

# cargo-fuzz: on PATH, or installed once under target/tools.
export PATH="$tools/bin:$PATH"
if ! "$cargo" fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz into $tools"
    "$cargo" install cargo-fuzz --locked --root "$tools" ||
        die "cargo install cargo-fuzz failed"
fi
# libFuzzer itself is C++, compiled by libfuzzer-sys.
if ! command -v c++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
    die "a C++ compiler is needed to build libFuzzer: install g++ (apt-get install g++)"
fi
log "$("$cargo" fuzz --version)"

mkdir -p "$root/target"
cd "$root/fuzz"
# One build of every target first, so the time limits below are fuzzing time.
"$cargo" fuzz build -s none || die "building the fuzz targets failed"

summary=()
failed=0
for target in $targets; do
    mkdir -p "corpus/$target" "seeds/$target" "artifacts/$target"
    seeds=$(find "seeds/$target" -type f | wc -l)
    out="$root/target/fuzz-$target.log"
    log "$target: ${seconds}s, replaying $seeds seed(s) first"
    status=0
    "$cargo" fuzz run "$target" "corpus/$target" "seeds/$target" -s none -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$out" 2>&1 || status=$?
    # libFuzzer's own count: the final stats line, else the last `#N` status line.
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$out" | tail -n1)
    if [[ -z $execs ]]; then
        execs=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$out" | tail -n1)
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$out" | tail -n1 || true)
    if [[ $status -eq 0 ]] && [[ -n $done_line ]]; then
        log "$target: $done_line"
        summary+=("$(printf '%-14s %12s executions in %ss, no crash' "$target" "${execs:-?}" "$seconds")")
    else
        failed=1
        echo "---- fuzz: $target failed (exit $status); the end of its log:" >&2
        tail -n 60 "$out" >&2
        echo "----" >&2
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -n1)
        summary+=("$(printf '%-14s %12s executions, FAILED (exit %s)%s' "$target" "${execs:-?}" "$status" \
            "${artifact:+; input: $artifact}")")
    fi
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
    die "a target failed: reproduce with (cd fuzz && cargo fuzz run <target> <input> -s none), then keep the input under fuzz/seeds/<target>/ once fixed"
fi
