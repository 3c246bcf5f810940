#!/usr/bin/env python3
"""Make the transformers oracles modelgate keeps in its own tree (not run in CI).

Needs transformers 5.25, torch and sentencepiece (a heavy install: keep it out of the
test venv). Writes, deterministically from fixed seeds:

- `fixtures/oracles/phi3/`: a tiny Phi-3 (Phi3ForCausalLM, 2 layers, hidden 64, 4 heads,
  2 kv heads, vocabulary 512) with LongRoPE (original context 32, maximum 128, so the 48
  evaluated positions use the long factors) and Phi-3's special tokens, saved by
  transformers, with `expected.safetensors` (`input_ids` i64 [1, 48], `logits` f32
  [1, 48, 512]) and `expected-short.safetensors` (the first 24 positions, evaluated alone:
  transformers then uses the short factors). The tokenizer is a SentencePiece BPE model
  with byte fallback trained on `fixtures/text/eval.txt`, plus Phi-3's added tokens at
  500-510; llama.cpp cannot load a small Phi-3 vocabulary without them.
- `fixtures/oracles/tokenizer-ids.json`: transformers' ids for the fixture text and some
  tricky strings, from the gemma2 oracle's tokenizer.model and the Phi-3 one.
- `fixtures/oracles/greedy-window.json`: for each model with a sliding window (the
  oracles2 gemma2 and gemma3) and for olmo2, transformers' 32 greedy
  tokens after a prompt longer than the window, with the smallest top-1/top-2 logit
  margin along the way (a margin near zero would make the comparison fragile).

    /path/to/venv/bin/python scripts/make_oracles.py [--oracles2 ../shared/oracles2]
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3Config, Phi3ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "oracles"

PHI3_SPECIAL = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def randomize(model, seed):
    """Norms near their neutral value, everything else N(0, 0.08), as the oracles2 do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def phi3_tokenizer(dst: Path):
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "sp"
        spm.SentencePieceTrainer.train(
            input=str(ROOT / "fixtures/text/eval.txt"),
            model_prefix=str(prefix),
            model_type="bpe",
            vocab_size=500,
            byte_fallback=True,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
        shutil.copy(f"{prefix}.model", dst / "tokenizer.model")
    (dst / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "legacy": False})
    )
    tok = AutoTokenizer.from_pretrained(dst)
    tok.add_special_tokens({"additional_special_tokens": PHI3_SPECIAL})
    tok.bos_token = "<s>"
    tok.eos_token = "<|endoftext|>"
    tok.pad_token = "<|endoftext|>"
    tok.unk_token = "<unk>"
    tok.chat_template = PHI3_TEMPLATE
    tok.save_pretrained(dst)
    assert tok.convert_tokens_to_ids("<|user|>") == 510, tok.convert_tokens_to_ids("<|user|>")
    return tok


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.float()


def make_phi3():
    dst = OUT / "phi3"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    tok = phi3_tokenizer(dst)
    torch.manual_seed(0)
    cfg = Phi3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        original_max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.4, 1.7, 2.1],
            "long_factor": [1.0, 1.3, 1.9, 2.8, 4.0, 5.5, 7.5, 10.0],
            "original_max_position_embeddings": 32,
        },
        sliding_window=2047,
        bos_token_id=1,
        eos_token_id=500,
        pad_token_id=500,
        tie_word_embeddings=False,
    )
    cfg.architectures = ["Phi3ForCausalLM"]
    model = Phi3ForCausalLM(cfg).eval()
    randomize(model, 1234)
    model.save_pretrained(dst, safe_serialization=True)
    text = (ROOT / "fixtures/text/eval.txt").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"][:47]
    ids = [1] + ids
    assert len(ids) == 48
    full = logits_of(model, ids)
    save_file(
        {"input_ids": torch.tensor([ids], dtype=torch.int64), "logits": full.contiguous()},
        dst / "expected.safetensors",
    )
    short = logits_of(model, ids[:24])
    save_file(
        {"input_ids": torch.tensor([ids[:24]], dtype=torch.int64), "logits": short.contiguous()},
        dst / "expected-short.safetensors",
    )
    # Reload: the saved folder must reproduce its own expected logits.
    again = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    assert torch.allclose(logits_of(again, ids), full, atol=1e-5)
    diff = (full[0, :24] - short[0]).abs().max().item()
    print(f"phi3: long vs short factors over the first 24 positions differ by {diff:.3g}")
    return dst


def greedy(folder: Path, prompt_len: int, new: int):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    from safetensors.numpy import load_file

    ids = [int(x) for x in load_file(str(folder / "expected.safetensors"))["input_ids"][0][:prompt_len]]
    seq = list(ids)
    margins = []
    with torch.no_grad():
        for _ in range(new):
            logits = model(torch.tensor([seq])).logits[0, -1].double()
            top = torch.topk(logits, 2)
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
    cfg = json.loads((folder / "config.json").read_text())
    return {
        "model_type": cfg["model_type"],
        "sliding_window": cfg.get("sliding_window"),
        "prompt": ids,
        "greedy": seq[len(ids):],
        "min_margin": min(margins),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--oracles2", default=str(ROOT.parent / "shared" / "oracles2"))
    args = ap.parse_args()
    o2 = Path(args.oracles2)
    phi3 = make_phi3()
    cases = {}
    for name, folder in [("gemma2", o2 / "gemma2"), ("gemma3", o2 / "gemma3"), ("olmo2", o2 / "olmo2")]:
        cases[name] = greedy(folder, 24, 32)
        print(f"{name}: min top-2 margin {cases[name]['min_margin']:.4f}")
    tricky = [
        (ROOT / "fixtures/text/eval.txt").read_text(),
        "  leading spaces, trailing  ",
        "line one\nline two\n\n\ttabbed",
        "unicode: café, naïve, 東京, emoji 🦙🤖",
        "<|user|>\nhello<|end|>\n<|assistant|>",
    ]
    tok_ids = {}
    for name, folder in [("gemma2", o2 / "gemma2"), ("phi3", phi3)]:
        t = AutoTokenizer.from_pretrained(folder)
        tok_ids[name] = {
            "tokenizer_class": type(t).__name__,
            "cases": [{"text": x, "ids": t(x, add_special_tokens=False)["input_ids"]} for x in tricky],
        }
    (OUT / "tokenizer-ids.json").write_text(
        json.dumps(
            {
                "about": "ids from transformers 5.25 (AutoTokenizer, add_special_tokens=False) for "
                "tokenizer.model folders; made by scripts/make_oracles.py",
                "tokenizers": tok_ids,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    doc = {
        "about": "transformers 5.25 greedy continuations (argmax of f32 logits, full recompute each step) "
        "of the first 24 input ids of each oracle, 32 new tokens; made by scripts/make_oracles.py",
        "cases": cases,
    }
    (OUT / "greedy-window.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
