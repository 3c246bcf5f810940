//! The 1-bit lattice types IQ1_S and IQ1_M, quantized as `llama-quantize --imatrix` does:
//! ggml's `quantize_iq1_s` / `quantize_iq1_m`. IQ1_S exists only with an importance vector
//! (ggml refuses it without); IQ1_M takes the squared values as weights without one, as
//! ggml does. Their decoders are format knowledge and live in `formats::iq1`.
//!
//! Each group of eight values is one point of the 2048-point grid `IQ1S_GRID`, whose
//! coordinates are -1, 0, 1, shifted by plus or minus 1/8 and times a group scale. For a
//! group of 32 (IQ1_S) or 16 (IQ1_M) values, the exact weighted least-squares split into
//! three levels is found by sorting the values and trying every pair of cut points (with
//! either shift; IQ1_M lets each half of its group take its own). Groups of eight whose
//! levels are not a grid point take the neighbour of least weighted error from the lists of
//! `lattice::iq1` (ggml's `iq2xs_init_impl` for IQ1_S).
//!
//! The sort is by value only; values that compare equal keep their index order, as glibc's
//! merge sort (`qsort` for arrays this small) keeps them, so ties split as in ggml.

// The loops index several arrays in step, as ggml's do, so the order of every sum stays ggml's.
#![allow(clippy::needless_range_loop)]

use super::kquants::QK_K;
use super::lattice::{self, key_of, Lattice, Lookup};
use super::put_f16;
use super::search::nearest_int;

use crate::formats::iq1::IQ1_DELTA;
pub(super) use crate::formats::iq1::{IQ1_M_BYTES, IQ1_S_BYTES};

/// IQ1_S groups whose largest magnitude is below this are all zero.
const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
/// IQ1_M groups whose largest magnitude is below this are all zero.
const GROUP_MAX_EPS_IQ1_M: f32 = 1e-7;

/// The three shifted levels with a positive shift, and with a negative one.
const X_P: [f32; 3] = [-1.0 + IQ1_DELTA, IQ1_DELTA, 1.0 + IQ1_DELTA];
const X_M: [f32; 3] = [-1.0 - IQ1_DELTA, -IQ1_DELTA, 1.0 - IQ1_DELTA];

/// `2 * mean(x^2)` of a super-block, summed in ggml's order.
fn sigma2(x: &[f32]) -> f32 {
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    2.0 * sumx2 / QK_K as f32
}

/// Weights of a group: importance times `sqrt(sigma2 + x^2)`, or `x^2` without importance.
fn weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    match qw {
        Some(qw) => {
            for i in 0..xb.len() {
                w[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
            }
        }
        None => {
            for i in 0..xb.len() {
                w[i] = xb[i] * xb[i];
            }
        }
    }
}

/// ggml's MAX: the first value unless the second is strictly larger... as `a > b ? a : b`.
#[inline(always)]
fn gmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The largest magnitude of a group, in ggml's order.
fn max_abs(xb: &[f32]) -> f32 {
    let mut max = xb[0].abs();
    for &v in &xb[1..] {
        max = gmax(max, v.abs());
    }
    max
}

/// The value order of a group: indices sorted by value, equal values in index order.
fn sorted(xb: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..xb.len()).collect();
    idx.sort_by(|&a, &b| {
        let (l, r) = (xb[a], xb[b]);
        if l < r {
            std::cmp::Ordering::Less
        } else if l > r {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    idx
}

/// ggml's `iq1_find_best_neighbour2`: of the candidates, the grid point whose shifted
/// levels `xx` times `scale` are nearest `x` in weighted squared error (first wins ties);
/// writes its levels into `l` and returns its index.
fn best_neighbour(
    lat: &Lattice,
    candidates: &[u16],
    x: &[f32],
    w: &[f32],
    scale: f32,
    xx: &[f32; 3],
    l: &mut [i8],
) -> usize {
    let mut best_d2 = f32::MAX;
    let mut best = usize::from(candidates.first().copied().unwrap_or(0));
    for &j in candidates {
        let p = lat.point(usize::from(j));
        let mut d2 = 0.0f32;
        for i in 0..8 {
            let q = xx[((p[i] - 1) / 2) as usize];
            let diff = scale * q - x[i];
            d2 += w[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            best = usize::from(j);
        }
    }
    let p = lat.point(best);
    for i in 0..8 {
        l[i] = (p[i] - 1) / 2;
    }
    best
}

/// The grid point of the 8 levels in `l`, or its best neighbour (then `l` is updated and
/// the second value is false).
fn grid_point(
    lat: &Lattice,
    x: &[f32],
    w: &[f32],
    scale: f32,
    xx: &[f32; 3],
    l: &mut [i8],
) -> (usize, bool) {
    let mut levels = [0i8; 8];
    levels.copy_from_slice(&l[..8]);
    match lat.lookup(key_of(levels)) {
        Lookup::Point(i) => (i, true),
        Lookup::Near(c) => (best_neighbour(lat, c, x, w, scale, xx, l), false),
    }
}

/// The grid points of a group's levels `l`, one per 8 values (`xx(k)` the shifted levels
/// of the `k`-th eight): an eight whose levels are not a grid point takes its best neighbour
/// at `scale` (and `l` is updated). If any did, the scale is refit to the points, and kept
/// only when the fit is positive. Returns the points and the scale.
fn grid_points<const N: usize>(
    lat: &Lattice,
    x: &[f32],
    w: &[f32],
    mut scale: f32,
    xx: impl Fn(usize) -> &'static [f32; 3],
    l: &mut [i8],
) -> ([usize; N], f32) {
    let mut index = [0usize; N];
    let mut all_on_grid = true;
    for k in 0..N {
        let r = 8 * k..8 * k + 8;
        let (i, on) = grid_point(lat, &x[r.clone()], &w[r.clone()], scale, xx(k), &mut l[r]);
        all_on_grid &= on;
        index[k] = i;
    }
    if !all_on_grid {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for (k, &i) in index.iter().enumerate() {
            let p = lat.point(i);
            let xx = xx(k);
            for j in 0..8 {
                let w = w[8 * k + j];
                let q = xx[((p[j] - 1) / 2) as usize];
                sumqx += w * q * x[8 * k + j];
                sumq2 += w * q * q;
            }
        }
        if sumqx > 0.0 && sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    (index, scale)
}

/// Levels by cut points in the sorted order: below `i1` level 0, below `i2` level 1, else 2.
/// A negative `scale` is made positive by mirroring every level (`2 - l`); returns whether
/// it was, since the shifts then change sign too.
fn split(idx: &[usize], i1: usize, i2: usize, scale: &mut f32, l: &mut [i8]) -> bool {
    for (j, &i) in idx.iter().enumerate() {
        l[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
    let mirror = *scale < 0.0;
    if mirror {
        for v in l.iter_mut() {
            *v = 2 - *v;
        }
        *scale = -*scale;
    }
    mirror
}

/// One IQ1_S super-block of 256 values (`quantize_row_iq1_s_impl`) into 50 bytes.
pub(super) fn quantize_iq1_s(x: &[f32], qw: &[f32], y: &mut [u8]) {
    const BS: usize = 32;
    let lat = lattice::iq1();
    y.fill(0);
    let s2 = sigma2(x);
    let mut scales = [0.0f32; QK_K / BS];
    let mut shifts = [1i8; QK_K / BS];
    let mut qh = [0u16; QK_K / BS];
    let mut max_scale = 0.0f32;
    let mut weight = [0.0f32; BS];
    let mut l = [0i8; BS];
    for ib in 0..QK_K / BS {
        let xb = &x[BS * ib..BS * ib + BS];
        weights(xb, Some(&qw[BS * ib..BS * ib + BS]), s2, &mut weight);
        if max_abs(xb) < GROUP_MAX_EPS_IQ1_S {
            continue;
        }
        let max = max_abs(xb);
        let idx = sorted(xb);
        let mut sumx = [0.0f32; BS + 1];
        let mut sumw = [0.0f32; BS + 1];
        for (j, &i) in idx.iter().enumerate() {
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let mut best_score = -f32::MAX;
        let mut scale = max;
        let mut best: Option<(usize, usize, i8)> = None;
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                for (xs, shift) in [(&X_P, 1i8), (&X_M, -1)] {
                    let sumqx = (sumx[i1] - sumx[0]) * xs[0]
                        + (sumx[i2] - sumx[i1]) * xs[1]
                        + (sumx[BS] - sumx[i2]) * xs[2];
                    let sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0]
                        + (sumw[i2] - sumw[i1]) * xs[1] * xs[1]
                        + (sumw[BS] - sumw[i2]) * xs[2] * xs[2];
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        best = Some((i1, i2, shift));
                    }
                }
            }
        }
        let Some((i1, i2, mut shift)) = best else {
            continue;
        };
        if split(&idx, i1, i2, &mut scale, &mut l) {
            shift = -shift;
        }
        let xx: &'static [f32; 3] = if shift == 1 { &X_P } else { &X_M };
        let (index, scale) = grid_points::<{ BS / 8 }>(lat, xb, &weight, scale, |_| xx, &mut l);
        let mut h = 0u16;
        for k in 0..BS / 8 {
            y[2 + (BS / 8) * ib + k] = (index[k] & 255) as u8;
            h |= ((index[k] >> 8) as u16) << (3 * k);
        }
        qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = shift;
        max_scale = gmax(max_scale, scale);
    }
    if max_scale != 0.0 {
        let d = max_scale / 15.0;
        put_f16(&mut y[0..2], d * 1.125);
        let id = 1.0 / d;
        for ib in 0..QK_K / BS {
            let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
            if shifts[ib] == -1 {
                l |= 8;
            }
            qh[ib] |= l << 12;
        }
    }
    for (ib, h) in qh.iter().enumerate() {
        y[34 + 2 * ib..36 + 2 * ib].copy_from_slice(&h.to_le_bytes());
    }
}

/// The shifted levels of group `k` (0 or 1) of 8 in a 16-value IQ1_M block with shift
/// choice `best_k` (0: +,+; 1: +,-; 2: -,+; 3: -,-).
fn iq1m_levels(best_k: usize, k: usize) -> &'static [f32; 3] {
    let plus = if k == 0 {
        best_k < 2
    } else {
        best_k.is_multiple_of(2)
    };
    if plus {
        &X_P
    } else {
        &X_M
    }
}

/// One IQ1_M super-block of 256 values (`quantize_row_iq1_m_impl`) into 56 bytes; `qw` is
/// the block's importance, if any. The split search is llama.cpp's form with prefix sums
/// per half (a split's sum is `total * v[2] - px[i1] - px[i2]`); older ggml copies (the
/// `ggml-python` 0.0.45 sdist) sum each split afresh and round differently.
pub(super) fn quantize_iq1_m(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    const BS: usize = 16;
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let lat = lattice::iq1();
    y.fill(0);
    let (qs, rest) = y.split_at_mut(32);
    let (qh, sc_bytes) = rest.split_at_mut(16);
    let s2 = sigma2(x);
    let mut scales = [0.0f32; QK_K / BS];
    let mut shifts = [0usize; QK_K / BS];
    let mut max_scale = 0.0f32;
    let mut weight = [0.0f32; BS];
    let mut l = [0i8; BS];
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    let (p2, m2) = (X_P[2], X_M[2]);
    for ib in 0..QK_K / BS {
        let xb = &x[BS * ib..BS * ib + BS];
        weights(xb, qw.map(|q| &q[BS * ib..BS * ib + BS]), s2, &mut weight);
        let max = max_abs(xb);
        if max < GROUP_MAX_EPS_IQ1_M {
            continue;
        }
        let idx = sorted(xb);
        // Prefix sums per half of the block, since each half takes its own shift.
        let mut px = [[0.0f32; BS + 1]; 2];
        let mut pw = [[0.0f32; BS + 1]; 2];
        for (j, &i) in idx.iter().enumerate() {
            let h = usize::from(i >= BS / 2);
            px[h][j + 1] = px[h][j] + weight[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + weight[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        let txs = [px[0][BS], px[1][BS]];
        let tws = [pw[0][BS], pw[1][BS]];
        let mut best_score = -f32::MAX;
        let mut scale = max;
        let mut best: Option<(usize, usize, usize)> = None;
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                    ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
                for h in 0..2 {
                    let sx = px[h][i1] + px[h][i2];
                    qx_p[h] = txs[h] * p2 - sx;
                    qx_m[h] = txs[h] * m2 - sx;
                    q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                let sumqx = [
                    qx_p[0] + qx_p[1],
                    qx_p[0] + qx_m[1],
                    qx_m[0] + qx_p[1],
                    qx_m[0] + qx_m[1],
                ];
                let sumq2 = [
                    q2_p[0] + q2_p[1],
                    q2_p[0] + q2_m[1],
                    q2_m[0] + q2_p[1],
                    q2_m[0] + q2_m[1],
                ];
                for k in 0..4 {
                    if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                        scale = sumqx[k] / sumq2[k];
                        best_score = scale * sumqx[k];
                        best = Some((i1, i2, k));
                    }
                }
            }
        }
        let Some((i1, i2, mut best_k)) = best else {
            continue;
        };
        if split(&idx, i1, i2, &mut scale, &mut l) {
            best_k = 3 - best_k;
        }
        let levels = |k| iq1m_levels(best_k, k);
        let (index, scale) = grid_points::<2>(lat, xb, &weight, scale, levels, &mut l);
        qs[2 * ib] = (index[0] & 255) as u8;
        qs[2 * ib + 1] = (index[1] & 255) as u8;
        qh[ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
        scales[ib] = scale;
        shifts[ib] = best_k;
        max_scale = gmax(max_scale, scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / BS {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
        qh[ib] |= MASKS[shifts[ib]];
        let xb = &x[BS * ib..BS * ib + BS];
        weights(xb, qw.map(|q| &q[BS * ib..BS * ib + BS]), s2, &mut weight);
        for k in 0..2 {
            let xx = iq1m_levels(shifts[ib], k);
            let i = usize::from(qs[2 * ib + k]) | ((usize::from(qh[ib]) << (8 - 4 * k)) & 0x700);
            let p = lat.point(i);
            for j in 0..8 {
                let w = weight[8 * k + j];
                let q = xx[((p[j] - 1) / 2) as usize] * (2 * l + 1) as f32;
                sumqx += w * q * xb[8 * k + j];
                sumq2 += w * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    let s = half::f16::from_f32(d * 1.1125).to_bits();
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
    for (i, v) in sc.iter().enumerate() {
        sc_bytes[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
    }
}
