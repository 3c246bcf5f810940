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
/// `to_float` operation for operation (`d * sc` times the quant, less `dmin * m`), so the
/// values are bit for bit those [`StoredMatrix::dequantize_rows`] gives, without its two
/// copies and an allocation per call.
fn dequantize_q4k(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(b, 0);
        let min = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        let scale_min = |j: usize| -> (u8, u8) {
            if j < 4 {
                (scales[j] & 63, scales[j + 4] & 63)
            } else {
                (
                    (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
                    (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                )
            }
        };
        for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc, m) = scale_min(2 * g);
            let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
            let (sc, m) = scale_min(2 * g + 1);
            let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
            let (lo, hi) = y.split_at_mut(32);
            for ((q, lo), hi) in q.iter().zip(lo).zip(hi) {
                *lo = d1 * f32::from(q & 0xF) - m1;
                *hi = d2 * f32::from(q >> 4) - m2;
            }
        }
    }
}

/// Q6_K super-blocks (210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed
/// scales, f16 `d`) to f32, candle's `to_float` arithmetic (`d * sc` times the quant less
/// 32), as [`dequantize_q4k`].
fn dequantize_q6k(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..128 + 32 * half + 32];
            let sc = &b[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut y[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                let s = |i: usize| d * f32::from(sc[i] as i8);
                y[l] = s(is) * f32::from(q1);
                y[l + 32] = s(is + 2) * f32::from(q2);
                y[l + 64] = s(is + 4) * f32::from(q3);
                y[l + 96] = s(is + 6) * f32::from(q4);
            }
        }
    }
}

/// `out [rows, m]`: the dot product of each of the `rows` rows of `w` with each of the `m`
/// rows of `x`, all `k` wide.
pub(super) fn dots(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    pulp::Arch::new().dispatch(Dots { w, x, k, out });
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
        let w_rows: Vec<&[f32]> = w.chunks_exact(k).collect();
        let x_rows: Vec<&[f32]> = x.chunks_exact(k).collect();
        // four activation rows stay in L1 while the tile's weight rows stream from L2: one
        // weight value loaded per four multiply-adds, eight accumulators in flight (2 x 4
        // with their operands fit AVX2's 16 registers; larger blocks spill accumulators)
        let mut i = 0;
        while i < m {
            i += match m - i {
                4.. => group::<S, 4>(simd, &w_rows, &x_rows, i, m, out),
                2 | 3 => group::<S, 2>(simd, &w_rows, &x_rows, i, m, out),
                _ => group::<S, 1>(simd, &w_rows, &x_rows, i, m, out),
            };
        }
    }
}

/// Activation rows `i..i + I` against every weight row, into `out [rows, m]`; returns `I`.
#[inline(always)]
fn group<S: pulp::Simd, const I: usize>(
    simd: S,
    w_rows: &[&[f32]],
    x_rows: &[&[f32]],
    i: usize,
    m: usize,
    out: &mut [f32],
) -> usize {
    let xs: [&[f32]; I] = std::array::from_fn(|b| x_rows[i + b]);
    let mut j = 0;
    while j + 2 <= w_rows.len() {
        let v = block::<S, 2, I>(simd, [w_rows[j], w_rows[j + 1]], xs);
        for (a, vr) in v.iter().enumerate() {
            out[(j + a) * m + i..(j + a) * m + i + I].copy_from_slice(vr);
        }
        j += 2;
    }
    if j < w_rows.len() {
        let v = block::<S, 1, I>(simd, [w_rows[j]], xs);
        out[j * m + i..j * m + i + I].copy_from_slice(&v[0]);
    }
    I
}

/// `J x I` dot products, each summed lane-wise over the SIMD part of the row, the lanes then
/// reduced, the scalar tail added last: an order fixed by `k` alone.
// the fixed-size arrays are indexed in lock step so that the accumulators stay in registers
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn block<S: pulp::Simd, const J: usize, const I: usize>(
    simd: S,
    w: [&[f32]; J],
    x: [&[f32]; I],
) -> [[f32; I]; J] {
    let wv = w.map(|r| S::as_simd_f32s(r));
    let xv = x.map(|r| S::as_simd_f32s(r));
    let mut acc = [[simd.splat_f32s(0.0); I]; J];
    let chunks = wv[0].0.len();
    for c in 0..chunks {
        let xs: [S::f32s; I] = std::array::from_fn(|b| xv[b].0[c]);
        for a in 0..J {
            let wc = wv[a].0[c];
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
        for (rows, m, k) in [(5, 7, 37), (2, 4, 64), (1, 1, 3), (3, 9, 1024)] {
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
        }
    }

    #[test]
    fn a_dot_product_does_not_depend_on_its_neighbours() {
        // the same row pair in a 2x4 block, a 2x1 block, a 1x4 and a 1x1 block
        let k = 300;
        let w = noise(3, 3 * k);
        let x = noise(4, 5 * k);
        let mut all = vec![0f32; 3 * 5];
        dots(&w, &x, k, &mut all);
        for j in 0..3 {
            for i in 0..5 {
                let mut one = [0f32];
                dots(&w[j * k..(j + 1) * k], &x[i * k..(i + 1) * k], k, &mut one);
                assert_eq!(one[0], all[j * 5 + i], "({j}, {i})");
            }
        }
    }
}
