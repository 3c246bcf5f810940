//! imatrix: compute the importance matrices the convert targets ask for with
//! `imatrix: {text: ..., ctx: ..., chunks: ...}`, with the engine (as `modelgate imatrix`
//! does), before any target converts. Targets asking for the same text, `ctx` and
//! `chunks` share one matrix, computed once into `FIRST_TARGET.imatrix.gguf` in the output
//! folder; a target with `imatrix: {file: ...}` uses that file as it is.
//!
//! Every input is found before any step runs ([`plan`]): a calibration text or imatrix
//! file that cannot be read stops the run with the pipeline file and the target named.
//! The step's cache key is the source model, the text's digest, `ctx` and `chunks`, so an
//! edited text recomputes the matrix and every target using it converts again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;

use super::{digest_of, Context, StepKey, StepOutcome};
use crate::engine::calibrate::{self, CalibrationOptions, CalibrationText};
use crate::engine::layered::Budget;
use crate::engine::Math;
use crate::formats::Checkpoint;
use crate::pipeline::file::{imatrix_groups, Pipeline, Target};
use crate::pipeline::{PipelineError, StepRecord};

/// A file a target's calibration reads: where, as the pipeline file names it, its sha256.
#[derive(Clone, Debug)]
pub struct Input {
    pub path: PathBuf,
    /// As reports name it.
    pub shown: String,
    pub sha256: String,
}

/// The importance matrix one target converts with.
#[derive(Clone, Debug)]
pub struct ForTarget {
    /// The imatrix file: computed into the output folder (`shown` relative to it), or
    /// given (`shown` as the pipeline file names it).
    pub imatrix: Input,
    /// The calibration text it was computed from; `None` for a given file.
    pub text: Option<Input>,
    /// Tokens per chunk and chunks asked for, for the budget's sensitivity pass.
    pub ctx: usize,
    pub chunks: Option<usize>,
}

/// One matrix to compute.
#[derive(Clone, Debug)]
pub struct Job {
    /// `imatrix:FIRST_TARGET`
    pub name: String,
    pub text: Input,
    pub ctx: usize,
    pub chunks: Option<usize>,
    /// Relative to the output folder.
    pub output: String,
    /// The targets that use it.
    pub targets: Vec<String>,
}

impl Job {
    /// The matrix as each of its targets uses it, once the step has run (or was cached).
    pub fn for_targets(&self, rec: &StepRecord, cx: &Context) -> Vec<(String, ForTarget)> {
        let sha256 = rec.outputs.get(&self.output).cloned().unwrap_or_default();
        let f = ForTarget {
            imatrix: Input {
                path: cx.out.join(&self.output),
                shown: self.output.clone(),
                sha256,
            },
            text: Some(self.text.clone()),
            ctx: self.ctx,
            chunks: self.chunks,
        };
        self.targets
            .iter()
            .map(|t| (t.clone(), f.clone()))
            .collect()
    }
}

/// What the pipeline file asks for: the matrices to compute, and the targets that bring
/// their own file.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub jobs: Vec<Job>,
    pub files: BTreeMap<String, ForTarget>,
}

fn unreadable(
    p: &Pipeline,
    target: &str,
    what: &str,
    shown: &str,
    e: impl std::fmt::Display,
) -> PipelineError {
    PipelineError::Invalid {
        path: p.path.clone(),
        message: format!("target `{target}`: cannot read {what} `{shown}`: {e}"),
    }
}

/// The innermost cause of an error (`No such file or directory`, `is not UTF-8`), which
/// says what is wrong with the file without repeating what was being done.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Find and digest every calibration text and imatrix file the targets name.
pub fn plan(p: &Pipeline, targets: &[Target]) -> Result<Plan, PipelineError> {
    let mut out = Plan::default();
    for g in imatrix_groups(targets) {
        let first = &targets[g.targets[0]].name;
        let shown = g.text.display().to_string();
        let path = p.resolve(&g.text);
        // The text is read as the step will read it (UTF-8, size cap), so a text that
        // cannot be used stops the run here.
        let text = CalibrationText::read(&path)
            .map_err(|e| unreadable(p, first, "the calibration text", &shown, root_cause(&e)))?;
        out.jobs.push(Job {
            name: format!("imatrix:{first}"),
            text: Input {
                path,
                shown,
                sha256: text.digest.to_hex(),
            },
            ctx: g.ctx,
            chunks: g.chunks,
            output: g.file_name(targets),
            targets: g.targets.iter().map(|&i| targets[i].name.clone()).collect(),
        });
    }
    for t in targets {
        let Some(file) = t.imatrix.as_ref().and_then(|m| m.file.as_ref()) else {
            continue;
        };
        let shown = crate::pipeline::file::normalize(file).display().to_string();
        let path = p.resolve(file);
        let what = "the imatrix file";
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(unreadable(p, &t.name, what, &shown, "not a file")),
            Err(e) => return Err(unreadable(p, &t.name, what, &shown, e)),
        }
        let sha256 =
            digest_of(&path).map_err(|e| unreadable(p, &t.name, "the imatrix file", &shown, e))?;
        out.files.insert(
            t.name.clone(),
            ForTarget {
                imatrix: Input {
                    path,
                    shown,
                    sha256,
                },
                text: None,
                ctx: 0,
                chunks: None,
            },
        );
    }
    Ok(out)
}

pub fn key(job: &Job, cx: &Context) -> StepKey {
    let mut inputs = cx.model_inputs();
    inputs.insert(format!("text:{}", job.text.shown), job.text.sha256.clone());
    StepKey {
        name: job.name.clone(),
        kind: "imatrix",
        inputs,
        settings: serde_json::json!({
            "text": job.text.shown,
            "ctx": job.ctx,
            "chunks": job.chunks,
            "output": job.output,
            "targets": job.targets,
        }),
    }
}

/// A computed matrix.
pub struct Computed {
    output: String,
    sha256: String,
    note: String,
}

pub fn run(job: &Job, cx: &Context) -> Result<Computed, PipelineError> {
    let step = |e: crate::engine::EngineError| PipelineError::step(&job.name, e);
    let text = CalibrationText::read(&job.text.path).map_err(step)?;
    let ckpt =
        Checkpoint::open(&cx.pipeline.model).map_err(|e| PipelineError::step(&job.name, e))?;
    let opts = CalibrationOptions {
        ctx: job.ctx,
        chunks: job.chunks,
        math: Math::Reference,
        budget: Budget::default_for_machine(),
        // The text as the pipeline file names it, so the file is the same wherever the
        // pipeline runs.
        dataset: job.text.shown.clone(),
    };
    let c = calibrate::calibrate(&ckpt, &text, &opts, &Device::Cpu, &mut |_| {}).map_err(step)?;
    let dest = cx.out.join(&job.output);
    c.imatrix
        .write_file(&dest)
        .map_err(|e| PipelineError::step(&job.name, e))?;
    Ok(Computed {
        output: job.output.clone(),
        sha256: digest_of(&dest)?,
        note: format!(
            "{} entries from {} chunks of {} tokens of `{}` (perplexity {:.2}), for {}",
            c.imatrix.entries.len(),
            c.chunks,
            c.ctx,
            job.text.shown,
            c.perplexity,
            job.targets
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

impl StepOutcome for Computed {
    fn fill(self, rec: &mut StepRecord) {
        rec.outputs.insert(self.output, self.sha256);
        rec.note = Some(self.note);
    }
}
