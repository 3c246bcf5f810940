#!/usr/bin/env bash
# Quantization quality with an importance matrix against llama.cpp's (not run in CI; issue
# 15's acceptance): SmolLM2's Q4_1 dequantized to F16 by llama-quantize, then
#   - llama.cpp: `llama-imatrix` on the calibration text (ctx 256), `llama-quantize --imatrix`;
#   - modelgate: `modelgate imatrix` on the same text and ctx, `modelgate convert --imatrix`
#     with modelgate's own file;
# for each type, both scored by `llama-perplexity --kl-divergence` against the F16 (ctx 512)
# on the calibration text itself and on a held-out text. The bar: for every type and text,
# modelgate's mean KLD is no worse than llama.cpp's plus one standard error, at a file size
# no larger.
#
#   benches/imatrix_kld.sh      # TYPES="Q4_K_M IQ4_XS Q3_K_M IQ3_S Q2_K IQ2_XS"
#                               # LLAMA_BIN=/work/tools/llama-build/bin PY=/work/tools/llama-venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-target/bench-imatrix-kld}
TYPES=${TYPES:-"Q4_K_M IQ4_XS Q3_K_M IQ3_S Q2_K IQ2_XS"}
. benches/smollm2_f16.sh
llama_imatrix lc-imatrix.gguf
start=$(date +%s.%N)
"$BIN" imatrix "$WORK/f16.gguf" --text "$CALIB" --ctx 256 -o "$WORK/mg-imatrix.gguf" --quiet >/dev/null
end=$(date +%s.%N)
echo "modelgate imatrix took $(echo "$end - $start" | bc) s" >&2

texts="calibration:$CALIB heldout:$HELDOUT"
for nt in $texts; do
    name=${nt%%:*} text=${nt#*:}
    "$LLAMA_BIN/llama-perplexity" -m "$WORK/f16.gguf" -f "$text" -c 512 -t "$THREADS" \
        --kl-divergence-base "$WORK/base-$name.kld" >"$WORK/base-$name.log" 2>&1
done

# "mean-KLD SE same-top-1% SE" of model $1 on text $2
score() {
    local log="$1.$2.kld.log"
    "$LLAMA_BIN/llama-perplexity" -m "$1" -f "${3}" -c 512 -t "$THREADS" \
        --kl-divergence-base "$WORK/base-$2.kld" --kl-divergence >"$log" 2>&1
    echo "$(grep -E "^Mean +KLD:" "$log" | awk '{print $3, $5}') $(grep -E "^Same top p:" "$log" | awk '{print $4, $6}')"
}

printf '%-8s %-11s %10s %10s %22s %22s %s\n' type text "mg bytes" "lc bytes" "modelgate KLD ± SE" "llama.cpp KLD ± SE" verdict
fail=0
for t in $TYPES; do
    "$BIN" convert "$WORK/f16.gguf" -o "$WORK/mg-$t.gguf" --type "$t" --imatrix "$WORK/mg-imatrix.gguf" \
        --threads "$THREADS" --quiet >/dev/null
    "$LLAMA_BIN/llama-quantize" --imatrix "$WORK/lc-imatrix.gguf" "$WORK/f16.gguf" "$WORK/lc-$t.gguf" "$t" "$THREADS" \
        >"$WORK/lc-$t.log" 2>&1
    msize=$(stat -c %s "$WORK/mg-$t.gguf")
    lsize=$(stat -c %s "$WORK/lc-$t.gguf")
    for nt in $texts; do
        name=${nt%%:*} text=${nt#*:}
        read -r mk mse mtop mtse <<<"$(score "$WORK/mg-$t.gguf" "$name" "$text")"
        read -r lk lse ltop ltse <<<"$(score "$WORK/lc-$t.gguf" "$name" "$text")"
        verdict=$("$PY" -c "print('ok' if $mk <= $lk + $lse and $msize <= $lsize else 'WORSE')")
        [ "$verdict" = ok ] || fail=1
        printf '%-8s %-11s %10s %10s %10s ± %-9s %10s ± %-9s %s (top-1 %s %% vs %s %%)\n' \
            "$t" "$name" "$msize" "$lsize" "$mk" "$mse" "$lk" "$lse" "$verdict" "$mtop" "$ltop"
    done
done
exit "$fail"
