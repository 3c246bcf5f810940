//! The kernels of CPU expert dispatch: one tile of a stored weight matrix multiplied by the
//! input rows of one expert, on the calling thread.
//!
//! A mixture-of-experts layer (`moe.rs`) multiplies 2-3 matrices for each of dozens or
//! hundreds of experts, each on the few tokens routed to it. Run as one parallel product per
//! expert and projection, the fork/join of every small product costs more than its work (a
//! third of a prompt's time on a 2-core machine was spent in candle's thread-pool
//! barriers). Instead the layer makes one list of work items, (expert, tile of
//! [`TILE_ROWS`] weight rows), runs it as one parallel loop, and each item calls
//! [`tile_product`] here, which never starts threads of its own.
//!
//! In native math on Q4_K, Q5_K and Q6_K weights (the Q4_K_M mix) an item runs ggml's integer
//! arithmetic (`kdot.rs`): the expert's activations are quantized once to Q8_K
//! ([`Rounding::Integer`], [`prepare`]) and each weight row is multiplied in integers
//! without becoming f32. Otherwise each item dequantizes its weight rows to f32 (the
//! conversion [`StoredMatrix::matmul_exact`] uses) and takes dot products in f32 ([`dots`]);
//! in native math the activations are first rounded as candle's quantized kernel rounds them
//! before its integer dot products ([`Rounding::Blocks`]: Q8_0 or Q8_1 for the 32-value
//! types, Q8_K for the other K types), so the product is the one the integer kernel
//! computes, up to f32 rounding (the same argument as `qmatmul.rs`'s GEMM path). Every
//! output element is one dot product whose summation order depends only on the width `k`,
//! never on the tile, the batch or the thread count.

use candle_core::quantized::GgmlDType;
use candle_core::CpuStorage;

use super::kdot::{self, Kind, Unpacked, Q8K, QK_K};
use super::stored::{Elem, StoredMatrix};

/// Weight rows per work item: 32 rows of 1024 f32 values (128 KiB) stay in L2 beside the
/// expert's activations, and a 768-row projection still splits into 24 items.
pub(super) const TILE_ROWS: usize = 32;

/// How the activations of a product are prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rounding {
    /// Not at all: reference math, and native math on float or decoded types.
    Exact,
    /// To the 8-bit blocks of this type and back, as candle's quantized kernel does, for an
    /// f32 product.
    Blocks(GgmlDType),
    /// To Q8_K, for the integer kernel of `kdot.rs` (native math on Q4_K, Q5_K, Q6_K).
    Integer(Kind),
}

impl Rounding {
    /// The rounding native (`quantized`) or reference math applies to inputs of `w`.
    pub(super) fn of(w: &StoredMatrix, quantized: bool) -> Rounding {
        let Elem::Block(t) = w.elem() else {
            return Rounding::Exact;
        };
        if !quantized {
            return Rounding::Exact;
        }
        if let Some(kind) = Kind::of(t) {
            if w.cols().is_multiple_of(QK_K) {
                return Rounding::Integer(kind);
            }
        }
        use GgmlDType as D;
        let dot = match t {
            D::Q4_0 | D::Q5_0 | D::Q8_0 => D::Q8_0,
            D::Q4_1 | D::Q5_1 => D::Q8_1,
            D::Q2K | D::Q3K | D::Q4K | D::Q5K | D::Q6K | D::Q8K => D::Q8K,
            _ => return Rounding::Exact,
        };
        if !w.cols().is_multiple_of(dot.block_size()) {
            return Rounding::Exact;
        }
        Rounding::Blocks(dot)
    }
}

/// Activation rows prepared for a product: f32 (rounded or not) or Q8_K.
#[derive(Debug)]
pub(super) enum Prepared {
    Rows(Vec<f32>),
    Q8K(Q8K),
}

/// The input rows of a product, as [`tile_product`] reads them.
#[derive(Clone, Copy, Debug)]
pub(super) enum Input<'a> {
    Rows(&'a [f32]),
    Q8K(&'a Q8K),
}

impl Prepared {
    pub(super) fn input(&self) -> Input<'_> {
        match self {
            Prepared::Rows(x) => Input::Rows(x),
            Prepared::Q8K(q) => Input::Q8K(q),
        }
    }
}

/// The rows of `x` (each `k` values) prepared as `r` says; `None` for [`Rounding::Exact`]
/// (use `x` as it is).
pub(super) fn prepare(x: &[f32], k: usize, r: Rounding) -> candle_core::Result<Option<Prepared>> {
    Ok(match r {
        Rounding::Exact => None,
        Rounding::Integer(_) => Some(Prepared::Q8K(Q8K::quantize(x, k))),
        Rounding::Blocks(_) => {
            let mut x = x.to_vec();
            round_rows(&mut x, k, r)?;
            Some(Prepared::Rows(x))
        }
    })
}

/// Round each row of `x` (`k` values wide) in place as `r` says (f32 roundings only).
fn round_rows(x: &mut [f32], k: usize, r: Rounding) -> candle_core::Result<()> {
    let Rounding::Blocks(t) = r else {
        return Ok(());
    };
    let mut q = t.cpu_zeros(k);
    for row in x.chunks_exact_mut(k) {
        q.from_float(row);
        match q.dequantize(k)? {
            CpuStorage::F32(v) => row.copy_from_slice(&v),
            _ => candle_core::bail!("dequantizing {t:?} gave no f32 values"),
        }
    }
    Ok(())
}

/// Per-thread buffers of [`tile_product`].
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// A dequantized tile (f32 products).
    tile: Vec<f32>,
    /// An unpacked weight row (integer products).
    unpacked: Unpacked,
}

/// `out [rows, m] = W[j0..j0 + rows] x^T`: weight rows `j0..` of `w` against the `m` rows of
/// `x [m, k]` (prepared for `w`), stored weight row by weight row.
pub(super) fn tile_product(
    w: &StoredMatrix,
    j0: usize,
    x: Input<'_>,
    m: usize,
    scratch: &mut Scratch,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let k = w.cols();
    let rows = out.len() / m.max(1);
    let x = match x {
        Input::Q8K(q) => {
            let (Elem::Block(t), Some(src)) = (w.elem(), w.row_bytes(j0, rows)) else {
                candle_core::bail!("integer product of a matrix without stored blocks");
            };
            let Some(kind) = Kind::of(t) else {
                candle_core::bail!("no integer kernel for {t:?}");
            };
            if q.rows() != m || src.len() != rows * (k / QK_K) * kind.block_bytes() {
                candle_core::bail!("integer product of mismatched sizes");
            }
            kdot::tile(kind, src, q, &mut scratch.unpacked, out);
            return Ok(());
        }
        Input::Rows(x) => x,
    };
    scratch.tile.resize(rows * k, 0.0);
    let tile = &mut scratch.tile[..rows * k];
    match (w.elem(), w.row_bytes(j0, rows)) {
        (Elem::Block(GgmlDType::Q4K), Some(src)) => dequantize_q4k(src, tile),
        (Elem::Block(GgmlDType::Q6K), Some(src)) => dequantize_q6k(src, tile),
        _ => w.dequantize_rows(j0, tile)?,
    }
    dots(tile, x, k, out);
    Ok(())
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_K super-blocks (144 bytes: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins,
/// 128 bytes of nibbles) to f32, straight from the stored bytes. The arithmetic is candle's
/// `to_float` operation for operation (`d * sc` times the quant, less `dmin * m`: a multiply
/// then a subtraction, never fused), so the values are bit for bit those
/// [`StoredMatrix::dequantize_rows`] gives, without its two copies and an allocation per
/// call. With AVX2 eight values at a time: the same operations on eight lanes give the same
/// bits.
pub(super) fn dequantize_q4k(src: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return simd.vectorize(Q4kV3 { simd, src, out });
    }
    dequantize_q4k_scalar(src, out);
}

/// The scales and mins of the eight 32-value groups of a Q4_K super-block, as f32:
/// `d * sc` and `dmin * m`.
#[inline(always)]
fn q4k_scales(b: &[u8; 144]) -> ([f32; 8], [f32; 8]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let s = &b[4..16];
    let (mut ds, mut ms) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let (sc, m) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        };
        ds[j] = d * f32::from(sc);
        ms[j] = min * f32::from(m);
    }
    (ds, ms)
}

fn dequantize_q4k_scalar(src: &[u8], out: &mut [f32]) {
    for (b, y) in src
        .as_chunks::<144>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<256>().0)
    {
        let (ds, ms) = q4k_scales(b);
        for (g, (q, y)) in b[16..]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (lo, hi) = y.split_at_mut(32);
            for ((q, lo), hi) in q.iter().zip(lo).zip(hi) {
                *lo = ds[2 * g] * f32::from(q & 0xF) - ms[2 * g];
                *hi = ds[2 * g + 1] * f32::from(q >> 4) - ms[2 * g + 1];
            }
        }
    }
}

/// [`dequantize_q4k`] on AVX2: each 8 bytes of nibbles widened to eight i32 lanes, low and
/// high nibbles converted, multiplied and reduced as the scalar code does. A struct, not a
/// closure, so that it is compiled inside the AVX2 context.
#[cfg(target_arch = "x86_64")]
struct Q4kV3<'a> {
    simd: pulp::x86::V3,
    src: &'a [u8],
    out: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Q4kV3<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Q4kV3 { simd, src, out } = self;
        let (avx, avx2) = (simd.avx, simd.avx2);
        let nibble = avx._mm256_set1_epi32(0xF);
        for (b, y) in src
            .as_chunks::<144>()
            .0
            .iter()
            .zip(out.as_chunks_mut::<256>().0)
        {
            let (ds, ms) = q4k_scales(b);
            for (g, (q, y)) in b[16..]
                .as_chunks::<32>()
                .0
                .iter()
                .zip(y.as_chunks_mut::<64>().0)
                .enumerate()
            {
                let (d1, m1) = (avx._mm256_set1_ps(ds[2 * g]), avx._mm256_set1_ps(ms[2 * g]));
                let (d2, m2) = (
                    avx._mm256_set1_ps(ds[2 * g + 1]),
                    avx._mm256_set1_ps(ms[2 * g + 1]),
                );
                let (lo, hi) = y.split_at_mut(32);
                let lanes = q.as_chunks::<8>().0.iter();
                for ((q, lo), hi) in lanes
                    .zip(lo.as_chunks_mut::<8>().0)
                    .zip(hi.as_chunks_mut::<8>().0)
                {
                    let v = simd.sse2._mm_set_epi64x(0, i64::from_le_bytes(*q));
                    let v = avx2._mm256_cvtepu8_epi32(v);
                    let ql = avx._mm256_cvtepi32_ps(avx2._mm256_and_si256(v, nibble));
                    let qh = avx._mm256_cvtepi32_ps(avx2._mm256_srli_epi32::<4>(v));
                    *lo = pulp::bytemuck::cast(avx._mm256_sub_ps(avx._mm256_mul_ps(d1, ql), m1));
                    *hi = pulp::bytemuck::cast(avx._mm256_sub_ps(avx._mm256_mul_ps(d2, qh), m2));
                }
            }
        }
    }
}

/// Q6_K super-blocks (210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed
/// scales, f16 `d`) to f32, candle's `to_float` arithmetic (`d * sc` times the quant less
/// 32), as [`dequantize_q4k`]. Fixed-size arrays, compiled for AVX2 where the CPU has it, let
/// the compiler vectorize the loop without bounds checks (same operations, same bits).
pub(super) fn dequantize_q6k(src: &[u8], out: &mut [f32]) {
    avx2_or_scalar(Q6k { src, out });
}

/// `op` compiled for AVX2 + FMA where the CPU has it, else scalar; never for AVX-512 (which
/// `pulp::Arch::new()` would pick if pulp's `x86-v4` feature were on): the lane count of
/// code generic over [`pulp::Simd`] decides the order of [`dots`]' sums, so it stays at V3's
/// 8 lanes and the bits do not depend on the CPU.
#[inline(always)]
fn avx2_or_scalar<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return pulp::Simd::vectorize(simd, op);
    }
    pulp::Simd::vectorize(pulp::Scalar::new(), op)
}

struct Q6k<'a> {
    src: &'a [u8],
    out: &'a mut [f32],
}

impl pulp::WithSimd for Q6k<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (b, y) in self
            .src
            .as_chunks::<210>()
            .0
            .iter()
            .zip(self.out.as_chunks_mut::<256>().0)
        {
            let d = f16_at(b, 208);
            let (ql, rest) = b.split_at(128);
            let (qh, rest) = rest.split_at(64);
            let sc = &rest[..16];
            for (((ql, qh), sc), y) in ql
                .as_chunks::<64>()
                .0
                .iter()
                .zip(qh.as_chunks::<32>().0)
                .zip(sc.as_chunks::<8>().0)
                .zip(y.as_chunks_mut::<128>().0)
            {
                let s: [f32; 8] = std::array::from_fn(|i| d * f32::from(sc[i] as i8));
                for is in 0..2 {
                    for l in 16 * is..16 * is + 16 {
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                        y[l] = s[is] * f32::from(q1);
                        y[l + 32] = s[is + 2] * f32::from(q2);
                        y[l + 64] = s[is + 4] * f32::from(q3);
                        y[l + 96] = s[is + 6] * f32::from(q4);
                    }
                }
            }
        }
    }
}

/// `out [rows, m]`: the dot product of each of the `rows` rows of `w` with each of the `m`
/// rows of `x`, all `k` wide.
pub(super) fn dots(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    avx2_or_scalar(Dots { w, x, k, out });
}

struct Dots<'a> {
    w: &'a [f32],
    x: &'a [f32],
    k: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for Dots<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Dots { w, x, k, out } = self;
        if k == 0 {
            out.fill(0.0);
            return;
        }
        let m = x.len() / k;
        if m == 0 {
            return;
        }
        // four weight rows (16 KiB at k = 1024) stay in L1 while the activation rows stream
        // past them three at a time: 12 accumulators, three activation vectors and one
        // weight vector fill AVX2's 16 registers, seven loads per twelve multiply-adds
        // (measured 1.4x the 2 x 4 blocking with activations held, 89% of FMA peak)
        for (w, out) in w.chunks(4 * k).zip(out.chunks_mut(4 * m)) {
            match w.len() / k {
                4 => weight_rows::<S, 4>(simd, w, x, k, m, out),
                3 => {
                    let (o2, o1) = out.split_at_mut(2 * m);
                    weight_rows::<S, 2>(simd, &w[..2 * k], x, k, m, o2);
                    weight_rows::<S, 1>(simd, &w[2 * k..], x, k, m, o1);
                }
                2 => weight_rows::<S, 2>(simd, w, x, k, m, out),
                _ => weight_rows::<S, 1>(simd, w, x, k, m, out),
            }
        }
    }
}

/// The `J` weight rows of `w` against every activation row, into `out [J, m]`.
#[inline(always)]
fn weight_rows<S: pulp::Simd, const J: usize>(
    simd: S,
    w: &[f32],
    x: &[f32],
    k: usize,
    m: usize,
    out: &mut [f32],
) {
    let w: [&[f32]; J] = std::array::from_fn(|a| &w[a * k..(a + 1) * k]);
    let mut i = 0;
    while i < m {
        let n = (m - i).min(3);
        let x = &x[i * k..(i + n) * k];
        match n {
            3 => put::<J, 3>(block::<S, J, 3>(simd, w, x, k), out, m, i),
            2 => put::<J, 2>(block::<S, J, 2>(simd, w, x, k), out, m, i),
            _ => put::<J, 1>(block::<S, J, 1>(simd, w, x, k), out, m, i),
        }
        i += n;
    }
}

/// Store a `J x I` block of dot products at column `i` of `out [J, m]`.
#[inline(always)]
fn put<const J: usize, const I: usize>(v: [[f32; I]; J], out: &mut [f32], m: usize, i: usize) {
    for (a, v) in v.iter().enumerate() {
        out[a * m + i..a * m + i + I].copy_from_slice(v);
    }
}

/// `J x I` dot products of the weight rows `w` with the `I` rows of `x`, each summed
/// lane-wise over the SIMD part of the row, the lanes then reduced, the scalar tail added
/// last: an order fixed by `k` alone, whatever the block shape.
// the fixed-size arrays are indexed in lock step so that the accumulators stay in registers
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn block<S: pulp::Simd, const J: usize, const I: usize>(
    simd: S,
    w: [&[f32]; J],
    x: &[f32],
    k: usize,
) -> [[f32; I]; J] {
    let wv = w.map(|r| S::as_simd_f32s(r));
    let xv: [_; I] = std::array::from_fn(|b| S::as_simd_f32s(&x[b * k..(b + 1) * k]));
    // every vector slice cut to one length, so the loop below has no bounds checks
    let n = wv[0].0.len();
    let wh: [&[S::f32s]; J] = std::array::from_fn(|a| &wv[a].0[..n]);
    let xh: [&[S::f32s]; I] = std::array::from_fn(|b| &xv[b].0[..n]);
    let mut acc = [[simd.splat_f32s(0.0); I]; J];
    for c in 0..n {
        let xs: [S::f32s; I] = std::array::from_fn(|b| xh[b][c]);
        for a in 0..J {
            let wc = wh[a][c];
            for b in 0..I {
                acc[a][b] = simd.mul_add_e_f32s(wc, xs[b], acc[a][b]);
            }
        }
    }
    let mut out = [[0f32; I]; J];
    for a in 0..J {
        for b in 0..I {
            let tail: f32 = wv[a].1.iter().zip(xv[b].1).map(|(p, q)| p * q).sum();
            out[a][b] = simd.reduce_sum_f32s(acc[a][b]) + tail;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_noise::noise;

    #[test]
    fn dots_match_f64_sums_for_every_block_shape() {
        // 4 x 3 blocks with every row tail (3 = 2 + 1, 2, 1) and token tail (2, 1), with
        // and without a scalar tail of the width
        for (rows, m, k) in [
            (5, 7, 37),
            (2, 4, 64),
            (1, 1, 3),
            (3, 9, 1024),
            (7, 8, 40),
            (6, 5, 16),
            (4, 3, 768),
        ] {
            let w = noise(1, rows * k);
            let x = noise(2, m * k);
            let mut out = vec![0f32; rows * m];
            dots(&w, &x, k, &mut out);
            for j in 0..rows {
                for i in 0..m {
                    let want: f64 = (0..k)
                        .map(|c| f64::from(w[j * k + c]) * f64::from(x[i * k + c]))
                        .sum();
                    let size: f64 = (0..k)
                        .map(|c| (f64::from(w[j * k + c]) * f64::from(x[i * k + c])).abs())
                        .sum();
                    let got = f64::from(out[j * m + i]);
                    assert!(
                        (got - want).abs() <= 1e-6 * size,
                        "{rows}x{m}x{k} ({j}, {i})"
                    );
                }
            }
        }
    }

    #[test]
    fn k_blocks_dequantize_bit_for_bit_as_candle() {
        use candle_core::{Device, Tensor};
        for t in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let (n, k) = (5, 512);
            let w = noise(9, n * k);
            let dense = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
            let q = candle_core::quantized::QTensor::quantize(&dense, t).unwrap();
            let bytes = q.data().unwrap().to_vec();
            let sm = StoredMatrix::new(Elem::Block(t), n, k, &bytes, None).unwrap();
            let mut want = vec![0f32; 3 * k];
            sm.dequantize_rows(1, &mut want).unwrap();
            let mut got = vec![0f32; 3 * k];
            let src = sm.row_bytes(1, 3).unwrap();
            match t {
                GgmlDType::Q4K => dequantize_q4k(src, &mut got),
                _ => dequantize_q6k(src, &mut got),
            }
            assert_eq!(got, want, "{t:?}");
            // the scalar Q4_K code too, where the SIMD one ran above
            if t == GgmlDType::Q4K {
                got.fill(0.0);
                dequantize_q4k_scalar(src, &mut got);
                assert_eq!(got, want, "{t:?} scalar");
            }
        }
    }

    #[test]
    fn a_dot_product_does_not_depend_on_its_neighbours() {
        // each pair in a 4x3, 4x2, 2x3, 2x2, 1x3 or 1x2 block, and alone (1x1)
        let (k, rows, m) = (300, 7, 8);
        let w = noise(3, rows * k);
        let x = noise(4, m * k);
        let mut all = vec![0f32; rows * m];
        dots(&w, &x, k, &mut all);
        for j in 0..rows {
            for i in 0..m {
                let mut one = [0f32];
                dots(&w[j * k..(j + 1) * k], &x[i * k..(i + 1) * k], k, &mut one);
                assert_eq!(one[0], all[j * m + i], "({j}, {i})");
            }
        }
    }
}
