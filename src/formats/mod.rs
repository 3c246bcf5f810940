//! Hostile-safe readers for checkpoint files: GGUF, safetensors (single and sharded),
//! PyTorch pickles and Hugging Face model directories, and the chat templates and tokenizer
//! steps a model carries.
//!
//! This is the first stage of the pipeline and the only module that touches checkpoint
//! bytes. Every other stage works on the [`Checkpoint`] view it returns: tensor names,
//! dtypes, shapes and byte ranges, metadata, the model's config, tokenizer, card and
//! licence files. Every file is treated as hostile: sizes are capped, arithmetic is checked
//! and every count is bounded by the bytes left in the file before anything is allocated.
//! Weight files are memory-mapped, so opening a checkpoint reads headers only.

pub mod blocks;
pub mod dtype;
pub mod experts;
pub mod gguf;
pub mod hf;
pub mod imatrix;
pub mod iq1;
pub mod iq2;
pub mod iq3;
pub mod iq_grids;
mod mmap;
pub mod mxfp4;
pub mod pickle;
pub mod pytorch;
pub mod safetensors;
pub mod sentencepiece;
pub mod template;
pub mod tokenizer_file;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use dtype::{DType, GgmlType};
pub use gguf::MetaValue;
pub use mmap::{FileReads, Mapped, MappedSlice};

use crate::types::TensorName;

/// An error reading a checkpoint. Every message names the file and the fault.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not what it claims to be: truncated, lying header, out-of-range offset.
    #[error("`{path}`: {fault}")]
    Malformed { path: PathBuf, fault: String },
    /// The file is well formed but uses something modelgate does not read.
    #[error("`{path}`: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    /// Nothing at the path looks like a checkpoint.
    #[error("`{path}`: {why}")]
    NotACheckpoint { path: PathBuf, why: String },
}

impl FormatError {
    pub fn malformed(path: &Path, fault: impl Into<String>) -> Self {
        FormatError::Malformed {
            path: path.to_owned(),
            fault: fault.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            FormatError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "check the path",
                std::io::ErrorKind::PermissionDenied => "give a file this user can read",
                _ => return None,
            },
            FormatError::Malformed { .. } => {
                "the file is damaged or truncated; download it again and compare its sha256 with the publisher's"
            }
            FormatError::Unsupported { .. } => {
                "modelgate reads GGUF, safetensors (single or sharded) and PyTorch checkpoints"
            }
            FormatError::NotACheckpoint { .. } => {
                "give a GGUF or safetensors file, or a Hugging Face model directory"
            }
        })
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FormatError::Io { path, .. }
            | FormatError::Malformed { path, .. }
            | FormatError::Unsupported { path, .. }
            | FormatError::NotACheckpoint { path, .. } => path,
        }
    }
}

/// What kind of weight file holds the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightFormat {
    Gguf,
    Safetensors,
    /// Several safetensors files tied together by `model.safetensors.index.json`.
    SafetensorsSharded,
    /// A PyTorch pickle checkpoint (zip archive or legacy file). Its tensors are only read
    /// through the pickle scanner, never by unpickling.
    PyTorch,
}

impl WeightFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightFormat::Gguf => "gguf",
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::SafetensorsSharded => "safetensors-sharded",
            WeightFormat::PyTorch => "pytorch",
        }
    }
}

/// One tensor: where its bytes are and how to read them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorInfo {
    pub name: TensorName,
    pub dtype: DType,
    /// Dimensions outermost first (row-major, as safetensors and PyTorch write them).
    /// GGUF stores `ne[0]` fastest-moving; the GGUF reader reverses it into this order.
    pub shape: Vec<u64>,
    /// Index into [`Weights::files`].
    pub file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: u64,
    /// Length of the tensor's data in bytes.
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements (checked when the file was read, so it cannot overflow).
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The tensors of a checkpoint and the metadata stored beside them.
#[derive(Debug)]
pub struct Weights {
    pub format: WeightFormat,
    /// Weight files, absolute or as given; [`TensorInfo::file`] indexes this.
    pub files: Vec<PathBuf>,
    pub tensors: Vec<TensorInfo>,
    /// GGUF key/values in file order, or safetensors `__metadata__` entries as strings.
    pub metadata: Vec<(String, MetaValue)>,
    /// GGUF version and alignment, for GGUF weights.
    pub gguf: Option<gguf::GgufLayout>,
    maps: Vec<Mapped>,
}

impl Weights {
    pub fn new(
        format: WeightFormat,
        files: Vec<PathBuf>,
        maps: Vec<Mapped>,
        tensors: Vec<TensorInfo>,
        metadata: Vec<(String, MetaValue)>,
        gguf: Option<gguf::GgufLayout>,
    ) -> Self {
        Weights {
            format,
            files,
            tensors,
            metadata,
            gguf,
            maps,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name.as_str() == name)
    }

    /// The raw bytes of a tensor, borrowed from the memory map. Offsets were checked
    /// against the file when it was opened; this checks again because `TensorInfo` is
    /// public and could have been edited.
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8], FormatError> {
        let path = self
            .files
            .get(t.file)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("?"));
        let map = self.maps.get(t.file).ok_or_else(|| {
            FormatError::malformed(path, format!("tensor `{}` names no file", t.name))
        })?;
        let bytes = map.bytes();
        let end = t.offset.checked_add(t.len);
        match end {
            Some(end) if end <= bytes.len() as u64 => Ok(&bytes[t.offset as usize..end as usize]),
            _ => Err(FormatError::malformed(
                path,
                format!(
                    "tensor `{}` data {}+{} lies beyond the file ({} bytes)",
                    t.name,
                    t.offset,
                    t.len,
                    bytes.len()
                ),
            )),
        }
    }

    /// `part`, bytes borrowed from one of this checkpoint's maps (as
    /// [`Weights::tensor_data`] hands out), as a range that keeps that map open.
    pub fn share(&self, part: &[u8]) -> Option<MappedSlice> {
        self.maps.iter().find_map(|m| m.share(part))
    }

    /// Fault every weight file's map in now ([`Mapped::prefault`]): for a run that reads
    /// all of the weights and has the memory to keep them.
    pub fn prefault(&self) {
        for m in &self.maps {
            m.prefault();
        }
    }

    /// Bytes mapped over all weight files.
    pub fn mapped_bytes(&self) -> u64 {
        self.maps.iter().map(|m| m.bytes().len() as u64).sum()
    }

    /// A metadata value by key.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Total parameter count (elements over all tensors).
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(TensorInfo::elements).sum()
    }
}

/// What kind of path was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// A single weight file.
    File,
    /// A Hugging Face-style model directory.
    Directory,
}

/// A file that belongs to a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    /// Relative to the checkpoint root (the directory, or the file's parent).
    pub path: PathBuf,
    pub size: u64,
}

/// Architecture hyper-parameters, from config.json or GGUF `{arch}.*` keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelParams {
    /// `llama`, `mistral`, `qwen2`, `qwen3`, ... (GGUF `general.architecture` or config `model_type`).
    pub architecture: Option<String>,
    pub block_count: Option<u64>,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub feed_forward_length: Option<u64>,
    pub head_count: Option<u64>,
    pub head_count_kv: Option<u64>,
    pub head_dim: Option<u64>,
    pub vocab_size: Option<u64>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
}

/// What a tokenizer declares, from tokenizer.json + tokenizer_config.json or GGUF
/// `tokenizer.ggml.*` keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TokenizerSummary {
    /// `gpt2` (byte-level BPE), `llama` (SentencePiece), `BPE`, `Unigram`, ...
    pub model: String,
    /// Pre-tokenizer name (GGUF `tokenizer.ggml.pre`) or kind (tokenizer.json).
    pub pre: Option<String>,
    pub vocab_size: u64,
    pub merges: u64,
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    pub unk: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    pub add_bos: Option<bool>,
    pub chat_template: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpecialToken {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A checkpoint as modelgate sees it: a weight file, or a model directory with its weights,
/// config, tokenizer, card and licence files.
#[derive(Debug)]
pub struct Checkpoint {
    /// The path that was opened.
    pub path: PathBuf,
    pub layout: Layout,
    /// Every file considered part of the checkpoint, sorted by path.
    pub files: Vec<FileEntry>,
    pub weights: Weights,
    /// The directory's non-weight files, when a directory was opened.
    pub dir: Option<hf::HfDir>,
}

impl Checkpoint {
    /// Open a file or a model directory. Reads headers only; tensor data stays mapped.
    pub fn open(path: &Path) -> Result<Checkpoint, FormatError> {
        let meta = fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
        if meta.is_dir() {
            return hf::open_dir(path);
        }
        let weights = open_weight_file(path)?;
        // The first file of a GGUF split set stands for the whole set.
        let weights = if weights.format == WeightFormat::Gguf {
            gguf::split::open_set(path, weights)?
        } else {
            weights
        };
        let name = path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| path.to_owned());
        let mut files = vec![FileEntry {
            path: name,
            size: meta.len(),
        }];
        // A sharded index names its shards; list them too so hashes and sizes cover them.
        let listed = match weights.format {
            WeightFormat::SafetensorsSharded => 0,
            // A GGUF split set: the opened file is listed already.
            WeightFormat::Gguf => 1,
            _ => weights.files.len(),
        };
        if listed < weights.files.len() {
            for f in &weights.files[listed..] {
                let size = fs::metadata(f).map_err(|e| FormatError::io(f, e))?.len();
                let root = path.parent().unwrap_or(Path::new(""));
                let rel = f
                    .strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| f.clone());
                files.push(FileEntry { path: rel, size });
            }
            files.sort_by(|a, b| a.path.cmp(&b.path));
        }
        Ok(Checkpoint {
            path: path.to_owned(),
            layout: Layout::File,
            files,
            weights,
            dir: None,
        })
    }

    /// Architecture hyper-parameters: config.json wins where present, GGUF keys otherwise.
    pub fn params(&self) -> ModelParams {
        let from_gguf = gguf::params_from_metadata(&self.weights.metadata);
        match self.dir.as_ref().and_then(|d| d.config.as_ref()) {
            Some(cfg) => hf::params_from_config(cfg).or(from_gguf),
            None => from_gguf,
        }
    }

    /// Tokenizer summary: tokenizer.json where present, GGUF keys otherwise.
    pub fn tokenizer(&self) -> Option<TokenizerSummary> {
        self.dir
            .as_ref()
            .and_then(hf::HfDir::tokenizer_summary)
            .or_else(|| gguf::tokenizer_from_metadata(&self.weights.metadata))
    }
}

impl ModelParams {
    /// Fill every field that `self` lacks from `other`.
    pub fn or(self, other: ModelParams) -> ModelParams {
        ModelParams {
            architecture: self.architecture.or(other.architecture),
            block_count: self.block_count.or(other.block_count),
            context_length: self.context_length.or(other.context_length),
            embedding_length: self.embedding_length.or(other.embedding_length),
            feed_forward_length: self.feed_forward_length.or(other.feed_forward_length),
            head_count: self.head_count.or(other.head_count),
            head_count_kv: self.head_count_kv.or(other.head_count_kv),
            head_dim: self.head_dim.or(other.head_dim),
            vocab_size: self.vocab_size.or(other.vocab_size),
            rope_theta: self.rope_theta.or(other.rope_theta),
            rms_norm_eps: self.rms_norm_eps.or(other.rms_norm_eps),
            tie_word_embeddings: self.tie_word_embeddings.or(other.tie_word_embeddings),
        }
    }
}

/// Open one weight file by sniffing its first bytes (the extension can lie). A file that
/// matches no signature is read by its extension, so that a broken `.safetensors` or
/// `.gguf` gets that reader's precise message instead of "unrecognised".
pub fn open_weight_file(path: &Path) -> Result<Weights, FormatError> {
    let mut head = [0u8; 16];
    let n = read_prefix(path, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        return gguf::open(path);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if name.ends_with(".safetensors.index.json") {
        return safetensors::open_sharded(path);
    }
    // Before the pickle check: a safetensors header length whose low byte is 0x80 looks
    // like a pickle's PROTO opcode, while no zip or pickle has `{` at byte 8.
    if safetensors::looks_like_safetensors(head) {
        return safetensors::open(path);
    }
    if pytorch::looks_like_pytorch(head) {
        return pytorch::open(path);
    }
    let ext = name.rsplit('.').next().unwrap_or("");
    match ext {
        "safetensors" => return safetensors::open(path),
        "gguf" => return gguf::open(path),
        "bin" | "pt" | "pth" | "ckpt" | "pkl" => return pytorch::open(path),
        _ => {}
    }
    Err(FormatError::NotACheckpoint {
        path: path.to_owned(),
        why: "not a GGUF, safetensors or PyTorch file (unrecognised first bytes)".into(),
    })
}

/// Read up to `buf.len()` bytes from the start of a file.
fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize, FormatError> {
    let mut f = fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FormatError::io(path, e)),
        }
    }
    Ok(n)
}

/// Read a small text file whole, refusing anything over `cap` bytes or not UTF-8.
pub(crate) fn read_text_capped(path: &Path, cap: u64) -> Result<String, FormatError> {
    let size = fs::metadata(path)
        .map_err(|e| FormatError::io(path, e))?
        .len();
    if size > cap {
        return Err(FormatError::malformed(
            path,
            format!("file is {size} bytes, more than the {cap}-byte limit for this kind of file"),
        ));
    }
    let bytes = fs::read(path).map_err(|e| FormatError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        FormatError::malformed(
            path,
            format!(
                "not valid UTF-8 (first bad byte at {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Group tensor bytes by dtype name, for summaries.
pub fn bytes_per_dtype(tensors: &[TensorInfo]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in tensors {
        let e = out.entry(t.dtype.name().to_owned()).or_default();
        e.0 += 1;
        e.1 += t.len;
    }
    out
}
