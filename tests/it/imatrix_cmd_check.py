"""Oracle for `modelgate imatrix` (tests/it/imatrix_cmd.rs): read the GGUF imatrix with
gguf-py and recompute every entry with an independent numpy forward pass of a Llama
checkpoint in f64.

    python imatrix_cmd_check.py MODEL_DIR IMATRIX.gguf CHUNKS.json

CHUNKS.json is a list of token-id lists (the chunks the command ran). The model directory
holds `config.json` and an f32 `model.safetensors` with Hugging Face names (read here by
hand: 8-byte header length, JSON header, raw little-endian data). The forward pass is
transformers' Llama: RMS norm, rotate-half RoPE, grouped-query causal attention, SiLU
gated feed-forward. Prints JSON: the `imatrix.*` keys, each entry's shape and counts as
gguf-py reads them, and each entry's largest relative difference from numpy's sums.
"""

import json
import struct
import sys

import numpy as np
from gguf import GGUFReader


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", name
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"]).astype(np.float64)
    return out


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, pos, theta):
    # x [n, heads, d], rotate-half layout
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.outer(pos, inv)
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    half = d // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def sums(model_dir, chunks):
    cfg = json.load(open(f"{model_dir}/config.json"))
    w = load_safetensors(f"{model_dir}/model.safetensors")
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    acc = {}

    def see(name, x):
        acc.setdefault(name, 0.0)
        acc[name] = acc[name] + (x * x).sum(0)

    for ids in chunks:
        n = len(ids)
        x = w["model.embed_tokens.weight"][ids]
        pos = np.arange(n)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            g = f"blk.{i}."
            h = rms(x, w[p + "input_layernorm.weight"], eps)
            for s in ("attn_q", "attn_k", "attn_v"):
                see(g + s + ".weight", h)
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd)
            q, k = rope(q, pos, theta), rope(k, pos, theta)
            rep = nh // nkv
            k = np.repeat(k, rep, axis=1)
            v = np.repeat(v, rep, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
            s = s + np.triu(np.full((n, n), -np.inf), 1)
            s = np.exp(s - s.max(-1, keepdims=True))
            s = s / s.sum(-1, keepdims=True)
            a = np.einsum("hqk,khd->qhd", s, v).reshape(n, nh * hd)
            see(g + "attn_output.weight", a)
            x = x + a @ w[p + "self_attn.o_proj.weight"].T
            h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
            see(g + "ffn_gate.weight", h)
            see(g + "ffn_up.weight", h)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            m = gate / (1 + np.exp(-gate)) * up
            see(g + "ffn_down.weight", m)
            x = x + m @ w[p + "mlp.down_proj.weight"].T
    return acc


def main():
    model_dir, path, chunks_path = sys.argv[1:4]
    chunks = json.load(open(chunks_path))
    r = GGUFReader(path)
    keys = {k: f.contents() for k, f in r.fields.items() if k.startswith(("imatrix.", "general."))}
    t = {x.name: x for x in r.tensors}
    want = sums(model_dir, chunks)
    entries = {}
    for name, x in t.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        c = t[base + ".counts"]
        got = np.asarray(x.data, dtype=np.float64).reshape(-1)
        ref = want.get(base)
        rel = None
        if ref is not None:
            rel = float((np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)).max())
        entries[base] = {
            "shape": [int(d) for d in x.shape],
            "type": x.tensor_type.name,
            "counts": [float(v) for v in np.asarray(c.data).reshape(-1)],
            "counts_shape": [int(d) for d in c.shape],
            "max_rel_diff": rel,
        }
    print(json.dumps({"keys": keys, "entries": entries, "numpy_entries": sorted(want)}))


if __name__ == "__main__":
    main()
