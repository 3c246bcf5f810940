#!/usr/bin/env python3
"""Interop check (not run in CI): do GGUF files written by `modelgate convert` run in
llama.cpp and reproduce transformers' logits?

For every forward-pass oracle (tiny llama, llama3-rope-scaled, mistral, qwen2, qwen3 with
transformers' logits in expected.safetensors), convert it with modelgate to GGUF F32, F16
and Q8_0, evaluate the oracle's 48 input ids with llama.cpp (through llama-cpp-python) and
compare every position's logits with transformers'. Issue 3's bar: no worse than 1.2x what
llama.cpp's own converter achieves on these oracles (max |delta logit| 1.0e-3..1.5e-3 for F32,
2.0e-3..3.5e-3 for F16, 0.065..0.076 for Q8_0; llama.cpp keeps the KV cache in f16 and
quantizes activations for Q8_0), i.e. at most 1.8e-3, 4.2e-3 and 0.0912.

    pip install llama-cpp-python        # CMAKE_ARGS=-DGGML_NATIVE=OFF on this kind of machine
    scripts/llama_cpp_interop.py [--modelgate target/release/modelgate] [--oracles DIR] [--json]

Exit status 0 when every case is within its bound, 1 otherwise, 2 when llama-cpp-python is
missing.
"""

import argparse
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BOUNDS = {"F32": 1.5e-3 * 1.2, "F16": 3.5e-3 * 1.2, "Q8_0": 0.076 * 1.2}
LLAMA_CPP_OWN = {"F32": "1.0e-3..1.5e-3", "F16": "2.0e-3..3.5e-3", "Q8_0": "0.065..0.076"}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        dt = {"F32": "<f4", "I64": "<i8", "F16": "<f2"}[info["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + s : 8 + n + e], dtype=dt).reshape(info["shape"])
    return out


def find_modelgate(given):
    if given:
        return given
    for p in ("target/release/modelgate", "target/debug/modelgate"):
        if (ROOT / p).exists():
            return str(ROOT / p)
    sys.exit("error: no modelgate binary; build it or pass --modelgate")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modelgate")
    ap.add_argument("--oracles", default="/work/shared/oracles")
    ap.add_argument("--types", default="F32,F16,Q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("error: llama-cpp-python is not installed (pip install llama-cpp-python)", file=sys.stderr)
        return 2
    mg = find_modelgate(args.modelgate)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for oracle in sorted(p for p in Path(args.oracles).iterdir() if (p / "expected.safetensors").exists()):
            exp = read_safetensors(oracle / "expected.safetensors")
            ids = [int(i) for i in exp["input_ids"][0]]
            want = exp["logits"][0].astype(np.float64)
            for ty in args.types.split(","):
                out = Path(tmp) / f"{oracle.name}-{ty}.gguf"
                conv = subprocess.run([mg, "convert", str(oracle), "-o", str(out), "--type", ty, "--quiet", "--json"],
                                      capture_output=True, text=True)
                if conv.returncode != 0:
                    rows.append({"oracle": oracle.name, "type": ty, "error": conv.stderr.strip()})
                    continue
                llm = llama_cpp.Llama(model_path=str(out), n_ctx=len(ids) + 8, n_batch=len(ids), logits_all=True,
                                      n_threads=args.threads, verbose=False, seed=0)
                llm.reset()
                llm.eval(ids)
                got = np.array(llm.scores[: len(ids)], dtype=np.float64)
                delta = np.abs(got - want)
                rows.append({
                    "oracle": oracle.name, "type": ty,
                    "max_abs_delta": float(delta.max()),
                    "mean_abs_delta": float(delta.mean()),
                    "argmax_agree": float(np.mean(got.argmax(-1) == want.argmax(-1))),
                    "bound": BOUNDS[ty],
                    "ok": bool(delta.max() <= BOUNDS[ty]),
                })
                del llm
    if args.json:
        print(json.dumps({"llama_cpp_python": llama_cpp.__version__, "results": rows}, indent=2))
    else:
        print(f"llama-cpp-python {llama_cpp.__version__}; bound = 1.2 x llama.cpp's own converter on these oracles")
        print(f"{'oracle':<20} {'type':<5} {'max|dlogit|':>12} {'mean':>10} {'top-1':>6} {'bound':>8}  llama.cpp's own  verdict")
        for r in rows:
            if "error" in r:
                print(f"{r['oracle']:<20} {r['type']:<5} conversion failed: {r['error']}")
                continue
            print(f"{r['oracle']:<20} {r['type']:<5} {r['max_abs_delta']:>12.3e} {r['mean_abs_delta']:>10.2e} "
                  f"{r['argmax_agree']:>6.1%} {r['bound']:>8.2e}  {LLAMA_CPP_OWN[r['type']]:<15}  {'ok' if r['ok'] else 'OVER'}")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
