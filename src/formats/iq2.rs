//! Decoding ggml's 2-bit lattice types IQ2_XXS, IQ2_XS and IQ2_S: 256 values per block, in
//! groups of 8 that are each one point of an 8-dimensional grid (`super::iq_grids`) with a
//! sign per value. Block layouts are facts of the GGUF format (ggml's `block_iq2_xxs`,
//! `block_iq2_xs`, `block_iq2_s`).
//!
//! The arithmetic is ggml's `dequantize_row_iq2_*`: the f16 block scale `d` widened to
//! f32, a 4-bit group scale `s` giving `d * (0.5 + s) * 0.25`, times the grid byte, negated
//! where the sign bit is set; so the values are ggml's bit for bit. IQ2_XXS and IQ2_XS
//! store 7 sign bits per 8 values and take the eighth from the parity table
//! `KSIGNS_IQ2XS`; IQ2_S stores all 8.
//!
//! Each function decodes one whole block (callers in `super::blocks` check the sizes).

use half::f16;

use super::iq_grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};

/// Bytes of one IQ2_XXS block: f16 `d`, 32 u16 `qs`.
pub const IQ2_XXS_BYTES: usize = 66;
/// Bytes of one IQ2_XS block: f16 `d`, 32 u16 `qs`, 8 bytes of scales.
pub const IQ2_XS_BYTES: usize = 74;
/// Bytes of one IQ2_S block: f16 `d`, 32 index bytes, 32 sign bytes, 8 bytes `qh`, 8
/// bytes of scales.
pub const IQ2_S_BYTES: usize = 82;

/// The little-endian IEEE half at `at`, as `f32` (exact).
#[inline(always)]
fn f16_at(src: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([src[at], src[at + 1]])).to_f32()
}

/// Eight values: grid point `point` times `scale`, negated where `signs` has a bit.
#[inline(always)]
fn put8(y: &mut [f32], scale: f32, point: u64, signs: u8) {
    for (j, (o, g)) in y.iter_mut().zip(point.to_le_bytes()).enumerate() {
        let v = scale * f32::from(g);
        *o = if signs & KMASK_IQ2XS[j] != 0 { -v } else { v };
    }
}

/// A group scale, as ggml computes it: `d * (0.5 + s) * 0.25`.
#[inline(always)]
fn group_scale(d: f32, s: u8) -> f32 {
    d * (0.5 + f32::from(s)) * 0.25
}

/// IQ2_XXS: for each 32 values, two u32 words; the first holds four 8-bit grid indices,
/// the second four 7-bit sign indices (bits 0..28) and the 4-bit scale (bits 28..32).
pub fn iq2_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..8 {
        let at = 2 + 8 * ib;
        let grid = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let aux = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]);
        let db = group_scale(d, (aux >> 28) as u8);
        for l in 0..4 {
            let point = IQ2XXS_GRID[((grid >> (8 * l)) & 0xff) as usize];
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let o = 32 * ib + 8 * l;
            put8(&mut y[o..o + 8], db, point, signs);
        }
    }
}

/// IQ2_XS: each 8 values a u16, 9 bits of grid index and 7 bits of sign index; two 4-bit
/// scales per 32 values (low nibble for the first 16).
pub fn iq2_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (ib, &sc) in b[66..74].iter().enumerate() {
        let db = [group_scale(d, sc & 0xf), group_scale(d, sc >> 4)];
        for l in 0..4 {
            let at = 2 + 2 * (4 * ib + l);
            let q = u16::from_le_bytes([b[at], b[at + 1]]);
            let point = IQ2XS_GRID[usize::from(q & 511)];
            let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
            let o = 32 * ib + 8 * l;
            put8(&mut y[o..o + 8], db[l / 2], point, signs);
        }
    }
}

/// IQ2_S: each 8 values a 10-bit grid index (8 bits in `qs`, 2 in `qh`) and a full sign
/// byte; two 4-bit scales per 32 values.
pub fn iq2_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    let signs = &b[34..66];
    let qh = &b[66..74];
    let scales = &b[74..82];
    for ib in 0..8 {
        let db = [
            group_scale(d, scales[ib] & 0xf),
            group_scale(d, scales[ib] >> 4),
        ];
        for l in 0..4 {
            let high = (usize::from(qh[ib]) << (8 - 2 * l)) & 0x300;
            let point = IQ2S_GRID[usize::from(qs[4 * ib + l]) | high];
            let o = 32 * ib + 8 * l;
            put8(&mut y[o..o + 8], db[l / 2], point, signs[4 * ib + l]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn iq2_xxs_decodes_grid_signs_and_scale() {
        // d = 1, first group: grid points 1, 0, 0, 0; sign index 1 for the first 8 values
        // (ksigns 0x81: values 0 and 7 negative); scale nibble 3 -> (0.5 + 3) / 4 = 0.875.
        let mut b = [0u8; IQ2_XXS_BYTES];
        b[..2].copy_from_slice(&half(1.0));
        b[2] = 1;
        b[6..10].copy_from_slice(&(1u32 | (3 << 28)).to_le_bytes());
        let mut y = [0f32; 256];
        iq2_xxs(&b, &mut y);
        assert_eq!(y[0], -0.875 * 43.0);
        assert_eq!(y[1], 0.875 * 8.0);
        assert_eq!(y[7], -0.875 * 8.0);
        assert_eq!(y[8], 0.875 * 8.0);
        // The other groups have scale nibble 0: 0.125 * 8.
        assert_eq!(y[32], 0.125 * 8.0);
    }

    #[test]
    fn iq2_s_takes_high_index_bits_from_qh() {
        // Group 0 of block 0: qs = 0, qh bits 0..2 = 3 -> index 768; scale nibble 0.
        let mut b = [0u8; IQ2_S_BYTES];
        b[..2].copy_from_slice(&half(4.0));
        b[66] = 3;
        b[34] = 0xff;
        let mut y = [0f32; 256];
        iq2_s(&b, &mut y);
        let want = IQ2S_GRID[768].to_le_bytes();
        for j in 0..8 {
            assert_eq!(y[j], -0.5 * f32::from(want[j]));
        }
    }
}
