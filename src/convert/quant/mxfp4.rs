//! MXFP4 (OCP microscaling FP4): blocks of 32 values sharing one power-of-two scale, each
//! value a 4-bit E2M1 float. ggml's `block_mxfp4` is 17 bytes: the E8M0 scale byte, then 16
//! bytes of codes where byte `j` holds value `j` in its low nibble and value `j + 16` in its
//! high nibble.
//!
//! ggml keeps the E2M1 levels doubled as small integers (`kvalues_mxfp4`: 0, 1, 2, 3, 4, 6, 8,
//! 12 and their negatives) and halves the scale instead (`ggml_e8m0_to_fp32_half`), so a
//! value decodes as `level * 2^(e - 128)`: the same number as the OCP reading
//! `e2m1 * 2^(e - 127)`, which is why a Hugging Face scale byte copies over unchanged.
//!
//! The quantizer is ggml's reference (`quantize_row_mxfp4_ref`, what `llama-quantize` runs for
//! MXFP4 with or without an importance matrix): the scale exponent is `floor(log2(amax)) - 2`
//! and every value takes the nearest level, ties to the lower index. [`repack_hf_mxfp4`]
//! turns the Hugging Face layout (gpt-oss's `*_blocks` and `*_scales`) into these blocks
//! without decoding a value.

use super::QuantError;
// ggml's `ggml_e8m0_to_fp32_half`: one definition, beside the reader.
use crate::formats::mxfp4::half_scale as e8m0_half;

/// Values per block.
pub(super) const QK: usize = 32;
/// Bytes per block: the scale byte and 16 bytes of codes.
pub(super) const MXFP4_BYTES: usize = 17;
/// Bytes of codes per block in both layouts.
const CODE_BYTES: usize = QK / 2;

/// The doubled E2M1 levels by code (`kvalues_mxfp4`); code 8 is a second zero.
const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// The code whose level times `d` is nearest `x`; the first on ties (ggml's
/// `best_index_mxfp4`, a linear scan with a strict comparison).
#[inline]
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (f32::from(KVALUES[0]) * d - x).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (f32::from(k) * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// Quantize one block of 32 finite values into 17 bytes.
pub(super) fn quantize_mxfp4(x: &[f32], y: &mut [u8]) {
    let amax = x
        .iter()
        .fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
    // ggml converts the float exponent to `uint8_t`; below 2^-125 it is negative and the
    // x86 conversion keeps the low byte of the 32-bit integer, which `as i32 as u8` repeats
    // (1e-40 gives 248, as the C build gives). `log2` is the platform `log2f`, as in C.
    let e = if amax > 0.0 {
        ((amax.log2().floor() - 2.0 + 127.0) as i32) as u8
    } else {
        0
    };
    let d = e8m0_half(e);
    y[0] = e;
    for j in 0..CODE_BYTES {
        let lo = best_index(x[j], d);
        let hi = best_index(x[j + CODE_BYTES], d);
        y[1 + j] = lo | (hi << 4);
    }
}

/// Repack MXFP4 weights from the Hugging Face layout (gpt-oss and transformers' `Mxfp4`
/// quantizer) into ggml's `block_mxfp4` bytes, without decoding any value.
///
/// `blocks` is the `*_blocks` tensor (u8, shape `[..., n_blocks, 16]`): byte `i` of a block
/// holds value `2i` in its low nibble and value `2i + 1` in its high nibble. `scales` is the
/// `*_scales` tensor (u8 E8M0, shape `[..., n_blocks]`), one byte per block. Both are flat,
/// row-major; the leading dimensions (experts, output rows) are the same in both and the
/// output keeps their order, so a `[experts, rows, n_blocks, 16]` tensor becomes ggml's
/// `[experts, rows, n_blocks * 32]` MXFP4 tensor. `tensor` names the weight in errors.
///
/// Refused: blocks that are not whole 16-byte blocks, a scale count that is not the block
/// count, and the scale byte 255 (NaN in E8M0; ggml's row validation rejects it too).
pub fn repack_hf_mxfp4(tensor: &str, blocks: &[u8], scales: &[u8]) -> Result<Vec<u8>, QuantError> {
    if !blocks.len().is_multiple_of(CODE_BYTES) {
        return Err(QuantError::Mxfp4Blocks {
            tensor: tensor.to_string(),
            len: blocks.len(),
        });
    }
    let n = blocks.len() / CODE_BYTES;
    if scales.len() != n {
        return Err(QuantError::Mxfp4Scales {
            tensor: tensor.to_string(),
            blocks: n,
            scales: scales.len(),
        });
    }
    if let Some(block) = scales.iter().position(|&e| e == 0xFF) {
        return Err(QuantError::Mxfp4NanScale {
            tensor: tensor.to_string(),
            block,
        });
    }
    let mut out = vec![0u8; n * MXFP4_BYTES];
    for ((src, &e), dst) in blocks
        .chunks_exact(CODE_BYTES)
        .zip(scales)
        .zip(out.chunks_exact_mut(MXFP4_BYTES))
    {
        dst[0] = e;
        for (j, q) in dst[1..].iter_mut().enumerate() {
            *q = hf_code(src, j) | (hf_code(src, j + CODE_BYTES) << 4);
        }
    }
    Ok(out)
}

/// The 4-bit code of value `k` of a Hugging Face block: byte `k / 2`, low nibble for even `k`.
#[inline]
fn hf_code(block: &[u8], k: usize) -> u8 {
    let byte = block[k / 2];
    if k.is_multiple_of(2) {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OCP E2M1 values by code, as transformers' `FP4_VALUES` lists them.
    const E2M1: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];

    #[test]
    fn scale_bytes_read_as_half_powers_of_two() {
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(254), 2f32.powi(126));
        assert_eq!(e8m0_half(255), 2f32.powi(127));
        for e in 0..=254u8 {
            let exact = 2f64.powi(i32::from(e) - 128);
            assert_eq!(f64::from(e8m0_half(e)), exact, "{e}");
        }
    }

    #[test]
    fn repacked_blocks_decode_to_the_hugging_face_values() {
        // Every code in every position across a few blocks, with varied scales.
        let blocks: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        let scales = [0u8, 120, 127, 254];
        let packed = repack_hf_mxfp4("w", &blocks, &scales).unwrap();
        assert_eq!(packed.len(), 4 * MXFP4_BYTES);
        let mut y = [0.0f32; QK];
        for (b, (src, &e)) in blocks.chunks_exact(16).zip(&scales).enumerate() {
            crate::formats::blocks::mxfp4(&packed[b * MXFP4_BYTES..(b + 1) * MXFP4_BYTES], &mut y);
            for (k, v) in y.iter().enumerate() {
                let code = hf_code(src, k);
                let want = f64::from(E2M1[usize::from(code)]) * 2f64.powi(i32::from(e) - 127);
                // Rounded to f32 as transformers' f32 decoding is: 6 * 2^127 overflows to inf.
                assert_eq!(*v, want as f32, "{b} {k}");
            }
        }
    }

    #[test]
    fn misshapen_hugging_face_tensors_are_named() {
        let err = repack_hf_mxfp4("blk.0.ffn_down_exps", &[0; 40], &[0; 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the MXFP4 blocks of `blk.0.ffn_down_exps` are 40 bytes, not whole blocks of 16 bytes"
        );
        let err = repack_hf_mxfp4("w", &[0; 48], &[0; 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the MXFP4 tensor `w` has 3 blocks but 2 scales; it needs one scale byte per block"
        );
        let err = repack_hf_mxfp4("w", &[0; 32], &[3, 255]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the MXFP4 tensor `w` has scale 255 (NaN in E8M0) at block 1"
        );
        assert_eq!(repack_hf_mxfp4("w", &[], &[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn quantizer_picks_the_nearest_level() {
        // amax 6 gives exponent floor(log2 6) - 2 = 0, so d = 0.5 and levels are E2M1.
        let mut x = [0.0f32; QK];
        x[0] = 6.0;
        x[1] = -1.25; // between -1 and -1.5: tie, the first code (-1, code 10) wins
        x[2] = 0.2; // nearer 0 than 0.5
        x[16] = 2.6; // nearer 3
        x[17] = -0.0;
        let mut y = [0u8; MXFP4_BYTES];
        quantize_mxfp4(&x, &mut y);
        assert_eq!(y[0], 127);
        assert_eq!(y[1], 7 | (5 << 4));
        assert_eq!(y[2], 10);
        assert_eq!(y[3], 0);
        let mut back = [0.0f32; QK];
        crate::formats::blocks::mxfp4(&y, &mut back);
        assert_eq!(&back[..3], &[6.0, -1.0, 0.0]);
        assert_eq!(back[16], 3.0);
    }
}
