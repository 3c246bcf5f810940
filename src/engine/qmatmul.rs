//! Native-mode matrix products for ggml's 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) on the CPU.
//!
//! Written here rather than taken from candle because candle 0.11's CPU kernels for these
//! types are scalar (only the K types and, for widths that are multiples of 256, Q8_0 have
//! SIMD paths): on SmolLM2 Q4_1 they run about 30x slower than llama.cpp. The arithmetic is
//! ggml's: each 32-value block of an activation row is quantized to 8 bits with its own
//! scale, multiplied in integers against the weight block, and scaled back, so results match
//! what a deployment on llama.cpp computes up to the order of float additions (one
//! difference: activation scales are kept in f32 where ggml rounds them to f16).
//!
//! SIMD comes from `pulp`, which detects AVX2/FMA at run time and exposes the intrinsics as
//! safe methods, so this file needs no `unsafe`; other CPUs take the portable loop.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::formats::GgmlType;

/// Values per block.
const QK: usize = 32;
/// Activation rows computed together against one unpacked weight block.
const ROWS: usize = 4;
/// Activation rows per cache tile.
const TILE_M: usize = 16;
/// From this many activation rows on, products go through an f32 GEMM.
pub const GEMM_ROWS: usize = 16;
/// f32 bytes of weights dequantized at a time for the GEMM path (the reference product's
/// tile size): a small model's projections are one tile, one GEMM call with work for every
/// thread.
const GEMM_TILE_BYTES: usize = 16 << 20;

/// How the quants of a block are stored after repacking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quants {
    /// 16 bytes: value `j` in the low nibble of byte `j`, value `j + 16` in the high nibble
    /// (ggml's own layout for Q4_0 / Q4_1), unsigned 0..=15.
    Nibbles,
    /// 32 unsigned bytes 0..=31 (Q5_0 / Q5_1, unpacked at load).
    Bytes,
    /// 32 signed bytes (Q8_0).
    Signed,
}

impl Quants {
    fn block_bytes(self) -> usize {
        match self {
            Quants::Nibbles => 16,
            Quants::Bytes | Quants::Signed => 32,
        }
    }
}

/// A weight matrix `[n, k]` of block type, repacked for the kernels: per block a scale, an
/// offset (the value of quant 0) and the quants, so that `w = scale * q + offset`. Scales
/// and minimums stay f16 as stored (converted in the kernels, exactly): generation streams
/// every weight once per token, and f32 copies made it read a fifth more bytes than the
/// file holds.
pub struct BlockMatrix {
    ggml: GgmlType,
    quants_kind: Quants,
    n: usize,
    k: usize,
    /// f16 bits of each block's scale `d`.
    scale: Vec<u16>,
    /// f16 bits of each block's minimum, the offset of Q4_1 and Q5_1; empty for the others.
    mins: Vec<u16>,
    /// Without stored minimums, the offset as a multiple of the scale: -8 (Q4_0), -16
    /// (Q5_0); Q8_0 has no offset.
    zero: f32,
    quants: Vec<u8>,
}

impl std::fmt::Debug for BlockMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockMatrix[{}; {}x{}]", self.ggml, self.n, self.k)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// An f16's value as f32, exact, in a few inline integer operations and one multiply: the
/// same value as `half::f16::to_f32` for every input, NaN payloads included. `half` converts
/// through an out-of-line call (its F16C path is a separate function), and a call inside a
/// kernel's loop makes the compiler spill the running sums around it every block.
#[inline(always)]
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let rest = u32::from(h & 0x7FFF);
    if rest >= 0x7C00 {
        // infinity, or a NaN made quiet as the hardware conversion does
        let man = rest & 0x03FF;
        let quiet = if man != 0 { 0x0040_0000 } else { 0 };
        return f32::from_bits(sign | 0x7F80_0000 | (man << 13) | quiet);
    }
    // the exponent and mantissa bits placed as an f32's, times 2^112 to move the bias from
    // 15 to 127 (exact: subnormal halves come out normal)
    let mag = f32::from_bits(rest << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(mag.to_bits() | sign)
}

impl BlockMatrix {
    /// Whether the kernels handle this type.
    pub fn supports(t: GgmlType) -> bool {
        matches!(
            t,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
        )
    }

    /// Repack `n` rows of `k` values stored as ggml blocks. `None` for an unsupported type
    /// or a size that does not match.
    pub fn from_ggml(t: GgmlType, n: usize, k: usize, data: &[u8]) -> Option<BlockMatrix> {
        if !Self::supports(t) || k == 0 || !k.is_multiple_of(QK) {
            return None;
        }
        let (_, block) = t.block()?;
        let block = block as usize;
        let blocks = n.checked_mul(k / QK)?;
        if data.len() != blocks.checked_mul(block)? {
            return None;
        }
        let quants_kind = match t {
            GgmlType::Q4_0 | GgmlType::Q4_1 => Quants::Nibbles,
            GgmlType::Q5_0 | GgmlType::Q5_1 => Quants::Bytes,
            _ => Quants::Signed,
        };
        let qb = quants_kind.block_bytes();
        let with_mins = matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1);
        let zero = match t {
            GgmlType::Q4_0 => -8.0,
            GgmlType::Q5_0 => -16.0,
            _ => 0.0,
        };
        let mut scale = Vec::with_capacity(blocks);
        let mut mins = Vec::with_capacity(if with_mins { blocks } else { 0 });
        let mut quants = Vec::with_capacity(blocks * qb);
        for b in data.chunks_exact(block) {
            scale.push(u16_at(b, 0));
            if with_mins {
                mins.push(u16_at(b, 2));
            }
            match t {
                GgmlType::Q4_0 => quants.extend_from_slice(&b[2..18]),
                GgmlType::Q4_1 => quants.extend_from_slice(&b[4..20]),
                GgmlType::Q5_0 | GgmlType::Q5_1 => {
                    let (hi_at, qs_at) = if t == GgmlType::Q5_0 { (2, 6) } else { (4, 8) };
                    let qh =
                        u32::from_le_bytes([b[hi_at], b[hi_at + 1], b[hi_at + 2], b[hi_at + 3]]);
                    let qs = &b[qs_at..qs_at + 16];
                    for (j, &q) in qs.iter().enumerate() {
                        quants.push((q & 0x0F) | ((((qh >> j) & 1) as u8) << 4));
                    }
                    for (j, &q) in qs.iter().enumerate() {
                        quants.push((q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4));
                    }
                }
                _ => quants.extend_from_slice(&b[2..34]),
            }
        }
        Some(BlockMatrix {
            ggml: t,
            quants_kind,
            n,
            k,
            scale,
            mins,
            zero,
            quants,
        })
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Rows `r0..r0 + out.len() / k` dequantized, compiled for AVX2 where the CPU has it
    /// (the same `d * q + o`, a multiply then an add, so the same bits as
    /// [`BlockMatrix::dequantize_row`]): the GEMM path dequantizes every weight once per
    /// product, and the portable loop is several times slower.
    fn dequantize_rows_simd(&self, r0: usize, out: &mut [f32]) {
        #[inline(always)]
        fn run(b: &BlockMatrix, r0: usize, out: &mut [f32]) {
            for (i, row) in out.chunks_exact_mut(b.k).enumerate() {
                b.dequantize_row(r0 + i, row);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            simd.vectorize(
                #[inline(always)]
                || run(self, r0, out),
            );
            return;
        }
        run(self, r0, out);
    }

    /// Row `r` dequantized (for embedding lookups).
    #[inline(always)]
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.k / QK;
        let qb = self.quants_kind.block_bytes();
        for b in 0..nb {
            let i = r * nb + b;
            let q = &self.quants[i * qb..(i + 1) * qb];
            let d = f16_to_f32(self.scale[i]);
            let o = match self.mins.get(i) {
                Some(&m) => f16_to_f32(m),
                None => self.zero * d,
            };
            let dst = &mut out[b * QK..(b + 1) * QK];
            match self.quants_kind {
                Quants::Nibbles => {
                    for j in 0..16 {
                        dst[j] = d * f32::from(q[j] & 0x0F) + o;
                        dst[j + 16] = d * f32::from(q[j] >> 4) + o;
                    }
                }
                Quants::Bytes => {
                    for j in 0..QK {
                        dst[j] = d * f32::from(q[j]) + o;
                    }
                }
                Quants::Signed => {
                    for j in 0..QK {
                        dst[j] = d * f32::from(q[j] as i8);
                    }
                }
            }
        }
    }

    /// `x [m, k] -> x W^T [m, n]`, row-major: the product of the 8-bit quantized
    /// activations with the stored weight blocks.
    ///
    /// From [`GEMM_ROWS`] rows on (prompt chunks), the same product is computed as an f32
    /// matrix product of the two quantized operands dequantized (`d * q` for activations,
    /// `scale * q + offset` for weights), one tile of weight rows at a time. The sum is
    /// mathematically the one the integer kernel computes, differing only by f32 rounding
    /// (about 1e-7 relative, far below the quantization error), and an f32 GEMM is several
    /// times faster than any integer kernel expressible here without `unsafe` (no VNNI).
    pub fn matmul(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let acts = Acts::quantize(x, m, self.k);
        if m >= GEMM_ROWS {
            return self.matmul_gemm(&acts);
        }
        Ok(self.matmul_blocks(&acts))
    }

    fn matmul_gemm(&self, acts: &Acts) -> candle_core::Result<Vec<f32>> {
        let (m, n, k) = (acts.m, self.n, self.k);
        let cpu = candle_core::Device::Cpu;
        let mut xd = vec![0f32; m * k];
        xd.par_chunks_mut(QK)
            .zip(acts.q.par_chunks(QK))
            .zip(acts.d.par_iter())
            .with_min_len(64)
            .for_each(|((o, q), &d)| {
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = d * f32::from(q as i8);
                }
            });
        let x = candle_core::Tensor::from_vec(xd, (m, k), &cpu)?;
        let tile = (GEMM_TILE_BYTES / 4 / k).max(16);
        let mut out = if tile >= n {
            Vec::new()
        } else {
            vec![0f32; m * n]
        };
        let mut j0 = 0;
        while j0 < n {
            let rows = tile.min(n - j0);
            let mut w = vec![0f32; rows * k];
            let per_task = rows
                .div_ceil(rayon::current_num_threads().max(1) * 4)
                .max(1);
            w.par_chunks_mut(per_task * k)
                .enumerate()
                .for_each(|(c, dst)| self.dequantize_rows_simd(j0 + c * per_task, dst));
            let w = candle_core::Tensor::from_vec(w, (rows, k), &cpu)?;
            let y = x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            if rows == n {
                // one tile: the product is the output
                return Ok(y);
            }
            for (dst, src) in out.chunks_exact_mut(n).zip(y.chunks_exact(rows)) {
                dst[j0..j0 + rows].copy_from_slice(src);
            }
            j0 += rows;
        }
        Ok(out)
    }

    /// Rows `rows` of the product with quantized activations, computed on the calling
    /// thread and written weight row by weight row: `out[(j - rows.start) * m + i]` is
    /// activation row `i` against weight row `j`. Each value depends only on its two rows,
    /// so any split of rows over threads gives the same result. The entry point for callers
    /// running their own parallel loop (experts, batches); panics on mismatched sizes.
    pub fn rows_into(&self, acts: &Acts, rows: std::ops::Range<usize>, out: &mut [f32]) {
        assert!(
            acts.nb * QK == self.k && rows.end <= self.n && out.len() == rows.len() * acts.m,
            "block rows {rows:?} of {}x{} for {} activation rows into {}",
            self.n,
            self.k,
            acts.m,
            out.len()
        );
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            if acts.m == 1 {
                let op = OneRow {
                    simd,
                    b: self,
                    acts,
                    j0: rows.start,
                    out,
                };
                pulp::Simd::vectorize(simd, op);
                return;
            }
            simd.vectorize(
                #[inline(always)]
                || {
                    self.tile(
                        acts,
                        rows.start,
                        out,
                        #[inline(always)]
                        |w, a, r| avx2::dot(simd, w, a, r),
                    )
                },
            );
            return;
        }
        self.tile(acts, rows.start, out, portable_dot);
    }

    fn matmul_blocks(&self, acts: &Acts) -> Vec<f32> {
        let m = acts.m;
        let n = self.n;
        let threads = rayon::current_num_threads().max(1);
        // Enough chunks for load balance, each a whole number of weight rows.
        let chunk = n.div_ceil(threads * 4).max(16).min(n.max(1));
        let mut out_t = vec![0f32; n * m];
        out_t
            .par_chunks_mut(chunk * m)
            .enumerate()
            .for_each(|(c, dst)| {
                let j0 = c * chunk;
                self.rows_into(acts, j0..j0 + dst.len() / m, dst);
            });
        if m == 1 {
            return out_t;
        }
        transpose(&out_t, n, m)
    }

    /// `x [m, k]` times several matrices of width `k` (`x W_i^T`, row-major `[m, n_i]`
    /// each) for a few rows (`m` below [`GEMM_ROWS`]): the activations are quantized once
    /// and the weight rows of all matrices are split over the threads in one parallel
    /// region, rather than one region per matrix (generation runs q/k/v and gate/up this
    /// way). Each value depends only on its two rows, so it is the same bits as
    /// [`BlockMatrix::matmul`] gives; `None` when the widths differ or `m` is larger.
    pub fn matmul_many(mats: &[&BlockMatrix], x: &[f32], m: usize) -> Option<Vec<Vec<f32>>> {
        let k = mats.first()?.k;
        if m == 0 || m >= GEMM_ROWS || x.len() != m * k || mats.iter().any(|b| b.k != k) {
            return None;
        }
        let acts = Acts::quantize(x, m, k);
        let threads = rayon::current_num_threads().max(1);
        let total: usize = mats.iter().map(|b| b.n).sum();
        let chunk = total.div_ceil(threads * 4).max(16);
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|b| vec![0f32; b.n * m]).collect();
        let mut items = Vec::new();
        for (b, out) in mats.iter().zip(outs.iter_mut()) {
            for (c, dst) in out.chunks_mut(chunk * m).enumerate() {
                items.push((*b, c * chunk, dst));
            }
        }
        items.into_par_iter().for_each(|(b, j0, dst)| {
            let rows = dst.len() / m;
            b.rows_into(&acts, j0..j0 + rows, dst);
        });
        if m > 1 {
            for (b, out) in mats.iter().zip(outs.iter_mut()) {
                *out = transpose(out, b.n, m);
            }
        }
        Some(outs)
    }

    /// Fill `dst` (weight rows `j0..`, each `m` activation rows, column-major) with dots.
    #[inline(always)]
    fn tile<F>(&self, acts: &Acts, j0: usize, dst: &mut [f32], dot: F)
    where
        F: Fn(WeightRow<'_>, &Acts, std::ops::Range<usize>) -> [f32; ROWS],
    {
        let m = acts.m;
        let rows = dst.len() / m;
        let mut i0 = 0;
        while i0 < m {
            let i1 = (i0 + TILE_M).min(m);
            for jj in 0..rows {
                let w = self.row(j0 + jj);
                let col = &mut dst[jj * m..(jj + 1) * m];
                let mut i = i0;
                while i < i1 {
                    let r = (i1 - i).min(ROWS);
                    let v = dot(w, acts, i..i + r);
                    col[i..i + r].copy_from_slice(&v[..r]);
                    i += r;
                }
            }
            i0 = i1;
        }
    }

    fn row(&self, j: usize) -> WeightRow<'_> {
        let nb = self.k / QK;
        let qb = self.quants_kind.block_bytes();
        WeightRow {
            kind: self.quants_kind,
            scale: &self.scale[j * nb..(j + 1) * nb],
            mins: if self.mins.is_empty() {
                &[]
            } else {
                &self.mins[j * nb..(j + 1) * nb]
            },
            zero: self.zero,
            quants: &self.quants[j * nb * qb..(j + 1) * nb * qb],
        }
    }
}

/// `[n, m]` (column-major products) as `[m, n]`.
fn transpose(t: &[f32], n: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for (j, col) in t.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

#[derive(Clone, Copy)]
struct WeightRow<'a> {
    kind: Quants,
    scale: &'a [u16],
    mins: &'a [u16],
    zero: f32,
    quants: &'a [u8],
}

impl WeightRow<'_> {
    /// Block `b`'s scale.
    #[inline(always)]
    fn d(&self, b: usize) -> f32 {
        f16_to_f32(self.scale[b])
    }

    /// Block `b`'s offset given its scale `d`: `None` for Q8_0.
    #[inline(always)]
    fn offset(&self, b: usize, d: f32) -> Option<f32> {
        match (self.kind, self.mins.get(b)) {
            (Quants::Signed, _) => None,
            (_, Some(&m)) => Some(f16_to_f32(m)),
            (_, None) => Some(self.zero * d),
        }
    }
}

/// Activation rows quantized to 8 bits per 32-value block (ggml's Q8_1): quants, scale
/// `d = max|x| / 127`, and `s = d * sum(q)` for the offset term. Made once per product
/// ([`Acts::quantize`]) and shared by every weight row.
pub struct Acts {
    m: usize,
    nb: usize,
    q: Vec<u8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl Acts {
    /// `m` rows of `k` values (`k` a multiple of 32, as every block matrix's width is).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Acts {
        let nb = k / QK;
        let mut q = vec![0u8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut s = vec![0f32; m * nb];
        if m * nb < 1024 {
            // one token: not worth waking the thread pool
            quantize_blocks(x, &mut q, &mut d, &mut s);
            return Acts { m, nb, q, d, s };
        }
        const TASK: usize = 64;
        q.par_chunks_mut(QK * TASK)
            .zip(d.par_chunks_mut(TASK).zip(s.par_chunks_mut(TASK)))
            .zip(x.par_chunks(QK * TASK))
            .for_each(|((q, (d, s)), x)| quantize_blocks(x, q, d, s));
        Acts { m, nb, q, d, s }
    }
}

/// [`quantize_block`] over consecutive blocks, compiled for AVX2 where the CPU has it (there
/// `round` is an instruction sequence, not a libm call).
fn quantize_blocks(x: &[f32], q: &mut [u8], d: &mut [f32], s: &mut [f32]) {
    #[inline(always)]
    fn run(x: &[f32], q: &mut [u8], d: &mut [f32], s: &mut [f32]) {
        for (((qb, db), sb), xb) in q
            .chunks_mut(QK)
            .zip(d.iter_mut())
            .zip(s.iter_mut())
            .zip(x.chunks(QK))
        {
            quantize_block(xb, qb, db, sb);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        simd.vectorize(
            #[inline(always)]
            || run(x, q, d, s),
        );
        return;
    }
    run(x, q, d, s);
}

/// One block as ggml's `quantize_row_q8_1` does it: scale `max|x| / 127`, round to nearest.
#[inline(always)]
fn quantize_block(xb: &[f32], qb: &mut [u8], db: &mut f32, sb: &mut f32) {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (o, v) in qb.iter_mut().zip(xb) {
        let v = (v * inv).round() as i32;
        sum += v;
        *o = v as i8 as u8;
    }
    *db = scale;
    *sb = scale * sum as f32;
}

/// Portable dot products of one weight row with up to [`ROWS`] activation rows.
fn portable_dot(w: WeightRow<'_>, a: &Acts, rows: std::ops::Range<usize>) -> [f32; ROWS] {
    let mut out = [0f32; ROWS];
    let nb = a.nb;
    let qb = w.kind.block_bytes();
    for (slot, i) in rows.enumerate() {
        let mut acc = 0f32;
        for b in 0..nb {
            let wq = &w.quants[b * qb..(b + 1) * qb];
            let xq = &a.q[(i * nb + b) * QK..(i * nb + b + 1) * QK];
            let x = |j: usize| i32::from(xq[j] as i8);
            let isum: i32 = match w.kind {
                Quants::Nibbles => (0..16)
                    .map(|j| i32::from(wq[j] & 0x0F) * x(j) + i32::from(wq[j] >> 4) * x(j + 16))
                    .sum(),
                Quants::Bytes => (0..QK).map(|j| i32::from(wq[j]) * x(j)).sum(),
                Quants::Signed => (0..QK).map(|j| i32::from(wq[j] as i8) * x(j)).sum(),
            };
            let d = w.d(b);
            acc += d * a.d[i * nb + b] * isum as f32;
            if let Some(o) = w.offset(b, d) {
                acc += o * a.s[i * nb + b];
            }
        }
        out[slot] = acc;
    }
    out
}

/// [`avx2::one_row`] in an AVX2 context: `pulp` inlines `with_simd` into a function
/// compiled with AVX2 enabled, together with everything it calls.
#[cfg(target_arch = "x86_64")]
struct OneRow<'a> {
    simd: pulp::x86::V3,
    b: &'a BlockMatrix,
    acts: &'a Acts,
    j0: usize,
    out: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::WithSimd for OneRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let OneRow {
            simd,
            b,
            acts,
            j0,
            out,
        } = self;
        match b.quants_kind {
            Quants::Nibbles => avx2::one_row::<{ avx2::NIBBLES }>(simd, b, acts, j0, out),
            Quants::Bytes => avx2::one_row::<{ avx2::BYTES }>(simd, b, acts, j0, out),
            Quants::Signed => avx2::one_row::<{ avx2::SIGNED }>(simd, b, acts, j0, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::{__m128i, __m256, __m256i};

    use pulp::bytemuck::cast;
    use pulp::x86::V3;

    use super::{f16_to_f32, Acts, BlockMatrix, Quants, WeightRow, QK, ROWS};

    /// Eight f16 values (bits) as f32, exactly [`f16_to_f32`] lane by lane.
    #[inline(always)]
    fn f16x8(simd: V3, h: &[u16]) -> __m256 {
        let mut a = [0u16; 8];
        a.copy_from_slice(&h[..8]);
        let h = simd.avx2._mm256_cvtepu16_epi32(cast(a));
        let sign = simd.avx2._mm256_slli_epi32::<16>(
            simd.avx2
                ._mm256_and_si256(h, simd.avx._mm256_set1_epi32(0x8000)),
        );
        let rest = simd
            .avx2
            ._mm256_and_si256(h, simd.avx._mm256_set1_epi32(0x7FFF));
        let mag = simd.avx._mm256_mul_ps(
            cast(simd.avx2._mm256_slli_epi32::<13>(rest)),
            cast(simd.avx._mm256_set1_epi32(0x7780_0000)),
        );
        // infinities and NaNs (made quiet) where the exponent is all ones
        let man = simd
            .avx2
            ._mm256_and_si256(rest, simd.avx._mm256_set1_epi32(0x03FF));
        let nan = simd
            .avx2
            ._mm256_cmpgt_epi32(man, simd.avx._mm256_setzero_si256());
        let special = simd.avx2._mm256_or_si256(
            simd.avx2._mm256_or_si256(
                simd.avx._mm256_set1_epi32(0x7F80_0000),
                simd.avx2._mm256_slli_epi32::<13>(man),
            ),
            simd.avx2
                ._mm256_and_si256(nan, simd.avx._mm256_set1_epi32(0x0040_0000)),
        );
        let is_special = simd
            .avx2
            ._mm256_cmpgt_epi32(rest, simd.avx._mm256_set1_epi32(0x7BFF));
        let v = simd.avx2._mm256_blendv_epi8(cast(mag), special, is_special);
        cast(simd.avx2._mm256_or_si256(v, sign))
    }

    /// [`f16x8`] for a test.
    #[cfg(test)]
    pub(super) fn f16x8_test(h: &[u16]) -> Option<[f32; 8]> {
        let simd = V3::try_new()?;
        Some(simd.vectorize(
            #[inline(always)]
            || cast(f16x8(simd, h)),
        ))
    }

    /// [`Quants`] as const parameters of [`one_row`].
    pub(super) const NIBBLES: u8 = 0;
    pub(super) const BYTES: u8 = 1;
    pub(super) const SIGNED: u8 = 2;

    /// Quant bytes of one block in `kind`'s layout: [`Quants::block_bytes`] as a constant
    /// of the kernels' const parameter.
    const fn block_bytes(kind: u8) -> usize {
        if kind == NIBBLES {
            16
        } else {
            32
        }
    }

    /// Weight rows a pass of [`one_row`] interleaves.
    const WROWS: usize = 4;

    /// Groups of [`WROWS`] rows ahead whose quants [`one_row`] asks the cache for. Each
    /// row is a separate run of a few hundred bytes, too short for the hardware prefetcher
    /// to run ahead, so a large matrix read once per token waits on memory: SmolLM2's
    /// Q8_0 output head (49152 x 576, 30 MB) took 4.5-5.0 ns per block on one thread
    /// without the hint and 1.9-2.1 ns with it (1, 2, 4 or 8 groups ahead alike), about a
    /// sixth of one thread's time per generated token. Its Q4_1 layers, slower to compute
    /// per byte, neither gain nor lose.
    const AHEAD: usize = 2;

    /// Asks the cache for every 64-byte line of `bytes`. A hint: nothing is read, so no
    /// result can change. Shared with `stored.rs`, whose F16 span conversion runs ahead the
    /// same way.
    #[inline(always)]
    pub(in crate::engine) fn prefetch(simd: V3, bytes: &[u8]) {
        for line in bytes.iter().step_by(64) {
            simd.sse._mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(line).cast(),
            );
        }
    }

    #[inline(always)]
    fn load8f(x: &[f32]) -> __m256 {
        let mut a = [0f32; 8];
        a.copy_from_slice(&x[..8]);
        cast(a)
    }

    /// Weight rows `j0..j0 + out.len()` against the single activation row of `a` (a
    /// generation step), `WROWS` weight rows at a time so that each activation block is
    /// loaded once for all of them and their sums form independent chains. Every output
    /// gets exactly the operations [`dot`] gives it, in the same order (the scale and offset
    /// products of eight blocks are taken in one vector multiply, the same IEEE products
    /// lane by lane), so the bits do not change with the row grouping.
    #[inline(always)]
    pub(super) fn one_row<const KIND: u8>(
        simd: V3,
        b: &BlockMatrix,
        a: &Acts,
        j0: usize,
        out: &mut [f32],
    ) {
        let mut j = 0;
        let qb = block_bytes(KIND);
        let group = WROWS * a.nb * qb;
        while j + WROWS <= out.len() {
            // a hint only: rows past the matrix are not asked for
            let ahead = (j0 + j + AHEAD * WROWS) * a.nb * qb;
            if let Some(next) = b.quants.get(ahead..ahead + group) {
                prefetch(simd, next);
            }
            let v = rows::<KIND, WROWS>(simd, b, a, j0 + j);
            out[j..j + WROWS].copy_from_slice(&v);
            j += WROWS;
        }
        while j < out.len() {
            out[j] = rows::<KIND, 1>(simd, b, a, j0 + j)[0];
            j += 1;
        }
    }

    /// The unpacked block `q` (`KIND`'s layout) as 32 unsigned bytes to multiply, and the
    /// activation bytes `x` with the weights' signs moved onto them (signed weights).
    #[inline(always)]
    fn operands<const KIND: u8>(simd: V3, q: &[u8], x: __m256i) -> (__m256i, __m256i) {
        match KIND {
            NIBBLES => {
                // the 16 bytes in both halves, the upper half shifted down a nibble
                let v = simd.avx2._mm256_broadcastsi128_si256(load16(q));
                let shift = simd.avx._mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
                let v = simd.avx2._mm256_srlv_epi32(v, shift);
                let mask = simd.avx._mm256_set1_epi8(0x0F);
                (simd.avx2._mm256_and_si256(v, mask), x)
            }
            BYTES => (load32(q), x),
            _ => {
                let w = load32(q);
                (
                    simd.avx2._mm256_abs_epi8(w),
                    simd.avx2._mm256_sign_epi8(x, w),
                )
            }
        }
    }

    /// Dot products of weight rows `j..j + R` with the one activation row.
    #[inline(always)]
    fn rows<const KIND: u8, const R: usize>(
        simd: V3,
        b: &BlockMatrix,
        a: &Acts,
        j: usize,
    ) -> [f32; R] {
        let nb = a.nb;
        let qb = block_bytes(KIND);
        let offsets = KIND != SIGNED;
        let xq = &a.q[..nb * QK];
        let xd = &a.d[..nb];
        let xs = &a.s[..nb];
        let quants: [&[u8]; R] =
            std::array::from_fn(|r| &b.quants[(j + r) * nb * qb..(j + r + 1) * nb * qb]);
        let scale: [&[u16]; R] = std::array::from_fn(|r| &b.scale[(j + r) * nb..(j + r + 1) * nb]);
        let mins: [&[u16]; R] = std::array::from_fn(|r| {
            if b.mins.is_empty() {
                &[]
            } else {
                &b.mins[(j + r) * nb..(j + r + 1) * nb]
            }
        });
        let with_mins = !b.mins.is_empty();
        let zero = simd.avx._mm256_set1_ps(b.zero);
        let ones = simd.avx._mm256_set1_epi16(1);
        let mut acc = [simd.avx._mm256_setzero_ps(); R];
        let mut off = [0f32; R];
        let mut b0 = 0;
        // eight blocks at a time: their scale and offset products in one multiply each
        while b0 + 8 <= nb {
            let d8 = load8f(&xd[b0..b0 + 8]);
            let s8 = load8f(&xs[b0..b0 + 8]);
            // plain loops, not `array::from_fn`: its closure is a function of its own,
            // compiled without AVX2, where the intrinsics stay out-of-line calls whenever
            // the closure is not inlined here (codegen-unit placement decides: one build
            // ran generation 6x slower)
            let mut sc = [[0f32; 8]; R];
            let mut op = [[0f32; 8]; R];
            for r in 0..R {
                let ws = f16x8(simd, &scale[r][b0..b0 + 8]);
                sc[r] = cast(simd.avx._mm256_mul_ps(ws, d8));
                if offsets {
                    let o = if with_mins {
                        f16x8(simd, &mins[r][b0..b0 + 8])
                    } else {
                        simd.avx._mm256_mul_ps(zero, ws)
                    };
                    op[r] = cast(simd.avx._mm256_mul_ps(o, s8));
                }
            }
            let xg = &xq[b0 * QK..(b0 + 8) * QK];
            for t in 0..8 {
                let xv = load32(&xg[t * QK..(t + 1) * QK]);
                for r in 0..R {
                    let qg = &quants[r][b0 * qb..(b0 + 8) * qb];
                    let (wu, xv) = operands::<KIND>(simd, &qg[t * qb..(t + 1) * qb], xv);
                    let p16 = simd.avx2._mm256_maddubs_epi16(wu, xv);
                    let p32 = simd.avx2._mm256_madd_epi16(p16, ones);
                    let s = simd.avx._mm256_set1_ps(sc[r][t]);
                    acc[r] = simd
                        .fma
                        ._mm256_fmadd_ps(simd.avx._mm256_cvtepi32_ps(p32), s, acc[r]);
                    if offsets {
                        off[r] += op[r][t];
                    }
                }
            }
            b0 += 8;
        }
        for bb in b0..nb {
            let xv = load32(&xq[bb * QK..(bb + 1) * QK]);
            for r in 0..R {
                let (wu, xv) = operands::<KIND>(simd, &quants[r][bb * qb..(bb + 1) * qb], xv);
                let p16 = simd.avx2._mm256_maddubs_epi16(wu, xv);
                let p32 = simd.avx2._mm256_madd_epi16(p16, ones);
                let d = f16_to_f32(scale[r][bb]);
                let s = simd.avx._mm256_set1_ps(d * xd[bb]);
                acc[r] = simd
                    .fma
                    ._mm256_fmadd_ps(simd.avx._mm256_cvtepi32_ps(p32), s, acc[r]);
                if offsets {
                    let o = if with_mins {
                        f16_to_f32(mins[r][bb])
                    } else {
                        b.zero * d
                    };
                    off[r] += o * xs[bb];
                }
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]) + off[r];
        }
        out
    }

    #[inline(always)]
    fn load32(b: &[u8]) -> __m256i {
        let mut a = [0u8; 32];
        a.copy_from_slice(&b[..32]);
        cast(a)
    }

    #[inline(always)]
    fn load16(b: &[u8]) -> __m128i {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        cast(a)
    }

    /// The weight block as 32 bytes in value order (unsigned, or signed for Q8_0).
    #[inline(always)]
    fn unpack(simd: V3, kind: Quants, q: &[u8]) -> __m256i {
        match kind {
            Quants::Nibbles => {
                let v = load16(q);
                let mask = simd.sse2._mm_set1_epi8(0x0F);
                let lo = simd.sse2._mm_and_si128(v, mask);
                let hi = simd
                    .sse2
                    ._mm_and_si128(simd.sse2._mm_srli_epi16::<4>(v), mask);
                simd.avx._mm256_set_m128i(hi, lo)
            }
            Quants::Bytes | Quants::Signed => load32(q),
        }
    }

    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        let a: [f32; 8] = cast(v);
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
    }

    /// Dot products of one weight row with up to [`ROWS`] activation rows, unpacking each
    /// weight block once for all of them.
    #[inline(always)]
    pub(super) fn dot(
        simd: V3,
        w: WeightRow<'_>,
        a: &Acts,
        rows: std::ops::Range<usize>,
    ) -> [f32; ROWS] {
        let nb = a.nb;
        let qb = w.kind.block_bytes();
        let r = rows.len();
        let i0 = rows.start;
        let ones = simd.avx._mm256_set1_epi16(1);
        let mut acc = [simd.avx._mm256_setzero_ps(); ROWS];
        let mut off = [0f32; ROWS];
        for b in 0..nb {
            let wv = unpack(simd, w.kind, &w.quants[b * qb..(b + 1) * qb]);
            // maddubs multiplies unsigned by signed bytes; for signed weights the sign moves
            // to the activations (|w| * sign(x, w) = w * x), as ggml does.
            let (wu, signed) = match w.kind {
                Quants::Signed => (simd.avx2._mm256_abs_epi8(wv), true),
                _ => (wv, false),
            };
            let ws = w.d(b);
            let o = w.offset(b, ws);
            for s in 0..r {
                let i = i0 + s;
                let at = (i * nb + b) * QK;
                let mut xv = load32(&a.q[at..at + QK]);
                if signed {
                    xv = simd.avx2._mm256_sign_epi8(xv, wv);
                }
                let p16 = simd.avx2._mm256_maddubs_epi16(wu, xv);
                let p32 = simd.avx2._mm256_madd_epi16(p16, ones);
                let scale = simd.avx._mm256_set1_ps(ws * a.d[i * nb + b]);
                acc[s] = simd
                    .fma
                    ._mm256_fmadd_ps(simd.avx._mm256_cvtepi32_ps(p32), scale, acc[s]);
                if let Some(o) = o {
                    off[s] += o * a.s[i * nb + b];
                }
            }
        }
        let mut out = [0f32; ROWS];
        for s in 0..r {
            out[s] = hsum(acc[s]) + off[s];
        }
        out
    }
}

impl CustomOp1 for BlockMatrix {
    fn name(&self) -> &'static str {
        "modelgate-block-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(x) = layout.contiguous_offsets() else {
            candle_core::bail!("block matmul needs a contiguous input, got {layout:?}");
        };
        let dims = layout.shape().dims();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("block matmul needs a matrix input");
        };
        if k != self.k {
            candle_core::bail!("block matmul input width {k}, weight width {}", self.k);
        }
        let m: usize = lead.iter().product();
        let data = match storage {
            CpuStorage::F32(v) => &v[x.0..x.1],
            _ => candle_core::bail!("block matmul needs f32 activations"),
        };
        let out = self.matmul(data, m)?;
        let mut shape = lead.to_vec();
        shape.push(self.n);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 32-value block types of this module's kernels.
    const BLOCK_TYPES: [GgmlType; 5] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];

    /// A pseudo-random stream for test data.
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// ggml-style blocks for rows of `k` values.
    fn quantize(t: GgmlType, w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in w.chunks(QK) {
            let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
            match t {
                GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => {
                    let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let (levels, zero) = match t {
                        GgmlType::Q8_0 => (127.0, 0i32),
                        GgmlType::Q4_0 => (7.0, 8),
                        _ => (15.0, 16),
                    };
                    let d = amax / levels;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(h(d));
                    let q: Vec<i32> = b.iter().map(|v| (v * inv).round() as i32 + zero).collect();
                    match t {
                        GgmlType::Q8_0 => out.extend(q.iter().map(|&v| v as i8 as u8)),
                        GgmlType::Q4_0 => {
                            out.extend((0..16).map(|j| (q[j] as u8) | ((q[j + 16] as u8) << 4)))
                        }
                        _ => {
                            let mut qh = 0u32;
                            for (j, &v) in q.iter().enumerate() {
                                qh |= (((v as u32) >> 4) & 1) << j;
                            }
                            out.extend(qh.to_le_bytes());
                            out.extend(
                                (0..16)
                                    .map(|j| ((q[j] & 15) as u8) | (((q[j + 16] & 15) as u8) << 4)),
                            );
                        }
                    }
                }
                _ => {
                    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let levels = if t == GgmlType::Q4_1 { 15.0 } else { 31.0 };
                    let d = (max - min) / levels;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(h(d));
                    out.extend(h(min));
                    let q: Vec<u32> = b.iter().map(|v| ((v - min) * inv).round() as u32).collect();
                    if t == GgmlType::Q5_1 {
                        let mut qh = 0u32;
                        for (j, &v) in q.iter().enumerate() {
                            qh |= ((v >> 4) & 1) << j;
                        }
                        out.extend(qh.to_le_bytes());
                    }
                    out.extend(
                        (0..16).map(|j| ((q[j] & 15) as u8) | (((q[j + 16] & 15) as u8) << 4)),
                    );
                }
            }
        }
        out
    }

    #[test]
    fn every_type_matches_dequantized_f32() {
        let (n, k) = (37, 96);
        let w = noise(1, n * k);
        for t in BLOCK_TYPES {
            let bytes = quantize(t, &w);
            let bm = BlockMatrix::from_ggml(t, n, k, &bytes).unwrap();
            // dequantized weights agree with candle's reading of the same blocks
            let dt = match t {
                GgmlType::Q4_0 => candle_core::quantized::GgmlDType::Q4_0,
                GgmlType::Q4_1 => candle_core::quantized::GgmlDType::Q4_1,
                GgmlType::Q5_0 => candle_core::quantized::GgmlDType::Q5_0,
                GgmlType::Q5_1 => candle_core::quantized::GgmlDType::Q5_1,
                _ => candle_core::quantized::GgmlDType::Q8_0,
            };
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(&bytes),
                &candle_core::Device::Cpu,
                dt,
            )
            .unwrap();
            let qt = candle_core::quantized::QTensor::new(storage, (n, k)).unwrap();
            let candle = qt
                .dequantize(&candle_core::Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut deq = vec![0f32; n * k];
            for r in 0..n {
                bm.dequantize_row(r, &mut deq[r * k..(r + 1) * k]);
            }
            for (a, b) in deq.iter().zip(&candle) {
                assert!((a - b).abs() < 1e-6, "{t}: {a} vs {b}");
            }
            let mut simd = vec![0f32; n * k];
            bm.dequantize_rows_simd(0, &mut simd);
            assert_eq!(simd, deq, "{t}: vectorized dequantization");
            for m in [1usize, 3, 21] {
                let x = noise(2 + m as u64, m * k);
                let got = bm.matmul(&x, m).unwrap();
                let blocks = bm.matmul_blocks(&Acts::quantize(&x, m, k));
                let acts = Acts::quantize(&x, m, k);
                for i in 0..m {
                    for j in 0..n {
                        let exact: f32 = (0..k).map(|c| x[i * k + c] * deq[j * k + c]).sum();
                        let g = got[i * n + j];
                        // activation quantization error only: 8-bit, |x| <= 1
                        assert!(
                            (g - exact).abs() < 0.05,
                            "{t} m={m} ({i},{j}): {g} vs {exact}"
                        );
                        let p = portable_dot(bm.row(j), &acts, i..i + 1)[0];
                        assert!((g - p).abs() < 1e-4, "{t}: {g} vs portable {p}");
                        let b = blocks[i * n + j];
                        assert!((b - p).abs() < 1e-4, "{t}: simd {b} vs portable {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn rows_in_any_split_are_the_same_bits() {
        let (n, k) = (29, 128);
        let w = noise(9, n * k);
        let bm =
            BlockMatrix::from_ggml(GgmlType::Q4_1, n, k, &quantize(GgmlType::Q4_1, &w)).unwrap();
        for m in [1usize, 5] {
            let x = noise(11, m * k);
            let whole = bm.matmul(&x, m).unwrap();
            let acts = Acts::quantize(&x, m, k);
            let mut out = vec![0f32; n * m];
            bm.rows_into(&acts, 0..10, &mut out[..10 * m]);
            bm.rows_into(&acts, 10..n, &mut out[10 * m..]);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(out[j * m + i], whole[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn many_matrices_in_one_region_are_the_same_bits() {
        let k = 96;
        let mats: Vec<BlockMatrix> = [
            (GgmlType::Q4_1, 29),
            (GgmlType::Q8_0, 7),
            (GgmlType::Q5_0, 40),
        ]
        .iter()
        .enumerate()
        .map(|(i, &(t, n))| {
            BlockMatrix::from_ggml(t, n, k, &quantize(t, &noise(20 + i as u64, n * k))).unwrap()
        })
        .collect();
        let refs: Vec<&BlockMatrix> = mats.iter().collect();
        for m in [1usize, 3] {
            let x = noise(30 + m as u64, m * k);
            let many = BlockMatrix::matmul_many(&refs, &x, m).unwrap();
            for (b, got) in mats.iter().zip(&many) {
                assert_eq!(got, &b.matmul(&x, m).unwrap());
            }
        }
        assert!(BlockMatrix::matmul_many(&refs, &noise(1, 16 * k), 16).is_none());
    }

    #[test]
    fn inline_f16_conversions_are_halfs_for_every_value() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for &h in &all {
            let want = half::f16::from_bits(h).to_f32().to_bits();
            assert_eq!(f16_to_f32(h).to_bits(), want, "{h:#06x}");
        }
        #[cfg(target_arch = "x86_64")]
        for h in all.chunks_exact(8) {
            let Some(got) = avx2::f16x8_test(h) else {
                eprintln!("no AVX2 on this CPU: the vector conversion is not used");
                break;
            };
            for (&h, g) in h.iter().zip(got) {
                assert_eq!(g.to_bits(), f16_to_f32(h).to_bits(), "{h:#06x} in a vector");
            }
        }
    }

    /// The one-activation-row kernel (generation) gives every output the bits of the general
    /// kernel, for row counts that do and do not fill its groups of weight rows and widths
    /// with and without a remainder after its groups of eight blocks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn one_activation_row_is_the_general_kernels_bits() {
        let Some(simd) = pulp::x86::V3::try_new() else {
            eprintln!("no AVX2 on this CPU: only the portable kernel runs");
            return;
        };
        for t in BLOCK_TYPES {
            for (n, k) in [(37usize, 32 * 19), (8, 32 * 16), (3, 96)] {
                let w = noise(40 + n as u64, n * k);
                let bm = BlockMatrix::from_ggml(t, n, k, &quantize(t, &w)).unwrap();
                let acts = Acts::quantize(&noise(50, k), 1, k);
                let mut got = vec![0f32; n];
                bm.rows_into(&acts, 0..n, &mut got);
                let mut want = vec![0f32; n];
                simd.vectorize(|| bm.tile(&acts, 0, &mut want, |w, a, r| avx2::dot(simd, w, a, r)));
                assert_eq!(got, want, "{t} {n}x{k}");
                let mut part = vec![0f32; n - 1];
                bm.rows_into(&acts, 1..n, &mut part);
                assert_eq!(part, want[1..], "{t} {n}x{k} from row 1");
            }
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(BlockMatrix::from_ggml(GgmlType::Q4_1, 2, 32, &[0u8; 39]).is_none());
        assert!(BlockMatrix::from_ggml(GgmlType::Q4_1, 2, 33, &[0u8; 40]).is_none());
        assert!(BlockMatrix::from_ggml(GgmlType::Q4K, 1, 256, &[0u8; 144]).is_none());
        assert!(BlockMatrix::from_ggml(GgmlType::Q4_1, 2, 32, &[0u8; 40]).is_some());
    }
}
