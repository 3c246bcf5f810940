//! `modelgate run [PIPELINE.yaml] [--out DIR] [--force] [--log json|text]`: run a pipeline
//! file (default: the example shipped in `fixtures/pipeline/example.yaml`) and print where
//! the reports went and the verdict. Progress goes to stderr: a progress bar on a
//! terminal, one line per step otherwise, or one JSON event per step start and end with
//! `--log json`. Exit 0 when every gate passes, 1 when one fails, 2 for bad input.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::finding::Verdict;
use crate::pipeline::{self, Events, Pipeline, PipelineError, RunOptions, StepRecord};

use super::Outcome;

/// The example pipeline, relative to the repository root.
pub const EXAMPLE: &str = "fixtures/pipeline/example.yaml";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// A progress bar (or one line per step when stderr is not a terminal)
    #[default]
    Text,
    /// One JSON object per line for each step start and end
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline file (YAML, see schemas/pipeline.schema.json); default: the example
    /// pipeline `fixtures/pipeline/example.yaml`
    pipeline: Option<PathBuf>,
    /// Output folder (default: the pipeline file's `out`)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run every step even when its inputs and settings are unchanged
    #[arg(long)]
    force: bool,
    /// Progress on stderr: text or json events
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log: LogFormat,
}

struct JsonLog;

impl Events for JsonLog {
    fn start(&self, name: &str, index: usize, total: usize) {
        let v = json!({ "event": "step-start", "step": name, "index": index, "total": total });
        eprintln!("{v}");
    }
    fn end(&self, r: &StepRecord) {
        let v = json!({
            "event": "step-end",
            "step": r.name,
            "status": r.status,
            "verdict": r.verdict,
            "seconds": r.seconds,
            "outputs": r.outputs,
            "note": r.note,
        });
        eprintln!("{v}");
    }
    fn parity(&self, step: &str, e: &crate::parity::Event) {
        // one line per layer finished (and per sequence on prompt corpora)
        let v = match *e {
            crate::parity::Event::Layers { model, progress: p } => {
                if p.sequences != p.total_sequences || p.layer >= p.layers {
                    return;
                }
                json!({
                    "event": "parity-layer", "step": step, "model": model,
                    "layers_done": p.layer + 1, "layers": p.layers,
                    "sequences": p.total_sequences, "spilled": p.spilled,
                })
            }
            crate::parity::Event::Sequence { done, total } => {
                json!({ "event": "parity-sequence", "step": step, "done": done, "total": total })
            }
        };
        eprintln!("{v}");
    }
}

struct TextLog {
    bar: Option<ProgressBar>,
}

impl Events for TextLog {
    fn download(&self, file: &str, done: u64, size: u64) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "import: download {file} {}/{}",
                crate::inspect::human_bytes(done),
                crate::inspect::human_bytes(size)
            ));
        }
    }
    fn parity(&self, step: &str, e: &crate::parity::Event) {
        if let (Some(b), crate::parity::Event::Layers { model, progress: p }) = (&self.bar, e) {
            b.set_message(format!(
                "{step}: {model} layer {}/{}",
                (p.layer + 1).min(p.layers),
                p.layers
            ));
        }
    }
    fn start(&self, name: &str, index: usize, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(index.saturating_sub(1) as u64);
            b.set_message(name.to_owned());
        }
    }
    fn end(&self, r: &StepRecord) {
        let verdict = r.verdict.map(|v| format!(", {v}")).unwrap_or_default();
        let line = format!(
            "{:<24} {}{verdict} ({:.2} s){}",
            r.name,
            r.status.as_str(),
            r.seconds,
            r.note
                .as_ref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
        match &self.bar {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }
}

fn default_pipeline() -> anyhow::Result<PathBuf> {
    let here = PathBuf::from(EXAMPLE);
    if here.is_file() {
        return Ok(here);
    }
    // Built from a clone: the example is in the source tree the binary was built from.
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE);
    if built.is_file() {
        return Ok(built);
    }
    Err(super::hint(
        anyhow::anyhow!("no pipeline file given and `{EXAMPLE}` is not here"),
        "run from the modelgate repository, or give a pipeline file: `modelgate run PIPELINE.yaml`",
    ))
}

/// A pipeline error with its hint: the pipeline's own, or that of the stage that failed.
fn pipeline_error(e: PipelineError) -> anyhow::Error {
    match e.hint() {
        Some(h) => super::hint(e, h),
        None => e.into(),
    }
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let path = match &args.pipeline {
        Some(p) => p.clone(),
        None => default_pipeline()?,
    };
    let pipeline = Pipeline::load(&path).map_err(pipeline_error)?;
    let opts = RunOptions {
        force: args.force,
        out: args.out.clone(),
    };
    let report = match args.log {
        LogFormat::Json => pipeline::run(&pipeline, &opts, &JsonLog),
        LogFormat::Text => {
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template("{spinner} [{pos}/{len}] {wide_bar} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            });
            let log = TextLog { bar };
            let r = pipeline::run(&pipeline, &opts, &log);
            if let Some(b) = &log.bar {
                b.finish_and_clear();
            }
            r
        }
    }
    .map_err(pipeline_error)?;
    let out = Path::new(&report.out);
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "pipeline `{}`: {} ({} steps, {} cached, {:.2} s)",
        report.name,
        report.verdict,
        report.steps.len(),
        report
            .steps
            .iter()
            .filter(|s| s.status == pipeline::Status::Cached)
            .count(),
        report.seconds
    )?;
    for g in &report.failed_gates {
        writeln!(
            o,
            "failed gate `{}` (step `{}`) on `{}`:",
            g.gate, g.step, g.subject
        )?;
        for r in &g.reasons {
            writeln!(o, "  {r}")?;
        }
    }
    for f in [
        "report.md",
        "report.json",
        "report.sarif",
        "bom.cdx.json",
        "bom.spdx.json",
    ] {
        writeln!(o, "  {}", out.join(f).display())?;
    }
    for a in report.artifacts() {
        writeln!(o, "  {} ({})", out.join(&a.path).display(), a.format)?;
    }
    for s in report.signatures() {
        writeln!(o, "  {}", out.join(&s.signature).display())?;
    }
    Ok(match report.verdict {
        Verdict::Pass => Outcome::Pass,
        Verdict::Fail => Outcome::Fail,
    })
}
