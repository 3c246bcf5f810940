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
}

impl Architecture {
    /// Every family, in the order the error message lists them.
    pub const ALL: [Architecture; 8] = [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma2,
        Architecture::Gemma3,
        Architecture::Olmo2,
        Architecture::Phi3,
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
        let ffn = need(params.feed_forward_length, "feed-forward length", MAX_DIM)?;
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
        let head_dim = match params.head_dim.or(gguf_key("attention.key_length")?) {
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
            if rot != head_dim as u64 {
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
        let attn_scale = fam.attn_scale.unwrap_or(1.0 / (head_dim as f64).sqrt());
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
                "rope scaling `{other}` (the engine applies default, linear, llama3 and longrope)"
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
        Architecture::Mistral => true,
        Architecture::Qwen2 | Architecture::Qwen3 => cfg
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
                .contains("llama, mistral, qwen2, qwen3, gemma2, gemma3, olmo2 and phi3"),
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
