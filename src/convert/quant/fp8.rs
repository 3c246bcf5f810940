//! FP8 E4M3 source weights (DeepSeek-V2/V3/R1 and other `quant_method: fp8` checkpoints)
//! dequantized to `f32` as llama.cpp's converter does: every code is decoded as
//! `float8_e4m3fn` and multiplied, in `f32`, by the scale of its block (`weight_scale_inv`,
//! despite the name a multiplier: one `f32` per `weight_block_size` block, usually
//! 128 x 128, with the block count rounded up so edge blocks are partial).
//!
//! E4M3 "fn" has no infinities: exponent bias 7, subnormals below 2^-6, largest value 448,
//! and only `S.1111.111` (0x7F, 0xFF) is NaN. NaN codes stay NaN, as they do in torch.

use rayon::prelude::*;

use super::QuantError;

/// The value of one `float8_e4m3fn` code, exactly.
pub fn f8_e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((code >> 3) & 0x0F);
    let man = f32::from(code & 0x07);
    if exp == 0x0F && man == 7.0 {
        return f32::NAN.copysign(sign);
    }
    let mag = if exp == 0 {
        man / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    };
    sign * mag
}

/// The scales of an FP8 weight: `values` in row-major order, of shape `shape`.
#[derive(Debug, Clone, Copy)]
pub struct Fp8Scale<'a> {
    pub values: &'a [f32],
    pub shape: &'a [usize],
}

/// Dequantize an FP8 E4M3 weight of shape `shape` (one byte per value, row-major) with its
/// scales, as llama.cpp's converter does (`weight.float() * scale`).
///
/// With `block` (the checkpoint's `weight_block_size`, e.g. `[128, 128]`), the scale has the
/// weight's rank; its last `block.len()` dimensions count blocks, `ceil(dim / block)` each,
/// and its leading dimensions equal the weight's. Without `block`, the scale is broadcast as
/// llama.cpp does: its dimensions align with the weight's leading ones (a per-tensor scalar,
/// or one scale per output row), each equal to the weight's or 1. `tensor` names the
/// weight in errors; a weight without a scale (`None`) is refused.
pub fn dequantize_fp8_e4m3(
    tensor: &str,
    weight: &[u8],
    shape: &[usize],
    scale: Option<Fp8Scale<'_>>,
    block: Option<&[usize]>,
) -> Result<Vec<f32>, QuantError> {
    let bad = |detail: String| QuantError::Fp8Shape {
        tensor: tensor.to_string(),
        detail,
    };
    let Some(scale) = scale else {
        return Err(QuantError::Fp8MissingScale {
            tensor: tensor.to_string(),
        });
    };
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if weight.len() != count {
        return Err(bad(format!(
            "shape {shape:?} needs {count} bytes, the tensor has {}",
            weight.len()
        )));
    }
    // Per weight dimension: the divisor from a weight index to a scale index, and the
    // scale's stride for it (0 where the scale is broadcast).
    let rank = shape.len();
    let mut div = vec![1usize; rank];
    let mut expected: Vec<usize> = match block {
        Some(block) => {
            if scale.shape.len() != rank || block.len() > rank {
                return Err(bad(format!(
                    "scale shape {:?} does not fit weight shape {shape:?} in blocks of {block:?}",
                    scale.shape
                )));
            }
            let mut want = shape.to_vec();
            for (i, &b) in block.iter().enumerate() {
                let d = rank - block.len() + i;
                if b == 0 {
                    return Err(bad(format!("block size {block:?} has a zero")));
                }
                div[d] = b;
                want[d] = shape[d].div_ceil(b);
            }
            want
        }
        None => {
            if scale.shape.len() > rank {
                return Err(bad(format!(
                    "scale shape {:?} has more dimensions than weight shape {shape:?}",
                    scale.shape
                )));
            }
            let mut want = vec![1usize; rank];
            for (d, &s) in scale.shape.iter().enumerate() {
                want[d] = if s == 1 { 1 } else { shape[d] };
            }
            want
        }
    };
    let padded: Vec<usize> = (0..rank)
        .map(|d| scale.shape.get(d).copied().unwrap_or(1))
        .collect();
    if padded != expected {
        expected.truncate(scale.shape.len());
        return Err(bad(format!(
            "scale shape {:?} should be {expected:?} for weight shape {shape:?}{}",
            scale.shape,
            block
                .map(|b| format!(" in blocks of {b:?}"))
                .unwrap_or_default()
        )));
    }
    let scale_count: usize = padded.iter().product();
    if scale.values.len() != scale_count {
        return Err(bad(format!(
            "scale shape {:?} needs {scale_count} values, the scale has {}",
            scale.shape,
            scale.values.len()
        )));
    }
    let mut stride = vec![0usize; rank];
    let mut s = 1usize;
    for d in (0..rank).rev() {
        stride[d] = if padded[d] == 1 { 0 } else { s };
        s *= padded[d];
    }
    let mut out = vec![0.0f32; count];
    if count == 0 {
        return Ok(out);
    }
    let lut: [f32; 256] = std::array::from_fn(|c| f8_e4m3_to_f32(c as u8));
    let (row_len, last_div, last_stride) = match rank {
        0 => (1, 1, 0),
        _ => (shape[rank - 1], div[rank - 1], stride[rank - 1]),
    };
    out.par_chunks_mut(row_len)
        .zip(weight.par_chunks(row_len))
        .enumerate()
        .for_each(|(row, (y, w))| {
            // The scale offset of this row from its index in the leading dimensions.
            let mut base = 0usize;
            let mut rest = row;
            for d in (0..rank.saturating_sub(1)).rev() {
                let i = rest % shape[d];
                rest /= shape[d];
                base += i / div[d] * stride[d];
            }
            for (i, (y, &c)) in y.iter_mut().zip(w).enumerate() {
                *y = lut[usize::from(c)] * scale.values[base + i / last_div * last_stride];
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decode_to_the_e4m3fn_values() {
        assert_eq!(f8_e4m3_to_f32(0x00), 0.0);
        assert!(f8_e4m3_to_f32(0x80).is_sign_negative());
        assert_eq!(f8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(f8_e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(f8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f32(0x7E), 448.0);
        assert_eq!(f8_e4m3_to_f32(0xFE), -448.0);
        assert!(f8_e4m3_to_f32(0x7F).is_nan());
        assert!(f8_e4m3_to_f32(0xFF).is_nan());
        assert_eq!(
            (0..=255u8).filter(|&c| f8_e4m3_to_f32(c).is_nan()).count(),
            2
        );
    }

    #[test]
    fn partial_edge_blocks_take_their_block_scale() {
        // A 3 x 5 weight in 2 x 2 blocks: scales 2 x 3, the last row and column partial.
        let weight = vec![0x38u8; 15]; // every value 1.0
        let scales = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let scale = Fp8Scale {
            values: &scales,
            shape: &[2, 3],
        };
        let y = dequantize_fp8_e4m3("w", &weight, &[3, 5], Some(scale), Some(&[2, 2])).unwrap();
        assert_eq!(
            y,
            [1., 1., 2., 2., 3., 1., 1., 2., 2., 3., 4., 4., 5., 5., 6.]
        );
    }

    #[test]
    fn broadcast_scales_without_blocks() {
        let weight = [0x38u8, 0x40, 0x38, 0x40];
        let per_row = Fp8Scale {
            values: &[0.5, 3.0],
            shape: &[2],
        };
        let y = dequantize_fp8_e4m3("w", &weight, &[2, 2], Some(per_row), None).unwrap();
        assert_eq!(y, [0.5, 1.0, 3.0, 6.0]);
        let scalar = Fp8Scale {
            values: &[0.25],
            shape: &[],
        };
        let y = dequantize_fp8_e4m3("w", &weight, &[2, 2], Some(scalar), None).unwrap();
        assert_eq!(y, [0.25, 0.5, 0.25, 0.5]);
    }

    #[test]
    fn bad_scales_name_the_tensor() {
        let err = dequantize_fp8_e4m3(
            "model.layers.3.mlp.gate_proj.weight",
            &[0; 4],
            &[2, 2],
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the FP8 tensor `model.layers.3.mlp.gate_proj.weight` has no scale \
             (`model.layers.3.mlp.gate_proj.weight_scale_inv`)"
        );
        let scale = Fp8Scale {
            values: &[1.0; 4],
            shape: &[2, 2],
        };
        let err = dequantize_fp8_e4m3("w", &[0; 500], &[5, 100], Some(scale), Some(&[2, 64]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the FP8 tensor `w` and its scale disagree: scale shape [2, 2] should be [3, 2] \
             for weight shape [5, 100] in blocks of [2, 64]"
        );
        let err = dequantize_fp8_e4m3("w", &[0; 299], &[3, 100], Some(scale), Some(&[2, 64]))
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("needs 300 bytes, the tensor has 299"));
    }
}
