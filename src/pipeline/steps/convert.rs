//! convert: one step per target, each writing one artifact (a GGUF file, or a safetensors
//! directory swapped into place whole) into the output folder. The conversion reports its
//! own [`Artifact`] record; this step adds where it went and what its files hash to.

use std::fs;
use std::path::Path;

use super::{digest_of, Context, StepKey, StepOutcome};
use crate::convert::{self, recipe, FileType, OutputFormat, RecipeOptions};
use crate::digest::{self, HashOptions, Serialization};
use crate::formats::Checkpoint;
use crate::pipeline::file::{ConvertStep, Target, TargetFormat};
use crate::pipeline::{Artifact, FileDigest, PipelineError, StepRecord};
use crate::report::bom::Hyperparameters;
use crate::report::run::StoredArtifact;

pub fn key(t: &Target, cx: &Context) -> Result<StepKey, PipelineError> {
    Ok(StepKey {
        name: format!("convert:{}", t.name),
        kind: "convert",
        inputs: cx.model_inputs(),
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
    let o = options(t, settings.threads).map_err(|m| PipelineError::Invalid {
        path: p.path.clone(),
        message: m,
    })?;
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
    let summary = convert::convert(&p.model, &write_to, format, &o, &convert::NoProgress)
        .map_err(|e| PipelineError::step(&name, e))?;
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

/// The path of a target's artifact, relative to the output folder.
fn artifact_rel(t: &Target) -> String {
    match t.format {
        TargetFormat::Gguf => format!("{}.gguf", t.name),
        TargetFormat::Safetensors => t.name.clone(),
    }
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
