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
use super::search::{nearest_int, GROUP_MAX_EPS};

pub(super) const IQ4_NL_BYTES: usize = 18;
pub(super) const IQ4_XS_BYTES: usize = 136;
pub(super) const TQ1_0_BYTES: usize = 54;
pub(super) const TQ2_0_BYTES: usize = 66;

/// The IQ4 level values (`kvalues_iq4nl`), a fact of the format kept beside its decoder.
const KVALUES: [i8; 16] = crate::formats::blocks::IQ4NL_VALUES;

/// The index of the table value nearest `x` (ties to the lower), by ggml's bisection.
#[inline]
fn best_index(x: f32) -> u8 {
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

/// ggml's `quantize_row_iq4_nl_impl` with `ntry` 7 for one super-block of `x.len()` values
/// in blocks of 32. Writes the f16 super-scale into `dh`, the packed nibbles into `q4`, and
/// (for more than one block) the 6-bit block scales into `scales_h` / `scales_l`.
fn iq4_impl(
    x: &[f32],
    qw: Option<&[f32]>,
    dh: &mut [u8],
    q4: &mut [u8],
    scales_hl: Option<(&mut [u8], &mut [u8])>,
) {
    const NTRY: i32 = 7;
    let n = x.len();
    let nb = n / 32;
    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / n as f32;
    q4.fill(0);
    put_f16(dh, 0.0);
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut weight = [0.0f32; 32];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    let v0 = f32::from(KVALUES[0]);
    for ib in 0..nb {
        let xb = &x[32 * ib..32 * ib + 32];
        match qw {
            Some(qw) => {
                let qb = &qw[32 * ib..32 * ib + 32];
                for j in 0..32 {
                    weight[j] = qb[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = -max / v0;
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..32 {
            let li = best_index(id * xb[j]);
            l[32 * ib + j] = li;
            let q = f32::from(KVALUES[li as usize]);
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry + i32::from(KVALUES[0])) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let q = f32::from(KVALUES[best_index(id * xb[j]) as usize]);
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    if let Some((scales_h, scales_l)) = scales_hl {
        let mut sh = 0u16;
        let d = -max_scale / 32.0;
        put_f16(dh, d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let mut li = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * li as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for j in 0..32 {
                l[32 * ib + j] = best_index(idl * x[32 * ib + j]);
            }
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
    } else {
        put_f16(dh, scales[0]);
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for j in 0..n {
            l[j] = best_index(id * x[j]);
        }
    }
    for i in 0..n / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

/// One IQ4_NL block: `d` (f16), `qs[16]`.
pub(super) fn quantize_iq4_nl(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let (dh, q4) = y.split_at_mut(2);
    iq4_impl(x, qw, dh, q4, None);
}

/// One IQ4_XS super-block: `d` (f16), `scales_h` (u16), `scales_l[4]`, `qs[128]`.
pub(super) fn quantize_iq4_xs(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let (dh, rest) = y.split_at_mut(2);
    let (sh, rest) = rest.split_at_mut(2);
    let (sl, q4) = rest.split_at_mut(4);
    iq4_impl(x, qw, dh, q4, Some((sh, sl)));
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
