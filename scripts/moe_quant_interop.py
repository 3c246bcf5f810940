#!/usr/bin/env python3
"""Compare modelgate's MoE quantization with llama.cpp's `llama-quantize`, tensor by tensor
(interop, not CI: needs torch, transformers, llama.cpp's converter and a built
`llama-quantize`).

Two steps, each runnable alone:

1. `make DIR --oracles2 ../shared/oracles2 --llama-cpp L` writes synthetic mixtures of
   experts under DIR, big enough for llama.cpp's MoE type rules to fire: the oracles2
   configs of mixtral (arch `llama` with experts), qwen3moe, deepseek3 (arch `deepseek2`,
   MLA) and gptoss, scaled to 8 experts, 8 layers and widths that are multiples of 256
   (DeepSeek's `qk_nope_head_dim` is 64 so that `attn_k_b` needs a fallback). Weights are
   random from a fixed seed (norms near 1, the rest N(0, 0.08)), saved by transformers in
   f32 and converted by llama.cpp's `convert_hf_to_gguf.py` to `NAME-f16.gguf`. The five
   MoE oracles are converted as they are too.
2. `compare DIR --modelgate BIN --llama-quantize BIN [--types ...]` quantizes each
   `*-f16.gguf` with both tools and compares every tensor: name, type, shape and bytes.
   Prints one JSON line per (model, type) and exits 1 if anything differs.

    T=/work/tools/torch-venv/bin/python L=/path/to/llama.cpp
    $T scripts/moe_quant_interop.py make /tmp/moeq --oracles2 ../shared/oracles2 --llama-cpp $L
    PYTHONPATH=$L/gguf-py $T scripts/moe_quant_interop.py compare /tmp/moeq \\
        --modelgate target/debug/modelgate --llama-quantize build/bin/llama-quantize
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ORACLES = ["mixtral", "qwen2moe", "qwen3moe", "deepseek3", "gptoss"]

MODELS = {
    # name: (oracles2 folder, config changes)
    "mixtral8": ("mixtral", {
        "hidden_size": 256, "intermediate_size": 512, "num_local_experts": 8,
        "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
    }),
    "qwen3moe8": ("qwen3moe", {
        "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256,
        "num_local_experts": 8, "num_experts": 8, "num_hidden_layers": 8,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
    }),
    "deepseek8": ("deepseek3", {
        "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_hidden_layers": 8,
        "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
        "q_lora_rank": 256, "kv_lora_rank": 256, "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 32, "qk_head_dim": 96, "head_dim": 32, "v_head_dim": 64,
        "n_group": 2, "topk_group": 1,
    }),
    "gptoss8": ("gptoss", {
        "hidden_size": 256, "intermediate_size": 256, "num_local_experts": 8,
        "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64,
        "layer_types": ["sliding_attention", "full_attention"] * 4,
    }),
}


def make(args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, (folder, changes) in MODELS.items():
        src = Path(args.oracles2) / folder
        hf = out / name
        if hf.exists():
            shutil.rmtree(hf)
        hf.mkdir()
        for f in src.iterdir():
            if f.name.startswith("tokenizer") or f.name == "generation_config.json":
                shutil.copy(f, hf / f.name)
        cfg = json.loads((src / "config.json").read_text())
        for k, v in changes.items():
            if k in cfg or k not in ("num_experts", "num_local_experts"):
                cfg[k] = v
        (hf / "config.json").write_text(json.dumps(cfg, indent=2))
        config = AutoConfig.from_pretrained(hf)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for pname, p in sorted(model.named_parameters()):
                if "norm" in pname or "layernorm" in pname:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.08 * torch.randn(p.shape, generator=g))
        model.save_pretrained(hf)
        # save_pretrained rewrites config.json without the keys transformers does not
        # know (scoring_func, topk_method): put them back as the oracle has them.
        saved = json.loads((hf / "config.json").read_text())
        for k, v in cfg.items():
            saved.setdefault(k, v)
        (hf / "config.json").write_text(json.dumps(saved, indent=2))
        gguf = out / f"{name}-f16.gguf"
        L = Path(args.llama_cpp)
        subprocess.run(
            [sys.executable, __file__, "convert", str(L), str(hf), str(gguf)],
            check=True,
        )
        print(f"wrote {gguf}")
    # The oracles themselves (4 experts, width 64: most K-quant choices fall back).
    for folder in ORACLES:
        gguf = out / f"{folder}-f16.gguf"
        subprocess.run(
            [sys.executable, __file__, "convert", args.llama_cpp, str(Path(args.oracles2) / folder), str(gguf)],
            check=True,
        )
        print(f"wrote {gguf}")


def convert(args):
    """llama.cpp's converter, with the BPE pre-tokenizer answered "default": the oracles'
    tiny tokenizers are not in llama.cpp's hash list."""
    import runpy

    L = Path(args.llama_cpp)
    sys.path[:0] = [str(L), str(L / "gguf-py")]
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
    sys.argv = [str(L / "convert_hf_to_gguf.py"), args.hf, "--outtype", "f16", "--outfile", args.out]
    runpy.run_path(str(L / "convert_hf_to_gguf.py"), run_name="__main__")


def tensors(path):
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return {
        t.name: (t.tensor_type.name, [int(x) for x in t.shape], bytes(t.data.tobytes()))
        for t in r.tensors
    }


def compare(args):
    d = Path(args.dir)
    bad = 0
    for src in sorted(d.glob("*-f16.gguf")):
        name = src.name[: -len("-f16.gguf")]
        for ty in args.types:
            ours = d / f"{name}-{ty}-modelgate.gguf"
            theirs = d / f"{name}-{ty}-llama.gguf"
            r = subprocess.run([args.llama_quantize, str(src), str(theirs), ty, "2"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(json.dumps({"model": name, "type": ty, "error": "llama-quantize: " + r.stderr[-400:]}))
                bad += 1
                continue
            r = subprocess.run([args.modelgate, "convert", str(src), "-o", str(ours), "--type", ty],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(json.dumps({"model": name, "type": ty, "error": "modelgate: " + r.stderr[-400:]}))
                bad += 1
                continue
            a, b = tensors(ours), tensors(theirs)
            diffs = []
            for n in sorted(set(a) | set(b)):
                if n not in a or n not in b:
                    diffs.append({"tensor": n, "only_in": "modelgate" if n in a else "llama-quantize"})
                elif a[n][:2] != b[n][:2]:
                    diffs.append({"tensor": n, "modelgate": a[n][:2], "llama-quantize": b[n][:2]})
                elif a[n][2] != b[n][2]:
                    diffs.append({"tensor": n, "type": a[n][0], "bytes": "differ"})
            types = sorted({v[0] for v in b.values()})
            print(json.dumps({"model": name, "type": ty, "tensors": len(b), "types": types,
                              "identical": not diffs, "diffs": diffs[:8]}))
            bad += bool(diffs)
            if not args.keep:
                ours.unlink(missing_ok=True)
                theirs.unlink(missing_ok=True)
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--oracles2", required=True)
    m.add_argument("--llama-cpp", required=True)
    k = sub.add_parser("convert", help="(used by make) run llama.cpp's converter on one folder")
    k.add_argument("llama_cpp")
    k.add_argument("hf")
    k.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("dir")
    c.add_argument("--modelgate", required=True)
    c.add_argument("--llama-quantize", required=True)
    c.add_argument("--types", nargs="+", default=["Q8_0", "Q4_K_M", "Q2_K", "Q3_K_M", "MXFP4_MOE"])
    c.add_argument("--keep", action="store_true")
    a = p.parse_args()
    if a.cmd == "make":
        make(a)
        return 0
    if a.cmd == "convert":
        convert(a)
        return 0
    return compare(a)


if __name__ == "__main__":
    sys.exit(main())
