//! `modelgate generate MODEL --prompt TEXT [-n N] [--chat] [--math reference|native]`:
//! continue a prompt with the reference engine, greedy unless a temperature is given.
//!
//! stdout carries the generated text (or `--json`); timings go to stderr.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::engine::{self, DeviceSpec, Engine, GenerationConfig, Math, Sampler, StopReason};

use super::Outcome;

/// Engine options shared by `generate` and `logits`.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// How weights are multiplied: `reference` dequantizes every weight to f32, `native`
    /// keeps the stored (quantized) type and uses quantized matmul
    #[arg(long, value_enum, default_value_t = Math::Reference)]
    pub math: Math,
    /// Compute device: `cpu`, or `cuda:N` / `metal` in builds with those cargo features
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Threads for the matrix kernels (default: one per physical core)
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Apply the model's chat template to the prompt (one user turn, then the assistant)
    #[arg(long)]
    pub chat: bool,
    /// No timing or progress lines on stderr
    #[arg(long, short)]
    pub quiet: bool,
}

impl EngineArgs {
    /// Configure threads, open the device and load the checkpoint.
    pub fn load(&self, model: &Path) -> anyhow::Result<Engine> {
        if let Some(n) = self.threads {
            // candle sizes its worker pools from these variables the first time it runs a
            // kernel and offers no other way to set them; nothing has run yet here.
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        let device = self.device.open()?;
        let start = Instant::now();
        let engine = Engine::open(model, self.math, &device)
            .with_context(|| format!("cannot load `{}` into the engine", model.display()))?;
        if !self.quiet {
            let c = engine.model.config();
            eprintln!(
                "loaded `{}`: {}, {} layers, vocabulary {}, context {}, {} math, tokenizer {} ({:.2} s)",
                model.display(),
                c.architecture.name(),
                c.n_layers,
                c.vocab,
                c.context,
                match self.math {
                    Math::Reference => "reference",
                    Math::Native => "native",
                },
                engine.tokenizer.origin(),
                start.elapsed().as_secs_f64()
            );
        }
        Ok(engine)
    }

    /// The prompt's token ids, through the chat template when `--chat` is given.
    pub fn encode(&self, engine: &Engine, prompt: &str) -> anyhow::Result<Vec<u32>> {
        let ids = if self.chat {
            engine.tokenizer.encode_chat(prompt)?
        } else {
            engine.tokenizer.encode(prompt)?
        };
        let context = engine.model.config().context;
        if ids.len() > context {
            return Err(super::hint(
                engine::EngineError::ContextOverflow {
                    tokens: ids.len(),
                    context,
                },
                "shorten the prompt",
            ));
        }
        if ids.is_empty() {
            return Err(super::hint(
                engine::EngineError::EmptyInput,
                "give a non-empty --prompt",
            ));
        }
        Ok(ids)
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model file (GGUF, safetensors) or model directory
    model: PathBuf,
    /// The text to continue
    #[arg(long)]
    prompt: String,
    /// Most new tokens
    #[arg(short = 'n', long = "max-tokens", default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed for sampling
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON (prompt and generated token ids, text, stop reason) instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Serialize)]
struct Output<'a> {
    model: String,
    math: Math,
    prompt_tokens: &'a [u32],
    tokens: &'a [u32],
    text: String,
    stop_reason: StopReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_token: Option<u32>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut sampler = Sampler::new(args.temperature, args.seed)?;
    let mut engine = args.engine.load(&args.model)?;
    let prompt = args.engine.encode(&engine, &args.prompt)?;
    let cfg = GenerationConfig {
        max_tokens: args.max_tokens,
        stop: engine.tokenizer.eos().to_vec(),
    };
    let g = engine::generate(&mut engine.model, &prompt, &cfg, &mut sampler)?;
    let text = engine.tokenizer.decode(&g.tokens)?;
    if !args.engine.quiet {
        let rate = |n: usize, t: std::time::Duration| {
            let s = t.as_secs_f64();
            if s > 0.0 {
                n as f64 / s
            } else {
                0.0
            }
        };
        eprintln!(
            "prompt: {} tokens in {:.3} s ({:.1} tokens/s); generated {} tokens, {} steps in {:.3} s ({:.1} tokens/s); stop: {}",
            prompt.len(),
            g.prompt_time.as_secs_f64(),
            rate(prompt.len(), g.prompt_time),
            g.tokens.len(),
            g.generation_steps,
            g.generation_time.as_secs_f64(),
            rate(g.generation_steps, g.generation_time),
            match g.reason {
                StopReason::Eos => "end of sequence",
                StopReason::Length => "token limit",
                StopReason::Context => "context full",
            }
        );
    }
    if args.json {
        let out = Output {
            model: args.model.display().to_string(),
            math: args.engine.math,
            prompt_tokens: &prompt,
            tokens: &g.tokens,
            text,
            stop_reason: g.reason,
            stop_token: g.stop_token,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{text}");
    }
    Ok(Outcome::Pass)
}
