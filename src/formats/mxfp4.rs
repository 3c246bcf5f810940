//! Reading ggml's MXFP4 blocks (gpt-oss experts in GGUF, type 39): 32 values per 17-byte
//! block, an E8M0 scale byte then 16 bytes whose byte `j` holds value `j` in its low nibble
//! and value `j + 16` in its high nibble, each nibble an E2M1 code (docs/moe.md).
//!
//! The values are ggml's: the E2M1 levels doubled as small integers times half the
//! power-of-two scale (`2^(e - 128)`, with bytes 0 and 1 as subnormal floats), which gives
//! the OCP reading `level * 2^(e - 127)` exactly and keeps byte 255 finite (2^127 per unit)
//! as ggml does. The bytes are input from a checkpoint, so every length is checked.

/// Values per block.
pub const BLOCK_VALUES: usize = 32;
/// Bytes per block: the scale and 16 bytes of codes.
pub const BLOCK_BYTES: usize = 17;

/// E2M1 levels doubled (ggml's `kvalues_mxfp4`), by 4-bit code; code 8 is a second zero.
const LEVELS: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the scale an E8M0 byte stands for, `2^(e - 128)`, built from its bits as ggml does.
pub fn half_scale(e: u8) -> f32 {
    let bits: u32 = if e < 2 {
        // 2^-128 and 2^-127 are subnormal: a single mantissa bit
        0x0020_0000 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// Bytes of `values` MXFP4 values, `None` unless they are whole blocks.
pub fn bytes_for(values: usize) -> Option<usize> {
    if !values.is_multiple_of(BLOCK_VALUES) {
        return None;
    }
    (values / BLOCK_VALUES).checked_mul(BLOCK_BYTES)
}

/// Dequantize whole blocks into `out` (`out.len()` values from `bytes_for(out.len())`
/// bytes). `None`, with `out` untouched, when the lengths do not match.
pub fn dequantize(blocks: &[u8], out: &mut [f32]) -> Option<()> {
    if bytes_for(out.len())? != blocks.len() {
        return None;
    }
    for (block, dst) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = half_scale(block[0]);
        let (lo, hi) = dst.split_at_mut(BLOCK_VALUES / 2);
        for ((&q, l), h) in block[1..].iter().zip(lo).zip(hi) {
            *l = f32::from(LEVELS[usize::from(q & 0x0f)]) * d;
            *h = f32::from(LEVELS[usize::from(q >> 4)]) * d;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_bytes_are_powers_of_two() {
        assert_eq!(half_scale(128), 1.0);
        assert_eq!(half_scale(127), 0.5);
        assert_eq!(half_scale(1), 2f32.powi(-127));
        assert_eq!(half_scale(0), 2f32.powi(-128));
        assert_eq!(half_scale(255), 2f32.powi(127));
    }

    #[test]
    fn one_block_decodes_low_then_high_nibbles() {
        // scale byte 127: half scale 0.5, so values are the OCP levels themselves
        let mut block = vec![127u8];
        // byte j: low nibble code j % 16 (value j), high nibble code 15 - j (value j + 16)
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(&block, &mut out).unwrap();
        assert_eq!(&out[..8], &[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(
            &out[8..16],
            &[0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
        );
        assert_eq!(out[16], -6.0);
        assert_eq!(out[31], 0.0);
    }

    #[test]
    fn lengths_are_checked() {
        let mut out = [0f32; 32];
        assert!(dequantize(&[0u8; 16], &mut out).is_none());
        assert!(dequantize(&[0u8; 34], &mut out).is_none());
        let mut odd = [0f32; 31];
        assert!(dequantize(&[0u8; 17], &mut odd).is_none());
        assert_eq!(bytes_for(64), Some(34));
        assert_eq!(bytes_for(33), None);
    }
}
