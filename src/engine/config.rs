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
}

impl Architecture {
    /// From config.json `model_type` or GGUF `general.architecture`.
    pub fn from_name(name: &str) -> Option<Architecture> {
        Some(match name {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
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
    /// Keys further back than this are masked (Mistral's sliding window), when declared.
    pub sliding_window: Option<usize>,
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
                "architecture `{arch_name}` (the engine runs llama, mistral, qwen2 and qwen3)"
            ))
        })?;
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
        if let Some(rot) = gguf_key("rope.dimension_count")? {
            if rot != head_dim as u64 {
                return Err(EngineError::Unsupported(format!(
                    "partial rotary embedding (rope dimension {rot}, head size {head_dim})"
                )));
            }
        }
        let rms_eps = params.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(EngineError::BadParam(format!(
                "rms norm epsilon is {rms_eps}"
            )));
        }
        let (rope_theta, rope_scaling, sliding_window) = match config_json {
            Some(cfg) => {
                let (theta, scaling) = hf_rope(cfg)?;
                (
                    params.rope_theta.or(theta),
                    scaling,
                    hf_sliding_window(cfg, architecture),
                )
            }
            None => (params.rope_theta, gguf_rope(gguf, &arch_name)?, None),
        };
        let rope_theta = rope_theta.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(EngineError::BadParam(format!("rope theta is {rope_theta}")));
        }
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
            rope_scaling,
            sliding_window,
        })
    }
}

/// RoPE theta and scaling from config.json: transformers 5 keeps them under
/// `rope_parameters`, older files put `rope_theta` at the top and `rope_scaling` beside it.
fn hf_rope(cfg: &Value) -> Result<(Option<f64>, RopeScaling), EngineError> {
    let params = cfg.get("rope_parameters").filter(|v| v.is_object());
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| cfg.get("rope_theta"))
        .and_then(Value::as_f64);
    let scaling = params
        .or_else(|| cfg.get("rope_scaling").filter(|v| v.is_object()))
        .map(parse_hf_scaling)
        .transpose()?
        .unwrap_or(RopeScaling::None);
    Ok((theta, scaling))
}

fn parse_hf_scaling(s: &Value) -> Result<RopeScaling, EngineError> {
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
                "rope scaling `{other}` (the engine applies default, linear and llama3)"
            )))
        }
    })
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
        Architecture::Llama => false,
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

    #[test]
    fn gguf_partial_rotary_is_refused() {
        let meta = vec![("llama.rope.dimension_count".to_string(), MetaValue::U32(8))];
        let e = ModelConfig::new(&params(), None, &meta).unwrap_err();
        assert!(e.to_string().contains("partial rotary"), "{e}");
    }
}
