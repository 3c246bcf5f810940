//! The input of the policy stage: what a checkpoint says about itself, gathered once from a
//! [`Checkpoint`] (card, licence files, weight metadata, architecture, file list, digests).
//! Every later step works on this plain struct, so tests can build one by hand.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::PolicyError;
use crate::digest;
use crate::formats::hf::{LicenceFile, ModelCard};
use crate::formats::{Checkpoint, FileEntry, Layout, MetaValue, ModelParams, WeightFormat};
use crate::types::Sha256Digest;

/// What the policy stage knows about one model.
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    /// The path that was opened.
    pub subject: PathBuf,
    /// The name of the model directory, or the weight file's stem.
    pub file_name: Option<String>,
    pub card: Option<ModelCard>,
    pub licence_files: Vec<LicenceFile>,
    /// The weight file holding `metadata`, relative to the model root.
    pub weights_file: Option<PathBuf>,
    pub weight_format: Option<WeightFormat>,
    /// GGUF key/values, or safetensors `__metadata__` strings.
    pub metadata: Vec<(String, MetaValue)>,
    pub params: ModelParams,
    /// Special-token texts (bos, eos, unk, pad) from the tokenizer.
    pub tokens: Vec<String>,
    pub config: Option<serde_json::Value>,
    /// Every file of the checkpoint, relative to its root.
    pub files: Vec<FileEntry>,
    /// Tensor storage types and how many tensors use each (`Q4_1` x 210).
    pub tensor_types: Vec<(String, u64)>,
    /// SHA-256 of each file, when hashed.
    pub digests: Vec<FileDigest>,
    /// SHA-256 over the concatenated raw file digests sorted by path (the root digest the
    /// OpenSSF model-signing statement uses), when hashed.
    pub model_digest: Option<Sha256Digest>,
    /// Where the model came from when it was resolved from `hf://`.
    pub hub: Option<crate::provenance::Provenance>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileDigest {
    pub path: PathBuf,
    pub sha256: Sha256Digest,
}

impl ModelFacts {
    /// Gather the facts of an opened checkpoint. With `hash`, every file is hashed.
    pub fn from_checkpoint(ckpt: &Checkpoint, hash: bool) -> Result<ModelFacts, PolicyError> {
        let root = match ckpt.layout {
            Layout::Directory => ckpt.path.clone(),
            Layout::File => ckpt
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let file_name = match ckpt.layout {
            Layout::Directory => ckpt.path.file_name(),
            Layout::File => ckpt.path.file_stem(),
        }
        .map(|s| s.to_string_lossy().into_owned());
        let weights_file = ckpt.weights.files.first().map(|f| {
            f.strip_prefix(&root)
                .map(Path::to_path_buf)
                .ok()
                .or_else(|| f.file_name().map(PathBuf::from))
                .unwrap_or_else(|| f.clone())
        });
        let mut tensor_types: Vec<(String, u64)> = Vec::new();
        for t in &ckpt.weights.tensors {
            let name = t.dtype.name().to_owned();
            match tensor_types.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 += 1,
                None => tensor_types.push((name, 1)),
            }
        }
        tensor_types.sort();
        let tokens = ckpt
            .tokenizer()
            .map(|t| {
                [t.bos, t.eos, t.unk, t.pad]
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.text)
                    .collect()
            })
            .unwrap_or_default();
        let dir = ckpt.dir.as_ref();
        let mut facts = ModelFacts {
            subject: ckpt.path.clone(),
            file_name,
            card: dir.and_then(|d| d.card.clone()),
            licence_files: dir.map(|d| d.licence_files.clone()).unwrap_or_default(),
            weights_file,
            weight_format: Some(ckpt.weights.format),
            metadata: ckpt.weights.metadata.clone(),
            params: ckpt.params(),
            tokens,
            config: dir.and_then(|d| d.config.clone()),
            files: ckpt.files.clone(),
            tensor_types,
            digests: Vec::new(),
            model_digest: None,
            hub: None,
        };
        if hash {
            facts.hash_files(&root)?;
        }
        Ok(facts)
    }

    /// Hash every listed file (through [`crate::digest`]; nothing is parsed, so this is not
    /// a reader of checkpoint formats) and derive the model digest.
    pub fn hash_files(&mut self, root: &Path) -> Result<(), PolicyError> {
        let mut digests = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let path = root.join(&f.path);
            digests.push(FileDigest {
                path: f.path.clone(),
                sha256: digest::hash_file(&path)?,
            });
        }
        digests.sort_by(|a, b| a.path.cmp(&b.path));
        self.model_digest = Some(digest::root_digest(digests.iter().map(|d| &d.sha256)));
        self.digests = digests;
        Ok(())
    }

    /// A metadata value as text (strings as they are, numbers printed).
    pub fn meta_str(&self, key: &str) -> Option<String> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| meta_text(v))
    }

    /// A card front-matter value.
    pub fn card_value(&self, key: &str) -> Option<&serde_json::Value> {
        self.card.as_ref().and_then(|c| c.front_matter.get(key))
    }

    /// The line a card key is on.
    pub fn card_line(&self, key: &str) -> Option<u64> {
        self.card
            .as_ref()
            .and_then(|c| c.key_lines.get(key).copied())
    }
}

fn meta_text(v: &MetaValue) -> Option<String> {
    Some(match v {
        MetaValue::String(s) => s.clone(),
        MetaValue::U8(x) => x.to_string(),
        MetaValue::I8(x) => x.to_string(),
        MetaValue::U16(x) => x.to_string(),
        MetaValue::I16(x) => x.to_string(),
        MetaValue::U32(x) => x.to_string(),
        MetaValue::I32(x) => x.to_string(),
        MetaValue::U64(x) => x.to_string(),
        MetaValue::I64(x) => x.to_string(),
        MetaValue::F32(x) => x.to_string(),
        MetaValue::F64(x) => x.to_string(),
        MetaValue::Bool(x) => x.to_string(),
        MetaValue::Array { items, .. } => {
            let parts: Vec<String> = items.iter().filter_map(meta_text).collect();
            parts.join(", ")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_digest_is_over_sorted_file_digests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), b"bbb").unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let mut f = ModelFacts {
            files: vec![
                FileEntry {
                    path: "b".into(),
                    size: 3,
                },
                FileEntry {
                    path: "a".into(),
                    size: 3,
                },
            ],
            ..Default::default()
        };
        f.hash_files(dir.path()).unwrap();
        assert_eq!(f.digests[0].path, PathBuf::from("a"));
        assert_eq!(
            f.digests[0].sha256.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut cat = Vec::new();
        cat.extend_from_slice(&Sha256Digest::of(b"abc").0);
        cat.extend_from_slice(&Sha256Digest::of(b"bbb").0);
        assert_eq!(f.model_digest, Some(Sha256Digest::of(&cat)));
    }
}
