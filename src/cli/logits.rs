//! `modelgate logits MODEL (--prompt TEXT | --ids 1,5,9 | --ids-file F) [--top K] [--json]
//! [--out logits.safetensors]`: without `--out`, the K most likely next tokens after the
//! input, with their logits and log-probabilities; with `--out`, one forward pass over the
//! whole input written as `input_ids` (i64 `[1, T]`) and `logits` (f32 `[1, T, vocab]`), the
//! layout of transformers' `model(ids).logits` that the forward-pass oracles store, so that
//! a new architecture can be compared position by position.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::engine::{top_k, Logits, Math};
use crate::formats::safetensors::{self, TensorSpec};
use crate::formats::DType;

use super::generate::EngineArgs;
use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model file (GGUF, safetensors) or model directory
    model: PathBuf,
    /// The text whose next token is scored
    #[arg(long, required_unless_present_any = ["ids", "ids_file"], conflicts_with_all = ["ids", "ids_file"])]
    prompt: Option<String>,
    /// Token ids to run instead of a prompt, comma-separated
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "ids_file")]
    ids: Option<Vec<u32>>,
    /// A file of token ids (separated by commas or white space, or a JSON list)
    #[arg(long, value_name = "FILE")]
    ids_file: Option<PathBuf>,
    /// Write every position's full logits here (safetensors) instead of printing a table
    #[arg(long, short = 'o', value_name = "FILE", conflicts_with = "json")]
    out: Option<PathBuf>,
    /// How many of the most likely tokens to list
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Serialize)]
struct Entry {
    rank: usize,
    id: u32,
    /// The token's text as it decodes on its own.
    text: String,
    logit: f32,
    logprob: f64,
}

#[derive(Serialize)]
struct Output<'a> {
    model: String,
    math: Math,
    prompt_tokens: &'a [u32],
    top: Vec<Entry>,
}

/// Largest ids file read: far more ids than any context holds.
const MAX_IDS_FILE: u64 = 16 << 20;

/// Token ids from a file: integers separated by commas or white space, optionally inside
/// one pair of brackets (a JSON list).
fn read_ids_file(path: &Path) -> anyhow::Result<Vec<u32>> {
    let shown = path.display();
    let (_, text) = crate::userfile::read_capped(path, MAX_IDS_FILE, "an ids file")
        .with_context(|| format!("cannot read the ids file `{shown}`"))?;
    let body = text.trim();
    let body = body
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or(body);
    let mut ids = Vec::new();
    for (i, tok) in body
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .enumerate()
    {
        let id = tok.parse::<u32>().map_err(|_| {
            anyhow::anyhow!(
                "ids file `{shown}`: item {} is `{tok}`, expected a token id (0 to {})",
                i + 1,
                u32::MAX
            )
        })?;
        ids.push(id);
    }
    if ids.is_empty() {
        bail!("ids file `{shown}` holds no token ids");
    }
    Ok(ids)
}

/// Write `input_ids` and `logits` as transformers lays them out.
fn write_logits(path: &Path, ids: &[u32], logits: &[f32], vocab: usize) -> anyhow::Result<()> {
    let t = ids.len() as u64;
    let specs = [
        TensorSpec::new("input_ids", DType::I64, vec![1, t]),
        TensorSpec::new("logits", DType::F32, vec![1, t, vocab as u64]),
    ];
    let id_bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&i| i64::from(i).to_le_bytes())
        .collect();
    let logit_bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::write_file(path, &specs, &meta, |spec| {
        Ok(Cow::Borrowed(if spec.name == "input_ids" {
            &id_bytes[..]
        } else {
            &logit_bytes[..]
        }))
    })
    .with_context(|| format!("cannot write the logits to `{}`", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut engine = args.engine.load(&args.model)?;
    let prompt = match (&args.prompt, &args.ids, &args.ids_file) {
        (Some(p), _, _) => args.engine.encode(&engine, p)?,
        (None, Some(ids), _) => ids.clone(),
        (None, None, Some(f)) => read_ids_file(f)?,
        (None, None, None) => bail!("give --prompt, --ids or --ids-file"),
    };
    if let Some(out) = &args.out {
        let logits = engine.model.forward(&prompt, Logits::All)?;
        let (rows, vocab) = logits.dims2()?;
        let flat = logits.flatten_all()?.to_vec1::<f32>()?;
        write_logits(out, &prompt, &flat, vocab)?;
        if !args.engine.quiet {
            eprintln!(
                "wrote the logits of {rows} positions x {vocab} to `{}`",
                out.display()
            );
        }
        return Ok(Outcome::Pass);
    }
    let logits = engine.model.forward(&prompt, Logits::Last)?;
    let row = logits.squeeze(0)?.to_vec1::<f32>()?;
    let mut top = Vec::new();
    for (i, s) in top_k(&row, args.top).into_iter().enumerate() {
        top.push(Entry {
            rank: i + 1,
            id: s.id,
            text: engine.tokenizer.decode(&[s.id])?,
            logit: s.logit,
            logprob: s.logprob,
        });
    }
    if args.json {
        let out = Output {
            model: args.model.display().to_string(),
            math: args.engine.math,
            prompt_tokens: &prompt,
            top,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{:>4}  {:>7}  {:>10}  {:>10}  token",
            "rank", "id", "logit", "logprob"
        );
        for e in &top {
            println!(
                "{:>4}  {:>7}  {:>10.4}  {:>10.4}  {:?}",
                e.rank, e.id, e.logit, e.logprob, e.text
            );
        }
    }
    Ok(Outcome::Pass)
}
