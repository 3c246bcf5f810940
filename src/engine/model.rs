//! The llama-family decoder: one forward pass for Llama 2/3.x, SmolLM, Mistral, Qwen2 and
//! Qwen3, with grouped-query attention, a causal mask and a KV cache.
//!
//! Differences between the families are data, not code paths: q/k/v biases (Qwen2) and
//! per-head q/k RMS norms (Qwen3) are applied when the checkpoint has those tensors, the
//! output head is the embedding when there is no separate head, and RoPE settings come from
//! [`ModelConfig`]. The two numeric modes differ only in how a projection multiplies:
//! [`Math::Reference`] dequantizes every weight to f32 and uses a dense f32 matmul,
//! [`Math::Native`] keeps the stored block type and uses candle's quantized matmul (which
//! quantizes activations, as llama.cpp does).

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType as CDType, Device, Module, Tensor, D};

use super::config::{Architecture, ModelConfig};
use super::ops;
use super::qmatmul::BlockMatrix;
use super::rope::{self, Rope};
use super::weights::{Naming, RawTensor, Role, SharedQTensor, WeightSource};
use super::EngineError;
use crate::formats::DType;

/// How weights are multiplied.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Math {
    /// Every weight dequantized to f32, f32 activations: the clean reference.
    #[default]
    Reference,
    /// Weights kept in their stored type, quantized matmul as a deployment would run it.
    Native,
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position of the chunk (scoring, parity).
    All,
}

/// A projection `y = x W^T (+ b)`.
#[derive(Debug)]
enum Linear {
    /// f32 weight `[out, in]`.
    Dense(Tensor),
    /// candle's quantized matmul (K types, float types, non-CPU devices).
    Quant(QMatMul),
    /// modelgate's CPU kernels for the 32-value block types.
    Block(Arc<BlockMatrix>),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        Ok(match self {
            Linear::Dense(w) => x.matmul(&w.t()?)?,
            Linear::Quant(q) => q.forward(x)?,
            Linear::Block(b) => x.contiguous()?.apply_op1_no_bwd(b.as_ref())?,
        })
    }
}

/// The token embedding table `[vocab, hidden]`.
#[derive(Debug)]
enum Embedding {
    Dense(Tensor),
    Quant(SharedQTensor),
    Block(Arc<BlockMatrix>),
}

impl Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor, EngineError> {
        Ok(match self {
            Embedding::Dense(t) => t.index_select(ids, 0)?,
            Embedding::Quant(q) => q.embedding(ids)?,
            Embedding::Block(b) => {
                let ids = ids.to_vec1::<u32>()?;
                let k = b.cols();
                let mut out = vec![0f32; ids.len() * k];
                for (row, &id) in out.chunks_exact_mut(k).zip(&ids) {
                    b.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), k), ids_device(b))?
            }
        })
    }
}

/// Block matrices live on the CPU.
fn ids_device(_: &BlockMatrix) -> &'static Device {
    &Device::Cpu
}

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Keys and values of one layer, `[kv_heads, capacity, head_dim]`, the first `len`
/// positions filled. Capacity doubles as needed, so memory follows the tokens actually
/// processed rather than the context length a file claims.
#[derive(Debug)]
struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor), EngineError> {
        let (heads, add, dim) = k.dims3()?;
        let cap = self.k.dim(1)?;
        let need = self.len + add;
        if need > cap {
            let new_cap = need.max(cap * 2).max(64);
            let grow = |old: &Tensor| -> Result<Tensor, EngineError> {
                let t = Tensor::zeros((heads, new_cap, dim), CDType::F32, old.device())?;
                if self.len > 0 {
                    t.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                Ok(t)
            };
            self.k = grow(&self.k)?;
            self.v = grow(&self.v)?;
        }
        self.k.slice_set(&k.contiguous()?, 1, self.len)?;
        self.v.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len = need;
        Ok((self.k.narrow(1, 0, need)?, self.v.narrow(1, 0, need)?))
    }
}

/// A loaded decoder with its KV cache.
#[derive(Debug)]
pub struct Model {
    cfg: ModelConfig,
    math: Math,
    device: Device,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Linear,
    rope: Rope,
    cache: Vec<KvCache>,
    /// Tokens processed since the last reset.
    pos: usize,
}

/// Loads tensors by role from a source, checking shapes.
struct Loader<'a> {
    src: &'a dyn WeightSource,
    naming: Naming,
    math: Math,
    device: &'a Device,
    /// GGUF `llama` files store q/k rows interleaved for llama.cpp's RoPE.
    interleaved_qk: bool,
}

impl Loader<'_> {
    fn raw(&self, role: Role) -> Result<Option<RawTensor<'_>>, EngineError> {
        match self.naming.name(role) {
            Some(name) => self.src.tensor(&name),
            None => Ok(None),
        }
    }

    fn required(&self, role: Role) -> Result<RawTensor<'_>, EngineError> {
        self.raw(role)?
            .ok_or_else(|| EngineError::MissingTensor(self.naming.name(role).unwrap_or_default()))
    }

    /// A 1-d f32 vector (norm weight, bias) of length `n`, if present.
    fn vector(&self, role: Role, n: usize) -> Result<Option<Tensor>, EngineError> {
        match self.raw(role)? {
            Some(t) => {
                t.expect_shape(&[n])?;
                Ok(Some(t.to_f32(self.device)?))
            }
            None => Ok(None),
        }
    }

    fn norm(&self, role: Role, n: usize) -> Result<Tensor, EngineError> {
        self.vector(role, n)?
            .ok_or_else(|| EngineError::MissingTensor(self.naming.name(role).unwrap_or_default()))
    }

    fn linear_from(&self, t: RawTensor<'_>, shape: [usize; 2]) -> Result<Linear, EngineError> {
        t.expect_shape(&shape)?;
        Ok(match self.math {
            Math::Reference => Linear::Dense(t.to_f32(self.device)?),
            Math::Native => match self.block_matrix(&t)? {
                Some(b) => Linear::Block(Arc::new(b)),
                None => Linear::Quant(QMatMul::from_qtensor(t.to_qtensor(self.device)?)?),
            },
        })
    }

    /// The tensor repacked for modelgate's block kernels, when it is a 2-d CPU tensor of a
    /// type they handle.
    fn block_matrix(&self, t: &RawTensor<'_>) -> Result<Option<BlockMatrix>, EngineError> {
        let DType::Ggml(g) = t.dtype else {
            return Ok(None);
        };
        if !self.device.is_cpu() || !BlockMatrix::supports(g) || t.shape.len() != 2 {
            return Ok(None);
        }
        BlockMatrix::from_ggml(g, t.shape[0], t.shape[1], &t.data)
            .map(Some)
            .ok_or_else(|| EngineError::BadTensor {
                name: t.name.clone(),
                why: format!(
                    "{} bytes do not hold {:?} values of type {g}",
                    t.data.len(),
                    t.shape
                ),
            })
    }

    fn linear(&self, role: Role, shape: [usize; 2]) -> Result<Linear, EngineError> {
        self.linear_from(self.required(role)?, shape)
    }

    /// q or k projection, with the GGUF row order undone where needed.
    fn rope_linear(
        &self,
        role: Role,
        heads: usize,
        shape: [usize; 2],
    ) -> Result<Linear, EngineError> {
        let t = self.required(role)?;
        t.expect_shape(&shape)?;
        if self.interleaved_qk {
            self.linear_from(t.unpermuted(heads)?, shape)
        } else {
            self.linear_from(t, shape)
        }
    }
}

impl Model {
    /// Load every tensor the config calls for from `src`.
    pub fn load(
        src: &dyn WeightSource,
        cfg: ModelConfig,
        math: Math,
        device: &Device,
    ) -> Result<Model, EngineError> {
        let naming = src.naming();
        let ld = Loader {
            src,
            naming,
            math,
            device,
            interleaved_qk: naming == Naming::Gguf
                && matches!(
                    cfg.architecture,
                    Architecture::Llama | Architecture::Mistral
                ),
        };
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let q_out = cfg.n_heads * hd;
        let kv_out = cfg.n_kv_heads * hd;

        let embed_raw = ld.required(Role::Embedding)?;
        embed_raw.expect_shape(&[cfg.vocab, h])?;
        let (embed, tied_head) = match math {
            Math::Reference => {
                let t = embed_raw.to_f32(device)?;
                (Embedding::Dense(t.clone()), Linear::Dense(t))
            }
            Math::Native => match ld.block_matrix(&embed_raw)? {
                Some(b) => {
                    let b = Arc::new(b);
                    (Embedding::Block(b.clone()), Linear::Block(b))
                }
                None => {
                    let q = Arc::new(embed_raw.to_qtensor(device)?);
                    (
                        Embedding::Quant(q.clone()),
                        Linear::Quant(QMatMul::from_arc(q)?),
                    )
                }
            },
        };
        let head = match ld.raw(Role::Output)? {
            Some(t) => ld.linear_from(t, [cfg.vocab, h])?,
            None => tied_head,
        };
        let norm = ld.norm(Role::OutputNorm, h)?;
        let freq_factors = match ld.raw(Role::RopeFreqs)? {
            Some(t) => {
                t.expect_shape(&[hd / 2])?;
                Some(t.to_f32(&Device::Cpu)?.to_vec1::<f32>()?)
            }
            None => None,
        };
        let rope = Rope::new(hd, cfg.rope_theta, &cfg.rope_scaling, freq_factors)?;

        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let q_norm = ld.vector(Role::QNorm(i), hd)?;
            let k_norm = ld.vector(Role::KNorm(i), hd)?;
            if cfg.architecture == Architecture::Qwen3 && (q_norm.is_none() || k_norm.is_none()) {
                return Err(EngineError::MissingTensor(
                    naming.name(Role::QNorm(i)).unwrap_or_default(),
                ));
            }
            layers.push(Layer {
                attn_norm: ld.norm(Role::AttnNorm(i), h)?,
                q: ld.rope_linear(Role::Q(i), cfg.n_heads, [q_out, h])?,
                k: ld.rope_linear(Role::K(i), cfg.n_kv_heads, [kv_out, h])?,
                v: ld.linear(Role::V(i), [kv_out, h])?,
                q_bias: ld.vector(Role::QBias(i), q_out)?,
                k_bias: ld.vector(Role::KBias(i), kv_out)?,
                v_bias: ld.vector(Role::VBias(i), kv_out)?,
                q_norm,
                k_norm,
                o: ld.linear(Role::AttnOut(i), [h, q_out])?,
                ffn_norm: ld.norm(Role::FfnNorm(i), h)?,
                gate: ld.linear(Role::Gate(i), [cfg.ffn, h])?,
                up: ld.linear(Role::Up(i), [cfg.ffn, h])?,
                down: ld.linear(Role::Down(i), [h, cfg.ffn])?,
            });
        }
        let mut model = Model {
            cfg,
            math,
            device: device.clone(),
            embed,
            layers,
            norm,
            head,
            rope,
            cache: Vec::new(),
            pos: 0,
        };
        model.reset()?;
        Ok(model)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn math(&self) -> Math {
        self.math
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forget every processed token.
    pub fn reset(&mut self) -> Result<(), EngineError> {
        let empty = Tensor::zeros(
            (self.cfg.n_kv_heads, 0, self.cfg.head_dim),
            CDType::F32,
            &self.device,
        )?;
        self.cache = (0..self.cfg.n_layers)
            .map(|_| KvCache {
                k: empty.clone(),
                v: empty.clone(),
                len: 0,
            })
            .collect();
        self.pos = 0;
        Ok(())
    }

    /// Run `tokens` after those already in the cache. Returns logits `[n, vocab]` (f32) for
    /// the last position (`n = 1`) or every position of the chunk.
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Tensor, EngineError> {
        let n = tokens.len();
        if n == 0 {
            return Err(EngineError::EmptyInput);
        }
        let end = self.pos + n;
        if end > self.cfg.context {
            return Err(EngineError::ContextOverflow {
                tokens: end,
                context: self.cfg.context,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(EngineError::TokenOutOfRange {
                token: bad,
                vocab: self.cfg.vocab,
            });
        }
        let ids = Tensor::from_slice(tokens, n, &self.device)?;
        let mut x = self.embed.forward(&ids)?;
        let cpu = self.device.is_cpu();
        let (tensors, mask) = if cpu {
            (None, None)
        } else {
            (
                Some(self.rope.tables(self.pos, n, &self.device)?),
                self.mask(n)?,
            )
        };
        let (cos, sin) = self.rope.slices(self.pos, n);
        let rope_tables = RopeTables { cos, sin, tensors };
        for (layer, cache) in self.layers.iter().zip(self.cache.iter_mut()) {
            let h = rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps)?;
            let a = attention(
                &self.cfg,
                layer,
                cache,
                &h,
                self.pos,
                &rope_tables,
                mask.as_ref(),
            )?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps)?;
            let g = layer.gate.forward(&h)?.silu()?;
            let u = layer.up.forward(&h)?;
            x = (x + layer.down.forward(&(g * u)?)?)?;
        }
        self.pos = end;
        let x = match which {
            Logits::Last => x.narrow(0, n - 1, 1)?,
            Logits::All => x,
        };
        let x = rms_norm(&x, &self.norm, self.cfg.rms_eps)?;
        self.head.forward(&x)
    }

    /// Additive mask `[n, pos + n]` for a chunk of `n` new tokens: `-inf` on keys after the
    /// query (causal) and, with a sliding window, on keys `window` or more positions back.
    /// `None` when nothing is masked (one token, no window reached).
    fn mask(&self, n: usize) -> Result<Option<Tensor>, EngineError> {
        let total = self.pos + n;
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        if n == 1 && total <= window {
            return Ok(None);
        }
        let mut m = vec![0f32; n * total];
        for i in 0..n {
            let q = self.pos + i;
            for (j, cell) in m[i * total..(i + 1) * total].iter_mut().enumerate() {
                if j > q || q - j >= window {
                    *cell = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (n, total), &self.device)?))
    }
}

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension, in f32 as transformers does.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor, EngineError> {
    if x.device().is_cpu() {
        return Ok(x.contiguous()?.apply_op2_no_bwd(w, &ops::RmsNorm { eps })?);
    }
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

fn with_bias(x: Tensor, b: Option<&Tensor>) -> Result<Tensor, EngineError> {
    Ok(match b {
        Some(b) => x.broadcast_add(b)?,
        None => x,
    })
}

/// RoPE tables for the positions of one chunk: slices for the fused CPU kernel, tensors
/// for the composed ops used on other devices.
struct RopeTables<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    tensors: Option<(Tensor, Tensor)>,
}

impl RopeTables<'_> {
    /// `x [n, heads, head_dim]` rotated and laid out as `[heads, n, head_dim]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        match &self.tensors {
            None => Ok(x.contiguous()?.apply_op1_no_bwd(&ops::Rope {
                cos: self.cos,
                sin: self.sin,
            })?),
            Some((cos, sin)) => rope::apply(&x.transpose(0, 1)?.contiguous()?, cos, sin),
        }
    }
}

/// Self-attention of `n` new positions (starting at `pos`) over the cache. `x` is
/// `[n, hidden]`.
#[allow(clippy::too_many_arguments)]
fn attention(
    cfg: &ModelConfig,
    layer: &Layer,
    cache: &mut KvCache,
    x: &Tensor,
    pos: usize,
    rope_tables: &RopeTables<'_>,
    mask: Option<&Tensor>,
) -> Result<Tensor, EngineError> {
    let n = x.dim(0)?;
    let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let rep = nh / nkv;
    let q = with_bias(layer.q.forward(x)?, layer.q_bias.as_ref())?.reshape((n, nh, hd))?;
    let k = with_bias(layer.k.forward(x)?, layer.k_bias.as_ref())?.reshape((n, nkv, hd))?;
    let v = with_bias(layer.v.forward(x)?, layer.v_bias.as_ref())?.reshape((n, nkv, hd))?;
    let q = match &layer.q_norm {
        Some(w) => rms_norm(&q, w, cfg.rms_eps)?,
        None => q,
    };
    let k = match &layer.k_norm {
        Some(w) => rms_norm(&k, w, cfg.rms_eps)?,
        None => k,
    };
    // [heads, n, head_dim]
    let q = rope_tables.apply(&q)?;
    let k = rope_tables.apply(&k)?;
    let v = v.transpose(0, 1)?;
    let (k, v) = cache.append(&k, &v)?;
    let total = k.dim(1)?;
    // Query heads sharing a key/value head are consecutive, so grouping them as extra rows
    // lets one batched matmul per kv head serve the whole group without copying keys.
    let q = q.reshape((nkv, rep * n, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = q.matmul(&k.t()?)?;
    let probs = if x.device().is_cpu() {
        scores.apply_op1_no_bwd(&ops::MaskedSoftmax {
            scale: scale as f32,
            n,
            pos,
            window: cfg.sliding_window.unwrap_or(usize::MAX),
        })?
    } else {
        let scores = (scores * scale)?;
        let scores = match mask {
            Some(m) => scores
                .reshape((nkv, rep, n, total))?
                .broadcast_add(m)?
                .reshape((nkv, rep * n, total))?,
            None => scores,
        };
        softmax_last(&scores)?
    };
    // the cache view is strided (capacity > length); gemm reads it in place
    let out = probs.matmul(&v)?; // [nkv, rep*n, hd]
    let out = out
        .reshape((nh, n, hd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, nh * hd))?;
    layer.o.forward(&out)
}

fn softmax_last(x: &Tensor) -> Result<Tensor, EngineError> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}
