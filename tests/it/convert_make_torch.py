#!/usr/bin/env python3
"""Write a PyTorch checkpoint (`torch.save` zip layout) holding a Hugging Face directory's
safetensors weights, without torch: the pickle names torch's rebuild functions and storage
classes exactly as torch.save does, and the storages are stored (uncompressed) zip entries.

Usage: convert_make_torch.py HF_DIR OUT_DIR
Copies HF_DIR's non-weight files into OUT_DIR and writes OUT_DIR/pytorch_model.bin.
"""

import collections
import json
import pickle
import shutil
import struct
import sys
import types
import zipfile
from pathlib import Path

# Stand-ins that pickle under torch's names (pickle records module + qualified name).
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
STORAGE = {}
for name in ("FloatStorage", "HalfStorage", "BFloat16Storage"):
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    STORAGE[name] = cls
DTYPE_STORAGE = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage"}


class StorageRef:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def read_safetensors(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        yield name, info["dtype"], info["shape"], raw[8 + n + s : 8 + n + e]


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    weights = []
    for f in sorted(src.iterdir()):
        if f.suffix == ".safetensors":
            weights.extend(read_safetensors(f))
        elif f.name != "model.safetensors.index.json" and f.is_file():
            shutil.copy(f, out / f.name)
    state = collections.OrderedDict()
    blobs = []
    for i, (name, dtype, shape, data) in enumerate(weights):
        elem = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
        ref = StorageRef(STORAGE[DTYPE_STORAGE[dtype]], str(i), len(data) // elem)
        state[name] = Tensor(ref, shape)
        blobs.append((str(i), data))
    import io

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(out / "pytorch_model.bin", "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, data in blobs:
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")


main()
