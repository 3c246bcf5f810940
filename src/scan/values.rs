//! Tensor value checks: NaN or infinite values and tensors that are zero throughout, in
//! F32, F16, BF16 and F64 tensors read through the format readers' memory maps.
//!
//! NaN and Inf are errors: a model that holds them produces NaN logits on some input. An
//! all-zero tensor is a warning: a truncated download or a broken conversion leaves them,
//! but some freshly initialised biases are legitimately zero. Integer and block-quantized
//! tensors (GGUF Q*, IQ*) are not decoded and not checked.

use std::path::Path;

use rayon::prelude::*;

use crate::finding::{Evidence, Finding, Severity};
use crate::formats::{DType, TensorInfo, Weights};

use super::{RULE_ALL_ZERO, RULE_NAN_INF, RULE_UNREADABLE};

/// What one pass over a tensor found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    nan: u64,
    inf: u64,
    /// Index of the first NaN or Inf.
    first_bad: Option<u64>,
    nonzero: bool,
}

/// Classify one element from its bits: (is NaN, is infinite, is zero).
fn scan_elems<const N: usize>(
    data: &[u8],
    classify: impl Fn([u8; N]) -> (bool, bool, bool),
) -> Stats {
    let mut s = Stats::default();
    for (i, chunk) in data.chunks_exact(N).enumerate() {
        let mut b = [0u8; N];
        b.copy_from_slice(chunk);
        let (nan, inf, zero) = classify(b);
        if nan || inf {
            if nan {
                s.nan += 1;
            } else {
                s.inf += 1;
            }
            s.first_bad.get_or_insert(i as u64);
        }
        s.nonzero |= !zero;
    }
    s
}

fn stats(dtype: DType, data: &[u8]) -> Option<Stats> {
    Some(match dtype {
        DType::F32 => scan_elems::<4>(data, |b| {
            let x = u32::from_le_bytes(b);
            let exp_max = x & 0x7f80_0000 == 0x7f80_0000;
            let mant = x & 0x007f_ffff != 0;
            (exp_max && mant, exp_max && !mant, x & 0x7fff_ffff == 0)
        }),
        DType::F16 => scan_elems::<2>(data, |b| {
            let x = u16::from_le_bytes(b);
            let exp_max = x & 0x7c00 == 0x7c00;
            let mant = x & 0x03ff != 0;
            (exp_max && mant, exp_max && !mant, x & 0x7fff == 0)
        }),
        DType::BF16 => scan_elems::<2>(data, |b| {
            let x = u16::from_le_bytes(b);
            let exp_max = x & 0x7f80 == 0x7f80;
            let mant = x & 0x007f != 0;
            (exp_max && mant, exp_max && !mant, x & 0x7fff == 0)
        }),
        DType::F64 => scan_elems::<8>(data, |b| {
            let x = f64::from_le_bytes(b);
            (x.is_nan(), x.is_infinite(), x == 0.0)
        }),
        _ => return None,
    })
}

/// Check every float tensor of a weight set. `rel` names the file the weights came from.
/// Tensors are checked in parallel; findings keep tensor order.
pub(super) fn check(w: &Weights, rel: &Path, out: &mut Vec<Finding>) {
    let per_tensor: Vec<Vec<Finding>> = w
        .tensors
        .par_iter()
        .map(|t| {
            let mut found = Vec::new();
            if t.elements() == 0 {
                return found;
            }
            match w.tensor_data(t) {
                Ok(data) => {
                    if let Some(s) = stats(t.dtype, data) {
                        report(t, &s, rel, &mut found);
                    }
                }
                Err(e) => found.push(
                    Finding::new(
                        RULE_UNREADABLE,
                        Severity::Error,
                        format!("cannot read tensor `{}`: {}", t.name, super::fault_text(&e)),
                    )
                    .at(Evidence::file(rel).with_key(t.name.to_string())),
                ),
            }
            found
        })
        .collect();
    out.extend(per_tensor.into_iter().flatten());
}

fn report(t: &TensorInfo, s: &Stats, rel: &Path, out: &mut Vec<Finding>) {
    let ev = Evidence::file(rel).with_key(t.name.to_string());
    if let Some(i) = s.first_bad {
        let size = t.dtype.bits().unwrap_or(8) / 8;
        let offset = t.offset.saturating_add(i.saturating_mul(size));
        out.push(
            Finding::new(
                RULE_NAN_INF,
                Severity::Error,
                format!(
                    "tensor `{}` ({}, {} elements) holds {} NaN and {} infinite values, the first at element {i}",
                    t.name,
                    t.dtype,
                    t.elements(),
                    s.nan,
                    s.inf
                ),
            )
            .at(ev.clone().with_offset(offset))
            .hint("the checkpoint is corrupt or was saved mid-divergence; get a known-good copy"),
        );
    }
    if !s.nonzero {
        out.push(
            Finding::new(
                RULE_ALL_ZERO,
                Severity::Warning,
                format!("tensor `{}` ({}, {} elements) is zero throughout", t.name, t.dtype, t.elements()),
            )
            .at(ev.with_offset(t.offset))
            .hint("a truncated download or broken conversion leaves zero tensors; compare the digest with the source"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_classes() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN, f32::NEG_INFINITY, -0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let s = stats(DType::F32, &f32s).unwrap();
        assert_eq!(
            (s.nan, s.inf, s.first_bad, s.nonzero),
            (1, 1, Some(1), true)
        );
        // f16: -0.0, 0.0 -> all zero; bf16 inf
        let s = stats(DType::F16, &[0x00, 0x80, 0x00, 0x00]).unwrap();
        assert!(!s.nonzero);
        assert_eq!(s.first_bad, None);
        let s = stats(DType::BF16, &0x7f80u16.to_le_bytes()).unwrap();
        assert_eq!((s.nan, s.inf), (0, 1));
        let s = stats(DType::F16, &0x7e00u16.to_le_bytes()).unwrap();
        assert_eq!((s.nan, s.inf), (1, 0));
        assert!(stats(DType::I32, &[0; 4]).is_none());
    }
}
