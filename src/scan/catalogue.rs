//! The catalogue of official chat templates (`policies/templates.yaml`, compiled in): for
//! each model family, the markers its templates use and the SHA-256 digests of the
//! templates its publishers released. A template whose digest is listed is official; one
//! that is not is reported against the family its markers point to ("differs from every
//! published Qwen2.5 template").

use std::sync::OnceLock;

use serde::Deserialize;
use sha2::{Digest, Sha256};

const SOURCE: &str = include_str!("../../policies/templates.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Catalogue {
    pub families: Vec<Family>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Family {
    pub family: String,
    /// Strings every template of the family contains (special tokens).
    pub markers: Vec<String>,
    pub templates: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    pub name: String,
    /// SHA-256 of the template text with leading and trailing whitespace removed.
    pub sha256: String,
    /// Where the publisher released it (for readers of the catalogue; not reported).
    #[allow(dead_code)]
    pub source: String,
}

/// How a template compares with the catalogue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Match<'a> {
    Official(&'a str),
    /// Not listed; the family its markers point to, with the templates it has.
    Differs {
        family: &'a str,
        names: Vec<&'a str>,
    },
    Unknown,
}

/// The catalogue, parsed once. A catalogue that does not parse is a build defect caught
/// by the unit test below; at run time it degrades to an empty catalogue.
pub(super) fn catalogue() -> &'static Catalogue {
    static CAT: OnceLock<Catalogue> = OnceLock::new();
    CAT.get_or_init(|| {
        serde_yaml::from_str(SOURCE).unwrap_or(Catalogue {
            families: Vec::new(),
        })
    })
}

/// The digest the catalogue lists for a template.
pub(super) fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.trim().as_bytes()))
}

pub(super) fn lookup(text: &str) -> Match<'static> {
    let d = digest(text);
    let cat = catalogue();
    for f in &cat.families {
        if let Some(e) = f.templates.iter().find(|e| e.sha256 == d) {
            return Match::Official(&e.name);
        }
    }
    for f in &cat.families {
        if !f.markers.is_empty() && f.markers.iter().all(|m| text.contains(m.as_str())) {
            return Match::Differs {
                family: &f.family,
                names: f.templates.iter().map(|e| e.name.as_str()).collect(),
            };
        }
    }
    Match::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_parses_and_digests_are_well_formed() {
        let cat: Catalogue = serde_yaml::from_str(SOURCE).unwrap();
        assert!(cat.families.len() >= 4);
        for f in &cat.families {
            for e in &f.templates {
                assert_eq!(e.sha256.len(), 64, "{}", e.name);
                assert!(e
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
    }

    #[test]
    fn family_is_found_by_markers() {
        match lookup("<|im_start|>{{ x }}<|im_end|>") {
            Match::Differs { family, .. } => assert_eq!(family, "ChatML"),
            other => panic!("{other:?}"),
        }
        assert_eq!(lookup("{{ x }}"), Match::Unknown);
    }
}
