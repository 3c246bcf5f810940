//! Fused CPU attention for a prompt or a scored chunk (more than a few queries): scores,
//! masked softmax and probability-weighted values in one pass, written straight into the
//! `[n, heads * head_dim]` input of the output projection.
//!
//! Why: the composed form (`q k^T` by candle's GEMM, [`MaskedSoftmax`] in place, `p v`
//! by the GEMM, a transpose) computes every score of the `[rep * n, total]` matrix per kv
//! head although a causal mask hides half of them, runs the softmax through libm's scalar
//! `expf`, and writes and re-reads a score matrix of megabytes per layer. Here the output
//! rows are split into blocks of [`BLOCK`] queries (one rayon task each); per query head a
//! block computes only the key tiles some of its rows can see into a small buffer that
//! stays in cache, softmaxes each row over its visible keys, and accumulates `p v` over
//! those keys only.
//!
//! Arithmetic: a score is a fused multiply-add chain over the head dimension in order; the
//! softmax is [`MaskedSoftmax`]'s (scale, soft cap, causal and sliding-window mask, sinks)
//! with, when there is no soft cap, a vectorised `exp` ([`exp_lane`]: Cody-Waite reduction
//! and a degree-6 polynomial, within 2 ulp of the correctly rounded value, tested) and the
//! sum taken in 8 lanes; an output is a fused multiply-add chain over the visible keys in
//! key order. So results differ from the composed form by rounding only (within 1e-6
//! relative, tested), and do not depend on the thread count (each output has one owner and
//! a fixed order). The AVX2 kernels (pulp `V3`, detected at run time) and the portable ones
//! give the same bits (tested).
//!
//! Reference math only (`model.rs` decides per layer): in native math the other order of
//! sums flips some 8-bit activation roundings downstream, which moved SmolLM2's Q4_K_M vs
//! F16 mean KLD in its fourth digit, so native math keeps candle's products.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::ops::{attention_operands, AttnOperands, MaskedSoftmax};

/// Queries per task: their rows stay in one output block, and the key tiles each head
/// computes beyond a row's causal end are at most this many.
const BLOCK: usize = 16;
/// Query rows per score microkernel call (broadcast operands).
const MR: usize = 4;
/// Keys per score microkernel call (two 8-lane vectors).
const NR: usize = 16;

/// Attention of `q [heads, n, head_dim]` (rotated, contiguous) over keys and values
/// `[kv_heads, total, head_dim]` (views of the cache, rows contiguous), output `[n, heads
/// * head_dim]`. Query head `h` reads kv head `h / rep`.
pub struct PromptAttention<'a> {
    pub softmax: MaskedSoftmax<'a>,
    /// Query heads per key/value head.
    pub rep: usize,
}

/// The operands of one call, shared by the tasks.
struct Args<'a> {
    q: &'a [f32],
    /// Keys packed per kv head in tiles of `NR`: `[kv_heads][tiles][head_dim][NR]`.
    kt: &'a [[f32; NR]],
    tiles: usize,
    v: &'a [f32],
    /// Offset of kv head 0's first value row and the strides between heads and rows.
    v_at: usize,
    v_head: usize,
    v_row: usize,
    nh: usize,
    n: usize,
    hd: usize,
    rep: usize,
    sm: &'a MaskedSoftmax<'a>,
}

impl CustomOp3 for PromptAttention<'_> {
    fn name(&self) -> &'static str {
        "modelgate-prompt-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let AttnOperands {
            q,
            k,
            v,
            nh,
            n,
            hd,
            total,
        } = attention_operands(
            "prompt",
            &self.softmax,
            self.rep,
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )?;
        let nkv = nh / self.rep;
        let sm = &self.softmax;
        let mut out = vec![0f32; n * nh * hd];
        if n == 0 || hd == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n, nh * hd))));
        }
        // keys transposed into tiles, zero past the last key: each score microkernel call
        // reads one contiguous tile
        let tiles = total.div_ceil(NR);
        let mut kt = vec![[0f32; NR]; nkv * tiles * hd];
        let (k_at, k_head, k_row) = (l2.start_offset(), l2.stride()[0], l2.stride()[1]);
        kt.par_chunks_mut(tiles * hd)
            .enumerate()
            .for_each(|(g, kt)| {
                for j in 0..total {
                    let at = k_at + g * k_head + j * k_row;
                    let tile = &mut kt[(j / NR) * hd..(j / NR + 1) * hd];
                    for (t, &x) in tile.iter_mut().zip(&k[at..at + hd]) {
                        t[j % NR] = x;
                    }
                }
            });
        let args = Args {
            q,
            kt: &kt,
            tiles,
            v,
            v_at: l3.start_offset(),
            v_head: l3.stride()[0],
            v_row: l3.stride()[1],
            nh,
            n,
            hd,
            rep: self.rep,
            sm,
        };
        out.par_chunks_mut(BLOCK * nh * hd)
            .enumerate()
            .for_each_init(Scratch::default, |s, (b, o)| {
                run_block(&args, b * BLOCK, o, s)
            });
        Ok((CpuStorage::F32(out), Shape::from((n, nh * hd))))
    }
}

/// A task's buffers, reused across its blocks.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    qp: Vec<[f32; MR]>,
}

/// [`block_with`] on the AVX2 kernels when the CPU has them, else the portable ones.
fn run_block(a: &Args<'_>, t0: usize, out: &mut [f32], s: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return simd.vectorize(
            #[inline(always)]
            || block_with(Avx2(simd), a, t0, out, s),
        );
    }
    block_with(Portable, a, t0, out, s)
}

/// First key query position `p` sees.
fn first_key(sm: &MaskedSoftmax<'_>, p: usize) -> usize {
    (p + 1).saturating_sub(sm.window)
}

/// Output rows `t0..` (the block `out`, `[rows, heads * head_dim]`, zero) for every head.
#[inline(always)]
fn block_with<K: Kern>(kern: K, a: &Args<'_>, t0: usize, out: &mut [f32], s: &mut Scratch) {
    let (nh, hd, sm) = (a.nh, a.hd, a.sm);
    let width = nh * hd;
    let rows = out.len() / width;
    let p0 = sm.pos + t0;
    // key tiles from the one holding the block's first visible key to the one holding its
    // last query's own key
    let (tile0, tile1) = (first_key(sm, p0) / NR, (p0 + rows).div_ceil(NR));
    let sw = (tile1 - tile0) * NR;
    s.scores.resize(rows * sw, 0.0);
    s.qp.resize(hd, [0.0; MR]);
    for h in 0..nh {
        let g = h / a.rep;
        let kt = &a.kt[g * a.tiles * hd..(g + 1) * a.tiles * hd];
        // scores of MR rows x NR keys at a time, tiles no row of the MR can see skipped
        for r0 in (0..rows).step_by(MR) {
            let last = (r0 + MR).min(rows) - 1;
            for i in 0..MR {
                // rows past the block repeat its last row (computed, not stored)
                let t = t0 + (r0 + i).min(last);
                let qr = &a.q[(h * a.n + t) * hd..(h * a.n + t + 1) * hd];
                for (qp, &x) in s.qp.iter_mut().zip(qr) {
                    qp[i] = x;
                }
            }
            let (lo, hi) = (first_key(sm, p0 + r0) / NR, (p0 + last + 1).div_ceil(NR));
            for tile in lo..hi {
                let acc = kern.scores(&s.qp, &kt[tile * hd..(tile + 1) * hd]);
                let at = (tile - tile0) * NR;
                for (i, acc) in acc.iter().enumerate().take(last + 1 - r0) {
                    let row = (r0 + i) * sw + at;
                    s.scores[row..row + NR].copy_from_slice(acc);
                }
            }
        }
        // softmax of each row over its visible keys
        let sink = sm.sinks.map(|s| s[h]);
        let visible = |r: usize| (first_key(sm, p0 + r), p0 + r + 1);
        for (r, row) in s.scores.chunks_exact_mut(sw).enumerate() {
            let (lo, hi) = visible(r);
            let keys = &mut row[lo - tile0 * NR..hi - tile0 * NR];
            match sm.softcap {
                None => kern.softmax(keys, sm.scale, sink),
                Some(_) => sm.softmax_keys(sink, keys),
            }
        }
        // weighted values, two rows at a time over their common keys
        let v = &a.v[a.v_at + g * a.v_head..];
        let probs = |r: usize, lo: usize, hi: usize| {
            &s.scores[r * sw + lo - tile0 * NR..r * sw + hi - tile0 * NR]
        };
        let mut r = 0;
        while r < rows {
            let (la, ha) = visible(r);
            let oa = r * width + h * hd;
            if r + 1 == rows {
                kern.values(
                    [probs(r, la, ha)],
                    &v[la * a.v_row..],
                    a.v_row,
                    [&mut out[oa..oa + hd]],
                );
                break;
            }
            let (lb, hb) = visible(r + 1);
            let (first, second) = out.split_at_mut((r + 1) * width);
            let ob = h * hd;
            let (oa, ob) = (&mut first[oa..oa + hd], &mut second[ob..ob + hd]);
            if la <= lb && lb <= ha && ha <= hb {
                // row r alone before row r + 1's first key, both to row r's last, then
                // row r + 1's last key: each row's keys still in order
                kern.values([probs(r, la, lb)], &v[la * a.v_row..], a.v_row, [&mut *oa]);
                kern.values(
                    [probs(r, lb, ha), probs(r + 1, lb, ha)],
                    &v[lb * a.v_row..],
                    a.v_row,
                    [oa, &mut *ob],
                );
                kern.values([probs(r + 1, ha, hb)], &v[ha * a.v_row..], a.v_row, [ob]);
            } else {
                kern.values([probs(r, la, ha)], &v[la * a.v_row..], a.v_row, [oa]);
                kern.values([probs(r + 1, lb, hb)], &v[lb * a.v_row..], a.v_row, [ob]);
            }
            r += 2;
        }
    }
}

/// The three inner loops, on the portable path or in an AVX2 context.
trait Kern: Copy {
    /// `acc[i][c] = sum_d a[d][i] * b[d][c]`, a fused multiply-add chain from zero in `d`
    /// order.
    fn scores(self, a: &[[f32; MR]], b: &[[f32; NR]]) -> [[f32; NR]; MR];

    /// `o[i][d] += sum_j p[i][j] * v[j * stride + d]`, a fused multiply-add chain onto
    /// `o[i][d]` in `j` order (every `p[i]` of one length).
    fn values<const R: usize>(self, p: [&[f32]; R], v: &[f32], stride: usize, o: [&mut [f32]; R]);

    /// Softmax of `keys * scale` in place, normalised also over `sink` (not written).
    fn softmax(self, keys: &mut [f32], scale: f32, sink: Option<f32>);
}

#[derive(Clone, Copy)]
struct Portable;

impl Kern for Portable {
    #[inline(always)]
    fn scores(self, a: &[[f32; MR]], b: &[[f32; NR]]) -> [[f32; NR]; MR] {
        super::gemm::portable_tile(a, b)
    }

    #[inline(always)]
    fn values<const R: usize>(self, p: [&[f32]; R], v: &[f32], stride: usize, o: [&mut [f32]; R]) {
        let hd = o[0].len();
        let mut o = o;
        for j in 0..p[0].len() {
            let vr = &v[j * stride..j * stride + hd];
            for (o, p) in o.iter_mut().zip(&p) {
                let pj = p[j];
                for (o, &x) in o.iter_mut().zip(vr) {
                    *o = pj.mul_add(x, *o);
                }
            }
        }
    }

    #[inline(always)]
    fn softmax(self, keys: &mut [f32], scale: f32, sink: Option<f32>) {
        let mut max = sink.unwrap_or(f32::NEG_INFINITY);
        for &x in keys.iter() {
            max = max.max(x * scale);
        }
        let mut lanes = [0f32; 8];
        for c in keys.chunks_mut(8) {
            for (l, x) in lanes.iter_mut().zip(c) {
                *x = exp_lane(*x * scale - max);
                *l += *x;
            }
        }
        let sum = sink.map_or(0.0, |s| exp_lane(s - max)) + lane_sum(lanes);
        for x in keys.iter_mut() {
            *x /= sum;
        }
    }
}

/// The sum of 8 lanes, pairwise (the AVX2 path reduces its vector the same way).
fn lane_sum(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// `ln 2` split for the Cody-Waite reduction: the high part has few significant bits, so
/// `k * LN2_HI` is exact for every `k` of a finite result.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor-like coefficients of `(e^r - 1 - r) / r^2` on `|r| <= ln 2 / 2`, highest first
/// (the classic single-precision minimax fit).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// Below this `e^x` is not a normal f32; the softmax rounds it to zero.
const EXP_MIN: f32 = -87.336_54;

/// `e^x` for `x <= 0` (the softmax's `score - max`): `x = k ln 2 + r`, `e^r` by a
/// polynomial, times `2^k` built in the exponent bits. Zero below [`EXP_MIN`]. The AVX2
/// path computes every lane by the same operations.
#[inline(always)]
fn exp_lane(x: f32) -> f32 {
    let c = x.clamp(EXP_MIN, 0.0);
    let k = (c * std::f32::consts::LOG2_E).round_ties_even();
    let r = k.mul_add(-LN2_HI, c);
    let r = k.mul_add(-LN2_LO, r);
    let z = r * r;
    let mut y = EXP_POLY[0];
    for &p in &EXP_POLY[1..] {
        y = y.mul_add(r, p);
    }
    let y = y.mul_add(z, r) + 1.0;
    let two_k = f32::from_bits((((k as i32) + 127) as u32) << 23);
    if x < EXP_MIN {
        0.0
    } else {
        y * two_k
    }
}

/// The AVX2 + FMA kernels: the same operations as [`Portable`]'s, 8 lanes at a time.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(pulp::x86::V3);

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// [`exp_lane`] of every lane.
    #[inline(always)]
    fn exp(self, x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        let (avx, avx2, fma) = (self.0.avx, self.0.avx2, self.0.fma);
        let lo = avx._mm256_set1_ps(EXP_MIN);
        let c = avx._mm256_min_ps(avx._mm256_max_ps(x, lo), avx._mm256_setzero_ps());
        let k = avx._mm256_round_ps::<0x08>(
            avx._mm256_mul_ps(c, avx._mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = fma._mm256_fmadd_ps(k, avx._mm256_set1_ps(-LN2_HI), c);
        let r = fma._mm256_fmadd_ps(k, avx._mm256_set1_ps(-LN2_LO), r);
        let z = avx._mm256_mul_ps(r, r);
        let mut y = avx._mm256_set1_ps(EXP_POLY[0]);
        for &p in &EXP_POLY[1..] {
            y = fma._mm256_fmadd_ps(y, r, avx._mm256_set1_ps(p));
        }
        let y = avx._mm256_add_ps(fma._mm256_fmadd_ps(y, z, r), avx._mm256_set1_ps(1.0));
        let ki = avx2._mm256_add_epi32(avx._mm256_cvtps_epi32(k), avx._mm256_set1_epi32(127));
        let two_k = avx._mm256_castsi256_ps(avx2._mm256_slli_epi32::<23>(ki));
        // _CMP_LT_OQ: lanes below the range (not NaN) become zero
        let under = avx._mm256_cmp_ps::<0x11>(x, lo);
        avx._mm256_andnot_ps(under, avx._mm256_mul_ps(y, two_k))
    }
}

#[cfg(target_arch = "x86_64")]
impl Kern for Avx2 {
    #[inline(always)]
    fn scores(self, a: &[[f32; MR]], b: &[[f32; NR]]) -> [[f32; NR]; MR] {
        use std::arch::x86_64::__m256;
        let (avx, fma) = (self.0.avx, self.0.fma);
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

    #[inline(always)]
    fn values<const R: usize>(self, p: [&[f32]; R], v: &[f32], stride: usize, o: [&mut [f32]; R]) {
        use std::arch::x86_64::__m256;
        let (avx, fma) = (self.0.avx, self.0.fma);
        let (len, hd) = (p[0].len(), o[0].len());
        let mut o = o;
        // 32 outputs of each row in 4 R registers while the keys pass by
        let mut d0 = 0;
        while d0 + 32 <= hd {
            let mut acc: [[__m256; 4]; R] = std::array::from_fn(|i| {
                let c: &[[f32; 8]] = o[i][d0..d0 + 32].as_chunks::<8>().0;
                std::array::from_fn(|c4| pulp::bytemuck::cast(c[c4]))
            });
            for j in 0..len {
                let vr = v[j * stride + d0..j * stride + d0 + 32].as_chunks::<8>().0;
                let vv: [__m256; 4] = std::array::from_fn(|c| pulp::bytemuck::cast(vr[c]));
                for (acc, p) in acc.iter_mut().zip(&p) {
                    let pj = avx._mm256_broadcast_ss(&p[j]);
                    for (a, &x) in acc.iter_mut().zip(&vv) {
                        *a = fma._mm256_fmadd_ps(pj, x, *a);
                    }
                }
            }
            for (o, acc) in o.iter_mut().zip(acc) {
                let acc: [[f32; 8]; 4] = pulp::bytemuck::cast(acc);
                for (c, a) in acc.iter().enumerate() {
                    o[d0 + 8 * c..d0 + 8 * c + 8].copy_from_slice(a);
                }
            }
            d0 += 32;
        }
        // a head dimension not a multiple of 32: the rest as the portable kernel does it
        if d0 < hd {
            let o: [&mut [f32]; R] = o.map(|o| &mut o[d0..]);
            Portable.values(p, &v[d0..], stride, o);
        }
    }

    #[inline(always)]
    fn softmax(self, keys: &mut [f32], scale: f32, sink: Option<f32>) {
        use std::arch::x86_64::__m256;
        let avx = self.0.avx;
        let (body, tail) = keys.as_chunks_mut::<8>();
        let sc = avx._mm256_set1_ps(scale);
        let mut mv = avx._mm256_set1_ps(sink.unwrap_or(f32::NEG_INFINITY));
        for c in body.iter() {
            let x: __m256 = pulp::bytemuck::cast(*c);
            mv = avx._mm256_max_ps(mv, avx._mm256_mul_ps(x, sc));
        }
        let mut max = f32::NEG_INFINITY;
        for &m in &pulp::bytemuck::cast::<__m256, [f32; 8]>(mv) {
            max = max.max(m);
        }
        for &x in tail.iter() {
            max = max.max(x * scale);
        }
        let m = avx._mm256_set1_ps(max);
        let mut acc = avx._mm256_setzero_ps();
        for c in body.iter_mut() {
            let x: __m256 = pulp::bytemuck::cast(*c);
            let e = self.exp(avx._mm256_sub_ps(avx._mm256_mul_ps(x, sc), m));
            acc = avx._mm256_add_ps(acc, e);
            *c = pulp::bytemuck::cast(e);
        }
        let mut lanes: [f32; 8] = pulp::bytemuck::cast(acc);
        for (l, x) in lanes.iter_mut().zip(tail.iter_mut()) {
            *x = exp_lane(*x * scale - max);
            *l += *x;
        }
        let sum = sink.map_or(0.0, |s| exp_lane(s - max)) + lane_sum(lanes);
        let s = avx._mm256_set1_ps(sum);
        for c in body.iter_mut() {
            let x: __m256 = pulp::bytemuck::cast(*c);
            *c = pulp::bytemuck::cast(avx._mm256_div_ps(x, s));
        }
        for x in tail.iter_mut() {
            *x /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_noise::noise;
    use candle_core::{Device, Tensor};

    /// The composed form `attention()` ran before: batched products per kv head, the
    /// in-place masked softmax, the transpose to `[n, heads * head_dim]`.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        sm: &MaskedSoftmax<'_>,
        rep: usize,
    ) -> Vec<f32> {
        let (nh, n, hd) = q.dims3().unwrap();
        let nkv = nh / rep;
        let q = q.reshape((nkv, rep * n, hd)).unwrap();
        let scores = q.matmul(&k.t().unwrap()).unwrap();
        scores.inplace_op1(sm).unwrap();
        let out = scores.matmul(v).unwrap();
        out.reshape((nh, n, hd))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Keys and values `[nkv, total, hd]` as views of a larger cache (capacity > total).
    fn cache_view(seed: u64, nkv: usize, total: usize, hd: usize) -> Tensor {
        let cap = total + 7;
        let t =
            Tensor::from_vec(noise(seed, nkv * cap * hd), (nkv, cap, hd), &Device::Cpu).unwrap();
        t.narrow(1, 0, total).unwrap()
    }

    fn fused(q: &Tensor, k: &Tensor, v: &Tensor, sm: MaskedSoftmax<'_>, rep: usize) -> Vec<f32> {
        let op = PromptAttention { softmax: sm, rep };
        q.apply_op3_no_bwd(k, v, &op)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn fused_attention_matches_the_composed_form() {
        let sinks = noise(9, 8);
        let mut worst = 0f32;
        // (heads, kv heads, head_dim, n, pos): GQA, MHA, n off the block and tile sizes,
        // a cache before the chunk, a head dimension not a multiple of 32
        for (nh, nkv, hd, n, pos) in [
            (8usize, 2usize, 64usize, 37usize, 0usize),
            (4, 4, 32, 16, 0),
            (6, 2, 40, 23, 19),
            (8, 1, 64, 70, 5),
        ] {
            let total = pos + n;
            let q = Tensor::from_vec(noise(1 + n as u64, nh * n * hd), (nh, n, hd), &Device::Cpu)
                .unwrap()
                .affine(3.0, 0.0)
                .unwrap();
            let k = cache_view(2, nkv, total, hd);
            let v = cache_view(3, nkv, total, hd);
            for (softcap, window, sink) in [
                (None, usize::MAX, false),
                (Some(4.0f32), usize::MAX, false),
                (None, 9, false),
                (None, usize::MAX, true),
                (Some(3.0), 5, true),
                (None, 1, false),
            ] {
                let sm = || MaskedSoftmax {
                    scale: 0.3,
                    softcap,
                    n,
                    pos,
                    window,
                    sinks: sink.then_some(&sinks[..]),
                };
                let want = composed(&q, &k, &v, &sm(), nh / nkv);
                let got = fused(&q, &k, &v, sm(), nh / nkv);
                assert_eq!(got.len(), want.len());
                // error relative to the largest output: an output is a sum of signed
                // values, whose own size can be far below its terms' (cancellation)
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
                assert!(
                    err <= 1e-6 * scale,
                    "{nh}/{nkv}/{hd} n {n} pos {pos} {softcap:?} {window} {sink}: \
                     error {err} for outputs up to {scale}"
                );
                worst = worst.max(err / scale);
            }
        }
        eprintln!("worst error relative to the largest output: {worst:e}");
    }

    #[test]
    fn threads_and_kernels_give_the_same_bits() {
        let (nh, nkv, hd, n, pos) = (8, 2, 64, 90, 3);
        let total = pos + n;
        let q = Tensor::from_vec(noise(4, nh * n * hd), (nh, n, hd), &Device::Cpu).unwrap();
        let k = cache_view(5, nkv, total, hd);
        let v = cache_view(6, nkv, total, hd);
        let sinks = noise(7, nh);
        let sm = || MaskedSoftmax {
            scale: 0.125,
            softcap: None,
            n,
            pos,
            window: 40,
            sinks: Some(&sinks),
        };
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            results.push(pool.install(|| fused(&q, &k, &v, sm(), nh / nkv)));
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], results[2]);
        // the portable kernels on the same operands give what the run gave
        let (qv, kv, vv) = (
            q.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            k.contiguous()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            v.contiguous()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        let tiles = total.div_ceil(NR);
        let mut kt = vec![[0f32; NR]; nkv * tiles * hd];
        for g in 0..nkv {
            for j in 0..total {
                for d in 0..hd {
                    kt[(g * tiles + j / NR) * hd + d][j % NR] = kv[(g * total + j) * hd + d];
                }
            }
        }
        let sm = sm();
        let args = Args {
            q: &qv,
            kt: &kt,
            tiles,
            v: &vv,
            v_at: 0,
            v_head: total * hd,
            v_row: hd,
            nh,
            n,
            hd,
            rep: nh / nkv,
            sm: &sm,
        };
        let mut out = vec![0f32; n * nh * hd];
        for (b, o) in out.chunks_mut(BLOCK * nh * hd).enumerate() {
            block_with(Portable, &args, b * BLOCK, o, &mut Scratch::default());
        }
        assert_eq!(out, results[0]);
    }

    #[test]
    fn vector_exp_is_within_two_ulp() {
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut worst = 0;
        let mut x = 0f32;
        while x > EXP_MIN {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp_lane(x), want));
            x -= 0.000_37;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp_lane(0.0), 1.0);
        assert_eq!(exp_lane(-100.0), 0.0);
        assert_eq!(exp_lane(f32::NEG_INFINITY), 0.0);
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            let xs: Vec<f32> = (0..4096).map(|i| -(i as f32) * 0.0231 - 1e-3).collect();
            for c in xs.as_chunks::<8>().0 {
                let got: [f32; 8] = simd
                    .vectorize(|| pulp::bytemuck::cast(Avx2(simd).exp(pulp::bytemuck::cast(*c))));
                for (g, &x) in got.iter().zip(c) {
                    assert_eq!(g.to_bits(), exp_lane(x).to_bits(), "{x}");
                }
            }
            // the softmax too, a length off the lane count, with a sink
            let row: Vec<f32> = noise(8, 45).iter().map(|x| x * 20.0).collect();
            let (mut a, mut b) = (row.clone(), row);
            simd.vectorize(|| Avx2(simd).softmax(&mut a, 0.7, Some(1.5)));
            Portable.softmax(&mut b, 0.7, Some(1.5));
            assert_eq!(a, b);
        }
    }
}
