"""gguf-py (the PyPI `gguf` package) dequantizes every IQ4_NL/IQ4_XS/TQ1_0/TQ2_0 tensor of
QUANT and compares the values bit for bit with the F32 file modelgate made from it.
Prints JSON: {"compared": {type: tensors}, "differ": [names]}."""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

quant = GGUFReader(sys.argv[1])
f32 = {t.name: t for t in GGUFReader(sys.argv[2]).tensors}
compared, differ = {}, []
for t in quant.tensors:
    name = t.tensor_type.name
    if name not in ("IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"):
        continue
    theirs = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    ours = np.asarray(f32[t.name].data, dtype=np.float32).reshape(-1)
    compared[name] = compared.get(name, 0) + 1
    if theirs.view(np.uint32).tolist() != ours.view(np.uint32).tolist():
        differ.append(t.name)
print(json.dumps({"compared": compared, "differ": differ}))
