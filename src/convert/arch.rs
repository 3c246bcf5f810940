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
use crate::formats::MetaValue;

/// A GGUF architecture modelgate writes and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
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
        }
    }
}

/// Names accepted from config.json, for error messages.
pub const SUPPORTED: &str =
    "LlamaForCausalLM (llama, SmolLM), MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

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
            ("LlamaForCausalLM" | "LLaMAForCausalLM" | "MistralForCausalLM", _) => Arch::Llama,
            ("Qwen2ForCausalLM", _) => Arch::Qwen2,
            ("Qwen3ForCausalLM", _) => Arch::Qwen3,
            ("", "llama" | "mistral") => Arch::Llama,
            ("", "qwen2") => Arch::Qwen2,
            ("", "qwen3") => Arch::Qwen3,
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
        let n_ctx = get_u64(cfg, "max_position_embeddings").unwrap_or(2048);
        let rms_eps = get_f64(cfg, "rms_norm_eps").unwrap_or(1e-6);
        // transformers 5 puts RoPE settings under `rope_parameters`; older configs have
        // `rope_theta` and `rope_scaling` at the top level. Both occur in real models.
        let rope_params = get(cfg, "rope_parameters").and_then(Value::as_object);
        let rope_theta = rope_params
            .and_then(|p| get_f64(p, "rope_theta"))
            .or_else(|| get_f64(cfg, "rope_theta"))
            .unwrap_or(10000.0);
        let scaling = get(cfg, "rope_scaling")
            .and_then(Value::as_object)
            .or(rope_params);
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => rope_scaling(s, cfg, n_ctx, path)?,
        };
        let tied_embeddings = get(cfg, "tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let attention_bias = get(cfg, "attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(arch == Arch::Qwen2);
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
        })
    }

    /// The GGUF `{arch}.*` keys (and nothing else), in llama.cpp's meaning.
    pub fn gguf_keys(&self) -> Vec<(String, MetaValue)> {
        let a = self.arch.gguf_name();
        let k = |s: &str| format!("{a}.{s}");
        let mut out = vec![
            (k("block_count"), MetaValue::U32(self.n_layer as u32)),
            (k("context_length"), MetaValue::U32(self.n_ctx as u32)),
            (k("embedding_length"), MetaValue::U32(self.n_embd as u32)),
            (k("feed_forward_length"), MetaValue::U32(self.n_ff as u32)),
            (
                k("attention.head_count"),
                MetaValue::U32(self.n_head as u32),
            ),
            (
                k("attention.head_count_kv"),
                MetaValue::U32(self.n_head_kv as u32),
            ),
            (k("rope.freq_base"), MetaValue::F32(self.rope_theta as f32)),
            (
                k("attention.layer_norm_rms_epsilon"),
                MetaValue::F32(self.rms_eps as f32),
            ),
        ];
        if self.head_dim_explicit {
            out.push((
                k("attention.key_length"),
                MetaValue::U32(self.head_dim as u32),
            ));
            out.push((
                k("attention.value_length"),
                MetaValue::U32(self.head_dim as u32),
            ));
        }
        if self.arch == Arch::Llama {
            out.push((k("vocab_size"), MetaValue::U32(self.n_vocab as u32)));
            out.push((
                k("rope.dimension_count"),
                MetaValue::U32(self.head_dim as u32),
            ));
        }
        match self.rope_scaling {
            RopeScaling::None | RopeScaling::Llama3 { .. } => {}
            RopeScaling::Linear { factor } => {
                out.push((k("rope.scaling.type"), MetaValue::String("linear".into())));
                out.push((k("rope.scaling.factor"), MetaValue::F32(factor as f32)));
            }
            RopeScaling::Yarn {
                factor,
                original_context,
            } => {
                out.push((k("rope.scaling.type"), MetaValue::String("yarn".into())));
                out.push((k("rope.scaling.factor"), MetaValue::F32(factor as f32)));
                out.push((
                    k("rope.scaling.original_context_length"),
                    MetaValue::U32(original_context as u32),
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
        other => {
            return Err(ConvertError::config(
                path,
                format!("RoPE scaling type `{other}` is not supported (supported: default, linear, yarn, llama3)"),
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
}

/// (role, Hugging Face suffix inside `model.layers.N.`, GGUF name inside `blk.N.`)
const LAYER_NAMES: &[(Role, &str, &str)] = &[
    (Role::AttnNorm, "input_layernorm", "attn_norm"),
    (Role::AttnQ, "self_attn.q_proj", "attn_q"),
    (Role::AttnK, "self_attn.k_proj", "attn_k"),
    (Role::AttnV, "self_attn.v_proj", "attn_v"),
    (Role::AttnOutput, "self_attn.o_proj", "attn_output"),
    (Role::AttnQNorm, "self_attn.q_norm", "attn_q_norm"),
    (Role::AttnKNorm, "self_attn.k_norm", "attn_k_norm"),
    (Role::FfnNorm, "post_attention_layernorm", "ffn_norm"),
    (Role::FfnGate, "mlp.gate_proj", "ffn_gate"),
    (Role::FfnUp, "mlp.up_proj", "ffn_up"),
    (Role::FfnDown, "mlp.down_proj", "ffn_down"),
];

const GLOBAL_NAMES: &[(Role, &str, &str)] = &[
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
pub fn parse_hf(name: &str) -> Option<Option<Parsed>> {
    if name.ends_with(".rotary_emb.inv_freq") {
        return Some(None);
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
    let (role, _, _) = LAYER_NAMES.iter().find(|l| l.1 == suffix)?;
    Some(Some(Parsed {
        role: *role,
        layer: Some(layer),
        bias,
    }))
}

/// Parse a GGUF tensor name (`blk.3.attn_q.weight`). `rope_freqs.weight` is not a weight of
/// the model and parses as `None`.
pub fn parse_gguf(name: &str) -> Option<Parsed> {
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
    let (role, _, _) = LAYER_NAMES.iter().find(|l| l.2 == suffix)?;
    Some(Parsed {
        role: *role,
        layer: Some(layer),
        bias,
    })
}

impl Parsed {
    pub fn gguf_name(&self) -> String {
        let kind = if self.bias { "bias" } else { "weight" };
        match self.layer {
            None => {
                let g = GLOBAL_NAMES.iter().find(|g| g.0 == self.role).map(|g| g.2);
                format!("{}.{kind}", g.unwrap_or("unknown"))
            }
            Some(n) => {
                let l = LAYER_NAMES.iter().find(|l| l.0 == self.role).map(|l| l.2);
                format!("blk.{n}.{}.{kind}", l.unwrap_or("unknown"))
            }
        }
    }

    pub fn hf_name(&self) -> String {
        let kind = if self.bias { "bias" } else { "weight" };
        match self.layer {
            None => {
                let g = GLOBAL_NAMES.iter().find(|g| g.0 == self.role).map(|g| g.1);
                format!("{}.{kind}", g.unwrap_or("unknown"))
            }
            Some(n) => {
                let l = LAYER_NAMES.iter().find(|l| l.0 == self.role).map(|l| l.1);
                format!("model.layers.{n}.{}.{kind}", l.unwrap_or("unknown"))
            }
        }
    }

    /// Whether this tensor may appear in `arch` at all.
    pub fn allowed(&self, h: &HParams) -> bool {
        match self.role {
            Role::AttnQNorm | Role::AttnKNorm => h.arch == Arch::Qwen3 && !self.bias,
            Role::AttnQ | Role::AttnK | Role::AttnV => {
                !self.bias || h.attention_bias || h.arch == Arch::Qwen2
            }
            Role::AttnOutput => !self.bias || h.attention_bias,
            _ => !self.bias,
        }
    }

    /// The shape (outermost first, as Hugging Face stores it) the hyper-parameters imply.
    pub fn expected_shape(&self, h: &HParams) -> Vec<u64> {
        let q = h.q_rows();
        let kv = h.kv_rows();
        let full = match self.role {
            Role::TokenEmbd | Role::Output => vec![h.n_vocab, h.n_embd],
            Role::OutputNorm | Role::AttnNorm | Role::FfnNorm => vec![h.n_embd],
            Role::AttnQ => vec![q, h.n_embd],
            Role::AttnK | Role::AttnV => vec![kv, h.n_embd],
            Role::AttnOutput => vec![h.n_embd, q],
            Role::AttnQNorm | Role::AttnKNorm => vec![h.head_dim],
            Role::FfnGate | Role::FfnUp => vec![h.n_ff, h.n_embd],
            Role::FfnDown => vec![h.n_embd, h.n_ff],
        };
        if self.bias {
            vec![full[0]]
        } else {
            full
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
            Role::AttnQNorm | Role::AttnKNorm => format!("head_dim {}", h.head_dim),
            Role::FfnGate | Role::FfnUp | Role::FfnDown => {
                format!("intermediate_size {} and hidden_size {}", h.n_ff, h.n_embd)
            }
            Role::OutputNorm | Role::AttnNorm | Role::FfnNorm => {
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
        for (role, _, _) in LAYER_NAMES {
            let needed = match role {
                Role::AttnQNorm | Role::AttnKNorm => h.arch == Arch::Qwen3,
                _ => true,
            };
            if needed {
                out.push(Parsed {
                    role: *role,
                    layer: Some(n),
                    bias: false,
                });
            }
        }
        if h.arch == Arch::Qwen2 {
            for role in [Role::AttnQ, Role::AttnK, Role::AttnV] {
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
            let p = parse_hf(hf).unwrap().unwrap();
            let g = p.gguf_name();
            assert_eq!(parse_gguf(&g).unwrap(), p);
            assert_eq!(p.hf_name(), hf);
        }
        assert_eq!(
            parse_hf("model.layers.0.self_attn.q_proj.weight")
                .unwrap()
                .unwrap()
                .gguf_name(),
            "blk.0.attn_q.weight"
        );
        assert_eq!(
            parse_hf("model.layers.0.self_attn.rotary_emb.inv_freq"),
            Some(None)
        );
        assert_eq!(
            parse_hf("model.layers.0.block_sparse_moe.gate.weight"),
            None
        );
        assert_eq!(parse_gguf("rope_freqs.weight"), None);
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
}
