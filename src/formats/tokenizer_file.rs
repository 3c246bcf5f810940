//! The parts of a tokenizer the scanner judges: regex and string patterns of `Split` and
//! `Replace` steps anywhere in `tokenizer.json`, the normalizer's `Replace` steps, added
//! tokens (also GGUF control and user-defined tokens), ids that two strings share, and the
//! id → text map compared with a SentencePiece tokenizer.model.
//!
//! `tokenizer.json` is read with a size cap and parsed by serde_json (nesting capped at
//! 128 levels); the walk over it is bounded by the same depth, and every list this returns
//! is capped so a hostile file cannot make the report itself unbounded.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::hf::MAX_TOKENIZER_JSON_LEN;
use super::{read_text_capped, FormatError, MetaValue};

/// Patterns and collisions kept per file; the rest are counted.
const MAX_LISTED: usize = 64;
/// Depth of the JSON walk for `Split`/`Replace` steps (serde_json stops at 128 anyway).
const MAX_WALK_DEPTH: usize = 64;

/// A `Split` or `Replace` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternStep {
    /// Where it is, as a JSON path (`pre_tokenizer.pretokenizers[0]`).
    pub at: String,
    /// `Split` or `Replace`.
    pub kind: String,
    /// The pattern is a regex (`{"Regex": ...}`), not a literal (`{"String": ...}`).
    pub regex: bool,
    pub pattern: String,
    /// What `Replace` puts in its place.
    pub content: Option<String>,
    /// The step is part of the normalizer.
    pub in_normalizer: bool,
}

/// An added (or GGUF control / user-defined) token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedToken {
    pub id: u64,
    pub content: String,
    pub special: bool,
}

/// Two strings with one id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdCollision {
    pub id: u64,
    pub first: String,
    pub second: String,
    /// Where the second string is: `model.vocab` or `added_tokens`.
    pub second_in: &'static str,
}

/// What the scanner reads from a tokenizer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerParts {
    pub steps: Vec<PatternStep>,
    pub added: Vec<AddedToken>,
    pub collisions: Vec<IdCollision>,
    /// Collisions beyond those listed.
    pub more_collisions: usize,
}

/// Read `tokenizer.json`.
pub fn read(path: &Path) -> Result<TokenizerParts, FormatError> {
    let text = read_text_capped(path, MAX_TOKENIZER_JSON_LEN)?;
    parse(path, &text)
}

/// [`read`] on text already in memory.
pub fn parse(path: &Path, text: &str) -> Result<TokenizerParts, FormatError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| FormatError::malformed(path, format!("not valid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(FormatError::malformed(path, "expected a JSON object"));
    };
    let mut parts = TokenizerParts::default();
    for (k, sub) in obj {
        walk_steps(sub, k.clone(), k == "normalizer", 0, &mut parts.steps);
    }
    if let Some(Value::Array(items)) = obj.get("added_tokens") {
        for it in items {
            let (Some(id), Some(content)) = (
                it.get("id").and_then(Value::as_u64),
                it.get("content").and_then(Value::as_str),
            ) else {
                continue;
            };
            parts.added.push(AddedToken {
                id,
                content: content.to_owned(),
                special: it.get("special").and_then(Value::as_bool).unwrap_or(false),
            });
        }
    }
    let added = std::mem::take(&mut parts.added);
    collisions(obj, &added, &mut parts);
    parts.added = added;
    Ok(parts)
}

fn walk_steps(
    v: &Value,
    at: String,
    in_normalizer: bool,
    depth: usize,
    out: &mut Vec<PatternStep>,
) {
    if depth > MAX_WALK_DEPTH || out.len() >= MAX_LISTED {
        return;
    }
    match v {
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str);
            if let (Some(kind @ ("Split" | "Replace")), Some(p)) = (kind, o.get("pattern")) {
                let (regex, pattern) = match (
                    p.get("Regex").and_then(Value::as_str),
                    p.get("String").and_then(Value::as_str),
                ) {
                    (Some(r), _) => (true, Some(r)),
                    (None, Some(s)) => (false, Some(s)),
                    _ => (false, None),
                };
                if let Some(pattern) = pattern {
                    out.push(PatternStep {
                        at: at.clone(),
                        kind: kind.to_owned(),
                        regex,
                        pattern: pattern.to_owned(),
                        content: o.get("content").and_then(Value::as_str).map(str::to_owned),
                        in_normalizer,
                    });
                }
            }
            for (k, sub) in o {
                if k != "pattern" && (sub.is_object() || sub.is_array()) {
                    walk_steps(sub, format!("{at}.{k}"), in_normalizer, depth + 1, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, sub) in items.iter().enumerate() {
                if sub.is_object() || sub.is_array() {
                    walk_steps(sub, format!("{at}[{i}]"), in_normalizer, depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// Ids given to two different strings, by `model.vocab` (a map, for BPE, WordPiece and
/// WordLevel; Unigram's list gives each string its index) and `added_tokens`.
fn collisions(
    obj: &serde_json::Map<String, Value>,
    added: &[AddedToken],
    parts: &mut TokenizerParts,
) {
    let mut entries: Vec<(u64, &str, &'static str)> = Vec::new();
    match obj.get("model").and_then(|m| m.get("vocab")) {
        Some(Value::Object(m)) => {
            for (s, id) in m {
                if let Some(id) = id.as_u64() {
                    entries.push((id, s, "model.vocab"));
                }
            }
        }
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                if let Some(s) = it.get(0).and_then(Value::as_str) {
                    entries.push((i as u64, s, "model.vocab"));
                }
            }
        }
        _ => {}
    }
    entries.extend(
        added
            .iter()
            .map(|t| (t.id, t.content.as_str(), "added_tokens")),
    );
    let mut by_id: HashMap<u64, &str> = HashMap::with_capacity(entries.len());
    for (id, s, second_in) in entries {
        match by_id.get(&id) {
            Some(first) if *first != s => {
                if parts.collisions.len() < MAX_LISTED {
                    parts.collisions.push(IdCollision {
                        id,
                        first: (*first).to_owned(),
                        second: s.to_owned(),
                        second_in,
                    });
                } else {
                    parts.more_collisions += 1;
                }
            }
            Some(_) => {}
            None => {
                by_id.insert(id, s);
            }
        }
    }
}

/// The id → text map of a tokenizer.json (`model.vocab`, then `added_tokens`, which win),
/// for comparing it with a SentencePiece tokenizer.model beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonVocab {
    pub by_id: HashMap<u64, String>,
    /// `model.byte_fallback`, where the model says.
    pub byte_fallback: Option<bool>,
    /// `model.type` (`BPE`, `Unigram`, ...).
    pub kind: Option<String>,
}

/// Read tokenizer.json's vocabulary.
pub fn vocabulary(path: &Path) -> Result<JsonVocab, FormatError> {
    let text = read_text_capped(path, MAX_TOKENIZER_JSON_LEN)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| FormatError::malformed(path, format!("not valid JSON: {e}")))?;
    let mut out = JsonVocab::default();
    let model = v.get("model");
    out.byte_fallback = model
        .and_then(|m| m.get("byte_fallback"))
        .and_then(Value::as_bool);
    out.kind = model
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    match model.and_then(|m| m.get("vocab")) {
        Some(Value::Object(m)) => {
            for (s, id) in m {
                if let Some(id) = id.as_u64() {
                    out.by_id.entry(id).or_insert_with(|| s.clone());
                }
            }
        }
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                if let Some(s) = it.get(0).and_then(Value::as_str) {
                    out.by_id.insert(i as u64, s.to_owned());
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Array(items)) = v.get("added_tokens") {
        for it in items {
            if let (Some(id), Some(content)) = (
                it.get("id").and_then(Value::as_u64),
                it.get("content").and_then(Value::as_str),
            ) {
                out.by_id.insert(id, content.to_owned());
            }
        }
    }
    Ok(out)
}

/// GGUF control (type 3) and user-defined (type 4) tokens: the GGUF form of added tokens.
pub fn added_from_gguf(metadata: &[(String, MetaValue)]) -> Vec<AddedToken> {
    let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let (Some(tokens), Some(types)) = (
        get("tokenizer.ggml.tokens").and_then(MetaValue::as_array),
        get("tokenizer.ggml.token_type").and_then(MetaValue::as_array),
    ) else {
        return Vec::new();
    };
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter_map(|(i, (t, ty))| {
            let ty = ty.as_u64()?;
            (ty == 3 || ty == 4).then(|| AddedToken {
                id: i as u64,
                content: t.as_str().unwrap_or_default().to_owned(),
                special: ty == 3,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_added_tokens_and_collisions() {
        let text = r#"{
            "added_tokens": [{"id": 0, "content": "<s>", "special": true},
                             {"id": 2, "content": "evil", "special": false}],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Replace", "pattern": {"String": "bank"}, "content": "river"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated"}]},
            "model": {"type": "BPE", "vocab": {"<s>": 0, "a": 1, "b": 1, "c": 2}}
        }"#;
        let p = parse(Path::new("tokenizer.json"), text).unwrap();
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].at, "normalizer.normalizers[0]");
        assert!(p.steps[0].in_normalizer && !p.steps[0].regex);
        assert_eq!(p.steps[1].pattern, "(a+)+$");
        assert!(p.steps[1].regex && !p.steps[1].in_normalizer);
        assert_eq!(p.added.len(), 2);
        let c: Vec<(u64, &str, &str)> = p
            .collisions
            .iter()
            .map(|c| (c.id, c.first.as_str(), c.second.as_str()))
            .collect();
        assert_eq!(c, vec![(1, "a", "b"), (2, "c", "evil")]);
        assert!(parse(Path::new("t.json"), "[1]").is_err());
    }
}
