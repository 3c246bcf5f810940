//! GGUF: the hostile-safe reader ([`open`], [`parse_bytes`]), a deterministic streaming
//! writer ([`GgufWriter`]) and the metadata model they share ([`MetaValue`]).
//!
//! The reader is part of the first pipeline stage (`formats`): it turns a memory-mapped GGUF
//! file into the common [`Weights`](super::Weights) view without reading tensor data. The writer is what
//! `convert` streams its output through. [`params_from_metadata`] and
//! [`tokenizer_from_metadata`] give the architecture and tokenizer summaries `inspect`,
//! `policy` and `engine` use when a checkpoint is a bare GGUF file.
//!
//! We parse GGUF by hand rather than through a crate: candle's reader refuses types it cannot
//! compute with and keeps key order in a HashMap, and gguf-rs loses value types and trusts
//! length fields. Neither bounds every claimed count by the bytes left, which is the point
//! of this module. gguf-rs and the PyPI `gguf` package serve as independent oracles in tests.

pub mod meta;
mod read;
pub mod split;
mod write;

use serde::Serialize;
use serde_json::Value;

use super::{ModelParams, SpecialToken, TokenizerSummary};

pub use meta::{Meta, MetaError};
pub use read::{open, parse_bytes, ParsedGguf, MAX_ARRAY_DEPTH, MAX_META_ELEMENTS};
pub use write::{GgufWriteError, GgufWriter, TensorDesc, DEFAULT_ALIGNMENT};

/// GGML_MAX_DIMS: the most dimensions a GGUF tensor may have.
pub const MAX_DIMS: u32 = 4;

/// GGUF metadata value types, by their id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// The type with GGUF id `id`; `None` for ids GGUF does not define.
    pub fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// Short lower-case name: `u32`, `f32`, `string`, `array`.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type can take in a file: what bounds a claimed
    /// array length by the bytes left (a string is at least its u64 length, an array at
    /// least its u32 element type and u64 count).
    pub fn min_encoded_len(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

/// One GGUF metadata value (safetensors `__metadata__` entries are `String`s).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Every item has type `elem` (the reader checks it; the writer refuses mixed arrays).
    /// Items may themselves be arrays.
    Array {
        elem: ValueType,
        items: Vec<MetaValue>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array { .. } => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// The type as a name: `u32`, `string`, `array[string]`, `array[array[u8]]`. An empty
    /// nested array names only its declared element type.
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array { elem, items } => match (elem, items.first()) {
                (ValueType::Array, Some(first)) => format!("array[{}]", first.type_name()),
                _ => format!("array[{}]", elem.name()),
            },
            v => v.value_type().name().to_owned(),
        }
    }

    /// The value as plain JSON: numbers, booleans, strings, arrays as arrays. Non-finite
    /// floats become `null` (JSON has no NaN or infinity). An f32 becomes the f64 nearest to
    /// its shortest decimal form, so `1e-5` stays `1e-5` rather than turning into the
    /// widened `9.999999747378752e-6`, whichever serde_json features are enabled.
    pub fn to_json(&self) -> Value {
        match self {
            MetaValue::U8(v) => Value::from(*v),
            MetaValue::I8(v) => Value::from(*v),
            MetaValue::U16(v) => Value::from(*v),
            MetaValue::I16(v) => Value::from(*v),
            MetaValue::U32(v) => Value::from(*v),
            MetaValue::I32(v) => Value::from(*v),
            MetaValue::F32(v) => Value::from(f32_as_decimal(*v)),
            MetaValue::Bool(v) => Value::from(*v),
            MetaValue::String(v) => Value::from(v.as_str()),
            MetaValue::Array { items, .. } => {
                Value::Array(items.iter().map(MetaValue::to_json).collect())
            }
            MetaValue::U64(v) => Value::from(*v),
            MetaValue::I64(v) => Value::from(*v),
            MetaValue::F64(v) => Value::from(*v),
        }
    }

    /// An integer value of any width, if it is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float, or an integer widened to a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            // Integers wider than 2^53 lose precision; no hyper-parameter is that large.
            MetaValue::I64(v) => Some(v as f64),
            ref other => other.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items of an array value.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array { items, .. } => Some(items),
            _ => None,
        }
    }
}

/// The f64 whose shortest decimal form is the f32's shortest decimal form.
fn f32_as_decimal(v: f32) -> f64 {
    if !v.is_finite() {
        return f64::NAN;
    }
    // Display prints the shortest decimal that reads back as the same f32, which always
    // parses as an f64; the fallback cannot be reached.
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// Version, alignment and data-section offset of a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GgufLayout {
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section (the end of the tensor infos, aligned).
    pub data_offset: u64,
}

fn lookup<'a>(meta: &'a [(String, MetaValue)], key: &str) -> Option<&'a MetaValue> {
    meta.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// An integer key that is a scalar, or a per-layer array whose entries are all equal
/// (some architectures store `head_count_kv` per layer).
fn uniform_u64(v: &MetaValue) -> Option<u64> {
    match v {
        MetaValue::Array { items, .. } => {
            let first = items.first()?.as_u64()?;
            items
                .iter()
                .all(|i| i.as_u64() == Some(first))
                .then_some(first)
        }
        v => v.as_u64(),
    }
}

/// Architecture hyper-parameters from `general.architecture` and its `{arch}.*` keys.
///
/// `head_dim` is `{arch}.attention.key_length`, or `embedding_length / head_count` when
/// that key is absent (llama.cpp's default). `vocab_size` is `{arch}.vocab_size`, or the
/// length of `tokenizer.ggml.tokens`. Whether the output head is tied to the token
/// embedding is a property of the tensors (no `output.weight`), not of the metadata, so
/// `tie_word_embeddings` stays `None` here.
pub fn params_from_metadata(meta: &[(String, MetaValue)]) -> ModelParams {
    let arch = lookup(meta, "general.architecture")
        .and_then(MetaValue::as_str)
        .map(str::to_owned);
    let Some(a) = arch.as_deref() else {
        return ModelParams::default();
    };
    let int = |suffix: &str| lookup(meta, &format!("{a}.{suffix}")).and_then(uniform_u64);
    let float = |suffix: &str| lookup(meta, &format!("{a}.{suffix}")).and_then(MetaValue::as_f64);
    let embedding_length = int("embedding_length");
    let head_count = int("attention.head_count");
    let head_dim = int("attention.key_length").or(match (embedding_length, head_count) {
        (Some(e), Some(h)) if h > 0 && e % h == 0 => Some(e / h),
        _ => None,
    });
    let vocab_size = int("vocab_size").or_else(|| {
        lookup(meta, "tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .map(|t| t.len() as u64)
    });
    ModelParams {
        architecture: arch.clone(),
        block_count: int("block_count"),
        context_length: int("context_length"),
        embedding_length,
        feed_forward_length: int("feed_forward_length"),
        head_count,
        head_count_kv: int("attention.head_count_kv"),
        head_dim,
        vocab_size,
        rope_theta: float("rope.freq_base"),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon"),
        tie_word_embeddings: None,
    }
}

/// The tokenizer a GGUF file embeds (`tokenizer.ggml.*`); `None` when it declares no
/// tokenizer model.
pub fn tokenizer_from_metadata(meta: &[(String, MetaValue)]) -> Option<TokenizerSummary> {
    let model = lookup(meta, "tokenizer.ggml.model")?.as_str()?.to_owned();
    let tokens = lookup(meta, "tokenizer.ggml.tokens").and_then(MetaValue::as_array);
    let special = |key: &str| {
        let id = lookup(meta, key)?.as_u64()?;
        let text = tokens
            .and_then(|t| t.get(usize::try_from(id).ok()?))
            .and_then(MetaValue::as_str)
            .map(str::to_owned);
        Some(SpecialToken { id, text })
    };
    Some(TokenizerSummary {
        model,
        pre: lookup(meta, "tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .map(str::to_owned),
        vocab_size: tokens.map_or(0, |t| t.len() as u64),
        merges: lookup(meta, "tokenizer.ggml.merges")
            .and_then(MetaValue::as_array)
            .map_or(0, |m| m.len() as u64),
        bos: special("tokenizer.ggml.bos_token_id"),
        eos: special("tokenizer.ggml.eos_token_id"),
        unk: special("tokenizer.ggml.unknown_token_id"),
        pad: special("tokenizer.ggml.padding_token_id"),
        add_bos: lookup(meta, "tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool),
        chat_template: lookup(meta, "tokenizer.chat_template")
            .and_then(MetaValue::as_str)
            .is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> MetaValue {
        MetaValue::String(v.into())
    }

    #[test]
    fn value_type_ids_round_trip() {
        for id in 0..13 {
            let t = ValueType::from_id(id).unwrap();
            assert_eq!(t.id(), id);
        }
        assert_eq!(ValueType::from_id(13), None);
    }

    #[test]
    fn json_and_type_names() {
        let nested = MetaValue::Array {
            elem: ValueType::Array,
            items: vec![MetaValue::Array {
                elem: ValueType::U8,
                items: vec![MetaValue::U8(1), MetaValue::U8(2)],
            }],
        };
        assert_eq!(nested.type_name(), "array[array[u8]]");
        assert_eq!(nested.to_json(), serde_json::json!([[1, 2]]));
        assert_eq!(MetaValue::F32(0.5).to_json(), serde_json::json!(0.5));
        assert_eq!(MetaValue::F32(1e-5).to_json().as_f64(), Some(1e-5));
        assert_eq!(MetaValue::F32(f32::INFINITY).to_json(), Value::Null);
        assert_eq!(MetaValue::F64(f64::NAN).to_json(), Value::Null);
        assert_eq!(MetaValue::I8(-3).as_u64(), None);
        assert_eq!(MetaValue::I8(3).as_u64(), Some(3));
    }

    #[test]
    fn params_fall_back_to_derived_values() {
        let meta = vec![
            ("general.architecture".to_owned(), s("llama")),
            ("llama.embedding_length".to_owned(), MetaValue::U32(576)),
            ("llama.attention.head_count".to_owned(), MetaValue::U32(9)),
            (
                "llama.attention.head_count_kv".to_owned(),
                MetaValue::Array {
                    elem: ValueType::U32,
                    items: vec![MetaValue::U32(3), MetaValue::U32(3)],
                },
            ),
            (
                "tokenizer.ggml.tokens".to_owned(),
                MetaValue::Array {
                    elem: ValueType::String,
                    items: vec![s("a"), s("b")],
                },
            ),
            ("tokenizer.ggml.model".to_owned(), s("gpt2")),
            ("tokenizer.ggml.bos_token_id".to_owned(), MetaValue::U32(1)),
            ("tokenizer.ggml.eos_token_id".to_owned(), MetaValue::U32(7)),
        ];
        let p = params_from_metadata(&meta);
        assert_eq!(p.head_dim, Some(64));
        assert_eq!(p.head_count_kv, Some(3));
        assert_eq!(p.vocab_size, Some(2));
        assert_eq!(p.tie_word_embeddings, None);
        let t = tokenizer_from_metadata(&meta).unwrap();
        assert_eq!(t.bos.unwrap().text.as_deref(), Some("b"));
        // An id past the vocabulary keeps its id and has no text.
        assert_eq!(t.eos.unwrap().text, None);
        assert!(!t.chat_template);
        assert_eq!(tokenizer_from_metadata(&meta[..1]), None);
    }
}
