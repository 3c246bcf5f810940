//! Provenance requirements on models resolved from the Hugging Face Hub
//! (`provenance.require_pinned_revision`, `provenance.allowed_publishers`): a branch or
//! tag instead of a commit sha, and a publisher outside the allowlist, are findings. A
//! local model has no Hub provenance, so these rules say nothing about it.

use super::file::ProvenanceRules;
use super::rules;
use crate::finding::{Evidence, Finding};
use crate::provenance::Provenance;

/// The findings of the Hub provenance rules for one model (none when it is not from the
/// Hub).
pub fn findings(hub: Option<&Provenance>, rules_: &ProvenanceRules) -> Vec<Finding> {
    let Some(p) = hub else {
        return Vec::new();
    };
    evaluate(
        p,
        rules_.require_pinned_revision,
        rules_.allowed_publishers.as_deref(),
    )
}

/// Apply the two settings to a Hub model's provenance.
pub fn evaluate(
    p: &Provenance,
    require_pinned_revision: bool,
    allowed_publishers: Option<&[String]>,
) -> Vec<Finding> {
    let asked = format!("hf://{}@{}", p.repository, p.requested_revision);
    let mut out = Vec::new();
    if require_pinned_revision && !p.is_pinned() {
        out.push(
            rules::finding(
                rules::REVISION_UNPINNED,
                format!(
                    "`{asked}` names revision `{}`, which can move; the policy requires a commit sha (it resolved to {})",
                    p.requested_revision, p.commit
                ),
            )
            .at(Evidence::file(&asked).with_key("revision"))
            .hint(format!("use `{}`", p.uri())),
        );
    }
    if let Some(allowed) = allowed_publishers {
        let publisher = p.publisher();
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(publisher)) {
            let list = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            out.push(
                rules::finding(
                    rules::PUBLISHER,
                    format!(
                        "`{}` is published by `{publisher}`, which is not among the allowed publishers ({list})",
                        p.repository
                    ),
                )
                .at(Evidence::file(&asked).with_key("publisher"))
                .hint("take the model from an allowed publisher, or add this one to `provenance.allowed_publishers` after review"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Severity;
    use crate::provenance::{CommitSha, RepoId};

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn prov(spec: &str) -> Provenance {
        let rest = spec.strip_prefix("hf://").unwrap();
        let (repo, rev) = rest.split_once('@').unwrap_or((rest, "main"));
        Provenance::new(
            RepoId::parse(repo).unwrap(),
            rev,
            CommitSha::parse(SHA).unwrap(),
            "https://huggingface.co",
            None,
            Vec::new(),
        )
    }

    #[test]
    fn branch_fails_only_when_pinning_is_required() {
        let p = prov("hf://meta-llama/Llama-3.1-8B@main");
        assert!(evaluate(&p, false, None).is_empty());
        let f = evaluate(&p, true, None);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, rules::REVISION_UNPINNED);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].message.contains("`main`"), "{}", f[0].message);
        assert!(f[0].hint.as_deref().unwrap().contains(SHA));
        let pinned = prov(&format!("hf://meta-llama/Llama-3.1-8B@{SHA}"));
        assert!(evaluate(&pinned, true, None).is_empty());
    }

    #[test]
    fn publishers_are_matched_without_case() {
        let p = prov("hf://Qwen/Qwen2.5-0.5B");
        let allowed = vec!["qwen".to_owned(), "meta-llama".to_owned()];
        assert!(evaluate(&p, false, Some(&allowed)).is_empty());
        let f = evaluate(&p, false, Some(&["meta-llama".to_owned()]));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, rules::PUBLISHER);
        assert!(f[0].message.contains("`Qwen`"), "{}", f[0].message);
        assert_eq!(evaluate(&p, false, Some(&[])).len(), 1);
    }

    #[test]
    fn local_models_are_not_judged() {
        let r = ProvenanceRules {
            require_pinned_revision: true,
            allowed_publishers: Some(Vec::new()),
            ..ProvenanceRules::default()
        };
        assert!(findings(None, &r).is_empty());
        assert_eq!(findings(Some(&prov("hf://a/b")), &r).len(), 2);
    }
}
