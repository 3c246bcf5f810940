//! Parity verdicts: the limits a candidate's statistics must stay within, per quant type.
//!
//! Built-in defaults follow llama.cpp's published Llama-3-8B figures (reference.md
//! section 4: mean KLD Q8_0 0.00136, Q6_K 0.0055, Q5_K_M 0.0108, Q4_K_M 0.0313, Q4_0 0.0719,
//! Q3_K_M 0.102, Q2_K 0.445; top-1 97.7 % .. 71.1 %) with headroom, because small models
//! drift more for the same type (llama.cpp measures SmolLM2 Q4_K_M at 0.053 and Q4_0 at
//! 0.276). A policy file's `parity.thresholds` (keyed by quant type, or `default`) replaces
//! them, and a pipeline file's `steps.parity.thresholds` replaces the policy's.
//!
//! [`Thresholds::resolve`] is the one place that decides which limits apply: `modelgate
//! parity` and the pipeline's parity step both call it with the tables they have, most
//! specific first.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::stats::Summary;
use crate::finding::{Evidence, Finding, Severity};
use crate::policy::file::ParityThreshold;
use crate::policy::Policy;

/// The limits applied to one candidate and where they come from.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Thresholds {
    /// The quant type whose limits apply.
    pub quant: String,
    /// `built-in defaults` or the policy file and key.
    pub origin: String,
    pub limits: ParityThreshold,
}

/// One limit compared with its statistic.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    /// The policy key (`max_mean_kld`, `min_top1`, ...).
    pub limit: &'static str,
    pub value: f64,
    pub threshold: f64,
    pub passed: bool,
}

fn builtin(quant: &str) -> ParityThreshold {
    let t = |kld: f64, top1: f64, ppl: Option<f64>| ParityThreshold {
        max_mean_kld: Some(kld),
        max_p99_kld: None,
        min_top1: Some(top1),
        max_ppl_ratio: ppl,
        max_rms_delta_p: None,
    };
    match quant {
        "F32" => t(1e-4, 0.995, Some(1.001)),
        "F16" | "BF16" => t(2e-3, 0.98, Some(1.005)),
        "Q8_0" => t(0.01, 0.95, Some(1.02)),
        "Q6_K" => t(0.02, 0.9, None),
        "Q5_K_M" | "Q5_K_S" | "Q5_0" | "Q5_1" | "Q5_K" => t(0.05, 0.85, None),
        "Q4_K_M" | "Q4_K_S" | "Q4_K" => t(0.1, 0.8, Some(1.1)),
        "Q4_0" | "Q4_1" => t(0.3, 0.7, None),
        "Q3_K_L" | "Q3_K_M" | "Q3_K_S" | "Q3_K" => t(0.3, 0.7, None),
        _ => t(0.6, 0.55, None),
    }
}

/// A table of limits in a file, keyed by quant type or `default`, that replaces the
/// built-in defaults.
#[derive(Clone, Copy, Debug)]
pub struct Overrides<'a> {
    /// The file holding the table.
    pub file: &'a Path,
    /// Where the table is in the file: `parity.thresholds` in a policy,
    /// `steps.parity.thresholds` in a pipeline.
    pub field: &'static str,
    pub thresholds: &'a BTreeMap<String, ParityThreshold>,
}

impl<'a> Overrides<'a> {
    /// A policy's `parity.thresholds`, when it has a `parity` section.
    pub fn policy(policy: &'a Policy) -> Option<Overrides<'a>> {
        policy.file.parity.as_ref().map(|r| Overrides {
            file: &policy.path,
            field: "parity.thresholds",
            thresholds: &r.thresholds,
        })
    }
}

impl Thresholds {
    /// The limits for `quant`: from the first table of `overrides` with an entry for
    /// `quant`, or else for `default`; the built-in defaults when no table has either.
    pub fn resolve<'a>(
        quant: &str,
        overrides: impl IntoIterator<Item = Overrides<'a>>,
    ) -> Thresholds {
        for o in overrides {
            for key in [quant, "default"] {
                if let Some(l) = o.thresholds.get(key) {
                    return Thresholds {
                        quant: quant.into(),
                        origin: format!("`{}` {}.{key}", o.file.display(), o.field),
                        limits: l.clone(),
                    };
                }
            }
        }
        Thresholds {
            quant: quant.into(),
            origin: "built-in defaults".into(),
            limits: builtin(quant),
        }
    }

    pub fn check(&self, s: &Summary) -> Vec<Check> {
        let l = &self.limits;
        let mut out = Vec::new();
        let mut max = |limit, value: f64, t: Option<f64>| {
            if let Some(t) = t {
                out.push(Check {
                    limit,
                    value,
                    threshold: t,
                    passed: value <= t,
                });
            }
        };
        max("max_mean_kld", s.mean_kld.value, l.max_mean_kld);
        max("max_p99_kld", s.kld.p99, l.max_p99_kld);
        max("max_ppl_ratio", s.ppl_ratio.value, l.max_ppl_ratio);
        max("max_rms_delta_p", s.rms_delta_p.value, l.max_rms_delta_p);
        if let Some(t) = l.min_top1 {
            out.push(Check {
                limit: "min_top1",
                value: s.same_top1.value,
                threshold: t,
                passed: s.same_top1.value >= t,
            });
        }
        out
    }

    /// One error finding per failed limit.
    pub fn findings(&self, checks: &[Check], candidate: &Path) -> Vec<Finding> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| {
                let (what, cmp) = describe(c.limit);
                Finding::new(
                    format!("parity/{}", c.limit.replace('_', "-")),
                    Severity::Error,
                    format!(
                        "{what} {} {cmp} the {} limit {} ({})",
                        fmt(c.value),
                        self.quant,
                        fmt(c.threshold),
                        self.origin
                    ),
                )
                .at(Evidence::file(candidate))
                .hint("a less aggressive quant type, or a reviewed threshold in the policy's `parity.thresholds`")
            })
            .collect()
    }
}

fn describe(limit: &str) -> (&'static str, &'static str) {
    match limit {
        "max_mean_kld" => ("mean KLD", "exceeds"),
        "max_p99_kld" => ("99th percentile KLD", "exceeds"),
        "max_ppl_ratio" => ("PPL ratio", "exceeds"),
        "max_rms_delta_p" => ("RMS delta-p", "exceeds"),
        _ => ("top-1 agreement", "is below"),
    }
}

fn fmt(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.5}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parity::stats::{Position, Summary};

    fn summary(kld: f64, agree: bool) -> Summary {
        let p = Position {
            kld,
            nll_ref: 1.0,
            nll_cand: 1.0,
            same_top1: agree,
            max_abs_dlogit: 0.0,
            tail_mass: 0.0,
        };
        Summary::of(&[p, p]).unwrap()
    }

    fn kld(max_mean_kld: f64) -> ParityThreshold {
        ParityThreshold {
            max_mean_kld: Some(max_mean_kld),
            max_p99_kld: None,
            min_top1: None,
            max_ppl_ratio: None,
            max_rms_delta_p: None,
        }
    }

    #[test]
    fn policy_entry_beats_default_beats_builtin() {
        let th = BTreeMap::from([("default".to_string(), kld(0.5))]);
        let policy = Overrides {
            file: Path::new("p.yaml"),
            field: "parity.thresholds",
            thresholds: &th,
        };
        let t = Thresholds::resolve("Q8_0", [policy]);
        assert_eq!(t.limits.max_mean_kld, Some(0.5));
        assert_eq!(t.origin, "`p.yaml` parity.thresholds.default");
        let b = Thresholds::resolve("Q8_0", None);
        assert_eq!(b.limits.max_mean_kld, Some(0.01));
        assert_eq!(b.origin, "built-in defaults");
    }

    #[test]
    fn first_table_with_an_entry_wins_and_its_quant_key_beats_its_default() {
        let pipeline = BTreeMap::from([("Q4_0".to_string(), kld(0.2))]);
        let policy = BTreeMap::from([
            ("Q8_0".to_string(), kld(0.03)),
            ("default".to_string(), kld(0.5)),
        ]);
        let tables = [
            Overrides {
                file: Path::new("run.yaml"),
                field: "steps.parity.thresholds",
                thresholds: &pipeline,
            },
            Overrides {
                file: Path::new("p.yaml"),
                field: "parity.thresholds",
                thresholds: &policy,
            },
        ];
        let q4 = Thresholds::resolve("Q4_0", tables);
        assert_eq!(q4.limits.max_mean_kld, Some(0.2));
        assert_eq!(q4.origin, "`run.yaml` steps.parity.thresholds.Q4_0");
        let q8 = Thresholds::resolve("Q8_0", tables);
        assert_eq!(q8.origin, "`p.yaml` parity.thresholds.Q8_0");
        let q6 = Thresholds::resolve("Q6_K", tables);
        assert_eq!(q6.limits.max_mean_kld, Some(0.5));
        assert_eq!(q6.origin, "`p.yaml` parity.thresholds.default");
    }

    #[test]
    fn failed_limits_become_findings_naming_the_limit() {
        let t = Thresholds::resolve("Q8_0", None);
        let ok = t.check(&summary(0.001, true));
        assert!(ok.iter().all(|c| c.passed));
        assert!(t.findings(&ok, Path::new("m.gguf")).is_empty());
        let bad = t.check(&summary(0.5, false));
        let f = t.findings(&bad, Path::new("m.gguf"));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].rule, "parity/max-mean-kld");
        assert!(f[0]
            .message
            .contains("mean KLD 0.50000 exceeds the Q8_0 limit 0.01000"));
        assert!(f[1].message.contains("top-1 agreement 0.00000 is below"));
    }
}
