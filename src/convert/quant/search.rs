//! The per-group scale searches of ggml's reference K-quantizers, run on a whole super-block's
//! groups in lockstep.
//!
//! A K-quant super-block of 256 values is cut into 8 groups of 32 (Q4_K, Q5_K) or 16 groups
//! of 16 (Q2_K, Q3_K, Q6_K), and each group gets its own scale (and minimum) from an
//! iterative search: `make_qkx2_quants` (a grid of candidate scales, each refined by a
//! weighted least-squares fit of scale and minimum), `make_qx_quants` (a grid of symmetric
//! scales scored by a weighted dot product) and `make_q3_quants` (coordinate descent on the
//! levels). These follow ggml's published reference quantizers (`ggml-quants.c`,
//! `quantize_row_*_ref`) operation for operation, in the same order, in `f32`, so that the
//! bytes we write are the bytes ggml writes.
//!
//! Why lockstep: each group's search is a chain of dependent sums, which a compiler cannot
//! vectorise without reordering the additions (and so changing the result). The groups of a
//! super-block are independent, though, so the values are laid out transposed (`x[i][g]` is
//! value `i` of group `g`) and every step is written once over all groups: the inner loop
//! over groups is what the compiler turns into SIMD, and each group still adds its terms in
//! ggml's order. Per-group branches become selects, and loops that ggml leaves early
//! (`make_q3_quants` stops once a pass changes nothing) run to their bound instead, which
//! gives the same result because a pass that changes nothing leaves the state as it was.

/// Groups whose largest magnitude is below this are all zero (`GROUP_MAX_EPS` in ggml).
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to the nearest integer, ties to even, the way ggml's `nearest_int` does: add
/// 1.5 * 2^23 and read the low mantissa bits. Exact for |v| <= 4194303; outside that range
/// (and for NaN) it returns the same deterministic garbage as ggml, which every caller
/// clamps.
#[inline(always)]
pub(super) fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `nearest_int(v)` clamped to `lo..=hi`, as `f32`. ggml clamps the integer; clamping the
/// (exactly converted) integer as a float gives the same value and costs two SSE
/// instructions instead of an emulated integer clamp.
#[inline(always)]
fn level(v: f32, lo: f32, hi: f32) -> f32 {
    (nearest_int(v) as f32).max(lo).min(hi)
}

/// Parameters of one `make_qkx2_quants` search.
pub(super) struct Qkx2 {
    /// Largest level (levels are `0..=nmax`).
    pub nmax: i32,
    /// The candidate inverse scales are `(rmin + rdelta * is + nmax) / (max - min)` for
    /// `is` in `0..=nstep`.
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Score candidates by weighted absolute error instead of weighted squared error.
    pub use_mad: bool,
}

/// Asymmetric search (`make_qkx2_quants`) for `G` groups of `N` values: for each group, a
/// scale and a minimum such that `x ~ scale * l - min` with levels `l` in `0..=nmax`.
///
/// Writes the levels into `levels`, the scales into `scale` and the (non-negative) minimums
/// into `the_min`.
///
/// ggml copies a candidate's levels whenever it wins; here each group remembers the inverse
/// scale and offset that produced its winning levels and recomputes them once at the end,
/// with the same operations, so the levels are the same and the inner loops stay free of
/// per-group copies.
pub(super) fn qkx2<const N: usize, const G: usize>(
    x: &[[f32; G]; N],
    w: &[[f32; G]; N],
    p: &Qkx2,
    levels: &mut [[i32; G]; N],
    scale: &mut [f32; G],
    the_min: &mut [f32; G],
) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = [0.0f32; G];
    for g in 0..G {
        sum_x[g] = sum_w[g] * x[0][g];
    }
    for i in 1..N {
        for g in 0..G {
            let v = x[i][g];
            min[g] = if v < min[g] { v } else { min[g] };
            max[g] = if v > max[g] { v } else { max[g] };
            sum_w[g] += w[i][g];
            sum_x[g] += w[i][g] * v;
        }
    }
    let mut flat = [false; G];
    for g in 0..G {
        if min[g] > 0.0 {
            min[g] = 0.0;
        }
        flat[g] = max[g] == min[g];
    }
    let first_min = min;
    let nmaxf = p.nmax as f32;

    let mut iscale = [0.0f32; G];
    for g in 0..G {
        iscale[g] = nmaxf / (max[g] - min[g]);
        scale[g] = 1.0 / iscale[g];
    }
    // The inverse scale and offset whose levels are the best so far.
    let mut win_iscale = iscale;
    let mut win_min = min;
    let mut best = [0.0f32; G];
    for i in 0..N {
        for g in 0..G {
            let l = level(iscale[g] * (x[i][g] - min[g]), 0.0, nmaxf);
            let diff = scale[g] * l + min[g] - x[i][g];
            let diff = if p.use_mad { diff.abs() } else { diff * diff };
            best[g] += w[i][g] * diff;
        }
    }

    let mut aux = [[0.0f32; G]; N];
    for is in 0..=p.nstep {
        let num = p.rmin + p.rdelta * is as f32 + nmaxf;
        for g in 0..G {
            iscale[g] = num / (max[g] - min[g]);
        }
        let mut sum_l = [0.0f32; G];
        let mut sum_l2 = [0.0f32; G];
        let mut sum_xl = [0.0f32; G];
        for i in 0..N {
            for g in 0..G {
                let l = level(iscale[g] * (x[i][g] - min[g]), 0.0, nmaxf);
                aux[i][g] = l;
                let wl = w[i][g] * l;
                sum_l[g] += wl;
                sum_l2[g] += wl * l;
                sum_xl[g] += wl * x[i][g];
            }
        }
        let mut this_scale = [0.0f32; G];
        let mut this_min = [0.0f32; G];
        let mut fit = [false; G];
        for g in 0..G {
            let d = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g];
            fit[g] = d > 0.0;
            let mut s = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / d;
            let mut m = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / d;
            if m > 0.0 {
                m = 0.0;
                s = sum_xl[g] / sum_l2[g];
            }
            this_scale[g] = s;
            this_min[g] = m;
        }
        let mut err = [0.0f32; G];
        for i in 0..N {
            for g in 0..G {
                let diff = this_scale[g] * aux[i][g] + this_min[g] - x[i][g];
                let diff = if p.use_mad { diff.abs() } else { diff * diff };
                err[g] += w[i][g] * diff;
            }
        }
        for g in 0..G {
            let take = fit[g] && err[g] < best[g];
            win_iscale[g] = if take { iscale[g] } else { win_iscale[g] };
            win_min[g] = if take { min[g] } else { win_min[g] };
            best[g] = if take { err[g] } else { best[g] };
            scale[g] = if take { this_scale[g] } else { scale[g] };
            min[g] = if take { this_min[g] } else { min[g] };
        }
    }

    for g in 0..G {
        if flat[g] {
            scale[g] = 0.0;
            the_min[g] = -first_min[g];
        } else {
            the_min[g] = -min[g];
        }
    }
    for (row, xr) in levels.iter_mut().zip(x) {
        for g in 0..G {
            let l = level(win_iscale[g] * (xr[g] - win_min[g]), 0.0, nmaxf) as i32;
            row[g] = if flat[g] { 0 } else { l };
        }
    }
}

/// The value of largest magnitude of each group (the first one, on ties) and that
/// magnitude, as ggml's searches pick them.
pub(super) fn signed_max<const N: usize, const G: usize>(
    x: &[[f32; G]; N],
) -> ([f32; G], [f32; G]) {
    let mut max = [0.0f32; G];
    let mut amax = [0.0f32; G];
    for row in x {
        for g in 0..G {
            let ax = row[g].abs();
            let more = ax > amax[g];
            amax[g] = if more { ax } else { amax[g] };
            max[g] = if more { row[g] } else { max[g] };
        }
    }
    (max, amax)
}

/// Symmetric search (`make_qx_quants` with `rmse_type` 1) for `G` groups of `N` values:
/// levels `l` in `-nmax..nmax` stored as `l + nmax`, scale chosen among 19 candidates to
/// maximise the fit weighted by `x * x`. As in [`qkx2`], the winning inverse scale is
/// remembered and its levels computed once at the end.
pub(super) fn qx<const N: usize, const G: usize>(
    x: &[[f32; G]; N],
    nmax: i32,
    levels: &mut [[i32; G]; N],
    scale: &mut [f32; G],
) {
    let mut w = [[0.0f32; G]; N];
    for i in 0..N {
        for g in 0..G {
            w[i][g] = x[i][g] * x[i][g];
        }
    }
    qx_weighted(x, &w, nmax, levels, scale);
}

/// [`qx`] with explicit weights (`make_qx_quants` given `quant_weights`, as the importance
/// quantizers call it); the weights only enter the sums, in the same places as `x * x`.
#[inline(always)]
pub(super) fn qx_weighted<const N: usize, const G: usize>(
    x: &[[f32; G]; N],
    w: &[[f32; G]; N],
    nmax: i32,
    levels: &mut [[i32; G]; N],
    scale: &mut [f32; G],
) {
    let (max, amax) = signed_max(x);
    let nmaxf = nmax as f32;
    let (lo, hi) = (-nmaxf, nmaxf - 1.0);
    let mut iscale = [0.0f32; G];
    for g in 0..G {
        iscale[g] = -nmaxf / max[g];
    }
    let mut win_iscale = iscale;
    let mut sumlx = [0.0f32; G];
    let mut suml2 = [0.0f32; G];
    for i in 0..N {
        for g in 0..G {
            let l = level(iscale[g] * x[i][g], lo, hi);
            sumlx[g] += w[i][g] * x[i][g] * l;
            suml2[g] += w[i][g] * l * l;
        }
    }
    let mut best = [0.0f32; G];
    for g in 0..G {
        scale[g] = if suml2[g] != 0.0 {
            sumlx[g] / suml2[g]
        } else {
            0.0
        };
        best[g] = scale[g] * sumlx[g];
    }
    for is in (-9i32..=9).filter(|&is| is != 0) {
        let num = -(nmaxf + 0.1 * is as f32);
        for g in 0..G {
            iscale[g] = num / max[g];
        }
        let mut sumlx = [0.0f32; G];
        let mut suml2 = [0.0f32; G];
        for i in 0..N {
            for g in 0..G {
                let l = level(iscale[g] * x[i][g], lo, hi);
                sumlx[g] += w[i][g] * x[i][g] * l;
                suml2[g] += w[i][g] * l * l;
            }
        }
        for g in 0..G {
            let take = suml2[g] > 0.0 && sumlx[g] * sumlx[g] > best[g] * suml2[g];
            win_iscale[g] = if take { iscale[g] } else { win_iscale[g] };
            scale[g] = if take { sumlx[g] / suml2[g] } else { scale[g] };
            best[g] = if take { scale[g] * sumlx[g] } else { best[g] };
        }
    }
    let mut zero = [false; G];
    for g in 0..G {
        zero[g] = amax[g] < GROUP_MAX_EPS;
        if zero[g] {
            scale[g] = 0.0;
        }
    }
    for (row, xr) in levels.iter_mut().zip(x) {
        for g in 0..G {
            let l = level(win_iscale[g] * xr[g], lo, hi) as i32 + nmax;
            row[g] = if zero[g] { 0 } else { l };
        }
    }
}

/// Symmetric search with coordinate descent (`make_q3_quants` with `do_rmse`), for `G`
/// groups of `N` values: levels `l` in `-nmax..nmax` stored as `l + nmax`.
pub(super) fn q3<const N: usize, const G: usize>(
    x: &[[f32; G]; N],
    nmax: i32,
    levels: &mut [[i32; G]; N],
    scale: &mut [f32; G],
) {
    let (max, amax) = signed_max(x);
    let nmaxf = nmax as f32;
    let (lo, hi) = (-nmaxf, nmaxf - 1.0);
    let mut iscale = [0.0f32; G];
    for g in 0..G {
        iscale[g] = -nmaxf / max[g];
    }
    let mut lv = [[0.0f32; G]; N];
    let mut sumlx = [0.0f32; G];
    let mut suml2 = [0.0f32; G];
    for i in 0..N {
        for g in 0..G {
            let v = x[i][g];
            let l = level(iscale[g] * v, lo, hi);
            lv[i][g] = l;
            let w = v * v;
            sumlx[g] += w * v * l;
            suml2[g] += w * l * l;
        }
    }
    // ggml stops after a pass that changes nothing; such a pass leaves every level and sum
    // as it was, so running all five passes gives the same result.
    for _ in 0..5 {
        for i in 0..N {
            for g in 0..G {
                let v = x[i][g];
                let w = v * v;
                let l = lv[i][g];
                let slx = sumlx[g] - w * v * l;
                let sl2 = suml2[g] - w * l * l;
                let new_l = level(v * sl2 / slx, lo, hi);
                let slx_new = slx + w * v * new_l;
                let sl2_new = sl2 + w * new_l * new_l;
                let take = slx > 0.0
                    && new_l != l
                    && sl2_new > 0.0
                    && slx_new * slx_new * suml2[g] > sumlx[g] * sumlx[g] * sl2_new;
                lv[i][g] = if take { new_l } else { l };
                sumlx[g] = if take { slx_new } else { sumlx[g] };
                suml2[g] = if take { sl2_new } else { suml2[g] };
            }
        }
    }
    let mut zero = [false; G];
    for g in 0..G {
        zero[g] = amax[g] < GROUP_MAX_EPS;
        scale[g] = if zero[g] {
            0.0
        } else if suml2[g] > 0.0 {
            sumlx[g] / suml2[g]
        } else {
            0.0
        };
    }
    for (row, lr) in levels.iter_mut().zip(&lv) {
        for g in 0..G {
            row[g] = if zero[g] { 0 } else { lr[g] as i32 + nmax };
        }
    }
}

#[cfg(test)]
mod tests {
    //! The lockstep searches against plain one-group transcriptions of ggml's reference
    //! functions (sequential, with ggml's early exits), on many random groups: they must
    //! agree bit for bit, which is what makes our K-quant bytes ggml's bytes.

    use super::*;

    fn scalar_qkx2(x: &[f32], w: &[f32], p: &Qkx2, l_out: &mut [i32]) -> (f32, f32) {
        let n = x.len();
        let mut min = x[0];
        let mut max = x[0];
        let mut sum_w = w[0];
        let mut sum_x = sum_w * x[0];
        for i in 1..n {
            if x[i] < min {
                min = x[i];
            }
            if x[i] > max {
                max = x[i];
            }
            sum_w += w[i];
            sum_x += w[i] * x[i];
        }
        if min > 0.0 {
            min = 0.0;
        }
        if max == min {
            l_out.fill(0);
            return (0.0, -min);
        }
        let mut iscale = p.nmax as f32 / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            l_out[i] = l;
            let diff = scale * l as f32 + min - x[i];
            let diff = if p.use_mad { diff.abs() } else { diff * diff };
            best += w[i] * diff;
        }
        let mut aux = vec![0i32; n];
        for is in 0..=p.nstep {
            iscale = (p.rmin + p.rdelta * is as f32 + p.nmax as f32) / (max - min);
            let (mut sl, mut sl2, mut sxl) = (0.0f32, 0.0f32, 0.0f32);
            for i in 0..n {
                let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
                aux[i] = l;
                let lf = l as f32;
                sl += w[i] * lf;
                sl2 += w[i] * lf * lf;
                sxl += w[i] * lf * x[i];
            }
            let d = sum_w * sl2 - sl * sl;
            if d > 0.0 {
                let mut s = (sum_w * sxl - sum_x * sl) / d;
                let mut m = (sl2 * sum_x - sl * sxl) / d;
                if m > 0.0 {
                    m = 0.0;
                    s = sxl / sl2;
                }
                let mut err = 0.0f32;
                for i in 0..n {
                    let diff = s * aux[i] as f32 + m - x[i];
                    let diff = if p.use_mad { diff.abs() } else { diff * diff };
                    err += w[i] * diff;
                }
                if err < best {
                    l_out.copy_from_slice(&aux);
                    best = err;
                    scale = s;
                    min = m;
                }
            }
        }
        (scale, -min)
    }

    fn scalar_qx(x: &[f32], nmax: i32, l_out: &mut [i32]) -> f32 {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            l_out.fill(0);
            return 0.0;
        }
        let mut iscale = -(nmax as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (i, &v) in x.iter().enumerate() {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            l_out[i] = l + nmax;
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
        let mut best = scale * sumlx;
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            iscale = -(nmax as f32 + 0.1 * is as f32) / max;
            let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
            for &v in x {
                let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                let w = v * v;
                sumlx += w * v * l as f32;
                suml2 += w * l as f32 * l as f32;
            }
            if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
                for (i, &v) in x.iter().enumerate() {
                    l_out[i] = nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        scale
    }

    fn scalar_q3(x: &[f32], nmax: i32, l_out: &mut [i32]) -> f32 {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            l_out.fill(0);
            return 0.0;
        }
        let iscale = -(nmax as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (i, &v) in x.iter().enumerate() {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            l_out[i] = l;
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        for _ in 0..5 {
            let mut changed = 0;
            for (i, &v) in x.iter().enumerate() {
                let w = v * v;
                let mut slx = sumlx - w * v * l_out[i] as f32;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * l_out[i] as f32 * l_out[i] as f32;
                    let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != l_out[i] {
                        slx += w * v * new_l as f32;
                        sl2 += w * new_l as f32 * new_l as f32;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l;
                            sumlx = slx;
                            suml2 = sl2;
                            changed += 1;
                        }
                    }
                }
            }
            if changed == 0 {
                break;
            }
        }
        for l in l_out.iter_mut() {
            *l += nmax;
        }
        if suml2 > 0.0 {
            sumlx / suml2
        } else {
            0.0
        }
    }

    /// Deterministic pseudo-random groups with varied shapes: gaussian-ish, all positive,
    /// all negative, constant, zero, with outliers.
    fn groups<const N: usize, const G: usize>(seed: u64) -> [[f32; G]; N] {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut x = [[0.0f32; G]; N];
        for g in 0..G {
            let kind = (seed as usize + g) % 7;
            for row in x.iter_mut() {
                let u = next() - 0.5;
                row[g] = match kind {
                    0 => u * 0.1,
                    1 => u.abs() + 0.01,
                    2 => -u.abs() - 0.3,
                    3 => 0.25,
                    4 => 0.0,
                    5 => u * u * u * 40.0,
                    _ => (u * 7.0).sin() * 1e-3,
                };
            }
            if kind == 5 {
                x[(g * 3) % N][g] = 9.5;
            }
        }
        x
    }

    fn column<const N: usize, const G: usize>(x: &[[f32; G]; N], g: usize) -> Vec<f32> {
        x.iter().map(|row| row[g]).collect()
    }

    #[test]
    fn lockstep_qkx2_matches_scalar() {
        let params = [
            Qkx2 {
                nmax: 15,
                rmin: -1.0,
                rdelta: 0.1,
                nstep: 20,
                use_mad: false,
            },
            Qkx2 {
                nmax: 3,
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: true,
            },
        ];
        for seed in 0..60u64 {
            for p in &params {
                let x = groups::<32, 8>(seed);
                let mut w = [[0.0f32; 8]; 32];
                for i in 0..32 {
                    for g in 0..8 {
                        w[i][g] = 0.3 + x[i][g].abs();
                    }
                }
                let mut levels = [[0i32; 8]; 32];
                let (mut scale, mut min) = ([0.0f32; 8], [0.0f32; 8]);
                qkx2(&x, &w, p, &mut levels, &mut scale, &mut min);
                for g in 0..8 {
                    let mut l = vec![0; 32];
                    let (s, m) = scalar_qkx2(&column(&x, g), &column(&w, g), p, &mut l);
                    assert_eq!(s.to_bits(), scale[g].to_bits(), "seed {seed} group {g}");
                    assert_eq!(m.to_bits(), min[g].to_bits(), "seed {seed} group {g}");
                    let lane: Vec<i32> = levels.iter().map(|r| r[g]).collect();
                    assert_eq!(l, lane, "seed {seed} group {g}");
                }
            }
        }
    }

    #[test]
    fn lockstep_qx_and_q3_match_scalar() {
        for seed in 0..80u64 {
            let x = groups::<16, 16>(seed);
            let mut levels = [[0i32; 16]; 16];
            let mut scale = [0.0f32; 16];
            qx(&x, 32, &mut levels, &mut scale);
            for g in 0..16 {
                let mut l = vec![0; 16];
                let s = scalar_qx(&column(&x, g), 32, &mut l);
                assert_eq!(s.to_bits(), scale[g].to_bits(), "qx seed {seed} group {g}");
                let lane: Vec<i32> = levels.iter().map(|r| r[g]).collect();
                assert_eq!(l, lane, "qx seed {seed} group {g}");
            }
            q3(&x, 4, &mut levels, &mut scale);
            for g in 0..16 {
                let mut l = vec![0; 16];
                let s = scalar_q3(&column(&x, g), 4, &mut l);
                assert_eq!(s.to_bits(), scale[g].to_bits(), "q3 seed {seed} group {g}");
                let lane: Vec<i32> = levels.iter().map(|r| r[g]).collect();
                assert_eq!(l, lane, "q3 seed {seed} group {g}");
            }
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    }
}
