//! policy: apply the policy file to the source model (licences, provenance, security
//! rules, waivers) and its quantization rule to every artifact. The policy stage reports
//! its own gate details and licence summary.

use std::path::PathBuf;

use serde_json::json;

use super::{artifact_inputs, open_facts, Context, StepKey, StepOutcome};
use crate::finding::Finding;
use crate::pipeline::file::PolicyStep;
use crate::pipeline::{LicenceSummary, PipelineError, StepRecord};
use crate::policy::{self, Detail, Policy};
use crate::report::GateReport;

/// Read the pipeline's policy file, which a policy step requires.
pub fn load(cx: &Context) -> Result<Policy, PipelineError> {
    let p = cx.pipeline;
    let path = p.policy.as_ref().ok_or_else(|| PipelineError::Invalid {
        path: p.path.clone(),
        message: "`steps.policy` needs a top-level `policy:` file".into(),
    })?;
    Policy::load(path).map_err(|e| PipelineError::step("policy", e))
}

pub fn key(pol: &Policy, cx: &Context) -> Result<StepKey, PipelineError> {
    let today = policy::Date::today().map_err(PipelineError::Internal)?;
    let mut inputs = cx.model_inputs();
    inputs.insert("policy".into(), pol.digest.to_hex());
    for (_, a) in &cx.artifacts {
        inputs.extend(artifact_inputs(a));
    }
    // Waivers expire: the date is part of the settings.
    let mut settings = json!({ "date": today.to_string() });
    if cx.pipeline.hub.is_some() {
        // The provenance rules judge the revision asked for, which the digest omits.
        settings["model"] = json!(cx.pipeline.model_name());
    }
    Ok(StepKey {
        name: "policy".into(),
        kind: "policy",
        inputs,
        settings,
    })
}

/// The policy gate on the source and on each artifact, and the licence summary for the
/// policy's intended use.
pub struct Checked {
    gates: Vec<GateReport>,
    licence: LicenceSummary,
}

pub fn run(_settings: &PolicyStep, pol: &Policy, cx: &Context) -> Result<Checked, PipelineError> {
    let model = &cx.pipeline.model;
    let err = |e| PipelineError::step("policy", e);
    let mut facts = open_facts(model, true, "policy")?;
    // An `hf://` source's provenance, for the `provenance.require_pinned_revision` and
    // `provenance.allowed_publishers` rules.
    facts.hub = cx.source.clone();
    let outcome = policy::check(&facts, pol, cx.catalogues()?).map_err(err)?;
    let mut g = GateReport::new("policy", model, outcome.findings.clone());
    g.subject = cx.pipeline.model_name();
    g.waived = outcome.waived.clone();
    g.details = Some(outcome.details(pol, &facts, Detail::Run));
    let mut gates = vec![g];
    // Artifacts: the policy's quantization rule on their own tensor types.
    for (_, art) in &cx.artifacts {
        let path = cx.out.join(&art.path);
        let af = open_facts(&path, false, "policy")?;
        let mut f = facts.clone();
        f.subject = path.clone();
        f.tensor_types = af.tensor_types;
        f.weights_file = Some(match af.weights_file {
            Some(w) if path.is_dir() => PathBuf::from(&art.path).join(w),
            _ => PathBuf::from(&art.path),
        });
        let o = policy::check(&f, pol, cx.catalogues()?).map_err(err)?;
        let keep = |v: &[Finding]| -> Vec<Finding> {
            v.iter()
                .filter(|x| x.rule == policy::rules::QUANT_TYPE)
                .cloned()
                .collect()
        };
        let mut g = GateReport::new("policy", &path, keep(&o.findings));
        g.waived = keep(&o.waived);
        gates.push(g);
    }
    let licence = outcome.assessment.licence_summary(
        &outcome.obligations,
        &outcome.documents,
        cx.catalogues()?,
        Some(pol.file.name.clone()),
    );
    Ok(Checked { gates, licence })
}

impl StepOutcome for Checked {
    fn fill(self, rec: &mut StepRecord) {
        rec.gates.extend(self.gates);
        rec.licence = Some(self.licence);
    }
}
