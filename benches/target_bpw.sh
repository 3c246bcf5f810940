#!/usr/bin/env bash
# Size-budget mix against llama.cpp's Q4_K_M (not run in CI; issue 15's acceptance):
# SmolLM2's Q4_1 dequantized to F16 by llama-quantize, llama-imatrix on
# fixtures/text/eval.txt (ctx 256), then
#   - llama-quantize --imatrix ... Q4_K_M
#   - modelgate convert --target-bpw <that file's bits per weight> --imatrix ... --text eval.txt
# and both scored by `llama-perplexity --kl-divergence` against the F16 on a held-out text
# (fixtures/text/heldout.txt, ctx 512). The bar: our mean KLD at most 0.8x llama.cpp's.
#
#   benches/target_bpw.sh        # LLAMA_BIN=/work/tools/llama-build/bin PY=/work/tools/llama-venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-target/bench-target-bpw}
. benches/smollm2_f16.sh
llama_imatrix imatrix.gguf
"$LLAMA_BIN/llama-quantize" --imatrix "$WORK/imatrix.gguf" "$WORK/f16.gguf" "$WORK/lc-q4km.gguf" Q4_K_M "$THREADS" >"$WORK/lc.log" 2>&1

# Bits per weight as modelgate prints it: tensor data bits over parameters.
bpw=$("$PY" - "$WORK/lc-q4km.gguf" <<'EOF'
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
print("%.4f" % (8 * sum(int(t.n_bytes) for t in r.tensors) / sum(int(t.n_elements) for t in r.tensors)))
EOF
)
echo "llama.cpp Q4_K_M with imatrix: $bpw bits per weight"

start=$(date +%s.%N)
"$BIN" convert "$WORK/f16.gguf" -o "$WORK/mg-budget.gguf" --target-bpw "$bpw" \
    --imatrix "$WORK/imatrix.gguf" --text "$CALIB" --threads "$THREADS" --quiet >"$WORK/mg-budget.txt"
end=$(date +%s.%N)
cat "$WORK/mg-budget.txt"
echo "modelgate convert --target-bpw took $(echo "$end - $start" | bc) s"

"$LLAMA_BIN/llama-perplexity" -m "$WORK/f16.gguf" -f "$HELDOUT" -c 512 -t "$THREADS" \
    --kl-divergence-base "$WORK/base.kld" >"$WORK/base.log" 2>&1
score() {
    "$LLAMA_BIN/llama-perplexity" -m "$1" -f "$HELDOUT" -c 512 -t "$THREADS" \
        --kl-divergence-base "$WORK/base.kld" --kl-divergence >"$1.kld.log" 2>&1
    kld=$(grep -E "^Mean +KLD:" "$1.kld.log" | awk '{print $3, $5}')
    top=$(grep -E "^Same top p:" "$1.kld.log" | awk '{print $4, $6}')
    size=$(stat -c %s "$1")
    echo "$kld $top $size"
}
read -r lk lse ltop ltse lsize <<<"$(score "$WORK/lc-q4km.gguf")"
read -r mk mse mtop mtse msize <<<"$(score "$WORK/mg-budget.gguf")"
printf '%-28s %12s %18s %14s\n' file bytes "mean KLD ± SE" "same top-1 %"
printf '%-28s %12s %10s ± %s %8s ± %s\n' "llama.cpp Q4_K_M imatrix" "$lsize" "$lk" "$lse" "$ltop" "$ltse"
printf '%-28s %12s %10s ± %s %8s ± %s\n' "modelgate --target-bpw $bpw" "$msize" "$mk" "$mse" "$mtop" "$mtse"
"$PY" -c "import sys; r=$mk/$lk; print('ratio %.3f: %s' % (r, 'ok (<= 0.8)' if r <= 0.8 else 'ABOVE 0.8'))"
