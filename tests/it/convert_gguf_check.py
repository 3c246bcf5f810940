#!/usr/bin/env python3
"""Independent check of a GGUF file modelgate converted from a Hugging Face directory.

Reads the GGUF with the PyPI `gguf` package (gguf-py, llama.cpp's own Python reader) and the
source safetensors with numpy alone, and checks, without any modelgate code:
  - every source tensor is in the GGUF under llama.cpp's name, with the right shape
    (Gemma's embedding rows cut to the vocabulary, Gemma 2's lm_head dropped);
  - its values equal the source's after llama.cpp's q/k permutation (llama) or +1 (Gemma's
    RMS norm weights, added in float32) (exactly for F32, within
    the rounding of F16/BF16, within quantization error for block types, dequantized by
    gguf-py);
  - 1-D tensors are F32; the expected per-tensor type where one is given;
  - the architecture keys equal config.json's values (Gemma 2 soft-capping and window, Gemma 3
    global and local RoPE bases, Phi-3 partial rotary, LongRoPE factors and attention factor,
    window 0 for Phi-4), and the tokenizer keys equal tokenizer.json's vocabulary, merges and
    special tokens (when the folder has a tokenizer.json).

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
# Where a family's layer names differ from Llama's (llama.cpp's tensor_mapping.py).
LAYER_BY_ARCH = {
    "gemma2": {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm"},
    "olmo2": {"post_attention_layernorm": "post_attention_norm", "post_feedforward_layernorm": "post_ffw_norm"},
    "phi3": {"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"},
}
LAYER_BY_ARCH["gemma3"] = LAYER_BY_ARCH["gemma2"]
GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
ARCHES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
          "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
          "Olmo2ForCausalLM": "olmo2", "Phi3ForCausalLM": "phi3"}


def gguf_name(hf, arch):
    stem, kind = hf.rsplit(".", 1)
    if stem in GLOBAL:
        return f"{GLOBAL[stem]}.{kind}"
    _, _, n, rest = stem.split(".", 3)
    names = dict(LAYER, **LAYER_BY_ARCH.get(arch, {}))
    return f"blk.{n}.{names[rest]}.{kind}"


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
    want_arch = ARCHES[cls]
    if arch != want_arch:
        problem(f"general.architecture {arch!r}, expected {want_arch!r}")
    if r.fields["GGUF.version"].contents() != 3:
        problem("not GGUF v3")
    rope_all = cfg.get("rope_parameters") or {}
    rope = rope_all.get("full_attention", rope_all)
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
    floats = [(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])]
    absent = []
    if arch == "gemma2":
        # Gemma2Model writes no RoPE base, but both soft-caps and the window.
        absent.append(f"{arch}.rope.freq_base")
        floats += [(f"{arch}.attn_logit_softcapping", cfg["attn_logit_softcapping"]),
                   (f"{arch}.final_logit_softcapping", cfg["final_logit_softcapping"])]
    else:
        floats.append((f"{arch}.rope.freq_base", theta))
    if arch == "gemma3":
        floats.append((f"{arch}.rope.freq_base_swa", rope_all["sliding_attention"]["rope_theta"]))
        absent.append(f"{arch}.attn_logit_softcapping")
        if not cfg.get("final_logit_softcapping"):
            absent.append(f"{arch}.final_logit_softcapping")
    ints = {}
    if arch in ("gemma2", "gemma3"):
        ints[f"{arch}.attention.sliding_window"] = cfg["sliding_window"]
        ints[f"{arch}.attention.key_length"] = cfg["head_dim"]
        ints[f"{arch}.attention.value_length"] = cfg["head_dim"]
    if arch == "phi3":
        partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
        orig = rope.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        ints[f"{arch}.rope.dimension_count"] = int(partial * cfg["hidden_size"]) // n_head
        ints[f"{arch}.rope.scaling.original_context_length"] = orig
        # Phi-4 says null; llama.cpp marks it with 0.
        ints[f"{arch}.attention.sliding_window"] = cfg.get("sliding_window") or 0
        absent += [f"{arch}.attention.key_length", f"{arch}.rope.scaling.type"]
        if rope.get("long_factor"):
            scale = cfg["max_position_embeddings"] / orig
            att = float(np.sqrt(1 + np.log(scale) / np.log(orig))) if scale > 1 else 1.0
            floats.append((f"{arch}.rope.scaling.attn_factor", att))
    for k, v in ints.items():
        if field(r, k) != v:
            problem(f"{k} = {field(r, k)!r}, config.json says {v!r}")
    for k, v in floats:
        got = field(r, k)
        if got is None or abs(got - v) > 1e-6 * max(1.0, abs(v)):
            problem(f"{k} = {got!r}, config.json says {v!r}")
    for k in absent:
        if k in r.fields:
            problem(f"{k} is written; llama.cpp's converter does not write it for {arch}")
    if arch == "llama" and field(r, "llama.rope.dimension_count") != head_dim:
        problem("llama.rope.dimension_count is not the head dimension")
    if arch == "gemma2" or (arch == "gemma3" and (hf_dir / "tokenizer.model").exists()):
        if field(r, "tokenizer.ggml.add_space_prefix") is not False:
            problem("Gemma's SentencePiece vocabulary needs tokenizer.ggml.add_space_prefix = false")

    # Tokenizer, when it came from tokenizer.json (a vocabulary read from a SentencePiece
    # tokenizer.model is checked against the sentencepiece package elsewhere).
    tj_path = hf_dir / "tokenizer.json"
    from_model = (hf_dir / "tokenizer.model").exists() and field(r, "tokenizer.ggml.model") == "llama"
    if tj_path.exists() and not from_model:
        check_tokenizer(r, cfg, hf_dir, json.loads(tj_path.read_text()))
    check_tensors(r, cfg, hf_dir, arch, expected_types, rope, n_head, n_kv)


def check_tokenizer(r, cfg, hf_dir, tj):
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
    # A SentencePiece-style BPE (byte fallback, no ByteLevel) becomes llama.cpp's `llama`
    # vocabulary; a byte-level one `gpt2` with its merges.
    spm = bool(tj["model"].get("byte_fallback"))
    if spm:
        if field(r, "tokenizer.ggml.model") != "llama":
            problem("tokenizer.ggml.model is not llama for a byte-fallback BPE")
    else:
        merges = field(r, "tokenizer.ggml.merges")
        want_merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
        if merges != want_merges:
            problem("tokenizer.ggml.merges differ from tokenizer.json")
        if field(r, "tokenizer.ggml.model") != "gpt2":
            problem("tokenizer.ggml.model is not gpt2")
        if field(r, "tokenizer.ggml.pre") not in ("gpt-2", "smollm", "llama-bpe", "qwen2", "falcon3"):
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


def check_tensors(r, cfg, hf_dir, arch, expected_types, rope, n_head, n_kv):
    src = hf_tensors(hf_dir)
    gt = {t.name: t for t in r.tensors}
    # Gemma 2's converter drops lm_head whatever the config says.
    tied = cfg.get("tie_word_embeddings", False) or arch == "gemma2"
    n_tokens = len(field(r, "tokenizer.ggml.tokens") or [])
    seen = set()
    max_err = {}
    for hf, (dt, a) in src.items():
        if hf == "lm_head.weight" and tied:
            continue
        name = gguf_name(hf, arch)
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
        if arch in ("gemma2", "gemma3") and hf.endswith("norm.weight"):
            want = a.astype(np.float32) + np.float32(1.0)
        if arch == "gemma3" and name == "token_embd.weight" and 0 < n_tokens < a.shape[0]:
            want = a[:n_tokens]
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            want = permute(a, n_head)
        if arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            want = permute(a, n_kv)
        shape = [int(x) for x in reversed(t.shape)]
        if shape != list(want.shape):
            problem(f"{name} shape {shape}, source {list(want.shape)}")
            continue
        got = dequantize(t.data, t.tensor_type).reshape(want.shape).astype(np.float32)
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 1.0
        max_err[name] = err
        if ty == "F32" and err != 0.0:
            problem(f"{name}: F32 values differ from the source (max {err})")
        elif ty in ("F16", "BF16") and err > scale * (2.0 ** -7):
            problem(f"{name}: {ty} values off by {err}")
        elif ty not in ("F32", "F16", "BF16") and err > scale * 0.6:
            problem(f"{name}: {ty} values off by {err} (max |w| {scale})")
    extra = set(gt) - seen - {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}
    if extra:
        problem(f"unexpected tensors {sorted(extra)}")
    if arch == "phi3" and rope.get("long_factor"):
        for key, name in [("long_factor", "rope_factors_long.weight"), ("short_factor", "rope_factors_short.weight")]:
            t = gt.get(name)
            want = np.array(rope[key], dtype=np.float32)
            if t is None or t.tensor_type.name != "F32" or t.data.tobytes() != want.tobytes():
                problem(f"{name} is not config.json's {key} as float32")
    elif "rope_factors_long.weight" in gt:
        problem("rope_factors_long.weight without LongRoPE factors in config.json")
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
