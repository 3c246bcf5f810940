//! The architectures modelgate converts, and what each means for a GGUF file: the
//! hyper-parameters read from config.json, the GGUF `{arch}.*` keys they become, the
//! Hugging Face ↔ llama.cpp tensor names, the q/k row permutation of the `llama`
//! architecture, and the shape every tensor must have.
//!
//! Facts follow llama.cpp's `convert_hf_to_gguf.py`: Llama, SmolLM and Mistral checkpoints
//! are written as architecture `llama` with q/k rows permuted from the Hugging Face
//! rotate-half layout into the interleaved layout ggml's RoPE expects; Qwen2 and Qwen3 keep
//! their own architecture names and no permutation. Llama 3 RoPE scaling becomes a
//! `rope_freqs.weight` tensor of per-frequency factors; linear and YaRN scaling become
//! `rope.scaling.*` keys.

use std::path::Path;

use serde_json::{Map, Value};

use super::error::ConvertError;
use super::moe::{Mla, Moe, YarnExtra};
use crate::formats::MetaValue;

/// A GGUF architecture modelgate writes and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Olmo2,
    Phi3,
    Qwen2Moe,
    Qwen3Moe,
    /// DeepSeek-V2, V3 and R1 (multi-head latent attention).
    Deepseek2,
    GptOss,
}

impl Arch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Olmo2 => "olmo2",
            Arch::Phi3 => "phi3",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Deepseek2 => "deepseek2",
            Arch::GptOss => "gpt-oss",
        }
    }

    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "gemma2" => Some(Arch::Gemma2),
            "gemma3" => Some(Arch::Gemma3),
            "olmo2" => Some(Arch::Olmo2),
            "phi3" => Some(Arch::Phi3),
            "qwen2moe" => Some(Arch::Qwen2Moe),
            "qwen3moe" => Some(Arch::Qwen3Moe),
            "deepseek2" => Some(Arch::Deepseek2),
            "gpt-oss" => Some(Arch::GptOss),
            _ => None,
        }
    }

    /// Whether llama.cpp permutes the q/k rows for this architecture.
    pub fn permutes_qk(self) -> bool {
        self == Arch::Llama
    }

    /// The transformers class and `model_type` written back into config.json.
    pub fn hf_class(self) -> (&'static str, &'static str) {
        match self {
            Arch::Llama => ("LlamaForCausalLM", "llama"),
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
            Arch::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
            Arch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
            Arch::Olmo2 => ("Olmo2ForCausalLM", "olmo2"),
            Arch::Phi3 => ("Phi3ForCausalLM", "phi3"),
            Arch::Qwen2Moe => ("Qwen2MoeForCausalLM", "qwen2_moe"),
            Arch::Qwen3Moe => ("Qwen3MoeForCausalLM", "qwen3_moe"),
            Arch::Deepseek2 => ("DeepseekV3ForCausalLM", "deepseek_v3"),
            Arch::GptOss => ("GptOssForCausalLM", "gpt_oss"),
        }
    }

    /// Gemma stores RMS norm weights as offsets from 1 (transformers multiplies by
    /// `1 + w`); llama.cpp adds the 1 when converting.
    pub fn norms_offset_by_one(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }

    /// Whether the architecture has per-head q/k RMS norms.
    pub fn has_qk_norm(self) -> bool {
        matches!(
            self,
            Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3 | Arch::Olmo2
        )
    }

    /// The architectures llama.cpp writes `general.architecture` names for that modelgate
    /// reads back.
    pub const GGUF_NAMES: &'static str =
        "llama, qwen2, qwen3, gemma2, gemma3, olmo2, phi3, qwen2moe, qwen3moe, deepseek2, gpt-oss";
}

/// Names accepted from config.json, for error messages.
pub const SUPPORTED: &str =
    "LlamaForCausalLM (llama, SmolLM, Falcon 3), MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Olmo2ForCausalLM, Phi3ForCausalLM (Phi-3, Phi-4), MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM (also R1), GptOssForCausalLM";

/// RoPE scaling as config.json declares it.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_context: u64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: u64,
    },
    /// Phi-3 LongRoPE: one factor per rotary frequency for short and for long contexts
    /// (llama.cpp's `rope_factors_short/long.weight`), and the attention scale it implies.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        attn_factor: f32,
    },
}

/// The hyper-parameters of a dense decoder, from config.json or GGUF keys.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub arch: Arch,
    /// The config's own name for the family (`llama`, `mistral`, `qwen2`, `qwen3`).
    pub model_type: String,
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    /// Whether config.json states `head_dim` (llama.cpp then writes key/value lengths).
    pub head_dim_explicit: bool,
    pub n_vocab: u64,
    pub n_ctx: u64,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tied_embeddings: bool,
    pub attention_bias: bool,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
    /// Gemma 2 attention logit soft-capping (`attn_logit_softcapping`).
    pub attn_softcap: Option<f64>,
    /// Gemma final logit soft-capping (`final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    /// Sliding-window width of the local attention layers (Gemma, Phi-3; Phi-4 has none).
    pub sliding_window: Option<u64>,
    /// RoPE base of the sliding-window layers when it differs (Gemma 3).
    pub rope_theta_swa: Option<f64>,
    /// Rotary dimensions per head (Phi-3's `partial_rotary_factor`).
    pub rope_dims: u64,
    /// Phi-3's `original_max_position_embeddings`.
    pub original_context: Option<u64>,
    /// Gemma's `query_pre_attn_scalar` (llama.cpp does not store it; kept for config.json).
    pub query_pre_attn_scalar: Option<f64>,
    /// The experts' routing, for mixtures of experts.
    pub moe: Option<Moe>,
    /// DeepSeek's multi-head latent attention.
    pub mla: Option<Mla>,
    /// YaRN settings beyond the common three.
    pub yarn: YarnExtra,
}

fn get<'a>(cfg: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

fn get_u64(cfg: &Map<String, Value>, key: &str) -> Option<u64> {
    get(cfg, key).and_then(Value::as_u64)
}

fn need_u64(cfg: &Map<String, Value>, key: &str, path: &Path) -> Result<u64, ConvertError> {
    match get(cfg, key) {
        None => Err(ConvertError::config(path, format!("`{key}` is missing"))),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(n),
            _ => Err(ConvertError::config(
                path,
                format!("`{key}` is {v}, expected a positive integer"),
            )),
        },
    }
}

fn get_f64(cfg: &Map<String, Value>, key: &str) -> Option<f64> {
    get(cfg, key).and_then(Value::as_f64)
}

/// A token id from config.json: an integer, or the first of a list (Llama 3.1 lists several
/// end-of-sequence ids; the first is the one tokenizers report).
fn token_id(cfg: &Map<String, Value>, key: &str) -> Option<u64> {
    match get(cfg, key)? {
        Value::Array(items) => items.first().and_then(Value::as_u64),
        v => v.as_u64(),
    }
}

impl HParams {
    /// Read config.json. `path` names the file in errors.
    pub fn from_config(cfg: &Value, path: &Path) -> Result<HParams, ConvertError> {
        let cfg = cfg
            .as_object()
            .ok_or_else(|| ConvertError::config(path, "not a JSON object"))?;
        let class = get(cfg, "architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        let model_type = get(cfg, "model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match (class, model_type) {
            (
                "LlamaForCausalLM" | "LLaMAForCausalLM" | "MistralForCausalLM"
                | "MixtralForCausalLM",
                _,
            ) => Arch::Llama,
            ("Qwen2MoeForCausalLM", _) => Arch::Qwen2Moe,
            ("Qwen3MoeForCausalLM", _) => Arch::Qwen3Moe,
            ("DeepseekV2ForCausalLM" | "DeepseekV3ForCausalLM", _) => Arch::Deepseek2,
            ("GptOssForCausalLM", _) => Arch::GptOss,
            ("Qwen2ForCausalLM", _) => Arch::Qwen2,
            ("Qwen3ForCausalLM", _) => Arch::Qwen3,
            ("Gemma2ForCausalLM", _) => Arch::Gemma2,
            ("Gemma3ForCausalLM", _) => Arch::Gemma3,
            ("Olmo2ForCausalLM", _) => Arch::Olmo2,
            ("Phi3ForCausalLM", _) => Arch::Phi3,
            ("", "llama" | "mistral" | "mixtral") => Arch::Llama,
            ("", "qwen2_moe") => Arch::Qwen2Moe,
            ("", "qwen3_moe") => Arch::Qwen3Moe,
            ("", "deepseek_v2" | "deepseek_v3") => Arch::Deepseek2,
            ("", "gpt_oss") => Arch::GptOss,
            ("", "qwen2") => Arch::Qwen2,
            ("", "qwen3") => Arch::Qwen3,
            ("", "gemma2") => Arch::Gemma2,
            ("", "gemma3_text") => Arch::Gemma3,
            ("", "olmo2") => Arch::Olmo2,
            ("", "phi3") => Arch::Phi3,
            _ => {
                let found = if class.is_empty() {
                    format!("model_type {model_type}")
                } else {
                    class.to_owned()
                };
                return Err(ConvertError::UnsupportedArchitecture {
                    found,
                    supported: SUPPORTED.into(),
                });
            }
        };
        let n_layer = need_u64(cfg, "num_hidden_layers", path)?;
        let n_embd = need_u64(cfg, "hidden_size", path)?;
        let n_ff = need_u64(cfg, "intermediate_size", path)?;
        let n_head = need_u64(cfg, "num_attention_heads", path)?;
        let n_head_kv = match get(cfg, "num_key_value_heads") {
            None => n_head,
            Some(_) => need_u64(cfg, "num_key_value_heads", path)?,
        };
        let n_vocab = need_u64(cfg, "vocab_size", path)?;
        let head_dim_explicit = get(cfg, "head_dim").is_some();
        let head_dim = if head_dim_explicit {
            need_u64(cfg, "head_dim", path)?
        } else {
            if !n_embd.is_multiple_of(n_head) {
                return Err(ConvertError::config(
                    path,
                    format!("`hidden_size` {n_embd} is not a multiple of `num_attention_heads` {n_head} and no `head_dim` is given"),
                ));
            }
            n_embd / n_head
        };
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(ConvertError::config(
                path,
                format!("`num_attention_heads` {n_head} is not a multiple of `num_key_value_heads` {n_head_kv}"),
            ));
        }
        if arch.permutes_qk() && !head_dim.is_multiple_of(2) {
            return Err(ConvertError::config(
                path,
                format!("head dimension {head_dim} is odd; RoPE needs pairs"),
            ));
        }
        // Gemma 3's converter class fills in the released models' default.
        let n_ctx_default = if arch == Arch::Gemma3 { 131072 } else { 2048 };
        let n_ctx = get_u64(cfg, "max_position_embeddings").unwrap_or(n_ctx_default);
        let rms_eps = get_f64(cfg, "rms_norm_eps").unwrap_or(1e-6);
        // transformers 5 puts RoPE settings under `rope_parameters`; older configs have
        // `rope_theta` and `rope_scaling` at the top level. Both occur in real models.
        // Gemma 3 in transformers 5 keeps one set per attention kind: the global layers'
        // settings are the model's RoPE, the sliding layers' base goes to `freq_base_swa`.
        let all_params = get(cfg, "rope_parameters").and_then(Value::as_object);
        let rope_params = all_params.map(|p| {
            get(p, "full_attention")
                .and_then(Value::as_object)
                .unwrap_or(p)
        });
        let rope_theta_default = if arch == Arch::Gemma3 {
            1_000_000.0
        } else {
            10000.0
        };
        let rope_theta = rope_params
            .and_then(|p| get_f64(p, "rope_theta"))
            .or_else(|| get_f64(cfg, "rope_theta"))
            .unwrap_or(rope_theta_default);
        let rope_theta_swa = all_params
            .and_then(|p| get(p, "sliding_attention"))
            .and_then(Value::as_object)
            .and_then(|p| get_f64(p, "rope_theta"))
            .or_else(|| get_f64(cfg, "rope_local_base_freq"));
        let scaling = get(cfg, "rope_scaling")
            .and_then(Value::as_object)
            .or(rope_params);
        let original_context = scaling
            .and_then(|s| get_u64(s, "original_max_position_embeddings"))
            .or_else(|| get_u64(cfg, "original_max_position_embeddings"));
        let partial_rotary = scaling
            .and_then(|s| get_f64(s, "partial_rotary_factor"))
            .or_else(|| get_f64(cfg, "partial_rotary_factor"))
            .unwrap_or(1.0);
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => rope_scaling(s, cfg, n_ctx, arch, path)?,
        };
        // llama.cpp's Gemma 2 class drops `lm_head.weight` whatever the config says: the
        // model always reads its output head from the token embedding.
        let tied_embeddings = arch == Arch::Gemma2
            || get(cfg, "tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let attention_bias = get(cfg, "attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(matches!(arch, Arch::Qwen2 | Arch::Qwen2Moe));
        let softcap = |key: &str| -> Result<Option<f64>, ConvertError> {
            match get(cfg, key) {
                None => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x > 0.0 && x.is_finite() => Ok(Some(x)),
                    _ => Err(ConvertError::config(
                        path,
                        format!("`{key}` is {v}; soft-capping needs a positive number"),
                    )),
                },
            }
        };
        let (attn_softcap, final_softcap) = match arch {
            Arch::Gemma2 => {
                let a = softcap("attn_logit_softcapping")?;
                let f = softcap("final_logit_softcapping")?;
                // llama.cpp's Gemma2Model reads both unconditionally.
                for (v, key) in [
                    (a, "attn_logit_softcapping"),
                    (f, "final_logit_softcapping"),
                ] {
                    if v.is_none() {
                        return Err(ConvertError::config(
                            path,
                            format!("`{key}` is missing; Gemma 2 needs it"),
                        ));
                    }
                }
                (a, f)
            }
            Arch::Gemma3 => {
                if get(cfg, "attn_logit_softcapping").is_some() {
                    return Err(ConvertError::config(
                        path,
                        "`attn_logit_softcapping` is set; Gemma 3 has no attention soft-capping",
                    ));
                }
                (None, softcap("final_logit_softcapping")?)
            }
            _ => (None, None),
        };
        let sliding_window = match arch {
            Arch::Gemma2 | Arch::Gemma3 | Arch::Phi3 | Arch::GptOss => {
                match get(cfg, "sliding_window") {
                    None => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| {
                        ConvertError::config(
                            path,
                            format!("`sliding_window` is {v}, expected a non-negative integer"),
                        )
                    })?),
                }
            }
            _ => None,
        };
        if arch == Arch::Gemma2 && sliding_window.is_none() {
            return Err(ConvertError::config(
                path,
                "`sliding_window` is missing; Gemma 2 needs it",
            ));
        }
        if arch == Arch::Phi3 && original_context.is_none() {
            return Err(ConvertError::config(
                path,
                "`original_max_position_embeddings` is missing; Phi-3 needs it",
            ));
        }
        if matches!(arch, Arch::Gemma2 | Arch::Gemma3) && !head_dim_explicit {
            return Err(ConvertError::config(
                path,
                "`head_dim` is missing; Gemma needs it",
            ));
        }
        let rope_dims = ((partial_rotary * n_embd as f64) as u64) / n_head;
        if let RopeScaling::LongRope { short, long, .. } = &rope_scaling {
            if short.len() as u64 * 2 != rope_dims || long.len() != short.len() {
                return Err(ConvertError::config(
                    path,
                    format!(
                        "LongRoPE `short_factor` has {} and `long_factor` {} values; {} rotary dimensions need {} each",
                        short.len(),
                        long.len(),
                        rope_dims,
                        rope_dims / 2
                    ),
                ));
            }
        }
        Ok(HParams {
            arch,
            model_type: if model_type.is_empty() {
                arch.gguf_name().to_owned()
            } else {
                model_type.to_owned()
            },
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_explicit,
            n_vocab,
            n_ctx,
            rms_eps,
            rope_theta,
            rope_scaling,
            tied_embeddings,
            attention_bias,
            bos_token_id: token_id(cfg, "bos_token_id"),
            eos_token_id: token_id(cfg, "eos_token_id"),
            pad_token_id: token_id(cfg, "pad_token_id"),
            attn_softcap,
            final_softcap,
            sliding_window,
            rope_theta_swa,
            rope_dims,
            original_context,
            query_pre_attn_scalar: get_f64(cfg, "query_pre_attn_scalar"),
            moe: Moe::from_config(cfg, arch, n_ff, path)?,
            mla: if arch == Arch::Deepseek2 {
                Some(Mla::from_config(cfg, path)?)
            } else {
                None
            },
            yarn: scaling
                .map(|s| YarnExtra::from_params(s, arch))
                .unwrap_or_default(),
        })
    }

    /// The GGUF `{arch}.*` keys (and nothing else), in llama.cpp's meaning: the keys each of
    /// llama.cpp's converter classes writes for the architecture, with the same value types.
    pub fn gguf_keys(&self) -> Vec<(String, MetaValue)> {
        let a = self.arch.gguf_name();
        let k = |s: &str| format!("{a}.{s}");
        let u32v = |v: u64| MetaValue::U32(v as u32);
        let f32v = |v: f64| MetaValue::F32(v as f32);
        let mut out = vec![
            (k("block_count"), u32v(self.n_layer)),
            (k("context_length"), u32v(self.n_ctx)),
            (k("embedding_length"), u32v(self.n_embd)),
            (k("feed_forward_length"), u32v(self.n_ff)),
            (k("attention.head_count"), u32v(self.n_head)),
            (k("attention.head_count_kv"), u32v(self.gguf_n_head_kv())),
            (k("attention.layer_norm_rms_epsilon"), f32v(self.rms_eps)),
        ];
        // Gemma 2's converter class writes no RoPE base; every other one does.
        if self.arch != Arch::Gemma2 {
            out.push((k("rope.freq_base"), f32v(self.rope_theta)));
        }
        if let Some(swa) = self.rope_theta_swa {
            if self.arch == Arch::Gemma3 {
                out.push((k("rope.freq_base_swa"), f32v(swa)));
            }
        }
        // Gemma always writes the head size; the rest only when config.json states it
        // (Phi-3's class never does).
        let head_dim_key = match self.arch {
            Arch::Gemma2 | Arch::Gemma3 => true,
            // DeepSeek's class writes its own MLA lengths.
            Arch::Phi3 | Arch::Deepseek2 => false,
            _ => self.head_dim_explicit,
        };
        if head_dim_key {
            out.push((k("attention.key_length"), u32v(self.head_dim)));
            out.push((k("attention.value_length"), u32v(self.head_dim)));
        }
        match self.arch {
            Arch::Llama => {
                out.push((k("vocab_size"), u32v(self.n_vocab)));
                out.push((k("rope.dimension_count"), u32v(self.head_dim)));
            }
            Arch::Gemma2 => {
                if let Some(c) = self.attn_softcap {
                    out.push((k("attn_logit_softcapping"), f32v(c)));
                }
                if let Some(c) = self.final_softcap {
                    out.push((k("final_logit_softcapping"), f32v(c)));
                }
                if let Some(w) = self.sliding_window {
                    out.push((k("attention.sliding_window"), u32v(w)));
                }
            }
            Arch::Gemma3 => {
                if let Some(c) = self.final_softcap {
                    out.push((k("final_logit_softcapping"), f32v(c)));
                }
                if let Some(w) = self.sliding_window {
                    out.push((k("attention.sliding_window"), u32v(w)));
                }
            }
            Arch::Phi3 => {
                out.push((k("rope.dimension_count"), u32v(self.rope_dims)));
                out.push((
                    k("rope.scaling.original_context_length"),
                    u32v(self.original_context.unwrap_or(self.n_ctx)),
                ));
                // Phi-4 has no sliding window; llama.cpp marks it with 0.
                out.push((
                    k("attention.sliding_window"),
                    u32v(self.sliding_window.unwrap_or(0)),
                ));
            }
            Arch::GptOss => {
                if let Some(w) = self.sliding_window {
                    out.push((k("attention.sliding_window"), u32v(w)));
                }
            }
            Arch::Deepseek2 => {
                if let Some(mla) = &self.mla {
                    out.extend(mla.gguf_keys(self.arch, self.n_vocab));
                }
            }
            Arch::Qwen2 | Arch::Qwen3 | Arch::Olmo2 | Arch::Qwen2Moe | Arch::Qwen3Moe => {}
        }
        if let Some(moe) = &self.moe {
            out.extend(moe.gguf_keys(self.arch));
        }
        out.extend(self.yarn.gguf_keys(
            self.arch,
            matches!(self.rope_scaling, RopeScaling::Yarn { .. }),
        ));
        match &self.rope_scaling {
            RopeScaling::None | RopeScaling::Llama3 { .. } => {}
            RopeScaling::LongRope { attn_factor, .. } => {
                out.push((k("rope.scaling.attn_factor"), MetaValue::F32(*attn_factor)));
            }
            RopeScaling::Linear { factor } => {
                out.push((k("rope.scaling.type"), MetaValue::String("linear".into())));
                out.push((k("rope.scaling.factor"), f32v(*factor)));
            }
            RopeScaling::Yarn {
                factor,
                original_context,
            } => {
                out.push((k("rope.scaling.type"), MetaValue::String("yarn".into())));
                out.push((k("rope.scaling.factor"), f32v(*factor)));
                out.push((
                    k("rope.scaling.original_context_length"),
                    u32v(*original_context),
                ));
            }
        }
        out
    }

    /// Llama 3 RoPE scaling as llama.cpp stores it: one factor per rotary frequency, by which
    /// ggml divides that frequency (`rope_freqs.weight`). Computed in f32 as the reference
    /// converter does, so the tensor is bit-identical to llama.cpp's.
    pub fn rope_freqs(&self) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } = self.rope_scaling
        else {
            return None;
        };
        let dim = self.head_dim as usize;
        let base = self.rope_theta as f32;
        let factor = factor as f32;
        let (lf, hf) = (low_freq_factor as f32, high_freq_factor as f32);
        let old = original_context as f32;
        let low_wavelen = old / lf;
        let high_wavelen = old / hf;
        let mut out = Vec::with_capacity(dim / 2);
        for i in (0..dim).step_by(2) {
            let freq = 1.0 / base.powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - lf) / (hf - lf);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            out.push(f);
        }
        Some(out)
    }

    /// Phi-3 LongRoPE factors as llama.cpp stores them: (`rope_factors_long.weight`,
    /// `rope_factors_short.weight`).
    pub fn longrope_factors(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        match &self.rope_scaling {
            RopeScaling::LongRope { short, long, .. } => Some((long.clone(), short.clone())),
            _ => None,
        }
    }

    /// The KV head count a GGUF file states: DeepSeek's MLA is stored as one shared latent
    /// head (llama.cpp's class writes 1).
    pub fn gguf_n_head_kv(&self) -> u64 {
        if self.arch == Arch::Deepseek2 {
            1
        } else {
            self.n_head_kv
        }
    }

    /// Rows of q (per head) and k (per KV head) for the permutation.
    pub fn q_rows(&self) -> u64 {
        self.n_head * self.head_dim
    }

    pub fn kv_rows(&self) -> u64 {
        self.n_head_kv * self.head_dim
    }
}

fn rope_scaling(
    s: &Map<String, Value>,
    cfg: &Map<String, Value>,
    n_ctx: u64,
    arch: Arch,
    path: &Path,
) -> Result<RopeScaling, ConvertError> {
    let kind = get(s, "rope_type")
        .or_else(|| get(s, "type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = get_f64(s, "factor");
    let original = get_u64(s, "original_max_position_embeddings")
        .or_else(|| get_u64(cfg, "original_max_position_embeddings"));
    let need_factor = |kind: &str| {
        factor.ok_or_else(|| {
            ConvertError::config(path, format!("RoPE scaling `{kind}` has no `factor`"))
        })
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need_factor(kind)?,
        },
        "yarn" => RopeScaling::Yarn {
            factor: need_factor(kind)?,
            original_context: original.unwrap_or(n_ctx),
        },
        "llama3" => {
            let lf = get_f64(s, "low_freq_factor").unwrap_or(1.0);
            let hf = get_f64(s, "high_freq_factor").unwrap_or(4.0);
            if lf == hf {
                return Err(ConvertError::config(
                    path,
                    "llama3 RoPE scaling has `low_freq_factor` equal to `high_freq_factor`",
                ));
            }
            RopeScaling::Llama3 {
                factor: factor.unwrap_or(8.0),
                low_freq_factor: lf,
                high_freq_factor: hf,
                original_context: original.unwrap_or(8192),
            }
        }
        "longrope" | "su" if arch == Arch::Phi3 => {
            let factors = |key: &str| -> Result<Option<Vec<f32>>, ConvertError> {
                match get(s, key) {
                    None => Ok(None),
                    Some(Value::Array(items)) if items.is_empty() => Ok(None),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| {
                            v.as_f64().filter(|x| x.is_finite()).map(|x| x as f32).ok_or_else(|| {
                                ConvertError::config(path, format!("LongRoPE `{key}` holds {v}, not a number"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some),
                    Some(v) => Err(ConvertError::config(path, format!("LongRoPE `{key}` is {v}, not a list"))),
                }
            };
            // llama.cpp writes the factors only when a long factor list exists.
            let Some(long) = factors("long_factor")? else {
                return Ok(RopeScaling::None);
            };
            let short = factors("short_factor")?.ok_or_else(|| {
                ConvertError::config(path, "LongRoPE has `long_factor` but no `short_factor`")
            })?;
            let original = original.ok_or_else(|| {
                ConvertError::config(path, "LongRoPE needs `original_max_position_embeddings`")
            })?;
            let scale = n_ctx as f64 / original as f64;
            let attn_factor = if scale > 1.0 {
                (1.0 + scale.ln() / (original as f64).ln()).sqrt()
            } else {
                1.0
            };
            RopeScaling::LongRope {
                short,
                long,
                attn_factor: attn_factor as f32,
            }
        }
        other => {
            return Err(ConvertError::config(
                path,
                format!("RoPE scaling type `{other}` is not supported (supported: default, linear, yarn, llama3, longrope for Phi-3)"),
            ))
        }
    })
}

/// What to do with a tensor's rows on the way through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowMap {
    Identity,
    /// Hugging Face rotate-half → ggml interleaved, within each head of `head_dim` rows.
    ToInterleaved {
        head_dim: u64,
    },
    /// The inverse: ggml interleaved → Hugging Face rotate-half.
    ToRotateHalf {
        head_dim: u64,
    },
}

impl RowMap {
    /// The source row that output row `r` comes from.
    pub fn source_row(self, r: u64) -> u64 {
        match self {
            RowMap::Identity => r,
            RowMap::ToInterleaved { head_dim } => {
                // Output row 2j+s of a head comes from row s*half+j of the same head.
                let (h, i) = (r / head_dim, r % head_dim);
                let half = head_dim / 2;
                h * head_dim + (i % 2) * half + i / 2
            }
            RowMap::ToRotateHalf { head_dim } => {
                let (h, i) = (r / head_dim, r % head_dim);
                let half = head_dim / 2;
                h * head_dim + 2 * (i % half) + i / half
            }
        }
    }
}

/// The role of a tensor in a dense decoder, independent of naming scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    TokenEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    AttnQNorm,
    AttnKNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Gemma and OLMo 2: the norm applied to the attention output.
    PostAttnNorm,
    /// Gemma and OLMo 2: the norm applied to the feed-forward output.
    PostFfwNorm,
    /// Phi-3: q, k and v in one matrix (rows q, then k, then v).
    AttnQkv,
    /// Phi-3: gate and up in one matrix (rows gate, then up), stored as `ffn_up`.
    FfnGateUp,
    /// The router of a mixture of experts.
    FfnGateInp,
    /// Routed experts stacked into one 3-D tensor each (`[experts, rows, columns]`).
    FfnGateExps,
    FfnUpExps,
    FfnDownExps,
    /// The shared expert (Qwen2-MoE, DeepSeek).
    FfnGateShexp,
    FfnUpShexp,
    FfnDownShexp,
    /// Qwen2-MoE: the shared expert's sigmoid gate.
    FfnGateInpShexp,
    /// DeepSeek-V3: the selection-only router bias (`e_score_correction_bias`).
    ExpProbsB,
    /// gpt-oss: one attention-sink logit per head.
    AttnSinks,
    /// DeepSeek MLA: q down-projection, its norm, q up-projection.
    AttnQA,
    AttnQANorm,
    AttnQB,
    /// DeepSeek MLA: the joint kv down-projection (with the shared rotary key) and its norm.
    AttnKvAMqa,
    AttnKvANorm,
    /// DeepSeek MLA: `kv_b_proj` split per head into k (transposed) and v.
    AttnKB,
    AttnVB,
}

impl Role {
    /// An RMS norm weight (Gemma stores these as offsets from 1).
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Role::OutputNorm
                | Role::AttnNorm
                | Role::FfnNorm
                | Role::PostAttnNorm
                | Role::PostFfwNorm
                | Role::AttnQNorm
                | Role::AttnKNorm
                | Role::AttnQANorm
                | Role::AttnKvANorm
        )
    }

    /// A stacked expert tensor.
    pub fn is_experts(self) -> bool {
        matches!(
            self,
            Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps
        )
    }
}

/// (role, Hugging Face suffix inside `model.layers.N.`, GGUF name inside `blk.N.`)
type Names = &'static [(Role, &'static str, &'static str)];

// Each family's layer names are a few shared parts plus its own rows; a lookup searches the
// parts in order (no Hugging Face or GGUF name is claimed by two parts of one family except
// the stacked experts and MLA's split `kv_b_proj`, which the lookups tell apart by role).

/// Llama's norms: before attention, and before the feed-forward (`post_attention_layernorm`).
const PRE_NORMS: Names = &[
    (Role::AttnNorm, "input_layernorm", "attn_norm"),
    (Role::FfnNorm, "post_attention_layernorm", "ffn_norm"),
];

/// Separate q/k/v projections and the output projection.
const ATTN: Names = &[
    (Role::AttnQ, "self_attn.q_proj", "attn_q"),
    (Role::AttnK, "self_attn.k_proj", "attn_k"),
    (Role::AttnV, "self_attn.v_proj", "attn_v"),
    (Role::AttnOutput, "self_attn.o_proj", "attn_output"),
];

/// Per-head (or OLMo 2's full-width) q/k norms.
const QK_NORMS: Names = &[
    (Role::AttnQNorm, "self_attn.q_norm", "attn_q_norm"),
    (Role::AttnKNorm, "self_attn.k_norm", "attn_k_norm"),
];

/// The dense gated feed-forward (also DeepSeek's leading dense layers).
const DENSE_FFN: Names = &[
    (Role::FfnGate, "mlp.gate_proj", "ffn_gate"),
    (Role::FfnUp, "mlp.up_proj", "ffn_up"),
    (Role::FfnDown, "mlp.down_proj", "ffn_down"),
];

/// Gemma's and OLMo 2's norms of the attention and feed-forward outputs.
const POST_NORMS: Names = &[
    (
        Role::PostAttnNorm,
        "post_attention_layernorm",
        "post_attention_norm",
    ),
    (
        Role::PostFfwNorm,
        "post_feedforward_layernorm",
        "post_ffw_norm",
    ),
];

/// Mixtral (as `llama`); transformers 5 also calls the router `mlp.gate` (see `parse_hf`).
const MIXTRAL_MOE: Names = &[
    (Role::FfnGateInp, "block_sparse_moe.gate", "ffn_gate_inp"),
    (
        Role::FfnGateExps,
        "block_sparse_moe.experts",
        "ffn_gate_exps",
    ),
    (Role::FfnUpExps, "block_sparse_moe.experts", "ffn_up_exps"),
    (
        Role::FfnDownExps,
        "block_sparse_moe.experts",
        "ffn_down_exps",
    ),
];

/// Stacked routed experts under `mlp.experts` (Qwen-MoE, DeepSeek, gpt-oss).
const EXPERTS: Names = &[
    (Role::FfnGateExps, "mlp.experts", "ffn_gate_exps"),
    (Role::FfnUpExps, "mlp.experts", "ffn_up_exps"),
    (Role::FfnDownExps, "mlp.experts", "ffn_down_exps"),
];

/// Qwen2-MoE and Qwen3-MoE: router and the (sigmoid-gated) shared expert.
const QWEN_MOE: Names = &[
    (Role::FfnGateInp, "mlp.gate", "ffn_gate_inp"),
    (
        Role::FfnGateShexp,
        "mlp.shared_expert.gate_proj",
        "ffn_gate_shexp",
    ),
    (
        Role::FfnUpShexp,
        "mlp.shared_expert.up_proj",
        "ffn_up_shexp",
    ),
    (
        Role::FfnDownShexp,
        "mlp.shared_expert.down_proj",
        "ffn_down_shexp",
    ),
    (
        Role::FfnGateInpShexp,
        "mlp.shared_expert_gate",
        "ffn_gate_inp_shexp",
    ),
];

/// DeepSeek-V2/V3/R1: MLA projections, router with its selection bias, shared experts.
const DEEPSEEK: Names = &[
    (Role::AttnQ, "self_attn.q_proj", "attn_q"),
    (Role::AttnQA, "self_attn.q_a_proj", "attn_q_a"),
    (Role::AttnQANorm, "self_attn.q_a_layernorm", "attn_q_a_norm"),
    (Role::AttnQB, "self_attn.q_b_proj", "attn_q_b"),
    (
        Role::AttnKvAMqa,
        "self_attn.kv_a_proj_with_mqa",
        "attn_kv_a_mqa",
    ),
    (
        Role::AttnKvANorm,
        "self_attn.kv_a_layernorm",
        "attn_kv_a_norm",
    ),
    (Role::AttnKB, "self_attn.kv_b_proj", "attn_k_b"),
    (Role::AttnVB, "self_attn.kv_b_proj", "attn_v_b"),
    (Role::AttnOutput, "self_attn.o_proj", "attn_output"),
    (Role::FfnGateInp, "mlp.gate", "ffn_gate_inp"),
    (
        Role::ExpProbsB,
        "mlp.gate.e_score_correction_bias",
        "exp_probs_b",
    ),
    (
        Role::FfnGateShexp,
        "mlp.shared_experts.gate_proj",
        "ffn_gate_shexp",
    ),
    (
        Role::FfnUpShexp,
        "mlp.shared_experts.up_proj",
        "ffn_up_shexp",
    ),
    (
        Role::FfnDownShexp,
        "mlp.shared_experts.down_proj",
        "ffn_down_shexp",
    ),
];

/// gpt-oss: attention sinks, the output-side attention norm before the feed-forward, and a
/// router with a bias (biases everywhere, fused experts).
const GPT_OSS: Names = &[
    (Role::AttnNorm, "input_layernorm", "attn_norm"),
    (Role::AttnSinks, "self_attn.sinks", "attn_sinks"),
    (
        Role::PostAttnNorm,
        "post_attention_layernorm",
        "post_attention_norm",
    ),
    (Role::FfnGateInp, "mlp.router", "ffn_gate_inp"),
];

/// Gemma 2 and 3: the norm before attention, and `pre_feedforward_layernorm` before the
/// feed-forward (`post_attention_layernorm` is the attention output's norm here).
const GEMMA: Names = &[
    (Role::AttnNorm, "input_layernorm", "attn_norm"),
    (Role::FfnNorm, "pre_feedforward_layernorm", "ffn_norm"),
];

/// Phi-3: fused q/k/v and fused gate/up, kept fused in both formats.
const PHI3: Names = &[
    (Role::AttnQkv, "self_attn.qkv_proj", "attn_qkv"),
    (Role::AttnOutput, "self_attn.o_proj", "attn_output"),
    (Role::FfnGateUp, "mlp.gate_up_proj", "ffn_up"),
    (Role::FfnDown, "mlp.down_proj", "ffn_down"),
];

/// The parts that name one family's layer tensors.
fn layer_parts(arch: Arch) -> &'static [Names] {
    match arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            &[PRE_NORMS, ATTN, QK_NORMS, DENSE_FFN, MIXTRAL_MOE]
        }
        Arch::Gemma2 | Arch::Gemma3 => &[GEMMA, ATTN, QK_NORMS, POST_NORMS, DENSE_FFN],
        // OLMo 2 has the output-side norms only, none before.
        Arch::Olmo2 => &[ATTN, QK_NORMS, POST_NORMS, DENSE_FFN],
        Arch::Phi3 => &[PRE_NORMS, PHI3],
        Arch::Qwen2Moe | Arch::Qwen3Moe => {
            &[PRE_NORMS, ATTN, QK_NORMS, DENSE_FFN, QWEN_MOE, EXPERTS]
        }
        Arch::Deepseek2 => &[PRE_NORMS, DEEPSEEK, DENSE_FFN, EXPERTS],
        Arch::GptOss => &[GPT_OSS, ATTN, EXPERTS],
    }
}

/// Every layer tensor name of one family.
fn layer_names(arch: Arch) -> impl Iterator<Item = &'static (Role, &'static str, &'static str)> {
    layer_parts(arch).iter().flat_map(|part| part.iter())
}

const GLOBAL_NAMES: Names = &[
    (Role::TokenEmbd, "model.embed_tokens", "token_embd"),
    (Role::OutputNorm, "model.norm", "output_norm"),
    (Role::Output, "lm_head", "output"),
];

/// A tensor name taken apart: role, layer and whether it is the weight or the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub role: Role,
    pub layer: Option<u64>,
    pub bias: bool,
}

fn split_kind(name: &str) -> Option<(&str, bool)> {
    if let Some(s) = name.strip_suffix(".weight") {
        Some((s, false))
    } else {
        name.strip_suffix(".bias").map(|s| (s, true))
    }
}

/// Parse a Hugging Face tensor name. `Ok(None)` for tensors llama.cpp drops (rotary inverse
/// frequencies saved by old transformers versions).
pub fn parse_hf(name: &str, arch: Arch) -> Option<Option<Parsed>> {
    if name.ends_with(".rotary_emb.inv_freq") {
        return Some(None);
    }
    // Tensors whose Hugging Face names carry no `.weight` / `.bias` suffix.
    let special = [
        (".self_attn.sinks", Role::AttnSinks, false),
        (".mlp.gate.e_score_correction_bias", Role::ExpProbsB, true),
    ];
    for (suffix, role, bias) in special {
        if let Some(rest) = name.strip_suffix(suffix) {
            let layer: u64 = rest.strip_prefix("model.layers.")?.parse().ok()?;
            layer_names(arch).find(|l| l.0 == role)?;
            return Some(Some(Parsed {
                role,
                layer: Some(layer),
                bias,
            }));
        }
    }
    let (stem, bias) = split_kind(name)?;
    if let Some((role, _, _)) = GLOBAL_NAMES.iter().find(|g| g.1 == stem) {
        return Some(Some(Parsed {
            role: *role,
            layer: None,
            bias,
        }));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (n, suffix) = rest.split_once('.')?;
    let layer: u64 = n.parse().ok()?;
    // transformers 5 names Mixtral's router `mlp.gate`.
    let suffix = if arch == Arch::Llama && suffix == "mlp.gate" {
        "block_sparse_moe.gate"
    } else {
        suffix
    };
    let (role, _, _) = layer_names(arch).find(|l| {
        l.1 == suffix && !l.0.is_experts() && !matches!(l.0, Role::AttnKB | Role::AttnVB)
    })?;
    Some(Some(Parsed {
        role: *role,
        layer: Some(layer),
        bias,
    }))
}

/// Parse a GGUF tensor name (`blk.3.attn_q.weight`). `rope_freqs.weight` is not a weight of
/// the model and parses as `None`.
pub fn parse_gguf(name: &str, arch: Arch) -> Option<Parsed> {
    let (stem, bias) = split_kind(name)?;
    if let Some((role, _, _)) = GLOBAL_NAMES.iter().find(|g| g.2 == stem) {
        return Some(Parsed {
            role: *role,
            layer: None,
            bias,
        });
    }
    let rest = stem.strip_prefix("blk.")?;
    let (n, suffix) = rest.split_once('.')?;
    let layer: u64 = n.parse().ok()?;
    let (role, _, _) = layer_names(arch).find(|l| l.2 == suffix)?;
    Some(Parsed {
        role: *role,
        layer: Some(layer),
        bias,
    })
}

impl Parsed {
    pub fn gguf_name(&self, arch: Arch) -> String {
        let kind = if self.bias { "bias" } else { "weight" };
        match self.layer {
            None => {
                let g = GLOBAL_NAMES.iter().find(|g| g.0 == self.role).map(|g| g.2);
                format!("{}.{kind}", g.unwrap_or("unknown"))
            }
            Some(n) => {
                let l = layer_names(arch).find(|l| l.0 == self.role).map(|l| l.2);
                format!("blk.{n}.{}.{kind}", l.unwrap_or("unknown"))
            }
        }
    }

    pub fn hf_name(&self, arch: Arch) -> String {
        let kind = if self.bias { "bias" } else { "weight" };
        match self.layer {
            None => {
                let g = GLOBAL_NAMES.iter().find(|g| g.0 == self.role).map(|g| g.1);
                format!("{}.{kind}", g.unwrap_or("unknown"))
            }
            Some(n) => {
                let l = layer_names(arch).find(|l| l.0 == self.role).map(|l| l.1);
                match self.role {
                    Role::AttnSinks | Role::ExpProbsB => {
                        format!("model.layers.{n}.{}", l.unwrap_or("unknown"))
                    }
                    _ => format!("model.layers.{n}.{}.{kind}", l.unwrap_or("unknown")),
                }
            }
        }
    }

    /// Whether this tensor may appear in `arch` at all.
    pub fn allowed(&self, h: &HParams) -> bool {
        let moe_layer = match (&h.moe, self.layer) {
            (Some(m), Some(n)) => m.is_moe_layer(n),
            _ => false,
        };
        let shexp = h.moe.as_ref().is_some_and(|m| m.n_ff_shexp.is_some());
        let mla = h.mla.as_ref();
        match self.role {
            Role::AttnQNorm | Role::AttnKNorm => h.arch.has_qk_norm() && !self.bias,
            Role::AttnQ if h.arch == Arch::Deepseek2 => {
                !self.bias && mla.is_some_and(|m| m.q_lora_rank.is_none())
            }
            Role::AttnQA | Role::AttnQANorm | Role::AttnQB => {
                !self.bias && mla.is_some_and(|m| m.q_lora_rank.is_some())
            }
            Role::AttnKvAMqa | Role::AttnKvANorm | Role::AttnKB | Role::AttnVB => {
                !self.bias && mla.is_some()
            }
            Role::AttnQ | Role::AttnK | Role::AttnV => {
                !self.bias || h.attention_bias || matches!(h.arch, Arch::Qwen2 | Arch::Qwen2Moe)
            }
            Role::AttnOutput => !self.bias || h.attention_bias,
            Role::FfnGate | Role::FfnUp | Role::FfnDown => !self.bias && !moe_layer,
            Role::FfnGateInp => moe_layer && (!self.bias || h.arch == Arch::GptOss),
            Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps => {
                moe_layer && (!self.bias || h.arch == Arch::GptOss)
            }
            Role::FfnGateShexp | Role::FfnUpShexp | Role::FfnDownShexp => {
                moe_layer && shexp && !self.bias
            }
            Role::FfnGateInpShexp => moe_layer && shexp && !self.bias && h.arch == Arch::Qwen2Moe,
            Role::ExpProbsB => moe_layer && self.bias,
            _ => !self.bias,
        }
    }

    /// The shape (outermost first, as Hugging Face stores it) the hyper-parameters imply.
    pub fn expected_shape(&self, h: &HParams) -> Vec<u64> {
        let q = h.q_rows();
        let kv = h.kv_rows();
        let n_expert = h.moe.as_ref().map_or(0, |m| m.n_expert);
        let ff_exp = h.moe.as_ref().map_or(0, |m| m.n_ff_exp);
        let ff_sh = h.moe.as_ref().and_then(|m| m.n_ff_shexp).unwrap_or(0);
        let (q_lora, kv_lora, qk_head, qk_rope, qk_nope, v_head) =
            h.mla.as_ref().map_or((0, 0, 0, 0, 0, 0), |m| {
                (
                    m.q_lora_rank.unwrap_or(0),
                    m.kv_lora_rank,
                    m.qk_head(),
                    m.qk_rope,
                    m.qk_nope,
                    m.v_head,
                )
            });
        if self.bias && self.role.is_experts() {
            // gpt-oss: one bias row per expert.
            let rows = if self.role == Role::FfnDownExps {
                h.n_embd
            } else {
                ff_exp
            };
            return vec![n_expert, rows];
        }
        if h.mla.is_some() && matches!(self.role, Role::AttnQ | Role::AttnOutput) {
            return if self.role == Role::AttnQ {
                vec![h.n_head * qk_head, h.n_embd]
            } else {
                vec![h.n_embd, h.n_head * v_head]
            };
        }
        let full = match self.role {
            Role::TokenEmbd | Role::Output => vec![h.n_vocab, h.n_embd],
            Role::OutputNorm
            | Role::AttnNorm
            | Role::FfnNorm
            | Role::PostAttnNorm
            | Role::PostFfwNorm => vec![h.n_embd],
            Role::AttnQ => vec![q, h.n_embd],
            Role::AttnK | Role::AttnV => vec![kv, h.n_embd],
            Role::AttnOutput => vec![h.n_embd, q],
            // OLMo 2 normalises the whole q and k projections, not each head.
            Role::AttnQNorm if h.arch == Arch::Olmo2 => vec![q],
            Role::AttnKNorm if h.arch == Arch::Olmo2 => vec![kv],
            Role::AttnQNorm | Role::AttnKNorm => vec![h.head_dim],
            Role::AttnQkv => vec![q + 2 * kv, h.n_embd],
            Role::FfnGate | Role::FfnUp => vec![h.n_ff, h.n_embd],
            Role::FfnGateUp => vec![2 * h.n_ff, h.n_embd],
            Role::FfnDown => vec![h.n_embd, h.n_ff],
            Role::FfnGateInp => vec![n_expert, h.n_embd],
            Role::FfnGateExps | Role::FfnUpExps => vec![n_expert, ff_exp, h.n_embd],
            Role::FfnDownExps => vec![n_expert, h.n_embd, ff_exp],
            Role::FfnGateShexp | Role::FfnUpShexp => vec![ff_sh, h.n_embd],
            Role::FfnDownShexp => vec![h.n_embd, ff_sh],
            Role::FfnGateInpShexp => vec![1, h.n_embd],
            Role::ExpProbsB => vec![n_expert],
            Role::AttnSinks => vec![h.n_head],
            Role::AttnQA => vec![q_lora, h.n_embd],
            Role::AttnQANorm => vec![q_lora],
            Role::AttnQB => vec![h.n_head * qk_head, q_lora],
            Role::AttnKvAMqa => vec![kv_lora + qk_rope, h.n_embd],
            Role::AttnKvANorm => vec![kv_lora],
            // As llama.cpp stores them: k transposed for the absorbed form.
            Role::AttnKB => vec![h.n_head, kv_lora, qk_nope],
            Role::AttnVB => vec![h.n_head, v_head, kv_lora],
        };
        if self.bias {
            vec![full[0]]
        } else {
            full
        }
    }

    /// What to add to every value on the way (Gemma's norms: +1 to GGUF, -1 back).
    pub fn value_shift(&self, h: &HParams, to_gguf: bool) -> f32 {
        if h.arch.norms_offset_by_one() && self.role.is_norm() && !self.bias {
            if to_gguf {
                1.0
            } else {
                -1.0
            }
        } else {
            0.0
        }
    }

    /// The row permutation for HF → GGUF (`to_gguf`) or back.
    pub fn row_map(&self, h: &HParams, to_gguf: bool) -> RowMap {
        if !h.arch.permutes_qk() || !matches!(self.role, Role::AttnQ | Role::AttnK) {
            return RowMap::Identity;
        }
        if to_gguf {
            RowMap::ToInterleaved {
                head_dim: h.head_dim,
            }
        } else {
            RowMap::ToRotateHalf {
                head_dim: h.head_dim,
            }
        }
    }

    /// A short text for "why this shape": which config values it comes from.
    pub fn shape_reason(&self, h: &HParams) -> String {
        match self.role {
            Role::TokenEmbd | Role::Output => {
                format!("vocab_size {} x hidden_size {}", h.n_vocab, h.n_embd)
            }
            Role::AttnQ | Role::AttnOutput => format!(
                "num_attention_heads {} x head_dim {} and hidden_size {}",
                h.n_head, h.head_dim, h.n_embd
            ),
            Role::AttnK | Role::AttnV => format!(
                "num_key_value_heads {} x head_dim {} and hidden_size {}",
                h.n_head_kv, h.head_dim, h.n_embd
            ),
            Role::AttnQNorm | Role::AttnKNorm if h.arch == Arch::Olmo2 => format!(
                "num_attention_heads {} / num_key_value_heads {} x head_dim {}",
                h.n_head, h.n_head_kv, h.head_dim
            ),
            Role::AttnQNorm | Role::AttnKNorm => format!("head_dim {}", h.head_dim),
            Role::AttnQkv => format!(
                "(num_attention_heads {} + 2 x num_key_value_heads {}) x head_dim {} and hidden_size {}",
                h.n_head, h.n_head_kv, h.head_dim, h.n_embd
            ),
            Role::FfnGateUp => format!(
                "2 x intermediate_size {} and hidden_size {}",
                h.n_ff, h.n_embd
            ),
            Role::FfnGate | Role::FfnUp | Role::FfnDown => {
                format!("intermediate_size {} and hidden_size {}", h.n_ff, h.n_embd)
            }
            Role::FfnGateInp
            | Role::FfnGateExps
            | Role::FfnUpExps
            | Role::FfnDownExps
            | Role::ExpProbsB => {
                let m = h.moe.as_ref();
                format!(
                    "{} experts of width {} and hidden_size {}",
                    m.map_or(0, |m| m.n_expert),
                    m.map_or(0, |m| m.n_ff_exp),
                    h.n_embd
                )
            }
            Role::FfnGateShexp | Role::FfnUpShexp | Role::FfnDownShexp | Role::FfnGateInpShexp => {
                format!(
                    "shared expert width {} and hidden_size {}",
                    h.moe.as_ref().and_then(|m| m.n_ff_shexp).unwrap_or(0),
                    h.n_embd
                )
            }
            Role::AttnSinks => format!("num_attention_heads {}", h.n_head),
            Role::AttnQA
            | Role::AttnQANorm
            | Role::AttnQB
            | Role::AttnKvAMqa
            | Role::AttnKvANorm
            | Role::AttnKB
            | Role::AttnVB => match &h.mla {
                Some(m) => format!(
                    "num_attention_heads {}, q_lora_rank {:?}, kv_lora_rank {}, qk_nope_head_dim {}, qk_rope_head_dim {}, v_head_dim {}",
                    h.n_head, m.q_lora_rank, m.kv_lora_rank, m.qk_nope, m.qk_rope, m.v_head
                ),
                None => "no multi-head latent attention".into(),
            },
            Role::OutputNorm
            | Role::AttnNorm
            | Role::FfnNorm
            | Role::PostAttnNorm
            | Role::PostFfwNorm => {
                format!("hidden_size {}", h.n_embd)
            }
        }
    }
}

/// Every tensor a complete checkpoint of `h` must have (weights, plus q/k/v biases where the
/// architecture has them; the output head unless embeddings are tied).
pub fn required(h: &HParams) -> Vec<Parsed> {
    let mut out = vec![
        Parsed {
            role: Role::TokenEmbd,
            layer: None,
            bias: false,
        },
        Parsed {
            role: Role::OutputNorm,
            layer: None,
            bias: false,
        },
    ];
    if !h.tied_embeddings {
        out.push(Parsed {
            role: Role::Output,
            layer: None,
            bias: false,
        });
    }
    for n in 0..h.n_layer {
        for (role, _, _) in layer_names(h.arch) {
            let p = Parsed {
                role: *role,
                layer: Some(n),
                bias: false,
            };
            // Stacked experts and the split kv_b are checked where they are assembled
            // (`gather`); the router bias is optional (DeepSeek-V2 has none).
            let needed = match role {
                Role::AttnQNorm | Role::AttnKNorm => h.arch.has_qk_norm(),
                Role::FfnGateExps
                | Role::FfnUpExps
                | Role::FfnDownExps
                | Role::AttnKB
                | Role::AttnVB
                | Role::ExpProbsB => false,
                _ => p.allowed(h),
            };
            if needed {
                out.push(Parsed {
                    role: *role,
                    layer: Some(n),
                    bias: false,
                });
            }
        }
        if matches!(h.arch, Arch::Qwen2 | Arch::Qwen2Moe | Arch::GptOss) {
            let mut roles = vec![Role::AttnQ, Role::AttnK, Role::AttnV];
            if h.arch == Arch::GptOss {
                roles.extend([Role::AttnOutput, Role::FfnGateInp]);
            }
            for role in roles {
                out.push(Parsed {
                    role,
                    layer: Some(n),
                    bias: true,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_cfg() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 512,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": false
        })
    }

    #[test]
    fn reads_both_rope_forms() {
        let p = Path::new("config.json");
        let h = HParams::from_config(&llama_cfg(), p).unwrap();
        assert_eq!(h.arch, Arch::Llama);
        assert_eq!(h.head_dim, 16);
        assert_eq!(h.rope_theta, 10000.0);
        assert_eq!(h.rope_scaling, RopeScaling::None);
        let mut c = llama_cfg();
        c["rope_theta"] = Value::Null;
        c["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32});
        let h = HParams::from_config(&c, p).unwrap();
        assert_eq!(h.rope_theta, 500000.0);
        assert!(matches!(
            h.rope_scaling,
            RopeScaling::Llama3 {
                original_context: 32,
                ..
            }
        ));
        let f = h.rope_freqs().unwrap();
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[7], 8.0);
        let mut c = llama_cfg();
        c["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let h = HParams::from_config(&c, p).unwrap();
        assert_eq!(h.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let keys = h.gguf_keys();
        assert!(keys.iter().any(|(k, _)| k == "llama.rope.scaling.type"));
        c["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        assert!(HParams::from_config(&c, p).is_err());
    }

    #[test]
    fn refuses_unknown_architectures_and_bad_values() {
        let p = Path::new("config.json");
        let mut c = llama_cfg();
        c["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = HParams::from_config(&c, p).unwrap_err().to_string();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
        let mut c = llama_cfg();
        c["num_key_value_heads"] = json!(3);
        assert!(HParams::from_config(&c, p).is_err());
        let mut c = llama_cfg();
        c["hidden_size"] = json!("64");
        let e = HParams::from_config(&c, p).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let mut c = llama_cfg();
        c["architectures"] = json!(["MistralForCausalLM"]);
        c["model_type"] = json!("mistral");
        assert_eq!(HParams::from_config(&c, p).unwrap().arch, Arch::Llama);
    }

    #[test]
    fn names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.11.self_attn.k_proj.bias",
            "model.layers.3.mlp.down_proj.weight",
            "model.layers.3.self_attn.q_norm.weight",
            "model.layers.3.post_attention_layernorm.weight",
        ] {
            let a = Arch::Llama;
            let p = parse_hf(hf, a).unwrap().unwrap();
            let g = p.gguf_name(a);
            assert_eq!(parse_gguf(&g, a).unwrap(), p);
            assert_eq!(p.hf_name(a), hf);
        }
        assert_eq!(
            parse_hf("model.layers.0.self_attn.q_proj.weight", Arch::Llama)
                .unwrap()
                .unwrap()
                .gguf_name(Arch::Llama),
            "blk.0.attn_q.weight"
        );
        assert_eq!(
            parse_hf("model.layers.0.self_attn.rotary_emb.inv_freq", Arch::Llama),
            Some(None)
        );
        // Mixtral's router parses, but a dense config does not allow it.
        let gate = parse_hf("model.layers.0.block_sparse_moe.gate.weight", Arch::Llama)
            .unwrap()
            .unwrap();
        assert_eq!(gate.role, Role::FfnGateInp);
        let dense = HParams::from_config(&llama_cfg(), Path::new("config.json")).unwrap();
        assert!(!gate.allowed(&dense));
        assert_eq!(parse_gguf("rope_freqs.weight", Arch::Llama), None);
    }

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // llama.cpp: reshape(n_head, 2, hd/2, ...).swapaxes(1, 2): for head_dim 8 the rows of
        // a head become 0 4 1 5 2 6 3 7.
        let m = RowMap::ToInterleaved { head_dim: 8 };
        let rows: Vec<u64> = (0..16).map(|r| m.source_row(r)).collect();
        assert_eq!(
            rows,
            vec![0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
        );
        let inv = RowMap::ToRotateHalf { head_dim: 8 };
        for r in 0..16 {
            assert_eq!(m.source_row(inv.source_row(r)), r);
            assert_eq!(inv.source_row(m.source_row(r)), r);
        }
    }

    fn key(h: &HParams, k: &str) -> Option<MetaValue> {
        h.gguf_keys()
            .into_iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v)
    }

    fn gemma_cfg(class: &str) -> Value {
        json!({
            "architectures": [class], "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "head_dim": 16, "vocab_size": 512, "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6, "sliding_window": 16, "tie_word_embeddings": true
        })
    }

    #[test]
    fn gemma_keys_follow_llama_cpp_classes() {
        let p = Path::new("config.json");
        let mut c = gemma_cfg("Gemma2ForCausalLM");
        c["attn_logit_softcapping"] = json!(50.0);
        c["final_logit_softcapping"] = json!(30.0);
        let h = HParams::from_config(&c, p).unwrap();
        assert_eq!(h.arch, Arch::Gemma2);
        assert_eq!(
            key(&h, "gemma2.attn_logit_softcapping"),
            Some(MetaValue::F32(50.0))
        );
        assert_eq!(
            key(&h, "gemma2.attention.sliding_window"),
            Some(MetaValue::U32(16))
        );
        assert_eq!(key(&h, "gemma2.rope.freq_base"), None);
        for (field, bad) in [
            ("attn_logit_softcapping", json!(0.0)),
            ("final_logit_softcapping", json!(-1.0)),
            ("final_logit_softcapping", json!("30")),
        ] {
            let mut c2 = c.clone();
            c2[field] = bad;
            let e = HParams::from_config(&c2, p).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        // Gemma 3 in transformers 4's form: global base, local base, linear scaling.
        let mut c = gemma_cfg("Gemma3ForCausalLM");
        c["rope_theta"] = json!(1_000_000.0);
        c["rope_local_base_freq"] = json!(10000.0);
        c["rope_scaling"] = json!({"rope_type": "linear", "factor": 8.0});
        let h = HParams::from_config(&c, p).unwrap();
        assert_eq!(key(&h, "gemma3.rope.freq_base"), Some(MetaValue::F32(1e6)));
        assert_eq!(
            key(&h, "gemma3.rope.freq_base_swa"),
            Some(MetaValue::F32(1e4))
        );
        assert_eq!(
            key(&h, "gemma3.rope.scaling.type"),
            Some(MetaValue::String("linear".into()))
        );
        assert_eq!(
            key(&h, "gemma3.rope.scaling.factor"),
            Some(MetaValue::F32(8.0))
        );
        assert_eq!(key(&h, "gemma3.final_logit_softcapping"), None);
        // ... and in transformers 5's, one set per attention kind.
        let mut c = gemma_cfg("Gemma3ForCausalLM");
        c["rope_parameters"] = json!({
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}});
        let h2 = HParams::from_config(&c, p).unwrap();
        assert_eq!(h2.gguf_keys(), h.gguf_keys());
        c["attn_logit_softcapping"] = json!(50.0);
        assert!(HParams::from_config(&c, p).is_err());
    }

    #[test]
    fn phi3_longrope_and_partial_rotary() {
        let p = Path::new("config.json");
        let c = json!({
            "architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "vocab_size": 512, "max_position_embeddings": 128, "original_max_position_embeddings": 32,
            "partial_rotary_factor": 0.5, "sliding_window": null,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5, 2.0, 2.5],
                             "long_factor": [1.0, 2.0, 3.0, 4.0]}
        });
        let h = HParams::from_config(&c, p).unwrap();
        assert_eq!(h.rope_dims, 8);
        assert_eq!(
            key(&h, "phi3.rope.dimension_count"),
            Some(MetaValue::U32(8))
        );
        assert_eq!(
            key(&h, "phi3.attention.sliding_window"),
            Some(MetaValue::U32(0))
        );
        let want = (1.0f64 + 4.0f64.ln() / 32.0f64.ln()).sqrt() as f32;
        assert_eq!(
            key(&h, "phi3.rope.scaling.attn_factor"),
            Some(MetaValue::F32(want))
        );
        let (long, short) = h.longrope_factors().unwrap();
        assert_eq!((long[3], short[1]), (4.0, 1.5));
        let mut bad = c.clone();
        bad["rope_scaling"]["long_factor"] = json!([1.0]);
        let e = HParams::from_config(&bad, p).unwrap_err().to_string();
        assert!(e.contains("long_factor"), "{e}");
        let mut bad = c.clone();
        bad["original_max_position_embeddings"] = Value::Null;
        assert!(HParams::from_config(&bad, p).is_err());
        // Phi-4: no long factors, no factor tensors, no attention factor.
        let mut c4 = c.clone();
        c4["rope_scaling"] = Value::Null;
        let h4 = HParams::from_config(&c4, p).unwrap();
        assert!(h4.longrope_factors().is_none());
        assert_eq!(key(&h4, "phi3.rope.scaling.attn_factor"), None);
    }

    #[test]
    fn family_names_and_shapes() {
        let p = Path::new("config.json");
        let mut c = gemma_cfg("Gemma2ForCausalLM");
        c["attn_logit_softcapping"] = json!(50.0);
        c["final_logit_softcapping"] = json!(30.0);
        let g = HParams::from_config(&c, p).unwrap();
        let post = parse_hf(
            "model.layers.1.post_attention_layernorm.weight",
            Arch::Gemma2,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            post.gguf_name(Arch::Gemma2),
            "blk.1.post_attention_norm.weight"
        );
        assert_eq!(post.value_shift(&g, true), 1.0);
        assert_eq!(post.value_shift(&g, false), -1.0);
        let llama = parse_hf(
            "model.layers.1.post_attention_layernorm.weight",
            Arch::Llama,
        )
        .unwrap()
        .unwrap();
        assert_eq!(llama.gguf_name(Arch::Llama), "blk.1.ffn_norm.weight");
        let pre = parse_gguf("blk.0.ffn_norm.weight", Arch::Gemma3).unwrap();
        assert_eq!(
            pre.hf_name(Arch::Gemma3),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        let q = parse_hf("model.layers.0.self_attn.q_proj.weight", Arch::Gemma2)
            .unwrap()
            .unwrap();
        assert_eq!(q.value_shift(&g, true), 0.0);
        assert_eq!(q.row_map(&g, true), RowMap::Identity);
        // OLMo 2 has no input norm; Phi-3 keeps its fused tensors under one name each way.
        assert!(parse_hf("model.layers.0.input_layernorm.weight", Arch::Olmo2).is_none());
        let gu = parse_gguf("blk.0.ffn_up.weight", Arch::Phi3).unwrap();
        assert_eq!(gu.role, Role::FfnGateUp);
        assert_eq!(
            gu.hf_name(Arch::Phi3),
            "model.layers.0.mlp.gate_up_proj.weight"
        );
        let phi = HParams::from_config(
            &json!({"architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
                    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
                    "vocab_size": 512, "original_max_position_embeddings": 32}),
            p,
        )
        .unwrap();
        assert_eq!(gu.expected_shape(&phi), vec![256, 64]);
        let qkv = parse_hf("model.layers.0.self_attn.qkv_proj.weight", Arch::Phi3)
            .unwrap()
            .unwrap();
        assert_eq!(qkv.expected_shape(&phi), vec![128, 64]);
        let need: Vec<String> = required(&phi)
            .iter()
            .map(|r| r.gguf_name(Arch::Phi3))
            .collect();
        assert!(need.contains(&"blk.1.attn_qkv.weight".to_owned()));
        assert!(!need.iter().any(|n| n.contains("attn_q.")));
    }
}
