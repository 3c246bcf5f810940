//! Per-position comparison of two next-token distributions and the summary statistics of
//! llama.cpp's `llama-perplexity --kl-divergence` (reference.md section 4): KLD with its
//! percentiles, perplexities and their ratio, delta-p, top-1 agreement, max |delta logit|.
//!
//! Everything is accumulated in f64 from f32 logits; a position is compared either against
//! the reference's full logits ([`compare_full`]) or against a golden file's top-k
//! ([`compare_topk`]), and both produce the same [`Position`] so one [`Summary`] serves
//! `parity`, `parity record` (its noise floor) and `parity check`.

use serde::{Deserialize, Serialize};

/// One scored position: how the candidate's distribution differs from the reference's at
/// a token whose successor is known.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    /// KL(reference || candidate), in nats.
    pub kld: f64,
    /// Negative log-likelihood of the actual next token under each model.
    pub nll_ref: f64,
    pub nll_cand: f64,
    /// Whether both models' most likely tokens agree.
    pub same_top1: bool,
    /// Largest |logit difference| over the compared vocabulary.
    pub max_abs_dlogit: f64,
    /// Reference probability mass outside the compared tokens (0 for full comparisons).
    pub tail_mass: f64,
}

impl Position {
    /// p_candidate(next) - p_reference(next).
    pub fn delta_p(&self) -> f64 {
        (-self.nll_cand).exp() - (-self.nll_ref).exp()
    }
}

/// `ln sum exp(x)` in f64, stable for any finite row.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    if !max.is_finite() {
        return max;
    }
    let s: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + s.ln()
}

/// The index of the largest value; ties go to the lowest index, as in greedy decoding.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Compare two full rows of logits (same vocabulary) at a position whose next token is
/// `next`.
pub fn compare_full(reference: &[f32], candidate: &[f32], next: usize) -> Position {
    let lse_r = log_sum_exp(reference);
    let lse_c = log_sum_exp(candidate);
    let mut kld = 0.0;
    let mut max_abs = 0.0f64;
    for (&r, &c) in reference.iter().zip(candidate) {
        let lr = r as f64 - lse_r;
        let lc = c as f64 - lse_c;
        let p = lr.exp();
        if p > 0.0 {
            kld += p * (lr - lc);
        }
        max_abs = max_abs.max((r as f64 - c as f64).abs());
    }
    Position {
        // Rounding can leave a tiny negative sum for identical distributions.
        kld: kld.max(0.0),
        nll_ref: lse_r - reference[next] as f64,
        nll_cand: lse_c - candidate[next] as f64,
        same_top1: argmax(reference) == argmax(candidate),
        max_abs_dlogit: max_abs,
        tail_mass: 0.0,
    }
}

/// The reference side of one position as a golden file keeps it: the top-k logits (highest
/// first), the log-sum-exp of the whole row and the log-probability of the next token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    /// `[token id, logit]` pairs, highest logit first.
    pub top: Vec<(u32, f32)>,
    pub lse: f64,
    pub next_logprob: f64,
}

impl TopK {
    pub fn from_row(row: &[f32], next: usize, k: usize) -> TopK {
        let lse = log_sum_exp(row);
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let k = k.min(row.len());
        // Highest logit first, lowest id first among equals: the same order argmax uses.
        let key = |&i: &u32| (std::cmp::Reverse(OrdF32(row[i as usize])), i);
        if k < idx.len() {
            idx.select_nth_unstable_by_key(k, key);
            idx.truncate(k);
        }
        idx.sort_by_key(key);
        TopK {
            top: idx.into_iter().map(|i| (i, row[i as usize])).collect(),
            lse,
            next_logprob: row[next] as f64 - lse,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Compare a candidate's full row with a golden top-k. The KLD is computed over the top-k
/// tokens plus one bucket holding the rest of the vocabulary; merging outcomes never
/// increases a KL divergence, so this is a lower bound of the full KLD, tight when the
/// reference's tail mass is small (reported as `tail_mass`).
pub fn compare_topk(golden: &TopK, candidate: &[f32], next: usize) -> Position {
    let lse_c = log_sum_exp(candidate);
    let mut kld = 0.0;
    let mut p_sum = 0.0;
    let mut q_sum = 0.0;
    let mut max_abs = 0.0f64;
    for &(id, logit) in &golden.top {
        let c = candidate
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        let lr = logit as f64 - golden.lse;
        let lc = c as f64 - lse_c;
        let p = lr.exp();
        p_sum += p;
        q_sum += lc.exp();
        if p > 0.0 {
            kld += p * (lr - lc);
        }
        max_abs = max_abs.max((logit as f64 - c as f64).abs());
    }
    let tail_p = (1.0 - p_sum).max(0.0);
    let tail_q = (1.0 - q_sum).max(f64::MIN_POSITIVE);
    if tail_p > 0.0 {
        kld += tail_p * (tail_p.ln() - tail_q.ln());
    }
    let ref_top = golden.top.first().map(|t| t.0 as usize);
    Position {
        kld: kld.max(0.0),
        nll_ref: -golden.next_logprob,
        nll_cand: lse_c - candidate[next] as f64,
        same_top1: ref_top == Some(argmax(candidate)),
        max_abs_dlogit: max_abs,
        tail_mass: tail_p,
    }
}

/// A mean with its standard error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub stderr: f64,
}

/// Percentiles of a series, by linear interpolation between order statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub min: f64,
    pub p1: f64,
    pub p5: f64,
    pub p10: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let x = (sorted.len() - 1) as f64 * p;
    let lo = x.floor() as usize;
    let hi = x.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo as f64)
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Percentiles {
        v.sort_by(f64::total_cmp);
        let p = |q| percentile(&v, q);
        Percentiles {
            min: p(0.0),
            p1: p(0.01),
            p5: p(0.05),
            p10: p(0.10),
            p25: p(0.25),
            median: p(0.5),
            p75: p(0.75),
            p90: p(0.90),
            p95: p(0.95),
            p99: p(0.99),
            p99_9: p(0.999),
            max: p(1.0),
        }
    }
}

/// The statistics of a comparison, as llama.cpp reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Scored positions.
    pub positions: usize,
    pub mean_kld: Estimate,
    pub kld: Percentiles,
    pub ppl_reference: Estimate,
    pub ppl_candidate: Estimate,
    /// PPL(candidate) / PPL(reference).
    pub ppl_ratio: Estimate,
    /// mean ln(PPL_candidate / PPL_reference), its error from the covariance of the two NLL
    /// series.
    pub mean_ln_ppl_ratio: Estimate,
    /// Pearson correlation of the per-position NLLs of both models.
    pub nll_correlation: f64,
    /// p_candidate(next) - p_reference(next).
    pub mean_delta_p: Estimate,
    pub rms_delta_p: Estimate,
    pub delta_p: Percentiles,
    /// Share of positions where both models' most likely tokens agree (0..=1).
    pub same_top1: Estimate,
    pub max_abs_delta_logit: f64,
    /// Reference mass outside the compared tokens: 0 unless compared with a golden top-k,
    /// where `mean_kld` is then a lower bound.
    pub mean_tail_mass: f64,
    pub max_tail_mass: f64,
}

fn mean_se(v: &[f64]) -> Estimate {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let stderr = if v.len() > 1 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Estimate {
        value: mean,
        stderr,
    }
}

impl Summary {
    /// Summarise positions; `None` when there are none.
    pub fn of(ps: &[Position]) -> Option<Summary> {
        if ps.is_empty() {
            return None;
        }
        let n = ps.len() as f64;
        let kld: Vec<f64> = ps.iter().map(|p| p.kld).collect();
        let nr: Vec<f64> = ps.iter().map(|p| p.nll_ref).collect();
        let nc: Vec<f64> = ps.iter().map(|p| p.nll_cand).collect();
        let diff: Vec<f64> = ps.iter().map(|p| p.nll_cand - p.nll_ref).collect();
        let dp: Vec<f64> = ps.iter().map(Position::delta_p).collect();
        let dp2: Vec<f64> = dp.iter().map(|d| d * d).collect();

        let mr = mean_se(&nr);
        let mc = mean_se(&nc);
        // The SE of the mean difference equals sqrt(se_r^2 + se_c^2 - 2 cov / (n - 1)),
        // the covariance form llama.cpp uses.
        let ln_ratio = mean_se(&diff);
        let cov = nr
            .iter()
            .zip(&nc)
            .map(|(a, b)| (a - mr.value) * (b - mc.value))
            .sum::<f64>()
            / n;
        let sd_r = (nr.iter().map(|a| (a - mr.value).powi(2)).sum::<f64>() / n).sqrt();
        let sd_c = (nc.iter().map(|b| (b - mc.value).powi(2)).sum::<f64>() / n).sqrt();
        let corr = if sd_r > 0.0 && sd_c > 0.0 {
            cov / (sd_r * sd_c)
        } else {
            1.0
        };
        let ppl = |m: Estimate| Estimate {
            value: m.value.exp(),
            stderr: m.value.exp() * m.stderr,
        };
        let ratio = ln_ratio.value.exp();
        let ms = mean_se(&dp2);
        let rms = ms.value.sqrt();
        let top1 = ps.iter().filter(|p| p.same_top1).count() as f64 / n;
        let top1_se = if ps.len() > 1 {
            (top1 * (1.0 - top1) / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(Summary {
            positions: ps.len(),
            mean_kld: mean_se(&kld),
            kld: Percentiles::of(kld),
            ppl_reference: ppl(mr),
            ppl_candidate: ppl(mc),
            ppl_ratio: Estimate {
                value: ratio,
                stderr: ratio * ln_ratio.stderr,
            },
            mean_ln_ppl_ratio: ln_ratio,
            nll_correlation: corr,
            mean_delta_p: mean_se(&dp),
            rms_delta_p: Estimate {
                value: rms,
                stderr: if rms > 0.0 {
                    ms.stderr / (2.0 * rms)
                } else {
                    0.0
                },
            },
            delta_p: Percentiles::of(dp),
            same_top1: Estimate {
                value: top1,
                stderr: top1_se,
            },
            max_abs_delta_logit: ps.iter().map(|p| p.max_abs_dlogit).fold(0.0, f64::max),
            mean_tail_mass: ps.iter().map(|p| p.tail_mass).sum::<f64>() / n,
            max_tail_mass: ps.iter().map(|p| p.tail_mass).fold(0.0, f64::max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_have_zero_divergence() {
        let r = [1.0f32, 2.0, -3.0, 0.5];
        let p = compare_full(&r, &r, 1);
        assert_eq!(p.kld, 0.0);
        assert!(p.same_top1);
        assert_eq!(p.max_abs_dlogit, 0.0);
        assert_eq!(p.nll_ref, p.nll_cand);
        // a shift of every logit is the same distribution
        let shifted: Vec<f32> = r.iter().map(|x| x + 4.0).collect();
        let p = compare_full(&r, &shifted, 1);
        assert!(p.kld < 1e-12);
        assert_eq!(p.max_abs_dlogit, 4.0);
    }

    #[test]
    fn kld_matches_the_formula() {
        let r = [0.0f32, 1.0];
        let c = [1.0f32, 0.0];
        let p = |a: f64, b: f64| a.exp() / (a.exp() + b.exp());
        let (p0, p1) = (p(0.0, 1.0), p(1.0, 0.0));
        let (q0, q1) = (p(1.0, 0.0), p(0.0, 1.0));
        let want = p0 * (p0 / q0).ln() + p1 * (p1 / q1).ln();
        let got = compare_full(&r, &c, 0);
        assert!((got.kld - want).abs() < 1e-12);
        assert!(!got.same_top1);
        assert!((got.nll_ref + p0.ln()).abs() < 1e-12);
        assert!((got.delta_p() - (q0 - p0)).abs() < 1e-12);
    }

    #[test]
    fn topk_bucket_bounds_the_full_kld_from_below() {
        let r: Vec<f32> = (0..50).map(|i| ((i * 37 % 11) as f32) * 0.3).collect();
        let c: Vec<f32> = (0..50).map(|i| ((i * 53 % 13) as f32) * 0.25).collect();
        let full = compare_full(&r, &c, 7);
        for k in [1, 5, 20, 49] {
            let g = TopK::from_row(&r, 7, k);
            let b = compare_topk(&g, &c, 7);
            assert!(b.kld <= full.kld + 1e-12, "k {k}: {} > {}", b.kld, full.kld);
            assert_eq!(b.nll_ref, full.nll_ref);
            assert_eq!(b.nll_cand, full.nll_cand);
            assert_eq!(b.same_top1, full.same_top1);
        }
        let all = compare_topk(&TopK::from_row(&r, 7, 50), &c, 7);
        assert!((all.kld - full.kld).abs() < 1e-12);
        assert!(all.tail_mass < 1e-12);
    }

    #[test]
    fn topk_is_sorted_like_argmax() {
        let row = [0.5f32, 3.0, 3.0, -1.0, 2.0];
        let t = TopK::from_row(&row, 0, 3);
        assert_eq!(t.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 4]);
        assert_eq!(t.top[0].0 as usize, argmax(&row));
    }

    #[test]
    fn summary_of_known_series() {
        let ps: Vec<Position> = (0..4)
            .map(|i| Position {
                kld: i as f64,
                nll_ref: 1.0,
                nll_cand: 1.0 + i as f64 * 0.1,
                same_top1: i % 2 == 0,
                max_abs_dlogit: i as f64,
                tail_mass: 0.0,
            })
            .collect();
        let s = Summary::of(&ps).unwrap();
        assert_eq!(s.positions, 4);
        assert!((s.mean_kld.value - 1.5).abs() < 1e-12);
        assert!((s.kld.median - 1.5).abs() < 1e-12);
        assert_eq!(s.kld.max, 3.0);
        assert!((s.same_top1.value - 0.5).abs() < 1e-12);
        assert!((s.mean_ln_ppl_ratio.value - 0.15).abs() < 1e-12);
        assert!((s.ppl_ratio.value - 0.15f64.exp()).abs() < 1e-12);
        assert!((s.ppl_reference.value - 1f64.exp()).abs() < 1e-12);
        assert_eq!(s.max_abs_delta_logit, 3.0);
        assert!(Summary::of(&[]).is_none());
    }
}
