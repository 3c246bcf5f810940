#!/usr/bin/env python3
"""Dump a GGUF file as JSON through the PyPI `gguf` package (llama.cpp's own gguf-py).

An independent oracle for modelgate's GGUF reader: tests/it/gguf.rs runs it and compares
every key, type, value and tensor info with what modelgate reads.

    python3 scripts/gguf_dump.py FILE.gguf            # JSON on stdout
    python3 scripts/gguf_dump.py --types              # gguf-py's ggml type table

Output (FILE mode):
    {"version": 3, "alignment": 32, "data_offset": N,
     "metadata": [{"key": K, "types": ["ARRAY", "STRING"], "value": V}, ...],
     "tensors": [{"name": N, "type": "Q4_1", "type_id": 3, "ne": [...],
                  "offset": ABSOLUTE, "n_bytes": B, "n_elements": E}, ...]}

Metadata is in file order, without gguf-py's synthetic `GGUF.*` fields. `ne` is gguf-py's
shape, fastest-moving dimension first, exactly as stored. Values come from gguf-py's
`ReaderField.contents()`, which flattens nested arrays (gguf-py limitation).
"""

import json
import sys


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    try:
        from importlib.metadata import version as package_version

        from gguf import GGUFReader
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError as e:
        fail(f"cannot import the PyPI `gguf` package ({e}); install it with `pip install gguf`")

    if argv == ["--types"]:
        table = [
            {"id": int(t.value), "name": t.name,
             "block": GGML_QUANT_SIZES[t][0], "bytes": GGML_QUANT_SIZES[t][1]}
            for t in GGMLQuantizationType if t in GGML_QUANT_SIZES
        ]
        json.dump({"gguf_version": package_version("gguf"), "types": table}, sys.stdout)
        print()
        return
    if len(argv) != 1:
        fail("usage: gguf_dump.py FILE.gguf | --types")

    reader = GGUFReader(argv[0], "r")
    metadata = []
    version = None
    for key, field in reader.fields.items():
        if key == "GGUF.version":
            version = int(field.contents())
            continue
        if key.startswith("GGUF."):
            continue
        metadata.append({
            "key": key,
            "types": [t.name for t in field.types],
            "value": field.contents(),
        })
    tensors = [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type.value),
            "ne": [int(d) for d in t.shape],
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
            "n_elements": int(t.n_elements),
        }
        for t in reader.tensors
    ]
    json.dump({
        "version": version,
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }, sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
