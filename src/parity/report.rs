//! The parity stage's piece of a pipeline run report: the metrics table and the origin of
//! the thresholds, which `report.md` renders per target. The full [`ParityReport`] still
//! goes into the gate's details; this is the short form a reviewer reads.

use serde_json::{json, Value};

use super::ParityReport;

impl ParityReport {
    /// The run report's parity entry for `candidate` against `reference` (target names):
    /// each checked limit with its value, threshold and result, then the headline
    /// statistics.
    pub fn run_entry(&self, reference: &str, candidate: &str) -> Value {
        let s = &self.summary;
        let mut metrics: Vec<Value> = self
            .checks
            .iter()
            .map(|c| json!({ "name": c.limit, "value": c.value, "threshold": c.threshold, "pass": c.passed }))
            .collect();
        for (k, v) in [
            ("mean KLD", s.mean_kld.value),
            ("p99 KLD", s.kld.p99),
            ("same top-1", s.same_top1.value),
            ("PPL ratio", s.ppl_ratio.value),
            ("RMS Δp", s.rms_delta_p.value),
        ] {
            metrics.push(json!({ "name": k, "value": v }));
        }
        metrics.push(json!({ "name": "scored positions", "value": s.positions.to_string() }));
        json!({
            "reference": reference,
            "candidate": candidate,
            "quant": self.thresholds.as_ref().map(|t| t.quant.clone()),
            "thresholds": self.thresholds.as_ref().map(|t| t.origin.clone()),
            "metrics": metrics,
        })
    }
}
