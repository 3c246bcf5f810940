//! The plain element types F32, F16 and BF16: `f32` rows to little-endian bytes and back.
//!
//! F16 uses the `half` crate's slice conversions (round to nearest even; F16C instructions
//! when the CPU has them, picked at run time). BF16 uses `half`'s `bf16::from_f32`, which
//! rounds to nearest even and keeps NaNs quiet exactly as ggml's `ggml_compute_fp32_to_bf16`
//! does. Bytes are written one element at a time with `to_le_bytes`, so the result does
//! not depend on the host's byte order or on the alignment of the buffers.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Elements converted per step through a stack buffer.
const STEP: usize = 256;

pub(super) fn f32_to_bytes(src: &[f32], dst: &mut [u8]) {
    for (v, b) in src.iter().zip(dst.chunks_exact_mut(4)) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    for (b, v) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub(super) fn f32_to_f16_bytes(src: &[f32], dst: &mut [u8]) {
    let mut buf = [f16::ZERO; STEP];
    for (x, y) in src.chunks(STEP).zip(dst.chunks_mut(2 * STEP)) {
        let buf = &mut buf[..x.len()];
        buf.convert_from_f32_slice(x);
        for (h, b) in buf.iter().zip(y.chunks_exact_mut(2)) {
            b.copy_from_slice(&h.to_bits().to_le_bytes());
        }
    }
}

pub(super) fn f16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    let mut buf = [f16::ZERO; STEP];
    for (x, y) in src.chunks(2 * STEP).zip(dst.chunks_mut(STEP)) {
        let buf = &mut buf[..y.len()];
        for (h, b) in buf.iter_mut().zip(x.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        }
        buf.convert_to_f32_slice(y);
    }
}

pub(super) fn f32_to_bf16_bytes(src: &[f32], dst: &mut [u8]) {
    for (v, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
    }
}

pub(super) fn bf16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    for (b, v) in src.chunks_exact(2).zip(dst.iter_mut()) {
        // A bf16 is the top half of an f32.
        *v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's rounding, written out: round to nearest even on the dropped 16 bits, NaNs
    /// forced quiet.
    fn ggml_bf16(v: f32) -> u16 {
        let u = v.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return ((u >> 16) | 64) as u16;
        }
        ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
    }

    #[test]
    fn bf16_rounds_like_ggml() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000), // half way between two bf16 values: ties to even
            f32::from_bits(0x3f81_8000),
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xff81_2345),
        ];
        let mut x: Vec<f32> = specials.to_vec();
        x.extend((0..5000u32).map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9))));
        let mut bytes = vec![0u8; 2 * x.len()];
        f32_to_bf16_bytes(&x, &mut bytes);
        for (v, b) in x.iter().zip(bytes.chunks_exact(2)) {
            assert_eq!(u16::from_le_bytes([b[0], b[1]]), ggml_bf16(*v), "{v:e}");
        }
    }

    #[test]
    fn f16_round_trips_every_half() {
        let halves: Vec<f32> = (0..=u16::MAX)
            .map(|b| f16::from_bits(b).to_f32())
            .filter(|v| !v.is_nan())
            .collect();
        let mut bytes = vec![0u8; 2 * halves.len()];
        f32_to_f16_bytes(&halves, &mut bytes);
        let mut back = vec![0.0f32; halves.len()];
        f16_bytes_to_f32(&bytes, &mut back);
        for (a, b) in halves.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }
}
