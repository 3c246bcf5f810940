//! The audit attestation: what the gates concluded about a model (scan findings, policy
//! verdict, parity figures), signed with the model's key and tied to the model's root
//! digest, so a consumer can check both that the files are the signed ones and that they
//! passed the audit.
//!
//! It is an in-toto Statement v1 with the SLSA verification summary predicate
//! (`https://slsa.dev/verification_summary/v1`): `verifier.id` is modelgate and its
//! version, `timeVerified`, `resourceUri` the model name (for a Hub model, its files at
//! the resolved commit, with the provenance under `modelgate.source`), `policy` the policy file named by
//! the report (uri and sha256), `inputAttestations` the model signature, and
//! `verificationResult` PASSED only if every gate passed. The gate reports themselves,
//! with findings and figures, sit under the modelgate-specific field `modelgate`. It is
//! stored as a second Sigstore bundle beside the model signature (`model.att.sig` beside
//! `model.sig`), because a bundle carries one envelope and `model.sig` must stay readable
//! by the reference tool.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::finding::Verdict;
use crate::report::GateReport;
use crate::types::Sha256Digest;

use super::statement::STATEMENT_TYPE;
use super::SignError;

pub const VSA_PREDICATE: &str = "https://slsa.dev/verification_summary/v1";
pub const VERIFIER_ID: &str = "https://github.com/modelgate/modelgate";

const MAX_REPORT: u64 = 64 * 1024 * 1024;

/// A policy the attestation names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRef {
    pub uri: String,
    pub digest: Option<Sha256Digest>,
}

/// The audit to attest: the reports and the policy they were checked against.
#[derive(Clone, Debug)]
pub struct Audit {
    pub source: PathBuf,
    pub reports: Vec<GateReport>,
    pub policy: Option<PolicyRef>,
    /// The `resourceUri` when the model has a better name than its file name: for a model
    /// from the Hugging Face Hub, its files at the commit it resolved to.
    pub resource_uri: Option<String>,
    /// Where a Hub model (or the source an artifact was converted from) came from,
    /// carried under `modelgate.source`.
    pub hub_source: Option<crate::provenance::Provenance>,
}

fn report_err(path: &Path, what: impl Into<String>) -> SignError {
    SignError::Report {
        path: path.to_owned(),
        what: what.into(),
    }
}

impl Audit {
    /// Read a report file: one gate report object or an array of them. The policy is the
    /// one a report's `details.policy` names (a path, or `{uri|path, digest|sha256}`);
    /// a named file that exists (beside the report or from the working folder) is hashed
    /// when the report gives no digest.
    pub fn read(path: &Path) -> Result<Audit, SignError> {
        let file = fs::File::open(path).map_err(|source| SignError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_REPORT + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| SignError::Io {
                path: path.to_owned(),
                source,
            })?;
        if bytes.len() as u64 > MAX_REPORT {
            return Err(report_err(path, "is larger than 64 MiB"));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| report_err(path, format!("is not JSON: {e}")))?;
        let items = match v {
            Value::Array(items) => items,
            obj @ Value::Object(_) => vec![obj],
            _ => return Err(report_err(path, "is not a gate report object or array")),
        };
        if items.is_empty() {
            return Err(report_err(path, "holds no gate reports"));
        }
        let mut reports = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let r: GateReport = serde_json::from_value(item).map_err(|e| {
                report_err(
                    path,
                    format!(
                        "report {i} is not a modelgate gate report (as printed by \
                         `modelgate scan --format json`): {e}"
                    ),
                )
            })?;
            reports.push(r);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut policy = None;
        for r in &reports {
            if let Some(p) = r.details.as_ref().and_then(|d| d.get("policy")) {
                policy = policy_ref(p, base)?;
                if policy.is_some() {
                    break;
                }
            }
        }
        Ok(Audit {
            source: path.to_owned(),
            reports,
            policy,
            resource_uri: None,
            hub_source: None,
        })
    }

    /// PASSED when every gate passed.
    pub fn passed(&self) -> bool {
        self.reports.iter().all(|r| r.verdict == Verdict::Pass)
    }
}

/// Hash a policy file named by path.
pub fn policy_from_file(path: &Path) -> Result<PolicyRef, SignError> {
    let bytes = fs::read(path).map_err(|source| SignError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(PolicyRef {
        uri: path.display().to_string(),
        digest: Some(Sha256Digest::of(&bytes)),
    })
}

fn policy_ref(v: &Value, base: &Path) -> Result<Option<PolicyRef>, SignError> {
    let (uri, digest) = match v {
        Value::String(s) => (s.clone(), None),
        Value::Object(o) => {
            let uri = ["uri", "path", "file"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str));
            let Some(uri) = uri else { return Ok(None) };
            let digest = o
                .get("digest")
                .and_then(|d| d.get("sha256").or(Some(d)))
                .and_then(Value::as_str)
                .or_else(|| o.get("sha256").and_then(Value::as_str))
                .and_then(Sha256Digest::from_hex);
            (uri.to_owned(), digest)
        }
        _ => return Ok(None),
    };
    if digest.is_some() {
        return Ok(Some(PolicyRef { uri, digest }));
    }
    for candidate in [base.join(&uri), PathBuf::from(&uri)] {
        if candidate.is_file() {
            let mut p = policy_from_file(&candidate)?;
            p.uri = uri;
            return Ok(Some(p));
        }
    }
    Ok(Some(PolicyRef { uri, digest: None }))
}

/// The verification summary statement for a model with root digest `root`.
pub fn vsa_statement(
    audit: &Audit,
    model_name: &str,
    root: &Sha256Digest,
    signature_name: &str,
    signature_digest: &Sha256Digest,
) -> Vec<u8> {
    let passed = audit.passed();
    let levels: Vec<String> = audit
        .reports
        .iter()
        .filter(|r| r.verdict == Verdict::Pass)
        // SLSA reserves the `SLSA_` prefix; custom levels carry the verifier's name.
        .map(|r| {
            format!(
                "MODELGATE_{}_PASSED",
                r.gate.to_uppercase().replace('-', "_")
            )
        })
        .collect();
    let mut predicate = json!({
        "verifier": {
            "id": VERIFIER_ID,
            "version": { "modelgate": env!("CARGO_PKG_VERSION") },
        },
        "timeVerified": rfc3339_now(),
        "resourceUri": audit.resource_uri.as_deref().unwrap_or(model_name),
    });
    let policy = match &audit.policy {
        Some(p) => {
            let mut v = json!({ "uri": p.uri });
            if let Some(d) = &p.digest {
                v["digest"] = json!({ "sha256": d.to_hex() });
            }
            v
        }
        // SLSA requires a policy; with none named, the policy is the gates' built-in rules.
        None => json!({ "uri": format!("{VERIFIER_ID}#builtin-gates") }),
    };
    predicate["policy"] = policy;
    predicate["inputAttestations"] = json!([{
        "uri": signature_name,
        "digest": { "sha256": signature_digest.to_hex() },
    }]);
    predicate["verificationResult"] = json!(if passed { "PASSED" } else { "FAILED" });
    predicate["verifiedLevels"] = json!(levels);
    let gates: Vec<Value> = audit
        .reports
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    predicate["modelgate"] = json!({
        "toolVersion": env!("CARGO_PKG_VERSION"),
        "gates": gates,
    });
    if let Some(p) = &audit.hub_source {
        predicate["modelgate"]["source"] = serde_json::to_value(p).unwrap_or(Value::Null);
    }
    let statement = json!({
        "_type": STATEMENT_TYPE,
        // The model first (what `verify` reads); then the signature file, so that
        // `gh attestation verify model.sig --bundle model.att.sig` finds its digest.
        "subject": [
            { "name": model_name, "digest": { "sha256": root.to_hex() } },
            { "name": signature_name, "digest": { "sha256": signature_digest.to_hex() } },
        ],
        "predicateType": VSA_PREDICATE,
        "predicate": predicate,
    });
    serde_json::to_vec(&statement).unwrap_or_default()
}

/// What a verified attestation says.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttestationSummary {
    pub subject_digest: String,
    pub verification_result: String,
    pub time_verified: String,
    pub verifier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Value>,
    pub gates: Vec<Value>,
}

/// Parse an attestation payload; `Err` says why it is not a verification summary.
pub fn parse_vsa(payload: &[u8]) -> Result<AttestationSummary, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let ty = v.get("_type").and_then(Value::as_str).unwrap_or("");
    if ty != STATEMENT_TYPE {
        return Err(format!(
            "statement `_type` is `{ty}`, expected `{STATEMENT_TYPE}`"
        ));
    }
    let pt = v.get("predicateType").and_then(Value::as_str).unwrap_or("");
    if pt != VSA_PREDICATE {
        return Err(format!(
            "predicate type is `{pt}`, expected `{VSA_PREDICATE}`"
        ));
    }
    let subject_digest = v
        .pointer("/subject/0/digest/sha256")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let p = &v["predicate"];
    let s = |ptr: &str| {
        p.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let gates = p
        .pointer("/modelgate/gates")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .map(|r| {
                    json!({
                        "gate": r.get("gate"),
                        "verdict": r.get("verdict"),
                        "findings": r.get("findings").and_then(Value::as_array).map_or(0, Vec::len),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(AttestationSummary {
        subject_digest,
        verification_result: s("/verificationResult"),
        time_verified: s("/timeVerified"),
        verifier: format!("{} {}", s("/verifier/id"), s("/verifier/version/modelgate")),
        policy: p.get("policy").cloned(),
        gates,
    })
}

/// Seconds since the epoch, from `SOURCE_DATE_EPOCH` when set (reproducible builds'
/// convention) so that attestations can be made byte-for-byte reproducible.
fn now_secs() -> u64 {
    if let Some(s) = std::env::var_os("SOURCE_DATE_EPOCH") {
        if let Some(n) = s.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
            return n;
        }
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339_now() -> String {
    rfc3339(now_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch. Written by hand (Howard Hinnant's
/// days-to-civil algorithm) because one timestamp does not justify a date crate.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Finding, Severity};

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn reads_gate_reports_and_builds_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("policy.yaml"), "rules: []\n").unwrap();
        let scan = GateReport::new(
            "scan",
            Path::new("m"),
            vec![Finding::new("scan/x", Severity::Warning, "w")],
        );
        let mut policy = GateReport::new(
            "policy",
            Path::new("m"),
            vec![Finding::new("policy/y", Severity::Error, "e")],
        );
        policy.details = Some(json!({ "policy": "policy.yaml" }));
        let path = dir.path().join("r.json");
        fs::write(&path, serde_json::to_vec(&vec![scan, policy]).unwrap()).unwrap();
        let audit = Audit::read(&path).unwrap();
        assert_eq!(audit.reports.len(), 2);
        assert!(!audit.passed());
        let p = audit.policy.clone().unwrap();
        assert_eq!(p.uri, "policy.yaml");
        assert_eq!(p.digest, Some(Sha256Digest::of(b"rules: []\n")));

        let root = Sha256Digest::of(b"root");
        let bytes = vsa_statement(&audit, "m", &root, "model.sig", &Sha256Digest::of(b"s"));
        let s = parse_vsa(&bytes).unwrap();
        assert_eq!(s.subject_digest, root.to_hex());
        assert_eq!(s.verification_result, "FAILED");
        assert_eq!(s.gates.len(), 2);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["predicate"]["verifiedLevels"],
            json!(["MODELGATE_SCAN_PASSED"])
        );
        assert_eq!(
            v["predicate"]["policy"]["digest"]["sha256"],
            Sha256Digest::of(b"rules: []\n").to_hex()
        );
        assert_eq!(
            v["predicate"]["modelgate"]["gates"][1]["findings"][0]["rule"],
            "policy/y"
        );
    }

    #[test]
    fn rejects_non_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        fs::write(&path, "[]").unwrap();
        assert!(Audit::read(&path).is_err());
        fs::write(&path, "{\"x\":1}").unwrap();
        let e = Audit::read(&path).unwrap_err().to_string();
        assert!(e.contains("not a modelgate gate report"), "{e}");
    }
}
