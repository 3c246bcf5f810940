#!/usr/bin/env bash
# Mixture-of-experts prompt evaluation, modelgate against llama.cpp on the same GGUF (issue
# 13: modelgate at least 0.8x llama.cpp). scripts/make_synth_moe.py writes a synthetic
# Qwen3-MoE checkpoint shaped like Qwen3-30B-A3B scaled to 2.15 B parameters (hidden 1024,
# 7 layers, 128 experts of FFN 768, 8 used, 171 M active per token), modelgate converts it to
# Q4_K_M GGUF, then on that one file:
#   - modelgate: `logits --ids-file` over a 512-token prompt (one forward pass, last logits),
#     native math (quantized matmul, as llama.cpp runs) and reference math; prompt time is
#     the wall time less the load time the command prints, median of RUNS;
#   - llama.cpp: `llama-bench -p 512 -n 0 -t THREADS` (RUNS repetitions, its mean).
# The work folder (4.3 GB of f16 safetensors, 1.3 GB of GGUF) is deleted at the end unless
# KEEP=1; a kept GGUF is reused by the next run.
#
#   benches/moe_throughput.sh     # THREADS=2 RUNS=3 TYPE=Q4_K_M WORK=target/bench-moe
#                                 # LLAMA_BENCH=/work/tools/llama-build/bin/llama-bench
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
TYPE=${TYPE:-Q4_K_M}
WORK=${WORK:-target/bench-moe}
PROMPT=512
LLAMA_BENCH=${LLAMA_BENCH:-/work/tools/llama-build/bin/llama-bench}
ORACLE=${ORACLE:-${MODELGATE_ORACLES2:-../shared/oracles2}/qwen3moe}
PYTHON=${PYTHON:-$(ls target/oracle-venv-*/bin/python 2>/dev/null | head -1)}
if [ -z "$PYTHON" ]; then PYTHON=python3; fi

mkdir -p "$WORK"
cleanup() { if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

cargo build --release --quiet --bin modelgate
BIN=target/release/modelgate

GGUF="$WORK/synth-$TYPE.gguf"
# with KEEP=1 a second run reuses the GGUF of the first
if [ ! -f "$GGUF" ]; then
    if [ ! -f "$WORK/synth/model.safetensors" ]; then
        "$PYTHON" scripts/make_synth_moe.py "$ORACLE" "$WORK/synth"
    fi
    start=$(date +%s.%N)
    "$BIN" convert "$WORK/synth" -o "$GGUF" --type "$TYPE" --threads "$THREADS" --quiet
    end=$(date +%s.%N)
    echo "convert to $TYPE: $(echo "$end - $start" | bc) s, $(du -h "$GGUF" | cut -f1)"
    rm -rf "$WORK/synth"
fi

# 512 token ids of the 512-token vocabulary, spread over it
seq 0 $((PROMPT - 1)) | awk '{ printf "%d ", ($1 * 37 + 11) % 509 + 3 }' > "$WORK/ids.txt"

# prompt seconds of one `logits` run: wall time less the load time printed on stderr
prompt_seconds() {
    local math=$1 t0 t1 load
    t0=$(date +%s.%N)
    "$BIN" logits "$GGUF" --ids-file "$WORK/ids.txt" --math "$math" --threads "$THREADS" \
        --top 1 > /dev/null 2> "$WORK/stderr.txt"
    t1=$(date +%s.%N)
    load=$(sed -n 's/.*(\([0-9.]*\) s)$/\1/p' "$WORK/stderr.txt" | head -1)
    echo "$t1 - $t0 - ${load:-0}" | bc -l
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

llama_json=$("$LLAMA_BENCH" -m "$GGUF" -p "$PROMPT" -n 0 -t "$THREADS" -r "$RUNS" -o json 2>/dev/null)
llama_tps=$(echo "$llama_json" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)[0]["avg_ts"])')
llama_sd=$(echo "$llama_json" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)[0]["stddev_ts"])')

echo "model: $GGUF ($TYPE), prompt $PROMPT tokens, $THREADS threads, $RUNS runs"
printf '%-28s %14s %10s\n' engine "prompt tok/s" "x llama"
printf '%-28s %14.1f %10s\n' "llama.cpp llama-bench" "$llama_tps" "1.00 (sd $(printf '%.1f' "$llama_sd"))"
for math in native reference; do
    s=$(for _ in $(seq "$RUNS"); do prompt_seconds "$math"; done | median)
    tps=$(echo "$PROMPT / $s" | bc -l)
    printf '%-28s %14.1f %10.2f\n' "modelgate --math $math" "$tps" "$(echo "$tps / $llama_tps" | bc -l)"
done
echo "target (issue 13): modelgate prompt eval >= 0.80x llama.cpp"
