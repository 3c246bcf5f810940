//! Apply a policy file to an [`Assessment`]: the licence conditions, intended use,
//! provenance and security requirements, allowed quant types, severity overrides and
//! waivers. The result is the findings, the waived findings, and the obligations that
//! adopting the model creates for the policy's intended use.

use serde::Serialize;

use super::assess::{self, Assessment, Distribution, Obligation, UseScope};
use super::catalogue::{group_digits, Catalogue, Licence, Permission};
use super::date::Date;
use super::facts::ModelFacts;
use super::families::glob_match;
use super::file::{Policy, Waiver};
use super::rules;
use crate::finding::{Evidence, Finding, Severity};
use crate::formats::WeightFormat;

/// What became of one waiver.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaiverStatus {
    pub rule: String,
    pub target: String,
    pub expires: Date,
    pub approver: String,
    pub reason: String,
    /// `applied`, `expired`, `unused` or `other-model`.
    pub state: &'static str,
    pub waived: usize,
}

/// The policy stage's result for one model.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub assessment: Assessment,
    pub findings: Vec<Finding>,
    pub waived: Vec<Finding>,
    pub waivers: Vec<WaiverStatus>,
    pub obligations: Vec<Obligation>,
    /// Documents to ship with a redistributed copy.
    pub documents: Vec<String>,
}

/// Obligations of every applicable licence for a use.
pub fn obligations_for(
    a: &Assessment,
    cat: &Catalogue,
    scope: &UseScope,
) -> (Vec<Obligation>, Vec<String>) {
    let mut out = Vec::new();
    let applicable = a.applicable();
    for (id, inh) in &applicable {
        let Some(l) = cat.get(id) else { continue };
        let source = match inh {
            None => "declared".to_owned(),
            Some(i) => format!("inherited through {}", i.via),
        };
        out.extend(assess::obligations(l, &source, scope));
    }
    let ids: Vec<String> = applicable.into_iter().map(|(id, _)| id).collect();
    let docs = if scope
        .distribution
        .is_none_or(|d| d == Distribution::Redistribute)
    {
        assess::documents(cat, &ids)
    } else {
        Vec::new()
    };
    (out, docs)
}

fn licence_evidence(a: &Assessment, id: &str) -> Vec<Evidence> {
    let mut ev: Vec<Evidence> = a
        .detections
        .iter()
        .filter(|d| d.licence.as_deref() == Some(id))
        .map(|d| d.evidence.clone())
        .collect();
    for i in a.inherited.iter().filter(|i| i.licence == id) {
        ev.extend(i.evidence.iter().cloned());
    }
    ev
}

fn with_evidence(mut f: Finding, ev: &[Evidence], fallback: &Evidence) -> Finding {
    if ev.is_empty() {
        f = f.at(fallback.clone());
    }
    for e in ev {
        f = f.at(e.clone());
    }
    f
}

fn licence_findings(
    l: &Licence,
    via: Option<&str>,
    policy: &Policy,
    ev: &[Evidence],
    fallback: &Evidence,
) -> Vec<Finding> {
    let p = &policy.file;
    let u = &p.intended_use;
    let o = &l.obligations;
    let how = via
        .map(|v| format!(" (inherited through {v})"))
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut add = |rule: &'static str, msg: String, hint: &str| {
        out.push(with_evidence(
            rules::finding(rule, msg).hint(hint),
            ev,
            fallback,
        ));
    };
    if p.licences
        .deny
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&l.id))
    {
        add(
            rules::DENIED,
            format!("licence `{}`{how} is denied by policy `{}`", l.id, p.name),
            "choose another model, or change the policy with the approvers",
        );
    } else if let Some(allow) = &p.licences.allow {
        if !l.is_unknown() && !allow.iter().any(|x| x.eq_ignore_ascii_case(&l.id)) {
            add(
                rules::DENIED,
                format!(
                    "licence `{}`{how} is not among the licences policy `{}` allows ({})",
                    l.id,
                    p.name,
                    allow.join(", ")
                ),
                "choose a model under an allowed licence, or add this one after legal review",
            );
        }
    }
    if u.commercial && l.forbids_commercial() {
        let kind = if o.commercial.non_production {
            "non-production only"
        } else if o.commercial.research_only {
            "research only"
        } else {
            "non-commercial"
        };
        add(
            rules::COMMERCIAL,
            format!(
                "policy `{}` intends commercial use, but `{}`{how} is {kind}: {} ({})",
                p.name, l.id, o.commercial.summary, o.commercial.clause
            ),
            "use the model only for non-commercial work, or obtain a commercial licence from the publisher",
        );
    }
    if let (Some(limit), Some(mau)) = (o.commercial.mau_limit, u.monthly_active_users) {
        if mau > limit {
            add(
                rules::USER_LIMIT,
                format!(
                    "expected {} monthly active users exceed the {} limit of `{}`{how} ({})",
                    group_digits(mau),
                    group_digits(limit),
                    l.id,
                    o.commercial.clause
                ),
                "request a licence from the publisher before launch",
            );
        }
    }
    if o.commercial.hosting_needs_licence && u.distribution == Distribution::Hosted {
        add(
            rules::HOSTING,
            format!(
                "policy `{}` intends a hosted service, which `{}`{how} does not grant ({})",
                p.name, l.id, o.commercial.clause
            ),
            "obtain a hosting licence from the publisher",
        );
    }
    if p.licences.deny_use_restrictions {
        if let Some(r) = &o.use_restrictions {
            add(
                rules::USE_RESTRICTIONS,
                format!(
                    "`{}`{how} restricts fields of use through the {} ({}), and policy `{}` denies field-of-use restrictions",
                    l.id, r.policy, r.clause, p.name
                ),
                "review the use policy with legal and waive, or choose an unrestricted model",
            );
        }
    }
    if u.outputs_train_models {
        if let Some(x) = o
            .outputs
            .as_ref()
            .filter(|x| x.status == Permission::Forbidden)
        {
            add(
                rules::OUTPUTS,
                format!(
                    "policy `{}` uses outputs to train other models, which `{}`{how} forbids: {} ({})",
                    p.name, l.id, x.summary, x.clause
                ),
                "do not train other models on this model's outputs",
            );
        }
    }
    if let Some(r) = &o.regions {
        let hit: Vec<&String> = u
            .regions
            .iter()
            .filter(|x| r.excluded.iter().any(|e| e.eq_ignore_ascii_case(x)))
            .collect();
        if !hit.is_empty() {
            let scope = r
                .scope
                .as_deref()
                .map(|s| format!(" for {s}"))
                .unwrap_or_default();
            add(
                rules::REGION,
                format!(
                    "`{}`{how} excludes {}{scope} ({}), where policy `{}` operates",
                    l.id,
                    hit.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.clause,
                    p.name
                ),
                "check whether the exclusion covers this model and the team's domicile",
            );
        }
    }
    if p.licences.deny_pass_through && o.redistribution.pass_restrictions {
        add(
            rules::PASS_THROUGH,
            format!(
                "`{}`{how} requires its restrictions to be passed on to recipients ({}), which policy `{}` denies",
                l.id, o.redistribution.clause, p.name
            ),
            "choose a model whose terms do not travel with derivatives",
        );
    }
    if p.licences.deny_naming_rule {
        if let Some(n) = &o.naming {
            add(
                rules::DENIED,
                format!(
                    "`{}`{how} dictates derivative names (\"{}\", {}), which policy `{}` denies",
                    l.id, n.prefix, n.clause, p.name
                ),
                "choose a model without a naming rule",
            );
        }
    }
    out
}

fn security_findings(facts: &ModelFacts, policy: &Policy) -> Vec<Finding> {
    let mut out = Vec::new();
    let s = &policy.file.security;
    if !s.allow_pickle {
        for f in &facts.files {
            let ext = f
                .path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_lowercase)
                .unwrap_or_default();
            let pickle_ext = ["pt", "pth", "ckpt", "pkl", "pickle"].contains(&ext.as_str())
                || (ext == "bin" && facts.weight_format == Some(WeightFormat::PyTorch));
            if pickle_ext {
                out.push(
                    rules::finding(
                        rules::PICKLE,
                        format!("`{}` is a pickle file, which can run code when loaded, and policy `{}` allows no pickle", f.path.display(), policy.file.name),
                    )
                    .at(Evidence::file(f.path.clone()))
                    .hint("run `modelgate scan`, then convert the weights to safetensors"),
                );
            }
        }
    }
    if !s.allow_remote_code {
        for f in &facts.files {
            if f.path.extension().and_then(|e| e.to_str()) == Some("py") {
                out.push(
                    rules::finding(
                        rules::REMOTE_CODE,
                        format!("`{}` is Python code shipped with the model (trust_remote_code), which policy `{}` does not allow", f.path.display(), policy.file.name),
                    )
                    .at(Evidence::file(f.path.clone()))
                    .hint("use an implementation that ships with the runtime instead of the model's code"),
                );
            }
        }
        if facts
            .config
            .as_ref()
            .and_then(|c| c.get("auto_map"))
            .is_some()
        {
            out.push(
                rules::finding(
                    rules::REMOTE_CODE,
                    format!("`config.json` has `auto_map`: loading needs trust_remote_code, which policy `{}` does not allow", policy.file.name),
                )
                .at(Evidence::file("config.json").with_key("auto_map"))
                .hint("use an implementation that ships with the runtime instead of the model's code"),
            );
        }
    }
    if let Some(q) = &policy.file.quantization {
        for (t, n) in &facts.tensor_types {
            if !q.allowed_types.iter().any(|a| a.eq_ignore_ascii_case(t)) {
                let file = facts
                    .weights_file
                    .clone()
                    .unwrap_or_else(|| facts.subject.clone());
                out.push(
                    rules::finding(
                        rules::QUANT_TYPE,
                        format!(
                            "{n} tensors are stored as `{t}`, which policy `{}` does not allow (allowed: {})",
                            policy.file.name,
                            q.allowed_types.join(", ")
                        ),
                    )
                    .at(Evidence::file(file).with_key(t.clone()))
                    .hint("convert to an allowed type with `modelgate convert --type`"),
                );
            }
        }
    }
    out
}

fn waiver_target(w: &Waiver) -> String {
    match (&w.digest, &w.name) {
        (Some(d), _) => format!("sha256:{}", d.0),
        (_, Some(n)) => n.clone(),
        _ => String::new(),
    }
}

fn waiver_matches(w: &Waiver, facts: &ModelFacts, a: &Assessment) -> bool {
    if let Some(d) = &w.digest {
        if facts.model_digest == Some(d.0) {
            return true;
        }
        let weight = |p: &std::path::Path| {
            let e = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            ["gguf", "safetensors", "bin", "pt", "pth", "ckpt"].contains(&e)
        };
        return facts
            .digests
            .iter()
            .any(|x| x.sha256 == d.0 && weight(&x.path));
    }
    if let Some(n) = &w.name {
        return glob_match(n, &a.name)
            || facts.file_name.as_deref().is_some_and(|f| glob_match(n, f));
    }
    false
}

/// Apply a policy.
pub fn evaluate(
    facts: &ModelFacts,
    assessment: Assessment,
    policy: &Policy,
    cat: &Catalogue,
    today: Date,
) -> Outcome {
    let p = &policy.file;
    let fallback = Evidence::file(facts.subject.clone());
    let mut findings: Vec<Finding> = assessment.findings.clone();
    // Provenance requirements raise the matching rules to errors.
    let raise = |f: &mut Finding, on: bool| {
        if on {
            f.severity = Severity::Error;
        }
    };
    for f in &mut findings {
        match f.rule.as_str() {
            rules::SOURCE_UNKNOWN => raise(f, p.provenance.require_known_source),
            rules::UNDECLARED_DERIVATIVE => raise(f, p.provenance.require_declared_base),
            rules::BASE_UNKNOWN | rules::BASE_MISMATCH => {
                raise(f, p.provenance.require_resolved_lineage)
            }
            rules::MISMATCH => raise(f, p.provenance.require_consistent_licence),
            rules::UNKNOWN if !p.licences.deny_unknown => f.severity = Severity::Warning,
            _ => {}
        }
    }
    for (id, inh) in assessment.applicable() {
        let Some(l) = cat.get(&id) else { continue };
        let ev = licence_evidence(&assessment, &id);
        findings.extend(licence_findings(
            l,
            inh.map(|i| i.via.as_str()),
            policy,
            &ev,
            &fallback,
        ));
    }
    findings.extend(security_findings(facts, policy));
    findings.extend(super::provenance::findings(
        facts.hub.as_ref(),
        &p.provenance,
    ));
    // Severity overrides.
    findings.retain_mut(|f| match p.rules.iter().find(|(k, _)| k.0 == f.rule) {
        Some((_, level)) => match level.severity() {
            Some(s) => {
                f.severity = s;
                true
            }
            None => false,
        },
        None => true,
    });
    // Waivers.
    let mut waived = Vec::new();
    let mut statuses = Vec::new();
    for w in &p.waivers {
        let mut st = WaiverStatus {
            rule: w.rule.0.clone(),
            target: waiver_target(w),
            expires: w.expires,
            approver: w.approver.clone(),
            reason: w.reason.clone(),
            state: "other-model",
            waived: 0,
        };
        if !waiver_matches(w, facts, &assessment) {
            statuses.push(st);
            continue;
        }
        let mut ev = Evidence::file(policy.path.clone()).with_key("waivers");
        if let Some(l) = w.line {
            ev = ev.with_line(l);
        }
        if today > w.expires {
            st.state = "expired";
            findings.push(
                rules::finding(
                    rules::WAIVER_EXPIRED,
                    format!(
                        "waiver of `{}` for `{}` (approved by {}) expired on {}; its findings apply again",
                        w.rule.0, st.target, w.approver, w.expires
                    ),
                )
                .at(ev)
                .hint("renew the waiver with a new expiry date, or fix what it waived"),
            );
            statuses.push(st);
            continue;
        }
        let (hit, keep): (Vec<Finding>, Vec<Finding>) =
            findings.into_iter().partition(|f| f.rule == w.rule.0);
        findings = keep;
        st.waived = hit.len();
        st.state = if hit.is_empty() { "unused" } else { "applied" };
        for mut f in hit {
            f.hint = Some(format!(
                "waived by {} until {}: {}",
                w.approver, w.expires, w.reason
            ));
            waived.push(f);
        }
        if st.waived == 0 {
            findings.push(
                rules::finding(
                    rules::WAIVER_UNUSED,
                    format!(
                        "waiver of `{}` for `{}` matches this model but waives nothing",
                        w.rule.0, st.target
                    ),
                )
                .at(ev),
            );
        }
        statuses.push(st);
    }
    let u = &p.intended_use;
    let scope = UseScope {
        commercial: Some(u.commercial),
        distribution: Some(u.distribution),
        outputs_train_models: Some(u.outputs_train_models),
        regions: u.regions.clone(),
    };
    let (obligations, documents) = obligations_for(&assessment, cat, &scope);
    // Errors first, then by rule, so reports are stable.
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.rule.cmp(&b.rule))
    });
    Outcome {
        assessment,
        findings,
        waived,
        waivers: statuses,
        obligations,
        documents,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::finding::Verdict;
    use crate::formats::hf::{LicenceFile, ModelCard};
    use crate::formats::{MetaValue, ModelParams};
    use crate::policy::{assess, facts, file, Catalogues};

    const MIT: &str = include_str!("../../policies/licenses/texts/mit.txt");
    const COMMERCIAL: &str = include_str!("../../policies/commercial.yaml");
    const RESEARCH: &str = include_str!("../../policies/research.yaml");
    const REGULATED: &str = include_str!("../../policies/regulated.yaml");

    fn card(pairs: &[(&str, serde_json::Value)]) -> ModelCard {
        let mut fm = serde_json::Map::new();
        let mut lines = BTreeMap::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            fm.insert((*k).to_owned(), v.clone());
            lines.insert((*k).to_owned(), i as u64 + 2);
        }
        ModelCard {
            path: PathBuf::from("README.md"),
            front_matter: fm,
            key_lines: lines,
            body: String::new(),
        }
    }

    fn llama31_params() -> ModelParams {
        ModelParams {
            architecture: Some("llama".into()),
            vocab_size: Some(128256),
            rope_theta: Some(500000.0),
            embedding_length: Some(4096),
            ..Default::default()
        }
    }

    fn r1_distill() -> ModelFacts {
        ModelFacts {
            subject: "DeepSeek-R1-Distill-Llama-8B".into(),
            file_name: Some("DeepSeek-R1-Distill-Llama-8B".into()),
            card: Some(card(&[
                ("license", "mit".into()),
                ("library_name", "transformers".into()),
                ("base_model", "meta-llama/Llama-3.1-8B".into()),
            ])),
            licence_files: vec![LicenceFile {
                path: "LICENSE".into(),
                text: format!("MIT License\n\nCopyright (c) 2023 DeepSeek\n\n{MIT}"),
            }],
            weights_file: Some("model.safetensors".into()),
            weight_format: Some(WeightFormat::Safetensors),
            params: llama31_params(),
            config: Some(serde_json::json!({"vocab_size": 128256})),
            ..Default::default()
        }
    }

    fn smollm2_like() -> ModelFacts {
        ModelFacts {
            subject: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            file_name: Some("SmolLM2-135M-Instruct.Q4_1".into()),
            weights_file: Some("SmolLM2-135M-Instruct.Q4_1.gguf".into()),
            weight_format: Some(WeightFormat::Gguf),
            metadata: vec![
                (
                    "general.architecture".into(),
                    MetaValue::String("llama".into()),
                ),
                (
                    "general.name".into(),
                    MetaValue::String("Smollm2 135M 8k Lc100K Mix1 Ep2".into()),
                ),
                (
                    "general.organization".into(),
                    MetaValue::String("HuggingFaceTB".into()),
                ),
                (
                    "general.license".into(),
                    MetaValue::String("apache-2.0".into()),
                ),
            ],
            params: ModelParams {
                architecture: Some("llama".into()),
                vocab_size: Some(49152),
                rope_theta: Some(100000.0),
                embedding_length: Some(576),
                ..Default::default()
            },
            tensor_types: vec![("F32".into(), 61), ("Q4_1".into(), 210), ("Q8_0".into(), 1)],
            ..Default::default()
        }
    }

    fn policy(text: &str) -> Policy {
        Policy {
            path: PathBuf::from("policy.yaml"),
            file: file::parse(Path::new("policy.yaml"), text).unwrap(),
            digest: crate::types::Sha256Digest::of(text.as_bytes()),
        }
    }

    fn run(facts: &ModelFacts, text: &str, today: &str) -> Outcome {
        let c = Catalogues::builtin().unwrap();
        let a = assess::assess(facts, &c.licences, &c.families);
        evaluate(
            facts,
            a,
            &policy(text),
            &c.licences,
            Date::parse(today).unwrap(),
        )
    }

    fn rules_of(f: &[Finding]) -> Vec<(&str, Severity)> {
        f.iter().map(|f| (f.rule.as_str(), f.severity)).collect()
    }

    #[test]
    fn r1_distill_fails_commercial_lineage_with_llama_obligations() {
        let o = run(&r1_distill(), COMMERCIAL, "2026-01-01");
        assert_eq!(o.assessment.licences, ["mit"]);
        assert_eq!(o.assessment.inherited[0].licence, "llama3.1");
        let lineage = o
            .findings
            .iter()
            .find(|f| f.rule == rules::LINEAGE)
            .unwrap();
        assert_eq!(lineage.severity, Severity::Error);
        assert!(
            lineage.message.contains("meta-llama/Llama-3.1-8B"),
            "{}",
            lineage.message
        );
        assert!(lineage.message.contains("\"Llama\""), "{}", lineage.message);
        assert_eq!(lineage.evidence[0].path, PathBuf::from("README.md"));
        assert_eq!(lineage.evidence[0].key.as_deref(), Some("base_model"));
        let naming = o.findings.iter().find(|f| f.rule == rules::NAMING).unwrap();
        assert!(naming.message.contains("does not begin with \"Llama\""));
        assert_eq!(Verdict::from_findings(&o.findings), Verdict::Fail);
        let llama: Vec<_> = o
            .obligations
            .iter()
            .filter(|x| x.licence == "llama3.1")
            .collect();
        assert!(llama
            .iter()
            .any(|x| x.topic == assess::Topic::Naming && x.text == ["Llama"]));
        assert!(llama.iter().any(|x| x.topic == assess::Topic::Attribution
            && x.text.iter().any(|t| t == "Built with Llama")));
        assert!(llama
            .iter()
            .all(|x| x.source.contains("meta-llama/Llama-3.1-8B")));
        assert!(o
            .documents
            .iter()
            .any(|d| d.contains("Llama 3.1 Community License")));
    }

    #[test]
    fn llama3_dimensions_without_a_base_are_an_undeclared_derivative() {
        let mut f = r1_distill();
        f.file_name = Some("acme-chat-8b".into());
        f.card = Some(card(&[("license", "apache-2.0".into())]));
        f.licence_files.clear();
        let o = run(&f, COMMERCIAL, "2026-01-01");
        let u = o
            .findings
            .iter()
            .find(|x| x.rule == rules::UNDECLARED_DERIVATIVE)
            .unwrap();
        assert_eq!(
            u.severity,
            Severity::Error,
            "commercial requires a declared base"
        );
        assert!(u.message.contains("Llama 3"), "{}", u.message);
        assert!(u.message.contains("vocab 128256") && u.message.contains("rope theta 500000"));
        assert_eq!(u.evidence[0].path, PathBuf::from("config.json"));
        assert!(o.findings.iter().any(|x| x.rule == rules::LINEAGE));
        // research policy: a warning only
        let o = run(&f, RESEARCH, "2026-01-01");
        let u = o
            .findings
            .iter()
            .find(|x| x.rule == rules::UNDECLARED_DERIVATIVE)
            .unwrap();
        assert_eq!(u.severity, Severity::Warning);
    }

    #[test]
    fn smollm2_passes_commercial_with_apache_obligations() {
        let o = run(&smollm2_like(), COMMERCIAL, "2026-01-01");
        assert!(o.findings.is_empty(), "{:#?}", o.findings);
        assert_eq!(o.assessment.licences, ["apache-2.0"]);
        assert!(o.assessment.provenance.family_original);
        let topics: Vec<_> = o
            .obligations
            .iter()
            .map(|x| (x.licence.as_str(), x.topic))
            .collect();
        assert!(topics.contains(&("apache-2.0", assess::Topic::Attribution)));
        assert!(topics.contains(&("apache-2.0", assess::Topic::Redistribution)));
        assert!(o.documents.iter().any(|d| d.contains("Apache License 2.0")));
        // regulated: Q4_1 is not near-lossless enough
        let o = run(&smollm2_like(), REGULATED, "2026-01-01");
        let q: Vec<_> = o
            .findings
            .iter()
            .filter(|x| x.rule == rules::QUANT_TYPE)
            .collect();
        assert_eq!(q.len(), 1, "{:#?}", o.findings);
        assert!(q[0].message.contains("Q4_1"));
    }

    #[test]
    fn non_commercial_licence_fails_commercial_and_passes_research() {
        let mut f = smollm2_like();
        f.metadata.retain(|(k, _)| k != "general.license");
        f.metadata.push((
            "general.license".into(),
            MetaValue::String("cc-by-nc-4.0".into()),
        ));
        let o = run(&f, COMMERCIAL, "2026-01-01");
        assert_eq!(
            rules_of(&o.findings),
            [
                (rules::COMMERCIAL, Severity::Error),
                (rules::DENIED, Severity::Error)
            ]
        );
        let o = run(&f, RESEARCH, "2026-01-01");
        assert!(o.findings.is_empty(), "{:#?}", o.findings);
    }

    const WAIVERS: &str = "name: w
intended_use: {commercial: true, distribution: redistribute}
rules: {policy/naming: error}
waivers:
  - rule: policy/lineage
    name: \"DeepSeek-R1-Distill-*\"
    reason: reviewed
    approver: legal
    expires: 2026-06-30
  - rule: policy/naming
    name: \"DeepSeek-R1-Distill-*\"
    reason: rename planned
    approver: legal
    expires: 2026-06-14
  - rule: policy/lineage
    name: \"acme-*\"
    reason: another model
    approver: legal
    expires: 2030-01-01
";

    #[test]
    fn waivers_suppress_their_rule_for_their_target_until_expiry() {
        let o = run(&r1_distill(), WAIVERS, "2026-06-15");
        // lineage waived, listed separately
        assert_eq!(rules_of(&o.waived), [(rules::LINEAGE, Severity::Error)]);
        assert!(o.waived[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("until 2026-06-30"));
        assert!(!o.findings.iter().any(|f| f.rule == rules::LINEAGE));
        // naming waiver expired yesterday: the finding stands and the expiry is reported
        assert!(o
            .findings
            .iter()
            .any(|f| f.rule == rules::NAMING && f.severity == Severity::Error));
        let exp = o
            .findings
            .iter()
            .find(|f| f.rule == rules::WAIVER_EXPIRED)
            .unwrap();
        assert!(exp.message.contains("expired on 2026-06-14"));
        assert_eq!(exp.evidence[0].line, Some(10));
        let states: Vec<&str> = o.waivers.iter().map(|w| w.state).collect();
        assert_eq!(states, ["applied", "expired", "other-model"]);
        // on its last day the naming waiver still applies
        let o = run(&r1_distill(), WAIVERS, "2026-06-14");
        assert!(!o.findings.iter().any(|f| f.rule == rules::NAMING));
        assert_eq!(o.waived.len(), 2);
        // after both expire, nothing is waived
        let o = run(&r1_distill(), WAIVERS, "2026-07-01");
        assert!(o.waived.is_empty());
        assert_eq!(
            o.findings
                .iter()
                .filter(|f| f.rule == rules::WAIVER_EXPIRED)
                .count(),
            2
        );
        // another model's lineage finding is untouched by the R1 waivers
        let mut acme = r1_distill();
        acme.file_name = Some("other-model".into());
        let o = run(&acme, WAIVERS, "2026-06-15");
        assert!(o.waived.is_empty());
        assert!(o.findings.iter().any(|f| f.rule == rules::LINEAGE));
    }

    #[test]
    fn digest_waivers_match_the_model_or_weight_digest_only() {
        let mut f = r1_distill();
        let d = crate::types::Sha256Digest::of(b"weights");
        f.digests = vec![
            facts::FileDigest {
                path: "model.safetensors".into(),
                sha256: d,
            },
            facts::FileDigest {
                path: "README.md".into(),
                sha256: crate::types::Sha256Digest::of(b"card"),
            },
        ];
        let pol = |digest: &str| {
            format!("name: d\nintended_use: {{commercial: true, distribution: redistribute}}\nwaivers:\n  - rule: policy/lineage\n    digest: sha256:{digest}\n    reason: r\n    approver: a\n    expires: 2030-01-01\n")
        };
        let o = run(&f, &pol(&d.to_hex()), "2026-01-01");
        assert_eq!(o.waived.len(), 1);
        let card = crate::types::Sha256Digest::of(b"card").to_hex();
        let o = run(&f, &pol(&card), "2026-01-01");
        assert!(
            o.waived.is_empty(),
            "a card digest does not identify the model"
        );
    }

    #[test]
    fn severity_overrides_and_off() {
        let text = "name: s\nintended_use: {commercial: true, distribution: internal}\nrules:\n  policy/lineage: note\n  policy/naming: off\n";
        let o = run(&r1_distill(), text, "2026-01-01");
        assert!(o
            .findings
            .iter()
            .any(|f| f.rule == rules::LINEAGE && f.severity == Severity::Note));
        assert!(!o.findings.iter().any(|f| f.rule == rules::NAMING));
    }

    #[test]
    fn intended_use_selects_obligations() {
        let c = Catalogues::builtin().unwrap();
        let l = c.licences.get("llama3.1").unwrap();
        let internal = assess::UseScope {
            commercial: Some(false),
            distribution: Some(Distribution::Internal),
            outputs_train_models: Some(false),
            regions: vec![],
        };
        let topics: Vec<_> = assess::obligations(l, "declared", &internal)
            .iter()
            .map(|o| o.topic)
            .collect();
        assert_eq!(topics, [assess::Topic::UseRestrictions]);
        let all: Vec<_> = assess::obligations(l, "declared", &assess::UseScope::default())
            .iter()
            .map(|o| o.topic)
            .collect();
        assert!(all.contains(&assess::Topic::Naming) && all.contains(&assess::Topic::Commercial));
    }

    #[test]
    fn shipped_policies_parse() {
        for t in [COMMERCIAL, RESEARCH, REGULATED] {
            policy(t);
        }
    }
}
