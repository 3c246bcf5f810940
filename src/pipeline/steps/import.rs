//! import: hash the source model, then read its licence and lineage. Hashing always runs
//! (the source's root digest is every later step's input, so it cannot itself be cached);
//! reading the licence is cached like any step.

use serde_json::{json, Value};

use super::{open_facts, Context, StepKey, StepOutcome};
use crate::digest::{self, HashOptions, Serialization};
use crate::pipeline::file::Pipeline;
use crate::pipeline::{LicenceSummary, PipelineError, StepRecord};
use crate::policy;

/// The source model's digests.
pub struct Source {
    /// The root digest (hex).
    pub digest: String,
    /// Each file with its sha256, for the step's settings.
    files: Vec<Value>,
}

/// Hash the source model.
pub fn hash(p: &Pipeline) -> Result<Source, PipelineError> {
    let manifest = digest::hash_model(&p.model, &HashOptions::new(Serialization::Files), None)
        .map_err(|e| PipelineError::step("import", e))?;
    Ok(Source {
        digest: manifest.root_digest().to_hex(),
        files: manifest
            .resources
            .iter()
            .map(|r| json!({"path": r.name(), "sha256": r.digest.to_hex()}))
            .collect(),
    })
}

pub fn key(cx: &Context, source: Source) -> StepKey {
    StepKey {
        name: "import".into(),
        kind: "import",
        inputs: cx.model_inputs(),
        settings: json!({
            "model": cx.pipeline.model.display().to_string(),
            "files": source.files,
        }),
    }
}

/// What import read about the source.
pub struct Imported {
    /// The weight format (`safetensors`, `gguf`, ...).
    format: Option<&'static str>,
    /// Licences and lineage, with the obligations for any use.
    licence: LicenceSummary,
}

pub fn run(cx: &Context) -> Result<Imported, PipelineError> {
    let facts = open_facts(&cx.pipeline.model, false, "import")?;
    let cats = cx.catalogues()?;
    let lic = policy::license_report(&facts, cats);
    Ok(Imported {
        format: facts.weight_format.map(|f| f.as_str()),
        licence: lic
            .assessment
            .licence_summary(&lic.obligations, &lic.documents, cats, None),
    })
}

impl StepOutcome for Imported {
    fn fill(self, rec: &mut StepRecord) {
        rec.settings["format"] = json!(self.format);
        rec.licence = Some(self.licence);
    }
}
