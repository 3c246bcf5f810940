//! Quantizing mixtures of experts: the type llama.cpp's `llama-quantize` picks for each
//! tensor of an 8-expert model, and the bytes of each expert slice.
//!
//! The input is a synthetic 8-expert, 4-layer `qwen3moe` GGUF (widths 256, F16) written
//! here with modelgate's GGUF writer, with the tensors the MoE rules single out: stacked
//! `ffn_*_exps`, the router `ffn_gate_inp`, a shared expert with its `[1, n]` gate, and
//! DeepSeek's per-head `attn_k_b` (rows of 64, so K-quants fall back). The expected types are
//! those `llama-quantize` wrote for the same tensors in the interop run of
//! `scripts/moe_quant_interop.py` (docs/moe.md), where every tensor was byte-identical.
//! Each expert slice of the output is checked against quantizing that slice alone with
//! modelgate's kernels (byte-identical to ggml's, see `quant.rs`), and gguf-py reads the
//! output as 3-D tensors whose dequantized values are ours bit for bit.

use std::collections::BTreeMap;
use std::path::Path;

use modelgate::convert::quant;
use modelgate::formats::gguf::{GgufWriter, TensorDesc};
use modelgate::formats::{Checkpoint, GgmlType, MetaValue};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support;

const N_LAYER: u64 = 4;
const N_EXPERT: u64 = 8;
const N_EMBD: u64 = 256;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        // xorshift64*, mapped to roughly N(0, 0.08) by summing uniforms.
        let mut acc = 0.0;
        for _ in 0..4 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let u = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
            acc += u - 0.5;
        }
        acc * 0.14
    }
}

/// (name, shape outermost first, type)
fn tensors() -> Vec<(String, Vec<u64>, GgmlType)> {
    let f16 = GgmlType::F16;
    let f32 = GgmlType::F32;
    let mut t = vec![("token_embd.weight".to_owned(), vec![512, N_EMBD], f16)];
    for i in 0..N_LAYER {
        let b = |s: &str| format!("blk.{i}.{s}");
        t.extend([
            (b("attn_norm.weight"), vec![N_EMBD], f32),
            (b("attn_q.weight"), vec![N_EMBD, N_EMBD], f16),
            (b("attn_k.weight"), vec![64, N_EMBD], f16),
            (b("attn_v.weight"), vec![64, N_EMBD], f16),
            (b("attn_k_b.weight"), vec![4, N_EMBD, 64], f16),
            (b("attn_output.weight"), vec![N_EMBD, N_EMBD], f16),
            (b("ffn_norm.weight"), vec![N_EMBD], f32),
            (b("ffn_gate_inp.weight"), vec![N_EXPERT, N_EMBD], f32),
            (
                b("ffn_gate_exps.weight"),
                vec![N_EXPERT, N_EMBD, N_EMBD],
                f16,
            ),
            (b("ffn_up_exps.weight"), vec![N_EXPERT, N_EMBD, N_EMBD], f16),
            (
                b("ffn_down_exps.weight"),
                vec![N_EXPERT, N_EMBD, N_EMBD],
                f16,
            ),
            (b("ffn_gate_inp_shexp.weight"), vec![1, N_EMBD], f16),
            (b("ffn_down_shexp.weight"), vec![N_EMBD, N_EMBD], f16),
        ]);
    }
    t.push(("output_norm.weight".into(), vec![N_EMBD], f32));
    t.push(("output.weight".into(), vec![512, N_EMBD], f16));
    t
}

pub fn write_input(path: &Path) {
    let meta: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::String("qwen3moe".into()),
        ),
        (
            "qwen3moe.block_count".into(),
            MetaValue::U32(N_LAYER as u32),
        ),
        ("qwen3moe.attention.head_count".into(), MetaValue::U32(4)),
        ("qwen3moe.attention.head_count_kv".into(), MetaValue::U32(1)),
        (
            "qwen3moe.expert_count".into(),
            MetaValue::U32(N_EXPERT as u32),
        ),
        ("qwen3moe.expert_used_count".into(), MetaValue::U32(2)),
    ];
    let ts = tensors();
    let descs: Vec<TensorDesc> = ts
        .iter()
        .map(|(name, shape, ty)| TensorDesc {
            name: name.clone(),
            ggml_type: *ty,
            shape: shape.clone(),
        })
        .collect();
    let file = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::new(std::io::BufWriter::new(file), &meta, &descs).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, shape, ty) in &ts {
        let n: u64 = shape.iter().product();
        let norm = name.contains("norm");
        let mut bytes = Vec::new();
        for _ in 0..n {
            let v = if norm { 1.0 + rng.next() } else { rng.next() };
            match ty {
                GgmlType::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
                _ => bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            }
        }
        w.write_tensor_chunk(name, &bytes).unwrap();
    }
    w.finish().unwrap();
}

/// The type llama-quantize gives `name` in this model (8 experts, 4 layers: `use_more_bits`
/// holds for layers 2 and 3).
fn expected(ft: &str, name: &str) -> GgmlType {
    use GgmlType as G;
    let layer: u64 = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if name.contains("norm") || name.contains("ffn_gate_inp") {
        return G::F32;
    }
    match ft {
        "Q4_K_M" => match name {
            "output.weight" => G::Q6K,
            "token_embd.weight" => G::Q4K,
            n if n.contains("attn_k.") || n.contains("attn_v.") => G::Q8_0,
            n if n.contains("attn_output") => G::Q5K,
            n if n.contains("attn_k_b") => G::Q5_0,
            n if n.contains("ffn_down") && layer >= 2 => G::Q6K,
            _ => G::Q4K,
        },
        "Q3_K_M" => match name {
            "output.weight" => G::Q6K,
            "token_embd.weight" => G::Q3K,
            n if n.contains("attn_k.") || n.contains("attn_v.") => G::Q8_0,
            n if n.contains("attn_output") => G::Q5K,
            n if n.contains("attn_k_b") => G::Q4_0,
            // i < n/16 = 0 never holds: every ffn_down is Q4_K.
            n if n.contains("ffn_down") => G::Q4K,
            _ => G::Q3K,
        },
        "MXFP4_MOE" => match name {
            n if n.contains("_exps") || n.contains("attn_k_b") => G::MXFP4,
            _ => G::Q8_0,
        },
        "Q8_0" => G::Q8_0,
        other => panic!("no table for {other}"),
    }
}

#[test]
fn moe_types_and_expert_slices_match_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("moe-f16.gguf");
    write_input(&src);
    let input = Checkpoint::open(&src).unwrap();
    let mut jobs = Vec::new();
    for ft in ["Q4_K_M", "Q3_K_M", "MXFP4_MOE", "Q8_0"] {
        let out = dir.path().join(format!("moe-{ft}.gguf"));
        let o = support::modelgate(&[
            "convert",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--type",
            ft,
        ]);
        assert!(
            o.status.success(),
            "{ft}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = Checkpoint::open(&out).unwrap();
        assert_eq!(got.weights.tensors.len(), input.weights.tensors.len());
        let mut digests = BTreeMap::new();
        for t in &got.weights.tensors {
            let name = t.name.as_str();
            let ty = t.dtype.to_ggml().unwrap();
            assert_eq!(ty, expected(ft, name), "{ft}: {name}");
            let src_t = input.weights.tensor(name).unwrap();
            if name.contains("ffn_gate_inp_shexp") {
                // `[1, n]` is one dimension for ggml: written 1-D, as llama-quantize does.
                assert_eq!(t.shape, vec![N_EMBD]);
            } else {
                assert_eq!(t.shape, src_t.shape, "{name}");
            }
            let data = got.weights.tensor_data(t).unwrap();
            if t.shape.len() == 3 {
                // Each slice (expert, or head of attn_k_b) quantized on its own.
                let row_len = *t.shape.last().unwrap() as usize;
                let slice_values = (t.shape[1] as usize) * row_len;
                let src_data = input.weights.tensor_data(src_t).unwrap();
                let slice_out = data.len() / t.shape[0] as usize;
                for e in 0..t.shape[0] as usize {
                    let f16 = &src_data[e * slice_values * 2..(e + 1) * slice_values * 2];
                    let values: Vec<f32> = f16
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect();
                    let mut want = Vec::new();
                    quant::quantize_rows(ty, &values, row_len, &mut want).unwrap();
                    assert!(
                        want == data[e * slice_out..(e + 1) * slice_out],
                        "{ft}: {name} slice {e} differs from quantizing it alone"
                    );
                }
            }
            if ty.is_quantized() {
                let v = quant::dequantize_to_vec(ty, data).unwrap();
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                digests.insert(name.to_owned(), hex::encode(Sha256::digest(&bytes)));
            }
        }
        jobs.push((out, digests));
    }
    // gguf-py reads every quantized tensor with our shape and dequantizes it to our values.
    let script = r#"
import hashlib, json, sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
out = {}
for path in sys.argv[1:]:
    r = GGUFReader(path)
    d = {}
    for t in r.tensors:
        if t.tensor_type.name in ("F32", "F16"):
            continue
        v = dequantize(t.data, t.tensor_type).astype(np.float32)
        d[t.name] = [list(int(x) for x in v.shape), hashlib.sha256(v.tobytes()).hexdigest()]
    out[path] = d
print(json.dumps(out))
"#;
    let o = support::oracle_python()
        .arg("-c")
        .arg(script)
        .args(jobs.iter().map(|(p, _)| p.as_os_str()))
        .output()
        .expect("run the oracle Python");
    assert!(
        o.status.success(),
        "gguf-py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let py: Value = serde_json::from_slice(&o.stdout).unwrap();
    for (path, digests) in &jobs {
        let theirs = &py[path.to_str().unwrap()];
        assert_eq!(
            theirs.as_object().unwrap().len(),
            digests.len(),
            "{}",
            path.display()
        );
        for (name, digest) in digests {
            let got = &theirs[name];
            assert_eq!(
                got[1],
                Value::from(digest.as_str()),
                "{name} in {}",
                path.display()
            );
            if name.contains("_exps") {
                let shape: Vec<u64> = serde_json::from_value(got[0].clone()).unwrap();
                assert_eq!(shape, vec![N_EXPERT, N_EMBD, N_EMBD], "{name}");
            }
        }
    }
}
