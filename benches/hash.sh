#!/usr/bin/env bash
# Throughput of `modelgate hash` and `modelgate sign` against `openssl dgst -sha256`,
# `sha256sum` and (when installed) the reference `model_signing sign key`, on one big file
# and on a directory of 8 files, all from the page cache.
#
#   benches/hash.sh                # 4 GiB file, 8 x 512 MiB directory, best of 3 runs
#   BENCH_MB=1024 RUNS=5 benches/hash.sh
#
# Targets (issue 6): `hash` on one file >= 1.5x OpenSSL on 2 cores through sharding and no
# slower than OpenSSL on one core; signing a directory faster than `model_signing`.
# Test data lives in $BENCH_DIR (default /tmp/modelgate-bench) and is reused between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

MB=${BENCH_MB:-4096}           # size of the single file, and of the directory in total
RUNS=${RUNS:-3}
DIR=${BENCH_DIR:-/tmp/modelgate-bench}
BIG=$DIR/big.bin
MODEL=$DIR/model8
OUT=$DIR/out
mkdir -p "$DIR" "$OUT"

echo "== building release binary" >&2
cargo build --release --quiet
BIN=$PWD/target/release/modelgate

make_file() { # path size_mb
  local want=$(($2 * 1024 * 1024))
  if [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" != "$want" ]; then
    echo "== writing $1 ($2 MiB of random bytes)" >&2
    # Random bytes, not zeros: a sparse or all-zero file can read faster than real data.
    openssl enc -aes-128-ctr -pass pass:modelgate -nosalt -pbkdf2 </dev/zero 2>/dev/null |
      head -c "$want" >"$1.tmp"
    mv "$1.tmp" "$1"
  fi
}
make_file "$BIG" "$MB"
mkdir -p "$MODEL"
for i in 0 1 2 3 4 5 6 7; do make_file "$MODEL/shard-$i.bin" $((MB / 8)); done
BYTES_BIG=$(stat -c %s "$BIG")
BYTES_DIR=$(du -b --apparent-size -c "$MODEL"/shard-*.bin | tail -1 | cut -f1)
cat "$BIG" "$MODEL"/shard-*.bin >/dev/null # into the page cache

KEY=$OUT/p256.key
[ -f "$KEY" ] || "$BIN" keygen --alg p256 --out "$KEY" >/dev/null

# best wall time of $RUNS runs, in seconds
best() {
  local best="" t0 t1 s
  for _ in $(seq "$RUNS"); do
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$s; fi
  done
  echo "$best"
}

REF=""
row() { # label bytes seconds
  local gbps ratio
  gbps=$(awk -v b="$2" -v s="$3" 'BEGIN { printf "%.2f", b / s / 1e9 }')
  if [ -z "$REF" ]; then REF=$3; fi
  ratio=$(awk -v r="$REF" -v s="$3" 'BEGIN { printf "%.2f", r / s }')
  printf "  %-52s %8.3f s %7s GB/s %6sx\n" "$1" "$3" "$gbps" "$ratio"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg); best of $RUNS runs"
echo "ratio = time of the first row in the section / time of the row (higher is faster)"

echo "one file, $BYTES_BIG bytes:"
REF=""
row "openssl dgst -sha256" "$BYTES_BIG" "$(best openssl dgst -sha256 "$BIG")"
row "sha256sum" "$BYTES_BIG" "$(best sha256sum "$BIG")"
row "modelgate hash (whole file, 1 thread)" "$BYTES_BIG" \
  "$(best "$BIN" hash "$BIG" --quiet --threads 1)"
row "modelgate hash --shard-size 1000000000 (1 thread)" "$BYTES_BIG" \
  "$(best "$BIN" hash "$BIG" --quiet --shard-size 1000000000 --threads 1)"
row "modelgate hash --shard-size 1000000000" "$BYTES_BIG" \
  "$(best "$BIN" hash "$BIG" --quiet --shard-size 1000000000)"
row "modelgate hash --shard-size 268435456" "$BYTES_BIG" \
  "$(best "$BIN" hash "$BIG" --quiet --shard-size 268435456)"

echo "directory of 8 files, $BYTES_DIR bytes:"
REF=""
row "openssl dgst -sha256 (8 files)" "$BYTES_DIR" "$(best openssl dgst -sha256 "$MODEL"/shard-*.bin)"
row "sha256sum (8 files)" "$BYTES_DIR" "$(best sha256sum "$MODEL"/shard-*.bin)"
row "modelgate hash (1 thread)" "$BYTES_DIR" "$(best "$BIN" hash "$MODEL" --quiet --threads 1)"
row "modelgate hash" "$BYTES_DIR" "$(best "$BIN" hash "$MODEL" --quiet)"
row "modelgate sign --alg p256" "$BYTES_DIR" \
  "$(best "$BIN" sign "$MODEL" --key "$KEY" --signature "$OUT/mg.sig" --quiet)"
if python3 -c 'import model_signing' 2>/dev/null; then
  row "model_signing sign key (PyPI model-signing)" "$BYTES_DIR" \
    "$(best python3 -m model_signing sign key "$MODEL" --private_key "$KEY" --signature "$OUT/ms.sig")"
  echo "one file, signing:"
  REF=""
  row "model_signing sign key (PyPI model-signing)" "$BYTES_BIG" \
    "$(best python3 -m model_signing sign key "$BIG" --private_key "$KEY" --signature "$OUT/ms1.sig")"
  row "modelgate sign (whole file)" "$BYTES_BIG" \
    "$(best "$BIN" sign "$BIG" --key "$KEY" --signature "$OUT/mg1.sig" --quiet)"
  row "modelgate sign --shard-size 1000000000" "$BYTES_BIG" \
    "$(best "$BIN" sign "$BIG" --key "$KEY" --signature "$OUT/mg1s.sig" --quiet --shard-size 1000000000)"
else
  echo "  (PyPI model-signing not installed: python3 -m pip install model-signing pyopenssl)"
fi
