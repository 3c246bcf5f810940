//! Decoding stored values to f32 and encoding f32 to the output type, one run of rows at a
//! time, through the [`quant`] kernels (which also cover F32, F16 and BF16);
//! F64 sources, which ggml never writes but safetensors may hold, are narrowed here.

use crate::formats::{DType, GgmlType};

use super::quant;

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
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = f64::from_le_bytes(b) as f32;
            }
            Ok(())
        }
        d => match d.to_ggml() {
            Some(t) if quant::supported(t) => {
                quant::dequantize(t, bytes, out).map_err(|e| e.to_string())
            }
            _ => Err(format!("values stored as {d} cannot be converted")),
        },
    }
}

/// Whether [`decode`] reads this dtype.
pub fn decodable(dtype: DType) -> bool {
    dtype == DType::F64 || dtype.to_ggml().is_some_and(quant::supported)
}

/// Encode `src` as `ty`, appending to `out`. `row_len` is the length of one row; block
/// types quantize row by row (a block never spans two rows).
pub fn encode(ty: GgmlType, src: &[f32], row_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    quant::quantize_rows(ty, src, row_len, out).map_err(|e| e.to_string())
}

/// [`encode`] with the columns' importance (`row_len` values), as `llama-quantize --imatrix`.
pub fn encode_weighted(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    importance: &[f32],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    quant::quantize_rows_weighted(ty, src, row_len, Some(importance), out)
        .map_err(|e| e.to_string())
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
                assert!(
                    (a - b).abs() <= a.abs() * 1e-2 || a == b,
                    "{ty}: {a} -> {b}"
                );
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
        encode(
            GgmlType::BF16,
            &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0],
            2,
            &mut b,
        )
        .unwrap();
        assert_eq!(b, vec![0x80, 0x3f, 0x82, 0x3f]);
    }
}
