//! Rotary position embedding: the inverse frequencies (with linear, llama3, LongRoPE or
//! per-frequency GGUF scaling) and the cos/sin tables, in Hugging Face's rotate-half
//! convention. A table may cover only the leading dimensions of a head (partial rotary,
//! Phi-3); the kernels pass the rest through.
//!
//! Arithmetic follows transformers step by step in f32 (inverse frequencies from an f32
//! power, angle = f32 position x f32 frequency, then f32 cos/sin), because greedy parity
//! with transformers over dozens of tokens is sensitive to the last bit of these tables.

use candle_core::{Device, Tensor};

use super::config::RopeScaling;
use super::EngineError;

/// Inverse frequencies and lazily grown cos/sin tables.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
    /// Factor on cos and sin (LongRoPE's attention factor; 1 otherwise).
    attention_scaling: f32,
    /// Rows computed so far (one per position), each `head_dim / 2` wide.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// `head_dim` is the rotated width (the rotary dimension). `freq_factors` is GGUF's
    /// `rope_freqs.weight` (each inverse frequency is divided by its factor), as
    /// llama.cpp's converter stores Llama 3.1 scaling. LongRoPE is built by
    /// [`Rope::longrope`] instead.
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: &RopeScaling,
        freq_factors: Option<Vec<f32>>,
    ) -> Result<Rope, EngineError> {
        let half = head_dim / 2;
        let base = theta as f32;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / base.powf(exponent)
            })
            .collect();
        let mut attention_scaling = 1.0f32;
        match *scaling {
            RopeScaling::None => {}
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                inv_freq = yarn_inv_freq(
                    &inv_freq,
                    head_dim,
                    theta,
                    factor,
                    original_context,
                    (beta_fast, beta_slow),
                    truncate,
                );
                attention_scaling = attention_factor as f32;
            }
            RopeScaling::LongRope { .. } => {
                return Err(EngineError::BadParam(
                    "longrope needs its short and long factors".into(),
                ))
            }
            RopeScaling::Linear { factor } => {
                for f in inv_freq.iter_mut() {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                let low_wavelen = original_context / low_freq_factor;
                let high_wavelen = original_context / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let freq = f64::from(*f);
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen > low_wavelen {
                        freq / factor
                    } else if wavelen < high_wavelen {
                        freq
                    } else {
                        let smooth = (original_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    *f = scaled as f32;
                }
            }
        }
        if let Some(factors) = freq_factors {
            if factors.len() != half {
                return Err(EngineError::BadParam(format!(
                    "`rope_freqs.weight` has {} factors, expected {half} (half the head size)",
                    factors.len()
                )));
            }
            for (f, k) in inv_freq.iter_mut().zip(&factors) {
                if !(k.is_finite() && *k > 0.0) {
                    return Err(EngineError::BadParam(format!(
                        "`rope_freqs.weight` holds the factor {k}"
                    )));
                }
                *f /= k;
            }
        }
        Ok(Rope {
            inv_freq,
            attention_scaling,
            cos: Vec::new(),
            sin: Vec::new(),
        })
    }

    /// One of LongRoPE's two tables: inverse frequency `1 / (factor * theta^(2i/dim))`,
    /// cos and sin times `attention_factor`, in transformers' f32 order of operations.
    pub fn longrope(
        dim: usize,
        theta: f64,
        factors: &[f32],
        attention_factor: f64,
    ) -> Result<Rope, EngineError> {
        let half = dim / 2;
        if factors.len() != half {
            return Err(EngineError::BadParam(format!(
                "longrope has {} factors, expected {half} (half the rotary dimension)",
                factors.len()
            )));
        }
        if let Some(k) = factors.iter().find(|k| !(k.is_finite() && **k > 0.0)) {
            return Err(EngineError::BadParam(format!(
                "longrope holds the factor {k}"
            )));
        }
        let base = theta as f32;
        let inv_freq = factors
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let exponent = (2 * i) as f32 / dim as f32;
                1.0 / (k * base.powf(exponent))
            })
            .collect();
        Ok(Rope {
            inv_freq,
            attention_scaling: attention_factor as f32,
            cos: Vec::new(),
            sin: Vec::new(),
        })
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Make sure the tables cover positions `0..end`.
    fn grow(&mut self, end: usize) {
        let half = self.inv_freq.len();
        let have = self.cos.len() / half.max(1);
        for pos in have..end {
            let p = pos as f32;
            for &f in &self.inv_freq {
                let angle = p * f;
                if self.attention_scaling == 1.0 {
                    self.cos.push(angle.cos());
                    self.sin.push(angle.sin());
                } else {
                    self.cos.push(angle.cos() * self.attention_scaling);
                    self.sin.push(angle.sin() * self.attention_scaling);
                }
            }
        }
    }

    /// cos and sin for positions `start..start + len`, row-major `[len, head_dim / 2]`.
    pub fn slices(&mut self, start: usize, len: usize) -> (&[f32], &[f32]) {
        let half = self.inv_freq.len();
        self.grow(start + len);
        let range = start * half..(start + len) * half;
        (&self.cos[range.clone()], &self.sin[range])
    }

    /// cos and sin for positions `start..start + len`, each `[len, head_dim / 2]`.
    pub fn tables(
        &mut self,
        start: usize,
        len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor), EngineError> {
        let half = self.inv_freq.len();
        self.grow(start + len);
        let range = start * half..(start + len) * half;
        let cos = Tensor::from_slice(&self.cos[range.clone()], (len, half), device)?;
        let sin = Tensor::from_slice(&self.sin[range], (len, half), device)?;
        Ok((cos, sin))
    }
}

/// YaRN's frequencies, in transformers' f32 order of operations: `plain` holds
/// `1 / theta^(2i/dim)`; each becomes `interp (1 - e) + plain e` with `interp = 1 / (factor
/// theta^(2i/dim))` and `e` one minus a linear ramp over the pair index between the
/// correction dimensions of `beta_fast` and `beta_slow`.
fn yarn_inv_freq(
    plain: &[f32],
    dim: usize,
    theta: f64,
    factor: f64,
    original_context: f64,
    (beta_fast, beta_slow): (f64, f64),
    truncate: bool,
) -> Vec<f32> {
    let correction = |rotations: f64| {
        (dim as f64 * (original_context / (rotations * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min(dim as f64 - 1.0);
    if low == high {
        high += 0.001;
    }
    let base = theta as f32;
    let factor = factor as f32;
    plain
        .iter()
        .enumerate()
        .map(|(i, &extrapolation)| {
            let pos_freq = base.powf((2 * i) as f32 / dim as f32);
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
            let e = 1.0 - ramp;
            interpolation * (1.0 - e) + extrapolation * e
        })
        .collect()
}

/// Apply rotate-half RoPE to `x` of shape `[heads, len, head_dim]` with tables
/// `[len, rot / 2]`: `(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)` on the first `rot`
/// dimensions, the rest unchanged.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, EngineError> {
    let head_dim = x.dim(2)?;
    let half = cos.dim(1)?;
    let x1 = x.narrow(2, 0, half)?;
    let x2 = x.narrow(2, half, half)?;
    let cos = cos.unsqueeze(0)?;
    let sin = sin.unsqueeze(0)?;
    let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    if 2 * half == head_dim {
        return Ok(Tensor::cat(&[a, b], 2)?);
    }
    let pass = x.narrow(2, 2 * half, head_dim - 2 * half)?;
    Ok(Tensor::cat(&[a, b, pass], 2)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies() {
        let r = Rope::new(8, 10_000.0, &RopeScaling::None, None).unwrap();
        let f = r.inv_freq();
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-7);
        assert!((f[3] - 0.001).abs() < 1e-9);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 32.0,
        };
        let plain = Rope::new(16, 500_000.0, &RopeScaling::None, None).unwrap();
        let r = Rope::new(16, 500_000.0, &scaling, None).unwrap();
        // wavelength 2*pi < 8 = high wavelength: unchanged
        assert_eq!(r.inv_freq()[0], plain.inv_freq()[0]);
        // the lowest frequency has a wavelength far above 32: divided by 8
        let last = plain.inv_freq().len() - 1;
        assert!((r.inv_freq()[last] - plain.inv_freq()[last] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn longrope_divides_by_its_factors_and_scales_cos_sin() {
        let mut r = Rope::longrope(4, 10_000.0, &[2.0, 4.0], 1.5).unwrap();
        assert_eq!(r.inv_freq(), &[0.5, 1.0 / (4.0 * 100.0)]);
        let (cos, sin) = r.slices(0, 1);
        assert_eq!((cos[0], sin[0]), (1.5, 0.0));
        assert!(Rope::longrope(4, 1e4, &[1.0], 1.0).is_err());
        assert!(Rope::longrope(4, 1e4, &[1.0, f32::NAN], 1.0).is_err());
    }

    #[test]
    fn partial_rotary_leaves_the_tail() {
        let mut r = Rope::new(2, 10_000.0, &RopeScaling::None, None).unwrap();
        let x = Tensor::new(&[[[1f32, 2., 3., 4.], [1., 2., 3., 4.]]], &Device::Cpu).unwrap();
        let (cos, sin) = r.tables(0, 2, &Device::Cpu).unwrap();
        let y = apply(&x, &cos, &sin).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(y[0][0], vec![1., 2., 3., 4.]);
        assert_eq!(&y[0][1][2..], &[3., 4.]);
        assert_ne!(y[0][1][0], 1.0);
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero() {
        let mut r = Rope::new(4, 10_000.0, &RopeScaling::None, None).unwrap();
        let x = Tensor::new(&[[[1f32, 2., 3., 4.], [1., 2., 3., 4.]]], &Device::Cpu).unwrap();
        let (cos, sin) = r.tables(0, 2, &Device::Cpu).unwrap();
        let y = apply(&x, &cos, &sin).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(y[0][0], vec![1., 2., 3., 4.]);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&y[0][1]) - 30.0).abs() < 1e-4);
        assert!(Rope::new(4, 1e4, &RopeScaling::None, Some(vec![1.0])).is_err());
    }
}
