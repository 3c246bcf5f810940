//! The block-format kernels (`modelgate::convert::quant`) against independent oracles:
//! the PyPI `gguf` package's dequantizers and quantizers, ggml's own reference quantizers
//! (compiled from the ggml sources in the PyPI `llama-cpp-python` source archive by
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
    quantize_any(ty, x, 4096)
}

/// Uniform importance for the types that cannot be quantized without (IQ2_XXS, IQ2_XS),
/// none for the others.
fn ones_if_needed(ty: GgmlType, row_len: usize) -> Option<Vec<f32>> {
    quant::needs_importance(ty).then(|| vec![1.0; row_len])
}

/// [`quant::quantize_rows`], with uniform importance where the type needs importance.
fn quantize_any(ty: GgmlType, x: &[f32], row_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let qw = ones_if_needed(ty, row_len);
    quant::quantize_rows_weighted(ty, x, row_len, qw.as_deref(), &mut out).unwrap();
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
        GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ2S => &[0],
        GgmlType::IQ3XXS | GgmlType::IQ3S => &[0],
        GgmlType::IQ1S => &[0],
        GgmlType::TQ1_0 => &[52],
        GgmlType::TQ2_0 => &[64],
        _ => &[],
    };
    for block in b.chunks_exact_mut(size as usize) {
        for &at in halves {
            block[at + 1] &= 0b1011_1111; // exponent at most 0b01111: |value| < 2
        }
    }
    if ty == GgmlType::IQ1M {
        // The f16 super-scale's top nibble (sign, exponent high bits) is in byte 55.
        for block in b.chunks_exact_mut(size as usize) {
            block[55] &= 0b1011_1111;
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
    let ones = dir.path().join("ones.f32");
    std::fs::write(&ones, f32_bytes(&[1.0; 4096])).unwrap();
    let mut jobs = Vec::new();
    for ty in SUPPORTED {
        for which in ["gguf", "ggml"] {
            let mut job = json!({"oracle": which, "op": "quant", "type": ty.name(),
                "input": input, "output": dir.path().join(format!("{ty}.{which}")),
                "row_len": 4096});
            if quant::needs_importance(ty) {
                job["importance"] = json!(ones);
            }
            jobs.push(job);
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

/// The types candle 0.11 can dequantize (it has no IQ, TQ or MXFP4 types).
fn in_candle(ty: GgmlType) -> bool {
    !matches!(
        ty,
        GgmlType::IQ4NL
            | GgmlType::IQ4XS
            | GgmlType::TQ1_0
            | GgmlType::TQ2_0
            | GgmlType::MXFP4
            | GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ3XXS
            | GgmlType::IQ3S
            | GgmlType::IQ1S
            | GgmlType::IQ1M
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
        // Magnitudes 1, 3 or 5 times a group scale, only in the combinations of the grid,
        // and the sign of the least important of 8 values may be flipped to make the
        // count of negative signs even: a value can land a whole block maximum away.
        GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ2S => 1.3,
        // The scale is a power of two with the block maximum in [4, 8) steps of it; the top
        // level is 6, and levels 4 and 6 are two steps apart: a quarter of the maximum.
        GgmlType::MXFP4 => 0.2501,
        // Lattice points: a group of four values may be moved to a neighbouring grid point
        // when its rounded levels are not one, and a group's scale has 4 bits.
        GgmlType::IQ3S => 0.6,
        // Also 7 sign bits per 8 values: with an odd count of negative values, the one of
        // least weight (here the smallest) is stored with the wrong sign.
        GgmlType::IQ3XXS => 2.01,
        // Three levels (-1, 0, 1) shifted by 1/8 and only in the grid's combinations: a
        // value can land a whole block maximum away.
        GgmlType::IQ1S | GgmlType::IQ1M => 2.01,
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
        GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ2S => 43.0 * 15.5 * 0.25,
        // An E8M0 scale is never rounded.
        GgmlType::MXFP4 => 0.0,
        GgmlType::IQ3XXS => 15.5 * 0.5 * 62.0,
        GgmlType::IQ3S => 31.0 * 15.0,
        GgmlType::IQ1S | GgmlType::IQ1M => 15.0 * 1.125,
        other => panic!("{other}"),
    };
    factor * 2f32.powi(-25)
}

/// Whether a super-block has an all-zero 32-value group before a group that is not: ggml's
/// IQ3_S then stores the later groups' indices and signs one slot early (a quirk
/// `convert::quant::iq3` keeps for byte identity, checked against ggml elsewhere), so the
/// block does not decode to its values.
fn zero_group_before_data(xb: &[f32]) -> bool {
    let zero: Vec<bool> = xb.chunks(32).map(|g| g.iter().all(|v| *v == 0.0)).collect();
    zero.iter()
        .enumerate()
        .any(|(i, &z)| z && zero[i + 1..].iter().any(|z| !z))
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
        let bytes = quantize_any(ty, &x, x.len());
        prop_assert_eq!(bytes.len(), quant::row_bytes(ty, x.len()).unwrap());
        let y = quant::dequantize_to_vec(ty, &bytes).unwrap();
        let (bound, floor) = (step_fraction(ty), f16_floor(ty));
        for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
            if ty == GgmlType::IQ3S && zero_group_before_data(xb) {
                continue;
            }
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
        let again = pool.install(|| quantize_any(ty, &x, x.len()));
        prop_assert_eq!(bytes, again);
    }

    #[test]
    fn misshapen_rows_are_refused(len in 1usize..2000, row_len in 1usize..600) {
        for ty in SUPPORTED {
            let x = vec![0.25f32; len];
            let mut out = Vec::new();
            let qw = ones_if_needed(ty, row_len);
            let r = quant::quantize_rows_weighted(ty, &x, row_len, qw.as_deref(), &mut out);
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

/// Every type `llama-quantize` can write with an importance matrix, with and without one
/// (IQ2_XXS and IQ2_XS only with), against ggml's own `quantize_<type>(.., imatrix)` (compiled from the llama-cpp-python sdist):
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
        GgmlType::MXFP4,
        GgmlType::IQ2XXS,
        GgmlType::IQ2XS,
        GgmlType::IQ2S,
        GgmlType::IQ3XXS,
        GgmlType::IQ3S,
        GgmlType::IQ1S,
        GgmlType::IQ1M,
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
            // ggml refuses IQ2_XXS and IQ2_XS without importance (so does `quantize_rows`).
            let kinds: &[Option<u8>] = if quant::needs_importance(ty) {
                &[Some(0), Some(1)]
            } else {
                &[None, Some(0), Some(1)]
            };
            for &kind in kinds {
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

/// The 2-bit lattice targets without an importance matrix: exit 2 naming a tensor that
/// needs one (as `llama-quantize` refuses them), with the hint, and nothing written. (On
/// SmolLM2 the 1536-wide `ffn_down` rows take the lattice types.)
#[test]
fn lattice_targets_without_an_imatrix_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::smollm2();
    for ty in ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_M"] {
        let out = dir.path().join(format!("{ty}.gguf"));
        let o = support::modelgate(&[
            "convert",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--type",
            ty,
            "--allow-requantize",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{ty}: {err}");
        assert!(
            err.contains("which needs an importance matrix"),
            "{ty}: {err}"
        );
        assert!(err.contains("--imatrix FILE"), "{ty}: {err}");
        assert!(!out.exists(), "{ty}");
    }
    // The kernels refuse too, whatever calls them.
    let err = quant::quantize_rows(GgmlType::IQ2XXS, &[0.5; 256], 256, &mut Vec::new());
    assert_eq!(
        err.unwrap_err().to_string(),
        "`IQ2_XXS` needs an importance matrix (imatrix) to quantize"
    );
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

/// MXFP4 blocks at the edges of ggml's reference quantizer, against ggml's C code and
/// gguf-py's quantizer: maxima just below a power of two (where `log2f` rounds up), values
/// exactly halfway between levels (ties go to the first code), maxima below 2^-125 (where
/// ggml's exponent wraps to 248 or 255), the largest floats, and signed zeros.
#[test]
fn mxfp4_edge_blocks_match_ggml_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut x: Vec<f32> = Vec::new();
    let mut block = |f: &dyn Fn(usize) -> f32| x.extend((0..32).map(f));
    block(&|i| {
        if i == 0 {
            8.0f32.next_down()
        } else {
            i as f32 * 0.2
        }
    });
    block(&|i| if i == 3 { -(16.0f32.next_down()) } else { 0.1 });
    // amax 6: d = 0.5, levels 0, 0.5, 1, 1.5, 2, 3, 4, 6; halfway points and their negatives.
    let halves = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
    block(&|i| {
        if i == 0 {
            6.0
        } else {
            halves[i % 7] * if i % 2 == 0 { 1.0 } else { -1.0 }
        }
    });
    block(&|i| if i % 3 == 0 { -0.0 } else { 0.0 });
    block(&|i| 1e-40 * (i as f32 + 1.0) / 32.0);
    block(&|i| if i == 5 { 1.2e-38 } else { 3e-39 });
    block(&|i| {
        if i == 9 {
            f32::MAX
        } else {
            -3e38 + i as f32 * 1e37
        }
    });
    block(&|i| (i as f32 - 15.5) * 1e-3);
    x.extend(test_data().into_iter().take(4096));
    let input = dir.path().join("edges.f32");
    std::fs::write(&input, f32_bytes(&x)).unwrap();
    let jobs: Vec<Value> = ["ggml", "gguf"]
        .iter()
        .map(|o| {
            json!({"oracle": o, "op": "quant", "type": "MXFP4", "input": input,
                "output": dir.path().join(format!("edges.{o}")), "row_len": 32})
        })
        .collect();
    let results = oracle(&jobs, dir.path());
    assert!(results.iter().all(|r| r["status"] == "ok"), "{results:?}");
    let mut mine = Vec::new();
    quant::quantize_rows(GgmlType::MXFP4, &x, 32, &mut mine).unwrap();
    for job in &jobs {
        let theirs = std::fs::read(job["output"].as_str().unwrap()).unwrap();
        assert_eq!(mine.len(), theirs.len());
        for (b, (m, t)) in mine.chunks(17).zip(theirs.chunks(17)).enumerate() {
            assert_eq!(m, t, "block {b} differs from {}", job["oracle"]);
        }
    }
    // The wrapped exponents are ggml's, not a clamp of ours.
    assert_eq!(mine[4 * 17], 248);
    assert_eq!(mine[5 * 17], 255);
}

fn moe_fixture(name: &str) -> Vec<u8> {
    let path = support::repo()
        .join("fixtures/oracles/moe-kernels")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Values equal as numbers (ggml decodes code 8 as +0 where transformers has -0) or both NaN.
fn same_value(a: f32, b: f32) -> bool {
    a == b || a.is_nan() && b.is_nan()
}

/// gpt-oss's Hugging Face MXFP4 layout repacked into ggml's blocks: byte-identical to
/// llama.cpp's converter (`GptOssModel.repack_mxfp4`, run by
/// `scripts/make_moe_kernel_fixtures.py`), and decoding (ours and gguf-py's) to the values
/// transformers' `convert_moe_packed_tensors` gives; then a larger random tensor built here,
/// against gguf-py's dequantizer and a numpy decoding of the Hugging Face layout.
#[test]
fn hf_mxfp4_repacks_as_llama_cpp_and_decodes_as_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = moe_fixture("mxfp4_hf_blocks.u8");
    let scales = moe_fixture("mxfp4_hf_scales.u8");
    let packed = quant::repack_hf_mxfp4("blk.0.ffn_down_exps.weight", &blocks, &scales).unwrap();
    assert_eq!(packed, moe_fixture("mxfp4_llama_cpp.bin"));
    let hf = f32_from(&moe_fixture("mxfp4_transformers.f32"));
    let ours = quant::dequantize_to_vec(GgmlType::MXFP4, &packed).unwrap();
    assert_eq!(ours.len(), hf.len());
    assert!(ours.iter().zip(&hf).all(|(a, b)| same_value(*a, *b)));

    // 4 experts x 64 rows x 90 blocks of random codes and scales 0..=254.
    let mut rng = Rng(0x6d78_6670_3400);
    let n = 4 * 64 * 90;
    let big_blocks: Vec<u8> = (0..n * 16).map(|_| (rng.unit() * 256.0) as u8).collect();
    let big_scales: Vec<u8> = (0..n).map(|_| (rng.unit() * 255.0) as u8).collect();
    let big = quant::repack_hf_mxfp4("w", &big_blocks, &big_scales).unwrap();
    let mut jobs = Vec::new();
    for (tag, bytes) in [("fixture", &packed), ("random", &big)] {
        let input = dir.path().join(format!("{tag}.mxfp4"));
        std::fs::write(&input, bytes).unwrap();
        jobs.push(
            json!({"oracle": "gguf", "op": "dequant", "type": "MXFP4", "input": input,
            "output": dir.path().join(format!("{tag}.gguf.f32")), "row_len": 32}),
        );
    }
    let (bi, si) = (
        dir.path().join("random.blocks"),
        dir.path().join("random.scales"),
    );
    std::fs::write(&bi, &big_blocks).unwrap();
    std::fs::write(&si, &big_scales).unwrap();
    jobs.push(
        json!({"oracle": "hf", "op": "dequant", "type": "MXFP4", "input": bi,
        "scales": si, "output": dir.path().join("random.hf.f32")}),
    );
    oracle(&jobs, dir.path());
    let read = |name: &str| f32_from(&std::fs::read(dir.path().join(name)).unwrap());
    let gguf_fixture = read("fixture.gguf.f32");
    assert!(gguf_fixture
        .iter()
        .zip(&hf)
        .all(|(a, b)| same_value(*a, *b)));
    let (gguf_random, hf_random) = (read("random.gguf.f32"), read("random.hf.f32"));
    let ours_random = quant::dequantize_to_vec(GgmlType::MXFP4, &big).unwrap();
    assert_eq!(gguf_random.len(), n * 32);
    assert_eq!(hf_random.len(), n * 32);
    let differ = (0..n * 32)
        .filter(|&i| {
            !same_value(gguf_random[i], hf_random[i]) || !same_value(ours_random[i], hf_random[i])
        })
        .count();
    assert_eq!(differ, 0, "{differ} of {} values differ", n * 32);
}

/// FP8 E4M3: all 256 codes decode as torch's `float8_e4m3fn`, and block-scaled weights
/// (a 130 x 259 weight in 128 x 128 blocks, a 2 x 10 x 13 weight in 4 x 8 blocks, both
/// with partial edge blocks) dequantize bit for bit as llama.cpp's converter does.
#[test]
fn fp8_dequantizes_as_torch_and_llama_cpp() {
    let table = f32_from(&moe_fixture("fp8_e4m3fn.f32"));
    assert_eq!(table.len(), 256);
    for (code, want) in table.iter().enumerate() {
        let got = quant::f8_e4m3_to_f32(code as u8);
        assert!(
            got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
            "code {code:#04x}: {got} vs torch {want}"
        );
    }
    let shapes: Value = serde_json::from_slice(&moe_fixture("shapes.json")).unwrap();
    for case in ["fp8_2d", "fp8_3d"] {
        let dims = |k: &str| -> Vec<usize> {
            shapes[case][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        };
        let (shape, scale_shape, block) = (dims("shape"), dims("scale_shape"), dims("block"));
        let weight = moe_fixture(&format!("{case}_weight.u8"));
        let scale = f32_from(&moe_fixture(&format!("{case}_scale.f32")));
        let want = f32_from(&moe_fixture(&format!("{case}_llama_cpp.f32")));
        let scale = quant::Fp8Scale {
            values: &scale,
            shape: &scale_shape,
        };
        let got =
            quant::dequantize_fp8_e4m3(case, &weight, &shape, Some(scale), Some(&block)).unwrap();
        assert_eq!(got.len(), want.len(), "{case}");
        let differ = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()))
            .count();
        assert_eq!(differ, 0, "{case}: {differ} values differ from llama.cpp");
    }
}

/// The engine runs a model holding the types candle cannot read (IQ4_NL, IQ4_XS, TQ1_0,
/// TQ2_0; decoded by `formats::blocks`): SmolLM2 with its ffn_down in IQ4_XS, TQ2_0 and
/// TQ1_0 and its attn_q in IQ4_NL. gguf-py dequantizes every such tensor to the values of
/// modelgate's F32 file bit for bit, and the engine's reference logits on the quantized file
/// equal its logits on that F32 file; native math (dequantize, then multiply) stays close.
#[test]
fn engine_runs_iq4_and_ternary_models_with_gguf_py_values() {
    use modelgate::engine::{Logits, Math, Model, ModelConfig};
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("mixed.gguf");
    let f = dir.path().join("f32.gguf");
    let src = support::smollm2();
    let o = support::modelgate(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        q.to_str().unwrap(),
        "--type",
        "Q8_0",
        "--allow-requantize",
        "--tensor-type",
        r"blk\.[0-9]*[02468]\.ffn_down=IQ4_XS",
        "--tensor-type",
        r"blk\.[0-9]*[13]\.ffn_down=TQ2_0",
        "--tensor-type",
        "ffn_down=TQ1_0",
        "--tensor-type",
        "attn_q=IQ4_NL",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = support::modelgate(&[
        "convert",
        q.to_str().unwrap(),
        "-o",
        f.to_str().unwrap(),
        "--type",
        "F32",
        "--allow-requantize",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = support::oracle_python()
        .arg(support::repo().join("tests/it/iquant_check.py"))
        .arg(&q)
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{r}");
    for t in ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"] {
        assert!(r["compared"][t].as_u64().unwrap_or(0) >= 4, "{r}");
    }
    assert_eq!(r["differ"], json!([]));

    let logits = |path: &Path, math: Math| {
        let ckpt = modelgate::formats::Checkpoint::open(path).unwrap();
        let cfg = ModelConfig::new(&ckpt.params(), None, &ckpt.weights.metadata).unwrap();
        let mut m = Model::load(&ckpt.weights, cfg, math, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..24).map(|i| 100 + 37 * i).collect();
        m.forward(&ids, Logits::All)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mixed = logits(&q, Math::Reference);
    let dense = logits(&f, Math::Reference);
    let worst = mixed
        .iter()
        .zip(&dense)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("reference logits, quantized file vs its F32 values: max |delta| {worst:e}");
    assert!(worst <= 1e-4, "{worst}");
    // Native math quantizes activations to 8 bits for the Q8_0 tensors (as llama.cpp
    // does), so its logits differ; the top token at each position should mostly agree.
    let native = logits(&q, Math::Native);
    assert!(native.iter().all(|v| v.is_finite()));
    let vocab = native.len() / 24;
    let top = |v: &[f32]| {
        v.chunks(vocab)
            .map(|r| (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b }))
            .collect::<Vec<_>>()
    };
    let agree = top(&native)
        .iter()
        .zip(top(&dense))
        .filter(|(a, b)| **a == *b)
        .count();
    eprintln!("native vs reference: same top token at {agree} of 24 positions");
    assert!(agree >= 20, "{agree}");
}
