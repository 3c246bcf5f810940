//! The decoder's hyper-parameters, gathered from [`ModelParams`] (which the format readers
//! fill from config.json or GGUF `{arch}.*` keys) and from the few settings the readers do
//! not summarise: RoPE scaling, a sliding window, the GGUF RoPE dimension count.
//!
//! Everything is validated here, before any tensor is loaded, so that the model code can
//! rely on consistent sizes (heads divide evenly, the RoPE dimension is the head size).

use serde_json::Value;

use crate::formats::gguf::Meta;
use crate::formats::{MetaValue, ModelParams};

use super::EngineError;

/// The decoder families the engine runs. They share one forward pass; what differs is
/// switched on by the tensors a checkpoint has (q/k/v biases, q/k norms) and by these
/// settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2 / 3.x, SmolLM / SmolLM2 and every other `llama` checkpoint.
    Llama,
    Mistral,
    /// Qwen2 / Qwen2.5: q/k/v projections carry biases.
    Qwen2,
    /// Qwen3: RMS norms on q and k per head, explicit head size.
    Qwen3,
    /// Gemma 2: norms before and after attention and feed-forward, GELU, embedding scaled
    /// by sqrt(hidden), attention and final logit soft-capping, sliding window on every
    /// other layer.
    Gemma2,
    /// Gemma 3 (text): Gemma 2's block with per-head q/k norms, five sliding layers (local
    /// RoPE base) to one global, no attention soft-capping.
    Gemma3,
    /// OLMo 2: norms after attention and feed-forward only, q/k norms over the whole
    /// projection.
    Olmo2,
    /// Phi-3 / Phi-3.5 / Phi-4: fused qkv and gate/up projections, partial rotary, LongRoPE.
    Phi3,
    /// Mixtral (Hugging Face names; llama.cpp stores it as `llama` with experts).
    Mixtral,
    /// Qwen2-MoE / Qwen1.5-MoE: experts plus a sigmoid-gated shared expert, q/k/v biases.
    Qwen2Moe,
    /// Qwen3-MoE: Qwen3's attention with experts.
    Qwen3Moe,
    /// DeepSeek-V2 / V3 / R1: multi-head latent attention, leading dense layers, shared
    /// experts, sigmoid or softmax routing with group limits.
    Deepseek2,
    /// gpt-oss: attention sinks and biases, alternating sliding window, YaRN, clamped
    /// SwiGLU experts with biases.
    GptOss,
}

impl Architecture {
    /// Every family, in the order the error message lists them.
    pub const ALL: [Architecture; 13] = [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma2,
        Architecture::Gemma3,
        Architecture::Olmo2,
        Architecture::Phi3,
        Architecture::Mixtral,
        Architecture::Qwen2Moe,
        Architecture::Qwen3Moe,
        Architecture::Deepseek2,
        Architecture::GptOss,
    ];

    /// From config.json `model_type` or GGUF `general.architecture`.
    pub fn from_name(name: &str) -> Option<Architecture> {
        Some(match name {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "gemma2" => Architecture::Gemma2,
            // `gemma3_text` is the text-only config; `gemma3` the multimodal one (whose
            // language model is read from `text_config`) and GGUF's name
            "gemma3" | "gemma3_text" => Architecture::Gemma3,
            "olmo2" => Architecture::Olmo2,
            // Phi-4 ships as `phi3`
            "phi3" => Architecture::Phi3,
            "mixtral" => Architecture::Mixtral,
            // config.json `model_type` / GGUF architecture
            "qwen2_moe" | "qwen2moe" => Architecture::Qwen2Moe,
            "qwen3_moe" | "qwen3moe" => Architecture::Qwen3Moe,
            "deepseek_v2" | "deepseek_v3" | "deepseek2" => Architecture::Deepseek2,
            "gpt_oss" | "gpt-oss" => Architecture::GptOss,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
            Architecture::Olmo2 => "olmo2",
            Architecture::Phi3 => "phi3",
            Architecture::Mixtral => "mixtral",
            Architecture::Qwen2Moe => "qwen2moe",
            Architecture::Qwen3Moe => "qwen3moe",
            Architecture::Deepseek2 => "deepseek2",
            Architecture::GptOss => "gpt-oss",
        }
    }

    /// `llama, mistral, ... and phi3`, for messages.
    pub fn supported_list() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
        match names.split_last() {
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    pub fn is_gemma(self) -> bool {
        matches!(self, Architecture::Gemma2 | Architecture::Gemma3)
    }

    /// Which RMS norms a block has around its attention and feed-forward.
    pub fn norms(self) -> BlockNorms {
        match self {
            Architecture::Gemma2 | Architecture::Gemma3 => BlockNorms {
                pre_attn: true,
                post_attn: true,
                pre_ffn: true,
                post_ffn: true,
            },
            Architecture::Olmo2 => BlockNorms {
                pre_attn: false,
                post_attn: true,
                pre_ffn: false,
                post_ffn: true,
            },
            _ => BlockNorms {
                pre_attn: true,
                post_attn: false,
                pre_ffn: true,
                post_ffn: false,
            },
        }
    }
}

/// The norms of one block: `x + post(f(pre(x)))` for attention and feed-forward alike,
/// each norm present or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockNorms {
    pub pre_attn: bool,
    pub post_attn: bool,
    pub pre_ffn: bool,
    pub post_ffn: bool,
}

/// The gate activation of the feed-forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (transformers' `gelu_pytorch_tanh`).
    GeluTanh,
}

/// How RoPE frequencies are adjusted for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (HF `linear`, GGUF `rope.scaling.type=linear`).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling (HF `rope_type: llama3`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
    /// Phi-3's LongRoPE: each frequency divided by a short or a long factor, cos and sin
    /// multiplied by `attention_factor`. Which set applies is decided per forward call, as
    /// transformers does: the long one when the call's last position is past
    /// `original_context`. GGUF files carry the factors as tensors (`rope_factors_short`,
    /// `rope_factors_long`), so they are empty here until the model loader fills them.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_context: usize,
        attention_factor: f64,
    },
    /// YaRN (transformers' `yarn`): frequencies blended between interpolated (divided by
    /// `factor`) and original along a ramp between the dimensions that turn `beta_fast`
    /// and `beta_slow` times over `original_context`, cos and sin times
    /// `attention_factor`. `truncate` rounds the ramp's ends outwards (transformers'
    /// default and llama.cpp's rule; gpt-oss sets it false).
    Yarn {
        factor: f64,
        original_context: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
}

/// YaRN's attention factor: `0.1 * m * ln(factor) + 1` (1 for factors up to 1).
pub fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}

/// Validated hyper-parameters of one decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Longest sequence (prompt + generated) the model declares.
    pub context: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Leading dimensions of each head that RoPE rotates (the head size unless a partial
    /// rotary factor is declared); the rest pass through.
    pub rotary_dim: usize,
    /// RoPE of the sliding-window layers, when it differs from the global one (Gemma 3's
    /// local base of 10000).
    pub local_rope: Option<(f64, RopeScaling)>,
    /// Per layer: keys further back than this are masked, for the layers that have a
    /// sliding window.
    pub layer_windows: Vec<Option<usize>>,
    /// Factor on q.k before the softmax (1/sqrt(head size) unless the family says
    /// otherwise, as Gemma's `query_pre_attn_scalar` does).
    pub attn_scale: f64,
    /// `cap * tanh(score / cap)` on attention scores (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// `cap * tanh(logit / cap)` on the output logits (Gemma 2, optionally Gemma 3).
    pub final_softcap: Option<f64>,
    /// Factor on the token embedding (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f64>,
    pub activation: Activation,
    /// Mixture-of-experts feed-forward (absent for dense models).
    pub moe: Option<MoeConfig>,
    /// Multi-head latent attention (DeepSeek); absent for ordinary attention.
    pub mla: Option<MlaConfig>,
}

/// How a router turns its logits into the weights of the chosen experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over every expert, then the top k (Mixtral, Qwen-MoE, DeepSeek-V2).
    Softmax,
    /// Sigmoid of each logit, then the top k (DeepSeek-V3/R1).
    Sigmoid,
    /// Top k of the raw logits, then a softmax over the chosen k (gpt-oss).
    SoftmaxSelected,
}

/// gpt-oss's clamped SwiGLU: `(clamp(up, -l, l) + 1) * g * sigmoid(alpha g)` with
/// `g = min(gate, l)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwigluClamp {
    pub alpha: f32,
    pub limit: f32,
}

/// The experts of a mixture-of-experts feed-forward and how tokens are routed to them.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per layer.
    pub experts: usize,
    /// Experts each token uses.
    pub used: usize,
    /// Hidden width of one routed expert.
    pub expert_ffn: usize,
    pub gating: Gating,
    /// Divide the chosen weights by their sum.
    pub norm_topk: bool,
    /// Factor on the chosen weights (`routed_scaling_factor`).
    pub scale: f32,
    /// Expert groups; a token picks from the `groups_used` groups whose two best
    /// (bias-corrected) scores sum highest. 1 means no groups.
    pub groups: usize,
    pub groups_used: usize,
    /// Hidden width of the shared expert(s), 0 when there are none.
    pub shared_ffn: usize,
    /// Per layer: whether its feed-forward is the mixture (the others are dense).
    pub sparse_layers: Vec<bool>,
    /// gpt-oss's clamped activation (SiLU otherwise).
    pub clamp: Option<SwigluClamp>,
}

impl MoeConfig {
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.sparse_layers.get(layer).copied().unwrap_or(false)
    }
}

/// DeepSeek's multi-head latent attention: q through a low-rank bottleneck (or a plain
/// projection), keys and values from one compressed latent per position plus a shared
/// rotary key.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// Rank of q's bottleneck; `None` for a plain q projection (V2-Lite).
    pub q_lora: Option<usize>,
    pub kv_lora: usize,
    /// Per head: key dimensions without position, with RoPE, and value dimensions.
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    /// RoPE rotates adjacent pairs (DeepSeek's layout, `rope_interleave`, and always in
    /// GGUF); otherwise the two halves.
    pub adjacent_pairs: bool,
}

impl ModelConfig {
    /// The sliding window of layer `i`, if it has one.
    pub fn window(&self, i: usize) -> Option<usize> {
        self.layer_windows.get(i).copied().flatten()
    }
}

/// Hard limits on what a (possibly hostile) config may declare. They are far above any
/// released model and keep a lying header from asking for absurd allocations before the
/// tensor shapes are checked against it.
const MAX_DIM: u64 = 1 << 20;
const MAX_LAYERS: u64 = 4096;
const MAX_VOCAB: u64 = 1 << 24;

impl ModelConfig {
    /// Build and validate the config. `config_json` is the directory's config.json when
    /// there is one; `gguf` the GGUF key/values (empty for safetensors).
    pub fn new(
        params: &ModelParams,
        config_json: Option<&Value>,
        gguf: &[(String, MetaValue)],
    ) -> Result<ModelConfig, EngineError> {
        let arch_name = params
            .architecture
            .clone()
            .ok_or_else(|| EngineError::MissingParam("architecture".into()))?;
        let architecture = Architecture::from_name(&arch_name).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "architecture `{arch_name}` (the engine runs {})",
                Architecture::supported_list()
            ))
        })?;
        // a multimodal config keeps the language model's settings under `text_config`
        let config_json =
            config_json.map(|c| c.get("text_config").filter(|t| t.is_object()).unwrap_or(c));
        let need = |v: Option<u64>, what: &str, max: u64| -> Result<usize, EngineError> {
            let v = v.ok_or_else(|| EngineError::MissingParam(what.into()))?;
            if v == 0 || v > max {
                return Err(EngineError::BadParam(format!(
                    "{what} is {v}, expected 1..={max}"
                )));
            }
            usize::try_from(v).map_err(|_| EngineError::BadParam(format!("{what} is {v}")))
        };
        let n_layers = need(params.block_count, "block count", MAX_LAYERS)?;
        let hidden = need(params.embedding_length, "embedding length", MAX_DIM)?;
        let n_heads = need(params.head_count, "attention head count", MAX_DIM)?;
        let n_kv_heads = need(
            params.head_count_kv.or(params.head_count),
            "key/value head count",
            MAX_DIM,
        )?;
        let vocab = need(params.vocab_size, "vocabulary size", MAX_VOCAB)?;
        let context = need(params.context_length, "context length", u64::MAX)?;
        let gguf = Meta::new(gguf);
        let gguf_key = |suffix: &str| gguf.u64(&format!("{arch_name}.{suffix}"));
        let (moe, mla) = match config_json {
            Some(c) => (
                moe_from_hf(c, architecture, n_layers)?,
                mla_from_hf(c, architecture)?,
            ),
            None => (
                moe_from_gguf(gguf, &arch_name, architecture, n_layers)?,
                mla_from_gguf(gguf, &arch_name, architecture)?,
            ),
        };
        // a model whose every layer is a mixture need not declare a dense width
        let ffn = match (params.feed_forward_length, &moe) {
            (None, Some(m)) if m.sparse_layers.iter().all(|&s| s) => m.expert_ffn,
            (f, _) => need(f, "feed-forward length", MAX_DIM)?,
        };
        // MLA's per-head sizes live in `mla`; `head_dim` is its rotary part
        let declared_head = match &mla {
            Some(m) => Some(m.rope as u64),
            None => params.head_dim.or(gguf_key("attention.key_length")?),
        };
        let head_dim = match declared_head {
            Some(d) => need(Some(d), "head size", MAX_DIM)?,
            None => {
                if !hidden.is_multiple_of(n_heads) {
                    return Err(EngineError::BadParam(format!(
                        "embedding length {hidden} is not a multiple of the head count {n_heads}"
                    )));
                }
                hidden / n_heads
            }
        };
        if !n_heads.is_multiple_of(n_kv_heads) {
            return Err(EngineError::BadParam(format!(
                "head count {n_heads} is not a multiple of the key/value head count {n_kv_heads}"
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(EngineError::BadParam(format!(
                "head size {head_dim} is odd; RoPE needs pairs"
            )));
        }
        let mut rotary_dim = head_dim;
        if let Some(rot) = gguf_key("rope.dimension_count")? {
            if rot != head_dim as u64 && mla.is_none() {
                // llama-family GGUF files interleave q/k rows over the whole head, so only
                // Phi-3 (rotate-half on the leading dimensions) may rotate part of a head
                if architecture != Architecture::Phi3 {
                    return Err(EngineError::Unsupported(format!(
                        "partial rotary embedding (rope dimension {rot}, head size {head_dim})"
                    )));
                }
                rotary_dim = checked_rotary(rot, head_dim)?;
            }
        }
        let rms_eps = params.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(EngineError::BadParam(format!(
                "rms norm epsilon is {rms_eps}"
            )));
        }
        let fam = match config_json {
            Some(cfg) => hf_family(cfg, architecture, params, n_layers, head_dim, context)?,
            None => gguf_family(gguf, &arch_name, architecture, params, n_layers, context)?,
        };
        let rope_theta = fam.rope_theta.unwrap_or(10_000.0);
        check_theta(rope_theta)?;
        if let Some((theta, _)) = &fam.local_rope {
            check_theta(*theta)?;
        }
        if let Some(r) = fam.rotary_dim {
            rotary_dim = r;
        }
        if let RopeScaling::LongRope { short, long, .. } = &fam.rope_scaling {
            for (which, f) in [("short_factor", short), ("long_factor", long)] {
                if !f.is_empty() && f.len() != rotary_dim / 2 {
                    return Err(EngineError::BadParam(format!(
                        "longrope `{which}` has {} values, expected {} (half the rotary dimension)",
                        f.len(),
                        rotary_dim / 2
                    )));
                }
            }
        }
        let attn_scale = match (&mla, fam.attn_scale) {
            (_, Some(s)) => s,
            // MLA scores span the position-free and the rotary part of a head
            (Some(m), None) => 1.0 / ((m.nope + m.rope) as f64).sqrt(),
            (None, None) => 1.0 / (head_dim as f64).sqrt(),
        };
        if !(attn_scale.is_finite() && attn_scale > 0.0) {
            return Err(EngineError::BadParam(format!(
                "attention scale is {attn_scale}"
            )));
        }
        let embed_scale = architecture.is_gemma().then(|| (hidden as f64).sqrt());
        Ok(ModelConfig {
            architecture,
            n_layers,
            hidden,
            ffn,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            context,
            rms_eps,
            rope_theta,
            rope_scaling: fam.rope_scaling,
            rotary_dim,
            local_rope: fam.local_rope,
            layer_windows: fam.layer_windows,
            attn_scale,
            attn_softcap: fam.attn_softcap,
            final_softcap: fam.final_softcap,
            embed_scale,
            activation: fam.activation,
            moe,
            mla,
        })
    }
}

fn check_theta(theta: f64) -> Result<(), EngineError> {
    if !(theta.is_finite() && theta > 1.0) {
        return Err(EngineError::BadParam(format!("rope theta is {theta}")));
    }
    Ok(())
}

fn checked_rotary(rot: u64, head_dim: usize) -> Result<usize, EngineError> {
    if rot == 0 || !rot.is_multiple_of(2) || rot > head_dim as u64 {
        return Err(EngineError::BadParam(format!(
            "rotary dimension {rot} for a head size of {head_dim} (expected an even number up to the head size)"
        )));
    }
    Ok(rot as usize)
}

/// The settings that differ between families, from either source.
struct Family {
    rope_theta: Option<f64>,
    rope_scaling: RopeScaling,
    rotary_dim: Option<usize>,
    local_rope: Option<(f64, RopeScaling)>,
    layer_windows: Vec<Option<usize>>,
    attn_scale: Option<f64>,
    attn_softcap: Option<f64>,
    final_softcap: Option<f64>,
    activation: Activation,
}

/// A soft-capping value: absent or null is `default` (transformers' config default for the
/// family), otherwise it must be a positive finite number.
fn softcap(
    value: Option<&Value>,
    field: &str,
    default: Option<f64>,
) -> Result<Option<f64>, EngineError> {
    match value {
        None => Ok(default),
        Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(c) if c.is_finite() && c > 0.0 => Ok(Some(c)),
            _ => Err(EngineError::BadParam(format!(
                "`{field}` is {v}, expected a positive number (or null for no soft-capping)"
            ))),
        },
    }
}

/// Which layers slide, from transformers' `layer_types` or the family's pattern: with
/// pattern `p`, layer `i` slides unless `(i + 1) % p == 0`.
fn hf_layer_types(cfg: &Value, n_layers: usize, pattern: usize) -> Result<Vec<bool>, EngineError> {
    if let Some(types) = cfg.get("layer_types").filter(|v| !v.is_null()) {
        let types = types
            .as_array()
            .ok_or_else(|| EngineError::BadParam("`layer_types` is not a list".into()))?;
        if types.len() != n_layers {
            return Err(EngineError::BadParam(format!(
                "`layer_types` lists {} layers, the model has {n_layers}",
                types.len()
            )));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(EngineError::Unsupported(format!("layer type {t}"))),
            })
            .collect();
    }
    Ok((0..n_layers)
        .map(|i| pattern == 0 || !(i + 1).is_multiple_of(pattern))
        .collect())
}

fn positive_usize(v: &Value, field: &str) -> Result<usize, EngineError> {
    v.as_u64()
        .filter(|&w| w > 0)
        .and_then(|w| usize::try_from(w).ok())
        .ok_or_else(|| {
            EngineError::BadParam(format!("`{field}` is {v}, expected a positive integer"))
        })
}

/// The gate activation a config declares, checked against what the family supports.
fn hf_activation(cfg: &Value, arch: Architecture) -> Result<Activation, EngineError> {
    let (want, keys): (Activation, &[&str]) = if arch.is_gemma() {
        (Activation::GeluTanh, &["hidden_activation"])
    } else {
        (Activation::Silu, &["hidden_act"])
    };
    let declared = keys
        .iter()
        .find_map(|k| cfg.get(*k).and_then(Value::as_str));
    match (want, declared) {
        (_, None) => Ok(want),
        (Activation::GeluTanh, Some("gelu_pytorch_tanh" | "gelu_tanh")) => Ok(want),
        (Activation::Silu, Some("silu" | "swish")) => Ok(want),
        (_, Some(other)) => Err(EngineError::Unsupported(format!(
            "activation `{other}` for {}",
            arch.name()
        ))),
    }
}

fn hf_family(
    cfg: &Value,
    arch: Architecture,
    params: &ModelParams,
    n_layers: usize,
    head_dim: usize,
    context: usize,
) -> Result<Family, EngineError> {
    let activation = match arch {
        Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Olmo2 | Architecture::Phi3 => {
            hf_activation(cfg, arch)?
        }
        _ => Activation::Silu,
    };
    let mut fam = Family {
        rope_theta: None,
        rope_scaling: RopeScaling::None,
        rotary_dim: None,
        local_rope: None,
        layer_windows: vec![None; n_layers],
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        activation,
    };
    match arch {
        Architecture::Gemma2 | Architecture::Gemma3 => {
            let gemma2 = arch == Architecture::Gemma2;
            if cfg
                .get("use_bidirectional_attention")
                .and_then(Value::as_bool)
                == Some(true)
            {
                return Err(EngineError::Unsupported(
                    "bidirectional attention (an embedding model, not a decoder)".into(),
                ));
            }
            let window = match cfg.get("sliding_window").filter(|v| !v.is_null()) {
                Some(v) => Some(positive_usize(v, "sliding_window")?),
                // transformers' default for both families
                None => Some(4096),
            };
            let pattern = if gemma2 {
                2
            } else {
                cfg.get("sliding_window_pattern")
                    .or_else(|| cfg.get("_sliding_window_pattern"))
                    .and_then(Value::as_u64)
                    .map_or(6, |p| usize::try_from(p).unwrap_or(6))
            };
            let sliding = hf_layer_types(cfg, n_layers, pattern)?;
            fam.layer_windows = sliding
                .iter()
                .map(|&s| if s { window } else { None })
                .collect();
            let scalar = match cfg.get("query_pre_attn_scalar").filter(|v| !v.is_null()) {
                None => 256.0,
                Some(v) => v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        EngineError::BadParam(format!(
                            "`query_pre_attn_scalar` is {v}, expected a positive number"
                        ))
                    })?,
            };
            fam.attn_scale = Some(scalar.powf(-0.5));
            if gemma2 {
                fam.attn_softcap = softcap(
                    cfg.get("attn_logit_softcapping"),
                    "attn_logit_softcapping",
                    Some(50.0),
                )?;
                fam.final_softcap = softcap(
                    cfg.get("final_logit_softcapping"),
                    "final_logit_softcapping",
                    Some(30.0),
                )?;
                let (theta, scaling) = hf_rope(cfg, None, arch)?;
                fam.rope_theta = params.rope_theta.or(theta);
                fam.rope_scaling = scaling;
            } else {
                // Gemma 3's attention takes no soft-capping in transformers, whatever the
                // config says; the final one applies when set
                fam.final_softcap = softcap(
                    cfg.get("final_logit_softcapping"),
                    "final_logit_softcapping",
                    None,
                )?;
                let (theta, scaling) = hf_rope(cfg, Some("full_attention"), arch)?;
                let (local_theta, local_scaling) = hf_rope(cfg, Some("sliding_attention"), arch)?;
                fam.rope_theta = Some(theta.unwrap_or(1_000_000.0));
                fam.rope_scaling = scaling;
                let local_theta = local_theta
                    .or_else(|| cfg.get("rope_local_base_freq").and_then(Value::as_f64))
                    .unwrap_or(10_000.0);
                fam.local_rope = Some((local_theta, local_scaling));
            }
        }
        Architecture::Phi3 => {
            let (theta, scaling) = hf_rope(cfg, None, arch)?;
            fam.rope_theta = params.rope_theta.or(theta);
            let rp = rope_object(cfg, None);
            let factor = rp
                .and_then(|p| p.get("partial_rotary_factor"))
                .or_else(|| cfg.get("partial_rotary_factor"))
                .and_then(Value::as_f64)
                .unwrap_or(1.0);
            if !(factor.is_finite() && factor > 0.0 && factor <= 1.0) {
                return Err(EngineError::BadParam(format!(
                    "`partial_rotary_factor` is {factor}, expected 0 < f <= 1"
                )));
            }
            // transformers: int(head_dim * factor)
            let rot = (head_dim as f64 * factor) as u64;
            fam.rotary_dim = Some(checked_rotary(rot, head_dim)?);
            fam.rope_scaling = match scaling {
                RopeScaling::LongRope { .. } => longrope_from_hf(cfg, context)?,
                other => other,
            };
            fam.layer_windows = vec![hf_window(cfg)?; n_layers];
        }
        Architecture::GptOss => {
            let (theta, scaling) = hf_rope(cfg, None, arch)?;
            fam.rope_theta = params.rope_theta.or(theta);
            fam.rope_scaling = scaling;
            // transformers' GptOssConfig: every other layer slides, the first one first
            let window = match cfg.get("sliding_window").filter(|v| !v.is_null()) {
                Some(v) => positive_usize(v, "sliding_window")?,
                None => 128,
            };
            fam.layer_windows = hf_layer_types(cfg, n_layers, 2)?
                .iter()
                .map(|&s| s.then_some(window))
                .collect();
        }
        Architecture::Deepseek2 => {
            let (theta, scaling) = hf_rope(cfg, None, arch)?;
            fam.rope_theta = params.rope_theta.or(theta);
            // transformers folds YaRN's `mscale_all_dim` into the softmax scale, squared
            if let RopeScaling::Yarn { factor, .. } = scaling {
                let all = rope_object(cfg, None)
                    .and_then(|p| p.get("mscale_all_dim"))
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                if all != 0.0 {
                    let qk = ["qk_nope_head_dim", "qk_rope_head_dim"]
                        .iter()
                        .filter_map(|k| cfg.get(*k).and_then(Value::as_u64))
                        .sum::<u64>();
                    let m = yarn_mscale(factor, all);
                    fam.attn_scale = Some(m * m / (qk.max(1) as f64).sqrt());
                }
            }
            fam.rope_scaling = scaling;
        }
        _ => {
            let (theta, scaling) = hf_rope(cfg, None, arch)?;
            fam.rope_theta = params.rope_theta.or(theta);
            fam.rope_scaling = scaling;
            fam.layer_windows = vec![hf_sliding_window(cfg, arch); n_layers];
        }
    }
    Ok(fam)
}

/// Phi-3's `sliding_window`: applies to every layer when set (transformers builds a
/// sliding-window mask whenever it is not null).
fn hf_window(cfg: &Value) -> Result<Option<usize>, EngineError> {
    match cfg.get("sliding_window").filter(|v| !v.is_null()) {
        Some(v) => positive_usize(v, "sliding_window").map(Some),
        None => Ok(None),
    }
}

/// The RoPE parameter object for a layer type: transformers 5 keeps one object under
/// `rope_parameters`, or one per layer type; transformers 4 used `rope_scaling`.
fn rope_object<'a>(cfg: &'a Value, layer_type: Option<&str>) -> Option<&'a Value> {
    let params = cfg.get("rope_parameters").filter(|v| v.is_object());
    if let Some(p) = params {
        if let Some(t) = layer_type.and_then(|t| p.get(t)).filter(|v| v.is_object()) {
            return Some(t);
        }
        if p.get("rope_theta").is_some() || p.get("rope_type").is_some() || p.get("type").is_some()
        {
            return Some(p);
        }
    }
    // transformers 4: `rope_scaling` is Gemma 3's global-layer scaling only
    if layer_type == Some("sliding_attention") {
        return None;
    }
    cfg.get("rope_scaling").filter(|v| v.is_object())
}

/// LongRoPE from a Phi-3 config, with transformers' defaults: `factor` is the context over
/// the original context, `attention_factor` sqrt(1 + ln(factor) / ln(original)).
fn longrope_from_hf(cfg: &Value, context: usize) -> Result<RopeScaling, EngineError> {
    let rp = rope_object(cfg, None).unwrap_or(&Value::Null);
    let get = |k: &str| {
        rp.get(k)
            .filter(|v| !v.is_null())
            .or_else(|| cfg.get(k).filter(|v| !v.is_null()))
    };
    let factors = |k: &str| -> Result<Vec<f32>, EngineError> {
        let bad =
            || EngineError::BadParam(format!("longrope `{k}` must be a list of positive numbers"));
        get(k)
            .and_then(Value::as_array)
            .ok_or_else(bad)?
            .iter()
            .map(|v| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(|f| f as f32)
                    .ok_or_else(bad)
            })
            .collect()
    };
    let short = factors("short_factor")?;
    let long = factors("long_factor")?;
    let original = get("original_max_position_embeddings")
        .map(|v| positive_usize(v, "original_max_position_embeddings"))
        .transpose()?
        .ok_or_else(|| {
            EngineError::MissingParam(
                "`original_max_position_embeddings` (needed by longrope)".into(),
            )
        })?;
    let factor = match get("factor") {
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| EngineError::BadParam(format!("longrope `factor` is {v}")))?,
        None => context as f64 / original as f64,
    };
    let attention_factor = match get("attention_factor") {
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| EngineError::BadParam(format!("longrope `attention_factor` is {v}")))?,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short,
        long,
        original_context: original,
        attention_factor,
    })
}

/// `(il % n < n - 1)`, llama.cpp's rule for a sliding-window pattern given as a number: the
/// last layer of every `n` is global; 0 makes every layer slide.
fn gguf_pattern(n: u64, n_layers: usize) -> Vec<bool> {
    (0..n_layers as u64)
        .map(|il| n == 0 || il % n < n - 1)
        .collect()
}

fn gguf_family(
    gguf: Meta<'_>,
    arch_name: &str,
    arch: Architecture,
    params: &ModelParams,
    n_layers: usize,
    context: usize,
) -> Result<Family, EngineError> {
    let key = |suffix: &str| format!("{arch_name}.{suffix}");
    let rope_scaling = gguf_rope(gguf, arch_name)?;
    let mut fam = Family {
        rope_theta: params.rope_theta,
        rope_scaling,
        rotary_dim: None,
        local_rope: None,
        layer_windows: vec![None; n_layers],
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        activation: if arch.is_gemma() {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
    };
    let window = gguf.u64(&key("attention.sliding_window"))?;
    // llama.cpp's per-family swa defaults: Gemma 2 always slides (window 4096 when the key
    // is absent, every other layer); Gemma 3 and OLMo 2 only with a window, 5 in 6 and 3 in
    // 4 layers; Phi-3 on every layer (llama.cpp itself ignores Phi-3's window, see
    // docs/engine.md)
    let (window, default_pattern) = match arch {
        Architecture::Gemma2 => (Some(window.unwrap_or(4096)), 2),
        Architecture::Gemma3 => (window, 6),
        Architecture::Olmo2 => (window, 4),
        Architecture::Phi3 => (window, 0),
        // llama.cpp: gpt-oss slides on even layers
        Architecture::GptOss => (window, 2),
        _ => (None, 0),
    };
    if let Some(w) = window.filter(|&w| w > 0) {
        let w = usize::try_from(w).unwrap_or(usize::MAX);
        let pattern_key = key("attention.sliding_window_pattern");
        let sliding = match gguf.get(&pattern_key) {
            Some(MetaValue::Array { items, .. }) => {
                if items.len() != n_layers {
                    return Err(EngineError::BadParam(format!(
                        "`{pattern_key}` lists {} layers, the model has {n_layers}",
                        items.len()
                    )));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        MetaValue::Bool(b) => Ok(*b),
                        other => other.as_u64().map(|x| x != 0).ok_or_else(|| {
                            EngineError::BadParam(format!("`{pattern_key}[{i}]` is not a flag"))
                        }),
                    })
                    .collect::<Result<Vec<bool>, EngineError>>()?
            }
            Some(_) => gguf_pattern(gguf.require_u64(&pattern_key)?, n_layers),
            None => gguf_pattern(default_pattern, n_layers),
        };
        fam.layer_windows = sliding.iter().map(|&s| s.then_some(w)).collect();
    }
    if arch.is_gemma() {
        // llama.cpp's attention scale for Gemma: 1/sqrt(head size), except the 27B models
        // (46 / 62 layers), where it is 1/sqrt(hidden / heads); an explicit
        // `attention.scale` key wins
        fam.attn_scale = match gguf.f64(&key("attention.scale"))? {
            Some(s) => Some(s),
            None => {
                let big = matches!(
                    (arch, n_layers),
                    (Architecture::Gemma2, 46) | (Architecture::Gemma3, 62)
                );
                match (big, params.embedding_length, params.head_count) {
                    (true, Some(e), Some(h)) if h > 0 => Some(1.0 / ((e / h) as f64).sqrt()),
                    _ => None,
                }
            }
        };
        let cap = |suffix: &str,
                   default: Option<f64>,
                   zero_is_off: bool|
         -> Result<Option<f64>, EngineError> {
            let k = key(suffix);
            match gguf.f64(&k)? {
                None => Ok(default),
                Some(c) if c == 0.0 && zero_is_off => Ok(None),
                Some(c) if c.is_finite() && c > 0.0 => Ok(Some(c)),
                Some(c) => Err(EngineError::BadParam(format!(
                    "`{k}` is {c}, expected a positive number"
                ))),
            }
        };
        if arch == Architecture::Gemma2 {
            fam.attn_softcap = cap("attn_logit_softcapping", Some(50.0), false)?;
            fam.final_softcap = cap("final_logit_softcapping", Some(30.0), false)?;
        } else {
            // llama.cpp: 0 (its default) means no final soft-capping for Gemma 3
            fam.final_softcap = cap("final_logit_softcapping", None, true)?;
        }
    }
    let swa_base = gguf.f64(&key("rope.freq_base_swa"))?;
    match arch {
        Architecture::Gemma3 => {
            // llama.cpp: local layers use base 10000 unless told, and no scaling
            fam.local_rope = Some((swa_base.unwrap_or(10_000.0), RopeScaling::None));
        }
        Architecture::Olmo2 => {
            if let Some(b) = swa_base {
                fam.local_rope = Some((b, RopeScaling::None));
            }
        }
        _ => {
            if let Some(b) = swa_base {
                fam.local_rope = Some((b, fam.rope_scaling.clone()));
            }
        }
    }
    if let (Architecture::Deepseek2, RopeScaling::Yarn { factor, .. }) = (arch, &fam.rope_scaling) {
        // llama.cpp's converter stores 0.1 * mscale_all_dim; the softmax scale takes the
        // square of `1 + that * ln(factor)`
        if let Some(mul) = gguf.f64(&key("rope.scaling.yarn_log_multiplier"))? {
            let k = gguf
                .u64(&key("attention.key_length_mla"))?
                .or(gguf.u64(&key("attention.key_length"))?)
                .unwrap_or(1)
                .max(1);
            let m = 1.0 + mul * factor.ln();
            fam.attn_scale = Some(m * m / (k as f64).sqrt());
        }
    }
    if arch == Architecture::Phi3 {
        let original = match gguf.u64(&key("rope.scaling.original_context_length"))? {
            Some(o) if o > 0 => usize::try_from(o).unwrap_or(usize::MAX),
            _ => context,
        };
        let attention_factor = gguf.f64(&key("rope.scaling.attn_factor"))?.unwrap_or(1.0);
        if !(attention_factor.is_finite() && attention_factor > 0.0) {
            return Err(EngineError::BadParam(format!(
                "`{}` is {attention_factor}",
                key("rope.scaling.attn_factor")
            )));
        }
        if fam.rope_scaling == RopeScaling::None {
            fam.rope_scaling = RopeScaling::LongRope {
                short: Vec::new(),
                long: Vec::new(),
                original_context: original,
                attention_factor,
            };
        }
    }
    Ok(fam)
}

/// RoPE theta and scaling from config.json for a layer type (see [`rope_object`]); older
/// files put `rope_theta` at the top level.
fn hf_rope(
    cfg: &Value,
    layer_type: Option<&str>,
    arch: Architecture,
) -> Result<(Option<f64>, RopeScaling), EngineError> {
    let obj = rope_object(cfg, layer_type);
    let theta = obj
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| match layer_type {
            Some("sliding_attention") => None,
            _ => cfg.get("rope_theta"),
        })
        .and_then(Value::as_f64);
    let scaling = obj
        .map(|s| parse_hf_scaling(s, arch))
        .transpose()?
        .unwrap_or(RopeScaling::None);
    Ok((theta, scaling))
}

fn parse_hf_scaling(s: &Value, arch: Architecture) -> Result<RopeScaling, EngineError> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64, EngineError> {
        s.get(key)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| {
                EngineError::BadParam(format!(
                    "rope scaling `{kind}` needs a positive number `{key}`"
                ))
            })
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        // Phi-3's config turns the legacy `su` and `yarn` names into longrope; the factors
        // are read by `longrope_from_hf`
        "longrope" => longrope_placeholder(),
        "su" | "yarn" if arch == Architecture::Phi3 => longrope_placeholder(),
        "yarn" => {
            let factor = num("factor")?;
            let opt = |key: &str, default: f64| -> Result<f64, EngineError> {
                match s.get(key).filter(|v| !v.is_null()) {
                    None => Ok(default),
                    Some(_) => num(key),
                }
            };
            let attention_factor = match s.get("attention_factor").filter(|v| !v.is_null()) {
                Some(_) => num("attention_factor")?,
                None => {
                    let m = opt("mscale", 0.0)?;
                    let all = opt("mscale_all_dim", 0.0)?;
                    if m != 0.0 && all != 0.0 {
                        yarn_mscale(factor, m) / yarn_mscale(factor, all)
                    } else {
                        yarn_mscale(factor, 1.0)
                    }
                }
            };
            RopeScaling::Yarn {
                factor,
                original_context: num("original_max_position_embeddings")?,
                beta_fast: opt("beta_fast", 32.0)?,
                beta_slow: opt("beta_slow", 1.0)?,
                attention_factor,
                truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }
        }
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => {
            let scaling = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_context: num("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = scaling
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(EngineError::BadParam(format!(
                        "llama3 rope scaling has high_freq_factor {high_freq_factor} <= low_freq_factor {low_freq_factor}"
                    )));
                }
            }
            scaling
        }
        other => {
            return Err(EngineError::Unsupported(format!(
                "rope scaling `{other}` (the engine applies default, linear, llama3, longrope and yarn)"
            )))
        }
    })
}

fn longrope_placeholder() -> RopeScaling {
    RopeScaling::LongRope {
        short: Vec::new(),
        long: Vec::new(),
        original_context: 0,
        attention_factor: 1.0,
    }
}

/// Mistral and Qwen2 may declare a sliding attention window; Qwen2 only applies it when
/// `use_sliding_window` is true.
fn hf_sliding_window(cfg: &Value, arch: Architecture) -> Option<usize> {
    let window = cfg.get("sliding_window").and_then(Value::as_u64)?;
    let enabled = match arch {
        Architecture::Mistral | Architecture::Mixtral => true,
        Architecture::Qwen2
        | Architecture::Qwen3
        | Architecture::Qwen2Moe
        | Architecture::Qwen3Moe => cfg
            .get("use_sliding_window")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        _ => false,
    };
    (enabled && window > 0).then(|| usize::try_from(window).unwrap_or(usize::MAX))
}

/// RoPE scaling from GGUF keys. Llama 3.1's frequency factors travel as the tensor
/// `rope_freqs.weight`, which the model loader applies; here only the key-based kinds.
fn gguf_rope(gguf: Meta<'_>, arch: &str) -> Result<RopeScaling, EngineError> {
    let kind = gguf.str(&format!("{arch}.rope.scaling.type"))?;
    let factor = gguf.f64(&format!("{arch}.rope.scaling.factor"))?;
    match kind {
        Some("yarn") => {
            let factor = factor.filter(|f| f.is_finite() && *f > 0.0).ok_or_else(|| {
                EngineError::BadParam(format!(
                    "`{arch}.rope.scaling.type` is yarn but `{arch}.rope.scaling.factor` is missing or not positive"
                ))
            })?;
            let original_key = format!("{arch}.rope.scaling.original_context_length");
            let original = gguf
                .u64(&original_key)?
                .filter(|&o| o > 0)
                .ok_or_else(|| EngineError::MissingParam(format!("`{original_key}`")))?;
            let beta = |k: &str, default: f64| -> Result<f64, EngineError> {
                Ok(gguf
                    .f64(&format!("{arch}.rope.scaling.{k}"))?
                    .filter(|b| b.is_finite() && *b > 0.0)
                    .unwrap_or(default))
            };
            // DeepSeek's YaRN keeps cos/sin unscaled and scales the softmax instead (see
            // `gguf_family`); gpt-oss's config sets `truncate: false`, which GGUF does
            // not carry
            let deepseek = arch == "deepseek2";
            Ok(RopeScaling::Yarn {
                factor,
                original_context: original as f64,
                beta_fast: beta("yarn_beta_fast", 32.0)?,
                beta_slow: beta("yarn_beta_slow", 1.0)?,
                attention_factor: if deepseek {
                    1.0
                } else {
                    yarn_mscale(factor, 1.0)
                },
                truncate: arch != "gpt-oss",
            })
        }
        None | Some("none") => Ok(RopeScaling::None),
        Some("linear") => match factor {
            Some(f) if f.is_finite() && f > 0.0 => Ok(RopeScaling::Linear { factor: f }),
            _ => Err(EngineError::BadParam(format!(
                "`{arch}.rope.scaling.type` is linear but `{arch}.rope.scaling.factor` is missing or not positive"
            ))),
        },
        Some(other) => Err(EngineError::Unsupported(format!(
            "GGUF rope scaling `{other}` (the engine applies linear and llama3 frequency factors)"
        ))),
    }
}

fn is_moe_family(arch: Architecture) -> bool {
    matches!(
        arch,
        Architecture::Mixtral
            | Architecture::Qwen2Moe
            | Architecture::Qwen3Moe
            | Architecture::Deepseek2
            | Architecture::GptOss
    )
}

/// Check the routing numbers every source must satisfy.
fn checked_moe(m: MoeConfig, what: &str) -> Result<MoeConfig, EngineError> {
    if m.experts == 0 || m.experts as u64 > MAX_DIM || m.expert_ffn == 0 {
        return Err(EngineError::BadParam(format!(
            "{what}: {} experts of width {}",
            m.experts, m.expert_ffn
        )));
    }
    if m.expert_ffn as u64 > MAX_DIM || m.shared_ffn as u64 > MAX_DIM {
        return Err(EngineError::BadParam(format!(
            "{what}: expert width {} / shared width {} above {MAX_DIM}",
            m.expert_ffn, m.shared_ffn
        )));
    }
    if m.used == 0 || m.used > m.experts {
        return Err(EngineError::BadParam(format!(
            "{what}: {} experts per token of {} experts",
            m.used, m.experts
        )));
    }
    if m.groups == 0
        || !m.experts.is_multiple_of(m.groups)
        || m.groups_used == 0
        || m.groups_used > m.groups
        || (m.groups > 1 && m.experts / m.groups < 2)
        || (m.groups > 1 && m.used > m.groups_used * (m.experts / m.groups))
    {
        return Err(EngineError::BadParam(format!(
            "{what}: {} experts in {} groups, {} groups used, {} experts per token",
            m.experts, m.groups, m.groups_used, m.used
        )));
    }
    if !(m.scale.is_finite() && m.scale > 0.0) {
        return Err(EngineError::BadParam(format!(
            "{what}: routed scaling factor {}",
            m.scale
        )));
    }
    Ok(m)
}

/// The mixture of experts a config.json declares, with transformers' defaults.
fn moe_from_hf(
    cfg: &Value,
    arch: Architecture,
    n_layers: usize,
) -> Result<Option<MoeConfig>, EngineError> {
    if !is_moe_family(arch) {
        return Ok(None);
    }
    let uint = |keys: &[&str]| -> Result<Option<usize>, EngineError> {
        for k in keys {
            if let Some(v) = cfg.get(*k).filter(|v| !v.is_null()) {
                let n = v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        EngineError::BadParam(format!("`{k}` is {v}, expected an integer"))
                    })?;
                return Ok(Some(n));
            }
        }
        Ok(None)
    };
    let need = |keys: &[&str]| -> Result<usize, EngineError> {
        uint(keys)?.ok_or_else(|| EngineError::MissingParam(format!("`{}`", keys.join("` / `"))))
    };
    let float = |k: &str, default: f64| -> Result<f64, EngineError> {
        match cfg.get(k).filter(|v| !v.is_null()) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| EngineError::BadParam(format!("`{k}` is {v}, expected a number"))),
        }
    };
    let flag = |k: &str, default: bool| cfg.get(k).and_then(Value::as_bool).unwrap_or(default);
    let experts = need(&["num_local_experts", "num_experts", "n_routed_experts"])?;
    let used = need(&["num_experts_per_tok"])?;
    let expert_ffn = match arch {
        Architecture::Mixtral | Architecture::GptOss => need(&["intermediate_size"])?,
        _ => need(&["moe_intermediate_size"])?,
    };
    let mut m = MoeConfig {
        experts,
        used,
        expert_ffn,
        gating: Gating::Softmax,
        norm_topk: false,
        scale: 1.0,
        groups: 1,
        groups_used: 1,
        shared_ffn: 0,
        sparse_layers: vec![true; n_layers],
        clamp: None,
    };
    match arch {
        // transformers' Mixtral router always renormalises the chosen weights
        Architecture::Mixtral => m.norm_topk = true,
        Architecture::Qwen2Moe | Architecture::Qwen3Moe => {
            m.norm_topk = flag("norm_topk_prob", false);
            if arch == Architecture::Qwen2Moe {
                m.shared_ffn = uint(&["shared_expert_intermediate_size"])?.unwrap_or(0);
            }
            let step = uint(&["decoder_sparse_step"])?.unwrap_or(1).max(1);
            let dense: Vec<u64> = cfg
                .get("mlp_only_layers")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            m.sparse_layers = (0..n_layers)
                .map(|i| !dense.contains(&(i as u64)) && (i + 1).is_multiple_of(step))
                .collect();
        }
        Architecture::Deepseek2 => {
            let v3 = cfg.get("model_type").and_then(Value::as_str) == Some("deepseek_v3");
            // transformers' DeepSeek-V3 router is sigmoid whatever the config says;
            // V2 declares its scoring function
            let scoring = cfg
                .get("scoring_func")
                .and_then(Value::as_str)
                .unwrap_or(if v3 { "sigmoid" } else { "softmax" });
            m.gating = match (v3, scoring) {
                (true, _) | (false, "sigmoid") => Gating::Sigmoid,
                (false, "softmax") => Gating::Softmax,
                (false, other) => {
                    return Err(EngineError::Unsupported(format!(
                        "expert scoring function `{other}`"
                    )))
                }
            };
            let method = cfg.get("topk_method").and_then(Value::as_str);
            if !v3 && method == Some("group_limited_greedy") {
                return Err(EngineError::Unsupported(
                    "DeepSeek-V2's `group_limited_greedy` routing (the engine limits groups by their top-2 sum, as V3 does)".into(),
                ));
            }
            m.norm_topk = flag("norm_topk_prob", v3);
            m.scale = float("routed_scaling_factor", 1.0)? as f32;
            if v3 || method == Some("noaux_tc") {
                m.groups = uint(&["n_group"])?.unwrap_or(1).max(1);
                m.groups_used = uint(&["topk_group"])?.unwrap_or(m.groups).max(1);
            }
            m.shared_ffn = uint(&["n_shared_experts"])?.unwrap_or(0) * expert_ffn;
            let first_dense = uint(&["first_k_dense_replace"])?.unwrap_or(0);
            let freq = uint(&["moe_layer_freq"])?.unwrap_or(1).max(1);
            m.sparse_layers = (0..n_layers)
                .map(|i| i >= first_dense && i.is_multiple_of(freq))
                .collect();
        }
        Architecture::GptOss => {
            m.gating = Gating::SoftmaxSelected;
            m.clamp = Some(SwigluClamp {
                alpha: float("swiglu_alpha", 1.702)? as f32,
                limit: float("swiglu_limit", 7.0)? as f32,
            });
        }
        _ => {}
    }
    checked_moe(m, "config.json").map(Some)
}

/// The mixture of experts GGUF `{arch}.expert_*` keys declare, with llama.cpp's per-family
/// rules (Qwen3-MoE and Mixtral always renormalise, gpt-oss takes a softmax over the
/// chosen logits).
fn moe_from_gguf(
    gguf: Meta<'_>,
    arch_name: &str,
    arch: Architecture,
    n_layers: usize,
) -> Result<Option<MoeConfig>, EngineError> {
    let key = |suffix: &str| format!("{arch_name}.{suffix}");
    let uint = |suffix: &str| -> Result<Option<usize>, EngineError> {
        match gguf.u64(&key(suffix))? {
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| EngineError::BadParam(format!("`{}` is {v}", key(suffix)))),
            None => Ok(None),
        }
    };
    let experts = match uint("expert_count")? {
        Some(n) if n > 0 => n,
        _ if is_moe_family(arch) => {
            return Err(EngineError::MissingParam(format!(
                "`{}`",
                key("expert_count")
            )))
        }
        _ => return Ok(None),
    };
    let used = uint("expert_used_count")?
        .ok_or_else(|| EngineError::MissingParam(format!("`{}`", key("expert_used_count"))))?;
    // Mixtral (`llama`) has no expert width key: its experts are the dense width
    let expert_ffn = match uint("expert_feed_forward_length")? {
        Some(f) => f,
        None => uint("feed_forward_length")?.ok_or_else(|| {
            EngineError::MissingParam(format!("`{}`", key("expert_feed_forward_length")))
        })?,
    };
    let gating = match uint("expert_gating_func")? {
        None | Some(0) => match arch {
            Architecture::GptOss => Gating::SoftmaxSelected,
            _ => Gating::Softmax,
        },
        Some(1) => Gating::Softmax,
        Some(2) => Gating::Sigmoid,
        Some(3) => Gating::SoftmaxSelected,
        Some(other) => {
            return Err(EngineError::Unsupported(format!(
                "expert gating function {other} (`{}`)",
                key("expert_gating_func")
            )))
        }
    };
    let norm_topk = match arch {
        Architecture::Llama | Architecture::Mixtral | Architecture::Qwen3Moe => true,
        Architecture::Deepseek2 => gguf.bool(&key("expert_weights_norm"))?.unwrap_or(false),
        _ => false,
    };
    let scale = match gguf.f64(&key("expert_weights_scale"))? {
        // llama.cpp leaves the weights alone for 0 (its default) and 1
        None => 1.0,
        Some(0.0) => 1.0,
        Some(s) => s as f32,
    };
    let shared_ffn = match arch {
        Architecture::Deepseek2 => uint("expert_shared_count")?.unwrap_or(0) * expert_ffn,
        _ => uint("expert_shared_feed_forward_length")?.unwrap_or(0),
    };
    let dense_lead = uint("leading_dense_block_count")?.unwrap_or(0);
    let m = MoeConfig {
        experts,
        used,
        expert_ffn,
        gating,
        norm_topk,
        scale,
        groups: uint("expert_group_count")?.unwrap_or(1).max(1),
        groups_used: uint("expert_group_used_count")?.unwrap_or(1).max(1),
        shared_ffn,
        sparse_layers: (0..n_layers).map(|i| i >= dense_lead).collect(),
        clamp: (arch == Architecture::GptOss).then_some(SwigluClamp {
            alpha: 1.702,
            limit: 7.0,
        }),
    };
    checked_moe(m, "GGUF expert keys").map(Some)
}

fn mla_from_hf(cfg: &Value, arch: Architecture) -> Result<Option<MlaConfig>, EngineError> {
    if arch != Architecture::Deepseek2 {
        return Ok(None);
    }
    let get = |k: &str| -> Result<Option<usize>, EngineError> {
        match cfg.get(k).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0 && n <= MAX_DIM)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    EngineError::BadParam(format!("`{k}` is {v}, expected a positive integer"))
                }),
        }
    };
    let need = |k: &str| get(k)?.ok_or_else(|| EngineError::MissingParam(format!("`{k}`")));
    let rope = need("qk_rope_head_dim")?;
    if !rope.is_multiple_of(2) {
        return Err(EngineError::BadParam(format!(
            "`qk_rope_head_dim` is {rope}; RoPE needs pairs"
        )));
    }
    Ok(Some(MlaConfig {
        q_lora: get("q_lora_rank")?,
        kv_lora: need("kv_lora_rank")?,
        nope: need("qk_nope_head_dim")?,
        rope,
        v: need("v_head_dim")?,
        adjacent_pairs: cfg
            .get("rope_interleave")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    }))
}

/// MLA from llama.cpp's keys: `key_length_mla` / `value_length_mla` are the per-head
/// sizes (older files put them in `key_length` / `value_length`), the rotary part is
/// `rope.dimension_count`.
fn mla_from_gguf(
    gguf: Meta<'_>,
    arch_name: &str,
    arch: Architecture,
) -> Result<Option<MlaConfig>, EngineError> {
    if arch != Architecture::Deepseek2 {
        return Ok(None);
    }
    let key = |suffix: &str| format!("{arch_name}.{suffix}");
    let get = |suffix: &str| -> Result<Option<usize>, EngineError> {
        match gguf.u64(&key(suffix))? {
            None => Ok(None),
            Some(v) if v > 0 && v <= MAX_DIM => Ok(Some(v as usize)),
            Some(v) => Err(EngineError::BadParam(format!("`{}` is {v}", key(suffix)))),
        }
    };
    let need = |suffix: &str| {
        get(suffix)?.ok_or_else(|| EngineError::MissingParam(format!("`{}`", key(suffix))))
    };
    let rope = need("rope.dimension_count")?;
    let k_len = match get("attention.key_length_mla")? {
        Some(k) => k,
        None => need("attention.key_length")?,
    };
    let v = match get("attention.value_length_mla")? {
        Some(v) => v,
        None => need("attention.value_length")?,
    };
    if k_len <= rope || !rope.is_multiple_of(2) {
        return Err(EngineError::BadParam(format!(
            "MLA key length {k_len} with rope dimension {rope}"
        )));
    }
    Ok(Some(MlaConfig {
        q_lora: get("attention.q_lora_rank")?,
        kv_lora: need("attention.kv_lora_rank")?,
        nope: k_len - rope,
        rope,
        v,
        adjacent_pairs: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> ModelParams {
        ModelParams {
            architecture: Some("llama".into()),
            block_count: Some(2),
            context_length: Some(256),
            embedding_length: Some(64),
            feed_forward_length: Some(128),
            head_count: Some(4),
            head_count_kv: Some(2),
            vocab_size: Some(512),
            rms_norm_eps: Some(1e-5),
            ..ModelParams::default()
        }
    }

    #[test]
    fn reads_llama3_scaling_from_both_config_forms() {
        let v5 = json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}});
        let v4 = json!({"rope_theta": 500000.0, "rope_scaling": {"type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}});
        for cfg in [v5, v4] {
            let c = ModelConfig::new(&params(), Some(&cfg), &[]).unwrap();
            assert_eq!(c.rope_theta, 500000.0);
            assert_eq!(
                c.rope_scaling,
                RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_context: 32.0
                }
            );
            assert_eq!(c.head_dim, 16);
        }
    }

    #[test]
    fn refuses_inconsistent_heads_and_unknown_scaling() {
        let mut p = params();
        p.head_count_kv = Some(3);
        let e = ModelConfig::new(&p, None, &[]).unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        let cfg = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        let e = ModelConfig::new(&params(), Some(&cfg), &[]).unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
        let mut p = params();
        p.architecture = Some("gpt2".into());
        assert!(ModelConfig::new(&p, None, &[]).is_err());
    }

    fn arch_params(arch: &str, layers: u64) -> ModelParams {
        ModelParams {
            architecture: Some(arch.into()),
            block_count: Some(layers),
            head_count_kv: Some(4),
            ..params()
        }
    }

    #[test]
    fn gemma_layer_windows_from_layer_types_patterns_and_gguf() {
        // transformers' defaults: gemma2 alternates, gemma3 five local to one global
        let c = ModelConfig::new(&arch_params("gemma2", 4), Some(&json!({})), &[]).unwrap();
        assert_eq!(c.layer_windows, [Some(4096), None, Some(4096), None]);
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(c.attn_scale, 1.0 / 16.0);
        assert_eq!(c.embed_scale, Some(8.0));
        assert_eq!(c.activation, Activation::GeluTanh);
        let cfg = json!({"sliding_window": 8, "final_logit_softcapping": null,
            "query_pre_attn_scalar": 64,
            "layer_types": ["full_attention", "sliding_attention", "full_attention"]});
        let c = ModelConfig::new(&arch_params("gemma2", 3), Some(&cfg), &[]).unwrap();
        assert_eq!(c.layer_windows, [None, Some(8), None]);
        assert_eq!((c.final_softcap, c.attn_scale), (None, 0.125));
        // transformers 4 form of gemma3: global theta at the top, local base beside it,
        // rope_scaling for the global layers only
        let cfg = json!({"sliding_window": 16, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}});
        let mut p = arch_params("gemma3_text", 7);
        p.rope_theta = None;
        let c = ModelConfig::new(&p, Some(&cfg), &[]).unwrap();
        let w = Some(16);
        assert_eq!(c.layer_windows, [w, w, w, w, w, None, w]);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(c.local_rope, Some((1e4, RopeScaling::None)));
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
        // GGUF: llama.cpp's pattern rules, a number or one flag per layer
        let kv = |k: &str, v: MetaValue| (format!("gemma3.{k}"), v);
        let mut meta = vec![kv("attention.sliding_window", MetaValue::U32(32))];
        let c = ModelConfig::new(&arch_params("gemma3", 7), None, &meta).unwrap();
        let w = Some(32);
        assert_eq!(c.layer_windows, [w, w, w, w, w, None, w]);
        assert_eq!(c.local_rope, Some((10_000.0, RopeScaling::None)));
        meta.push(kv("attention.sliding_window_pattern", MetaValue::U32(2)));
        let c = ModelConfig::new(&arch_params("gemma3", 3), None, &meta).unwrap();
        assert_eq!(c.layer_windows, [w, None, w]);
        meta.pop();
        meta.push(kv(
            "attention.sliding_window_pattern",
            MetaValue::Array {
                elem: crate::formats::gguf::ValueType::Bool,
                items: vec![MetaValue::Bool(false), MetaValue::Bool(true)],
            },
        ));
        let c = ModelConfig::new(&arch_params("gemma3", 2), None, &meta).unwrap();
        assert_eq!(c.layer_windows, [None, w]);
        // gemma3 without a window has none; gemma2 falls back to 4096
        let c = ModelConfig::new(&arch_params("gemma3", 2), None, &[]).unwrap();
        assert_eq!(c.layer_windows, [None, None]);
        let c = ModelConfig::new(&arch_params("gemma2", 2), None, &[]).unwrap();
        assert_eq!(c.layer_windows, [Some(4096), None]);
    }

    #[test]
    fn bad_soft_capping_names_the_field() {
        for (field, v) in [
            ("attn_logit_softcapping", json!(0)),
            ("final_logit_softcapping", json!(-1.0)),
        ] {
            let cfg = json!({ field: v });
            let e = ModelConfig::new(&arch_params("gemma2", 2), Some(&cfg), &[]).unwrap_err();
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
            assert!(e.hint().is_some());
        }
        let meta = vec![(
            "gemma2.attn_logit_softcapping".to_string(),
            MetaValue::F32(0.0),
        )];
        let e = ModelConfig::new(&arch_params("gemma2", 2), None, &meta).unwrap_err();
        assert!(
            e.to_string()
                .contains("`gemma2.attn_logit_softcapping` is 0"),
            "{e}"
        );
        // llama.cpp reads 0 as "no final soft-capping" for gemma3
        let meta = vec![(
            "gemma3.final_logit_softcapping".to_string(),
            MetaValue::F32(0.0),
        )];
        let c = ModelConfig::new(&arch_params("gemma3", 2), None, &meta).unwrap();
        assert_eq!(c.final_softcap, None);
    }

    #[test]
    fn phi3_partial_rotary_longrope_and_window() {
        let cfg = json!({"max_position_embeddings": 256, "sliding_window": 7,
            "rope_scaling": {"type": "su", "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                "long_factor": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]},
            "original_max_position_embeddings": 64, "partial_rotary_factor": 0.75});
        let c = ModelConfig::new(&arch_params("phi3", 2), Some(&cfg), &[]).unwrap();
        assert_eq!(c.rotary_dim, 12);
        assert_eq!(c.layer_windows, [Some(7), Some(7)]);
        let RopeScaling::LongRope {
            original_context,
            attention_factor,
            ..
        } = c.rope_scaling
        else {
            panic!("{:?}", c.rope_scaling)
        };
        assert_eq!(original_context, 64);
        // factor 256 / 64 = 4: sqrt(1 + ln 4 / ln 64)
        assert!((attention_factor - (1.0f64 + 4f64.ln() / 64f64.ln()).sqrt()).abs() < 1e-12);
        // factors of the wrong length
        let cfg = json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0],
            "long_factor": [1.0]}, "original_max_position_embeddings": 64});
        let e = ModelConfig::new(&arch_params("phi3", 2), Some(&cfg), &[]).unwrap_err();
        assert!(e.to_string().contains("half the rotary dimension"), "{e}");
        // GGUF: rope dimension below the head size is accepted for phi3
        let meta = vec![
            ("phi3.rope.dimension_count".to_string(), MetaValue::U32(8)),
            (
                "phi3.rope.scaling.original_context_length".to_string(),
                MetaValue::U32(32),
            ),
        ];
        let c = ModelConfig::new(&arch_params("phi3", 2), None, &meta).unwrap();
        assert_eq!(c.rotary_dim, 8);
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::LongRope {
                original_context: 32,
                ..
            }
        ));
    }

    #[test]
    fn unsupported_message_lists_every_family() {
        let e = ModelConfig::new(&arch_params("gpt2", 2), None, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("llama, mistral, qwen2, qwen3, gemma2, gemma3, olmo2, phi3, mixtral, qwen2moe, qwen3moe, deepseek2 and gpt-oss"),
            "{e}"
        );
    }

    #[test]
    fn gguf_partial_rotary_is_refused() {
        let meta = vec![("llama.rope.dimension_count".to_string(), MetaValue::U32(8))];
        let e = ModelConfig::new(&params(), None, &meta).unwrap_err();
        assert!(e.to_string().contains("partial rotary"), "{e}");
    }
}
