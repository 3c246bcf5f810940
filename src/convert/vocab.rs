//! Tokenizers in both directions: Hugging Face `tokenizer.json` (+ `tokenizer_config.json`)
//! → GGUF `tokenizer.ggml.*` keys, and GGUF keys → a `tokenizer.json` and
//! `tokenizer_config.json` that the `tokenizers` library loads.
//!
//! Two tokenizer families are handled, the ones llama.cpp calls `gpt2` (byte-level BPE:
//! tokens, token types, merges) and `llama` (SentencePiece BPE with byte fallback: tokens,
//! scores, token types). The pre-tokenizer name llama.cpp needs (`tokenizer.ggml.pre`) is
//! derived from the `pre_tokenizer` section of tokenizer.json, not from a hash of probe
//! tokens as llama.cpp's converter does, so a tokenizer with a known pre-tokenizer but an
//! unknown vocabulary still converts; the summary says what was chosen and why.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use super::error::ConvertError;
use super::meta::{arr_f32, arr_i32, arr_str};
use crate::formats::gguf::{Meta, MetaError};
use crate::formats::hf::HfDir;
use crate::formats::sentencepiece::{
    self, ModelType, NormalizerSpec, Piece, PieceType, SpModel, TrainerSpec,
};
use crate::formats::MetaValue;

/// llama.cpp's token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// What the tokenizer conversion produced.
#[derive(Debug)]
pub struct VocabKeys {
    pub keys: Vec<(String, MetaValue)>,
    /// `gpt2` or `llama`.
    pub model: &'static str,
    /// The `tokenizer.ggml.pre` value and why it was chosen.
    pub pre: String,
    pub pre_reason: String,
    pub n_tokens: u64,
}

/// The inputs of [`to_gguf`].
pub struct HfTokenizer<'a> {
    /// Where tokenizer.json is, for messages.
    pub path: &'a Path,
    pub json: &'a str,
    pub config: Option<&'a Value>,
    /// `bos_token_id`, `eos_token_id`, `pad_token_id` from config.json.
    pub config_ids: [Option<u64>; 3],
    /// Rows of the token embedding: the GGUF token list must have exactly this many.
    pub n_vocab: u64,
    /// `--pre-tokenizer NAME` from the command line.
    pub pre_override: Option<&'a str>,
    /// `chat_template.jinja`, used when tokenizer_config.json has no `chat_template`
    /// (transformers 4.50+ saves the template in its own file).
    pub chat_template_file: Option<&'a str>,
}

// The pre-tokenizer regexes of Llama 3 and Qwen2 as their tokenizer.json files write them
// (case-insensitive group), and as llama.cpp rewrites them (explicit case classes).
const LLAMA3_RE: &[&str] = &[
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const QWEN2_RE: &[&str] = &[
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];

/// Pre-tokenizer names this converter can derive and write back; all are accepted by
/// llama.cpp's runtime.
pub const KNOWN_PRE: &[&str] = &["gpt-2", "smollm", "llama-bpe", "qwen2", "default"];

fn obj_type(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// Work out llama.cpp's pre-tokenizer name from a byte-level BPE tokenizer.json's
/// `pre_tokenizer` section.
pub fn classify_pre(pre: &Value) -> Result<(&'static str, String), String> {
    let steps: Vec<&Value> = match obj_type(pre) {
        "Sequence" => pre
            .get("pretokenizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        "" => Vec::new(),
        _ => vec![pre],
    };
    let kinds: Vec<&str> = steps.iter().map(|s| obj_type(s)).collect();
    match kinds.as_slice() {
        ["ByteLevel"] if flag(steps[0], "use_regex", true) => Ok((
            "gpt-2",
            "ByteLevel pre-tokenizer with the GPT-2 regex".into(),
        )),
        ["Digits", "ByteLevel"]
            if flag(steps[0], "individual_digits", false) && flag(steps[1], "use_regex", true) =>
        {
            Ok((
                "smollm",
                "single digits split off, then ByteLevel with the GPT-2 regex".into(),
            ))
        }
        ["Split", "ByteLevel"] if !flag(steps[1], "use_regex", true) => {
            let re = steps[0]
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if LLAMA3_RE.contains(&re) {
                Ok((
                    "llama-bpe",
                    "Split on the Llama 3 regex (numbers in groups of up to 3), then ByteLevel"
                        .into(),
                ))
            } else if QWEN2_RE.contains(&re) {
                Ok((
                    "qwen2",
                    "Split on the Qwen2 regex (single digits), then ByteLevel".into(),
                ))
            } else {
                Err(format!("a Split pre-tokenizer with regex `{re}`"))
            }
        }
        _ => Err(format!("pre-tokenizer steps [{}]", kinds.join(", "))),
    }
}

/// The `pre_tokenizer` section that reproduces a llama.cpp pre-tokenizer name.
pub fn pre_tokenizer_json(pre: &str) -> Option<Value> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "gpt-2" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        // Falcon 3's pre-tokenizer is Llama 3's under its own name (llama.cpp treats both alike).
        "llama-bpe" | "falcon3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_RE[0]), byte_level(false)]})
        }
        "qwen2" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_RE[0]), byte_level(false)]})
        }
        _ => return None,
    })
}

fn special_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

/// Convert tokenizer.json (+ tokenizer_config.json, + config.json ids) into GGUF keys.
pub fn to_gguf(t: &HfTokenizer<'_>) -> Result<VocabKeys, ConvertError> {
    let path = t.path;
    // Load it with the `tokenizers` library first: a tokenizer.json that library rejects
    // would give a GGUF whose tokenizer nobody can check against the original.
    tokenizers::Tokenizer::from_str(t.json).map_err(|e| {
        ConvertError::tokenizer(path, format!("the tokenizers library cannot load it: {e}"))
    })?;
    let tj: Value = serde_json::from_str(t.json)
        .map_err(|e| ConvertError::tokenizer(path, format!("not valid JSON: {e}")))?;
    let model = tj
        .get("model")
        .ok_or_else(|| ConvertError::tokenizer(path, "no `model` section"))?;
    let mtype = obj_type(model);
    if mtype != "BPE" {
        return Err(ConvertError::tokenizer(
            path,
            format!("tokenizer model `{mtype}` is not supported (byte-level BPE and SentencePiece BPE are)"),
        ));
    }
    let spm = flag(model, "byte_fallback", false);
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| ConvertError::tokenizer(path, "`model.vocab` is not an object"))?;
    let added: Vec<&Value> = tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();

    let n = t.n_vocab as usize;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut place = |id: u64, tok: &str| -> Result<(), ConvertError> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            ConvertError::tokenizer(
                path,
                format!("token `{tok}` has id {id}, but the model's vocabulary (vocab_size, embedding rows) has {n} entries"),
            )
        })?;
        *slot = Some(tok.to_owned());
        Ok(())
    };
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            ConvertError::tokenizer(path, format!("token `{tok}` has id {id}, not an integer"))
        })?;
        place(id, tok)?;
    }
    let mut added_type: HashMap<u64, i32> = HashMap::new();
    for a in &added {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            return Err(ConvertError::tokenizer(
                path,
                "an `added_tokens` entry has no integer `id` or string `content`",
            ));
        };
        place(id, content)?;
        let special =
            flag(a, "special", false) || (content.starts_with("<|") && content.ends_with("|>"));
        added_type.insert(
            id,
            if special {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            },
        );
    }

    let unk = special_content(model.get("unk_token"));
    let mut types = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for (id, tok) in tokens.into_iter().enumerate() {
        match tok {
            None => {
                texts.push(format!("[PAD{id}]"));
                types.push(token_type::UNUSED);
                scores.push(0.0);
            }
            Some(tok) => {
                let ty = if spm && unk.as_deref() == Some(tok.as_str()) {
                    token_type::UNKNOWN
                } else if let Some(ty) = added_type.get(&(id as u64)) {
                    *ty
                } else if spm && is_byte_token(&tok) {
                    token_type::BYTE
                } else {
                    token_type::NORMAL
                };
                // SentencePiece merges the adjacent pair with the highest score. Vocabularies
                // converted from SentencePiece list pieces in score order, so minus the id
                // keeps that order (llama.cpp's converter writes -1000 for every piece when it
                // only has tokenizer.json, which loses it).
                scores.push(if ty == token_type::NORMAL {
                    -(id as f32)
                } else {
                    0.0
                });
                texts.push(tok);
                types.push(ty);
            }
        }
    }

    let (model_name, pre, pre_reason) = if spm {
        (
            "llama",
            "default".to_owned(),
            "SentencePiece BPE with byte fallback".to_owned(),
        )
    } else {
        let derived = tj.get("pre_tokenizer").map(classify_pre);
        match (t.pre_override, derived) {
            (Some(p), d) => {
                let why = match d {
                    Some(Ok((name, _))) => format!("given with --pre-tokenizer (tokenizer.json suggests `{name}`)"),
                    _ => "given with --pre-tokenizer".to_owned(),
                };
                ("gpt2", p.to_owned(), why)
            }
            (None, Some(Ok((name, why)))) => ("gpt2", name.to_owned(), why),
            (None, Some(Err(what))) => {
                return Err(ConvertError::tokenizer(
                    path,
                    format!("no llama.cpp pre-tokenizer is known for {what}; name one with --pre-tokenizer ({})", KNOWN_PRE.join(", ")),
                ))
            }
            (None, None) => {
                return Err(ConvertError::tokenizer(path, "a byte-level BPE tokenizer without a `pre_tokenizer` section"))
            }
        }
    };

    let mut keys: Vec<(String, MetaValue)> = vec![
        (
            "tokenizer.ggml.model".into(),
            MetaValue::String(model_name.into()),
        ),
        ("tokenizer.ggml.pre".into(), MetaValue::String(pre.clone())),
        ("tokenizer.ggml.tokens".into(), arr_str(texts)),
    ];
    if spm {
        keys.push(("tokenizer.ggml.scores".into(), arr_f32(scores)));
    }
    keys.push(("tokenizer.ggml.token_type".into(), arr_i32(types)));
    if !spm {
        keys.push((
            "tokenizer.ggml.merges".into(),
            arr_str(merges(model, path)?),
        ));
    }

    // Special tokens: tokenizer_config.json names them by content; config.json by id
    // (used only where tokenizer_config.json is silent, as llama.cpp's converter does).
    let by_content = |c: &str| -> Option<u64> {
        added
            .iter()
            .find(|a| a.get("content").and_then(Value::as_str) == Some(c))
            .and_then(|a| a.get("id").and_then(Value::as_u64))
            .or_else(|| vocab.get(c).and_then(Value::as_u64))
    };
    let tc = t.config.and_then(Value::as_object);
    let ids = [
        ("bos", "bos_token_id", t.config_ids[0]),
        ("eos", "eos_token_id", t.config_ids[1]),
        ("unk", "unknown_token_id", None),
        ("pad", "padding_token_id", t.config_ids[2]),
    ];
    for (typ, key, from_config) in ids {
        let from_tc = tc
            .and_then(|c| special_content(c.get(&format!("{typ}_token"))))
            .and_then(|c| by_content(&c));
        let from_model = if typ == "unk" {
            unk.as_deref().and_then(by_content)
        } else {
            None
        };
        if let Some(id) = from_tc
            .or(from_model)
            .or(from_config)
            .filter(|id| *id < t.n_vocab)
        {
            keys.push((format!("tokenizer.ggml.{key}"), MetaValue::U32(id as u32)));
        }
    }
    let add_bos = tc
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Value::as_bool)
        .or_else(|| {
            // A TemplateProcessing post-processor that starts with a special token adds BOS.
            let pp = tj.get("post_processor")?;
            let procs: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
                Some(a) => a.iter().collect(),
                None => vec![pp],
            };
            procs
                .iter()
                .find(|p| obj_type(p) == "TemplateProcessing")
                .map(|p| {
                    p.get("single")
                        .and_then(Value::as_array)
                        .and_then(|s| s.first())
                        .is_some_and(|first| first.get("SpecialToken").is_some())
                })
        });
    if let Some(b) = add_bos {
        keys.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(b)));
    }
    if let Some(e) = tc
        .and_then(|c| c.get("add_eos_token"))
        .and_then(Value::as_bool)
    {
        keys.push(("tokenizer.ggml.add_eos_token".into(), MetaValue::Bool(e)));
    }
    if spm {
        // A `Prepend("▁")` normalizer or a Metaspace pre-tokenizer that prepends: the
        // SentencePiece "add dummy prefix" llama.cpp calls add_space_prefix.
        let text = tj
            .get("normalizer")
            .map(Value::to_string)
            .unwrap_or_default()
            + &tj
                .get("pre_tokenizer")
                .map(Value::to_string)
                .unwrap_or_default();
        let prefix = text.contains("\"Prepend\"")
            || (text.contains("Metaspace") && !text.contains("\"never\""));
        keys.push((
            "tokenizer.ggml.add_space_prefix".into(),
            MetaValue::Bool(prefix),
        ));
    }
    let from_file = t.chat_template_file.map(|s| Value::String(s.to_owned()));
    if let Some(ct) = tc
        .and_then(|c| c.get("chat_template"))
        .or(from_file.as_ref())
    {
        push_chat_template(&mut keys, ct);
    }
    Ok(VocabKeys {
        keys,
        model: model_name,
        pre,
        pre_reason,
        n_tokens: t.n_vocab,
    })
}

/// How added tokens are laid over a SentencePiece vocabulary: llama.cpp's shared
/// `_create_vocab_sentencepiece` (Llama, Mistral, Gemma, ...) or its Phi-3 variant, which
/// also takes tokenizer.json's `added_tokens` and never guesses a token special by its look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpmStyle {
    #[default]
    Default,
    Phi3,
}

/// The inputs of [`from_sentencepiece`].
pub struct SpmTokenizer<'a> {
    /// Where tokenizer.model is, for messages.
    pub path: &'a Path,
    pub model: &'a SpModel,
    /// tokenizer_config.json.
    pub config: Option<&'a Value>,
    /// config.json, for `{bos,eos,unk,sep,pad,cls,mask}_token_id` (also under `text_config`).
    pub model_config: Option<&'a Value>,
    /// tokenizer.json beside it, if any: its `added_tokens` name special-token ids.
    pub tokenizer_json: Option<&'a str>,
    /// config.json's `vocab_size`: the GGUF token list has exactly this many entries.
    pub n_vocab: u64,
    pub style: SpmStyle,
    /// `chat_template.jinja`.
    pub chat_template_file: Option<&'a str>,
}

/// Tokens gguf-py's converter treats as control tokens whatever tokenizer_config.json says.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// A SentencePiece `tokenizer.model` as GGUF keys, the way llama.cpp's
/// `_set_vocab_sentencepiece` writes them: `tokenizer.ggml.model = llama`, pre `default`,
/// every piece with its score and type (user-defined pieces count as normal, as the
/// `sentencepiece` library reports them), `[PAD{id}]` entries (score -10000, unused) up to
/// config.json's `vocab_size`, the added tokens of tokenizer_config.json (score -1000), then
/// gguf-py's special-token rules: ids named in tokenizer_config.json and found among
/// tokenizer.json's added tokens, else config.json's `*_token_id`; `add_bos_token` and
/// `add_eos_token` from tokenizer_config.json; the chat template.
///
/// Unlike llama.cpp, which drops pieces beyond `vocab_size` with a warning, more pieces than
/// `vocab_size` is an error: the embedding has no row for them.
pub fn from_sentencepiece(t: &SpmTokenizer<'_>) -> Result<VocabKeys, ConvertError> {
    let path = t.path;
    let m = t.model;
    let n = usize::try_from(t.n_vocab).unwrap_or(usize::MAX);
    if m.pieces.len() > n {
        return Err(ConvertError::VocabSize {
            path: path.to_owned(),
            config: path.with_file_name("config.json"),
            pieces: m.pieces.len(),
            vocab_size: t.n_vocab,
        });
    }
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![token_type::UNUSED; n];
    for (id, p) in m.pieces.iter().enumerate() {
        tokens[id] = p.piece.clone();
        scores[id] = p.score;
        types[id] = match p.kind {
            PieceType::Unknown => token_type::UNKNOWN,
            PieceType::Control => token_type::CONTROL,
            PieceType::Unused => token_type::UNUSED,
            PieceType::Byte => token_type::BYTE,
            PieceType::Normal | PieceType::UserDefined => token_type::NORMAL,
        };
    }
    let tj: Option<Value> = match t.tokenizer_json {
        Some(text) => Some(serde_json::from_str(text).map_err(|e| {
            ConvertError::tokenizer(
                path.with_file_name("tokenizer.json"),
                format!("not valid JSON: {e}"),
            )
        })?),
        None => None,
    };
    let tj_added: Vec<&Value> = tj
        .as_ref()
        .and_then(|v| v.get("added_tokens"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let tc = t.config.and_then(Value::as_object);
    let tc_path = path.with_file_name("tokenizer_config.json");
    let mut overlay = |id: u64, content: &str, special: bool| {
        let Some(i) = usize::try_from(id).ok().filter(|i| *i < n) else {
            // llama.cpp skips these with a warning; they name no row of the embedding.
            return;
        };
        let control = match t.style {
            SpmStyle::Default => special || looks_special(content),
            SpmStyle::Phi3 => special,
        };
        tokens[i] = if control || t.style == SpmStyle::Phi3 {
            content.to_owned()
        } else {
            // gguf-py pre-normalizes the spaces of user-defined tokens.
            content.replace('\u{2581}', " ")
        };
        scores[i] = -1000.0;
        types[i] = if control {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
    };
    if let Some(decoder) = tc
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Value::as_object)
    {
        for (id, data) in decoder {
            let id: u64 = id.parse().map_err(|_| {
                ConvertError::tokenizer(
                    &tc_path,
                    format!("`added_tokens_decoder` key `{id}` is not a token id"),
                )
            })?;
            let content = data.get("content").and_then(Value::as_str).ok_or_else(|| {
                ConvertError::tokenizer(
                    &tc_path,
                    format!("`added_tokens_decoder.{id}` has no string `content`"),
                )
            })?;
            overlay(id, content, flag(data, "special", false));
        }
    }
    if t.style == SpmStyle::Phi3 {
        for a in &tj_added {
            if let (Some(id), Some(content)) = (
                a.get("id").and_then(Value::as_u64),
                a.get("content").and_then(Value::as_str),
            ) {
                overlay(id, content, flag(a, "special", false));
            }
        }
    }

    let mut keys: Vec<(String, MetaValue)> = vec![
        (
            "tokenizer.ggml.model".into(),
            MetaValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            MetaValue::String("default".into()),
        ),
        ("tokenizer.ggml.tokens".into(), arr_str(tokens)),
        ("tokenizer.ggml.scores".into(), arr_f32(scores)),
        ("tokenizer.ggml.token_type".into(), arr_i32(types)),
    ];
    // Special ids: gguf-py looks tokenizer_config.json's `{typ}_token` up among
    // tokenizer.json's added tokens only, then takes config.json's `{typ}_token_id`; the
    // first found wins and ids outside the vocabulary are skipped.
    let kinds = [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("sep", "seperator_token_id"),
        ("pad", "padding_token_id"),
        ("cls", "cls_token_id"),
        ("mask", "mask_token_id"),
    ];
    let mut ids: Vec<(&str, u64)> = Vec::new();
    let set = |typ: &'static str, id: Option<u64>, ids: &mut Vec<(&'static str, u64)>| {
        if let Some(id) = id.filter(|id| *id < t.n_vocab) {
            if !ids.iter().any(|(k, _)| *k == typ) {
                ids.push((typ, id));
            }
        }
    };
    if tj.is_some() {
        for (typ, _) in kinds {
            let content = tc.and_then(|c| special_content(c.get(&format!("{typ}_token"))));
            let id = content.and_then(|c| {
                tj_added
                    .iter()
                    .find(|a| a.get("content").and_then(Value::as_str) == Some(c.as_str()))
                    .and_then(|a| a.get("id").and_then(Value::as_u64))
            });
            set(typ, id, &mut ids);
        }
    }
    for (typ, _) in kinds {
        let key = format!("{typ}_token_id");
        let id = t.model_config.and_then(|c| {
            c.get(&key)
                .or_else(|| c.get("text_config").and_then(|tc| tc.get(&key)))
                .and_then(Value::as_u64)
        });
        set(typ, id, &mut ids);
    }
    for (typ, key) in kinds {
        if let Some((_, id)) = ids.iter().find(|(k, _)| *k == typ) {
            keys.push((format!("tokenizer.ggml.{key}"), MetaValue::U32(*id as u32)));
        }
    }
    for typ in ["bos", "eos", "sep"] {
        if let Some(b) = tc
            .and_then(|c| c.get(&format!("add_{typ}_token")))
            .and_then(Value::as_bool)
        {
            keys.push((
                format!("tokenizer.ggml.add_{typ}_token"),
                MetaValue::Bool(b),
            ));
        }
    }
    let from_file = t.chat_template_file.map(|s| Value::String(s.to_owned()));
    if let Some(ct) = tc
        .and_then(|c| c.get("chat_template"))
        .or(from_file.as_ref())
    {
        push_chat_template(&mut keys, ct);
    }
    Ok(VocabKeys {
        keys,
        model: "llama",
        pre: "default".into(),
        pre_reason: format!(
            "SentencePiece {} tokenizer.model",
            m.trainer().model_type().name()
        ),
        n_tokens: t.n_vocab,
    })
}

/// Where the converter takes a directory's tokenizer from, and how.
pub struct DirVocab<'a> {
    pub root: &'a Path,
    pub dir: &'a HfDir,
    /// `bos_token_id`, `eos_token_id`, `pad_token_id` from config.json.
    pub config_ids: [Option<u64>; 3],
    pub n_vocab: u64,
    pub pre_override: Option<&'a str>,
    pub spm_style: SpmStyle,
}

/// A model directory's tokenizer as GGUF keys. As llama.cpp's converter does for Llama,
/// Mistral, Gemma and Phi-3, a SentencePiece `tokenizer.model` wins over tokenizer.json
/// when both exist; tokenizer.json is used otherwise.
pub fn from_dir(d: &DirVocab<'_>) -> Result<VocabKeys, ConvertError> {
    if let Some(model) = &d.dir.tokenizer_model {
        return from_sentencepiece(&SpmTokenizer {
            path: &d.root.join("tokenizer.model"),
            model,
            config: d.dir.tokenizer_config.as_ref(),
            model_config: d.dir.config.as_ref(),
            tokenizer_json: d.dir.tokenizer_json.as_deref(),
            n_vocab: d.n_vocab,
            style: d.spm_style,
            chat_template_file: d.dir.chat_template_jinja.as_deref(),
        });
    }
    let tok_path = d.root.join("tokenizer.json");
    let json = d
        .dir
        .tokenizer_json
        .as_deref()
        .ok_or_else(|| ConvertError::Missing {
            path: tok_path.clone(),
            what: "neither tokenizer.json nor tokenizer.model is present; a GGUF file carries its tokenizer".into(),
        })?;
    to_gguf(&HfTokenizer {
        path: &tok_path,
        json,
        config: d.dir.tokenizer_config.as_ref(),
        config_ids: d.config_ids,
        n_vocab: d.n_vocab,
        pre_override: d.pre_override,
        chat_template_file: d.dir.chat_template_jinja.as_deref(),
    })
}

/// `tokenizer.chat_template` (and named templates) from tokenizer_config.json's value.
fn push_chat_template(keys: &mut Vec<(String, MetaValue)>, ct: &Value) {
    match ct {
        Value::String(s) => keys.push((
            "tokenizer.chat_template".into(),
            MetaValue::String(s.clone()),
        )),
        Value::Array(list) => {
            let mut names = Vec::new();
            for item in list {
                let (Some(name), Some(tpl)) = (
                    item.get("name").and_then(Value::as_str),
                    item.get("template").and_then(Value::as_str),
                ) else {
                    continue;
                };
                if name == "default" {
                    keys.push((
                        "tokenizer.chat_template".into(),
                        MetaValue::String(tpl.into()),
                    ));
                } else {
                    keys.push((
                        format!("tokenizer.chat_template.{name}"),
                        MetaValue::String(tpl.into()),
                    ));
                    names.push(name.to_owned());
                }
            }
            if !names.is_empty() {
                keys.push(("tokenizer.chat_templates".into(), arr_str(names)));
            }
        }
        _ => {}
    }
}

/// Merges as GGUF stores them: `"left right"`. tokenizer.json has either that form or
/// `[left, right]` pairs (transformers 4.45+); spaces inside a pair are written as U+0120,
/// as gguf-py does, so the split on the one space stays unambiguous.
fn merges(model: &Value, path: &Path) -> Result<Vec<String>, ConvertError> {
    let Some(list) = model.get("merges").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &Value| {
                    v.as_str()
                        .map(|s| s.replace(' ', "\u{120}"))
                        .ok_or_else(|| {
                            ConvertError::tokenizer(path, "a merge pair holds a non-string")
                        })
                };
                Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            _ => Err(ConvertError::tokenizer(
                path,
                format!("merge {m} is neither \"a b\" nor [a, b]"),
            )),
        })
        .collect()
}

/// What a GGUF file's tokenizer keys hold, read back for writing tokenizer.json.
#[derive(Debug, Default)]
pub struct GgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    pub unk: Option<u64>,
    pub pad: Option<u64>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    pub fn from_metadata(
        meta: &[(String, MetaValue)],
        path: &Path,
    ) -> Result<GgufVocab, ConvertError> {
        let m = Meta::new(meta);
        let bad = |e: MetaError| ConvertError::tokenizer(path, e.to_string());
        let strs = |k: &str| -> Result<Vec<String>, ConvertError> {
            Ok(m.strings(k)
                .map_err(bad)?
                .unwrap_or_default()
                .into_iter()
                .map(str::to_owned)
                .collect())
        };
        let model = m
            .str("tokenizer.ggml.model")
            .map_err(bad)?
            .ok_or_else(|| {
                ConvertError::tokenizer(
                    path,
                    "no `tokenizer.ggml.model` key: the file carries no tokenizer",
                )
            })?
            .to_owned();
        let tokens = strs("tokenizer.ggml.tokens")?;
        let types = match m.ints("tokenizer.ggml.token_type").map_err(bad)? {
            Some(types) => types
                .into_iter()
                .map(|t| i32::try_from(t).unwrap_or(token_type::NORMAL))
                .collect(),
            None => vec![token_type::NORMAL; tokens.len()],
        };
        let scores = m
            .floats("tokenizer.ggml.scores")
            .map_err(bad)?
            .unwrap_or_default();
        if types.len() != tokens.len() || (!scores.is_empty() && scores.len() != tokens.len()) {
            return Err(ConvertError::tokenizer(
                path,
                format!(
                    "{} tokens but {} token types and {} scores",
                    tokens.len(),
                    types.len(),
                    scores.len()
                ),
            ));
        }
        // An id outside the vocabulary names no token; it is dropped, as before.
        let id = |k: &str| -> Result<Option<u64>, ConvertError> {
            Ok(m.u64(k)
                .map_err(bad)?
                .filter(|&i| (i as usize) < tokens.len()))
        };
        let boolean = |k: &str| m.bool(k).map_err(bad);
        let text = |k: &str| -> Result<Option<String>, ConvertError> {
            Ok(m.str(k).map_err(bad)?.map(str::to_owned))
        };
        Ok(GgufVocab {
            pre: text("tokenizer.ggml.pre")?,
            merges: strs("tokenizer.ggml.merges")?,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: boolean("tokenizer.ggml.add_bos_token")?,
            add_eos: boolean("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: boolean("tokenizer.ggml.add_space_prefix")?,
            chat_template: text("tokenizer.chat_template")?,
            model,
            tokens,
            types,
            scores,
        })
    }

    fn token(&self, id: Option<u64>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }

    /// The `added_tokens` list: control and user-defined tokens.
    fn added_tokens(&self) -> Vec<Value> {
        self.tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (_, ty))| matches!(**ty, token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN))
            .map(|(id, (tok, ty))| {
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": *ty == token_type::USER_DEFINED, "special": *ty != token_type::USER_DEFINED})
            })
            .collect()
    }

    fn post_processor(&self, fallback: Value) -> Value {
        match (self.add_bos, self.token(self.bos)) {
            (Some(true), Some(bos)) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [self.bos], "tokens": [bos]}}
            }),
            _ => fallback,
        }
    }

    /// A tokenizer.json equivalent to these keys. `path` names the GGUF file in errors.
    pub fn to_tokenizer_json(&self, path: &Path) -> Result<Value, ConvertError> {
        let mut vocab = Map::new();
        for (id, tok) in self.tokens.iter().enumerate() {
            // Duplicate token texts cannot be expressed in a tokenizer.json vocabulary; the
            // first id wins, as in llama.cpp's own token-to-id map.
            vocab.entry(tok.clone()).or_insert(json!(id));
        }
        let doc = match self.model.as_str() {
            "gpt2" => {
                let pre = self.pre.as_deref().unwrap_or("default");
                let pre_tok = pre_tokenizer_json(pre).ok_or_else(|| {
                    ConvertError::tokenizer(
                        path,
                        format!("pre-tokenizer `{pre}` has no tokenizer.json equivalent here (known: gpt-2, smollm, llama-bpe, qwen2)"),
                    )
                })?;
                let merges: Vec<Value> = self.merges.iter().map(|m| json!(m)).collect();
                json!({
                    "version": "1.0", "truncation": null, "padding": null,
                    "added_tokens": self.added_tokens(),
                    "normalizer": null,
                    "pre_tokenizer": pre_tok,
                    "post_processor": self.post_processor(
                        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})),
                    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                    "model": {"type": "BPE", "dropout": null, "unk_token": self.token(self.unk),
                              "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                              "byte_fallback": false, "ignore_merges": matches!(pre, "llama-bpe" | "falcon3"),
                              "vocab": vocab, "merges": merges}
                })
            }
            "llama" => {
                let merges: Vec<Value> = self.spm_merges().into_iter().map(Value::String).collect();
                let normalizer = if self.add_space_prefix.unwrap_or(true) {
                    json!({"type": "Sequence", "normalizers": [
                        {"type": "Prepend", "prepend": "\u{2581}"},
                        {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]})
                } else {
                    json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})
                };
                let mut decoders = vec![
                    json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if self.add_space_prefix.unwrap_or(true) {
                    decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                json!({
                    "version": "1.0", "truncation": null, "padding": null,
                    "added_tokens": self.added_tokens(),
                    "normalizer": normalizer,
                    "pre_tokenizer": null,
                    "post_processor": self.post_processor(Value::Null),
                    "decoder": {"type": "Sequence", "decoders": decoders},
                    "model": {"type": "BPE", "dropout": null, "unk_token": self.token(self.unk),
                              "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                              "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
                })
            }
            other => {
                return Err(ConvertError::tokenizer(
                    path,
                    format!("tokenizer model `{other}` has no tokenizer.json equivalent here (gpt2 and llama do)"),
                ))
            }
        };
        // Check the result the same way inputs are checked.
        let text = doc.to_string();
        tokenizers::Tokenizer::from_str(&text).map_err(|e| {
            ConvertError::tokenizer(
                path,
                format!("the tokenizer.json built from its keys does not load: {e}"),
            )
        })?;
        Ok(doc)
    }

    /// BPE merges for a SentencePiece vocabulary: every way of splitting a normal piece into
    /// two pieces of the vocabulary, ordered by the merged piece's score (highest first) and
    /// then by the ids of the halves, which is how `tokenizers` converts SentencePiece models.
    fn spm_merges(&self) -> Vec<String> {
        let index: HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut found: Vec<(f32, usize, usize, usize)> = Vec::new();
        for (id, tok) in self.tokens.iter().enumerate() {
            if self.types.get(id) != Some(&token_type::NORMAL) {
                continue;
            }
            for (cut, _) in tok.char_indices().skip(1) {
                let (l, r) = tok.split_at(cut);
                if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                    let score = self.scores.get(id).copied().unwrap_or(-(id as f32));
                    found.push((score, id, li, ri));
                }
            }
        }
        found.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        found
            .into_iter()
            .map(|(_, _, l, r)| format!("{} {}", self.tokens[l], self.tokens[r]))
            .collect()
    }

    /// A SentencePiece model for a `llama` vocabulary: every token a piece with its score
    /// and type, BPE with byte fallback when there are byte tokens, the special ids of the
    /// GGUF keys (unknown: the key, else the first UNKNOWN token), and the normalization
    /// llama.cpp applies to this vocabulary: no character map, no whitespace collapsing,
    /// spaces escaped as `▁`, a dummy prefix as `add_space_prefix` says (default true). The
    /// original file's `nmt_nfkc` map is not carried by GGUF, and neither llama.cpp nor
    /// transformers' converted tokenizers apply it.
    pub fn to_sentencepiece(&self) -> SpModel {
        let kind = |ty: i32| match ty {
            token_type::UNKNOWN => PieceType::Unknown,
            token_type::CONTROL => PieceType::Control,
            token_type::USER_DEFINED => PieceType::UserDefined,
            token_type::UNUSED => PieceType::Unused,
            token_type::BYTE => PieceType::Byte,
            _ => PieceType::Normal,
        };
        let pieces: Vec<Piece> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ty = self.types.get(i).copied().unwrap_or(token_type::NORMAL);
                let score = self.scores.get(i).copied().unwrap_or(0.0);
                Piece::new(
                    t.clone(),
                    if score.is_finite() { score } else { 0.0 },
                    kind(ty),
                )
            })
            .collect();
        let unk = self.unk.or_else(|| {
            self.types
                .iter()
                .position(|t| *t == token_type::UNKNOWN)
                .map(|i| i as u64)
        });
        let id = |v: Option<u64>| Some(v.and_then(|v| i32::try_from(v).ok()).unwrap_or(-1));
        SpModel {
            trainer: Some(TrainerSpec {
                model_type: Some(ModelType::Bpe),
                vocab_size: i32::try_from(pieces.len()).ok(),
                byte_fallback: Some(self.types.contains(&token_type::BYTE)),
                unk_id: id(unk),
                bos_id: id(self.bos),
                eos_id: id(self.eos),
                pad_id: id(self.pad),
                ..TrainerSpec::default()
            }),
            normalizer: Some(NormalizerSpec {
                name: Some("identity".into()),
                precompiled_charsmap: None,
                add_dummy_prefix: Some(self.add_space_prefix.unwrap_or(true)),
                remove_extra_whitespaces: Some(false),
                escape_whitespaces: Some(true),
                other: Vec::new(),
            }),
            pieces,
            denormalizer: None,
            other: Vec::new(),
        }
    }

    /// The tokenizer files of a Hugging Face directory for these keys: tokenizer.json and
    /// tokenizer_config.json, and for a `llama` (SentencePiece) vocabulary `tokenizer.model`
    /// too, so that tokenizer.model → GGUF → directory keeps a tokenizer.model.
    pub fn hf_files(
        &self,
        path: &Path,
        max_len: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, ConvertError> {
        let pretty = |v: &Value| {
            let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
            s.push(b'\n');
            s
        };
        let mut files = vec![
            (
                "tokenizer.json".to_owned(),
                pretty(&self.to_tokenizer_json(path)?),
            ),
            (
                "tokenizer_config.json".to_owned(),
                pretty(&self.tokenizer_config(max_len)),
            ),
        ];
        if self.model == "llama" {
            files.push((
                "tokenizer.model".to_owned(),
                sentencepiece::write(&self.to_sentencepiece()),
            ));
        }
        Ok(files)
    }

    /// tokenizer_config.json for these keys.
    pub fn tokenizer_config(&self, max_len: u64) -> Value {
        let mut decoder = Map::new();
        for (id, tok) in self.tokens.iter().enumerate() {
            let ty = self.types.get(id).copied().unwrap_or(token_type::NORMAL);
            if matches!(
                ty,
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
            ) {
                decoder.insert(
                    id.to_string(),
                    json!({"content": tok, "lstrip": false, "normalized": ty == token_type::USER_DEFINED,
                           "rstrip": false, "single_word": false, "special": ty != token_type::USER_DEFINED}),
                );
            }
        }
        let mut c = Map::new();
        c.insert("add_bos_token".into(), json!(self.add_bos.unwrap_or(false)));
        c.insert("add_eos_token".into(), json!(self.add_eos.unwrap_or(false)));
        c.insert("added_tokens_decoder".into(), Value::Object(decoder));
        c.insert("bos_token".into(), json!(self.token(self.bos)));
        if let Some(t) = &self.chat_template {
            c.insert("chat_template".into(), json!(t));
        }
        c.insert("clean_up_tokenization_spaces".into(), json!(false));
        c.insert("eos_token".into(), json!(self.token(self.eos)));
        c.insert("model_max_length".into(), json!(max_len));
        c.insert("pad_token".into(), json!(self.token(self.pad)));
        c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        c.insert("unk_token".into(), json!(self.token(self.unk)));
        Value::Object(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_bpe(pre: Value) -> String {
        small_bpe_with(pre, json!(["a b", "Ġ a"]))
    }

    fn small_bpe_with(pre: Value, merges: Value) -> String {
        let mut vocab = Map::new();
        for (i, t) in [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "a",
            "b",
            "ab",
            "Ġ",
            "Ġa",
        ]
        .iter()
        .enumerate()
        {
            vocab.insert((*t).into(), json!(i));
        }
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        })
        .to_string()
    }

    fn convert(json: &str, n_vocab: u64, tc: Option<&Value>) -> Result<VocabKeys, ConvertError> {
        to_gguf(&HfTokenizer {
            path: Path::new("tokenizer.json"),
            json,
            config: tc,
            config_ids: [Some(1), Some(2), Some(2)],
            n_vocab,
            pre_override: None,
            chat_template_file: None,
        })
    }

    fn key<'a>(v: &'a VocabKeys, k: &str) -> &'a MetaValue {
        &v.keys.iter().find(|(key, _)| key == k).unwrap().1
    }

    #[test]
    fn byte_level_bpe_to_gguf() {
        let j = small_bpe(
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        );
        let tc = json!({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": false,
                        "chat_template": "{{ x }}"});
        let v = convert(&j, 10, Some(&tc)).unwrap();
        assert_eq!(v.model, "gpt2");
        assert_eq!(v.pre, "gpt-2");
        let MetaValue::Array { items, .. } = key(&v, "tokenizer.ggml.tokens") else {
            panic!()
        };
        assert_eq!(items.len(), 10);
        assert_eq!(items[9], MetaValue::String("[PAD9]".into()));
        let MetaValue::Array { items, .. } = key(&v, "tokenizer.ggml.token_type") else {
            panic!()
        };
        assert_eq!(items[0], MetaValue::I32(token_type::CONTROL));
        assert_eq!(items[3], MetaValue::I32(token_type::NORMAL));
        assert_eq!(items[9], MetaValue::I32(token_type::UNUSED));
        let MetaValue::Array { items, .. } = key(&v, "tokenizer.ggml.merges") else {
            panic!()
        };
        assert_eq!(
            items,
            &vec![
                MetaValue::String("a b".into()),
                MetaValue::String("Ġ a".into())
            ]
        );
        assert_eq!(key(&v, "tokenizer.ggml.bos_token_id"), &MetaValue::U32(1));
        assert_eq!(key(&v, "tokenizer.ggml.eos_token_id"), &MetaValue::U32(2));
        assert_eq!(
            key(&v, "tokenizer.ggml.padding_token_id"),
            &MetaValue::U32(2)
        );
        assert_eq!(
            key(&v, "tokenizer.ggml.add_bos_token"),
            &MetaValue::Bool(false)
        );
        assert_eq!(
            key(&v, "tokenizer.chat_template"),
            &MetaValue::String("{{ x }}".into())
        );
        assert!(v.keys.iter().all(|(k, _)| k != "tokenizer.ggml.scores"));
    }

    #[test]
    fn too_small_a_vocabulary_is_an_error() {
        let j = small_bpe(
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        );
        let e = convert(&j, 5, None).unwrap_err().to_string();
        assert!(e.contains("vocabulary"), "{e}");
        assert!(convert("{not json", 8, None).is_err());
    }

    #[test]
    fn pair_merges_are_joined() {
        let pre = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let j = small_bpe_with(pre, json!([["a", "b"], ["Ġ", "a"]]));
        let v = convert(&j, 8, None).unwrap();
        let MetaValue::Array { items, .. } = key(&v, "tokenizer.ggml.merges") else {
            panic!()
        };
        assert_eq!(
            items,
            &vec![
                MetaValue::String("a b".into()),
                MetaValue::String("Ġ a".into())
            ]
        );
    }

    #[test]
    fn pre_tokenizers_are_recognised() {
        assert_eq!(
            classify_pre(&pre_tokenizer_json("smollm").unwrap())
                .unwrap()
                .0,
            "smollm"
        );
        assert_eq!(
            classify_pre(&pre_tokenizer_json("llama-bpe").unwrap())
                .unwrap()
                .0,
            "llama-bpe"
        );
        assert_eq!(
            classify_pre(&pre_tokenizer_json("qwen2").unwrap())
                .unwrap()
                .0,
            "qwen2"
        );
        assert_eq!(
            classify_pre(&pre_tokenizer_json("gpt-2").unwrap())
                .unwrap()
                .0,
            "gpt-2"
        );
        let odd = json!({"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
        assert!(classify_pre(&odd).is_err());
        let j = small_bpe(odd);
        let e = convert(&j, 8, None).unwrap_err().to_string();
        assert!(e.contains("--pre-tokenizer"), "{e}");
    }

    #[test]
    fn gguf_vocab_round_trips_through_tokenizer_json() {
        let j = small_bpe(
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        );
        let tc =
            json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false});
        let v = convert(&j, 8, Some(&tc)).unwrap();
        let g = GgufVocab::from_metadata(&v.keys, Path::new("x.gguf")).unwrap();
        let back = g.to_tokenizer_json(Path::new("x.gguf")).unwrap();
        let again = convert(&back.to_string(), 8, Some(&g.tokenizer_config(256))).unwrap();
        for k in [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.pre",
        ] {
            assert_eq!(key(&v, k), key(&again, k), "{k}");
        }
        let tok = tokenizers::Tokenizer::from_str(&back.to_string()).unwrap();
        let ids = tok.encode(" ab", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![6, 5]);
    }

    #[test]
    fn sentencepiece_vocab_both_ways() {
        let mut vocab = Map::new();
        let toks = [
            "<unk>", "<s>", "</s>", "<0x00>", "▁", "a", "b", "▁a", "ab", "▁ab",
        ];
        for (i, t) in toks.iter().enumerate() {
            vocab.insert((*t).into(), json!(i));
        }
        let j = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null,
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": ["▁ a", "a b", "▁ ab", "▁a b"]}
        }).to_string();
        let tc = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
        let v = to_gguf(&HfTokenizer {
            path: Path::new("tokenizer.json"),
            json: &j,
            config: Some(&tc),
            config_ids: [None, None, None],
            n_vocab: 10,
            pre_override: None,
            chat_template_file: None,
        })
        .unwrap();
        assert_eq!(v.model, "llama");
        assert_eq!(v.pre, "default");
        let MetaValue::Array { items, .. } = key(&v, "tokenizer.ggml.token_type") else {
            panic!()
        };
        assert_eq!(items[0], MetaValue::I32(token_type::UNKNOWN));
        assert_eq!(items[1], MetaValue::I32(token_type::CONTROL));
        assert_eq!(items[3], MetaValue::I32(token_type::BYTE));
        assert_eq!(items[7], MetaValue::I32(token_type::NORMAL));
        assert_eq!(
            key(&v, "tokenizer.ggml.add_bos_token"),
            &MetaValue::Bool(true)
        );
        assert_eq!(
            key(&v, "tokenizer.ggml.add_space_prefix"),
            &MetaValue::Bool(true)
        );
        assert_eq!(
            key(&v, "tokenizer.ggml.unknown_token_id"),
            &MetaValue::U32(0)
        );
        let g = GgufVocab::from_metadata(&v.keys, Path::new("x.gguf")).unwrap();
        let back = g.to_tokenizer_json(Path::new("x.gguf")).unwrap();
        let tok = tokenizers::Tokenizer::from_str(&back.to_string()).unwrap();
        let orig = tokenizers::Tokenizer::from_str(&j).unwrap();
        for text in ["ab", "a ab", "b a"] {
            assert_eq!(
                tok.encode(text, true).unwrap().get_ids(),
                orig.encode(text, true).unwrap().get_ids(),
                "{text}"
            );
        }
    }
}
