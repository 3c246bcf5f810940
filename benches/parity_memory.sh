#!/usr/bin/env bash
# Parity at scale (issue 12): wall time and peak RSS of `modelgate parity` on a synthetic
# Llama with TinyLlama-1.1B's shape (F16 GGUF reference against its Q4_K_M), at 22 layers
# (1.1B parameters) and at 4x the layers (4.4B), in both maths, side by side with llama.cpp's
# `llama-perplexity --kl-divergence-base` then `--kl-divergence` on the same files, text,
# context and threads. The checkpoint comes from examples/synth_checkpoint.rs (pseudo-random
# weights, byte-level BPE tokenizer padded to the 32000-token vocabulary); the text is
# fixtures/text/eval.txt cut into CHUNKS chunks of CTX tokens (13 x 256 as in issue 12; the
# byte-level tokenizer gives 34 chunks of 256 from that text). Peak RSS is the process's
# maximum resident set size (wait4); "read" is every byte it read (/proc/PID/io rchar, page
# cache or disk) over the size of the two model files, which each run reads once. The
# result column splits our wall time by phase from `--log json`'s `parity-layer` events: the
# reference model through every layer, then the candidate's (the rest is the head and the
# statistics).
#
#   benches/parity_memory.sh     # WORK=target/bench-parity LAYERS="22 88" CTX=256 CHUNKS=13 THREADS=2
#                                # LLAMA_BIN=/path/to/llama.cpp/build/bin (llama-perplexity)
#                                # LLAMA_LAYERS="22 88" MATHS="reference native" KEEP=0
#                                # ROUNDS=1 NO_BUILD=1 (uses target/release as it is)
#
# With ROUNDS > 1 (and LLAMA_BIN) each layer count is measured ROUNDS times, modelgate and
# llama.cpp taking turns to go first (so that a drift of the machine's speed over the run
# does not favour either), and the wall-time ratios are printed per round with their
# median: a ratio from one pair of runs on a shared machine moves by several percent.
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
ROUNDS=${ROUNDS:-1}
TEXT=fixtures/text/eval.txt
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --quiet --bin modelgate --example synth_checkpoint
BIN=target/release/modelgate
GEN=target/release/examples/synth_checkpoint

# run CMD..., stdout to $1 and stderr to $2; prints "wall_s peak_kb rchar" from wait4's
# rusage and the process's /proc/PID/io read just after it exits (before it is reaped), so
# rchar counts every byte the process read, page cache or disk
measure() {
    python3 - "$@" <<'PY'
import os, subprocess, sys, time
out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.monotonic()
with open(out, "wb") as o, open(err, "wb") as e:
    p = subprocess.Popen(cmd, stdout=o, stderr=e)
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    wall = time.monotonic() - t
    io = dict(l.split(": ") for l in open(f"/proc/{p.pid}/io").read().split("\n") if l)
    _, status, ru = os.wait4(p.pid, 0)
print("%.1f %d %s" % (wall, ru.ru_maxrss, io["rchar"]))
PY
}
row() { printf '%-7s %-50s %9s %10s %12s  %s\n' "$@"; }

declare -A WALL
row layers run "wall s" "peak MB" "read/size" "result"
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
    size=$(($(stat -c %s "$f16") + $(stat -c %s "$q4")))
    ratio() { python3 -c "print('%.3f' % ($1 / $size))"; }

    run_ours() {
        for math in $MATHS; do
            read -r wall kb rchar < <(measure "$WORK/parity-$layers-$math.json" "$WORK/parity-$layers-$math.err" \
                "$BIN" parity "$f16" "$q4" --text "$TEXT" --ctx "$CTX" \
                --chunks "$CHUNKS" --threads "$THREADS" --math "$math" --json --log json)
            res=$(python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))["summary"]
ends = {}
for line in open(sys.argv[2]):
    if line.startswith("{"):
        e = json.loads(line)
        if e.get("event") == "parity-layer" and e["layers_done"] == e["layers"]:
            ends[e["model"]] = e["seconds"]
phases = ""
if "reference" in ends and "candidate" in ends:
    phases = " (layers: reference %.1f s, candidate %.1f s)" % (ends["reference"], ends["candidate"] - ends["reference"])
print("KLD %.6f, top-1 %.4f, PPL ratio %.5f, %d positions%s" % (v["mean_kld"]["value"], v["same_top1"]["value"], v["ppl_ratio"]["value"], v["positions"], phases))
' "$WORK/parity-$layers-$math.json" "$WORK/parity-$layers-$math.err" 2>/dev/null || echo "FAILED: $(grep -v "^{" "$WORK/parity-$layers-$math.err" | head -1)")
            WALL["$layers $round $math"]=$wall
            row "$layers" "modelgate parity --math $math$tag" "$wall" "$((kb / 1000))" "$(ratio "$rchar")" "$res"
        done
    }
    run_llama() {
        if [ -n "$LLAMA_BIN" ] && [[ " $LLAMA_LAYERS " == *" $layers "* ]]; then
            base="$WORK/base-$layers.kld"
            read -r w1 kb1 r1 < <(measure /dev/null "$WORK/llama-base-$layers.log" \
                "$LLAMA_BIN/llama-perplexity" -m "$f16" -f "$TEXT" -c "$CTX" \
                --chunks "$CHUNKS" -t "$THREADS" --kl-divergence-base "$base")
            read -r w2 kb2 r2 < <(measure /dev/null "$WORK/llama-kld-$layers.log" \
                "$LLAMA_BIN/llama-perplexity" -m "$q4" -f "$TEXT" -c "$CTX" \
                --chunks "$CHUNKS" -t "$THREADS" --kl-divergence-base "$base" --kl-divergence)
            kld=$(grep -m1 "Mean    KLD:" "$WORK/llama-kld-$layers.log" | awk '{print "KLD " $3}' || true)
            row "$layers" "llama-perplexity --kl-divergence-base$tag" "$w1" "$((kb1 / 1000))" "" ""
            row "$layers" "llama-perplexity --kl-divergence$tag" "$w2" "$((kb2 / 1000))" "" "${kld:-}"
            WALL["$layers $round llama"]=$(python3 -c "print('%.1f' % ($w1 + $w2))")
            row "$layers" "llama-perplexity, both runs$tag" "${WALL["$layers $round llama"]}" "" \
                "$(ratio $((r1 + r2)))" ""
            rm -f "$base"
        fi
    }
    for round in $(seq 1 "$ROUNDS"); do
        tag=""
        [ "$ROUNDS" = 1 ] || tag=" (round $round)"
        if [ $((round % 2)) = 1 ]; then
            run_ours
            run_llama
        else
            run_llama
            run_ours
        fi
    done
    if [ -n "$LLAMA_BIN" ] && [[ " $LLAMA_LAYERS " == *" $layers "* ]]; then
        for math in $MATHS; do
            ratios=""
            for round in $(seq 1 "$ROUNDS"); do
                ratios="$ratios ${WALL["$layers $round $math"]:-nan}/${WALL["$layers $round llama"]}"
            done
            python3 - "$layers" "$math" $ratios <<'PY'
import statistics, sys
layers, math, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
r = [float(a) / float(b) for a, b in (p.split("/") for p in pairs)]
print("%-7s ratio to llama.cpp, %s math: %s; median %.3f" % (layers, math, ", ".join("%.3f" % x for x in r), statistics.median(r)))
PY
        done
    fi
done

if [ "$KEEP" != 1 ]; then
    rm -f "$WORK"/synth-*.gguf
fi
