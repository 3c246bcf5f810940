//! Running a pipeline: the steps of `steps/` in their order, each through the cache and
//! with events, then the reports.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use super::cache;
use super::file::{Pipeline, Target};
use super::steps::{self, digest_of, Context, StepKey, StepOutcome};
use super::{Events, FileRef, GateFailure, PipelineError, RunReport, Status, StepRecord, Tool};
use crate::finding::{Severity, Verdict};
use crate::policy::Policy;
use crate::report::GateReport;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run every step, ignoring the cache.
    pub force: bool,
    /// Output folder instead of the pipeline file's.
    pub out: Option<PathBuf>,
}

/// What a pipeline file asks for, counted before anything runs so progress knows the
/// total.
struct Plan {
    targets: Vec<Target>,
    parity: Vec<String>,
    sign: Vec<String>,
}

impl Plan {
    fn of(p: &Pipeline) -> Plan {
        let steps = &p.file.steps;
        let targets: Vec<Target> = steps
            .convert
            .as_ref()
            .map(|c| c.targets.clone())
            .unwrap_or_default();
        Plan {
            parity: steps
                .parity
                .as_ref()
                .map(|ps| steps::parity::targets(ps, &targets))
                .unwrap_or_default(),
            sign: steps
                .sign
                .as_ref()
                .map(|ss| steps::sign::targets(ss, &targets))
                .unwrap_or_default(),
            targets,
        }
    }

    /// Steps planned: import, scan, one convert (and verify) per target, policy, parity
    /// and sign per target.
    fn total(&self, p: &Pipeline) -> usize {
        let steps = &p.file.steps;
        let n = self.targets.len();
        1 + usize::from(steps.scan.is_some())
            + n
            + if steps.verify.is_some() { n } else { 0 }
            + usize::from(steps.policy.is_some())
            + self.parity.len()
            + self.sign.len()
    }
}

/// Runs steps through the cache and reports their progress.
struct Runner<'a> {
    out: PathBuf,
    force: bool,
    ev: &'a dyn Events,
    total: usize,
    index: Cell<usize>,
}

impl Runner<'_> {
    fn started(&self, name: &str) {
        self.index.set(self.index.get() + 1);
        self.ev.start(name, self.index.get(), self.total);
    }

    /// Run one step through the cache: an unchanged step's earlier record stands,
    /// otherwise `body` runs and its outcome fills a fresh record.
    fn step<O: StepOutcome>(
        &self,
        key: StepKey,
        body: impl FnOnce() -> Result<O, PipelineError>,
    ) -> Result<StepRecord, PipelineError> {
        let StepKey {
            name,
            kind,
            inputs,
            settings,
        } = key;
        self.started(&name);
        let t = Instant::now();
        let key = cache::key(&inputs, &settings);
        let cache_name = name.replace(':', "-");
        if !self.force {
            if let Some(mut rec) =
                cache::lookup(&self.out, &cache_name, &key, &|p| digest_of(p).ok())
            {
                rec.status = Status::Cached;
                rec.seconds = t.elapsed().as_secs_f64();
                self.ev.end(&rec);
                return Ok(rec);
            }
        }
        cache::forget(&self.out, &cache_name);
        let mut rec = record(name, kind, Status::Ran, inputs, settings);
        rec.cache_key = Some(key.to_hex());
        body()?.fill(&mut rec);
        rec.ran_at = Some(crate::report::bom::timestamp_now());
        if !rec.gates.is_empty() {
            rec.verdict = Some(if rec.gates.iter().all(|g| g.verdict == Verdict::Pass) {
                Verdict::Pass
            } else {
                Verdict::Fail
            });
        }
        let secs = t.elapsed().as_secs_f64();
        rec.seconds = secs;
        rec.run_seconds = secs;
        cache::store(&self.out, &cache_name, &key, &rec)?;
        self.ev.end(&rec);
        Ok(rec)
    }

    /// A step that does not run, with the reason.
    fn skip(&self, name: String, kind: &str, note: String) -> StepRecord {
        self.started(&name);
        let mut rec = record(name, kind, Status::Skipped, BTreeMap::new(), Value::Null);
        rec.note = Some(note);
        self.ev.end(&rec);
        rec
    }
}

/// An empty record of a step.
fn record(
    name: String,
    kind: &str,
    status: Status,
    inputs: BTreeMap<String, String>,
    settings: Value,
) -> StepRecord {
    StepRecord {
        name,
        step: kind.to_owned(),
        status,
        verdict: None,
        seconds: 0.0,
        run_seconds: 0.0,
        cache_key: None,
        inputs,
        outputs: BTreeMap::new(),
        settings,
        gates: Vec::new(),
        artifact: None,
        licence: None,
        parity: None,
        signature: None,
        note: None,
        ran_at: None,
    }
}

/// Run a pipeline and write its reports into the output folder. The steps run in this
/// order: import, scan, imatrix, convert, verify, policy, parity, sign.
pub fn run(p: &Pipeline, opts: &RunOptions, ev: &dyn Events) -> Result<RunReport, PipelineError> {
    let started = Instant::now();
    let out = opts.out.clone().unwrap_or_else(|| p.out.clone());
    fs::create_dir_all(&out).map_err(|e| PipelineError::Write {
        path: out.clone(),
        source: e,
    })?;
    let steps = &p.file.steps;
    let plan = Plan::of(p);
    // Calibration texts and imatrix files are found before anything runs.
    let imatrices = steps::imatrix::plan(p, &plan.targets)?;
    let r = Runner {
        out: out.clone(),
        force: opts.force,
        ev,
        total: plan.total(p) + imatrices.jobs.len(),
        index: Cell::new(0),
    };
    // An `hf://` source is fetched first; the steps then read its local copy, and the
    // reports name it by `Pipeline::model_name`.
    let fetched = steps::import::fetch(p, ev)?;
    let local;
    let p = match &fetched {
        Some(f) => {
            local = Pipeline {
                model: f.view.path().to_owned(),
                ..p.clone()
            };
            &local
        }
        None => p,
    };
    let source = steps::import::hash(p)?;
    let mut cx = Context::new(p, out.clone(), source.digest.clone());
    cx.source = fetched.as_ref().map(|f| f.provenance.clone());
    let mut records = vec![r.step(steps::import::key(&cx, source), || steps::import::run(&cx))?];
    if let Some(s) = &steps.scan {
        records.push(r.step(steps::scan::key(&cx), || steps::scan::run(s, &cx))?);
    }
    for job in &imatrices.jobs {
        let rec = r.step(steps::imatrix::key(job, &cx), || {
            steps::imatrix::run(job, &cx)
        })?;
        cx.calibrations.extend(job.for_targets(&rec, &cx));
        records.push(rec);
    }
    cx.calibrations.extend(imatrices.files);
    if let Some(cs) = &steps.convert {
        for t in &plan.targets {
            let rec = r.step(steps::convert::key(t, &cx)?, || {
                steps::convert::run(cs, t, &cx)
            })?;
            if let Some(a) = &rec.artifact {
                cx.artifacts.push((t.clone(), a.clone()));
            }
            records.push(rec);
        }
    }
    if let Some(vs) = &steps.verify {
        for (_, a) in &cx.artifacts {
            records.push(r.step(steps::verify::key(a), || steps::verify::run(vs, a, &cx))?);
        }
    }
    if let Some(ps) = &steps.policy {
        let pol = steps::policy::load(&cx)?;
        let key = steps::policy::key(&pol, &cx)?;
        records.push(r.step(key, || steps::policy::run(ps, &pol, &cx))?);
        cx.policy = Some(pol);
    }
    if let Some(ps) = &steps.parity {
        let parity = steps::parity::Parity::new(ps, &cx)?;
        for n in &plan.parity {
            records.push(match parity.plan(n, &cx) {
                Some((key, job)) => r.step(key, || parity.run(&job, &cx, r.ev))?,
                None => r.skip(format!("parity:{n}"), "parity", parity.missing(n)),
            });
        }
    }
    if let Some(ss) = &steps.sign {
        sign(&r, ss, &plan.sign, &cx, &mut records)?;
    }
    let report = finish(
        p,
        &out,
        records,
        cx.policy.as_ref(),
        &cx.model_digest,
        cx.source.clone(),
        started,
    );
    write_reports(&out, &report)?;
    Ok(report)
}

/// The sign steps: all skipped when a gate failed, else one per artifact to sign.
fn sign(
    r: &Runner,
    ss: &super::file::SignStep,
    targets: &[String],
    cx: &Context,
    records: &mut Vec<StepRecord>,
) -> Result<(), PipelineError> {
    let failed = steps::sign::failed_gates(records);
    if !failed.is_empty() {
        for n in targets {
            let note = steps::sign::refused(&failed);
            records.push(r.skip(format!("sign:{n}"), "sign", note));
        }
        return Ok(());
    }
    if targets.is_empty() {
        return Ok(());
    }
    let signer = steps::sign::Signer::new(ss, cx)?;
    for n in targets {
        // A target that was not converted has nothing to sign.
        let Some(a) = cx.artifact(n) else { continue };
        let (key, job) = signer.plan(a, records, cx)?;
        records.push(r.step(key, || signer.run(job, cx))?);
    }
    Ok(())
}

/// The run's report: every step's record, and the verdict of all their gates.
fn finish(
    p: &Pipeline,
    out: &Path,
    steps: Vec<StepRecord>,
    policy: Option<&Policy>,
    model_digest: &str,
    source: Option<crate::provenance::Provenance>,
    started: Instant,
) -> RunReport {
    let mut failed = Vec::new();
    for s in &steps {
        for g in s.gates.iter().filter(|g| g.verdict == Verdict::Fail) {
            failed.push(GateFailure {
                step: s.name.clone(),
                gate: g.gate.clone(),
                subject: g.subject.clone(),
                reasons: g
                    .findings
                    .iter()
                    .filter(|f| f.severity == Severity::Error)
                    .map(|f| format!("{}: {}", f.rule, f.message))
                    .collect(),
            });
        }
    }
    RunReport {
        tool: Tool {
            name: "modelgate".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        name: p.name.clone(),
        pipeline: FileRef {
            path: p.path.display().to_string(),
            sha256: p.digest.to_hex(),
        },
        model: FileRef {
            path: p.model_name(),
            sha256: model_digest.to_owned(),
        },
        source,
        policy: policy.map(|pol| FileRef {
            path: pol.path.display().to_string(),
            sha256: pol.digest.to_hex(),
        }),
        out: out.display().to_string(),
        verdict: if failed.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        failed_gates: failed,
        seconds: started.elapsed().as_secs_f64(),
        steps,
    }
}

/// `report.json`, `report.md`, `report.sarif`, `bom.cdx.json`, `bom.spdx.json`, each
/// through a temporary file renamed into place.
fn write_reports(out: &Path, report: &RunReport) -> Result<(), PipelineError> {
    cache::write_atomic(&out.join("report.json"), &pretty(report)?)?;
    cache::write_atomic(
        &out.join("report.md"),
        crate::report::markdown::render(report).as_bytes(),
    )?;
    let gates: Vec<GateReport> = report.gates().map(|(_, g)| g.clone()).collect();
    cache::write_atomic(
        &out.join("report.sarif"),
        &pretty(&crate::report::sarif(&gates))?,
    )?;
    cache::write_atomic(
        &out.join("bom.cdx.json"),
        &pretty(&crate::report::cyclonedx::bom(report))?,
    )?;
    cache::write_atomic(
        &out.join("bom.spdx.json"),
        &crate::report::spdx::bom(report),
    )?;
    Ok(())
}

fn pretty<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, PipelineError> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| PipelineError::Internal(e.to_string()))?;
    b.push(b'\n');
    Ok(b)
}
