#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/fuzz_targets for SECONDS each (default 30), one after
# another. Exit 0 when no target found a crash, 1 when one did (its input is saved under
# fuzz/artifacts/TARGET/), 2 when fuzzing could not run.
#
#   scripts/fuzz.sh [SECONDS]
#
# Corpora grow in fuzz/corpus/TARGET/ (git-ignored); fixtures/hostile/TARGET/, when it
# exists, seeds them. Every target runs with -malloc_limit_mb=512, so a parser that allocates
# what a hostile header claims counts as a crash even when the machine has the memory.
set -euo pipefail

secs="${1:-30}"
case "$secs" in
    '' | *[!0-9]*) echo "error: SECONDS must be a whole number, got \`$secs\`" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is not installed" >&2
    echo "hint: cargo install cargo-fuzz" >&2
    exit 2
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP lets a stable
# toolchain accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1

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
    if ! cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" -malloc_limit_mb=512 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1; then
        echo "error: fuzz target \`$target\` failed; crashing input in fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
