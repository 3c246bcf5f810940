//! scan: look for code, malformed structure and broken values in the source model before
//! anything else loads it.

use super::{Context, StepKey, StepOutcome};
use crate::pipeline::file::ScanStep;
use crate::pipeline::{PipelineError, StepRecord};
use crate::report::GateReport;

pub fn key(cx: &Context) -> StepKey {
    StepKey {
        name: "scan".into(),
        kind: "scan",
        inputs: cx.model_inputs(),
        settings: serde_json::json!({}),
    }
}

/// The scan gate's result on the source model.
pub struct Scanned {
    gate: GateReport,
}

pub fn run(_settings: &ScanStep, cx: &Context) -> Result<Scanned, PipelineError> {
    let model = &cx.pipeline.model;
    let findings = crate::scan::scan(model).map_err(|e| PipelineError::step("scan", e))?;
    let mut gate = GateReport::new("scan", model, findings);
    // The model as the pipeline file names it, not the local copy of an `hf://` source.
    gate.subject = cx.pipeline.model_name();
    Ok(Scanned { gate })
}

impl StepOutcome for Scanned {
    fn fill(self, rec: &mut StepRecord) {
        rec.gates.push(self.gate);
    }
}
