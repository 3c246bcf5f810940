//! Integer products of K-quant weight rows (Q4_K, Q5_K, Q6_K) with activations quantized to
//! Q8_K: the arithmetic of ggml's `vec_dot_q4_K_q8_K` / `q5_K` / `q6_K`, for native math's
//! dense products (`stored.rs`) and expert dispatch (`dispatch.rs`).
//!
//! Each activation row is quantized once per product to Q8_K ([`Q8K::quantize`]): per
//! 256-value super-block a scale `dx`, 256 signed 8-bit quants and the sums of each 16 and
//! each 32 of them, rounded as candle's quantizer rounds them, so a row gives the values
//! candle's own kernel (token-by-token generation) multiplies. A Q4_K / Q5_K weight
//! super-block is `d * scale_g * q - dmin * min_g` per 32-value group `g`, so its dot product
//! with an activation super-block is
//!
//! `d * dx * sum(scale * q * x8) - dmin * dx * sum_g(min_g * bsum_g)`
//!
//! with both sums exact integers: the weights never become floats. Q6_K is `d * scale_g *
//! (q - 32)` per 16 values, the `- 32` inside the integer sum.
//!
//! Each weight row is first unpacked with AVX2 ([`Unpacked`], one block per super-block):
//! one quant per byte in value order, the scales in the few bytes a load widens to the
//! 16-bit factor of each value pair (Q4_K / Q5_K: a broadcast; Q6_K: a sign extension), the
//! eight mins. The unpacking is shared by every activation row; the dot products then need
//! only AVX2's `maddubs` (unsigned weights times signed activations, pairs summed to 16
//! bits; Q6_K's signed weights `q - 32` times its activations plus 128, made once per
//! activation row, the lanes started at minus what the `+ 128` adds, a per-weight-row
//! constant) and `madd` (times the scales, pairs summed to 32 bits), for four activation
//! rows per weight vector load. A large product goes in blocks of activation rows written
//! in place ([`block`]), the weight rows unpacked a chunk at a time, each group of four
//! activation rows meeting every row of a chunk while it stays in cache; the Q8_K rows are
//! stored by those groups ([`Q8K`]), so one pointer reaches a group and one vector operation
//! scales several of its rows. The exact sum of
//! each super-block is kept in eight 32-bit lanes (lane `l` holds the values at positions
//! `4l..4l + 4` of every 32), turned to f32 and added with one fused multiply-add per lane
//! into eight f32 lanes, which are summed in `hsum_float_8`'s order at the end; the mins
//! terms go through `madd` of the mins with the 32-value activation sums into Q4_K's four
//! separate f32 lanes (Q5_K: one scalar), as candle keeps them. The integer lanes are
//! exact, so any way of reaching them (candle subtracts `maddubs(32, x)` per 32 values for
//! Q6_K) gives the same bits. The portable path computes the same lanes in the same order
//! with `f32::mul_add`, so both give candle's bits, whatever the tile, the batch or the
//! thread count.
//!
//! SIMD comes from `pulp` (AVX2 detected at run time, intrinsics as safe methods): no
//! `unsafe` here.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Values per super-block.
pub(super) const QK_K: usize = 256;
/// Activation rows multiplied together against the unpacked weight rows.
const GROUP: usize = 4;
/// Activation rows per parallel task of [`Q8K::quantize`].
const QUANTIZE_ROWS: usize = 16;

/// Bytes of Q8_K quants per block of activation rows of a large product ([`block`]): half
/// of a 1 MiB L2 cache (measured: 128 KiB to 2 MiB alike within noise, and the fewer
/// blocks, the fewer times each weight row is unpacked).
const BLOCK_BYTES: usize = 512 << 10;

/// Fewest activation rows per block of a product split into blocks: each block unpacks
/// every weight row once, which fewer rows would not repay.
const BLOCK_MIN_ROWS: usize = 64;

/// Bytes of unpacked weight rows per chunk ([`WBlock`]s, 576 bytes per super-block): each
/// `GROUP` of activation rows (in L1 cache) meets every row of a chunk while the chunk stays
/// in L2 cache (measured: 128 KiB to 384 KiB alike, 768 KiB slower).
const CHUNK_BYTES: usize = 256 << 10;

/// Weight rows of `nb` super-blocks unpacked together.
fn chunk_rows(nb: usize) -> usize {
    (CHUNK_BYTES / (nb * std::mem::size_of::<WBlock>()).max(1)).max(1)
}

/// The 256 quants of one super-block as eight vectors of 32 bytes.
type Quants = [[u8; 32]; 8];

/// The weight types of the integer kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Q4K,
    Q5K,
    Q6K,
}

impl Kind {
    /// The kernel for weights of type `t`, if there is one.
    pub(super) fn of(t: GgmlDType) -> Option<Kind> {
        match t {
            GgmlDType::Q4K => Some(Kind::Q4K),
            GgmlDType::Q5K => Some(Kind::Q5K),
            GgmlDType::Q6K => Some(Kind::Q6K),
            _ => None,
        }
    }

    /// Stored bytes of one super-block.
    pub(super) fn block_bytes(self) -> usize {
        match self {
            Kind::Q4K => 144,
            Kind::Q5K => 176,
            Kind::Q6K => 210,
        }
    }
}

/// Activation rows quantized to Q8_K, stored by groups of `GROUP` rows (the rows the kernel
/// multiplies together): for each group and super-block the `GROUP` blocks of quants side by
/// side and one [`GScales`], so that the kernel reaches all of a group through one pointer
/// (per-row pointers did not fit the registers beside the accumulators) and applies the
/// scales of several rows with one vector operation. Rows past `m` (the last group's) are
/// zeros.
#[derive(Debug)]
pub(super) struct Q8K {
    m: usize,
    nb: usize,
    /// Blocks of quants, `i8` stored as bytes: row `i`'s super-block `b` at
    /// [`Q8K::at`]`(i, b)`.
    qs: Vec<Quants>,
    /// The sums of each 16 quants, indexed as `qs`.
    bsums: Vec<[i16; 16]>,
    /// Per group and super-block (`(i / GROUP) * nb + b`): the scales and 32-value sums.
    gs: Vec<GScales>,
    /// The blocks of `qs` plus 128 (unsigned bytes: the quants with their top bit flipped),
    /// the unsigned side of Q6_K's `maddubs` against its signed weights, made when a Q6_K
    /// product first needs them.
    shifted: OnceLock<Vec<Quants>>,
}

/// The scales and the 32-value sums of one super-block of a group of `GROUP` activation
/// rows, laid out as the kernel's vectors take them.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(32))]
struct GScales {
    /// Each row's scale `dx` eight times (one load per row, no broadcast).
    d: [[f32; 8]; GROUP],
    /// Each pair of rows' scales four times each (`[dx0; 4]` then `[dx1; 4]`): the factors of
    /// the mins of two rows in one vector.
    d2: [[f32; 8]; GROUP / 2],
    /// Each row's sums of each 32 quants (the pairs of `bsums`), the factors of the mins.
    b32: [[i16; 8]; GROUP],
}

const ZERO_SCALES: GScales = GScales {
    d: [[0.0; 8]; GROUP],
    d2: [[0.0; 8]; GROUP / 2],
    b32: [[0; 8]; GROUP],
};

impl Q8K {
    /// `m` rows of `nb` super-blocks of zeros.
    fn zeroed(m: usize, nb: usize) -> Q8K {
        let blocks = m.div_ceil(GROUP) * GROUP * nb;
        Q8K {
            m,
            nb,
            qs: vec![[[0; 32]; 8]; blocks],
            bsums: vec![[0; 16]; blocks],
            gs: vec![ZERO_SCALES; blocks / GROUP],
            shifted: OnceLock::new(),
        }
    }

    /// The index in `qs` of row `i`'s super-block `b`.
    fn at(&self, i: usize, b: usize) -> usize {
        ((i / GROUP) * self.nb + b) * GROUP + i % GROUP
    }

    /// The `x.len() / k` rows of `x`, each `k` values (a multiple of 256) wide, quantized
    /// `QUANTIZE_ROWS` rows (whole groups) per task over rayon's threads.
    pub(super) fn quantize(x: &[f32], k: usize) -> Q8K {
        let nb = k / QK_K;
        let m = x.len().checked_div(k).unwrap_or(0);
        let mut q = Q8K::zeroed(m, nb);
        let per = (QUANTIZE_ROWS * nb).max(1);
        q.qs.par_chunks_mut(per)
            .zip(q.bsums.par_chunks_mut(per))
            .zip(q.gs.par_chunks_mut((QUANTIZE_ROWS / GROUP * nb).max(1)))
            .zip(x.par_chunks(per * QK_K))
            .for_each(|(((qs, bsums), gs), x)| {
                let parts = Parts { nb, qs, bsums, gs };
                #[cfg(target_arch = "x86_64")]
                if let Some(simd) = pulp::x86::V3::try_new() {
                    pulp::Simd::vectorize(simd, Fill { parts, x, simd });
                    return;
                }
                parts.fill(x, None);
            });
        q
    }

    #[cfg(test)]
    fn fill(&mut self, x: &[f32], simd: Option<Simd>) {
        let parts = Parts {
            nb: self.nb,
            qs: &mut self.qs,
            bsums: &mut self.bsums,
            gs: &mut self.gs,
        };
        parts.fill(x, simd);
    }

    /// The shifted quants a product with `kind` weights needs, made now over rayon's threads
    /// (Q6_K; otherwise nothing to do).
    pub(super) fn prepare(&self, kind: Kind) {
        if kind == Kind::Q6K {
            self.shifted.get_or_init(|| {
                let mut p = self.qs.clone();
                p.par_chunks_mut(QUANTIZE_ROWS * self.nb.max(1))
                    .for_each(flip_top_bits);
                p
            });
        }
    }

    /// Q6_K's shifted quants, made here (on one thread) if [`Q8K::prepare`] has not made them.
    #[cfg(target_arch = "x86_64")]
    fn shifted(&self) -> &[Quants] {
        self.shifted.get_or_init(|| {
            let mut p = self.qs.clone();
            flip_top_bits(&mut p);
            p
        })
    }

    /// Activation rows.
    pub(super) fn rows(&self) -> usize {
        self.m
    }

    /// Activation rows per block of a product split into blocks of activation rows over
    /// `threads` threads ([`block`]), `None` when there are too few rows for two blocks
    /// worth it. At most as many as keep their quants in `BLOCK_BYTES`, in a multiple of
    /// `threads` blocks of equal size, so that each thread takes as many; a multiple of
    /// `GROUP`, so that every block starts at a whole group (rounded down: the rows left
    /// over make one more, short, block, which balances better than blocks too long).
    pub(super) fn block_rows(&self, threads: usize) -> Option<usize> {
        let row = self.nb * std::mem::size_of::<Quants>();
        let most = (BLOCK_BYTES / row.max(1)).max(GROUP);
        let blocks = self.m.div_ceil(most).next_multiple_of(threads.max(1));
        let rows = self.m.div_ceil(blocks.max(1)) / GROUP * GROUP;
        (blocks > 1 && rows >= BLOCK_MIN_ROWS).then_some(rows)
    }

    /// Row `i`'s super-block `b`: (quants, scale, sums of 16, sums of 32).
    fn block(&self, i: usize, b: usize) -> (&Quants, f32, &[i16; 16], &[i16; 8]) {
        let (at, g) = (self.at(i, b), &self.gs[(i / GROUP) * self.nb + b]);
        let s = i % GROUP;
        (&self.qs[at], g.d[s][0], &self.bsums[at], &g.b32[s])
    }
}

/// Each signed quant `x` of the blocks `q` made the unsigned byte `x + 128`.
fn flip_top_bits(q: &mut [Quants]) {
    for v in q.iter_mut().flatten().flatten() {
        *v ^= 0x80;
    }
}

/// The arrays of some whole groups of rows of a [`Q8K`] of `nb` super-blocks per row.
struct Parts<'a> {
    nb: usize,
    qs: &'a mut [Quants],
    bsums: &'a mut [[i16; 16]],
    gs: &'a mut [GScales],
}

impl Parts<'_> {
    // inlined into the caller's SIMD context; `simd` quantizes each block with AVX2
    #[inline(always)]
    fn fill(self, x: &[f32], simd: Option<Simd>) {
        let nb = self.nb;
        for (i, xr) in x.chunks_exact(nb * QK_K).enumerate() {
            let (g, s) = (i / GROUP, i % GROUP);
            for (b, xb) in xr.chunks_exact(QK_K).enumerate() {
                let at = (g * nb + b) * GROUP + s;
                let (qb, bs, gs) = (
                    &mut self.qs[at],
                    &mut self.bsums[at],
                    &mut self.gs[g * nb + b],
                );
                let mut d = 0f32;
                match simd {
                    #[cfg(target_arch = "x86_64")]
                    Some(simd) => avx2::quantize_block(simd, xb, qb, &mut d, bs),
                    _ => quantize_block(xb, qb.as_flattened_mut(), &mut d, bs),
                }
                for (t, p) in gs.b32[s].iter_mut().zip(bs.as_chunks::<2>().0) {
                    *t = p[0] + p[1];
                }
                gs.d[s] = [d; 8];
                gs.d2[s / 2][4 * (s % 2)..][..4].fill(d);
            }
        }
    }
}

/// One super-block as candle's `BlockQ8K::from_float` does it: scale `-127 / x` for the
/// value `x` of largest magnitude (the first of equals), quants rounded half away from zero.
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [u8], d: &mut f32, bsums: &mut [i16; 16]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        *d = 0.0;
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (iscale * v).round().clamp(-128.0, 127.0) as i8 as u8;
    }
    for (s, g) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = g.iter().map(|&v| i16::from(v as i8)).sum();
    }
    *d = 1.0 / iscale;
}

/// One weight super-block unpacked for the kernel, nine cache lines. The fields Q4_K reads
/// come first, in the first five (`corr` and `sc` are Q6_K's alone).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct WBlock {
    /// The quants of each 32 values in value order: unsigned for Q4_K and Q5_K, Q6_K's
    /// signed (`q - 32`, `i8` stored as bytes).
    q: Quants,
    /// Q4_K, Q5_K: the scale of each 32 values in both halves of an `i32`, which a broadcast
    /// load makes the 16 factors `madd` applies (32 bytes to read per super-block, not 256).
    sc4: [i32; 8],
    /// The min of each 32 values (Q4_K, Q5_K).
    mins: [i16; 8],
    d: f32,
    dmin: f32,
    /// Q6_K: `-128` times the scaled sum of the quants in each of the kernel's eight 32-bit
    /// lanes (lane `l` the values at positions `4l..4l + 4` of every 32), what the `+ 128`
    /// of the shifted activations adds to the lanes, taken off by starting them here.
    corr: [i32; 8],
    /// Q6_K: per 32 values the scale of each value pair (the 16 factors `madd` applies, which
    /// a sign-extending load widens to 16 bits: 128 bytes to read per super-block, not 256).
    sc: [[i8; 16]; 8],
    /// Nine cache lines, not eight: with blocks 512 bytes apart (a multiple of the 256 of a
    /// block of activation quants) the compiler strength-reduced the kernel's loads to one
    /// induction variable and spilled accumulators, Q4_K 25 % slower.
    _pad: [u8; 104],
}

const ZERO_BLOCK: WBlock = WBlock {
    q: [[0; 32]; 8],
    sc4: [0; 8],
    mins: [0; 8],
    d: 0.0,
    dmin: 0.0,
    corr: [0; 8],
    sc: [[0; 16]; 8],
    _pad: [0; 104],
};

const _: () = assert!(std::mem::size_of::<WBlock>() == 576);

/// A weight row unpacked for the kernel ([`WBlock`] per super-block), kept between calls.
#[derive(Debug, Default)]
pub(super) struct Unpacked {
    blocks: Vec<WBlock>,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and min of 32-value group `j` of a Q4_K / Q5_K super-block (12 bytes).
#[inline(always)]
fn scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl Unpacked {
    /// Unpack the super-blocks of `src` (whole rows of `kind`): the quants with AVX2 when
    /// `simd` is given (the same bytes), the scales and mins in scalar code.
    #[inline(always)]
    fn fill(&mut self, kind: Kind, src: &[u8], simd: Option<Simd>) {
        let n = src.len() / kind.block_bytes();
        self.blocks.resize(n, ZERO_BLOCK);
        for (b, w) in src.chunks_exact(kind.block_bytes()).zip(&mut self.blocks) {
            match (kind, simd) {
                #[cfg(target_arch = "x86_64")]
                (Kind::Q4K | Kind::Q5K, Some(s)) => avx2::quants_q45k(s, kind, b, &mut w.q),
                #[cfg(target_arch = "x86_64")]
                (Kind::Q6K, Some(s)) => avx2::quants_q6k(s, b, &mut w.q),
                (Kind::Q4K | Kind::Q5K, _) => quants_q45k(kind, b, &mut w.q),
                (Kind::Q6K, _) => quants_q6k(b, &mut w.q),
            }
            match (kind, simd) {
                (Kind::Q4K | Kind::Q5K, _) => scales_q45k(b, w),
                #[cfg(target_arch = "x86_64")]
                (Kind::Q6K, Some(s)) => {
                    scales_q6k(b, w);
                    w.corr = avx2::corr_q6k(s, &w.q, &w.sc);
                }
                // the portable kernel sums the signed quants as they are: no correction
                (Kind::Q6K, _) => scales_q6k(b, w),
            }
        }
    }
}

/// [`WBlock::corr`] of the signed Q6_K quants `q` and their pair scales `sc`, one value at a
/// time: the definition the AVX2 version is tested against (only the AVX2 kernel uses it).
#[cfg(test)]
fn corr_q6k(q: &Quants, sc: &[[i8; 16]; 8]) -> [i32; 8] {
    let mut corr = [0i32; 8];
    for (q, sc) in q.iter().zip(sc) {
        for (p, &q) in q.iter().enumerate() {
            corr[p / 4] -= 128 * i32::from(sc[p / 2]) * i32::from(q as i8);
        }
    }
    corr
}

/// The quants of a Q4_K (144 bytes) or Q5_K (176 bytes) super-block.
fn quants_q45k(kind: Kind, b: &[u8], q: &mut Quants) {
    let (qh, qs) = match kind {
        Kind::Q5K => (b[16..48].as_chunks::<32>().0.first(), &b[48..176]),
        _ => (None, &b[16..144]),
    };
    let (q, _) = q.as_chunks_mut::<2>();
    for (j, (q, qs)) in q.iter_mut().zip(qs.as_chunks::<32>().0).enumerate() {
        let [lo, hi] = q;
        for ((lo, hi), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
            *lo = v & 0xF;
            *hi = v >> 4;
        }
        if let Some(qh) = qh {
            // bit 2j of high byte l tops value 64j + l, bit 2j + 1 value 64j + 32 + l
            for ((lo, hi), &h) in lo.iter_mut().zip(hi.iter_mut()).zip(qh) {
                *lo |= ((h >> (2 * j)) & 1) << 4;
                *hi |= ((h >> (2 * j + 1)) & 1) << 4;
            }
        }
    }
}

/// `d`, `dmin`, the scales and the mins of a Q4_K or Q5_K super-block.
fn scales_q45k(b: &[u8], w: &mut WBlock) {
    w.d = f16_at(b, 0);
    w.dmin = f16_at(b, 2);
    let sc = &b[4..16];
    for (g, (sv, m)) in w.sc4.iter_mut().zip(w.mins.iter_mut()).enumerate() {
        let (s, mn) = scale_min(sc, g);
        *sv = i32::from(s) * 0x1_0001;
        *m = i16::from(mn);
    }
}

/// The 6-bit quants `q` of a Q6_K super-block (210 bytes), stored as the values `q - 32`.
fn quants_q6k(b: &[u8], q: &mut Quants) {
    let (ql, _) = b[..128].as_chunks::<64>();
    let (qh, _) = b[128..192].as_chunks::<32>();
    let (w4, _) = q.as_chunks_mut::<4>();
    for ((q, ql), qh) in w4.iter_mut().zip(ql).zip(qh) {
        let (l0, l1) = ql.split_at(32);
        let [q0, q1, q2, q3] = q;
        for l in 0..32 {
            let (a, c, h) = (l0[l], l1[l], qh[l]);
            q0[l] = ((a & 0xF) | ((h & 3) << 4)).wrapping_sub(32);
            q1[l] = ((c & 0xF) | (((h >> 2) & 3) << 4)).wrapping_sub(32);
            q2[l] = ((a >> 4) | (((h >> 4) & 3) << 4)).wrapping_sub(32);
            q3[l] = ((c >> 4) | (((h >> 6) & 3) << 4)).wrapping_sub(32);
        }
    }
}

/// `d` and the 16 scales (two per 32 values) of a Q6_K super-block.
fn scales_q6k(b: &[u8], w: &mut WBlock) {
    w.d = f16_at(b, 208);
    w.dmin = w.d;
    for (sv, s) in w.sc.iter_mut().zip(b[192..208].as_chunks::<2>().0) {
        let (s0, s1) = (s[0] as i8, s[1] as i8);
        *sv = [
            s0, s0, s0, s0, s0, s0, s0, s0, s1, s1, s1, s1, s1, s1, s1, s1,
        ];
    }
}

/// `out [rows, m]`: the dot products of the weight rows in `src` (whole rows of `kind`,
/// `a`'s width) with each of `a`'s rows. `scratch` keeps the unpacked rows between calls.
pub(super) fn tile(kind: Kind, src: &[u8], a: &Q8K, scratch: &mut Unpacked, out: &mut [f32]) {
    let m = a.m;
    let layout = Layout {
        i0: 0,
        i1: m,
        row_stride: m,
        token_stride: 1,
    };
    product(kind, src, a, layout, scratch, out);
}

/// `out [i1 - i0, n]`: rows `i0..i1` of `a` against every weight row in `src` (whole rows
/// of `kind`, `a`'s width, at most `n` of them), row `i - i0` of `out` holding the dot
/// products of activation row `i` in the order of the weight rows: one block of tokens of
/// the product `x W^T`, written in its final layout.
pub(super) fn block(
    kind: Kind,
    src: &[u8],
    a: &Q8K,
    i0: usize,
    scratch: &mut Unpacked,
    out: &mut [f32],
    n: usize,
) {
    let tokens = out.len().checked_div(n).unwrap_or(0);
    let layout = Layout {
        i0,
        i1: (i0 + tokens).min(a.m),
        row_stride: 1,
        token_stride: n,
    };
    product(kind, src, a, layout, scratch, out);
}

/// Which activation rows a product takes and where each dot product goes: weight row `j`
/// against activation row `i` lands at `j * row_stride + (i - i0) * token_stride`.
#[derive(Clone, Copy, Debug)]
struct Layout {
    i0: usize,
    i1: usize,
    row_stride: usize,
    token_stride: usize,
}

fn product(
    kind: Kind,
    src: &[u8],
    a: &Q8K,
    layout: Layout,
    scratch: &mut Unpacked,
    out: &mut [f32],
) {
    let row_bytes = a.nb * kind.block_bytes();
    if layout.i1 <= layout.i0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        let op = Rows {
            kind,
            src,
            row_bytes,
            a,
            layout,
            scratch,
            out,
            simd,
        };
        pulp::Simd::vectorize(simd, op);
        return;
    }
    rows(kind, src, row_bytes, a, layout, scratch, out, None);
}

// `pulp`'s `WithSimd` entry: `with_simd` is inlined into a function compiled with AVX2
// enabled, and everything it calls with it (a closure handed to `V3::vectorize` is called
// through a shim that is not, which leaves every intrinsic an out-of-line call)

/// [`Parts::fill`] in an AVX2 context.
#[cfg(target_arch = "x86_64")]
struct Fill<'a> {
    parts: Parts<'a>,
    x: &'a [f32],
    simd: pulp::x86::V3,
}

#[cfg(target_arch = "x86_64")]
impl pulp::WithSimd for Fill<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        self.parts.fill(self.x, Some(self.simd));
    }
}

/// [`rows`] in an AVX2 context.
#[cfg(target_arch = "x86_64")]
struct Rows<'a> {
    kind: Kind,
    src: &'a [u8],
    row_bytes: usize,
    a: &'a Q8K,
    layout: Layout,
    scratch: &'a mut Unpacked,
    out: &'a mut [f32],
    simd: pulp::x86::V3,
}

#[cfg(target_arch = "x86_64")]
impl pulp::WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Rows {
            kind,
            src,
            row_bytes,
            a,
            layout,
            scratch,
            out,
            simd,
        } = self;
        rows(kind, src, row_bytes, a, layout, scratch, out, Some(simd));
    }
}

/// [`product`] on the SIMD path given (inlined into its target-feature context) or the
/// portable one. Weight rows are unpacked a chunk at a time (as many as stay in L2 cache
/// beside the output); then for each `GROUP` of activation rows (which stay in L1 cache)
/// every unpacked row passes by: each activation vector is loaded from L1 once per weight
/// row, each weight vector from L2 once per `GROUP` activation rows. A range that starts or
/// ends inside a group takes the rows of that group it has alone.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows(
    kind: Kind,
    src: &[u8],
    row_bytes: usize,
    a: &Q8K,
    layout: Layout,
    scratch: &mut Unpacked,
    out: &mut [f32],
    simd: Option<Simd>,
) {
    let Layout {
        i0,
        i1,
        row_stride,
        token_stride,
    } = layout;
    let nb = a.nb;
    let chunk = chunk_rows(nb);
    for (c, ws) in src.chunks(chunk * row_bytes).enumerate() {
        scratch.fill(kind, ws, simd);
        let mut i = i0;
        while i < i1 {
            let r = (GROUP - i % GROUP).min(i1 - i);
            let mut dst = Out {
                out: &mut *out,
                at: c * chunk * row_stride + (i - i0) * token_stride,
                row_stride,
                token_stride,
            };
            match simd {
                #[cfg(target_arch = "x86_64")]
                Some(s) => avx2::group(s, kind, &scratch.blocks, a, i, r, &mut dst),
                _ => {
                    for (j, w) in scratch.blocks.chunks_exact(nb).enumerate() {
                        dst.put(j, &portable_row(kind, w, a, i, r)[..r]);
                    }
                }
            }
            i += r;
        }
    }
}

/// Where the products of a few activation rows go: weight row `j`'s against the `s`-th at
/// `at + j * row_stride + s * token_stride`.
struct Out<'a> {
    out: &'a mut [f32],
    at: usize,
    row_stride: usize,
    token_stride: usize,
}

impl Out<'_> {
    #[inline(always)]
    fn put(&mut self, j: usize, v: &[f32]) {
        let at = self.at + j * self.row_stride;
        for (s, &v) in v.iter().enumerate() {
            self.out[at + s * self.token_stride] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
type Simd = pulp::x86::V3;
#[cfg(not(target_arch = "x86_64"))]
type Simd = ();

/// The eight f32 lanes summed in the order of candle's `hsum_float_8` (high half plus low
/// half, then lanes 0 + 2 and 1 + 3).
#[inline(always)]
fn reduce(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The scale terms `h` (reduced) plus the `dmin` terms, kept apart as candle keeps them:
/// Q4_K in four f32 lanes `lanes` (lane `i` the mins of 32-value groups `2i`, `2i + 1`, fused
/// multiply-adds), Q5_K in one f32 `sum` (multiply, then add), Q6_K none (its `- 32` is in
/// the integer sum).
#[inline(always)]
fn finish(kind: Kind, h: f32, l: [f32; 4], sum: f32) -> f32 {
    match kind {
        Kind::Q4K => h + ((l[0] + l[2]) + (l[1] + l[3])),
        Kind::Q5K => h + sum,
        Kind::Q6K => h,
    }
}

/// The unpacked row `w` against activation rows `i0..i0 + r` (`r <= GROUP`), lane by lane
/// as the AVX2 kernel sums.
fn portable_row(kind: Kind, w: &[WBlock], a: &Q8K, i0: usize, r: usize) -> [f32; GROUP] {
    let mut out = [0f32; GROUP];
    for (s, o) in out.iter_mut().enumerate().take(r) {
        let (mut acc, mut lanes_m, mut sum_m) = ([0f32; 8], [0f32; 4], 0f32);
        for (b, wb) in w.iter().enumerate() {
            let (x, dx, _, b32) = a.block(i0 + s, b);
            let mut lanes = [0i32; 8];
            for (v, (q, x)) in wb.q.iter().zip(x).enumerate() {
                for (p, (&q, &x)) in q.iter().zip(x).enumerate() {
                    let (q, sc) = match kind {
                        Kind::Q6K => (i32::from(q as i8), i32::from(wb.sc[v][p / 2])),
                        // the low half of the scale pair
                        _ => (i32::from(q), i32::from(wb.sc4[v] as i16)),
                    };
                    lanes[p / 4] += sc * q * i32::from(x as i8);
                }
            }
            let dd = dx * wb.d;
            for (acc, &l) in acc.iter_mut().zip(&lanes) {
                *acc = dd.mul_add(l as f32, *acc);
            }
            let p: [i32; 4] = std::array::from_fn(|i| {
                i32::from(wb.mins[2 * i]) * i32::from(b32[2 * i])
                    + i32::from(wb.mins[2 * i + 1]) * i32::from(b32[2 * i + 1])
            });
            let dm = -dx * wb.dmin;
            match kind {
                Kind::Q4K => {
                    for (l, &p) in lanes_m.iter_mut().zip(&p) {
                        *l = dm.mul_add(p as f32, *l);
                    }
                }
                Kind::Q5K => sum_m += dm * ((p[0] + p[1]) + (p[2] + p[3])) as f32,
                Kind::Q6K => {}
            }
        }
        *o = finish(kind, reduce(acc), lanes_m, sum_m);
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m128, __m128i, __m256, __m256i};

    use pulp::bytemuck::cast;
    use pulp::x86::V3;

    use super::{finish, reduce, GScales, Kind, Out, Quants, WBlock, GROUP, Q8K};

    /// [`super::quants_q45k`]: one 32-byte load gives two vectors of nibbles; Q5_K's fifth
    /// bits are tested in place (`cmpeq` on the bit, masked to 16).
    #[inline(always)]
    pub(super) fn quants_q45k(simd: V3, kind: Kind, b: &[u8], q: &mut Quants) {
        let (avx, avx2) = (simd.avx, simd.avx2);
        let (qh, qs) = match kind {
            Kind::Q5K => (b[16..48].as_chunks::<32>().0.first(), &b[48..176]),
            _ => (None, &b[16..144]),
        };
        let m4 = avx._mm256_set1_epi8(0xF);
        let m16 = avx._mm256_set1_epi8(16);
        let (q, _) = q.as_chunks_mut::<2>();
        for (j, (q, qs)) in q.iter_mut().zip(qs.as_chunks::<32>().0).enumerate() {
            let bits: __m256i = cast(*qs);
            let mut lo = avx2._mm256_and_si256(bits, m4);
            let mut hi = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(bits), m4);
            if let Some(qh) = qh {
                let h: __m256i = cast(*qh);
                let m = avx._mm256_set1_epi8((1u8 << (2 * j)) as i8);
                let set = avx2._mm256_cmpeq_epi8(avx2._mm256_and_si256(h, m), m);
                lo = avx2._mm256_or_si256(lo, avx2._mm256_and_si256(set, m16));
                let m = avx._mm256_set1_epi8((1u8 << (2 * j + 1)) as i8);
                let set = avx2._mm256_cmpeq_epi8(avx2._mm256_and_si256(h, m), m);
                hi = avx2._mm256_or_si256(hi, avx2._mm256_and_si256(set, m16));
            }
            *q = [cast(lo), cast(hi)];
        }
    }

    /// [`super::quants_q6k`]: low nibbles and high bit pairs shifted in 16-bit lanes and
    /// masked per byte.
    #[inline(always)]
    pub(super) fn quants_q6k(simd: V3, b: &[u8], q: &mut Quants) {
        let avx2 = simd.avx2;
        let (ql, _) = b[..128].as_chunks::<32>();
        let (qh, _) = b[128..192].as_chunks::<32>();
        let (w4, _) = q.as_chunks_mut::<4>();
        for ((q, ql), qh) in w4.iter_mut().zip(ql.as_chunks::<2>().0).zip(qh) {
            let (a, c, h): (__m256i, __m256i, __m256i) = (cast(ql[0]), cast(ql[1]), cast(*qh));
            let (a4, c4) = (
                avx2._mm256_srli_epi16::<4>(a),
                avx2._mm256_srli_epi16::<4>(c),
            );
            let (h2, h4, h6) = (
                avx2._mm256_srli_epi16::<2>(h),
                avx2._mm256_srli_epi16::<4>(h),
                avx2._mm256_srli_epi16::<6>(h),
            );
            *q = [
                join6(simd, a, h),
                join6(simd, c, h2),
                join6(simd, a4, h4),
                join6(simd, c4, h6),
            ];
        }
    }

    /// A Q6_K quant less 32 from the low nibble of `l` and the two bits at the bottom of `h`.
    #[inline(always)]
    fn join6(simd: V3, l: __m256i, h: __m256i) -> [u8; 32] {
        let (avx, avx2) = (simd.avx, simd.avx2);
        let l = avx2._mm256_and_si256(l, avx._mm256_set1_epi8(0xF));
        let h = avx2._mm256_and_si256(h, avx._mm256_set1_epi8(3));
        let q = avx2._mm256_or_si256(l, avx2._mm256_slli_epi16::<4>(h));
        cast(avx2._mm256_sub_epi8(q, avx._mm256_set1_epi8(32)))
    }

    /// [`WBlock::corr`] (`-128` times the scaled quant sums per lane): `maddubs` of 128 with the signed quants (pairs at most
    /// `2 * 128 * 32`, no saturation), `madd` with the scales, negated.
    #[inline(always)]
    pub(super) fn corr_q6k(simd: V3, q: &Quants, sc: &[[i8; 16]; 8]) -> [i32; 8] {
        let (avx, avx2) = (simd.avx, simd.avx2);
        let k128 = avx._mm256_set1_epi8(-128);
        let mut sum = avx._mm256_setzero_si256();
        for (q, sc) in q.iter().zip(sc) {
            let p16 = avx2._mm256_maddubs_epi16(k128, cast(*q));
            let sc = avx2._mm256_cvtepi8_epi16(cast(*sc));
            sum = avx2._mm256_add_epi32(sum, avx2._mm256_madd_epi16(p16, sc));
        }
        cast(avx2._mm256_sub_epi32(avx._mm256_setzero_si256(), sum))
    }

    /// [`super::quantize_block`] (the same bits): the largest magnitude by `max` of `|x|`
    /// (`max_ps` keeps the running value when `|x|` is NaN, as the scalar `<` skips it),
    /// then the first value of that magnitude by `cmpeq` and `movemask`; rounding half away
    /// from zero as truncation plus the sign where the dropped fraction is at least a half
    /// (`x - trunc(x)` is exact); NaN products become 0 as Rust's `as i8` makes them.
    #[inline(always)]
    pub(super) fn quantize_block(
        simd: V3,
        x: &[f32],
        q: &mut Quants,
        d: &mut f32,
        bsums: &mut [i16; 16],
    ) {
        let (avx, avx2) = (simd.avx, simd.avx2);
        let (x, _) = x.as_chunks::<8>();
        let sign = avx._mm256_set1_ps(-0.0);
        let mut amax = avx._mm256_setzero_ps();
        for v in x {
            let a = avx._mm256_andnot_ps(sign, cast(*v));
            amax = avx._mm256_max_ps(a, amax);
        }
        let m: [f32; 8] = cast(amax);
        let amax = m.into_iter().fold(0f32, f32::max);
        if amax == 0.0 {
            *q = [[0; 32]; 8];
            bsums.fill(0);
            *d = 0.0;
            return;
        }
        let target = avx._mm256_set1_ps(amax);
        let mut max = amax;
        for v in x {
            let a = avx._mm256_andnot_ps(sign, cast(*v));
            let hit = avx._mm256_movemask_ps(avx._mm256_cmp_ps::<0>(a, target));
            if hit != 0 {
                max = v[hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let s = avx._mm256_set1_ps(iscale);
        let order = avx._mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let quant = |v: &[f32; 8]| quant8(simd, s, v);
        for ((q, x), bs) in q
            .iter_mut()
            .zip(x.as_chunks::<4>().0)
            .zip(bsums.as_chunks_mut::<2>().0)
        {
            let (a, b, c, e) = (quant(&x[0]), quant(&x[1]), quant(&x[2]), quant(&x[3]));
            let ab = avx2._mm256_packs_epi32(a, b);
            let ce = avx2._mm256_packs_epi32(c, e);
            *q = cast(avx2._mm256_permutevar8x32_epi32(avx2._mm256_packs_epi16(ab, ce), order));
            let s0: [i32; 8] = cast(avx2._mm256_add_epi32(a, b));
            let s1: [i32; 8] = cast(avx2._mm256_add_epi32(c, e));
            *bs = [
                s0.into_iter().sum::<i32>() as i16,
                s1.into_iter().sum::<i32>() as i16,
            ];
        }
        *d = 1.0 / iscale;
    }

    /// Eight products `s * v` rounded half away from zero, clamped to `i8`, NaN as 0.
    #[inline(always)]
    fn quant8(simd: V3, s: __m256, v: &[f32; 8]) -> __m256i {
        let avx = simd.avx;
        let sign = avx._mm256_set1_ps(-0.0);
        let t = avx._mm256_mul_ps(s, cast(*v));
        let r = avx._mm256_round_ps::<0x0B>(t);
        let f = avx._mm256_andnot_ps(sign, avx._mm256_sub_ps(t, r));
        let up = avx._mm256_cmp_ps::<29>(f, avx._mm256_set1_ps(0.5));
        let sgn1 = avx._mm256_or_ps(avx._mm256_and_ps(t, sign), avx._mm256_set1_ps(1.0));
        let r = avx._mm256_add_ps(r, avx._mm256_and_ps(up, sgn1));
        let r = avx._mm256_min_ps(
            avx._mm256_max_ps(r, avx._mm256_set1_ps(-128.0)),
            avx._mm256_set1_ps(127.0),
        );
        let r = avx._mm256_and_ps(r, avx._mm256_cmp_ps::<7>(t, t));
        avx._mm256_cvtps_epi32(r)
    }

    // the kernel's weight types as const parameters, so each is compiled without branches
    const Q4: u8 = 0;
    const Q5: u8 = 1;
    const Q6: u8 = 2;

    /// Every unpacked row of `blocks` (rows of `a.nb` super-blocks) against activation rows
    /// `i..i + r` (`r <= GROUP`, all in one group), into `out`.
    #[inline(always)]
    pub(super) fn group(
        simd: V3,
        kind: Kind,
        blocks: &[WBlock],
        a: &Q8K,
        i: usize,
        r: usize,
        out: &mut Out,
    ) {
        match kind {
            Kind::Q4K => group_k::<Q4>(simd, blocks, a, i, r, out),
            Kind::Q5K => group_k::<Q5>(simd, blocks, a, i, r, out),
            Kind::Q6K => group_k::<Q6>(simd, blocks, a, i, r, out),
        }
    }

    #[inline(always)]
    fn group_k<const K: u8>(
        simd: V3,
        blocks: &[WBlock],
        a: &Q8K,
        i: usize,
        r: usize,
        out: &mut Out,
    ) {
        let (nb, g, o) = (a.nb, i / GROUP, i % GROUP);
        let xs: &[Quants] = match K {
            Q6 => a.shifted(),
            _ => &a.qs,
        };
        let (xg, _) = xs[g * nb * GROUP..][..nb * GROUP].as_chunks::<GROUP>();
        let gs = &a.gs[g * nb..][..nb];
        match r {
            4 => over::<4, K>(simd, blocks, xg, gs, 0, out),
            3 => over::<3, K>(simd, blocks, xg, gs, o, out),
            2 => over::<2, K>(simd, blocks, xg, gs, o, out),
            _ => over::<1, K>(simd, blocks, xg, gs, o, out),
        }
    }

    /// [`rows`] for every unpacked row of `blocks`, the products written as they come.
    #[inline(always)]
    fn over<const R: usize, const K: u8>(
        simd: V3,
        blocks: &[WBlock],
        xg: &[[Quants; GROUP]],
        gs: &[GScales],
        o: usize,
        out: &mut Out,
    ) {
        for (j, w) in blocks.chunks_exact(xg.len().max(1)).enumerate() {
            out.put(j, &rows::<R, K>(simd, w, xg, gs, o));
        }
    }

    /// `R` activation rows (the `o`-th on of a group, `xg` its quants and `gs` its scales
    /// per super-block) against one weight row, each weight vector loaded once for all.
    /// Per 32 values and row: `maddubs` (unsigned times signed bytes, pairs summed to 16
    /// bits) and `madd` (times the scales, pairs to 32 bits). Q4_K / Q5_K: the unsigned
    /// weights times the signed activations. Q6_K's weights `q - 32` are signed: the
    /// activations plus 128 ([`Q8K::prepare`]) times them (no pair saturates: at most
    /// `2 * 255 * 32`), each lane started at [`WBlock::corr`] to take the `+ 128` off again,
    /// so that the lanes end as the exact sums candle's `maddubs(q, x) - maddubs(32, x)`
    /// gives, with one load per 32 values and row, not two.
    ///
    /// The scale factors `dx * d` and `dx * -dmin` are vector products of the rows' scales
    /// ([`GScales`], the bits of the scalar products: a negation is exact) and broadcasts.
    /// The mins terms (Q4_K, Q5_K) are added once per super-block in the same pass: a
    /// separate pass over the super-blocks (which kept their accumulators out of the
    /// registers of the integer loop) was a chain of one dependent fused multiply-add per
    /// super-block per row, measured slower. Q4_K's four rows of a whole group take theirs
    /// two rows per vector (the four mins lanes of each), half the operations.
    // the fixed-size arrays are indexed in lock step so that the accumulators stay in
    // registers
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn rows<const R: usize, const K: u8>(
        simd: V3,
        w: &[WBlock],
        xg: &[[Quants; GROUP]],
        gs: &[GScales],
        o: usize,
    ) -> [f32; R] {
        let (sse, sse2, avx, avx2, fma) = (simd.sse, simd.sse2, simd.avx, simd.avx2, simd.fma);
        let pairs = K == Q4 && R == GROUP;
        let mut acc: [__m256; R] = [avx._mm256_setzero_ps(); R];
        let mut acc_m: [__m128; R] = [sse._mm_setzero_ps(); R];
        let mut acc_p: [__m256; GROUP / 2] = [avx._mm256_setzero_ps(); GROUP / 2];
        let mut sum_m = [0f32; R];
        for ((wb, x), gb) in w.iter().zip(xg).zip(gs) {
            let start: __m256i = match K {
                Q6 => cast(wb.corr),
                _ => avx._mm256_setzero_si256(),
            };
            let mut lanes: [__m256i; R] = [start; R];
            for v in 0..8 {
                let wq: __m256i = cast(wb.q[v]);
                let sc: __m256i = match K {
                    Q6 => avx2._mm256_cvtepi8_epi16(cast(wb.sc[v])),
                    _ => avx._mm256_set1_epi32(wb.sc4[v]),
                };
                for s in 0..R {
                    let xv: __m256i = cast(x[o + s][v]);
                    let p16 = match K {
                        Q6 => avx2._mm256_maddubs_epi16(xv, wq),
                        _ => avx2._mm256_maddubs_epi16(wq, xv),
                    };
                    lanes[s] = avx2._mm256_add_epi32(lanes[s], avx2._mm256_madd_epi16(p16, sc));
                }
            }
            let d = avx._mm256_set1_ps(wb.d);
            for s in 0..R {
                let dd = avx._mm256_mul_ps(cast(gb.d[o + s]), d);
                acc[s] = fma._mm256_fmadd_ps(dd, avx._mm256_cvtepi32_ps(lanes[s]), acc[s]);
            }
            if pairs {
                let m = avx2._mm256_broadcastsi128_si256(cast::<_, __m128i>(wb.mins));
                let ndmin = avx._mm256_set1_ps(-wb.dmin);
                let (b2, _) = gb.b32.as_chunks::<2>();
                for p in 0..GROUP / 2 {
                    let prod = avx2._mm256_madd_epi16(m, cast(b2[p]));
                    let dm = avx._mm256_mul_ps(cast(gb.d2[p]), ndmin);
                    acc_p[p] = fma._mm256_fmadd_ps(dm, avx._mm256_cvtepi32_ps(prod), acc_p[p]);
                }
            } else if K != Q6 {
                let m = cast(wb.mins);
                let ndmin = sse._mm_set1_ps(-wb.dmin);
                for s in 0..R {
                    let xd = gb.d[o + s][0];
                    let p = sse2._mm_madd_epi16(m, cast(gb.b32[o + s]));
                    if K == Q4 {
                        let dm = sse._mm_mul_ps(sse._mm_set1_ps(xd), ndmin);
                        let pf = sse2._mm_cvtepi32_ps(p);
                        acc_m[s] = fma._mm_fmadd_ps(dm, pf, acc_m[s]);
                    } else {
                        let p: [i32; 4] = cast(p);
                        sum_m[s] += xd * -wb.dmin * ((p[0] + p[1]) + (p[2] + p[3])) as f32;
                    }
                }
            }
        }
        let kind = match K {
            Q4 => Kind::Q4K,
            Q5 => Kind::Q5K,
            _ => Kind::Q6K,
        };
        let pair_lanes: [[[f32; 4]; 2]; GROUP / 2] = std::array::from_fn(|p| cast(acc_p[p]));
        std::array::from_fn(|s| {
            let lanes_m = if pairs {
                pair_lanes[s / 2][s % 2]
            } else {
                cast(acc_m[s])
            };
            finish(kind, reduce(cast(acc[s])), lanes_m, sum_m[s])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_noise::noise;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn quantize(t: GgmlDType, w: &[f32], n: usize, k: usize) -> Vec<u8> {
        let dense = Tensor::from_slice(w, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&dense, t)
            .unwrap()
            .data()
            .unwrap()
            .to_vec()
    }

    /// Q8_K blocks of `x` as candle makes them: (quants, scale, sums of 16).
    fn candle_q8k(x: &[f32]) -> Vec<(Vec<i8>, f32, Vec<i16>)> {
        let q = Q8K::quantize(x, x.len());
        (0..q.nb)
            .map(|b| {
                let (qs, d, bs, _) = q.block(0, b);
                (
                    qs.as_flattened().iter().map(|&v| v as i8).collect(),
                    d,
                    bs.to_vec(),
                )
            })
            .collect()
    }

    /// ggml's `vec_dot_q4_K_q8_K` / `vec_dot_q5_K_q8_K` arithmetic, scalar and in f64: per
    /// super-block the quants of each 32-value group times its 6-bit scale, summed in
    /// integers, times `d * dx`; less `dmin * dx` times the sum of each group's min times
    /// its two 16-value sums of activation quants.
    fn ggml_q45k(kind: Kind, w: &[u8], x: &[f32]) -> f64 {
        let mut sum = 0f64;
        for (blk, (x8, dx, bsums)) in w.chunks_exact(kind.block_bytes()).zip(candle_q8k(x)) {
            let d = f64::from(f16_at(blk, 0));
            let dmin = f64::from(f16_at(blk, 2));
            let sc = &blk[4..16];
            let (qh, qs) = if kind == Kind::Q5K {
                (&blk[16..48], &blk[48..176])
            } else {
                (&blk[16..16], &blk[16..144])
            };
            let (mut sumi, mut summ) = (0i64, 0i64);
            for g in 0..8 {
                let (s, m) = scale_min(sc, g);
                for l in 0..32 {
                    let byte = qs[32 * (g / 2) + l];
                    let mut q = if g % 2 == 0 { byte & 0xF } else { byte >> 4 };
                    if kind == Kind::Q5K && qh[l] & (1 << g) != 0 {
                        q += 16;
                    }
                    sumi += i64::from(s) * i64::from(q) * i64::from(x8[32 * g + l]);
                }
                summ += i64::from(m) * i64::from(bsums[2 * g] + bsums[2 * g + 1]);
            }
            sum += d * f64::from(dx) * sumi as f64 - dmin * f64::from(dx) * summ as f64;
        }
        sum
    }

    /// ggml's `vec_dot_q6_K_q8_K` arithmetic, scalar and in f64: the signed 6-bit quants
    /// (`q - 32`) of each 16-value group times its 8-bit scale, summed in integers, times
    /// `d * dx`.
    fn ggml_q6k(w: &[u8], x: &[f32]) -> f64 {
        let mut sum = 0f64;
        for (blk, (x8, dx, _)) in w.chunks_exact(210).zip(candle_q8k(x)) {
            let d = f64::from(f16_at(blk, 208));
            let mut sumi = 0i64;
            for p in 0..QK_K {
                let (h, r) = (p / 128, p % 128);
                let (quarter, l) = (r / 32, r % 32);
                let low = blk[64 * h + l + 32 * (quarter % 2)];
                let low = if quarter < 2 { low & 0xF } else { low >> 4 };
                let high = (blk[128 + 32 * h + l] >> (2 * quarter)) & 3;
                let q = i64::from(low | (high << 4)) - 32;
                let s = i64::from(blk[192 + p / 16] as i8);
                sumi += s * q * i64::from(x8[p]);
            }
            sum += d * f64::from(dx) * sumi as f64;
        }
        sum
    }

    fn products(kind: Kind, w: &[u8], x: &[f32], k: usize, portable: bool) -> Vec<f32> {
        let a = Q8K::quantize(x, k);
        let rows = w.len() / (k / QK_K * kind.block_bytes());
        let mut out = vec![0f32; rows * a.rows()];
        if portable {
            let mut un = Unpacked::default();
            let rb = k / QK_K * kind.block_bytes();
            for (r, col) in out.chunks_exact_mut(a.rows()).enumerate() {
                un.fill(kind, &w[r * rb..(r + 1) * rb], None);
                for (i, v) in col.iter_mut().enumerate() {
                    *v = portable_row(kind, &un.blocks, &a, i, 1)[0];
                }
            }
        } else {
            tile(kind, w, &a, &mut Unpacked::default(), &mut out);
        }
        out
    }

    #[test]
    fn integer_dots_match_ggml_arithmetic() {
        let (n, m, k) = (3, 7, 768);
        for (t, kind) in [
            (GgmlDType::Q4K, Kind::Q4K),
            (GgmlDType::Q5K, Kind::Q5K),
            (GgmlDType::Q6K, Kind::Q6K),
        ] {
            let w = quantize(t, &noise(1, n * k), n, k);
            let mut x = noise(2, m * k);
            // an all-zero super-block (scale 0) and a row of one large value
            x[k..k + QK_K].fill(0.0);
            x[2 * k + 5] = 40.0;
            let got = products(kind, &w, &x, k, false);
            let rb = w.len() / n;
            for j in 0..n {
                for i in 0..m {
                    let (wr, xr) = (&w[j * rb..(j + 1) * rb], &x[i * k..(i + 1) * k]);
                    let want = match kind {
                        Kind::Q6K => ggml_q6k(wr, xr),
                        _ => ggml_q45k(kind, wr, xr),
                    };
                    let g = f64::from(got[j * m + i]);
                    assert!(
                        (g - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{kind:?} ({j}, {i}): {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn portable_and_simd_give_the_same_bits() {
        let (n, m, k) = (4, 9, 512);
        for t in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let Some(kind) = Kind::of(t) else {
                panic!("{t:?} has a kernel");
            };
            let w = quantize(t, &noise(3, n * k), n, k);
            let x = noise(4, m * k);
            assert_eq!(
                products(kind, &w, &x, k, false),
                products(kind, &w, &x, k, true),
                "{t:?}"
            );
        }
    }

    #[test]
    fn activations_round_as_candle_quantizes_them() {
        let k = 512;
        let mut x = noise(5, 2 * k);
        // super-blocks whose largest magnitude comes as -v before +v and as +v before -v
        // (the first sets the scale's sign), one of zeros, and one where `iscale` is -1 so
        // every product is a half (rounded away from zero) or a clamped whole
        let mut tied = noise(6, 4 * QK_K);
        for v in &mut tied {
            *v *= 0.25;
        }
        (tied[10], tied[200]) = (-2.0, 2.0);
        (tied[QK_K + 7], tied[QK_K + 100]) = (2.0, -2.0);
        tied[2 * QK_K..3 * QK_K].fill(0.0);
        for (i, v) in tied[3 * QK_K..].iter_mut().enumerate() {
            *v = (i as f32 - 128.0) * 0.5;
        }
        tied[4 * QK_K - 1] = 127.0;
        tied[4 * QK_K - 2] = -127.0;
        x.extend(tied);
        let ours = Q8K::quantize(&x, k);
        let dense = Tensor::from_slice(&x, (4, k), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&dense, GgmlDType::Q8K).unwrap();
        let bytes = theirs.data().unwrap();
        // the scalar path (no AVX2) gives the same blocks as the AVX2 one
        let portable = {
            let mut q = Q8K::zeroed(4, k / QK_K);
            q.fill(&x, None);
            q
        };
        assert_eq!(portable.qs, ours.qs);
        assert_eq!(portable.bsums, ours.bsums);
        assert_eq!(portable.gs, ours.gs);
        // candle's block: f32 d, 256 quants, 16 sums
        for (b, blk) in bytes.chunks_exact(4 + 256 + 32).enumerate() {
            let (qs, d, bs, _) = ours.block(b / 2, b % 2);
            assert_eq!(f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]), d);
            assert_eq!(&blk[4..260], qs.as_flattened());
            let sums: Vec<i16> = blk[260..]
                .chunks_exact(2)
                .map(|p| i16::from_le_bytes([p[0], p[1]]))
                .collect();
            assert_eq!(sums, bs);
        }
    }

    /// Rows quantized together sit in groups (quants side by side, scales laid out for the
    /// kernel) with the blocks each row gets alone; the padding of the last group is zeros;
    /// blocks of a product start at whole groups.
    #[test]
    fn groups_hold_each_rows_own_blocks() {
        let (k, m) = (512, 7);
        let x = noise(41, m * k);
        let all = Q8K::quantize(&x, k);
        for i in 0..m {
            let one = Q8K::quantize(&x[i * k..(i + 1) * k], k);
            for b in 0..2 {
                assert_eq!(all.block(i, b), one.block(0, b), "row {i}, block {b}");
                let (g, s, d) = (&all.gs[(i / GROUP) * 2 + b], i % GROUP, one.block(0, b).1);
                assert_eq!(g.d[s], [d; 8]);
                assert_eq!(g.d2[s / 2][4 * (s % 2)..][..4], [d; 4]);
            }
        }
        let (q, d, bs, b32) = all.block(m, 1);
        assert_eq!((q, d, bs, b32), (&[[0; 32]; 8], 0.0, &[0; 16], &[0; 8]));
        let big = Q8K::quantize(&noise(42, 1651 * k), k);
        for threads in 1..=4 {
            let rows = big.block_rows(threads);
            assert!(rows.is_some_and(|r| r % GROUP == 0), "{threads}: {rows:?}");
        }
    }

    /// Candle's quantized matmul (what native mode used for dense K-quant products before
    /// `StoredMatrix::matmul_quantized` took this kernel) and this kernel give the same bits:
    /// rows with outliers, one to five activation rows, one to eight super-blocks; and so
    /// does `matmul_quantized`, which now runs it.
    #[test]
    fn products_are_candles_quantized_matmul_bit_for_bit() {
        use crate::engine::stored::{Elem, StoredMatrix};
        let n = 9;
        for t in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let Some(kind) = Kind::of(t) else {
                panic!("{t:?} has a kernel");
            };
            for k in [256usize, 512, 768, 1024, 2048] {
                let w = quantize(t, &noise(11 + k as u64, n * k), n, k);
                let sm = StoredMatrix::new(Elem::Block(t), n, k, &w, None).unwrap();
                for m in [1usize, 3, 5] {
                    let mut x = noise(7 + (k + m) as u64, m * k);
                    x[3] = 30.0;
                    x[(m - 1) * k + 100] = -55.0;
                    let mut want = vec![0f32; m * n];
                    t.from_data(std::borrow::Cow::Borrowed(&w))
                        .matmul_t((m, k, n), &x, &mut want)
                        .unwrap();
                    assert_eq!(sm.matmul_quantized(&x, m).unwrap(), want);
                    let got = products(kind, &w, &x, k, false);
                    for j in 0..n {
                        for i in 0..m {
                            let (g, e) = (got[j * m + i], want[i * n + j]);
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{t:?} k {k} ({j}, {i}): {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Blocks of activation rows written in place (`block`, any split, a last block short of
    /// a `GROUP`, a block of one row) and weight rows across chunks (more rows than a chunk,
    /// an odd count) give the bits of `tile`, which are candle's; and so does
    /// `matmul_quantized` on either side of its switch between the two.
    #[test]
    fn blocks_and_chunks_keep_candles_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        use crate::engine::stored::{Elem, StoredMatrix};
        let k = 512;
        let n = chunk_rows(k / QK_K) + 35;
        for t in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let Some(kind) = Kind::of(t) else {
                panic!("{t:?} has a kernel");
            };
            let w = quantize(t, &noise(31, n * k), n, k);
            let m = 150;
            let x = noise(32, m * k);
            let mut want = vec![0f32; m * n];
            t.from_data(std::borrow::Cow::Borrowed(&w))
                .matmul_t((m, k, n), &x, &mut want)
                .unwrap();
            let a = Q8K::quantize(&x, k);
            let mut tiled = vec![0f32; n * m];
            tile(kind, &w, &a, &mut Unpacked::default(), &mut tiled);
            for j in 0..n {
                for i in 0..m {
                    assert_eq!(
                        tiled[j * m + i].to_bits(),
                        want[i * n + j].to_bits(),
                        "{t:?}"
                    );
                }
            }
            for rows in [1, 7, 64, m] {
                let mut got = vec![f32::NAN; m * n];
                let mut un = Unpacked::default();
                for (b, dst) in got.chunks_mut(rows * n).enumerate() {
                    block(kind, &w, &a, b * rows, &mut un, dst, n);
                }
                assert_eq!(bits(&got), bits(&want), "{t:?} in blocks of {rows}");
            }
            let sm = StoredMatrix::new(Elem::Block(t), n, k, &w, None).unwrap();
            // two threads split 150 rows into two blocks; three would make blocks too small
            for (threads, blocks) in [(2, true), (3, false)] {
                assert_eq!(a.block_rows(threads).is_some(), blocks);
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| sm.matmul_quantized(&x, m)).unwrap();
                assert_eq!(bits(&got), bits(&want), "{t:?} on {threads} threads");
            }
        }
    }

    /// Activation blocks so small that the Q8_K scale overflows (quants of -128, whose sign
    /// no weight may flip) still give candle's bits: the block's scale is -0.
    #[test]
    fn tiny_activation_blocks_keep_candles_bits() {
        let (n, m, k) = (5, 3, 512);
        for t in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let Some(kind) = Kind::of(t) else {
                panic!("{t:?} has a kernel");
            };
            let w = quantize(t, &noise(21, n * k), n, k);
            let mut x = noise(22, m * k);
            for v in &mut x[k..k + QK_K] {
                *v *= 1e-38;
            }
            let a = Q8K::quantize(&x, k);
            assert!(
                a.block(1, 0).0.as_flattened().contains(&0x80),
                "a quant of -128"
            );
            let mut want = vec![0f32; m * n];
            t.from_data(std::borrow::Cow::Borrowed(&w))
                .matmul_t((m, k, n), &x, &mut want)
                .unwrap();
            let got = products(kind, &w, &x, k, false);
            assert_eq!(got, products(kind, &w, &x, k, true), "{t:?}");
            for j in 0..n {
                for i in 0..m {
                    assert_eq!(got[j * m + i].to_bits(), want[i * n + j].to_bits(), "{t:?}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn q6k_corrections_are_the_scalar_sums() {
        let Some(simd) = pulp::x86::V3::try_new() else {
            eprintln!("no AVX2 on this CPU: the AVX2 correction is not used, nothing to check");
            return;
        };
        // extreme quants (-32 and 31 after the shift, and -128 as a byte) and scales
        let vals: [i8; 4] = [-32, 31, -128, 7];
        let q: Quants = std::array::from_fn(|v| std::array::from_fn(|i| vals[(i + v) % 4] as u8));
        let sc: [[i8; 16]; 8] =
            std::array::from_fn(|v| std::array::from_fn(|i| [127, -128, 5, -1][(i + v) % 4]));
        let got = simd.vectorize(|| avx2::corr_q6k(simd, &q, &sc));
        assert_eq!(got, corr_q6k(&q, &sc));
        assert_ne!(got, [0; 8]);
    }
}
