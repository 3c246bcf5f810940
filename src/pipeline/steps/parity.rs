//! parity: compare each target with the reference (the source, or another target) on the
//! evaluation text and judge it against the thresholds that apply: the pipeline's
//! `steps.parity.thresholds`, else the policy's, else the built-in ones, as
//! [`Thresholds::resolve`] decides for `modelgate parity` too.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::{digest_of, Context, StepKey, StepOutcome};
use crate::formats::Checkpoint;
use crate::parity::thresholds::Overrides;
use crate::parity::{self, Thresholds};
use crate::pipeline::file::{ParityStep, Target};
use crate::pipeline::{PipelineError, StepRecord};
use crate::policy::Policy;
use crate::report::GateReport;

/// The targets to compare: those named, else every target but the reference.
pub fn targets(settings: &ParityStep, targets: &[Target]) -> Vec<String> {
    match &settings.targets {
        Some(t) => t.clone(),
        None => targets
            .iter()
            .map(|t| t.name.clone())
            .filter(|n| *n != settings.reference)
            .collect(),
    }
}

/// What every parity step of a run shares: the text, the reference and the policy.
pub struct Parity<'s> {
    settings: &'s ParityStep,
    text: PathBuf,
    text_digest: String,
    /// The reference model and its digest, when it exists.
    reference: Option<(PathBuf, String)>,
    /// The policy whose thresholds apply (the policy step's, or the pipeline's policy
    /// file when there is no policy step).
    policy: Option<Policy>,
}

impl<'s> Parity<'s> {
    pub fn new(settings: &'s ParityStep, cx: &Context) -> Result<Self, PipelineError> {
        let p = cx.pipeline;
        let text = p.resolve(&settings.text);
        let text_digest = digest_of(&text)?;
        let reference = if settings.reference == "source" {
            Some((p.model.clone(), cx.model_digest.clone()))
        } else {
            cx.artifact(&settings.reference)
                .map(|a| (cx.out.join(&a.path), a.sha256.clone()))
        };
        let policy = match (&cx.policy, &p.policy) {
            (Some(pol), _) => Some(pol.clone()),
            (None, Some(pp)) => {
                Some(Policy::load(pp).map_err(|e| PipelineError::step("parity", e))?)
            }
            (None, None) => None,
        };
        Ok(Parity {
            settings,
            text,
            text_digest,
            reference,
            policy,
        })
    }

    /// The key and the models of the step comparing `target`, or `None` when it or the
    /// reference was not produced.
    pub fn plan(&self, target: &str, cx: &Context) -> Option<(StepKey, Job)> {
        let (ref_path, ref_digest) = self.reference.as_ref()?;
        let a = cx.artifact(target)?;
        let ps = self.settings;
        let mut inputs = std::collections::BTreeMap::from([
            ("reference".to_owned(), ref_digest.clone()),
            (format!("artifact:{target}"), a.sha256.clone()),
            ("text".to_owned(), self.text_digest.clone()),
        ]);
        if let Some(pol) = &self.policy {
            inputs.insert("policy".into(), pol.digest.to_hex());
        }
        let key = StepKey {
            name: format!("parity:{target}"),
            kind: "parity",
            inputs,
            settings: json!({
                "reference": ps.reference,
                "ctx": ps.ctx,
                "chunks": ps.chunks,
                "thresholds": ps.thresholds,
            }),
        };
        let job = Job {
            target: target.to_owned(),
            reference: ref_path.clone(),
            candidate: cx.out.join(&a.path),
        };
        Some((key, job))
    }

    /// Why the step comparing `target` is skipped.
    pub fn missing(&self, target: &str) -> String {
        format!(
            "`{}` or `{target}` was not produced",
            self.settings.reference
        )
    }

    pub fn run(
        &self,
        job: &Job,
        cx: &Context,
        ev: &dyn crate::pipeline::Events,
    ) -> Result<Compared, PipelineError> {
        let name = format!("parity:{}", job.target);
        let err = |e: parity::ParityError| PipelineError::step(&name, e);
        let cand = &job.candidate;
        let ckpt = Checkpoint::open(cand).map_err(|e| PipelineError::step(&name, e))?;
        let quant = parity::quant_type(&ckpt);
        drop(ckpt);
        let ps = self.settings;
        let pipeline = Overrides {
            file: &cx.pipeline.path,
            field: "steps.parity.thresholds",
            thresholds: &ps.thresholds,
        };
        let policy = self.policy.as_ref().and_then(Overrides::policy);
        let th = Thresholds::resolve(&quant, std::iter::once(pipeline).chain(policy));
        let mut opts = parity::ParityOptions::new(parity::Corpus::Text(self.text.clone()));
        if let Some(c) = ps.ctx {
            opts.ctx = c;
        }
        opts.chunks = ps.chunks;
        let rep = parity::compare(&job.reference, cand, &opts, Some(th), &mut |e| {
            ev.parity(&name, &e)
        })
        .map_err(err)?;
        let mut gate = GateReport::new("parity", cand, rep.findings.clone());
        gate.verdict = rep.verdict;
        gate.details = serde_json::to_value(&rep).ok();
        Ok(Compared {
            entry: rep.run_entry(&ps.reference, &job.target),
            gate,
        })
    }
}

/// The models one parity step compares.
pub struct Job {
    target: String,
    reference: PathBuf,
    candidate: PathBuf,
}

/// The parity gate on one target, and its metrics for the report.
pub struct Compared {
    entry: Value,
    gate: GateReport,
}

impl StepOutcome for Compared {
    fn fill(self, rec: &mut StepRecord) {
        rec.parity = Some(self.entry);
        rec.gates.push(self.gate);
    }
}
