//! `modelgate imatrix MODEL --text CALIB.txt [--ctx N] [--chunks N] -o imatrix.gguf`:
//! compute an importance matrix with the engine and write it in llama.cpp's GGUF imatrix
//! format, for `convert --imatrix` and `llama-quantize --imatrix`. A summary goes to
//! stdout (`--json` for JSON), a progress bar to stderr on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::engine::calibrate::{self, CalibrationOptions, CalibrationText};
use crate::engine::layered::Budget;
use crate::engine::{DeviceSpec, Math};
use crate::formats::Checkpoint;
use crate::types::Sha256Digest;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model file (GGUF, safetensors), model directory or `hf://ORG/NAME[@REVISION]`
    model: PathBuf,
    /// The calibration text (UTF-8)
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Tokens per chunk; each chunk runs on its own, as llama-imatrix's `-c`
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    ctx: u32,
    /// At most this many chunks [default: all the text holds]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    chunks: Option<u32>,
    /// Where to write the imatrix (GGUF)
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// How weights are multiplied: `reference` dequantizes every weight to f32, `native`
    /// multiplies in the stored type as a deployment would
    #[arg(long, value_enum, default_value_t = Math::Reference)]
    math: Math,
    /// Compute device: `cpu`, or `cuda:N` / `metal` in builds with those features
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Threads for the matrix kernels
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Memory budget (e.g. `800M`, `4G`): one layer's weights and activations must fit;
    /// hidden states go to a temporary file past it [default: half the available memory]
    #[arg(long = "max-memory", value_name = "SIZE", value_parser = super::parity::parse_size)]
    max_memory: Option<u64>,
    /// Where hidden states are kept on disk [default: the system's temporary directory]
    #[arg(long = "spill-dir", value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
    /// No progress on stderr
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

#[derive(Serialize)]
struct TextRef {
    path: String,
    sha256: Sha256Digest,
    tokens: usize,
}

#[derive(Serialize)]
struct Summary {
    output: String,
    sha256: Sha256Digest,
    model: String,
    text: TextRef,
    ctx: usize,
    chunks: usize,
    entries: usize,
    perplexity: f64,
    math: Math,
    spilled: bool,
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    if let Some(n) = args.threads {
        // candle sizes its worker pools from these variables the first time it runs a
        // kernel and offers no other way to set them; nothing has run yet here.
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let hub = super::model_arg::resolve(&mut args.model, &args.hub)?;
    let text = CalibrationText::read(&args.text)?;
    let ckpt = Checkpoint::open(&args.model)?;
    let device = args.device.open()?;
    let d = Budget::default_for_machine();
    let opts = CalibrationOptions {
        ctx: args.ctx as usize,
        chunks: args.chunks.map(|c| c as usize),
        math: args.math,
        budget: Budget {
            max_memory: args.max_memory.unwrap_or(d.max_memory),
            spill_dir: args.spill_dir.clone().unwrap_or(d.spill_dir),
        },
        dataset: args.text.display().to_string(),
    };
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let subject = hub.subject(&args.model);
    let result = calibrate::calibrate(&ckpt, &text, &opts, &device, &mut |p| {
        if let Some(b) = &bar {
            b.set_length((p.layers * p.total_sequences) as u64);
            b.set_position((p.layer * p.total_sequences + p.sequences) as u64);
            b.set_message(format!(
                "layer {}/{}, chunks {}/{}{}",
                (p.layer + 1).min(p.layers),
                p.layers,
                p.sequences,
                p.total_sequences,
                if p.spilled { " (spilled)" } else { "" }
            ));
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let c =
        result.with_context(|| format!("cannot compute an importance matrix of `{subject}`"))?;
    c.imatrix.write_file(&args.output)?;
    let bytes = std::fs::read(&args.output)
        .with_context(|| format!("cannot read back `{}`", args.output.display()))?;
    let summary = Summary {
        output: args.output.display().to_string(),
        sha256: Sha256Digest::of(&bytes),
        model: subject,
        text: TextRef {
            path: args.text.display().to_string(),
            sha256: text.digest,
            tokens: c.text_tokens,
        },
        ctx: c.ctx,
        chunks: c.chunks,
        entries: c.imatrix.entries.len(),
        perplexity: c.perplexity,
        math: args.math,
        spilled: c.spilled,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote `{}`: {} entries from {} chunks of {} tokens ({} tokens of text), perplexity {:.4}",
            summary.output,
            summary.entries,
            summary.chunks,
            summary.ctx,
            summary.text.tokens,
            summary.perplexity
        );
    }
    Ok(Outcome::Pass)
}
