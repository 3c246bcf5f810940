//! DeepSeek's multi-head latent attention (MLA), as transformers' `DeepseekV3Attention`
//! and llama.cpp's `deepseek2` graph compute it.
//!
//! q comes through a low-rank bottleneck (`q_a`, RMS norm, `q_b`) or one projection
//! (V2-Lite); each head's query is a position-free part (`nope`) and a rotary part. Keys
//! and values come from one compressed latent per position (`kv_a`, RMS norm; `kv_lora`
//! wide) plus one rotary key shared by all heads. The cache keeps only the latent and the
//! rotated key.
//!
//! Two equivalent forms of the product: from Hugging Face weights (`kv_b_proj`, or a
//! legacy GGUF `attn_kv_b`) the latent is expanded into per-head keys and values for every
//! cached position (transformers' order of operations); from llama.cpp's GGUF, which
//! splits `kv_b` into `attn_k_b` (`[heads, kv_lora, nope]`) and `attn_v_b` (`[heads, v,
//! kv_lora]`), the key projection is absorbed into the query (`q_nope W_kb`, scored
//! against the latent directly) and the value projection applied after the weighted sum
//! of latents, as llama.cpp does. DeepSeek rotates adjacent pairs (`rope_interleave`, and
//! always in GGUF): those dimensions are de-interleaved (even, then odd) before the
//! rotate-half kernel, which is what transformers' interleaved RoPE computes.

use candle_core::Tensor;

use super::config::{MlaConfig, ModelConfig};
use super::model::{rms_norm, KvCache, Linear, Loader, RopeTables};
use super::ops;
use super::weights::{Naming, RawTensor};
use super::EngineError;

/// How the latent becomes keys and values.
#[derive(Debug)]
enum KvUp {
    /// `kv_b [heads * (nope + v), kv_lora]`.
    Expanded(Linear),
    /// Per head: `k_b [kv_lora, nope]` (applied to q) and `v_b [v, kv_lora]`.
    Absorbed { k_b: Vec<Linear>, v_b: Vec<Linear> },
}

#[derive(Debug)]
enum Query {
    Lora { a: Linear, norm: Tensor, b: Linear },
    Plain(Linear),
}

/// One layer's latent attention (without the output projection, which the block applies).
#[derive(Debug)]
pub(super) struct MlaAttn {
    cfg: MlaConfig,
    heads: usize,
    q: Query,
    kv_a: Linear,
    kv_norm: Tensor,
    kv_up: KvUp,
}

struct Names {
    naming: Naming,
    layer: usize,
}

impl Names {
    /// The tensor name for a Hugging Face `self_attn.` suffix or a GGUF one.
    fn get(&self, hf: &str, gguf: &str) -> String {
        match self.naming {
            Naming::HuggingFace => format!("model.layers.{}.self_attn.{hf}", self.layer),
            Naming::Gguf => format!("blk.{}.{gguf}", self.layer),
        }
    }
}

fn tensor<'a>(ld: &'a Loader<'_>, name: &str) -> Result<Option<RawTensor<'a>>, EngineError> {
    ld.src.tensor(name)
}

fn required<'a>(ld: &'a Loader<'_>, name: &str) -> Result<RawTensor<'a>, EngineError> {
    tensor(ld, name)?.ok_or_else(|| EngineError::MissingTensor(name.into()))
}

impl MlaAttn {
    pub(super) fn load(
        ld: &Loader<'_>,
        cfg: &ModelConfig,
        m: &MlaConfig,
        i: usize,
    ) -> Result<MlaAttn, EngineError> {
        if !ld.device.is_cpu() {
            return Err(EngineError::Unsupported(
                "multi-head latent attention on a non-CPU device".into(),
            ));
        }
        let names = Names {
            naming: ld.naming,
            layer: i,
        };
        let (h, nh) = (cfg.hidden, cfg.n_heads);
        let qk = m.nope + m.rope;
        let norm = |name: String, n: usize| -> Result<Tensor, EngineError> {
            ld.named_vector(&name, n)?
                .ok_or(EngineError::MissingTensor(name))
        };
        let q = match m.q_lora {
            Some(r) => Query::Lora {
                a: ld.linear_from(
                    required(ld, &names.get("q_a_proj.weight", "attn_q_a.weight"))?,
                    [r, h],
                )?,
                norm: norm(names.get("q_a_layernorm.weight", "attn_q_a_norm.weight"), r)?,
                b: ld.linear_from(
                    required(ld, &names.get("q_b_proj.weight", "attn_q_b.weight"))?,
                    [nh * qk, r],
                )?,
            },
            None => Query::Plain(ld.linear_from(
                required(ld, &names.get("q_proj.weight", "attn_q.weight"))?,
                [nh * qk, h],
            )?),
        };
        let kv_a = ld.linear_from(
            required(
                ld,
                &names.get("kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"),
            )?,
            [m.kv_lora + m.rope, h],
        )?;
        let kv_norm = norm(
            names.get("kv_a_layernorm.weight", "attn_kv_a_norm.weight"),
            m.kv_lora,
        )?;
        let kv_b_name = names.get("kv_b_proj.weight", "attn_kv_b.weight");
        let kv_up = match tensor(ld, &kv_b_name)? {
            Some(t) => KvUp::Expanded(ld.linear_from(t, [nh * (m.nope + m.v), m.kv_lora])?),
            None if ld.naming == Naming::Gguf => {
                let k_b = required(ld, &names.get("", "attn_k_b.weight"))?;
                let v_b = required(ld, &names.get("", "attn_v_b.weight"))?;
                k_b.expect_shape(&[nh, m.kv_lora, m.nope])?;
                v_b.expect_shape(&[nh, m.v, m.kv_lora])?;
                let per_head = |t: &RawTensor<'_>, rows: usize, cols: usize| {
                    let flat = RawTensor {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: vec![nh * rows, cols],
                        data: t.data.clone(),
                    };
                    (0..nh)
                        .map(|x| ld.linear_from(flat.rows(x * rows, rows)?, [rows, cols]))
                        .collect::<Result<Vec<Linear>, EngineError>>()
                };
                KvUp::Absorbed {
                    k_b: per_head(&k_b, m.kv_lora, m.nope)?,
                    v_b: per_head(&v_b, m.v, m.kv_lora)?,
                }
            }
            None => return Err(EngineError::MissingTensor(kv_b_name)),
        };
        Ok(MlaAttn {
            cfg: m.clone(),
            heads: nh,
            q,
            kv_a,
            kv_norm,
            kv_up,
        })
    }

    /// Width of the attention output (`heads * v`), the output projection's input.
    pub(super) fn out_width(&self) -> usize {
        self.heads * self.cfg.v
    }

    /// Attention of `n` new positions at `pos` over the cache: `x [n, hidden] -> [n, heads
    /// * v]`.
    pub(super) fn forward(
        &self,
        cfg: &ModelConfig,
        cache: &mut KvCache,
        x: &Tensor,
        pos: usize,
        tables: &RopeTables<'_>,
    ) -> Result<Tensor, EngineError> {
        let m = &self.cfg;
        let (n, nh, eps) = (x.dim(0)?, self.heads, cfg.rms_eps);
        let q = match &self.q {
            Query::Lora { a, norm, b } => b.forward(&rms_norm(&a.forward(x)?, norm, eps)?)?,
            Query::Plain(q) => q.forward(x)?,
        };
        let q = q.reshape((n, nh, m.nope + m.rope))?;
        let q_nope = q.narrow(2, 0, m.nope)?;
        let q_rot = self.pairs(&q.narrow(2, m.nope, m.rope)?)?;
        let ckv = self.kv_a.forward(x)?;
        let latent = rms_norm(
            &ckv.narrow(1, 0, m.kv_lora)?.contiguous()?,
            &self.kv_norm,
            eps,
        )?;
        let k_rot = self.pairs(&ckv.narrow(1, m.kv_lora, m.rope)?.reshape((n, 1, m.rope))?)?;
        // [heads, n, rope] and [1, n, rope]
        let q_rot = tables.apply(&q_rot)?;
        let k_rot = tables.apply(&k_rot)?;
        let (latents, k_rots) = cache.append(&latent.reshape((1, n, m.kv_lora))?, &k_rot)?;
        let total = latents.dim(1)?;
        let latents = latents.reshape((total, m.kv_lora))?;
        let k_rots = k_rots.reshape((total, m.rope))?;
        let softmax = ops::MaskedSoftmax {
            scale: cfg.attn_scale as f32,
            softcap: None,
            n,
            pos,
            window: usize::MAX,
            sinks: None,
        };
        let out = match &self.kv_up {
            KvUp::Expanded(kv_b) => {
                // transformers' order: full keys [heads, total, nope + rope], one product
                let kv = kv_b.forward(&latents)?.reshape((total, nh, m.nope + m.v))?;
                let k_nope = kv.narrow(2, 0, m.nope)?;
                let v = kv.narrow(2, m.nope, m.v)?.transpose(0, 1)?.contiguous()?;
                let k_rope = k_rots
                    .reshape((total, 1, m.rope))?
                    .broadcast_as((total, nh, m.rope))?;
                let k = Tensor::cat(&[&k_nope, &k_rope], 2)?
                    .transpose(0, 1)?
                    .contiguous()?;
                let q = Tensor::cat(&[&q_nope.transpose(0, 1)?.contiguous()?, &q_rot], 2)?;
                let probs = q.matmul(&k.t()?)?.apply_op1_no_bwd(&softmax)?;
                probs.matmul(&v)? // [heads, n, v]
            }
            KvUp::Absorbed { k_b, v_b } => {
                // q_nope W_kb scores the latent directly: [heads, n, kv_lora]
                let q_abs = (0..nh)
                    .map(|x| k_b[x].forward(&q_nope.narrow(1, x, 1)?.squeeze(1)?.contiguous()?))
                    .collect::<Result<Vec<_>, _>>()?;
                let q_abs = Tensor::stack(&q_abs, 0)?;
                let lat_t = latents.t()?.contiguous()?;
                let rot_t = k_rots.t()?.contiguous()?;
                let scores = (q_abs.reshape((nh * n, m.kv_lora))?.matmul(&lat_t)?
                    + q_rot.reshape((nh * n, m.rope))?.matmul(&rot_t)?)?
                .reshape((nh, n, total))?;
                let probs = scores.apply_op1_no_bwd(&softmax)?;
                let mixed = probs
                    .reshape((nh * n, total))?
                    .matmul(&latents.contiguous()?)?;
                let mixed = mixed.reshape((nh, n, m.kv_lora))?;
                let heads = (0..nh)
                    .map(|x| v_b[x].forward(&mixed.get(x)?.contiguous()?))
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::stack(&heads, 0)?
            }
        };
        Ok(out
            .transpose(0, 1)?
            .contiguous()?
            .reshape((n, nh * m.v))?
            .to_device(x.device())?)
    }

    /// `[n, heads, rope]` with adjacent pairs moved to the rotate-half layout (evens, then
    /// odds), when the model rotates adjacent pairs.
    fn pairs(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let (n, heads, rope) = x.dims3()?;
        if !self.cfg.adjacent_pairs {
            return Ok(x.contiguous()?);
        }
        Ok(x.reshape((n, heads, rope / 2, 2))?
            .transpose(2, 3)?
            .contiguous()?
            .reshape((n, heads, rope))?)
    }
}
