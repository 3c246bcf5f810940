//! verify: scan every artifact as untrusted input and re-open it as a model, checking it
//! holds the tensors the conversion wrote.

use serde_json::json;

use super::{artifact_inputs, Context, StepKey, StepOutcome};
use crate::finding::{Evidence, Finding, Severity};
use crate::formats::Checkpoint;
use crate::pipeline::file::VerifyStep;
use crate::pipeline::{Artifact, PipelineError, StepRecord};
use crate::report::GateReport;

/// Rule of the verify step: an artifact that does not open as the model it should be.
pub const RULE_ARTIFACT_STRUCTURE: &str = "pipeline/artifact-structure";

pub fn key(a: &Artifact) -> StepKey {
    StepKey {
        name: format!("verify:{}", a.name),
        kind: "verify",
        inputs: artifact_inputs(a),
        settings: json!({ "tensors": a.tensors }),
    }
}

/// The verify gate's result on one artifact.
pub struct Verified {
    gate: GateReport,
}

pub fn run(_settings: &VerifyStep, a: &Artifact, cx: &Context) -> Result<Verified, PipelineError> {
    let path = cx.out.join(&a.path);
    let mut findings = crate::scan::scan(&path)
        .map_err(|e| PipelineError::step(&format!("verify:{}", a.name), e))?;
    let broken = |message: String| {
        Finding::new(RULE_ARTIFACT_STRUCTURE, Severity::Error, message).at(Evidence::file(&path))
    };
    match Checkpoint::open(&path) {
        Err(e) => findings.push(broken(format!(
            "artifact `{}` does not open as a model: {e}",
            a.path
        ))),
        Ok(c) => {
            let n = c.weights.tensors.len() as u64;
            if n != a.tensors {
                findings.push(broken(format!(
                    "artifact `{}` holds {n} tensors, expected the {} the conversion wrote",
                    a.path, a.tensors
                )));
            }
        }
    }
    Ok(Verified {
        gate: GateReport::new("verify", &path, findings),
    })
}

impl StepOutcome for Verified {
    fn fill(self, rec: &mut StepRecord) {
        rec.gates.push(self.gate);
    }
}
