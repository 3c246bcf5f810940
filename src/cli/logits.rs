//! `modelgate logits MODEL --prompt TEXT --top K [--json]`: the K most likely next tokens
//! after a prompt, with their logits and log-probabilities.

use std::path::PathBuf;

use serde::Serialize;

use crate::engine::{top_k, Logits, Math};

use super::generate::EngineArgs;
use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model file (GGUF, safetensors) or model directory
    model: PathBuf,
    /// The text whose next token is scored
    #[arg(long)]
    prompt: String,
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

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut engine = args.engine.load(&args.model)?;
    let prompt = args.engine.encode(&engine, &args.prompt)?;
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
