//! Hugging Face model directory reader (placeholder during bring-up; the hf helper owns it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Checkpoint, FormatError, ModelParams, TokenizerSummary};

/// A model card (`README.md`): its YAML front matter as JSON, the line each top-level key
/// is on (for evidence), and the markdown body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelCard {
    /// Relative to the model root.
    pub path: PathBuf,
    /// The front matter, an object (empty when the card has none).
    pub front_matter: serde_json::Map<String, serde_json::Value>,
    /// 1-based line of each top-level front-matter key in the file.
    pub key_lines: BTreeMap<String, u64>,
    pub body: String,
}

/// A licence or notice file (LICENSE, LICENSE.txt, LICENSE.md, USE_POLICY.md, NOTICE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenceFile {
    /// Relative to the model root.
    pub path: PathBuf,
    pub text: String,
}

/// The non-weight files of a model directory.
#[derive(Debug, Default)]
pub struct HfDir {
    pub root: PathBuf,
    pub config: Option<serde_json::Value>,
    pub generation_config: Option<serde_json::Value>,
    /// tokenizer.json, as text (the engine hands it to the `tokenizers` crate).
    pub tokenizer_json: Option<String>,
    pub tokenizer_config: Option<serde_json::Value>,
    pub card: Option<ModelCard>,
    pub licence_files: Vec<LicenceFile>,
}

impl HfDir {
    pub fn tokenizer_summary(&self) -> Option<TokenizerSummary> {
        None
    }
}

/// Parse a model card's text. `path` is only used in errors and evidence.
pub fn parse_card(path: &Path, _text: &str) -> Result<ModelCard, FormatError> {
    Err(FormatError::Unsupported {
        path: path.to_owned(),
        what: "model cards (reader not built yet)".into(),
    })
}

pub fn open_dir(path: &Path) -> Result<Checkpoint, FormatError> {
    Err(FormatError::Unsupported {
        path: path.to_owned(),
        what: "model directories (reader not built yet)".into(),
    })
}

pub fn params_from_config(_cfg: &serde_json::Value) -> ModelParams {
    ModelParams::default()
}
