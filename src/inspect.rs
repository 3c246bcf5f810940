//! The `inspect` summary: what a checkpoint holds, in one serialisable value.
//!
//! Sits right after [`crate::formats`] in the pipeline: it reads nothing itself, only the
//! [`Checkpoint`] view, and gathers format, architecture, parameter count (with the experts
//! and active parameters of a mixture of experts), bytes per dtype,
//! hyper-parameters, tokenizer, metadata, declared licence and provenance and file sizes.
//! The CLI prints it as text or JSON; `schemas/inspect.schema.json` describes the JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::formats::experts::{param_split, Experts};
use crate::formats::{
    bytes_per_dtype, Checkpoint, FileEntry, Layout, MetaValue, ModelParams, TokenizerSummary,
    WeightFormat,
};

/// Version of the JSON layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub schema_version: u32,
    pub path: String,
    pub layout: Layout,
    pub format: WeightFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufInfo>,
    pub architecture: Option<String>,
    pub parameters: u64,
    /// Mixture-of-experts facts; absent for a dense model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertSummary>,
    pub tensor_count: usize,
    pub dtypes: Vec<DtypeBytes>,
    pub params: ModelParams,
    pub tokenizer: Option<TokenizerSummary>,
    /// `general.*` and architecture (`{arch}.*`) GGUF keys, or every safetensors
    /// `__metadata__` entry; arrays longer than 16 items are summarised.
    pub metadata: BTreeMap<String, Value>,
    pub licence: Vec<Declared>,
    pub provenance: Vec<Declared>,
    /// Licence and notice files found in a model directory.
    pub licence_files: Vec<String>,
    pub files: Vec<FileEntry>,
    pub total_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorRow>>,
}

/// Experts of a mixture-of-experts model and the parameters a token uses.
#[derive(Clone, Debug, Serialize)]
pub struct ExpertSummary {
    /// Routed experts per MoE layer.
    pub count: u64,
    /// Routed experts each token uses.
    pub used_per_token: u64,
    /// Experts every token uses beside the routed ones.
    pub shared: u64,
    /// Dense layers before the first MoE layer.
    pub leading_dense_layers: u64,
    /// Where the counts were read: `gguf` metadata or `config.json`.
    pub source: &'static str,
    /// Parameters over all tensors, counting MXFP4 blocks of the Hugging Face layout as
    /// their values (two per byte) and their scales as none.
    pub total_parameters: u64,
    /// Parameters in the routed expert tensors.
    pub routed_parameters: u64,
    /// Parameters one token touches: everything but the routed experts, plus
    /// `used_per_token / count` of theirs.
    pub active_parameters: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GgufInfo {
    pub version: u32,
    pub alignment: u64,
    pub metadata_keys: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DtypeBytes {
    pub dtype: String,
    pub tensors: u64,
    pub bytes: u64,
}

/// A licence or provenance field as a source declares it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Declared {
    /// `card`, `gguf` or `safetensors-metadata`.
    pub source: &'static str,
    /// The file it was read from, relative to the checkpoint root.
    pub file: String,
    pub key: String,
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
}

/// Card keys that declare a licence.
const CARD_LICENCE_KEYS: &[&str] = &["license", "license_name", "license_link"];
/// Card keys that say where a model came from.
const CARD_PROVENANCE_KEYS: &[&str] = &[
    "base_model",
    "base_model_relation",
    "datasets",
    "model_creator",
    "model_name",
];

fn is_licence_key(key: &str) -> bool {
    key == "general.license"
        || key.starts_with("general.license.")
        || key.to_ascii_lowercase().contains("license")
}

fn is_provenance_key(key: &str) -> bool {
    key.starts_with("general.base_model.")
        || key.starts_with("general.source.")
        || key.starts_with("general.dataset")
        || matches!(
            key,
            "general.url"
                | "general.repo_url"
                | "general.author"
                | "general.organization"
                | "general.quantized_by"
        )
}

/// The experts of `ckpt` (config.json first, as for the other hyper-parameters, then GGUF
/// metadata) with its total / active parameter split; `None` for a dense model.
pub fn experts_of(ckpt: &Checkpoint) -> Option<ExpertSummary> {
    let (e, source) = Experts::of(ckpt);
    if !e.is_moe() {
        return None;
    }
    let split = param_split(&ckpt.weights.tensors, &e);
    Some(ExpertSummary {
        count: e.count,
        used_per_token: e.used,
        shared: e.shared,
        leading_dense_layers: e.leading_dense,
        source,
        total_parameters: split.total,
        routed_parameters: split.routed,
        active_parameters: split.active,
    })
}

/// Gather the summary. `with_tensors` adds the per-tensor table.
pub fn summarise(ckpt: &Checkpoint, with_tensors: bool) -> Summary {
    let w = &ckpt.weights;
    let params = ckpt.params();
    let weight_file = w
        .files
        .first()
        .map(|f| relative(ckpt, f))
        .unwrap_or_else(|| ckpt.path.display().to_string());
    let meta_source = match w.format {
        WeightFormat::Gguf => "gguf",
        _ => "safetensors-metadata",
    };

    let arch = params.architecture.clone();
    let mut metadata = BTreeMap::new();
    let mut licence = Vec::new();
    let mut provenance = Vec::new();
    for (key, value) in &w.metadata {
        let keep = match w.format {
            WeightFormat::Gguf => {
                key.starts_with("general.")
                    || arch
                        .as_deref()
                        .is_some_and(|a| key.starts_with(&format!("{a}.")))
            }
            _ => true,
        };
        if keep {
            metadata.insert(key.clone(), summarise_value(value));
        }
        let declared = || Declared {
            source: meta_source,
            file: weight_file.clone(),
            key: key.clone(),
            value: value.to_json(),
            line: None,
        };
        if is_licence_key(key) {
            licence.push(declared());
        } else if is_provenance_key(key) {
            provenance.push(declared());
        }
    }

    let mut licence_files = Vec::new();
    if let Some(dir) = &ckpt.dir {
        if let Some(card) = &dir.card {
            let file = card.path.display().to_string();
            for (key, value) in &card.front_matter {
                let d = Declared {
                    source: "card",
                    file: file.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    line: card.key_lines.get(key).copied(),
                };
                if CARD_LICENCE_KEYS.contains(&key.as_str()) {
                    licence.push(d);
                } else if CARD_PROVENANCE_KEYS.contains(&key.as_str()) {
                    provenance.push(d);
                }
            }
        }
        licence_files = dir
            .licence_files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
    }

    let dtypes = bytes_per_dtype(&w.tensors)
        .into_iter()
        .map(|(dtype, (tensors, bytes))| DtypeBytes {
            dtype,
            tensors,
            bytes,
        })
        .collect();
    let tensors = with_tensors.then(|| {
        w.tensors
            .iter()
            .map(|t| TensorRow {
                name: t.name.to_string(),
                dtype: t.dtype.to_string(),
                shape: t.shape.clone(),
                bytes: t.len,
            })
            .collect()
    });
    Summary {
        schema_version: SCHEMA_VERSION,
        path: ckpt.path.display().to_string(),
        layout: ckpt.layout,
        format: w.format,
        gguf: w.gguf.map(|g| GgufInfo {
            version: g.version,
            alignment: g.alignment,
            metadata_keys: w.metadata.len(),
        }),
        architecture: arch,
        parameters: w.parameter_count(),
        experts: experts_of(ckpt),
        tensor_count: w.tensors.len(),
        dtypes,
        params,
        tokenizer: ckpt.tokenizer(),
        metadata,
        licence,
        provenance,
        licence_files,
        total_bytes: ckpt.files.iter().map(|f| f.size).sum(),
        files: ckpt.files.clone(),
        tensors,
    }
}

/// Long arrays (token lists, merges) are summarised so the output stays readable.
fn summarise_value(v: &MetaValue) -> Value {
    match v {
        MetaValue::Array { items, .. } if items.len() > 16 => {
            serde_json::json!({ "array_length": items.len() })
        }
        other => other.to_json(),
    }
}

fn relative(ckpt: &Checkpoint, file: &std::path::Path) -> String {
    let root = match ckpt.layout {
        Layout::Directory => ckpt.path.as_path(),
        Layout::File => ckpt.path.parent().unwrap_or(std::path::Path::new("")),
    };
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// Thousands separators for counts people read.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Sizes as people read them (decimal units, as file managers and `ls -h --si` print).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_and_bytes_read_well() {
        assert_eq!(group_digits(134_515_008), "134,515,008");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(human_bytes(98_362_432), "98.4 MB");
        assert_eq!(human_bytes(12), "12 B");
    }

    #[test]
    fn licence_and_provenance_keys() {
        assert!(is_licence_key("general.license"));
        assert!(is_licence_key("general.license.link"));
        assert!(is_provenance_key("general.base_model.0.name"));
        assert!(!is_provenance_key("general.name"));
    }
}
