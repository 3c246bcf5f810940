//! The block-format kernels the converter calls: quantize f32 rows into a ggml block type
//! and dequantize blocks back to f32.
//!
//! Until modelgate's own multi-threaded kernels (`convert::quant`) are merged, this adapter
//! calls candle's single-threaded reference quantizers, which produce valid ggml blocks;
//! parallelism comes from the converter running many row chunks at once.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::formats::GgmlType;

fn candle_type(t: GgmlType) -> Option<GgmlDType> {
    Some(match t {
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        _ => return None,
    })
}

/// Whether a block type has kernels here.
pub fn supported(t: GgmlType) -> bool {
    candle_type(t).is_some()
}

/// Quantize `src` (whole rows of `row_len` values) as `t`, appending the blocks to `out`.
pub fn quantize(t: GgmlType, src: &[f32], row_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let dt = candle_type(t).ok_or_else(|| format!("no quantizer for {t}"))?;
    let (block, _) = t.block().ok_or_else(|| format!("{t} has no block size"))?;
    if row_len == 0 || row_len as u64 % block != 0 || src.len() % row_len != 0 {
        return Err(format!("rows of {row_len} values do not divide into {t} blocks of {block}"));
    }
    let tensor = Tensor::from_slice(src, (src.len() / row_len, row_len), &Device::Cpu).map_err(|e| e.to_string())?;
    let q = QTensor::quantize(&tensor, dt).map_err(|e| e.to_string())?;
    let data = q.data().map_err(|e| e.to_string())?;
    out.extend_from_slice(&data);
    Ok(())
}

/// Dequantize the blocks in `src` into `out` (exactly `out.len()` values).
pub fn dequantize(t: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), String> {
    let dt = candle_type(t).ok_or_else(|| format!("no dequantizer for {t}"))?;
    let q = qtensor_from_ggml(dt, src, vec![out.len()], &Device::Cpu).map_err(|e| e.to_string())?;
    let v = q
        .dequantize(&Device::Cpu)
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    if v.len() != out.len() {
        return Err(format!("{t}: {} values decoded, {} expected", v.len(), out.len()));
    }
    out.copy_from_slice(&v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_ggml_tolerances() {
        // The test vector ggml and candle use: 0.1 + 2 cos(i).
        let xs: Vec<f32> = (0..4096).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
        for (t, tol) in [
            (GgmlType::Q8_0, 0.002),
            (GgmlType::Q4_0, 0.002),
            (GgmlType::Q4_1, 0.002),
            (GgmlType::Q5_0, 0.002),
            (GgmlType::Q5_1, 0.002),
            (GgmlType::Q2K, 0.0075),
            (GgmlType::Q3K, 0.004),
            (GgmlType::Q4K, 0.002),
            (GgmlType::Q5K, 0.002),
            (GgmlType::Q6K, 0.002),
        ] {
            let mut q = Vec::new();
            quantize(t, &xs, 1024, &mut q).unwrap();
            assert_eq!(q.len() as u64, t.bytes_for(4096).unwrap());
            let mut back = vec![0.0; 4096];
            dequantize(t, &q, &mut back).unwrap();
            let err = xs.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt() / 4096.0;
            assert!(err < tol, "{t}: {err}");
        }
        let mut q = Vec::new();
        assert!(quantize(GgmlType::Q4K, &xs[..100], 100, &mut q).is_err());
    }
}
