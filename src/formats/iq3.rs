//! Decoding ggml's 3-bit lattice types IQ3_XXS (3.0625 bits per weight) and IQ3_S (3.4375).
//!
//! Both cut a 256-value super-block into groups of four values, each stored as an index
//! into a grid of 4-value points (`iq_grids::IQ3XXS_GRID`, 256 points of levels 4..62;
//! `iq_grids::IQ3S_GRID`, 512 points of odd levels 1..15), with one sign bit per value and a
//! 4-bit scale per 32 values times an f16 super-scale. IQ3_XXS stores 7 sign bits per 8
//! values (the eighth makes the count of minus signs even, looked up in `KSIGNS_IQ2XS`);
//! IQ3_S stores all 8 and a ninth index bit per point.
//!
//! The arithmetic is ggml's `dequantize_row_iq3_xxs` / `dequantize_row_iq3_s`, operation
//! for operation in `f32`, so the values are ggml's bit for bit (and gguf-py's, which
//! `tests/it/quant.rs` checks on random blocks). Callers hand over one whole block
//! (`blocks::dequantize` checks sizes); every index read is masked into its table.

use super::iq_grids::{IQ3S_GRID, IQ3XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};

/// Bytes of one IQ3_XXS block: f16 `d`, 64 grid indices, 8 `u32` of scale and signs.
pub const IQ3_XXS_BYTES: usize = 98;
/// Bytes of one IQ3_S block: f16 `d`, `qs[64]`, `qh[8]`, `signs[32]`, `scales[4]`.
pub const IQ3_S_BYTES: usize = 110;

/// The little-endian IEEE half at `at`, as `f32` (exact).
#[inline(always)]
fn f16_at(src: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([src[at], src[at + 1]])).to_f32()
}

/// Byte `j` of a 4-value grid point.
#[inline(always)]
fn point(p: u32, j: usize) -> f32 {
    f32::from((p >> (8 * j)) as u8)
}

/// Write 8 values `db * grid * sign` for two grid points and a sign byte.
#[inline(always)]
fn eight(y: &mut [f32], db: f32, p1: u32, p2: u32, signs: u8) {
    for j in 0..4 {
        let s1 = if signs & KMASK_IQ2XS[j] != 0 {
            -1.0
        } else {
            1.0
        };
        let s2 = if signs & KMASK_IQ2XS[j + 4] != 0 {
            -1.0
        } else {
            1.0
        };
        y[j] = db * point(p1, j) * s1;
        y[j + 4] = db * point(p2, j) * s2;
    }
}

/// IQ3_XXS, 98 bytes: f16 `d`, `qs[64]` (one grid index per 4 values), then per 32 values
/// a `u32` holding four 7-bit sign codes (bits 0..28) and a 4-bit scale (bits 28..32); the
/// group's scale is `d * (0.5 + s) * 0.5`.
pub fn iq3_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    let ss = &b[66..98];
    for ib in 0..8 {
        let aux = u32::from_le_bytes([ss[4 * ib], ss[4 * ib + 1], ss[4 * ib + 2], ss[4 * ib + 3]]);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let p1 = IQ3XXS_GRID[usize::from(qs[8 * ib + 2 * l])];
            let p2 = IQ3XXS_GRID[usize::from(qs[8 * ib + 2 * l + 1])];
            let at = 32 * ib + 8 * l;
            eight(&mut y[at..at + 8], db, p1, p2, signs);
        }
    }
}

/// IQ3_S, 110 bytes: f16 `d`, `qs[64]` (low 8 bits of each 9-bit grid index), `qh[8]`
/// (the ninth bits, one byte per 32 values), `signs[32]` (one bit per value), `scales[4]`
/// (two 4-bit scales per byte); the group's scale is `d * (1 + 2 s)`.
pub fn iq3_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    let qh = &b[66..74];
    let signs = &b[74..106];
    let scales = &b[106..110];
    for ib in 0..8 {
        let s = (scales[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let db = d * (1 + 2 * i32::from(s)) as f32;
        let h = u16::from(qh[ib]);
        for l in 0..4 {
            let i1 = usize::from(qs[8 * ib + 2 * l]) | usize::from((h << (8 - 2 * l)) & 256);
            let i2 = usize::from(qs[8 * ib + 2 * l + 1]) | usize::from((h << (7 - 2 * l)) & 256);
            let at = 32 * ib + 8 * l;
            eight(
                &mut y[at..at + 8],
                db,
                IQ3S_GRID[i1],
                IQ3S_GRID[i2],
                signs[4 * ib + l],
            );
        }
    }
}
