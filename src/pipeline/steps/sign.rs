//! sign: sign each artifact (OpenSSF model signing) with the pipeline's key, its key and
//! certificate, or keyless through Sigstore (`method: key|certificate|sigstore`), with an
//! attestation of every gate about the source and the artifact when `attest` is set. It
//! runs only when every gate passed; otherwise each sign step is skipped with the reason.

use std::fs;
use std::path::Path;

use serde_json::json;

use super::{artifact_inputs, digest_of, Context, StepKey, StepOutcome};
use crate::finding::Verdict;
use crate::pipeline::file::{Pipeline, SignMethod, SignStep, Target};
use crate::pipeline::{Artifact, PipelineError, SignatureRecord, StepRecord};
use crate::report::GateReport;
use crate::sign::keyless::{self, Endpoints, Http, ProcessEnv, Session};
use crate::sign::{self, pki, Audit, HashOptions, Material, PolicyRef, PrivateKey, Serialization};
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

/// What signs: a key, a key and its certificate chain, or a keyless session (an ephemeral
/// key and its Fulcio certificate).
enum Credential {
    Key(PrivateKey),
    Certificate(PrivateKey, Vec<pki::Cert>),
    Keyless(Box<Session>),
}

impl Credential {
    fn key(&self) -> &PrivateKey {
        match self {
            Credential::Key(k) | Credential::Certificate(k, _) => k,
            Credential::Keyless(s) => s.key(),
        }
    }

    fn material(&self) -> Material<'_> {
        match self {
            Credential::Key(_) => Material::KeyHint,
            Credential::Certificate(_, chain) => Material::Certificates(chain),
            Credential::Keyless(s) => Material::Keyless(s),
        }
    }
}

/// What every sign step of a run shares: the signer and the policy to name.
pub struct Signer<'s> {
    settings: &'s SignStep,
    credential: Credential,
    /// Who signs, as a step input: the public key's id (hex) for a key or certificate;
    /// for keyless, the identity and issuer, which stay the same across runs while the
    /// ephemeral key does not.
    signer_id: String,
    /// `env:NAME` or the key file, with the certificate; or the keyless identity.
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
        let (credential, signer_id, key_source) = match settings.method {
            SignMethod::Key => {
                let (key, source) = load_key(cx.pipeline, settings)?;
                let id = key.public().id().to_hex();
                (Credential::Key(key), id, source)
            }
            SignMethod::Certificate => {
                let (key, source) = load_key(cx.pipeline, settings)?;
                let chain = load_chain(cx.pipeline, settings, &key)?;
                let id = key.public().id().to_hex();
                let source = match chain.first() {
                    Some(leaf) => format!("{source} with certificate `{}`", leaf.subject()),
                    None => source,
                };
                (Credential::Certificate(key, chain), id, source)
            }
            SignMethod::Sigstore => {
                let session = keyless_session(settings)?;
                let who = format!("sigstore `{}` from `{}`", session.subject, session.issuer);
                (Credential::Keyless(Box::new(session)), who.clone(), who)
            }
        };
        Ok(Signer {
            settings,
            credential,
            signer_id,
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
        inputs.insert("key".into(), self.signer_id.clone());
        if self.settings.attest {
            let audit_json =
                serde_json::to_vec(&reports).map_err(|e| PipelineError::Internal(e.to_string()))?;
            inputs.insert("audit".into(), Sha256Digest::of(&audit_json).to_hex());
        }
        let key = StepKey {
            name: format!("sign:{}", a.name),
            kind: "sign",
            inputs,
            settings: json!({ "attest": self.settings.attest, "method": self.settings.method.as_str() }),
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
        let signed = sign::sign_model_with(
            sign::SignRequest {
                model: &path,
                key: self.credential.key(),
                signature: &sig_path,
                attestation: &att_path,
                hash: HashOptions::new(Serialization::Files),
                audit: self.settings.attest.then_some(&audit),
            },
            self.credential.material(),
        )
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

/// The certificate and its issuers for `method: certificate`; the leaf must certify `key`.
fn load_chain(
    p: &Pipeline,
    ss: &SignStep,
    key: &PrivateKey,
) -> Result<Vec<pki::Cert>, PipelineError> {
    let Some(leaf) = &ss.certificate else {
        return Err(PipelineError::Invalid {
            path: p.path.clone(),
            message: "`steps.sign` with `method: certificate` needs `certificate`".into(),
        });
    };
    let leaf = p.resolve(leaf);
    let issuers: Vec<_> = ss.certificate_chain.iter().map(|c| p.resolve(c)).collect();
    let chain =
        pki::chain_for_bundle(&leaf, &issuers).map_err(|e| PipelineError::step("sign", e))?;
    let certified = chain
        .first()
        .map(pki::Cert::public_key)
        .transpose()
        .map_err(|what| {
            PipelineError::step(
                "sign",
                sign::SignError::Certificate {
                    path: leaf.clone(),
                    what,
                },
            )
        })?;
    if certified.as_ref() != Some(&key.public()) {
        return Err(PipelineError::step(
            "sign",
            sign::SignError::Certificate {
                path: leaf,
                what: "certifies another key than the step's signing key".into(),
            },
        ));
    }
    Ok(chain)
}

/// A keyless session for `method: sigstore`: the ambient CI token (GitLab's
/// `SIGSTORE_ID_TOKEN`, or GitHub Actions' token endpoint), then a Fulcio certificate.
fn keyless_session(ss: &SignStep) -> Result<Session, PipelineError> {
    let mut endpoints = if ss.staging {
        Endpoints::staging()
    } else {
        Endpoints::production()
    };
    endpoints.tsa = ss.tsa_url.clone();
    let http = Http::new();
    let token = keyless::ambient_token(None, &ProcessEnv, &http)
        .map_err(|e| PipelineError::step("sign", e))?;
    Session::start(&token, endpoints, http).map_err(|e| PipelineError::step("sign", e))
}
