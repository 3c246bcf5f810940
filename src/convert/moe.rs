//! Mixtures of experts and multi-head latent attention in config.json and GGUF keys: the
//! routing hyper-parameters (expert counts, shared experts, gating function, groups,
//! weight scale and normalisation), DeepSeek's MLA ranks and head sizes, and the extra YaRN
//! settings, with the `{arch}.*` keys llama.cpp's converter classes write for them
//! (`MixtralModel` as `llama`, `Qwen2MoeModel`, `Qwen3MoeModel`, `DeepseekV2Model` as
//! `deepseek2`, `GptOssModel` as `gpt-oss`) and the same GGUF value types.
//!
//! How the expert tensors themselves are stacked, split and repacked is in
//! [`super::gather`].

use std::path::Path;

use serde_json::{Map, Value};

use super::arch::Arch;
use super::error::ConvertError;
use crate::formats::gguf::Meta;
use crate::formats::MetaValue;

/// How router scores become probabilities (`expert_gating_func`, ggml's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    Softmax,
    Sigmoid,
    SqrtSoftplus,
}

impl Gating {
    pub fn id(self) -> u32 {
        match self {
            Gating::Softmax => 1,
            Gating::Sigmoid => 2,
            Gating::SqrtSoftplus => 4,
        }
    }

    fn from_id(id: u64) -> Option<Gating> {
        match id {
            1 => Some(Gating::Softmax),
            2 => Some(Gating::Sigmoid),
            4 => Some(Gating::SqrtSoftplus),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Gating::Softmax => "softmax",
            Gating::Sigmoid => "sigmoid",
            Gating::SqrtSoftplus => "sqrtsoftplus",
        }
    }
}

/// The routing of a mixture-of-experts model.
#[derive(Clone, Debug, PartialEq)]
pub struct Moe {
    /// Routed experts per MoE layer.
    pub n_expert: u64,
    /// Experts each token uses.
    pub n_expert_used: u64,
    /// Rows of one routed expert's gate/up projections.
    pub n_ff_exp: u64,
    /// Whether config.json states the expert width under its own key (llama.cpp then writes
    /// `expert_feed_forward_length`).
    pub n_ff_exp_key: bool,
    /// Rows of the shared expert's gate/up projections (Qwen2-MoE's
    /// `shared_expert_intermediate_size`; DeepSeek: `n_shared_experts` x the expert width).
    pub n_ff_shexp: Option<u64>,
    /// DeepSeek's `n_shared_experts`.
    pub n_shared: Option<u64>,
    /// Leading layers with a dense feed-forward instead of experts (DeepSeek's
    /// `first_k_dense_replace`).
    pub leading_dense: u64,
    /// Qwen-MoE's `mlp_only_layers`.
    pub dense_layers: Vec<u64>,
    /// Qwen-MoE's `decoder_sparse_step`.
    pub sparse_step: u64,
    pub gating: Option<Gating>,
    pub n_group: Option<u64>,
    pub topk_group: Option<u64>,
    /// DeepSeek's `routed_scaling_factor`.
    pub weights_scale: Option<f64>,
    /// DeepSeek's `norm_topk_prob` (written only when true, as llama.cpp does).
    pub weights_norm: bool,
}

impl Moe {
    /// Whether layer `n` has experts (else a dense feed-forward).
    pub fn is_moe_layer(&self, n: u64) -> bool {
        n >= self.leading_dense
            && !self.dense_layers.contains(&n)
            && (n + 1).is_multiple_of(self.sparse_step.max(1))
    }
}

/// DeepSeek's multi-head latent attention.
#[derive(Clone, Debug, PartialEq)]
pub struct Mla {
    /// `q_lora_rank`; `None` (DeepSeek-V2-Lite) means one `q_proj`.
    pub q_lora_rank: Option<u64>,
    pub kv_lora_rank: u64,
    pub qk_nope: u64,
    pub qk_rope: u64,
    pub v_head: u64,
}

impl Mla {
    pub fn qk_head(&self) -> u64 {
        self.qk_nope + self.qk_rope
    }
}

/// YaRN settings beyond type, factor and original context.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct YarnExtra {
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub ext_factor: Option<f64>,
    pub attn_factor: Option<f64>,
    /// DeepSeek: 0.1 x `mscale_all_dim` (`rope.scaling.yarn_log_multiplier`).
    pub log_mul: Option<f64>,
}

fn get<'a>(cfg: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

fn uint(cfg: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<u64>, ConvertError> {
    match get(cfg, key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ConvertError::config(
                path,
                format!("`{key}` is {v}, expected a non-negative integer"),
            )
        }),
    }
}

/// The first of `keys` config.json has (llama.cpp's `find_hparam`).
fn first_uint(
    cfg: &Map<String, Value>,
    keys: &[&str],
    path: &Path,
) -> Result<Option<(u64, &'static str)>, ConvertError> {
    for k in keys {
        if let Some(v) = uint(cfg, k, path)? {
            // The key names are static strings of the callers.
            let name: &'static str = match *k {
                "num_local_experts" => "num_local_experts",
                "num_experts" => "num_experts",
                "n_routed_experts" => "n_routed_experts",
                _ => "num_experts_per_tok",
            };
            return Ok(Some((v, name)));
        }
    }
    Ok(None)
}

impl Moe {
    /// Read the routing from config.json for `arch`; `None` for a dense model (a `llama`
    /// config without experts). `n_ff` is `intermediate_size`.
    pub fn from_config(
        cfg: &Map<String, Value>,
        arch: Arch,
        n_ff: u64,
        path: &Path,
    ) -> Result<Option<Moe>, ConvertError> {
        let experts = first_uint(
            cfg,
            &["num_local_experts", "num_experts", "n_routed_experts"],
            path,
        )?;
        let moe_arch = matches!(
            arch,
            Arch::Qwen2Moe | Arch::Qwen3Moe | Arch::Deepseek2 | Arch::GptOss
        );
        let Some((n_expert, expert_key)) = experts else {
            if moe_arch {
                return Err(ConvertError::config(
                    path,
                    "no expert count (`num_experts`, `num_local_experts` or `n_routed_experts`); a mixture-of-experts architecture needs it",
                ));
            }
            return Ok(None);
        };
        if !moe_arch && arch != Arch::Llama {
            return Ok(None);
        }
        if n_expert == 0 {
            return Err(ConvertError::config(path, format!("`{expert_key}` is 0")));
        }
        let n_expert_used = uint(cfg, "num_experts_per_tok", path)?.ok_or_else(|| {
            ConvertError::config(
                path,
                "`num_experts_per_tok` is missing; it says how many experts each token uses",
            )
        })?;
        if n_expert_used == 0 || n_expert_used > n_expert {
            return Err(ConvertError::config(
                path,
                format!("`num_experts_per_tok` is {n_expert_used}, but `{expert_key}` is {n_expert}: a token cannot use more experts than there are"),
            ));
        }
        let moe_ff = uint(cfg, "moe_intermediate_size", path)?;
        let (n_ff_exp, n_ff_exp_key) = match (arch, moe_ff) {
            (Arch::GptOss, _) => (n_ff, true),
            (_, Some(w)) => (w, true),
            (_, None) => (n_ff, false),
        };
        if n_ff_exp == 0 {
            return Err(ConvertError::config(path, "`moe_intermediate_size` is 0"));
        }
        let n_shared = if arch == Arch::Deepseek2 {
            Some(uint(cfg, "n_shared_experts", path)?.unwrap_or(0))
        } else {
            None
        };
        let n_ff_shexp = match arch {
            Arch::Qwen2Moe => {
                uint(cfg, "shared_expert_intermediate_size", path)?.filter(|&w| w > 0)
            }
            Arch::Deepseek2 => n_shared
                .filter(|&n| n > 0)
                .and_then(|n| n.checked_mul(n_ff_exp)),
            _ => None,
        };
        let gating = match ["score_function", "scoring_func", "score_func"]
            .iter()
            .find_map(|k| get(cfg, k).map(|v| (*k, v)))
        {
            None => None,
            Some((k, v)) => match v.as_str() {
                Some("softmax") => Some(Gating::Softmax),
                Some("sigmoid") => Some(Gating::Sigmoid),
                Some("sqrtsoftplus") => Some(Gating::SqrtSoftplus),
                _ => {
                    return Err(ConvertError::config(
                        path,
                        format!("`{k}` is {v}; llama.cpp knows softmax, sigmoid and sqrtsoftplus"),
                    ))
                }
            },
        };
        let n_group = uint(cfg, "n_group", path)?;
        let topk_group = uint(cfg, "topk_group", path)?;
        if let (Some(g), Some(k)) = (n_group, topk_group) {
            if g == 0 || k > g || !n_expert.is_multiple_of(g) {
                return Err(ConvertError::config(
                    path,
                    format!("`n_group` {g} and `topk_group` {k} do not fit {n_expert} experts"),
                ));
            }
        }
        let leading_dense = if arch == Arch::Deepseek2 {
            uint(cfg, "first_k_dense_replace", path)?.unwrap_or(0)
        } else {
            0
        };
        let dense_layers = match get(cfg, "mlp_only_layers") {
            Some(Value::Array(items)) if matches!(arch, Arch::Qwen2Moe | Arch::Qwen3Moe) => items
                .iter()
                .map(|v| {
                    v.as_u64().ok_or_else(|| {
                        ConvertError::config(path, format!("`mlp_only_layers` holds {v}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        let sparse_step = if matches!(arch, Arch::Qwen2Moe | Arch::Qwen3Moe) {
            uint(cfg, "decoder_sparse_step", path)?.unwrap_or(1).max(1)
        } else {
            1
        };
        let weights_scale = if arch == Arch::Deepseek2 {
            get(cfg, "routed_scaling_factor").and_then(Value::as_f64)
        } else {
            None
        };
        let weights_norm = arch == Arch::Deepseek2
            && get(cfg, "norm_topk_prob")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        Ok(Some(Moe {
            n_expert,
            n_expert_used,
            n_ff_exp,
            n_ff_exp_key,
            n_ff_shexp,
            n_shared,
            leading_dense,
            dense_layers,
            sparse_step,
            gating,
            n_group,
            topk_group,
            weights_scale,
            weights_norm,
        }))
    }

    /// The `{arch}.*` keys of the routing, as llama.cpp's converter class for `arch` writes
    /// them.
    pub fn gguf_keys(&self, arch: Arch) -> Vec<(String, MetaValue)> {
        let a = arch.gguf_name();
        let k = |s: &str| format!("{a}.{s}");
        let u = |v: u64| MetaValue::U32(v as u32);
        let mut out = vec![
            (k("expert_count"), u(self.n_expert)),
            (k("expert_used_count"), u(self.n_expert_used)),
        ];
        if let Some(g) = self.n_group {
            out.push((k("expert_group_count"), u(g)));
        }
        if let Some(g) = self.topk_group {
            out.push((k("expert_group_used_count"), u(g)));
        }
        if let Some(g) = self.gating {
            out.push((k("expert_gating_func"), MetaValue::U32(g.id())));
        }
        match arch {
            Arch::Qwen2Moe | Arch::Qwen3Moe => {
                if self.n_ff_exp_key {
                    out.push((k("expert_feed_forward_length"), u(self.n_ff_exp)));
                }
                if let Some(w) = self.n_ff_shexp {
                    out.push((k("expert_shared_feed_forward_length"), u(w)));
                }
            }
            Arch::Deepseek2 => {
                out.push((k("leading_dense_block_count"), u(self.leading_dense)));
                out.push((k("expert_feed_forward_length"), u(self.n_ff_exp)));
                out.push((k("expert_shared_count"), u(self.n_shared.unwrap_or(0))));
                if let Some(s) = self.weights_scale {
                    out.push((k("expert_weights_scale"), MetaValue::F32(s as f32)));
                }
                if self.weights_norm {
                    out.push((k("expert_weights_norm"), MetaValue::Bool(true)));
                }
            }
            Arch::GptOss => {
                out.push((k("expert_feed_forward_length"), u(self.n_ff_exp)));
            }
            _ => {}
        }
        out
    }

    /// Read the routing back from a GGUF file's keys; `None` without `expert_count`.
    pub fn from_gguf(
        meta: &Meta<'_>,
        arch: Arch,
        n_ff: u64,
        path: &Path,
    ) -> Result<Option<Moe>, ConvertError> {
        let a = arch.gguf_name();
        let bad = |e: crate::formats::gguf::MetaError| ConvertError::config(path, e.to_string());
        let int = |s: &str| meta.u64(&format!("{a}.{s}")).map_err(bad);
        let Some(n_expert) = int("expert_count")?.filter(|&n| n > 0) else {
            return Ok(None);
        };
        let n_expert_used = int("expert_used_count")?.unwrap_or(1);
        if n_expert_used == 0 || n_expert_used > n_expert {
            return Err(ConvertError::config(
                path,
                format!(
                    "`{a}.expert_used_count` is {n_expert_used}, but there are {n_expert} experts"
                ),
            ));
        }
        let ff_key = int("expert_feed_forward_length")?;
        let n_shared = int("expert_shared_count")?;
        let n_ff_exp = ff_key.unwrap_or(n_ff);
        let gating = match int("expert_gating_func")? {
            None => None,
            Some(id) => Some(Gating::from_id(id).ok_or_else(|| {
                ConvertError::config(
                    path,
                    format!("`{a}.expert_gating_func` is {id}, not 1, 2 or 4"),
                )
            })?),
        };
        let n_ff_shexp = match arch {
            Arch::Deepseek2 => n_shared.filter(|&n| n > 0).map(|n| n * n_ff_exp),
            _ => int("expert_shared_feed_forward_length")?,
        };
        Ok(Some(Moe {
            n_expert,
            n_expert_used,
            n_ff_exp,
            n_ff_exp_key: ff_key.is_some(),
            n_ff_shexp,
            n_shared,
            leading_dense: int("leading_dense_block_count")?.unwrap_or(0),
            dense_layers: Vec::new(),
            sparse_step: 1,
            gating,
            n_group: int("expert_group_count")?,
            topk_group: int("expert_group_used_count")?,
            weights_scale: meta
                .f64(&format!("{a}.expert_weights_scale"))
                .map_err(bad)?,
            weights_norm: meta
                .bool(&format!("{a}.expert_weights_norm"))
                .map_err(bad)?
                .unwrap_or(false),
        }))
    }

    /// The config.json fields of the routing, for a Hugging Face directory.
    pub fn config_fields(&self, arch: Arch, c: &mut Map<String, Value>) {
        use serde_json::json;
        c.insert("num_experts_per_tok".into(), json!(self.n_expert_used));
        match arch {
            Arch::Llama | Arch::GptOss => {
                c.insert("num_local_experts".into(), json!(self.n_expert));
            }
            Arch::Qwen2Moe | Arch::Qwen3Moe => {
                c.insert("num_experts".into(), json!(self.n_expert));
                c.insert("moe_intermediate_size".into(), json!(self.n_ff_exp));
                c.insert("norm_topk_prob".into(), json!(arch == Arch::Qwen3Moe));
                if let Some(w) = self.n_ff_shexp {
                    c.insert("shared_expert_intermediate_size".into(), json!(w));
                }
            }
            Arch::Deepseek2 => {
                c.insert("n_routed_experts".into(), json!(self.n_expert));
                c.insert("moe_intermediate_size".into(), json!(self.n_ff_exp));
                c.insert("n_shared_experts".into(), json!(self.n_shared.unwrap_or(0)));
                c.insert("first_k_dense_replace".into(), json!(self.leading_dense));
                c.insert("norm_topk_prob".into(), json!(self.weights_norm));
                c.insert(
                    "routed_scaling_factor".into(),
                    json!(self.weights_scale.unwrap_or(1.0)),
                );
                c.insert("n_group".into(), json!(self.n_group.unwrap_or(1)));
                c.insert("topk_group".into(), json!(self.topk_group.unwrap_or(1)));
                let topk = if self.gating == Some(Gating::Sigmoid) {
                    "noaux_tc"
                } else {
                    "greedy"
                };
                c.insert("topk_method".into(), json!(topk));
            }
            _ => {}
        }
        if let Some(g) = self.gating {
            c.insert("scoring_func".into(), json!(g.name()));
        }
    }
}

impl Mla {
    pub fn from_config(cfg: &Map<String, Value>, path: &Path) -> Result<Mla, ConvertError> {
        let need = |k: &str| -> Result<u64, ConvertError> {
            uint(cfg, k, path)?.filter(|&v| v > 0).ok_or_else(|| {
                ConvertError::config(
                    path,
                    format!("`{k}` is missing or 0; multi-head latent attention needs it"),
                )
            })
        };
        Ok(Mla {
            q_lora_rank: uint(cfg, "q_lora_rank", path)?.filter(|&r| r > 0),
            kv_lora_rank: uint(cfg, "kv_lora_rank", path)?.unwrap_or(512),
            qk_nope: need("qk_nope_head_dim")?,
            qk_rope: need("qk_rope_head_dim")?,
            v_head: need("v_head_dim")?,
        })
    }

    pub fn gguf_keys(&self, arch: Arch, n_vocab: u64) -> Vec<(String, MetaValue)> {
        let a = arch.gguf_name();
        let k = |s: &str| format!("{a}.{s}");
        let u = |v: u64| MetaValue::U32(v as u32);
        let mut out = vec![(k("vocab_size"), u(n_vocab))];
        if let Some(r) = self.q_lora_rank {
            out.push((k("attention.q_lora_rank"), u(r)));
        }
        out.extend([
            (k("attention.kv_lora_rank"), u(self.kv_lora_rank)),
            (
                k("attention.key_length"),
                u(self.kv_lora_rank + self.qk_rope),
            ),
            (k("attention.value_length"), u(self.kv_lora_rank)),
            (k("attention.key_length_mla"), u(self.qk_head())),
            (k("attention.value_length_mla"), u(self.v_head)),
            (k("rope.dimension_count"), u(self.qk_rope)),
        ]);
        out
    }

    pub fn from_gguf(meta: &Meta<'_>, arch: Arch, path: &Path) -> Result<Mla, ConvertError> {
        let a = arch.gguf_name();
        let bad = |e: crate::formats::gguf::MetaError| ConvertError::config(path, e.to_string());
        let need = |s: &str| -> Result<u64, ConvertError> {
            meta.u64(&format!("{a}.{s}"))
                .map_err(bad)?
                .ok_or_else(|| ConvertError::config(path, format!("`{a}.{s}` is missing")))
        };
        let kv_lora_rank = need("attention.kv_lora_rank")?;
        let qk_rope = need("rope.dimension_count")?;
        let qk_head = need("attention.key_length_mla")?;
        let qk_nope = qk_head.checked_sub(qk_rope).filter(|&n| n > 0).ok_or_else(|| {
            ConvertError::config(path, format!("`{a}.attention.key_length_mla` {qk_head} leaves no room beside {qk_rope} rotary dimensions"))
        })?;
        Ok(Mla {
            q_lora_rank: meta
                .u64(&format!("{a}.attention.q_lora_rank"))
                .map_err(bad)?,
            kv_lora_rank,
            qk_nope,
            qk_rope,
            v_head: need("attention.value_length_mla")?,
        })
    }
}

impl YarnExtra {
    pub fn from_params(p: &Map<String, Value>, arch: Arch) -> YarnExtra {
        let f = |k: &str| get(p, k).and_then(Value::as_f64);
        YarnExtra {
            beta_fast: f("beta_fast"),
            beta_slow: f("beta_slow"),
            ext_factor: f("extrapolation_factor"),
            attn_factor: f("attention_factor").or_else(|| f("attn_factor")),
            log_mul: if arch == Arch::Deepseek2 {
                f("mscale_all_dim").map(|m| 0.1 * m)
            } else {
                None
            },
        }
    }

    pub fn gguf_keys(&self, arch: Arch, yarn: bool) -> Vec<(String, MetaValue)> {
        let a = arch.gguf_name();
        let mut out = Vec::new();
        let mut push = |s: &str, v: Option<f64>| {
            if let Some(v) = v {
                out.push((format!("{a}.rope.scaling.{s}"), MetaValue::F32(v as f32)));
            }
        };
        if yarn {
            push("yarn_ext_factor", self.ext_factor);
            push("yarn_attn_factor", self.attn_factor);
            push("yarn_beta_fast", self.beta_fast);
            push("yarn_beta_slow", self.beta_slow);
        }
        // DeepSeek's class writes the multiplier whenever the RoPE settings have
        // `mscale_all_dim`, whatever the scaling type.
        push("yarn_log_multiplier", self.log_mul);
        out
    }

    pub fn from_gguf(meta: &Meta<'_>, arch: Arch, path: &Path) -> Result<YarnExtra, ConvertError> {
        let a = arch.gguf_name();
        let f = |s: &str| {
            meta.f64(&format!("{a}.rope.scaling.{s}"))
                .map_err(|e| ConvertError::config(path, e.to_string()))
        };
        Ok(YarnExtra {
            beta_fast: f("yarn_beta_fast")?,
            beta_slow: f("yarn_beta_slow")?,
            ext_factor: f("yarn_ext_factor")?,
            attn_factor: f("yarn_attn_factor")?,
            log_mul: f("yarn_log_multiplier")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn routing_reads_llama_cpp_keys_and_refuses_bad_values() {
        let p = Path::new("config.json");
        let c = cfg(
            json!({"n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "n_shared_experts": 1, "first_k_dense_replace": 1, "scoring_func": "sigmoid",
            "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": true}),
        );
        let m = Moe::from_config(&c, Arch::Deepseek2, 64, p)
            .unwrap()
            .unwrap();
        assert_eq!((m.n_ff_shexp, m.gating), (Some(16), Some(Gating::Sigmoid)));
        assert!(!m.is_moe_layer(0) && m.is_moe_layer(1));
        let keys = m.gguf_keys(Arch::Deepseek2);
        assert!(keys.contains(&("deepseek2.expert_gating_func".into(), MetaValue::U32(2))));
        assert!(keys.contains(&(
            "deepseek2.expert_weights_norm".into(),
            MetaValue::Bool(true)
        )));
        for (k, v, needle) in [
            ("scoring_func", json!("tanh"), "scoring_func"),
            ("num_experts_per_tok", json!(9), "num_experts_per_tok"),
            ("n_group", json!(3), "n_group"),
        ] {
            let mut bad = c.clone();
            bad.insert(k.into(), v);
            let e = Moe::from_config(&bad, Arch::Deepseek2, 64, p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        // A dense Llama config has no routing; a MoE architecture without experts is refused.
        assert!(Moe::from_config(&cfg(json!({})), Arch::Llama, 64, p)
            .unwrap()
            .is_none());
        assert!(Moe::from_config(&cfg(json!({})), Arch::Qwen3Moe, 64, p).is_err());
    }
}
