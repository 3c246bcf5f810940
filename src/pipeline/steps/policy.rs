//! policy: apply the policy file to the source model (licences, provenance, security
//! rules, waivers) and its quantization rule to every artifact. The policy stage reports
//! its own gate details and licence summary. A policy's `signing.trusted_identities`
//! also requires the source to carry a Sigstore signature by one of them: the policy
//! stage only holds the list, so the check is made here (and in `policy check`), where
//! calling the sign stage is allowed.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{artifact_inputs, open_facts, Context, StepKey, StepOutcome};
use crate::finding::{Evidence, Finding, Severity};
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
    let mut findings = outcome.findings.clone();
    findings.extend(
        signed_by_trusted_identity(model, pol).map_err(|e| PipelineError::step("policy", e))?,
    );
    let mut g = GateReport::new("policy", model, findings);
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

/// The rule of a model that is not signed by a trusted identity.
pub const SIGNED_BY: &str = "policy/signed-by-trusted-identity";

/// `signing.trusted_identities`: the model's signature (`model.sig` in a model directory,
/// `FILE.sig` beside a file) must be a Sigstore keyless signature by one of them that
/// verifies under the built-in production trust root, and the files must match it. No
/// findings when the policy lists no identities; error findings when it does and the
/// model is unsigned, signed by someone else, or changed.
pub fn signed_by_trusted_identity(
    model: &Path,
    pol: &Policy,
) -> Result<Vec<Finding>, crate::sign::SignError> {
    use crate::sign::sigstore::{KeylessTrust, TrustRootSource, TrustedIdentity};
    use crate::sign::{default_signature_path, verify_model, Trust, VerifyRequest};
    let Some(rules) = &pol.file.signing else {
        return Ok(Vec::new());
    };
    if rules.trusted_identities.is_empty() {
        return Ok(Vec::new());
    }
    let expected: Vec<String> = rules
        .trusted_identities
        .iter()
        .map(|t| format!("`{}` from `{}`", t.identity, t.issuer))
        .collect();
    let signature = default_signature_path(model);
    if !signature.exists() {
        return Ok(vec![Finding::new(
            SIGNED_BY,
            Severity::Error,
            format!(
                "policy `{}` requires a Sigstore signature by {}, but `{}` is not signed \
                 (no `{}`)",
                pol.file.name,
                expected.join(" or "),
                model.display(),
                signature.display()
            ),
        )
        .at(Evidence::file(model))
        .hint(
            "adopt the model with the `model.sig` its publisher's CI wrote",
        )]);
    }
    let identities = rules
        .trusted_identities
        .iter()
        .map(|t| TrustedIdentity {
            identity: t.identity.clone(),
            issuer: t.issuer.clone(),
        })
        .collect();
    let trust = KeylessTrust::load(TrustRootSource::Production, identities)?;
    let verification = verify_model(&VerifyRequest {
        model,
        signature: &signature,
        attestation: None,
        trust: Trust::Sigstore(&trust),
        ignore_unsigned: false,
        extra_ignore: Vec::new(),
        threads: None,
    })?;
    let failed = verification
        .findings
        .iter()
        .any(|f| f.severity == Severity::Error);
    let mut findings = verification.findings;
    if !failed {
        findings.push(Finding::new(
            SIGNED_BY,
            Severity::Note,
            format!(
                "signed by a trusted identity of policy `{}` ({})",
                pol.file.name,
                expected.join(" or ")
            ),
        ));
    }
    Ok(findings)
}
