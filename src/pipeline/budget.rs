//! Size-budget conversion (`convert --target-bpw B`, `--max-size BYTES`): convert and the
//! engine together, so it lives above both stages.
//!
//! 1. Errors: `convert::budget` quantizes every quantizable tensor to every candidate type
//!    and measures the importance-weighted squared error `E(t, T)`.
//! 2. Sensitivity: the engine runs the source model on a few chunks of the calibration
//!    text, keeping the hidden states entering every layer and the logits of the scored
//!    positions. For a sample of tensors (the embedding and head, and a few layers of
//!    every kind of layer tensor), one tensor alone is quantized to a probe type (the
//!    candidate nearest 4.5 bits) and the model is re-run from that tensor's layer: the
//!    mean KLD against the unquantized model is that tensor's measured loss `K`. Its
//!    factor is `K / E(t, probe)`; a tensor that was not probed takes the factor
//!    interpolated (in log space, by layer) from the probed tensors of its kind.
//! 3. The predicted loss of a mix is `sum_t factor_t * E(t, T_t)`; `convert::budget::select`
//!    minimises it under the budget, and the mix is written as an ordinary conversion.
//! 4. Check: a few more (tensor, type) pairs are measured and compared with their
//!    prediction, and the written file is compared with the source by `parity` on the same
//!    chunks, so every run reports how well the proxy predicted.
//!
//! The sensitivity pass holds the model in f32 (about 4 bytes per parameter) and runs only
//! the layers after the quantized tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::convert::budget::{self, Budget, Table};
use crate::convert::plan::{Plan, Source};
use crate::convert::{self, quant, ConvertError, OutputFormat};
use crate::engine::model::{LayerWeights, Model};
use crate::engine::{
    EngineError, Logits, Math, ModelConfig, RawTensor, TextTokenizer, WeightSource,
};
use crate::formats::{Checkpoint, DType, GgmlType, MappedSlice, Weights};
use crate::parity::{self, stats, Corpus, ParityError, ParityOptions};

use super::StageError;

/// What a budget conversion needs beyond the ordinary conversion options.
#[derive(Clone, Debug)]
pub struct BudgetOptions {
    pub budget: Budget,
    /// Calibration text (`--text`).
    pub text: PathBuf,
    /// Tokens per chunk; the second half of each is scored, as in parity.
    pub ctx: usize,
    /// Chunks of the text used (at most).
    pub chunks: usize,
    /// Layers probed per kind of layer tensor.
    pub probes: usize,
    /// Compare the written file with the source on the calibration chunks.
    pub measure: bool,
}

impl BudgetOptions {
    pub fn new(budget: Budget, text: PathBuf) -> BudgetOptions {
        BudgetOptions {
            budget,
            text,
            ctx: 256,
            chunks: 4,
            probes: 4,
            measure: true,
        }
    }
}

/// Progress of a budget conversion.
#[derive(Clone, Debug)]
pub enum Event {
    /// Candidate errors of tensor `done` of `total` measured.
    Errors { done: usize, total: usize },
    /// The unquantized model ran over the calibration chunks.
    Reference,
    /// One-tensor probe `done` of `total` measured.
    Probe { done: usize, total: usize },
    /// The mix is being written.
    Writing,
    /// The written file is being compared with the source.
    Measuring,
}

/// One measured (tensor, type) pair.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub tensor: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub error: f64,
    /// Mean KLD with this tensor alone quantized.
    pub measured_kld: f64,
    /// What the proxy predicted (for checks; the probes themselves fit exactly).
    pub predicted_kld: f64,
}

/// One chosen tensor.
#[derive(Clone, Debug, Serialize)]
pub struct MixTensor {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub bytes: u64,
    pub params: u64,
    pub predicted_kld: f64,
}

/// The tensors of one kind (`attn_q`, `ffn_down`, `token_embd`, ...), as printed: the
/// report's type, so a pipeline records the mix exactly as `convert` prints it.
pub use crate::report::run::MixGroup;

/// How well the proxy predicted the check pairs.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyCheck {
    pub pairs: usize,
    /// Geometric mean of measured / predicted.
    pub ratio_geomean: f64,
    /// Largest factor between measured and predicted (>= 1).
    pub worst_factor: f64,
    /// Spearman rank correlation of measured and predicted.
    pub rank_correlation: f64,
}

/// Seconds per phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    pub errors: f64,
    pub sensitivity: f64,
    pub write: f64,
    pub measure: f64,
}

/// What a budget conversion did.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub summary: convert::Summary,
    pub budget: Budget,
    /// Tensor bytes the budget allowed.
    pub budget_bytes: u64,
    /// Achievable bits per weight: cheapest and F16.
    pub min_bpw: f64,
    pub max_bpw: f64,
    pub calibration: Calibration,
    pub groups: Vec<MixGroup>,
    pub mix: Vec<MixTensor>,
    pub predicted_kld: f64,
    /// Mean KLD of the written file against the source on the calibration chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<parity::Summary>,
    pub probes: Vec<Probe>,
    pub checks: Vec<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyCheck>,
    pub seconds: Timing,
}

/// The calibration text as used.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub path: PathBuf,
    pub sha256: String,
    pub ctx: usize,
    pub chunks: usize,
    pub scored_tokens: usize,
}

fn load_err(path: &Path) -> impl Fn(EngineError) -> StageError + '_ {
    move |source| {
        StageError::Parity(ParityError::Load {
            path: path.to_owned(),
            source,
        })
    }
}

fn run_err(path: &Path) -> impl Fn(EngineError) -> StageError + '_ {
    move |source| {
        StageError::Parity(ParityError::Run {
            path: path.to_owned(),
            source,
        })
    }
}

fn candle_err(path: &Path) -> impl Fn(candle_core::Error) -> StageError + '_ {
    move |e| {
        StageError::Parity(ParityError::Run {
            path: path.to_owned(),
            source: EngineError::Candle(e),
        })
    }
}

/// The kind of a tensor: its name without the layer number (`blk.*.attn_q.weight`).
fn group_of(name: &str) -> String {
    match convert::recipe::layer_of(name) {
        Some(l) => name.replacen(&format!("blk.{l}."), "", 1),
        None => name.to_owned(),
    }
}

fn bits(t: GgmlType) -> f64 {
    t.block()
        .map_or(32.0, |(n, b)| b as f64 * 8.0 / n.max(1) as f64)
}

/// The candidate of tensor `t` nearest `target` bits (the cheaper on a tie).
fn nearest(table: &Table, t: usize, target: f64) -> Option<usize> {
    let cs = &table.tensors[t].candidates;
    (0..cs.len())
        .filter(|&c| cs[c].ty.is_quantized())
        .min_by(|&a, &b| {
            (bits(cs[a].ty) - target)
                .abs()
                .total_cmp(&(bits(cs[b].ty) - target).abs())
                .then(cs[a].bytes.cmp(&cs[b].bytes))
        })
}

/// A source that hands out one tensor replaced by given f32 values.
struct Overlay<'a> {
    base: &'a Weights,
    name: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl WeightSource for Overlay<'_> {
    fn naming(&self) -> crate::engine::Naming {
        self.base.naming()
    }

    fn tensor(&self, name: &str) -> Result<Option<RawTensor<'_>>, EngineError> {
        if name == self.name {
            return Ok(Some(RawTensor {
                name: name.to_owned(),
                dtype: DType::F32,
                shape: self.shape.clone(),
                data: std::borrow::Cow::Borrowed(&self.data),
            }));
        }
        WeightSource::tensor(self.base, name)
    }

    fn share(&self, bytes: &[u8]) -> Option<MappedSlice> {
        self.base.share(bytes)
    }
}

/// The unquantized model on the calibration chunks, ready to re-run from any layer.
struct Runner<'a> {
    path: &'a Path,
    weights: &'a Weights,
    cfg: ModelConfig,
    model: Model,
    layers: Vec<LayerWeights>,
    chunks: Vec<Vec<u32>>,
    first_scored: usize,
    /// Per chunk: the hidden states entering each layer, and after the last.
    hidden: Vec<Vec<Tensor>>,
    /// Per chunk: the reference logits of the scored positions, row-major.
    reference: Vec<Vec<f32>>,
}

impl<'a> Runner<'a> {
    fn new(
        path: &'a Path,
        ckpt: &'a Checkpoint,
        chunks: Vec<Vec<u32>>,
        first_scored: usize,
    ) -> Result<Runner<'a>, StageError> {
        let config_json = ckpt.dir.as_ref().and_then(|d| d.config.as_ref());
        let cfg = ModelConfig::new(&ckpt.params(), config_json, &ckpt.weights.metadata)
            .map_err(load_err(path))?;
        let device = Device::Cpu;
        let mut model =
            Model::load_without_layers(&ckpt.weights, cfg.clone(), Math::Reference, &device)
                .map_err(load_err(path))?;
        let layers = (0..cfg.n_layers)
            .map(|i| model.load_layer(&ckpt.weights, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(load_err(path))?;
        let mut hidden = Vec::new();
        let mut reference = Vec::new();
        for tokens in &chunks {
            let mut x = model.embed(tokens).map_err(run_err(path))?;
            let mut h = vec![x.clone()];
            for w in &layers {
                let mut cache = model.layer_cache().map_err(run_err(path))?;
                x = model.run_layer(w, &mut cache, &x).map_err(run_err(path))?;
                h.push(x.clone());
            }
            reference.push(head_rows(&model, &x, first_scored, path)?);
            hidden.push(h);
        }
        Ok(Runner {
            path,
            weights: &ckpt.weights,
            cfg,
            model,
            layers,
            chunks,
            first_scored,
            hidden,
            reference,
        })
    }

    /// Mean KLD against the reference over every scored position, with the source tensor
    /// `name` replaced by `values` (source layout); `layer` is the decoder layer reading it
    /// (`None` for the embedding and the head).
    fn kld_with(
        &mut self,
        layer: Option<usize>,
        name: &str,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<f64, StageError> {
        let path = self.path;
        let overlay = Overlay {
            base: self.weights,
            name: name.to_owned(),
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let mut rows = Vec::new();
        match layer {
            Some(l) if l < self.cfg.n_layers => {
                let w = self.model.load_layer(&overlay, l).map_err(load_err(path))?;
                for c in 0..self.chunks.len() {
                    let mut x = self.hidden[c][l].clone();
                    for i in l..self.cfg.n_layers {
                        let lw = if i == l { &w } else { &self.layers[i] };
                        let mut cache = self.model.layer_cache().map_err(run_err(path))?;
                        x = self
                            .model
                            .run_layer(lw, &mut cache, &x)
                            .map_err(run_err(path))?;
                    }
                    rows.push(head_rows(&self.model, &x, self.first_scored, path)?);
                }
            }
            _ => {
                // The embedding or the head: a model with the replaced tensor.
                let mut m = Model::load_without_layers(
                    &overlay,
                    self.cfg.clone(),
                    Math::Reference,
                    &Device::Cpu,
                )
                .map_err(load_err(path))?;
                for c in 0..self.chunks.len() {
                    let mut x = m.embed(&self.chunks[c]).map_err(run_err(path))?;
                    for lw in &self.layers {
                        let mut cache = m.layer_cache().map_err(run_err(path))?;
                        x = m.run_layer(lw, &mut cache, &x).map_err(run_err(path))?;
                    }
                    rows.push(head_rows(&m, &x, self.first_scored, path)?);
                }
            }
        }
        Ok(self.mean_kld(&rows))
    }

    fn mean_kld(&self, rows: &[Vec<f32>]) -> f64 {
        let vocab = self.cfg.vocab;
        let mut sum = 0.0;
        let mut n = 0usize;
        for (c, cand) in rows.iter().enumerate() {
            let tokens = &self.chunks[c];
            for (k, (a, b)) in self.reference[c]
                .chunks_exact(vocab)
                .zip(cand.chunks_exact(vocab))
                .enumerate()
            {
                let next = tokens[self.first_scored + k + 1] as usize;
                sum += stats::compare_full(a, b, next).kld;
                n += 1;
            }
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }
}

/// Logits of the scored positions (`first_scored .. n - 1`), row-major.
fn head_rows(model: &Model, x: &Tensor, first: usize, path: &Path) -> Result<Vec<f32>, StageError> {
    let n = x.dim(0).map_err(candle_err(path))?;
    let m = n.saturating_sub(1).saturating_sub(first);
    let xs = x.narrow(0, first, m).map_err(candle_err(path))?;
    let logits = model.head(&xs, Logits::All).map_err(run_err(path))?;
    logits
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_err(path))
}

/// The calibration chunks: `ctx` tokens each, the first replaced by BOS where the
/// tokenizer adds one, as parity cuts text.
fn chunks_of(
    ckpt: &Checkpoint,
    src: &Path,
    o: &BudgetOptions,
) -> Result<(Vec<Vec<u32>>, Calibration), StageError> {
    let bytes = std::fs::read(&o.text).map_err(|source| {
        StageError::Parity(ParityError::Io {
            path: o.text.clone(),
            source,
        })
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        StageError::Parity(ParityError::NotText {
            path: o.text.clone(),
        })
    })?;
    if o.ctx < 4 {
        return Err(StageError::Parity(ParityError::CtxTooSmall(o.ctx)));
    }
    let tok = TextTokenizer::from_checkpoint(ckpt).map_err(load_err(src))?;
    let ids = tok.encode(&text).map_err(run_err(src))?;
    let available = ids.len() / o.ctx;
    if available == 0 {
        return Err(StageError::Parity(ParityError::TextTooShort {
            path: o.text.clone(),
            tokens: ids.len(),
            ctx: o.ctx,
        }));
    }
    let n = o.chunks.clamp(1, available);
    let chunks: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let mut c = ids[i * o.ctx..(i + 1) * o.ctx].to_vec();
            if let (true, Some(b)) = (tok.adds_bos(), tok.bos()) {
                c[0] = b;
            }
            c
        })
        .collect();
    let cal = Calibration {
        path: o.text.clone(),
        sha256: crate::types::Sha256Digest::of(text.as_bytes()).to_hex(),
        ctx: o.ctx,
        chunks: n,
        scored_tokens: n * (o.ctx - 1 - o.ctx / 2),
    };
    Ok((chunks, cal))
}

/// Spearman rank correlation (ties ranked by order, fine for continuous values).
fn rank_correlation(a: &[f64], b: &[f64]) -> f64 {
    let rank = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = a.len() as f64;
    if n < 2.0 {
        return 1.0;
    }
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y) * (x - y)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// Which tensors to probe: the embedding and head, and for every kind of layer tensor
/// `probes` layers spread evenly (first and last included); the checks are, per kind, the
/// layer halfway between the first two probed layers.
fn pick(table: &Table, probes: usize) -> (Vec<usize>, Vec<usize>) {
    let mut groups: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for (t, c) in table.tensors.iter().enumerate() {
        let layer = convert::recipe::layer_of(&c.name).unwrap_or(0);
        groups
            .entry(group_of(&c.name))
            .or_default()
            .push((layer, t));
    }
    let mut probe = Vec::new();
    let mut check = Vec::new();
    for members in groups.values_mut() {
        members.sort();
        let m = members.len();
        let p = probes.clamp(1, m);
        let chosen: Vec<usize> = if p == 1 {
            vec![0]
        } else {
            (0..p)
                .map(|k| (k * (m - 1) + (p - 1) / 2) / (p - 1))
                .collect()
        };
        let mut chosen = chosen;
        chosen.dedup();
        for &k in &chosen {
            probe.push(members[k].1);
        }
        if chosen.len() >= 2 {
            let mid = (chosen[0] + chosen[1]) / 2;
            if !chosen.contains(&mid) {
                check.push(members[mid].1);
            }
        }
    }
    probe.sort();
    check.sort();
    (probe, check)
}

/// Where the engine reads a planned tensor: its source tensor's name and shape, and the
/// map from planned rows to source rows. `None` for tensors assembled from several source
/// tensors (experts), which are not probed.
fn source_of(plan: &Plan, weights: &Weights, index: usize) -> Option<(String, Vec<usize>)> {
    let t = plan.tensors.get(index)?;
    let Source::Tensor(k) = t.source else {
        return None;
    };
    let info = weights.tensors.get(k)?;
    let shape = info
        .shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((info.name.to_string(), shape))
}

/// Quantize planned tensor `index` to `ty` and back, in the source's row order.
fn round_trip(
    plan: &Plan,
    weights: &Weights,
    importance: &convert::exec::Importance,
    index: usize,
    ty: GgmlType,
) -> Result<Vec<f32>, ConvertError> {
    let t = &plan.tensors[index];
    let values = budget::planned_values(t, weights)?;
    let row_len = t.row_len() as usize;
    let imp = importance.get(&t.name).map(Vec::as_slice);
    let kernel = |e: quant::QuantError| ConvertError::Kernel {
        tensor: t.name.clone(),
        fault: e.to_string(),
    };
    let mut bytes = Vec::new();
    quant::quantize_rows_weighted(ty, &values, row_len, imp, &mut bytes).map_err(kernel)?;
    let back = quant::dequantize_to_vec(ty, &bytes).map_err(kernel)?;
    let mut out = vec![0f32; back.len()];
    for (r, row) in back.chunks_exact(row_len).enumerate() {
        let s = t.rows.source_row(r as u64) as usize;
        out[s * row_len..(s + 1) * row_len].copy_from_slice(row);
    }
    Ok(out)
}

/// Convert `src` to `out` (GGUF) with per-tensor types chosen for the budget.
pub fn convert_to_budget(
    src: &Path,
    out: &Path,
    opts: &convert::Options,
    b: &BudgetOptions,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Outcome, StageError> {
    let ckpt = Checkpoint::open(src)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .map_err(|e| ConvertError::Options(format!("cannot start worker threads: {e}")))?;
    let started = Instant::now();
    let (plan, importance) = budget::base_plan(&ckpt, opts)?;
    let types = budget::candidate_types(opts.imatrix.is_some());
    let mut table = budget::table(&plan, &importance, &types);
    let (lo, hi) = table.range();
    let (min_bpw, max_bpw) = (table.bpw(lo), table.bpw(hi));
    let mut budget_bytes = match b.budget {
        Budget::Bpw(x) => table.bytes_for_bpw(x)?,
        Budget::Bytes(n) => {
            if n < lo {
                return Err(ConvertError::BudgetOutOfRange {
                    asked: format!("--max-size {n}"),
                    min: format!("{lo} bytes of tensor data ({min_bpw:.3} bits per weight)"),
                    max: format!("{hi} bytes (F16, {max_bpw:.3} bits per weight)"),
                }
                .into());
            }
            n.min(hi)
        }
    };
    pool.install(|| {
        budget::measure(
            &mut table,
            &plan,
            &ckpt.weights,
            &importance,
            &mut |done, total| progress(Event::Errors { done, total }),
        )
    })?;
    let t_errors = started.elapsed().as_secs_f64();

    // Sensitivity.
    let started = Instant::now();
    let (chunks, calibration) = chunks_of(&ckpt, src, b)?;
    let first_scored = b.ctx / 2;
    let mut runner = Runner::new(src, &ckpt, chunks, first_scored)?;
    progress(Event::Reference);
    let (probe_set, check_set) = pick(&table, b.probes);
    let total = probe_set.len() + check_set.len() + check_set.len().min(4);
    let mut done = 0;
    let mut measure =
        |t: usize, c: usize, runner: &mut Runner| -> Result<Option<Probe>, StageError> {
            let ch = &table.tensors[t];
            let Some((name, shape)) = source_of(&plan, &ckpt.weights, ch.index) else {
                return Ok(None);
            };
            let cand = &ch.candidates[c];
            let values = round_trip(&plan, &ckpt.weights, &importance, ch.index, cand.ty)?;
            let layer = convert::recipe::layer_of(&ch.name).map(|l| l as usize);
            let kld = runner.kld_with(layer, &name, shape, &values)?;
            done += 1;
            progress(Event::Probe { done, total });
            Ok(Some(Probe {
                tensor: ch.name.clone(),
                ty: cand.ty.name().to_owned(),
                error: cand.error,
                measured_kld: kld,
                predicted_kld: 0.0,
            }))
        };
    // Factor per probed tensor.
    let mut probes = Vec::new();
    let mut factor_of: BTreeMap<usize, f64> = BTreeMap::new();
    for &t in &probe_set {
        let Some(c) = nearest(&table, t, 4.5) else {
            continue;
        };
        if let Some(mut p) = measure(t, c, &mut runner)? {
            let f = if p.error > 0.0 {
                p.measured_kld.max(0.0) / p.error
            } else {
                0.0
            };
            p.predicted_kld = p.measured_kld;
            factor_of.insert(t, f);
            probes.push(p);
        }
    }
    let factors = fit(&table, &factor_of);
    // Checks: unprobed layers at the probe type, and probed tensors at another type.
    let mut checks = Vec::new();
    for &t in &check_set {
        if let Some(c) = nearest(&table, t, 4.5) {
            if let Some(mut p) = measure(t, c, &mut runner)? {
                p.predicted_kld = factors[t] * p.error;
                checks.push(p);
            }
        }
    }
    for &t in probe_set
        .iter()
        .filter(|t| factor_of.contains_key(t))
        .take(4)
    {
        if let Some(c) = nearest(&table, t, 6.0) {
            if let Some(mut p) = measure(t, c, &mut runner)? {
                p.predicted_kld = factors[t] * p.error;
                checks.push(p);
            }
        }
    }
    let proxy = (!checks.is_empty()).then(|| {
        let m: Vec<f64> = checks.iter().map(|p| p.measured_kld).collect();
        let q: Vec<f64> = checks.iter().map(|p| p.predicted_kld).collect();
        let logs: Vec<f64> = m
            .iter()
            .zip(&q)
            .map(|(a, b)| (a.max(1e-12) / b.max(1e-12)).ln())
            .collect();
        ProxyCheck {
            pairs: checks.len(),
            ratio_geomean: (logs.iter().sum::<f64>() / logs.len() as f64).exp(),
            worst_factor: logs.iter().map(|l| l.abs()).fold(0.0, f64::max).exp(),
            rank_correlation: rank_correlation(&m, &q),
        }
    });
    drop(runner);
    let t_sens = started.elapsed().as_secs_f64();

    // Choose and write; a --max-size output is rewritten smaller if the metadata did not
    // fit beside the tensors.
    let started = Instant::now();
    progress(Event::Writing);
    let mut attempt = 0;
    let (choice, summary) = loop {
        let choice = budget::select(&table, &factors, budget_bytes);
        let o = budget::options_for(opts, &table, &choice)?;
        let summary = convert::convert(src, out, OutputFormat::Gguf, &o, &convert::NoProgress)?;
        match b.budget {
            Budget::Bytes(max) if summary.bytes_out > max && attempt < 4 => {
                let over = summary.bytes_out - max;
                if budget_bytes.saturating_sub(over) < lo {
                    let _ = std::fs::remove_file(out);
                    return Err(ConvertError::BudgetOutOfRange {
                        asked: format!("--max-size {max}"),
                        min: format!(
                            "{} bytes ({lo} of tensor data and {over} more of metadata than fit)",
                            lo + summary.bytes_out - bytes_of_choice(&table, &choice)
                        ),
                        max: format!("{hi} bytes of tensor data (F16)"),
                    }
                    .into());
                }
                budget_bytes -= over;
                attempt += 1;
            }
            _ => break (choice, summary),
        }
    };
    let t_write = started.elapsed().as_secs_f64();

    let mut mix = Vec::new();
    let mut groups: BTreeMap<String, MixGroup> = BTreeMap::new();
    let mut predicted = 0.0;
    for (t, (ch, &c)) in table.tensors.iter().zip(&choice).enumerate() {
        let Some(cand) = ch.candidates.get(c) else {
            continue;
        };
        let p = factors[t] * cand.error;
        predicted += p;
        let g = groups
            .entry(group_of(&ch.name))
            .or_insert_with(|| MixGroup {
                group: group_of(&ch.name),
                tensors: 0,
                types: BTreeMap::new(),
                bytes: 0,
                bits_per_weight: 0.0,
                predicted_kld: 0.0,
            });
        g.tensors += 1;
        *g.types.entry(cand.ty.name().to_owned()).or_default() += 1;
        g.bytes += cand.bytes;
        g.bits_per_weight += ch.params as f64;
        g.predicted_kld += p;
        mix.push(MixTensor {
            name: ch.name.clone(),
            ty: cand.ty.name().to_owned(),
            bytes: cand.bytes,
            params: ch.params,
            predicted_kld: p,
        });
    }
    for g in groups.values_mut() {
        // bits_per_weight held the parameter count until here.
        g.bits_per_weight = if g.bits_per_weight > 0.0 {
            g.bytes as f64 * 8.0 / g.bits_per_weight
        } else {
            0.0
        };
    }

    let started = Instant::now();
    let measured = if b.measure {
        progress(Event::Measuring);
        let mut po = ParityOptions::new(Corpus::Text(b.text.clone()));
        po.ctx = b.ctx;
        po.chunks = Some(b.chunks);
        let report = parity::compare(src, out, &po, None, &mut |_| {})?;
        Some(report.summary)
    } else {
        None
    };
    let t_measure = started.elapsed().as_secs_f64();
    Ok(Outcome {
        summary,
        budget: b.budget,
        budget_bytes,
        min_bpw,
        max_bpw,
        calibration,
        groups: groups.into_values().collect(),
        mix,
        predicted_kld: predicted,
        measured,
        probes,
        checks,
        proxy,
        seconds: Timing {
            errors: t_errors,
            sensitivity: t_sens,
            write: t_write,
            measure: t_measure,
        },
    })
}

fn bytes_of_choice(table: &Table, choice: &budget::Choice) -> u64 {
    budget::bytes_of(table, choice)
}

/// Every tensor's factor: its own where probed, else interpolated in log space by layer
/// between the probed tensors of its kind (the nearest beyond the ends), else the
/// geometric mean of all probed factors.
fn fit(table: &Table, probed: &BTreeMap<usize, f64>) -> Vec<f64> {
    let floor = 1e-30;
    let all: Vec<f64> = probed.values().map(|f| f.max(floor).ln()).collect();
    let global = if all.is_empty() {
        1.0
    } else {
        (all.iter().sum::<f64>() / all.len() as f64).exp()
    };
    let mut by_group: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (&t, &f) in probed {
        let name = &table.tensors[t].name;
        let layer = convert::recipe::layer_of(name).unwrap_or(0) as f64;
        by_group
            .entry(group_of(name))
            .or_default()
            .push((layer, f.max(floor).ln()));
    }
    for v in by_group.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    table
        .tensors
        .iter()
        .enumerate()
        .map(|(t, c)| {
            if let Some(&f) = probed.get(&t) {
                return f;
            }
            let Some(pts) = by_group.get(&group_of(&c.name)).filter(|v| !v.is_empty()) else {
                return global;
            };
            let x = convert::recipe::layer_of(&c.name).unwrap_or(0) as f64;
            let ln = match pts.iter().position(|p| p.0 >= x) {
                None => pts[pts.len() - 1].1,
                Some(0) => pts[0].1,
                Some(i) => {
                    let (a, b) = (pts[i - 1], pts[i]);
                    let w = if b.0 > a.0 {
                        (x - a.0) / (b.0 - a.0)
                    } else {
                        0.0
                    };
                    a.1 + w * (b.1 - a.1)
                }
            };
            ln.exp()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_drop_the_layer() {
        assert_eq!(group_of("blk.12.attn_q.weight"), "attn_q.weight");
        assert_eq!(group_of("token_embd.weight"), "token_embd.weight");
    }

    #[test]
    fn ranks_correlate() {
        assert!((rank_correlation(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((rank_correlation(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }
}
