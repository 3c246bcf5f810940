//! The licence catalogue: one YAML file per licence in `policies/licenses/` (schema
//! `schemas/license.schema.json`), with the licence texts it fingerprints in
//! `policies/licenses/texts/`. Both are compiled into the binary so `modelgate license`
//! gives the same answer wherever it runs; a unit test keeps the embedded list and the
//! folder in step.
//!
//! Each entry states its obligations in modelgate's own words, each with the clause it
//! comes from, in a structure the policy evaluator can reason over: commercial use,
//! attribution, derivative naming, field-of-use restrictions, use of outputs, regional
//! exclusions and redistribution duties.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::text::{normalised, Fingerprint};
use super::PolicyError;

/// Whether the licence allows something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Allowed,
    Conditional,
    Forbidden,
    Unknown,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Allowed => "allowed",
            Permission::Conditional => "conditional",
            Permission::Forbidden => "forbidden",
            Permission::Unknown => "unknown",
        }
    }

    /// How much it restricts, for comparing a derivative's licence with its base's.
    fn rank(self) -> u8 {
        match self {
            Permission::Allowed => 0,
            Permission::Conditional => 1,
            Permission::Forbidden => 2,
            Permission::Unknown => 3,
        }
    }
}

/// One licence of the catalogue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    /// Hugging Face licence id (`license:` in a model card), or modelgate's id for
    /// licences the hub lists as `other` with a `license_name`.
    pub id: String,
    /// SPDX identifier (or SPDX `LicenseRef-`) where one exists.
    #[serde(default)]
    pub spdx: Option<String>,
    pub name: String,
    /// Other spellings met in cards (`license_name`), GGUF `general.license` and files.
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub text: Option<TextSpec>,
    pub summary: String,
    pub obligations: Obligations,
}

/// Where the fingerprinted text is and which phrases a file must contain to be this
/// licence (to tell near-identical versions apart).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// Paths relative to `policies/licenses/`.
    pub files: Vec<String>,
    #[serde(default)]
    pub markers: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligations {
    pub commercial: Commercial,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naming: Option<Naming>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_restrictions: Option<UseRestrictions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Regions>,
    pub redistribution: Redistribution,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commercial {
    pub status: Permission,
    /// Monthly active users above which a separate licence is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mau_limit: Option<u64>,
    /// Offering the model as a hosted service needs a separate licence (Falcon 180B).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hosting_needs_licence: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_commercial: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub research_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_production: bool,
    pub summary: String,
    pub clause: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    /// Text to show prominently ("Built with Llama").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Text for the "Notice" file shipped with copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    pub summary: String,
    pub clause: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Naming {
    /// A distributed derivative's name must begin with this.
    pub prefix: String,
    /// The rule also covers models trained on the outputs.
    #[serde(default)]
    pub outputs_too: bool,
    pub summary: String,
    pub clause: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseRestrictions {
    /// The acceptable-use or prohibited-use policy the licence points to.
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Its text in `policies/licenses/`, when modelgate has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub summary: String,
    pub clause: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// Using the outputs to train or improve other models.
    pub status: Permission,
    pub summary: String,
    pub clause: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regions {
    /// Region codes not licensed (`EU`).
    pub excluded: Vec<String>,
    /// What the exclusion covers when not the whole licence ("multimodal models").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub summary: String,
    pub clause: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redistribution {
    pub include_licence: bool,
    pub include_notice: bool,
    /// Use restrictions (or share-alike terms) must be passed on to recipients.
    pub pass_restrictions: bool,
    pub mark_changes: bool,
    pub summary: String,
    pub clause: String,
}

impl Licence {
    /// Whether this licence lets the holder use the model commercially at all.
    pub fn forbids_commercial(&self) -> bool {
        let c = &self.obligations.commercial;
        c.status == Permission::Forbidden || c.non_commercial || c.research_only || c.non_production
    }

    /// Whether the obligations are unknown (`other`, `unknown`).
    pub fn is_unknown(&self) -> bool {
        self.obligations.commercial.status == Permission::Unknown
    }

    /// What `base` obliges that `self` does not: the duties a derivative declared under
    /// `self` silently drops. Empty when `self` carries at least the same obligations.
    pub fn missing_from(&self, base: &Licence) -> Vec<String> {
        if self.id == base.id {
            return Vec::new();
        }
        let (d, b) = (&self.obligations, &base.obligations);
        let mut out = Vec::new();
        if b.commercial.status.rank() > d.commercial.status.rank()
            || (base.forbids_commercial() && !self.forbids_commercial())
        {
            out.push(format!(
                "commercial use is {} under `{}`",
                b.commercial.status.as_str(),
                base.id
            ));
        }
        if let Some(limit) = b.commercial.mau_limit {
            if d.commercial.mau_limit.is_none_or(|l| l > limit) {
                out.push(format!(
                    "a {} monthly-active-user limit",
                    group_digits(limit)
                ));
            }
        }
        if let Some(n) = &b.naming {
            if d.naming.as_ref().is_none_or(|dn| dn.prefix != n.prefix) {
                out.push(format!("derivative names must begin with \"{}\"", n.prefix));
            }
        }
        if let Some(a) = &b.attribution {
            if let Some(display) = &a.display {
                if d.attribution.as_ref().and_then(|x| x.display.as_ref()) != Some(display) {
                    out.push(format!("\"{display}\" attribution"));
                }
            }
        }
        if let Some(u) = &b.use_restrictions {
            if d.use_restrictions.is_none() {
                out.push(format!("the {}", u.policy));
            }
        }
        let out_rank = |o: &Option<Outputs>| o.as_ref().map_or(0, |o| o.status.rank());
        if out_rank(&b.outputs) > out_rank(&d.outputs) {
            out.push("limits on using outputs to train other models".into());
        }
        if let Some(r) = &b.regions {
            if d.regions.is_none() {
                out.push(format!("a regional exclusion ({})", r.excluded.join(", ")));
            }
        }
        if b.redistribution.pass_restrictions && !d.redistribution.pass_restrictions {
            out.push("passing the use restrictions on to recipients".into());
        }
        if b.redistribution.include_notice && !d.redistribution.include_notice {
            out.push("a \"Notice\" file with every copy".into());
        }
        out
    }
}

/// 700000000 -> "700,000,000".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What kind of text a fingerprint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextKind {
    Licence,
    UsePolicy,
}

struct Print {
    licence: usize,
    file: String,
    kind: TextKind,
    markers: Vec<String>,
    print: Fingerprint,
}

/// How well a file matches one catalogue text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextMatch {
    pub licence: String,
    /// The catalogue text, relative to `policies/licenses/`.
    pub text: String,
    pub kind: TextKind,
    /// Share of the catalogue text found in the file, 0..=1.
    pub score: f64,
    /// Whether the entry's marker phrases are all in the file.
    pub markers: bool,
}

/// A score at or above this, with the markers present, identifies the licence.
pub const MATCH_THRESHOLD: f64 = 0.80;
/// Below this, a matched text is reported as edited.
pub const EXACT_THRESHOLD: f64 = 0.995;

/// The licence catalogue.
pub struct Catalogue {
    pub licences: Vec<Licence>,
    prints: Vec<Print>,
}

impl Catalogue {
    /// The catalogue compiled into modelgate.
    pub fn builtin() -> Result<Catalogue, PolicyError> {
        let mut licences = Vec::with_capacity(LICENCE_FILES.len());
        for (file, yaml) in LICENCE_FILES {
            let l: Licence = serde_yaml::from_str(yaml).map_err(|e| PolicyError::Catalogue {
                file: PathBuf::from("policies/licenses").join(file),
                message: e.to_string(),
            })?;
            licences.push(l);
        }
        Catalogue::from_parts(licences, |path| {
            TEXT_FILES
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, t)| (*t).to_owned())
        })
    }

    /// Build from parsed entries and a way to read their texts.
    pub fn from_parts(
        licences: Vec<Licence>,
        read: impl Fn(&str) -> Option<String>,
    ) -> Result<Catalogue, PolicyError> {
        let mut prints = Vec::new();
        for (i, l) in licences.iter().enumerate() {
            let mut add = |file: &str, kind: TextKind, markers: Vec<String>| {
                let text = read(file).ok_or_else(|| PolicyError::Catalogue {
                    file: PathBuf::from("policies/licenses").join(format!("{}.yaml", l.id)),
                    message: format!("names text `{file}`, which is not in the catalogue"),
                })?;
                prints.push(Print {
                    licence: i,
                    file: file.to_owned(),
                    kind,
                    markers,
                    print: Fingerprint::of(&text),
                });
                Ok::<(), PolicyError>(())
            };
            if let Some(t) = &l.text {
                for f in &t.files {
                    add(f, TextKind::Licence, t.markers.clone())?;
                }
            }
            if let Some(text) = l
                .obligations
                .use_restrictions
                .as_ref()
                .and_then(|u| u.text.as_ref())
            {
                add(text, TextKind::UsePolicy, Vec::new())?;
            }
        }
        Ok(Catalogue { licences, prints })
    }

    pub fn get(&self, id: &str) -> Option<&Licence> {
        self.licences.iter().find(|l| l.id == id)
    }

    /// Find a licence by any name a card, GGUF key or link might use: id, SPDX id, name,
    /// alias or URL, ignoring case, spaces, hyphens and underscores.
    pub fn resolve(&self, name: &str) -> Option<&Licence> {
        let key = squash(name);
        if key.is_empty() {
            return None;
        }
        if let Some(l) = self.licences.iter().find(|l| {
            squash(&l.id) == key
                || l.spdx.as_deref().is_some_and(|s| squash(s) == key)
                || squash(&l.name) == key
                || l.aliases.iter().any(|a| squash(a) == key)
        }) {
            return Some(l);
        }
        let lower = name.trim().trim_end_matches('/').to_lowercase();
        if lower.starts_with("http") {
            return self.licences.iter().find(|l| {
                l.url
                    .as_deref()
                    .is_some_and(|u| u.trim_end_matches('/').to_lowercase() == lower)
            });
        }
        None
    }

    /// Compare a file's text with every catalogue text; best first.
    pub fn match_text(&self, text: &str) -> Vec<TextMatch> {
        let file = Fingerprint::of(text);
        let mut out: Vec<TextMatch> = self
            .prints
            .iter()
            .map(|p| TextMatch {
                licence: self.licences[p.licence].id.clone(),
                text: p.file.clone(),
                kind: p.kind,
                score: p.print.contained_in(&file),
                markers: p.markers.iter().all(|m| file.has_phrase(m)),
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.licence.cmp(&b.licence))
        });
        out
    }

    /// The best identifying match for a file, if any reaches the threshold.
    pub fn identify_text(&self, text: &str) -> (Option<TextMatch>, Option<TextMatch>) {
        let all = self.match_text(text);
        let hit = all
            .iter()
            .find(|m| m.score >= MATCH_THRESHOLD && m.markers)
            .cloned();
        let nearest = all.into_iter().next();
        (hit, nearest)
    }
}

/// Lower-case letters, digits and dots only: "Llama 3.1" and "llama-3.1" meet.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric() || *c == '.' || *c == '+')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Used by tests and the catalogue check: is a phrase in a text.
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    format!(" {} ", normalised(text)).contains(&format!(" {} ", normalised(phrase)))
}

const LICENCE_FILES: &[(&str, &str)] = &[
    (
        "apache-2.0.yaml",
        include_str!("../../policies/licenses/apache-2.0.yaml"),
    ),
    (
        "bigcode-openrail-m.yaml",
        include_str!("../../policies/licenses/bigcode-openrail-m.yaml"),
    ),
    (
        "bigscience-openrail-m.yaml",
        include_str!("../../policies/licenses/bigscience-openrail-m.yaml"),
    ),
    (
        "bsd-3-clause.yaml",
        include_str!("../../policies/licenses/bsd-3-clause.yaml"),
    ),
    (
        "cc-by-4.0.yaml",
        include_str!("../../policies/licenses/cc-by-4.0.yaml"),
    ),
    (
        "cc-by-nc-4.0.yaml",
        include_str!("../../policies/licenses/cc-by-nc-4.0.yaml"),
    ),
    (
        "cc-by-nc-sa-4.0.yaml",
        include_str!("../../policies/licenses/cc-by-nc-sa-4.0.yaml"),
    ),
    (
        "cc-by-sa-4.0.yaml",
        include_str!("../../policies/licenses/cc-by-sa-4.0.yaml"),
    ),
    (
        "creativeml-openrail-m.yaml",
        include_str!("../../policies/licenses/creativeml-openrail-m.yaml"),
    ),
    (
        "deepseek.yaml",
        include_str!("../../policies/licenses/deepseek.yaml"),
    ),
    (
        "fair-noncommercial-research-license.yaml",
        include_str!("../../policies/licenses/fair-noncommercial-research-license.yaml"),
    ),
    (
        "falcon-180b.yaml",
        include_str!("../../policies/licenses/falcon-180b.yaml"),
    ),
    (
        "gemma.yaml",
        include_str!("../../policies/licenses/gemma.yaml"),
    ),
    (
        "gpt-oss.yaml",
        include_str!("../../policies/licenses/gpt-oss.yaml"),
    ),
    (
        "llama2.yaml",
        include_str!("../../policies/licenses/llama2.yaml"),
    ),
    (
        "llama3.1.yaml",
        include_str!("../../policies/licenses/llama3.1.yaml"),
    ),
    (
        "llama3.2.yaml",
        include_str!("../../policies/licenses/llama3.2.yaml"),
    ),
    (
        "llama3.3.yaml",
        include_str!("../../policies/licenses/llama3.3.yaml"),
    ),
    (
        "llama3.yaml",
        include_str!("../../policies/licenses/llama3.yaml"),
    ),
    (
        "llama4.yaml",
        include_str!("../../policies/licenses/llama4.yaml"),
    ),
    ("mit.yaml", include_str!("../../policies/licenses/mit.yaml")),
    (
        "mnpl.yaml",
        include_str!("../../policies/licenses/mnpl.yaml"),
    ),
    ("mrl.yaml", include_str!("../../policies/licenses/mrl.yaml")),
    (
        "openrail++.yaml",
        include_str!("../../policies/licenses/openrail++.yaml"),
    ),
    (
        "openrail.yaml",
        include_str!("../../policies/licenses/openrail.yaml"),
    ),
    (
        "other.yaml",
        include_str!("../../policies/licenses/other.yaml"),
    ),
    (
        "qwen-research.yaml",
        include_str!("../../policies/licenses/qwen-research.yaml"),
    ),
    (
        "qwen.yaml",
        include_str!("../../policies/licenses/qwen.yaml"),
    ),
    (
        "tongyi-qianwen.yaml",
        include_str!("../../policies/licenses/tongyi-qianwen.yaml"),
    ),
    (
        "unknown.yaml",
        include_str!("../../policies/licenses/unknown.yaml"),
    ),
];

const TEXT_FILES: &[(&str, &str)] = &[
    (
        "texts/apache-2.0.txt",
        include_str!("../../policies/licenses/texts/apache-2.0.txt"),
    ),
    (
        "texts/bigcode-openrail-m.txt",
        include_str!("../../policies/licenses/texts/bigcode-openrail-m.txt"),
    ),
    (
        "texts/bigscience-openrail-m.txt",
        include_str!("../../policies/licenses/texts/bigscience-openrail-m.txt"),
    ),
    (
        "texts/bsd-3-clause.txt",
        include_str!("../../policies/licenses/texts/bsd-3-clause.txt"),
    ),
    (
        "texts/cc-by-4.0.txt",
        include_str!("../../policies/licenses/texts/cc-by-4.0.txt"),
    ),
    (
        "texts/cc-by-nc-4.0.txt",
        include_str!("../../policies/licenses/texts/cc-by-nc-4.0.txt"),
    ),
    (
        "texts/cc-by-nc-sa-4.0.txt",
        include_str!("../../policies/licenses/texts/cc-by-nc-sa-4.0.txt"),
    ),
    (
        "texts/cc-by-sa-4.0.txt",
        include_str!("../../policies/licenses/texts/cc-by-sa-4.0.txt"),
    ),
    (
        "texts/creativeml-openrail-m.txt",
        include_str!("../../policies/licenses/texts/creativeml-openrail-m.txt"),
    ),
    (
        "texts/deepseek.txt",
        include_str!("../../policies/licenses/texts/deepseek.txt"),
    ),
    (
        "texts/gemma-prohibited-use-policy.txt",
        include_str!("../../policies/licenses/texts/gemma-prohibited-use-policy.txt"),
    ),
    (
        "texts/gemma.txt",
        include_str!("../../policies/licenses/texts/gemma.txt"),
    ),
    (
        "texts/llama2.txt",
        include_str!("../../policies/licenses/texts/llama2.txt"),
    ),
    (
        "texts/llama3.1-use-policy.md",
        include_str!("../../policies/licenses/texts/llama3.1-use-policy.md"),
    ),
    (
        "texts/llama3.1.txt",
        include_str!("../../policies/licenses/texts/llama3.1.txt"),
    ),
    (
        "texts/llama3.2.txt",
        include_str!("../../policies/licenses/texts/llama3.2.txt"),
    ),
    (
        "texts/llama3.3.txt",
        include_str!("../../policies/licenses/texts/llama3.3.txt"),
    ),
    (
        "texts/llama3.txt",
        include_str!("../../policies/licenses/texts/llama3.txt"),
    ),
    (
        "texts/llama4-use-policy.txt",
        include_str!("../../policies/licenses/texts/llama4-use-policy.txt"),
    ),
    (
        "texts/llama4.txt",
        include_str!("../../policies/licenses/texts/llama4.txt"),
    ),
    (
        "texts/mit.txt",
        include_str!("../../policies/licenses/texts/mit.txt"),
    ),
    (
        "texts/qwen.txt",
        include_str!("../../policies/licenses/texts/qwen.txt"),
    ),
    (
        "texts/tongyi-qianwen.txt",
        include_str!("../../policies/licenses/texts/tongyi-qianwen.txt"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalogue {
        Catalogue::builtin().unwrap()
    }

    #[test]
    fn every_file_in_the_folder_is_embedded_and_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/licenses");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = LICENCE_FILES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, embedded);
        let c = cat();
        for l in &c.licences {
            let file = format!("{}.yaml", l.id);
            assert!(
                embedded.contains(&file),
                "`{file}` must be named after its id"
            );
        }
    }

    #[test]
    fn covers_every_licence_the_issue_lists() {
        let c = cat();
        for id in [
            "apache-2.0",
            "mit",
            "bsd-3-clause",
            "cc-by-4.0",
            "cc-by-sa-4.0",
            "cc-by-nc-4.0",
            "cc-by-nc-sa-4.0",
            "llama2",
            "llama3",
            "llama3.1",
            "llama3.2",
            "llama3.3",
            "llama4",
            "gemma",
            "deepseek",
            "qwen",
            "qwen-research",
            "falcon-180b",
            "mrl",
            "mnpl",
            "openrail",
            "openrail++",
            "bigscience-openrail-m",
            "creativeml-openrail-m",
            "bigcode-openrail-m",
            "fair-noncommercial-research-license",
            "other",
            "unknown",
        ] {
            let l = c.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert!(!l.obligations.commercial.clause.is_empty());
        }
    }

    #[test]
    fn each_text_identifies_its_own_licence_with_a_full_score() {
        let c = cat();
        for (path, text) in TEXT_FILES {
            let owners: Vec<&Licence> = c
                .licences
                .iter()
                .filter(|l| {
                    l.text
                        .as_ref()
                        .is_some_and(|t| t.files.iter().any(|f| f == path))
                })
                .collect();
            for l in owners {
                let (hit, _) = c.identify_text(text);
                let hit = hit.unwrap_or_else(|| panic!("{path} matched nothing"));
                assert_eq!(hit.licence, l.id, "{path}");
                assert!(hit.score > 0.999, "{path}: {}", hit.score);
                for m in &l.text.as_ref().unwrap().markers {
                    assert!(contains_phrase(text, m), "{path} lacks its marker {m}");
                }
            }
        }
    }

    #[test]
    fn close_llama_versions_are_told_apart() {
        let c = cat();
        let t31 = TEXT_FILES
            .iter()
            .find(|(p, _)| *p == "texts/llama3.1.txt")
            .unwrap()
            .1;
        let all = c.match_text(t31);
        let s32 = all.iter().find(|m| m.licence == "llama3.2").unwrap();
        assert!(s32.score > 0.8, "3.2 text is close to 3.1: {}", s32.score);
        assert!(!s32.markers);
        assert_eq!(c.identify_text(t31).0.unwrap().licence, "llama3.1");
    }

    #[test]
    fn resolves_card_names_aliases_and_spdx() {
        let c = cat();
        assert_eq!(c.resolve("Apache-2.0").unwrap().id, "apache-2.0");
        assert_eq!(c.resolve("apache 2.0").unwrap().id, "apache-2.0");
        assert_eq!(c.resolve("llama3_1").unwrap().id, "llama3.1");
        assert_eq!(c.resolve("Llama 3.1").unwrap().id, "llama3.1");
        assert_eq!(c.resolve("deepseek").unwrap().id, "deepseek");
        assert_eq!(c.resolve("CC-BY-NC-4.0").unwrap().id, "cc-by-nc-4.0");
        assert_eq!(c.resolve("openrail++").unwrap().id, "openrail++");
        assert_ne!(c.resolve("openrail").unwrap().id, "openrail++");
        assert!(c.resolve("my-own-licence").is_none());
        assert!(c.resolve("").is_none());
    }

    #[test]
    fn mit_derivative_of_llama_drops_llama_duties() {
        let c = cat();
        let lost = c
            .get("mit")
            .unwrap()
            .missing_from(c.get("llama3.1").unwrap());
        let all = lost.join("; ");
        assert!(all.contains("\"Llama\""), "{all}");
        assert!(all.contains("700,000,000"), "{all}");
        assert!(all.contains("Acceptable Use Policy"), "{all}");
        assert!(c
            .get("llama3.1")
            .unwrap()
            .missing_from(c.get("llama3.1").unwrap())
            .is_empty());
        // apache-2.0 derivative of apache-2.0 base: nothing lost; of mit base: nothing lost
        assert!(c
            .get("apache-2.0")
            .unwrap()
            .missing_from(c.get("mit").unwrap())
            .is_empty());
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(700_000_000), "700,000,000");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
    }
}
