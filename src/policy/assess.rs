//! What a model's licence is, where it came from, and what adopting it obliges, before
//! any policy is applied: licence detection from every source (card front matter, licence
//! files, GGUF `general.license*`, safetensors `__metadata__`), provenance (publisher,
//! sources, base-model chain, datasets, digests, architecture family) and lineage
//! inheritance (a derivative keeps its base model's obligations whatever its card says).

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::catalogue::{Catalogue, Licence, Permission, TextKind, EXACT_THRESHOLD};
use super::facts::ModelFacts;
use super::families::{repo_id, ArchFacts, Families, FamilyMatch, Resolved};
use super::rules;
use crate::finding::{Evidence, Finding};
use crate::formats::experts::Experts;
use crate::formats::WeightFormat;

/// Where a licence statement was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Card front matter `license`.
    CardLicense,
    /// Card front matter `license_name` (with `license: other`).
    CardLicenseName,
    /// Card front matter `license_link`.
    CardLicenseLink,
    /// A LICENSE / NOTICE file, matched by its text.
    LicenceFile,
    /// A USE_POLICY file, matched against the catalogue's acceptable-use policies.
    UsePolicyFile,
    /// GGUF `general.license*`.
    GgufMetadata,
    /// safetensors `__metadata__`.
    SafetensorsMetadata,
}

impl SourceKind {
    pub fn describe(self) -> &'static str {
        match self {
            SourceKind::CardLicense | SourceKind::CardLicenseName | SourceKind::CardLicenseLink => {
                "card"
            }
            SourceKind::LicenceFile => "licence file",
            SourceKind::UsePolicyFile => "use policy file",
            SourceKind::GgufMetadata => "GGUF metadata",
            SourceKind::SafetensorsMetadata => "safetensors metadata",
        }
    }
}

/// One statement about the licence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub source: SourceKind,
    pub evidence: Evidence,
    /// What the source says (the id or name; for files, their path).
    pub value: String,
    /// The catalogue licence it identifies, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    /// Text match score (files only), 0..=1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// For unidentified files: the closest catalogue licence and its score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearest: Option<(String, f64)>,
}

/// A declared base model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaseModel {
    pub name: String,
    pub evidence: Evidence,
    /// `adapter`, `merge`, `quantized`, `finetune` (card `base_model_relation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    /// The known release it resolves to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolved>,
}

/// A licence that applies because of lineage, not because the model declares it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Inherited {
    pub licence: String,
    /// "base model `meta-llama/Llama-3.1-8B`" or "the llama3 family fingerprint".
    pub via: String,
    pub evidence: Vec<Evidence>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Provenance {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    pub sources: Vec<String>,
    pub base_models: Vec<BaseModel>,
    pub datasets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<FamilyMatch>,
    /// The model is the family's own release (its publisher is the family's).
    pub family_original: bool,
    pub architecture: ArchFacts,
}

/// Everything known about a model's licence and lineage.
#[derive(Clone, Debug, Serialize)]
pub struct Assessment {
    pub name: String,
    pub detections: Vec<Detection>,
    /// Licences the model itself declares or ships, most authoritative first.
    pub licences: Vec<String>,
    pub inherited: Vec<Inherited>,
    pub provenance: Provenance,
    /// Findings about the licence and lineage, at their default severities.
    pub findings: Vec<Finding>,
}

impl Assessment {
    /// Every licence whose obligations apply: declared, then inherited.
    pub fn applicable(&self) -> Vec<(String, Option<&Inherited>)> {
        let mut out: Vec<(String, Option<&Inherited>)> =
            self.licences.iter().map(|l| (l.clone(), None)).collect();
        for i in &self.inherited {
            if !out.iter().any(|(l, _)| *l == i.licence) {
                out.push((i.licence.clone(), Some(i)));
            }
        }
        out
    }

    /// Whether this model is a derivative (it declares a base, inherits a licence, or
    /// matches a family it is not the publisher of).
    pub fn is_derivative(&self) -> bool {
        !self.provenance.base_models.is_empty() || !self.inherited.is_empty()
    }
}

fn card_evidence(facts: &ModelFacts, key: &str) -> Evidence {
    let path = facts
        .card
        .as_ref()
        .map(|c| c.path.clone())
        .unwrap_or_else(|| PathBuf::from("README.md"));
    let e = Evidence::file(path).with_key(key);
    match facts.card_line(key) {
        Some(l) => e.with_line(l),
        None => e,
    }
}

fn meta_evidence(facts: &ModelFacts, key: &str) -> Evidence {
    let path = facts
        .weights_file
        .clone()
        .unwrap_or_else(|| facts.subject.clone());
    Evidence::file(path).with_key(key)
}

/// Strings of a card value that may be a string or a list of strings.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.trim().to_owned()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(|s| s.trim().to_owned()))
            .collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect()
}

fn resolve_id(cat: &Catalogue, name: &str) -> Option<String> {
    cat.resolve(name).map(|l| l.id.clone())
}

/// Licence statements from every source.
pub fn detect(facts: &ModelFacts, cat: &Catalogue) -> Vec<Detection> {
    let mut out = Vec::new();
    let det = |source, evidence, value: String, licence| Detection {
        source,
        evidence,
        value,
        licence,
        score: None,
        nearest: None,
    };
    // Card front matter.
    let names = strings(facts.card_value("license_name"));
    for v in strings(facts.card_value("license")) {
        let is_other = v.eq_ignore_ascii_case("other");
        let lic = if is_other {
            Some("other".to_owned())
        } else {
            resolve_id(cat, &v)
        };
        out.push(det(
            SourceKind::CardLicense,
            card_evidence(facts, "license"),
            v.clone(),
            lic,
        ));
    }
    for n in names {
        let lic = resolve_id(cat, &n);
        out.push(det(
            SourceKind::CardLicenseName,
            card_evidence(facts, "license_name"),
            n,
            lic,
        ));
    }
    for link in strings(facts.card_value("license_link")) {
        // A relative link names a file in the repository, which is matched by its text.
        if link.starts_with("http") {
            let lic = resolve_id(cat, &link);
            out.push(det(
                SourceKind::CardLicenseLink,
                card_evidence(facts, "license_link"),
                link,
                lic,
            ));
        }
    }
    // Licence and use-policy files, by their text.
    for f in &facts.licence_files {
        let (hit, nearest) = cat.identify_text(&f.text);
        let evidence = Evidence::file(f.path.clone()).with_line(1);
        let value = f.path.display().to_string();
        match hit {
            Some(m) => out.push(Detection {
                source: match m.kind {
                    TextKind::Licence => SourceKind::LicenceFile,
                    TextKind::UsePolicy => SourceKind::UsePolicyFile,
                },
                evidence,
                value,
                licence: Some(m.licence),
                score: Some(m.score),
                nearest: None,
            }),
            None => out.push(Detection {
                source: SourceKind::LicenceFile,
                evidence,
                value,
                licence: None,
                score: None,
                nearest: nearest.map(|n| (n.licence, n.score)),
            }),
        }
    }
    // Weight-file metadata.
    let (source, keys): (SourceKind, &[&str]) = match facts.weight_format {
        Some(WeightFormat::Gguf) => (
            SourceKind::GgufMetadata,
            &[
                "general.license",
                "general.license.name",
                "general.license.link",
            ],
        ),
        _ => (
            SourceKind::SafetensorsMetadata,
            &["license", "modelspec.license", "general.license"],
        ),
    };
    for key in keys {
        if let Some(v) = facts.meta_str(key) {
            let v = v.trim().to_owned();
            if v.is_empty() {
                continue;
            }
            if key.ends_with(".link") && !v.starts_with("http") {
                continue;
            }
            let lic = if v.eq_ignore_ascii_case("other") {
                Some("other".to_owned())
            } else {
                resolve_id(cat, &v)
            };
            out.push(det(source, meta_evidence(facts, key), v, lic));
        }
    }
    out
}

/// The model's name: card `model_name` or `model-index[0].name`, GGUF `general.name`, or
/// the directory / file name.
pub fn model_name(facts: &ModelFacts) -> String {
    if let Some(n) = facts.card_value("model_name").and_then(Value::as_str) {
        return n.to_owned();
    }
    if let Some(n) = facts
        .card_value("model-index")
        .and_then(|v| v.get(0))
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
    {
        return n.to_owned();
    }
    if facts.card.is_none() {
        if let Some(n) = facts.meta_str("general.name") {
            return n;
        }
    }
    facts
        .file_name
        .clone()
        .unwrap_or_else(|| facts.subject.display().to_string())
}

fn provenance(facts: &ModelFacts, fam: &Families) -> Provenance {
    let publisher = ["general.organization", "general.author"]
        .iter()
        .find_map(|k| facts.meta_str(k))
        .or_else(|| {
            ["model_creator", "organization"].iter().find_map(|k| {
                facts
                    .card_value(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
        });
    let mut p = Provenance {
        publisher,
        ..Default::default()
    };
    for key in [
        "general.source.huggingface.repository",
        "general.source.url",
        "general.source.repo_url",
        "general.url",
        "general.repo_url",
    ] {
        if let Some(v) = facts.meta_str(key) {
            p.sources.push(v);
        }
    }
    if let Some(v) = facts.card_value("source").and_then(Value::as_str) {
        p.sources.push(v.to_owned());
    }
    // Base models: card, then GGUF general.base_model.N.*.
    let relation = facts
        .card_value("base_model_relation")
        .and_then(Value::as_str)
        .map(str::to_owned);
    for b in strings(facts.card_value("base_model")) {
        p.base_models.push(BaseModel {
            resolved: fam.resolve_model(&b),
            name: repo_id(&b),
            evidence: card_evidence(facts, "base_model"),
            relation: relation.clone(),
        });
    }
    let count = facts
        .meta_str("general.base_model.count")
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(0)
        .min(64);
    for i in 0..count {
        let key = |f: &str| format!("general.base_model.{i}.{f}");
        let name = facts
            .meta_str(&key("repo_url"))
            .map(|u| repo_id(&u))
            .or_else(|| {
                let org = facts.meta_str(&key("organization"))?;
                let name = facts.meta_str(&key("name"))?;
                Some(format!(
                    "{}/{}",
                    org.replace(' ', "-"),
                    name.replace(' ', "-")
                ))
            })
            .or_else(|| facts.meta_str(&key("name")));
        if let Some(name) = name {
            if p.base_models
                .iter()
                .any(|b| b.name.eq_ignore_ascii_case(&name))
            {
                continue;
            }
            p.base_models.push(BaseModel {
                resolved: fam.resolve_model(&name),
                name,
                evidence: meta_evidence(facts, &key("name")),
                relation: None,
            });
        }
    }
    p.datasets = strings(facts.card_value("datasets"));
    p.architecture = ArchFacts::from_params(&facts.params, facts.tokens.clone());
    let (moe, _) = Experts::from_sources(facts.config.as_ref(), &facts.metadata);
    p.architecture.experts = moe.is_moe().then_some(moe.count);
    p.family = fam.identify(&p.architecture).into_iter().next();
    p.family_original = match (&p.family, &p.publisher) {
        (Some(f), Some(org)) => fam.is_publisher(&f.family, org),
        _ => false,
    };
    p
}

fn pct(x: f64) -> String {
    format!("{:.0}%", (x * 100.0).floor())
}

/// Detect, trace lineage and report what is inconsistent.
pub fn assess(facts: &ModelFacts, cat: &Catalogue, fam: &Families) -> Assessment {
    let detections = detect(facts, cat);
    let name = model_name(facts);
    let provenance = provenance(facts, fam);
    let mut findings = Vec::new();

    // Own licences: files first (the text is what binds), then card, then metadata.
    let mut order: Vec<&Detection> = detections.iter().collect();
    order.sort_by_key(|d| match d.source {
        SourceKind::LicenceFile => 0,
        SourceKind::CardLicenseName => 1,
        SourceKind::CardLicense => 2,
        SourceKind::CardLicenseLink => 3,
        SourceKind::UsePolicyFile => 4,
        SourceKind::GgufMetadata | SourceKind::SafetensorsMetadata => 5,
    });
    let mut licences: Vec<String> = Vec::new();
    for d in &order {
        if let Some(l) = &d.licence {
            if l != "other" && l != "unknown" && !licences.contains(l) {
                licences.push(l.clone());
            }
        }
    }

    for d in &detections {
        match (d.source, &d.licence, d.score, &d.nearest) {
            (SourceKind::LicenceFile | SourceKind::UsePolicyFile, Some(l), Some(s), _)
                if s < EXACT_THRESHOLD =>
            {
                findings.push(
                    rules::finding(
                        rules::TEXT_MODIFIED,
                        format!(
                            "`{}` matches the `{l}` text at {}: it differs from the published licence",
                            d.value,
                            pct(s)
                        ),
                    )
                    .at(d.evidence.clone())
                    .hint("compare the file with the published text; edited terms may not be what the catalogue describes"),
                );
            }
            (SourceKind::LicenceFile, None, _, nearest) => {
                let near = nearest
                    .as_ref()
                    .map(|(l, s)| format!(" (closest: `{l}` at {})", pct(*s)))
                    .unwrap_or_default();
                findings.push(
                    rules::finding(
                        rules::TEXT_UNRECOGNISED,
                        format!("`{}` matches no licence in the catalogue{near}", d.value),
                    )
                    .at(d.evidence.clone())
                    .hint("read the file; add the licence to `policies/licenses/` if the team meets it often"),
                );
            }
            (
                SourceKind::CardLicense
                | SourceKind::CardLicenseName
                | SourceKind::GgufMetadata
                | SourceKind::SafetensorsMetadata,
                None,
                _,
                _,
            ) => {
                findings.push(
                    rules::finding(
                        rules::UNKNOWN,
                        format!("{} says `{}`, which is not a licence modelgate knows", d.source.describe(), d.value),
                    )
                    .at(d.evidence.clone())
                    .hint("use a Hugging Face licence id, or `other` with `license_name` and `license_link`"),
                );
            }
            _ => {}
        }
    }
    if licences.is_empty() && !findings.iter().any(|f| f.rule == rules::UNKNOWN) {
        let mut f = rules::finding(
            rules::UNKNOWN,
            "no licence identified: no card `license`, no recognised licence file and no licence in the weight metadata".to_string(),
        )
        .hint("without a licence there is no grant to use or redistribute the weights; ask the publisher");
        for d in &detections {
            f = f.at(d.evidence.clone());
        }
        if f.evidence.is_empty() {
            f = f.at(Evidence::file(facts.subject.clone()));
        }
        findings.push(f);
    }
    // Sources that disagree.
    let distinct: Vec<&String> = {
        let mut v: Vec<&String> = detections
            .iter()
            .filter_map(|d| d.licence.as_ref())
            .filter(|l| *l != "other" && *l != "unknown")
            .collect();
        v.sort();
        v.dedup();
        v
    };
    if distinct.len() > 1 {
        let said: Vec<String> = detections
            .iter()
            .filter_map(|d| {
                d.licence
                    .as_ref()
                    .filter(|l| *l != "other" && *l != "unknown")
                    .map(|l| {
                        format!(
                            "{} `{}` says `{l}`",
                            d.source.describe(),
                            d.evidence.path.display()
                        )
                    })
            })
            .collect();
        let mut f = rules::finding(
            rules::MISMATCH,
            format!(
                "licence sources disagree: {}; the obligations of all of them are applied",
                said.join(", ")
            ),
        )
        .hint("the licence text is what binds; correct the card or metadata, or ask the publisher which applies");
        for d in &detections {
            if d.licence.as_ref().is_some_and(|l| distinct.contains(&l)) {
                f = f.at(d.evidence.clone());
            }
        }
        findings.push(f);
    }

    // Lineage.
    let mut inherited: Vec<Inherited> = Vec::new();
    for b in &provenance.base_models {
        match &b.resolved {
            Some(r) => {
                for l in std::iter::once(&r.licence).chain(&r.inherits) {
                    if licences.contains(l) || inherited.iter().any(|i| &i.licence == l) {
                        continue;
                    }
                    inherited.push(Inherited {
                        licence: l.clone(),
                        via: format!("base model `{}`", b.name),
                        evidence: vec![b.evidence.clone()],
                    });
                }
            }
            None => findings.push(
                rules::finding(
                    rules::BASE_UNKNOWN,
                    format!(
                        "base model `{}` is not in the families catalogue: the licence it passes on cannot be checked",
                        b.name
                    ),
                )
                .at(b.evidence.clone())
                .hint("check the base model's licence by hand, or add its release to `policies/families.yaml`"),
            ),
        }
        if let (Some(r), Some(fm)) = (&b.resolved, &provenance.family) {
            if r.family != fm.family {
                findings.push(
                    rules::finding(
                        rules::BASE_MISMATCH,
                        format!(
                            "base model `{}` is a {} model, but the architecture matches the {} family ({})",
                            b.name,
                            fam.get(&r.family).map_or(r.family.as_str(), |f| f.name.as_str()),
                            fm.name,
                            fm.matched.join(", ")
                        ),
                    )
                    .at(b.evidence.clone())
                    .hint("the declared base may be wrong; the fingerprint suggests another lineage"),
                );
            }
        }
    }
    if provenance.base_models.is_empty() {
        if let Some(fm) = &provenance.family {
            if !provenance.family_original {
                let family = fam.get(&fm.family);
                let assumed = family
                    .map(|f| f.assumed_licence.clone())
                    .unwrap_or_default();
                let all = family.map(|f| f.licences.join("`, `")).unwrap_or_default();
                let ev = arch_evidence(facts);
                findings.push(
                    rules::finding(
                        rules::UNDECLARED_DERIVATIVE,
                        format!(
                            "`{name}` declares no base model, but its architecture matches the {} family ({}): it looks like an undeclared derivative; the `{assumed}` obligations are assumed (the family's releases use `{all}`)",
                            fm.name,
                            fm.matched.join(", "),
                        ),
                    )
                    .at(ev.clone())
                    .hint("ask the publisher for `base_model` in the card; a derivative keeps its base's licence"),
                );
                if !assumed.is_empty() && !licences.contains(&assumed) {
                    inherited.push(Inherited {
                        licence: assumed,
                        via: format!("the {} family fingerprint", fm.name),
                        evidence: vec![ev],
                    });
                }
            }
        }
    }
    // A derivative declared under terms that drop its base's obligations.
    for i in &inherited {
        let Some(base) = cat.get(&i.licence) else {
            continue;
        };
        for own in &licences {
            let Some(own_l) = cat.get(own) else { continue };
            let lost = own_l.missing_from(base);
            if lost.is_empty() {
                continue;
            }
            let mut f = rules::finding(
                rules::LINEAGE,
                format!(
                    "`{name}` is declared `{own}`, but it derives from {} under `{}`: a derivative keeps its base's obligations, so the `{}` terms apply too ({} are missing from `{own}`)",
                    i.via,
                    base.id,
                    base.id,
                    lost.join("; ")
                ),
            )
            .hint(format!(
                "treat the model as licensed under `{}` ({}); the publisher's `{own}` covers only its own changes",
                base.id, base.name
            ));
            for e in &i.evidence {
                f = f.at(e.clone());
            }
            if let Some(d) = detections
                .iter()
                .find(|d| d.licence.as_deref() == Some(own.as_str()))
            {
                f = f.at(d.evidence.clone());
            }
            findings.push(f);
        }
    }
    // Naming rules of every applicable licence, for derivatives.
    let derivative = !provenance.base_models.is_empty() || !inherited.is_empty();
    if derivative {
        let mut applicable: Vec<(&Licence, String)> = Vec::new();
        for l in &licences {
            if let Some(x) = cat.get(l) {
                applicable.push((x, "its own licence".into()));
            }
        }
        for i in &inherited {
            if let Some(x) = cat.get(&i.licence) {
                applicable.push((x, i.via.clone()));
            }
        }
        for (l, via) in applicable {
            let Some(n) = &l.obligations.naming else {
                continue;
            };
            if !name.to_lowercase().starts_with(&n.prefix.to_lowercase()) {
                let mut f = rules::finding(
                    rules::NAMING,
                    format!(
                        "`{name}` does not begin with \"{}\", which `{}` ({}) requires of a distributed model built from it: {}",
                        n.prefix, l.id, n.clause, via
                    ),
                )
                .hint(format!(
                    "if you distribute this model or one trained from it, name it \"{} ...\"",
                    n.prefix
                ));
                if let Some(i) = inherited.iter().find(|i| i.licence == l.id) {
                    for e in &i.evidence {
                        f = f.at(e.clone());
                    }
                }
                findings.push(f);
            }
        }
    }
    if provenance.publisher.is_none() && provenance.sources.is_empty() {
        findings.push(
            rules::finding(
                rules::SOURCE_UNKNOWN,
                format!("`{name}` names no publisher or source (no GGUF `general.organization` or `general.source.*`, no card `model_creator`)"),
            )
            .at(Evidence::file(
                facts.card.as_ref().map(|c| c.path.clone()).or_else(|| facts.weights_file.clone()).unwrap_or_else(|| facts.subject.clone()),
            ))
            .hint("record where the model was downloaded from and who published it"),
        );
    }
    Assessment {
        name,
        detections,
        licences,
        inherited,
        provenance,
        findings,
    }
}

/// Evidence for an architecture fingerprint: config.json, or the weight file's keys.
fn arch_evidence(facts: &ModelFacts) -> Evidence {
    if facts.config.is_some() {
        Evidence::file("config.json").with_key("vocab_size")
    } else {
        let arch = facts
            .params
            .architecture
            .clone()
            .unwrap_or_else(|| "llama".into());
        meta_evidence(facts, &format!("{arch}.vocab_size"))
    }
}

/// What a topic of obligation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    Commercial,
    Attribution,
    Naming,
    UseRestrictions,
    Outputs,
    Regions,
    Redistribution,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Commercial => "commercial use",
            Topic::Attribution => "attribution",
            Topic::Naming => "naming",
            Topic::UseRestrictions => "use restrictions",
            Topic::Outputs => "outputs",
            Topic::Regions => "regions",
            Topic::Redistribution => "redistribution",
        }
    }
}

/// One duty that adopting the model creates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Obligation {
    pub licence: String,
    pub topic: Topic,
    pub duty: String,
    pub clause: String,
    /// `declared`, or how the licence was inherited.
    pub source: String,
    /// Exact text to show or ship (attribution display, Notice text, name prefix).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
}

/// How the team means to use the model, which decides which duties arise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Weights (or derivatives) are shipped to others.
    Redistribute,
    /// The model serves others through a product or API; weights stay in house.
    Hosted,
    /// Only the team uses it.
    Internal,
}

/// The parts of an intended use that decide which obligations arise.
#[derive(Clone, Debug, Default)]
pub struct UseScope {
    pub commercial: Option<bool>,
    pub distribution: Option<Distribution>,
    pub outputs_train_models: Option<bool>,
    pub regions: Vec<String>,
}

/// The obligations of one licence for a use (all of them when the use is unknown).
pub fn obligations(l: &Licence, source: &str, scope: &UseScope) -> Vec<Obligation> {
    let o = &l.obligations;
    let mut out = Vec::new();
    let mut push = |topic, duty: &str, clause: &str, text: Vec<String>| {
        out.push(Obligation {
            licence: l.id.clone(),
            topic,
            duty: duty.to_owned(),
            clause: clause.to_owned(),
            source: source.to_owned(),
            text,
        })
    };
    let shares = scope.distribution != Some(Distribution::Internal);
    let redistributes = scope
        .distribution
        .is_none_or(|d| d == Distribution::Redistribute);
    if scope.commercial != Some(false) || o.commercial.status == Permission::Unknown {
        push(
            Topic::Commercial,
            &o.commercial.summary,
            &o.commercial.clause,
            Vec::new(),
        );
    }
    if let Some(a) = &o.attribution {
        if shares {
            let text = a.display.iter().chain(&a.notice).cloned().collect();
            push(Topic::Attribution, &a.summary, &a.clause, text);
        }
    }
    if let Some(n) = &o.naming {
        let trains = scope.outputs_train_models.unwrap_or(true) && n.outputs_too;
        if redistributes || trains {
            push(Topic::Naming, &n.summary, &n.clause, vec![n.prefix.clone()]);
        }
    }
    if let Some(u) = &o.use_restrictions {
        let text = std::iter::once(u.policy.clone())
            .chain(u.url.clone())
            .collect();
        push(Topic::UseRestrictions, &u.summary, &u.clause, text);
    }
    if let Some(x) = &o.outputs {
        if scope.outputs_train_models.unwrap_or(true) && x.status != Permission::Allowed {
            push(Topic::Outputs, &x.summary, &x.clause, Vec::new());
        }
    }
    if let Some(r) = &o.regions {
        let hit = scope.regions.is_empty()
            || scope
                .regions
                .iter()
                .any(|x| r.excluded.iter().any(|e| e.eq_ignore_ascii_case(x)));
        if hit {
            push(Topic::Regions, &r.summary, &r.clause, r.excluded.clone());
        }
    }
    if shares && (redistributes || o.redistribution.pass_restrictions) {
        let r = &o.redistribution;
        push(Topic::Redistribution, &r.summary, &r.clause, Vec::new());
    }
    out
}

/// The documents to ship with a redistributed copy, over all applicable licences.
pub fn documents(cat: &Catalogue, licences: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in licences {
        let Some(l) = cat.get(id) else { continue };
        let r = &l.obligations.redistribution;
        if r.include_licence {
            out.push(format!("a copy of the {}", l.name));
        }
        if r.include_notice {
            if let Some(n) = l
                .obligations
                .attribution
                .as_ref()
                .and_then(|a| a.notice.as_ref())
            {
                out.push(format!("a \"Notice\" file containing: {n}"));
            } else {
                out.push(format!(
                    "the NOTICE / attribution notices that came with the model ({})",
                    l.id
                ));
            }
        }
        if let Some(u) = &l.obligations.use_restrictions {
            if r.pass_restrictions || l.id.starts_with("llama") {
                let url = u
                    .url
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default();
                out.push(format!("the {}{url}", u.policy));
            }
        }
    }
    out.dedup();
    out
}
