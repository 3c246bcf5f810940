#!/usr/bin/env bash
# Incremental pipeline runs: the first run of a pipeline into a fresh output folder, then a
# second run with nothing changed (every step cached). Prints both wall times and the
# ratio against the target of issue 7 (second run < 5 % of the first).
#
#   benches/pipeline.sh                      # the example pipeline (tiny-llama)
#   benches/pipeline.sh PIPELINE.yaml        # any pipeline file
#   WORK=target/bench-pipeline benches/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PIPELINE=${1:-fixtures/pipeline/example.yaml}
WORK=${WORK:-target/bench-pipeline}

cargo build --release --quiet --bin modelgate
BIN=target/release/modelgate
rm -rf "$WORK"
mkdir -p "$WORK"

now() { date +%s.%N; }

t0=$(now)
"$BIN" run "$PIPELINE" --out "$WORK/out" >/dev/null 2>"$WORK/first.log" || true
t1=$(now)
"$BIN" run "$PIPELINE" --out "$WORK/out" --log json >/dev/null 2>"$WORK/second.log" || true
t2=$(now)

first=$(echo "$t1 - $t0" | bc -l)
second=$(echo "$t2 - $t1" | bc -l)
ran=$(grep -c '"event":"step-end"' "$WORK/second.log" || true)
cached=$(grep -c '"status":"cached"' "$WORK/second.log" || true)
ratio=$(echo "100 * $second / $first" | bc -l)
verdict=$(echo "$ratio < 5" | bc -l)
printf 'pipeline     %s\n' "$PIPELINE"
printf 'first run    %8.3f s\n' "$first"
printf 'second run   %8.3f s (%s of %s steps cached)\n' "$second" "$cached" "$ran"
printf 'ratio        %8.2f %% (target < 5 %%): %s\n' "$ratio" "$([ "$verdict" = 1 ] && echo met || echo missed)"
