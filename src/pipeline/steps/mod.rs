//! The steps of a pipeline, one file each, in the order `run.rs` runs them: [`import`],
//! [`scan`], [`imatrix`], [`convert`], [`verify`], [`policy`], [`parity`], [`sign`].
//!
//! A step file gives two things: a `key` (a [`StepKey`]: the step's name, its input
//! digests and its settings, which make the cache key) and a `run` that takes the step's
//! settings from the pipeline file and the run [`Context`] and returns the step's typed
//! result. The result fills the step's record through [`StepOutcome`]. Steps do not touch
//! the cache or send events; `run.rs` does both around every step.

pub(super) mod convert;
pub(super) mod imatrix;
pub(super) mod import;
pub(super) mod parity;
pub(super) mod policy;
pub(super) mod scan;
pub(super) mod sign;
pub(super) mod verify;

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::file::{Pipeline, Target};
use super::{Artifact, PipelineError, StepRecord};
use crate::digest::{hash_model, HashOptions, Serialization};
use crate::formats::Checkpoint;
use crate::policy::{Catalogues, ModelFacts, Policy};
use crate::types::Sha256Digest;

/// What the steps of one run share: the pipeline, where outputs go, the source's digest,
/// and what earlier steps produced (the artifacts, the policy).
pub(super) struct Context<'a> {
    pub pipeline: &'a Pipeline,
    /// The output folder.
    pub out: PathBuf,
    /// The root digest (hex) of the source model: every step's input.
    pub model_digest: String,
    /// The built-in catalogues, parsed on first use, which a fully cached run never
    /// reaches.
    catalogues: OnceCell<Catalogues>,
    /// The importance matrix of each target that asked for one, once computed.
    pub calibrations: BTreeMap<String, imatrix::ForTarget>,
    /// The converted artifacts so far, in target order (cached ones included).
    pub artifacts: Vec<(Target, Artifact)>,
    /// The policy, once the policy step has loaded it.
    pub policy: Option<Policy>,
    /// Where an `hf://` source came from.
    pub source: Option<crate::provenance::Provenance>,
}

impl<'a> Context<'a> {
    pub fn new(pipeline: &'a Pipeline, out: PathBuf, model_digest: String) -> Self {
        Context {
            pipeline,
            out,
            model_digest,
            catalogues: OnceCell::new(),
            calibrations: BTreeMap::new(),
            artifacts: Vec::new(),
            policy: None,
            source: None,
        }
    }

    pub fn catalogues(&self) -> Result<&Catalogues, PipelineError> {
        if let Some(c) = self.catalogues.get() {
            return Ok(c);
        }
        let c = Catalogues::builtin().map_err(|e| PipelineError::step("import", e))?;
        Ok(self.catalogues.get_or_init(|| c))
    }

    /// The source model as a step input.
    pub fn model_inputs(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("model".to_owned(), self.model_digest.clone())])
    }

    /// The artifact converted for target `name`.
    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts
            .iter()
            .find(|(t, _)| t.name == name)
            .map(|(_, a)| a)
    }
}

/// An artifact as a step input.
pub(super) fn artifact_inputs(a: &Artifact) -> BTreeMap<String, String> {
    BTreeMap::from([(format!("artifact:{}", a.name), a.sha256.clone())])
}

/// What identifies one run of a step for the cache and the report.
pub(super) struct StepKey {
    /// `scan`, `convert:q8_0`, ...
    pub name: String,
    /// `import`, `scan`, `imatrix`, `convert`, `verify`, `policy`, `parity` or `sign`.
    pub kind: &'static str,
    /// Input name -> sha256 (hex) of its content.
    pub inputs: BTreeMap<String, String>,
    pub settings: Value,
}

/// A step's typed result, written into the step's record (outputs, gates, report pieces).
pub(super) trait StepOutcome {
    fn fill(self, rec: &mut StepRecord);
}

/// What the policy stage needs to know of a checkpoint; `hash` also digests its files.
pub(super) fn open_facts(path: &Path, hash: bool, step: &str) -> Result<ModelFacts, PipelineError> {
    let ckpt = Checkpoint::open(path).map_err(|e| PipelineError::step(step, e))?;
    ModelFacts::from_checkpoint(&ckpt, hash).map_err(|e| PipelineError::step(step, e))
}

/// sha256 (hex) of a file's bytes, or the model signing root digest of a directory.
pub(super) fn digest_of(path: &Path) -> Result<String, PipelineError> {
    let meta = fs::metadata(path).map_err(|e| PipelineError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    if meta.is_dir() {
        let m = hash_model(path, &HashOptions::new(Serialization::Files), None)
            .map_err(|e| PipelineError::step("digest", e))?;
        return Ok(m.root_digest().to_hex());
    }
    let io = |e| PipelineError::Io {
        path: path.to_owned(),
        source: e,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut h, &buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&sha2::Digest::finalize(h));
    Ok(Sha256Digest(out).to_hex())
}
