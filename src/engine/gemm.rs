//! The reference product `x [m, k] W^T` for many activation rows (prompts, parity scoring),
//! with the weight matrix `W [n, k]` read in its stored type.
//!
//! Why hand-written: reference math needs exact f32 multiply-adds of the dequantized weights,
//! and the weights stay in their stored type (F16, BF16, ggml blocks). A BLAS-style GEMM
//! (candle's, through the `gemm` crate) only takes f32 matrices, so each tile of weights had
//! to be dequantized into a fresh f32 matrix, which the GEMM then copied again into its own
//! panels: two passes over every weight, fresh pages for every tile, and a serial
//! concatenation of tiles. No crate packs from F16 or ggml blocks into its panels. Here the
//! panels are filled straight from the stored bytes: `NR` weight rows at a time, `KC` values
//! wide, dequantized into a buffer that stays in L1 and laid out as the microkernel reads
//! them, into per-thread buffers that are reused from call to call.
//!
//! The loops are the usual ones of a cache-blocked GEMM. The output rows are split into
//! chunks, one rayon task each (no serial phase; the threads never write the same rows).
//! Within a chunk, for each `KC`-wide slice of the width, the chunk's activations are packed
//! once (`MR`-row panels); then `NC` weight rows at a time are dequantized into `NR`-row
//! panels (kept in L2), and each activation panel (in L1) runs along them with the
//! `MR x NR` microkernel. With AVX2 and FMA (detected at
//! run time) the microkernel keeps its 6 x 16 sums in 12 vector registers; elsewhere a
//! portable kernel computes the same sums with `f32::mul_add`, so the bits are the same.
//!
//! No AVX-512 tier (session 11): a 6 x 32 AVX-512 kernel over two adjacent panels (12 zmm
//! sums, same bits) ran level with this one to a few percent slower on Zen 4, which runs a
//! 512-bit multiply-add as two 256-bit halves (peak about 115 GFLOP/s per core at 3.6 GHz
//! either way; one thread, m = 3328, 2048 x 2048, CPU time, loaded machine: F16 77-87
//! GFLOP/s against 82-89, Q4_K 79-88 against 84-93). Converting F16 panels by AVX-512's
//! `vcvtph2ps` needs pulp's `x86-v4` feature, and with it on, pulp's V3 wrappers elsewhere
//! compiled to out-of-line intrinsic calls: SmolLM2 Q4_1 generation in native math ran at
//! 16.7-18.2 tokens/s against 89.5-90.8 without it. Both were left out.
//!
//! Each output element is the sum over the `KC` slices, in order, of a fused multiply-add
//! chain started from zero within the slice. That order depends on `k` alone: not on the
//! chunk, the thread count or where the element sits in a panel, so results do not change
//! with the number of threads. Every chunk dequantizes the whole weight matrix once; chunks
//! are at least `MIN_CHUNK_ROWS` rows so that this costs a few percent of the arithmetic.

use std::cell::RefCell;

use rayon::prelude::*;

/// Activation rows per microkernel call (broadcast operands).
const MR: usize = 6;
/// Weight rows per microkernel call (two 8-lane vectors).
const NR: usize = 16;
/// Width of one slice of the dot products: an activation panel of `MR x KC` f32 (24 KiB)
/// stays in L1 while it runs along the weight panels, and each output is read and written
/// once per slice. A multiple of every ggml block size (32, 256), so a slice is whole
/// blocks. Measured on Zen 4 at the 1.1B pair's shapes (F16, 2048 x 2048 and 2048 x 5632,
/// one thread): 1024 about 8 % faster than 256, 2048 slower (the panel leaves L1). On the
/// whole 1.1B pair (weights streamed from memory, 2 threads) 512 was 10 % slower than 1024
/// and 2048 level with it within the run-to-run noise.
pub(super) const KC: usize = 1024;
/// Weight rows packed together for one `KC` slice: their panels (`NC x KC` f32, 256 KiB)
/// stay in L2 while each activation panel runs along them (measured: 64 to 128 alike, 256
/// slower with the larger `KC`).
const NC: usize = 64;
/// Output rows per task at most: their packed activations (`KC` wide, 8 MiB) stay in L3
/// (each activation panel is read from there once per `NC` weight rows).
const MAX_CHUNK_ROWS: usize = 2046;
/// Output rows per task at least, so that dequantizing the weights once per task stays a
/// small part of the work.
const MIN_CHUNK_ROWS: usize = 64;
/// Tasks per thread when there are rows enough. One: every task dequantizes the whole
/// weight matrix, which in a real model comes from memory rather than cache, so on the
/// 1.1B pair two tasks per thread cost 10 CPU-s more than one (F16 phase 44.9 s -> 41.0 s
/// wall with one).
const TASKS_PER_THREAD: usize = 1;

/// Per-thread buffers, reused across calls.
#[derive(Default)]
struct Scratch {
    /// The chunk's activations for one slice: `[panel][KC][MR]`.
    a: Vec<f32>,
    /// `NR` weight rows of one slice, row by row: `[NR][KC]`.
    rows: Vec<f32>,
    /// `NC` weight rows of one slice as the microkernel reads them: `[NC / NR][KC][NR]`.
    b: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Output rows per task for `m` rows on `threads` threads (a multiple of `MR`).
fn chunk_rows(m: usize, threads: usize) -> usize {
    let tasks = (threads * TASKS_PER_THREAD).max(1);
    let rows = m.div_ceil(tasks).clamp(MIN_CHUNK_ROWS, MAX_CHUNK_ROWS);
    rows.div_ceil(MR) * MR
}

/// `out [m, n] = x [m, k] W^T`, where `fill(j, k0, dst)` writes weight row `j`, columns
/// `k0..k0 + dst.len()`, as f32 into `dst` (`k0` a multiple of [`KC`], the length `KC` or
/// what is left of the row).
pub(super) fn gemm<F>(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    fill: &F,
    out: &mut [f32],
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    if x.len() != m * k || out.len() != m * n {
        candle_core::bail!(
            "gemm of {} inputs ({m}x{k}) into {} outputs ({m}x{n})",
            x.len(),
            out.len()
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let rows = chunk_rows(m, rayon::current_num_threads().max(1));
    out.par_chunks_mut(rows * n)
        .enumerate()
        .try_for_each(|(c, dst)| {
            let mc = dst.len() / n;
            let x = &x[c * rows * k..(c * rows + mc) * k];
            SCRATCH.with(|s| match s.try_borrow_mut() {
                Ok(mut s) => chunk(&mut s, x, mc, k, n, fill, dst),
                // a task run while this thread's buffers are in use further up its stack
                Err(_) => chunk(&mut Scratch::default(), x, mc, k, n, fill, dst),
            })
        })
}

/// One task: `out [mc, n] = x [mc, k] W^T`, in the best kernel the CPU has.
fn chunk<F>(
    s: &mut Scratch,
    x: &[f32],
    mc: usize,
    k: usize,
    n: usize,
    fill: &F,
    out: &mut [f32],
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return simd.vectorize(
            #[inline(always)]
            || chunk_with(Avx2(simd), s, x, mc, k, n, fill, out),
        );
    }
    chunk_with(Portable, s, x, mc, k, n, fill, out)
}

/// The microkernel [`gemm`] runs on this CPU (for the benchmark's report).
pub(super) fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if pulp::x86::V3::try_new().is_some() {
        return "avx2 6x16";
    }
    "portable 6x16"
}

/// [`chunk`] with microkernel `kern`; inlined into a function compiled for its instruction
/// set, so packing and the output updates are compiled for it too.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn chunk_with<K: Micro, F>(
    kern: K,
    s: &mut Scratch,
    x: &[f32],
    mc: usize,
    k: usize,
    n: usize,
    fill: &F,
    out: &mut [f32],
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    let panels = mc.div_ceil(MR);
    s.a.resize(panels * KC * MR, 0.0);
    s.rows.resize(NR * KC, 0.0);
    s.b.resize(KC * NC, 0.0);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let a = &mut s.a[..panels * kc * MR];
        pack_activations(x, k, mc, k0, kc, a);
        let mut j0 = 0;
        while j0 < n {
            let nc = NC.min(n - j0);
            let b = &mut s.b[..nc.div_ceil(NR) * kc * NR];
            for (q, b) in b.chunks_exact_mut(kc * NR).enumerate() {
                let jq = j0 + q * NR;
                let nr = NR.min(n - jq);
                let rows = &mut s.rows[..NR * kc];
                for (r, dst) in rows.chunks_exact_mut(kc).enumerate() {
                    if r < nr {
                        fill(jq + r, k0, dst)?;
                    } else {
                        dst.fill(0.0);
                    }
                }
                kern.transpose(rows, kc, b);
            }
            let b = &s.b[..nc.div_ceil(NR) * kc * NR];
            for (p, ap) in a.chunks_exact(kc * MR).enumerate() {
                let ap = ap.as_chunks::<MR>().0;
                let i0 = p * MR;
                for (q, bq) in b.chunks_exact(kc * NR).enumerate() {
                    let acc = kern.run(ap, bq.as_chunks::<NR>().0);
                    let jq = j0 + q * NR;
                    update(&acc, out, n, i0, mc - i0, jq, NR.min(n - jq), k0 == 0);
                }
            }
            j0 += nc;
        }
        k0 += kc;
    }
    Ok(())
}

/// Add (or, for the first slice, store) the sums `acc` of output rows `i0..` (at most `rows`
/// of them) into columns `jq..jq + nr` of `out` (`n` wide).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update(
    acc: &[[f32; NR]; MR],
    out: &mut [f32],
    n: usize,
    i0: usize,
    rows: usize,
    jq: usize,
    nr: usize,
    first: bool,
) {
    for (i, sums) in acc.iter().enumerate().take(rows) {
        let o = &mut out[(i0 + i) * n + jq..(i0 + i) * n + jq + nr];
        if first {
            o.copy_from_slice(&sums[..nr]);
        } else {
            for (o, v) in o.iter_mut().zip(sums) {
                *o += v;
            }
        }
    }
}

/// Columns `k0..k0 + kc` of the `mc` rows of `x` (`k` wide) as `[panel][kc][MR]`, the rows
/// past `mc` zero.
#[inline(always)]
fn pack_activations(x: &[f32], k: usize, mc: usize, k0: usize, kc: usize, a: &mut [f32]) {
    for (p, panel) in a.chunks_exact_mut(kc * MR).enumerate() {
        let panel = panel.as_chunks_mut::<MR>().0;
        for i in 0..MR {
            let r = p * MR + i;
            if r < mc {
                let src = &x[r * k + k0..r * k + k0 + kc];
                for (dst, &v) in panel.iter_mut().zip(src) {
                    dst[i] = v;
                }
            } else {
                for dst in panel.iter_mut() {
                    dst[i] = 0.0;
                }
            }
        }
    }
}

/// `rows [NR][kc]` to `b [kc][NR]`, one value at a time.
#[inline(always)]
fn transpose_rows(rows: &[f32], kc: usize, b: &mut [f32]) {
    let src: [&[f32]; NR] = std::array::from_fn(|r| &rows[r * kc..(r + 1) * kc]);
    for (c, dst) in b.as_chunks_mut::<NR>().0.iter_mut().enumerate().take(kc) {
        for (d, s) in dst.iter_mut().zip(&src) {
            *d = s[c];
        }
    }
}

/// An `MR x NR` microkernel: `out[i][l] = sum over c of a[c][i] * b[c][l]`, a fused
/// multiply-add chain from zero in `c` order.
trait Micro: Copy {
    fn run(self, a: &[[f32; MR]], b: &[[f32; NR]]) -> [[f32; NR]; MR];

    /// `rows [NR][kc]` to `b [kc][NR]` (values moved, not computed).
    #[inline(always)]
    fn transpose(self, rows: &[f32], kc: usize, b: &mut [f32]) {
        transpose_rows(rows, kc, b);
    }
}

/// The kernel for any CPU: the same fused operations as [`Avx2`], one lane at a time.
#[derive(Clone, Copy)]
struct Portable;

impl Micro for Portable {
    #[inline(always)]
    fn run(self, a: &[[f32; MR]], b: &[[f32; NR]]) -> [[f32; NR]; MR] {
        let mut acc = [[0f32; NR]; MR];
        for (a, b) in a.iter().zip(b) {
            for (acc, &ai) in acc.iter_mut().zip(a) {
                for (s, &bl) in acc.iter_mut().zip(b) {
                    *s = ai.mul_add(bl, *s);
                }
            }
        }
        acc
    }
}

/// The AVX2 + FMA kernel: 12 accumulators of 8 lanes, two weight vectors and one broadcast
/// activation per step.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(pulp::x86::V3);

#[cfg(target_arch = "x86_64")]
impl Micro for Avx2 {
    #[inline(always)]
    fn run(self, a: &[[f32; MR]], b: &[[f32; NR]]) -> [[f32; NR]; MR] {
        use std::arch::x86_64::__m256;
        let Avx2(simd) = self;
        let (avx, fma) = (simd.avx, simd.fma);
        let mut acc = [[avx._mm256_setzero_ps(); 2]; MR];
        for (a, b) in a.iter().zip(b) {
            let [b0, b1]: [__m256; 2] = pulp::bytemuck::cast(*b);
            for (acc, ai) in acc.iter_mut().zip(a) {
                let ai = avx._mm256_broadcast_ss(ai);
                acc[0] = fma._mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = fma._mm256_fmadd_ps(ai, b1, acc[1]);
            }
        }
        pulp::bytemuck::cast(acc)
    }

    /// Eight columns of eight rows at a time, transposed in registers by the usual
    /// unpack / shuffle / lane-permute sequence.
    #[inline(always)]
    fn transpose(self, rows: &[f32], kc: usize, b: &mut [f32]) {
        use std::arch::x86_64::__m256;
        if !kc.is_multiple_of(8) {
            return transpose_rows(rows, kc, b);
        }
        let avx = self.0.avx;
        let src: [&[[f32; 8]]; NR] =
            std::array::from_fn(|r| rows[r * kc..(r + 1) * kc].as_chunks::<8>().0);
        let dst = b.as_chunks_mut::<NR>().0;
        for (g, dst) in dst.chunks_exact_mut(8).enumerate().take(kc / 8) {
            for h in 0..NR / 8 {
                let v: [__m256; 8] =
                    std::array::from_fn(|r| pulp::bytemuck::cast(src[8 * h + r][g]));
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (x, y) = (v[2 * (i / 2)], v[2 * (i / 2) + 1]);
                    if i % 2 == 0 {
                        avx._mm256_unpacklo_ps(x, y)
                    } else {
                        avx._mm256_unpackhi_ps(x, y)
                    }
                });
                // s[0..4]: columns 0, 1, 2, 3 (and 4..8 in the high lanes) of rows 0-3;
                // s[4..8] the same of rows 4-7
                let s: [__m256; 8] = std::array::from_fn(|i| {
                    let base = 4 * (i / 4);
                    let (x, y) = (t[base + (i % 4) / 2], t[base + 2 + (i % 4) / 2]);
                    if i % 2 == 0 {
                        avx._mm256_shuffle_ps::<0x44>(x, y)
                    } else {
                        avx._mm256_shuffle_ps::<0xEE>(x, y)
                    }
                });
                for c in 0..8 {
                    let o = if c < 4 {
                        avx._mm256_permute2f128_ps::<0x20>(s[c], s[c + 4])
                    } else {
                        avx._mm256_permute2f128_ps::<0x31>(s[c - 4], s[c])
                    };
                    let o: [f32; 8] = pulp::bytemuck::cast(o);
                    dst[c][8 * h..8 * h + 8].copy_from_slice(&o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_noise::noise;

    fn run(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let fill = |j: usize, k0: usize, dst: &mut [f32]| {
            dst.copy_from_slice(&w[j * k + k0..j * k + k0 + dst.len()]);
            Ok(())
        };
        let mut out = vec![f32::NAN; m * n];
        gemm(x, m, k, n, &fill, &mut out).unwrap();
        out
    }

    #[test]
    fn products_match_f64_sums_for_odd_shapes() {
        // shapes off every block size: m not a multiple of MR or of a chunk, n of NR, k of
        // KC; a tiny k; m = 8; more than one chunk and one KC slice
        for (m, n, k) in [
            (8, 16, 256),
            (7, 5, 3),
            (13, 33, 1),
            (8, 17, 300),
            (131, 47, 520),
            (200, 70, 96),
            (1100, 19, 64),
        ] {
            let x = noise(m as u64, m * k);
            let w = noise(1000 + n as u64, n * k);
            let got = run(&x, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut size) = (0f64, 0f64);
                    for c in 0..k {
                        let p = f64::from(x[i * k + c]) * f64::from(w[j * k + c]);
                        want += p;
                        size += p.abs();
                    }
                    let d = (f64::from(got[i * n + j]) - want).abs();
                    assert!(d <= 1e-6 * size, "{m}x{n}x{k} ({i},{j}): {d:e} of {size:e}");
                }
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_the_thread_count_or_kernel() {
        // n = 37: three panels, the last partial; n = 100: two NC blocks, the second a
        // single panel
        for n in [37, 100] {
            let (m, k) = (700, 1100);
            let x = noise(5, m * k);
            let w = noise(6, n * k);
            let mut results = Vec::new();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                results.push(pool.install(|| run(&x, &w, m, k, n)));
            }
            assert_eq!(results[0], results[1]);
            assert_eq!(results[0], results[2]);
            // every kernel this CPU runs gives the same bits (what `gemm` ran is one of them)
            let fill = |j: usize, k0: usize, dst: &mut [f32]| {
                dst.copy_from_slice(&w[j * k + k0..j * k + k0 + dst.len()]);
                Ok(())
            };
            let with = |kern: &dyn Fn(&mut [f32])| {
                let mut out = vec![f32::NAN; m * n];
                kern(&mut out);
                out
            };
            let portable = with(&|out| {
                chunk_with(Portable, &mut Scratch::default(), &x, m, k, n, &fill, out).unwrap()
            });
            assert_eq!(portable, results[0], "portable, n = {n}");
            #[cfg(target_arch = "x86_64")]
            {
                if let Some(simd) = pulp::x86::V3::try_new() {
                    let avx2 = with(&|out| {
                        simd.vectorize(|| {
                            chunk_with(Avx2(simd), &mut Scratch::default(), &x, m, k, n, &fill, out)
                        })
                        .unwrap()
                    });
                    assert_eq!(avx2, portable, "avx2, n = {n}");
                }
            }
        }
    }

    #[test]
    fn chunks_are_whole_panels_and_bounded() {
        assert_eq!(chunk_rows(3328, 2), 1668);
        assert_eq!(chunk_rows(100_000, 2), MAX_CHUNK_ROWS);
        assert_eq!(chunk_rows(8, 4), 66);
        assert!(chunk_rows(1, 1).is_multiple_of(MR));
        let x = [1f32; 6];
        assert!(gemm(&x, 2, 3, 1, &|_, _, _| Ok(()), &mut [0.0; 3]).is_err());
    }
}
