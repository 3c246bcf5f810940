//! Where the engine's weights come from: one [`WeightSource`] trait over raw tensor bytes,
//! implemented for [`crate::formats::Weights`] (safetensors and GGUF alike), and the
//! conversions from those bytes to what the forward pass multiplies with.
//!
//! The reference and the candidate model run through the same forward pass; the only
//! things that depend on the file are the tensor names ([`Naming`]), the dtype of each
//! tensor and, for GGUF `llama` files, the row order of the q and k projections (see
//! [`unpermute_rows`]).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

use crate::formats::{DType, GgmlType, MappedSlice, WeightFormat, Weights};

use super::config::Architecture;
use super::EngineError;

/// The bytes of one tensor as stored, with what is needed to read them.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    pub name: String,
    pub dtype: DType,
    /// Outermost dimension first (`[out, in]` for a projection).
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

/// Which tensor-name scheme a source uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// Hugging Face: `model.layers.N.self_attn.q_proj.weight`, `lm_head.weight`.
    HuggingFace,
    /// GGUF (llama.cpp): `blk.N.attn_q.weight`, `output.weight`.
    Gguf,
}

/// A tensor's role in the decoder, named independently of the file's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Embedding,
    OutputNorm,
    Output,
    /// GGUF only: Llama 3.1 RoPE frequency factors.
    RopeFreqs,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    QNorm(usize),
    KNorm(usize),
    AttnOut(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    /// Norm on the attention output before the residual add (Gemma, OLMo 2).
    PostAttnNorm(usize),
    /// Norm on the feed-forward output before the residual add (Gemma, OLMo 2).
    PostFfnNorm(usize),
    /// q, k and v stacked by rows (Phi-3).
    Qkv(usize),
    /// Gate and up stacked by rows, gate first (Phi-3).
    GateUp(usize),
    /// GGUF only: LongRoPE's factors (Phi-3).
    RopeFactorsShort,
    RopeFactorsLong,
}

impl Naming {
    /// The tensor name of a role in a family's checkpoints (`None` when there is no such
    /// tensor). Only Hugging Face names differ by family: Gemma calls the pre-feed-forward
    /// norm `pre_feedforward_layernorm` and uses `post_attention_layernorm` for the norm
    /// after attention, where Llama uses that name for the pre-feed-forward norm.
    pub fn name_for(self, arch: Architecture, role: Role) -> Option<String> {
        use Role::*;
        // llama.cpp names gpt-oss's pre-feed-forward norm `post_attention_norm`
        if let (Naming::Gguf, Architecture::GptOss, FfnNorm(i)) = (self, arch, role) {
            return Some(format!("blk.{i}.post_attention_norm.weight"));
        }
        if self == Naming::HuggingFace {
            let layer = |i: usize, rest: &str| Some(format!("model.layers.{i}.{rest}"));
            match (arch, role) {
                (Architecture::Gemma2 | Architecture::Gemma3, FfnNorm(i)) => {
                    return layer(i, "pre_feedforward_layernorm.weight")
                }
                (Architecture::Olmo2, FfnNorm(_) | AttnNorm(_)) => return None,
                (_, PostAttnNorm(i)) => return layer(i, "post_attention_layernorm.weight"),
                (_, PostFfnNorm(i)) => return layer(i, "post_feedforward_layernorm.weight"),
                (_, Qkv(i)) => return layer(i, "self_attn.qkv_proj.weight"),
                (_, GateUp(i)) => return layer(i, "mlp.gate_up_proj.weight"),
                _ => {}
            }
        }
        self.name(role)
    }

    /// The tensor name of a role in this scheme, as the llama family names it (`None` when
    /// the scheme has no such tensor).
    pub fn name(self, role: Role) -> Option<String> {
        use Role::*;
        Some(match self {
            Naming::HuggingFace => match role {
                Embedding => "model.embed_tokens.weight".into(),
                OutputNorm => "model.norm.weight".into(),
                Output => "lm_head.weight".into(),
                RopeFreqs => return None,
                AttnNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
                Q(i) => format!("model.layers.{i}.self_attn.q_proj.weight"),
                K(i) => format!("model.layers.{i}.self_attn.k_proj.weight"),
                V(i) => format!("model.layers.{i}.self_attn.v_proj.weight"),
                QBias(i) => format!("model.layers.{i}.self_attn.q_proj.bias"),
                KBias(i) => format!("model.layers.{i}.self_attn.k_proj.bias"),
                VBias(i) => format!("model.layers.{i}.self_attn.v_proj.bias"),
                QNorm(i) => format!("model.layers.{i}.self_attn.q_norm.weight"),
                KNorm(i) => format!("model.layers.{i}.self_attn.k_norm.weight"),
                AttnOut(i) => format!("model.layers.{i}.self_attn.o_proj.weight"),
                FfnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
                Gate(i) => format!("model.layers.{i}.mlp.gate_proj.weight"),
                Up(i) => format!("model.layers.{i}.mlp.up_proj.weight"),
                Down(i) => format!("model.layers.{i}.mlp.down_proj.weight"),
                PostAttnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
                PostFfnNorm(i) => format!("model.layers.{i}.post_feedforward_layernorm.weight"),
                Qkv(i) => format!("model.layers.{i}.self_attn.qkv_proj.weight"),
                GateUp(i) => format!("model.layers.{i}.mlp.gate_up_proj.weight"),
                RopeFactorsShort | RopeFactorsLong => return None,
            },
            Naming::Gguf => match role {
                Embedding => "token_embd.weight".into(),
                OutputNorm => "output_norm.weight".into(),
                Output => "output.weight".into(),
                RopeFreqs => "rope_freqs.weight".into(),
                AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
                Q(i) => format!("blk.{i}.attn_q.weight"),
                K(i) => format!("blk.{i}.attn_k.weight"),
                V(i) => format!("blk.{i}.attn_v.weight"),
                QBias(i) => format!("blk.{i}.attn_q.bias"),
                KBias(i) => format!("blk.{i}.attn_k.bias"),
                VBias(i) => format!("blk.{i}.attn_v.bias"),
                QNorm(i) => format!("blk.{i}.attn_q_norm.weight"),
                KNorm(i) => format!("blk.{i}.attn_k_norm.weight"),
                AttnOut(i) => format!("blk.{i}.attn_output.weight"),
                FfnNorm(i) => format!("blk.{i}.ffn_norm.weight"),
                Gate(i) => format!("blk.{i}.ffn_gate.weight"),
                Up(i) => format!("blk.{i}.ffn_up.weight"),
                Down(i) => format!("blk.{i}.ffn_down.weight"),
                PostAttnNorm(i) => format!("blk.{i}.post_attention_norm.weight"),
                PostFfnNorm(i) => format!("blk.{i}.post_ffw_norm.weight"),
                Qkv(i) => format!("blk.{i}.attn_qkv.weight"),
                // llama.cpp stores Phi-3's fused gate/up as `ffn_up` of twice the width
                GateUp(i) => format!("blk.{i}.ffn_up.weight"),
                RopeFactorsShort => "rope_factors_short.weight".into(),
                RopeFactorsLong => "rope_factors_long.weight".into(),
            },
        })
    }
}

/// Something that hands out tensors by name: a checkpoint's weights, or (in tests) tensors
/// held in memory.
pub trait WeightSource {
    /// The naming scheme of this source's tensors.
    fn naming(&self) -> Naming;
    /// The tensor called `name`, or `None` when there is none.
    fn tensor(&self, name: &str) -> Result<Option<RawTensor<'_>>, EngineError>;
    /// `bytes`, borrowed from a tensor this source handed out, as a range of its memory
    /// map that outlives the source, so a model can keep weights without copying them.
    /// `None` (the default) makes the model copy them.
    fn share(&self, _bytes: &[u8]) -> Option<MappedSlice> {
        None
    }
}

impl WeightSource for Weights {
    fn naming(&self) -> Naming {
        match self.format {
            WeightFormat::Gguf => Naming::Gguf,
            _ => Naming::HuggingFace,
        }
    }

    fn tensor(&self, name: &str) -> Result<Option<RawTensor<'_>>, EngineError> {
        let Some(info) = Weights::tensor(self, name) else {
            return Ok(None);
        };
        let shape = info
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| EngineError::BadTensor {
                name: name.into(),
                why: format!("shape {:?} does not fit in memory", info.shape),
            })?;
        let data = self.tensor_data(info)?;
        Ok(Some(RawTensor {
            name: name.into(),
            dtype: info.dtype,
            shape,
            data: Cow::Borrowed(data),
        }))
    }

    fn share(&self, bytes: &[u8]) -> Option<MappedSlice> {
        Weights::share(self, bytes)
    }
}

impl RawTensor<'_> {
    fn elements(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Check that the byte length is what dtype and shape say; a `WeightSource` is an open
    /// trait, so this is checked here rather than trusted.
    fn check_len(&self) -> Result<usize, EngineError> {
        let elements = self.elements().ok_or_else(|| self.bad("shape overflows"))?;
        let want = self.dtype.bytes_for(elements as u64).ok_or_else(|| {
            self.bad(format!(
                "{} elements are not a whole number of {} blocks",
                elements, self.dtype
            ))
        })?;
        if want != self.data.len() as u64 {
            return Err(self.bad(format!(
                "{} bytes of data, expected {want} for {} {:?}",
                self.data.len(),
                self.dtype,
                self.shape
            )));
        }
        Ok(elements)
    }

    fn bad(&self, why: impl Into<String>) -> EngineError {
        EngineError::BadTensor {
            name: self.name.clone(),
            why: why.into(),
        }
    }

    /// Check the shape against what the model expects.
    pub fn expect_shape(&self, want: &[usize]) -> Result<(), EngineError> {
        if self.shape != want {
            return Err(EngineError::TensorShape {
                name: self.name.clone(),
                found: self.shape.clone(),
                expected: want.to_vec(),
            });
        }
        Ok(())
    }

    /// The candle block type for this tensor, when candle can read it.
    pub(super) fn ggml_dtype(&self) -> Result<GgmlDType, EngineError> {
        let t = match self.dtype {
            DType::F32 => GgmlType::F32,
            DType::F16 => GgmlType::F16,
            DType::BF16 => GgmlType::BF16,
            DType::Ggml(t) => t,
            other => return Err(self.unsupported(other)),
        };
        Ok(match t {
            GgmlType::F32 => GgmlDType::F32,
            GgmlType::F16 => GgmlDType::F16,
            GgmlType::BF16 => GgmlDType::BF16,
            GgmlType::Q4_0 => GgmlDType::Q4_0,
            GgmlType::Q4_1 => GgmlDType::Q4_1,
            GgmlType::Q5_0 => GgmlDType::Q5_0,
            GgmlType::Q5_1 => GgmlDType::Q5_1,
            GgmlType::Q8_0 => GgmlDType::Q8_0,
            GgmlType::Q8_1 => GgmlDType::Q8_1,
            GgmlType::Q2K => GgmlDType::Q2K,
            GgmlType::Q3K => GgmlDType::Q3K,
            GgmlType::Q4K => GgmlDType::Q4K,
            GgmlType::Q5K => GgmlDType::Q5K,
            GgmlType::Q6K => GgmlDType::Q6K,
            GgmlType::Q8K => GgmlDType::Q8K,
            _ => return Err(self.unsupported(self.dtype)),
        })
    }

    fn unsupported(&self, dtype: DType) -> EngineError {
        EngineError::UnsupportedDtype {
            name: self.name.clone(),
            dtype: dtype.to_string(),
        }
    }

    /// The values as an f32 tensor of the same shape: plain floats converted, block types
    /// dequantized.
    pub fn to_f32(&self, device: &Device) -> Result<Tensor, EngineError> {
        let elements = self.check_len()?;
        let bytes: &[u8] = &self.data;
        let values: Vec<f32> = match self.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // candle's CPU matmul has no bf16 kernel, so bf16 is upcast (exactly) to f32.
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
            DType::Ggml(g) if crate::formats::blocks::supported(g) => {
                let mut v = vec![0f32; elements];
                crate::formats::blocks::dequantize(g, bytes, &mut v)
                    .map_err(|e| self.bad(e.to_string()))?;
                v
            }
            _ => {
                let q = self.to_qtensor(&Device::Cpu)?;
                return Ok(q.dequantize(device)?);
            }
        };
        debug_assert_eq!(values.len(), elements);
        Ok(Tensor::from_vec(values, self.shape.as_slice(), device)?)
    }

    /// The tensor as a candle `QTensor` in its stored type (no conversion), for quantized
    /// matmul. Plain F32/F16/BF16 tensors become `QTensor`s of that type.
    pub fn to_qtensor(&self, device: &Device) -> Result<QTensor, EngineError> {
        self.check_len()?;
        let dtype = self.ggml_dtype()?;
        let Some(&inner) = self.shape.last() else {
            return Err(self.bad("a scalar cannot be a weight matrix"));
        };
        if !inner.is_multiple_of(dtype.block_size()) {
            return Err(self.bad(format!(
                "rows of {inner} values are not whole {dtype:?} blocks of {}",
                dtype.block_size()
            )));
        }
        // candle reinterprets the bytes as blocks in place, which needs the alignment of
        // the block's widest field (at most 4 bytes). A memory-mapped GGUF tensor is aligned
        // by the format; anything else is copied to an aligned buffer first.
        const ALIGN: usize = 8;
        let len = self.data.len();
        let mut owned;
        let bytes: &[u8] = if self.data.as_ptr().align_offset(ALIGN) == 0 {
            &self.data
        } else {
            owned = vec![0u8; len + ALIGN];
            let off = owned.as_ptr().align_offset(ALIGN);
            if off > ALIGN {
                return Err(self.bad("cannot align a buffer for the tensor data"));
            }
            owned[off..off + len].copy_from_slice(&self.data);
            &owned[off..off + len]
        };
        let storage = QStorage::from_data(Cow::Borrowed(bytes), device, dtype)?;
        Ok(QTensor::new(storage, self.shape.as_slice())?)
    }

    /// Rows `start..start + count` of a 2-d tensor (one part of a fused projection). Rows
    /// are whole blocks in every block type, so this slices quantized bytes too.
    pub fn rows(&self, start: usize, count: usize) -> Result<RawTensor<'_>, EngineError> {
        self.check_len()?;
        let (&total, inner) = self
            .shape
            .split_first()
            .ok_or_else(|| self.bad("a scalar has no rows"))?;
        let end = start
            .checked_add(count)
            .filter(|&e| e <= total && total > 0)
            .ok_or_else(|| self.bad(format!("rows {start}..{start}+{count} of {total}")))?;
        let row_len = self.data.len() / total;
        let mut shape = vec![count];
        shape.extend_from_slice(inner);
        Ok(RawTensor {
            name: self.name.clone(),
            dtype: self.dtype,
            shape,
            data: Cow::Borrowed(&self.data[start * row_len..end * row_len]),
        })
    }

    /// Undo llama.cpp's row permutation of a q or k projection (see [`unpermute_rows`]).
    pub fn unpermuted(self, n_heads: usize) -> Result<RawTensor<'static>, EngineError> {
        self.check_len()?;
        let rows = *self.shape.first().ok_or_else(|| self.bad("no rows"))?;
        let data = unpermute_rows(&self.data, rows, n_heads).ok_or_else(|| {
            self.bad(format!(
                "{rows} rows cannot be split into {n_heads} heads of an even size"
            ))
        })?;
        Ok(RawTensor {
            name: self.name,
            dtype: self.dtype,
            shape: self.shape,
            data: Cow::Owned(data),
        })
    }
}

/// llama.cpp's converter stores the q and k projections of `llama`-architecture models with
/// the rows of each head reordered from Hugging Face's rotate-half layout (first half of
/// the head, then second half) to interleaved pairs: GGUF row `2i + j` of a head holds HF
/// row `j * half + i`. This puts the rows back in HF order so that one RoPE implementation
/// (rotate-half) serves both. Rows are whole blocks for every block type, so this works on
/// the raw bytes of quantized tensors too. `None` when the rows do not split evenly.
pub fn unpermute_rows(data: &[u8], rows: usize, n_heads: usize) -> Option<Vec<u8>> {
    if rows == 0 || n_heads == 0 || !rows.is_multiple_of(n_heads) {
        return None;
    }
    let head = rows / n_heads;
    if !head.is_multiple_of(2) || !data.len().is_multiple_of(rows) {
        return None;
    }
    let half = head / 2;
    let row_len = data.len() / rows;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head + 2 * i + j;
                let dst = h * head + j * half + i;
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    Some(out)
}

/// A shared quantized tensor, so a tied output head can reuse the embedding's blocks.
pub type SharedQTensor = Arc<QTensor>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The permutation llama.cpp's converter applies (as modelgate's converter maps rows), to
    /// test the engine's inverse.
    fn permute_rows(data: &[u8], rows: usize, n_heads: usize) -> Vec<u8> {
        // The converter's own row map (`convert::arch::RowMap`), applied row by row.
        let map = crate::convert::arch::RowMap::ToInterleaved {
            head_dim: (rows / n_heads) as u64,
        };
        let row_len = data.len() / rows;
        (0..rows)
            .flat_map(|r| {
                let src = map.source_row(r as u64) as usize;
                data[src * row_len..(src + 1) * row_len].iter().copied()
            })
            .collect()
    }

    #[test]
    fn rows_slice_fused_projections_and_check_bounds() {
        let data: Vec<u8> = (0..24).collect();
        let t = RawTensor {
            name: "qkv".into(),
            dtype: DType::F32,
            shape: vec![3, 2],
            data: Cow::Owned(data),
        };
        let mid = t.rows(1, 2).unwrap();
        assert_eq!(mid.shape, [2, 2]);
        assert_eq!(&mid.data[..], &(8..24).collect::<Vec<u8>>()[..]);
        assert!(t.rows(2, 2).is_err());
        assert!(t.rows(usize::MAX, 2).is_err());
        assert_eq!(
            Naming::HuggingFace.name_for(Architecture::Gemma2, Role::FfnNorm(3)),
            Some("model.layers.3.pre_feedforward_layernorm.weight".into())
        );
        assert_eq!(
            Naming::HuggingFace.name_for(Architecture::Llama, Role::FfnNorm(3)),
            Some("model.layers.3.post_attention_layernorm.weight".into())
        );
        assert_eq!(
            Naming::Gguf.name_for(Architecture::Phi3, Role::GateUp(0)),
            Some("blk.0.ffn_up.weight".into())
        );
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        let rows = 12;
        let data: Vec<u8> = (0..rows as u8 * 3).collect();
        let permuted = permute_rows(&data, rows, 3);
        assert_ne!(permuted, data);
        assert_eq!(unpermute_rows(&permuted, rows, 3).unwrap(), data);
        // head of 4 rows: HF rows [0 1 | 2 3] are stored as [0 2 1 3]
        let one: Vec<u8> = vec![0, 1, 2, 3];
        assert_eq!(permute_rows(&one, 4, 1), vec![0, 2, 1, 3]);
        assert!(unpermute_rows(&data, rows, 5).is_none());
        assert!(unpermute_rows(&data, rows, 12).is_none());
    }

    #[test]
    fn length_is_checked_before_conversion() {
        let t = RawTensor {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![2, 2],
            data: Cow::Owned(vec![0u8; 15]),
        };
        let e = t.to_f32(&Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("15 bytes"), "{e}");
        let q = RawTensor {
            name: "q".into(),
            dtype: DType::Ggml(GgmlType::Q4_1),
            shape: vec![2, 16],
            data: Cow::Owned(vec![0u8; 20]),
        };
        assert!(q.to_qtensor(&Device::Cpu).is_err());
    }

    #[test]
    fn plain_and_block_types_convert() {
        let vals = [1.5f32, -2.0, 0.25, 8.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        // misaligned on purpose: a safetensors payload need not be aligned
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let t = RawTensor {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![2, 2],
            data: Cow::Borrowed(&shifted[1..]),
        };
        let f = t.to_f32(&Device::Cpu).unwrap();
        assert_eq!(
            f.to_vec2::<f32>().unwrap(),
            vec![vec![1.5, -2.0], vec![0.25, 8.0]]
        );
        let bf: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let t = RawTensor {
            name: "w".into(),
            dtype: DType::BF16,
            shape: vec![4],
            data: Cow::Owned(bf),
        };
        assert_eq!(
            t.to_f32(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap(),
            vals
        );
        // one Q8_0 block: scale 0.5 (f16), quants 0..32
        let mut block = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..32).map(|i| i as u8));
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&block);
        let t = RawTensor {
            name: "q".into(),
            dtype: DType::Ggml(GgmlType::Q8_0),
            shape: vec![1, 32],
            data: Cow::Borrowed(&shifted[1..]),
        };
        let f = t.to_f32(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(f[0][3], 1.5);
        assert_eq!(f[0][31], 15.5);
    }
}
