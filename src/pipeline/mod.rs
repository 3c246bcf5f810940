//! Pipelines: one file runs the stages in order on a model and writes reports people and
//! programs read. The last layer of the data flow, above every stage module.
//!
//! A pipeline file ([`file`]) names a source model, a policy file, an output folder and
//! steps: import (always: hash the source, read its licence and lineage), scan, convert
//! (one or more targets), verify (scan and re-open every artifact), policy, parity (per
//! target) and sign. Each step calls the stage's library function, exactly as the stage's
//! own subcommand does; nothing is shelled out. Each step's cache key is sha256 over its
//! input content digests, settings and tool version ([`cache`]); an unchanged step is
//! reported `cached` and not run again.
//!
//! The output folder receives the artifacts, their signatures, and `report.json`,
//! `report.md`, `report.sarif`, `bom.cdx.json` and `bom.spdx.json`, rendered by
//! [`crate::report`] and each written to a temporary file renamed into place. Nothing
//! here prints: progress goes through [`Events`].

pub mod cache;
pub mod file;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use file::{Pipeline, PipelineFile};
pub use run::{run, RunOptions};

use crate::finding::Verdict;
use crate::sign::attest::ReportIn;

/// An error that stops a pipeline before it reaches a verdict: a bad pipeline file, an
/// unreadable input, a stage that cannot run. Gate failures are not errors; they are
/// findings in the report.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pipeline file that does not parse or does not fit the schema.
    #[error("`{path}:{line}:{column}`: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// A pipeline file that parses but says something impossible.
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A stage failed to run (not a gate failure).
    #[error("step `{step}` could not run")]
    Step {
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step the pipeline asks for that this build of modelgate does not have.
    #[error("step `{step}` is not available: {why}")]
    Unavailable { step: String, why: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    pub(crate) fn step(step: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        PipelineError::Step {
            step: step.to_owned(),
            source: Box::new(e),
        }
    }
}

/// How a step ended in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran.
    Ran,
    /// Its inputs and settings were unchanged; the earlier result stands.
    Cached,
    /// It did not run (the reason is in `note`).
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ran => "ran",
            Status::Cached => "cached",
            Status::Skipped => "skipped",
        }
    }
}

/// One step of one run, as `report.json` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    /// `scan`, `convert:q8_0`, `sign:q8_0`, ...
    pub name: String,
    /// The step kind: `import`, `scan`, `convert`, `verify`, `policy`, `parity`, `sign`.
    pub step: String,
    pub status: Status,
    /// The gate verdict, for gate steps (scan, verify, policy, parity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Wall time of this step in this run (for a cached step, the time to check the cache).
    pub seconds: f64,
    /// Wall time of the run that produced the result (equal to `seconds` when it ran).
    pub run_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// Input name -> sha256 (hex) of its content.
    pub inputs: BTreeMap<String, String>,
    /// Output path (relative to the output folder) -> sha256 (hex) of its content.
    pub outputs: BTreeMap<String, String>,
    pub settings: Value,
    /// Gate results, one per subject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<ReportIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<LicenceSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRecord>,
    /// Why the step was skipped, or what else to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the step ran (UTC; `SOURCE_DATE_EPOCH` when set). A cached step keeps the time
    /// of the run that produced its result; the BOMs take their times from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_at: Option<String>,
}

/// One file of an artifact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
}

/// Tensors and bytes of one storage type.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TypeStat {
    pub tensors: u64,
    pub bytes: u64,
}

/// A converted model in the output folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Artifact {
    /// The target name.
    pub name: String,
    /// Relative to the output folder: `q8_0.gguf`, or `f32/` for a directory.
    pub path: String,
    /// `gguf` or `safetensors`.
    pub format: String,
    /// The quantization (`Q8_0`, `Q4_K_M`), for GGUF targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// sha256 of the file, or the root digest (OpenSSF model signing) of a directory.
    pub sha256: String,
    pub files: Vec<FileDigest>,
    pub bytes: u64,
    pub tensors: u64,
    pub parameters: u64,
    pub bits_per_weight: f64,
    pub types: BTreeMap<String, TypeStat>,
    /// Architecture hyper-parameters read back from the artifact, for the BOMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperparameters: Option<crate::report::bom::Hyperparameters>,
}

/// A licence the model is under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LicenceRef {
    /// modelgate's (Hugging Face) licence id.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spdx: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `declared`, or how it was inherited.
    pub source: String,
}

/// A declared base model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaseModelRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
}

/// Licences, lineage and obligations of the source model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LicenceSummary {
    pub model_name: String,
    pub licences: Vec<LicenceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    pub base_models: Vec<BaseModelRef>,
    pub datasets: Vec<String>,
    /// The obligations for the policy's intended use (or for any use, without a policy).
    pub obligations: Vec<Value>,
    pub documents: Vec<String>,
    /// The policy the obligations are for, when one was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A signature the sign step wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignatureRecord {
    pub artifact: String,
    /// Relative to the output folder.
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    pub algorithm: String,
    pub key_id: String,
    /// The model signing root digest of the artifact.
    pub root_digest: String,
    /// Where the key came from: `env:NAME` or the key file.
    pub key_source: String,
}

/// A gate that failed and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateFailure {
    pub step: String,
    pub gate: String,
    pub subject: String,
    /// The error findings, as `rule: message`.
    pub reasons: Vec<String>,
}

/// A file the run read, with its digest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub sha256: String,
}

/// Everything one run concluded: `report.json`, and what the other reports render.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub tool: Tool,
    pub name: String,
    pub pipeline: FileRef,
    /// The source model and its root digest.
    pub model: FileRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<FileRef>,
    pub out: String,
    /// Pass only when every gate passed.
    pub verdict: Verdict,
    pub failed_gates: Vec<GateFailure>,
    pub seconds: f64,
    pub steps: Vec<StepRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl RunReport {
    /// Every gate result, in step order.
    pub fn gates(&self) -> impl Iterator<Item = (&StepRecord, &ReportIn)> {
        self.steps
            .iter()
            .flat_map(|s| s.gates.iter().map(move |g| (s, g)))
    }

    /// The artifacts, in target order.
    pub fn artifacts(&self) -> impl Iterator<Item = &Artifact> {
        self.steps.iter().filter_map(|s| s.artifact.as_ref())
    }

    pub fn signatures(&self) -> impl Iterator<Item = &SignatureRecord> {
        self.steps.iter().filter_map(|s| s.signature.as_ref())
    }

    /// The licence summary: the policy step's when it ran, else the import step's.
    pub fn licence(&self) -> Option<&LicenceSummary> {
        self.steps.iter().rev().find_map(|s| s.licence.as_ref())
    }

    /// Parity results by target name.
    pub fn parity(&self) -> impl Iterator<Item = (&StepRecord, &Value)> {
        self.steps
            .iter()
            .filter_map(|s| s.parity.as_ref().map(|p| (s, p)))
    }
}

/// Progress of a run, for the command line to show.
pub trait Events {
    /// A step starts; `index` counts from 1 up to `total` steps planned.
    fn start(&self, _name: &str, _index: usize, _total: usize) {}
    /// A step ended (ran, cached or skipped).
    fn end(&self, _record: &StepRecord) {}
}

/// [`Events`] that ignores everything.
pub struct NoEvents;

impl Events for NoEvents {}
