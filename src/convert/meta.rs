//! GGUF metadata the converter writes: the `general.*` keys taken from config.json and the
//! model card (name, licence, base models, source, languages, tags), the bookkeeping keys of
//! a quantized file (file type, quantization version, quantized by), and the canonical key
//! order that keeps the output byte-for-byte deterministic.

use serde_json::{Map, Value};

use crate::formats::gguf::ValueType;
use crate::formats::MetaValue;

pub fn arr_str(items: Vec<String>) -> MetaValue {
    MetaValue::Array {
        elem: ValueType::String,
        items: items.into_iter().map(MetaValue::String).collect(),
    }
}

pub fn arr_i32(items: Vec<i32>) -> MetaValue {
    MetaValue::Array {
        elem: ValueType::I32,
        items: items.into_iter().map(MetaValue::I32).collect(),
    }
}

pub fn arr_f32(items: Vec<f32>) -> MetaValue {
    MetaValue::Array {
        elem: ValueType::F32,
        items: items.into_iter().map(MetaValue::F32).collect(),
    }
}

/// Where the `general.*` keys come from.
#[derive(Default)]
pub struct GeneralSources<'a> {
    /// The model card's YAML front matter.
    pub card: Option<&'a Map<String, Value>>,
    pub config: Option<&'a Value>,
    /// The model directory's (or file's) name, the last resort for `general.name`.
    pub dir_name: Option<String>,
    /// `--name`
    pub name: Option<String>,
    /// `--source-url`
    pub source_url: Option<String>,
}

fn card_str(card: Option<&Map<String, Value>>, key: &str) -> Option<String> {
    card?.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn card_list(card: Option<&Map<String, Value>>, key: &str) -> Vec<String> {
    match card.and_then(|c| c.get(key)) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `general.*` keys from the card and config, in the meanings llama.cpp's converter gives
/// them. Names are kept as their sources spell them (llama.cpp title-cases them).
pub fn general_keys(s: &GeneralSources<'_>) -> Vec<(String, MetaValue)> {
    let mut out = vec![("general.type".to_owned(), MetaValue::String("model".into()))];
    let from_config = s
        .config
        .and_then(|c| c.get("_name_or_path"))
        .and_then(Value::as_str)
        // A hub id (`org/name`), not a local path.
        .filter(|p| p.matches('/').count() <= 1 && !p.starts_with('.') && !p.is_empty())
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned());
    let name = s
        .name
        .clone()
        .or_else(|| card_str(s.card, "model_name"))
        .or_else(|| card_str(s.card, "name"))
        .or(from_config)
        .or_else(|| s.dir_name.clone());
    if let Some(n) = name {
        out.push(("general.name".into(), MetaValue::String(n)));
    }
    let license = match s.card.and_then(|c| c.get("license")) {
        Some(Value::String(l)) => Some(l.clone()),
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    };
    if let Some(l) = license {
        out.push(("general.license".into(), MetaValue::String(l)));
    }
    if let Some(l) = card_str(s.card, "license_name") {
        out.push(("general.license.name".into(), MetaValue::String(l)));
    }
    if let Some(l) = card_str(s.card, "license_link") {
        out.push(("general.license.link".into(), MetaValue::String(l)));
    }
    let source = s
        .source_url
        .clone()
        .or_else(|| card_str(s.card, "model_url"))
        .or_else(|| card_str(s.card, "url"));
    if let Some(u) = source {
        out.push(("general.source.url".into(), MetaValue::String(u)));
    }
    let base: Vec<Value> = match s
        .card
        .and_then(|c| c.get("base_model").or_else(|| c.get("base_models")))
    {
        Some(Value::Array(a)) => a.clone(),
        Some(v @ (Value::String(_) | Value::Object(_))) => vec![v.clone()],
        _ => Vec::new(),
    };
    let mut n_base = 0u32;
    for b in &base {
        let mut entry: Vec<(&str, String)> = Vec::new();
        match b {
            Value::String(id) if id.starts_with("http://") || id.starts_with("https://") => {
                let last = id.trim_end_matches('/').rsplit('/').next().unwrap_or(id);
                entry.push(("name", last.to_owned()));
                entry.push(("repo_url", id.clone()));
            }
            Value::String(id) => match id.split_once('/') {
                Some((org, name)) => {
                    entry.push(("name", name.to_owned()));
                    entry.push(("organization", org.to_owned()));
                    entry.push(("repo_url", format!("https://huggingface.co/{id}")));
                }
                None => entry.push(("name", id.clone())),
            },
            Value::Object(o) => {
                for k in ["name", "organization", "version", "url", "repo_url"] {
                    if let Some(v) = o.get(k).and_then(Value::as_str) {
                        entry.push((k, v.to_owned()));
                    }
                }
            }
            _ => continue,
        }
        if entry.is_empty() {
            continue;
        }
        for (k, v) in entry {
            out.push((
                format!("general.base_model.{n_base}.{k}"),
                MetaValue::String(v),
            ));
        }
        n_base += 1;
    }
    if n_base > 0 {
        out.push(("general.base_model.count".into(), MetaValue::U32(n_base)));
    }
    let languages = card_list(s.card, "language");
    if !languages.is_empty() {
        out.push(("general.languages".into(), arr_str(languages)));
    }
    let mut tags = card_list(s.card, "tags");
    tags.extend(card_list(s.card, "pipeline_tag"));
    if !tags.is_empty() {
        out.push(("general.tags".into(), arr_str(tags)));
    }
    out
}

/// One value per key (the last given wins) in a fixed order: `general.architecture` first
/// (where readers look for it), then every other key sorted by name.
pub fn canonical(keys: Vec<(String, MetaValue)>) -> Vec<(String, MetaValue)> {
    let mut map: std::collections::BTreeMap<String, MetaValue> = std::collections::BTreeMap::new();
    for (k, v) in keys {
        map.insert(k, v);
    }
    let arch = map.remove_entry("general.architecture");
    arch.into_iter().chain(map).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn card_and_config_become_general_keys() {
        let card = json!({"license": "apache-2.0", "license_name": "x", "license_link": "LICENSE",
            "base_model": ["HuggingFaceTB/SmolLM2-135M", "https://example.com/m/base"],
            "language": "en", "tags": ["llama"], "pipeline_tag": "text-generation"});
        let cfg = json!({"_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"});
        let keys = general_keys(&GeneralSources {
            card: card.as_object(),
            config: Some(&cfg),
            dir_name: Some("dir".into()),
            ..Default::default()
        });
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("general.name"),
            Some(MetaValue::String("SmolLM2-135M-Instruct".into()))
        );
        assert_eq!(
            get("general.license"),
            Some(MetaValue::String("apache-2.0".into()))
        );
        assert_eq!(
            get("general.license.link"),
            Some(MetaValue::String("LICENSE".into()))
        );
        assert_eq!(get("general.base_model.count"), Some(MetaValue::U32(2)));
        assert_eq!(
            get("general.base_model.0.organization"),
            Some(MetaValue::String("HuggingFaceTB".into()))
        );
        assert_eq!(
            get("general.base_model.0.repo_url"),
            Some(MetaValue::String(
                "https://huggingface.co/HuggingFaceTB/SmolLM2-135M".into()
            ))
        );
        assert_eq!(
            get("general.base_model.1.name"),
            Some(MetaValue::String("base".into()))
        );
        assert_eq!(
            get("general.tags"),
            Some(arr_str(vec!["llama".into(), "text-generation".into()]))
        );
        let local = json!({"_name_or_path": "/home/me/models/x"});
        let keys = general_keys(&GeneralSources {
            config: Some(&local),
            dir_name: Some("dir".into()),
            ..Default::default()
        });
        assert!(keys.contains(&("general.name".into(), MetaValue::String("dir".into()))));
    }

    #[test]
    fn canonical_order_is_fixed() {
        let keys = vec![
            ("tokenizer.ggml.model".to_owned(), MetaValue::U32(1)),
            ("general.name".to_owned(), MetaValue::U32(2)),
            ("general.architecture".to_owned(), MetaValue::U32(3)),
            ("general.name".to_owned(), MetaValue::U32(4)),
        ];
        let c = canonical(keys);
        let names: Vec<&str> = c.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "general.architecture",
                "general.name",
                "tokenizer.ggml.model"
            ]
        );
        assert_eq!(c[1].1, MetaValue::U32(4));
    }
}
