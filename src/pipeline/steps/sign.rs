//! sign: sign each artifact with the pipeline's key (OpenSSF model signing), with an
//! attestation of every gate about the source and the artifact when `attest` is set. It
//! runs only when every gate passed; otherwise each sign step is skipped with the reason.

use std::fs;
use std::path::Path;

use serde_json::json;

use super::{artifact_inputs, digest_of, Context, StepKey, StepOutcome};
use crate::finding::Verdict;
use crate::pipeline::file::{Pipeline, SignStep, Target};
use crate::pipeline::{Artifact, PipelineError, SignatureRecord, StepRecord};
use crate::report::GateReport;
use crate::sign::{self, Audit, HashOptions, PolicyRef, PrivateKey, Serialization};
use crate::types::Sha256Digest;

/// The artifacts to sign: those named, else every target.
pub fn targets(settings: &SignStep, targets: &[Target]) -> Vec<String> {
    settings
        .artifacts
        .clone()
        .unwrap_or_else(|| targets.iter().map(|t| t.name.clone()).collect())
}

/// The gate steps that failed, by name: any one of them stops signing.
pub fn failed_gates(records: &[StepRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|s| s.verdict == Some(Verdict::Fail))
        .map(|s| s.name.clone())
        .collect()
}

/// Why nothing is signed when gates failed.
pub fn refused(failed: &[String]) -> String {
    format!("not signed because gate `{}` failed", failed.join("`, `"))
}

/// What every sign step of a run shares: the key and the policy to name.
pub struct Signer<'s> {
    settings: &'s SignStep,
    key: PrivateKey,
    /// The public key's id (hex): an input of every sign step.
    key_id: String,
    /// `env:NAME` or the key file.
    key_source: String,
    policy: Option<PolicyRef>,
}

/// One artifact to sign, with the gate results its attestation carries.
pub struct Job<'a> {
    artifact: &'a Artifact,
    reports: Vec<GateReport>,
}

impl<'s> Signer<'s> {
    pub fn new(settings: &'s SignStep, cx: &Context) -> Result<Self, PipelineError> {
        let (key, key_source) = load_key(cx.pipeline, settings)?;
        Ok(Signer {
            settings,
            key_id: key.public().id().to_hex(),
            key,
            key_source,
            policy: cx.policy.as_ref().map(|pol| PolicyRef {
                uri: pol.path.display().to_string(),
                digest: Some(pol.digest),
            }),
        })
    }

    /// The key and the audit of the step signing `a`: every gate so far about the source
    /// and about this artifact.
    pub fn plan<'a>(
        &self,
        a: &'a Artifact,
        records: &[StepRecord],
        cx: &Context,
    ) -> Result<(StepKey, Job<'a>), PipelineError> {
        let subject = cx.out.join(&a.path).display().to_string();
        let model_subject = cx.pipeline.model_name();
        let reports: Vec<GateReport> = records
            .iter()
            .flat_map(|s| s.gates.iter())
            .filter(|g| g.subject == subject || g.subject == model_subject)
            .cloned()
            .collect();
        let mut inputs = artifact_inputs(a);
        inputs.insert("key".into(), self.key_id.clone());
        if self.settings.attest {
            let audit_json =
                serde_json::to_vec(&reports).map_err(|e| PipelineError::Internal(e.to_string()))?;
            inputs.insert("audit".into(), Sha256Digest::of(&audit_json).to_hex());
        }
        let key = StepKey {
            name: format!("sign:{}", a.name),
            kind: "sign",
            inputs,
            settings: json!({ "attest": self.settings.attest }),
        };
        Ok((
            key,
            Job {
                artifact: a,
                reports,
            },
        ))
    }

    pub fn run(&self, job: Job, cx: &Context) -> Result<Signed, PipelineError> {
        let a = job.artifact;
        let out = &cx.out;
        let path = out.join(&a.path);
        let sig_rel = format!("{}.sig", a.path);
        let sig_path = out.join(&sig_rel);
        let att_path = sign::attestation_path_for(&sig_path);
        let audit = Audit {
            source: out.join("report.json"),
            reports: job.reports,
            policy: self.policy.clone(),
            resource_uri: None,
            // The artifact was converted from this Hub source.
            hub_source: cx.source.clone(),
        };
        if !self.settings.attest && att_path.exists() {
            fs::remove_file(&att_path).map_err(|e| PipelineError::Write {
                path: att_path.clone(),
                source: e,
            })?;
        }
        let signed = sign::sign_model(sign::SignRequest {
            model: &path,
            key: &self.key,
            signature: &sig_path,
            attestation: &att_path,
            hash: HashOptions::new(Serialization::Files),
            audit: self.settings.attest.then_some(&audit),
        })
        .map_err(|e| PipelineError::step(&format!("sign:{}", a.name), e))?;
        let mut outputs = vec![(sig_rel.clone(), digest_of(&sig_path)?)];
        let att_rel = signed.attestation.as_ref().map(|(ap, _)| {
            ap.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        if let Some(ar) = &att_rel {
            outputs.push((ar.clone(), digest_of(&out.join(ar))?));
        }
        Ok(Signed {
            outputs,
            signature: SignatureRecord {
                artifact: a.name.clone(),
                signature: sig_rel,
                attestation: att_rel,
                algorithm: signed.algorithm.as_str().to_owned(),
                key_id: signed.key_id.to_hex(),
                root_digest: signed.root.to_hex(),
                key_source: self.key_source.clone(),
            },
        })
    }
}

/// The signature (and attestation) written for one artifact.
pub struct Signed {
    /// Path relative to the output folder, and its sha256.
    outputs: Vec<(String, String)>,
    signature: SignatureRecord,
}

impl StepOutcome for Signed {
    fn fill(self, rec: &mut StepRecord) {
        rec.outputs.extend(self.outputs);
        rec.signature = Some(self.signature);
    }
}

/// The signing key: from the variable `key_env` names when it is set and not empty, else
/// from the `key` file.
fn load_key(p: &Pipeline, ss: &SignStep) -> Result<(PrivateKey, String), PipelineError> {
    let key_err = |source| PipelineError::Key { source };
    if let Some(var) = &ss.key_env {
        if let Some(text) = std::env::var_os(var) {
            let text = text.to_string_lossy();
            if !text.trim().is_empty() {
                let src = format!("env:{var}");
                let key = PrivateKey::from_pem(Path::new(&src), &text).map_err(key_err)?;
                return Ok((key, src));
            }
        }
    }
    match &ss.key {
        Some(k) => {
            let path = p.resolve(k);
            let key = PrivateKey::from_pem_file(&path).map_err(key_err)?;
            Ok((key, path.display().to_string()))
        }
        None => Err(PipelineError::Invalid {
            path: p.path.clone(),
            message: format!(
                "`steps.sign.key_env` names `{}`, which is not set, and no `key` file is given",
                ss.key_env.as_deref().unwrap_or("")
            ),
        }),
    }
}
