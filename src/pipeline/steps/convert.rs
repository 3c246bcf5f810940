//! convert: one step per target, each writing one artifact (a GGUF file, or a safetensors
//! directory swapped into place whole) into the output folder. The conversion reports its
//! own [`Artifact`] record; this step adds where it went and what its files hash to, the
//! importance matrix and calibration text it was quantized with, and for a `target_bpw` /
//! `max_size` target the mix the size budget chose (the budget conversion of
//! [`crate::pipeline::budget`], which calls the convert and engine stages).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::imatrix::ForTarget;
use super::{digest_of, Context, StepKey, StepOutcome};
use crate::convert::budget::Budget;
use crate::convert::{self, recipe, ConvertError, FileType, OutputFormat, RecipeOptions};
use crate::digest::{self, HashOptions, Serialization};
use crate::formats::Checkpoint;
use crate::pipeline::budget::BudgetOptions;
use crate::pipeline::file::{artifact_rel, ConvertStep, Size, Target, TargetFormat};
use crate::pipeline::{Artifact, FileDigest, FileRef, PipelineError, StageError, StepRecord};
use crate::report::bom::Hyperparameters;
use crate::report::run::{Calibration, Mix, StoredArtifact};

pub fn key(t: &Target, cx: &Context) -> Result<StepKey, PipelineError> {
    let mut inputs = cx.model_inputs();
    if let Some(c) = cx.calibrations.get(&t.name) {
        inputs.insert("imatrix".into(), c.imatrix.sha256.clone());
        if let Some(text) = &c.text {
            inputs.insert(format!("text:{}", text.shown), text.sha256.clone());
        }
    }
    Ok(StepKey {
        name: format!("convert:{}", t.name),
        kind: "convert",
        inputs,
        // Threads do not change the output (conversion is deterministic), so they are not
        // part of the key.
        settings: serde_json::to_value(t).map_err(|e| PipelineError::Internal(e.to_string()))?,
    })
}

/// The artifact a conversion wrote.
pub struct Converted {
    artifact: Artifact,
    /// The conversion's notes (defaults taken, tensors dropped), joined.
    note: Option<String>,
}

pub fn run(settings: &ConvertStep, t: &Target, cx: &Context) -> Result<Converted, PipelineError> {
    let p = cx.pipeline;
    let name = format!("convert:{}", t.name);
    let mut o = options(t, settings.threads).map_err(|m| PipelineError::Invalid {
        path: p.path.clone(),
        message: m,
    })?;
    let calibration = cx.calibrations.get(&t.name);
    let mut record = None;
    if let Some(c) = calibration {
        let input = convert::ImatrixInput::read(&c.imatrix.path)
            .map_err(|e| PipelineError::step(&name, e))?;
        record = Some(calibration_record(c, &input));
        o.imatrix = Some(Arc::new(input));
        o.recipe.has_imatrix = true;
    }
    let rel = artifact_rel(t);
    let dest = cx.out.join(&rel);
    let (format, write_to) = match t.format {
        TargetFormat::Gguf => (OutputFormat::Gguf, dest.clone()),
        // convert refuses to replace a directory; write beside it, then swap.
        TargetFormat::Safetensors => (
            OutputFormat::HfDir,
            cx.out.join(format!(".{}.staging", t.name)),
        ),
    };
    if write_to != dest && write_to.exists() {
        fs::remove_dir_all(&write_to).map_err(|e| PipelineError::Write {
            path: write_to.clone(),
            source: e,
        })?;
    }
    let (summary, mix) = match (t.is_budget(), calibration) {
        (true, Some(c)) => {
            let (s, m) = budget_mix(t, c, &p.model, &write_to, &o).map_err(|e| match e {
                // Only the model says which budgets are reachable; name the setting as the
                // pipeline file writes it.
                StageError::Convert(ConvertError::BudgetOutOfRange { min, max, .. }) => {
                    PipelineError::Invalid {
                        path: p.path.clone(),
                        message: format!(
                            "target `{}`: {} is outside what this model can be written in: from {min} to {max}",
                            t.name,
                            budget_setting(t)
                        ),
                    }
                }
                e => PipelineError::step(&name, e),
            })?;
            (s, Some(m))
        }
        _ => {
            let s = convert::convert(&p.model, &write_to, format, &o, &convert::NoProgress)
                .map_err(|e| match e {
                    // A `tensor_types` override can ask for such a type too.
                    ConvertError::NeedsImatrix { .. } if calibration.is_none() => {
                        PipelineError::Invalid {
                            path: p.path.clone(),
                            message: format!(
                                "target `{}`: {e}: add `imatrix: {{ text: CALIBRATION.txt }}` or `imatrix: {{ file: IMATRIX.gguf }}`",
                                t.name
                            ),
                        }
                    }
                    e => PipelineError::step(&name, e),
                })?;
            (s, None)
        }
    };
    if write_to != dest {
        swap_dir(&write_to, &dest)?;
    }
    let m = digest::hash_model(&dest, &HashOptions::new(Serialization::Files), None)
        .map_err(|e| PipelineError::step(&name, e))?;
    let mut artifact = summary.artifact(StoredArtifact {
        name: t.name.clone(),
        path: rel,
        format: t.format.as_str().to_owned(),
        sha256: digest_of(&dest)?,
        files: m
            .resources
            .iter()
            .map(|r| FileDigest {
                path: r.name(),
                sha256: r.digest.to_hex(),
            })
            .collect(),
        bytes: m.bytes,
    });
    // The BOMs describe the artifact as written, so its hyper-parameters are read back
    // from it. One that does not open is reported by the verify step, which re-opens it.
    artifact.hyperparameters = Checkpoint::open(&dest)
        .ok()
        .map(|c| Hyperparameters::of(&c));
    artifact.calibration = record;
    artifact.mix = mix;
    Ok(Converted {
        artifact,
        note: (!summary.notes.is_empty()).then(|| summary.notes.join("; ")),
    })
}

impl StepOutcome for Converted {
    fn fill(self, rec: &mut StepRecord) {
        rec.outputs
            .insert(self.artifact.path.clone(), self.artifact.sha256.clone());
        rec.artifact = Some(self.artifact);
        rec.note = self.note;
    }
}

/// What the report and the BOMs record of a target's importance matrix.
fn calibration_record(c: &ForTarget, input: &convert::ImatrixInput) -> Calibration {
    Calibration {
        text: c.text.as_ref().map(|t| FileRef {
            path: t.shown.clone(),
            sha256: t.sha256.clone(),
        }),
        imatrix: FileRef {
            path: c.imatrix.shown.clone(),
            sha256: input.sha256.to_hex(),
        },
        entries: input.matrix.entries.len(),
        ctx: input.matrix.chunk_size,
        chunks: input.matrix.chunk_count,
        datasets: input.matrix.datasets.clone(),
    }
}

/// The budget setting as the pipeline file writes it: `target_bpw: 4.5`, `max_size: 800M`.
fn budget_setting(t: &Target) -> String {
    match (&t.max_size, t.target_bpw) {
        (Some(Size::Bytes(n)), _) => format!("`max_size: {n}`"),
        (Some(Size::Text(s)), _) => format!("`max_size: {s}`"),
        (None, Some(b)) => format!("`target_bpw: {b}`"),
        (None, None) => String::new(),
    }
}

/// Sensitivity-pass chunks when the pipeline file gives no `imatrix.chunks` (as
/// `convert --chunks`).
const BUDGET_CHUNKS: usize = 4;

/// A `target_bpw` / `max_size` target: the size-budget mix, its sensitivity measured on
/// the target's calibration text. The written file is not measured again here: the parity
/// step compares it with its reference on the evaluation text.
fn budget_mix(
    t: &Target,
    c: &ForTarget,
    src: &Path,
    out: &Path,
    o: &convert::Options,
) -> Result<(convert::Summary, Mix), StageError> {
    let budget = match (&t.max_size, t.target_bpw) {
        (Some(s), _) => Budget::Bytes(s.bytes().map_err(ConvertError::Options)?),
        (None, Some(b)) => Budget::Bpw(b),
        (None, None) => return Err(ConvertError::Options("no budget".into()).into()),
    };
    let Some(text) = &c.text else {
        return Err(ConvertError::Options("a budget mix needs a calibration text".into()).into());
    };
    let mut b = BudgetOptions::new(budget, text.path.clone());
    b.ctx = c.ctx;
    b.chunks = c.chunks.unwrap_or(BUDGET_CHUNKS);
    b.probes = t.probes.unwrap_or(b.probes);
    b.measure = false;
    let outcome = crate::pipeline::budget::convert_to_budget(src, out, o, &b, &mut |_| {})?;
    let mix = Mix {
        budget: match budget {
            Budget::Bpw(x) => format!("target_bpw {x}"),
            Budget::Bytes(n) => format!("max_size {n}"),
        },
        budget_bytes: outcome.budget_bytes,
        min_bpw: outcome.min_bpw,
        max_bpw: outcome.max_bpw,
        probes: outcome.probes.len(),
        predicted_kld: outcome.predicted_kld,
        groups: outcome.groups.clone(),
    };
    Ok((outcome.summary, mix))
}

/// The conversion options a target asks for; `Err` says which setting is wrong.
fn options(t: &Target, threads: Option<usize>) -> Result<convert::Options, String> {
    let mut o = convert::Options::default();
    if let Some(ty) = &t.ty {
        o.file_type = Some(FileType::parse(ty).ok_or_else(|| {
            format!(
                "target `{}`: `{ty}` is not a type modelgate writes (choose one of {})",
                t.name,
                FileType::names().join(", ")
            )
        })?);
    }
    if let Some(n) = threads {
        o.threads = n;
    }
    let op = &t.options;
    let ggml = |s: &Option<String>| s.as_deref().map(recipe::parse_ggml_type).transpose();
    o.recipe = RecipeOptions {
        leave_output_tensor: op.leave_output_tensor,
        pure: op.pure,
        output_tensor_type: ggml(&op.output_tensor_type)?,
        token_embedding_type: ggml(&op.token_embedding_type)?,
        tensor_types: op
            .tensor_types
            .iter()
            .map(|s| recipe::parse_tensor_type(s))
            .collect::<Result<_, _>>()?,
        ..RecipeOptions::default()
    };
    o.allow_requantize = op.allow_requantize;
    o.pre_tokenizer = op.pre_tokenizer.clone();
    o.name = op.model_name.clone();
    o.source_url = op.source_url.clone();
    o.quantized_by = op.quantized_by.clone();
    Ok(o)
}

/// Replace `dest` (a directory) with `staged`, leaving `dest` complete at every moment but
/// the two renames.
fn swap_dir(staged: &Path, dest: &Path) -> Result<(), PipelineError> {
    let werr = |p: &Path| {
        let p = p.to_owned();
        move |e| PipelineError::Write { path: p, source: e }
    };
    let old = dest.with_file_name(format!(
        ".{}.old",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if old.exists() {
        fs::remove_dir_all(&old).map_err(werr(&old))?;
    }
    if dest.exists() {
        fs::rename(dest, &old).map_err(werr(dest))?;
    }
    fs::rename(staged, dest).map_err(werr(dest))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(werr(&old))?;
    }
    Ok(())
}
