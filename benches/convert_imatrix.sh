#!/usr/bin/env bash
# Quantization throughput with an importance matrix, against llama-quantize (issue 15): the
# synthetic TinyLlama-shaped checkpoint of `benches/convert.sh` (examples/synth_checkpoint.rs,
# 22 layers, 1.1 B parameters) is converted once to an F16 GGUF; an imatrix is computed on it
# once with `modelgate imatrix` (fixtures/text/eval.txt, small ctx and chunks: the bench
# measures quantization, not calibration quality); then both tools quantize that same F16
# GGUF with that same imatrix, one after the other, for each type:
#
#   modelgate convert F16.gguf --imatrix I --type T --threads N
#   llama-quantize --imatrix I F16.gguf OUT T N
#
# Prints wall time, CPU time (user + system) and peak RSS (from /usr/bin/time -v) of each,
# the ratio llama-quantize wall time / modelgate wall time (issue 15's target: at least 1.2),
# the same ratio of CPU times, and the load average: on a busy machine wall times mean
# little, and the CPU ratio is the steadier figure (both tools run 2 threads flat out). The F16 GGUF and the imatrix are kept in WORK for
# the next run; the quantized outputs are deleted. `CLEAN=1` deletes WORK at the end.
#
#   benches/convert_imatrix.sh   # THREADS=2 TYPES="Q4_K_M IQ4_XS" RUNS=1 LAYERS=22 WORK=target/bench-convert-imatrix
#   LLAMA_QUANTIZE=/path/to/llama-quantize benches/convert_imatrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
WORK=${WORK:-target/bench-convert-imatrix}
TYPES=${TYPES:-"Q4_K_M IQ4_XS"}
RUNS=${RUNS:-1}
LAYERS=${LAYERS:-22}
LLAMA_QUANTIZE=${LLAMA_QUANTIZE:-/work/tools/llama-build/bin/llama-quantize}
if [ ! -x "$LLAMA_QUANTIZE" ]; then
    LLAMA_QUANTIZE=$(command -v llama-quantize || true)
fi
if [ -z "$LLAMA_QUANTIZE" ]; then
    echo "llama-quantize not found: set LLAMA_QUANTIZE" >&2
    exit 2
fi
mkdir -p "$WORK"

# BIN=path/to/modelgate times another build (the synthetic checkpoint still needs the
# example, unless the F16 GGUF is already in WORK).
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet --bin modelgate --example synth_checkpoint
    BIN=target/release/modelgate
fi
GEN=target/release/examples/synth_checkpoint

f16="$WORK/tinyllama-$LAYERS-f16.gguf"
imatrix="$WORK/tinyllama-$LAYERS-imatrix.gguf"
if [ ! -f "$f16" ]; then
    dir="$WORK/tinyllama-$LAYERS"
    "$GEN" --out "$dir" --layers "$LAYERS" --shards 3 >/dev/null
    "$BIN" convert "$dir" -o "$f16" --type F16 --threads "$THREADS" -q >/dev/null
    rm -rf "$dir"
fi
if [ ! -f "$imatrix" ]; then
    "$BIN" imatrix "$f16" --text fixtures/text/eval.txt --ctx 64 --chunks 2 \
        --threads "$THREADS" -q -o "$imatrix" >/dev/null
fi
# Warm the page cache so both tools read the input the same way.
cat "$f16" >/dev/null

rss_mib() { awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print int($2 / 1024)}' "$1"; }
cpu_s() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s}' "$1"; }
wall_s() {
    awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f", s}' "$1"
}

echo "threads $THREADS, $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-7s %3s | %9s %7s %7s | %9s %7s %7s | %6s %6s | %s\n' type run "ours s" "CPU s" "RSS MiB" \
    "llama s" "CPU s" "RSS MiB" ratio "CPU r" "load (1 min)"
for t in $TYPES; do
    for run in $(seq 1 "$RUNS"); do
        ours="$WORK/ours-$t.gguf"
        theirs="$WORK/llama-$t.gguf"
        rm -f "$ours" "$theirs"
        /usr/bin/time -v "$BIN" convert "$f16" -o "$ours" --type "$t" --imatrix "$imatrix" \
            --threads "$THREADS" -q >/dev/null 2>"$WORK/time-ours.txt" ||
            { cat "$WORK/time-ours.txt" >&2; exit 1; }
        /usr/bin/time -v "$LLAMA_QUANTIZE" --imatrix "$imatrix" "$f16" "$theirs" "$t" "$THREADS" \
            >"$WORK/llama.log" 2>"$WORK/time-llama.txt" ||
            { cat "$WORK/time-llama.txt" >&2; exit 1; }
        ow=$(wall_s "$WORK/time-ours.txt")
        lw=$(wall_s "$WORK/time-llama.txt")
        ratio=$(awk -v l="$lw" -v o="$ow" 'BEGIN { printf "%.2f", l / o }')
        oc=$(cpu_s "$WORK/time-ours.txt")
        lc=$(cpu_s "$WORK/time-llama.txt")
        cratio=$(awk -v l="$lc" -v o="$oc" 'BEGIN { printf "%.2f", l / o }')
        verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 1.2 ? "" : "  BELOW 1.2") }')
        printf '%-7s %3s | %9s %7s %7s | %9s %7s %7s | %6s %6s | %s%s\n' "$t" "$run" \
            "$ow" "$oc" "$(rss_mib "$WORK/time-ours.txt")" "$lw" "$lc" "$(rss_mib "$WORK/time-llama.txt")" \
            "$ratio" "$cratio" "$(cut -d' ' -f1 /proc/loadavg)" "$verdict"
        if [ "${COMPARE:-0}" = 1 ]; then
            # Tensor data must be identical (metadata differs: writer, quantized_by).
            "${PY:-python3}" - "$ours" "$theirs" <<'EOF' || true
import sys
sys.path.insert(0, "/work/tools/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py")
import gguf
a, b = (gguf.GGUFReader(p) for p in sys.argv[1:3])
tb = {t.name: t for t in b.tensors}
diff = [t.name for t in a.tensors if t.name not in tb or bytes(t.data) != bytes(tb[t.name].data)]
print("  tensors differing from llama-quantize:", len(diff), diff[:5])
EOF
        fi
        rm -f "$ours" "$theirs"
    done
done
if [ "${CLEAN:-0}" = 1 ]; then rm -rf "$WORK"; fi
