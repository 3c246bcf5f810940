//! The dense decoder: one forward pass for Llama 2/3.x, SmolLM, Mistral, Qwen2, Qwen3,
//! Gemma 2, Gemma 3, OLMo 2 and Phi-3, with grouped-query attention, a causal mask with
//! per-layer sliding windows and a KV cache.
//!
//! Differences between the families are data, not code paths: q/k/v biases (Qwen2) and
//! q/k RMS norms (Qwen3 and Gemma 3 per head, OLMo 2 over the whole projection) are applied
//! when the checkpoint has those tensors; which norms surround attention and feed-forward
//! (before, after or both), the activation, soft-capping, the embedding scale, windows and
//! RoPE (global, local, LongRoPE's two tables) come from [`ModelConfig`]; fused q/k/v and
//! gate/up tensors are split by rows at load; the output head is the embedding when there
//! is no separate head. The two numeric modes differ only in how a projection multiplies:
//! [`Math::Reference`] dequantizes each weight tile to f32 and uses a dense f32 matmul,
//! [`Math::Native`] uses quantized kernels (which quantize activations, as llama.cpp
//! does). On the CPU both keep weights in their stored type, mostly as ranges of the
//! checkpoint's memory map ([`StoredMatrix`]); only the 32-value block types are repacked
//! for native mode's kernels ([`BlockMatrix`]), and only non-CPU devices get f32 copies.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{CpuStorage, DType as CDType, Device, Module, Tensor, D};

use super::attention::PromptAttention;
use super::capture::{Capture, LayerTap};
use super::config::{Activation, Architecture, ModelConfig, RopeScaling};
use super::mla::MlaAttn;
use super::moe::MoeFfn;
use super::ops;
use super::qmatmul::BlockMatrix;
use super::rope::{self, Rope};
use super::stored::{Elem, StoredMatrix};
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
pub(super) enum Linear {
    /// f32 weight `[out, in]`.
    Dense(Tensor),
    /// candle's quantized matmul (K types, float types, non-CPU devices).
    Quant(QMatMul),
    /// modelgate's CPU kernels for the 32-value block types.
    Block(Arc<BlockMatrix>),
    /// Stored bytes, dequantized tile by tile: exactly (`quantized: false`) or through
    /// candle's quantized kernel.
    Stored {
        w: Arc<StoredMatrix>,
        quantized: bool,
    },
}

impl Linear {
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        Ok(match self {
            Linear::Dense(w) => x.matmul(&w.t()?)?,
            Linear::Quant(q) => q.forward(x)?,
            Linear::Block(b) => x.contiguous()?.apply_op1_no_bwd(b.as_ref())?,
            Linear::Stored { w, quantized } => {
                if *quantized {
                    x.contiguous()?.apply_op1_no_bwd(&w.quantized())?
                } else {
                    w.forward_exact(x)?
                }
            }
        })
    }
}

/// `x` through several projections that read the same input (q/k/v, gate/up). For a few
/// rows on the CPU (generation), when all of them are modelgate's block kernels or all
/// exact stored products, the weight rows of all of them go through one parallel region
/// instead of one each, the same values as [`Linear::forward`] per projection; otherwise
/// each projection runs on its own.
fn forward_many(ls: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>, EngineError> {
    let each = || ls.iter().map(|l| l.forward(x)).collect();
    if !x.device().is_cpu() || x.rank() != 2 {
        return each();
    }
    let (m, _) = x.dims2()?;
    // both fused paths take fewer rows than this; a batch would only be copied for nothing
    if m >= super::qmatmul::GEMM_ROWS {
        return gemm_many(ls, x).map_or_else(each, Ok);
    }
    let blocks: Option<Vec<&BlockMatrix>> = ls
        .iter()
        .map(|l| match l {
            Linear::Block(b) => Some(b.as_ref()),
            _ => None,
        })
        .collect();
    let stored = exact_stored(ls);
    if blocks.is_none() && stored.is_none() {
        return each();
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let outs = match (blocks, stored) {
        (Some(b), _) => BlockMatrix::matmul_many(&b, &xs, m),
        (_, Some(w)) => StoredMatrix::matvec_many(&w, &xs, m)?,
        _ => None,
    };
    let Some(outs) = outs else {
        return each();
    };
    outs.into_iter()
        .map(|o| {
            let n = o.len() / m.max(1);
            Ok(Tensor::from_vec(o, (m, n), x.device())?)
        })
        .collect()
}

/// The stored matrices of `ls` when every one is an exact stored product.
fn exact_stored<'l>(ls: &[&'l Linear]) -> Option<Vec<&'l StoredMatrix>> {
    ls.iter()
        .map(|l| match l {
            Linear::Stored {
                w,
                quantized: false,
            } => Some(w.as_ref()),
            _ => None,
        })
        .collect()
}

/// `x` (many rows, on the CPU) through several exact stored projections in one
/// [`StoredMatrix::gemm_exact_many`] call, read in place from candle's storage; `None` when
/// they are not all exact stored products that `gemm.rs` takes at these rows (or anything
/// else fails, for the caller to run them one by one).
fn gemm_many(ls: &[&Linear], x: &Tensor) -> Option<Vec<Tensor>> {
    let mats = exact_stored(ls)?;
    let (m, _) = x.dims2().ok()?;
    let x = x.contiguous().ok()?;
    let outs = {
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
            return None;
        };
        let (start, end) = layout.contiguous_offsets()?;
        StoredMatrix::gemm_exact_many(&mats, v.get(start..end)?, m).ok()??
    };
    outs.into_iter()
        .map(|o| {
            let n = o.len() / m.max(1);
            Tensor::from_vec(o, (m, n), x.device()).ok()
        })
        .collect()
}

/// The token embedding table `[vocab, hidden]`.
#[derive(Debug)]
enum Embedding {
    Dense(Tensor),
    Quant(SharedQTensor),
    Block(Arc<BlockMatrix>),
    /// Only the looked-up rows are dequantized.
    Stored(Arc<StoredMatrix>),
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
            Embedding::Stored(w) => w.gather(&ids.to_vec1::<u32>()?)?,
        })
    }
}

/// Block matrices live on the CPU.
fn ids_device(_: &BlockMatrix) -> &'static Device {
    &Device::Cpu
}

#[derive(Debug)]
struct Layer {
    /// Norm before attention (absent in OLMo 2).
    attn_norm: Option<Tensor>,
    /// Norm of the attention output before the residual add (Gemma, OLMo 2).
    post_attn_norm: Option<Tensor>,
    /// q, k and v projections; latent attention (`mla`) has its own.
    qkv: Option<(Linear, Linear, Linear)>,
    /// DeepSeek's multi-head latent attention, in place of `qkv`.
    mla: Option<Box<MlaAttn>>,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// The q/k norms span the whole projection (OLMo 2) rather than each head.
    qk_norm_full: bool,
    o: Linear,
    o_bias: Option<Tensor>,
    /// Per-head attention sinks (gpt-oss): a logit each softmax row also normalises over.
    sinks: Option<Vec<f32>>,
    /// Norm before the feed-forward (absent in OLMo 2).
    ffn_norm: Option<Tensor>,
    /// Norm of the feed-forward output before the residual add (Gemma, OLMo 2).
    post_ffn_norm: Option<Tensor>,
    mlp: Mlp,
    /// Sliding window of this layer (`usize::MAX` for none).
    window: usize,
    /// Its index, and whether q/k/v come from one fused tensor: how an activation
    /// capture names its products.
    index: usize,
    fused_qkv: bool,
    /// Prompts attend through the fused kernel (`attention.rs`): reference math only. In
    /// native math its other order of sums flips some 8-bit activation roundings
    /// downstream, and SmolLM2's Q4_K_M vs F16 mean KLD (8 chunks of 256) moved from
    /// 0.04999 to 0.05006; native math keeps candle's products there.
    fused_prompt: bool,
}

/// A block's feed-forward: dense, or a mixture of experts.
#[derive(Debug)]
enum Mlp {
    Dense {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    Moe(Box<MoeFfn>),
}

/// Keys and values of one layer, `[kv_heads, capacity, head_dim]`, the first `len`
/// positions filled. Capacity doubles as needed, so memory follows the tokens actually
/// processed rather than the context length a file claims.
#[derive(Debug)]
pub(super) struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    pub(super) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), EngineError> {
        let add = k.dim(1)?;
        let cap = self.k.dim(1)?;
        let need = self.len + add;
        if need > cap {
            let new_cap = need.max(cap * 2).max(64);
            // keys and values may differ in width (MLA caches a latent and a rotary key)
            let grow = |old: &Tensor, new: &Tensor| -> Result<Tensor, EngineError> {
                let (heads, _, dim) = new.dims3()?;
                let t = Tensor::zeros((heads, new_cap, dim), CDType::F32, old.device())?;
                if self.len > 0 {
                    t.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                Ok(t)
            };
            self.k = grow(&self.k, k)?;
            self.v = grow(&self.v, v)?;
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
    /// Factor on the embedding (Gemma), in the precision transformers applies it.
    embed_scale: Option<f32>,
    /// RoPE of global layers (LongRoPE: its short table).
    rope: Rope,
    /// RoPE of sliding-window layers when it differs (Gemma 3).
    rope_local: Option<Rope>,
    /// LongRoPE's long table, used for a whole forward call whose last position is past
    /// `long_after` (transformers' rule).
    rope_long: Option<Rope>,
    long_after: usize,
    cache: Vec<KvCache>,
    /// Tokens processed since the last reset.
    pos: usize,
    /// Where the inputs of every product go, when an importance matrix is being computed.
    capture: Option<Arc<Capture>>,
}

/// Loads tensors by role from a source, checking shapes.
pub(super) struct Loader<'a> {
    pub(super) src: &'a dyn WeightSource,
    pub(super) naming: Naming,
    pub(super) arch: Architecture,
    /// Gemma's Hugging Face norms hold `w` and multiply by `1 + w`; llama.cpp's converter
    /// stores `1 + w`.
    norm_plus_one: bool,
    pub(super) math: Math,
    pub(super) device: &'a Device,
    /// GGUF `llama` files store q/k rows interleaved for llama.cpp's RoPE.
    interleaved_qk: bool,
}

impl<'a> Loader<'a> {
    fn new(
        src: &'a dyn WeightSource,
        cfg: &ModelConfig,
        math: Math,
        device: &'a Device,
    ) -> Loader<'a> {
        let naming = src.naming();
        let arch = cfg.architecture;
        Loader {
            src,
            naming,
            arch,
            norm_plus_one: naming == Naming::HuggingFace && arch.is_gemma(),
            math,
            device,
            interleaved_qk: naming == Naming::Gguf
                && matches!(arch, Architecture::Llama | Architecture::Mistral),
        }
    }

    fn name(&self, role: Role) -> String {
        self.naming.name_for(self.arch, role).unwrap_or_default()
    }

    fn raw(&self, role: Role) -> Result<Option<RawTensor<'_>>, EngineError> {
        let Some(name) = self.naming.name_for(self.arch, role) else {
            return Ok(None);
        };
        if let Some(t) = self.src.tensor(&name)? {
            return Ok(Some(t));
        }
        // Gemma 3's multimodal checkpoints (Gemma3ForConditionalGeneration) keep the
        // language model under a prefix: `model.language_model.` in transformers 5,
        // `language_model.model.` in transformers 4
        if self.naming == Naming::HuggingFace && self.arch == Architecture::Gemma3 {
            let alternatives = match name.strip_prefix("model.") {
                Some(rest) => vec![
                    format!("model.language_model.{rest}"),
                    format!("language_model.model.{rest}"),
                ],
                None => vec![format!("language_model.{name}")],
            };
            for alt in alternatives {
                if let Some(t) = self.src.tensor(&alt)? {
                    return Ok(Some(t));
                }
            }
        }
        Ok(None)
    }

    fn required(&self, role: Role) -> Result<RawTensor<'_>, EngineError> {
        self.raw(role)?
            .ok_or_else(|| EngineError::MissingTensor(self.name(role)))
    }

    /// A 1-d f32 vector (norm weight, bias) of length `n`, if present.
    pub(super) fn vector(&self, role: Role, n: usize) -> Result<Option<Tensor>, EngineError> {
        match self.raw(role)? {
            Some(t) => {
                t.expect_shape(&[n])?;
                Ok(Some(t.to_f32(self.device)?))
            }
            None => Ok(None),
        }
    }

    /// A norm weight, as the multiplier the norm applies.
    fn norm_opt(&self, role: Role, n: usize) -> Result<Option<Tensor>, EngineError> {
        Ok(match self.vector(role, n)? {
            // transformers: `1.0 + weight.float()`, one f32 addition
            Some(w) if self.norm_plus_one => Some((w + 1.0)?),
            other => other,
        })
    }

    fn norm(&self, role: Role, n: usize) -> Result<Tensor, EngineError> {
        self.norm_opt(role, n)?
            .ok_or_else(|| EngineError::MissingTensor(self.name(role)))
    }

    /// A norm the family has (`want`), or none.
    fn norm_if(&self, want: bool, role: Role, n: usize) -> Result<Option<Tensor>, EngineError> {
        if want {
            self.norm(role, n).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(super) fn linear_from(
        &self,
        t: RawTensor<'_>,
        shape: [usize; 2],
    ) -> Result<Linear, EngineError> {
        t.expect_shape(&shape)?;
        let quantized = self.math == Math::Native;
        if quantized {
            if let Some(b) = self.block_matrix(&t)? {
                return Ok(Linear::Block(Arc::new(b)));
            }
        }
        let t = match self.stored_owned(t)? {
            Ok(w) => {
                return Ok(Linear::Stored {
                    w: Arc::new(w),
                    quantized,
                })
            }
            Err(t) => t,
        };
        Ok(match self.math {
            Math::Reference => Linear::Dense(t.to_f32(self.device)?),
            Math::Native => Linear::Quant(QMatMul::from_qtensor(t.to_qtensor(self.device)?)?),
        })
    }

    /// The tensor kept in its stored type, borrowing the source's memory map when it can:
    /// for a 2-d CPU tensor of a float or candle block type.
    pub(super) fn stored(&self, t: &RawTensor<'_>) -> Result<Option<StoredMatrix>, EngineError> {
        let Some(elem) = self.stored_elem(t)? else {
            return Ok(None);
        };
        let shared = match &t.data {
            std::borrow::Cow::Borrowed(b) => self.src.share(b),
            std::borrow::Cow::Owned(_) => None,
        };
        StoredMatrix::new(elem, t.shape[0], t.shape[1], &t.data, shared)
            .map(Some)
            .ok_or_else(|| bad_stored(t))
    }

    /// [`Loader::stored`] for a tensor the loader may consume: bytes read into a buffer of
    /// their own (layer-major evaluation reads every layer this way) become the matrix's
    /// without a copy. `Err(t)` gives the tensor back when it is not kept in its stored type.
    pub(super) fn stored_owned<'t>(
        &self,
        t: RawTensor<'t>,
    ) -> Result<Result<StoredMatrix, RawTensor<'t>>, EngineError> {
        let Some(elem) = self.stored_elem(&t)? else {
            return Ok(Err(t));
        };
        if matches!(t.data, std::borrow::Cow::Borrowed(_)) {
            return Ok(self.stored(&t)?.ok_or(t));
        }
        let why = bad_stored(&t);
        let (n, k) = (t.shape[0], t.shape[1]);
        StoredMatrix::from_vec(elem, n, k, t.data.into_owned()).map_or(Err(why), |w| Ok(Ok(w)))
    }

    /// How a 2-d CPU tensor's elements are read when it stays in its stored type (a float
    /// or block type), `None` when it does not.
    fn stored_elem(&self, t: &RawTensor<'_>) -> Result<Option<Elem>, EngineError> {
        if !self.device.is_cpu() || t.shape.len() != 2 {
            return Ok(None);
        }
        Ok(Some(match t.dtype {
            DType::F32 => Elem::F32,
            DType::F16 => Elem::F16,
            DType::BF16 => Elem::BF16,
            DType::Ggml(g) if crate::formats::blocks::supported(g) => Elem::Decoded(g),
            DType::Ggml(_) => match t.ggml_dtype()? {
                candle_core::quantized::GgmlDType::F32 => Elem::F32,
                candle_core::quantized::GgmlDType::F16 => Elem::F16,
                candle_core::quantized::GgmlDType::BF16 => Elem::BF16,
                g => Elem::Block(g),
            },
            _ => return Ok(None),
        }))
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

impl Loader<'_> {
    /// A 1-d f32 vector called `name`, if present.
    pub(super) fn named_vector(&self, name: &str, n: usize) -> Result<Option<Tensor>, EngineError> {
        match self.src.tensor(name)? {
            Some(t) => {
                t.expect_shape(&[n])?;
                Ok(Some(t.to_f32(self.device)?))
            }
            None => Ok(None),
        }
    }

    /// gpt-oss's attention sinks, one logit per head.
    fn sinks(&self, i: usize, heads: usize) -> Result<Option<Vec<f32>>, EngineError> {
        let name = match self.naming {
            Naming::HuggingFace => format!("model.layers.{i}.self_attn.sinks"),
            Naming::Gguf => format!("blk.{i}.attn_sinks.weight"),
        };
        let sinks = match self.named_vector(&name, heads)? {
            Some(t) => Some(t.to_device(&Device::Cpu)?.to_vec1::<f32>()?),
            None => None,
        };
        if sinks.is_none() && self.arch == Architecture::GptOss {
            return Err(EngineError::MissingTensor(name));
        }
        Ok(sinks)
    }
}

/// The dense feed-forward of layer `i` (Phi-3's fused gate/up split by rows).
/// The error for a tensor whose bytes do not match its shape and type.
fn bad_stored(t: &RawTensor<'_>) -> EngineError {
    EngineError::BadTensor {
        name: t.name.clone(),
        why: format!(
            "{} bytes do not hold {:?} values of type {}",
            t.data.len(),
            t.shape,
            t.dtype
        ),
    }
}

fn dense_mlp(ld: &Loader<'_>, cfg: &ModelConfig, i: usize) -> Result<Mlp, EngineError> {
    let h = cfg.hidden;
    let (gate, up) = if cfg.architecture == Architecture::Phi3 {
        let t = ld.required(Role::GateUp(i))?;
        t.expect_shape(&[2 * cfg.ffn, h])?;
        (
            ld.linear_from(t.rows(0, cfg.ffn)?, [cfg.ffn, h])?,
            ld.linear_from(t.rows(cfg.ffn, cfg.ffn)?, [cfg.ffn, h])?,
        )
    } else {
        (
            ld.linear(Role::Gate(i), [cfg.ffn, h])?,
            ld.linear(Role::Up(i), [cfg.ffn, h])?,
        )
    };
    Ok(Mlp::Dense {
        gate,
        up,
        down: ld.linear(Role::Down(i), [h, cfg.ffn])?,
    })
}

impl Model {
    /// Load every tensor the config calls for from `src`.
    pub fn load(
        src: &dyn WeightSource,
        cfg: ModelConfig,
        math: Math,
        device: &Device,
    ) -> Result<Model, EngineError> {
        let mut model = Model::load_without_layers(src, cfg, math, device)?;
        let ld = Loader::new(src, &model.cfg, math, device);
        let layers = (0..model.cfg.n_layers)
            .map(|i| load_layer(&ld, &model.cfg, i))
            .collect::<Result<Vec<_>, _>>()?;
        model.layers = layers;
        Ok(model)
    }

    /// Everything but the decoder layers: embedding, final norm, head and RoPE tables. A
    /// layer-major driver loads each layer with [`Model::load_layer`] when it runs it, so
    /// only one layer's weights are held at a time.
    pub fn load_without_layers(
        src: &dyn WeightSource,
        cfg: ModelConfig,
        math: Math,
        device: &Device,
    ) -> Result<Model, EngineError> {
        let naming = src.naming();
        let ld = Loader::new(src, &cfg, math, device);
        let h = cfg.hidden;

        let embed_raw = ld.required(Role::Embedding)?;
        embed_raw.expect_shape(&[cfg.vocab, h])?;
        // transformers multiplies by the scale cast to the weights' dtype; llama.cpp by the
        // f32 value
        let embed_scale = cfg
            .embed_scale
            .map(|s| embed_scale_in(s, naming, embed_raw.dtype));
        let block = match math {
            Math::Native => ld.block_matrix(&embed_raw)?,
            Math::Reference => None,
        };
        let stored = match block {
            Some(_) => None,
            None => ld.stored(&embed_raw)?,
        };
        let (embed, tied_head) = match (math, block, stored) {
            (_, Some(b), _) => {
                let b = Arc::new(b);
                (Embedding::Block(b.clone()), Linear::Block(b))
            }
            (_, None, Some(w)) => {
                let w = Arc::new(w);
                let head = Linear::Stored {
                    w: w.clone(),
                    quantized: math == Math::Native,
                };
                (Embedding::Stored(w), head)
            }
            (Math::Reference, None, None) => {
                let t = embed_raw.to_f32(device)?;
                (Embedding::Dense(t.clone()), Linear::Dense(t))
            }
            (Math::Native, None, None) => {
                let q = Arc::new(embed_raw.to_qtensor(device)?);
                (
                    Embedding::Quant(q.clone()),
                    Linear::Quant(QMatMul::from_arc(q)?),
                )
            }
        };
        let head = match ld.raw(Role::Output)? {
            Some(t) => ld.linear_from(t, [cfg.vocab, h])?,
            None => tied_head,
        };
        let norm = ld.norm(Role::OutputNorm, h)?;
        let rot = cfg.rotary_dim;
        let freq_factors = match ld.raw(Role::RopeFreqs)? {
            Some(t) => {
                t.expect_shape(&[rot / 2])?;
                Some(t.to_f32(&Device::Cpu)?.to_vec1::<f32>()?)
            }
            None => None,
        };
        let (rope, rope_long, long_after) = match &cfg.rope_scaling {
            RopeScaling::LongRope {
                short,
                long,
                original_context,
                attention_factor,
            } => {
                let factors =
                    |given: &Vec<f32>, role: Role| -> Result<Option<Vec<f32>>, EngineError> {
                        if !given.is_empty() {
                            return Ok(Some(given.clone()));
                        }
                        match ld.raw(role)? {
                            Some(t) => {
                                t.expect_shape(&[rot / 2])?;
                                Ok(Some(t.to_f32(&Device::Cpu)?.to_vec1::<f32>()?))
                            }
                            None => Ok(None),
                        }
                    };
                match (
                    factors(short, Role::RopeFactorsShort)?,
                    factors(long, Role::RopeFactorsLong)?,
                ) {
                    (Some(s), Some(l)) => (
                        Rope::longrope(rot, cfg.rope_theta, &s, *attention_factor)?,
                        Some(Rope::longrope(rot, cfg.rope_theta, &l, *attention_factor)?),
                        *original_context,
                    ),
                    // a GGUF Phi-3 without factor tensors runs plain RoPE, as llama.cpp does
                    (None, None) if naming == Naming::Gguf => (
                        Rope::new(rot, cfg.rope_theta, &RopeScaling::None, freq_factors)?,
                        None,
                        usize::MAX,
                    ),
                    _ => {
                        return Err(EngineError::MissingTensor(format!(
                            "{} / {} (longrope factors)",
                            ld.name(Role::RopeFactorsShort),
                            ld.name(Role::RopeFactorsLong)
                        )))
                    }
                }
            }
            scaling => (
                Rope::new(rot, cfg.rope_theta, scaling, freq_factors)?,
                None,
                usize::MAX,
            ),
        };
        let rope_local = match &cfg.local_rope {
            Some((theta, scaling)) => Some(Rope::new(rot, *theta, scaling, None)?),
            None => None,
        };

        let mut model = Model {
            cfg,
            math,
            device: device.clone(),
            embed,
            layers: Vec::new(),
            norm,
            head,
            embed_scale,
            rope,
            rope_local,
            rope_long,
            long_after,
            cache: Vec::new(),
            pos: 0,
            capture: None,
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

    /// Send the inputs of every product of every following forward pass to `capture`
    /// (`None` stops it).
    pub fn set_capture(&mut self, capture: Option<Arc<Capture>>) {
        self.capture = capture;
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forget every processed token.
    pub fn reset(&mut self) -> Result<(), EngineError> {
        self.cache = (0..self.cfg.n_layers)
            .map(|_| self.empty_cache())
            .collect::<Result<_, _>>()?;
        self.pos = 0;
        Ok(())
    }

    /// Run `tokens` after those already in the cache. Returns logits `[n, vocab]` (f32) for
    /// the last position (`n = 1`) or every position of the chunk.
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Tensor, EngineError> {
        // On the CPU the whole pass runs on a thread of rayon's pool, so that each product's
        // parallel region starts as a join on a worker rather than as work injected from
        // outside with the caller asleep on a latch until it is done: two thread wake-ups
        // per product, some 120 per generated token of a 30-layer model.
        if self.device.is_cpu() && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.forward_on_pool(tokens, which));
        }
        self.forward_on_pool(tokens, which)
    }

    fn forward_on_pool(&mut self, tokens: &[u32], which: Logits) -> Result<Tensor, EngineError> {
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
        let mut x = self.embed_ids(tokens)?;
        let cpu = self.device.is_cpu();
        let pos = self.pos;
        // additive masks for the composed (non-CPU) path, one per distinct window
        let mut masks: Vec<(usize, Option<Tensor>)> = Vec::new();
        if !cpu {
            for layer in &self.layers {
                if !masks.iter().any(|(w, _)| *w == layer.window) {
                    masks.push((layer.window, mask(pos, n, layer.window, &self.device)?));
                }
            }
        }
        // LongRoPE picks its table for the whole call from the call's last position, as
        // transformers does (keys already cached keep the table they were rotated with)
        let global = match self.rope_long.as_mut() {
            Some(long) if end > self.long_after => long,
            _ => &mut self.rope,
        };
        let global = RopeTables::new(global, pos, n, cpu, &self.device)?;
        let local = match self.rope_local.as_mut() {
            Some(r) => Some(RopeTables::new(r, pos, n, cpu, &self.device)?),
            None => None,
        };
        let cfg = &self.cfg;
        for (layer, cache) in self.layers.iter().zip(self.cache.iter_mut()) {
            let tables = match &local {
                Some(t) if layer.window != usize::MAX => t,
                _ => &global,
            };
            let layer_mask = masks
                .iter()
                .find(|(w, _)| *w == layer.window)
                .and_then(|(_, m)| m.as_ref());
            let tap = self.capture.as_deref();
            x = layer_step(cfg, layer, cache, x, pos, tables, layer_mask, tap)?;
        }
        self.pos = end;
        self.head(&x, which)
    }

    /// The weights of decoder layer `i`, for a model loaded with
    /// [`Model::load_without_layers`] from the same source.
    pub fn load_layer(
        &self,
        src: &dyn WeightSource,
        i: usize,
    ) -> Result<LayerWeights, EngineError> {
        self.layer_loader().load(src, i)
    }

    /// What [`Model::load_layer`] needs of the model, owned: another thread can load the
    /// next layer with it while this model runs the current one.
    pub fn layer_loader(&self) -> LayerLoader {
        LayerLoader {
            cfg: self.cfg.clone(),
            math: self.math,
            device: self.device.clone(),
        }
    }

    /// An empty KV cache for one layer of one sequence.
    pub fn layer_cache(&self) -> Result<LayerCache, EngineError> {
        Ok(LayerCache(self.empty_cache()?))
    }

    fn empty_cache(&self) -> Result<KvCache, EngineError> {
        let empty = Tensor::zeros(
            (self.cfg.n_kv_heads, 0, self.cfg.head_dim),
            CDType::F32,
            &self.device,
        )?;
        Ok(KvCache {
            k: empty.clone(),
            v: empty,
            len: 0,
        })
    }

    /// The hidden states `[n, hidden]` of `tokens` entering the first layer (embedding and
    /// its scale). Layer-major evaluation: [`Model::embed`], then [`Model::run_layer`] for
    /// each layer, then [`Model::head`], gives what [`Model::forward`] gives.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(EngineError::TokenOutOfRange {
                token: bad,
                vocab: self.cfg.vocab,
            });
        }
        self.embed_ids(tokens)
    }

    fn embed_ids(&self, tokens: &[u32]) -> Result<Tensor, EngineError> {
        let ids = Tensor::from_slice(tokens, tokens.len(), &self.device)?;
        let x = self.embed.forward(&ids)?;
        Ok(match self.embed_scale {
            Some(s) => x.broadcast_mul(&Tensor::new(s, &self.device)?)?,
            None => x,
        })
    }

    /// Run one decoder layer on hidden states `x` `[n, hidden]` that follow the positions
    /// already in `cache`, appending their keys and values to it.
    pub fn run_layer(
        &mut self,
        weights: &LayerWeights,
        cache: &mut LayerCache,
        x: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let layer = &weights.0;
        let n = x.dim(0)?;
        let pos = cache.0.len;
        let end = pos + n;
        if end > self.cfg.context {
            return Err(EngineError::ContextOverflow {
                tokens: end,
                context: self.cfg.context,
            });
        }
        let cpu = self.device.is_cpu();
        let layer_mask = if cpu {
            None
        } else {
            mask(pos, n, layer.window, &self.device)?
        };
        let rope = match (self.rope_local.as_mut(), self.rope_long.as_mut()) {
            (Some(r), _) if layer.window != usize::MAX => r,
            (_, Some(long)) if end > self.long_after => long,
            _ => &mut self.rope,
        };
        let tables = RopeTables::new(rope, pos, n, cpu, &self.device)?;
        layer_step(
            &self.cfg,
            layer,
            &mut cache.0,
            x.clone(),
            pos,
            &tables,
            layer_mask.as_ref(),
            self.capture.as_deref(),
        )
    }

    /// Run one decoder layer on the stacked rows of several sequences: `x` `[rows, hidden]`,
    /// where each segment, in order, is the rows that follow the positions already in
    /// `caches[seg.cache]`. The projections and the feed-forward take all rows in one
    /// product, so a weight tile is dequantized once for all of them; attention runs per
    /// segment. Each row gets what [`Model::run_layer`] gives it on its segment alone.
    ///
    /// With `keep`, only those rows of the batch (ranges in order) go on past attention
    /// (output projection, feed-forward, residuals) and come out, stacked: on the last
    /// layer, only the rows whose logits are wanted need them, while attention still needs
    /// the keys and values of every row.
    pub fn run_layer_batch(
        &mut self,
        weights: &LayerWeights,
        caches: &mut [LayerCache],
        segments: &[Segment],
        x: &Tensor,
        keep: Option<&[std::ops::Range<usize>]>,
    ) -> Result<Tensor, EngineError> {
        let layer = &weights.0;
        for s in segments {
            let Some(c) = caches.get(s.cache) else {
                return Err(EngineError::BadParam(format!("no cache {}", s.cache)));
            };
            if s.rows.end > x.dim(0)? {
                return Err(EngineError::BadParam(format!(
                    "rows {:?} of a {}-row batch",
                    s.rows,
                    x.dim(0)?
                )));
            }
            let end = c.0.len + s.rows.len();
            if end > self.cfg.context {
                return Err(EngineError::ContextOverflow {
                    tokens: end,
                    context: self.cfg.context,
                });
            }
        }
        let cpu = self.device.is_cpu();
        let Model {
            cfg,
            device,
            rope,
            rope_local,
            rope_long,
            long_after,
            capture,
            ..
        } = self;
        let mut attend = |h: &Tensor| -> Result<Tensor, EngineError> {
            let qkv = match &layer.mla {
                Some(_) => None,
                None => Some(project_qkv(layer, h)?),
            };
            let mut outs = Vec::with_capacity(segments.len());
            for s in segments {
                let cache = &mut caches[s.cache].0;
                let (pos, n) = (cache.len, s.rows.len());
                let r = match (rope_local.as_mut(), rope_long.as_mut()) {
                    (Some(r), _) if layer.window != usize::MAX => r,
                    (_, Some(long)) if pos + n > *long_after => long,
                    _ => &mut *rope,
                };
                let tables = RopeTables::new(r, pos, n, cpu, device)?;
                let rows = |t: &Tensor| t.narrow(0, s.rows.start, n);
                outs.push(match (&layer.mla, &qkv) {
                    (Some(mla), _) => mla.forward(cfg, cache, &rows(h)?, pos, &tables)?,
                    (None, qkv) => {
                        let Some((q, k, v)) = qkv else {
                            return Err(EngineError::MissingTensor("q/k/v projections".into()));
                        };
                        let m = if cpu {
                            None
                        } else {
                            mask(pos, n, layer.window, device)?
                        };
                        let qkv = (rows(q)?, rows(k)?, rows(v)?);
                        attention(cfg, layer, cache, qkv, pos, &tables, m.as_ref())?
                    }
                });
            }
            Ok(Tensor::cat(&outs, 0)?)
        };
        let tap = capture.as_deref().map(|c| c.layer(layer.index));
        layer_step_with(cfg, layer, x.clone(), tap, keep, &mut attend)
    }

    /// Final norm and output head on the last layer's hidden states: logits `[n, vocab]`
    /// for the last position (`n = 1`) or every position.
    pub fn head(&self, x: &Tensor, which: Logits) -> Result<Tensor, EngineError> {
        let x = match which {
            Logits::Last => x.narrow(0, x.dim(0)? - 1, 1)?,
            Logits::All => x.clone(),
        };
        let x = rms_norm(&x, &self.norm, self.cfg.rms_eps)?;
        let logits = self.head.forward(&x)?;
        match self.cfg.final_softcap {
            Some(cap) => soft_cap(&logits, cap as f32),
            None => Ok(logits),
        }
    }
}

/// Loads decoder layers for a model ([`Model::layer_loader`]).
#[derive(Clone, Debug)]
pub struct LayerLoader {
    cfg: ModelConfig,
    math: Math,
    device: Device,
}

impl LayerLoader {
    /// The weights of decoder layer `i` (see [`Model::load_layer`]).
    pub fn load(&self, src: &dyn WeightSource, i: usize) -> Result<LayerWeights, EngineError> {
        if i >= self.cfg.n_layers {
            return Err(EngineError::BadParam(format!(
                "layer {i} of a {}-layer model",
                self.cfg.n_layers
            )));
        }
        let ld = Loader::new(src, &self.cfg, self.math, &self.device);
        Ok(LayerWeights(load_layer(&ld, &self.cfg, i)?))
    }
}

/// The weights of one decoder layer, loaded on their own ([`Model::load_layer`]).
#[derive(Debug)]
pub struct LayerWeights(Layer);

/// Rows `rows` of a stacked input that continue the sequence in cache `cache`
/// ([`Model::run_layer_batch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub cache: usize,
    pub rows: std::ops::Range<usize>,
}

/// The keys and values one layer has seen of one sequence ([`Model::layer_cache`]).
#[derive(Debug)]
pub struct LayerCache(KvCache);

impl LayerCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

/// One decoder layer on `x` `[n, hidden]` at positions `pos..pos + n`; the inputs of its
/// products go to `capture` when there is one.
#[allow(clippy::too_many_arguments)]
fn layer_step(
    cfg: &ModelConfig,
    layer: &Layer,
    cache: &mut KvCache,
    x: Tensor,
    pos: usize,
    tables: &RopeTables<'_>,
    layer_mask: Option<&Tensor>,
    capture: Option<&Capture>,
) -> Result<Tensor, EngineError> {
    let tap = capture.map(|c| c.layer(layer.index));
    layer_step_with(cfg, layer, x, tap, None, &mut |h| match &layer.mla {
        Some(mla) => mla.forward(cfg, cache, h, pos, tables),
        None => {
            let (q, k, v) = project_qkv(layer, h)?;
            attention(cfg, layer, cache, (q, k, v), pos, tables, layer_mask)
        }
    })
}

/// One decoder layer on `x`, with `attend` mapping the normed states to the attention
/// output before its projection: every other step works row by row, so `x` may stack
/// several sequences ([`Model::run_layer_batch`]), and only the rows in `keep` (when
/// given) go on past attention. The inputs of its products go to `tap` when there is one.
fn layer_step_with(
    cfg: &ModelConfig,
    layer: &Layer,
    x: Tensor,
    tap: Option<LayerTap<'_>>,
    keep: Option<&[std::ops::Range<usize>]>,
    attend: &mut dyn FnMut(&Tensor) -> Result<Tensor, EngineError>,
) -> Result<Tensor, EngineError> {
    let h = match &layer.attn_norm {
        Some(w) => rms_norm(&x, w, cfg.rms_eps)?,
        None => x.clone(),
    };
    if let (Some(t), None) = (&tap, &layer.mla) {
        let fused: &[&str] = &["attn_qkv"];
        let separate: &[&str] = &["attn_q", "attn_k", "attn_v"];
        t.dense(if layer.fused_qkv { fused } else { separate }, &h)?;
    }
    let a = attend(&h)?;
    drop(h);
    let (a, x) = match keep {
        Some(keep) => (rows_of(&a, keep)?, rows_of(&x, keep)?),
        None => (a, x),
    };
    if let Some(t) = &tap {
        t.dense(&["attn_output"], &a)?;
    }
    let a = with_bias(layer.o.forward(&a)?, layer.o_bias.as_ref())?;
    let a = match &layer.post_attn_norm {
        Some(w) => rms_norm(&a, w, cfg.rms_eps)?,
        None => a,
    };
    let x = residual(&x, a)?;
    let h = match &layer.ffn_norm {
        Some(w) => rms_norm(&x, w, cfg.rms_eps)?,
        None => x.clone(),
    };
    let m = match &layer.mlp {
        Mlp::Dense { gate, up, down } => {
            if let Some(t) = &tap {
                // Phi-3 keeps gate and up in one tensor, llama.cpp's `ffn_up`
                let fused: &[&str] = &["ffn_up"];
                let phi3 = cfg.architecture == Architecture::Phi3;
                t.dense(if phi3 { fused } else { &["ffn_gate", "ffn_up"] }, &h)?;
            }
            let mut gu = forward_many(&[gate, up], &h)?.into_iter();
            let (Some(g), Some(u)) = (gu.next(), gu.next()) else {
                return Err(EngineError::MissingTensor("gate/up projections".into()));
            };
            let gu = match cfg.activation {
                // in place: `g` is the product's fresh output, held by nothing else
                Activation::Silu if g.device().is_cpu() && g.is_contiguous() => {
                    g.inplace_op2(&u.contiguous()?, &ops::SiluMul)?;
                    g
                }
                Activation::Silu if g.device().is_cpu() => g.apply_op2_no_bwd(&u, &ops::SiluMul)?,
                Activation::Silu => (g.silu()? * u)?,
                Activation::GeluTanh => (g.gelu()? * u)?,
            };
            if let Some(t) = &tap {
                t.dense(&["ffn_down"], &gu)?;
            }
            down.forward(&gu)?
        }
        Mlp::Moe(moe) => moe.forward(&h, tap.as_ref())?,
    };
    let m = match &layer.post_ffn_norm {
        Some(w) => rms_norm(&m, w, cfg.rms_eps)?,
        None => m,
    };
    residual(&x, m)
}

/// `x + a`: on the CPU the rows split over the thread pool ([`ops::Add`]), written over
/// `a`, which the callers pass as the fresh output of a product or norm that nothing else
/// holds (a batch's hidden states are tens of MB: a new buffer per add is pages for the
/// kernel to fault in and clear).
fn residual(x: &Tensor, a: Tensor) -> Result<Tensor, EngineError> {
    if x.device().is_cpu()
        && x.shape() == a.shape()
        && x.dtype() == CDType::F32
        && a.dtype() == CDType::F32
    {
        if a.is_contiguous() {
            a.inplace_op2(&x.contiguous()?, &ops::Add)?;
            return Ok(a);
        }
        return Ok(x
            .contiguous()?
            .apply_op2_no_bwd(&a.contiguous()?, &ops::Add)?);
    }
    Ok((x + a)?)
}

/// Rows `keep` (ranges in order) of `x`, stacked.
fn rows_of(x: &Tensor, keep: &[std::ops::Range<usize>]) -> Result<Tensor, EngineError> {
    let n = x.dim(0)?;
    let mut parts = keep
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| {
            if r.end > n {
                return Err(EngineError::BadParam(format!(
                    "rows {r:?} of a {n}-row batch"
                )));
            }
            Ok(x.narrow(0, r.start, r.len())?)
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(match parts.len() {
        0 => x.narrow(0, 0, 0)?,
        1 => parts.swap_remove(0),
        _ => Tensor::cat(&parts, 0)?,
    })
}

/// The weights of decoder layer `i`.
fn load_layer(ld: &Loader<'_>, cfg: &ModelConfig, i: usize) -> Result<Layer, EngineError> {
    let arch = cfg.architecture;
    let (h, hd) = (cfg.hidden, cfg.head_dim);
    let q_out = cfg.n_heads * hd;
    let kv_out = cfg.n_kv_heads * hd;
    let norms = arch.norms();
    // OLMo 2 normalises q and k over the whole projection, the others per head
    let qk_norm_full = arch == Architecture::Olmo2;
    let (qn, kn) = if qk_norm_full {
        (q_out, kv_out)
    } else {
        (hd, hd)
    };
    let mla = match &cfg.mla {
        Some(m) => Some(Box::new(MlaAttn::load(ld, cfg, m, i)?)),
        None => None,
    };
    let q_norm = ld.norm_opt(Role::QNorm(i), qn)?;
    let k_norm = ld.norm_opt(Role::KNorm(i), kn)?;
    let needs_qk_norm = matches!(
        arch,
        Architecture::Qwen3 | Architecture::Qwen3Moe | Architecture::Gemma3 | Architecture::Olmo2
    );
    if needs_qk_norm && (q_norm.is_none() || k_norm.is_none()) {
        let role = if q_norm.is_none() {
            Role::QNorm(i)
        } else {
            Role::KNorm(i)
        };
        return Err(EngineError::MissingTensor(ld.name(role)));
    }
    let fused = ld.raw(Role::Qkv(i))?;
    let fused_qkv = mla.is_none() && fused.is_some();
    let qkv = match fused {
        _ if mla.is_some() => None,
        Some(t) => {
            t.expect_shape(&[q_out + 2 * kv_out, h])?;
            Some((
                ld.linear_from(t.rows(0, q_out)?, [q_out, h])?,
                ld.linear_from(t.rows(q_out, kv_out)?, [kv_out, h])?,
                ld.linear_from(t.rows(q_out + kv_out, kv_out)?, [kv_out, h])?,
            ))
        }
        None => Some((
            ld.rope_linear(Role::Q(i), cfg.n_heads, [q_out, h])?,
            ld.rope_linear(Role::K(i), cfg.n_kv_heads, [kv_out, h])?,
            ld.linear(Role::V(i), [kv_out, h])?,
        )),
    };
    let attn_out = mla.as_ref().map_or(q_out, |m| m.out_width());
    let mlp = match &cfg.moe {
        Some(m) if m.is_sparse(i) => Mlp::Moe(Box::new(MoeFfn::load(ld, cfg, m, i)?)),
        _ => dense_mlp(ld, cfg, i)?,
    };
    Ok(Layer {
        attn_norm: ld.norm_if(norms.pre_attn, Role::AttnNorm(i), h)?,
        post_attn_norm: ld.norm_if(norms.post_attn, Role::PostAttnNorm(i), h)?,
        qkv,
        mla,
        q_bias: ld.vector(Role::QBias(i), q_out)?,
        k_bias: ld.vector(Role::KBias(i), kv_out)?,
        v_bias: ld.vector(Role::VBias(i), kv_out)?,
        q_norm,
        k_norm,
        qk_norm_full,
        o: ld.linear(Role::AttnOut(i), [h, attn_out])?,
        o_bias: ld.named_vector(&ld.name(Role::AttnOut(i)).replace(".weight", ".bias"), h)?,
        sinks: ld.sinks(i, cfg.n_heads)?,
        ffn_norm: ld.norm_if(norms.pre_ffn, Role::FfnNorm(i), h)?,
        post_ffn_norm: ld.norm_if(norms.post_ffn, Role::PostFfnNorm(i), h)?,
        mlp,
        window: cfg.window(i).unwrap_or(usize::MAX),
        index: i,
        fused_qkv,
        fused_prompt: ld.math == Math::Reference,
    })
}

/// The embedding scale as it is applied: transformers casts it to the weights' dtype
/// (bf16 rounds sqrt(3072) = 55.43 to 55.5), llama.cpp keeps the f32 value.
fn embed_scale_in(scale: f64, naming: Naming, dtype: DType) -> f32 {
    let s = scale as f32;
    match (naming, dtype) {
        (Naming::HuggingFace, DType::BF16) => half::bf16::from_f32(s).to_f32(),
        (Naming::HuggingFace, DType::F16) => half::f16::from_f32(s).to_f32(),
        _ => s,
    }
}

/// `cap * tanh(x / cap)`, with an exact f32 division as transformers computes it.
fn soft_cap(x: &Tensor, cap: f32) -> Result<Tensor, EngineError> {
    let cap = Tensor::new(cap, x.device())?;
    Ok(x.broadcast_div(&cap)?.tanh()?.broadcast_mul(&cap)?)
}

/// Additive mask `[n, pos + n]` for a chunk of `n` new tokens at `pos`: `-inf` on keys
/// after the query (causal) and on keys `window` or more positions back. `None` when
/// nothing is masked (one token, no window reached).
fn mask(
    pos: usize,
    n: usize,
    window: usize,
    device: &Device,
) -> Result<Option<Tensor>, EngineError> {
    let total = pos + n;
    if n == 1 && total <= window {
        return Ok(None);
    }
    let mut m = vec![0f32; n * total];
    for i in 0..n {
        let q = pos + i;
        for (j, cell) in m[i * total..(i + 1) * total].iter_mut().enumerate() {
            if j > q || q - j >= window {
                *cell = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (n, total), device)?))
}

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension, in f32 as transformers does.
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor, EngineError> {
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
pub(super) struct RopeTables<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    tensors: Option<(Tensor, Tensor)>,
}

impl<'a> RopeTables<'a> {
    fn new(
        rope: &'a mut Rope,
        pos: usize,
        n: usize,
        cpu: bool,
        device: &Device,
    ) -> Result<RopeTables<'a>, EngineError> {
        let tensors = if cpu {
            None
        } else {
            Some(rope.tables(pos, n, device)?)
        };
        let (cos, sin) = rope.slices(pos, n);
        Ok(RopeTables { cos, sin, tensors })
    }
}

impl RopeTables<'_> {
    /// `x [n, heads, head_dim]` rotated and laid out as `[heads, n, head_dim]`.
    pub(super) fn apply(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        match &self.tensors {
            None => Ok(x.contiguous()?.apply_op1_no_bwd(&ops::Rope {
                cos: self.cos,
                sin: self.sin,
            })?),
            Some((cos, sin)) => rope::apply(&x.transpose(0, 1)?.contiguous()?, cos, sin),
        }
    }
}

/// q, k and v (with their biases) of `x` `[n, hidden]`, each `[n, width]`: row by row, so
/// the rows of several sequences go through one product.
fn project_qkv(layer: &Layer, x: &Tensor) -> Result<(Tensor, Tensor, Tensor), EngineError> {
    let Some((q_proj, k_proj, v_proj)) = &layer.qkv else {
        return Err(EngineError::MissingTensor("q/k/v projections".into()));
    };
    let mut qkv = forward_many(&[q_proj, k_proj, v_proj], x)?.into_iter();
    let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
        return Err(EngineError::MissingTensor("q/k/v projections".into()));
    };
    Ok((
        with_bias(q, layer.q_bias.as_ref())?,
        with_bias(k, layer.k_bias.as_ref())?,
        with_bias(v, layer.v_bias.as_ref())?,
    ))
}

/// Self-attention of `n` new positions (starting at `pos`) over the cache, before the
/// output projection, from their projections `qkv` ([`project_qkv`]).
#[allow(clippy::too_many_arguments)]
fn attention(
    cfg: &ModelConfig,
    layer: &Layer,
    cache: &mut KvCache,
    (q, k, v): (Tensor, Tensor, Tensor),
    pos: usize,
    rope_tables: &RopeTables<'_>,
    mask: Option<&Tensor>,
) -> Result<Tensor, EngineError> {
    let n = q.dim(0)?;
    let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let rep = nh / nkv;
    let v = v.reshape((n, nkv, hd))?;
    // a norm of the whole projection (OLMo 2) comes before the split into heads, a
    // per-head norm (Qwen3, Gemma 3) after it
    let norm =
        |t: Tensor, w: &Option<Tensor>, heads: usize, full: bool| -> Result<Tensor, EngineError> {
            match w {
                Some(w) if full => Ok(rms_norm(&t, w, cfg.rms_eps)?.reshape((n, heads, hd))?),
                Some(w) => rms_norm(&t.reshape((n, heads, hd))?, w, cfg.rms_eps),
                None => Ok(t.reshape((n, heads, hd))?),
            }
        };
    let q = norm(q, &layer.q_norm, nh, layer.qk_norm_full)?;
    let k = norm(k, &layer.k_norm, nkv, layer.qk_norm_full)?;
    // [heads, n, head_dim]
    let q = rope_tables.apply(&q)?;
    let k = rope_tables.apply(&k)?;
    let v = v.transpose(0, 1)?;
    let (k, v) = cache.append(&k, &v)?;
    // on the CPU: scores, softmax and weighted values in one op, straight into [n, hidden]
    if q.device().is_cpu() {
        let softmax = ops::MaskedSoftmax {
            scale: cfg.attn_scale as f32,
            softcap: cfg.attn_softcap.map(|c| c as f32),
            n,
            pos,
            window: layer.window,
            sinks: layer.sinks.as_deref(),
        };
        // generation: a few queries, one loop over the cache
        if n <= 4 {
            let op = ops::DecodeAttention { softmax, rep };
            return Ok(q.contiguous()?.apply_op3_no_bwd(&k, &v, &op)?);
        }
        // a prompt or scored chunk: only the unmasked scores, in cache-sized blocks
        if layer.fused_prompt {
            let op = PromptAttention { softmax, rep };
            return Ok(q.contiguous()?.apply_op3_no_bwd(&k, &v, &op)?);
        }
        // native math: candle's products around the masked softmax, written over the
        // scores (the product's fresh output)
        let q = q.reshape((nkv, rep * n, hd))?;
        let scores = q.matmul(&k.t()?)?;
        let probs = if scores.is_contiguous() {
            scores.inplace_op1(&softmax)?;
            scores
        } else {
            scores.apply_op1_no_bwd(&softmax)?
        };
        return heads_to_rows(probs.matmul(&v)?, n, nh, hd);
    }
    // other devices: the composed form, with the mask as an additive tensor
    if layer.sinks.is_some() {
        return Err(EngineError::Unsupported(
            "attention sinks on a non-CPU device".into(),
        ));
    }
    let total = k.dim(1)?;
    // Query heads sharing a key/value head are consecutive, so grouping them as extra rows
    // lets one batched matmul per kv head serve the whole group without copying keys.
    let q = q.reshape((nkv, rep * n, hd))?;
    let scale = cfg.attn_scale;
    let scores = q.matmul(&k.t()?)?;
    let probs = {
        let scores = (scores * scale)?;
        let scores = match cfg.attn_softcap {
            Some(cap) => soft_cap(&scores, cap as f32)?,
            None => scores,
        };
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
    heads_to_rows(probs.matmul(&v)?, n, nh, hd)
}

/// Attention outputs `[nkv, rep * n, hd]` (query heads grouped by key/value head) as rows
/// `[n, nh * hd]`.
fn heads_to_rows(out: Tensor, n: usize, nh: usize, hd: usize) -> Result<Tensor, EngineError> {
    Ok(out
        .reshape((nh, n, hd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, nh * hd))?)
}

fn softmax_last(x: &Tensor) -> Result<Tensor, EngineError> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_scale_follows_the_source_dtype() {
        let s = 3072f64.sqrt();
        assert_eq!(embed_scale_in(s, Naming::HuggingFace, DType::BF16), 55.5);
        assert_eq!(
            embed_scale_in(s, Naming::HuggingFace, DType::F16),
            half::f16::from_f32(s as f32).to_f32()
        );
        assert_eq!(embed_scale_in(s, Naming::HuggingFace, DType::F32), s as f32);
        assert_eq!(embed_scale_in(s, Naming::Gguf, DType::BF16), s as f32);
    }

    #[test]
    fn masks_are_causal_and_windowed_per_chunk() {
        let m = mask(3, 2, 2, &Device::Cpu).unwrap().unwrap();
        let m = m.to_vec2::<f32>().unwrap();
        let inf = f32::NEG_INFINITY;
        // queries at 3 and 4 see keys q-1..=q only
        assert_eq!(m[0], [inf, inf, 0.0, 0.0, inf]);
        assert_eq!(m[1], [inf, inf, inf, 0.0, 0.0]);
        assert!(mask(3, 1, usize::MAX, &Device::Cpu).unwrap().is_none());
        assert!(mask(3, 1, 2, &Device::Cpu).unwrap().is_some());
    }
}
