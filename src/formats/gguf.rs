//! GGUF reader (placeholder during bring-up; the gguf helper owns this file).

use std::path::Path;

use serde::Serialize;

use super::{FormatError, ModelParams, TokenizerSummary, Weights};

/// GGUF metadata value types, by their id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
    Array {
        elem: ValueType,
        items: Vec<MetaValue>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

/// Version, alignment and data-section offset of a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GgufLayout {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
}

pub fn open(path: &Path) -> Result<Weights, FormatError> {
    Err(FormatError::Unsupported {
        path: path.to_owned(),
        what: "GGUF (reader not built yet)".into(),
    })
}

pub fn params_from_metadata(_meta: &[(String, MetaValue)]) -> ModelParams {
    ModelParams::default()
}

pub fn tokenizer_from_metadata(_meta: &[(String, MetaValue)]) -> Option<TokenizerSummary> {
    None
}
