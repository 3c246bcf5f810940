//! Computing an importance matrix (`modelgate imatrix`): run a calibration text through
//! the model with an activation [`Capture`] installed and return llama.cpp's imatrix.
//!
//! The text is cut as `llama-imatrix` cuts it: the whole text tokenized once (BOS first
//! when the model adds one), then consecutive chunks of `ctx` tokens, the remainder
//! dropped, at most `chunks` of them; each chunk runs on its own (an empty KV cache) with
//! its first token replaced by BOS when the model adds one. Every token of every chunk
//! counts towards the sums. The perplexity is llama-imatrix's too: over the second half of
//! each chunk (positions `ctx/2 .. ctx-1` predicting the next token), a sanity figure to
//! compare with its `Final estimate: PPL`. One deliberate difference: llama-imatrix wants
//! at least two chunks of text, we need one.
//!
//! Chunks run layer-major ([`Layered`]): each layer's weights are read once for all
//! chunks and only one layer is in memory, so calibrating a large model stays within the
//! memory budget; hidden states spill to a temporary file past it.
//!
//! The file written records `imatrix.datasets` (the name given, llama-imatrix writes the
//! text's path as typed), `imatrix.chunk_count` (chunks processed) and
//! `imatrix.chunk_size` (`ctx`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use super::capture::Capture;
use super::layered::{self, Budget, Job, Layered, Progress};
use super::model::Math;
use super::EngineError;
use crate::formats::imatrix::{Imatrix, ImatrixFormat};
use crate::formats::Checkpoint;
use crate::types::Sha256Digest;

/// Largest calibration text read.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// A calibration text, read and checked.
#[derive(Clone, Debug)]
pub struct CalibrationText {
    pub path: PathBuf,
    pub text: String,
    pub digest: Sha256Digest,
}

impl CalibrationText {
    /// Read `path`: UTF-8, at most [`MAX_TEXT_BYTES`].
    pub fn read(path: &Path) -> Result<CalibrationText, EngineError> {
        let (bytes, text) =
            crate::userfile::read_capped(path, MAX_TEXT_BYTES, "a calibration text").map_err(
                |source| EngineError::CalibrationText {
                    path: path.to_owned(),
                    source,
                },
            )?;
        Ok(CalibrationText {
            path: path.to_owned(),
            digest: Sha256Digest::of(&bytes),
            text,
        })
    }
}

/// How to calibrate.
#[derive(Clone, Debug)]
pub struct CalibrationOptions {
    /// Tokens per chunk.
    pub ctx: usize,
    /// At most this many chunks (all the text holds when `None`).
    pub chunks: Option<usize>,
    pub math: Math,
    pub budget: Budget,
    /// The name recorded in `imatrix.datasets`.
    pub dataset: String,
}

/// The result: the matrix and what it was computed on.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub imatrix: Imatrix,
    /// Tokens of the whole text.
    pub text_tokens: usize,
    pub chunks: usize,
    pub ctx: usize,
    /// Perplexity over the second half of each chunk, as llama-imatrix computes it.
    pub perplexity: f64,
    /// Hidden states went to a temporary file.
    pub spilled: bool,
}

/// The chunks of `tokens`: `ctx` tokens each, BOS first when `bos` is given.
fn chunks(tokens: &[u32], ctx: usize, limit: Option<usize>, bos: Option<u32>) -> Vec<Vec<u32>> {
    let available = tokens.len() / ctx;
    let n = limit.map_or(available, |c| c.min(available));
    (0..n)
        .map(|i| {
            let mut c = tokens[i * ctx..(i + 1) * ctx].to_vec();
            if let Some(b) = bos {
                c[0] = b;
            }
            c
        })
        .collect()
}

/// `-ln p(next)` for each row of `logits` (`[rows, vocab]`, row-major) and its next token.
fn nll(logits: &[f32], vocab: usize, next: &[u32]) -> Vec<f64> {
    logits
        .chunks_exact(vocab)
        .zip(next)
        .map(|(row, &t)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let lp = row
                .get(t as usize)
                .map_or(f64::NEG_INFINITY, |&v| v as f64 - max);
            sum.ln() - lp
        })
        .collect()
}

/// Compute the importance matrix of `ckpt` on `text`. `progress` sees each layer's
/// progress over the chunks.
pub fn calibrate(
    ckpt: &Checkpoint,
    text: &CalibrationText,
    opts: &CalibrationOptions,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Calibration, EngineError> {
    let ctx = opts.ctx;
    if ctx == 0 {
        return Err(EngineError::BadParam("a chunk size of 0 tokens".into()));
    }
    let (cfg, tokenizer) = layered::open_parts(ckpt)?;
    let tokens = tokenizer.encode(&text.text)?;
    let bos = tokenizer.bos().filter(|_| tokenizer.adds_bos());
    let seqs = chunks(&tokens, ctx, opts.chunks, bos);
    if seqs.is_empty() {
        return Err(EngineError::TextTooShort {
            path: text.path.clone(),
            tokens: tokens.len(),
            ctx,
        });
    }
    if ctx > cfg.context {
        return Err(EngineError::ContextOverflow {
            tokens: ctx,
            context: cfg.context,
        });
    }
    let first = ctx / 2;
    let jobs: Vec<Job> = seqs
        .iter()
        .map(|c| Job {
            tokens: c.clone(),
            split: false,
            keep_from: first,
        })
        .collect();
    let vocab = cfg.vocab;
    let capture = Arc::new(Capture::new());
    let mut l = Layered::new(ckpt, cfg, opts.math, device, jobs, &opts.budget)?;
    let spilled = l.spilled();
    l.set_capture(Some(capture.clone()));
    l.run_layers(progress)?;
    l.set_capture(None);
    let entries = capture.take()?;
    let mut total = 0f64;
    let mut count = 0usize;
    for (j, c) in seqs.iter().enumerate() {
        let logits = l.logits(j)?.flatten_all()?.to_vec1::<f32>()?;
        // rows first..ctx-1 predict tokens first+1..ctx; the last row predicts nothing
        let rows = ctx - 1 - first;
        let next = &c[first + 1..];
        // the scored tokens are the text's own, not the BOS put in place of the first
        let losses = nll(&logits[..rows * vocab], vocab, next);
        total += losses.iter().sum::<f64>();
        count += losses.len();
    }
    let perplexity = if count > 0 {
        (total / count as f64).exp()
    } else {
        f64::NAN
    };
    let n = seqs.len();
    Ok(Calibration {
        imatrix: Imatrix {
            format: ImatrixFormat::Gguf,
            entries,
            datasets: vec![opts.dataset.clone()],
            chunk_count: u32::try_from(n).unwrap_or(u32::MAX),
            chunk_size: u32::try_from(ctx).unwrap_or(u32::MAX),
        },
        text_tokens: tokens.len(),
        chunks: n,
        ctx,
        perplexity,
        spilled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_whole_with_bos_first() {
        let t: Vec<u32> = (10..21).collect();
        let c = chunks(&t, 4, None, Some(1));
        assert_eq!(c, vec![vec![1, 11, 12, 13], vec![1, 15, 16, 17]]);
        assert_eq!(chunks(&t, 4, Some(1), None), vec![vec![10, 11, 12, 13]]);
        assert!(chunks(&t, 12, None, None).is_empty());
    }

    #[test]
    fn nll_is_the_negative_log_softmax_of_the_next_token() {
        let l = [0f32, 0.0, 1.0, 2.0];
        let v = nll(&l, 2, &[1, 0]);
        assert!((v[0] - std::f64::consts::LN_2).abs() < 1e-12);
        let want = (1f64.exp() + 2f64.exp()).ln() - 1.0;
        assert!((v[1] - want).abs() < 1e-12);
    }
}
