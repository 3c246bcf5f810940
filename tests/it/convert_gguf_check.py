#!/usr/bin/env python3
"""Independent check of a GGUF file modelgate converted from a Hugging Face directory.

Reads the GGUF with the PyPI `gguf` package (gguf-py, llama.cpp's own Python reader) and the
source safetensors with numpy alone, and checks, without any modelgate code:
  - every source tensor is in the GGUF under llama.cpp's name, with the right shape;
  - its values equal the source's after llama.cpp's q/k permutation (exactly for F32, within
    the rounding of F16/BF16, within quantization error for block types, dequantized by
    gguf-py);
  - 1-D tensors are F32; the expected per-tensor type where one is given;
  - the architecture keys equal config.json's values, and the tokenizer keys equal
    tokenizer.json's vocabulary, merges and special tokens.

Usage: convert_gguf_check.py HF_DIR OUT.gguf [EXPECTED_TYPES_JSON]
Prints a JSON report {"ok": bool, "problems": [...], "checked": {...}} on stdout.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

problems = []


def problem(msg):
    problems.append(msg)


def read_safetensors(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = raw[base + start : base + end]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"unexpected dtype {dt}")
        out[name] = (dt, a.reshape(info["shape"]))
    return out


def hf_tensors(d):
    idx = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(read_safetensors(d / f))
    return out


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf):
    stem, kind = hf.rsplit(".", 1)
    if stem in GLOBAL:
        return f"{GLOBAL[stem]}.{kind}"
    _, _, n, rest = stem.split(".", 3)
    return f"blk.{n}.{LAYER[rest]}.{kind}"


def field(r, key):
    f = r.fields.get(key)
    if f is None:
        return None
    return f.contents()


def main():
    hf_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    expected_types = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    cfg = json.loads((hf_dir / "config.json").read_text())
    r = GGUFReader(str(out))
    arch = field(r, "general.architecture")
    cls = cfg["architectures"][0]
    want_arch = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}[cls]
    if arch != want_arch:
        problem(f"general.architecture {arch!r}, expected {want_arch!r}")
    if r.fields["GGUF.version"].contents() != 3:
        problem("not GGUF v3")
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    want_keys = {
        f"{arch}.block_count": cfg["num_hidden_layers"],
        f"{arch}.context_length": cfg["max_position_embeddings"],
        f"{arch}.embedding_length": cfg["hidden_size"],
        f"{arch}.feed_forward_length": cfg["intermediate_size"],
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": n_kv,
    }
    for k, v in want_keys.items():
        if field(r, k) != v:
            problem(f"{k} = {field(r, k)!r}, config.json says {v!r}")
    for k, v in [(f"{arch}.rope.freq_base", theta), (f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])]:
        got = field(r, k)
        if got is None or abs(got - v) > 1e-6 * max(1.0, abs(v)):
            problem(f"{k} = {got!r}, config.json says {v!r}")
    if arch == "llama" and field(r, "llama.rope.dimension_count") != head_dim:
        problem("llama.rope.dimension_count is not the head dimension")

    # Tokenizer.
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    for a in tj.get("added_tokens", []):
        vocab[a["content"]] = a["id"]
    n_vocab = cfg["vocab_size"]
    tokens = field(r, "tokenizer.ggml.tokens")
    if tokens is None or len(tokens) != n_vocab:
        problem(f"tokenizer.ggml.tokens has {None if tokens is None else len(tokens)} entries, expected {n_vocab}")
    else:
        for t, i in vocab.items():
            if tokens[i] != t:
                problem(f"token {i} is {tokens[i]!r}, tokenizer.json says {t!r}")
                break
    merges = field(r, "tokenizer.ggml.merges")
    want_merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    if merges != want_merges:
        problem("tokenizer.ggml.merges differ from tokenizer.json")
    if field(r, "tokenizer.ggml.model") != "gpt2":
        problem("tokenizer.ggml.model is not gpt2")
    if field(r, "tokenizer.ggml.pre") not in ("gpt-2", "smollm", "llama-bpe", "qwen2"):
        problem(f"tokenizer.ggml.pre {field(r, 'tokenizer.ggml.pre')!r} is not a name llama.cpp accepts")
    types = field(r, "tokenizer.ggml.token_type")
    for a in tj.get("added_tokens", []):
        if a.get("special") and types[a["id"]] != 3:
            problem(f"special token {a['content']!r} is not CONTROL")
    tc_path = hf_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    for typ, key in [("bos", "bos_token_id"), ("eos", "eos_token_id")]:
        content = tc.get(f"{typ}_token")
        if isinstance(content, dict):
            content = content.get("content")
        want = vocab.get(content) if content else cfg.get(key)
        if want is not None and field(r, f"tokenizer.ggml.{key}") != want:
            problem(f"tokenizer.ggml.{key} = {field(r, f'tokenizer.ggml.{key}')}, expected {want}")
    if "chat_template" in tc and field(r, "tokenizer.chat_template") != tc["chat_template"]:
        problem("tokenizer.chat_template differs from tokenizer_config.json")

    # Tensors.
    src = hf_tensors(hf_dir)
    gt = {t.name: t for t in r.tensors}
    tied = cfg.get("tie_word_embeddings", False)
    seen = set()
    max_err = {}
    for hf, (dt, a) in src.items():
        if hf == "lm_head.weight" and tied:
            continue
        name = gguf_name(hf)
        seen.add(name)
        t = gt.get(name)
        if t is None:
            problem(f"{hf} -> {name} is missing")
            continue
        ty = t.tensor_type.name
        if name in expected_types and expected_types[name] != ty:
            problem(f"{name} is {ty}, expected {expected_types[name]}")
        if a.ndim == 1 and ty != "F32":
            problem(f"1-D tensor {name} is {ty}, not F32")
        want = a
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            want = permute(a, n_head)
        if arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            want = permute(a, n_kv)
        shape = [int(x) for x in reversed(t.shape)]
        if shape != list(a.shape):
            problem(f"{name} shape {shape}, source {list(a.shape)}")
            continue
        got = dequantize(t.data, t.tensor_type).reshape(a.shape).astype(np.float32)
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 1.0
        max_err[name] = err
        if ty == "F32" and err != 0.0:
            problem(f"{name}: F32 values differ from the source (max {err})")
        elif ty in ("F16", "BF16") and err > scale * (2.0 ** -7):
            problem(f"{name}: {ty} values off by {err}")
        elif ty not in ("F32", "F16", "BF16") and err > scale * 0.6:
            problem(f"{name}: {ty} values off by {err} (max |w| {scale})")
    extra = set(gt) - seen - {"rope_freqs.weight"}
    if extra:
        problem(f"unexpected tensors {sorted(extra)}")
    if ("rope_freqs.weight" in gt) != (rope.get("rope_type") == "llama3" or (cfg.get("rope_scaling") or {}).get("rope_type") == "llama3"):
        problem("rope_freqs.weight present without llama3 scaling, or missing with it")
    report = {
        "ok": not problems,
        "problems": problems,
        "checked": {"tensors": len(seen), "keys": len(r.fields), "types": sorted({t.tensor_type.name for t in r.tensors})},
        "max_abs_error": max(max_err.values()) if max_err else 0.0,
    }
    print(json.dumps(report))


main()
