#!/usr/bin/env python3
"""Record what llama.cpp's converter writes for the MoE oracles, for `tests/it/convert_moe.rs`.

For each of ../shared/oracles2/{mixtral,qwen2moe,qwen3moe,deepseek3,gptoss}, run llama.cpp's
`convert_hf_to_gguf.py` (the tree vendored by the llama-cpp-python 0.3.36 sdist; its BPE
pre-tokenizer check answered "default" for the oracles' tiny tokenizers, as
scripts/llama_cpp_interop.py does) at F32 and F16, read the output with gguf-py, and write
`fixtures/oracles/moe-convert/reference.json`: per oracle and type, `general.architecture`
and every `{arch}.*` key with its GGUF value type and value, and every tensor with its
ggml type, shape (outermost first, as modelgate reports it) and the SHA-256 of its bytes.
The test then needs neither torch nor llama.cpp: modelgate's output must have the same keys
and the same bytes.

    L=/path/to/llama.cpp
    python scripts/make_moe_convert_reference.py --python /path/to/torch-venv/bin/python \
        --llama-cpp $L --oracles ../shared/oracles2 fixtures/oracles/moe-convert/reference.json

Run with a Python that has gguf-py (PYTHONPATH=$L/gguf-py) and numpy.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_interop import CONVERTER_SHIM  # noqa: E402

ORACLES = ["mixtral", "qwen2moe", "qwen3moe", "deepseek3", "gptoss"]
TYPE_NAMES = {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
              "FLOAT32": "f32", "BOOL": "bool", "STRING": "string", "UINT64": "u64", "INT64": "i64",
              "FLOAT64": "f64"}


def facts(path):
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    keys = {}
    for k, f in r.fields.items():
        if k == "general.architecture" or k.startswith(arch + "."):
            v = f.contents()
            if isinstance(v, float):
                v = float(np.float32(v))
            keys[k] = [TYPE_NAMES[f.types[0].name], v]
    tensors = {}
    for t in r.tensors:
        data = np.asarray(t.data).tobytes()
        tensors[t.name] = [t.tensor_type.name, [int(x) for x in reversed(list(t.shape))],
                           hashlib.sha256(data).hexdigest()]
    return {"keys": keys, "tensors": tensors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="a Python with torch and transformers")
    ap.add_argument("--llama-cpp", required=True)
    ap.add_argument("--oracles", required=True)
    ap.add_argument("out")
    a = ap.parse_args()
    ref = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ORACLES:
            for ty in ["F32", "F16"]:
                out = Path(tmp) / f"{name}-{ty}.gguf"
                subprocess.run([a.python, "-c", CONVERTER_SHIM, a.llama_cpp, str(Path(a.oracles) / name),
                                "--outtype", ty.lower(), "--outfile", str(out)], check=True, capture_output=True)
                ref.setdefault(name, {})[ty] = facts(out)
    Path(a.out).write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
