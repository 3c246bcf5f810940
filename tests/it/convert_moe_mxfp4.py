"""Oracle for tests/it/convert_moe.rs: gpt-oss MXFP4 experts in a GGUF written by modelgate,
decoded by gguf-py's MXFP4 dequantizer, against a numpy decoding of the Hugging Face
layout they came from (`*_blocks`: byte i of a block holds value 2i in its low nibble and
2i + 1 in its high nibble; `*_scales`: E8M0 bytes; gate = even rows of gate_up, up = odd).

argv: the checkpoint's model.safetensors, the GGUF file. Prints JSON {ok, tensors, values,
problems}.
"""

import json
import struct
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        if info["dtype"] == "U8":
            out[name] = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=np.uint8).reshape(info["shape"])
    return out


def decode_hf(blocks, scales):
    lo = E2M1[blocks & 0x0F]
    hi = E2M1[blocks >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    vals = vals * np.ldexp(1.0, scales.astype(np.int64) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1)


def main():
    hf = read_safetensors(sys.argv[1])
    r = GGUFReader(sys.argv[2])
    ts = {t.name: t for t in r.tensors}
    problems = []
    n_tensors = 0
    n_values = 0
    for name in sorted(hf):
        if not name.endswith("_blocks"):
            continue
        stem = name[: -len("_blocks")]
        layer = int(stem.split(".")[2])
        want = decode_hf(hf[name], hf[stem + "_scales"])
        if stem.endswith("gate_up_proj"):
            parts = [("ffn_gate_exps", want[:, ::2]), ("ffn_up_exps", want[:, 1::2])]
        else:
            parts = [("ffn_down_exps", want)]
        for gname, w in parts:
            t = ts.get(f"blk.{layer}.{gname}.weight")
            if t is None:
                problems.append(f"blk.{layer}.{gname}.weight missing")
                continue
            if t.tensor_type != GGMLQuantizationType.MXFP4:
                problems.append(f"{t.name} is {t.tensor_type.name}")
                continue
            got = dequantize(np.asarray(t.data), GGMLQuantizationType.MXFP4).astype(np.float64).reshape(w.shape)
            # Values as numbers: transformers' code 8 is -0.0 where ggml reads +0.0.
            if not np.array_equal(got, w):
                problems.append(f"{t.name}: {int((got != w).sum())} values differ")
            n_tensors += 1
            n_values += w.size
    print(json.dumps({"ok": not problems and n_tensors > 0, "tensors": n_tensors, "values": n_values,
                      "problems": problems}))


if __name__ == "__main__":
    main()
