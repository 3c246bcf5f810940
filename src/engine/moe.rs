//! The mixture-of-experts feed-forward: a router picks `used` of `experts` expert
//! feed-forwards per token and mixes their outputs by its weights; shared experts run on
//! every token (Qwen2-MoE gates its one by a sigmoid, DeepSeek adds them as they are).
//!
//! Routing follows transformers' code for each family (llama.cpp's `build_moe_ffn` agrees):
//! softmax over all experts then the top k, optionally renormalised (Mixtral always,
//! Qwen by `norm_topk_prob`); DeepSeek-V3's sigmoid scores, where a per-expert bias
//! (`e_score_correction_bias`, GGUF `exp_probs_b`) moves the selection but not the
//! weights, experts chosen only from the `topk_group` groups whose two best biased scores
//! sum highest, and the weights times `routed_scaling_factor`; gpt-oss's top k of the raw
//! (biased) logits followed by a softmax over those k, with its clamped SwiGLU.
//!
//! Dispatch is grouped by expert: every token's choices are gathered first, then each
//! expert multiplies all of its tokens in one product, so an expert's weights are read
//! once per forward call whatever the batch. Weights stay in their stored type
//! ([`StoredMatrix`], mostly ranges of the checkpoint's map); products are exact f32 in
//! reference math; native math multiplies K-type experts with ggml's integer Q8_K
//! arithmetic (`kdot.rs`) and other block types through candle's quantized kernels. Expert
//! layouts read: one tensor per expert (Mixtral `w1/w2/w3`, Qwen and DeepSeek
//! `experts.E.{gate,up,down}_proj`), transformers 5's stacked `gate_up_proj` / `down_proj`,
//! gpt-oss's transposed, interleaved `gate_up_proj` with biases, and llama.cpp's 3-d
//! `ffn_{gate,up,down}_exps` (MXFP4 included, dequantized by `formats::mxfp4`).

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::capture::LayerTap;
use super::config::{Architecture, Gating, ModelConfig, MoeConfig, SwigluClamp};
use super::dispatch::{self, Input, Prepared, Rounding, TILE_ROWS};
use super::model::{Loader, Math};
use super::stored::{Elem, StoredMatrix};
use super::weights::{Naming, RawTensor};
use super::EngineError;

/// One expert feed-forward `down(act(gate x) * up x)`, with gpt-oss's biases.
#[derive(Debug)]
struct Expert {
    gate: StoredMatrix,
    up: StoredMatrix,
    down: StoredMatrix,
    /// Biases of gate, up and down (gpt-oss).
    bias: Option<[Vec<f32>; 3]>,
}

/// A mixture-of-experts feed-forward layer.
#[derive(Debug)]
pub(super) struct MoeFfn {
    cfg: MoeConfig,
    hidden: usize,
    /// Native math: block types through candle's quantized kernel.
    quantized: bool,
    router: StoredMatrix,
    /// Added to the router logits (gpt-oss).
    router_bias: Option<Vec<f32>>,
    /// Added to the scores for the choice only (DeepSeek-V3).
    selection_bias: Option<Vec<f32>>,
    experts: Vec<Expert>,
    shared: Option<Expert>,
    /// Qwen2-MoE: the shared expert's output times sigmoid(x . gate).
    shared_gate: Option<StoredMatrix>,
}

/// Tensor names of one layer's experts, by scheme and family.
struct Names {
    naming: Naming,
    arch: Architecture,
    layer: usize,
}

impl Names {
    fn hf_prefix(&self) -> String {
        match self.arch {
            Architecture::Mixtral => format!("model.layers.{}.block_sparse_moe.", self.layer),
            _ => format!("model.layers.{}.mlp.", self.layer),
        }
    }

    fn gguf(&self, rest: &str) -> String {
        format!("blk.{}.{rest}", self.layer)
    }

    fn router(&self) -> String {
        match (self.naming, self.arch) {
            (Naming::Gguf, _) => self.gguf("ffn_gate_inp.weight"),
            (_, Architecture::GptOss) => format!("{}router.weight", self.hf_prefix()),
            _ => format!("{}gate.weight", self.hf_prefix()),
        }
    }

    fn router_bias(&self) -> String {
        match self.naming {
            Naming::Gguf => self.gguf("ffn_gate_inp.bias"),
            Naming::HuggingFace => format!("{}router.bias", self.hf_prefix()),
        }
    }

    fn selection_bias(&self) -> String {
        match self.naming {
            Naming::Gguf => self.gguf("exp_probs_b.bias"),
            Naming::HuggingFace => format!("{}gate.e_score_correction_bias", self.hf_prefix()),
        }
    }

    /// The per-expert tensor of projection `which` (0 gate, 1 up, 2 down).
    fn per_expert(&self, e: usize, which: usize) -> String {
        match (self.naming, self.arch) {
            (Naming::Gguf, _) => self.gguf(&format!("{}.{e}.weight", GGUF_DENSE[which])),
            (_, Architecture::Mixtral) => {
                format!("{}experts.{e}.{}.weight", self.hf_prefix(), MIXTRAL[which])
            }
            _ => format!("{}experts.{e}.{}.weight", self.hf_prefix(), HF_PROJ[which]),
        }
    }

    /// The stacked tensor of projection `which`: llama.cpp's `ffn_*_exps`, or
    /// transformers' `gate_up_proj` (`which` 0) / `down_proj` (2).
    fn stacked(&self, which: usize) -> Option<String> {
        match self.naming {
            Naming::Gguf => Some(self.gguf(&format!("{}_exps.weight", GGUF_DENSE[which]))),
            Naming::HuggingFace => match which {
                0 => Some(format!("{}experts.gate_up_proj", self.hf_prefix())),
                2 => Some(format!("{}experts.down_proj", self.hf_prefix())),
                _ => None,
            },
        }
    }

    fn stacked_bias(&self, which: usize) -> String {
        match self.naming {
            Naming::Gguf => self.gguf(&format!("{}_exps.bias", GGUF_DENSE[which])),
            Naming::HuggingFace => match which {
                2 => format!("{}experts.down_proj_bias", self.hf_prefix()),
                _ => format!("{}experts.gate_up_proj_bias", self.hf_prefix()),
            },
        }
    }

    fn shared(&self, which: usize) -> String {
        match (self.naming, self.arch) {
            (Naming::Gguf, _) => self.gguf(&format!("{}_shexp.weight", GGUF_DENSE[which])),
            (_, Architecture::Qwen2Moe) => {
                format!(
                    "{}shared_expert.{}.weight",
                    self.hf_prefix(),
                    HF_PROJ[which]
                )
            }
            _ => format!(
                "{}shared_experts.{}.weight",
                self.hf_prefix(),
                HF_PROJ[which]
            ),
        }
    }

    fn shared_gate(&self) -> String {
        match self.naming {
            Naming::Gguf => self.gguf("ffn_gate_inp_shexp.weight"),
            Naming::HuggingFace => format!("{}shared_expert_gate.weight", self.hf_prefix()),
        }
    }
}

/// Native math keeps candle's integer kernel, one expert at a time, for an expert with
/// fewer rows than this (token-by-token generation): dequantizing an expert's weights for
/// the f32 dispatch costs more than the integer dot products of a few rows.
const DISPATCH_MIN_ROWS: usize = 8;

const HF_PROJ: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];
const MIXTRAL: [&str; 3] = ["w1", "w3", "w2"];
const GGUF_DENSE: [&str; 3] = ["ffn_gate", "ffn_up", "ffn_down"];

impl MoeFfn {
    /// Load layer `i`'s router and experts.
    pub(super) fn load(
        ld: &Loader<'_>,
        cfg: &ModelConfig,
        m: &MoeConfig,
        i: usize,
    ) -> Result<MoeFfn, EngineError> {
        if !ld.device.is_cpu() {
            return Err(EngineError::Unsupported(
                "mixture-of-experts layers on a non-CPU device".into(),
            ));
        }
        let names = Names {
            naming: ld.naming,
            arch: cfg.architecture,
            layer: i,
        };
        let (h, e) = (cfg.hidden, m.experts);
        let router = matrix(ld, &required(ld, &names.router())?, [e, h])?;
        let router_bias = vector(ld, &names.router_bias(), e)?;
        let selection_bias = vector(ld, &names.selection_bias(), e)?;
        let experts =
            if cfg.architecture == Architecture::GptOss && ld.naming == Naming::HuggingFace {
                gpt_oss_hf_experts(ld, &names, m, h)?
            } else {
                stacked_or_per_expert(ld, &names, m, h)?
            };
        let shared = if m.shared_ffn > 0 {
            let s = m.shared_ffn;
            Some(Expert {
                gate: matrix(ld, &required(ld, &names.shared(0))?, [s, h])?,
                up: matrix(ld, &required(ld, &names.shared(1))?, [s, h])?,
                down: matrix(ld, &required(ld, &names.shared(2))?, [h, s])?,
                bias: None,
            })
        } else {
            None
        };
        let shared_gate = match ld.src.tensor(&names.shared_gate())? {
            // llama.cpp stores the gate as a vector of `hidden`
            Some(t) => {
                let t = if t.shape == [h] {
                    reshaped(&t, vec![1, h])
                } else {
                    t
                };
                Some(matrix(ld, &t, [1, h])?)
            }
            None if cfg.architecture == Architecture::Qwen2Moe && m.shared_ffn > 0 => {
                return Err(EngineError::MissingTensor(names.shared_gate()))
            }
            None => None,
        };
        Ok(MoeFfn {
            cfg: m.clone(),
            hidden: h,
            quantized: ld.math == Math::Native,
            router,
            router_bias,
            selection_bias,
            experts,
            shared,
            shared_gate,
        })
    }

    /// `x [n, hidden] -> [n, hidden]`; the inputs of its products go to `tap`, per expert
    /// for the routed experts.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        tap: Option<&LayerTap<'_>>,
    ) -> Result<Tensor, EngineError> {
        let (n, h) = x.dims2()?;
        if h != self.hidden {
            return Err(EngineError::BadParam(format!(
                "mixture input of width {h}, expected {}",
                self.hidden
            )));
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let e = self.cfg.experts;
        if let Some(t) = tap {
            t.dense_rows(&["ffn_gate_inp"], &xs, n)?;
        }
        let mut logits = self.product(&self.router, &xs, n)?;
        if let Some(b) = &self.router_bias {
            for row in logits.chunks_exact_mut(e) {
                for (l, b) in row.iter_mut().zip(b) {
                    *l += b;
                }
            }
        }
        // every token's choices first, then every expert's tokens at once
        let mut tokens: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
        for (t, row) in logits.chunks_exact(e).enumerate() {
            for (expert, w) in route(&self.cfg, row, self.selection_bias.as_deref()) {
                tokens[expert].push((t, w));
            }
        }
        let mut batches = Vec::new();
        for (i, (expert, chosen)) in self.experts.iter().zip(&tokens).enumerate() {
            if !chosen.is_empty() {
                let rows = input_rows(&xs, h, chosen.iter().map(|&(t, _)| t));
                batches.push(Batch::new(expert, rows, chosen.len(), Some(i)));
            }
        }
        if let Some(shared) = &self.shared {
            batches.push(Batch::new(shared, xs.clone(), n, None));
            if let (Some(t), Some(_)) = (tap, &self.shared_gate) {
                t.dense_rows(&["ffn_gate_inp_shexp"], &xs, n)?;
            }
        }
        let ys = self.experts_forward(&batches, tap)?;
        let shared_gates = match (&self.shared, &self.shared_gate) {
            (Some(_), Some(g)) => Some(self.product(g, &xs, n)?),
            _ => None,
        };
        // the weighted sum output row by output row (`[hidden, n]`, the experts' layout, so
        // each expert's row is read in order): every token's sum starts at zero, adds its
        // experts in ascending order, then the shared expert, a fixed order of additions
        // independent of the thread count
        let routed: Vec<&Vec<(usize, f32)>> = tokens.iter().filter(|c| !c.is_empty()).collect();
        let shared_y = self.shared.as_ref().and_then(|_| ys.last());
        let shared_gates: Option<Vec<f32>> =
            shared_gates.map(|g| g.iter().map(|&g| sigmoid(g)).collect());
        let mut by_row = vec![0f32; n * h];
        by_row
            .par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(r, o)| {
                for (b, chosen) in routed.iter().enumerate() {
                    let m = batches[b].m;
                    for (&(t, w), y) in chosen.iter().zip(&ys[b][r * m..(r + 1) * m]) {
                        o[t] += y * w;
                    }
                }
                if let Some(y) = shared_y {
                    let y = &y[r * n..(r + 1) * n];
                    match &shared_gates {
                        Some(g) => {
                            for ((o, v), g) in o.iter_mut().zip(y).zip(g) {
                                *o += g * v;
                            }
                        }
                        None => {
                            for (o, v) in o.iter_mut().zip(y) {
                                *o += v;
                            }
                        }
                    }
                }
            });
        let out = transpose(&by_row, h, n);
        Ok(Tensor::from_vec(out, (n, h), &Device::Cpu)?.to_device(x.device())?)
    }

    /// Every batch's expert on its rows: `[hidden, m]` per batch, stored output row by
    /// output row. Two parallel loops over (batch, tile of weight rows), gate and up with
    /// the activation, then down; each item runs a single-threaded kernel
    /// (`dispatch::tile_product`) and writes its own slice, so a layer costs two fork/joins
    /// whatever its number of experts.
    fn experts_forward(
        &self,
        batches: &[Batch<'_>],
        tap: Option<&LayerTap<'_>>,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let h = self.hidden;
        let e = self.cfg.experts;
        // what an activation capture records: the input rows of each product, per expert
        // for the routed ones, under llama.cpp's stacked names
        let seen = |b: &Batch<'_>, which: &[&str], x: &[f32]| -> Result<(), EngineError> {
            match (tap, b.expert) {
                (None, _) => Ok(()),
                (Some(t), Some(i)) => t.expert_rows(which, e, i, x, b.m),
                (Some(t), None) => {
                    let shexp: Vec<String> = which.iter().map(|w| shared_name(w)).collect();
                    let shexp: Vec<&str> = shexp.iter().map(String::as_str).collect();
                    t.dense_rows(&shexp, x, b.m)
                }
            }
        };
        let mut ys: Vec<Vec<f32>> = batches.iter().map(|b| vec![0f32; h * b.m]).collect();
        // native math on few rows (token-by-token generation) of a type without an integer
        // kernel here: candle's integer kernel per expert reads the blocks once, where
        // dispatch would dequantize them for one row
        let per_expert = |b: &Batch<'_>| {
            self.quantized
                && b.m < DISPATCH_MIN_ROWS
                && matches!(b.ffn.gate.elem(), Elem::Block(_))
                && !matches!(Rounding::of(&b.ffn.gate, true), Rounding::Integer(_))
        };
        for (b, y) in batches.iter().zip(ys.iter_mut()) {
            if per_expert(b) {
                let f = |which: &[&str], x: &[f32]| seen(b, which, x);
                let rows = self.expert(b.ffn, &b.x, b.m, tap.map(|_| &f as _))?;
                for (i, row) in rows.chunks_exact(h).enumerate() {
                    for (r, v) in row.iter().enumerate() {
                        y[r * b.m + i] = *v;
                    }
                }
            }
        }
        // the inputs of gate and up, rounded or quantized as native math does
        let round = |w: &StoredMatrix, x: &[f32]| {
            dispatch::prepare(x, w.cols(), Rounding::of(w, self.quantized))
        };
        for b in batches.iter().filter(|b| !per_expert(b)) {
            seen(b, &["ffn_gate_exps", "ffn_up_exps"], &b.x)?;
        }
        let inputs = batches
            .par_iter()
            .map(|b| -> candle_core::Result<_> {
                if per_expert(b) {
                    return Ok((None, None));
                }
                let gate = round(&b.ffn.gate, &b.x)?;
                let up = if Rounding::of(&b.ffn.up, self.quantized)
                    == Rounding::of(&b.ffn.gate, self.quantized)
                {
                    None
                } else {
                    round(&b.ffn.up, &b.x)?
                };
                Ok((gate, up))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // gate and up, and the activation: `act [ffn, m]` per batch
        let mut acts: Vec<Vec<f32>> = batches
            .iter()
            .map(|b| {
                if per_expert(b) {
                    Vec::new()
                } else {
                    vec![0f32; b.ffn.gate.rows() * b.m]
                }
            })
            .collect();
        let mut items = Vec::new();
        for (bi, (b, act)) in batches.iter().zip(acts.iter_mut()).enumerate() {
            if b.m > 0 {
                for (tile, chunk) in act.chunks_mut(TILE_ROWS * b.m).enumerate() {
                    items.push((bi, tile * TILE_ROWS, chunk));
                }
            }
        }
        items.into_par_iter().try_for_each_init(
            || (dispatch::Scratch::default(), Vec::new()),
            |(scratch, up), (bi, j0, act)| -> candle_core::Result<()> {
                let b = &batches[bi];
                let (xg, xu) = &inputs[bi];
                let xg = xg.as_ref().map_or(Input::Rows(&b.x), Prepared::input);
                let xu = xu.as_ref().map_or(xg, Prepared::input);
                dispatch::tile_product(&b.ffn.gate, j0, xg, b.m, scratch, act)?;
                up.resize(act.len(), 0.0);
                dispatch::tile_product(&b.ffn.up, j0, xu, b.m, scratch, up)?;
                if let Some([bg, bu, _]) = &b.ffn.bias {
                    add_row_bias(act, &bg[j0..], b.m);
                    add_row_bias(up, &bu[j0..], b.m);
                }
                self.activate(act, up);
                Ok(())
            },
        )?;
        // down: the activations token by token, rounded for down's type
        let downs: Vec<Vec<f32>> = batches
            .par_iter()
            .zip(acts.par_iter())
            .map(|(b, act)| {
                if per_expert(b) {
                    return Vec::new();
                }
                transpose(act, b.ffn.gate.rows(), b.m)
            })
            .collect();
        for (b, x) in batches.iter().zip(&downs) {
            if !per_expert(b) {
                seen(b, &["ffn_down_exps"], x)?;
            }
        }
        let downs: Vec<Prepared> = downs
            .into_par_iter()
            .zip(batches.par_iter())
            .map(|(x, b)| {
                let r = Rounding::of(&b.ffn.down, self.quantized);
                Ok(dispatch::prepare(&x, b.ffn.down.cols(), r)?.unwrap_or(Prepared::Rows(x)))
            })
            .collect::<candle_core::Result<_>>()?;
        let mut items = Vec::new();
        for (bi, (b, y)) in batches.iter().zip(ys.iter_mut()).enumerate() {
            if b.m > 0 && !per_expert(b) {
                for (tile, chunk) in y.chunks_mut(TILE_ROWS * b.m).enumerate() {
                    items.push((bi, tile * TILE_ROWS, chunk));
                }
            }
        }
        items.into_par_iter().try_for_each_init(
            dispatch::Scratch::default,
            |scratch, (bi, j0, y)| -> candle_core::Result<()> {
                let b = &batches[bi];
                dispatch::tile_product(&b.ffn.down, j0, downs[bi].input(), b.m, scratch, y)?;
                if let Some([_, _, bd]) = &b.ffn.bias {
                    add_row_bias(y, &bd[j0..], b.m);
                }
                Ok(())
            },
        )?;
        Ok(ys)
    }

    /// `g <- act(g) * u` elementwise: SiLU, or gpt-oss's clamped SwiGLU.
    fn activate(&self, g: &mut [f32], u: &[f32]) {
        match self.cfg.clamp {
            None => {
                for (g, u) in g.iter_mut().zip(u) {
                    // torch's SiLU: x / (1 + exp(-x))
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
            }
            Some(SwigluClamp { alpha, limit }) => {
                for (g, u) in g.iter_mut().zip(u) {
                    let gate = g.min(limit);
                    let up = u.clamp(-limit, limit);
                    *g = (up + 1.0) * (gate * sigmoid(gate * alpha));
                }
            }
        }
    }

    fn product(&self, w: &StoredMatrix, x: &[f32], m: usize) -> Result<Vec<f32>, EngineError> {
        Ok(if self.quantized {
            w.matmul_quantized(x, m)?
        } else {
            w.matmul_exact(x, m)?
        })
    }

    /// One expert on `m` rows of `x`; `seen` gets the inputs of its products, named by
    /// llama.cpp's stacked tensors (`ffn_gate_exps`).
    fn expert(
        &self,
        ex: &Expert,
        x: &[f32],
        m: usize,
        seen: Option<Seen<'_>>,
    ) -> Result<Vec<f32>, EngineError> {
        if let Some(f) = seen {
            f(&["ffn_gate_exps", "ffn_up_exps"], x)?;
        }
        let mut g = self.product(&ex.gate, x, m)?;
        let mut u = self.product(&ex.up, x, m)?;
        if let Some([bg, bu, _]) = &ex.bias {
            add_rows(&mut g, bg);
            add_rows(&mut u, bu);
        }
        self.activate(&mut g, &u);
        if let Some(f) = seen {
            f(&["ffn_down_exps"], &g)?;
        }
        let mut y = self.product(&ex.down, &g, m)?;
        if let Some([_, _, bd]) = &ex.bias {
            add_rows(&mut y, bd);
        }
        Ok(y)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Add `b[r]` to the `m` values of output row `r` (a tile stored output row by output row).
fn add_row_bias(y: &mut [f32], b: &[f32], m: usize) {
    for (row, b) in y.chunks_exact_mut(m).zip(b) {
        for v in row.iter_mut() {
            *v += b;
        }
    }
}

/// `a [rows, cols]` as `[cols, rows]`, in blocks of 16 columns: each block reads 16 values
/// (a cache line) of every row and writes 16 output rows in order.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 16;
    let mut t = vec![0f32; rows * cols];
    if rows == 0 {
        return t;
    }
    t.par_chunks_mut(B * rows).enumerate().for_each(|(blk, t)| {
        let c0 = blk * B;
        let width = t.len() / rows;
        for (r, row) in a.chunks_exact(cols).enumerate() {
            for (c, v) in row[c0..c0 + width].iter().enumerate() {
                t[c * rows + r] = *v;
            }
        }
    });
    t
}

/// The input rows of one expert: rows `tokens` of `x [n, h]`, gathered in token order.
/// This is the one place an expert's inputs exist as a matrix of their own.
fn input_rows(x: &[f32], h: usize, tokens: impl Iterator<Item = usize>) -> Vec<f32> {
    let mut rows = Vec::new();
    for t in tokens {
        rows.extend_from_slice(&x[t * h..(t + 1) * h]);
    }
    rows
}

/// One expert (or the shared one) with its input rows.
struct Batch<'a> {
    ffn: &'a Expert,
    /// `[m, hidden]`.
    x: Vec<f32>,
    m: usize,
    /// The routed expert's index, `None` for the shared one.
    expert: Option<usize>,
}

impl<'a> Batch<'a> {
    fn new(ffn: &'a Expert, x: Vec<f32>, m: usize, expert: Option<usize>) -> Batch<'a> {
        Batch { ffn, x, m, expert }
    }
}

/// Where an expert reports the input rows of its products, by llama.cpp's tensor names.
type Seen<'a> = &'a dyn Fn(&[&str], &[f32]) -> Result<(), EngineError>;

/// A shared expert's tensor from the routed one's name: `ffn_gate_exps` -> `ffn_gate_shexp`.
fn shared_name(routed: &str) -> String {
    format!("{}_shexp", routed.trim_end_matches("_exps"))
}

fn add_rows(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        for (v, b) in row.iter_mut().zip(b) {
            *v += b;
        }
    }
}

/// Softmax in f32, as torch computes it: `exp(x - max) / sum`.
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// The experts one token uses and their weights, from its router logits.
fn route(cfg: &MoeConfig, logits: &[f32], selection_bias: Option<&[f32]>) -> Vec<(usize, f32)> {
    let mut probs = logits.to_vec();
    match cfg.gating {
        Gating::Softmax => softmax(&mut probs),
        Gating::Sigmoid => probs.iter_mut().for_each(|p| *p = sigmoid(*p)),
        Gating::SoftmaxSelected => {}
    }
    let mut select = probs.clone();
    if let Some(b) = selection_bias {
        for (s, b) in select.iter_mut().zip(b) {
            *s += b;
        }
    }
    if cfg.groups > 1 {
        // keep the groups whose two best scores sum highest
        let per = cfg.experts / cfg.groups;
        let mut group_scores: Vec<(usize, f32)> = select
            .chunks_exact(per)
            .map(|g| {
                let mut best = g.to_vec();
                best.sort_by(|a, b| b.total_cmp(a));
                best.iter().take(2).sum::<f32>()
            })
            .enumerate()
            .collect();
        group_scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for &(g, _) in &group_scores[cfg.groups_used..] {
            select[g * per..(g + 1) * per].fill(f32::NEG_INFINITY);
        }
    }
    let mut order: Vec<usize> = (0..select.len()).collect();
    order.sort_by(|&a, &b| select[b].total_cmp(&select[a]).then(a.cmp(&b)));
    order.truncate(cfg.used);
    let mut weights: Vec<f32> = order.iter().map(|&i| probs[i]).collect();
    if cfg.gating == Gating::SoftmaxSelected {
        softmax(&mut weights);
    }
    if cfg.norm_topk {
        let sum: f32 = weights.iter().sum();
        if sum > 0.0 {
            weights.iter_mut().for_each(|w| *w /= sum);
        }
    }
    if cfg.scale != 1.0 {
        weights.iter_mut().for_each(|w| *w *= cfg.scale);
    }
    order.into_iter().zip(weights).collect()
}

fn required<'a>(ld: &'a Loader<'_>, name: &str) -> Result<RawTensor<'a>, EngineError> {
    ld.src
        .tensor(name)?
        .ok_or_else(|| EngineError::MissingTensor(name.into()))
}

/// A 1-d f32 vector of length `n`, if the checkpoint has it.
fn vector(ld: &Loader<'_>, name: &str, n: usize) -> Result<Option<Vec<f32>>, EngineError> {
    match ld.src.tensor(name)? {
        Some(t) => {
            t.expect_shape(&[n])?;
            Ok(Some(t.to_f32(&Device::Cpu)?.to_vec1::<f32>()?))
        }
        None => Ok(None),
    }
}

/// The same bytes under another shape (a stacked tensor seen as rows).
fn reshaped<'a>(t: &RawTensor<'a>, shape: Vec<usize>) -> RawTensor<'a> {
    RawTensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
        data: t.data.clone(),
    }
}

/// A 2-d weight kept in its stored type, checked against `shape`.
fn matrix(
    ld: &Loader<'_>,
    t: &RawTensor<'_>,
    shape: [usize; 2],
) -> Result<StoredMatrix, EngineError> {
    t.expect_shape(&shape)?;
    ld.stored(t)?.ok_or_else(|| EngineError::UnsupportedDtype {
        name: t.name.clone(),
        dtype: t.dtype.to_string(),
    })
}

/// Expert `e` of a stacked `[experts, rows, cols]` tensor, as a `[rows, cols]` matrix.
fn slice_expert(
    ld: &Loader<'_>,
    t: &RawTensor<'_>,
    e: usize,
    rows: usize,
    cols: usize,
) -> Result<StoredMatrix, EngineError> {
    let experts = t.shape.first().copied().unwrap_or(0);
    let flat = reshaped(t, vec![experts.saturating_mul(rows), cols]);
    matrix(ld, &flat.rows(e * rows, rows)?, [rows, cols])
}

/// Experts from llama.cpp's or transformers' stacked tensors when present, else one
/// tensor per expert. Shapes are checked against the config, so an expert count that
/// disagrees with the tensors names the tensor.
fn stacked_or_per_expert(
    ld: &Loader<'_>,
    names: &Names,
    m: &MoeConfig,
    h: usize,
) -> Result<Vec<Expert>, EngineError> {
    let (e, f) = (m.experts, m.expert_ffn);
    let stacked = |which: usize| -> Result<Option<RawTensor<'_>>, EngineError> {
        match names.stacked(which) {
            Some(n) => ld.src.tensor(&n),
            None => Ok(None),
        }
    };
    let bias = |which: usize, len: usize| -> Result<Option<Vec<f32>>, EngineError> {
        let name = names.stacked_bias(which);
        match ld.src.tensor(&name)? {
            Some(t) => {
                t.expect_shape(&[e, len])?;
                Ok(Some(
                    t.to_f32(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?,
                ))
            }
            None => Ok(None),
        }
    };
    let mut out = Vec::with_capacity(e);
    match (names.naming, stacked(0)?, stacked(2)?) {
        (Naming::Gguf, Some(gate), Some(down)) => {
            let up = required(ld, &names.stacked(1).unwrap_or_default())?;
            gate.expect_shape(&[e, f, h])?;
            up.expect_shape(&[e, f, h])?;
            down.expect_shape(&[e, h, f])?;
            let biases = match (bias(0, f)?, bias(1, f)?, bias(2, h)?) {
                (Some(g), Some(u), Some(d)) => Some((g, u, d)),
                _ => None,
            };
            for x in 0..e {
                out.push(Expert {
                    gate: slice_expert(ld, &gate, x, f, h)?,
                    up: slice_expert(ld, &up, x, f, h)?,
                    down: slice_expert(ld, &down, x, h, f)?,
                    bias: biases.as_ref().map(|(g, u, d)| {
                        [
                            g[x * f..(x + 1) * f].to_vec(),
                            u[x * f..(x + 1) * f].to_vec(),
                            d[x * h..(x + 1) * h].to_vec(),
                        ]
                    }),
                });
            }
        }
        // transformers 5: `gate_up_proj [experts, 2 ffn, hidden]` (gate rows first) and
        // `down_proj [experts, hidden, ffn]`
        (Naming::HuggingFace, Some(gate_up), Some(down)) => {
            gate_up.expect_shape(&[e, 2 * f, h])?;
            down.expect_shape(&[e, h, f])?;
            let flat = reshaped(&gate_up, vec![e * 2 * f, h]);
            for x in 0..e {
                out.push(Expert {
                    gate: matrix(ld, &flat.rows(2 * f * x, f)?, [f, h])?,
                    up: matrix(ld, &flat.rows(2 * f * x + f, f)?, [f, h])?,
                    down: slice_expert(ld, &down, x, h, f)?,
                    bias: None,
                });
            }
        }
        (_, Some(t), None) | (_, None, Some(t)) => {
            return Err(EngineError::BadTensor {
                name: t.name,
                why: "the other stacked expert tensors are missing".into(),
            })
        }
        (_, None, None) => {
            for x in 0..e {
                let get = |which: usize, shape: [usize; 2]| {
                    matrix(ld, &required(ld, &names.per_expert(x, which))?, shape)
                };
                out.push(Expert {
                    gate: get(0, [f, h])?,
                    up: get(1, [f, h])?,
                    down: get(2, [h, f])?,
                    bias: None,
                });
            }
            // a checkpoint with more experts than the config declares
            if let Some(t) = ld.src.tensor(&names.per_expert(e, 0))? {
                return Err(EngineError::BadTensor {
                    name: t.name,
                    why: format!("the config declares {e} experts"),
                });
            }
        }
    }
    Ok(out)
}

/// gpt-oss's Hugging Face experts: `gate_up_proj [experts, hidden, 2 ffn]` holds x -> gate
/// in its even columns and x -> up in its odd ones, `down_proj [experts, ffn, hidden]`,
/// both transposed against the `[out, in]` layout of a projection, so they are rewritten
/// as f32 matrices (the one copy this layout costs).
fn gpt_oss_hf_experts(
    ld: &Loader<'_>,
    names: &Names,
    m: &MoeConfig,
    h: usize,
) -> Result<Vec<Expert>, EngineError> {
    let (e, f) = (m.experts, m.expert_ffn);
    let gate_up_name = names.stacked(0).unwrap_or_default();
    let down_name = names.stacked(2).unwrap_or_default();
    let gate_up = match ld.src.tensor(&gate_up_name)? {
        Some(t) => t,
        None => {
            let blocks = format!("{gate_up_name}_blocks");
            if ld.src.tensor(&blocks)?.is_some() {
                return Err(EngineError::Unsupported(format!(
                    "gpt-oss experts in Hugging Face MXFP4 (`{blocks}`); convert to GGUF first"
                )));
            }
            return Err(EngineError::MissingTensor(gate_up_name));
        }
    };
    let down = required(ld, &down_name)?;
    gate_up.expect_shape(&[e, h, 2 * f])?;
    down.expect_shape(&[e, f, h])?;
    let gu = gate_up
        .to_f32(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let dn = down.to_f32(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let gu_bias = vector_2d(ld, &names.stacked_bias(0), e, 2 * f)?;
    let dn_bias = vector_2d(ld, &names.stacked_bias(2), e, h)?;
    let owned = |name: &str, rows: usize, cols: usize, v: Vec<f32>| {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        StoredMatrix::new(Elem::F32, rows, cols, &bytes, None).ok_or_else(|| {
            EngineError::BadTensor {
                name: name.into(),
                why: format!("cannot hold a {rows}x{cols} expert"),
            }
        })
    };
    let mut out = Vec::with_capacity(e);
    for x in 0..e {
        let src = &gu[x * h * 2 * f..(x + 1) * h * 2 * f];
        let mut gate = vec![0f32; f * h];
        let mut up = vec![0f32; f * h];
        for r in 0..h {
            for j in 0..f {
                gate[j * h + r] = src[r * 2 * f + 2 * j];
                up[j * h + r] = src[r * 2 * f + 2 * j + 1];
            }
        }
        let src = &dn[x * f * h..(x + 1) * f * h];
        let mut down_t = vec![0f32; h * f];
        for r in 0..f {
            for c in 0..h {
                down_t[c * f + r] = src[r * h + c];
            }
        }
        let bias = match (&gu_bias, &dn_bias) {
            (Some(gb), Some(db)) => {
                let row = &gb[x * 2 * f..(x + 1) * 2 * f];
                Some([
                    row.iter().step_by(2).copied().collect(),
                    row.iter().skip(1).step_by(2).copied().collect(),
                    db[x * h..(x + 1) * h].to_vec(),
                ])
            }
            _ => None,
        };
        out.push(Expert {
            gate: owned(&gate_up_name, f, h, gate)?,
            up: owned(&gate_up_name, f, h, up)?,
            down: owned(&down_name, h, f, down_t)?,
            bias,
        });
    }
    Ok(out)
}

fn vector_2d(
    ld: &Loader<'_>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<Vec<f32>>, EngineError> {
    match ld.src.tensor(name)? {
        Some(t) => {
            t.expect_shape(&[rows, cols])?;
            Ok(Some(
                t.to_f32(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?,
            ))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_noise::noise;

    fn cfg(gating: Gating, used: usize) -> MoeConfig {
        MoeConfig {
            experts: 4,
            used,
            expert_ffn: 2,
            gating,
            norm_topk: false,
            scale: 1.0,
            groups: 1,
            groups_used: 1,
            shared_ffn: 0,
            sparse_layers: vec![true],
            clamp: None,
        }
    }

    #[test]
    fn softmax_top_k_with_and_without_renormalisation() {
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let mut c = cfg(Gating::Softmax, 2);
        let r = route(&c, &logits, None);
        assert_eq!(r.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((r[0].1 - 2f32.exp() / z).abs() < 1e-6);
        c.norm_topk = true;
        let r = route(&c, &logits, None);
        assert!((r[0].1 + r[1].1 - 1.0).abs() < 1e-6);
        assert!((r[0].1 - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn selection_bias_moves_the_choice_not_the_weight() {
        let logits = [0.0f32, 1.0, 0.5, -1.0];
        let mut c = cfg(Gating::Sigmoid, 1);
        c.scale = 2.5;
        let bias = [0.0f32, 0.0, 0.0, 5.0];
        let r = route(&c, &logits, Some(&bias));
        assert_eq!(r[0].0, 3);
        assert!((r[0].1 - 2.5 * sigmoid(-1.0)).abs() < 1e-6);
    }

    #[test]
    fn groups_limit_the_choice() {
        // groups {0, 1} and {2, 3}; group 2 sums higher, so expert 1 (the best single
        // score) is not eligible
        let logits = [-5.0f32, 3.0, 2.0, 2.0];
        let mut c = cfg(Gating::Sigmoid, 2);
        c.groups = 2;
        c.groups_used = 1;
        let r = route(&c, &logits, None);
        assert_eq!(r.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 3]);
    }

    fn stored(elem: Elem, n: usize, k: usize, seed: u64) -> StoredMatrix {
        let w: Vec<f32> = noise(seed, n * k).iter().map(|v| v * 0.1).collect();
        let bytes = match elem {
            Elem::Block(t) => {
                let dense = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
                let q = candle_core::quantized::QTensor::quantize(&dense, t).unwrap();
                q.data().unwrap().to_vec()
            }
            _ => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        StoredMatrix::new(elem, n, k, &bytes, None).unwrap()
    }

    /// 16 experts of 4 used, 256 wide (a Q4_K row is 256 values), a shared expert gated
    /// by a sigmoid, and biases on the routed experts.
    fn layer(elem: Elem, quantized: bool) -> MoeFfn {
        let (h, f, e) = (256, 256, 16);
        let mut c = cfg(Gating::Softmax, 4);
        c.experts = e;
        c.expert_ffn = f;
        c.norm_topk = true;
        c.sparse_layers = vec![true];
        let expert = |x: u64, bias: bool| Expert {
            gate: stored(elem, f, h, 10 * x + 1),
            up: stored(elem, f, h, 10 * x + 2),
            down: stored(elem, h, f, 10 * x + 3),
            bias: bias.then(|| [noise(x, f), noise(x + 100, f), noise(x + 200, h)]),
        };
        MoeFfn {
            cfg: c,
            hidden: h,
            quantized,
            router: stored(Elem::F32, e, h, 7),
            router_bias: None,
            selection_bias: None,
            experts: (0..e as u64).map(|x| expert(x, true)).collect(),
            shared: Some(expert(99, false)),
            shared_gate: Some(stored(Elem::F32, 1, h, 8)),
        }
    }

    /// The mixture as the sum over each token's experts, one token and one expert at a time.
    fn token_by_token(l: &MoeFfn, xs: &[f32], n: usize) -> Vec<f32> {
        let h = l.hidden;
        let logits = l.product(&l.router, xs, n).unwrap();
        let gates = l.product(l.shared_gate.as_ref().unwrap(), xs, n).unwrap();
        let mut out = vec![0f32; n * h];
        for t in 0..n {
            let x = &xs[t * h..(t + 1) * h];
            let o = &mut out[t * h..(t + 1) * h];
            let mut chosen = route(&l.cfg, &logits[t * 16..(t + 1) * 16], None);
            chosen.sort_by_key(|c| c.0);
            for (ex, w) in chosen {
                let y = l.expert(&l.experts[ex], x, 1, None).unwrap();
                o.iter_mut().zip(&y).for_each(|(o, y)| *o += y * w);
            }
            let y = l.expert(l.shared.as_ref().unwrap(), x, 1, None).unwrap();
            let g = sigmoid(gates[t]);
            o.iter_mut().zip(&y).for_each(|(o, y)| *o += g * y);
        }
        out
    }

    fn forward_on(l: &MoeFfn, xs: &[f32], n: usize, threads: usize) -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let x = Tensor::from_slice(xs, (n, l.hidden), &Device::Cpu).unwrap();
        pool.install(|| l.forward(&x, None))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn dispatch_matches_one_token_at_a_time_and_ignores_the_thread_count() {
        let n = 48;
        let xs = noise(5, n * 256);
        let cases = [
            (Elem::F32, false, 2e-5),
            (
                Elem::Block(candle_core::quantized::GgmlDType::Q4K),
                false,
                2e-5,
            ),
            // native math: the integer kernel on the activations quantized as candle's
            // integer kernel quantizes them (K types), or that rounding summed in f32 (Q8_0)
            (
                Elem::Block(candle_core::quantized::GgmlDType::Q4K),
                true,
                1e-4,
            ),
            (
                Elem::Block(candle_core::quantized::GgmlDType::Q5K),
                true,
                1e-4,
            ),
            (
                Elem::Block(candle_core::quantized::GgmlDType::Q6K),
                true,
                1e-4,
            ),
            (
                Elem::Block(candle_core::quantized::GgmlDType::Q8_0),
                true,
                1e-4,
            ),
        ];
        for (elem, quantized, bound) in cases {
            let l = layer(elem, quantized);
            let one = forward_on(&l, &xs, n, 1);
            for threads in [2, 3] {
                assert_eq!(
                    forward_on(&l, &xs, n, threads),
                    one,
                    "{elem:?} native {quantized}: {threads} threads"
                );
            }
            let want = token_by_token(&l, &xs, n);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = one
                .iter()
                .zip(&want)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(
                worst <= bound * scale,
                "{elem:?} native {quantized}: {worst} of {scale}"
            );
        }
    }

    #[test]
    fn transpose_moves_every_value_once() {
        // a partial last block of 16 columns, one column, one row
        for (rows, cols) in [(3, 37), (5, 1), (1, 16), (0, 4)] {
            let a = noise(8, rows * cols);
            let t = transpose(&a, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], a[r * cols + c], "{rows}x{cols} ({r}, {c})");
                }
            }
            assert_eq!(t.len(), a.len());
        }
    }

    #[test]
    fn softmax_over_the_selected_logits() {
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let c = cfg(Gating::SoftmaxSelected, 2);
        let r = route(&c, &logits, None);
        assert_eq!(r[0].0, 1);
        assert!((r[0].1 - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
    }
}
