#!/usr/bin/env python3
"""Write fixtures/oracles/moe-kernels/: the outputs of llama.cpp's converter, transformers and
torch on small MXFP4 and FP8 inputs, for tests/it/quant.rs to check modelgate's kernels
against (`repack_hf_mxfp4`, `dequantize_fp8_e4m3`).

Needs torch, transformers and llama.cpp's converter package (`conversion/` and `gguf-py/`
from the llama.cpp tree vendored by the llama-cpp-python 0.3.36 sdist); not part of the
test environment, so the outputs are committed. Inputs come from numpy with fixed seeds.

Usage:
    LLAMA=/path/to/llama.cpp PYTHONPATH=$LLAMA:$LLAMA/gguf-py \
        python make_moe_kernel_fixtures.py OUT_DIR
"""

from __future__ import annotations

import json
import pathlib
import sys
import types

import numpy as np
import torch


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261205)
    meta = {}

    # --- MXFP4 in the Hugging Face layout: [experts, rows, n_blocks, 16] codes and
    # [experts, rows, n_blocks] E8M0 scales, every code and the extreme scales present.
    experts, rows, nblk = 2, 6, 3
    blocks = rng.integers(0, 256, size=(experts, rows, nblk, 16), dtype=np.uint8)
    scales = rng.integers(100, 150, size=(experts, rows, nblk), dtype=np.uint8)
    scales.flat[:4] = [0, 1, 127, 254]
    (out / "mxfp4_hf_blocks.u8").write_bytes(blocks.tobytes())
    (out / "mxfp4_hf_scales.u8").write_bytes(scales.tobytes())
    meta["mxfp4"] = {"blocks_shape": list(blocks.shape), "scales_shape": list(scales.shape)}

    # llama.cpp's repack (GptOssModel.repack_mxfp4), capturing what it hands its writer.
    from conversion.gpt_oss import GptOssModel
    captured = {}

    class Writer:
        def add_tensor(self, name, data, raw_dtype=None):
            captured[name] = (np.ascontiguousarray(data), raw_dtype)

    fake = types.SimpleNamespace(gguf_writer=Writer())
    fake.transform_nibble_layout = lambda t: GptOssModel.transform_nibble_layout(fake, t)
    GptOssModel.repack_mxfp4(fake, "blk.0.ffn_down_exps.weight", torch.from_numpy(blocks),
                             torch.from_numpy(scales))
    data, raw = captured["blk.0.ffn_down_exps.weight"]
    assert int(raw) == 39, raw  # GGML_TYPE_MXFP4
    (out / "mxfp4_llama_cpp.bin").write_bytes(data.tobytes())

    # transformers' dequantization of the same tensors, in f32, transposed back from its
    # [experts, in, out] to the checkpoint's [experts, rows, n_blocks * 32].
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    deq = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                     dtype=torch.float32)
    deq = deq.transpose(1, 2).contiguous().numpy().astype("<f4")
    assert deq.shape == (experts, rows, nblk * 32), deq.shape
    (out / "mxfp4_transformers.f32").write_bytes(deq.tobytes())

    # --- FP8: every float8_e4m3fn code as torch decodes it.
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    table = codes.view(torch.float8_e4m3fn).float().numpy().astype("<f4")
    (out / "fp8_e4m3fn.f32").write_bytes(table.tobytes())

    # llama.cpp's dequantization of `quant_method: fp8` weights (ModelBase.dequant_model),
    # run on a stand-in model: a 2-D weight whose shape is not a multiple of 128 and a 3-D
    # one with a smaller block, to cover partial edge blocks and leading dimensions.
    from conversion.base import ModelBase
    cases = {
        "fp8_2d": ((130, 259), [128, 128]),
        "fp8_3d": ((2, 10, 13), [4, 8]),
    }
    for key, (shape, block) in cases.items():
        w = rng.integers(0, 256, size=shape, dtype=np.uint8)
        sshape = tuple(shape[:len(shape) - len(block)]) + tuple(
            -(-d // b) for d, b in zip(shape[len(shape) - len(block):], block))
        s = (rng.random(sshape, dtype=np.float32) * 2e-3 + 1e-4).astype("<f4")
        stand_in = types.SimpleNamespace(
            hparams={"quantization_config": {"quant_method": "fp8", "weight_block_size": block}},
            model_tensors={
                "w.weight": lambda w=w: torch.from_numpy(w).view(torch.float8_e4m3fn),
                "w.weight_scale_inv": lambda s=s: torch.from_numpy(s),
            },
            _is_nvfp4=False, _fp8_as_q8=False, _fp8_dequantized=set(), lazy=False)
        ModelBase.dequant_model(stand_in)
        assert list(stand_in.model_tensors) == ["w.weight"], stand_in.model_tensors.keys()
        y = stand_in.model_tensors["w.weight"]().numpy().astype("<f4")
        (out / f"{key}_weight.u8").write_bytes(w.tobytes())
        (out / f"{key}_scale.f32").write_bytes(s.tobytes())
        (out / f"{key}_llama_cpp.f32").write_bytes(y.tobytes())
        meta[key] = {"shape": list(shape), "scale_shape": list(sshape), "block": block}

    (out / "shapes.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
