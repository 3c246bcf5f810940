//! CPU time of one reference-math product `x [m, k] W^T` at the 1.1B parity pair's shapes
//! (TinyLlama: m = 13 x 256 tokens, the q/o, k/v, gate/up and down projections), F16 and
//! Q4_K weights, on one thread: `gemm.rs`'s packed product (what `matmul_exact` runs for
//! many rows) against candle's GEMM on dequantized tiles (the path before it,
//! `matmul_exact_candle`).
//!
//! Run with `cargo bench --bench gemm`. CPU time, not wall time (the machine may be shared):
//! the sum of every thread's run time from `/proc/self/task/*/schedstat`, the median of
//! `RUNS` runs after a warm-up. `M=` and `SHAPES=2048x2048,...` change the sizes. One line
//! per shape and weight type, naming the microkernel that ran:
//! `gemm type=F16 n=2048 k=2048 ours=.. GF/s (.. s, avx2 6x16) candle=.. GF/s (.. s)`.
//!
//! One weight matrix fits in L3 and stays there from run to run, which hides what the whole
//! model pays: each layer's weights come from memory. `STREAM=<MiB>` instead cycles our
//! product over that many MiB of distinct copies of each weight matrix (default shape
//! 2048 x 5632, `M` default 1668: one thread's rows in the 2-thread parity run), so every
//! product reads its weights from DRAM, and reports the CPU time of one pass over them:
//! `stream type=F16 m=1668 n=2048 k=5632 copies=18 ours=.. GF/s (.. s per product)`.
//!
//! The anchor is the core itself: a first line gives its multiply-add peak on one thread
//! (`peak fma=.. GF/s`: twelve independent chains of 8-lane fused multiply-adds on
//! registers, no memory operand, so nothing but the multiply-add units limits it), and each
//! line gives our product's share of it (`.. % of peak`). The 1.1B parity run spends most of
//! its time in these products, so that share bounds what any change to them can gain.

use std::time::Duration;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use modelgate::engine::stored::{Elem, StoredMatrix};

mod support;
use support::{cpu_time, env_usize, Xorshift};

/// Deterministic values in about [-1, 1).
fn values(seed: u64, len: usize) -> Vec<f32> {
    // 2u - 1 with u a multiple of 2^-24: exact, the same values as (bits / 2^23) - 1
    let mut r = Xorshift::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..len).map(|_| 2.0 * r.unit() - 1.0).collect()
}

fn median_cpu(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let t0 = cpu_time();
            f();
            cpu_time() - t0
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

/// The shapes of `SHAPES` (`default` when unset) and the types of `TYPES`.
fn shapes_and_types(default: &str) -> (Vec<(usize, usize)>, String) {
    let shapes = std::env::var("SHAPES")
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| {
            let (n, k) = s.split_once('x')?;
            Some((n.parse().ok()?, k.parse().ok()?))
        })
        .collect();
    let types = std::env::var("TYPES").unwrap_or_else(|_| "F16,Q4_K".into());
    (shapes, types)
}

/// The stored bytes of `w [n, k]` in type `ty` (`F16` or else Q4_K).
fn encode(
    ty: &str,
    w: &[f32],
    n: usize,
    k: usize,
) -> Result<(Elem, Vec<u8>), Box<dyn std::error::Error>> {
    Ok(match ty {
        "F16" => (
            Elem::F16,
            w.iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        _ => {
            let t = Tensor::from_slice(w, (n, k), &Device::Cpu)?;
            let q = QTensor::quantize(&t, GgmlDType::Q4K)?;
            (Elem::Block(GgmlDType::Q4K), q.data()?.to_vec())
        }
    })
}

/// The `STREAM` mode: our product over `mib` MiB of copies of each weight matrix in turn.
fn streamed(mib: usize, runs: usize, peak: Option<f64>) -> Result<(), Box<dyn std::error::Error>> {
    let m = env_usize("M", 1668);
    let (shapes, types) = shapes_and_types("2048x5632");
    for &(n, k) in &shapes {
        let x = values(1, m * k);
        let w = values(2, n * k);
        for ty in types.split(',') {
            let (elem, bytes) = encode(ty, &w, n, k)?;
            // distinct buffers (the same values): what matters is that none is in cache
            let copies = (mib << 20).div_ceil(bytes.len()).max(1);
            let mats = (0..copies)
                .map(|_| StoredMatrix::from_vec(elem, n, k, bytes.clone()))
                .collect::<Option<Vec<_>>>()
                .ok_or("matrix sizes")?;
            let flop = 2.0 * (m * n * k) as f64 * copies as f64;
            let pass = median_cpu(runs, || {
                for sm in &mats {
                    std::hint::black_box(sm.matmul_exact(&x, m).ok());
                }
            });
            let gf = flop / pass.as_secs_f64() / 1e9;
            println!(
                "stream type={ty} m={m} n={n} k={k} copies={copies} ours={gf:.1} GF/s ({:.4} s per product, {}{})",
                pass.as_secs_f64() / copies as f64,
                StoredMatrix::gemm_kernel(),
                share(gf, peak),
            );
        }
    }
    Ok(())
}

/// Multiply-adds per chain in one [`fma_peak`] run.
const PEAK_STEPS: usize = 50_000_000;

/// One thread's f32 multiply-add peak in GFLOP/s: twelve independent 8-lane fused
/// multiply-add chains (more than the units' latency times their throughput, so they never
/// wait on each other), on registers only. `None` without AVX2 and FMA.
fn fma_peak(runs: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        let chains = || {
            simd.vectorize(
                #[inline(always)]
                || {
                    let (avx, fma) = (simd.avx, simd.fma);
                    let (a, b) = (avx._mm256_set1_ps(0.999_9), avx._mm256_set1_ps(1e-5));
                    let mut acc: [std::arch::x86_64::__m256; 12] =
                        std::array::from_fn(|i| avx._mm256_set1_ps(i as f32));
                    for _ in 0..PEAK_STEPS {
                        for c in acc.iter_mut() {
                            *c = fma._mm256_fmadd_ps(*c, a, b);
                        }
                    }
                    std::hint::black_box(acc);
                },
            )
        };
        let t = median_cpu(runs, chains);
        return Some((PEAK_STEPS * 12 * 8 * 2) as f64 / t.as_secs_f64() / 1e9);
    }
    // without AVX2 + FMA there is no such loop to time; the lines then give no share
    let _ = runs;
    None
}

/// `gf` as a share of `peak`, for the report (empty without a peak).
fn share(gf: f64, peak: Option<f64>) -> String {
    peak.map_or(String::new(), |p| {
        format!(", {:.0} % of peak", 100.0 * gf / p)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let runs = env_usize("RUNS", 3).max(1);
    let peak = fma_peak(runs);
    match peak {
        Some(p) => println!("peak fma={p:.1} GF/s (one thread, 12 chains of 8-lane multiply-adds)"),
        None => println!("peak fma=unknown (no AVX2 + FMA on this CPU)"),
    }
    let stream = env_usize("STREAM", 0);
    if stream > 0 {
        return streamed(stream, runs, peak);
    }
    let m = env_usize("M", 3328);
    let (shapes, types) = shapes_and_types("2048x2048,256x2048,5632x2048,2048x5632");
    for &(n, k) in &shapes {
        let x = values(1, m * k);
        let w = values(2, n * k);
        for ty in types.split(',') {
            let (elem, bytes) = encode(ty, &w, n, k)?;
            let sm = StoredMatrix::from_vec(elem, n, k, bytes).ok_or("matrix sizes")?;
            let flop = 2.0 * (m * n * k) as f64;
            let ours = median_cpu(runs, || {
                std::hint::black_box(sm.matmul_exact(&x, m).ok());
            });
            let candle = median_cpu(runs, || {
                std::hint::black_box(sm.matmul_exact_candle(&x, m).ok());
            });
            let gf = |d: Duration| flop / d.as_secs_f64() / 1e9;
            println!(
                "gemm type={ty} m={m} n={n} k={k} ours={:.1} GF/s ({:.3} s, {}{}) candle={:.1} GF/s ({:.3} s)",
                gf(ours),
                ours.as_secs_f64(),
                StoredMatrix::gemm_kernel(),
                share(gf(ours), peak),
                gf(candle),
                candle.as_secs_f64()
            );
        }
    }
    Ok(())
}
