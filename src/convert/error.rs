//! The conversion stage's error: every message says what was found and what was expected,
//! and names the file or tensor concerned.

use std::path::{Path, PathBuf};

use crate::formats::gguf::GgufWriteError;
use crate::formats::safetensors::WriteError;
use crate::formats::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The checkpoint could not be read (the formats layer says why).
    #[error("cannot read the checkpoint")]
    Read(#[from] FormatError),

    /// A file the conversion needs is absent (config.json, tokenizer.json, a shard).
    #[error("`{path}`: {what}")]
    Missing { path: PathBuf, what: String },

    /// config.json (or the GGUF architecture keys) are missing a value or hold a bad one.
    #[error("`{path}`: {fault}")]
    Config { path: PathBuf, fault: String },

    /// An architecture the converter has no tensor map for.
    #[error("architecture `{found}` is not supported (supported: {supported})")]
    UnsupportedArchitecture { found: String, supported: String },

    /// A tensor whose shape disagrees with config.json (or the GGUF keys).
    #[error(
        "tensor `{tensor}` has shape {found:?}, but the configuration implies {expected:?} ({why})"
    )]
    Shape {
        tensor: String,
        found: Vec<u64>,
        expected: Vec<u64>,
        why: String,
    },

    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor `{tensor}` is missing: {why}")]
    MissingTensor { tensor: String, why: String },

    /// A tensor the converter does not know where to put.
    #[error("tensor `{tensor}` has no mapping for architecture `{arch}`")]
    UnknownTensor { tensor: String, arch: String },

    /// A tensor stored in a dtype the converter cannot read.
    #[error("tensor `{tensor}` is stored as {dtype}, which cannot be converted")]
    UnsupportedDtype { tensor: String, dtype: String },

    /// tokenizer.json (or the GGUF tokenizer keys) could not be turned into the other form.
    #[error("`{path}`: {fault}")]
    Tokenizer { path: PathBuf, fault: String },

    /// A tokenizer.model with more pieces than config.json's `vocab_size`.
    #[error("`{path}` has {pieces} pieces, but `vocab_size` in `{config}` is {vocab_size}: the embedding has no row for the rest")]
    VocabSize {
        path: PathBuf,
        config: PathBuf,
        pieces: usize,
        vocab_size: u64,
    },

    /// An already-quantized tensor would be quantized again.
    #[error(
        "tensor `{tensor}` is already quantized as {from}; requantizing it to {to} loses quality"
    )]
    Requantize {
        tensor: String,
        from: String,
        to: String,
    },

    /// An option or combination of options that cannot be honoured.
    #[error("{0}")]
    Options(String),

    /// Writing the output failed.
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The output writer refused what it was given (a bug, or an impossible layout).
    #[error("cannot write `{path}`: {fault}")]
    Output { path: PathBuf, fault: String },

    /// A share of a sharded conversion (or its sidecar) is missing, damaged or from another
    /// plan.
    #[error("`{path}`: {fault}")]
    Shard { path: PathBuf, fault: String },

    /// Hashing the source or a part failed.
    #[error("cannot hash `{path}`")]
    Hash {
        path: PathBuf,
        #[source]
        source: crate::digest::DigestError,
    },

    /// The `--imatrix` file could not be read or holds bad values (NaN, negative sums).
    #[error("cannot use the importance matrix")]
    Imatrix(#[source] FormatError),

    /// The importance matrix does not belong to the model being converted.
    #[error("importance matrix `{path}` does not match the model: {fault}")]
    ImatrixMismatch { path: PathBuf, fault: String },

    /// A type that gives garbage without an importance matrix, asked for without one.
    #[error("tensor `{tensor}` would be quantized to {ty}, which needs an importance matrix")]
    NeedsImatrix { tensor: String, ty: String },

    /// A quantization kernel refused its input.
    #[error("tensor `{tensor}`: {fault}")]
    Kernel { tensor: String, fault: String },

    /// A size budget no choice of types reaches (`--target-bpw`, `--max-size`).
    #[error("{asked} is outside what this model can be written in: from {min} to {max}")]
    BudgetOutOfRange {
        asked: String,
        min: String,
        max: String,
    },
}

impl ConvertError {
    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            ConvertError::UnsupportedArchitecture { .. } => {
                "modelgate converts the Llama, Qwen, Gemma 2/3, OLMo 2 and Phi-3/4 families and the Mixtral, Qwen-MoE, DeepSeek-V2/V3 and gpt-oss mixtures of experts; convert other models with llama.cpp's converter"
            }
            ConvertError::Requantize { .. } => {
                "quantize from the original weights, or pass --allow-requantize to accept the loss"
            }
            ConvertError::Shape { .. } | ConvertError::MissingTensor { .. } => {
                "config.json and the weights come from different models, or a file is damaged"
            }
            ConvertError::Read(_) => "check that every file of the checkpoint is present and complete",
            ConvertError::VocabSize { .. } => {
                "tokenizer.model and config.json come from different models; get both from the model's publisher"
            }
            ConvertError::Missing { .. } => {
                "a Hugging Face model directory needs config.json, tokenizer.json and every weight file"
            }
            ConvertError::UnsupportedDtype { .. } => {
                "modelgate converts from f32, f16, bf16 and the GGUF block types it writes"
            }
            ConvertError::Write { .. } => {
                "check that the output folder exists, is writable and has space"
            }
            ConvertError::Hash { source, .. } => return source.hint(),
            ConvertError::Imatrix(_) | ConvertError::ImatrixMismatch { .. } => {
                "give the imatrix llama-imatrix wrote for this model (GGUF or legacy .dat)"
            }
            ConvertError::NeedsImatrix { .. } => {
                "pass --imatrix FILE (made by llama-imatrix on a calibration text), or choose a type of 3 bits or more"
            }
            ConvertError::BudgetOutOfRange { .. } => {
                "the smallest size puts every quantizable tensor at the cheapest type that fits its rows, the largest at F16"
            }
            ConvertError::Shard { .. } => {
                "convert the missing or damaged share again with the same `--shard I/N` and options"
            }
            _ => return None,
        })
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConvertError::Write {
            path: path.into(),
            source,
        }
    }

    /// A GGUF writer error on `path`: an I/O failure keeps its cause, a refused layout
    /// becomes [`ConvertError::Output`].
    pub(crate) fn gguf_output(path: &Path, e: GgufWriteError) -> Self {
        match e {
            GgufWriteError::Io(source) => ConvertError::write(path, source),
            GgufWriteError::Invalid(fault) => ConvertError::Output {
                path: path.to_owned(),
                fault,
            },
        }
    }

    /// A safetensors writer error on `path`, as [`ConvertError::gguf_output`].
    pub(crate) fn safetensors_output(path: &Path, e: WriteError) -> Self {
        match e {
            WriteError::Io(source) => ConvertError::write(path, source),
            WriteError::File { path, source } => ConvertError::write(path, source),
            other => ConvertError::Output {
                path: path.to_owned(),
                fault: other.to_string(),
            },
        }
    }

    pub(crate) fn shard(path: impl Into<PathBuf>, fault: impl Into<String>) -> Self {
        ConvertError::Shard {
            path: path.into(),
            fault: fault.into(),
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, fault: impl Into<String>) -> Self {
        ConvertError::Config {
            path: path.into(),
            fault: fault.into(),
        }
    }

    pub(crate) fn tokenizer(path: impl Into<PathBuf>, fault: impl Into<String>) -> Self {
        ConvertError::Tokenizer {
            path: path.into(),
            fault: fault.into(),
        }
    }
}
