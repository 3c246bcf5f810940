#!/usr/bin/env python3
"""Interop check (not run in CI): does `modelgate imatrix` compute what `llama-imatrix`
computes, and does `llama-quantize` accept our file?

    scripts/imatrix_capture_interop.py --model MODEL.gguf --text fixtures/text/eval.txt \\
        [--ctx 256] [--chunks N] [--math reference|native] [--reference REF.gguf] \\
        [--modelgate target/debug/modelgate] [--llama-bin DIR] [--work DIR] [--json]

Both tools run on the same model file, text and chunk size (llama-imatrix with
`--output-format gguf`, unless `--reference` gives a file it already wrote with those
settings). Both GGUF files are read with gguf-py (the PyPI `gguf` package) and compared:
the same entry names, shapes and counts, every column's `in_sum2` within `--tolerance`
(relative, default 1e-3) and the `imatrix.*` keys. Then `llama-quantize --imatrix OURS`
quantizes the model to `--type` (default Q4_K_M) and the script records the file's size,
and the same with llama-imatrix's file (the two sizes must be equal; the bytes differ where
the sums do). Exit 0 when everything agrees, 1 otherwise.
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


def read(path):
    r = GGUFReader(path)
    keys = {}
    for k, f in r.fields.items():
        if k.startswith("imatrix.") or k == "general.type":
            keys[k] = f.contents()
    t = {x.name: np.asarray(x.data, dtype=np.float64).reshape(-1) for x in r.tensors}
    entries = {}
    for name in t:
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            entries[base] = (t[name], t[base + ".counts"])
    return keys, entries


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", default=str(ROOT / "fixtures/text/eval.txt"))
    ap.add_argument("--ctx", default="256")
    ap.add_argument("--chunks")
    ap.add_argument("--math", default="reference")
    ap.add_argument("--reference", help="llama-imatrix's file, already made with these settings")
    ap.add_argument("--modelgate", default=str(ROOT / "target/debug/modelgate"))
    ap.add_argument("--llama-bin", default="/work/tools/llama-build/bin")
    ap.add_argument("--work", default=".")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--f32-attention", action="store_true",
                    help="run llama-imatrix with an f32 KV cache and no flash attention "
                         "(-ctk f32 -ctv f32 -fa off): with an F32 model it then computes in f32 throughout")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = {"model": a.model, "text": a.text, "ctx": int(a.ctx), "math": a.math}

    ref = Path(a.reference) if a.reference else work / "llama-imatrix.gguf"
    if not a.reference:
        cmd = [f"{a.llama_bin}/llama-imatrix", "-m", a.model, "-f", a.text, "-c", a.ctx,
               "-t", a.threads, "--output-format", "gguf", "-o", str(ref)]
        if a.chunks:
            cmd += ["--chunks", a.chunks]
        if a.f32_attention:
            cmd += ["-ctk", "f32", "-ctv", "f32", "-fa", "off"]
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out["llama_imatrix_seconds"] = round(time.time() - t0, 2)

    ours = work / "modelgate-imatrix.gguf"
    cmd = [a.modelgate, "imatrix", a.model, "--text", a.text, "--ctx", a.ctx, "-o", str(ours),
           "--math", a.math, "--threads", a.threads, "--quiet", "--json"]
    if a.chunks:
        cmd += ["--chunks", a.chunks]
    t0 = time.time()
    summary = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    out["modelgate_seconds"] = round(time.time() - t0, 2)
    out["modelgate_perplexity"] = summary["perplexity"]

    rk, re_ = read(ref)
    ok_, oe = read(ours)
    problems = []
    for k in ("imatrix.chunk_count", "imatrix.chunk_size"):
        if rk.get(k) != ok_.get(k):
            problems.append(f"{k}: llama {rk.get(k)} ours {ok_.get(k)}")
    missing = sorted(set(re_) - set(oe))
    extra = sorted(set(oe) - set(re_))
    if missing:
        problems.append(f"{len(missing)} entries missing, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} extra entries, e.g. {extra[0]}")
    worst = (0.0, None)
    rels = []
    for name in sorted(set(re_) & set(oe)):
        (rs, rc), (os_, oc) = re_[name], oe[name]
        if rs.shape != os_.shape or not np.array_equal(rc, oc):
            problems.append(f"{name}: shapes {rs.shape}/{os_.shape} or counts {rc}/{oc} differ")
            continue
        rel = np.abs(os_ - rs) / np.maximum(np.abs(rs), np.finfo(np.float32).tiny)
        rels.append(rel)
        m = float(rel.max())
        if m > worst[0]:
            worst = (m, name)
    allrel = np.concatenate(rels) if rels else np.zeros(1)
    out.update({
        "entries": len(re_),
        "columns": int(allrel.size),
        "max_rel_diff": worst[0],
        "max_rel_diff_entry": worst[1],
        "p99_rel_diff": float(np.quantile(allrel, 0.99)),
        "median_rel_diff": float(np.median(allrel)),
        "columns_over_tolerance": int((allrel > a.tolerance).sum()),
    })
    if worst[0] > a.tolerance:
        problems.append(f"max relative difference {worst[0]:.3g} in {worst[1]}")

    sizes = {}
    for who, im in (("modelgate", ours), ("llama", ref)):
        q = work / f"{who}-{a.type}.gguf"
        r = subprocess.run(
            [f"{a.llama_bin}/llama-quantize", "--allow-requantize", "--imatrix", str(im), a.model,
             str(q), a.type, a.threads],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if r.returncode != 0:
            problems.append(f"llama-quantize refused the {who} imatrix: {r.stderr[-300:]}")
            continue
        sizes[who] = q.stat().st_size
        q.unlink()
    out["quantized_bytes"] = sizes
    if len(sizes) == 2 and sizes["modelgate"] != sizes["llama"]:
        problems.append(f"quantized sizes differ: {sizes}")
    out["problems"] = problems
    out["agree"] = not problems
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
