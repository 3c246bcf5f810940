//! The 2-bit lattice types IQ2_XXS (2.06 bits per weight), IQ2_XS (2.31) and IQ2_S (2.56),
//! quantized as `llama-quantize --imatrix` quantizes them: ggml's
//! `quantize_row_iq2_xxs_impl`, `quantize_row_iq2_xs_impl` and `quantize_row_iq2_s_impl`,
//! transcribed operation for operation in `f32` so the bytes are ggml's. Their decoders are
//! format knowledge and live in `formats::iq2`.
//!
//! Each group of 8 values is stored as a sign per value and one point of an 8-dimensional
//! grid of magnitudes (levels 0..=2 at positions 1, 3, 5 times the group scale). The
//! quantizer takes absolute values, then for a range of trial scales rounds each group to
//! levels, looks the level vector up in the type's [`lattice`](super::lattice) and, when it
//! is not a grid point, takes the candidate grid point of least weighted error; the scale
//! with the best weighted fit wins, and the group scales are stored as 4 bits against one
//! f16 block scale. IQ2_XXS and IQ2_XS store 7 sign bits per 8 values (the eighth makes the
//! count of negative values even, so the quantizer flips the least important value's sign
//! when the count is odd); IQ2_S stores all 8.
//!
//! IQ2_XXS and IQ2_XS need an importance vector (ggml asserts one, `llama-quantize`
//! refuses to run without an imatrix); IQ2_S runs ggml's unweighted fallback without one.

// The loops keep ggml's indices (`xval[8*k + i]`, `scales[ib]`) so the transcription can be
// checked against `ggml-quants.c` line by line.
#![allow(clippy::needless_range_loop)]

use super::kquants::QK_K;
use super::lattice::{self, Lattice, Lookup};
use super::put_f16;
use super::search::{nearest_int, GROUP_MAX_EPS};
use super::weighted::make_qp;

pub(super) use crate::formats::iq2::{IQ2_S_BYTES, IQ2_XS_BYTES, IQ2_XXS_BYTES};

/// Largest level plus one (ggml's `kMaxQ`).
const KMAXQ: i32 = 3;

/// IQ2_S treats groups below this magnitude as zero (ggml's `GROUP_MAX_EPS_IQ2_S`).
const GROUP_MAX_EPS_IQ2_S: f32 = 1e-8;

/// ggml's `MAX`: `a > b ? a : b`.
#[inline(always)]
fn max_f(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Sequential sum of squares, in ggml's order.
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// The level of `v` at inverse scale `id`: `nearest_int((id * v - 1) / 2)` clamped to
/// `0..=2`.
#[inline(always)]
fn level(id: f32, v: f32) -> i8 {
    nearest_int(0.5 * (id * v - 1.0)).clamp(0, KMAXQ - 1) as i8
}

/// Round each group of 8 of `xval` at inverse scale `id` to levels in `out`; a group that
/// is not a grid point is replaced by its best candidate at scale `scale` (one trial of
/// ggml's scale searches). Returns a mask with bit `k` set when group `k` was not one.
#[inline]
fn round_groups(
    lat: &Lattice,
    xval: &[f32],
    waux: &[f32],
    id: f32,
    scale: f32,
    out: &mut [i8],
) -> u8 {
    let mut off_grid = 0u8;
    for k in 0..xval.len() / 8 {
        let r = 8 * k..8 * k + 8;
        let mut key = 0usize;
        for i in r.clone() {
            let l = level(id, xval[i]);
            out[i] = l;
            key |= (l as usize) << (2 * (i - 8 * k));
        }
        if let Lookup::Near(c) = lat.lookup(key) {
            lat.best_neighbour(c, &xval[r.clone()], &waux[r.clone()], scale, &mut out[r]);
            off_grid |= 1 << k;
        }
    }
    off_grid
}

/// `(sum w x q, sum w q q)` for levels `l` at positions `q = 2l + 1`.
#[inline]
fn fit(weight: &[f32], xval: &[f32], levels: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..weight.len() {
        let w = weight[i];
        let q = f32::from(2 * levels[i] + 1);
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// Absolute values of 8 values into `xval` and their sign bits. With `even`, the signs
/// must be an even count (7 stored bits): if odd, the value of least `weight * x^2` keeps
/// its sign and its magnitude goes negative instead. Returns the sign byte (7 bits if
/// `even`).
#[inline]
fn signs(xb: &[f32], weight: &[f32], even: bool, xval: &mut [f32]) -> u8 {
    let mut s = 0u8;
    let mut nflip = 0;
    for i in 0..8 {
        if xb[i] >= 0.0 {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            nflip += 1;
            s |= 1 << i;
        }
    }
    if !even {
        return s;
    }
    if nflip % 2 == 1 {
        let mut imin = 0;
        let mut min = weight[0] * xb[0] * xb[0];
        for i in 1..8 {
            let ax = weight[i] * xb[i] * xb[i];
            if ax < min {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= 1 << imin;
    }
    s & 127
}

/// The 4-bit group scales against the block scale `d = max_scale / 31`.
#[inline]
fn scale_nibble(id: f32, scale: f32) -> u8 {
    nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u8
}

/// Grid index of levels known to be a grid point. Every path that sets levels ends on a
/// grid point (ggml aborts otherwise); index 0 keeps a broken invariant from panicking.
#[inline]
fn index(lat: &Lattice, levels: &[i8]) -> usize {
    lat.index_of(levels).unwrap_or(0)
}

/// One IQ2_XXS super-block (66 bytes) from 256 values and their importance.
fn iq2_xxs_block(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let lat = lattice::iq2_xxs();
    let mut scales = [0.0f32; 8];
    let mut q2 = [0u32; 16];
    let mut max_scale = 0.0f32;
    let sigma2 = sum_sq(x) / QK_K as f32;
    let mut weight = [0.0f32; 32];
    let mut waux = [0.0f32; 32];
    let mut xval = [0.0f32; 32];
    let mut l_best = [0i8; 32];
    let mut l_aux = [0i8; 32];
    let mut scratch = [0u8; 32];
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let qb = &qw[32 * ib..32 * ib + 32];
        for i in 0..32 {
            weight[i] = qb[i] * (sigma2 + xb[i] * xb[i]).sqrt();
        }
        for i in 0..32 {
            waux[i] = weight[i].sqrt();
        }
        let mut block_signs = [0u8; 4];
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            block_signs[k] = signs(&xb[r.clone()], &weight[r.clone()], true, &mut xval[r]);
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = max_f(max, v);
        }
        if max < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut scale = make_qp(KMAXQ + 1, &xval, &mut scratch, &weight);
        let eff_max = scale * KMAXQ as f32;
        if eff_max <= 0.0 {
            scales[ib] = 0.0;
            continue;
        }
        let mut best = 0.0f32;
        for is in -6i32..=6 {
            let id = (5.0 + is as f32 * 0.1) / eff_max;
            round_groups(lat, &xval, &waux, id, 1.0 / id, &mut l_aux);
            let (sumqx, sumq2) = fit(&weight, &xval, &l_aux);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                scale = sumqx / sumq2;
                best = scale * sumqx;
                l_best = l_aux;
            }
        }
        if scale > 0.0 {
            round_groups(lat, &xval, &waux, 1.0 / scale, scale, &mut l_best);
            let (sumqx, sumq2) = fit(&weight, &xval, &l_best);
            if sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        if scale < 0.0 {
            // ggml: cannot happen, but a negative scale is stored as its magnitude with
            // every sign flipped.
            scale = -scale;
            for s in &mut block_signs {
                *s = !*s & 127;
            }
        }
        for k in 0..4 {
            let g = index(lat, &l_best[8 * k..8 * k + 8]) as u32;
            q2[2 * ib] |= g << (8 * k);
            q2[2 * ib + 1] |= u32::from(block_signs[k]) << (7 * k);
        }
        scales[ib] = scale;
        max_scale = max_f(max_scale, scale);
    }
    y.fill(0);
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    put_f16(&mut y[0..2], d);
    let id = 1.0 / d;
    for ib in 0..8 {
        q2[2 * ib + 1] |= u32::from(scale_nibble(id, scales[ib])) << 28;
    }
    for (o, q) in y[2..66].chunks_exact_mut(4).zip(q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
}

/// The 16-value group search shared by IQ2_XS and IQ2_S: 19 trial scales around
/// `max / 5`, then a refit of the groups that were not grid points. Returns the scale and
/// leaves the levels (all grid points) in `levels`.
fn search16(
    lat: &Lattice,
    xval: &[f32],
    weight: &[f32],
    waux: &[f32],
    max: f32,
    levels: &mut [i8; 16],
) -> f32 {
    let mut best = 0.0f32;
    let mut scale = max / (2 * KMAXQ - 1) as f32;
    let mut off_grid = 0u8;
    let mut l_aux = [0i8; 16];
    *levels = [0; 16];
    for is in -9i32..=9 {
        let id = (5.0 + is as f32 * 0.1) / max;
        let off_grid_aux = round_groups(lat, xval, waux, id, 1.0 / id, &mut l_aux);
        let (sumqx, sumq2) = fit(weight, xval, &l_aux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            *levels = l_aux;
            off_grid = off_grid_aux;
        }
    }
    if off_grid != 0 && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..2 {
            if off_grid & (1 << k) == 0 {
                continue;
            }
            let r = 8 * k..8 * k + 8;
            round_groups(
                lat,
                &xval[r.clone()],
                &waux[r.clone()],
                id,
                scale,
                &mut levels[r],
            );
        }
        let (sumqx, sumq2) = fit(weight, xval, levels);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    scale
}

/// One 16-value group of IQ2_XS or IQ2_S with its weights: the signs of each half (IQ2_XS
/// keeps them of even parity, IQ2_S does not), the grid levels and the scale, or `None` for
/// a group below `eps` (scale 0). A negative scale is made positive by flipping the signs
/// within `flip` (IQ2_XS's 7 stored bits, IQ2_S's 8).
fn group16(
    lat: &Lattice,
    xb: &[f32],
    weight: &[f32; 16],
    even: bool,
    eps: f32,
    flip: u8,
    levels: &mut [i8; 16],
) -> Option<(f32, [u8; 2])> {
    let mut waux = [0.0f32; 16];
    for (a, w) in waux.iter_mut().zip(weight) {
        *a = w.sqrt();
    }
    let mut xval = [0.0f32; 16];
    let mut block_signs = [0u8; 2];
    for k in 0..2 {
        let r = 8 * k..8 * k + 8;
        block_signs[k] = signs(&xb[r.clone()], &weight[r.clone()], even, &mut xval[r]);
    }
    let mut max = xval[0];
    for &v in &xval[1..] {
        max = max_f(max, v);
    }
    if max < eps {
        return None;
    }
    let mut scale = search16(lat, &xval, weight, &waux, max, levels);
    if scale < 0.0 {
        scale = -scale;
        for s in &mut block_signs {
            *s = !*s & flip;
        }
    }
    Some((scale, block_signs))
}

/// One IQ2_XS super-block (74 bytes) from 256 values and their importance.
fn iq2_xs_block(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let lat = lattice::iq2_xs();
    let mut scales = [0.0f32; 16];
    let mut q2 = [0u16; 32];
    let mut max_scale = 0.0f32;
    let sigma2 = sum_sq(x) / QK_K as f32;
    let mut weight = [0.0f32; 16];
    let mut levels = [0i8; 16];
    for ib in 0..16 {
        let xb = &x[16 * ib..16 * ib + 16];
        let qb = &qw[16 * ib..16 * ib + 16];
        for i in 0..16 {
            weight[i] = qb[i] * (sigma2 + xb[i] * xb[i]).sqrt();
        }
        let Some((scale, block_signs)) =
            group16(lat, xb, &weight, true, GROUP_MAX_EPS, 127, &mut levels)
        else {
            scales[ib] = 0.0;
            continue;
        };
        for k in 0..2 {
            let g = index(lat, &levels[8 * k..8 * k + 8]) as u16;
            q2[2 * ib + k] = g | (u16::from(block_signs[k]) << 9);
        }
        scales[ib] = scale;
        max_scale = max_f(max_scale, scale);
    }
    y.fill(0);
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    put_f16(&mut y[0..2], d);
    let id = 1.0 / d;
    for ib in 0..16 {
        y[66 + ib / 2] |= scale_nibble(id, scales[ib]) << (4 * (ib % 2));
    }
    for (o, q) in y[2..66].chunks_exact_mut(2).zip(q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
}

/// One IQ2_S super-block (82 bytes) from 256 values and their importance, or ggml's
/// unweighted fallback without one.
fn iq2_s_block(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let lat = lattice::iq2_s();
    y.fill(0);
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let mut weight = [0.0f32; 16];
    let mut levels = [0i8; 16];
    for ib in 0..16 {
        let xb = &x[16 * ib..16 * ib + 16];
        match qw {
            Some(qw) => {
                let qb = &qw[16 * ib..16 * ib + 16];
                for i in 0..16 {
                    weight[i] = qb[i] * (sigma2 + xb[i] * xb[i]).sqrt();
                }
            }
            None => {
                for i in 0..16 {
                    weight[i] = 0.25 * sigma2 + xb[i] * xb[i];
                }
            }
        }
        let Some((scale, block_signs)) = group16(
            lat,
            xb,
            &weight,
            false,
            GROUP_MAX_EPS_IQ2_S,
            255,
            &mut levels,
        ) else {
            scales[ib] = 0.0;
            continue;
        };
        for k in 0..2 {
            let g = index(lat, &levels[8 * k..8 * k + 8]);
            let i8 = 2 * ib + k;
            y[2 + i8] = (g & 255) as u8;
            y[66 + i8 / 4] |= ((g >> 8) as u8) << (2 * (i8 % 4));
            y[34 + i8] = block_signs[k];
        }
        scales[ib] = scale;
        max_scale = max_f(max_scale, scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    put_f16(&mut y[0..2], d * 0.9875);
    let id = 1.0 / d;
    for ib in 0..16 {
        y[74 + ib / 2] |= scale_nibble(id, scales[ib]) << (4 * (ib % 2));
    }
}

/// Every super-block of a row, with its slice of the importance.
#[inline]
fn each_super_block(
    x: &[f32],
    qw: &[f32],
    y: &mut [u8],
    bytes: usize,
    f: fn(&[f32], &[f32], &mut [u8]),
) {
    let it = x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K));
    for ((x, qw), y) in it.zip(y.chunks_exact_mut(bytes)) {
        f(x, qw, y);
    }
}

/// A row of IQ2_XXS with its importance (ggml's `quantize_iq2_xxs` for one row).
pub(super) fn iq2_xxs_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, IQ2_XXS_BYTES, iq2_xxs_block);
}

/// A row of IQ2_XS with its importance (ggml's `quantize_iq2_xs` for one row).
pub(super) fn iq2_xs_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, IQ2_XS_BYTES, iq2_xs_block);
}

/// A row of IQ2_S with its importance (ggml's `quantize_iq2_s` for one row).
pub(super) fn iq2_s_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, IQ2_S_BYTES, |x, qw, y| {
        iq2_s_block(x, Some(qw), y)
    });
}

/// One IQ2_S super-block without importance (ggml's `quantize_row_iq2_s_ref`).
pub(super) fn quantize_iq2_s(x: &[f32], y: &mut [u8]) {
    iq2_s_block(x, None, y);
}
