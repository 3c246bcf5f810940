#!/usr/bin/env python3
"""Write a synthetic Qwen3-MoE checkpoint for the MoE throughput benchmark.

The shape follows Qwen3-30B-A3B (128 experts, 8 used per token, expert FFN 768, head
dim 128, 4 KV heads, q/k norms, every layer sparse) scaled down to about 2 B total
parameters: hidden 1024, 7 layers, 16 heads. The vocabulary is the 512-token byte-level
BPE of the `qwen3moe` oracle in ../shared/oracles2 (its tokenizer files are copied), so
the embedding and output matrices are small and the time goes to attention and experts.

Weights are random f16: norms near 1, routers drawn afresh per layer (so routing spreads
over the experts), the other matrices sliced at random offsets from one pool of N(0, 0.02)
values, which keeps generation fast. The values do not matter for throughput.

Usage: make_synth_moe.py ORACLE_DIR OUT_DIR [--layers 7] [--hidden 1024]
Needs numpy only (the oracle venv of scripts/oracle-requirements.txt).
"""

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("oracle", type=Path, help="the qwen3moe oracle folder (tokenizer source)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--used", type=int, default=8)
    ap.add_argument("--expert-ff", type=int, default=768)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    a = ap.parse_args()

    cfg = json.loads((a.oracle / "config.json").read_text())
    vocab = cfg["vocab_size"]
    cfg.update(
        {
            "hidden_size": a.hidden,
            "num_hidden_layers": a.layers,
            "num_attention_heads": a.heads,
            "num_key_value_heads": a.kv_heads,
            "head_dim": a.head_dim,
            "moe_intermediate_size": a.expert_ff,
            "intermediate_size": 6144,
            "num_local_experts": a.experts,
            "num_experts_per_tok": a.used,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "dtype": "float16",
        }
    )

    h, ff, hd = a.hidden, a.expert_ff, a.head_dim
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for layer in range(a.layers):
        p = f"model.layers.{layer}"
        shapes += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (a.heads * hd, h)),
            (f"{p}.self_attn.k_proj.weight", (a.kv_heads * hd, h)),
            (f"{p}.self_attn.v_proj.weight", (a.kv_heads * hd, h)),
            (f"{p}.self_attn.o_proj.weight", (h, a.heads * hd)),
            (f"{p}.self_attn.q_norm.weight", (hd,)),
            (f"{p}.self_attn.k_norm.weight", (hd,)),
            (f"{p}.mlp.gate.weight", (a.experts, h)),
        ]
        for e in range(a.experts):
            q = f"{p}.mlp.experts.{e}"
            shapes += [
                (f"{q}.gate_proj.weight", (ff, h)),
                (f"{q}.up_proj.weight", (ff, h)),
                (f"{q}.down_proj.weight", (h, ff)),
            ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]

    header: dict = {"__metadata__": {"format": "pt"}}
    at = 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [at, at + n]}
        at += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)

    rng = np.random.default_rng(13)
    pool = (rng.standard_normal(1 << 26, dtype=np.float32) * 0.02).astype(np.float16)
    a.out.mkdir(parents=True, exist_ok=True)
    total = 0
    with open(a.out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, shape in shapes:
            n = int(np.prod(shape))
            total += n
            if len(shape) == 1:
                v = (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float16)
            elif name.endswith("mlp.gate.weight"):
                v = (rng.standard_normal(n, dtype=np.float32) * 0.5).astype(np.float16)
            else:
                v = np.empty(n, dtype=np.float16)
                done = 0
                while done < n:
                    take = min(n - done, pool.size // 2)
                    o = int(rng.integers(0, pool.size - take))
                    v[done : done + take] = pool[o : o + take]
                    done += take
            f.write(v.tobytes())
    (a.out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for t in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        if (a.oracle / t).exists():
            shutil.copy(a.oracle / t, a.out / t)
    active = total - a.layers * (a.experts - a.used) * 3 * h * ff
    print(f"{a.out}: {total / 1e9:.2f} B parameters, {active / 1e6:.0f} M active per token")


if __name__ == "__main__":
    main()
