//! Known base-model families (`policies/families.yaml`, schema
//! `schemas/families.schema.json`): architecture fingerprints that let modelgate say "this
//! looks like a Llama 3 derivative" when nothing is declared, and the licences of known
//! releases, so a declared `base_model` resolves to the licence its derivative inherits.

use serde::{Deserialize, Serialize};

use super::PolicyError;
use crate::formats::ModelParams;

const FAMILIES_YAML: &str = include_str!("../../policies/families.yaml");

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamiliesFile {
    pub families: Vec<Family>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub id: String,
    pub name: String,
    /// Organisations that publish the family's own releases (Hugging Face org or GGUF
    /// `general.organization`): their checkpoints are originals, not derivatives.
    pub publishers: Vec<String>,
    /// Every licence the family's releases use.
    pub licences: Vec<String>,
    /// The licence applied to an undeclared derivative whose release cannot be told.
    pub assumed_licence: String,
    pub fingerprint: ArchFingerprint,
    #[serde(default)]
    pub models: Vec<KnownModel>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchFingerprint {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: Vec<u64>,
    #[serde(default)]
    pub rope_theta: Vec<f64>,
    #[serde(default)]
    pub embedding_length: Vec<u64>,
    #[serde(default)]
    pub feed_forward_length: Vec<u64>,
    /// Routed-expert counts of the family's mixtures of experts; empty for a dense family,
    /// which a checkpoint with experts never matches.
    #[serde(default)]
    pub experts: Vec<u64>,
    /// Special-token texts (bos, eos, chat markers); they add confidence only.
    #[serde(default)]
    pub tokens: Vec<String>,
}

/// A released repository of the family and its licence.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownModel {
    /// `org/name` glob (`*` any run, `?` one character), case-insensitive.
    #[serde(rename = "match")]
    pub pattern: String,
    pub licence: String,
    /// Licences the release carries from its own base.
    #[serde(default)]
    pub inherits: Vec<String>,
}

/// Architecture facts of a checkpoint, as the fingerprint compares them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ArchFacts {
    pub architecture: Option<String>,
    pub vocab_size: Option<u64>,
    pub rope_theta: Option<f64>,
    pub embedding_length: Option<u64>,
    pub feed_forward_length: Option<u64>,
    /// Routed experts per layer, for a mixture of experts.
    pub experts: Option<u64>,
    pub tokens: Vec<String>,
}

impl ArchFacts {
    pub fn from_params(p: &ModelParams, tokens: Vec<String>) -> ArchFacts {
        ArchFacts {
            architecture: p.architecture.clone(),
            vocab_size: p.vocab_size,
            rope_theta: p.rope_theta,
            embedding_length: p.embedding_length,
            feed_forward_length: p.feed_forward_length,
            experts: None,
            tokens,
        }
    }
}

/// A family whose fingerprint the checkpoint matches, with the facts that matched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FamilyMatch {
    pub family: String,
    pub name: String,
    /// Facts that matched, as `vocab 128256`, `rope theta 500000`.
    pub matched: Vec<String>,
}

/// A known release a name resolved to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolved {
    pub family: String,
    pub pattern: String,
    pub licence: String,
    pub inherits: Vec<String>,
}

pub struct Families {
    pub families: Vec<Family>,
}

impl Families {
    pub fn builtin() -> Result<Families, PolicyError> {
        let file: FamiliesFile =
            serde_yaml::from_str(FAMILIES_YAML).map_err(|e| PolicyError::Catalogue {
                file: "policies/families.yaml".into(),
                message: e.to_string(),
            })?;
        Ok(Families {
            families: file.families,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.id == id)
    }

    /// Families whose fingerprint the facts match: the vocabulary size and at least one
    /// more fact agree, and no stated fact disagrees. Strongest first.
    pub fn identify(&self, facts: &ArchFacts) -> Vec<FamilyMatch> {
        let mut out: Vec<FamilyMatch> = self
            .families
            .iter()
            .filter_map(|f| match_family(f, facts))
            .collect();
        out.sort_by_key(|m| std::cmp::Reverse(m.matched.len()));
        out
    }

    /// The known release an `org/name` (or a Hugging Face URL) refers to.
    pub fn resolve_model(&self, name: &str) -> Option<Resolved> {
        let repo = repo_id(name);
        for f in &self.families {
            for m in &f.models {
                if glob_match(&m.pattern, &repo) {
                    return Some(Resolved {
                        family: f.id.clone(),
                        pattern: m.pattern.clone(),
                        licence: m.licence.clone(),
                        inherits: m.inherits.clone(),
                    });
                }
            }
        }
        None
    }

    /// Whether an organisation publishes the family's own releases.
    pub fn is_publisher(&self, family: &str, org: &str) -> bool {
        let org = org.trim().to_lowercase();
        self.get(family)
            .is_some_and(|f| f.publishers.iter().any(|p| p.to_lowercase() == org))
    }
}

fn match_family(f: &Family, facts: &ArchFacts) -> Option<FamilyMatch> {
    let fp = &f.fingerprint;
    let vocab = facts.vocab_size?;
    if !fp.vocab_size.contains(&vocab) {
        return None;
    }
    let mut matched = vec![format!("vocab {vocab}")];
    if let Some(theta) = facts.rope_theta {
        if !fp.rope_theta.is_empty() {
            // GGUF stores theta as f32: compare relatively.
            if !fp
                .rope_theta
                .iter()
                .any(|t| (t - theta).abs() <= 1e-6 * t.abs().max(1.0))
            {
                return None;
            }
            matched.push(format!("rope theta {theta}"));
        }
    }
    for (name, have, want) in [
        ("hidden size", facts.embedding_length, &fp.embedding_length),
        (
            "feed-forward size",
            facts.feed_forward_length,
            &fp.feed_forward_length,
        ),
    ] {
        if let (Some(v), false) = (have, want.is_empty()) {
            if !want.contains(&v) {
                return None;
            }
            matched.push(format!("{name} {v}"));
        }
    }
    if let Some(n) = facts.experts {
        // A dense family (no `experts`) never matches a mixture of experts.
        if !fp.experts.contains(&n) {
            return None;
        }
        matched.push(format!("{n} experts"));
    }
    if let (Some(a), false) = (&facts.architecture, fp.architectures.is_empty()) {
        if !fp.architectures.iter().any(|x| x.eq_ignore_ascii_case(a)) {
            return None;
        }
        matched.push(format!("architecture {a}"));
    }
    let tokens: Vec<&String> = fp
        .tokens
        .iter()
        .filter(|t| facts.tokens.contains(t))
        .collect();
    if !tokens.is_empty() {
        matched.push(format!(
            "tokens {}",
            tokens
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    // Vocabulary size alone is too weak (many models reuse a tokenizer).
    let strong = matched.len() >= 2
        && matched
            .iter()
            .skip(1)
            .any(|m| !m.starts_with("architecture"));
    strong.then(|| FamilyMatch {
        family: f.id.clone(),
        name: f.name.clone(),
        matched,
    })
}

/// `https://huggingface.co/org/name/tree/main` -> `org/name`; `org/name` stays.
pub fn repo_id(name: &str) -> String {
    let s = name.trim();
    let s = s
        .strip_prefix("https://huggingface.co/")
        .or_else(|| s.strip_prefix("http://huggingface.co/"))
        .or_else(|| s.strip_prefix("hf://"))
        .unwrap_or(s);
    let mut parts = s.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next()) {
        (Some(org), Some(repo)) => format!("{org}/{repo}"),
        (Some(one), None) => one.to_owned(),
        _ => String::new(),
    }
}

/// Case-insensitive glob: `*` matches any run, `?` one character. Written out because a
/// dozen lines beat pulling a glob crate for `org/name` patterns.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fam() -> Families {
        Families::builtin().unwrap()
    }

    #[test]
    fn catalogue_parses_and_names_known_licences() {
        let f = fam();
        let cat = super::super::catalogue::Catalogue::builtin().unwrap();
        for id in [
            "llama2", "llama3", "mistral", "qwen2", "gemma", "smollm", "deepseek", "falcon",
            "olmo", "phi", "qwen-moe", "gpt-oss",
        ] {
            let fam = f.get(id).unwrap_or_else(|| panic!("{id}"));
            for l in fam.licences.iter().chain([&fam.assumed_licence]) {
                assert!(cat.get(l).is_some(), "{id}: unknown licence {l}");
            }
            for m in &fam.models {
                for l in m.inherits.iter().chain([&m.licence]) {
                    assert!(cat.get(l).is_some(), "{id}: unknown licence {l}");
                }
            }
        }
    }

    #[test]
    fn experts_tell_mixtures_from_dense_families() {
        let f = fam();
        // llama.cpp's Mixtral: architecture llama, vocabulary 32000, 8 experts.
        let mixtral = ArchFacts {
            architecture: Some("llama".into()),
            vocab_size: Some(32000),
            rope_theta: Some(1e6),
            feed_forward_length: Some(14336),
            experts: Some(8),
            ..Default::default()
        };
        let m = f.identify(&mixtral);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].family, "mistral");
        assert!(m[0].matched.contains(&"8 experts".to_string()));
        // The same shape without experts is still a candidate for the dense families.
        let dense = ArchFacts {
            experts: None,
            ..mixtral.clone()
        };
        assert!(f.identify(&dense).iter().any(|m| m.family == "mistral"));
        let qwen3 = ArchFacts {
            architecture: Some("qwen3moe".into()),
            vocab_size: Some(151936),
            experts: Some(128),
            ..Default::default()
        };
        assert_eq!(f.identify(&qwen3)[0].family, "qwen-moe");
        // A Qwen vocabulary with experts is never the dense Qwen2 family.
        assert!(f.identify(&qwen3).iter().all(|m| m.family != "qwen2"));
        let v3 = ArchFacts {
            architecture: Some("deepseek2".into()),
            vocab_size: Some(129280),
            experts: Some(256),
            ..Default::default()
        };
        assert_eq!(f.identify(&v3)[0].family, "deepseek");
        let oss = ArchFacts {
            architecture: Some("gpt-oss".into()),
            vocab_size: Some(201088),
            rope_theta: Some(150000.0),
            experts: Some(32),
            ..Default::default()
        };
        assert_eq!(f.identify(&oss)[0].family, "gpt-oss");
        let wrong = ArchFacts {
            experts: Some(16),
            ..oss
        };
        assert!(f.identify(&wrong).is_empty());
    }

    #[test]
    fn moe_releases_resolve_to_the_licence_that_applies() {
        let f = fam();
        let lic = |n: &str| f.resolve_model(n).map(|r| r.licence);
        assert_eq!(
            lic("mistralai/Mixtral-8x7B-Instruct-v0.1").as_deref(),
            Some("apache-2.0")
        );
        assert_eq!(lic("Qwen/Qwen3-30B-A3B").as_deref(), Some("apache-2.0"));
        assert_eq!(
            lic("Qwen/Qwen2-57B-A14B-Instruct").as_deref(),
            Some("apache-2.0")
        );
        assert_eq!(
            lic("Qwen/Qwen1.5-MoE-A2.7B").as_deref(),
            Some("tongyi-qianwen")
        );
        // DeepSeek: the V2/V3 base models under the DeepSeek License, R1 and V3-0324 MIT.
        assert_eq!(lic("deepseek-ai/DeepSeek-V3").as_deref(), Some("deepseek"));
        assert_eq!(
            lic("deepseek-ai/DeepSeek-V3-Base").as_deref(),
            Some("deepseek")
        );
        assert_eq!(
            lic("deepseek-ai/DeepSeek-V2-Lite").as_deref(),
            Some("deepseek")
        );
        assert_eq!(lic("deepseek-ai/DeepSeek-R1").as_deref(), Some("mit"));
        assert_eq!(lic("deepseek-ai/DeepSeek-V3-0324").as_deref(), Some("mit"));
        assert_eq!(lic("openai/gpt-oss-20b").as_deref(), Some("gpt-oss"));
        let cat = super::super::catalogue::Catalogue::builtin().unwrap();
        let oss = cat.get("gpt-oss").unwrap();
        let u = oss.obligations.use_restrictions.as_ref().unwrap();
        assert_eq!(u.policy, "gpt-oss usage policy");
        assert_eq!(
            oss.obligations.commercial.status,
            super::super::catalogue::Permission::Allowed
        );
        let ds = cat.get("deepseek").unwrap();
        assert!(ds.obligations.use_restrictions.is_some());
        assert!(cat
            .get("mit")
            .unwrap()
            .obligations
            .use_restrictions
            .is_none());
    }

    #[test]
    fn llama3_dimensions_identify_llama3() {
        let facts = ArchFacts {
            architecture: Some("llama".into()),
            vocab_size: Some(128256),
            rope_theta: Some(500000.0),
            ..Default::default()
        };
        let m = fam().identify(&facts);
        assert_eq!(m[0].family, "llama3");
        assert!(m[0].matched.contains(&"rope theta 500000".to_string()));
    }

    #[test]
    fn smollm2_dimensions_identify_smollm_not_starcoder_like_vocab_alone() {
        let facts = ArchFacts {
            architecture: Some("llama".into()),
            vocab_size: Some(49152),
            rope_theta: Some(100000.0),
            ..Default::default()
        };
        assert_eq!(fam().identify(&facts)[0].family, "smollm");
        // vocab alone (gpt_bigcode has 49152 too) is not enough
        let weak = ArchFacts {
            vocab_size: Some(49152),
            ..Default::default()
        };
        assert!(fam().identify(&weak).is_empty());
    }

    #[test]
    fn gemma_olmo_and_phi_dimensions_identify_their_families() {
        let cases = [
            ("gemma2", 256000, 10000.0, "gemma"),
            ("gemma3", 262144, 1000000.0, "gemma"),
            ("olmo2", 100352, 500000.0, "olmo"),
            ("phi3", 32064, 10000.0, "phi"),
            ("phi3", 100352, 250000.0, "phi"),
        ];
        for (arch, vocab, theta, want) in cases {
            let facts = ArchFacts {
                architecture: Some(arch.into()),
                vocab_size: Some(vocab),
                rope_theta: Some(theta),
                ..Default::default()
            };
            let m = fam().identify(&facts);
            assert_eq!(m.len(), 1, "{arch} {vocab}: {m:?}");
            assert_eq!(m[0].family, want, "{arch} {vocab}");
        }
        let f = fam();
        assert_eq!(
            f.resolve_model("google/gemma-3-4b-it").unwrap().licence,
            "gemma"
        );
        assert_eq!(
            f.resolve_model("allenai/OLMo-2-1124-7B").unwrap().licence,
            "apache-2.0"
        );
        assert_eq!(f.resolve_model("microsoft/phi-4").unwrap().licence, "mit");
        assert_eq!(
            f.resolve_model("microsoft/Phi-3-mini-4k-instruct")
                .unwrap()
                .licence,
            "mit"
        );
    }

    #[test]
    fn a_contradicting_fact_excludes_the_family() {
        let facts = ArchFacts {
            vocab_size: Some(128256),
            rope_theta: Some(10000.0),
            ..Default::default()
        };
        assert!(fam().identify(&facts).is_empty());
    }

    #[test]
    fn releases_resolve_to_their_licence() {
        let f = fam();
        assert_eq!(
            f.resolve_model("meta-llama/Llama-3.1-8B").unwrap().licence,
            "llama3.1"
        );
        assert_eq!(
            f.resolve_model("https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct")
                .unwrap()
                .licence,
            "llama3"
        );
        let r1 = f
            .resolve_model("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
            .unwrap();
        assert_eq!(
            (r1.licence.as_str(), r1.inherits.as_slice()),
            ("mit", &["llama3.1".to_string()][..])
        );
        assert_eq!(
            f.resolve_model("Qwen/Qwen2.5-3B-Instruct").unwrap().licence,
            "qwen-research"
        );
        assert_eq!(
            f.resolve_model("Qwen/Qwen2.5-32B-Instruct")
                .unwrap()
                .licence,
            "apache-2.0"
        );
        assert!(f.resolve_model("acme/secret-model").is_none());
        assert!(f.is_publisher("smollm", "huggingfacetb"));
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "meta-llama/Llama-3.1-*",
            "Meta-Llama/llama-3.1-8B"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("x*", "yx"));
        assert_eq!(
            repo_id("https://huggingface.co/org/name/tree/main"),
            "org/name"
        );
    }
}
