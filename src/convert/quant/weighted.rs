//! Importance-weighted quantizers: what `llama-quantize` runs when it is given an importance
//! matrix (ggml's `quantize_row_*_impl` for Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K
//! and Q6_K), transcribed operation for operation in `f32` so the bytes are ggml's.
//!
//! Every function here takes one whole row and the row's per-column importance `qw` (the
//! imatrix values for that tensor, or for that expert's slice). The weight of value `j` is
//! `qw[j] * sqrt(sigma2 + x[j]^2)`, where `sigma2` is the mean square of the row (legacy
//! types) or of the super-block (K types, twice the mean square except Q2_K); Q6_K uses
//! `qw` as is. The searches are ggml's weighted ones: `make_qx_quants` (symmetric grid),
//! `make_qkx3_quants` (asymmetric grid with least-squares refinement) and `make_qp_quants`
//! (the super-block's scales and minimums, quantized against the summed group weights).
//!
//! The K types run a super-block's 8 or 16 groups in lockstep through the searches of
//! `search`, as the unweighted K-quants do: `make_qkx3_quants` is `make_qkx2_quants` with
//! other constants, operation for operation, and `make_qx_quants` only takes its weights
//! from the caller, so the same lockstep code serves both, and the 37-step grid that
//! dominates an imatrix conversion vectorises over groups. The legacy types (one 32-value
//! block per scale) and the super-block scale searches (`make_qp_quants`) stay group by
//! group. Levels are kept in the integer types ggml keeps them in (`u8` for
//! `make_qkx3_quants` and `make_qp_quants`, which wrap exactly as ggml's `uint8_t` stores do).

use super::kquants::{groups_of_16, groups_of_32, QK_K};
use super::search::{self, nearest_int, Qkx2, GROUP_MAX_EPS};
use super::{f16_at, put_f16};

/// ggml's `make_qx_quants` with `rmse_type` 1 and explicit weights: levels `l + nmax` with
/// `l` in `-nmax..nmax`, into `out`; returns the scale.
fn make_qx(nmax: i32, x: &[f32], out: &mut [i8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        out[i] = (l + nmax) as i8;
        let w = qw[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1) as f32;
            let w = qw[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                out[i] = (nmax + nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qkx3_quants` with weights: levels `0..=nmax` into `out`, returns
/// `(scale, the_min)` with `x ~ scale * l - the_min`.
#[allow(clippy::too_many_arguments)]
fn make_qkx3(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        out[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_mad += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(aux[i]) + this_min - x[i];
                mad += weights[i] * (diff * diff);
            }
            if mad < best_mad {
                out[..n].copy_from_slice(&aux[..n]);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qp_quants`: non-negative values (scales or minimums) to levels `0..=nmax`
/// weighted by `qw`; returns the scale. Levels are stored as `uint8_t`, as in ggml.
pub(super) fn make_qp(nmax: i32, x: &[f32], out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * f32::from(out[i]);
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        out[i] = l as u8;
        let w = qw[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let w = qw[i];
            let li = f32::from(out[i]);
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(out[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Sequential sum of squares, as ggml's loops add them.
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// `qw[j] * sqrt(sigma2 + x[j]^2)` for one group.
fn weigh(x: &[f32], qw: &[f32], sigma2: f32, w: &mut [f32]) {
    for j in 0..x.len() {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
}

/// The weights `qw[j] * sqrt(sigma2 + x[j]^2)` of a super-block laid out like `xs` (value
/// `N * g + i` at `[i][g]`), and each group's sum of weights added in value order.
#[inline(always)]
fn weigh_groups<const N: usize, const G: usize>(
    xs: &[[f32; G]; N],
    qw: &[f32],
    sigma2: f32,
) -> ([[f32; G]; N], [f32; G]) {
    let mut w = [[0.0f32; G]; N];
    for (i, row) in w.iter_mut().enumerate() {
        for (g, v) in row.iter_mut().enumerate() {
            let x = xs[i][g];
            *v = qw[N * g + i] * (sigma2 + x * x).sqrt();
        }
    }
    let mut sw = [0.0f32; G];
    for row in &w {
        for g in 0..G {
            sw[g] += row[g];
        }
    }
    (w, sw)
}

/// `make_qkx3_quants` as the K types call it (`rmin` -0.9, `rdelta` 0.05, 37 candidate
/// scales, squared error). It is `make_qkx2_quants` with other constants, operation for
/// operation, so the lockstep search of `search` serves both.
fn qkx3_params(nmax: i32) -> Qkx2 {
    Qkx2 {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    }
}

/// Levels of a lockstep search back in value order, as bytes.
fn flatten_u8<const N: usize, const G: usize>(lv: &[[i32; G]; N]) -> [u8; QK_K] {
    let mut out = [0u8; QK_K];
    for (i, row) in lv.iter().enumerate() {
        for (g, &l) in row.iter().enumerate() {
            out[N * g + i] = l as u8;
        }
    }
    out
}

// ------------------------------------------------------------------------- legacy types

/// The row's `sigma2` for the legacy types: mean square over the whole row.
fn row_sigma2(x: &[f32]) -> f32 {
    sum_sq(x) / x.len() as f32
}

/// Pack 32 five-bit levels as Q5_0/Q5_1 do.
fn pack5(levels: &[u8; 32], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for j in 0..16 {
        qs[j] = (levels[j] & 0xF) | ((levels[j + 16] & 0xF) << 4);
        h |= u32::from((levels[j] & 0x10) >> 4) << j;
        h |= u32::from((levels[j + 16] & 0x10) >> 4) << (j + 16);
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

pub(super) fn q4_0_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut w = [0.0f32; 32];
    let mut l = [0i8; 32];
    for ((xb, qb), yb) in x
        .chunks_exact(32)
        .zip(qw.chunks_exact(32))
        .zip(y.chunks_exact_mut(18))
    {
        weigh(xb, qb, sigma2, &mut w);
        let d = make_qx(8, xb, &mut l, &w);
        put_f16(&mut yb[0..2], d);
        for j in 0..16 {
            yb[2 + j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    }
}

pub(super) fn q5_0_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut w = [0.0f32; 32];
    let mut l = [0i8; 32];
    for ((xb, qb), yb) in x
        .chunks_exact(32)
        .zip(qw.chunks_exact(32))
        .zip(y.chunks_exact_mut(22))
    {
        weigh(xb, qb, sigma2, &mut w);
        let d = make_qx(16, xb, &mut l, &w);
        put_f16(&mut yb[0..2], d);
        let levels: [u8; 32] = std::array::from_fn(|j| l[j] as u8);
        let (qh, qs) = yb[2..22].split_at_mut(4);
        pack5(&levels, qh, qs);
    }
}

pub(super) fn q4_1_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut w = [0.0f32; 32];
    let mut l = [0u8; 32];
    for ((xb, qb), yb) in x
        .chunks_exact(32)
        .zip(qw.chunks_exact(32))
        .zip(y.chunks_exact_mut(20))
    {
        weigh(xb, qb, sigma2, &mut w);
        let (d, min) = make_qkx3(15, xb, &w, &mut l, -0.9, 0.05, 36);
        put_f16(&mut yb[0..2], d);
        put_f16(&mut yb[2..4], -min);
        for j in 0..16 {
            yb[4 + j] = l[j] | (l[j + 16] << 4);
        }
    }
}

pub(super) fn q5_1_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut w = [0.0f32; 32];
    let mut l = [0u8; 32];
    for ((xb, qb), yb) in x
        .chunks_exact(32)
        .zip(qw.chunks_exact(32))
        .zip(y.chunks_exact_mut(24))
    {
        weigh(xb, qb, sigma2, &mut w);
        let (d, min) = make_qkx3(31, xb, &w, &mut l, -0.9, 0.05, 36);
        put_f16(&mut yb[0..2], d);
        put_f16(&mut yb[2..4], -min);
        let (qh, qs) = yb[4..24].split_at_mut(4);
        pack5(&l, qh, qs);
    }
}

// ------------------------------------------------------------------------------ K types

/// Q2/Q3 2-bit packing: byte `32 * h + l` holds values `128 * h + l + 32 * k`.
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for h in 0..2 {
        for l in 0..32 {
            let b = 128 * h + l;
            qs[32 * h + l] =
                levels[b] | (levels[b + 32] << 2) | (levels[b + 64] << 4) | (levels[b + 96] << 6);
        }
    }
}

fn each_super_block(
    x: &[f32],
    qw: &[f32],
    y: &mut [u8],
    bytes: usize,
    f: impl Fn(&[f32], &[f32], &mut [u8]),
) {
    for ((xb, qb), yb) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(y.chunks_exact_mut(bytes))
    {
        f(xb, qb, yb);
    }
}

pub(super) fn q2k_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, 84, q2k_block);
}

fn q2k_block(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = sum_sq(x) / QK_K as f32;
    let xs = groups_of_16(x);
    let (w, sw) = weigh_groups(&xs, qw, sigma2);
    let mut lv = [[0i32; 16]; 16];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    search::qkx2(&xs, &w, &qkx3_params(3), &mut lv, &mut scales, &mut mins);
    let mut levels = flatten_u8(&lv);
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp(15, &scales, &mut ls, &sw);
    let mm = make_qp(15, &mins, &mut lm, &sw);
    let (sc, rest) = y.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    put_f16(&mut dd[0..2], dm);
    put_f16(&mut dd[2..4], mm);
    let dm = f16_at(dd, 0);
    let mm = f16_at(dd, 2);
    for j in 0..16 {
        sc[j] = ls[j] | (lm[j] << 4);
    }
    for j in 0..16 {
        let d = dm * f32::from(sc[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let m = mm * f32::from(sc[j] >> 4);
        for ii in 0..16 {
            levels[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&levels, qs);
}

pub(super) fn q3k_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, 110, q3k_block);
}

fn q3k_block(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let xs = groups_of_16(x);
    let (w, sw) = weigh_groups(&xs, qw, sigma2);
    let mut lv = [[0i32; 16]; 16];
    let mut scales = [0.0f32; 16];
    search::qx_weighted(&xs, &w, 4, &mut lv, &mut scales);
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sb, d_bytes) = rest.split_at_mut(12);
    sb.fill(0);
    let mut ls = [0i8; 16];
    let d_block = make_qx(32, &scales, &mut ls, &sw);
    for j in 0..16 {
        let lv = i32::from(ls[j]);
        if j < 8 {
            sb[j] = (lv & 0xF) as u8;
        } else {
            sb[j - 8] |= ((lv & 0xF) << 4) as u8;
        }
        let hi = lv >> 4;
        sb[j % 4 + 8] |= (hi << (2 * (j / 4))) as u8;
    }
    put_f16(d_bytes, d_block);
    let d_all = f16_at(d_bytes, 0);
    let mut levels = flatten_u8(&lv);
    for j in 0..16 {
        let low = if j < 8 { sb[j] & 0xF } else { sb[j - 8] >> 4 };
        let sc = (low | (((sb[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8 - 32;
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as u8;
        }
    }
    hmask.fill(0);
    for (j, lv) in levels.iter_mut().enumerate() {
        if *lv > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *lv -= 4;
        }
    }
    pack_2bit(&levels, qs);
}

/// Q4_K and Q5_K share everything up to the packing of the levels.
fn k4_head(x: &[f32], qw: &[f32], nmax: i32, clamp_ls: bool, head: &mut [u8]) -> [u8; QK_K] {
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let xs = groups_of_32(x);
    let (w, sw) = weigh_groups(&xs, qw, sigma2);
    let mut lv = [[0i32; 8]; 32];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    search::qkx2(&xs, &w, &qkx3_params(nmax), &mut lv, &mut scales, &mut mins);
    let mut levels = flatten_u8(&lv);
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp(63, &scales, &mut ls, &sw);
    let m_block = make_qp(63, &mins, &mut lm, &sw);
    let sb = &mut head[4..16];
    sb.fill(0);
    for j in 0..8 {
        let (mut a, mut b) = (ls[j], lm[j]);
        if clamp_ls {
            a = a.min(63);
            b = b.min(63);
        }
        if j < 4 {
            sb[j] = a;
            sb[j + 4] = b;
        } else {
            sb[j + 4] = (a & 0xF) | ((b & 0xF) << 4);
            sb[j - 4] |= (a >> 4) << 6;
            sb[j] |= (b >> 4) << 6;
        }
    }
    put_f16(&mut head[0..2], d_block);
    put_f16(&mut head[2..4], m_block);
    let d_all = f16_at(head, 0);
    let m_all = f16_at(head, 2);
    for j in 0..8 {
        let q = &head[4..16];
        let (sc, m) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        };
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = m_all * f32::from(m);
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    levels
}

pub(super) fn q4k_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, 144, |x, qw, y| {
        let (head, qs) = y.split_at_mut(16);
        let l = k4_head(x, qw, 15, false, head);
        for c in 0..4 {
            for i in 0..32 {
                qs[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
    });
}

pub(super) fn q5k_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, 176, |x, qw, y| {
        let (head, rest) = y.split_at_mut(16);
        let l = k4_head(x, qw, 31, true, head);
        let (qh, ql) = rest.split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for j in 0..32 {
                let mut l1 = l[64 * c + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[64 * c + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
        }
    });
}

pub(super) fn q6k_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    each_super_block(x, qw, y, 210, q6k_block);
}

fn q6k_block(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let xs = groups_of_16(x);
    let ws = groups_of_16(qw);
    let mut lv = [[0i32; 16]; 16];
    let mut scales = [0.0f32; 16];
    search::qx_weighted(&xs, &ws, 32, &mut lv, &mut scales);
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &s in &scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y[..210].fill(0);
        return;
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, d_bytes) = rest.split_at_mut(16);
    let iscale = -128.0 / max_scale;
    put_f16(d_bytes, 1.0 / iscale);
    for (b, &s) in sc.iter_mut().zip(&scales) {
        *b = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    let d_all = f16_at(d_bytes, 0);
    let mut levels = [0i32; QK_K];
    for (i, row) in lv.iter().enumerate() {
        for (g, &l) in row.iter().enumerate() {
            levels[16 * g + i] = l;
        }
    }
    for j in 0..16 {
        let d = d_all * f32::from(sc[j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            levels[16 * j + ii] = nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32;
        }
    }
    for h in 0..2 {
        let l0 = &levels[128 * h..128 * h + 128];
        for i in 0..32 {
            let (a, b, c, e) = (l0[i], l0[i + 32], l0[i + 64], l0[i + 96]);
            ql[64 * h + i] = ((a & 0xF) | ((c & 0xF) << 4)) as u8;
            ql[64 * h + i + 32] = ((b & 0xF) | ((e & 0xF) << 4)) as u8;
            qh[32 * h + i] = ((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Byte equality with ggml is checked in `tests/it/quant.rs`; here, that the weighting
    //! does what it is for: where the importance is concentrated, the error is smaller.

    use super::super::{dequantize_to_vec, quantize_rows, quantize_rows_weighted};
    use crate::formats::GgmlType;

    #[test]
    fn importance_moves_error_off_the_important_columns() {
        let n = 1024;
        let x: Vec<f32> = (0..8 * n)
            .map(|i| ((i as f32) * 0.731).sin() * (1.0 + (i % 13) as f32 * 0.2))
            .collect();
        // Every 8th column matters a thousand times more than the rest.
        let imp: Vec<f32> = (0..n)
            .map(|j| if j % 8 == 0 { 1000.0 } else { 1.0 })
            .collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::IQ4NL,
            GgmlType::IQ4XS,
        ] {
            let weighted_err = |w: Option<&[f32]>| {
                let mut q = Vec::new();
                match w {
                    Some(w) => quantize_rows_weighted(ty, &x, n, Some(w), &mut q).unwrap(),
                    None => quantize_rows(ty, &x, n, &mut q).unwrap(),
                }
                let y = dequantize_to_vec(ty, &q).unwrap();
                x.iter()
                    .zip(&y)
                    .enumerate()
                    .map(|(i, (a, b))| f64::from(imp[i % n]) * f64::from(a - b).powi(2))
                    .sum::<f64>()
            };
            let (plain, weighted) = (weighted_err(None), weighted_err(Some(&imp)));
            assert!(weighted < plain, "{ty}: {weighted} >= {plain}");
        }
    }
}
