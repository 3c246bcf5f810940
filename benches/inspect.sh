#!/usr/bin/env bash
# Parsing benchmark: `modelgate inspect` of a sharded ~2 GB safetensors checkpoint must read
# headers only. Generates the checkpoint (4 shards of ~512 MB, f16 tensors of a
# TinyLlama-like shape), then reports wall time and peak RSS of `inspect --json`.
#
# usage: benches/inspect.sh [WORKDIR]   (default: a temp folder, removed afterwards)
# MODELGATE_BIN=path uses an already built binary instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MODELGATE_BIN:-target/release/modelgate}
[ -n "${MODELGATE_BIN:-}" ] || cargo build --release --quiet
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ckpt"

python3 - "$work/ckpt" <<'PY'
import json, os, struct, sys
out = sys.argv[1]
hidden, ffn, layers, vocab = 2048, 5632, 22, 32000
tensors = [("model.embed_tokens.weight", [vocab, hidden])]
for i in range(layers):
    p = f"model.layers.{i}."
    tensors += [(p + "self_attn.q_proj.weight", [hidden, hidden]), (p + "self_attn.k_proj.weight", [256, hidden]),
                (p + "self_attn.v_proj.weight", [256, hidden]), (p + "self_attn.o_proj.weight", [hidden, hidden]),
                (p + "mlp.gate_proj.weight", [ffn, hidden]), (p + "mlp.up_proj.weight", [ffn, hidden]),
                (p + "mlp.down_proj.weight", [hidden, ffn]), (p + "input_layernorm.weight", [hidden]),
                (p + "post_attention_layernorm.weight", [hidden])]
tensors += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
# Split into 4 shards of about equal size.
sizes = [2 * (s[0] * (s[1] if len(s) > 1 else 1)) for _, s in tensors]
total = sum(sizes); shards = 4; per = total / shards
groups, cur, acc = [], [], 0
for t, sz in zip(tensors, sizes):
    if acc >= per * (len(groups) + 1) and len(groups) < shards - 1:
        groups.append(cur); cur = []
    cur.append((t, sz)); acc += sz
groups.append(cur)
weight_map = {}
for n, g in enumerate(groups, 1):
    name = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
    header, off = {}, 0
    for (tname, shape), sz in g:
        header[tname] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + sz]}
        off += sz; weight_map[tname] = name
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + off)   # sparse data: inspect must never read it
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"))
json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": ffn,
           "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": vocab,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}, open(os.path.join(out, "config.json"), "w"))
print(f"checkpoint: {len(groups)} shards, {total / 1e9:.2f} GB of tensor data, {len(tensors)} tensors")
PY

du -sh --apparent-size "$work/ckpt"
/usr/bin/time -f "%e %M" -o "$work/time" "$bin" inspect "$work/ckpt" --json > "$work/out.json"
read -r secs kb < "$work/time"
python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print('inspect:', v['tensor_count'], 'tensors,', v['parameters'], 'parameters')" "$work/out.json"
echo "inspect --json of the sharded checkpoint: wall ${secs} s, peak RSS $((kb / 1024)) MiB"
