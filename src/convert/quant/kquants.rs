//! The K-quant super-block formats Q2_K, Q3_K, Q4_K, Q5_K and Q6_K: 256 values per block,
//! quantized the way ggml's reference quantizers (`quantize_row_q*_K_ref`, what
//! `llama-quantize` runs without an importance matrix) do it, and dequantized with ggml's
//! arithmetic.
//!
//! Each quantizer gathers a super-block into groups laid out transposed for the lockstep
//! searches of [`super::search`], quantizes the group scales (and minimums) to 4, 6 or 8
//! bits, then requantizes every value against the scale it will actually be decoded with.
//! Byte layouts are those of ggml's `block_q*_K` structs, fields in declaration order,
//! little-endian.

use super::search::{self, nearest_int, Qkx2, GROUP_MAX_EPS};
use super::{f16_at, put_f16};

/// Values per super-block.
pub(super) const QK_K: usize = 256;

pub(super) const Q2K_BYTES: usize = 84;
pub(super) const Q3K_BYTES: usize = 110;
pub(super) const Q4K_BYTES: usize = 144;
pub(super) const Q5K_BYTES: usize = 176;
pub(super) const Q6K_BYTES: usize = 210;

/// `x[32 * g + i]` as `[i][g]`: 8 groups of 32.
pub(super) fn groups_of_32(x: &[f32]) -> [[f32; 8]; 32] {
    let mut t = [[0.0f32; 8]; 32];
    for (g, chunk) in x.chunks_exact(32).enumerate() {
        for (i, &v) in chunk.iter().enumerate() {
            t[i][g] = v;
        }
    }
    t
}

/// `x[16 * g + i]` as `[i][g]`: 16 groups of 16.
pub(super) fn groups_of_16(x: &[f32]) -> [[f32; 16]; 16] {
    let mut t = [[0.0f32; 16]; 16];
    for (g, chunk) in x.chunks_exact(16).enumerate() {
        for (i, &v) in chunk.iter().enumerate() {
            t[i][g] = v;
        }
    }
    t
}

/// Levels back in value order: `levels[i][g]` is value `n * g + i`.
fn flatten<const N: usize, const G: usize>(levels: &[[i32; G]; N], out: &mut [i32; QK_K]) {
    for (i, row) in levels.iter().enumerate() {
        for (g, &l) in row.iter().enumerate() {
            out[N * g + i] = l;
        }
    }
}

/// Pack 4 levels of 2 bits per byte the way Q2_K and Q3_K store them: byte `32 * h + l`
/// holds values `128 * h + l + 32 * k` in bits `2k..2k+2`.
fn pack_2bit(levels: &[i32; QK_K], qs: &mut [u8]) {
    for h in 0..2 {
        for l in 0..32 {
            let b = 128 * h + l;
            qs[32 * h + l] =
                (levels[b] | (levels[b + 32] << 2) | (levels[b + 64] << 4) | (levels[b + 96] << 6))
                    as u8;
        }
    }
}

// ---------------------------------------------------------------------------------- Q2_K

/// One Q2_K block: `scales[16]` (4-bit scale | 4-bit min << 4), `qs[64]`, `d`, `dmin`.
pub(super) fn quantize_q2k(x: &[f32], y: &mut [u8]) {
    let xs = groups_of_16(x);
    let mut w = [[0.0f32; 16]; 16];
    for i in 0..16 {
        for g in 0..16 {
            w[i][g] = xs[i][g].abs();
        }
    }
    let mut lv = [[0i32; 16]; 16];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let p = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    search::qkx2(&xs, &w, &p, &mut lv, &mut scales, &mut mins);
    let mut levels = [0i32; QK_K];
    flatten(&lv, &mut levels);

    let (max_scale, max_min) = max_scale_min(&scales, &mins);
    let (sc, rest) = y.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (b, &s) in sc.iter_mut().zip(&scales) {
            *b = nearest_int(iscale * s) as u8;
        }
        put_f16(&mut dd[0..2], max_scale / 15.0);
    } else {
        sc.fill(0);
        put_f16(&mut dd[0..2], 0.0);
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (b, &m) in sc.iter_mut().zip(&mins) {
            *b |= (nearest_int(iscale * m) << 4) as u8;
        }
        put_f16(&mut dd[2..4], max_min / 15.0);
    } else {
        put_f16(&mut dd[2..4], 0.0);
    }
    let d_all = f16_at(dd, 0);
    let m_all = f16_at(dd, 2);
    for (j, &s) in sc.iter().enumerate() {
        let d = d_all * (s & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * (s >> 4) as f32;
        for ii in 0..16 {
            levels[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3);
        }
    }
    pack_2bit(&levels, qs);
}

pub(super) fn dequantize_q2k(b: &[u8], y: &mut [f32]) {
    let (sc, rest) = b.split_at(16);
    let (qs, dd) = rest.split_at(64);
    let d = f16_at(dd, 0);
    let min = f16_at(dd, 2);
    for h in 0..2 {
        for j in 0..4 {
            for half in 0..2 {
                let s = sc[8 * h + 2 * j + half];
                let dl = d * (s & 0xF) as f32;
                let ml = min * (s >> 4) as f32;
                let out = &mut y[128 * h + 32 * j + 16 * half..][..16];
                let q = &qs[32 * h + 16 * half..][..16];
                for (o, &q) in out.iter_mut().zip(q) {
                    *o = dl * ((q >> (2 * j)) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// The largest group scale and the largest group minimum (both non-negative).
fn max_scale_min(scales: &[f32], mins: &[f32]) -> (f32, f32) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (&s, &m) in scales.iter().zip(mins) {
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    (max_scale, max_min)
}

// ---------------------------------------------------------------------------------- Q3_K

/// The 6-bit scale of group `j` (of 16) from Q3_K's 12 packed scale bytes, minus 32.
fn q3k_scale(sb: &[u8], j: usize) -> i8 {
    let low = if j < 8 { sb[j] & 0xF } else { sb[j - 8] >> 4 };
    let high = (sb[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// One Q3_K block: `hmask[32]`, `qs[64]`, `scales[12]` (16 x 6 bits), `d`.
pub(super) fn quantize_q3k(x: &[f32], y: &mut [u8]) {
    let xs = groups_of_16(x);
    let mut lv = [[0i32; 16]; 16];
    let mut scales = [0.0f32; 16];
    search::q3(&xs, 4, &mut lv, &mut scales);
    let mut levels = [0i32; QK_K];
    flatten(&lv, &mut levels);

    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for &s in &scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sb, d_bytes) = rest.split_at_mut(12);
    sb.fill(0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            let l = i32::from(nearest_int(iscale * s) as i8).clamp(-32, 31) + 32;
            if j < 8 {
                sb[j] = (l & 0xF) as u8;
            } else {
                sb[j - 8] |= ((l & 0xF) << 4) as u8;
            }
            sb[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
        }
        put_f16(d_bytes, 1.0 / iscale);
    } else {
        put_f16(d_bytes, 0.0);
    }
    let d_all = f16_at(d_bytes, 0);
    for j in 0..16 {
        let d = d_all * f32::from(q3k_scale(sb, j));
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            levels[16 * j + ii] = nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4;
        }
    }
    // The high bit of value j goes to bit j / 32 of hmask[j % 32].
    hmask.fill(0);
    for (j, l) in levels.iter_mut().enumerate() {
        if *l > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *l -= 4;
        }
    }
    pack_2bit(&levels, qs);
}

pub(super) fn dequantize_q3k(b: &[u8], y: &mut [f32]) {
    let (hmask, rest) = b.split_at(32);
    let (qs, rest) = rest.split_at(64);
    let (sb, d_bytes) = rest.split_at(12);
    let d_all = f16_at(d_bytes, 0);
    for h in 0..2 {
        for j in 0..4 {
            let bit = 4 * h + j;
            for half in 0..2 {
                let dl = d_all * f32::from(q3k_scale(sb, 8 * h + 2 * j + half));
                let base = 16 * half;
                for l in 0..16 {
                    let low = ((qs[32 * h + base + l] >> (2 * j)) & 3) as i8;
                    let sub = if hmask[base + l] & (1 << bit) != 0 {
                        0
                    } else {
                        4
                    };
                    y[128 * h + 32 * j + base + l] = dl * f32::from(low - sub);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------- Q4_K and Q5_K

/// Pack 8 six-bit scales and 8 six-bit minimums into 12 bytes (`get_scale_min_k4` layout).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], sb: &mut [u8]) {
    for j in 0..8 {
        if j < 4 {
            sb[j] = ls[j];
            sb[j + 4] = lm[j];
        } else {
            sb[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            sb[j - 4] |= (ls[j] >> 4) << 6;
            sb[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Scale and minimum of group `j` (of 8) from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The shared part of Q4_K and Q5_K: search 8 groups of 32 with levels `0..=nmax`, quantize
/// scales and minimums to 6 bits, write `d`, `dmin` and the 12 scale bytes into `head`
/// (16 bytes), and return every value's final level.
fn quantize_k4_head(x: &[f32], nmax: i32, p: &Qkx2, head: &mut [u8]) -> [i32; QK_K] {
    let xs = groups_of_32(x);
    let mut w = [[0.0f32; 8]; 32];
    let mut sum_x2 = [0.0f32; 8];
    for row in &xs {
        for g in 0..8 {
            sum_x2[g] += row[g] * row[g];
        }
    }
    for g in 0..8 {
        let av_x = (sum_x2[g] / 32.0).sqrt();
        for i in 0..32 {
            w[i][g] = av_x + xs[i][g].abs();
        }
    }
    let mut lv = [[0i32; 8]; 32];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    search::qkx2(&xs, &w, p, &mut lv, &mut scales, &mut mins);
    let mut levels = [0i32; QK_K];
    flatten(&lv, &mut levels);

    let (max_scale, max_min) = max_scale_min(&scales, &mins);
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    put_f16(&mut head[0..2], max_scale / 63.0);
    put_f16(&mut head[2..4], max_min / 63.0);
    let sb = &mut head[4..16];
    sb.fill(0);
    pack_scale_min_k4(&ls, &lm, sb);

    let d_all = f16_at(head, 0);
    let m_all = f16_at(head, 2);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &head[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * m as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax);
        }
    }
    levels
}

/// One Q4_K block: `d`, `dmin`, `scales[12]`, `qs[128]`.
pub(super) fn quantize_q4k(x: &[f32], y: &mut [u8]) {
    let p = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let (head, qs) = y.split_at_mut(16);
    let levels = quantize_k4_head(x, 15, &p, head);
    for c in 0..4 {
        for l in 0..32 {
            qs[32 * c + l] = (levels[64 * c + l] | (levels[64 * c + l + 32] << 4)) as u8;
        }
    }
}

pub(super) fn dequantize_q4k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let sb = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, sb);
        let (sc2, m2) = scale_min_k4(2 * c + 1, sb);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = y[64 * c..64 * c + 64].split_at_mut(32);
        for ((o, &q), p) in lo.iter_mut().zip(q).zip(hi.iter_mut()) {
            *o = d1 * (q & 0xF) as f32 - m1;
            *p = d2 * (q >> 4) as f32 - m2;
        }
    }
}

/// One Q5_K block: `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`.
pub(super) fn quantize_q5k(x: &[f32], y: &mut [u8]) {
    let p = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let (head, rest) = y.split_at_mut(16);
    let levels = quantize_k4_head(x, 31, &p, head);
    let (qh, ql) = rest.split_at_mut(32);
    qh.fill(0);
    for c in 0..4 {
        let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for j in 0..32 {
            let mut l1 = levels[64 * c + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = levels[64 * c + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * c + j] = (l1 | (l2 << 4)) as u8;
        }
    }
}

pub(super) fn dequantize_q5k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let sb = &b[4..16];
    let qh = &b[16..48];
    let ql = &b[48..176];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, sb);
        let (sc2, m2) = scale_min_k4(2 * c + 1, sb);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let q = &ql[32 * c..32 * c + 32];
        let (lo, hi) = y[64 * c..64 * c + 64].split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
            hi[l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

// ---------------------------------------------------------------------------------- Q6_K

/// One Q6_K block: `ql[128]`, `qh[64]`, `scales[16]` (i8), `d`.
pub(super) fn quantize_q6k(x: &[f32], y: &mut [u8]) {
    let xs = groups_of_16(x);
    let mut lv = [[0i32; 16]; 16];
    let mut scales = [0.0f32; 16];
    search::qx(&xs, 32, &mut lv, &mut scales);
    let mut levels = [0i32; QK_K];
    flatten(&lv, &mut levels);

    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &s in &scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y[..Q6K_BYTES].fill(0);
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
        for l in 0..32 {
            let (a, b, c, e) = (l0[l], l0[l + 32], l0[l + 64], l0[l + 96]);
            ql[64 * h + l] = ((a & 0xF) | ((c & 0xF) << 4)) as u8;
            ql[64 * h + l + 32] = ((b & 0xF) | ((e & 0xF) << 4)) as u8;
            qh[32 * h + l] = ((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)) as u8;
        }
    }
}

pub(super) fn dequantize_q6k(b: &[u8], y: &mut [f32]) {
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (sc, d_bytes) = rest.split_at(16);
    let d = f16_at(d_bytes, 0);
    for h in 0..2 {
        let ql = &ql[64 * h..];
        let qh = &qh[32 * h..];
        let sc = &sc[8 * h..];
        let y = &mut y[128 * h..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
    }
}
