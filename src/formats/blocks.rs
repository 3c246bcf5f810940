//! Decoding ggml block types that candle cannot read: the non-linear 4-bit IQ4_NL and
//! IQ4_XS, the ternary TQ1_0 and TQ2_0, MXFP4 (through `super::mxfp4`) and the IQ2 lattice
//! types (through `super::iq2`). Block layouts are facts of the GGUF format
//! (ggml's `block_iq4_nl`, `block_iq4_xs`, `block_tq1_0`, `block_tq2_0`), so their decoding
//! lives here, beside the reader, and serves both the engine (which multiplies with the
//! values) and the conversion stage (which requantizes from them).
//!
//! The arithmetic is ggml's `dequantize_row_*`: one f16 scale widened to f32, times a small
//! integer (a table entry for IQ4, -1/0/1 for the ternary types), so the values are ggml's
//! bit for bit (and gguf-py's, which `tests/it/quant.rs` checks on random blocks).
//!
//! Input is treated as hostile: a byte count that is not whole blocks, or an output of the
//! wrong size, is an error, never a panic.

use half::f16;

use super::GgmlType;

/// The 16 IQ4 levels (ggml's `kvalues_iq4nl`): a 4-bit index selects one, the block scale
/// multiplies it.
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Why block bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("{ty} has no block decoder here")]
    Unsupported { ty: GgmlType },
    #[error("{len} bytes are not whole {ty} blocks of {block_bytes} bytes")]
    PartialBlock {
        ty: GgmlType,
        len: usize,
        block_bytes: usize,
    },
    #[error("{ty} bytes hold {values} values, but the output has room for {have}")]
    OutputSize {
        ty: GgmlType,
        values: usize,
        have: usize,
    },
}

/// Decoder of one block: its bytes, then its values.
type BlockFn = fn(&[u8], &mut [f32]);

/// (values per block, bytes per block, decoder) for the types decoded here.
fn decoder(ty: GgmlType) -> Option<(usize, usize, BlockFn)> {
    Some(match ty {
        GgmlType::IQ4NL => (32, 18, iq4_nl as BlockFn),
        GgmlType::IQ4XS => (256, 136, iq4_xs),
        GgmlType::TQ1_0 => (256, 54, tq1_0),
        GgmlType::TQ2_0 => (256, 66, tq2_0),
        GgmlType::MXFP4 => (32, 17, mxfp4),
        GgmlType::IQ2XXS => (256, super::iq2::IQ2_XXS_BYTES, super::iq2::iq2_xxs),
        GgmlType::IQ2XS => (256, super::iq2::IQ2_XS_BYTES, super::iq2::iq2_xs),
        GgmlType::IQ2S => (256, super::iq2::IQ2_S_BYTES, super::iq2::iq2_s),
        GgmlType::IQ3XXS => (256, 98, super::iq3::iq3_xxs),
        GgmlType::IQ3S => (256, 110, super::iq3::iq3_s),
        _ => return None,
    })
}

/// Whether [`dequantize`] decodes `ty`.
pub fn supported(ty: GgmlType) -> bool {
    decoder(ty).is_some()
}

/// Decode `bytes` of type `ty` into `out`, which must hold exactly the values they encode.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), BlockError> {
    let (block, block_bytes, f) = decoder(ty).ok_or(BlockError::Unsupported { ty })?;
    if !bytes.len().is_multiple_of(block_bytes) {
        return Err(BlockError::PartialBlock {
            ty,
            len: bytes.len(),
            block_bytes,
        });
    }
    let values = bytes.len() / block_bytes * block;
    if out.len() != values {
        return Err(BlockError::OutputSize {
            ty,
            values,
            have: out.len(),
        });
    }
    for (b, y) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block))
    {
        f(b, y);
    }
    Ok(())
}

/// MXFP4, 17 bytes: one E8M0 scale, 16 bytes of E2M1 nibbles (`super::mxfp4` has the
/// layout). Called with one whole block, so its length check cannot fail.
pub fn mxfp4(b: &[u8], y: &mut [f32]) {
    let _ = super::mxfp4::dequantize(b, y);
}

/// The little-endian IEEE half at `at`, as `f32` (exact).
#[inline(always)]
fn f16_at(src: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([src[at], src[at + 1]])).to_f32()
}

/// IQ4_NL, 18 bytes: f16 `d`, 16 bytes of nibbles (value `j` low, value `j + 16` high).
pub fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * f32::from(IQ4NL_VALUES[(qs[j] & 0xF) as usize]);
        y[j + 16] = d * f32::from(IQ4NL_VALUES[(qs[j] >> 4) as usize]);
    }
}

/// IQ4_XS, 136 bytes: f16 `d`, u16 `scales_h` (2 high bits per 32-value block), 4 bytes
/// `scales_l` (4 low bits each), 128 bytes of nibbles; a block's scale is `d * (ls - 32)`.
pub fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]);
    let sl = &b[4..8];
    let qs = &b[8..136];
    for ib in 0..8 {
        let ls = i32::from((sl[ib / 2] >> (4 * (ib % 2))) & 0xF)
            | ((i32::from(sh >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let q = &qs[16 * ib..16 * ib + 16];
        let out = &mut y[32 * ib..32 * ib + 32];
        for j in 0..16 {
            out[j] = dl * f32::from(IQ4NL_VALUES[(q[j] & 0xF) as usize]);
            out[j + 16] = dl * f32::from(IQ4NL_VALUES[(q[j] >> 4) as usize]);
        }
    }
}

/// TQ1_0, 54 bytes: `qs[48]` (five base-3 digits per byte, stored as a fraction of 256),
/// `qh[4]` (four digits each), f16 `d`; a digit `t` decodes to `(t - 1) * d`.
pub fn tq1_0(b: &[u8], y: &mut [f32]) {
    const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];
    let d = f16_at(b, 52);
    let trit = |byte: u8, n: usize| {
        let q = byte.wrapping_mul(POW3[n]);
        ((u16::from(q) * 3) >> 8) as i16 - 1
    };
    // Value order: digit n of every byte of a run, then digit n + 1 (runs of 32, 16, 4 bytes).
    let mut out = y.iter_mut();
    for (bytes, trits) in [(&b[0..32], 5), (&b[32..48], 5), (&b[48..52], 4)] {
        for n in 0..trits {
            for (&byte, o) in bytes.iter().zip(out.by_ref()) {
                *o = f32::from(trit(byte, n)) * d;
            }
        }
    }
}

/// TQ2_0, 66 bytes: `qs[64]` (2 bits per value, 0..=2 meaning -1..=1), f16 `d`.
pub fn tq2_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 64);
    for j in 0..2 {
        for l in 0..4 {
            for m in 0..32 {
                let q = ((b[32 * j + m] >> (2 * l)) & 3) as i8;
                y[128 * j + 32 * l + m] = f32::from(q - 1) * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        let mut out = vec![0f32; 32];
        assert!(dequantize(GgmlType::IQ4NL, &[0u8; 18], &mut out).is_ok());
        assert_eq!(
            dequantize(GgmlType::IQ4NL, &[0u8; 17], &mut out),
            Err(BlockError::PartialBlock {
                ty: GgmlType::IQ4NL,
                len: 17,
                block_bytes: 18
            })
        );
        assert!(dequantize(GgmlType::IQ4XS, &[0u8; 136], &mut out).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out).is_err());
        for t in [
            GgmlType::IQ4NL,
            GgmlType::IQ4XS,
            GgmlType::TQ1_0,
            GgmlType::TQ2_0,
            GgmlType::IQ2XXS,
            GgmlType::IQ2XS,
            GgmlType::IQ2S,
        ] {
            let (b, s, _) = decoder(t).unwrap();
            assert_eq!(t.block(), Some((b as u64, s as u64)));
        }
    }

    #[test]
    fn ternary_digits_decode() {
        // TQ2_0 with d = 1: code 0 -> -1, 1 -> 0, 2 -> 1.
        let mut b = [0u8; 66];
        b[0] = 0b10_01_00_10;
        b[64..66].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        let mut y = [0f32; 256];
        tq2_0(&b, &mut y);
        assert_eq!((y[0], y[32], y[64], y[96]), (1.0, -1.0, 0.0, 1.0));
    }
}
