//! Policy files: a team's intended use, the licences and conditions it accepts, provenance
//! and security requirements, allowed quant types, parity thresholds (read by the parity
//! stage), trusted signing keys (read by the signing stage), rule severities and waivers.
//! Schema: `schemas/policy.schema.json`. Unknown keys are refused; every error names
//! `file:line:column` and the expected form.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::assess::Distribution;
use super::date::Date;
use super::rules;
use super::PolicyError;
use crate::finding::Severity;
use crate::types::Sha256Digest;

/// Policy files are small; anything larger is not a policy.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Short name shown in reports.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub intended_use: IntendedUse,
    #[serde(default)]
    pub licences: LicenceRules,
    #[serde(default)]
    pub provenance: ProvenanceRules,
    #[serde(default)]
    pub security: SecurityRules,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<ParityRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningRules>,
    /// Severity per rule id (`error`, `warning`, `note`, `off`).
    #[serde(default)]
    pub rules: BTreeMap<RuleId, Level>,
    #[serde(default)]
    pub waivers: Vec<Waiver>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntendedUse {
    pub commercial: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_active_users: Option<u64>,
    /// Where the product is offered or the team is based (`EU`, `US`, ...).
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub outputs_train_models: bool,
    pub distribution: Distribution,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenceRules {
    /// When present, only these licence ids are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// Deny licences that restrict fields of use (acceptable-use policies, RAIL).
    #[serde(default)]
    pub deny_use_restrictions: bool,
    /// Deny licences whose restrictions must be passed on to recipients (RAIL, share-alike).
    #[serde(default)]
    pub deny_pass_through: bool,
    /// Deny licences that dictate derivative names.
    #[serde(default)]
    pub deny_naming_rule: bool,
    /// Deny licences whose obligations are unknown (`other` unresolved, `unknown`).
    #[serde(default = "yes")]
    pub deny_unknown: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceRules {
    /// A publisher or source must be named.
    #[serde(default)]
    pub require_known_source: bool,
    /// A model whose architecture matches a family it is not published by must declare
    /// its base model.
    #[serde(default)]
    pub require_declared_base: bool,
    /// Every declared base model must resolve in the families catalogue.
    #[serde(default)]
    pub require_resolved_lineage: bool,
    /// Card, licence files and metadata must agree.
    #[serde(default)]
    pub require_consistent_licence: bool,
    /// A Hub model must be named by its full commit sha, not a branch or tag.
    #[serde(default)]
    pub require_pinned_revision: bool,
    /// When present, a Hub model must be published by one of these organisations or users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_publishers: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityRules {
    #[serde(default)]
    pub allow_pickle: bool,
    #[serde(default)]
    pub allow_remote_code: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantRules {
    /// Tensor storage types allowed (`F32`, `F16`, `BF16`, `Q8_0`, `Q4_K`, ...).
    pub allowed_types: Vec<String>,
}

/// Parity thresholds, read by the parity stage. Keys of `thresholds` are quant types
/// (`Q8_0`, `Q4_K_M`, ...) or `default`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityRules {
    pub thresholds: BTreeMap<String, ParityThreshold>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityThreshold {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mean_kld: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_kld: Option<f64>,
    /// Share of positions where both top-1 tokens agree, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_top1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ppl_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rms_delta_p: Option<f64>,
}

/// Trusted signing keys, read by the signing stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningRules {
    #[serde(default)]
    pub require_signature: bool,
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKey>,
    /// Sigstore keyless signers a model must come signed by (any one of them): the
    /// certificate identity and the OIDC issuer, both matched exactly.
    #[serde(default)]
    pub trusted_identities: Vec<TrustedIdentity>,
}

/// A Sigstore keyless signer: for GitHub Actions, identity
/// `https://github.com/OWNER/REPO/.github/workflows/FILE@REF` and issuer
/// `https://token.actions.githubusercontent.com`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIdentity {
    pub identity: String,
    pub issuer: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    pub id: String,
    pub algorithm: KeyAlgorithm,
    /// SubjectPublicKeyInfo PEM, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Or a path to the PEM file, relative to the policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    Ed25519,
    P256,
    P384,
}

/// A severity override.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    Note,
    Off,
}

impl Level {
    pub fn severity(self) -> Option<Severity> {
        match self {
            Level::Error => Some(Severity::Error),
            Level::Warning => Some(Severity::Warning),
            Level::Note => Some(Severity::Note),
            Level::Off => None,
        }
    }
}

/// A rule id of the policy stage, checked against [`rules::RULES`] when read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RuleId(pub String);

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RuleId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule id such as `policy/lineage`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RuleId, E> {
                if rules::is_known(v) {
                    Ok(RuleId(v.to_owned()))
                } else {
                    let ids: Vec<&str> = rules::RULES.iter().map(|r| r.0).collect();
                    Err(E::custom(format!(
                        "unknown rule `{v}`, expected one of {}",
                        ids.join(", ")
                    )))
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Permission to ignore one rule's findings for one model until a date.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    pub rule: RuleId,
    /// The model's digest (`sha256:` + 64 hex digits): the model root digest or the
    /// digest of one of its weight files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestRef>,
    /// Or a glob over the model's name (`DeepSeek-R1-Distill-*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub reason: String,
    pub approver: String,
    /// The last day the waiver applies.
    pub expires: Date,
    /// Line of the waiver in the policy file (filled after parsing).
    #[serde(skip)]
    pub line: Option<u64>,
}

/// `sha256:<64 hex>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestRef(pub Sha256Digest);

impl Serialize for DigestRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("sha256:{}", self.0))
    }
}

impl<'de> Deserialize<'de> for DigestRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DigestRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a digest as sha256:<64 hex digits>")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DigestRef, E> {
                v.strip_prefix("sha256:")
                    .and_then(Sha256Digest::from_hex)
                    .map(DigestRef)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "`{v}` is not a digest: expected sha256:<64 hex digits>"
                        ))
                    })
            }
        }
        d.deserialize_str(V)
    }
}

/// A policy file and where it came from.
#[derive(Clone, Debug)]
pub struct Policy {
    pub path: PathBuf,
    pub file: PolicyFile,
    pub digest: Sha256Digest,
}

impl Policy {
    /// Read and validate a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let (bytes, text) = crate::userfile::read_capped(path, MAX_POLICY_BYTES, "a policy file")
            .map_err(|e| match e {
            crate::userfile::ReadError::Io(source) => PolicyError::Io {
                path: path.to_owned(),
                source,
            },
            crate::userfile::ReadError::Invalid(message) => PolicyError::Invalid {
                path: path.to_owned(),
                message,
            },
        })?;
        let file = parse(path, &text)?;
        Ok(Policy {
            path: path.to_owned(),
            file,
            digest: Sha256Digest::of(&bytes),
        })
    }
}

/// Parse policy text; `path` names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<PolicyFile, PolicyError> {
    let mut file: PolicyFile = crate::userfile::yaml(text).map_err(|e| PolicyError::Syntax {
        path: path.to_owned(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    let lines = waiver_lines(text);
    let matches = lines.len() == file.waivers.len();
    for (i, w) in file.waivers.iter_mut().enumerate() {
        if matches {
            w.line = Some(lines[i]);
        }
        let at = w.line.map(|l| format!(":{l}")).unwrap_or_default();
        match (&w.digest, &w.name) {
            (None, None) | (Some(_), Some(_)) => {
                return Err(PolicyError::Invalid {
                    path: PathBuf::from(format!("{}{at}", path.display())),
                    message: format!(
                        "waiver {} (rule `{}`) must name exactly one target: `digest: sha256:<hex>` or `name: <glob>`",
                        i + 1,
                        w.rule.0
                    ),
                });
            }
            _ => {}
        }
        if w.reason.trim().is_empty() || w.approver.trim().is_empty() {
            return Err(PolicyError::Invalid {
                path: PathBuf::from(format!("{}{at}", path.display())),
                message: format!(
                    "waiver {} (rule `{}`) needs a non-empty `reason` and `approver`",
                    i + 1,
                    w.rule.0
                ),
            });
        }
    }
    if let Some(q) = &file.quantization {
        for t in &q.allowed_types {
            if crate::formats::GgmlType::from_name(t).is_none() && !is_plain_dtype(t) {
                return Err(PolicyError::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "`quantization.allowed_types` names `{t}`, which is not a tensor type (expected e.g. F32, F16, BF16, Q8_0, Q4_K)"
                    ),
                });
            }
        }
    }
    Ok(file)
}

fn is_plain_dtype(t: &str) -> bool {
    [
        "BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F64",
        "F8_E4M3", "F8_E5M2",
    ]
    .iter()
    .any(|x| x.eq_ignore_ascii_case(t))
}

/// 1-based lines where the items of the top-level `waivers:` list start. serde_yaml does
/// not expose positions of parsed values, so the list items are found in the text.
fn waiver_lines(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut inside = false;
    let mut indent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let ind = line.len() - trimmed.len();
        if ind == 0 {
            inside = trimmed.starts_with("waivers:");
            continue;
        }
        if inside && (trimmed.starts_with("- ") || trimmed == "-") {
            match indent {
                None => indent = Some(ind),
                Some(x) if x != ind => continue,
                _ => {}
            }
            out.push(i as u64 + 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: t
intended_use:
  commercial: true
  distribution: hosted
waivers:
  - rule: policy/lineage
    name: \"x-*\"
    reason: reviewed
    approver: legal
    expires: 2026-01-31
  # a comment
  - rule: policy/naming
    digest: sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
    reason: r
    approver: a
    expires: 2026-02-01
";

    fn err(text: &str) -> String {
        parse(Path::new("p.yaml"), text).unwrap_err().to_string()
    }

    #[test]
    fn parses_waivers_with_their_lines() {
        let f = parse(Path::new("p.yaml"), GOOD).unwrap();
        assert_eq!(f.waivers.len(), 2);
        assert_eq!(f.waivers[0].line, Some(6));
        assert_eq!(f.waivers[1].line, Some(12));
        assert_eq!(f.waivers[0].expires.to_string(), "2026-01-31");
    }

    #[test]
    fn unknown_key_gives_line_column_and_expected_keys() {
        let e = err(
            "name: t\nintended_use:\n  commercial: true\n  distribution: hosted\n  colour: red\n",
        );
        assert!(e.starts_with("`p.yaml:5:3`: "), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(e.contains("expected one of"), "{e}");
    }

    #[test]
    fn wrong_type_gives_location_and_expected_type() {
        let e = err("name: t\nintended_use:\n  commercial: maybe\n  distribution: hosted\n");
        assert!(e.starts_with("`p.yaml:3:"), "{e}");
        assert!(e.contains("expected a boolean"), "{e}");
    }

    #[test]
    fn malformed_date_gives_location_and_form() {
        let bad = GOOD.replace("2026-01-31", "2026-31-01");
        let e = err(&bad);
        assert!(e.starts_with("`p.yaml:10:"), "{e}");
        assert!(e.contains("YYYY-MM-DD"), "{e}");
    }

    #[test]
    fn unknown_rule_and_bad_digest_are_refused() {
        let e = err(&GOOD.replace("policy/lineage", "policy/nope"));
        assert!(e.contains("unknown rule `policy/nope`"), "{e}");
        assert!(e.starts_with("`p.yaml:6:"), "{e}");
        let e = err(&GOOD.replace("sha256:ba78", "sha256:zz78"));
        assert!(e.contains("expected sha256:<64 hex digits>"), "{e}");
    }

    #[test]
    fn waiver_needs_exactly_one_target() {
        let e = err(&GOOD.replace("    name: \"x-*\"\n", ""));
        assert!(e.contains("exactly one target"), "{e}");
        assert!(e.contains("p.yaml:6"), "{e}");
    }

    #[test]
    fn yaml_alias_bomb_is_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!(
                "b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = err(&bomb);
        assert!(e.contains("p.yaml"), "{e}");
    }
}
