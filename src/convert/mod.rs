//! Convert and quantize: Hugging Face safetensors (single or sharded) or PyTorch checkpoints
//! → GGUF that llama.cpp loads, GGUF → GGUF requantization, and GGUF → safetensors (a
//! loadable Hugging Face directory, or one weights file).
//!
//! A stage of the pipeline (import → scan → **convert/quantize** → verify → policy →
//! parity → sign). It works on the [`Checkpoint`] view of `formats` and never parses files itself:
//! - [`arch`]: architectures, hyper-parameters, tensor names, q/k permutation, shape checks;
//! - [`recipe`]: the per-tensor types of llama.cpp's quantization mixtures;
//! - [`vocab`]: tokenizer.json ↔ `tokenizer.ggml.*`;
//! - [`meta`]: `general.*` keys from config and model card;
//! - [`plan`]: checkpoint + options → every output tensor and key, all checks up front;
//! - [`exec`]: chunked, parallel, ordered, bounded-memory writing (through the streaming
//!   GGUF and safetensors writers of `formats`) to a temporary file renamed into place;
//! - [`split`]: GGUF split sets (`--split-max-size`) and shares of a conversion spread
//!   over N processes (`--shard I/N`); [`merge`] checks and assembles the shares;
//! - [`budget`]: the size-budget mixes' candidate types, quantization errors and choice
//!   (`--target-bpw`, `--max-size`; the engine half is in `pipeline::budget`);
//! - [`elem`]: stored values ↔ f32 rows, through [`quant`], the ggml block-format kernels
//!   (quantize and dequantize rows of `f32`, on all cores).
//!
//! Nothing here prints: progress goes through [`Progress`], results come back as a
//! [`Summary`] that `cli::convert` renders.

pub mod arch;
pub mod budget;
pub mod elem;
pub mod error;
pub mod exec;
pub mod gather;
pub mod merge;
pub mod meta;
pub mod moe;
pub mod plan;
pub mod quant;
pub mod recipe;
mod report;
pub mod split;
pub mod vocab;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

pub use error::ConvertError;
pub use recipe::{FileType, RecipeOptions};

use crate::formats::imatrix::Imatrix;
use crate::formats::{Checkpoint, WeightFormat};
use crate::types::Sha256Digest;

/// What the output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// One GGUF file.
    Gguf,
    /// One safetensors file (weights only).
    SafetensorsFile,
    /// A Hugging Face directory: model.safetensors, config.json, tokenizer files.
    HfDir,
}

impl OutputFormat {
    /// The format an output path implies: `.gguf` a GGUF file, `.safetensors` one weights
    /// file, anything else a Hugging Face directory. `--format` overrides: `gguf` makes any
    /// path a GGUF file, `safetensors` makes a non-`.safetensors` path a directory.
    pub fn for_output(out: &Path, flag: Option<&str>) -> Result<OutputFormat, ConvertError> {
        let ext = out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match (flag, ext.as_deref()) {
            (Some("gguf"), _) | (None, Some("gguf")) => Ok(OutputFormat::Gguf),
            (Some("safetensors") | None, Some("safetensors")) => Ok(OutputFormat::SafetensorsFile),
            (Some("safetensors"), Some("gguf")) => Err(ConvertError::Options(format!(
                "--format safetensors with an output named `{}`",
                out.display()
            ))),
            (Some("safetensors") | None, _) => Ok(OutputFormat::HfDir),
            (Some(other), _) => Err(ConvertError::Options(format!(
                "--format `{other}` is not gguf or safetensors"
            ))),
        }
    }
}

/// How to convert.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--type`: the target file type; `None` picks a default (see the plan).
    pub file_type: Option<FileType>,
    /// Worker threads for conversion (at least 1).
    pub threads: usize,
    pub recipe: RecipeOptions,
    /// `--allow-requantize`
    pub allow_requantize: bool,
    /// `--pre-tokenizer NAME`: the llama.cpp pre-tokenizer to write.
    pub pre_tokenizer: Option<String>,
    /// `--name`: `general.name`.
    pub name: Option<String>,
    /// `--source-url`: `general.source.url`.
    pub source_url: Option<String>,
    /// `--quantized-by`: `general.quantized_by` (default `modelgate`).
    pub quantized_by: Option<String>,
    /// `--imatrix FILE`: the importance matrix the quantizers weight their errors by.
    pub imatrix: Option<Arc<ImatrixInput>>,
}

/// An importance matrix given to a conversion, with the facts the report records.
#[derive(Debug)]
pub struct ImatrixInput {
    pub path: PathBuf,
    /// SHA-256 of the file as read.
    pub sha256: Sha256Digest,
    pub matrix: Imatrix,
}

impl ImatrixInput {
    /// Read and check an imatrix file (llama.cpp's GGUF or legacy `.dat`); NaN, infinite or
    /// negative sums and malformed files are refused by the formats layer.
    pub fn read(path: &Path) -> Result<ImatrixInput, ConvertError> {
        let map = crate::formats::Mapped::open(path).map_err(ConvertError::Imatrix)?;
        let matrix = Imatrix::parse_bytes(path, map.bytes()).map_err(ConvertError::Imatrix)?;
        Ok(ImatrixInput {
            path: path.to_path_buf(),
            sha256: Sha256Digest::of(map.bytes()),
            matrix,
        })
    }

    /// What the summary (and so the report and BOM) records.
    pub fn record(&self) -> ImatrixRecord {
        ImatrixRecord {
            path: self.path.clone(),
            sha256: self.sha256.to_hex(),
            entries: self.matrix.entries.len(),
            datasets: self.matrix.datasets.clone(),
            chunk_count: self.matrix.chunk_count,
            chunk_size: self.matrix.chunk_size,
        }
    }
}

/// The importance matrix a conversion used, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct ImatrixRecord {
    pub path: PathBuf,
    pub sha256: String,
    /// Weight matrices it covers.
    pub entries: usize,
    /// Its calibration texts (`imatrix.datasets`).
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            file_type: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            recipe: RecipeOptions::default(),
            allow_requantize: false,
            pre_tokenizer: None,
            name: None,
            source_url: None,
            quantized_by: None,
            imatrix: None,
        }
    }
}

/// Progress reports from a running conversion, in input bytes.
pub trait Progress: Sync {
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Tensors and bytes of one output type.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeCount {
    pub tensors: u64,
    pub bytes: u64,
}

/// What a conversion did: printed as a table or as `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub source: PathBuf,
    pub source_format: String,
    pub output: PathBuf,
    pub format: OutputFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// The target (`Q4_K_M`), for GGUF outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
    pub tensors: u64,
    /// Per output type: tensor count and data bytes.
    pub types: BTreeMap<String, TypeCount>,
    pub parameters: u64,
    /// Tensor data read.
    pub bytes_in: u64,
    /// Bytes written (file, or all files of the directory).
    pub bytes_out: u64,
    /// Tensor data bits per parameter of the output.
    pub bits_per_weight: f64,
    pub seconds: f64,
    pub threads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_tokenizer: Option<plan::PreChoice>,
    /// Tensors whose preferred type did not fit their rows.
    pub fallbacks: Vec<recipe::Fallback>,
    /// Things the user should know (defaults taken, tensors dropped, warnings).
    pub notes: Vec<String>,
    /// The files of a split or sharded GGUF output (empty for one file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<split::PartSummary>,
    /// What a sharded conversion recorded for the merge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<split::ShardSummary>,
    /// The importance matrix the quantizers used (`--imatrix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imatrix: Option<ImatrixRecord>,
}

/// Open a conversion's source, refusing a PyTorch file whose tensors cannot be read.
fn open_source(src: &Path) -> Result<Checkpoint, ConvertError> {
    let ckpt = Checkpoint::open(src)?;
    if ckpt.weights.format == WeightFormat::PyTorch && ckpt.weights.tensors.is_empty() {
        return Err(ConvertError::Options(format!(
            "`{}` holds no tensors modelgate can read",
            src.display()
        )));
    }
    Ok(ckpt)
}

/// The summary of writing `tensors` (all of the plan, or the parts this run wrote).
#[allow(clippy::too_many_arguments)] // two callers, each passing what it measured
fn summarise(
    src: &Path,
    source_format: String,
    out: &Path,
    format: OutputFormat,
    plan: &plan::Plan,
    tensors: &[plan::Planned],
    written: &exec::Written,
    started: Instant,
    opts: &Options,
) -> Summary {
    let mut types: BTreeMap<String, TypeCount> = BTreeMap::new();
    for t in tensors {
        let e = types.entry(t.ty.name().to_owned()).or_default();
        e.tensors += 1;
        e.bytes += t.bytes;
    }
    let parameters: u64 = tensors.iter().map(plan::Planned::elements).sum();
    Summary {
        source: src.to_path_buf(),
        source_format,
        output: out.to_path_buf(),
        format,
        architecture: plan.architecture.clone(),
        file_type: plan.file_type.map(|f| f.name().to_owned()),
        tensors: tensors.len() as u64,
        types,
        parameters,
        bytes_in: written.bytes_in,
        bytes_out: written.bytes_out,
        bits_per_weight: if parameters == 0 {
            0.0
        } else {
            written.tensor_bytes as f64 * 8.0 / parameters as f64
        },
        seconds: started.elapsed().as_secs_f64(),
        threads: opts.threads,
        pre_tokenizer: plan.pre_tokenizer.clone(),
        fallbacks: plan.fallbacks.clone(),
        notes: plan.notes.clone(),
        parts: Vec::new(),
        shard: None,
        imatrix: opts.imatrix.as_ref().map(|m| m.record()),
    }
}

/// The options as the plan sees them: the recipe knows whether an imatrix is given. A
/// target whose recipe picks a type modelgate cannot write yet is refused here.
fn effective(opts: &Options) -> Result<Options, ConvertError> {
    if let Some(ft) = opts.file_type.filter(|f| !f.is_built()) {
        let missing: Vec<&str> = ft.missing_types().iter().map(|t| t.name()).collect();
        return Err(ConvertError::Options(format!(
            "{ft} is not built yet: modelgate has no quantizer for {}",
            missing.join(", ")
        )));
    }
    let mut o = opts.clone();
    o.recipe.has_imatrix = opts.imatrix.is_some();
    Ok(o)
}

/// Each planned tensor's importance (`in_sum2 / count` per column, expert slices
/// concatenated), checked against the model as `llama-quantize` checks it, and more
/// strictly: an imatrix entry that names no tensor of the model, or whose column count
/// differs from the tensor's (the token embedding excepted, as in llama.cpp: it is looked
/// up by rows, not multiplied), means the imatrix belongs to another model. A tensor whose
/// type needs an imatrix and has no entry is refused.
pub(crate) fn importance_for(
    plan: &plan::Plan,
    opts: &Options,
) -> Result<exec::Importance, ConvertError> {
    let mut out = exec::Importance::new();
    let Some(im) = &opts.imatrix else {
        if let Some(t) = plan
            .tensors
            .iter()
            .find(|t| recipe::requires_imatrix(&t.name, t.ty))
        {
            return Err(ConvertError::NeedsImatrix {
                tensor: t.name.clone(),
                ty: t.ty.name().to_owned(),
            });
        }
        return Ok(out);
    };
    let names: std::collections::BTreeSet<&str> =
        plan.tensors.iter().map(|t| t.name.as_str()).collect();
    let strangers: Vec<&str> = im
        .matrix
        .entries
        .keys()
        .map(String::as_str)
        .filter(|n| !names.contains(n))
        .collect();
    if !strangers.is_empty() {
        return Err(ConvertError::ImatrixMismatch {
            path: im.path.clone(),
            fault: format!(
                "{} of its {} entries name no tensor of the model (`{}`{})",
                strangers.len(),
                im.matrix.entries.len(),
                strangers[0],
                if strangers.len() > 1 { ", ..." } else { "" }
            ),
        });
    }
    for t in &plan.tensors {
        if !t.ty.is_quantized() {
            continue;
        }
        let Some(v) = im.matrix.importance(&t.name) else {
            if recipe::requires_imatrix(&t.name, t.ty) {
                return Err(ConvertError::ImatrixMismatch {
                    path: im.path.clone(),
                    fault: format!(
                        "it has no entry for `{}`, which {} needs",
                        t.name,
                        t.ty.name()
                    ),
                });
            }
            continue;
        };
        // A stacked expert tensor [experts, rows, columns] has one slice per expert.
        let slices = if t.shape.len() == 3 { t.shape[0] } else { 1 };
        let want = t.row_len().saturating_mul(slices);
        if v.len() as u64 != want {
            if t.name == "token_embd.weight" {
                continue;
            }
            return Err(ConvertError::ImatrixMismatch {
                path: im.path.clone(),
                fault: format!(
                    "`{}` has {} values, but the tensor has {} columns{}",
                    t.name,
                    v.len(),
                    t.row_len(),
                    if slices > 1 {
                        format!(" in each of {slices} experts")
                    } else {
                        String::new()
                    }
                ),
            });
        }
        out.insert(t.name.clone(), v);
    }
    Ok(out)
}

/// Convert `src` into `out`. Everything that can be wrong with the input is found before
/// `out` (or anything beside it) is created; the output appears only when complete.
pub fn convert(
    src: &Path,
    out: &Path,
    format: OutputFormat,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary, ConvertError> {
    let started = Instant::now();
    let ckpt = open_source(src)?;
    let source_format = ckpt.weights.format.as_str().to_owned();
    let plan = plan::plan(&ckpt, &effective(opts)?, format)?;
    let importance = importance_for(&plan, opts)?;
    let target = exec::Target::new(out, format == OutputFormat::HfDir)?;
    let written = match &target {
        exec::Target::File { tmp, .. } => {
            let path = tmp.path().to_path_buf();
            let mut f = tmp
                .as_file()
                .try_clone()
                .map_err(|e| ConvertError::write(&path, e))?;
            exec::write_tensors(
                &plan,
                &importance,
                ckpt,
                src,
                &mut f,
                &path,
                opts.threads,
                progress,
            )?
        }
        exec::Target::Dir { tmp, .. } => {
            let weights = tmp.path().join("model.safetensors");
            let mut f =
                std::fs::File::create(&weights).map_err(|e| ConvertError::write(&weights, e))?;
            let mut w = exec::write_tensors(
                &plan,
                &importance,
                ckpt,
                src,
                &mut f,
                &weights,
                opts.threads,
                progress,
            )?;
            for (name, bytes) in &plan.side_files {
                let p = tmp.path().join(name);
                std::fs::write(&p, bytes).map_err(|e| ConvertError::write(&p, e))?;
                w.bytes_out += bytes.len() as u64;
            }
            w
        }
    };
    target.commit()?;
    Ok(summarise(
        src,
        source_format,
        out,
        format,
        &plan,
        &plan.tensors,
        &written,
        started,
        opts,
    ))
}
