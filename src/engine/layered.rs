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
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, MutexGuard};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::model::{LayerWeights, Logits, Math, Model, Segment};
use super::tokenizer::TextTokenizer;
use super::weights::{Naming, RawTensor, WeightSource};
use super::{EngineError, ModelConfig};
use crate::formats::{Checkpoint, FileReads, Weights};
use crate::types::Sha256Digest;

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
    /// Half of the memory available to this process ([`available_memory`]), else 4 GiB;
    /// the spill directory is the system's temporary directory.
    pub fn default_for_machine() -> Budget {
        Budget {
            max_memory: available_memory().map_or(4 << 30, |a| a / 2),
            spill_dir: std::env::temp_dir(),
        }
    }
}

/// The memory this process may still use: the system's `MemAvailable` (`/proc/meminfo`),
/// or less when the process's memory cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) leaves less room. CI runners in containers see the whole host
/// in `/proc/meminfo`; only their cgroup says how much they may have, and a budget above
/// it gets the run killed instead of spilling.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let system = meminfo.as_deref().and_then(mem_available);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| cgroup_room(&c, &|p| std::fs::read_to_string(p).ok()));
    match (system, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Limit less usage of the memory cgroup named in a `/proc/self/cgroup` text, read through
/// `read` (v2 `0::/path` first, then v1's `memory` controller); `None` without a limit.
fn cgroup_room(proc_cgroup: &str, read: &dyn Fn(&str) -> Option<String>) -> Option<u64> {
    let num = |p: String| read(&p).and_then(|t| t.trim().parse::<u64>().ok());
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_end_matches('/');
        let (limit, usage) = if controllers.is_empty() {
            // "max" (no limit) does not parse, which is what it means
            let dir = format!("/sys/fs/cgroup{path}");
            (
                num(format!("{dir}/memory.max")),
                num(format!("{dir}/memory.current")),
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                num(format!("{dir}/memory.limit_in_bytes")),
                num(format!("{dir}/memory.usage_in_bytes")),
            )
        } else {
            continue;
        };
        // v1 reports "no limit" as a huge page-rounded number
        if let Some(limit) = limit.filter(|&l| l < 1 << 60) {
            return Some(limit.saturating_sub(usage.unwrap_or(0)));
        }
    }
    None
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

/// A checkpoint's tensors read on demand with explicit reads, each into its own buffer,
/// hashing the weight files as they go by.
pub struct ReadSource<'a> {
    weights: &'a Weights,
    reads: FileReads,
    /// Tensors read ahead for the layer about to load, in file order, by name.
    ahead: Mutex<HashMap<String, Vec<u8>>>,
    /// Behind a lock so a reader thread can load the next layer ([`Layered::run_layers`]).
    hashes: Mutex<Vec<FileHash>>,
    /// [`GAP_READ`], smaller in tests.
    gap_read: u64,
}

/// The sha256 of one weight file, fed by the reads as long as they arrive in file order:
/// a model read layer by layer reads each byte once for both the evaluation and its digest.
struct FileHash {
    sha: Sha256,
    /// Bytes `0..at` are hashed.
    at: u64,
    /// Tensor data ranges in the file, sorted, to tell header and padding from data.
    tensors: Vec<(u64, u64)>,
}

/// A gap before the next read in file order that holds tensor data is read for the digest
/// (a second read of those bytes) only up to this size; past it, hashing waits and the rest
/// of the file is read once more at the end ([`ReadSource::digests`]).
const GAP_READ: u64 = 8 << 20;

impl<'a> ReadSource<'a> {
    pub fn new(weights: &'a Weights) -> Result<ReadSource<'a>, EngineError> {
        let mut hashes: Vec<FileHash> = (0..weights.files.len())
            .map(|_| FileHash {
                sha: Sha256::new(),
                at: 0,
                tensors: Vec::new(),
            })
            .collect();
        for t in &weights.tensors {
            if let Some(h) = hashes.get_mut(t.file) {
                h.tensors.push((t.offset, t.offset.saturating_add(t.len)));
            }
        }
        for h in &mut hashes {
            h.tensors.sort_unstable();
        }
        Ok(ReadSource {
            weights,
            reads: FileReads::open(&weights.files)?,
            ahead: Mutex::new(HashMap::new()),
            hashes: Mutex::new(hashes),
            gap_read: GAP_READ,
        })
    }

    /// `len` bytes at `offset` of file `file` for tensor `what`, hashed when they continue
    /// the file's digest (after reading a gap of header or padding bytes for it).
    fn read(&self, file: usize, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, EngineError> {
        let data = self.reads.read(file, offset, len, what)?;
        let mut hashes = lock(&self.hashes);
        if let Some(h) = hashes.get_mut(file) {
            if offset >= h.at {
                let gap = offset - h.at;
                let data_in_gap = h
                    .tensors
                    .iter()
                    .any(|&(s, e)| s < offset && e > h.at && e > s);
                if gap <= self.gap_read || !data_in_gap {
                    let mut at = h.at;
                    while at < offset {
                        let n = (offset - at).min(GAP_READ);
                        h.sha.update(self.reads.read(file, at, n, what)?);
                        at += n;
                    }
                    h.sha.update(&data);
                    h.at = offset + len;
                }
            }
        }
        Ok(data)
    }

    /// Read the tensors of layer `i` now, in file order, so they are hashed in order
    /// whatever order the engine asks for them in.
    fn read_ahead(&self, i: usize) -> Result<(), EngineError> {
        let mut infos: Vec<_> = self
            .weights
            .tensors
            .iter()
            .filter(|t| layer_of(t.name.as_str()) == Some(i))
            .collect();
        infos.sort_by_key(|t| (t.file, t.offset));
        // what the engine did not ask for of the previous layer is not held past it
        lock(&self.ahead).clear();
        let mut read = HashMap::with_capacity(infos.len());
        for t in infos {
            let data = self.read(t.file, t.offset, t.len, t.name.as_str())?;
            read.insert(t.name.as_str().to_owned(), data);
        }
        *lock(&self.ahead) = read;
        Ok(())
    }

    /// The sha256 of every weight file, after reading (for the digest only) whatever the
    /// run did not read in file order: the bytes after the last tensor, and the rest of a
    /// file whose tensors came out of order. A second call reads nothing more.
    pub fn digests(&self) -> Result<Vec<(PathBuf, Sha256Digest)>, EngineError> {
        let mut hashes = lock(&self.hashes);
        let mut out = Vec::with_capacity(hashes.len());
        for (i, (h, path)) in hashes.iter_mut().zip(&self.weights.files).enumerate() {
            let size = std::fs::metadata(path)
                .map_err(|e| crate::formats::FormatError::io(path, e))?
                .len();
            while h.at < size {
                let n = (size - h.at).min(GAP_READ);
                h.sha
                    .update(self.reads.read(i, h.at, n, "(the file's digest)")?);
                h.at += n;
            }
            out.push((path.clone(), Sha256Digest(h.sha.clone().finalize().into())));
        }
        Ok(out)
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
        let ahead = lock(&self.ahead).remove(name);
        let data = match ahead {
            Some(d) => d,
            None => self.read(info.file, info.offset, info.len, name)?,
        };
        Ok(Some(RawTensor {
            name: name.into(),
            dtype: info.dtype,
            shape,
            data: Cow::Owned(data),
        }))
    }
}

/// `m` locked, also after a thread panicked holding it (the panic reaches the caller
/// through the thread's scope anyway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    /// What each row stacked into a batch beyond the longest sequence adds.
    pub per_row: u64,
    /// Tokens of the longest sequence.
    pub longest: u64,
    /// One layer's weights as loaded (the largest): what reading the next layer while the
    /// current one runs adds, when the budget has room for it.
    pub layer: u64,
}

impl Need {
    /// Rows of sequences to stack into one batch under `max_memory` (beside the states
    /// when they stay in memory): at least the longest sequence, at most
    /// [`MAX_BATCH_ROWS`] unless one sequence is longer.
    fn batch_rows(&self, max_memory: u64, spilled: bool) -> u64 {
        let held = if spilled { 0 } else { self.states };
        let spare = max_memory.saturating_sub(self.minimum.saturating_add(held));
        let extra = spare / self.per_row.max(1);
        self.longest
            .saturating_add(extra)
            .min(MAX_BATCH_ROWS.max(self.longest))
    }
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
    // logits of the kept rows with their copy; plus reference math's dequantized tile (one
    // at a time, freed before the next)
    let act = 4
        * (12 * n * h + 4 * n * f + 2 * heads * n * n + 4 * n * kv + 2 * kept * cfg.vocab as u64)
        + super::stored::TILE_BYTES as u64;
    let states = jobs
        .iter()
        .map(|j| 4 * j.tokens.len() as u64 * h)
        .sum::<u64>();
    Need {
        minimum: BASE_BYTES + outside + layer + largest + act + 4 * n * h,
        states,
        per_row: row_bytes(cfg),
        longest: n,
        layer,
    }
}

/// f32 activations one stacked row adds to a batch through a layer: its state, norms,
/// projections and residuals, the feed-forward's three products and their product, the
/// products' output buffers, and its keys and values.
fn row_bytes(cfg: &ModelConfig) -> u64 {
    let (h, f) = (cfg.hidden as u64, cfg.ffn as u64);
    let kv = (cfg.n_kv_heads * cfg.head_dim) as u64;
    let q = (cfg.n_heads * cfg.head_dim) as u64;
    4 * (8 * h + 3 * q + 5 * f + 4 * kv)
}

/// Rows stacked into one product at most: past about a thousand rows the dequantization of
/// a weight tile is a few percent of the product that uses it, and larger batches would
/// only add activation memory.
const MAX_BATCH_ROWS: u64 = 1024;

/// Bytes of logits computed in one head product at most, before they go to the caller.
const HEAD_BYTES: u64 = 128 << 20;

/// Hidden states of every job between layers.
enum States {
    /// Each job's rows; `blocks[start]` is the output of the batch of jobs `start..end` they
    /// are views of, `(end, output)`, so the next layer takes the batch as it is rather
    /// than stacking a copy of its rows.
    Memory {
        rows: Vec<Option<Tensor>>,
        blocks: HashMap<usize, (usize, Tensor)>,
    },
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
    /// The output `y` of the batch of jobs `g`, `sizes[i]` rows each, in order.
    fn put_batch(
        &mut self,
        g: std::ops::Range<usize>,
        sizes: &[usize],
        y: Tensor,
    ) -> Result<(), EngineError> {
        let mut at = 0;
        for (j, &n) in g.clone().zip(sizes) {
            self.put(j, y.narrow(0, at, n)?)?;
            at += n;
        }
        if let States::Memory { blocks, .. } = self {
            blocks.insert(g.start, (g.end, y));
        }
        Ok(())
    }

    /// The stacked states `[sum of sizes, hidden]` of the batch of jobs `g`.
    fn take_batch(
        &mut self,
        g: std::ops::Range<usize>,
        sizes: &[usize],
        device: &Device,
    ) -> Result<Tensor, EngineError> {
        if let States::Memory { rows, blocks } = self {
            if let Some((end, y)) = blocks.remove(&g.start) {
                if end == g.end && g.clone().all(|j| rows[j].is_some()) {
                    for j in g {
                        rows[j] = None;
                    }
                    return Ok(y);
                }
            }
        }
        let mut parts = Vec::with_capacity(g.len());
        for (j, &n) in g.zip(sizes) {
            parts.push(self.take(j, n, device)?);
        }
        if parts.len() == 1 {
            parts.pop().ok_or(EngineError::EmptyInput)
        } else {
            Ok(Tensor::cat(&parts, 0)?)
        }
    }

    fn put(&mut self, j: usize, x: Tensor) -> Result<(), EngineError> {
        match self {
            States::Memory { rows, .. } => rows[j] = Some(x),
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
            States::Memory { rows, blocks } => {
                // its batch is no longer taken whole
                blocks.retain(|&start, (end, _)| !(start..*end).contains(&j));
                rows[j]
                    .take()
                    .ok_or_else(|| EngineError::BadParam(format!("sequence {j} has no state")))
            }
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
    /// Consecutive jobs stacked into one batch through each layer.
    groups: Vec<std::ops::Range<usize>>,
    /// Consecutive jobs whose kept rows go through the head in one product.
    head_groups: Vec<std::ops::Range<usize>>,
    /// The budget holds a second layer: the next one is read, hashed and loaded on another
    /// thread while the current one runs.
    read_ahead: bool,
    /// The last layer takes only the kept rows past attention (not while a capture wants
    /// the inputs of every row's products).
    trim_last: bool,
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
        // the layer read ahead comes after the states in the budget (spilling them costs
        // more than waiting for each layer's reads)
        let held = if spill { 0 } else { need.states };
        let read_ahead =
            need.minimum.saturating_add(held).saturating_add(need.layer) <= budget.max_memory;
        let need = Need {
            minimum: need
                .minimum
                .saturating_add(if read_ahead { need.layer } else { 0 }),
            ..need
        };
        let rows = need.batch_rows(budget.max_memory, spill);
        let groups = groups_of(jobs.iter().map(|j| j.tokens.len() as u64), rows);
        let vocab = cfg.vocab as u64;
        let head_rows = (HEAD_BYTES / (4 * vocab).max(1)).min(rows);
        let head_groups = groups_of(
            jobs.iter()
                .map(|j| j.tokens.len().saturating_sub(j.keep_from) as u64),
            head_rows,
        );
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
            States::Memory {
                rows: vec![None; jobs.len()],
                blocks: HashMap::new(),
            }
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
            groups,
            head_groups,
            read_ahead,
            trim_last: true,
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
        if capture.is_some() && self.layers_done < self.model.config().n_layers {
            self.trim_last = false;
        }
        self.model.set_capture(capture);
    }

    /// Run every job through every layer, reading each layer's weights once and dropping
    /// them before the next. The jobs go through a layer in batches: their hidden states
    /// stacked into one matrix, so each weight tile serves all of their rows. When the
    /// budget has room for it, layer L + 1 is read, hashed and loaded on another thread
    /// while layer L runs (one layer ahead at most), in the same order as without it, so
    /// the digests and the errors are the same.
    pub fn run_layers(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), EngineError> {
        let layers = self.model.config().n_layers;
        let total = self.jobs.len();
        let spilled = self.spilled();
        let tick = move |layer, sequences| Progress {
            layer,
            layers,
            sequences,
            total_sequences: total,
            spilled,
        };
        progress(tick(self.layers_done, 0));
        let first = self.layers_done;
        let loader = self.model.layer_loader();
        let Layered {
            model,
            src,
            jobs,
            states,
            device,
            layers_done,
            groups,
            read_ahead,
            trim_last,
            ..
        } = self;
        let trim_last = *trim_last;
        let src: &ReadSource<'_> = src;
        let load = |l: usize| -> Result<LayerWeights, EngineError> {
            src.read_ahead(l)?;
            loader.load(src, l)
        };
        let mut run = |w: LayerWeights, l: usize| -> Result<(), EngineError> {
            for g in groups.iter() {
                let last = trim_last && l + 1 == layers;
                run_group(model, jobs, states, device, &w, g.clone(), last)?;
                progress(tick(l, g.end));
            }
            drop(w);
            *layers_done += 1;
            Ok(())
        };
        if !*read_ahead {
            for l in first..layers {
                run(load(l)?, l)?;
            }
        } else {
            std::thread::scope(|s| -> Result<(), EngineError> {
                // a rendezvous channel: the reader holds one loaded layer at most while it
                // waits for the current one to finish
                let (tx, rx) = mpsc::sync_channel(0);
                s.spawn(move || {
                    for l in first..layers {
                        let w = load(l);
                        let failed = w.is_err();
                        // a closed channel: the run stopped on an error of its own
                        if tx.send(w).is_err() || failed {
                            return;
                        }
                    }
                    // the files' remaining bytes are hashed while the last layer runs; an
                    // error here comes again, to the caller, from `digests` after the run
                    let _ = src.digests();
                });
                for l in first..layers {
                    let w = rx.recv().map_err(|_| {
                        EngineError::BadParam(format!("the reader of layer {l} stopped"))
                    })??;
                    run(w, l)?;
                }
                Ok(())
            })?;
        }
        progress(tick(layers, total));
        Ok(())
    }

    /// Consecutive jobs whose kept logits [`Layered::logits`] computes in one product.
    pub fn logit_groups(&self) -> Vec<std::ops::Range<usize>> {
        self.head_groups.clone()
    }

    /// Logits `[n - keep_from, vocab]` of each job of `g` (one of
    /// [`Layered::logit_groups`]) after [`Layered::run_layers`].
    pub fn logits(&mut self, g: std::ops::Range<usize>) -> Result<Vec<Tensor>, EngineError> {
        let mut kept = Vec::with_capacity(g.len());
        let mut sizes = Vec::with_capacity(g.len());
        for j in g {
            let job = self
                .jobs
                .get(j)
                .ok_or_else(|| EngineError::BadParam(format!("no sequence {j}")))?;
            let n = job.tokens.len();
            let from = job.keep_from.min(n);
            let trimmed = self.trim_last && self.layers_done == self.model.config().n_layers;
            // the last layer left only the kept rows
            let (rows, from) = if trimmed { (n - from, 0) } else { (n, from) };
            let x = self.states.take(j, rows, &self.device)?;
            sizes.push(rows - from);
            if from < rows {
                kept.push(x.narrow(0, from, rows - from)?);
            }
        }
        let vocab = self.model.config().vocab;
        let all = match kept.len() {
            0 => None,
            1 => Some(kept.remove(0)),
            _ => Some(Tensor::cat(&kept, 0)?),
        };
        drop(kept);
        let logits = match all {
            Some(x) => Some(self.model.head(&x, Logits::All)?),
            None => None,
        };
        let mut out = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for n in sizes {
            out.push(match &logits {
                Some(t) if n > 0 => t.narrow(0, at, n)?,
                _ => Tensor::zeros((0, vocab), candle_core::DType::F32, &self.device)?,
            });
            at += n;
        }
        Ok(out)
    }

    /// The sha256 of each weight file, from the bytes the run read (see
    /// [`ReadSource::digests`]); call it after the run, so each byte is read once.
    pub fn digests(&self) -> Result<Vec<(PathBuf, Sha256Digest)>, EngineError> {
        self.src.digests()
    }
}

/// Jobs `g` through one layer as one batch.
fn run_group(
    model: &mut Model,
    jobs: &[Job],
    states: &mut States,
    device: &Device,
    w: &LayerWeights,
    g: std::ops::Range<usize>,
    last: bool,
) -> Result<(), EngineError> {
    let mut segments = Vec::new();
    let mut caches = Vec::with_capacity(g.len());
    let mut at = 0;
    for (c, j) in g.clone().enumerate() {
        let job = &jobs[j];
        let n = job.tokens.len();
        caches.push(model.layer_cache()?);
        let halves = if job.split && n > 1 {
            vec![n / 2, n - n / 2]
        } else {
            vec![n]
        };
        for len in halves {
            segments.push(Segment {
                cache: c,
                rows: at..at + len,
            });
            at += len;
        }
    }
    let sizes: Vec<usize> = jobs[g.clone()].iter().map(|j| j.tokens.len()).collect();
    let x = states.take_batch(g.clone(), &sizes, device)?;
    // after the last layer only the kept rows are wanted
    let keep: Option<Vec<_>> = last.then(|| {
        let mut at = 0;
        g.clone()
            .map(|j| {
                let job = &jobs[j];
                let n = job.tokens.len();
                at += n;
                at - n + job.keep_from.min(n)..at
            })
            .collect()
    });
    let y = model.run_layer_batch(w, &mut caches, &segments, &x, keep.as_deref())?;
    drop((x, caches));
    let sizes: Vec<usize> = jobs[g.clone()]
        .iter()
        .map(|j| {
            let n = j.tokens.len();
            if last {
                n - j.keep_from.min(n)
            } else {
                n
            }
        })
        .collect();
    states.put_batch(g, &sizes, y)
}

/// Consecutive runs of jobs whose `sizes` sum to at most `cap` rows (one job at least).
fn groups_of(sizes: impl Iterator<Item = u64>, cap: u64) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut sum, mut end) = (0usize, 0u64, 0usize);
    for (j, n) in sizes.enumerate() {
        if j > start && sum.saturating_add(n) > cap {
            groups.push(start..j);
            (start, sum) = (j, 0);
        }
        sum = sum.saturating_add(n);
        end = j + 1;
    }
    if end > start {
        groups.push(start..end);
    }
    groups
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_memory_cgroup_bounds_the_available_memory() {
        let files = |p: &str| -> Option<String> {
            match p {
                "/sys/fs/cgroup/memory/ci/job/memory.limit_in_bytes" => Some("3221225472\n".into()),
                "/sys/fs/cgroup/memory/ci/job/memory.usage_in_bytes" => Some("1073741824\n".into()),
                "/sys/fs/cgroup/runner/memory.max" => Some("2147483648\n".into()),
                "/sys/fs/cgroup/runner/memory.current" => Some("536870912\n".into()),
                "/sys/fs/cgroup/free/memory.max" => Some("max\n".into()),
                "/sys/fs/cgroup/memory/big/memory.limit_in_bytes" => {
                    Some("9223372036854771712\n".into())
                }
                _ => None,
            }
        };
        let v1 = "4:memory:/ci/job\n3:cpuset:/\n0::/\n";
        assert_eq!(super::cgroup_room(v1, &files), Some(2 << 30));
        assert_eq!(super::cgroup_room("0::/runner\n", &files), Some(1536 << 20));
        assert_eq!(super::cgroup_room("0::/free\n", &files), None);
        assert_eq!(super::cgroup_room("4:memory:/big\n", &files), None);
        assert_eq!(super::cgroup_room("garbage", &files), None);
        let meminfo = "MemTotal: 100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(super::mem_available(meminfo), Some(2 << 20));
    }

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

    #[test]
    fn jobs_are_grouped_into_batches_within_the_row_cap() {
        let g = groups_of([256u64, 256, 256, 100, 900, 2000, 10].into_iter(), 1024);
        assert_eq!(g, vec![0..4, 4..5, 5..6, 6..7]);
        assert_eq!(
            groups_of(std::iter::empty(), 1024),
            Vec::<std::ops::Range<usize>>::new()
        );
        // a cap below one job still gives every job a group of its own
        assert_eq!(groups_of([5u64, 5].into_iter(), 1), vec![0..1, 1..2]);
    }

    #[test]
    fn batches_grow_with_the_budget_up_to_the_cap() {
        let need = Need {
            minimum: 1000,
            states: 500,
            per_row: 10,
            longest: 256,
            layer: 300,
        };
        // nothing to spare: one sequence at a time
        assert_eq!(need.batch_rows(1500, false), 256);
        assert_eq!(need.batch_rows(1000, true), 256);
        assert_eq!(need.batch_rows(1500 + 100 * 10, false), 356);
        assert_eq!(need.batch_rows(u64::MAX, false), MAX_BATCH_ROWS);
    }

    #[test]
    fn weights_are_hashed_as_they_are_read_in_file_order() {
        use sha2::{Digest, Sha256};
        // a checkpoint of two layers and an output head stored after them
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let bytes: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let t = |name: &str, offset: u64, len: u64| crate::formats::TensorInfo {
            name: name.into(),
            dtype: crate::formats::DType::F32,
            shape: vec![len / 4],
            file: 0,
            offset,
            len,
        };
        let weights = Weights::new(
            crate::formats::WeightFormat::Gguf,
            vec![path.clone()],
            Vec::new(),
            vec![
                t("token_embd.weight", 100, 400),
                t("blk.0.b.weight", 900, 400),
                t("blk.0.a.weight", 500, 400),
                t("blk.1.a.weight", 1300, 800),
                t("output.weight", 2100, 1600),
            ],
            Vec::new(),
            None,
        );
        let mut src = ReadSource::new(&weights).unwrap();
        // the output head is past the layers: hashing waits for it rather than read ahead
        src.gap_read = 0;
        // the engine's order: embedding, output head, then each layer in its own order
        for name in ["token_embd.weight", "output.weight"] {
            src.tensor(name).unwrap().unwrap();
        }
        for i in 0..2 {
            src.read_ahead(i).unwrap();
        }
        for name in ["blk.0.b.weight", "blk.0.a.weight", "blk.1.a.weight"] {
            let got = src.tensor(name).unwrap().unwrap();
            let info = weights.tensor(name).unwrap();
            let want = &bytes[info.offset as usize..(info.offset + info.len) as usize];
            assert_eq!(&got.data[..], want, "{name}");
        }
        let d = src.digests().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1 .0, <[u8; 32]>::from(Sha256::digest(&bytes)));
    }
}
