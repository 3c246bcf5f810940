//! Pipelines: one file runs the stages in order on a model and writes reports people and
//! programs read. The last layer of the data flow, above every stage module.
//!
//! A pipeline file ([`file`](mod@file)) names a source model, a policy file, an output
//! folder and steps, which run in this order: import (always: hash the source, read its
//! licence and lineage), scan, convert (one or more targets), verify (scan and re-open
//! every artifact), policy, parity (per target) and sign. Each step is one file in
//! `steps/` that calls the stage's library function, exactly as the stage's own
//! subcommand does; nothing is shelled out. `run.rs` orders them: each step's cache key is
//! sha256 over its input content digests, settings and tool version ([`cache`]); an
//! unchanged step is reported `cached` and not run again. `docs/pipeline-steps.md` is the
//! map for contributors.
//!
//! The output folder receives the artifacts, their signatures, and `report.json`,
//! `report.md`, `report.sarif`, `bom.cdx.json` and `bom.spdx.json`, rendered by [`crate::report`] from a
//! [`RunReport`] and each written to a temporary file renamed into place. Nothing here
//! prints: progress goes through [`Events`], errors carry their stage's hint
//! ([`PipelineError::hint`]).

pub mod budget;
pub mod cache;
mod error;
pub mod file;
mod run;
mod steps;

pub use error::{PipelineError, StageError};
pub use file::{Pipeline, PipelineFile};
pub use run::{run, RunOptions};
pub use steps::policy::{signed_by_trusted_identity, SIGNED_BY};

pub use crate::report::run::{
    Artifact, BaseModelRef, FileDigest, FileRef, GateFailure, LicenceRef, LicenceSummary,
    RunReport, SignatureRecord, Status, StepRecord, Tool, TypeStat,
};

/// Progress of a run, for the command line to show.
pub trait Events {
    /// A step starts; `index` counts from 1 up to `total` steps planned.
    fn start(&self, _name: &str, _index: usize, _total: usize) {}
    /// A step ended (ran, cached or skipped).
    fn end(&self, _record: &StepRecord) {}
    /// The import of an `hf://` source downloads `file`: `done` of `size` bytes so far.
    fn download(&self, _file: &str, _done: u64, _size: u64) {}
    /// Progress of the parity step `step` (layer by layer on text).
    fn parity(&self, _step: &str, _event: &crate::parity::Event) {}
}

/// [`Events`] that ignores everything.
pub struct NoEvents;

impl Events for NoEvents {}
