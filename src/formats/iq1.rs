//! Decoding ggml's 1-bit lattice types IQ1_S (1.5625 bits per weight) and IQ1_M (1.75).
//!
//! Both store groups of eight values as an 11-bit index into `iq_grids::IQ1S_GRID` (2048
//! points with coordinates -1, 0, 1), shifted by plus or minus `IQ1_DELTA` and multiplied
//! by a group scale. IQ1_S has an f16 super-scale and, per 32 values, a 3-bit scale and
//! one shift sign; IQ1_M has a 3-bit scale per 16 values and one shift sign per 8, and
//! spreads its f16 super-scale over the top nibbles of its four scale words.
//!
//! The arithmetic is ggml's `dequantize_row_iq1_s` / `dequantize_row_iq1_m`, operation for
//! operation in `f32`, so the values are ggml's bit for bit (and gguf-py's, which
//! `tests/it/quant.rs` checks on random blocks). Callers hand over one whole block
//! (`blocks::dequantize` checks sizes); every index read is masked into its table.

// The loops index several arrays in step, as ggml's do, so the order of every sum stays ggml's.
#![allow(clippy::needless_range_loop)]

use super::iq_grids::IQ1S_GRID;

/// Bytes of one IQ1_S block: f16 `d`, `qs[32]`, `qh[8]` (`u16`).
pub const IQ1_S_BYTES: usize = 50;
/// Bytes of one IQ1_M block: `qs[32]`, `qh[16]`, `scales[8]`.
pub const IQ1_M_BYTES: usize = 56;
/// The shift added to every grid coordinate, with the sign the block stores
/// (`IQ1S_DELTA`, equal to `IQ1M_DELTA`).
pub const IQ1_DELTA: f32 = 0.125;

/// Coordinate `j` of grid point `i`, as a signed value.
#[inline(always)]
fn coord(i: usize, j: usize) -> f32 {
    f32::from((IQ1S_GRID[i] >> (8 * j)) as u8 as i8)
}

/// Write 8 values `dl * (grid + delta)` of grid point `i`.
#[inline(always)]
fn eight(y: &mut [f32], dl: f32, i: usize, delta: f32) {
    for (j, v) in y.iter_mut().enumerate().take(8) {
        *v = dl * (coord(i, j) + delta);
    }
}

/// IQ1_S, 50 bytes: f16 `d`, `qs[32]` (low 8 bits of each grid index), `qh[8]` (`u16` per
/// 32 values: bits 0..12 the high 3 bits of its four indices, 12..15 the scale `s`, bit 15
/// the shift's sign); the group's scale is `d * (2 s + 1)`.
pub fn iq1_s(b: &[u8], y: &mut [f32]) {
    let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    let qs = &b[2..34];
    for ib in 0..8 {
        let qh = u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1_DELTA
        } else {
            IQ1_DELTA
        };
        for l in 0..4 {
            let i = usize::from(qs[4 * ib + l]) | (usize::from((qh >> (3 * l)) & 7) << 8);
            let at = 32 * ib + 8 * l;
            eight(&mut y[at..at + 8], dl, i, delta);
        }
    }
}

/// IQ1_M, 56 bytes: `qs[32]` (low 8 bits of each grid index), `qh[16]` (per 16 values:
/// for each of its two groups of 8, 3 high index bits and the shift's sign bit), `scales[8]`
/// (four `u16`: 3-bit scales per 16 values in bits 0..12, the f16 super-scale `d` in bits
/// 12..16 of the four words); a 16-value scale `s` gives `d * (2 s + 1)`.
pub fn iq1_m(b: &[u8], y: &mut [f32]) {
    let qs = &b[0..32];
    let qh = &b[32..48];
    let sc: [u16; 4] = std::array::from_fn(|i| u16::from_le_bytes([b[48 + 2 * i], b[49 + 2 * i]]));
    let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    let d = half::f16::from_bits(bits).to_f32();
    let sign = |bit: bool| if bit { -IQ1_DELTA } else { IQ1_DELTA };
    for ib in 0..8 {
        let s = sc[ib / 2] >> (6 * (ib % 2));
        let dl1 = d * (2 * (s & 7) + 1) as f32;
        let dl2 = d * (2 * ((s >> 3) & 7) + 1) as f32;
        let (h0, h1) = (u16::from(qh[2 * ib]), u16::from(qh[2 * ib + 1]));
        let q = |l: usize| u16::from(qs[4 * ib + l]);
        let idx = [
            q(0) | ((h0 << 8) & 0x700),
            q(1) | ((h0 << 4) & 0x700),
            q(2) | ((h1 << 8) & 0x700),
            q(3) | ((h1 << 4) & 0x700),
        ];
        let delta = [
            sign(h0 & 0x08 != 0),
            sign(h0 & 0x80 != 0),
            sign(h1 & 0x08 != 0),
            sign(h1 & 0x80 != 0),
        ];
        for l in 0..4 {
            let dl = if l < 2 { dl1 } else { dl2 };
            let at = 32 * ib + 8 * l;
            eight(&mut y[at..at + 8], dl, usize::from(idx[l]), delta[l]);
        }
    }
}
