//! The rules of the policy stage: stable ids, default severities and what each checks.
//! Policy files refer to these ids to change a severity (`rules:`) or waive a finding
//! (`waivers:`); an id not in this table is refused when the policy file is read.

use crate::finding::{Finding, Severity};

pub const UNKNOWN: &str = "policy/licence-unknown";
pub const MISMATCH: &str = "policy/licence-mismatch";
pub const TEXT_MODIFIED: &str = "policy/licence-text-modified";
pub const TEXT_UNRECOGNISED: &str = "policy/licence-text-unrecognised";
pub const DENIED: &str = "policy/licence-denied";
pub const COMMERCIAL: &str = "policy/commercial-use";
pub const USER_LIMIT: &str = "policy/user-limit";
pub const HOSTING: &str = "policy/hosting";
pub const USE_RESTRICTIONS: &str = "policy/use-restrictions";
pub const OUTPUTS: &str = "policy/outputs-training";
pub const REGION: &str = "policy/region";
pub const PASS_THROUGH: &str = "policy/pass-through";
pub const NAMING: &str = "policy/naming";
pub const LINEAGE: &str = "policy/lineage";
pub const UNDECLARED_DERIVATIVE: &str = "policy/undeclared-derivative";
pub const BASE_UNKNOWN: &str = "policy/base-unknown";
pub const BASE_MISMATCH: &str = "policy/base-mismatch";
pub const SOURCE_UNKNOWN: &str = "policy/source-unknown";
pub const PICKLE: &str = "policy/pickle";
pub const REMOTE_CODE: &str = "policy/remote-code";
pub const QUANT_TYPE: &str = "policy/quant-type";
pub const WAIVER_EXPIRED: &str = "policy/waiver-expired";
pub const WAIVER_UNUSED: &str = "policy/waiver-unused";
pub const REVISION_UNPINNED: &str = "policy/revision-unpinned";
pub const PUBLISHER: &str = "policy/publisher-not-allowed";

/// (id, default severity, what it checks).
pub const RULES: &[(&str, Severity, &str)] = &[
    (UNKNOWN, Severity::Error, "no licence could be identified, or a source names one modelgate does not know"),
    (MISMATCH, Severity::Warning, "card, licence files and weight metadata name different licences"),
    (TEXT_MODIFIED, Severity::Note, "a licence file differs from the published text it matches"),
    (TEXT_UNRECOGNISED, Severity::Note, "a licence file matches no licence in the catalogue"),
    (DENIED, Severity::Error, "the licence is denied, or not allowed, by the policy"),
    (COMMERCIAL, Severity::Error, "commercial use is intended but the licence is non-commercial, research-only or non-production"),
    (USER_LIMIT, Severity::Error, "expected monthly active users exceed the licence's limit"),
    (HOSTING, Severity::Error, "a hosted service is intended but the licence needs a separate hosting licence"),
    (USE_RESTRICTIONS, Severity::Error, "the licence restricts fields of use and the policy denies that"),
    (OUTPUTS, Severity::Error, "outputs will train other models but the licence forbids or conditions it"),
    (REGION, Severity::Error, "an intended region is excluded by the licence"),
    (PASS_THROUGH, Severity::Error, "the licence makes recipients of derivatives take on its restrictions and the policy denies that"),
    (NAMING, Severity::Warning, "the model's name breaks the naming rule of a licence it is under"),
    (LINEAGE, Severity::Error, "a derivative is declared under terms that drop its base model's obligations"),
    (UNDECLARED_DERIVATIVE, Severity::Warning, "no base model is declared but the architecture matches a known family"),
    (BASE_UNKNOWN, Severity::Warning, "a declared base model is not in the families catalogue"),
    (BASE_MISMATCH, Severity::Warning, "the declared base model's family differs from the architecture fingerprint"),
    (SOURCE_UNKNOWN, Severity::Note, "the model names no publisher or source"),
    (PICKLE, Severity::Error, "the checkpoint contains pickle files, which can run code when loaded"),
    (REMOTE_CODE, Severity::Error, "the model ships Python code or `auto_map`, i.e. needs trust_remote_code"),
    (QUANT_TYPE, Severity::Error, "a tensor storage type is not in the policy's allowed list"),
    (WAIVER_EXPIRED, Severity::Warning, "a waiver for this model is past its expiry date and no longer applies"),
    (WAIVER_UNUSED, Severity::Note, "a waiver matches this model but no finding of its rule"),
    (REVISION_UNPINNED, Severity::Error, "a Hub model is named by a branch or tag, and the policy requires a commit sha"),
    (PUBLISHER, Severity::Error, "a Hub model's publisher is not in the policy's allowed publishers"),
];

pub fn default_severity(id: &str) -> Option<Severity> {
    RULES.iter().find(|(r, _, _)| *r == id).map(|(_, s, _)| *s)
}

pub fn is_known(id: &str) -> bool {
    default_severity(id).is_some()
}

/// A finding of a rule at its default severity.
pub fn finding(id: &'static str, message: String) -> Finding {
    Finding::new(id, default_severity(id).unwrap_or(Severity::Error), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_namespaced() {
        let mut ids: Vec<&str> = RULES.iter().map(|r| r.0).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        assert!(ids.iter().all(|i| i.starts_with("policy/")));
    }
}
