//! Choosing the next token from logits: greedy (argmax) by default, or temperature sampling
//! from a seeded generator.
//!
//! The generator is a hand-written SplitMix64 rather than the `rand` crate so that a seed
//! names the same token sequence in every modelgate release: `rand` documents that its
//! algorithms and value streams may change between versions.

use super::EngineError;

/// How tokens are picked.
#[derive(Clone, Debug)]
pub enum Sampler {
    /// The highest logit; ties go to the lowest id (as `argmax` in transformers).
    Greedy,
    /// Softmax of `logits / temperature`, sampled with a seeded generator.
    Temperature { temperature: f32, rng: SplitMix64 },
}

impl Sampler {
    /// Greedy when `temperature` is 0, sampling otherwise.
    pub fn new(temperature: f32, seed: u64) -> Result<Sampler, EngineError> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(EngineError::BadParam(format!(
                "temperature {temperature}, expected a finite number >= 0"
            )));
        }
        Ok(if temperature == 0.0 {
            Sampler::Greedy
        } else {
            Sampler::Temperature {
                temperature,
                rng: SplitMix64(seed),
            }
        })
    }

    pub fn pick(&mut self, logits: &[f32]) -> Result<u32, EngineError> {
        if logits.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        if logits.iter().any(|x| x.is_nan()) {
            return Err(EngineError::BadParam(
                "the model produced NaN logits".into(),
            ));
        }
        match self {
            Sampler::Greedy => Ok(argmax(logits)),
            Sampler::Temperature { temperature, rng } => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f64> = logits
                    .iter()
                    .map(|&l| (f64::from(l - max) / f64::from(*temperature)).exp())
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut target = rng.next_f64() * total;
                for (i, w) in weights.iter().enumerate() {
                    if target < *w {
                        return Ok(i as u32);
                    }
                    target -= w;
                }
                Ok(argmax(logits))
            }
        }
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// One entry of a top-k list.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Scored {
    pub id: u32,
    pub logit: f32,
    /// Natural-log probability under the softmax of all logits.
    pub logprob: f64,
}

/// The `k` highest logits, best first (ties by lower id), with their log-probabilities.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Scored> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = f64::from(max)
        + logits
            .iter()
            .map(|&l| f64::from(l - max).exp())
            .sum::<f64>()
            .ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    order.select_nth_unstable_by(k - 1, by_logit);
    order.truncate(k);
    order.sort_by(by_logit);
    order
        .into_iter()
        .map(|id| Scored {
            id,
            logit: logits[id as usize],
            logprob: f64::from(logits[id as usize]) - lse,
        })
        .collect()
}

/// SplitMix64 (Steele, Lea and Flood, 2014): tiny, fast, and fixed forever.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(0.0, 0).unwrap();
        assert_eq!(s.pick(&[0.1, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert!(s.pick(&[f32::NAN]).is_err());
        assert!(Sampler::new(-1.0, 0).is_err());
    }

    #[test]
    fn top_k_orders_and_normalises() {
        let t = top_k(&[1.0, 3.0, 2.0, 3.0], 3);
        assert_eq!(t.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f64 = top_k(&[1.0, 3.0, 2.0, 3.0], 10)
            .iter()
            .map(|s| s.logprob.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(top_k(&[1.0], 0).is_empty());
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567, from the published reference implementation.
        let mut r = SplitMix64(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let logits = [0.0f32, 2.0, 0.0];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, seed).unwrap();
            (0..2000)
                .map(|_| s.pick(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let ones = draw(7).iter().filter(|&&t| t == 1).count();
        // p(1) = e^2 / (e^2 + 2) = 0.787
        assert!((1450..1700).contains(&ones), "{ones}");
    }
}
