//! The run report: everything one pipeline run concluded, as `report.json` holds it and
//! as [`super::markdown`] and [`super::cyclonedx`] render it. The types live here, below
//! the pipeline, so the renderers never reach up into the pipeline module; the pipeline
//! fills them and each stage contributes its own piece (convert its [`Artifact`], policy
//! its gate details and [`LicenceSummary`], parity its metrics).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::GateReport;
use crate::finding::Verdict;

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
    /// The step kind: `import`, `scan`, `imatrix`, `convert`, `verify`, `policy`, `parity`,
    /// `sign`.
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
    pub gates: Vec<GateReport>,
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
    pub hyperparameters: Option<super::bom::Hyperparameters>,
    /// The importance matrix the quantizers used, and the calibration text it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// The per-tensor types a size budget chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
}

/// The importance matrix an artifact was quantized with, and what it was computed on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Calibration {
    /// The calibration text as the pipeline file names it, and its sha256; absent when an
    /// existing imatrix file was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<FileRef>,
    /// The imatrix file: relative to the output folder when the pipeline computed it, else
    /// as the pipeline file names it.
    pub imatrix: FileRef,
    /// Weight matrices it covers.
    pub entries: usize,
    /// Tokens per chunk (`imatrix.chunk_size`; 0 when the file does not say).
    pub ctx: u32,
    /// Chunks it was computed on (`imatrix.chunk_count`).
    pub chunks: u32,
    /// Its calibration texts as recorded in the file (`imatrix.datasets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
}

/// The per-tensor type mix a size budget (`target_bpw`, `max_size`) chose.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mix {
    /// `target_bpw 4.5` or `max_size 150000`.
    pub budget: String,
    /// Tensor bytes the budget allowed.
    pub budget_bytes: u64,
    /// Bits per weight this model can be written in: cheapest and F16.
    pub min_bpw: f64,
    pub max_bpw: f64,
    /// One-tensor sensitivity probes measured with the engine on the calibration text.
    pub probes: usize,
    /// The predicted mean KLD of the mix (sum over tensors).
    pub predicted_kld: f64,
    /// The chosen types by kind of tensor, in name order.
    pub groups: Vec<MixGroup>,
}

/// The tensors of one kind (`attn_q.weight`, `token_embd.weight`) in a budget mix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MixGroup {
    pub group: String,
    pub tensors: usize,
    /// Type name to tensor count.
    pub types: BTreeMap<String, usize>,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub predicted_kld: f64,
}

impl MixGroup {
    /// `Q4_Kx2 Q6_Kx1`: each type with its tensor count.
    pub fn types_text(&self) -> String {
        self.types
            .iter()
            .map(|(t, n)| format!("{t}x{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where an artifact was written and what its files hash to: the part of an [`Artifact`]
/// that the pipeline knows, beside what the conversion itself reports.
#[derive(Clone, Debug)]
pub struct StoredArtifact {
    /// The target name.
    pub name: String,
    /// Relative to the output folder.
    pub path: String,
    /// `gguf` or `safetensors`.
    pub format: String,
    /// sha256 of the file, or the root digest of a directory.
    pub sha256: String,
    pub files: Vec<FileDigest>,
    /// Bytes of all files.
    pub bytes: u64,
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
    /// The source model and its root digest. For a Hub model, the path is the reference
    /// as the pipeline file wrote it (`hf://ORG/NAME@REVISION`).
    pub model: FileRef,
    /// Where a Hub model came from: repository, revision asked for, the commit it
    /// resolved to, the Hub's licence and gating facts, and every file's size and digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::provenance::Provenance>,
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
    pub fn gates(&self) -> impl Iterator<Item = (&StepRecord, &GateReport)> {
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
