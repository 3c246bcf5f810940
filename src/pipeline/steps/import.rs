//! import: fetch an `hf://` source into a local copy (from the Hugging Face cache, or
//! downloaded and verified), hash the source model, then read its licence and lineage.
//! Fetching and hashing always run (the source's root digest is every later step's
//! input, so it cannot itself be cached); reading the licence is cached like any step.

use serde_json::{json, Value};

use super::{open_facts, Context, StepKey, StepOutcome};
use crate::digest::{self, HashOptions, Serialization};
use crate::hub;
use crate::pipeline::file::Pipeline;
use crate::pipeline::{Events, LicenceSummary, PipelineError, StepRecord};
use crate::policy;
use crate::provenance::Provenance;

/// An `hf://` source made local: the folder (or file) the steps read, kept while it
/// lives, and where it came from.
pub struct Fetched {
    pub view: hub::View,
    pub provenance: Provenance,
}

/// Download progress, passed on to the run's [`Events`].
struct Progress<'a> {
    events: &'a dyn Events,
    file: String,
    done: u64,
    size: u64,
}

impl hub::Progress for Progress<'_> {
    fn start(&mut self, file: &str, size: u64, done: u64) {
        self.file = file.to_owned();
        self.done = done;
        self.size = size;
        self.events.download(&self.file, self.done, self.size);
    }
    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        self.events.download(&self.file, self.done, self.size);
    }
    fn finish(&mut self) {}
}

/// Resolve an `hf://` source as the command line does (`HF_HUB_CACHE`, `HF_HUB_OFFLINE`,
/// `HF_TOKEN`, ...); `None` for a local model.
pub fn fetch(p: &Pipeline, ev: &dyn Events) -> Result<Option<Fetched>, PipelineError> {
    let Some(r) = &p.hub else { return Ok(None) };
    let err = |e| PipelineError::step("import", e);
    let sel = hub::Selection::new(&p.file.include, &p.file.exclude).map_err(err)?;
    let settings = hub::Settings::from_env().map_err(err)?;
    let mut progress = Progress {
        events: ev,
        file: String::new(),
        done: 0,
        size: 0,
    };
    let snapshot = hub::resolve(r, &sel, &settings, &mut progress).map_err(err)?;
    let view = hub::View::create(&snapshot, &settings.cache_root).map_err(err)?;
    Ok(Some(Fetched {
        view,
        provenance: snapshot.provenance,
    }))
}

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
            "model": cx.pipeline.model_name(),
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
