//! From a checkpoint and the options to a plan: every output tensor (name, shape, type,
//! where its values come from, how its rows are reordered), the metadata, and the side files
//! of a Hugging Face directory. Planning reads headers, config, tokenizer and card only; all
//! checks that can fail on bad input (architecture, shapes, missing tensors, tokenizer,
//! requantization) happen here, before any output file exists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::arch::{self, Arch, HParams, Parsed, RopeScaling, RowMap};
use super::error::ConvertError;
use super::gather;
use super::meta::{self, GeneralSources};
use super::recipe::{Fallback, FileType, ModelShape, Recipe, SourceKind};
use super::vocab::{self, GgufVocab};
use super::{elem, Options, OutputFormat};
use crate::formats::gguf::{Meta, MetaError};
use crate::formats::{Checkpoint, DType, GgmlType, MetaValue, WeightFormat};

/// Where an output tensor's values come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A tensor of the checkpoint, by index into `Weights::tensors`.
    Tensor(usize),
    /// Values computed by the converter (Llama 3 RoPE factors).
    Values(Vec<f32>),
    /// Assembled from parts of source tensors (stacked or split experts, DeepSeek's kv_b,
    /// FP8 weights with their scales, MXFP4 repacking).
    Gather(Box<super::gather::Gather>),
}

/// One tensor of the output.
#[derive(Clone, Debug)]
pub struct Planned {
    pub name: String,
    /// Outermost first.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    pub source: Source,
    /// The stored dtype of the source (F32 for computed values).
    pub src_dtype: DType,
    pub rows: RowMap,
    /// Added to every value (Gemma's norms are stored as offsets from 1 by transformers).
    pub shift: f32,
    pub bytes: u64,
}

impl Planned {
    /// Values per row (ggml's `ne[0]`).
    pub fn row_len(&self) -> u64 {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn n_rows(&self) -> u64 {
        let elems: u64 = self.shape.iter().product();
        elems / self.row_len().max(1)
    }

    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The pre-tokenizer chosen for a GGUF file and why.
#[derive(Clone, Debug, Serialize)]
pub struct PreChoice {
    pub name: String,
    pub reason: String,
}

/// A complete conversion plan.
#[derive(Debug)]
pub struct Plan {
    pub format: OutputFormat,
    pub architecture: Option<String>,
    pub file_type: Option<FileType>,
    pub gguf_meta: Vec<(String, MetaValue)>,
    pub st_meta: Vec<(String, String)>,
    pub tensors: Vec<Planned>,
    /// Side files of a Hugging Face directory output: (file name, bytes).
    pub side_files: Vec<(String, Vec<u8>)>,
    pub fallbacks: Vec<Fallback>,
    pub notes: Vec<String>,
    pub pre_tokenizer: Option<PreChoice>,
}

/// The ggml type a stored dtype corresponds to, for the recipe's "keep as is" rule.
fn as_ggml(d: DType) -> GgmlType {
    match d {
        DType::Ggml(t) => t,
        DType::F16 => GgmlType::F16,
        DType::BF16 => GgmlType::BF16,
        _ => GgmlType::F32,
    }
}

fn bytes_of(name: &str, ty: GgmlType, elements: u64) -> Result<u64, ConvertError> {
    ty.bytes_for(elements).ok_or_else(|| ConvertError::Kernel {
        tensor: name.to_owned(),
        fault: format!("{elements} values do not make whole {ty} blocks"),
    })
}

/// Decide the plan for converting `ckpt` as `opts` asks.
pub fn plan(ckpt: &Checkpoint, opts: &Options, format: OutputFormat) -> Result<Plan, ConvertError> {
    let is_gguf = ckpt.weights.format == WeightFormat::Gguf;
    match (is_gguf, format) {
        (false, OutputFormat::Gguf) => hf_to_gguf(ckpt, opts),
        (true, OutputFormat::Gguf) => gguf_to_gguf(ckpt, opts),
        (true, f) => gguf_to_safetensors(ckpt, opts, f),
        (false, _) => Err(ConvertError::Options(format!(
            "`{}` is already a {} checkpoint; modelgate converts it to GGUF (give OUT a `.gguf` name or --format gguf)",
            ckpt.path.display(),
            ckpt.weights.format.as_str()
        ))),
    }
}

fn source_files_note(ckpt: &Checkpoint) -> PathBuf {
    ckpt.dir
        .as_ref()
        .map(|d| d.root.clone())
        .unwrap_or_else(|| ckpt.path.clone())
}

/// A source tensor on its way to the plan: renamed as is, or assembled.
struct Entry {
    parsed: Parsed,
    shape: Vec<u64>,
    source: Source,
    src_dtype: DType,
    /// A type the tensor keeps whatever the file type (MXFP4 experts).
    fixed_type: Option<GgmlType>,
}

/// Hugging Face (or PyTorch) checkpoint → GGUF.
fn hf_to_gguf(ckpt: &Checkpoint, opts: &Options) -> Result<Plan, ConvertError> {
    let root = source_files_note(ckpt);
    let dir = ckpt.dir.as_ref().ok_or_else(|| ConvertError::Missing {
        path: ckpt.path.clone(),
        what: "a weight file alone has no config.json or tokenizer.json; convert the model directory instead".into(),
    })?;
    let cfg_path = root.join("config.json");
    let cfg = dir.config.as_ref().ok_or_else(|| ConvertError::Missing {
        path: cfg_path.clone(),
        what: "config.json is missing; it gives the architecture and its hyper-parameters".into(),
    })?;
    let h = HParams::from_config(cfg, &cfg_path)?;
    let mut notes = Vec::new();

    // Map every tensor, checking names and shapes against config.json.
    // Experts, DeepSeek's kv_b and FP8 scales are assembled rather than renamed.
    let found = gather::plan_experts(ckpt, &h)?;
    notes.extend(found.notes.iter().cloned());
    let mut mapped: Vec<Entry> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for a in &found.assembled {
        seen.insert(a.parsed.hf_name(h.arch));
        mapped.push(Entry {
            parsed: a.parsed,
            shape: a.shape.clone(),
            source: Source::Gather(Box::new(a.gather.clone())),
            src_dtype: a.src_dtype,
            fixed_type: a.fixed_type,
        });
    }
    for (idx, t) in ckpt.weights.tensors.iter().enumerate() {
        if found.consumed.contains(&idx) {
            continue;
        }
        let name = t.name.as_str();
        let parsed = match arch::parse_hf(name, h.arch) {
            Some(Some(p)) => p,
            Some(None) => continue,
            None => {
                return Err(ConvertError::UnknownTensor {
                    tensor: name.to_owned(),
                    arch: h.model_type.clone(),
                })
            }
        };
        if !parsed.allowed(&h) || parsed.layer.is_some_and(|l| l >= h.n_layer) {
            return Err(ConvertError::UnknownTensor {
                tensor: name.to_owned(),
                arch: format!("{} with {} layers", h.model_type, h.n_layer),
            });
        }
        if parsed.role == arch::Role::Output && h.tied_embeddings {
            notes.push(format!(
                "`{name}` is dropped: config.json ties the output head to the token embedding"
            ));
            continue;
        }
        let fp8 = found.fp8.get(&idx);
        check_source(name, t, &parsed, &h, "config.json", fp8.is_some())?;
        seen.insert(parsed.hf_name(h.arch));
        let source = match fp8 {
            None => Source::Tensor(idx),
            Some(scale) => {
                if parsed.row_map(&h, true) != RowMap::Identity {
                    return Err(ConvertError::UnsupportedDtype {
                        tensor: name.to_owned(),
                        dtype: "F8_E4M3 in a tensor whose rows llama.cpp permutes".into(),
                    });
                }
                Source::Gather(Box::new(gather::fp8_whole(t, idx, scale)))
            }
        };
        mapped.push(Entry {
            parsed,
            shape: t.shape.clone(),
            source,
            src_dtype: t.dtype,
            fixed_type: None,
        });
    }
    if !found.fp8.is_empty() {
        notes.push(format!(
            "{} FP8 E4M3 tensors dequantized with their block scales (`*_scale_inv`), as llama.cpp's converter does",
            found.fp8.len()
        ));
    }
    for need in arch::required(&h) {
        if !seen.contains(&need.hf_name(h.arch)) {
            let why = if need.role == arch::Role::Output {
                "config.json says the embeddings are not tied, so the output head must be stored"
                    .to_owned()
            } else {
                format!(
                    "config.json describes a {} with {} layers",
                    h.model_type, h.n_layer
                )
            };
            return Err(ConvertError::MissingTensor {
                tensor: need.hf_name(h.arch),
                why,
            });
        }
    }

    let file_type = match opts.file_type {
        Some(f) => f,
        None => {
            // llama.cpp's converter guesses from the first 2-D tensor: bf16 stays bf16,
            // everything else becomes f16.
            let first = mapped
                .iter()
                .filter(|e| matches!(e.source, Source::Tensor(_)))
                .find(|e| e.shape.len() >= 2);
            let ft = match first.map(|e| e.src_dtype) {
                Some(DType::BF16) => FileType::BF16,
                _ => FileType::F16,
            };
            notes.push(format!(
                "no --type given: writing {ft}, as llama.cpp's converter would for this checkpoint"
            ));
            ft
        }
    };
    let has_output = mapped.iter().any(|e| e.parsed.role == arch::Role::Output);
    let recipe = Recipe {
        file_type,
        opts: opts.recipe.clone(),
        shape: ModelShape {
            n_layer: h.n_layer,
            n_head: h.n_head,
            n_head_kv: h.gguf_n_head_kv(),
            n_attn_v: h.n_layer,
            tied_embeddings: !has_output,
            is_llama_70b: h.arch == Arch::Llama && h.n_layer == 80,
            n_expert: crate::formats::experts::Experts::from_config(cfg).count,
        },
    };

    // Output order: computed tensors, token embedding, the blocks in layer order (names
    // sorted within a layer), output norm and head.
    mapped.sort_by_key(|e| {
        let p = &e.parsed;
        let group = match (p.layer, p.role) {
            (None, arch::Role::TokenEmbd) => 0,
            (Some(_), _) => 1,
            (None, arch::Role::OutputNorm) => 2,
            _ => 3,
        };
        (group, p.layer.unwrap_or(0), p.gguf_name(h.arch))
    });
    let mut tensors = Vec::new();
    let mut fallbacks = Vec::new();
    if let Some(freqs) = h.rope_freqs() {
        let n = freqs.len() as u64;
        tensors.push(Planned {
            name: "rope_freqs.weight".into(),
            shape: vec![n],
            ty: GgmlType::F32,
            source: Source::Values(freqs),
            src_dtype: DType::F32,
            rows: RowMap::Identity,
            shift: 0.0,
            bytes: n * 4,
        });
        notes.push(
            "llama3 RoPE scaling written as the `rope_freqs.weight` factors llama.cpp reads".into(),
        );
    }
    if let Some((long, short)) = h.longrope_factors() {
        for (name, values) in [
            ("rope_factors_long.weight", long),
            ("rope_factors_short.weight", short),
        ] {
            let n = values.len() as u64;
            tensors.push(Planned {
                name: name.into(),
                shape: vec![n],
                ty: GgmlType::F32,
                source: Source::Values(values),
                src_dtype: DType::F32,
                rows: RowMap::Identity,
                shift: 0.0,
                bytes: n * 4,
            });
        }
        notes.push("LongRoPE scaling written as the `rope_factors_long/short.weight` factors and `rope.scaling.attn_factor` llama.cpp reads".into());
    }
    for e in mapped {
        let p = e.parsed;
        let name = p.gguf_name(h.arch);
        let src = SourceKind::of(as_ggml(e.src_dtype), &e.shape);
        let choice = recipe.choose(&name, src);
        let ty = match e.fixed_type {
            Some(ty) => ty,
            // llama.cpp's converter keeps routers in F32 whatever the output type.
            None if matches!(p.role, arch::Role::FfnGateInp | arch::Role::FfnGateInpShexp) => {
                GgmlType::F32
            }
            None => {
                fallbacks.extend(choice.fallback);
                choice.ty
            }
        };
        let elements: u64 = e.shape.iter().product();
        tensors.push(Planned {
            bytes: bytes_of(&name, ty, elements)?,
            name,
            shape: e.shape,
            ty,
            rows: if matches!(e.source, Source::Tensor(_)) {
                p.row_map(&h, true)
            } else {
                RowMap::Identity
            },
            source: e.source,
            src_dtype: e.src_dtype,
            shift: p.value_shift(&h, true),
        });
    }

    // Tokenizer: the file llama.cpp's converter class for this architecture reads
    // (`vocab_file`). `vocab::from_dir` reads tokenizer.model when there is one (as llama.cpp's
    // Llama, Gemma and Phi-3 classes do), else tokenizer.json.
    let source = vocab_file(&h, dir, dir.tokenizer_model.is_some());
    let v = vocab::from_dir(&vocab::DirVocab {
        root: &root,
        dir,
        config_ids: [h.bos_token_id, h.eos_token_id, h.pad_token_id],
        n_vocab: h.n_vocab,
        pre_override: opts.pre_tokenizer.as_deref(),
        spm_style: if h.arch == Arch::Phi3 {
            vocab::SpmStyle::Phi3
        } else {
            vocab::SpmStyle::Default
        },
    })?;

    let mut keys = vec![(
        "general.architecture".to_owned(),
        MetaValue::String(h.arch.gguf_name().into()),
    )];
    keys.extend(meta::general_keys(&GeneralSources {
        card: dir.card.as_ref().map(|c| &c.front_matter),
        config: Some(cfg),
        dir_name: root.file_name().map(|n| n.to_string_lossy().into_owned()),
        name: opts.name.clone(),
        source_url: opts.source_url.clone(),
    }));
    keys.extend(h.gguf_keys());
    // Gemma 3: embedding rows past the tokenizer's vocabulary are cut, as llama.cpp does.
    if h.arch == Arch::Gemma3 && v.n_tokens > 0 && v.n_tokens < h.n_vocab {
        for t in tensors.iter_mut().filter(|t| t.name == "token_embd.weight") {
            t.shape[0] = v.n_tokens;
            t.bytes = bytes_of(&t.name, t.ty, t.elements())?;
        }
        notes.push(format!(
            "`token_embd.weight` cut from {} to the tokenizer's {} rows",
            h.n_vocab, v.n_tokens
        ));
    }
    keys.extend(v.keys);
    // Gemma's SentencePiece vocabulary has no leading-space normalisation; llama.cpp's Gemma
    // classes say so explicitly (Gemma 3 only when it read tokenizer.model). Later keys
    // replace earlier ones in `meta::canonical`, so this overrides the vocabulary's own.
    if matches!(h.arch, Arch::Gemma2 | Arch::Gemma3) && source == VocabFile::SentencePiece {
        keys.push((
            "tokenizer.ggml.add_space_prefix".into(),
            MetaValue::Bool(false),
        ));
    }
    add_file_keys(&mut keys, file_type, &tensors, opts);
    if matches!(h.rope_scaling, RopeScaling::Yarn { .. }) {
        notes.push(
            "YaRN RoPE scaling written as rope.scaling.* keys (type, factor, original context)"
                .into(),
        );
    }
    Ok(Plan {
        format: OutputFormat::Gguf,
        architecture: Some(h.arch.gguf_name().into()),
        file_type: Some(file_type),
        gguf_meta: meta::canonical(keys),
        st_meta: Vec::new(),
        tensors,
        side_files: Vec::new(),
        fallbacks,
        notes,
        pre_tokenizer: Some(PreChoice {
            name: v.pre,
            reason: v.pre_reason,
        }),
    })
}

/// The tokenizer file a llama.cpp converter class reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabFile {
    TokenizerJson,
    SentencePiece,
}

/// llama.cpp's choice: Gemma 2 always reads `tokenizer.model`; Gemma 3 when there is one;
/// Phi-3 unless tokenizer_config.json names `GPT2Tokenizer` (Phi-4, a byte-level BPE);
/// every other family reads tokenizer.json.
pub fn vocab_file(h: &HParams, dir: &crate::formats::hf::HfDir, has_model: bool) -> VocabFile {
    let class = dir
        .tokenizer_config
        .as_ref()
        .and_then(|c| c.get("tokenizer_class"))
        .and_then(Value::as_str);
    match h.arch {
        Arch::Gemma2 => VocabFile::SentencePiece,
        Arch::Gemma3 if has_model => VocabFile::SentencePiece,
        Arch::Phi3 if class != Some("GPT2Tokenizer") => VocabFile::SentencePiece,
        _ => VocabFile::TokenizerJson,
    }
}

fn add_file_keys(
    keys: &mut Vec<(String, MetaValue)>,
    ft: FileType,
    tensors: &[Planned],
    opts: &Options,
) {
    keys.push(("general.file_type".into(), MetaValue::U32(ft.id())));
    if tensors.iter().any(|t| t.ty.is_quantized()) {
        // ggml's current block layout version (GGML_QNT_VERSION).
        keys.push(("general.quantization_version".into(), MetaValue::U32(2)));
        let by = opts
            .quantized_by
            .clone()
            .unwrap_or_else(|| "modelgate".into());
        keys.push(("general.quantized_by".into(), MetaValue::String(by)));
    }
}

/// A GGUF key that is absent where it is needed, or holds the wrong type, reported against
/// the file it came from.
fn meta_err(path: &Path) -> impl Fn(MetaError) -> ConvertError + '_ {
    move |e| ConvertError::config(path, e.to_string())
}

/// GGUF → GGUF: requantize, keeping names, order and metadata.
fn gguf_to_gguf(ckpt: &Checkpoint, opts: &Options) -> Result<Plan, ConvertError> {
    let m = &ckpt.weights.metadata;
    let meta = Meta::new(m);
    let bad = meta_err(&ckpt.path);
    let file_type = opts.file_type.ok_or_else(|| {
        ConvertError::Options("GGUF → GGUF needs --type (the type to requantize to)".into())
    })?;
    let arch_name = meta
        .require_str("general.architecture")
        .map_err(&bad)?
        .to_owned();
    let int = |suffix: &str| meta.u64(&format!("{arch_name}.{suffix}")).map_err(&bad);
    let n_layer = int("block_count")?.unwrap_or(0);
    let n_head = int("attention.head_count")?.unwrap_or(1);
    let n_head_kv = int("attention.head_count_kv")?.unwrap_or(n_head);
    let ts = &ckpt.weights.tensors;
    let recipe = Recipe {
        file_type,
        opts: opts.recipe.clone(),
        shape: ModelShape {
            n_layer,
            n_head,
            n_head_kv,
            n_attn_v: ts
                .iter()
                .filter(|t| {
                    let n = t.name.as_str();
                    n.contains("attn_v.weight")
                        || n.contains("attn_qkv.weight")
                        || n.contains("attn_kv_b.weight")
                })
                .count() as u64,
            tied_embeddings: !ts.iter().any(|t| t.name.as_str() == "output.weight"),
            is_llama_70b: arch_name == "llama" && n_layer == 80,
            n_expert: int("expert_count")?.unwrap_or(0),
        },
    };
    let mut notes = Vec::new();
    let mut tensors = Vec::new();
    let mut fallbacks = Vec::new();
    let mut requantized = 0usize;
    for (idx, t) in ts.iter().enumerate() {
        let name = t.name.as_str().to_owned();
        let src_ty = as_ggml(t.dtype);
        let src = SourceKind::of(src_ty, &t.shape);
        let choice = recipe.choose(&name, src);
        if choice.ty != src_ty {
            if src_ty.is_quantized() {
                if !opts.allow_requantize {
                    return Err(ConvertError::Requantize {
                        tensor: name,
                        from: src_ty.to_string(),
                        to: choice.ty.to_string(),
                    });
                }
                requantized += 1;
            }
            if !elem::decodable(t.dtype) {
                return Err(ConvertError::UnsupportedDtype {
                    tensor: name,
                    dtype: t.dtype.to_string(),
                });
            }
        }
        fallbacks.extend(choice.fallback);
        tensors.push(Planned {
            bytes: bytes_of(&name, choice.ty, t.elements())?,
            name,
            // As llama-quantize writes it: without leading dimensions of 1.
            shape: super::recipe::ggml_shape(&t.shape),
            ty: choice.ty,
            source: Source::Tensor(idx),
            src_dtype: t.dtype,
            rows: RowMap::Identity,
            shift: 0.0,
        });
    }
    if requantized > 0 {
        notes.push(format!(
            "warning: {requantized} already-quantized tensors were requantized (--allow-requantize); quality is worse than quantizing from the original weights"
        ));
    }
    let mut keys: Vec<(String, MetaValue)> = m
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "general.file_type"
                    | "general.quantization_version"
                    | "general.quantized_by"
                    | "general.alignment"
            ) && !k.starts_with("split.")
        })
        .cloned()
        .collect();
    add_file_keys(&mut keys, file_type, &tensors, opts);
    Ok(Plan {
        format: OutputFormat::Gguf,
        architecture: Some(arch_name),
        file_type: Some(file_type),
        gguf_meta: meta::canonical(keys),
        st_meta: Vec::new(),
        tensors,
        side_files: Vec::new(),
        fallbacks,
        notes,
        pre_tokenizer: meta
            .str("tokenizer.ggml.pre")
            .map_err(&bad)?
            .map(|p| PreChoice {
                name: p.to_owned(),
                reason: "kept from the input file".into(),
            }),
    })
}

impl HParams {
    /// Read a GGUF file's `{arch}.*` keys back (the tensors supply what keys leave out).
    pub fn from_gguf(ckpt: &Checkpoint) -> Result<HParams, ConvertError> {
        let meta = Meta::new(&ckpt.weights.metadata);
        let path = &ckpt.path;
        let bad = meta_err(path);
        let arch_name = meta.require_str("general.architecture").map_err(&bad)?;
        let arch = Arch::from_gguf_name(arch_name).ok_or_else(|| {
            ConvertError::UnsupportedArchitecture {
                found: arch_name.to_owned(),
                supported: Arch::GGUF_NAMES.into(),
            }
        })?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let int = |s: &str| meta.u64(&k(s)).map_err(&bad);
        let float = |s: &str| meta.f64(&k(s)).map_err(&bad);
        let need = |s: &str| match int(s)? {
            Some(v) if v > 0 => Ok(v),
            Some(_) => Err(ConvertError::config(path, format!("`{}` is 0", k(s)))),
            None => Err(bad(MetaError::Missing { key: k(s) })),
        };
        let n_layer = need("block_count")?;
        let n_embd = need("embedding_length")?;
        let n_ff = need("feed_forward_length")?;
        let n_head = need("attention.head_count")?;
        let n_head_kv = int("attention.head_count_kv")?.unwrap_or(n_head);
        // DeepSeek's one latent KV head stands for a full set of heads.
        let n_head_kv = if arch == Arch::Deepseek2 {
            n_head
        } else {
            n_head_kv
        };
        if n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(ConvertError::config(
                path,
                format!("head counts {n_head}/{n_head_kv} do not divide"),
            ));
        }
        let embd = ckpt.weights.tensor("token_embd.weight");
        let n_vocab = int("vocab_size")?
            .or_else(|| embd.and_then(|t| t.shape.first().copied()))
            .ok_or_else(|| {
                ConvertError::config(path, "no vocabulary size and no `token_embd.weight`")
            })?;
        let head_dim_key = int("attention.key_length")?;
        let head_dim = match head_dim_key {
            Some(d) => d,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return Err(ConvertError::config(
                    path,
                    "head dimension cannot be derived",
                ))
            }
        };
        let n_ctx = int("context_length")?.unwrap_or(2048);
        let rope_theta = float("rope.freq_base")?.unwrap_or(10000.0);
        let rms_eps = float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
        let token_id = |key: &str| meta.u64(key).map_err(&bad);
        let mut h = HParams {
            arch,
            model_type: arch.hf_class().1.to_owned(),
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_explicit: head_dim_key.is_some(),
            n_vocab,
            n_ctx,
            rms_eps,
            rope_theta,
            rope_scaling: RopeScaling::None,
            tied_embeddings: ckpt.weights.tensor("output.weight").is_none(),
            attention_bias: ckpt
                .weights
                .tensors
                .iter()
                .any(|t| t.name.as_str().ends_with("attn_output.bias")),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
            pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
            attn_softcap: float("attn_logit_softcapping")?,
            final_softcap: float("final_logit_softcapping")?,
            // Phi-4 is marked by a window of 0: config.json says null.
            sliding_window: int("attention.sliding_window")?.filter(|&w| w > 0),
            rope_theta_swa: float("rope.freq_base_swa")?,
            rope_dims: int("rope.dimension_count")?.unwrap_or(head_dim),
            original_context: if arch == Arch::Phi3 {
                int("rope.scaling.original_context_length")?
            } else {
                None
            },
            query_pre_attn_scalar: None,
            moe: super::moe::Moe::from_gguf(&meta, arch, n_ff, path)?,
            mla: if arch == Arch::Deepseek2 {
                Some(super::moe::Mla::from_gguf(&meta, arch, path)?)
            } else {
                None
            },
            yarn: super::moe::YarnExtra::from_gguf(&meta, arch, path)?,
        };
        for (key, v) in [
            ("attn_logit_softcapping", h.attn_softcap),
            ("final_logit_softcapping", h.final_softcap),
        ] {
            if v.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
                return Err(ConvertError::config(
                    path,
                    format!(
                        "`{}` is {}; soft-capping needs a positive number",
                        k(key),
                        v.unwrap_or(0.0)
                    ),
                ));
            }
        }
        if arch == Arch::Phi3 {
            let factors = |name: &str| -> Result<Option<Vec<f32>>, ConvertError> {
                let Some(t) = ckpt.weights.tensor(name) else {
                    return Ok(None);
                };
                let data = ckpt.weights.tensor_data(t)?;
                let mut out = vec![0.0f32; t.elements() as usize];
                elem::decode(t.dtype, data, &mut out).map_err(|fault| ConvertError::Kernel {
                    tensor: name.into(),
                    fault,
                })?;
                Ok(Some(out))
            };
            if let (Some(long), Some(short)) = (
                factors("rope_factors_long.weight")?,
                factors("rope_factors_short.weight")?,
            ) {
                h.rope_scaling = RopeScaling::LongRope {
                    short,
                    long,
                    attn_factor: float("rope.scaling.attn_factor")?.unwrap_or(1.0) as f32,
                };
            }
        }
        match meta.str(&k("rope.scaling.type")).map_err(&bad)? {
            Some("linear") => {
                if let Some(factor) = float("rope.scaling.factor")? {
                    h.rope_scaling = RopeScaling::Linear { factor };
                }
            }
            Some("yarn") => {
                if let Some(factor) = float("rope.scaling.factor")? {
                    h.rope_scaling = RopeScaling::Yarn {
                        factor,
                        original_context: int("rope.scaling.original_context_length")?
                            .unwrap_or(n_ctx),
                    };
                }
            }
            _ => {}
        }
        Ok(h)
    }

    /// config.json for a Hugging Face directory (top-level `rope_theta`/`rope_scaling`, which
    /// transformers 4 and 5 both read).
    pub fn to_config_json(&self, torch_dtype: &str) -> Value {
        let (class, model_type) = self.arch.hf_class();
        let mut c = serde_json::Map::new();
        c.insert("architectures".into(), json!([class]));
        c.insert("attention_bias".into(), json!(self.attention_bias));
        c.insert("attention_dropout".into(), json!(0.0));
        c.insert("bos_token_id".into(), json!(self.bos_token_id));
        c.insert("eos_token_id".into(), json!(self.eos_token_id));
        // Only where it is not hidden_size / heads, so that the way back to GGUF writes the
        // key-length keys exactly when the first conversion did.
        if self.head_dim_explicit || self.head_dim * self.n_head != self.n_embd {
            c.insert("head_dim".into(), json!(self.head_dim));
        }
        if matches!(self.arch, Arch::Gemma2 | Arch::Gemma3) {
            c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        } else {
            c.insert("hidden_act".into(), json!("silu"));
        }
        c.insert("hidden_size".into(), json!(self.n_embd));
        c.insert("initializer_range".into(), json!(0.02));
        c.insert("intermediate_size".into(), json!(self.n_ff));
        c.insert("max_position_embeddings".into(), json!(self.n_ctx));
        if self.arch == Arch::Llama {
            c.insert("mlp_bias".into(), json!(false));
        }
        c.insert("model_type".into(), json!(model_type));
        c.insert("num_attention_heads".into(), json!(self.n_head));
        c.insert("num_hidden_layers".into(), json!(self.n_layer));
        c.insert("num_key_value_heads".into(), json!(self.n_head_kv));
        c.insert("pad_token_id".into(), json!(self.pad_token_id));
        c.insert("rms_norm_eps".into(), json!(self.rms_eps));
        c.insert(
            "rope_scaling".into(),
            rope_scaling_value(&self.rope_scaling),
        );
        c.insert("rope_theta".into(), json!(self.rope_theta));
        c.insert("tie_word_embeddings".into(), json!(self.tied_embeddings));
        c.insert("torch_dtype".into(), json!(torch_dtype));
        c.insert("use_cache".into(), json!(true));
        c.insert("vocab_size".into(), json!(self.n_vocab));
        self.arch_config(&mut c);
        self.moe_config(&mut c);
        Value::Object(c)
    }

    /// config.json fields of mixtures of experts, MLA and YaRN's extra settings.
    fn moe_config(&self, c: &mut serde_json::Map<String, Value>) {
        if let Some(moe) = &self.moe {
            moe.config_fields(self.arch, c);
            if self.arch == Arch::Llama {
                c.insert("architectures".into(), json!(["MixtralForCausalLM"]));
                c.insert("model_type".into(), json!("mixtral"));
                c.shift_remove("mlp_bias");
            }
        }
        if let Some(Value::Object(rs)) = c.get_mut("rope_scaling") {
            let y = &self.yarn;
            for (k, v) in [
                ("beta_fast", y.beta_fast),
                ("beta_slow", y.beta_slow),
                ("extrapolation_factor", y.ext_factor),
                ("attention_factor", y.attn_factor),
                ("mscale_all_dim", y.log_mul.map(|m| m / 0.1)),
            ] {
                if let Some(v) = v {
                    rs.insert(k.into(), json!(v));
                }
            }
        }
        if let Some(mla) = &self.mla {
            c.insert("q_lora_rank".into(), json!(mla.q_lora_rank));
            c.insert("kv_lora_rank".into(), json!(mla.kv_lora_rank));
            c.insert("qk_nope_head_dim".into(), json!(mla.qk_nope));
            c.insert("qk_rope_head_dim".into(), json!(mla.qk_rope));
            c.insert("qk_head_dim".into(), json!(mla.qk_head()));
            c.insert("v_head_dim".into(), json!(mla.v_head));
            c.insert("head_dim".into(), json!(mla.qk_rope));
            c.insert("num_key_value_heads".into(), json!(self.n_head));
            // ggml's DeepSeek RoPE rotates adjacent pairs, as DeepSeek's checkpoints do.
            c.insert("rope_interleave".into(), json!(true));
        }
        if self.arch == Arch::GptOss {
            c.insert("sliding_window".into(), json!(self.sliding_window));
            let types: Vec<&str> = (0..self.n_layer)
                .map(|i| {
                    if i % 2 == 0 {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            c.insert("layer_types".into(), json!(types));
            c.insert("swiglu_limit".into(), json!(7.0));
            // gpt-oss's YaRN does not round its correction range (transformers' default
            // would); llama.cpp's gpt-oss graph does not round it either.
            if let Some(Value::Object(rs)) = c.get_mut("rope_scaling") {
                rs.insert("truncate".into(), json!(false));
            }
        }
    }

    /// The config.json fields particular to an architecture.
    fn arch_config(&self, c: &mut serde_json::Map<String, Value>) {
        let layer_types = |period: u64| -> Value {
            (0..self.n_layer)
                .map(|i| {
                    if (i + 1) % period == 0 {
                        "full_attention"
                    } else {
                        "sliding_attention"
                    }
                })
                .collect()
        };
        // llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B Gemmas (46 and
        // 62 layers), which use hidden_size / heads; transformers reads the same choice
        // from `query_pre_attn_scalar`.
        let big = matches!(
            (self.arch, self.n_layer),
            (Arch::Gemma2, 46) | (Arch::Gemma3, 62)
        );
        let qpas = self.query_pre_attn_scalar.unwrap_or(if big {
            (self.n_embd / self.n_head) as f64
        } else {
            self.head_dim as f64
        });
        // transformers' Gemma configs type it as an integer.
        let qpas = if qpas.fract() == 0.0 && (0.0..1e15).contains(&qpas) {
            json!(qpas as u64)
        } else {
            json!(qpas)
        };
        match self.arch {
            Arch::Gemma2 => {
                c.insert("attn_logit_softcapping".into(), json!(self.attn_softcap));
                c.insert("final_logit_softcapping".into(), json!(self.final_softcap));
                c.insert("query_pre_attn_scalar".into(), json!(qpas));
                c.insert("sliding_window".into(), json!(self.sliding_window));
                c.insert("layer_types".into(), layer_types(2));
            }
            Arch::Gemma3 => {
                c.insert("attn_logit_softcapping".into(), Value::Null);
                c.insert("final_logit_softcapping".into(), json!(self.final_softcap));
                c.insert("query_pre_attn_scalar".into(), json!(qpas));
                c.insert("sliding_window".into(), json!(self.sliding_window));
                c.insert("layer_types".into(), layer_types(6));
                // transformers 5's form: one RoPE set per attention kind.
                let mut full = match rope_scaling_value(&self.rope_scaling) {
                    Value::Object(m) => m,
                    _ => serde_json::Map::from_iter([("rope_type".to_owned(), json!("default"))]),
                };
                full.insert("rope_theta".into(), json!(self.rope_theta));
                let swa = self.rope_theta_swa.unwrap_or(10000.0);
                c.insert(
                    "rope_parameters".into(),
                    json!({"full_attention": Value::Object(full),
                           "sliding_attention": {"rope_type": "default", "rope_theta": swa}}),
                );
                c.shift_remove("rope_scaling");
                c.shift_remove("rope_theta");
            }
            Arch::Phi3 => {
                c.insert(
                    "original_max_position_embeddings".into(),
                    json!(self.original_context.unwrap_or(self.n_ctx)),
                );
                let partial = (self.rope_dims * self.n_head) as f64 / self.n_embd as f64;
                c.insert("partial_rotary_factor".into(), json!(partial));
                c.insert("sliding_window".into(), json!(self.sliding_window));
                c.shift_remove("attention_bias");
            }
            Arch::Llama
            | Arch::Qwen2
            | Arch::Qwen3
            | Arch::Olmo2
            | Arch::Qwen2Moe
            | Arch::Qwen3Moe
            | Arch::Deepseek2
            | Arch::GptOss => {}
        }
    }
}

/// `rope_scaling` for config.json.
fn rope_scaling_value(scaling: &RopeScaling) -> Value {
    match scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Yarn {
            factor,
            original_context,
        } => {
            json!({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original_context})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => {
            json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_context})
        }
        RopeScaling::LongRope { short, long, .. } => {
            json!({"rope_type": "longrope", "short_factor": short, "long_factor": long})
        }
    }
}

/// Recover Llama 3 RoPE scaling parameters from llama.cpp's per-frequency factors. Only the
/// ratios original_context : low_freq_factor : high_freq_factor matter to the factors, so
/// low_freq_factor is fixed at 1; the rest is fitted and then checked by recomputing the
/// factors. Returns `None` when no parameters reproduce them.
pub fn llama3_from_factors(h: &HParams, factors: &[f32]) -> Option<RopeScaling> {
    let dim = h.head_dim as usize;
    if factors.len() != dim / 2 || factors.is_empty() {
        return None;
    }
    let factor = factors.iter().copied().fold(f32::MIN, f32::max) as f64;
    if factor <= 1.0 {
        return None;
    }
    let wavelen = |i: usize| {
        let freq = 1.0 / h.rope_theta.powf((2 * i) as f64 / dim as f64);
        2.0 * std::f64::consts::PI / freq
    };
    let tol = 1e-4;
    let ones: Vec<usize> = (0..factors.len())
        .filter(|&i| (factors[i] as f64 - 1.0).abs() < tol)
        .collect();
    let full: Vec<usize> = (0..factors.len())
        .filter(|&i| (factors[i] as f64 - factor).abs() < tol * factor)
        .collect();
    let mid: Vec<(f64, f64)> = (0..factors.len())
        .filter(|i| !ones.contains(i) && !full.contains(i))
        .map(|i| {
            let s = (1.0 / factors[i] as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (wavelen(i), s)
        })
        .collect();
    let a = ones.iter().map(|&i| wavelen(i)).fold(0.0, f64::max);
    let b = full.iter().map(|&i| wavelen(i)).fold(f64::MAX, f64::min);
    let (orig, hf) = if mid.len() >= 2 {
        // s (hf - 1) = L / w - 1: least squares in (L, hf).
        let (mut sxx, mut sxy, mut syy, mut sx1, mut sy1) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(w, s) in &mid {
            let (x, y, r) = (1.0 / w, -s, 1.0 - s);
            sxx += x * x;
            sxy += x * y;
            syy += y * y;
            sx1 += x * r;
            sy1 += y * r;
        }
        let det = sxx * syy - sxy * sxy;
        if det.abs() < 1e-30 {
            return None;
        }
        ((sx1 * syy - sy1 * sxy) / det, (sxx * sy1 - sxy * sx1) / det)
    } else {
        // Every frequency is either kept or fully scaled: any boundaries between the two
        // groups reproduce them. Pick the original context just under the first fully
        // scaled wavelength, and a high-frequency boundary just above the last kept one.
        let l = if b.is_finite() {
            b.floor()
        } else {
            a.ceil() + 1.0
        };
        let hf = match mid.first() {
            Some(&(w, s)) if s > 0.0 => 1.0 + (l / w - 1.0) / s,
            _ if a > 0.0 => (l / a * 0.999).max(1.0 + 1e-3),
            _ => 4.0,
        };
        (l, hf)
    };
    // Prefer round values (configs say 4.0, not 3.9999993) when they give the same factors.
    for digits in [1e3, 1e6, 0.0] {
        let hf = if digits > 0.0 {
            (hf * digits).round() / digits
        } else {
            hf
        };
        let cand = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: hf,
            original_context: orig.round().max(1.0) as u64,
        };
        let mut check = h.clone();
        check.rope_scaling = cand.clone();
        let again = check.rope_freqs()?;
        let same = again
            .iter()
            .zip(factors)
            .all(|(x, y)| ((x - y) / y).abs() < 1e-4);
        if same {
            return Some(cand);
        }
    }
    None
}

/// GGUF → safetensors: dequantize, restore Hugging Face names and row order, and write a
/// loadable directory (or a single weights file).
fn gguf_to_safetensors(
    ckpt: &Checkpoint,
    opts: &Options,
    format: OutputFormat,
) -> Result<Plan, ConvertError> {
    let mut h = HParams::from_gguf(ckpt)?;
    let path = ckpt.path.clone();
    let ts = &ckpt.weights.tensors;
    let out_ty = match opts.file_type {
        Some(FileType::F32) => GgmlType::F32,
        Some(FileType::F16) => GgmlType::F16,
        Some(FileType::BF16) => GgmlType::BF16,
        Some(other) => {
            return Err(ConvertError::Options(format!(
                "safetensors output holds F32, F16 or BF16, not {other}"
            )))
        }
        None => {
            let kinds: HashSet<DType> = ts
                .iter()
                .filter(|t| t.shape.len() >= 2)
                .map(|t| t.dtype)
                .collect();
            match kinds.iter().collect::<Vec<_>>().as_slice() {
                [DType::F16] => GgmlType::F16,
                [DType::BF16] => GgmlType::BF16,
                _ => GgmlType::F32,
            }
        }
    };
    let mut notes = Vec::new();
    let mut tensors = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut stored = Vec::new();
    for (idx, t) in ts.iter().enumerate() {
        let name = t.name.as_str();
        if name == "rope_freqs.weight" {
            let data = ckpt.weights.tensor_data(t)?;
            let mut factors = vec![0.0f32; t.elements() as usize];
            elem::decode(t.dtype, data, &mut factors).map_err(|fault| ConvertError::Kernel {
                tensor: name.into(),
                fault,
            })?;
            match llama3_from_factors(&h, &factors) {
                Some(s) => {
                    notes.push("`rope_freqs.weight` turned back into llama3 rope_scaling parameters in config.json".into());
                    h.rope_scaling = s;
                }
                None => notes.push(
                    "warning: `rope_freqs.weight` matches no llama3 rope_scaling parameters; config.json carries none, so long-context behaviour differs".into(),
                ),
            }
            continue;
        }
        if h.arch == Arch::Phi3
            && matches!(
                name,
                "rope_factors_long.weight" | "rope_factors_short.weight"
            )
        {
            // Read back into config.json's `rope_scaling` by `HParams::from_gguf`.
            continue;
        }
        let p = arch::parse_gguf(name, h.arch).ok_or_else(|| ConvertError::UnknownTensor {
            tensor: name.to_owned(),
            arch: h.arch.gguf_name().into(),
        })?;
        let qkv_bias = p.bias
            && matches!(
                p.role,
                arch::Role::AttnQ | arch::Role::AttnK | arch::Role::AttnV
            );
        if !(p.allowed(&h) || qkv_bias) {
            return Err(ConvertError::UnknownTensor {
                tensor: name.to_owned(),
                arch: h.arch.gguf_name().into(),
            });
        }
        check_source(name, t, &p, &h, "GGUF keys", false)?;
        if p.role.is_experts() || matches!(p.role, arch::Role::AttnKB | arch::Role::AttnVB) {
            // Rebuilt below into the tensors transformers saves.
            stored.push(gather::Stored {
                parsed: p,
                index: idx,
                shape: t.shape.clone(),
            });
            continue;
        }
        // 1-D tensors stay F32 in llama.cpp files; keep them at the requested type too so
        // the directory is uniform, as transformers saves it.
        let hf_name = p.hf_name(h.arch);
        names.insert(hf_name.clone(), idx);
        tensors.push(Planned {
            bytes: bytes_of(&hf_name, out_ty, t.elements())?,
            name: hf_name,
            shape: t.shape.clone(),
            ty: out_ty,
            source: Source::Tensor(idx),
            src_dtype: t.dtype,
            rows: p.row_map(&h, false),
            shift: p.value_shift(&h, false),
        });
    }
    for r in gather::rebuild_hf(&h, &stored, ts)? {
        tensors.push(Planned {
            bytes: bytes_of(&r.name, out_ty, r.shape.iter().product())?,
            name: r.name,
            shape: r.shape,
            ty: out_ty,
            source: Source::Gather(Box::new(r.gather)),
            src_dtype: r.src_dtype,
            rows: RowMap::Identity,
            shift: 0.0,
        });
    }
    for need in arch::required(&h) {
        if !names.contains_key(&need.hf_name(h.arch)) {
            return Err(ConvertError::MissingTensor {
                tensor: need.gguf_name(h.arch),
                why: format!(
                    "the GGUF keys describe a {} with {} layers",
                    h.arch.gguf_name(),
                    h.n_layer
                ),
            });
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let torch_dtype = match out_ty {
        GgmlType::F16 => "float16",
        GgmlType::BF16 => "bfloat16",
        _ => "float32",
    };
    let mut side_files = Vec::new();
    let mut pre = None;
    if format == OutputFormat::HfDir {
        let pretty = |v: &Value| {
            let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
            s.push(b'\n');
            s
        };
        side_files.push(("config.json".into(), pretty(&h.to_config_json(torch_dtype))));
        let mut gen = serde_json::Map::new();
        gen.insert("bos_token_id".into(), json!(h.bos_token_id));
        gen.insert("eos_token_id".into(), json!(h.eos_token_id));
        gen.insert("pad_token_id".into(), json!(h.pad_token_id));
        side_files.push(("generation_config.json".into(), pretty(&Value::Object(gen))));
        let v = GgufVocab::from_metadata(&ckpt.weights.metadata, &path)?;
        // tokenizer.json, tokenizer_config.json and, for SentencePiece, tokenizer.model.
        side_files.extend(v.hf_files(&path, h.n_ctx)?);
        pre = v.pre.map(|name| PreChoice {
            reason: "tokenizer.json pre_tokenizer rebuilt from `tokenizer.ggml.pre`".into(),
            name,
        });
        let card = model_card(Meta::new(&ckpt.weights.metadata)).map_err(meta_err(&path))?;
        if let Some(card) = card {
            side_files.push(("README.md".into(), card.into_bytes()));
        }
    }
    let quantized = ts
        .iter()
        .filter(|t| t.dtype.to_ggml().is_some_and(GgmlType::is_quantized))
        .count();
    if quantized > 0 {
        notes.push(format!(
            "{quantized} quantized tensors dequantized to {out_ty}: the values are the quantized ones, not the original weights"
        ));
    }
    Ok(Plan {
        format,
        architecture: Some(h.arch.gguf_name().into()),
        file_type: None,
        gguf_meta: Vec::new(),
        st_meta: vec![("format".into(), "pt".into())],
        tensors,
        side_files,
        fallbacks: Vec::new(),
        notes,
        pre_tokenizer: pre,
    })
}

/// A model card carrying the licence and lineage the GGUF file declares, so that licence
/// checks on the converted directory see what the GGUF file said.
fn model_card(m: Meta<'_>) -> Result<Option<String>, MetaError> {
    let mut fm: BTreeMap<&str, Value> = BTreeMap::new();
    if let Some(l) = m.str("general.license")? {
        fm.insert("license", json!(l));
    }
    if let Some(l) = m.str("general.license.name")? {
        fm.insert("license_name", json!(l));
    }
    if let Some(l) = m.str("general.license.link")? {
        fm.insert("license_link", json!(l));
    }
    let n_base = m.u64("general.base_model.count")?.unwrap_or(0).min(64);
    let mut bases: Vec<Value> = Vec::new();
    for i in 0..n_base {
        let repo = m.str(&format!("general.base_model.{i}.repo_url"))?;
        let org = m.str(&format!("general.base_model.{i}.organization"))?;
        let name = m.str(&format!("general.base_model.{i}.name"))?;
        let base = match (
            repo.and_then(|r| r.strip_prefix("https://huggingface.co/")),
            org,
            name,
        ) {
            (Some(id), _, _) => json!(id),
            (None, Some(o), Some(n)) => json!(format!("{o}/{n}")),
            (None, None, Some(n)) => json!(n),
            _ => continue,
        };
        bases.push(base);
    }
    if !bases.is_empty() {
        fm.insert("base_model", Value::Array(bases));
    }
    if fm.is_empty() {
        return Ok(None);
    }
    let mut s = String::from("---\n");
    for (k, v) in &fm {
        match v {
            Value::Array(items) => {
                s.push_str(&format!("{k}:\n"));
                for i in items {
                    s.push_str(&format!("- {i}\n"));
                }
            }
            other => s.push_str(&format!("{k}: {other}\n")),
        }
    }
    let name = m.str("general.name")?.unwrap_or("model");
    s.push_str(&format!(
        "---\n\n# {name}\n\nConverted from GGUF by modelgate. Licence and base models above are the ones the GGUF file declared.\n"
    ));
    Ok(Some(s))
}

/// A source tensor has the shape the hyper-parameters (from `origin`) imply and a dtype the
/// converter can decode.
fn check_source(
    name: &str,
    t: &crate::formats::TensorInfo,
    parsed: &arch::Parsed,
    h: &HParams,
    origin: &str,
    fp8_scaled: bool,
) -> Result<(), ConvertError> {
    let want = parsed.expected_shape(h);
    if t.shape != want {
        return Err(ConvertError::Shape {
            tensor: name.to_owned(),
            found: t.shape.clone(),
            expected: want,
            why: format!("{origin}: {}", parsed.shape_reason(h)),
        });
    }
    if !(elem::decodable(t.dtype) || fp8_scaled) {
        return Err(ConvertError::UnsupportedDtype {
            tensor: name.to_owned(),
            dtype: t.dtype.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn llama3_parameters_come_back_from_factors() {
        let cfg = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_hidden_layers": 2, "num_key_value_heads": 8, "vocab_size": 128256,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}, "rope_theta": 500000.0});
        let h = HParams::from_config(&cfg, Path::new("c")).unwrap();
        let f = h.rope_freqs().unwrap();
        let back = llama3_from_factors(&h, &f).unwrap();
        assert_eq!(
            back,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 8192
            }
        );
        // The oracle's tiny shape: no frequency falls between the two boundaries.
        let cfg = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 512,
            "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 32, "rope_theta": 500000.0}});
        let h = HParams::from_config(&cfg, Path::new("c")).unwrap();
        let f = h.rope_freqs().unwrap();
        let back = llama3_from_factors(&h, &f).unwrap();
        let mut again = h.clone();
        again.rope_scaling = back;
        assert_eq!(again.rope_freqs().unwrap(), f);
    }

    #[test]
    fn model_card_carries_licence_and_lineage() {
        let m = vec![
            (
                "general.license".to_owned(),
                MetaValue::String("apache-2.0".into()),
            ),
            ("general.base_model.count".to_owned(), MetaValue::U32(1)),
            (
                "general.base_model.0.repo_url".to_owned(),
                MetaValue::String("https://huggingface.co/HuggingFaceTB/SmolLM2-135M".into()),
            ),
        ];
        let card = model_card(Meta::new(&m)).unwrap().unwrap();
        assert!(
            card.starts_with(
                "---\nbase_model:\n- \"HuggingFaceTB/SmolLM2-135M\"\nlicense: \"apache-2.0\"\n---"
            ),
            "{card}"
        );
        assert!(model_card(Meta::new(&[])).unwrap().is_none());
    }
}
