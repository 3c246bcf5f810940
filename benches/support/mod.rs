//! Helpers shared by the `harness = false` benchmarks (each bench is its own crate, so they
//! include this module with `mod support;`): the process's CPU time, which is what the
//! kernel benchmarks report because the machine may be shared, and settings from the
//! environment.

use std::time::Duration;

/// CPU time used so far by every thread of this process: the sum of the first field of
/// `/proc/self/task/*/schedstat` (Linux; zero elsewhere).
pub fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// [`cpu_time`] in seconds.
#[allow(dead_code)] // not every bench reports seconds
pub fn cpu_seconds() -> f64 {
    cpu_time().as_secs_f64()
}

/// The environment variable `name` as a number, or `default` when unset or not a number.
#[allow(dead_code)] // not every bench takes settings
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The benches' pseudo-random stream (xorshift64): fixed seeds, so every run and machine
/// draws the same weights and activations.
#[allow(dead_code)] // not every bench draws data
pub struct Xorshift(u64);

#[allow(dead_code)]
impl Xorshift {
    /// A stream from state `s` (not zero).
    pub fn new(s: u64) -> Xorshift {
        Xorshift(s)
    }

    /// The next value in [0, 1), 24 bits.
    pub fn unit(&mut self) -> f32 {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 40) as f32 / (1u64 << 24) as f32
    }
}
