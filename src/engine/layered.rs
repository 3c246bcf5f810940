//! Layer-major evaluation for scoring: every sequence goes through layer L before any goes
//! through layer L + 1, so each weight is read from the checkpoint once per run and only
//! one layer's weights are in memory at a time, whatever the model's size.
//!
//! Weights are read with explicit reads ([`FileReads`]) rather than through the memory map:
//! a layer's bytes are owned by the layer while it runs and freed when it is done, so the
//! process never holds more than one layer of a model larger than RAM, and a file truncated
//! under a running evaluation is an error naming the tensor and the file (a mapped page past
//! a file's new end would kill the process). Between layers, the hidden states of all
//! sequences are kept in memory while they fit in the budget, else in an unnamed temporary
//! file (created already unlinked where the system allows, so no exit path can leave it
//! behind). The logits of a sequence are computed at the end from its last hidden state,
//! only for the rows the caller keeps.
//!
//! Each sequence runs through each layer exactly as [`Model::forward`] would run it (one
//! chunk, or two halves through that layer's KV cache), so the logits are the same numbers.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::model::{Logits, Math, Model};
use super::tokenizer::TextTokenizer;
use super::weights::{Naming, RawTensor, WeightSource};
use super::{EngineError, ModelConfig};
use crate::formats::{Checkpoint, FileReads, Weights};

/// Memory the process needs besides the model and its activations (code, tokenizer,
/// allocator slack), counted in every estimate.
const BASE_BYTES: u64 = 96 << 20;

/// One sequence to evaluate.
#[derive(Clone, Debug)]
pub struct Job {
    pub tokens: Vec<u32>,
    /// Run it in two halves through each layer's KV cache (a second computation of the same
    /// function, for the noise floor), rather than in one chunk.
    pub split: bool,
    /// The first position whose logits [`Layered::logits`] returns.
    pub keep_from: usize,
}

/// How much memory a run may use and where hidden states go past it.
#[derive(Clone, Debug)]
pub struct Budget {
    pub max_memory: u64,
    pub spill_dir: PathBuf,
}

impl Budget {
    /// Half of the memory the system reports available (`MemAvailable`), else 4 GiB; the
    /// spill directory is the system's temporary directory.
    pub fn default_for_machine() -> Budget {
        Budget {
            max_memory: available_memory().map_or(4 << 30, |a| a / 2),
            spill_dir: std::env::temp_dir(),
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Where the run is, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Layers finished (0 before the first).
    pub layer: usize,
    pub layers: usize,
    /// Sequences through the current layer.
    pub sequences: usize,
    pub total_sequences: usize,
    /// Hidden states are kept in a temporary file.
    pub spilled: bool,
}

/// A checkpoint's tensors read on demand with explicit reads, each into its own buffer.
pub struct ReadSource<'a> {
    weights: &'a Weights,
    reads: FileReads,
}

impl<'a> ReadSource<'a> {
    pub fn new(weights: &'a Weights) -> Result<ReadSource<'a>, EngineError> {
        Ok(ReadSource {
            weights,
            reads: FileReads::open(&weights.files)?,
        })
    }
}

impl WeightSource for ReadSource<'_> {
    fn naming(&self) -> Naming {
        WeightSource::naming(self.weights)
    }

    fn tensor(&self, name: &str) -> Result<Option<RawTensor<'_>>, EngineError> {
        let Some(info) = self.weights.tensor(name) else {
            return Ok(None);
        };
        let shape = info
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| EngineError::BadTensor {
                name: name.into(),
                why: format!("shape {:?} does not fit in memory", info.shape),
            })?;
        let data = self.reads.read(info.file, info.offset, info.len, name)?;
        Ok(Some(RawTensor {
            name: name.into(),
            dtype: info.dtype,
            shape,
            data: Cow::Owned(data),
        }))
    }
}

/// The decoder layer a tensor name belongs to (`blk.N.` in GGUF, `layers.N.` in Hugging
/// Face names), if any.
fn layer_of(name: &str) -> Option<usize> {
    for key in ["blk.", "layers."] {
        if let Some(at) = name.find(key) {
            let rest = &name[at + key.len()..];
            let digits: &str = rest.split('.').next()?;
            if let Ok(i) = digits.parse() {
                return Some(i);
            }
        }
    }
    None
}

/// The configuration and tokenizer of a checkpoint, without loading its weights.
pub fn open_parts(ckpt: &Checkpoint) -> Result<(ModelConfig, TextTokenizer), EngineError> {
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
    Ok((cfg, tokenizer))
}

/// What one run needs in memory, estimated from the checkpoint's tensor sizes and the
/// activations of the longest sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The weights outside the layers (embedding, head, norms), one layer (the largest,
    /// plus a transient copy of its largest tensor), the activations of one sequence and
    /// the process's own overhead: below this the run cannot proceed.
    pub minimum: u64,
    /// Hidden states of all sequences between two layers.
    pub states: u64,
}

/// Estimate what evaluating `jobs` on `ckpt` needs.
pub fn need(ckpt: &Checkpoint, cfg: &ModelConfig, math: Math, jobs: &[Job]) -> Need {
    let mut outside = 0u64;
    let mut per_layer = vec![0u64; cfg.n_layers];
    let mut largest = 0u64;
    for t in &ckpt.weights.tensors {
        largest = largest.max(t.len);
        match layer_of(t.name.as_str()) {
            Some(i) if i < per_layer.len() => per_layer[i] = per_layer[i].saturating_add(t.len),
            _ => outside = outside.saturating_add(t.len),
        }
    }
    let layer = per_layer.iter().copied().max().unwrap_or(0);
    // native math repacks the 32-value block types (about 1.1x their stored size)
    let layer = match math {
        Math::Native => layer.saturating_add(layer / 8),
        Math::Reference => layer,
    };
    let n = jobs.iter().map(|j| j.tokens.len()).max().unwrap_or(0) as u64;
    let kept = jobs
        .iter()
        .map(|j| j.tokens.len().saturating_sub(j.keep_from))
        .max()
        .unwrap_or(0) as u64;
    let (h, f, heads) = (cfg.hidden as u64, cfg.ffn as u64, cfg.n_heads as u64);
    let kv = (cfg.n_kv_heads * cfg.head_dim) as u64;
    // f32 activations of one sequence: residual, norms and projections, the feed-forward's
    // three products, attention scores and probabilities, the layer's KV cache, and the
    // logits of the kept rows with their copy; plus reference math's dequantized tiles
    // (16 MiB per thread, two threads counted)
    let act = 4
        * (12 * n * h + 4 * n * f + 2 * heads * n * n + 4 * n * kv + 2 * kept * cfg.vocab as u64)
        + (32 << 20);
    let states = jobs
        .iter()
        .map(|j| 4 * j.tokens.len() as u64 * h)
        .sum::<u64>();
    Need {
        minimum: BASE_BYTES + outside + layer + largest + act + 4 * n * h,
        states,
    }
}

/// Hidden states of every job between layers.
enum States {
    Memory(Vec<Option<Tensor>>),
    /// An unnamed temporary file, job `j`'s states at `offsets[j]`.
    Spilled {
        file: File,
        dir: PathBuf,
        offsets: Vec<u64>,
        hidden: usize,
    },
}

fn spill_err(dir: &Path) -> impl Fn(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Spill {
        dir: dir.to_owned(),
        source,
    }
}

impl States {
    fn put(&mut self, j: usize, x: Tensor) -> Result<(), EngineError> {
        match self {
            States::Memory(v) => v[j] = Some(x),
            States::Spilled {
                file, dir, offsets, ..
            } => {
                let values = x.flatten_all()?.to_vec1::<f32>()?;
                let mut bytes = Vec::with_capacity(values.len() * 4);
                for v in values {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                let e = spill_err(dir);
                file.seek(SeekFrom::Start(offsets[j])).map_err(&e)?;
                file.write_all(&bytes).map_err(&e)?;
            }
        }
        Ok(())
    }

    fn take(&mut self, j: usize, n: usize, device: &Device) -> Result<Tensor, EngineError> {
        match self {
            States::Memory(v) => v[j]
                .take()
                .ok_or_else(|| EngineError::BadParam(format!("sequence {j} has no state"))),
            States::Spilled {
                file,
                dir,
                offsets,
                hidden,
            } => {
                let e = spill_err(dir);
                let mut bytes = vec![0u8; n * *hidden * 4];
                file.seek(SeekFrom::Start(offsets[j])).map_err(&e)?;
                file.read_exact(&mut bytes).map_err(&e)?;
                let values: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Ok(Tensor::from_vec(values, (n, *hidden), device)?)
            }
        }
    }
}

/// A model being evaluated layer-major over a set of jobs.
pub struct Layered<'a> {
    model: Model,
    src: ReadSource<'a>,
    jobs: Vec<Job>,
    states: States,
    device: Device,
    layers_done: usize,
}

impl<'a> Layered<'a> {
    /// Check the budget, load everything but the layers, and embed every job (spilling
    /// the states when all of them do not fit beside one layer).
    pub fn new(
        ckpt: &'a Checkpoint,
        cfg: ModelConfig,
        math: Math,
        device: &Device,
        jobs: Vec<Job>,
        budget: &Budget,
    ) -> Result<Layered<'a>, EngineError> {
        let need = need(ckpt, &cfg, math, &jobs);
        if budget.max_memory < need.minimum {
            return Err(EngineError::MemoryBudget {
                need: need.minimum,
                budget: budget.max_memory,
            });
        }
        let spill = need.minimum.saturating_add(need.states) > budget.max_memory;
        let src = ReadSource::new(&ckpt.weights)?;
        let hidden = cfg.hidden;
        let model = Model::load_without_layers(&src, cfg, math, device)?;
        let mut states = if spill {
            let file =
                tempfile::tempfile_in(&budget.spill_dir).map_err(spill_err(&budget.spill_dir))?;
            let mut offsets = Vec::with_capacity(jobs.len());
            let mut at = 0u64;
            for j in &jobs {
                offsets.push(at);
                at += 4 * (j.tokens.len() * hidden) as u64;
            }
            States::Spilled {
                file,
                dir: budget.spill_dir.clone(),
                offsets,
                hidden,
            }
        } else {
            States::Memory(vec![None; jobs.len()])
        };
        for (j, job) in jobs.iter().enumerate() {
            let x = model.embed(&job.tokens)?;
            states.put(j, x)?;
        }
        Ok(Layered {
            model,
            src,
            jobs,
            states,
            device: device.clone(),
            layers_done: 0,
        })
    }

    pub fn spilled(&self) -> bool {
        matches!(self.states, States::Spilled { .. })
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Send the inputs of every product to `capture` (see [`Model::set_capture`]).
    pub fn set_capture(&mut self, capture: Option<std::sync::Arc<super::capture::Capture>>) {
        self.model.set_capture(capture);
    }

    /// Run every job through every layer, reading each layer's weights once and dropping
    /// them before the next.
    pub fn run_layers(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), EngineError> {
        let layers = self.model.config().n_layers;
        let total = self.jobs.len();
        let spilled = self.spilled();
        let tick = |layer, sequences| Progress {
            layer,
            layers,
            sequences,
            total_sequences: total,
            spilled,
        };
        progress(tick(self.layers_done, 0));
        while self.layers_done < layers {
            let l = self.layers_done;
            let w = self.model.load_layer(&self.src, l)?;
            for (j, job) in self.jobs.iter().enumerate() {
                let n = job.tokens.len();
                let x = self.states.take(j, n, &self.device)?;
                let mut cache = self.model.layer_cache()?;
                let y = if job.split && n > 1 {
                    let half = n / 2;
                    let a = self
                        .model
                        .run_layer(&w, &mut cache, &x.narrow(0, 0, half)?)?;
                    let b = self
                        .model
                        .run_layer(&w, &mut cache, &x.narrow(0, half, n - half)?)?;
                    Tensor::cat(&[a, b], 0)?
                } else {
                    self.model.run_layer(&w, &mut cache, &x)?
                };
                drop(x);
                self.states.put(j, y)?;
                progress(tick(l, j + 1));
            }
            drop(w);
            self.layers_done += 1;
        }
        progress(tick(layers, total));
        Ok(())
    }

    /// Logits `[n - keep_from, vocab]` of job `j` after [`Layered::run_layers`].
    pub fn logits(&mut self, j: usize) -> Result<Tensor, EngineError> {
        let job = self
            .jobs
            .get(j)
            .ok_or_else(|| EngineError::BadParam(format!("no sequence {j}")))?;
        let n = job.tokens.len();
        let from = job.keep_from.min(n);
        let x = self.states.take(j, n, &self.device)?;
        if from == n {
            return Ok(Tensor::zeros(
                (0, self.model.config().vocab),
                candle_core::DType::F32,
                &self.device,
            )?);
        }
        self.model.head(&x.narrow(0, from, n - from)?, Logits::All)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_map_to_their_layer() {
        assert_eq!(layer_of("blk.12.ffn_down.weight"), Some(12));
        assert_eq!(layer_of("model.layers.3.mlp.up_proj.weight"), Some(3));
        assert_eq!(
            layer_of("model.language_model.layers.0.self_attn.q_proj.weight"),
            Some(0)
        );
        assert_eq!(layer_of("token_embd.weight"), None);
        assert_eq!(layer_of("model.norm.weight"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_spill_device_is_an_error_naming_the_directory() {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut s = States::Spilled {
            file,
            dir: PathBuf::from("/spill"),
            offsets: vec![0],
            hidden: 4,
        };
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = s.put(0, x).unwrap_err();
        assert!(e.to_string().contains("`/spill`"), "{e}");
        assert!(e.is_input_error());
        assert!(e.hint().unwrap().contains("--spill-dir"));
    }
}
