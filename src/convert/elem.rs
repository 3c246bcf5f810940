//! Decoding stored values to f32 and encoding f32 to the output type, one run of rows at a
//! time. Plain element types (F32, F16, BF16, F64) are converted here; block formats go
//! through the quantization kernels.

use half::{bf16, f16};

use crate::formats::{DType, GgmlType};

use super::kernels;

/// Decode `out.len()` values stored as `dtype` in `bytes` (exactly the bytes of those values).
pub fn decode(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let need = dtype
        .bytes_for(out.len() as u64)
        .ok_or_else(|| format!("{} values of {dtype} do not make whole blocks", out.len()))?;
    if need != bytes.len() as u64 {
        return Err(format!(
            "{} values of {dtype} take {need} bytes, but {} were given",
            out.len(),
            bytes.len()
        ));
    }
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = f64::from_le_bytes(b) as f32;
            }
        }
        DType::Ggml(t) if t.is_quantized() => kernels::dequantize(t, bytes, out)?,
        other => return Err(format!("values stored as {other} cannot be converted")),
    }
    Ok(())
}

/// Whether [`decode`] reads this dtype.
pub fn decodable(dtype: DType) -> bool {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => true,
        DType::Ggml(t) => t.is_quantized() && kernels::supported(t),
        _ => false,
    }
}

/// Encode `src` as `ty`, appending to `out`. `row_len` is the length of one row; block
/// types quantize row by row (a block never spans two rows).
pub fn encode(ty: GgmlType, src: &[f32], row_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    match ty {
        GgmlType::F32 => {
            out.reserve(src.len() * 4);
            for v in src {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            out.reserve(src.len() * 2);
            for v in src {
                out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            out.reserve(src.len() * 2);
            for v in src {
                out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        t if t.is_quantized() => kernels::quantize(t, src, row_len, out)?,
        other => return Err(format!("cannot write values as {other}")),
    }
    Ok(())
}

/// The dtype safetensors uses for an output float type.
pub fn st_dtype(ty: GgmlType) -> Option<DType> {
    match ty {
        GgmlType::F32 => Some(DType::F32),
        GgmlType::F16 => Some(DType::F16),
        GgmlType::BF16 => Some(DType::BF16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_types_round_trip() {
        let vals = [0.0f32, 1.0, -2.5, 65504.0, 1e-3, f32::INFINITY];
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let mut bytes = Vec::new();
            encode(ty, &vals, vals.len(), &mut bytes).unwrap();
            let mut back = vec![0.0; vals.len()];
            decode(DType::from_ggml(ty), &bytes, &mut back).unwrap();
            for (a, b) in vals.iter().zip(&back) {
                assert!((a - b).abs() <= a.abs() * 1e-2 || a == b, "{ty}: {a} -> {b}");
            }
        }
        let mut out = vec![0.0; 2];
        assert!(decode(DType::F16, &[0, 0, 0], &mut out).is_err());
        assert!(decode(DType::I32, &[0; 8], &mut out).is_err());
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
        let mut b = Vec::new();
        encode(GgmlType::BF16, &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0], 2, &mut b).unwrap();
        assert_eq!(b, vec![0x80, 0x3f, 0x82, 0x3f]);
    }
}
