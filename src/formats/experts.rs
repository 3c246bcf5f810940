//! Mixture-of-experts facts of a checkpoint: how many experts a layer routes between, how
//! many a token uses, shared experts, dense leading layers, and the parameters a token
//! actually touches ("active") beside the total.
//!
//! Shared by `inspect`, the BOM and the convert stage's quantization rules, so it sits
//! below the stages. The counts come from GGUF metadata (`{arch}.expert_count`, ...) or a
//! Hugging Face `config.json` (whose key names differ by family); the parameter split comes
//! from the tensor table, so it holds whatever the metadata says: a routed expert tensor
//! counts `used / count` towards the active parameters, everything else (attention,
//! embeddings, routers, shared experts, the dense leading layers) counts in full.

use serde::Serialize;
use serde_json::Value;

use super::{MetaValue, TensorInfo};

/// The experts of a mixture-of-experts model (all zero for a dense model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Experts {
    /// Routed experts per MoE layer.
    pub count: u64,
    /// Routed experts each token uses.
    pub used: u64,
    /// Experts every token goes through (DeepSeek's `n_shared_experts`, Qwen2-MoE's one
    /// gated shared expert).
    pub shared: u64,
    /// Dense (non-MoE) layers before the first MoE layer (DeepSeek's
    /// `first_k_dense_replace`).
    pub leading_dense: u64,
}

/// Total and active parameters, counted from the tensor table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ParamSplit {
    pub total: u64,
    /// Parameters one token uses: everything but the routed experts, plus `used / count`
    /// of the routed experts' parameters.
    pub active: u64,
    /// Parameters in routed expert tensors.
    pub routed: u64,
}

fn u(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

impl Experts {
    /// Whether the model routes between experts at all.
    pub fn is_moe(&self) -> bool {
        self.count > 1
    }

    /// From a Hugging Face `config.json` (or its `text_config`). Mixtral, gpt-oss and
    /// transformers 5's Qwen-MoE say `num_local_experts`; Qwen2/3-MoE `num_experts`;
    /// DeepSeek `n_routed_experts`. Qwen2-MoE has one shared expert when it declares
    /// `shared_expert_intermediate_size`.
    pub fn from_config(cfg: &Value) -> Experts {
        let cfg = match cfg.get("text_config") {
            Some(t) if t.is_object() && cfg.get("num_experts_per_tok").is_none() => t,
            _ => cfg,
        };
        let count = u(cfg.get("num_local_experts"))
            .or_else(|| u(cfg.get("num_experts")))
            .or_else(|| u(cfg.get("n_routed_experts")))
            .unwrap_or(0);
        if count == 0 {
            return Experts::default();
        }
        let used = u(cfg.get("num_experts_per_tok"))
            .or_else(|| u(cfg.get("experts_per_token")))
            .unwrap_or(0);
        let shared = u(cfg.get("n_shared_experts")).unwrap_or_else(|| {
            u64::from(u(cfg.get("shared_expert_intermediate_size")).is_some_and(|n| n > 0))
        });
        let leading_dense = u(cfg.get("first_k_dense_replace")).unwrap_or(0);
        Experts {
            count,
            used,
            shared,
            leading_dense,
        }
    }

    /// The experts of an opened checkpoint and where they were read: `config.json` of a
    /// model directory first (as for the other hyper-parameters), then GGUF metadata.
    pub fn of(ckpt: &super::Checkpoint) -> (Experts, &'static str) {
        Experts::from_sources(
            ckpt.dir.as_ref().and_then(|d| d.config.as_ref()),
            &ckpt.weights.metadata,
        )
    }

    /// [`Experts::of`] from the parts: a `config.json` and GGUF metadata.
    pub fn from_sources(
        config: Option<&Value>,
        meta: &[(String, MetaValue)],
    ) -> (Experts, &'static str) {
        match config.map(Experts::from_config).filter(Experts::is_moe) {
            Some(e) => (e, "config.json"),
            None => (Experts::from_gguf(meta), "gguf"),
        }
    }

    /// From GGUF metadata: `{arch}.expert_count`, `expert_used_count`,
    /// `expert_shared_count` and `leading_dense_block_count`.
    pub fn from_gguf(meta: &[(String, MetaValue)]) -> Experts {
        let arch = meta.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("general.architecture", MetaValue::String(s)) => Some(s.as_str()),
            _ => None,
        });
        let Some(arch) = arch else {
            return Experts::default();
        };
        let get = |suffix: &str| {
            let key = format!("{arch}.{suffix}");
            meta.iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.as_u64())
                .unwrap_or(0)
        };
        let count = get("expert_count");
        if count == 0 {
            return Experts::default();
        }
        Experts {
            count,
            used: get("expert_used_count"),
            shared: get("expert_shared_count"),
            leading_dense: get("leading_dense_block_count"),
        }
    }
}

/// Whether a tensor holds routed experts: GGUF's stacked `*_exps` tensors, or Hugging
/// Face's `….experts.…` (per-expert `experts.E.w1` or fused `experts.gate_up_proj`);
/// shared experts (`_shexp`, `shared_expert(s)`) are not routed.
pub fn is_routed_expert(name: &str) -> bool {
    name.contains("_exps.") || name.contains(".experts.")
}

/// Parameters a tensor stands for. Hugging Face's MXFP4 layout stores two values per byte
/// in `*_blocks` and one scale per 32 values in `*_scales` (not parameters).
fn tensor_params(t: &TensorInfo) -> u64 {
    let name = t.name.as_str();
    if name.ends_with("_scales") {
        0
    } else if name.ends_with("_blocks") {
        t.elements().saturating_mul(2)
    } else {
        t.elements()
    }
}

/// Split the parameters of `tensors` into total and active for `experts`.
pub fn param_split(tensors: &[TensorInfo], experts: &Experts) -> ParamSplit {
    let mut total = 0u64;
    let mut routed = 0u64;
    for t in tensors {
        let n = tensor_params(t);
        total = total.saturating_add(n);
        if experts.is_moe() && is_routed_expert(t.name.as_str()) {
            routed = routed.saturating_add(n);
        }
    }
    let used = experts.used.min(experts.count);
    let routed_active = if experts.is_moe() {
        // u128: routed * used cannot overflow.
        (u128::from(routed) * u128::from(used) / u128::from(experts.count)) as u64
    } else {
        0
    };
    ParamSplit {
        total,
        active: total - routed + routed_active,
        routed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::DType;
    use crate::types::TensorName;
    use serde_json::json;

    fn t(name: &str, shape: &[u64]) -> TensorInfo {
        TensorInfo {
            name: TensorName::from(name),
            dtype: DType::F32,
            shape: shape.to_vec(),
            file: 0,
            offset: 0,
            len: 0,
        }
    }

    #[test]
    fn configs_of_each_family() {
        let mixtral = json!({"num_local_experts": 8, "num_experts_per_tok": 2});
        assert_eq!(
            Experts::from_config(&mixtral),
            Experts {
                count: 8,
                used: 2,
                shared: 0,
                leading_dense: 0
            }
        );
        let qwen2 = json!({"num_experts": 60, "num_experts_per_tok": 4,
            "shared_expert_intermediate_size": 5632});
        assert_eq!(Experts::from_config(&qwen2).shared, 1);
        let ds = json!({"n_routed_experts": 256, "num_experts_per_tok": 8,
            "n_shared_experts": 1, "first_k_dense_replace": 3});
        let e = Experts::from_config(&ds);
        assert_eq!((e.count, e.used, e.shared, e.leading_dense), (256, 8, 1, 3));
        assert!(!Experts::from_config(&json!({"hidden_size": 64})).is_moe());
        let nested = json!({"text_config": {"num_local_experts": 4, "num_experts_per_tok": 1}});
        assert_eq!(Experts::from_config(&nested).count, 4);
    }

    #[test]
    fn gguf_keys() {
        let meta = vec![
            (
                "general.architecture".to_owned(),
                MetaValue::String("deepseek2".into()),
            ),
            ("deepseek2.expert_count".to_owned(), MetaValue::U32(64)),
            ("deepseek2.expert_used_count".to_owned(), MetaValue::U32(6)),
            (
                "deepseek2.expert_shared_count".to_owned(),
                MetaValue::U32(2),
            ),
            (
                "deepseek2.leading_dense_block_count".to_owned(),
                MetaValue::U32(1),
            ),
        ];
        let e = Experts::from_gguf(&meta);
        assert_eq!((e.count, e.used, e.shared, e.leading_dense), (64, 6, 2, 1));
        assert_eq!(Experts::from_gguf(&meta[..1]), Experts::default());
    }

    #[test]
    fn active_parameters_count_used_experts_only() {
        let e = Experts {
            count: 4,
            used: 2,
            shared: 1,
            leading_dense: 1,
        };
        let ts = [
            t("token_embd.weight", &[512, 64]),
            t("blk.0.ffn_down.weight", &[64, 128]),
            t("blk.1.ffn_down_exps.weight", &[4, 64, 32]),
            t("blk.1.ffn_down_shexp.weight", &[64, 32]),
            t("blk.1.ffn_gate_inp.weight", &[4, 64]),
        ];
        let s = param_split(&ts, &e);
        let dense = 512 * 64 + 64 * 128 + 64 * 32 + 4 * 64;
        assert_eq!(s.routed, 4 * 64 * 32);
        assert_eq!(s.total, dense + 4 * 64 * 32);
        assert_eq!(s.active, dense + 2 * 64 * 32);
        // Hugging Face names, per expert and fused, and gpt-oss's MXFP4 blocks.
        let hf = [
            t(
                "model.layers.0.block_sparse_moe.experts.3.w1.weight",
                &[32, 64],
            ),
            t(
                "model.layers.0.mlp.experts.gate_up_proj_blocks",
                &[4, 64, 2, 16],
            ),
            t(
                "model.layers.0.mlp.experts.gate_up_proj_scales",
                &[4, 64, 2],
            ),
            t(
                "model.layers.0.mlp.shared_experts.gate_proj.weight",
                &[32, 64],
            ),
        ];
        let s = param_split(&hf, &e);
        assert_eq!(s.routed, 32 * 64 + 4 * 64 * 64);
        assert_eq!(s.total, s.routed + 32 * 64);
        assert_eq!(s.active, 32 * 64 + s.routed / 2);
        // A dense model: active is total.
        let s = param_split(&ts, &Experts::default());
        assert_eq!((s.active, s.routed), (s.total, 0));
    }
}
