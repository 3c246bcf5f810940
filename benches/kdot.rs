//! CPU cost of native math's dense K-quant products (`StoredMatrix::matmul_quantized` on
//! Q4_K and Q6_K weights, the integer kernel of `src/engine/kdot.rs`) at the shapes of a
//! TinyLlama-1.1B parity run: 3328 activation rows (13 sequences of 256 tokens, one layer
//! at a time) against each projection of a layer, and 1664 rows (the scored half of each
//! sequence) against the 32000-row Q6_K output head.
//!
//!     cargo bench --bench kdot
//!
//! Each product runs on a one-thread pool; the figure is CPU time of every thread of the
//! process (`/proc/self/task/*/schedstat`, which the load of a shared machine barely moves),
//! best of `RUNS`, in nanoseconds per (weight row, activation row, 256-value super-block)
//! triple, activation quantization and output layout included. `bits` is a hash of the
//! output's f32 bits: a change of loop order or blocking must leave it as it was.
//! `MODELGATE_BENCH_M` sets the activation rows (the head takes half), `MODELGATE_BENCH_ONLY=q4k`
//! or `=q6k` keeps one weight type, `THREADS` sizes the pool (default 1).

use std::time::Instant;

use candle_core::quantized::GgmlDType;
use modelgate::convert::quant;
use modelgate::engine::stored::{Elem, StoredMatrix};
use modelgate::formats::GgmlType;

mod support;
use support::{cpu_seconds, Xorshift};

const RUNS: usize = 3;

/// Deterministic values of roughly unit scale (sum of four uniforms), `scale` times.
fn noise(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut r = Xorshift::new(0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut unit = move || r.unit();
    (0..n)
        .map(|_| (unit() + unit() + unit() + unit() - 2.0) * scale)
        .collect()
}

/// FNV-1a over the f32 bits.
fn bits_hash(v: &[f32]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0100_0000_01b3)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let m = env("MODELGATE_BENCH_M", 3328).max(1);
    let threads = env("THREADS", 1).max(1);
    let only = std::env::var("MODELGATE_BENCH_ONLY").ok();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    // (name, type, n, k, activation rows)
    let shapes = [
        ("attn_q/o", GgmlType::Q4K, 2048, 2048, m),
        ("attn_k", GgmlType::Q4K, 256, 2048, m),
        ("attn_v", GgmlType::Q6K, 256, 2048, m),
        ("ffn_gate/up", GgmlType::Q4K, 5632, 2048, m),
        ("ffn_down", GgmlType::Q4K, 2048, 5632, m),
        ("ffn_down", GgmlType::Q6K, 2048, 5632, m),
        ("output", GgmlType::Q6K, 32000, 2048, m.div_ceil(2)),
    ];
    println!("{threads} thread(s), best of {RUNS} runs, CPU ns per (row, token, super-block)");
    println!(
        "{:<12} {:<5} {:>6} {:>5} {:>5} {:>8} {:>8} {:>18}",
        "weight", "type", "n", "k", "m", "ns", "wall s", "bits"
    );
    for (name, ty, n, k, rows) in shapes {
        if let Some(only) = &only {
            if !only.eq_ignore_ascii_case(&ty.name().replace('_', "")) {
                continue;
            }
        }
        let dtype = match ty {
            GgmlType::Q4K => GgmlDType::Q4K,
            _ => GgmlDType::Q6K,
        };
        let mut bytes = Vec::new();
        quant::quantize_rows(ty, &noise(n as u64, n * k, 0.03), k, &mut bytes)?;
        let w = StoredMatrix::from_vec(Elem::Block(dtype), n, k, bytes).ok_or("sizes")?;
        let x = noise(k as u64 + 1, rows * k, 1.0);
        let (mut cpu, mut wall, mut hash) = (f64::INFINITY, f64::INFINITY, 0);
        for _ in 0..RUNS {
            let (t, c) = (Instant::now(), cpu_seconds());
            let y = pool.install(|| w.matmul_quantized(&x, rows))?;
            cpu = cpu.min(cpu_seconds() - c);
            wall = wall.min(t.elapsed().as_secs_f64());
            hash = bits_hash(&y);
        }
        let triples = (n * rows * (k / 256)) as f64;
        println!(
            "{name:<12} {:<5} {n:>6} {k:>5} {rows:>5} {:>8.2} {wall:>8.3} {hash:>18x}",
            ty.name(),
            cpu * 1e9 / triples,
        );
    }
    Ok(())
}
