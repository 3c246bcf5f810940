//! Weight matrices kept in their stored type (F32, F16, BF16 or a ggml block type), read
//! from the memory-mapped checkpoint where possible, and multiplied one tile of rows at a
//! time.
//!
//! A model used to hold every projection as a dense f32 copy: 4 bytes per parameter on top
//! of the mapped file, 9 bytes per parameter for a parity run of two models. Here a weight
//! costs its stored bytes (a shared range of the file's map, or an owned copy for the few
//! tensors the engine must rewrite, such as GGUF q/k rows), and a product dequantizes
//! `TILE_BYTES` (64 MiB) of f32 weights at a time.
//!
//! [`StoredMatrix::matmul_exact`] is the reference product: each tile is dequantized with
//! the conversion the dense path used and multiplied by candle's f32 matmul, so every
//! output element is the dot product of the same f32 values as the dense `x W^T`. With one
//! tile the call is the dense one, bit for bit; across tiles candle's gemm may sum a dot
//! product in another order (measured below 1.2e-7 of the terms' total size, see
//! docs/engine.md). From `GEMM_ROWS` activation rows on, the reference product is
//! `gemm.rs`'s instead, which dequantizes weight panels straight from the stored bytes into
//! its own layout (the same f32 products, summed in slices of `gemm::KC` values).
//! [`StoredMatrix::matmul_quantized`] is native mode for candle's block
//! types: each tile goes through candle's quantized
//! kernel, which computes each output element independently of the others (Q4_K, Q5_K and
//! Q6_K through the integer kernel of `kdot.rs`, which gives candle's bits).

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QuantizedType};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{gemm, kdot};
use crate::formats::{blocks, GgmlType, MappedSlice};

/// f32 bytes of weights dequantized per tile of the reference product. Every projection of
/// a layer of a model up to about 3B parameters (TinyLlama's feed-forward: 46 MB) is one
/// tile, so its product is one GEMM call written straight into the output: no
/// concatenation of per-tile products, and the dense product's bits. Larger matrices (an
/// output head, a 7B feed-forward) go in several tiles of this size.
pub(super) const TILE_BYTES: usize = 64 << 20;

/// From this size on the system allocator maps fresh (already zero) pages for an allocation
/// rather than reusing its heap (glibc's largest dynamic mmap threshold, 32 MiB on 64-bit).
const FRESH_PAGES_BYTES: usize = 32 << 20;

/// Stored bytes per tile of native mode's quantized product (the kernels read blocks).
const QUANT_TILE_BYTES: usize = 16 << 20;

/// Below this many activation rows the exact product is a mat-vec over weight rows rather
/// than tiles and a GEMM: generation multiplies one row, and dequantizing a whole tile to
/// memory for it costs more than the product.
const MATVEC_ROWS: usize = 8;

/// From this many activation rows on, the exact product is `gemm.rs`'s, which packs the
/// weights straight from their stored type. Below it (short prompts) candle's GEMM on
/// dequantized tiles is as fast: every task of `gemm.rs` dequantizes the whole matrix, which
/// only pays off over enough rows. A constant, not a function of the thread count, so the
/// bits of a product do not depend on the machine.
const GEMM_ROWS: usize = 128;

/// Weight rows the mat-vec path dequantizes together (a buffer that stays in L1/L2).
const MATVEC_CHUNK: usize = 8;

/// Weight rows per task of the K-quant integer product (`kdot.rs`) of a few activation rows.
const KDOT_ROWS: usize = 16;

/// `a . b` in f32 with 16 running sums (lane `l` takes elements `l, l + 16, ...`), fused
/// multiply-adds, then a fixed pairwise reduction: one order on every machine and thread
/// count. Inlined into a function with AVX2/FMA enabled, the lanes become two vector
/// registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] = x.mul_add(*y, acc[l]);
    }
    let mut w = 8;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Where the stored bytes live.
enum Bytes {
    /// A range of the checkpoint's memory map (no copy).
    Mapped(MappedSlice),
    /// A copy the engine had to make (rows reordered, or a source without a map).
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// How one stored element or block is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    BF16,
    /// A ggml block type, read by candle.
    Block(GgmlDType),
    /// A ggml block type candle lacks (IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, and MXFP4 for
    /// gpt-oss's experts), decoded by `formats::blocks`; native mode dequantizes it and
    /// multiplies in f32.
    Decoded(GgmlType),
}

impl Elem {
    /// Values and bytes per stored block (1 value for the float types); `None` for a
    /// block type of unknown size.
    fn block_shape(self) -> Option<(usize, usize)> {
        match self {
            Elem::F32 => Some((1, 4)),
            Elem::F16 | Elem::BF16 => Some((1, 2)),
            Elem::Block(t) => Some((t.block_size(), t.type_size())),
            Elem::Decoded(t) => {
                let (bs, size) = t.block()?;
                Some((usize::try_from(bs).ok()?, usize::try_from(size).ok()?))
            }
        }
    }

    /// Bytes of one row of `k` values, `None` when `k` is not whole blocks.
    fn row_bytes(self, k: usize) -> Option<usize> {
        match self {
            Elem::F32 => k.checked_mul(4),
            Elem::F16 | Elem::BF16 => k.checked_mul(2),
            Elem::Block(t) => {
                let bs = t.block_size();
                if bs == 0 || !k.is_multiple_of(bs) {
                    return None;
                }
                (k / bs).checked_mul(t.type_size())
            }
            Elem::Decoded(t) => {
                let (bs, size) = t.block()?;
                let (bs, size) = (usize::try_from(bs).ok()?, usize::try_from(size).ok()?);
                if bs == 0 || !k.is_multiple_of(bs) {
                    return None;
                }
                (k / bs).checked_mul(size)
            }
        }
    }
}

/// A weight matrix `[n, k]` in its stored type.
pub struct StoredMatrix {
    elem: Elem,
    n: usize,
    k: usize,
    row_bytes: usize,
    bytes: Bytes,
}

impl std::fmt::Debug for StoredMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.bytes {
            Bytes::Mapped(_) => "mapped",
            Bytes::Owned(_) => "owned",
        };
        write!(
            f,
            "StoredMatrix[{:?}; {}x{}; {kind}]",
            self.elem, self.n, self.k
        )
    }
}

impl StoredMatrix {
    /// `n` rows of `k` values. `shared` is the same bytes as a range of a memory map, when
    /// the caller has one; otherwise `data` is copied. `None` when the sizes disagree.
    pub fn new(
        elem: Elem,
        n: usize,
        k: usize,
        data: &[u8],
        shared: Option<MappedSlice>,
    ) -> Option<StoredMatrix> {
        let row_bytes = elem.row_bytes(k)?;
        if k == 0 || data.len() != n.checked_mul(row_bytes)? {
            return None;
        }
        let bytes = match shared {
            Some(s) if s.len() == data.len() => Bytes::Mapped(s),
            _ => Bytes::Owned(data.to_vec()),
        };
        Some(StoredMatrix {
            elem,
            n,
            k,
            row_bytes,
            bytes,
        })
    }

    /// [`StoredMatrix::new`] taking ownership of bytes read into a buffer of their own (no
    /// copy). `None` when the sizes disagree.
    pub fn from_vec(elem: Elem, n: usize, k: usize, data: Vec<u8>) -> Option<StoredMatrix> {
        let row_bytes = elem.row_bytes(k)?;
        if k == 0 || data.len() != n.checked_mul(row_bytes)? {
            return None;
        }
        Some(StoredMatrix {
            elem,
            n,
            k,
            row_bytes,
            bytes: Bytes::Owned(data),
        })
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// How the elements are stored (the expert dispatch picks its activation rounding by it).
    pub fn elem(&self) -> Elem {
        self.elem
    }

    /// The stored bytes of rows `r0..r0 + rows` (the expert dispatch decodes K blocks from
    /// them), `None` past the end.
    pub fn row_bytes(&self, r0: usize, rows: usize) -> Option<&[u8]> {
        let end = r0.checked_add(rows)?.checked_mul(self.row_bytes)?;
        self.bytes.get(r0 * self.row_bytes..end)
    }

    /// Whether the bytes are a range of the checkpoint's map rather than a copy.
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }

    /// Rows `r0..r0 + out.len() / k` as f32, the conversion `RawTensor::to_f32` applies.
    pub fn dequantize_rows(&self, r0: usize, out: &mut [f32]) -> candle_core::Result<()> {
        let rows = out.len() / self.k;
        let src = &self.bytes[r0 * self.row_bytes..(r0 + rows) * self.row_bytes];
        match self.elem {
            Elem::F32 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Elem::F16 => f16_to_f32(src, out),
            Elem::BF16 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Elem::Block(t) => {
                let q = blocks(t, src);
                match q.dequantize(out.len())? {
                    CpuStorage::F32(v) => out.copy_from_slice(&v),
                    _ => candle_core::bail!("dequantizing {t:?} gave no f32 values"),
                }
            }
            Elem::Decoded(t) => blocks::dequantize(t, src, out)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        }
        Ok(())
    }

    /// Rows `r0..r0 + out.len() / k` as f32, bit for bit what [`StoredMatrix::dequantize_rows`]
    /// gives, with the common block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) decoded here in
    /// loops the compiler vectorizes instead of through candle (which allocates per call).
    /// Each value is computed with the same f32 operations as candle's `to_float`
    /// (`q * d`, or `q * d + m` as a multiply then an add, never fused).
    #[inline(always)]
    fn dequantize_rows_fast(&self, r0: usize, out: &mut [f32]) -> candle_core::Result<()> {
        let rows = out.len() / self.k;
        let src = &self.bytes[r0 * self.row_bytes..(r0 + rows) * self.row_bytes];
        if let Elem::Block(t) = self.elem {
            if dequantize_legacy(t, src, out) {
                return Ok(());
            }
        }
        self.dequantize_rows(r0, out)
    }

    /// [`StoredMatrix::dequantize_rows_fast`] compiled for AVX2 where the CPU has it.
    fn dequantize_rows_simd(&self, r0: usize, out: &mut [f32]) -> candle_core::Result<()> {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(
                #[inline(always)]
                || self.dequantize_rows_fast(r0, out),
            );
        }
        self.dequantize_rows_fast(r0, out)
    }

    /// Rows `rows` of `x W^T` for the `m` activation rows of `x` (`[m, k]`), computed on the
    /// calling thread and written weight row by weight row: `out[(j - rows.start) * m + i]`
    /// is row `i` of `x` dotted with weight row `j`. The exact product's mat-vec form: a few
    /// weight rows at a time are dequantized into a small buffer (the same f32 values as the
    /// tiled path) and each output is one f32 dot product in a fixed order, so results do
    /// not depend on how callers split rows over threads. An entry point for callers that
    /// run their own parallel loop (experts, batches of sequences).
    pub fn exact_rows_into(
        &self,
        x: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let k = self.k;
        if x.len() != m * k || rows.end > self.n || out.len() != rows.len() * m {
            candle_core::bail!(
                "exact rows {rows:?} of a {}x{k} weight for {} inputs of {m} rows into {}",
                self.n,
                x.len(),
                out.len()
            );
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            if let Elem::Block(t @ (GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0)) =
                self.elem
            {
                let op = DotBlocks {
                    simd,
                    t,
                    w: self,
                    x,
                    m,
                    j0: rows.start,
                    out,
                };
                pulp::Simd::vectorize(simd, op);
                return Ok(());
            }
            return simd.vectorize(
                #[inline(always)]
                || self.exact_rows_inner(x, m, rows, out),
            );
        }
        self.exact_rows_inner(x, m, rows, out)
    }

    #[inline(always)]
    fn exact_rows_inner(
        &self,
        x: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let k = self.k;
        let mut buf = vec![0f32; MATVEC_CHUNK.min(rows.len()) * k];
        let mut j = rows.start;
        while j < rows.end {
            let r = MATVEC_CHUNK.min(rows.end - j);
            let w = &mut buf[..r * k];
            self.dequantize_rows_fast(j, w)?;
            for (jj, wrow) in w.chunks_exact(k).enumerate() {
                let dst = &mut out[(j - rows.start + jj) * m..(j - rows.start + jj + 1) * m];
                for (o, xrow) in dst.iter_mut().zip(x.chunks_exact(k)) {
                    *o = dot(wrow, xrow);
                }
            }
            j += r;
        }
        Ok(())
    }

    /// The exact product for a few activation rows: weight rows split over the threads,
    /// each computed by [`StoredMatrix::exact_rows_into`].
    fn matvec_exact(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let n = self.n;
        let threads = rayon::current_num_threads().max(1);
        let chunk = n.div_ceil(threads * 4).max(16).min(n.max(1));
        let mut out_t = vec![0f32; n * m];
        out_t
            .par_chunks_mut(chunk * m)
            .enumerate()
            .try_for_each(|(c, dst)| {
                let j0 = c * chunk;
                self.exact_rows_into(x, m, j0..j0 + dst.len() / m, dst)
            })?;
        if m == 1 {
            return Ok(out_t);
        }
        let mut out = vec![0f32; m * n];
        for (j, col) in out_t.chunks_exact(m).enumerate() {
            for (i, v) in col.iter().enumerate() {
                out[i * n + j] = *v;
            }
        }
        Ok(out)
    }

    /// The exact product of `x [m, k]` with several matrices of width `k` for a few rows
    /// (`m` below `MATVEC_ROWS`), in one parallel region over the weight rows of all of
    /// them ([`StoredMatrix::exact_rows_into`]; the same bits as
    /// [`StoredMatrix::matmul_exact`]). `None` when the widths differ or `m` is larger.
    pub fn matvec_many(
        mats: &[&StoredMatrix],
        x: &[f32],
        m: usize,
    ) -> candle_core::Result<Option<Vec<Vec<f32>>>> {
        if m == 0 || m >= MATVEC_ROWS || common_width(mats, x, m).is_none() {
            return Ok(None);
        }
        let threads = rayon::current_num_threads().max(1);
        let total: usize = mats.iter().map(|w| w.n).sum();
        let chunk = total.div_ceil(threads * 4).max(16);
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![0f32; w.n * m]).collect();
        let mut items = Vec::new();
        for (w, out) in mats.iter().zip(outs.iter_mut()) {
            for (c, dst) in out.chunks_mut(chunk * m).enumerate() {
                items.push((*w, c * chunk, dst));
            }
        }
        items.into_par_iter().try_for_each(|(w, j0, dst)| {
            let rows = dst.len() / m;
            w.exact_rows_into(x, m, j0..j0 + rows, dst)
        })?;
        if m > 1 {
            for (w, out) in mats.iter().zip(outs.iter_mut()) {
                let mut t = vec![0f32; m * w.n];
                for (j, col) in out.chunks_exact(m).enumerate() {
                    for (i, v) in col.iter().enumerate() {
                        t[i * w.n + j] = *v;
                    }
                }
                *out = t;
            }
        }
        Ok(Some(outs))
    }

    /// The exact product of `x [m, k]` with several matrices of width `k` (q/k/v, gate/up)
    /// by `gemm.rs` in one call: the activations packed once and the tasks of all of them
    /// in one parallel step (`gemm::gemm_many`), each output the bits
    /// [`StoredMatrix::matmul_exact`] gives it. `None` unless every matrix takes `m` rows
    /// through `gemm.rs` at width `k`.
    pub fn gemm_exact_many(
        mats: &[&StoredMatrix],
        x: &[f32],
        m: usize,
    ) -> candle_core::Result<Option<Vec<Vec<f32>>>> {
        let gemm = mats.iter().all(|w| w.gemm_applies(m));
        let Some(k) = common_width(mats, x, m).filter(|_| gemm) else {
            return Ok(None);
        };
        let mut shapes = Vec::with_capacity(mats.len());
        for w in mats {
            let Some(shape) = w.elem.block_shape() else {
                return Ok(None);
            };
            shapes.push(shape);
        }
        let fill =
            |p: usize, j: usize, k0: usize, dst: &mut [f32]| match (mats.get(p), shapes.get(p)) {
                (Some(w), Some(&(bs, bb))) => w.fill_span(bs, bb, j, k0, dst),
                _ => candle_core::bail!("no matrix {p} of {}", mats.len()),
            };
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| gemm::zeroed(m * w.n)).collect();
        let mut products: Vec<gemm::Product<'_>> = outs
            .iter_mut()
            .zip(mats)
            .map(|(out, w)| gemm::Product { n: w.n, out })
            .collect();
        gemm::gemm_many(x, m, k, &mut products, &fill)?;
        Ok(Some(outs))
    }

    /// Rows per tile, and the granularity of the parallel dequantization.
    fn tile_rows(&self) -> usize {
        (TILE_BYTES / 4 / self.k).max(16).min(self.n.max(1))
    }

    /// Dequantize a tile of rows in parallel, a few rows per task.
    fn dequantize_tile(&self, j0: usize, rows: usize) -> candle_core::Result<Vec<f32>> {
        let k = self.k;
        // A large tile is fresh zero pages from the system (`vec!` allocates it zeroed
        // without writing it; the pages are touched by the tasks below). A smaller one is
        // reused heap memory that `vec!` would clear with a memset on this thread while the
        // pool waits, so the pool clears it.
        let mut w = if rows * k * 4 > FRESH_PAGES_BYTES {
            vec![0f32; rows * k]
        } else {
            let mut w = Vec::with_capacity(rows * k);
            w.par_extend(rayon::iter::repeat_n(0f32, rows * k));
            w
        };
        // a few tasks per thread for balance, each a run of whole rows
        let per_task = rows
            .div_ceil(rayon::current_num_threads().max(1) * 4)
            .max(1);
        w.par_chunks_mut(per_task * k)
            .enumerate()
            .try_for_each(|(c, dst)| self.dequantize_rows_simd(j0 + c * per_task, dst))?;
        Ok(w)
    }

    /// `x [m, k] -> x W^T [m, n]` in f32: each tile dequantized exactly and multiplied with
    /// candle's f32 matmul.
    /// Below `MATVEC_ROWS` activation rows (generation) the tiles are skipped: each
    /// weight row is dequantized into a small buffer and dotted with the inputs
    /// ([`StoredMatrix::exact_rows_into`]); the same f32 products, summed in another order.
    /// From `GEMM_ROWS` rows on, the weights are packed straight from their stored type
    /// into `gemm.rs`'s panels instead (no f32 copy of a tile); the same f32 products.
    pub fn matmul_exact(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        if m < MATVEC_ROWS {
            return self.matvec_exact(x, m);
        }
        if self.gemm_applies(m) {
            return self.gemm_exact(x, m);
        }
        self.matmul_exact_tiled(x, m, self.tile_rows())
    }

    /// The exact product through candle's GEMM on dequantized tiles, whatever `m` (what
    /// [`StoredMatrix::matmul_exact`] does between the mat-vec and `gemm.rs` sizes; public
    /// for the benchmark that compares the two).
    pub fn matmul_exact_candle(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        self.matmul_exact_tiled(x, m, self.tile_rows())
    }

    /// The microkernel of `gemm.rs` on this CPU, which [`StoredMatrix::matmul_exact`] runs
    /// for many rows (for the benchmark's report).
    pub fn gemm_kernel() -> &'static str {
        gemm::kernel_name()
    }

    /// Whether `m` rows go through `gemm.rs`: enough rows, and slices of `gemm::KC` values
    /// that are whole stored blocks.
    fn gemm_applies(&self, m: usize) -> bool {
        m >= GEMM_ROWS
            && self
                .elem
                .block_shape()
                .is_some_and(|(bs, _)| bs > 0 && gemm::KC.is_multiple_of(bs))
    }

    /// Columns `k0..k0 + dst.len()` of weight row `j` as f32 (whole blocks of `bs` values
    /// in `bb` bytes).
    fn fill_span(
        &self,
        bs: usize,
        bb: usize,
        j: usize,
        k0: usize,
        dst: &mut [f32],
    ) -> candle_core::Result<()> {
        let start = j * self.row_bytes + k0 / bs * bb;
        let len = dst.len() / bs * bb;
        let Some(src) = self.bytes.get(start..start + len) else {
            candle_core::bail!("columns {k0}.. of row {j} past the stored bytes");
        };
        // the same columns two rows on, which a panel fills next: a span is a few lines
        // of a row read from memory (a layer's weights are far larger than the caches), too
        // short for the hardware prefetcher to run ahead of the conversion
        let ahead = start.saturating_add(PREFETCH_ROWS.saturating_mul(self.row_bytes));
        if let Some(next) = self.bytes.get(ahead..ahead.saturating_add(len)) {
            prefetch(next);
        }
        dequantize_span(self.elem, src, dst)
    }

    /// `x [m, k] W^T` by `gemm.rs`, each weight panel dequantized from the stored bytes.
    fn gemm_exact(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        if x.len() != m * self.k {
            candle_core::bail!("{} inputs for {m} rows of {}", x.len(), self.k);
        }
        let Some((bs, bb)) = self.elem.block_shape() else {
            candle_core::bail!("no block size for {:?}", self.elem);
        };
        let fill = |j: usize, k0: usize, dst: &mut [f32]| self.fill_span(bs, bb, j, k0, dst);
        let mut out = gemm::zeroed(m * self.n);
        gemm::gemm(x, m, self.k, self.n, &fill, &mut out)?;
        Ok(out)
    }

    fn matmul_exact_tiled(
        &self,
        x: &[f32],
        m: usize,
        tile: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let (n, k) = (self.n, self.k);
        let cpu = Device::Cpu;
        let x = Tensor::from_slice(x, (m, k), &cpu)?;
        let mut out = vec![0f32; m * n];
        let mut j0 = 0;
        while j0 < n {
            let rows = tile.min(n - j0);
            let w = Tensor::from_vec(self.dequantize_tile(j0, rows)?, (rows, k), &cpu)?;
            let y = x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            scatter(&mut out, &y, n, j0, rows);
            j0 += rows;
        }
        Ok(out)
    }

    /// `x W^T` for `x [.., k]` as a tensor, computed as [`StoredMatrix::matmul_exact`]
    /// computes it, bit for bit. From `MATVEC_ROWS` rows on, each tile's product stays the
    /// tensor candle's matmul returns (one tile: the result; several: concatenated), so
    /// the activations and outputs are not copied in and out of a custom op.
    pub fn forward_exact(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let dims = x.dims();
        let m: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        // the op hands `matmul_exact` candle's storage and keeps its result: no copies
        if !x.device().is_cpu() || m < MATVEC_ROWS || self.gemm_applies(m) {
            return x.apply_op1_no_bwd(&self.exact());
        }
        let x2 = x.reshape((m, self.k))?;
        let y = self.tiles_product(&x2)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.n;
        }
        y.reshape(shape)
    }

    /// `x [m, k] W^T` as candle tensors, one dequantized tile at a time.
    fn tiles_product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, k) = (self.n, self.k);
        let tile = self.tile_rows();
        let mut parts = Vec::with_capacity(n.div_ceil(tile));
        let mut j0 = 0;
        while j0 < n {
            let rows = tile.min(n - j0);
            let w = Tensor::from_vec(self.dequantize_tile(j0, rows)?, (rows, k), x.device())?;
            parts.push(x.matmul(&w.t()?)?);
            j0 += rows;
        }
        if parts.len() == 1 {
            return parts
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("no tiles".into()));
        }
        Tensor::cat(&parts, 1)
    }

    /// `x [m, k] -> x W^T [m, n]` through candle's quantized kernel, one tile of rows at a
    /// time (for block types; float types use [`StoredMatrix::matmul_exact`], which is what
    /// candle does with them too).
    pub fn matmul_quantized(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        // the quantized kernel reads blocks, not f32 values: a tile of the same bytes
        let tile = (QUANT_TILE_BYTES / self.row_bytes)
            .max(16)
            .min(self.n.max(1));
        self.matmul_quantized_tiled(x, m, tile)
    }

    fn matmul_quantized_tiled(
        &self,
        x: &[f32],
        m: usize,
        tile: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let Elem::Block(t) = self.elem else {
            return self.matmul_exact_tiled(x, m, tile);
        };
        // candle's Q4_1/Q5_0/Q5_1 dot products work on pairs of blocks and assert an even
        // block count (in debug builds; release builds handle the odd tail). Rows of an odd
        // number of 32-value blocks exist only in tiny models (the MoE oracles' 32-wide
        // experts), so those take the exact product rather than risk the assertion.
        let paired = matches!(t, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
        if paired && !(self.k / 32).is_multiple_of(2) {
            return self.matmul_exact_tiled(x, m, tile);
        }
        if let Some(kind) = kdot::Kind::of(t) {
            return Ok(self.matmul_kdot(kind, x, m));
        }
        let n = self.n;
        let mut out = vec![0f32; m * n];
        let mut y = vec![0f32; m * tile];
        let mut j0 = 0;
        while j0 < n {
            let rows = tile.min(n - j0);
            let src = &self.bytes[j0 * self.row_bytes..(j0 + rows) * self.row_bytes];
            let dst = &mut y[..m * rows];
            blocks(t, src).matmul_t((m, self.k, rows), x, dst)?;
            scatter(&mut out, dst, n, j0, rows);
            j0 += rows;
        }
        Ok(out)
    }

    /// Native mode for Q4_K, Q5_K and Q6_K: `kdot.rs`'s integer kernel, which gives candle's
    /// quantized matmul bit for bit (activations quantized once, weight rows unpacked once
    /// per block of activation rows). Each output element is computed alone, so neither the
    /// blocking nor the split over rayon's threads changes any bit.
    ///
    /// A batch (prompt, layer-major scoring) is cut into blocks of activation rows, one task
    /// per block writing its rows of `[m, n]` in place (`kdot::block`). Fewer activation
    /// rows than make two blocks worth it (generation, short prompts) split over
    /// `KDOT_ROWS`-row tasks of weight rows instead, which write `[n, m]`, transposed in
    /// parallel.
    fn matmul_kdot(&self, kind: kdot::Kind, x: &[f32], m: usize) -> Vec<f32> {
        let (n, rb) = (self.n, self.row_bytes);
        let q = kdot::Q8K::quantize(x, self.k);
        q.prepare(kind);
        let mut out = vec![0f32; n * m];
        if m == 0 || n == 0 {
            return out;
        }
        if let Some(tokens) = q.block_rows(rayon::current_num_threads()) {
            out.par_chunks_mut(tokens * n)
                .enumerate()
                .for_each_init(kdot::Unpacked::default, |un, (b, dst)| {
                    kdot::block(kind, &self.bytes, &q, b * tokens, un, dst, n)
                });
            return out;
        }
        if m == 1 {
            // `[n, 1]` is `[1, n]`
            out.par_chunks_mut(KDOT_ROWS)
                .zip(self.bytes.par_chunks(KDOT_ROWS * rb))
                .for_each_init(kdot::Unpacked::default, |un, (dst, src)| {
                    kdot::tile(kind, src, &q, un, dst);
                });
            return out;
        }
        let mut t = vec![0f32; n * m];
        t.par_chunks_mut(KDOT_ROWS * m)
            .zip(self.bytes.par_chunks(KDOT_ROWS * rb))
            .for_each_init(kdot::Unpacked::default, |un, (dst, src)| {
                kdot::tile(kind, src, &q, un, dst);
            });
        // `[n, m]` to `[m, n]`, 16 activation rows (one cache line of `t`) per step
        out.par_chunks_mut(16 * n).enumerate().for_each(|(c, dst)| {
            let i0 = 16 * c;
            for (j, src) in t.chunks_exact(m).enumerate() {
                for (s, row) in dst.chunks_exact_mut(n).enumerate() {
                    row[j] = src[i0 + s];
                }
            }
        });
        out
    }

    /// Rows `ids` dequantized, `[ids.len(), k]` (embedding lookups).
    pub fn gather(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let k = self.k;
        let mut out = vec![0f32; ids.len() * k];
        for (dst, &id) in out.chunks_exact_mut(k).zip(ids) {
            let id = id as usize;
            if id >= self.n {
                candle_core::bail!("row {id} of a {}-row embedding", self.n);
            }
            self.dequantize_rows(id, dst)?;
        }
        Tensor::from_vec(out, (ids.len(), k), &Device::Cpu)
    }

    /// This matrix as a candle op computing the reference product.
    pub fn exact(&self) -> Product<'_> {
        Product {
            w: self,
            quantized: false,
        }
    }

    /// This matrix as a candle op computing native mode's product.
    pub fn quantized(&self) -> Product<'_> {
        Product {
            w: self,
            quantized: true,
        }
    }
}

/// The width `k` all of `mats` share, when `x` is `m` rows of it.
fn common_width(mats: &[&StoredMatrix], x: &[f32], m: usize) -> Option<usize> {
    let k = mats.first()?.k;
    (x.len() == m * k && mats.iter().all(|w| w.k == k)).then_some(k)
}

/// Whole blocks `src` of `elem` as f32 in `out` (a slice of a row for `gemm.rs`): the
/// conversions of [`StoredMatrix::dequantize_rows`], bit for bit, through the AVX2
/// dequantizers where there is one (F16 by F16C, Q4_K and Q6_K of `dispatch.rs`, the 32-value
/// types), candle's otherwise.
#[inline(always)]
fn dequantize_span(elem: Elem, src: &[u8], out: &mut [f32]) -> candle_core::Result<()> {
    match elem {
        Elem::F32 => {
            for (o, c) in out.iter_mut().zip(src.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*c);
            }
        }
        Elem::F16 => f16_span(src, out),
        Elem::BF16 => {
            for (o, c) in out.iter_mut().zip(src.as_chunks::<2>().0) {
                *o = half::bf16::from_le_bytes(*c).to_f32();
            }
        }
        Elem::Block(GgmlDType::Q4K) => super::dispatch::dequantize_q4k(src, out),
        Elem::Block(GgmlDType::Q6K) => super::dispatch::dequantize_q6k(src, out),
        Elem::Block(t) => {
            if !dequantize_legacy(t, src, out) {
                match blocks(t, src).dequantize(out.len())? {
                    CpuStorage::F32(v) => out.copy_from_slice(&v),
                    _ => candle_core::bail!("dequantizing {t:?} gave no f32 values"),
                }
            }
        }
        Elem::Decoded(t) => {
            blocks::dequantize(t, src, out).map_err(|e| candle_core::Error::Msg(e.to_string()))?
        }
    }
    Ok(())
}

/// Rows ahead of the one [`StoredMatrix::fill_span`] converts whose span it asks the cache
/// for. Converting a 1024-value F16 span takes a few hundred cycles, about one memory
/// latency, so one row ahead arrives just in time and two arrive early. Measured on the
/// 1.1B pair's reference parity (`perf`, session 16): the F16 span conversion, waiting on
/// its loads, took 3.8 % of the F16 phase's samples without the hint and 1.8 % with it.
const PREFETCH_ROWS: usize = 2;

/// Asks the cache for the lines of `bytes` (a hint: nothing is read, and a CPU without
/// AVX2 skips it along with the AVX2 kernels it would feed).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        super::qmatmul::avx2::prefetch(simd, bytes);
    }
}

/// Little-endian f16 values `src` as f32 in `out`, converted inline (`qmatmul`'s exact
/// conversion, which the compiler vectorizes for AVX2; pulp's V3 token has no F16C, and its
/// AVX-512 token costs more than it gains, see `gemm.rs`): for the short spans of `gemm.rs`,
/// where [`f16_to_f32`]'s staging buffer and out-of-line calls cost more than the panel.
fn f16_span(src: &[u8], out: &mut [f32]) {
    #[inline(always)]
    fn run(src: &[u8], out: &mut [f32]) {
        for (o, c) in out.iter_mut().zip(src.as_chunks::<2>().0) {
            *o = super::qmatmul::f16_to_f32(u16::from_le_bytes(*c));
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return simd.vectorize(
            #[inline(always)]
            || run(src, out),
        );
    }
    run(src, out)
}

/// The 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 of `src` (whole blocks) as f32
/// in `out`, with candle's `to_float` operations (see [`StoredMatrix::dequantize_rows_fast`]);
/// `false`, and `out` untouched, for any other type.
#[inline(always)]
fn dequantize_legacy(t: GgmlDType, src: &[u8], out: &mut [f32]) -> bool {
    // inline, exact conversion: `half`'s is an out-of-line call per block
    let f16 =
        |b: &[u8], at: usize| super::qmatmul::f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]));
    match t {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
            let size = if t == GgmlDType::Q4_0 { 18 } else { 20 };
            for (b, o) in src.chunks_exact(size).zip(out.chunks_exact_mut(32)) {
                let d = f16(b, 0);
                let (lo, hi) = o.split_at_mut(16);
                if t == GgmlDType::Q4_0 {
                    let qs = &b[2..18];
                    for j in 0..16 {
                        lo[j] = f32::from(i16::from(qs[j] & 0x0F) - 8) * d;
                        hi[j] = f32::from(i16::from(qs[j] >> 4) - 8) * d;
                    }
                } else {
                    let m = f16(b, 2);
                    let qs = &b[4..20];
                    for j in 0..16 {
                        lo[j] = f32::from(qs[j] & 0x0F) * d + m;
                        hi[j] = f32::from(qs[j] >> 4) * d + m;
                    }
                }
            }
        }
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let (size, qh_at) = if t == GgmlDType::Q5_0 {
                (22, 2)
            } else {
                (24, 4)
            };
            for (b, o) in src.chunks_exact(size).zip(out.chunks_exact_mut(32)) {
                let d = f16(b, 0);
                let m = if t == GgmlDType::Q5_1 { f16(b, 2) } else { 0.0 };
                let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
                let qs = &b[qh_at + 4..qh_at + 20];
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    let x0 = (qs[j] & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8);
                    let x1 = (qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
                    if t == GgmlDType::Q5_0 {
                        lo[j] = (i32::from(x0) - 16) as f32 * d;
                        hi[j] = (i32::from(x1) - 16) as f32 * d;
                    } else {
                        lo[j] = f32::from(x0) * d + m;
                        hi[j] = f32::from(x1) * d + m;
                    }
                }
            }
        }
        GgmlDType::Q8_0 => {
            for (b, o) in src.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = f16(b, 0);
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
        }
        _ => return false,
    }
    true
}

/// [`avx2::dot_blocks`] over weight rows `j0..` and the `m` rows of `x`, in an AVX2
/// context: `pulp` inlines `with_simd` into a function compiled with AVX2 enabled, with
/// everything it calls.
#[cfg(target_arch = "x86_64")]
struct DotBlocks<'a> {
    simd: pulp::x86::V3,
    t: GgmlDType,
    w: &'a StoredMatrix,
    x: &'a [f32],
    m: usize,
    j0: usize,
    out: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::WithSimd for DotBlocks<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let DotBlocks {
            simd,
            t,
            w,
            x,
            m,
            j0,
            out,
        } = self;
        let (k, rb) = (w.k, w.row_bytes);
        for (jj, dst) in out.chunks_exact_mut(m.max(1)).enumerate() {
            let j = j0 + jj;
            let wrow = &w.bytes[j * rb..(j + 1) * rb];
            for (o, xrow) in dst.iter_mut().zip(x.chunks_exact(k)) {
                *o = avx2::dot_blocks(simd, t, wrow, xrow);
            }
        }
    }
}

/// The exact mat-vec for the common 32-value block types without a buffer: each block is
/// dequantized in registers with the operations of candle's `to_float` (convert, multiply by
/// the scale, then add the minimum: never fused, so the weight values are bit for bit the
/// tiled path's) and multiplied into four running sums of eight lanes.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m128i, __m256};

    use candle_core::quantized::GgmlDType;
    use pulp::bytemuck::cast;
    use pulp::x86::V3;

    use crate::engine::qmatmul::f16_to_f32;

    #[inline(always)]
    fn load8f(x: &[f32]) -> __m256 {
        let mut a = [0f32; 8];
        a.copy_from_slice(&x[..8]);
        cast(a)
    }

    #[inline(always)]
    fn load16(b: &[u8]) -> __m128i {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        cast(a)
    }

    /// Weight row `w` (stored blocks of `t`) dotted with `x` in f32.
    #[inline(always)]
    pub(super) fn dot_blocks(simd: V3, t: GgmlDType, w: &[u8], x: &[f32]) -> f32 {
        let size = match t {
            GgmlDType::Q4_0 => 18,
            GgmlDType::Q4_1 => 20,
            _ => 34,
        };
        let f16 = |b: &[u8], at: usize| f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]));
        let mut acc = [simd.avx._mm256_setzero_ps(); 4];
        for (b, xb) in w.chunks_exact(size).zip(x.chunks_exact(32)) {
            let d = simd.avx._mm256_set1_ps(f16(b, 0));
            // 32 values as four vectors of 8 i32, in value order
            let q: [std::arch::x86_64::__m256i; 4] = match t {
                GgmlDType::Q8_0 => {
                    let lo = load16(&b[2..18]);
                    let hi = load16(&b[18..34]);
                    [
                        simd.avx2._mm256_cvtepi8_epi32(lo),
                        simd.avx2
                            ._mm256_cvtepi8_epi32(simd.sse2._mm_srli_si128::<8>(lo)),
                        simd.avx2._mm256_cvtepi8_epi32(hi),
                        simd.avx2
                            ._mm256_cvtepi8_epi32(simd.sse2._mm_srli_si128::<8>(hi)),
                    ]
                }
                _ => {
                    let at = if t == GgmlDType::Q4_0 { 2 } else { 4 };
                    let v = load16(&b[at..at + 16]);
                    let mask = simd.sse2._mm_set1_epi8(0x0F);
                    let lo = simd.sse2._mm_and_si128(v, mask);
                    let hi = simd
                        .sse2
                        ._mm_and_si128(simd.sse2._mm_srli_epi16::<4>(v), mask);
                    let mut q = [
                        simd.avx2._mm256_cvtepu8_epi32(lo),
                        simd.avx2
                            ._mm256_cvtepu8_epi32(simd.sse2._mm_srli_si128::<8>(lo)),
                        simd.avx2._mm256_cvtepu8_epi32(hi),
                        simd.avx2
                            ._mm256_cvtepu8_epi32(simd.sse2._mm_srli_si128::<8>(hi)),
                    ];
                    if t == GgmlDType::Q4_0 {
                        let eight = simd.avx._mm256_set1_epi32(8);
                        for v in &mut q {
                            *v = simd.avx2._mm256_sub_epi32(*v, eight);
                        }
                    }
                    q
                }
            };
            let m = (t == GgmlDType::Q4_1).then(|| simd.avx._mm256_set1_ps(f16(b, 2)));
            for c in 0..4 {
                let mut wv = simd.avx._mm256_mul_ps(simd.avx._mm256_cvtepi32_ps(q[c]), d);
                if let Some(m) = m {
                    wv = simd.avx._mm256_add_ps(wv, m);
                }
                acc[c] = simd
                    .fma
                    ._mm256_fmadd_ps(wv, load8f(&xb[c * 8..c * 8 + 8]), acc[c]);
            }
        }
        let s = simd.avx._mm256_add_ps(
            simd.avx._mm256_add_ps(acc[0], acc[1]),
            simd.avx._mm256_add_ps(acc[2], acc[3]),
        );
        let a: [f32; 8] = cast(s);
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
    }
}

/// Candle's reading of `src` as blocks of type `t`. Candle reinterprets the bytes in place
/// (then copies them), which needs the alignment of the block's widest field; a tile of a
/// mapped GGUF tensor is aligned, anything else goes through an aligned buffer.
fn blocks(t: GgmlDType, src: &[u8]) -> Box<dyn QuantizedType> {
    const ALIGN: usize = 8;
    if src.as_ptr().align_offset(ALIGN) == 0 {
        return t.from_data(Cow::Borrowed(src));
    }
    let mut padded = vec![0u8; src.len() + ALIGN];
    let off = padded.as_ptr().align_offset(ALIGN).min(ALIGN);
    padded[off..off + src.len()].copy_from_slice(src);
    t.from_data(Cow::Borrowed(&padded[off..off + src.len()]))
}

/// Little-endian f16 values `src` as f32 in `out`: 64 values at a time gathered into an
/// aligned buffer and widened by `half`'s slice conversion (F16C, eight per instruction,
/// where the CPU has it). Every f16 value is exact in f32, so this is bit for bit the
/// value-by-value conversion.
fn f16_to_f32(src: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    const STEP: usize = 64;
    let mut buf = [half::f16::ZERO; STEP];
    for (x, y) in src.chunks(2 * STEP).zip(out.chunks_mut(STEP)) {
        let buf = &mut buf[..y.len()];
        for (h, b) in buf.iter_mut().zip(x.chunks_exact(2)) {
            *h = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        }
        buf.convert_to_f32_slice(y);
    }
}

/// Copy a `[m, rows]` tile into columns `j0..j0 + rows` of `out [m, n]`.
fn scatter(out: &mut [f32], tile: &[f32], n: usize, j0: usize, rows: usize) {
    for (dst, src) in out.chunks_exact_mut(n).zip(tile.chunks_exact(rows)) {
        dst[j0..j0 + rows].copy_from_slice(src);
    }
}

/// A product with a [`StoredMatrix`] as a candle op (CPU, f32 activations).
pub struct Product<'a> {
    w: &'a StoredMatrix,
    quantized: bool,
}

impl CustomOp1 for Product<'_> {
    fn name(&self) -> &'static str {
        "modelgate-stored-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(x) = layout.contiguous_offsets() else {
            candle_core::bail!("stored matmul needs a contiguous input, got {layout:?}");
        };
        let dims = layout.shape().dims();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("stored matmul needs a matrix input");
        };
        if k != self.w.k {
            candle_core::bail!("stored matmul input width {k}, weight width {}", self.w.k);
        }
        let m: usize = lead.iter().product();
        let data = match storage {
            CpuStorage::F32(v) => &v[x.0..x.1],
            _ => candle_core::bail!("stored matmul needs f32 activations"),
        };
        let out = if self.quantized {
            self.w.matmul_quantized(data, m)?
        } else {
            self.w.matmul_exact(data, m)?
        };
        let mut shape = lead.to_vec();
        shape.push(self.w.n);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::test_noise::noise;
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::Module;

    use super::*;

    /// Stored bytes of `w [n, k]` in `elem`, and the f32 values the dense path read from
    /// them (`RawTensor::to_f32`'s conversions; candle's dequantization for blocks).
    fn encode(elem: Elem, w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f32>, Option<QTensor>) {
        match elem {
            Elem::F32 => (
                w.iter().flat_map(|v| v.to_le_bytes()).collect(),
                w.to_vec(),
                None,
            ),
            Elem::F16 => {
                let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
                (
                    h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    h.iter().map(|v| v.to_f32()).collect(),
                    None,
                )
            }
            Elem::BF16 => {
                let h: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
                (
                    h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    h.iter().map(|v| v.to_f32()).collect(),
                    None,
                )
            }
            Elem::Block(t) => {
                let dense = Tensor::from_slice(w, (n, k), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&dense, t).unwrap();
                let bytes = q.data().unwrap().to_vec();
                let deq = q
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                (bytes, deq, Some(q))
            }
            Elem::Decoded(t) => {
                // Random block bytes with each block's f16 scale made small and finite.
                let (bs, size) = t.block().unwrap();
                let (bs, size) = (bs as usize, size as usize);
                let mut bytes: Vec<u8> = noise(k as u64, n * k / bs * size)
                    .iter()
                    .map(|v| (v.to_bits() >> 7) as u8)
                    .collect();
                use GgmlType as G;
                let at = if matches!(t, G::IQ4NL | G::IQ4XS | G::IQ2XXS | G::IQ2XS | G::IQ2S) {
                    0
                } else {
                    size - 2
                };
                for (i, b) in bytes.chunks_exact_mut(size).enumerate() {
                    let d = half::f16::from_f32(0.01 + 0.001 * (i % 7) as f32);
                    b[at..at + 2].copy_from_slice(&d.to_le_bytes());
                }
                let mut deq = vec![0f32; n * k];
                blocks::dequantize(t, &bytes, &mut deq).unwrap();
                let _ = w;
                (bytes, deq, None)
            }
        }
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
            .fold(0.0, f32::max)
    }

    #[test]
    fn tiled_products_equal_the_dense_f32_product() {
        let cases = [
            (Elem::F32, 37, 96),
            (Elem::F16, 37, 96),
            (Elem::BF16, 41, 72),
            // more rows than one tile, and a partial last tile
            (Elem::F16, 5477, 96),
            (Elem::Block(GgmlDType::Q8_0), 53, 160),
            (Elem::Block(GgmlDType::Q4K), 29, 512),
            (Elem::Block(GgmlDType::Q6K), 31, 256),
            (Elem::Block(GgmlDType::Q4K), 2061, 256),
            (Elem::Block(GgmlDType::Q6K), 2049, 256),
            (Elem::Decoded(GgmlType::IQ4NL), 19, 96),
            (Elem::Decoded(GgmlType::IQ4XS), 33, 512),
            (Elem::Decoded(GgmlType::TQ1_0), 9, 256),
            (Elem::Decoded(GgmlType::TQ2_0), 17, 256),
            (Elem::Decoded(GgmlType::IQ2XXS), 11, 256),
            (Elem::Decoded(GgmlType::IQ2XS), 7, 512),
            (Elem::Decoded(GgmlType::IQ2S), 13, 256),
        ];
        for (case, &(elem, n, k)) in cases.iter().enumerate() {
            let w = noise(case as u64 + 1, n * k);
            let (bytes, deq, q) = encode(elem, &w, n, k);
            let sm = StoredMatrix::new(elem, n, k, &bytes, None).unwrap();
            assert!(!sm.is_mapped());
            let dense = Tensor::from_slice(&deq, (n, k), &Device::Cpu).unwrap();
            for m in [1usize, 3, 17, 64] {
                let x = noise(100 + m as u64, m * k);
                let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
                let want = xt
                    .matmul(&dense.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                // the large cases in tiles of 1000 rows, as a larger model would be
                let tile = if n > 1000 { 1000 } else { sm.tile_rows() };
                let got = sm.matmul_exact_tiled(&x, m, tile).unwrap();
                // one tile: the same call as the dense product, bit for bit; several tiles:
                // candle's gemm may sum a dot product in another order when the width
                // differs, a rounding difference bounded by the size of the terms
                if n <= tile {
                    assert_eq!(got, want, "{elem:?} {n}x{k} m={m}");
                }
                let mut worst = 0f32;
                for i in 0..m {
                    for j in 0..n {
                        let terms: f32 =
                            (0..k).map(|c| (x[i * k + c] * deq[j * k + c]).abs()).sum();
                        let d = (got[i * n + j] - want[i * n + j]).abs() / terms.max(1e-30);
                        worst = worst.max(d);
                    }
                }
                assert!(
                    worst <= 1e-6,
                    "{elem:?} {n}x{k} m={m}: difference {worst:e} of the terms' size, \
                     max relative {:e}",
                    max_rel(&got, &want)
                );
                // native mode: candle's quantized product of the whole matrix
                if let Some(q) = &q {
                    let q = QTensor::new(
                        candle_core::quantized::QStorage::from_data(
                            Cow::Borrowed(&bytes),
                            &Device::Cpu,
                            q.dtype(),
                        )
                        .unwrap(),
                        (n, k),
                    )
                    .unwrap();
                    let want = QMatMul::from_qtensor(q)
                        .unwrap()
                        .forward(&xt)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let got = sm.matmul_quantized_tiled(&x, m, tile).unwrap();
                    assert_eq!(got, want, "{elem:?} {n}x{k} m={m} quantized");
                    let got = sm.matmul_quantized(&x, m).unwrap();
                    assert_eq!(got, want, "{elem:?} {n}x{k} m={m} quantized");
                }
                // native mode for the types candle lacks: dequantize, then the exact product
                if let Elem::Decoded(_) = elem {
                    let exact = sm.matmul_exact_tiled(&x, m, tile).unwrap();
                    assert_eq!(sm.matmul_quantized_tiled(&x, m, tile).unwrap(), exact);
                }
            }
            // embedding rows, including the first and last
            let ids = [0u32, (n - 1) as u32, (n / 2) as u32, 0];
            let rows = sm.gather(&ids).unwrap().to_vec2::<f32>().unwrap();
            for (row, &id) in rows.iter().zip(&ids) {
                let id = id as usize;
                assert_eq!(&row[..], &deq[id * k..(id + 1) * k], "{elem:?} row {id}");
            }
            assert!(sm.gather(&[n as u32]).is_err());
        }
    }

    #[test]
    fn matvec_rows_match_the_dense_product_and_any_split() {
        let cases = [
            (Elem::F32, 37, 100),
            (Elem::F16, 29, 96),
            (Elem::Block(GgmlDType::Q4_0), 41, 160),
            (Elem::Block(GgmlDType::Q4_1), 43, 576),
            (Elem::Block(GgmlDType::Q5_0), 19, 96),
            (Elem::Block(GgmlDType::Q5_1), 23, 64),
            (Elem::Block(GgmlDType::Q8_0), 53, 160),
            (Elem::Block(GgmlDType::Q4K), 17, 256),
        ];
        for (case, &(elem, n, k)) in cases.iter().enumerate() {
            let w = noise(case as u64 + 40, n * k);
            let (bytes, deq, _) = encode(elem, &w, n, k);
            let sm = StoredMatrix::new(elem, n, k, &bytes, None).unwrap();
            // the fast dequantization is candle's, bit for bit
            let mut fast = vec![0f32; n * k];
            sm.dequantize_rows_simd(0, &mut fast).unwrap();
            assert_eq!(fast, deq, "{elem:?} dequantization");
            for m in [1usize, 3] {
                let x = noise(200 + m as u64, m * k);
                let got = sm.matmul_exact(&x, m).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let terms: f32 =
                            (0..k).map(|c| (x[i * k + c] * deq[j * k + c]).abs()).sum();
                        let want: f64 = (0..k)
                            .map(|c| f64::from(x[i * k + c]) * f64::from(deq[j * k + c]))
                            .sum();
                        let d = (f64::from(got[i * n + j]) - want).abs() / f64::from(terms);
                        assert!(d <= 1e-6, "{elem:?} m={m} ({i},{j}): {d:e}");
                    }
                }
                // rows computed in any split are the same bits
                let mut split = vec![0f32; n * m];
                let cut = n / 3;
                sm.exact_rows_into(&x, m, 0..cut, &mut split[..cut * m])
                    .unwrap();
                sm.exact_rows_into(&x, m, cut..n, &mut split[cut * m..])
                    .unwrap();
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(split[j * m + i], got[i * n + j], "{elem:?} split");
                    }
                }
            }
            assert!(sm.exact_rows_into(&[0.0; 3], 1, 0..1, &mut [0.0]).is_err());
            // with a second matrix of the same width in one region: the same bits
            let (bytes2, _, _) = encode(elem, &noise(case as u64 + 90, 7 * k), 7, k);
            let other = StoredMatrix::new(elem, 7, k, &bytes2, None).unwrap();
            for m in [1usize, 3] {
                let x = noise(400 + m as u64, m * k);
                let many = StoredMatrix::matvec_many(&[&sm, &other], &x, m)
                    .unwrap()
                    .unwrap();
                assert_eq!(many[0], sm.matmul_exact(&x, m).unwrap(), "{elem:?} many");
                assert_eq!(many[1], other.matmul_exact(&x, m).unwrap(), "{elem:?} many");
            }
        }
    }

    #[test]
    fn tensor_products_are_the_slice_products() {
        let cases = [
            (Elem::F16, 37, 96),
            (Elem::F16, 5477, 96),
            (Elem::Block(GgmlDType::Q4K), 29, 512),
            (Elem::Block(GgmlDType::Q6K), 2049, 256),
            (Elem::Block(GgmlDType::Q8_0), 53, 160),
        ];
        for (case, &(elem, n, k)) in cases.iter().enumerate() {
            let w = noise(case as u64 + 70, n * k);
            let (bytes, _, _) = encode(elem, &w, n, k);
            let sm = StoredMatrix::new(elem, n, k, &bytes, None).unwrap();
            for m in [1usize, 9, 16, 40] {
                let x = noise(300 + m as u64, m * k);
                let xt = Tensor::from_slice(&x, (1, m, k), &Device::Cpu).unwrap();
                let exact = sm.forward_exact(&xt).unwrap();
                assert_eq!(exact.dims(), &[1, m, n]);
                let exact = exact.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(exact, sm.matmul_exact(&x, m).unwrap(), "{elem:?} m={m}");
            }
        }
    }

    #[test]
    fn packed_products_match_dequantized_f64_sums_for_every_stored_type() {
        use GgmlDType as D;
        // every type `gemm.rs` packs, through its own dequantizer (F16, Q4_K, Q6_K, the
        // 32-value types) or candle's / `formats::blocks`' (the rest); widths of one KC
        // slice and of two (the second partial), row counts off the panel sizes
        let cases = [
            (Elem::F32, 19, 100),
            (Elem::F16, 37, 1280),
            (Elem::BF16, 21, 96),
            (Elem::Block(D::Q8_0), 23, 160),
            (Elem::Block(D::Q4_0), 17, 1088),
            (Elem::Block(D::Q4_1), 18, 64),
            (Elem::Block(D::Q5_0), 19, 96),
            (Elem::Block(D::Q5_1), 20, 128),
            (Elem::Block(D::Q2K), 9, 256),
            (Elem::Block(D::Q3K), 10, 512),
            (Elem::Block(D::Q4K), 33, 1280),
            (Elem::Block(D::Q5K), 11, 512),
            (Elem::Block(D::Q6K), 17, 1280),
            (Elem::Decoded(GgmlType::IQ4NL), 13, 96),
            (Elem::Decoded(GgmlType::IQ4XS), 7, 512),
            (Elem::Decoded(GgmlType::TQ2_0), 5, 256),
        ];
        for (case, &(elem, n, k)) in cases.iter().enumerate() {
            let w = noise(case as u64 + 500, n * k);
            let (bytes, _, _) = encode(elem, &w, n, k);
            let sm = StoredMatrix::new(elem, n, k, &bytes, None).unwrap();
            let mut deq = vec![0f32; n * k];
            sm.dequantize_rows(0, &mut deq).unwrap();
            let m = GEMM_ROWS + 3;
            assert!(sm.gemm_applies(m));
            let x = noise(600 + case as u64, m * k);
            let got = sm.matmul_exact(&x, m).unwrap();
            assert_eq!(got, sm.gemm_exact(&x, m).unwrap(), "{elem:?} routing");
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut size) = (0f64, 0f64);
                    for c in 0..k {
                        let p = f64::from(x[i * k + c]) * f64::from(deq[j * k + c]);
                        want += p;
                        size += p.abs();
                    }
                    let d = (f64::from(got[i * n + j]) - want).abs();
                    assert!(d <= 1e-6 * size, "{elem:?} ({i},{j}): {d:e} of {size:e}");
                }
            }
            // the tensor entry point is the same product, bit for bit
            let xt = Tensor::from_slice(&x, (1, m, k), &Device::Cpu).unwrap();
            let t = sm.forward_exact(&xt).unwrap();
            assert_eq!(t.dims(), &[1, m, n]);
            assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), got);
        }
    }

    #[test]
    fn f16_spans_convert_every_value_as_half_does() {
        // every bit pattern (NaNs included), at lengths with and without a tail past the
        // compiler's 8-value vector steps
        let all: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        for len in [65536, 65535, 17, 15] {
            let mut out = vec![0f32; len];
            f16_span(&all[..2 * len], &mut out);
            for (i, o) in out.iter().enumerate() {
                let want = half::f16::from_bits(i as u16).to_f32();
                assert_eq!(o.to_bits(), want.to_bits(), "{i:#06x} (length {len})");
            }
        }
    }

    #[test]
    fn sizes_are_checked_and_unaligned_blocks_are_read() {
        assert!(StoredMatrix::new(Elem::F16, 2, 3, &[0u8; 11], None).is_none());
        assert!(StoredMatrix::new(Elem::F16, 2, 0, &[], None).is_none());
        assert!(StoredMatrix::new(Elem::Block(GgmlDType::Q4K), 1, 255, &[0; 144], None).is_none());
        assert!(StoredMatrix::new(Elem::Block(GgmlDType::Q4K), 1, 256, &[0; 144], None).is_some());
        // Q8_0 rows of 34 bytes start at odd multiples of 2: tiles of row 1.. are read through
        // an aligned buffer
        let (n, k) = (3, 32);
        let w = noise(7, n * k);
        let (bytes, deq, _) = encode(Elem::Block(GgmlDType::Q8_0), &w, n, k);
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&bytes);
        let sm =
            StoredMatrix::new(Elem::Block(GgmlDType::Q8_0), n, k, &shifted[1..], None).unwrap();
        let mut out = vec![0f32; k];
        sm.dequantize_rows(1, &mut out).unwrap();
        assert_eq!(&out[..], &deq[k..2 * k]);
    }
}
