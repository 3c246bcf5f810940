//! The legacy 32-value block formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, quantized as ggml's
//! reference quantizers (`quantize_row_q*_ref`) do and dequantized with ggml's arithmetic.
//!
//! These have no search: the scale comes straight from the block's extreme values, so the
//! result is fixed by the operations themselves (scale in `f32`, stored as `f16`, values
//! multiplied by the `f32` inverse scale and truncated after adding an offset). The
//! extremes are found with ggml's sequential comparisons, so ties and signed zeros resolve
//! as ggml resolves them. Byte layouts are ggml's `block_q*` structs, little-endian.

use super::{f16_at, put_f16};

pub(super) const QK: usize = 32;
pub(super) const Q4_0_BYTES: usize = 18;
pub(super) const Q4_1_BYTES: usize = 20;
pub(super) const Q5_0_BYTES: usize = 22;
pub(super) const Q5_1_BYTES: usize = 24;
pub(super) const Q8_0_BYTES: usize = 34;

/// The value of largest magnitude (the first, on ties; 0.0 for an all-zero block).
fn signed_max(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Smallest and largest value, compared in order as ggml does.
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Pack 32 four-bit levels: byte `j` holds value `j` (low nibble) and `j + 16` (high).
fn pack_nibbles(levels: &[u8; QK], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = levels[j] | (levels[j + 16] << 4);
    }
}

/// Pack 32 five-bit levels: low nibbles as [`pack_nibbles`], fifth bits into a `u32`
/// (bit `j` for value `j`) stored little-endian.
fn pack_fifth_bits(levels: &[u8; QK], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for j in 0..16 {
        qs[j] = (levels[j] & 0xF) | ((levels[j + 16] & 0xF) << 4);
        h |= u32::from((levels[j] & 0x10) >> 4) << j;
        h |= u32::from((levels[j + 16] & 0x10) >> 4) << (j + 16);
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

/// Q4_0: `d` (f16), `qs[16]`; value = (q - 8) * d.
pub(super) fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    let d = signed_max(x) / -8.0;
    let id = inverse(d);
    put_f16(&mut y[0..2], d);
    let mut levels = [0u8; QK];
    for (l, &v) in levels.iter_mut().zip(x) {
        // ggml truncates through an int8_t; the sum is within 0.5..=16.5 for finite input.
        *l = ((v * id + 8.5) as i8).min(15) as u8;
    }
    pack_nibbles(&levels, &mut y[2..18]);
}

pub(super) fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for ((o, p), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
        *o = ((q & 0xF) as i32 - 8) as f32 * d;
        *p = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: `d`, `m` (f16), `qs[16]`; value = q * d + m.
pub(super) fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    let mut levels = [0u8; QK];
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = (((v - min) * id + 0.5) as i8).min(15) as u8;
    }
    pack_nibbles(&levels, &mut y[4..20]);
}

pub(super) fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let (lo, hi) = y.split_at_mut(16);
    for ((o, p), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
        *o = (q & 0xF) as f32 * d + m;
        *p = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0: `d`, `qh[4]`, `qs[16]`; value = (q - 16) * d.
pub(super) fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    let d = signed_max(x) / -16.0;
    let id = inverse(d);
    put_f16(&mut y[0..2], d);
    let mut levels = [0u8; QK];
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = ((v * id + 16.5) as i8).min(31) as u8;
    }
    let (qh, qs) = y[2..22].split_at_mut(4);
    pack_fifth_bits(&levels, qh, qs);
}

fn fifth_bits(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = fifth_bits(&b[2..6]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as i32;
        let h1 = ((qh >> (j + 12)) & 0x10) as i32;
        y[j] = (((qs[j] & 0xF) as i32 | h0) - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as i32 | h1) - 16) as f32 * d;
    }
}

/// Q5_1: `d`, `m`, `qh[4]`, `qs[16]`; value = q * d + m.
pub(super) fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    let mut levels = [0u8; QK];
    for (l, &v) in levels.iter_mut().zip(x) {
        // ggml converts straight to uint8_t without a clamp; within 0.5..=31.5 for finite input.
        *l = ((v - min) * id + 0.5) as u8;
    }
    let (qh, qs) = y[4..24].split_at_mut(4);
    pack_fifth_bits(&levels, qh, qs);
}

pub(super) fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = fifth_bits(&b[4..8]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as i32;
        let h1 = ((qh >> (j + 12)) & 0x10) as i32;
        y[j] = ((qs[j] & 0xF) as i32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as i32 | h1) as f32 * d + m;
    }
}

/// Round half away from zero (C's `roundf`) for |v| < 2^31, without a libm call so that the
/// loop vectorises: truncate, then step away from zero when the dropped part is >= 0.5.
#[inline(always)]
fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// Q8_0: `d`, `qs[32]` (i8); value = q * d.
pub(super) fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(&mut y[0..2], d);
    for (q, &v) in y[2..34].iter_mut().zip(x) {
        *q = round_half_away(v * id) as i8 as u8;
    }
}

pub(super) fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_away_matches_std_round() {
        for i in -4000..4000 {
            for v in [
                i as f32 * 0.25,
                i as f32 * 0.0317,
                (i as f32 * 0.5).next_up(),
            ] {
                assert_eq!(round_half_away(v), v.round() as i32, "{v}");
            }
        }
    }

    #[test]
    fn extremes_follow_ggml_ties() {
        // The first value of largest magnitude wins, whatever its sign.
        assert_eq!(signed_max(&[1.0, -2.0, 2.0]), -2.0);
        assert_eq!(signed_max(&[0.0, -0.0]).to_bits(), 0.0f32.to_bits());
        let (min, max) = min_max(&[0.0, -0.0, 1.0]);
        assert_eq!((min.to_bits(), max), (0.0f32.to_bits(), 1.0));
    }
}
