#!/usr/bin/env bash
# Parity at scale (issue 12): wall time and peak RSS of `modelgate parity` on a synthetic
# Llama with TinyLlama-1.1B's shape (F16 GGUF reference against its Q4_K_M), at 22 layers
# (1.1B parameters) and at 4x the layers (4.4B), in both maths, side by side with llama.cpp's
# `llama-perplexity --kl-divergence-base` then `--kl-divergence` on the same files, text,
# context and threads. The checkpoint comes from examples/synth_checkpoint.rs (pseudo-random
# weights, byte-level BPE tokenizer padded to the 32000-token vocabulary); the text is
# fixtures/text/eval.txt cut into CHUNKS chunks of CTX tokens (13 x 256 as in issue 12; the
# byte-level tokenizer gives 34 chunks of 256 from that text). Peak RSS is /usr/bin/time -v's
# "Maximum resident set size".
#
#   benches/parity_memory.sh     # WORK=target/bench-parity LAYERS="22 88" CTX=256 CHUNKS=13 THREADS=2
#                                # LLAMA_BIN=/path/to/llama.cpp/build/bin (llama-perplexity)
#                                # LLAMA_LAYERS="22 88" MATHS="reference native" KEEP=0
#
# Targets: peak RSS at most 1.2 GB in both maths at 22 layers, at most +10 % at 88, and
# wall time no more than llama-perplexity's two runs. The generated files (about 20 GB at
# 88 layers) are deleted at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-target/bench-parity}
LAYERS=${LAYERS:-"22 88"}
CTX=${CTX:-256}
CHUNKS=${CHUNKS:-13}
THREADS=${THREADS:-2}
MATHS=${MATHS:-"reference native"}
LLAMA_BIN=${LLAMA_BIN:-}
LLAMA_LAYERS=${LLAMA_LAYERS:-"$LAYERS"}
KEEP=${KEEP:-0}
TEXT=fixtures/text/eval.txt
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

cargo build --release --quiet --bin modelgate --example synth_checkpoint
BIN=target/release/modelgate
GEN=target/release/examples/synth_checkpoint

peak_kb() { awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$1"; }
wall_s() {
    awk '/Elapsed \(wall clock\)/ {n = split($NF, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"
}
row() { printf '%-7s %-34s %9s %10s  %s\n' "$@"; }

row layers run "wall s" "peak MB" "result"
for layers in $LAYERS; do
    dir="$WORK/synth-$layers"
    f16="$WORK/synth-$layers.F16.gguf"
    q4="$WORK/synth-$layers.Q4_K_M.gguf"
    if [ ! -f "$f16" ]; then
        "$GEN" --out "$dir" --layers "$layers" --shards 1 >/dev/null
        "$BIN" convert "$dir" -o "$f16" --type F16 --threads "$THREADS" --quiet
        rm -rf "$dir"
    fi
    [ -f "$q4" ] || "$BIN" convert "$f16" -o "$q4" --type Q4_K_M --threads "$THREADS" --quiet
    cat "$f16" "$q4" >/dev/null # page cache warm, as for every run below

    for math in $MATHS; do
        t="$WORK/time-$layers-$math.txt"
        /usr/bin/time -v "$BIN" parity "$f16" "$q4" --text "$TEXT" --ctx "$CTX" \
            --chunks "$CHUNKS" --threads "$THREADS" --math "$math" --json --quiet \
            >"$WORK/parity-$layers-$math.json" 2>"$t" || true
        res=$(python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))["summary"]
print("KLD %.6f, top-1 %.4f, PPL ratio %.5f, %d positions" % (v["mean_kld"]["value"], v["same_top1"]["value"], v["ppl_ratio"]["value"], v["positions"]))
' "$WORK/parity-$layers-$math.json" 2>/dev/null || echo "FAILED: $(tail -3 "$t" | head -1)")
        row "$layers" "modelgate parity --math $math" "$(wall_s "$t")" "$(($(peak_kb "$t") / 1000))" "$res"
    done

    if [ -n "$LLAMA_BIN" ] && [[ " $LLAMA_LAYERS " == *" $layers "* ]]; then
        base="$WORK/base-$layers.kld"
        /usr/bin/time -v "$LLAMA_BIN/llama-perplexity" -m "$f16" -f "$TEXT" -c "$CTX" \
            --chunks "$CHUNKS" -t "$THREADS" --kl-divergence-base "$base" \
            >"$WORK/llama-base-$layers.log" 2>&1 || true
        grep -h "Elapsed\|Maximum resident" "$WORK/llama-base-$layers.log" >"$WORK/time-llama-base-$layers.txt" || true
        /usr/bin/time -v "$LLAMA_BIN/llama-perplexity" -m "$q4" -f "$TEXT" -c "$CTX" \
            --chunks "$CHUNKS" -t "$THREADS" --kl-divergence-base "$base" --kl-divergence \
            >"$WORK/llama-kld-$layers.log" 2>&1 || true
        grep -h "Elapsed\|Maximum resident" "$WORK/llama-kld-$layers.log" >"$WORK/time-llama-kld-$layers.txt" || true
        kld=$(grep -m1 "Mean    KLD:" "$WORK/llama-kld-$layers.log" | awk '{print "KLD " $3}' || true)
        w1=$(wall_s "$WORK/time-llama-base-$layers.txt")
        w2=$(wall_s "$WORK/time-llama-kld-$layers.txt")
        row "$layers" "llama-perplexity --kl-divergence-base" "$w1" "$(($(peak_kb "$WORK/time-llama-base-$layers.txt") / 1000))" ""
        row "$layers" "llama-perplexity --kl-divergence" "$w2" "$(($(peak_kb "$WORK/time-llama-kld-$layers.txt") / 1000))" "${kld:-}"
        row "$layers" "llama-perplexity, both runs" "$(python3 -c "print('%.2f' % ($w1 + $w2))")" "" ""
        rm -f "$base"
    fi
done

if [ "$KEEP" != 1 ]; then
    rm -f "$WORK"/synth-*.gguf
fi
