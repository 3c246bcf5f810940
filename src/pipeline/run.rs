//! Running a pipeline: the steps in order, each through the cache, then the reports.

use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::cache;
use super::file::{Pipeline, Target, TargetFormat};
use super::{
    Artifact, BaseModelRef, Events, FileDigest, FileRef, GateFailure, LicenceRef, LicenceSummary,
    PipelineError, RunReport, SignatureRecord, Status, StepRecord, Tool, TypeStat,
};
use crate::convert::{self, recipe, FileType, OutputFormat, RecipeOptions};
use crate::finding::{Evidence, Finding, Severity, Verdict};
use crate::formats::Checkpoint;
use crate::parity;
use crate::policy::{self, Catalogues, ModelFacts, Policy};
use crate::sign::attest::ReportIn;
use crate::sign::{self, Audit, HashOptions, PolicyRef, PrivateKey, Serialization, SignRequest};
use crate::types::Sha256Digest;

/// Rule of the verify step: an artifact that does not open as the model it should be.
pub const RULE_ARTIFACT_STRUCTURE: &str = "pipeline/artifact-structure";

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run every step, ignoring the cache.
    pub force: bool,
    /// Output folder instead of the pipeline file's.
    pub out: Option<PathBuf>,
}

struct Runner<'a> {
    out: PathBuf,
    force: bool,
    ev: &'a dyn Events,
    total: usize,
    index: Cell<usize>,
}

impl Runner<'_> {
    /// Run one step through the cache. `body` fills the record's outputs and results.
    fn step(
        &self,
        name: &str,
        kind: &str,
        inputs: BTreeMap<String, String>,
        settings: Value,
        body: impl FnOnce(&mut StepRecord) -> Result<(), PipelineError>,
    ) -> Result<StepRecord, PipelineError> {
        self.index.set(self.index.get() + 1);
        self.ev.start(name, self.index.get(), self.total);
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
        let mut rec = StepRecord {
            name: name.to_owned(),
            step: kind.to_owned(),
            status: Status::Ran,
            verdict: None,
            seconds: 0.0,
            run_seconds: 0.0,
            cache_key: Some(key.to_hex()),
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
        };
        body(&mut rec)?;
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
    fn skip(&self, name: &str, kind: &str, note: String) -> StepRecord {
        self.index.set(self.index.get() + 1);
        self.ev.start(name, self.index.get(), self.total);
        let rec = StepRecord {
            name: name.to_owned(),
            step: kind.to_owned(),
            status: Status::Skipped,
            verdict: None,
            seconds: 0.0,
            run_seconds: 0.0,
            cache_key: None,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            settings: Value::Null,
            gates: Vec::new(),
            artifact: None,
            licence: None,
            parity: None,
            signature: None,
            note: Some(note),
            ran_at: None,
        };
        self.ev.end(&rec);
        rec
    }
}

/// sha256 (hex) of a file's bytes, or the model signing root digest of a directory.
pub fn digest_of(path: &Path) -> Result<String, PipelineError> {
    let meta = fs::metadata(path).map_err(|e| PipelineError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    if meta.is_dir() {
        let m = sign::hash_model(path, &HashOptions::new(Serialization::Files), None)
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

fn gate(name: &str, subject: &Path, findings: Vec<Finding>) -> ReportIn {
    ReportIn {
        gate: name.to_owned(),
        subject: subject.display().to_string(),
        verdict: Verdict::from_findings(&findings),
        findings,
        waived: Vec::new(),
        details: None,
    }
}

/// The path of a target's artifact, relative to the output folder.
fn artifact_rel(t: &Target) -> String {
    match t.format {
        TargetFormat::Gguf => format!("{}.gguf", t.name),
        TargetFormat::Safetensors => t.name.clone(),
    }
}

fn signature_rel(artifact_rel: &str) -> String {
    format!("{artifact_rel}.sig")
}

fn convert_options(t: &Target, threads: Option<usize>) -> Result<convert::Options, String> {
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
    };
    o.allow_requantize = op.allow_requantize;
    o.pre_tokenizer = op.pre_tokenizer.clone();
    o.name = op.model_name.clone();
    o.source_url = op.source_url.clone();
    o.quantized_by = op.quantized_by.clone();
    Ok(o)
}

fn licence_summary(
    assessment: &policy::Assessment,
    obligations: &[policy::Obligation],
    documents: &[String],
    cats: &Catalogues,
    policy: Option<String>,
) -> LicenceSummary {
    let mut licences: Vec<LicenceRef> = Vec::new();
    for (id, inh) in assessment.applicable() {
        let l = cats.licences.get(&id);
        licences.push(LicenceRef {
            spdx: l.and_then(|l| l.spdx.clone()),
            name: l.map(|l| l.name.clone()),
            source: match inh {
                None => "declared".to_owned(),
                Some(i) => format!("inherited through {}", i.via),
            },
            id,
        });
    }
    LicenceSummary {
        model_name: assessment.name.clone(),
        licences,
        publisher: assessment.provenance.publisher.clone(),
        base_models: assessment
            .provenance
            .base_models
            .iter()
            .map(|b| BaseModelRef {
                name: b.name.clone(),
                relation: b.relation.clone(),
            })
            .collect(),
        datasets: assessment.provenance.datasets.clone(),
        obligations: obligations
            .iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect(),
        documents: documents.to_vec(),
        policy,
    }
}

fn open_facts(path: &Path, hash: bool, step: &str) -> Result<ModelFacts, PipelineError> {
    let ckpt = Checkpoint::open(path).map_err(|e| PipelineError::step(step, e))?;
    ModelFacts::from_checkpoint(&ckpt, hash).map_err(|e| PipelineError::step(step, e))
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

/// Run a pipeline and write its reports into the output folder.
pub fn run(p: &Pipeline, opts: &RunOptions, ev: &dyn Events) -> Result<RunReport, PipelineError> {
    let started = Instant::now();
    let out = opts.out.clone().unwrap_or_else(|| p.out.clone());
    fs::create_dir_all(&out).map_err(|e| PipelineError::Write {
        path: out.clone(),
        source: e,
    })?;
    let steps = &p.file.steps;
    let targets: Vec<Target> = steps
        .convert
        .as_ref()
        .map(|c| c.targets.clone())
        .unwrap_or_default();
    let parity_targets: Vec<String> = match &steps.parity {
        Some(ps) => match &ps.targets {
            Some(t) => t.clone(),
            None => targets
                .iter()
                .map(|t| t.name.clone())
                .filter(|n| *n != ps.reference)
                .collect(),
        },
        None => Vec::new(),
    };
    let sign_targets: Vec<String> = match &steps.sign {
        Some(s) => s
            .artifacts
            .clone()
            .unwrap_or_else(|| targets.iter().map(|t| t.name.clone()).collect()),
        None => Vec::new(),
    };
    let total = 1
        + usize::from(steps.scan.is_some())
        + targets.len()
        + if steps.verify.is_some() {
            targets.len()
        } else {
            0
        }
        + usize::from(steps.policy.is_some())
        + parity_targets.len()
        + sign_targets.len();
    let r = Runner {
        out: out.clone(),
        force: opts.force,
        ev,
        total,
        index: Cell::new(0),
    };
    // The catalogues are compiled in but parsed on first use, which a fully cached run
    // never reaches.
    let cats_cell: OnceCell<Catalogues> = OnceCell::new();
    let cats = || -> Result<&Catalogues, PipelineError> {
        if let Some(c) = cats_cell.get() {
            return Ok(c);
        }
        let c = Catalogues::builtin().map_err(|e| PipelineError::step("import", e))?;
        Ok(cats_cell.get_or_init(|| c))
    };
    let mut records: Vec<StepRecord> = Vec::new();

    // import: the source's content digest is every later step's input; reading its
    // licence and lineage is cached like any step.
    let manifest = sign::hash_model(&p.model, &HashOptions::new(Serialization::Files), None)
        .map_err(|e| PipelineError::step("import", e))?;
    let model_digest = manifest.root_digest().to_hex();
    let files: Vec<Value> = manifest
        .resources
        .iter()
        .map(|r| json!({"path": r.name(), "sha256": r.digest.to_hex()}))
        .collect();
    records.push(r.step(
        "import",
        "import",
        BTreeMap::from([("model".to_owned(), model_digest.clone())]),
        json!({ "model": p.model.display().to_string(), "files": files }),
        |rec| {
            let facts = open_facts(&p.model, false, "import")?;
            let cats = cats()?;
            let lic = policy::license_report(&facts, cats);
            rec.settings["format"] = json!(facts.weight_format.map(|f| f.as_str()));
            rec.licence = Some(licence_summary(
                &lic.assessment,
                &lic.obligations,
                &lic.documents,
                cats,
                None,
            ));
            Ok(())
        },
    )?);
    let model_inputs = || BTreeMap::from([("model".to_owned(), model_digest.clone())]);

    if steps.scan.is_some() {
        records.push(r.step("scan", "scan", model_inputs(), json!({}), |rec| {
            let findings =
                crate::scan::scan(&p.model).map_err(|e| PipelineError::step("scan", e))?;
            rec.gates.push(gate("scan", &p.model, findings));
            Ok(())
        })?);
    }

    let threads = steps.convert.as_ref().and_then(|c| c.threads);
    let mut artifacts: Vec<(Target, Artifact)> = Vec::new();
    for t in &targets {
        let name = format!("convert:{}", t.name);
        // Threads do not change the output (conversion is deterministic), so they are not
        // part of the key.
        let settings =
            serde_json::to_value(t).map_err(|e| PipelineError::Internal(e.to_string()))?;
        let rec = r.step(&name, "convert", model_inputs(), settings, |rec| {
            let o = convert_options(t, threads).map_err(|m| PipelineError::Invalid {
                path: p.path.clone(),
                message: m,
            })?;
            let rel = artifact_rel(t);
            let dest = out.join(&rel);
            let (format, write_to) = match t.format {
                TargetFormat::Gguf => (OutputFormat::Gguf, dest.clone()),
                // convert refuses to replace a directory; write beside it, then swap.
                TargetFormat::Safetensors => (
                    OutputFormat::HfDir,
                    out.join(format!(".{}.staging", t.name)),
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
            let m = sign::hash_model(&dest, &HashOptions::new(Serialization::Files), None)
                .map_err(|e| PipelineError::step(&name, e))?;
            let sha = digest_of(&dest)?;
            rec.outputs.insert(rel.clone(), sha.clone());
            rec.artifact = Some(Artifact {
                name: t.name.clone(),
                path: rel,
                format: t.format.as_str().to_owned(),
                file_type: summary.file_type.clone(),
                architecture: summary.architecture.clone(),
                sha256: sha,
                files: m
                    .resources
                    .iter()
                    .map(|r| FileDigest {
                        path: r.name(),
                        sha256: r.digest.to_hex(),
                    })
                    .collect(),
                bytes: m.bytes,
                tensors: summary.tensors,
                parameters: summary.parameters,
                bits_per_weight: summary.bits_per_weight,
                types: summary
                    .types
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            TypeStat {
                                tensors: v.tensors,
                                bytes: v.bytes,
                            },
                        )
                    })
                    .collect(),
                hyperparameters: Checkpoint::open(&dest)
                    .ok()
                    .map(|c| crate::report::bom::Hyperparameters::of(&c)),
            });
            rec.note = (!summary.notes.is_empty()).then(|| summary.notes.join("; "));
            Ok(())
        })?;
        if let Some(a) = &rec.artifact {
            artifacts.push((t.clone(), a.clone()));
        }
        records.push(rec);
    }
    let artifact_inputs =
        |a: &Artifact| BTreeMap::from([(format!("artifact:{}", a.name), a.sha256.clone())]);

    if steps.verify.is_some() {
        for (_, a) in &artifacts {
            let name = format!("verify:{}", a.name);
            let path = out.join(&a.path);
            records.push(r.step(&name, "verify", artifact_inputs(a), json!({ "tensors": a.tensors }), |rec| {
                let mut findings =
                    crate::scan::scan(&path).map_err(|e| PipelineError::step(&name, e))?;
                match Checkpoint::open(&path) {
                    Err(e) => findings.push(
                        Finding::new(
                            RULE_ARTIFACT_STRUCTURE,
                            Severity::Error,
                            format!("artifact `{}` does not open as a model: {e}", a.path),
                        )
                        .at(Evidence::file(&path)),
                    ),
                    Ok(c) => {
                        let n = c.weights.tensors.len() as u64;
                        if n != a.tensors {
                            findings.push(
                                Finding::new(
                                    RULE_ARTIFACT_STRUCTURE,
                                    Severity::Error,
                                    format!(
                                        "artifact `{}` holds {n} tensors, expected the {} the conversion wrote",
                                        a.path, a.tensors
                                    ),
                                )
                                .at(Evidence::file(&path)),
                            );
                        }
                    }
                }
                rec.gates.push(gate("verify", &path, findings));
                Ok(())
            })?);
        }
    }

    let mut policy_loaded: Option<Policy> = None;
    if steps.policy.is_some() {
        let policy_path = p.policy.clone().ok_or_else(|| PipelineError::Invalid {
            path: p.path.clone(),
            message: "`steps.policy` needs a top-level `policy:` file".into(),
        })?;
        let pol = Policy::load(&policy_path).map_err(|e| PipelineError::step("policy", e))?;
        let today = policy::Date::today().map_err(PipelineError::Internal)?;
        let mut inputs = model_inputs();
        inputs.insert("policy".into(), pol.digest.to_hex());
        for (_, a) in &artifacts {
            inputs.extend(artifact_inputs(a));
        }
        // Waivers expire: the date is part of the settings.
        records.push(r.step(
            "policy",
            "policy",
            inputs,
            json!({ "date": today.to_string() }),
            |rec| {
                let facts = open_facts(&p.model, true, "policy")?;
                let outcome = policy::check(&facts, &pol, cats()?)
                    .map_err(|e| PipelineError::step("policy", e))?;
                let a = &outcome.assessment;
                let mut g = gate("policy", &p.model, outcome.findings.clone());
                g.waived = outcome.waived.clone();
                g.details = Some(json!({
                    "policy": {
                        "name": pol.file.name,
                        "path": pol.path.display().to_string(),
                        "sha256": pol.digest.to_hex(),
                    },
                    "model": { "name": a.name, "sha256": facts.model_digest.map(|d| d.to_hex()) },
                    "licences": a.licences,
                    "inherited": a.inherited,
                    "provenance": a.provenance,
                    "obligations": outcome.obligations,
                    "documents": outcome.documents,
                    "waivers": outcome.waivers,
                }));
                rec.gates.push(g);
                // Artifacts: the policy's quantization rule on their own tensor types.
                for (_, art) in &artifacts {
                    let path = out.join(&art.path);
                    let af = open_facts(&path, false, "policy")?;
                    let mut f = facts.clone();
                    f.subject = path.clone();
                    f.tensor_types = af.tensor_types;
                    f.weights_file = Some(match af.weights_file {
                        Some(w) if path.is_dir() => PathBuf::from(&art.path).join(w),
                        _ => PathBuf::from(&art.path),
                    });
                    let o = policy::check(&f, &pol, cats()?)
                        .map_err(|e| PipelineError::step("policy", e))?;
                    let keep = |v: &[Finding]| -> Vec<Finding> {
                        v.iter()
                            .filter(|x| x.rule == policy::rules::QUANT_TYPE)
                            .cloned()
                            .collect()
                    };
                    let mut g = gate("policy", &path, keep(&o.findings));
                    g.waived = keep(&o.waived);
                    rec.gates.push(g);
                }
                rec.licence = Some(licence_summary(
                    a,
                    &outcome.obligations,
                    &outcome.documents,
                    cats()?,
                    Some(pol.file.name.clone()),
                ));
                Ok(())
            },
        )?);
        policy_loaded = Some(pol);
    }

    if let Some(ps) = &steps.parity {
        let text = p.resolve(&ps.text);
        let text_digest = digest_of(&text)?;
        let reference = if ps.reference == "source" {
            Some((p.model.clone(), model_digest.clone()))
        } else {
            artifacts
                .iter()
                .find(|(t, _)| t.name == ps.reference)
                .map(|(_, a)| (out.join(&a.path), a.sha256.clone()))
        };
        let policy_rules = match (&policy_loaded, &p.policy) {
            (Some(pol), _) => Some(pol.clone()),
            (None, Some(pp)) => {
                Some(Policy::load(pp).map_err(|e| PipelineError::step("parity", e))?)
            }
            (None, None) => None,
        };
        for n in &parity_targets {
            let name = format!("parity:{n}");
            let (Some((ref_path, ref_digest)), Some((_, a))) =
                (&reference, artifacts.iter().find(|(t, _)| t.name == *n))
            else {
                records.push(r.skip(
                    &name,
                    "parity",
                    format!("`{}` or `{n}` was not produced", ps.reference),
                ));
                continue;
            };
            let cand = out.join(&a.path);
            let mut inputs = BTreeMap::from([
                ("reference".to_owned(), ref_digest.clone()),
                (format!("artifact:{n}"), a.sha256.clone()),
                ("text".to_owned(), text_digest.clone()),
            ]);
            if let Some(pol) = &policy_rules {
                inputs.insert("policy".into(), pol.digest.to_hex());
            }
            let settings = json!({
                "reference": ps.reference,
                "ctx": ps.ctx,
                "chunks": ps.chunks,
                "thresholds": ps.thresholds,
            });
            records.push(r.step(&name, "parity", inputs, settings, |rec| {
                let ckpt = Checkpoint::open(&cand).map_err(|e| PipelineError::step(&name, e))?;
                let quant = parity::quant_type(&ckpt);
                drop(ckpt);
                let th = match ["default", quant.as_str()]
                    .iter()
                    .rev()
                    .find_map(|k| ps.thresholds.get(*k).map(|l| (k, l)))
                {
                    Some((k, l)) => parity::Thresholds {
                        quant: quant.clone(),
                        origin: format!("`{}` steps.parity.thresholds.{k}", p.path.display()),
                        limits: l.clone(),
                    },
                    None => {
                        let rules = policy_rules
                            .as_ref()
                            .and_then(|pol| pol.file.parity.as_ref().map(|r| (pol.path.as_path(), r)));
                        parity::Thresholds::resolve(&quant, rules)
                    }
                };
                let mut opts = parity::ParityOptions::new(parity::Corpus::Text(text.clone()));
                if let Some(c) = ps.ctx {
                    opts.ctx = c;
                }
                opts.chunks = ps.chunks;
                let rep = parity::compare(ref_path, &cand, &opts, Some(th), &mut |_, _| {})
                    .map_err(|e| PipelineError::step(&name, e))?;
                let s = &rep.summary;
                let mut metrics: Vec<Value> = rep
                    .checks
                    .iter()
                    .map(|c| json!({ "name": c.limit, "value": c.value, "threshold": c.threshold, "pass": c.passed }))
                    .collect();
                for (k, v) in [
                    ("mean KLD", s.mean_kld.value),
                    ("p99 KLD", s.kld.p99),
                    ("same top-1", s.same_top1.value),
                    ("PPL ratio", s.ppl_ratio.value),
                    ("RMS Δp", s.rms_delta_p.value),
                ] {
                    metrics.push(json!({ "name": k, "value": v }));
                }
                metrics.push(json!({ "name": "scored positions", "value": s.positions.to_string() }));
                rec.parity = Some(json!({
                    "reference": ps.reference,
                    "candidate": n,
                    "quant": quant,
                    "thresholds": rep.thresholds.as_ref().map(|t| t.origin.clone()),
                    "metrics": metrics,
                }));
                let mut g = gate("parity", &cand, rep.findings.clone());
                g.verdict = rep.verdict;
                g.details = serde_json::to_value(&rep).ok();
                rec.gates.push(g);
                Ok(())
            })?);
        }
    }

    if let Some(ss) = &steps.sign {
        let failed: Vec<String> = records
            .iter()
            .filter(|s| s.verdict == Some(Verdict::Fail))
            .map(|s| s.name.clone())
            .collect();
        if !failed.is_empty() {
            for n in &sign_targets {
                records.push(r.skip(
                    &format!("sign:{n}"),
                    "sign",
                    format!("not signed because gate `{}` failed", failed.join("`, `")),
                ));
            }
        } else if !sign_targets.is_empty() {
            let (key, key_source) = load_key(p, ss)?;
            let public = key.public();
            let policy_ref = policy_loaded.as_ref().map(|pol| PolicyRef {
                uri: pol.path.display().to_string(),
                digest: Some(pol.digest),
            });
            for n in &sign_targets {
                let Some((_, a)) = artifacts.iter().find(|(t, _)| t.name == *n) else {
                    continue;
                };
                let name = format!("sign:{n}");
                let path = out.join(&a.path);
                // The audit: every gate about the source and about this artifact.
                let subject = path.display().to_string();
                let model_subject = p.model.display().to_string();
                let reports: Vec<ReportIn> = records
                    .iter()
                    .flat_map(|s| s.gates.iter())
                    .filter(|g| g.subject == subject || g.subject == model_subject)
                    .cloned()
                    .collect();
                let audit_json = serde_json::to_vec(&reports)
                    .map_err(|e| PipelineError::Internal(e.to_string()))?;
                let mut inputs = artifact_inputs(a);
                inputs.insert("key".into(), public.id().to_hex());
                if ss.attest {
                    inputs.insert("audit".into(), Sha256Digest::of(&audit_json).to_hex());
                }
                let sig_rel = signature_rel(&a.path);
                let att_path = sign::attestation_path_for(&out.join(&sig_rel));
                records.push(r.step(
                    &name,
                    "sign",
                    inputs,
                    json!({ "attest": ss.attest }),
                    |rec| {
                        let audit = Audit {
                            source: out.join("report.json"),
                            reports,
                            policy: policy_ref.clone(),
                        };
                        let sig_path = out.join(&sig_rel);
                        if !ss.attest && att_path.exists() {
                            fs::remove_file(&att_path).map_err(|e| PipelineError::Write {
                                path: att_path.clone(),
                                source: e,
                            })?;
                        }
                        let signed = sign::sign_model(SignRequest {
                            model: &path,
                            key: &key,
                            signature: &sig_path,
                            attestation: &att_path,
                            hash: HashOptions::new(Serialization::Files),
                            audit: ss.attest.then_some(&audit),
                        })
                        .map_err(|e| PipelineError::step(&name, e))?;
                        rec.outputs.insert(sig_rel.clone(), digest_of(&sig_path)?);
                        let att_rel = signed.attestation.as_ref().map(|(ap, _)| {
                            ap.file_name()
                                .map(|f| f.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        });
                        if let Some(ar) = &att_rel {
                            rec.outputs.insert(ar.clone(), digest_of(&out.join(ar))?);
                        }
                        rec.signature = Some(SignatureRecord {
                            artifact: a.name.clone(),
                            signature: sig_rel.clone(),
                            attestation: att_rel,
                            algorithm: signed.algorithm.as_str().to_owned(),
                            key_id: signed.key_id.to_hex(),
                            root_digest: signed.root.to_hex(),
                            key_source: key_source.clone(),
                        });
                        Ok(())
                    },
                )?);
            }
        }
    }

    let report = finish(
        p,
        &out,
        records,
        policy_loaded.as_ref(),
        &model_digest,
        started,
    );
    write_reports(&out, &report)?;
    Ok(report)
}

fn load_key(
    p: &Pipeline,
    ss: &super::file::SignStep,
) -> Result<(PrivateKey, String), PipelineError> {
    if let Some(var) = &ss.key_env {
        if let Some(text) = std::env::var_os(var) {
            let text = text.to_string_lossy();
            if !text.trim().is_empty() {
                let src = format!("env:{var}");
                let key = PrivateKey::from_pem(Path::new(&src), &text)
                    .map_err(|e| PipelineError::step("sign", e))?;
                return Ok((key, src));
            }
        }
    }
    match &ss.key {
        Some(k) => {
            let path = p.resolve(k);
            let key =
                PrivateKey::from_pem_file(&path).map_err(|e| PipelineError::step("sign", e))?;
            Ok((key, path.display().to_string()))
        }
        None => Err(PipelineError::Invalid {
            path: p.path.clone(),
            message: format!(
                "`steps.sign.key_env` names `{}`, which is not set, and no `key` file is given",
                ss.key_env.as_deref().unwrap_or("")
            ),
        }),
    }
}

fn finish(
    p: &Pipeline,
    out: &Path,
    steps: Vec<StepRecord>,
    policy: Option<&Policy>,
    model_digest: &str,
    started: Instant,
) -> RunReport {
    let mut failed = Vec::new();
    for s in &steps {
        for g in &s.gates {
            if g.verdict == Verdict::Fail {
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
            path: p.model.display().to_string(),
            sha256: model_digest.to_owned(),
        },
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
    let gates: Vec<crate::report::GateReport> = report
        .gates()
        .map(|(_, g)| crate::report::GateReport {
            gate: g.gate.clone(),
            subject: g.subject.clone(),
            verdict: g.verdict,
            findings: g.findings.clone(),
            waived: g.waived.clone(),
            details: None,
        })
        .collect();
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
