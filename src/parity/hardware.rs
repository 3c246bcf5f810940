//! The fingerprint of the machine a parity run or a golden recording happened on: CPU
//! model and the SIMD features the kernels can use, threads and device. Golden files carry
//! it so that a reviewer sees whether `check` ran on the hardware the golden was made for.

use serde::{Deserialize, Serialize};

use crate::engine::DeviceSpec;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// CPU model name (`/proc/cpuinfo` on Linux), or `unknown`.
    pub cpu: String,
    /// Target architecture (`x86_64`, `aarch64`).
    pub arch: String,
    pub os: String,
    /// SIMD features detected at run time that matter to the matrix kernels.
    pub features: Vec<String>,
    /// Threads the engine's kernels use.
    pub threads: usize,
    pub device: String,
}

impl Hardware {
    pub fn detect(device: &DeviceSpec) -> Hardware {
        Hardware {
            cpu: cpu_model().unwrap_or_else(|| "unknown".into()),
            arch: std::env::consts::ARCH.into(),
            os: std::env::consts::OS.into(),
            features: features(),
            threads: candle_core::utils::get_num_threads(),
            device: device.to_string(),
        }
    }
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim();
            (k == "model name" || k == "Model" || k == "Hardware").then(|| v.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
}

#[cfg(target_arch = "x86_64")]
fn features() -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($f) {
                out.push($f.to_string());
            }
        )*};
    }
    probe!(
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vnni",
        "sha"
    );
    out
}

#[cfg(target_arch = "aarch64")]
fn features() -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => {$(
            if std::arch::is_aarch64_feature_detected!($f) {
                out.push($f.to_string());
            }
        )*};
    }
    probe!("neon", "fp16", "dotprod", "i8mm", "sve");
    out
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn features() -> Vec<String> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_this_machine() {
        let h = Hardware::detect(&DeviceSpec::Cpu);
        assert_eq!(h.device, "cpu");
        assert_eq!(h.arch, std::env::consts::ARCH);
        assert!(h.threads >= 1);
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        assert_ne!(h.cpu, "unknown");
    }
}
