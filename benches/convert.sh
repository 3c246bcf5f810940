#!/usr/bin/env bash
# Conversion throughput and memory on a synthetic checkpoint with TinyLlama-1.1B's shape
# (hidden 2048, 32 heads, 4 KV heads, ffn 5632, vocabulary 32000; bf16 safetensors in
# shards), at 22 layers (2.2 GB) and at 4x the layers (8.8 GB), converted to F16, Q8_0 and
# Q4_K_M. Prints wall time, input GB/s and peak RSS (from /usr/bin/time -v) against the
# targets of issue 3. When llama-cpp-python is installed, also times llama.cpp's own
# quantizer (llama_model_quantize, F16 GGUF -> Q8_0 / Q4_K_M) on the same model and prints
# the ratio.
#
#   benches/convert.sh                 # THREADS=2 WORK=target/bench-convert LAYERS="22 88"
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
WORK=${WORK:-target/bench-convert}
LAYERS=${LAYERS:-"22 88"}
TYPES=${TYPES:-"F16 Q8_0 Q4_K_M"}
mkdir -p "$WORK"

cargo build --release --quiet --bin modelgate --example synth_checkpoint
BIN=target/release/modelgate
GEN=target/release/examples/synth_checkpoint

# Largest tensor: the 32000 x 2048 embedding (and head), in f32.
LARGEST_F32=$((32000 * 2048 * 4))
BUDGET_KB=$(((1024 * 1024 * 1024 + 2 * LARGEST_F32) / 1024))

target_s() {
    case "$1" in
        F16) echo 8 ;;
        Q8_0) echo 7 ;;
        Q4_K_M) echo 32 ;;
    esac
}

have_llama_cpp=0
if python3 -c "import llama_cpp" 2>/dev/null; then have_llama_cpp=1; fi

printf '%-7s %-7s %9s %8s %11s %11s %s\n' layers type "wall s" "GB/s in" "peak RSS" budget verdict
for layers in $LAYERS; do
    dir="$WORK/tinyllama-$layers"
    shards=$((3 * layers / 22))
    [ "$shards" -lt 1 ] && shards=1
    if [ ! -f "$dir/config.json" ]; then
        "$GEN" --out "$dir" --layers "$layers" --shards "$shards" >/dev/null
    fi
    in_bytes=$(cat "$dir"/*.safetensors | wc -c)
    # Warm the page cache so every type reads the input the same way.
    cat "$dir"/*.safetensors >/dev/null
    for t in $TYPES; do
        out="$WORK/out-$layers-$t.gguf"
        rm -f "$out"
        /usr/bin/time -v "$BIN" convert "$dir" -o "$out" --type "$t" --threads "$THREADS" --json \
            >"$WORK/summary-$layers-$t.json" 2>"$WORK/time-$layers-$t.txt"
        wall=$(python3 -c "import json,sys; print('%.2f' % json.load(open(sys.argv[1]))['seconds'])" "$WORK/summary-$layers-$t.json")
        rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/time-$layers-$t.txt")
        gbps=$(python3 -c "print('%.2f' % ($in_bytes / 1e9 / $wall))")
        tgt=$(target_s "$t")
        verdict="ok"
        if python3 -c "import sys; sys.exit(0 if $wall <= $tgt * $layers / 22 else 1)"; then :; else verdict="SLOW (target ${tgt}s per 22 layers)"; fi
        if [ "$rss" -gt "$BUDGET_KB" ]; then verdict="$verdict, RSS over budget"; fi
        printf '%-7s %-7s %9s %8s %8d MiB %7d MiB %s\n' "$layers" "$t" "$wall" "$gbps" $((rss / 1024)) $((BUDGET_KB / 1024)) "$verdict"
    done
    if [ "$have_llama_cpp" = 1 ] && [ -f "$WORK/out-$layers-F16.gguf" ]; then
        for t in Q8_0 Q4_K_M; do
            ftype=$([ "$t" = Q8_0 ] && echo 7 || echo 15)
            /usr/bin/time -v python3 - "$WORK/out-$layers-F16.gguf" "$WORK/llama-$layers-$t.gguf" "$ftype" "$THREADS" \
                >"$WORK/llama-$layers-$t.txt" 2>"$WORK/llama-time-$layers-$t.txt" <<'EOF'
import sys, time, ctypes, llama_cpp
src, dst, ftype, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype
p.nthread = threads
t = time.time()
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
print("%.2f" % (time.time() - t), rc)
EOF
            lwall=$(cut -d' ' -f1 "$WORK/llama-$layers-$t.txt")
            lrss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/llama-time-$layers-$t.txt")
            ours=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['seconds'])" "$WORK/summary-$layers-$t.json")
            ratio=$(python3 -c "print('%.2f' % ($lwall / $ours))")
            printf '%-7s %-7s %9s %8s %8d MiB %11s llama.cpp quantize F16->%s; ratio llama.cpp/modelgate %s\n' \
                "$layers" "$t" "$lwall" "-" $((lrss / 1024)) "" "$t" "$ratio"
            rm -f "$WORK/llama-$layers-$t.gguf"
        done
    fi
    rm -f "$WORK"/out-"$layers"-*.gguf
done
