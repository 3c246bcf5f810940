#!/usr/bin/env python3
"""Independent oracles for modelgate's block-format kernels (src/convert/quant).

Two oracles, both driven by a JSON list of jobs so that one Python start serves a whole
test:

* `gguf`: the PyPI `gguf` package (gguf-py, maintained with llama.cpp).
  `dequant` runs `gguf.quants.dequantize(bytes, qtype)`; `quant` runs
  `gguf.quants.quantize(values, qtype)` where gguf-py has a quantizer (F16, BF16, Q4_0,
  Q4_1, Q5_0, Q5_1, Q8_0), and reports `not-implemented` otherwise.
* `ggml`: ggml's own quantizers, `quantize_<type>(src, dst, nrow, n_per_row, imatrix)` in
  `ggml-quants.c`, the entry point `llama-quantize` calls through `ggml_quantize_chunk`:
  with no importance it runs the reference quantizers (`quantize_row_*_ref`; IQ4_NL and
  IQ4_XS their 7-trial search), with an importance vector (a job's `importance`, f32, one
  value per column) the weighted `quantize_row_*_impl` paths. The lattice types (IQ1_*,
  IQ2_*, IQ3_*) first build ggml's search tables (`iq2xs_init_impl` / `iq3xs_init_impl`,
  what `ggml_quantize_init` calls). The file is taken from the
  llama.cpp copy inside the PyPI source package `llama-cpp-python` 0.3.36 (pip download,
  no install), the ggml that `llama-quantize` of that version runs (the older
  `ggml-python` 0.0.45 copy searches IQ1_M's splits with other float sums), compiled with the system C compiler into a small shared library in the cache folder, and
  called through ctypes. Nothing of it enters the repository. MXFP4 calls
  `quantize_row_mxfp4_ref` directly: `quantize_mxfp4` is that function for every row and
  ignores importance.
* `hf`: the Hugging Face MXFP4 layout (gpt-oss `*_blocks` / `*_scales`) decoded with numpy
  as transformers' `convert_moe_packed_tensors` decodes it: byte `i` of a 16-byte block
  holds value `2i` in its low nibble and `2i + 1` in its high nibble, each an E2M1 value,
  times `2^(scale - 127)`. Job: `{"oracle": "hf", "op": "dequant", "type": "MXFP4",
  "input": BLOCKS, "scales": SCALES, "output": F32}`.

Usage:
    gguf_quant_oracle.py JOBS.json

JOBS.json is a list of objects:
    {"oracle": "gguf"|"ggml", "op": "quant"|"dequant", "type": "Q4_K",
     "input": PATH, "output": PATH, "row_len": N, "importance": PATH (optional, ggml)}
`quant` reads little-endian f32 values and writes the quantized bytes; `dequant` reads
bytes and writes little-endian f32 values. The script prints one JSON object per job
(`{"status": "ok"|"not-implemented", ...}`) as a JSON list on stdout, and exits 2 with a
message on stderr when an oracle cannot be loaded.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

GGML_PACKAGE = "llama-cpp-python==0.3.36"
GGML_SDIST = "llama_cpp_python-0.3.36"


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def load_gguf():
    try:
        import numpy as np  # noqa: F401
        import gguf  # noqa: F401
        from gguf import quants  # noqa: F401
    except ImportError as e:
        fail(f"cannot import the PyPI `gguf` package and numpy ({e}); "
             "install them with `python3 -m pip install gguf numpy`")
    import numpy as np
    import gguf
    from gguf import quants
    return np, gguf, quants


def cache_dir() -> pathlib.Path:
    base = os.environ.get("MODELGATE_CACHE")
    root = pathlib.Path(base) if base else pathlib.Path.home() / ".cache" / "modelgate"
    # -r2: the shim gained ggml_row_size, which the chunk entry points call; -r3: the
    # lattice types' sizes; llama-cpp-python: the ggml of llama.cpp itself.
    return root / "ggml-ref-llama-cpp-python-0.3.36-r1"


# Stubs for the ggml functions that ggml-quants.c calls outside itself (error, logging and
# row-size paths of the non-reference entry points); the reference quantizers we call never
# reach them.
SHIM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
/* Block length and block bytes by ggml type id, for the types the oracle quantizes. */
size_t ggml_row_size(int type, int64_t ne) {
    int blck = 0, size = 0;
    switch (type) {
        case 2: blck = 32; size = 18; break;   /* Q4_0 */
        case 3: blck = 32; size = 20; break;   /* Q4_1 */
        case 6: blck = 32; size = 22; break;   /* Q5_0 */
        case 7: blck = 32; size = 24; break;   /* Q5_1 */
        case 8: blck = 32; size = 34; break;   /* Q8_0 */
        case 10: blck = 256; size = 84; break; /* Q2_K */
        case 11: blck = 256; size = 110; break;
        case 12: blck = 256; size = 144; break;
        case 13: blck = 256; size = 176; break;
        case 14: blck = 256; size = 210; break;
        case 16: blck = 256; size = 66; break; /* IQ2_XXS */
        case 17: blck = 256; size = 74; break; /* IQ2_XS */
        case 18: blck = 256; size = 98; break; /* IQ3_XXS */
        case 19: blck = 256; size = 50; break; /* IQ1_S */
        case 21: blck = 256; size = 110; break; /* IQ3_S */
        case 22: blck = 256; size = 82; break; /* IQ2_S */
        case 29: blck = 256; size = 56; break; /* IQ1_M */
        case 20: blck = 32; size = 18; break;  /* IQ4_NL */
        case 23: blck = 256; size = 136; break; /* IQ4_XS */
        case 34: blck = 256; size = 54; break; /* TQ1_0 */
        case 35: blck = 256; size = 66; break; /* TQ2_0 */
        default: abort();
    }
    return (size_t) (ne / blck) * size;
}
size_t ggml_type_size(int type) { (void) type; abort(); }
const char * ggml_type_name(int type) { (void) type; return "?"; }
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d\n", file, line);
    abort();
}
void ggml_log_internal(int level, const char * fmt, ...) { (void) level; (void) fmt; }
"""


def build_ggml() -> pathlib.Path:
    """Compile ggml's reference quantizers once into the cache folder; return the library."""
    out = cache_dir()
    lib = out / "libggml_quants_ref.so"
    if lib.is_file():
        return lib
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp = pathlib.Path(tmp)
        # This version is published as a source archive only, so pip fetches the sources.
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            GGML_PACKAGE, "-d", str(tmp)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"pip download {GGML_PACKAGE} failed: {r.stderr.strip()}")
        if not (tmp / f"{GGML_SDIST}.tar.gz").is_file():
            fail(f"pip download {GGML_PACKAGE} gave no source archive {GGML_SDIST}.tar.gz")
        # Only ggml's sources and headers: the archive holds all of llama.cpp.
        ggml_dir = f"{GGML_SDIST}/vendor/llama.cpp/ggml"
        subprocess.run(["tar", "xzf", str(tmp / f"{GGML_SDIST}.tar.gz"), "-C", str(tmp),
                        f"{ggml_dir}/src", f"{ggml_dir}/include"], check=True)
        ggml = tmp / ggml_dir
        (tmp / "shim.c").write_text(SHIM)
        cc = os.environ.get("CC", "cc")
        # No -march: ggml-base (where these functions live) is built for the baseline ISA,
        # so no fused multiply-adds change the float results.
        cmd = [cc, "-O2", "-fPIC", "-shared", "-std=gnu11", f"-I{ggml}/include", f"-I{ggml}/src",
               str(ggml / "src" / "ggml-quants.c"), str(tmp / "shim.c"), "-o",
               str(tmp / lib.name), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"compiling ggml-quants.c failed: {r.stderr.strip()[-2000:]}")
        staged = tmp / "staged"
        staged.mkdir()
        shutil.move(str(tmp / lib.name), staged / lib.name)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staged), out)
    return lib


GGML_REF = {
    "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q8_0": "q8_0",
    "Q2_K": "q2_K", "Q3_K": "q3_K", "Q4_K": "q4_K", "Q5_K": "q5_K", "Q6_K": "q6_K",
    "IQ4_NL": "iq4_nl", "IQ4_XS": "iq4_xs", "TQ1_0": "tq1_0", "TQ2_0": "tq2_0",
    "IQ2_XXS": "iq2_xxs", "IQ2_XS": "iq2_xs", "IQ2_S": "iq2_s",
    "IQ3_XXS": "iq3_xxs", "IQ3_S": "iq3_s", "IQ1_S": "iq1_s", "IQ1_M": "iq1_m",
}

# The lattice types search tables that ggml builds once (`ggml_quantize_init`, which lives
# in ggml.c, outside the compiled file): `iq2xs_init_impl(type)` for the 8-dimensional
# grids, `iq3xs_init_impl(grid_size)` for the 4-dimensional ones. Type ids and sizes are
# ggml's.
LATTICE_INIT = {
    "IQ2_XXS": ("iq2xs_init_impl", 16), "IQ2_XS": ("iq2xs_init_impl", 17),
    "IQ2_S": ("iq2xs_init_impl", 22), "IQ1_S": ("iq2xs_init_impl", 19),
    "IQ1_M": ("iq2xs_init_impl", 29), "IQ3_XXS": ("iq3xs_init_impl", 256),
    "IQ3_S": ("iq3xs_init_impl", 512),
}


def lattice_init(lib, qtype: str) -> None:
    if qtype in LATTICE_INIT:
        name, arg = LATTICE_INIT[qtype]
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_int]
        fn(arg)  # returns at once when the tables exist


def ggml_quant(lib, np, qtype, values: "np.ndarray", row_len: int, nbytes: int,
               importance) -> bytes:
    lattice_init(lib, qtype)
    fn = getattr(lib, f"quantize_{GGML_REF[qtype]}")
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    src = np.ascontiguousarray(values, dtype=np.float32)
    dst = ctypes.create_string_buffer(nbytes)
    qw = None
    if importance is not None:
        qw = np.ascontiguousarray(importance, dtype=np.float32)
        if qw.size != row_len:
            fail(f"importance has {qw.size} values for rows of {row_len}")
    written = fn(src.ctypes.data, dst, ctypes.c_int64(src.size // row_len),
                 ctypes.c_int64(row_len), None if qw is None else qw.ctypes.data)
    if written != nbytes:
        fail(f"quantize_{GGML_REF[qtype]} wrote {written} bytes, expected {nbytes}")
    return dst.raw


# transformers' FP4_VALUES: the E2M1 value of each 4-bit code.
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def hf_mxfp4_dequant(np, blocks: bytes, scales: bytes) -> "np.ndarray":
    b = np.frombuffer(blocks, dtype=np.uint8).reshape(-1, 16)
    e = np.frombuffer(scales, dtype=np.uint8).astype(np.int32) - 127
    if e.size != b.shape[0]:
        fail(f"{b.shape[0]} MXFP4 blocks but {e.size} scales")
    lut = np.array(E2M1, dtype=np.float32)
    out = np.empty((b.shape[0], 32), dtype=np.float32)
    out[:, 0::2] = lut[b & 0x0F]
    out[:, 1::2] = lut[b >> 4]
    return np.ldexp(out, e.reshape(-1, 1)).astype("<f4")


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: gguf_quant_oracle.py JOBS.json")
    jobs = json.loads(pathlib.Path(sys.argv[1]).read_text())
    np, gguf, quants = load_gguf()
    lib = None
    results = []
    for job in jobs:
        qtype = gguf.GGMLQuantizationType[job["type"]]
        data = pathlib.Path(job["input"]).read_bytes()
        out = pathlib.Path(job["output"])
        res = {"type": job["type"], "oracle": job["oracle"], "op": job["op"], "status": "ok"}
        if job["oracle"] == "gguf" and job["op"] == "dequant":
            raw = np.frombuffer(data, dtype=np.uint8)
            vals = quants.dequantize(raw, qtype).astype("<f4", copy=False)
            out.write_bytes(vals.tobytes())
        elif job["oracle"] == "gguf" and job["op"] == "quant":
            vals = np.frombuffer(data, dtype="<f4").reshape(-1, int(job["row_len"]))
            try:
                q = quants.quantize(vals, qtype)
            except NotImplementedError:
                res["status"] = "not-implemented"
            else:
                out.write_bytes(np.ascontiguousarray(q).tobytes())
        elif job["oracle"] == "hf" and job["op"] == "dequant" and job["type"] == "MXFP4":
            scales = pathlib.Path(job["scales"]).read_bytes()
            out.write_bytes(hf_mxfp4_dequant(np, data, scales).tobytes())
        elif job["oracle"] == "ggml" and job["op"] == "quant" and job["type"] == "MXFP4":
            if lib is None:
                lib = ctypes.CDLL(str(build_ggml()))
            fn = lib.quantize_row_mxfp4_ref
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            src = np.ascontiguousarray(np.frombuffer(data, dtype="<f4"))
            if src.size % 32:
                fail(f"{src.size} values are not whole MXFP4 blocks")
            dst = ctypes.create_string_buffer(src.size // 32 * 17)
            fn(src.ctypes.data, dst, ctypes.c_int64(src.size))
            out.write_bytes(dst.raw)
        elif job["oracle"] == "ggml" and job["op"] == "quant":
            if job["type"] not in GGML_REF:
                res["status"] = "not-implemented"
            else:
                if lib is None:
                    lib = ctypes.CDLL(str(build_ggml()))
                vals = np.frombuffer(data, dtype="<f4")
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                imp = job.get("importance")
                if imp is not None:
                    imp = np.frombuffer(pathlib.Path(imp).read_bytes(), dtype="<f4")
                out.write_bytes(ggml_quant(lib, np, job["type"], vals, int(job["row_len"]),
                                           vals.size // block * size, imp))
        else:
            fail(f"unknown job {job}")
        results.append(res)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
