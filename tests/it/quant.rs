//! The block-format kernels (`modelgate::convert::quant`) against independent oracles:
//! the PyPI `gguf` package's dequantizers and quantizers, ggml's own reference quantizers
//! (compiled from the ggml sources in the PyPI `ggml-python` source archive by
//! `scripts/gguf_quant_oracle.py`), and candle's dequantizers; plus property tests.
//!
//! The Python oracles (`gguf`, `numpy`) come from the pinned environment of
//! `support::oracle_python`; ggml's reference also needs a C compiler. A missing oracle
//! fails the test; it is never skipped.

use std::borrow::Cow;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use modelgate::convert::quant::{self, QuantError, SUPPORTED};
use modelgate::formats::GgmlType;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::support;

/// Deterministic pseudo-random numbers (xorshift), so every run tests the same data.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly normal: the sum of four uniforms, centred.
    fn normal(&mut self) -> f32 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 1.7
    }
}

/// ggml's test vector followed by rows shaped like real weights and awkward blocks:
/// gaussian rows at several scales, outliers, all-positive, all-negative, constant, zero,
/// sparse and tiny blocks. 196,608 values, rows of 4,096.
fn test_data() -> Vec<f32> {
    let mut x: Vec<f32> = (0..4096).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for row in 1..48 {
        let scale = [0.02f32, 1.0, 3e-4, 40.0][row % 4];
        for b in 0..128 {
            let kind = (row * 7 + b) % 11;
            for i in 0..32 {
                let n = rng.normal() * scale;
                x.push(match kind {
                    0 => n.abs() + scale * 0.1,
                    1 => -n.abs() - scale * 0.2,
                    2 => scale * 0.5,
                    3 => 0.0,
                    4 if i % 9 != 0 => 0.0,
                    5 => n * 1e-4,
                    6 if i == 13 => scale * 12.0,
                    _ => n,
                });
            }
        }
    }
    x
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_from(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Run `scripts/gguf_quant_oracle.py` on a list of jobs; panics with the script's message
/// when an oracle cannot be loaded.
fn oracle(jobs: &[Value], dir: &Path) -> Vec<Value> {
    let file = dir.join("jobs.json");
    std::fs::write(&file, serde_json::to_vec(jobs).unwrap()).unwrap();
    let out = crate::support::oracle_python()
        .arg(support::repo().join("scripts/gguf_quant_oracle.py"))
        .arg(&file)
        .output()
        .expect("run the oracle Python");
    assert!(
        out.status.success(),
        "the quant oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    quant::quantize_rows(ty, x, 4096, &mut out).unwrap();
    out
}

/// Bytes of random content for a block type, with every block's scale fields made finite
/// and every other bit random, so that dequantizers meet bit patterns our quantizer never
/// writes (unusual scales, Q3_K high bits, Q6_K sign patterns).
fn random_blocks(ty: GgmlType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let (_, size) = ty.block().unwrap();
    let mut b: Vec<u8> = (0..blocks * size as usize)
        .map(|_| (rng.unit() * 256.0) as u8)
        .collect();
    // f16 fields (offset within the block) get an exponent below the NaN/inf range.
    let halves: &[usize] = match ty {
        GgmlType::F16 => &[0],
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        GgmlType::IQ4NL | GgmlType::IQ4XS => &[0],
        GgmlType::TQ1_0 => &[52],
        GgmlType::TQ2_0 => &[64],
        _ => &[],
    };
    for block in b.chunks_exact_mut(size as usize) {
        for &at in halves {
            block[at + 1] &= 0b1011_1111; // exponent at most 0b01111: |value| < 2
        }
    }
    if ty == GgmlType::BF16 {
        for h in b.chunks_exact_mut(2) {
            h[1] &= 0b1011_1111;
        }
    }
    if ty == GgmlType::F32 {
        for f in b.chunks_exact_mut(4) {
            f[3] &= 0b1011_1111;
        }
    }
    b
}

#[test]
fn dequantizers_match_gguf_py_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let x = test_data();
    let mut rng = Rng(77);
    let mut jobs = Vec::new();
    let mut ours = Vec::new();
    for ty in SUPPORTED {
        for (kind, bytes) in [
            ("quantized", quantize(ty, &x)),
            ("random", random_blocks(ty, 512, &mut rng)),
        ] {
            let input = dir.path().join(format!("{ty}.{kind}.bin"));
            let output = dir.path().join(format!("{ty}.{kind}.f32"));
            std::fs::write(&input, &bytes).unwrap();
            jobs.push(json!({"oracle": "gguf", "op": "dequant", "type": ty.name(),
                "input": input, "output": output, "row_len": 4096}));
            ours.push((
                ty,
                kind,
                quant::dequantize_to_vec(ty, &bytes).unwrap(),
                output,
            ));
        }
    }
    oracle(&jobs, dir.path());
    for (ty, kind, mine, output) in ours {
        let theirs = f32_from(&std::fs::read(output).unwrap());
        assert_eq!(mine.len(), theirs.len(), "{ty} {kind}");
        let differ = mine
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{ty} {kind}: {differ} values differ from gguf-py"
        );
    }
}

#[test]
fn quantizers_match_ggml_and_gguf_py_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let x = test_data();
    let input = dir.path().join("values.f32");
    std::fs::write(&input, f32_bytes(&x)).unwrap();
    let mut jobs = Vec::new();
    for ty in SUPPORTED {
        for which in ["gguf", "ggml"] {
            jobs.push(json!({"oracle": which, "op": "quant", "type": ty.name(),
                "input": input, "output": dir.path().join(format!("{ty}.{which}")),
                "row_len": 4096}));
        }
    }
    let results = oracle(&jobs, dir.path());
    let mut compared = Vec::new();
    for (job, res) in jobs.iter().zip(&results) {
        if res["status"] != "ok" {
            continue;
        }
        let ty = GgmlType::from_name(job["type"].as_str().unwrap()).unwrap();
        let theirs = std::fs::read(job["output"].as_str().unwrap()).unwrap();
        let mine = quantize(ty, &x);
        let (_, size) = ty.block().unwrap();
        let blocks_differ = mine
            .chunks(size as usize)
            .zip(theirs.chunks(size as usize))
            .filter(|(a, b)| a != b)
            .count();
        eprintln!(
            "{ty}: {} blocks, {blocks_differ} differ from {}",
            mine.len() / size as usize,
            res["oracle"]
        );
        assert_eq!(mine.len(), theirs.len(), "{ty}");
        assert_eq!(
            blocks_differ, 0,
            "{ty}: bytes differ from {}",
            res["oracle"]
        );
        compared.push(format!("{ty}/{}", res["oracle"].as_str().unwrap()));
    }
    // gguf-py quantizes F16, BF16 and the legacy types; ggml's reference covers every
    // block type. Anything less means an oracle silently stopped covering a type.
    for ty in ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"] {
        assert!(
            compared.contains(&format!("{ty}/gguf")),
            "{ty}/gguf not compared"
        );
    }
    for ty in SUPPORTED.iter().filter(|t| t.is_quantized()) {
        assert!(
            compared.contains(&format!("{ty}/ggml")),
            "{ty}/ggml not compared"
        );
    }
}

fn candle_dtype(ty: GgmlType) -> GgmlDType {
    match ty {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        other => panic!("no candle type for {other}"),
    }
}

/// The types candle 0.11 can dequantize (it has no IQ or TQ types).
fn in_candle(ty: GgmlType) -> bool {
    !matches!(
        ty,
        GgmlType::IQ4NL | GgmlType::IQ4XS | GgmlType::TQ1_0 | GgmlType::TQ2_0
    )
}

fn candle_dequantize(ty: GgmlType, bytes: &[u8], values: usize) -> Vec<f32> {
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, candle_dtype(ty))
        .expect("candle storage");
    let t = QTensor::new(storage, (values,)).expect("candle qtensor");
    t.dequantize(&Device::Cpu)
        .expect("candle dequantize")
        .to_vec1::<f32>()
        .expect("candle values")
}

#[test]
fn dequantizers_match_candle() {
    let x = test_data();
    let mut rng = Rng(99);
    for ty in SUPPORTED.into_iter().filter(|t| in_candle(*t)) {
        for (kind, bytes) in [
            ("quantized", quantize(ty, &x)),
            ("random", random_blocks(ty, 256, &mut rng)),
        ] {
            let mine = quant::dequantize_to_vec(ty, &bytes).unwrap();
            let theirs = candle_dequantize(ty, &bytes, mine.len());
            let differ = mine
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "{ty} {kind}: {differ} values differ from candle");
        }
    }
}

/// Q4_1 dequantized and quantized again, on our own Q4_1 output: every block decodes to
/// values that include its minimum (level 0) and its maximum (level 15), so the requantizer
/// finds the same `d`, `m` and levels. The one exception is a block whose `d` rounded to
/// zero in f16 (values around 1e-8, or all zero): it decodes to `m` whatever its levels say,
/// and comes back with all levels 0 (and a minimum of -0.0 comes back as +0.0). Values are
/// reproduced exactly in every case.
#[test]
fn q4_1_requantization_reproduces_the_bytes() {
    let x = test_data();
    let first = quantize(GgmlType::Q4_1, &x);
    let values = quant::dequantize_to_vec(GgmlType::Q4_1, &first).unwrap();
    let second = quantize(GgmlType::Q4_1, &values);
    let again = quant::dequantize_to_vec(GgmlType::Q4_1, &second).unwrap();
    assert!(values
        .iter()
        .zip(&again)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let mut differ = 0;
    for (a, b) in first.chunks(20).zip(second.chunks(20)) {
        if a != b {
            differ += 1;
            assert_eq!(
                &a[..2],
                &[0, 0],
                "a block with d != 0 changed: {a:?} -> {b:?}"
            );
            // m = -0.0 decodes to +0.0 (0 * 0 + -0 = +0) and comes back as +0.0.
            assert!(a[2..4] == b[2..4] || (a[2..4] == [0, 0x80] && b[2..4] == [0, 0]));
            assert!(b[4..].iter().all(|q| *q == 0));
        }
    }
    eprintln!(
        "Q4_1 requantization: {differ} of {} blocks differ, all with d = 0",
        first.len() / 20
    );
}

/// The largest error a round trip may make on a block, as a fraction of the block's
/// largest magnitude: a little over one quantization step (the legacy types clamp the
/// value opposite the extreme to one step short; K types also round their group scales
/// and minimums to 4, 6 or 8 bits).
fn step_fraction(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1.0 / 1024.0,
        GgmlType::BF16 => 1.0 / 128.0,
        GgmlType::Q8_0 => 1.0 / 127.0,
        GgmlType::Q4_0 => 0.135,
        GgmlType::Q5_0 => 0.07,
        GgmlType::Q4_1 => 0.075,
        GgmlType::Q5_1 => 0.04,
        GgmlType::Q6K => 0.05,
        GgmlType::Q5K => 0.1,
        GgmlType::Q4K => 0.2,
        GgmlType::Q3K => 0.4,
        GgmlType::Q2K => 0.8,
        // Non-uniform levels: the widest gap is 24 of 127, and the scale search may leave
        // the block maximum away from the outermost level.
        GgmlType::IQ4NL => 0.2,
        GgmlType::IQ4XS => 0.3,
        // Three levels: -d, 0, d with d the block maximum (rounded to f16).
        GgmlType::TQ1_0 | GgmlType::TQ2_0 => 0.51,
        other => panic!("{other}"),
    }
}

/// What rounding an f16 scale into the subnormal range (steps of 2^-24) can cost on top:
/// half a step times the largest factor the scale is multiplied by when decoding.
fn f16_floor(ty: GgmlType) -> f32 {
    let factor = match ty {
        GgmlType::F32 | GgmlType::BF16 => 0.0,
        GgmlType::F16 => 1.0,
        GgmlType::Q8_0 => 128.0,
        GgmlType::Q4_0 => 8.0,
        GgmlType::Q5_0 => 16.0,
        GgmlType::Q4_1 => 16.0,
        GgmlType::Q5_1 => 32.0,
        GgmlType::Q2K => 15.0 * 3.0 + 15.0,
        GgmlType::Q3K => 32.0 * 4.0,
        GgmlType::Q4K => 63.0 * 15.0 + 63.0,
        GgmlType::Q5K => 63.0 * 31.0 + 63.0,
        GgmlType::Q6K => 128.0 * 32.0,
        GgmlType::IQ4NL => 127.0,
        GgmlType::IQ4XS => 32.0 * 127.0,
        GgmlType::TQ1_0 | GgmlType::TQ2_0 => 1.0,
        other => panic!("{other}"),
    };
    factor * 2f32.powi(-25)
}

fn row_strategy() -> impl Strategy<Value = (usize, Vec<f32>)> {
    (
        0..SUPPORTED.len(),
        1usize..3,
        prop::sample::select(vec![1e-4f32, 0.02, 1.0, 300.0]),
    )
        .prop_flat_map(|(t, blocks, scale)| {
            let ty = SUPPORTED[t];
            let len = blocks * quant::block_len(ty).unwrap().max(32) * 8;
            (
                Just(t),
                prop::collection::vec(
                    prop_oneof![
                        8 => (-1.0f32..1.0).prop_map(move |v| v * scale),
                        1 => Just(0.0f32),
                        1 => (-1.0f32..1.0).prop_map(move |v| v * scale * 1e-3),
                    ],
                    len,
                ),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn round_trips_stay_within_a_step((t, x) in row_strategy()) {
        let ty = SUPPORTED[t];
        let block = quant::block_len(ty).unwrap().max(32);
        let mut bytes = Vec::new();
        quant::quantize_rows(ty, &x, x.len(), &mut bytes).unwrap();
        prop_assert_eq!(bytes.len(), quant::row_bytes(ty, x.len()).unwrap());
        let y = quant::dequantize_to_vec(ty, &bytes).unwrap();
        let (bound, floor) = (step_fraction(ty), f16_floor(ty));
        for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                prop_assert!(
                    (a - b).abs() <= bound * amax + floor,
                    "{}: {} became {} (block max {})", ty, a, b, amax
                );
            }
        }
        // Same input, same bytes: on one thread as on the shared pool.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let mut again = Vec::new();
        pool.install(|| quant::quantize_rows(ty, &x, x.len(), &mut again)).unwrap();
        prop_assert_eq!(bytes, again);
    }

    #[test]
    fn misshapen_rows_are_refused(len in 1usize..2000, row_len in 1usize..600) {
        for ty in SUPPORTED {
            let x = vec![0.25f32; len];
            let mut out = Vec::new();
            let r = quant::quantize_rows(ty, &x, row_len, &mut out);
            let block = quant::block_len(ty).unwrap();
            let fits = row_len % block == 0 && len % row_len == 0;
            prop_assert_eq!(r.is_ok(), fits, "{} len {} row {}", ty, len, row_len);
            if let Err(QuantError::RowNotBlocks { block: b, .. }) = r {
                prop_assert_eq!(b, block);
            }
            prop_assert_eq!(quant::row_fits(ty, row_len), row_len % block == 0);
        }
    }
}

/// Per-column importance for rows of `n`: `kind` 0 is uniform random in (0, 2); 1 looks like
/// a real imatrix (log-normal spread over four decades, a few columns a thousand times the
/// rest, a few exactly zero, as for an unused input channel).
fn importance(n: usize, kind: u8, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| match kind {
            0 => rng.unit() * 2.0 + 1e-3,
            _ => {
                let v = (rng.normal() * 2.0).exp() * 0.05;
                match i % 97 {
                    5 => v * 1000.0,
                    11 => 0.0,
                    _ => v,
                }
            }
        })
        .collect()
}

/// Every type `llama-quantize` can write with an importance matrix, with and without one,
/// against ggml's own `quantize_<type>(.., imatrix)` (compiled from the ggml-python sdist):
/// byte-identical for rows of several lengths, random and realistic importance.
#[test]
fn weighted_quantizers_match_ggml_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = test_data();
    let mut rng = Rng(0xfeed);
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ];
    let mut jobs = Vec::new();
    let mut ours = Vec::new();
    for ty in types {
        let block = quant::block_len(ty).unwrap();
        // Row lengths: one block, a few blocks, a SmolLM2 width (576, or 768 for 256-blocks),
        // and 4096.
        let lens = if block == 32 {
            [32, 96, 576, 4096]
        } else {
            [256, 512, 768, 4096]
        };
        for row_len in lens {
            let rows = (data.len() / row_len).min(24);
            let x = &data[data.len() - rows * row_len..];
            let input = dir.path().join(format!("{ty}.{row_len}.f32"));
            std::fs::write(&input, f32_bytes(x)).unwrap();
            for kind in [None, Some(0u8), Some(1u8)] {
                let imp = kind.map(|k| importance(row_len, k, &mut rng));
                let tag = format!("{ty}.{row_len}.{kind:?}");
                let mut job = json!({"oracle": "ggml", "op": "quant", "type": ty.name(),
                    "input": input, "output": dir.path().join(format!("{tag}.ggml")),
                    "row_len": row_len});
                if let Some(imp) = &imp {
                    let path = dir.path().join(format!("{tag}.imp"));
                    std::fs::write(&path, f32_bytes(imp)).unwrap();
                    job["importance"] = json!(path);
                }
                let mut mine = Vec::new();
                quant::quantize_rows_weighted(ty, x, row_len, imp.as_deref(), &mut mine).unwrap();
                ours.push((tag, ty, mine, job["output"].clone()));
                jobs.push(job);
            }
        }
    }
    let results = oracle(&jobs, dir.path());
    assert!(results.iter().all(|r| r["status"] == "ok"), "{results:?}");
    let mut failed = Vec::new();
    for (tag, ty, mine, output) in &ours {
        let theirs = std::fs::read(output.as_str().unwrap()).unwrap();
        let (_, size) = ty.block().unwrap();
        assert_eq!(mine.len(), theirs.len(), "{tag}");
        let differ = mine
            .chunks(size as usize)
            .zip(theirs.chunks(size as usize))
            .filter(|(a, b)| a != b)
            .count();
        if differ > 0 {
            failed.push(format!("{tag}: {differ} blocks differ"));
        }
    }
    eprintln!("{} quantizations compared with ggml", ours.len());
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn importance_of_the_wrong_shape_is_refused() {
    let x = vec![0.5f32; 512];
    let mut out = Vec::new();
    let err = quant::quantize_rows_weighted(GgmlType::Q4K, &x, 256, Some(&[1.0; 255]), &mut out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the importance has 255 values for rows of 256"
    );
    let mut bad = vec![1.0f32; 256];
    bad[7] = f32::NAN;
    let err =
        quant::quantize_rows_weighted(GgmlType::Q4K, &x, 256, Some(&bad), &mut out).unwrap_err();
    assert!(err.to_string().starts_with("importance value 7 is NaN"));
    assert!(out.is_empty());
    // Types ggml quantizes without regard to importance take it and ignore it.
    let mut a = Vec::new();
    let mut b = Vec::new();
    quant::quantize_rows_weighted(GgmlType::Q8_0, &x, 256, Some(&[2.0; 256]), &mut a).unwrap();
    quant::quantize_rows(GgmlType::Q8_0, &x, 256, &mut b).unwrap();
    assert_eq!(a, b);
}
