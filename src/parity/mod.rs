//! Output parity: how far a candidate model (converted, quantized) drifts from its
//! reference, measured the way llama.cpp's `llama-perplexity --kl-divergence` measures it.
//!
//! In the pipeline it follows convert, scan and policy and precedes sign: a candidate is
//! only adoptable when its statistics stay inside the thresholds of its quant type. Both
//! models run through the one engine in `crate::engine` over the same token ids; text is cut
//! into `ctx`-token chunks and only the second half of each chunk is scored, as llama.cpp
//! does, so every scored token has at least `ctx / 2` tokens of context. Prompts instead are
//! continued greedily by the reference, scored on that continuation, and the position where
//! the candidate's own greedy continuation first departs is reported.
//!
//! Where the reference cannot run on the target machine, `record` stores its top-k
//! log-probabilities in a golden file (see [`golden`]) and `check` compares a candidate
//! against it there.

pub mod golden;
pub mod hardware;
mod report;
pub mod stats;
pub mod thresholds;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::digest::{hash_model_known, DigestError, HashOptions, Serialization};
use crate::engine::layered::{self, Budget, Job, Layered};
use crate::engine::{
    generate, DeviceSpec, Engine, EngineError, GenerationConfig, Logits, Math, ModelConfig,
    Sampler, TextTokenizer,
};
use crate::finding::{Finding, Verdict};
use crate::formats::{Checkpoint, FormatError};
use crate::types::Sha256Digest;

pub use golden::Golden;
pub use hardware::Hardware;
pub use stats::{Position, Summary};
pub use thresholds::{Check, Thresholds};

/// Evaluation text files larger than this are refused: parity needs thousands of tokens,
/// not gigabytes.
const MAX_TEXT_BYTES: u64 = 64 << 20;

/// An error of the parity stage: bad input or a model the engine cannot run (exit code 2).
/// A candidate that exceeds its thresholds is not an error but a failed verdict.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("cannot load `{path}` into the engine")]
    Load {
        path: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("cannot open `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("running `{path}` failed")]
    Run {
        path: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hash `{path}`")]
    Hash {
        path: PathBuf,
        #[source]
        source: DigestError,
    },
    #[error("`{path}` is {size} bytes; evaluation texts are limited to {MAX_TEXT_BYTES} bytes")]
    TextTooLarge { path: PathBuf, size: u64 },
    #[error("`{path}` is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("nothing to evaluate: give `--text FILE` or `--prompts FILE`")]
    NoInput,
    #[error("`{path}` has no prompts (one per non-empty line expected)")]
    NoPrompts { path: PathBuf },
    #[error("`{path}` gives {tokens} tokens, fewer than one chunk of {ctx}")]
    TextTooShort {
        path: PathBuf,
        tokens: usize,
        ctx: usize,
    },
    #[error("a chunk of {ctx} tokens does not fit in the context of `{model}` ({context} tokens)")]
    ContextTooLong {
        model: PathBuf,
        ctx: usize,
        context: usize,
    },
    #[error(
        "`--ctx {0}` is too small: chunks need at least 4 tokens so that half of each is scored"
    )]
    CtxTooSmall(usize),
    #[error("prompt {index} of `{path}` has {tokens} tokens, which with {new} new tokens exceeds the context of {context}")]
    PromptTooLong {
        path: PathBuf,
        index: usize,
        tokens: usize,
        new: usize,
        context: usize,
    },
    #[error("the candidate's vocabulary differs from the reference's: {what}")]
    Vocabulary { what: String },
    #[error("the candidate's architecture differs from the reference's: {what} is {candidate} in the candidate and {reference} in the reference")]
    Architecture {
        what: &'static str,
        reference: String,
        candidate: String,
    },
    #[error("golden file `{path}`: {why}")]
    Golden { path: PathBuf, why: String },
    #[error("cannot keep the reference's logits in `{dir}`")]
    Scratch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ParityError {
    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            ParityError::Load { source, .. } | ParityError::Run { source, .. } => {
                return source.hint()
            }
            ParityError::Open { source, .. } => return source.hint(),
            ParityError::Hash { source, .. } => return source.hint(),
            ParityError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "check the path"
            }
            ParityError::TextTooLarge { .. } => "use an excerpt: parity needs thousands of tokens",
            ParityError::NotText { .. } | ParityError::NoPrompts { .. } => {
                "give a UTF-8 text file (`--text`) or one prompt per line (`--prompts`)"
            }
            ParityError::TextTooShort { .. } => "give a longer text or a smaller `--ctx`",
            ParityError::ContextTooLong { .. } | ParityError::PromptTooLong { .. } => {
                "pass a smaller `--ctx` or `--max-new`"
            }
            ParityError::Vocabulary { .. } | ParityError::Architecture { .. } => {
                "compare a candidate converted from this reference"
            }
            ParityError::Scratch { .. } => {
                "free space there or pass `--spill-dir` on a disk with room for the reference's logits"
            }
            ParityError::Golden { .. } => {
                "record the golden file again with `modelgate parity record`"
            }
            _ => return None,
        })
    }
}

/// What the models are evaluated on.
#[derive(Clone, Debug)]
pub enum Corpus {
    /// Running text cut into chunks of `ctx` tokens.
    Text(PathBuf),
    /// One prompt per non-empty line, each continued greedily by the reference.
    Prompts(PathBuf),
}

impl Corpus {
    pub fn path(&self) -> &Path {
        match self {
            Corpus::Text(p) | Corpus::Prompts(p) => p,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Corpus::Text(_) => "text",
            Corpus::Prompts(_) => "prompts",
        }
    }
}

/// Settings shared by `parity`, `record` and `check`.
#[derive(Clone, Debug)]
pub struct ParityOptions {
    pub corpus: Corpus,
    /// Tokens per chunk (text corpus).
    pub ctx: usize,
    /// At most this many chunks (text corpus); all that fit when `None`.
    pub chunks: Option<usize>,
    /// New tokens per prompt (prompt corpus).
    pub max_new_tokens: usize,
    /// How the candidate multiplies; the reference always runs `reference` math.
    pub candidate_math: Math,
    pub device: DeviceSpec,
    /// Top-k kept per position by `record`.
    pub top_k: usize,
    /// Memory budget and spill directory of layer-major runs (text corpora); half the
    /// available memory and the system's temporary directory when `None`.
    pub budget: Option<Budget>,
}

impl ParityOptions {
    pub fn new(corpus: Corpus) -> ParityOptions {
        ParityOptions {
            corpus,
            ctx: 512,
            chunks: None,
            max_new_tokens: 32,
            candidate_math: Math::Reference,
            device: DeviceSpec::Cpu,
            top_k: 1024,
            budget: None,
        }
    }

    fn budget(&self) -> Budget {
        self.budget
            .clone()
            .unwrap_or_else(Budget::default_for_machine)
    }
}

/// What a parity run reports as it goes, for progress displays and JSON logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Layer-major progress of one model (`reference` or `candidate`).
    Layers {
        model: &'static str,
        progress: layered::Progress,
    },
    /// A prompt or sequence finished (prompt corpora run one sequence at a time).
    Sequence { done: usize, total: usize },
}

/// A model as a report names it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ModelRef {
    pub path: String,
    /// Root digest of the model's files (model-signing `files` serialization).
    pub digest: String,
    pub architecture: String,
    pub layers: usize,
    pub vocab: usize,
    /// sha256 over the vocabulary's token strings in id order.
    pub vocab_digest: String,
    /// Quant type: the GGUF file type, or the dominant storage type of the weights.
    pub quant: String,
    pub math: Math,
}

/// The greedy continuations of one prompt and where they part.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Divergence {
    pub prompt: String,
    pub prompt_tokens: usize,
    pub reference: Vec<u32>,
    pub candidate: Vec<u32>,
    /// Index into the continuation of the first differing token; `None` when both are
    /// equal.
    pub first_divergence: Option<usize>,
    pub reference_text: String,
    pub candidate_text: String,
}

/// The evaluated token stream, as recorded in reports and golden files.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    /// The first position whose logits are scored (they predict `tokens[first_scored + 1]`).
    pub first_scored: usize,
    /// For prompts: the prompt's text; its tokens are `tokens[..first_scored + 1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// What `parity` and `parity check` report.
#[derive(Clone, Debug, Serialize)]
pub struct ParityReport {
    pub reference: ModelRef,
    pub candidate: ModelRef,
    /// `text` or `prompts`, the file, its digest and the settings.
    pub corpus: CorpusRef,
    /// `full` (both models ran here) or `golden` (top-k of a recorded reference).
    pub against: &'static str,
    pub summary: Summary,
    /// The reference compared with itself evaluated another way on the recording machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_floor: Option<Summary>,
    pub divergence: Vec<Divergence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    pub checks: Vec<Check>,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    pub hardware: Hardware,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub golden_hardware: Option<Hardware>,
    pub engine_version: String,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct CorpusRef {
    pub kind: String,
    pub path: String,
    pub digest: String,
    pub ctx: usize,
    pub chunks: usize,
    pub max_new_tokens: usize,
}

impl ParityReport {
    /// Judge the summary against thresholds and set the verdict and findings.
    pub fn judge(&mut self, thresholds: Option<Thresholds>, candidate: &Path) {
        self.checks = thresholds
            .as_ref()
            .map(|t| t.check(&self.summary))
            .unwrap_or_default();
        self.findings = thresholds
            .as_ref()
            .map(|t| t.findings(&self.checks, candidate))
            .unwrap_or_default();
        self.verdict = Verdict::from_findings(&self.findings);
        self.thresholds = thresholds;
    }
}

/// A loaded model with what the report says about it.
struct Side {
    engine: Engine,
    path: PathBuf,
    info: ModelRef,
}

/// The model's root digest; `known` are whole-file digests already computed (by a
/// layer-major run that hashed the weights as it read them).
fn digest_of(path: &Path, known: &[(PathBuf, Sha256Digest)]) -> Result<Sha256Digest, ParityError> {
    let m = hash_model_known(path, &HashOptions::new(Serialization::Files), None, known).map_err(
        |source| ParityError::Hash {
            path: path.to_owned(),
            source,
        },
    )?;
    Ok(m.root_digest())
}

/// The quant type a checkpoint is judged as: the GGUF `general.file_type`, else the storage
/// type holding most of the weight bytes.
pub fn quant_type(ckpt: &Checkpoint) -> String {
    if let Some(ft) = ckpt
        .weights
        .meta("general.file_type")
        .and_then(|v| v.as_u64())
        .and_then(|id| u32::try_from(id).ok())
        .and_then(crate::convert::recipe::FileType::from_id)
    {
        return ft.name().to_owned();
    }
    let mut bytes: std::collections::BTreeMap<String, u64> = Default::default();
    for t in &ckpt.weights.tensors {
        if t.shape.len() >= 2 {
            *bytes.entry(t.dtype.name().to_owned()).or_default() += t.len;
        }
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(n, _)| n)
        .unwrap_or_else(|| "unknown".into())
}

fn vocab_digest(tokenizer: &TextTokenizer) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for id in 0..tokenizer.vocab_size() as u32 {
        let t = tokenizer.token(id).unwrap_or_default();
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    Sha256Digest(h.finalize().into()).to_hex()
}

fn load(path: &Path, math: Math, device: &candle_core::Device) -> Result<Side, ParityError> {
    let ckpt = Checkpoint::open(path).map_err(|source| ParityError::Open {
        path: path.to_owned(),
        source,
    })?;
    let engine = Engine::load(&ckpt, math, device).map_err(|source| ParityError::Load {
        path: path.to_owned(),
        source,
    })?;
    let mut info = model_ref(path, &ckpt, engine.model.config(), &engine.tokenizer, math);
    info.digest = digest_of(path, &[])?.to_hex();
    Ok(Side {
        engine,
        path: path.to_owned(),
        info,
    })
}

fn model_ref(
    path: &Path,
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    tokenizer: &TextTokenizer,
    math: Math,
) -> ModelRef {
    ModelRef {
        path: path.display().to_string(),
        // set once the files are hashed
        digest: String::new(),
        architecture: cfg.architecture.name().to_owned(),
        layers: cfg.n_layers,
        vocab: cfg.vocab,
        vocab_digest: vocab_digest(tokenizer),
        quant: quant_type(ckpt),
        math,
    }
}

/// A checkpoint opened for layer-major runs: configuration and tokenizer, no weights.
struct Opened {
    ckpt: Checkpoint,
    cfg: ModelConfig,
    tokenizer: TextTokenizer,
    path: PathBuf,
    info: ModelRef,
}

fn open(path: &Path, math: Math) -> Result<Opened, ParityError> {
    let ckpt = Checkpoint::open(path).map_err(|source| ParityError::Open {
        path: path.to_owned(),
        source,
    })?;
    let (cfg, tokenizer) = layered::open_parts(&ckpt).map_err(|source| ParityError::Load {
        path: path.to_owned(),
        source,
    })?;
    let info = model_ref(path, &ckpt, &cfg, &tokenizer, math);
    Ok(Opened {
        ckpt,
        cfg,
        tokenizer,
        path: path.to_owned(),
        info,
    })
}

impl Opened {
    fn run_err(&self) -> impl Fn(EngineError) -> ParityError + '_ {
        |source| ParityError::Run {
            path: self.path.clone(),
            source,
        }
    }

    /// Run `jobs` through this model layer-major and hand each job's kept logits to `each`
    /// in job order; the model's digest is set from the weights as they were read.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &mut self,
        math: Math,
        device: &candle_core::Device,
        jobs: Vec<Job>,
        budget: &Budget,
        model: &'static str,
        progress: &mut dyn FnMut(Event),
        each: &mut dyn FnMut(usize, Vec<f32>) -> Result<(), ParityError>,
    ) -> Result<(), ParityError> {
        let run = self.run_err();
        let n = jobs.len();
        let mut l =
            Layered::new(&self.ckpt, self.cfg.clone(), math, device, jobs, budget).map_err(&run)?;
        l.run_layers(&mut |p| progress(Event::Layers { model, progress: p }))
            .map_err(&run)?;
        let mut j = 0;
        for g in l.logit_groups() {
            for t in l.logits(g).map_err(&run)? {
                let v = t
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| run(EngineError::Candle(e)))?;
                each(j, v)?;
                j += 1;
            }
        }
        if j != n {
            return Err(run(EngineError::BadParam(format!(
                "{j} of {n} sequences scored"
            ))));
        }
        let known = l.digests().map_err(&run)?;
        drop((l, run));
        self.info.digest = digest_of(&self.path, &known)?.to_hex();
        Ok(())
    }
}

/// The first `(what, reference, candidate)` whose values differ, as an error.
pub(crate) fn agree(pairs: &[(&'static str, String, String)]) -> Result<(), ParityError> {
    match pairs.iter().find(|(_, r, c)| r != c) {
        Some((what, reference, candidate)) => Err(ParityError::Architecture {
            what,
            reference: reference.clone(),
            candidate: candidate.clone(),
        }),
        None => Ok(()),
    }
}

/// The network an architecture name stands for: llama.cpp writes Mistral models as `llama`
/// (the same decoder; the sliding window is a separate setting).
pub(crate) fn network(architecture: &str) -> &str {
    match architecture {
        "mistral" => "llama",
        n => n,
    }
}

fn same_shape(r: &Side, c: &Side) -> Result<(), ParityError> {
    same_shape_of(
        r.engine.model.config(),
        &r.info,
        c.engine.model.config(),
        &c.info,
    )
}

fn same_shape_of(
    a: &ModelConfig,
    ai: &ModelRef,
    b: &ModelConfig,
    bi: &ModelRef,
) -> Result<(), ParityError> {
    let pair = |what, x: &dyn ToString, y: &dyn ToString| (what, x.to_string(), y.to_string());
    agree(&[
        pair(
            "the architecture",
            &network(a.architecture.name()),
            &network(b.architecture.name()),
        ),
        pair("the layer count", &a.n_layers, &b.n_layers),
        pair("the hidden size", &a.hidden, &b.hidden),
        pair("the head count", &a.n_heads, &b.n_heads),
        pair("the key-value head count", &a.n_kv_heads, &b.n_kv_heads),
        pair("the vocabulary size", &a.vocab, &b.vocab),
    ])?;
    if ai.vocab_digest != bi.vocab_digest {
        return Err(ParityError::Vocabulary {
            what: format!(
                "the token strings differ (vocabulary digests {} and {})",
                &ai.vocab_digest[..12],
                &bi.vocab_digest[..12]
            ),
        });
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<(String, Sha256Digest), ParityError> {
    let io = |source| ParityError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_TEXT_BYTES {
        return Err(ParityError::TextTooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let digest = Sha256Digest::of(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| ParityError::NotText {
        path: path.to_owned(),
    })?;
    Ok((text, digest))
}

/// Token sequences of a text corpus: `ctx`-token chunks, BOS first in each when the model
/// adds one (llama.cpp's perplexity tool does the same).
fn text_sequences(
    tokenizer: &TextTokenizer,
    model: &Path,
    path: &Path,
    text: &str,
    opts: &ParityOptions,
) -> Result<Vec<Sequence>, ParityError> {
    let run = |source| ParityError::Run {
        path: model.to_owned(),
        source,
    };
    let tokens = tokenizer.encode(text).map_err(run)?;
    let ctx = opts.ctx;
    let available = tokens.len() / ctx;
    if available == 0 {
        return Err(ParityError::TextTooShort {
            path: path.to_owned(),
            tokens: tokens.len(),
            ctx,
        });
    }
    let n = opts.chunks.map_or(available, |c| c.clamp(1, available));
    let bos = tokenizer.bos();
    let adds_bos = tokenizer.adds_bos();
    Ok((0..n)
        .map(|i| {
            let mut chunk = tokens[i * ctx..(i + 1) * ctx].to_vec();
            if let (true, Some(b)) = (adds_bos, bos) {
                chunk[0] = b;
            }
            Sequence {
                tokens: chunk,
                first_scored: ctx / 2,
                prompt: None,
            }
        })
        .collect())
}

fn read_prompts(path: &Path) -> Result<(Vec<String>, Sha256Digest), ParityError> {
    let (text, digest) = read_text(path)?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.replace("\\n", "\n"))
        .collect();
    if prompts.is_empty() {
        return Err(ParityError::NoPrompts {
            path: path.to_owned(),
        });
    }
    Ok((prompts, digest))
}

/// The greedy continuation of `prompt`, with the stop token when generation ended on one.
fn continuation(side: &mut Side, prompt: &[u32], n: usize) -> Result<Vec<u32>, ParityError> {
    let cfg = GenerationConfig {
        max_tokens: n,
        stop: side.engine.tokenizer.eos().to_vec(),
    };
    let g =
        generate(&mut side.engine.model, prompt, &cfg, &mut Sampler::Greedy).map_err(|source| {
            ParityError::Run {
                path: side.path.clone(),
                source,
            }
        })?;
    let mut out = g.tokens;
    out.extend(g.stop_token);
    Ok(out)
}

fn prompt_ids(
    side: &Side,
    path: &Path,
    index: usize,
    prompt: &str,
    new: usize,
) -> Result<Vec<u32>, ParityError> {
    let ids = side
        .engine
        .tokenizer
        .encode(prompt)
        .map_err(|source| ParityError::Run {
            path: side.path.clone(),
            source,
        })?;
    let context = side.engine.model.config().context;
    if ids.is_empty() || ids.len() + new > context {
        return Err(ParityError::PromptTooLong {
            path: path.to_owned(),
            index: index + 1,
            tokens: ids.len(),
            new,
            context,
        });
    }
    Ok(ids)
}

/// Prompt sequences: each prompt plus the reference's greedy continuation, scored from
/// the prompt's last token on.
fn prompt_sequences(
    side: &mut Side,
    path: &Path,
    prompts: &[String],
    new: usize,
) -> Result<Vec<Sequence>, ParityError> {
    let mut out = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut tokens = prompt_ids(side, path, i, p, new)?;
        let first_scored = tokens.len() - 1;
        let cont = continuation(side, &tokens, new)?;
        tokens.extend(cont);
        out.push(Sequence {
            tokens,
            first_scored,
            prompt: Some(p.clone()),
        });
    }
    Ok(out)
}

/// Logits of the scored rows of a sequence (positions `first_scored..`), flattened
/// row-major: only those are kept, which halves the memory of a text chunk. With `split`,
/// the sequence runs in two forward passes through the KV cache (a different computation of
/// the same function, used to measure the noise floor).
fn logits(side: &mut Side, seq: &Sequence, split: bool) -> Result<Vec<f32>, ParityError> {
    let run = |source| ParityError::Run {
        path: side.path.clone(),
        source,
    };
    let candle = |e| run(EngineError::Candle(e));
    let tokens = &seq.tokens;
    let from = seq.first_scored;
    let model = &mut side.engine.model;
    model.reset().map_err(run)?;
    let parts: Vec<&[u32]> = if split && tokens.len() > 1 {
        let (a, b) = tokens.split_at(tokens.len() / 2);
        vec![a, b]
    } else {
        vec![tokens]
    };
    let vocab = model.config().vocab;
    let mut out = Vec::with_capacity(tokens.len().saturating_sub(from) * vocab);
    let mut start = 0;
    for p in parts {
        let t = model.forward(p, Logits::All).map_err(run)?;
        let end = start + p.len();
        let keep = from.max(start);
        if keep < end {
            let v = t
                .narrow(0, keep - start, end - keep)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(candle)?;
            out.extend(v);
        }
        start = end;
    }
    Ok(out)
}

fn check_context(side: &Side, seqs: &[Sequence]) -> Result<(), ParityError> {
    check_context_of(side.engine.model.config(), &side.path, seqs)
}

fn check_context_of(cfg: &ModelConfig, model: &Path, seqs: &[Sequence]) -> Result<(), ParityError> {
    let context = cfg.context;
    let longest = seqs.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
    if longest > context {
        return Err(ParityError::ContextTooLong {
            model: model.to_owned(),
            ctx: longest,
            context,
        });
    }
    Ok(())
}

/// The evaluation plan: sequences plus what the report says about the corpus.
struct Plan {
    sequences: Vec<Sequence>,
    corpus: CorpusRef,
}

/// The plan of a text corpus, from the reference's tokenizer and context.
fn plan_text(r: &Opened, text_path: &Path, opts: &ParityOptions) -> Result<Plan, ParityError> {
    if opts.ctx < 4 {
        return Err(ParityError::CtxTooSmall(opts.ctx));
    }
    let context = r.cfg.context;
    if opts.ctx > context {
        return Err(ParityError::ContextTooLong {
            model: r.path.clone(),
            ctx: opts.ctx,
            context,
        });
    }
    let (text, digest) = read_text(text_path)?;
    let sequences = text_sequences(&r.tokenizer, &r.path, text_path, &text, opts)?;
    check_context_of(&r.cfg, &r.path, &sequences)?;
    Ok(Plan {
        corpus: CorpusRef {
            kind: opts.corpus.kind().into(),
            path: text_path.display().to_string(),
            digest: digest.to_hex(),
            ctx: opts.ctx,
            chunks: sequences.len(),
            max_new_tokens: opts.max_new_tokens,
        },
        sequences,
    })
}

fn plan(reference: &mut Side, opts: &ParityOptions) -> Result<Plan, ParityError> {
    if opts.ctx < 4 {
        return Err(ParityError::CtxTooSmall(opts.ctx));
    }
    let path = opts.corpus.path().to_owned();
    let (sequences, digest) = match &opts.corpus {
        Corpus::Text(_) => return Err(ParityError::NoInput),
        Corpus::Prompts(p) => {
            let (prompts, digest) = read_prompts(p)?;
            (
                prompt_sequences(reference, p, &prompts, opts.max_new_tokens)?,
                digest,
            )
        }
    };
    check_context(reference, &sequences)?;
    Ok(Plan {
        corpus: CorpusRef {
            kind: opts.corpus.kind().into(),
            path: path.display().to_string(),
            digest: digest.to_hex(),
            ctx: opts.ctx,
            chunks: sequences.len(),
            max_new_tokens: opts.max_new_tokens,
        },
        sequences,
    })
}

/// Every scored position of `seq` compared in full, in order. Positions are independent, so
/// they are split over the threads (each is the same computation as alone); a text chunk's
/// rows of 32k-150k logits each are otherwise a serial stretch between the layers' work.
fn positions_full(seq: &Sequence, r: &[f32], c: &[f32], vocab: usize, out: &mut Vec<Position>) {
    use rayon::prelude::*;
    let scored = seq.first_scored..seq.tokens.len().saturating_sub(1);
    let compared: Vec<Position> = scored
        .into_par_iter()
        .map(|i| {
            let j = i - seq.first_scored;
            let row = j * vocab..(j + 1) * vocab;
            stats::compare_full(&r[row.clone()], &c[row], seq.tokens[i + 1] as usize)
        })
        .collect();
    out.extend(compared);
}

/// Greedy continuations of every prompt sequence by the candidate, against the reference's.
fn divergences(
    cand: &mut Side,
    seqs: &[Sequence],
    new: usize,
) -> Result<Vec<Divergence>, ParityError> {
    let mut out = Vec::new();
    for s in seqs {
        let Some(prompt) = &s.prompt else { continue };
        let n_prompt = s.first_scored + 1;
        let reference = s.tokens[n_prompt..].to_vec();
        let candidate = continuation(cand, &s.tokens[..n_prompt], new)?;
        let first = reference
            .iter()
            .zip(&candidate)
            .position(|(a, b)| a != b)
            .or_else(|| {
                (reference.len() != candidate.len()).then(|| reference.len().min(candidate.len()))
            });
        let decode = |ids: &[u32]| cand.engine.tokenizer.decode(ids).unwrap_or_default();
        out.push(Divergence {
            prompt: prompt.clone(),
            prompt_tokens: n_prompt,
            reference_text: decode(&reference),
            candidate_text: decode(&candidate),
            reference,
            candidate,
            first_divergence: first,
        });
    }
    Ok(out)
}

fn open_device(spec: &DeviceSpec) -> Result<candle_core::Device, ParityError> {
    spec.open().map_err(|source| ParityError::Load {
        path: PathBuf::from(spec.to_string()),
        source,
    })
}

/// The reference's kept logits between its run and the candidate's: an unnamed temporary
/// file of f32 rows in job order, read back in the same order, so the two models are never
/// in memory together and the comparison uses the reference's exact logits.
struct RowStore {
    /// The rows go to this file; without one they stay in memory (`rows`).
    file: Option<std::fs::File>,
    rows: std::collections::VecDeque<Vec<f32>>,
    dir: PathBuf,
}

impl RowStore {
    fn new(dir: &Path) -> Result<RowStore, ParityError> {
        let file = tempfile::tempfile_in(dir).map_err(|source| ParityError::Scratch {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(RowStore {
            file: Some(file),
            rows: Default::default(),
            dir: dir.to_owned(),
        })
    }

    /// A store that keeps the rows in memory (they fit in the budget beside the run).
    fn in_memory(dir: &Path) -> RowStore {
        RowStore {
            file: None,
            rows: Default::default(),
            dir: dir.to_owned(),
        }
    }

    fn err(&self) -> impl Fn(std::io::Error) -> ParityError + '_ {
        |source| ParityError::Scratch {
            dir: self.dir.clone(),
            source,
        }
    }

    fn push(&mut self, rows: Vec<f32>) -> Result<(), ParityError> {
        use std::io::Write;
        let Some(file) = &self.file else {
            self.rows.push_back(rows);
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(rows.len() * 4);
        for v in rows {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let e = self.err();
        (&*file).write_all(&bytes).map_err(e)
    }

    /// Run `produce`, which hands rows to its argument in order, while a thread of its own
    /// writes them, a few chunks behind at most: the writes go on beside the model's
    /// remaining work instead of between its chunks. A write error stops `produce` at its
    /// next rows and is the error returned.
    fn write_while(
        mut self,
        produce: impl FnOnce(
            &mut dyn FnMut(usize, Vec<f32>) -> Result<(), ParityError>,
        ) -> Result<(), ParityError>,
    ) -> Result<RowStore, ParityError> {
        if self.file.is_none() {
            produce(&mut |_, rows| self.push(rows))?;
            return Ok(self);
        }
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(2);
            let writer = s.spawn(move || -> Result<RowStore, ParityError> {
                for rows in rx {
                    self.push(rows)?;
                }
                Ok(self)
            });
            let produced = produce(&mut |_, rows| {
                // a closed channel: the writer stopped on an error, returned below
                tx.send(rows).map_err(|_| ParityError::Scratch {
                    dir: PathBuf::new(),
                    source: std::io::Error::other("the row writer stopped"),
                })
            });
            drop(tx);
            let written = match writer.join() {
                Ok(w) => w,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let store = written?;
            produced?;
            Ok(store)
        })
    }

    fn rewind(&mut self) -> Result<(), ParityError> {
        use std::io::Seek;
        let e = self.err();
        match &self.file {
            Some(file) => (&*file).rewind().map_err(e),
            None => Ok(()),
        }
    }

    fn next(&mut self, len: usize) -> Result<Vec<f32>, ParityError> {
        use std::io::Read;
        let Some(file) = &self.file else {
            return match self.rows.pop_front() {
                Some(rows) if rows.len() == len => Ok(rows),
                got => Err(self.err()(std::io::Error::other(format!(
                    "kept reference rows of {} values where {len} were expected",
                    got.map_or(0, |r| r.len())
                )))),
            };
        };
        let e = self.err();
        let mut bytes = vec![0u8; len * 4];
        (&*file).read_exact(&mut bytes).map_err(e)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

fn jobs_of(seqs: &[Sequence], split: bool) -> Vec<Job> {
    let mut jobs = Vec::new();
    for s in seqs {
        jobs.push(Job {
            tokens: s.tokens.clone(),
            split: false,
            keep_from: s.first_scored,
        });
        if split {
            jobs.push(Job {
                tokens: s.tokens.clone(),
                split: true,
                keep_from: s.first_scored,
            });
        }
    }
    jobs
}

/// Same vocabulary strings can still tokenize differently (merges, normalizer).
fn same_tokens(r: &Opened, c: &Opened, p: &Path) -> Result<(), ParityError> {
    let (text, _) = read_text(p)?;
    let encode = |side: &Opened| side.tokenizer.encode(&text).map_err(side.run_err());
    let (a, b) = (encode(r)?, encode(c)?);
    if a != b {
        let at = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        return Err(ParityError::Vocabulary {
            what: format!(
                "the tokenizers split `{}` differently from token {at} on",
                p.display()
            ),
        });
    }
    Ok(())
}

/// Run both models over the corpus and compare every scored position. A text corpus runs
/// layer-major, the reference first (its kept logits go to a temporary file), then the
/// candidate; prompts run one sequence at a time with both models loaded, since their
/// greedy continuations need the whole model.
pub fn compare(
    reference: &Path,
    candidate: &Path,
    opts: &ParityOptions,
    thresholds: Option<Thresholds>,
    progress: &mut dyn FnMut(Event),
) -> Result<ParityReport, ParityError> {
    let start = Instant::now();
    let device = open_device(&opts.device)?;
    let (r_info, c_info, corpus, positions, divergence) = match &opts.corpus {
        Corpus::Text(p) => {
            let mut r = open(reference, Math::Reference)?;
            let mut c = open(candidate, opts.candidate_math)?;
            same_shape_of(&r.cfg, &r.info, &c.cfg, &c.info)?;
            let plan = plan_text(&r, p, opts)?;
            check_context_of(&c.cfg, &c.path, &plan.sequences)?;
            same_tokens(&r, &c, p)?;
            let budget = opts.budget();
            // the reference's kept logits stay in memory when they take at most a quarter of
            // the budget (the candidate then runs in what is left); else they go to a file
            let kept: u64 = plan
                .sequences
                .iter()
                .map(|s| (s.tokens.len().saturating_sub(s.first_scored) * r.cfg.vocab * 4) as u64)
                .sum();
            let (store, candidate_budget) = if kept <= budget.max_memory / 4 {
                let left = Budget {
                    max_memory: budget.max_memory - kept,
                    ..budget.clone()
                };
                (RowStore::in_memory(&budget.spill_dir), left)
            } else {
                (RowStore::new(&budget.spill_dir)?, budget.clone())
            };
            let jobs = jobs_of(&plan.sequences, false);
            let mut store = store.write_while(|push| {
                r.evaluate(
                    Math::Reference,
                    &device,
                    jobs.clone(),
                    &budget,
                    "reference",
                    progress,
                    push,
                )
            })?;
            store.rewind()?;
            let vocab = r.cfg.vocab;
            let mut positions = Vec::new();
            c.evaluate(
                opts.candidate_math,
                &device,
                jobs,
                &candidate_budget,
                "candidate",
                progress,
                &mut |j, b| {
                    let a = store.next(b.len())?;
                    positions_full(&plan.sequences[j], &a, &b, vocab, &mut positions);
                    Ok(())
                },
            )?;
            (r.info, c.info, plan.corpus, positions, Vec::new())
        }
        Corpus::Prompts(_) => {
            let mut r = load(reference, Math::Reference, &device)?;
            let mut c = load(candidate, opts.candidate_math, &device)?;
            same_shape(&r, &c)?;
            let plan = plan(&mut r, opts)?;
            check_context(&c, &plan.sequences)?;
            let vocab = r.engine.model.config().vocab;
            let mut positions = Vec::new();
            let total = plan.sequences.len();
            for (i, seq) in plan.sequences.iter().enumerate() {
                let a = logits(&mut r, seq, false)?;
                let b = logits(&mut c, seq, false)?;
                positions_full(seq, &a, &b, vocab, &mut positions);
                progress(Event::Sequence { done: i + 1, total });
            }
            let divergence = divergences(&mut c, &plan.sequences, opts.max_new_tokens)?;
            (r.info, c.info, plan.corpus, positions, divergence)
        }
    };
    let summary = Summary::of(&positions).ok_or(ParityError::NoInput)?;
    let mut report = ParityReport {
        reference: r_info,
        candidate: c_info,
        corpus,
        against: "full",
        summary,
        noise_floor: None,
        divergence,
        thresholds: None,
        checks: Vec::new(),
        verdict: Verdict::Pass,
        findings: Vec::new(),
        hardware: Hardware::detect(&opts.device),
        golden_hardware: None,
        engine_version: env!("CARGO_PKG_VERSION").into(),
        seconds: 0.0,
    };
    report.judge(thresholds, candidate);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn top_ks(seq: &Sequence, a: &[f32], vocab: usize, k: usize) -> Vec<stats::TopK> {
    (seq.first_scored..seq.tokens.len() - 1)
        .map(|p| {
            stats::TopK::from_row(
                &a[(p - seq.first_scored) * vocab..(p - seq.first_scored + 1) * vocab],
                seq.tokens[p + 1] as usize,
                k,
            )
        })
        .collect()
}

/// Run the reference over the corpus and keep what `check` needs: the token ids, each
/// scored position's top-k logits, log-sum-exp and next-token log-probability, plus the
/// noise floor of this machine (the reference evaluated a second way and compared). A text
/// corpus runs layer-major, each chunk once whole and once in two halves.
pub fn record(
    reference: &Path,
    opts: &ParityOptions,
    progress: &mut dyn FnMut(Event),
) -> Result<Golden, ParityError> {
    let device = open_device(&opts.device)?;
    let mut records = Vec::new();
    let mut noise = Vec::new();
    let (info, corpus) = match &opts.corpus {
        Corpus::Text(p) => {
            let mut r = open(reference, Math::Reference)?;
            let plan = plan_text(&r, p, opts)?;
            let vocab = r.cfg.vocab;
            let k = opts.top_k.clamp(1, vocab);
            let mut whole: Vec<f32> = Vec::new();
            r.evaluate(
                Math::Reference,
                &device,
                jobs_of(&plan.sequences, true),
                &opts.budget(),
                "reference",
                progress,
                &mut |j, rows| {
                    let seq = &plan.sequences[j / 2];
                    if j % 2 == 0 {
                        whole = rows;
                    } else {
                        positions_full(seq, &whole, &rows, vocab, &mut noise);
                        records.push(golden::Recorded {
                            sequence: seq.clone(),
                            positions: top_ks(seq, &whole, vocab, k),
                        });
                    }
                    Ok(())
                },
            )?;
            (r.info, plan.corpus)
        }
        Corpus::Prompts(_) => {
            let mut r = load(reference, Math::Reference, &device)?;
            let plan = plan(&mut r, opts)?;
            let vocab = r.engine.model.config().vocab;
            let k = opts.top_k.clamp(1, vocab);
            let total = plan.sequences.len();
            for (i, seq) in plan.sequences.iter().enumerate() {
                let a = logits(&mut r, seq, false)?;
                let b = logits(&mut r, seq, true)?;
                positions_full(seq, &a, &b, vocab, &mut noise);
                records.push(golden::Recorded {
                    sequence: seq.clone(),
                    positions: top_ks(seq, &a, vocab, k),
                });
                progress(Event::Sequence { done: i + 1, total });
            }
            (r.info, plan.corpus)
        }
    };
    let k = records
        .first()
        .and_then(|r| r.positions.first())
        .map_or(opts.top_k, |t| t.top.len());
    Ok(Golden {
        format: golden::FORMAT.into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        reference: info,
        corpus,
        top_k: k,
        hardware: Hardware::detect(&opts.device),
        noise_floor: Summary::of(&noise).ok_or(ParityError::NoInput)?,
        sequences: records,
    })
}

fn compare_golden(rec: &golden::Recorded, b: &[f32], vocab: usize, positions: &mut Vec<Position>) {
    let seq = &rec.sequence;
    for (j, top) in rec.positions.iter().enumerate() {
        let p = seq.first_scored + j;
        positions.push(stats::compare_topk(
            top,
            &b[j * vocab..(j + 1) * vocab],
            seq.tokens[p + 1] as usize,
        ));
    }
}

/// Compare a candidate with a golden file, running only the candidate (layer-major when
/// the golden file was recorded on text).
pub fn check(
    candidate: &Path,
    golden: &Golden,
    golden_path: &Path,
    opts: &ParityOptions,
    thresholds: Option<Thresholds>,
    progress: &mut dyn FnMut(Event),
) -> Result<ParityReport, ParityError> {
    let start = Instant::now();
    let device = open_device(&opts.device)?;
    let seqs: Vec<Sequence> = golden
        .sequences
        .iter()
        .map(|s| s.sequence.clone())
        .collect();
    let mut positions = Vec::new();
    let (info, divergence) = if golden.corpus.kind == "text" {
        let mut c = open(candidate, opts.candidate_math)?;
        golden.check_candidate(golden_path, &c.info)?;
        check_context_of(&c.cfg, &c.path, &seqs)?;
        let vocab = c.cfg.vocab;
        c.evaluate(
            opts.candidate_math,
            &device,
            jobs_of(&seqs, false),
            &opts.budget(),
            "candidate",
            progress,
            &mut |j, b| {
                compare_golden(&golden.sequences[j], &b, vocab, &mut positions);
                Ok(())
            },
        )?;
        (c.info, Vec::new())
    } else {
        let mut c = load(candidate, opts.candidate_math, &device)?;
        golden.check_candidate(golden_path, &c.info)?;
        check_context(&c, &seqs)?;
        let vocab = c.engine.model.config().vocab;
        let total = golden.sequences.len();
        for (i, rec) in golden.sequences.iter().enumerate() {
            let b = logits(&mut c, &rec.sequence, false)?;
            compare_golden(rec, &b, vocab, &mut positions);
            progress(Event::Sequence { done: i + 1, total });
        }
        let divergence = divergences(&mut c, &seqs, golden.corpus.max_new_tokens)?;
        (c.info, divergence)
    };
    let summary = Summary::of(&positions).ok_or(ParityError::NoInput)?;
    let mut report = ParityReport {
        reference: golden.reference.clone(),
        candidate: info,
        corpus: golden.corpus.clone(),
        against: "golden",
        summary,
        noise_floor: Some(golden.noise_floor.clone()),
        divergence,
        thresholds: None,
        checks: Vec::new(),
        verdict: Verdict::Pass,
        findings: Vec::new(),
        hardware: Hardware::detect(&opts.device),
        golden_hardware: Some(golden.hardware.clone()),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        seconds: 0.0,
    };
    report.judge(thresholds, candidate);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_beside_their_producer_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = RowStore::new(dir.path()).unwrap();
        let rows = |j: usize| -> Vec<f32> { (0..1000).map(|i| (i * 7 + j) as f32 * 0.5).collect() };
        let mut store = store
            .write_while(|push| (0..9).try_for_each(|j| push(j, rows(j))))
            .unwrap();
        store.rewind().unwrap();
        for j in 0..9 {
            assert_eq!(store.next(1000).unwrap(), rows(j));
        }
        // in memory: the same rows in the same order, and a length that does not match
        // is an error
        let mut store = RowStore::in_memory(dir.path())
            .write_while(|push| (0..9).try_for_each(|j| push(j, rows(j))))
            .unwrap();
        store.rewind().unwrap();
        for j in 0..8 {
            assert_eq!(store.next(1000).unwrap(), rows(j));
        }
        assert!(store.next(999).is_err());
        assert!(store.next(1000).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_error_stops_the_producer_and_is_the_error() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let store = RowStore {
            file: Some(file),
            rows: Default::default(),
            dir: PathBuf::from("/spill"),
        };
        let mut pushed = 0;
        let e = store
            .write_while(|push| {
                for j in 0..1000 {
                    push(j, vec![1.0; 1 << 16])?;
                    pushed += 1;
                }
                Ok(())
            })
            .err()
            .unwrap();
        assert!(pushed < 1000);
        assert!(e.to_string().contains("`/spill`"), "{e}");
        assert!(matches!(e, ParityError::Scratch { ref dir, .. } if dir == Path::new("/spill")));
    }
}
