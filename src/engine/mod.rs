//! The reference engine: a forward pass for dense decoders (Llama, Mistral, Qwen2/3,
//! Gemma 2/3, OLMo 2, Phi-3) and mixtures of experts (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3
//! with latent attention, gpt-oss) on candle, the tokenizer that goes with a checkpoint, and
//! greedy or sampled generation.
//!
//! In the pipeline it sits after `formats` (which it reads weights through, never touching
//! checkpoint bytes itself) and before parity, which compares the logits of a reference and
//! a candidate model computed by this one implementation. A safetensors reference and a
//! GGUF candidate differ only in their [`WeightSource`] naming and dtypes; the
//! [`Math`] mode decides whether weights are dequantized to f32 (`reference`) or multiplied
//! in their stored block type (`native`).

mod attention;
pub mod calibrate;
pub mod capture;
pub mod chat;
pub mod config;
mod dispatch;
mod gemm;
pub mod generate;
mod kdot;
pub mod layered;
mod mla;
pub mod model;
mod moe;
pub mod ops;
pub mod qmatmul;
pub mod rope;
pub mod sampling;
pub mod stored;
#[cfg(test)]
mod test_noise;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use candle_core::Device;

use crate::formats::{Checkpoint, FormatError};

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use generate::{generate, Generation, GenerationConfig, StopReason};
pub use model::{Logits, Math, Model};
pub use sampling::{top_k, Sampler, Scored};
pub use tokenizer::TextTokenizer;
pub use weights::{Naming, RawTensor, WeightSource};

/// An error of the engine. Messages say what was found and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A GGUF key holds the wrong type (the key, found and expected types are named).
    #[error(transparent)]
    Meta(#[from] crate::formats::gguf::MetaError),
    #[error("the checkpoint does not declare its {0}")]
    MissingParam(String),
    #[error("bad hyper-parameter: {0}")]
    BadParam(String),
    #[error("{0} is not supported by the engine")]
    Unsupported(String),
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}`: {why}")]
    BadTensor { name: String, why: String },
    #[error("tensor `{name}` has dtype {dtype}, which the engine cannot compute with")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("{tokens} tokens do not fit in the model's context of {context}")]
    ContextOverflow { tokens: usize, context: usize },
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error("nothing to run: the input has no tokens")]
    EmptyInput,
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("device `{spec}`: {why}")]
    Device { spec: String, why: String },
    #[error("tensor computation failed")]
    Candle(#[from] candle_core::Error),
    #[error("a memory budget of {} is below the {} ({need} bytes) that one layer needs: its weights, the weights outside the layers and the activations of one sequence", size(*budget), size(*need))]
    MemoryBudget { need: u64, budget: u64 },
    #[error("cannot read the calibration text `{}`", path.display())]
    CalibrationText {
        path: std::path::PathBuf,
        #[source]
        source: crate::userfile::ReadError,
    },
    #[error("the calibration text `{}` is {tokens} tokens, fewer than one chunk of {ctx}", path.display())]
    TextTooShort {
        path: std::path::PathBuf,
        tokens: usize,
        ctx: usize,
    },
    #[error("the calibration text `{}` holds no tokens", path.display())]
    EmptyText { path: std::path::PathBuf },
    #[error("chunks of {ctx} tokens are longer than the model's context of {context}")]
    ChunkTooLong { ctx: usize, context: usize },
    #[error("cannot keep hidden states in `{dir}`")]
    Spill {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bytes in KiB, MiB or GiB with one decimal, for messages.
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1 << 20 {
        format!("{:.1} KiB", b / 1024.0)
    } else if bytes < 1 << 30 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    }
}

impl EngineError {
    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            EngineError::Format(e) => return e.hint(),
            EngineError::Meta(_) | EngineError::MissingParam(_) | EngineError::BadParam(_) => {
                "the checkpoint's configuration is incomplete or damaged; give the model directory with its config.json, or a GGUF file written by llama.cpp or modelgate"
            }
            EngineError::Unsupported(_) => {
                "run this model with its publisher's reference implementation instead"
            }
            EngineError::MissingTensor(_)
            | EngineError::TensorShape { .. }
            | EngineError::BadTensor { .. } => {
                "the weights do not match the configuration; check that every file of the checkpoint is present and complete"
            }
            EngineError::UnsupportedDtype { .. } => {
                "convert the model to f16, bf16 or a GGUF block type first (`modelgate convert`)"
            }
            EngineError::ContextOverflow { .. } => "shorten the input or ask for fewer new tokens",
            EngineError::EmptyInput => "give a non-empty prompt or text",
            EngineError::Device { .. } => "run on `--device cpu`",
            EngineError::MemoryBudget { .. } => {
                "raise `--max-memory` to at least the amount needed, or give a smaller `--ctx`"
            }
            EngineError::CalibrationText { source, .. } => match source {
                crate::userfile::ReadError::Invalid(_) => {
                    "give a plain text file saved as UTF-8, in the language the model will see"
                }
                crate::userfile::ReadError::Io(_) => return source.hint(),
            },
            EngineError::EmptyText { .. } => "give a text of at least one chunk of `--ctx` tokens",
            EngineError::ChunkTooLong { .. } => "give a `--ctx` no larger than the model's context",
            EngineError::TextTooShort { .. } => {
                "give a longer text or a smaller `--ctx` (`fixtures/text/eval.txt` is a small English text to start with)"
            }
            EngineError::Spill { .. } => {
                "free space there or pass `--spill-dir` on a disk with room for the hidden states"
            }
            _ => return None,
        })
    }

    /// Whether the error is about the user's input or checkpoint (exit code 2) rather than
    /// a fault of the engine itself. Every engine error is currently one of those.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, EngineError::Candle(_))
    }
}

/// A compute device, parsed from `cpu`, `cuda:N` or `metal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Metal,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "metal" => Ok(DeviceSpec::Metal),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "`{s}` is not a device (expected `cpu`, `cuda:N` or `metal`)"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl DeviceSpec {
    /// Open the device. CUDA and Metal exist only in builds with the `cuda` / `metal`
    /// cargo features.
    pub fn open(&self) -> Result<Device, EngineError> {
        let fail = |why: String| EngineError::Device {
            spec: self.to_string(),
            why,
        };
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => Device::new_cuda(*n).map_err(|e| fail(e.to_string())),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(fail(
                "this build has no CUDA support (rebuild with `--features cuda`)".into(),
            )),
            #[cfg(feature = "metal")]
            DeviceSpec::Metal => Device::new_metal(0).map_err(|e| fail(e.to_string())),
            #[cfg(not(feature = "metal"))]
            DeviceSpec::Metal => Err(fail(
                "this build has no Metal support (rebuild with `--features metal`)".into(),
            )),
        }
    }
}

/// A checkpoint ready to run: the decoder and its tokenizer.
#[derive(Debug)]
pub struct Engine {
    pub model: Model,
    pub tokenizer: TextTokenizer,
}

impl Engine {
    /// Load the model and tokenizer of an opened checkpoint.
    pub fn load(ckpt: &Checkpoint, math: Math, device: &Device) -> Result<Engine, EngineError> {
        let config_json = ckpt.dir.as_ref().and_then(|d| d.config.as_ref());
        let cfg = ModelConfig::new(&ckpt.params(), config_json, &ckpt.weights.metadata)?;
        let tokenizer = TextTokenizer::from_checkpoint(ckpt)?;
        if tokenizer.vocab_size() > cfg.vocab {
            return Err(EngineError::Tokenizer(format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                cfg.vocab
            )));
        }
        // the whole model is read by its first forward pass: take the page faults now, in
        // the load, when it fits in memory beside the run (a model that does not fit is
        // read as it goes, layer by layer)
        let mapped = ckpt.weights.mapped_bytes();
        if layered::available_memory().is_some_and(|room| mapped <= room / 4 * 3) {
            ckpt.weights.prefault();
        }
        let model = Model::load(&ckpt.weights, cfg, math, device)?;
        Ok(Engine { model, tokenizer })
    }

    /// Open a checkpoint path and load it.
    pub fn open(path: &Path, math: Math, device: &Device) -> Result<Engine, EngineError> {
        let ckpt = Checkpoint::open(path)?;
        Engine::load(&ckpt, math, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("metal".parse::<DeviceSpec>().unwrap(), DeviceSpec::Metal);
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(DeviceSpec::Cuda(0)
            .open()
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
    }
}
