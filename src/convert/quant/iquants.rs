//! The non-linear 4-bit types IQ4_NL (32 values per block) and IQ4_XS (256 per super-block),
//! and the ternary types TQ1_0 and TQ2_0, quantized as `llama-quantize` does (ggml's
//! `quantize_iq4_nl` / `quantize_iq4_xs` with or without importance, and the ternary
//! reference quantizers, which ignore importance). Their decoders are format knowledge and
//! live in `formats::blocks`.
//!
//! IQ4 levels are indices into ggml's 16-entry non-uniform table `kvalues_iq4nl` (a fact of
//! the format: the decoder multiplies the block scale by the table entry). Each 32-value
//! block searches 15 candidate scales around `max / -127`, scoring each by the weighted
//! fit; IQ4_XS then quantizes the eight block scales to 6 bits against one f16 super-scale.
//! The other I-quants (IQ1/IQ2/IQ3) decode through large lattice grids and are not built.

use super::kquants::QK_K;
use super::put_f16;
use super::search::{self, nearest_int, GROUP_MAX_EPS};

pub(super) const IQ4_NL_BYTES: usize = 18;
pub(super) const IQ4_XS_BYTES: usize = 136;
pub(super) const TQ1_0_BYTES: usize = 54;
pub(super) const TQ2_0_BYTES: usize = 66;

/// The IQ4 level values (`kvalues_iq4nl`), a fact of the format kept beside its decoder.
const KVALUES: [i8; 16] = crate::formats::blocks::IQ4NL_VALUES;

/// Midpoints between consecutive table values: half-integers, exact in `f32`.
const MIDPOINTS: [f32; 15] = {
    let mut m = [0.0f32; 15];
    let mut k = 0;
    while k < 15 {
        m[k] = (KVALUES[k] as i32 + KVALUES[k + 1] as i32) as f32 * 0.5;
        k += 1;
    }
    m
};

/// Distances between consecutive table values.
const STEPS: [f32; 15] = {
    let mut s = [0.0f32; 15];
    let mut k = 0;
    while k < 15 {
        s[k] = (KVALUES[k + 1] as i32 - KVALUES[k] as i32) as f32;
        k += 1;
    }
    s
};

/// The index of the table value nearest `x`, as ggml's bisection `best_index_int8` picks
/// it: the number of midpoints at or below `x`.
///
/// ggml bisects to the neighbours `a < x < b` and takes `a` when `x - a < b - x` in `f32`.
/// That is `x < (a + b) / 2` exactly: the midpoint is representable, rounding is monotonic,
/// so both differences can only round to the same value when `x` lies within an ulp of the
/// midpoint, where (all table gaps being at least 11 and the midpoints at least 4.5 from
/// zero) both subtractions are exact. A tie (`x` on the midpoint) goes to `b` either way.
/// Unlike the bisection, the count has no data-dependent branches, so the searches below
/// vectorise over blocks (the test `branch_free_index_is_the_bisection` checks the two
/// agree, ulp by ulp around every midpoint).
#[inline(always)]
fn best_index(x: f32) -> u8 {
    let mut n = 0u8;
    for m in MIDPOINTS {
        n += u8::from(x >= m);
    }
    n
}

/// The table value [`best_index`] picks, as `f32`: the first value plus the steps below
/// `x` (integers, so the sum is exact).
#[inline(always)]
fn best_value(x: f32) -> f32 {
    let mut v = f32::from(KVALUES[0]);
    for (m, s) in MIDPOINTS.iter().zip(STEPS) {
        v += if x >= *m { s } else { 0.0 };
    }
    v
}

/// The block scales of ggml's `quantize_row_iq4_nl_impl` (`ntry` 7) for `G` blocks of 32
/// values searched in lockstep (`x[i][g]` is value `i` of block `g`, weights likewise), as
/// `search` does for the K-quants: per block, the candidate scales of ggml in its order,
/// each scored by its weighted fit, with every block's sums added in ggml's order. The
/// levels the search finds are never written (ggml requantizes against the final scale),
/// so only the scales come out.
#[inline(always)]
fn iq4_block_scales<const G: usize>(x: &[[f32; G]; 32], w: &[[f32; G]; 32]) -> [f32; G] {
    const NTRY: i32 = 7;
    let (max, amax) = search::signed_max(x);
    let v0 = f32::from(KVALUES[0]);
    let mut id = [0.0f32; G];
    for g in 0..G {
        id[g] = 1.0 / (-max[g] / v0);
    }
    let (sumqx, sumq2) = fit_sums(x, w, &id);
    let mut d = [0.0f32; G];
    let mut best = [0.0f32; G];
    for g in 0..G {
        d[g] = if sumq2[g] > 0.0 {
            sumqx[g] / sumq2[g]
        } else {
            0.0
        };
        best[g] = d[g] * sumqx[g];
    }
    for itry in -NTRY..=NTRY {
        let num = (itry + i32::from(KVALUES[0])) as f32;
        for g in 0..G {
            id[g] = num / max[g];
        }
        let (sumqx, sumq2) = fit_sums(x, w, &id);
        for g in 0..G {
            let take = sumq2[g] > 0.0 && sumqx[g] * sumqx[g] > best[g] * sumq2[g];
            d[g] = if take { sumqx[g] / sumq2[g] } else { d[g] };
            best[g] = if take { d[g] * sumqx[g] } else { best[g] };
        }
    }
    for g in 0..G {
        if amax[g] < GROUP_MAX_EPS {
            d[g] = 0.0;
        }
    }
    d
}

/// Per block, the weighted sums `sum(w * q * x)` and `sum(w * q * q)` of the values rounded
/// to the table at inverse scale `id`, added in ggml's order (value by value).
#[inline(always)]
fn fit_sums<const G: usize>(
    x: &[[f32; G]; 32],
    w: &[[f32; G]; 32],
    id: &[f32; G],
) -> ([f32; G], [f32; G]) {
    let mut sumqx = [0.0f32; G];
    let mut sumq2 = [0.0f32; G];
    for (xr, wr) in x.iter().zip(w) {
        for g in 0..G {
            let q = best_value(id[g] * xr[g]);
            sumqx[g] += wr[g] * q * xr[g];
            sumq2[g] += wr[g] * q * q;
        }
    }
    (sumqx, sumq2)
}

/// The weights of `G` blocks of 32 laid out as the search wants them: `qw * sqrt(sigma2 +
/// x^2)` with the importance, `x^2` without.
#[inline(always)]
fn iq4_weights<const G: usize>(
    xs: &[[f32; G]; 32],
    qw: Option<&[f32]>,
    sigma2: &[f32; G],
) -> [[f32; G]; 32] {
    let mut w = [[0.0f32; G]; 32];
    for (i, row) in w.iter_mut().enumerate() {
        for (g, v) in row.iter_mut().enumerate() {
            let xv = xs[i][g];
            *v = match qw {
                Some(qw) => qw[32 * g + i] * (sigma2[g] + xv * xv).sqrt(),
                None => xv * xv,
            };
        }
    }
    w
}

/// `x[32 * g + i]` as `[i][g]` for `G` blocks of 32.
#[inline(always)]
fn transpose<const G: usize>(x: &[f32]) -> [[f32; G]; 32] {
    let mut t = [[0.0f32; G]; 32];
    for (g, chunk) in x.chunks_exact(32).take(G).enumerate() {
        for (i, &v) in chunk.iter().enumerate() {
            t[i][g] = v;
        }
    }
    t
}

/// ggml's `sigma2` of `x`: twice the mean square, summed in order.
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Pack 32 levels of a block as nibbles: byte `j` holds values `j` and `j + 16`.
fn pack_nibbles(l: &[u8], q4: &mut [u8]) {
    for j in 0..16 {
        q4[j] = l[j] | (l[16 + j] << 4);
    }
}

/// `G` consecutive IQ4_NL blocks (`32 * G` values, `18 * G` bytes), as ggml's
/// `quantize_iq4_nl` writes them one by one: each block has its own `sigma2` and scale,
/// and its levels are requantized against that scale.
fn iq4_nl_blocks<const G: usize>(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let xs = transpose::<G>(x);
    let mut s2 = [0.0f32; G];
    for (g, s) in s2.iter_mut().enumerate() {
        *s = sigma2(&x[32 * g..32 * g + 32]);
    }
    let w = iq4_weights(&xs, qw, &s2);
    let scales = iq4_block_scales(&xs, &w);
    for ((xb, yb), &d) in x
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(IQ4_NL_BYTES))
        .zip(&scales)
    {
        put_f16(&mut yb[0..2], d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut l = [0u8; 32];
        for (o, &v) in l.iter_mut().zip(xb) {
            *o = best_index(id * v);
        }
        pack_nibbles(&l, &mut yb[2..18]);
    }
}

/// IQ4_NL blocks (`d` (f16), `qs[16]`) of a row (whole blocks of 32): eight at a time in lockstep, then the rest
/// one by one. Blocks are independent, so the grouping does not change a byte.
pub(super) fn quantize_iq4_nl_row(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let mut xs = x.chunks_exact(8 * 32);
    let mut ys = y.chunks_exact_mut(8 * IQ4_NL_BYTES);
    let mut at = 0;
    for (xb, yb) in (&mut xs).zip(&mut ys) {
        iq4_nl_blocks::<8>(xb, qw.map(|q| &q[at..at + 8 * 32]), yb);
        at += 8 * 32;
    }
    let rest = xs.remainder();
    let yrest = ys.into_remainder();
    for (xb, yb) in rest
        .chunks_exact(32)
        .zip(yrest.chunks_exact_mut(IQ4_NL_BYTES))
    {
        iq4_nl_blocks::<1>(xb, qw.map(|q| &q[at..at + 32]), yb);
        at += 32;
    }
}

/// One IQ4_XS super-block: `d` (f16), `scales_h` (u16), `scales_l[4]`, `qs[128]`. The eight
/// block scales are searched in lockstep (one `sigma2` for the super-block), then quantized
/// to 6 bits against the f16 super-scale `-max_scale / 32`, and every value is requantized
/// against its block's decoded scale.
pub(super) fn quantize_iq4_xs(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let (dh, rest) = y.split_at_mut(2);
    let (scales_h, rest) = rest.split_at_mut(2);
    let (scales_l, q4) = rest.split_at_mut(4);
    let xs = transpose::<8>(x);
    let w = iq4_weights(&xs, qw, &[sigma2(x); 8]);
    let scales = iq4_block_scales(&xs, &w);
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for &d in &scales {
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let mut sh = 0u16;
    let d = -max_scale / 32.0;
    put_f16(dh, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for ib in 0..QK_K / 32 {
        let mut li = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * li as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let mut l = [0u8; 32];
        for (o, &v) in l.iter_mut().zip(&x[32 * ib..32 * ib + 32]) {
            *o = best_index(idl * v);
        }
        pack_nibbles(&l, &mut q4[16 * ib..16 * ib + 16]);
        li += 32;
        let (l_l, l_h) = ((li & 0xF) as u8, (li >> 4) as u16);
        if ib % 2 == 0 {
            scales_l[ib / 2] = l_l;
        } else {
            scales_l[ib / 2] |= l_l << 4;
        }
        sh |= l_h << (2 * (ib % 8));
    }
    scales_h.copy_from_slice(&sh.to_le_bytes());
}

// --------------------------------------------------------------------- TQ1_0 and TQ2_0

/// C's `lroundf` (half away from zero) for the small values the ternary types round.
#[inline]
fn lround(v: f32) -> i32 {
    v.round() as i32
}

/// The block's largest magnitude and its inverse (0 for an all-zero block).
fn ternary_scale(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    (amax, if amax != 0.0 { 1.0 / amax } else { 0.0 })
}

/// Five ternary digits per byte, stored as the ceiling of `value * 256 / 243`.
fn pack_trits(q: u32) -> u8 {
    (q * 256).div_ceil(243) as u8
}

/// One TQ1_0 block: `qs[48]` (5 values per byte), `qh[4]` (4 per byte), `d`.
pub(super) fn quantize_tq1_0(x: &[f32], y: &mut [u8]) {
    let (d, id) = ternary_scale(x);
    let t = |v: f32| (lround(v * id) + 1) as u32;
    let (qs, rest) = y.split_at_mut(48);
    let (qh, dd) = rest.split_at_mut(4);
    for m in 0..32 {
        let mut q = 0u32;
        for n in 0..5 {
            q = q * 3 + t(x[m + 32 * n]);
        }
        qs[m] = pack_trits(q);
    }
    let x2 = &x[160..];
    for m in 0..16 {
        let mut q = 0u32;
        for n in 0..5 {
            q = q * 3 + t(x2[m + 16 * n]);
        }
        qs[32 + m] = pack_trits(q);
    }
    let x3 = &x[240..];
    for j in 0..4 {
        let mut q = 0u32;
        for m in 0..4 {
            q = q * 3 + t(x3[j + 4 * m]);
        }
        qh[j] = pack_trits(q * 3);
    }
    put_f16(dd, d);
}

/// One TQ2_0 block: `qs[64]` (2 bits per value), `d`.
pub(super) fn quantize_tq2_0(x: &[f32], y: &mut [u8]) {
    let (d, id) = ternary_scale(x);
    for j in 0..2 {
        for m in 0..32 {
            let mut q = 0u8;
            for n in 0..4 {
                let xi = lround(x[128 * j + m + 32 * n] * id) + 1;
                q += ((xi & 3) << (2 * n)) as u8;
            }
            y[32 * j + m] = q;
        }
    }
    put_f16(&mut y[64..66], d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_picks_the_nearest_value() {
        assert_eq!(best_index(-200.0), 0);
        assert_eq!(best_index(200.0), 15);
        assert_eq!(best_index(0.0), 8);
        assert_eq!(best_index(-4.5), 8); // -10 and 1 are both 5.5 away: ggml takes the upper
        assert_eq!(best_index(7.0), 9); // 1 and 13 tie at 6: ggml takes the upper
        assert_eq!(best_index(6.9), 8);
    }

    /// ggml's `best_index_int8`, transcribed: bisection, then the nearer neighbour.
    fn bisection(x: f32) -> u8 {
        let v = |i: usize| f32::from(KVALUES[i]);
        if x <= v(0) {
            return 0;
        }
        if x >= v(15) {
            return 15;
        }
        let (mut ml, mut mu) = (0usize, 15usize);
        while mu - ml > 1 {
            let mav = (ml + mu) / 2;
            if x < v(mav) {
                mu = mav;
            } else {
                ml = mav;
            }
        }
        if x - v(mu - 1) < v(mu) - x {
            (mu - 1) as u8
        } else {
            mu as u8
        }
    }

    #[test]
    fn branch_free_index_is_the_bisection() {
        let mut xs: Vec<f32> = vec![0.0, -0.0, f32::MAX, f32::MIN, f32::INFINITY, -f32::INFINITY];
        // Every float within 2^12 ulps of each midpoint and of each table value.
        let anchors = MIDPOINTS
            .iter()
            .copied()
            .chain(KVALUES.iter().map(|&v| f32::from(v)));
        for a in anchors {
            for k in -4096i32..=4096 {
                xs.push(f32::from_bits((a.to_bits() as i32 + k) as u32));
            }
        }
        // And a dense sweep over the whole range the searches use.
        let mut s = 0x9e37_79b9u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            xs.push((s as f32 / u32::MAX as f32 - 0.5) * 300.0);
        }
        for x in xs {
            let want = bisection(x);
            assert_eq!(best_index(x), want, "{x:e}");
            assert_eq!(best_value(x), f32::from(KVALUES[want as usize]), "{x:e}");
        }
    }

    #[test]
    fn ternary_round_trip_is_exact_on_ternary_input() {
        let x: Vec<f32> = (0..256).map(|i| [(-1.5f32), 0.0, 1.5][i * 7 % 3]).collect();
        for (q, dq, bytes) in [
            (
                quantize_tq1_0 as fn(&[f32], &mut [u8]),
                crate::formats::blocks::tq1_0 as fn(&[u8], &mut [f32]),
                TQ1_0_BYTES,
            ),
            (quantize_tq2_0, crate::formats::blocks::tq2_0, TQ2_0_BYTES),
        ] {
            let mut b = vec![0u8; bytes];
            q(&x, &mut b);
            let mut y = vec![0.0f32; 256];
            dq(&b, &mut y);
            assert_eq!(x, y);
        }
    }
}
