//! A pseudo-random stream for the engine's unit tests: xorshift, fixed seed, so every
//! kernel test draws the same weights and activations on every machine.

/// `n` values in [-1, 1) from `seed`.
pub(crate) fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
