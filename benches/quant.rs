//! Throughput of the block-format kernels (`modelgate::convert::quant`) against candle's
//! `QTensor::quantize`, on one matrix shaped like a TinyLlama-1.1B feed-forward weight
//! (2048 x 5632, weight-like random values).
//!
//!     cargo bench --bench quant
//!
//! Prints, per type: million elements quantized per second by modelgate on 1 and 2 threads
//! and by candle (single-threaded), dequantization speed, and the round-trip error of both
//! (RMS of the difference over RMS of the input), so speed and quality are read together.
//! Each figure is the best of a few runs. On a shared machine wall-clock figures move with
//! the load, so the single-thread columns are also given per CPU-second (CPU time of every
//! thread of the process, from `/proc/self/task/*/schedstat`), which the load barely moves.
//! `MODELGATE_BENCH_ROWS` shrinks the matrix; `MODELGATE_BENCH_TYPES=Q4_K,Q6_K` picks types.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use modelgate::convert::quant;
use modelgate::formats::GgmlType;

mod support;
use support::{cpu_seconds, Xorshift};

const COLS: usize = 5632;
const RUNS: usize = 3;

fn weights(n: usize) -> Vec<f32> {
    let mut r = Xorshift::new(0x2545_f491_4f6c_dd1d);
    let mut unit = move || r.unit();
    (0..n)
        .map(|i| {
            let g = unit() + unit() + unit() + unit() - 2.0;
            // A few outlier columns, as real projections have.
            if i % COLS == 77 {
                g * 0.3
            } else {
                g * 0.03
            }
        })
        .collect()
}

/// Best wall time and best CPU time over the runs, and the last result.
fn best_of<T>(mut f: impl FnMut() -> T) -> (f64, f64, T) {
    let (mut wall, mut cpu) = (f64::INFINITY, f64::INFINITY);
    let mut out = None;
    for _ in 0..RUNS {
        let (t, c) = (Instant::now(), cpu_seconds());
        let r = f();
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu = cpu.min(cpu_seconds() - c);
        out = Some(r);
    }
    (wall, cpu, out.expect("RUNS > 0"))
}

fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in x.iter().zip(y) {
        num += f64::from(a - b).powi(2);
        den += f64::from(*a).powi(2);
    }
    (num / den).sqrt()
}

fn main() {
    let rows: usize = std::env::var("MODELGATE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let n = rows * COLS;
    let x = weights(n);
    let tensor = Tensor::from_slice(&x, (rows, COLS), &Device::Cpu).expect("tensor");
    let pool = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .expect("thread pool")
    };
    let (one, two) = (pool(1), pool(2));
    let mega = n as f64 / 1e6;
    println!("{rows} x {COLS} = {n} values, best of {RUNS} runs, M elements/s");
    println!(
        "{:<6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "type",
        "ours 1t",
        "ours 2t",
        "candle",
        "ours/cpu-s",
        "candle/cpu",
        "dequant 2t",
        "err ours",
        "err candle"
    );
    let only = std::env::var("MODELGATE_BENCH_TYPES").ok();
    let types = [
        (GgmlType::Q8_0, GgmlDType::Q8_0),
        (GgmlType::Q4_0, GgmlDType::Q4_0),
        (GgmlType::Q4_1, GgmlDType::Q4_1),
        (GgmlType::Q5_0, GgmlDType::Q5_0),
        (GgmlType::Q5_1, GgmlDType::Q5_1),
        (GgmlType::Q2K, GgmlDType::Q2K),
        (GgmlType::Q3K, GgmlDType::Q3K),
        (GgmlType::Q4K, GgmlDType::Q4K),
        (GgmlType::Q5K, GgmlDType::Q5K),
        (GgmlType::Q6K, GgmlDType::Q6K),
        (GgmlType::F16, GgmlDType::F16),
        (GgmlType::BF16, GgmlDType::BF16),
    ];
    for (ty, cty) in types {
        if let Some(only) = &only {
            if !only.split(',').any(|t| t.eq_ignore_ascii_case(ty.name())) {
                continue;
            }
        }
        let run = |p: &rayon::ThreadPool| {
            best_of(|| {
                let mut out = Vec::new();
                p.install(|| quant::quantize_rows(ty, &x, COLS, &mut out))
                    .expect("quantize");
                out
            })
        };
        let (t1, c1, bytes) = run(&one);
        let (t2, _, _) = run(&two);
        // On a pool thread too, so that its CPU time is counted the same way.
        let (tc, cc, q) =
            best_of(|| one.install(|| QTensor::quantize(&tensor, cty).expect("candle quantize")));
        let (td, _, y) = best_of(|| {
            let mut y = vec![0.0f32; n];
            two.install(|| quant::dequantize(ty, &bytes, &mut y))
                .expect("dequantize");
            y
        });
        let yc = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("candle dequantize");
        println!(
            "{:<6} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>10.1} {:>10.3e} {:>10.3e}",
            ty.name(),
            mega / t1,
            mega / t2,
            mega / tc,
            mega / c1,
            mega / cc,
            mega / td,
            rel_rms(&x, &y),
            rel_rms(&x, &yc),
        );
    }
}
