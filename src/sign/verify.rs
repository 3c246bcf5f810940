//! Verifying a signed model: the reverse of signing, reported as findings.
//!
//! In order: the bundle is read (input errors stop here), the payload type must be an
//! in-toto statement, the key the bundle names must be one of the given keys, the DSSE
//! signature must verify, the statement and predicate types must be the model signing
//! ones, the root digest must match the resources, and the model re-hashed with the
//! recorded serialization must give the signed digests. Every mismatch is an error
//! finding saying what changed (per file: changed, missing, extra). An audit attestation
//! beside the signature is checked too: same key, same root digest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::finding::{Evidence, Finding, Severity};
use crate::types::Sha256Digest;

use super::attest::{parse_vsa, AttestationSummary};
use super::dsse::{parse_hint, Bundle, IN_TOTO_PAYLOAD_TYPE};
use super::keys::PublicKey;
use super::statement::{parse_model_statement, SignedModel, StatementProblem};
use super::{attestation_path_for, path_inside, SignError};
use crate::digest::{
    hash_model, DigestError, HashOptions, Manifest, RelPath, Resource, Serialization,
};

/// A key the verifier trusts and where it came from.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub source: PathBuf,
    pub key: PublicKey,
}

/// What to verify.
pub struct VerifyRequest<'a> {
    pub model: &'a Path,
    pub signature: &'a Path,
    /// An attestation that must exist; without it, the one beside the signature is
    /// checked when present.
    pub attestation: Option<&'a Path>,
    pub keys: &'a [TrustedKey],
    /// Leave out of the comparison files the signature does not name.
    pub ignore_unsigned: bool,
    /// More paths (relative to the model) to leave out, beyond those recorded.
    pub extra_ignore: Vec<RelPath>,
    pub threads: Option<usize>,
}

/// The findings and a summary for the report's details.
#[derive(Debug)]
pub struct Verification {
    pub findings: Vec<Finding>,
    pub details: Value,
}

fn err(rule: &str, message: String) -> Finding {
    Finding::new(rule, Severity::Error, message)
}

/// Verify a model against its signature.
pub fn verify_model(req: &VerifyRequest<'_>) -> Result<Verification, SignError> {
    let mut findings = Vec::new();
    let mut details = json!({ "signature": req.signature.display().to_string() });
    let bundle = Bundle::read(req.signature)?;
    check_payload_type(&bundle, req.signature)?;

    let Some(signer) = find_signer(&bundle, req.signature, req.keys, &mut findings)? else {
        return Ok(Verification { findings, details });
    };
    details["key_id"] = json!(signer.key.id().to_hex());
    details["algorithm"] = json!(signer.key.algorithm().as_str());
    findings.push(Finding::new(
        "verify/signature",
        Severity::Note,
        format!(
            "signature verifies with {} key `{}` from `{}`",
            signer.key.algorithm(),
            signer.key.id(),
            signer.source.display()
        ),
    ));

    let payload = bundle.payload(req.signature)?;
    let signed = match parse_model_statement(&payload) {
        Ok(s) => s,
        Err(StatementProblem::Mismatch { rule, message }) => {
            let mut f = err(rule, message);
            if payload_is_vsa(&payload) {
                f = f.hint(
                    "this is an audit attestation; pass the model signature `model.sig` \
                            with `--signature`",
                );
            }
            findings.push(f);
            return Ok(Verification { findings, details });
        }
        Err(StatementProblem::Unreadable(what)) => {
            return Err(SignError::Statement {
                path: req.signature.to_owned(),
                what,
            })
        }
    };
    details["model_name"] = json!(signed.model_name);
    details["root_digest"] = json!(signed.subject_digest.to_hex());
    details["serialization"] = json!(signed.serialization.method());
    if let Serialization::Shards { shard_size } = signed.serialization {
        details["shard_size"] = json!(shard_size);
    }
    details["resources"] = json!(signed.resources.len());
    if signed.subject_digest != signed.computed_root {
        findings.push(err(
            "verify/root-digest",
            format!(
                "the statement's root digest is sha256:{} but its resources hash to sha256:{}: \
                 the statement was built inconsistently",
                signed.subject_digest, signed.computed_root
            ),
        ));
    }

    let attestation_path = req
        .attestation
        .map(Path::to_owned)
        .unwrap_or_else(|| attestation_path_for(req.signature));
    let mut opts = HashOptions {
        serialization: signed.serialization,
        ignore: Vec::new(),
        allow_symlinks: signed.allow_symlinks,
        threads: req.threads,
    };
    for p in signed.ignore_paths.iter().chain(&req.extra_ignore) {
        opts.ignore(p.clone());
    }
    for p in [req.signature, attestation_path.as_path()] {
        if let Some(rel) = path_inside(req.model, p) {
            opts.ignore(rel);
        }
    }
    let only: Option<BTreeSet<RelPath>> = req
        .ignore_unsigned
        .then(|| signed.resources.iter().map(|r| r.path.clone()).collect());
    match hash_model(req.model, &opts, only.as_ref()) {
        Ok(actual) => {
            details["files_hashed"] = json!(actual.files);
            details["bytes_hashed"] = json!(actual.bytes);
            if actual.model_name != signed.model_name {
                findings.push(Finding::new(
                    "verify/model-name",
                    Severity::Note,
                    format!(
                        "the signature names model `{}`, the model here is `{}` (names are \
                         informative; the file digests decide)",
                        signed.model_name, actual.model_name
                    ),
                ));
            }
            compare(req, &signed, &actual, &mut findings);
        }
        Err(DigestError::Symlink { path }) => findings.push(
            err(
                "verify/symlink",
                format!(
                    "`{}` is a symbolic link, which the signature does not allow",
                    path.display()
                ),
            )
            .at(Evidence::file(path)),
        ),
        Err(DigestError::SpecialFile { path }) => findings.push(
            err(
                "verify/special-file",
                format!("`{}` is not a regular file or directory", path.display()),
            )
            .at(Evidence::file(path)),
        ),
        Err(e) => return Err(e.into()),
    }

    let explicit = req.attestation.is_some();
    if explicit || attestation_path.exists() {
        let summary = check_attestation(
            &attestation_path,
            &signer.key,
            &signed.subject_digest,
            &mut findings,
        )?;
        details["attestation"] = json!({
            "path": attestation_path.display().to_string(),
            "summary": summary,
        });
    }
    Ok(Verification { findings, details })
}

fn check_payload_type(bundle: &Bundle, path: &Path) -> Result<(), SignError> {
    let found = &bundle.dsse_envelope.payload_type;
    if found != IN_TOTO_PAYLOAD_TYPE {
        return Err(SignError::PayloadType {
            path: path.to_owned(),
            found: found.clone(),
            expected: IN_TOTO_PAYLOAD_TYPE,
        });
    }
    Ok(())
}

fn payload_is_vsa(payload: &[u8]) -> bool {
    parse_vsa(payload).is_ok()
}

/// The trusted key that signed the bundle, or `None` with a finding saying why not.
fn find_signer<'k>(
    bundle: &Bundle,
    path: &Path,
    keys: &'k [TrustedKey],
    findings: &mut Vec<Finding>,
) -> Result<Option<&'k TrustedKey>, SignError> {
    let hint = bundle.hint();
    let named = hint.and_then(parse_hint);
    let candidates: Vec<&TrustedKey> = match named {
        Some(id) => keys.iter().filter(|k| k.key.id() == id).collect(),
        None => keys.iter().collect(),
    };
    if candidates.is_empty() {
        let given = if keys.len() == 1 {
            format!(
                "the given key `{}` (`{}`)",
                keys[0].key.id(),
                keys[0].source.display()
            )
        } else {
            format!("any of the {} trusted keys", keys.len())
        };
        findings.push(
            err(
                "verify/key-mismatch",
                format!(
                    "`{}` was signed by key `{}`, not by {given}",
                    path.display(),
                    hint.unwrap_or_default()
                ),
            )
            .at(Evidence::file(path))
            .hint("verify with the public key of whoever signed the model"),
        );
        return Ok(None);
    }
    for k in &candidates {
        if bundle.verifies_with(&k.key, path)? {
            return Ok(Some(k));
        }
    }
    let which = if candidates.len() == 1 {
        format!("key `{}`", candidates[0].key.id())
    } else {
        format!("any of the {} keys", candidates.len())
    };
    findings.push(
        err(
            "verify/signature-invalid",
            format!(
                "the DSSE signature in `{}` does not verify with {which}: the signed statement \
                 or the signature was changed after signing",
                path.display()
            ),
        )
        .at(Evidence::file(path)),
    );
    Ok(None)
}

/// Per file: the shards (or the one whole-file digest) and their digests.
type ByFile = BTreeMap<RelPath, Vec<(Option<(u64, u64)>, Sha256Digest)>>;

fn by_file(resources: &[Resource]) -> ByFile {
    let mut m = ByFile::new();
    for r in resources {
        m.entry(r.path.clone())
            .or_default()
            .push((r.range, r.digest));
    }
    for v in m.values_mut() {
        v.sort_by_key(|(r, _)| r.unwrap_or((0, 0)));
    }
    m
}

fn size_of(shards: &[(Option<(u64, u64)>, Sha256Digest)]) -> u64 {
    shards
        .iter()
        .filter_map(|(r, _)| r.map(|(_, e)| e))
        .max()
        .unwrap_or(0)
}

fn compare(
    req: &VerifyRequest<'_>,
    signed: &SignedModel,
    actual: &Manifest,
    findings: &mut Vec<Finding>,
) {
    let expected = by_file(&signed.resources);
    let found = by_file(&actual.resources);
    for (path, want) in &expected {
        let ev = Evidence::file(path.as_str());
        let Some(got) = found.get(path) else {
            let exists = path.under(req.model).is_file();
            let message = if exists {
                // Only shard manifests can lose a file that still exists: it is empty now.
                format!(
                    "file `{path}` changed: signed with {} bytes, now empty",
                    size_of(want)
                )
            } else {
                format!("file `{path}` is signed but missing")
            };
            let rule = if exists {
                "verify/file-changed"
            } else {
                "verify/file-missing"
            };
            findings.push(err(rule, message).at(ev));
            continue;
        };
        if want == got {
            continue;
        }
        let message = match signed.serialization {
            Serialization::Files => format!(
                "file `{path}` changed: signed sha256:{}, found sha256:{}",
                want[0].1, got[0].1
            ),
            Serialization::Shards { .. } => {
                let (ws, gs) = (size_of(want), size_of(got));
                if ws != gs {
                    format!("file `{path}` changed size: signed {ws} bytes, found {gs} bytes")
                } else {
                    let bad: Vec<String> = want
                        .iter()
                        .zip(got)
                        .filter(|(a, b)| a != b)
                        .filter_map(|(a, _)| a.0.map(|(s, e)| format!("{s}..{e}")))
                        .collect();
                    format!("file `{path}` changed in bytes {}", bad.join(", "))
                }
            }
        };
        findings.push(err("verify/file-changed", message).at(ev));
    }
    if !req.ignore_unsigned {
        for path in found.keys().filter(|p| !expected.contains_key(*p)) {
            findings.push(
                err(
                    "verify/file-extra",
                    format!("file `{path}` is not covered by the signature (added after signing?)"),
                )
                .at(Evidence::file(path.as_str()))
                .hint("remove it, re-sign the model, or pass `--ignore-unsigned-files`"),
            );
        }
    }
}

fn check_attestation(
    path: &Path,
    key: &PublicKey,
    model_root: &Sha256Digest,
    findings: &mut Vec<Finding>,
) -> Result<Option<AttestationSummary>, SignError> {
    let bundle = Bundle::read(path)?;
    check_payload_type(&bundle, path)?;
    let ev = || Evidence::file(path);
    if let Some(h) = bundle.hint() {
        if parse_hint(h) != Some(key.id()) {
            findings.push(
                err(
                    "verify/attestation-key",
                    format!(
                        "attestation `{}` was signed by key `{h}`, not by the model's signer `{}`",
                        path.display(),
                        key.id()
                    ),
                )
                .at(ev()),
            );
            return Ok(None);
        }
    }
    if !bundle.verifies_with(key, path)? {
        findings.push(
            err(
                "verify/attestation-signature",
                format!(
                    "the signature of attestation `{}` does not verify with key `{}`: the \
                     attestation was changed after signing",
                    path.display(),
                    key.id()
                ),
            )
            .at(ev()),
        );
        return Ok(None);
    }
    let summary = match parse_vsa(&bundle.payload(path)?) {
        Ok(s) => s,
        Err(why) => {
            findings.push(
                err(
                    "verify/attestation-statement",
                    format!(
                        "attestation `{}` is not a verification summary: {why}",
                        path.display()
                    ),
                )
                .at(ev()),
            );
            return Ok(None);
        }
    };
    if summary.subject_digest != model_root.to_hex() {
        findings.push(
            err(
                "verify/attestation-subject",
                format!(
                    "attestation `{}` is about root digest sha256:{}, but the model signature \
                     names sha256:{}: it belongs to another model or an earlier signing",
                    path.display(),
                    summary.subject_digest,
                    model_root
                ),
            )
            .at(ev()),
        );
        return Ok(Some(summary));
    }
    let gates: Vec<String> = summary
        .gates
        .iter()
        .map(|g| {
            format!(
                "{} {}",
                g["gate"].as_str().unwrap_or("?"),
                g["verdict"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let text = format!(
        "audit attestation: {} by {} at {} ({})",
        summary.verification_result,
        summary.verifier.trim(),
        summary.time_verified,
        gates.join(", ")
    );
    let severity = if summary.verification_result == "PASSED" {
        Severity::Note
    } else {
        Severity::Warning
    };
    findings.push(Finding::new("verify/attestation", severity, text).at(ev()));
    Ok(Some(summary))
}
