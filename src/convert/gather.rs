//! Output tensors assembled from parts of source tensors: routed experts stacked into one
//! 3-D tensor, fused `gate_up_proj` split (by halves, or de-interleaved for gpt-oss), fused
//! expert tensors transposed (gpt-oss stores `[experts, in, out]`), DeepSeek's `kv_b_proj`
//! split per head into `attn_k_b` (transposed) and `attn_v_b`, FP8 E4M3 weights multiplied
//! by their block scales, and gpt-oss's Hugging Face MXFP4 blocks repacked into ggml's
//! `block_mxfp4` without decoding. The operations and their order are those of llama.cpp's
//! converter classes (`torch.stack`, `transpose`, `[..., ::2]`, `weight.float() * scale`),
//! so F32 outputs are bit for bit llama.cpp's.
//!
//! [`plan_experts`] finds these tensors in a checkpoint and checks them (every expert
//! present, one shape for all, scales for FP8); the executor calls [`Gather::fill`] or
//! [`Gather::raw_rows`] for one run of output rows at a time, so memory stays bounded.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::arch::{Arch, HParams, Parsed, Role};
use super::elem;
use super::error::ConvertError;
use super::quant;
use crate::formats::{Checkpoint, DType, GgmlType, TensorInfo, Weights};

/// FP8 block scales of a source tensor.
#[derive(Clone, Debug)]
pub struct Fp8Scale {
    /// The `*_scale_inv` tensor.
    pub tensor: usize,
    /// Rows and columns per scale (`weight_block_size`); `None` broadcasts one scale per
    /// row or per tensor, as llama.cpp does without a block size.
    pub block: Option<[u64; 2]>,
}

/// One source tensor seen as `mats` matrices of `src_rows` x `src_cols` values (from
/// matrix `mat0`), optionally transposed, of which rows `row0 + k * row_step` (k <
/// `n_rows`) and columns `col0 + j * col_step` (j < `n_cols`) are taken. Its output rows
/// are those rows of each matrix in turn.
#[derive(Clone, Debug)]
pub struct Piece {
    pub tensor: usize,
    pub scale: Option<Fp8Scale>,
    pub mat0: u64,
    pub mats: u64,
    pub src_rows: u64,
    pub src_cols: u64,
    pub transpose: bool,
    pub row0: u64,
    pub row_step: u64,
    pub n_rows: u64,
    pub col0: u64,
    pub col_step: u64,
    pub n_cols: u64,
}

impl Piece {
    /// All of a 2-D (or flattened) source, as is.
    fn whole(tensor: usize, rows: u64, cols: u64, scale: Option<Fp8Scale>) -> Piece {
        Piece {
            tensor,
            scale,
            mat0: 0,
            mats: 1,
            src_rows: rows,
            src_cols: cols,
            transpose: false,
            row0: 0,
            row_step: 1,
            n_rows: rows,
            col0: 0,
            col_step: 1,
            n_cols: cols,
        }
    }

    fn out_rows(&self) -> u64 {
        self.mats * self.n_rows
    }
}

/// How an assembled tensor's values are produced.
#[derive(Clone, Debug)]
pub enum Gather {
    /// Decoded to f32 from the pieces (output rows are the pieces' rows in order), then
    /// encoded to the output type.
    Float(Vec<Piece>),
    /// Two runs of pieces of half the row each, interleaved value by value (`a0 b0 a1 b1
    /// ...`): gpt-oss's fused `gate_up_proj` written back from separate gate and up.
    Interleave(Vec<Piece>, Vec<Piece>),
    /// gpt-oss MXFP4: `blocks` `[mats, src_rows, n_blocks, 16]` and `scales`
    /// `[mats, src_rows, n_blocks]` (u8), rows `row0 + k * row_step` of each matrix,
    /// repacked into ggml's MXFP4 bytes.
    Mxfp4 {
        blocks: usize,
        scales: usize,
        mats: u64,
        src_rows: u64,
        n_blocks: u64,
        row0: u64,
        row_step: u64,
        n_rows: u64,
    },
}

fn fault(s: impl Into<String>) -> String {
    s.into()
}

impl Gather {
    /// Input bytes this tensor reads (for progress).
    pub fn input_bytes(&self, tensors: &[TensorInfo]) -> u64 {
        let len = |i: usize| tensors.get(i).map_or(0, |t| t.len);
        match self {
            Gather::Float(pieces) => {
                let mut seen = HashSet::new();
                pieces
                    .iter()
                    .filter(|p| seen.insert(p.tensor))
                    .map(|p| len(p.tensor))
                    .sum()
            }
            Gather::Mxfp4 { blocks, scales, .. } => (len(*blocks) + len(*scales)) / 2,
            Gather::Interleave(a, b) => {
                Gather::Float(a.clone()).input_bytes(tensors)
                    + Gather::Float(b.clone()).input_bytes(tensors)
            }
        }
    }

    /// Output rows `row0..row1` as stored bytes, for the kinds that are not decoded
    /// (MXFP4); `None` for the others.
    pub fn raw_rows(
        &self,
        name: &str,
        weights: &Weights,
        row0: u64,
        row1: u64,
    ) -> Result<Option<Vec<u8>>, String> {
        let Gather::Mxfp4 {
            blocks,
            scales,
            mats,
            src_rows,
            n_blocks,
            row0: first,
            row_step,
            n_rows,
        } = self
        else {
            return Ok(None);
        };
        let data = |i: usize| -> Result<&[u8], String> {
            let t = weights
                .tensors
                .get(i)
                .ok_or_else(|| fault("source tensor vanished"))?;
            weights.tensor_data(t).map_err(|e| e.to_string())
        };
        let (b, s) = (data(*blocks)?, data(*scales)?);
        let nb = *n_blocks as usize;
        let mut out = Vec::with_capacity((row1 - row0) as usize * nb * 17);
        for r in row0..row1 {
            let (m, k) = (r / n_rows, r % n_rows);
            if m >= *mats {
                return Err(fault("row lies outside the tensor"));
            }
            let src = (m * src_rows + first + k * row_step) as usize;
            let bs = b
                .get(src * nb * 16..(src + 1) * nb * 16)
                .ok_or_else(|| fault("MXFP4 blocks are shorter than their shape"))?;
            let ss = s
                .get(src * nb..(src + 1) * nb)
                .ok_or_else(|| fault("MXFP4 scales are shorter than their shape"))?;
            out.extend(quant::repack_hf_mxfp4(name, bs, ss).map_err(|e| e.to_string())?);
        }
        Ok(Some(out))
    }

    /// Decode output rows `row0..row1` (each `row_len` values) into `out`.
    pub fn fill(
        &self,
        weights: &Weights,
        row0: u64,
        row1: u64,
        row_len: u64,
        out: &mut [f32],
    ) -> Result<(), String> {
        let pieces = match self {
            Gather::Float(pieces) => pieces,
            Gather::Interleave(a, b) => {
                let half = row_len / 2;
                let n = ((row1 - row0) * half) as usize;
                let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
                Gather::Float(a.clone()).fill(weights, row0, row1, half, &mut x)?;
                Gather::Float(b.clone()).fill(weights, row0, row1, half, &mut y)?;
                for (k, o) in out.chunks_exact_mut(2).enumerate() {
                    o[0] = x[k];
                    o[1] = y[k];
                }
                return Ok(());
            }
            Gather::Mxfp4 { .. } => return Err(fault("MXFP4 experts are copied, not decoded")),
        };
        let rl = row_len as usize;
        // Decoded matrices of transposed pieces, kept for the rows of this run.
        let mut cache: HashMap<(usize, u64), Vec<f32>> = HashMap::new();
        let mut row_buf = Vec::new();
        for (k, r) in (row0..row1).enumerate() {
            let dst = out
                .get_mut(k * rl..(k + 1) * rl)
                .ok_or_else(|| fault("output run is shorter than its rows"))?;
            let mut base = 0u64;
            let mut found = None;
            for (pi, p) in pieces.iter().enumerate() {
                if r < base + p.out_rows() {
                    found = Some((pi, p, r - base));
                    break;
                }
                base += p.out_rows();
            }
            let (pi, p, local) = found.ok_or_else(|| fault("row lies outside the tensor"))?;
            if p.n_cols != row_len {
                return Err(fault("piece width differs from the output row"));
            }
            let m = p.mat0 + local / p.n_rows;
            let v = p.row0 + (local % p.n_rows) * p.row_step;
            if !p.transpose {
                row_buf.resize(p.src_cols as usize, 0.0);
                decode_row(weights, p, m * p.src_rows + v, &mut row_buf)?;
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = row_buf[(p.col0 + j as u64 * p.col_step) as usize];
                }
            } else {
                let mat = match cache.entry((pi, m)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let cols = p.src_cols as usize;
                        let mut mat = vec![0f32; p.src_rows as usize * cols];
                        for (i, chunk) in mat.chunks_exact_mut(cols).enumerate() {
                            decode_row(weights, p, m * p.src_rows + i as u64, chunk)?;
                        }
                        e.insert(mat)
                    }
                };
                let cols = p.src_cols as usize;
                for (j, d) in dst.iter_mut().enumerate() {
                    let src_row = (p.col0 + j as u64 * p.col_step) as usize;
                    *d = mat
                        .get(src_row * cols + v as usize)
                        .copied()
                        .ok_or_else(|| fault("column lies outside the tensor"))?;
                }
            }
        }
        Ok(())
    }
}

/// Decode source row `row` (of the whole tensor seen as rows of `src_cols`) of a piece.
fn decode_row(weights: &Weights, p: &Piece, row: u64, out: &mut [f32]) -> Result<(), String> {
    let t = weights
        .tensors
        .get(p.tensor)
        .ok_or_else(|| fault("source tensor vanished"))?;
    let data = weights.tensor_data(t).map_err(|e| e.to_string())?;
    let cols = p.src_cols;
    if t.dtype == DType::F8E4M3 {
        let s = row as usize * cols as usize;
        let codes = data
            .get(s..s + cols as usize)
            .ok_or_else(|| fault("row lies outside the tensor"))?;
        let scale = p
            .scale
            .as_ref()
            .ok_or_else(|| fault("an FP8 tensor has no scale"))?;
        let st = weights
            .tensors
            .get(scale.tensor)
            .ok_or_else(|| fault("scale tensor vanished"))?;
        let sdata = weights.tensor_data(st).map_err(|e| e.to_string())?;
        let (srow, scols, bc) = match scale.block {
            Some([br, bc]) => {
                let scols = cols.div_ceil(bc.max(1));
                (row / br.max(1), scols, bc.max(1))
            }
            // One scale per row, or one for the tensor.
            None if st.elements() == 1 => (0, 1, cols.max(1)),
            None => (row, 1, cols.max(1)),
        };
        // Only the scales of this row's blocks.
        let width = st
            .dtype
            .bytes_for(1)
            .ok_or_else(|| fault("FP8 scales are not a float type"))? as usize;
        let start = (srow * scols) as usize * width;
        let sbytes = sdata
            .get(start..start + scols as usize * width)
            .ok_or_else(|| fault("FP8 scale has fewer blocks than the weight needs"))?;
        let mut sv = vec![0f32; scols as usize];
        elem::decode(st.dtype, sbytes, &mut sv)?;
        for (c, (o, &code)) in out.iter_mut().zip(codes).enumerate() {
            let sc = sv
                .get((c as u64 / bc) as usize)
                .copied()
                .ok_or_else(|| fault("FP8 scale has fewer blocks than the weight needs"))?;
            *o = quant::f8_e4m3_to_f32(code) * sc;
        }
        return Ok(());
    }
    let rb = t.dtype.bytes_for(cols).ok_or_else(|| {
        fault(format!(
            "a row of {cols} values is not whole {} blocks",
            t.dtype
        ))
    })? as usize;
    let s = row as usize * rb;
    let src = data
        .get(s..s + rb)
        .ok_or_else(|| fault("row lies outside the tensor"))?;
    elem::decode(t.dtype, src, out)
}

/// One assembled output tensor found by [`plan_experts`].
#[derive(Clone, Debug)]
pub struct Assembled {
    pub parsed: Parsed,
    /// Outermost first.
    pub shape: Vec<u64>,
    pub gather: Gather,
    /// The dtype of the (first) source, for the recipe's "keep as is" rule.
    pub src_dtype: DType,
    /// The type it must have whatever the file type (MXFP4 is copied, not requantized).
    pub fixed_type: Option<GgmlType>,
}

/// What [`plan_experts`] found: assembled tensors, the source tensors they (or FP8 scales)
/// consume, FP8 weights with their scales, and notes.
#[derive(Debug, Default)]
pub struct Found {
    pub assembled: Vec<Assembled>,
    pub consumed: HashSet<usize>,
    pub fp8: HashMap<usize, Fp8Scale>,
    pub notes: Vec<String>,
}

/// The three expert projections in llama.cpp's order.
const PROJ: [(Role, &str); 3] = [
    (Role::FfnGateExps, "gate"),
    (Role::FfnUpExps, "up"),
    (Role::FfnDownExps, "down"),
];

fn proj_of(w: &str) -> Option<usize> {
    match w {
        "gate_proj" | "w1" => Some(0),
        "up_proj" | "w3" => Some(1),
        "down_proj" | "w2" => Some(2),
        _ => None,
    }
}

/// The FP8 block size from config.json's `quantization_config`.
fn fp8_block(cfg: Option<&serde_json::Value>) -> Option<[u64; 2]> {
    let b = cfg?
        .get("quantization_config")?
        .get("weight_block_size")?
        .as_array()?;
    match b.as_slice() {
        [r, c] => Some([r.as_u64()?, c.as_u64()?]),
        _ => None,
    }
}

/// Find the tensors that are assembled rather than renamed (experts, DeepSeek's kv_b, MTP
/// layers to drop) and the FP8 scales, and check them against `h`.
pub fn plan_experts(ckpt: &Checkpoint, h: &HParams) -> Result<Found, ConvertError> {
    let ts = &ckpt.weights.tensors;
    let mut found = Found::default();
    let by_name: HashMap<&str, usize> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let cfg = ckpt.dir.as_ref().and_then(|d| d.config.as_ref());
    let block = fp8_block(cfg);
    // FP8 scales, consumed with their weights.
    for (i, t) in ts.iter().enumerate() {
        let name = t.name.as_str();
        if let Some(w) = name.strip_suffix("_scale_inv") {
            if let Some(&wi) = by_name.get(w) {
                if ts[wi].dtype == DType::F8E4M3 {
                    found.fp8.insert(wi, Fp8Scale { tensor: i, block });
                    found.consumed.insert(i);
                }
            }
        }
    }
    for (i, t) in ts.iter().enumerate() {
        if t.dtype == DType::F8E4M3 && !found.fp8.contains_key(&i) {
            return Err(ConvertError::MissingTensor {
                tensor: format!("{}_scale_inv", t.name.as_str()),
                why: format!(
                    "`{}` is stored as FP8 E4M3 and needs its scale to be dequantized",
                    t.name.as_str()
                ),
            });
        }
        if t.dtype == DType::F8E4M3 && t.shape.len() != 2 {
            return Err(ConvertError::UnsupportedDtype {
                tensor: t.name.as_str().to_owned(),
                dtype: format!(
                    "F8_E4M3 with {} dimensions (block scales cover 2-D weights)",
                    t.shape.len()
                ),
            });
        }
        if let (Some(sc), [rows, cols]) = (found.fp8.get(&i), t.shape.as_slice()) {
            let st = &ts[sc.tensor];
            let want = match sc.block {
                Some([br, bc]) if br > 0 && bc > 0 => vec![rows.div_ceil(br), cols.div_ceil(bc)],
                Some(_) => vec![0, 0],
                None if st.elements() == 1 => st.shape.clone(),
                None => vec![*rows, 1],
            };
            let same = st.shape == want || (sc.block.is_none() && st.elements() == *rows);
            if !same || !matches!(st.dtype, DType::F32 | DType::BF16 | DType::F16) {
                return Err(ConvertError::Shape {
                    tensor: st.name.as_str().to_owned(),
                    found: st.shape.clone(),
                    expected: want,
                    why: format!(
                        "the {} scales of FP8 weight `{}` {:?} in blocks of {:?} (`weight_block_size`)",
                        st.dtype,
                        t.name.as_str(),
                        t.shape,
                        sc.block
                    ),
                });
            }
        }
    }
    let Some(moe) = h.moe.as_ref() else {
        return Ok(found);
    };
    let n_expert = moe.n_expert;
    // Per layer and projection: expert index -> tensor.
    let mut per_expert: BTreeMap<(u64, usize), BTreeMap<u64, usize>> = BTreeMap::new();
    let mut fused: BTreeMap<(u64, String), usize> = BTreeMap::new();
    let mut kv_b: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, t) in ts.iter().enumerate() {
        let name = t.name.as_str();
        let Some(rest) = name.strip_prefix("model.layers.") else {
            continue;
        };
        let Some((n, suffix)) = rest.split_once('.') else {
            continue;
        };
        let Ok(layer) = n.parse::<u64>() else {
            continue;
        };
        if found.consumed.contains(&i) {
            continue;
        }
        if layer >= h.n_layer && h.arch == Arch::Deepseek2 {
            // Multi-token-prediction layers: llama.cpp's DeepSeek class drops them.
            found.consumed.insert(i);
            continue;
        }
        if h.arch == Arch::Deepseek2 && suffix == "self_attn.kv_b_proj.weight" {
            kv_b.insert(layer, i);
            found.consumed.insert(i);
            continue;
        }
        let experts = suffix
            .strip_prefix("block_sparse_moe.experts.")
            .or_else(|| suffix.strip_prefix("mlp.experts."));
        let Some(e_rest) = experts else {
            continue;
        };
        if !moe.is_moe_layer(layer) || layer >= h.n_layer {
            return Err(ConvertError::UnknownTensor {
                tensor: name.to_owned(),
                arch: format!(
                    "{} whose layer {layer} has no experts (config.json)",
                    h.model_type
                ),
            });
        }
        found.consumed.insert(i);
        if let Some((e, w)) = e_rest.split_once('.') {
            if let (Ok(e), Some(proj)) = (
                e.parse::<u64>(),
                w.strip_suffix(".weight").and_then(proj_of),
            ) {
                if e >= n_expert {
                    return Err(ConvertError::UnknownTensor {
                        tensor: name.to_owned(),
                        arch: format!(
                            "{} with {n_expert} experts per layer (config.json's expert count disagrees with the tensors)",
                            h.model_type
                        ),
                    });
                }
                per_expert.entry((layer, proj)).or_default().insert(e, i);
                continue;
            }
        }
        fused.insert((layer, e_rest.to_owned()), i);
    }

    let shape_err = |t: &TensorInfo, want: Vec<u64>, why: String| ConvertError::Shape {
        tensor: t.name.as_str().to_owned(),
        found: t.shape.clone(),
        expected: want,
        why: format!("config.json: {why}"),
    };
    let hf_prefix = if h.arch == Arch::Llama {
        "block_sparse_moe.experts"
    } else {
        "mlp.experts"
    };
    let wname = |p: usize| match (h.arch, p) {
        (Arch::Llama, 0) => "w1",
        (Arch::Llama, 1) => "w3",
        (Arch::Llama, _) => "w2",
        (_, 0) => "gate_proj",
        (_, 1) => "up_proj",
        _ => "down_proj",
    };
    for layer in (0..h.n_layer).filter(|&n| moe.is_moe_layer(n)) {
        let has_fused = fused.keys().any(|(l, _)| *l == layer);
        for (p, (role, _)) in PROJ.iter().enumerate() {
            let parsed = Parsed {
                role: *role,
                layer: Some(layer),
                bias: false,
            };
            let shape = parsed.expected_shape(h);
            if has_fused {
                continue;
            }
            let experts = per_expert.remove(&(layer, p)).unwrap_or_default();
            let mut pieces = Vec::new();
            let mut dtype = None;
            for e in 0..n_expert {
                let Some(&i) = experts.get(&e) else {
                    return Err(ConvertError::MissingTensor {
                        tensor: format!("model.layers.{layer}.{hf_prefix}.{e}.{}.weight", wname(p)),
                        why: format!("config.json describes {n_expert} experts in layer {layer}"),
                    });
                };
                let t = &ts[i];
                let want = shape[1..].to_vec();
                if t.shape != want {
                    return Err(shape_err(t, want, parsed.shape_reason(h)));
                }
                check_dtype(t, &found)?;
                dtype.get_or_insert(t.dtype);
                pieces.push(Piece::whole(
                    i,
                    want[0],
                    want[1],
                    found.fp8.get(&i).cloned(),
                ));
            }
            found.assembled.push(Assembled {
                parsed,
                shape,
                gather: Gather::Float(pieces),
                src_dtype: dtype.unwrap_or(DType::F32),
                fixed_type: None,
            });
        }
        if has_fused {
            fused_layer(ts, h, layer, &mut fused, &mut found)?;
        }
    }
    if let Some(((layer, p), _)) = per_expert.into_iter().next() {
        return Err(ConvertError::UnknownTensor {
            tensor: format!("model.layers.{layer}.{hf_prefix}.*.{}.weight", wname(p)),
            arch: format!("{} (layer {layer} has fused experts too)", h.model_type),
        });
    }
    if let Some(((layer, rest), _)) = fused.into_iter().next() {
        return Err(ConvertError::UnknownTensor {
            tensor: format!("model.layers.{layer}.mlp.experts.{rest}"),
            arch: h.model_type.clone(),
        });
    }
    if let Some(mla) = &h.mla {
        for layer in 0..h.n_layer {
            let Some(&i) = kv_b.get(&layer) else {
                return Err(ConvertError::MissingTensor {
                    tensor: format!("model.layers.{layer}.self_attn.kv_b_proj.weight"),
                    why: format!(
                        "config.json describes {} layers with latent attention",
                        h.n_layer
                    ),
                });
            };
            let t = &ts[i];
            // llama.cpp views kv_b by `num_key_value_heads`, which DeepSeek sets to the
            // head count.
            let heads = h.n_head_kv;
            let per = mla.qk_nope + mla.v_head;
            let want = vec![heads * per, mla.kv_lora_rank];
            if t.shape != want || heads != h.n_head {
                return Err(shape_err(
                    t,
                    vec![h.n_head * per, mla.kv_lora_rank],
                    format!(
                        "num_attention_heads {} x (qk_nope_head_dim {} + v_head_dim {}) and kv_lora_rank {}",
                        h.n_head, mla.qk_nope, mla.v_head, mla.kv_lora_rank
                    ),
                ));
            }
            check_dtype(t, &found)?;
            let scale = found.fp8.get(&i).cloned();
            let base = Piece {
                tensor: i,
                scale,
                mat0: 0,
                mats: heads,
                src_rows: per,
                src_cols: mla.kv_lora_rank,
                transpose: false,
                row0: 0,
                row_step: 1,
                n_rows: 0,
                col0: 0,
                col_step: 1,
                n_cols: 0,
            };
            let k_b = Piece {
                transpose: true,
                n_rows: mla.kv_lora_rank,
                n_cols: mla.qk_nope,
                ..base.clone()
            };
            let v_b = Piece {
                row0: mla.qk_nope,
                n_rows: mla.v_head,
                n_cols: mla.kv_lora_rank,
                ..base
            };
            for (role, piece, shape) in [
                (
                    Role::AttnKB,
                    k_b,
                    vec![heads, mla.kv_lora_rank, mla.qk_nope],
                ),
                (Role::AttnVB, v_b, vec![heads, mla.v_head, mla.kv_lora_rank]),
            ] {
                found.assembled.push(Assembled {
                    parsed: Parsed {
                        role,
                        layer: Some(layer),
                        bias: false,
                    },
                    shape,
                    gather: Gather::Float(vec![piece]),
                    src_dtype: t.dtype,
                    fixed_type: None,
                });
            }
        }
    }
    Ok(found)
}

fn check_dtype(t: &TensorInfo, found: &Found) -> Result<(), ConvertError> {
    let ok = elem::decodable(t.dtype) || (t.dtype == DType::F8E4M3 && !found.fp8.is_empty());
    if ok {
        Ok(())
    } else {
        Err(ConvertError::UnsupportedDtype {
            tensor: t.name.as_str().to_owned(),
            dtype: t.dtype.to_string(),
        })
    }
}

/// One layer of fused experts (transformers 5 and gpt-oss): `gate_up_proj` and
/// `down_proj`, with gpt-oss's biases or MXFP4 `_blocks` / `_scales`.
fn fused_layer(
    ts: &[TensorInfo],
    h: &HParams,
    layer: u64,
    fused: &mut BTreeMap<(u64, String), usize>,
    found: &mut Found,
) -> Result<(), ConvertError> {
    let Some(moe) = h.moe.as_ref() else {
        return Ok(());
    };
    let (e, ff, embd) = (moe.n_expert, moe.n_ff_exp, h.n_embd);
    let gpt_oss = h.arch == Arch::GptOss;
    let mut take = |names: &[&str]| -> Option<usize> {
        names
            .iter()
            .find_map(|n| fused.remove(&(layer, (*n).to_owned())))
    };
    let name_of = |i: usize| ts[i].name.as_str().to_owned();
    let missing = |what: &str| ConvertError::MissingTensor {
        tensor: format!("model.layers.{layer}.mlp.experts.{what}"),
        why: format!("layer {layer} stores its experts fused, and needs both projections"),
    };
    let check = |i: usize, want: Vec<u64>, why: String| -> Result<(), ConvertError> {
        let t = &ts[i];
        if t.shape != want {
            return Err(ConvertError::Shape {
                tensor: name_of(i),
                found: t.shape.clone(),
                expected: want,
                why: format!("config.json: {why}"),
            });
        }
        Ok(())
    };
    let why = format!("{e} experts of width {ff} and hidden_size {embd}");
    let mut push =
        |role: Role, bias: bool, shape: Vec<u64>, gather: Gather, dtype: DType, fixed| {
            found.assembled.push(Assembled {
                parsed: Parsed {
                    role,
                    layer: Some(layer),
                    bias,
                },
                shape,
                gather,
                src_dtype: dtype,
                fixed_type: fixed,
            });
        };
    let mat = |tensor: usize, rows: u64, cols: u64, transpose: bool| Piece {
        tensor,
        scale: None,
        mat0: 0,
        mats: e,
        src_rows: rows,
        src_cols: cols,
        transpose,
        row0: 0,
        row_step: 1,
        n_rows: if transpose { cols } else { rows },
        col0: 0,
        col_step: 1,
        n_cols: if transpose { rows } else { cols },
    };
    let gu_blocks = take(&["gate_up_proj_blocks"]);
    let gu_scales = take(&["gate_up_proj_scales"]);
    let d_blocks = take(&["down_proj_blocks"]);
    let d_scales = take(&["down_proj_scales"]);
    let mxfp4 = [gu_blocks, gu_scales, d_blocks, d_scales];
    if mxfp4.iter().any(Option::is_some) {
        let [Some(gb), Some(gs), Some(db), Some(ds)] = mxfp4 else {
            let which = [
                "gate_up_proj_blocks",
                "gate_up_proj_scales",
                "down_proj_blocks",
                "down_proj_scales",
            ];
            let gap = mxfp4.iter().position(Option::is_none).unwrap_or(0);
            return Err(missing(which[gap]));
        };
        // [experts, out rows, n_blocks, 16] and [experts, out rows, n_blocks].
        let mx = |b: usize, s: usize, rows: u64, cols: u64| -> Result<u64, ConvertError> {
            let nb = cols / 32;
            for (i, want) in [(b, vec![e, rows, nb, 16]), (s, vec![e, rows, nb])] {
                if ts[i].dtype != DType::U8 {
                    return Err(ConvertError::UnsupportedDtype {
                        tensor: name_of(i),
                        dtype: format!("{} (MXFP4 blocks and scales are U8)", ts[i].dtype),
                    });
                }
                if !cols.is_multiple_of(32) {
                    return Err(ConvertError::Shape {
                        tensor: name_of(i),
                        found: ts[i].shape.clone(),
                        expected: want,
                        why: format!("MXFP4 rows are whole blocks of 32; {cols} is not"),
                    });
                }
                check(i, want, format!("{why}, MXFP4 blocks of 32"))?;
            }
            Ok(nb)
        };
        let nb = mx(gb, gs, 2 * ff, embd)?;
        for (role, first) in [(Role::FfnGateExps, 0), (Role::FfnUpExps, 1)] {
            push(
                role,
                false,
                vec![e, ff, embd],
                Gather::Mxfp4 {
                    blocks: gb,
                    scales: gs,
                    mats: e,
                    src_rows: 2 * ff,
                    n_blocks: nb,
                    row0: first,
                    row_step: 2,
                    n_rows: ff,
                },
                DType::Ggml(GgmlType::MXFP4),
                Some(GgmlType::MXFP4),
            );
        }
        let nb = mx(db, ds, embd, ff)?;
        push(
            Role::FfnDownExps,
            false,
            vec![e, embd, ff],
            Gather::Mxfp4 {
                blocks: db,
                scales: ds,
                mats: e,
                src_rows: embd,
                n_blocks: nb,
                row0: 0,
                row_step: 1,
                n_rows: embd,
            },
            DType::Ggml(GgmlType::MXFP4),
            Some(GgmlType::MXFP4),
        );
        found.notes.push(format!(
            "layer {layer}: MXFP4 experts repacked into ggml's MXFP4 without decoding"
        ));
    } else {
        let gu = take(&["gate_up_proj", "gate_up_proj.weight"])
            .ok_or_else(|| missing("gate_up_proj"))?;
        let dn = take(&["down_proj", "down_proj.weight"]).ok_or_else(|| missing("down_proj"))?;
        for i in [gu, dn] {
            if !elem::decodable(ts[i].dtype) {
                return Err(ConvertError::UnsupportedDtype {
                    tensor: name_of(i),
                    dtype: ts[i].dtype.to_string(),
                });
            }
        }
        if gpt_oss {
            // [experts, hidden, 2 x ff], gate and up interleaved by column; transposed.
            check(gu, vec![e, embd, 2 * ff], why.clone())?;
            check(dn, vec![e, ff, embd], why.clone())?;
            for (role, first) in [(Role::FfnGateExps, 0), (Role::FfnUpExps, 1)] {
                let p = Piece {
                    row0: first,
                    row_step: 2,
                    n_rows: ff,
                    ..mat(gu, embd, 2 * ff, true)
                };
                push(
                    role,
                    false,
                    vec![e, ff, embd],
                    Gather::Float(vec![p]),
                    ts[gu].dtype,
                    None,
                );
            }
            push(
                Role::FfnDownExps,
                false,
                vec![e, embd, ff],
                Gather::Float(vec![mat(dn, ff, embd, true)]),
                ts[dn].dtype,
                None,
            );
        } else {
            // transformers 5: [experts, 2 x ff, hidden], gate rows first.
            check(gu, vec![e, 2 * ff, embd], why.clone())?;
            check(dn, vec![e, embd, ff], why.clone())?;
            for (role, first) in [(Role::FfnGateExps, 0), (Role::FfnUpExps, ff)] {
                let p = Piece {
                    row0: first,
                    n_rows: ff,
                    ..mat(gu, 2 * ff, embd, false)
                };
                push(
                    role,
                    false,
                    vec![e, ff, embd],
                    Gather::Float(vec![p]),
                    ts[gu].dtype,
                    None,
                );
            }
            push(
                Role::FfnDownExps,
                false,
                vec![e, embd, ff],
                Gather::Float(vec![mat(dn, embd, ff, false)]),
                ts[dn].dtype,
                None,
            );
        }
    }
    if gpt_oss {
        let gub = take(&["gate_up_proj_bias"]).ok_or_else(|| missing("gate_up_proj_bias"))?;
        let db = take(&["down_proj_bias"]).ok_or_else(|| missing("down_proj_bias"))?;
        check(gub, vec![e, 2 * ff], why.clone())?;
        check(db, vec![e, embd], why.clone())?;
        for (role, first) in [(Role::FfnGateExps, 0), (Role::FfnUpExps, 1)] {
            let p = Piece {
                col0: first,
                col_step: 2,
                n_cols: ff,
                ..Piece::whole(gub, e, 2 * ff, None)
            };
            push(
                role,
                true,
                vec![e, ff],
                Gather::Float(vec![p]),
                ts[gub].dtype,
                None,
            );
        }
        push(
            Role::FfnDownExps,
            true,
            vec![e, embd],
            Gather::Float(vec![Piece::whole(db, e, embd, None)]),
            ts[db].dtype,
            None,
        );
    }
    Ok(())
}

/// A plain tensor stored as FP8 with block scales, dequantized on the way.
pub fn fp8_whole(t: &TensorInfo, index: usize, scale: &Fp8Scale) -> Gather {
    let cols = t.shape.last().copied().unwrap_or(1);
    let rows = t.elements() / cols.max(1);
    Gather::Float(vec![Piece::whole(index, rows, cols, Some(scale.clone()))])
}

/// A GGUF tensor of one of the assembled kinds, on the way back to Hugging Face names.
#[derive(Clone, Debug)]
pub struct Stored {
    pub parsed: Parsed,
    pub index: usize,
    pub shape: Vec<u64>,
}

/// One Hugging Face tensor rebuilt from GGUF tensors.
#[derive(Clone, Debug)]
pub struct Rebuilt {
    pub name: String,
    pub shape: Vec<u64>,
    pub gather: Gather,
    pub src_dtype: DType,
}

/// Split stacked experts back into the per-expert tensors transformers saves (gpt-oss:
/// its fused, transposed, interleaved `gate_up_proj` and `down_proj` with biases), and
/// join DeepSeek's `attn_k_b` / `attn_v_b` back into `kv_b_proj`.
pub fn rebuild_hf(
    h: &HParams,
    stored: &[Stored],
    ts: &[TensorInfo],
) -> Result<Vec<Rebuilt>, ConvertError> {
    let mut out = Vec::new();
    let find = |layer: u64, role: Role, bias: bool| -> Result<&Stored, ConvertError> {
        stored
            .iter()
            .find(|s| {
                s.parsed.layer == Some(layer) && s.parsed.role == role && s.parsed.bias == bias
            })
            .ok_or_else(|| ConvertError::MissingTensor {
                tensor: Parsed {
                    role,
                    layer: Some(layer),
                    bias,
                }
                .gguf_name(h.arch),
                why: format!("layer {layer} has the other parts of it"),
            })
    };
    let layers: std::collections::BTreeSet<u64> =
        stored.iter().filter_map(|s| s.parsed.layer).collect();
    let dtype = |s: &Stored| ts.get(s.index).map_or(DType::F32, |t| t.dtype);
    let whole = |s: &Stored, mat0: u64, transpose: bool| -> Piece {
        let (mats, rows, cols) = match s.shape.as_slice() {
            [m, r, c] => (*m, *r, *c),
            [r, c] => (1, *r, *c),
            _ => (1, 1, s.shape.iter().product()),
        };
        Piece {
            tensor: s.index,
            scale: None,
            mat0,
            mats: if mat0 == u64::MAX { mats } else { 1 },
            src_rows: rows,
            src_cols: cols,
            transpose,
            row0: 0,
            row_step: 1,
            n_rows: if transpose { cols } else { rows },
            col0: 0,
            col_step: 1,
            n_cols: if transpose { rows } else { cols },
        }
    };
    let all = |p: Piece| Piece { mat0: 0, ..p };
    for layer in layers {
        let prefix = format!("model.layers.{layer}");
        let has = |role: Role| {
            stored
                .iter()
                .any(|s| s.parsed.layer == Some(layer) && s.parsed.role == role)
        };
        if has(Role::FfnGateExps) || has(Role::FfnUpExps) || has(Role::FfnDownExps) {
            let (g, u, d) = (
                find(layer, Role::FfnGateExps, false)?,
                find(layer, Role::FfnUpExps, false)?,
                find(layer, Role::FfnDownExps, false)?,
            );
            if h.arch == Arch::GptOss {
                let (e, ff, embd) = (g.shape[0], g.shape[1], g.shape[2]);
                out.push(Rebuilt {
                    name: format!("{prefix}.mlp.experts.gate_up_proj"),
                    shape: vec![e, embd, 2 * ff],
                    gather: Gather::Interleave(
                        vec![all(whole(g, u64::MAX, true))],
                        vec![all(whole(u, u64::MAX, true))],
                    ),
                    src_dtype: dtype(g),
                });
                out.push(Rebuilt {
                    name: format!("{prefix}.mlp.experts.down_proj"),
                    shape: vec![e, ff, embd],
                    gather: Gather::Float(vec![all(whole(d, u64::MAX, true))]),
                    src_dtype: dtype(d),
                });
                let (gb, ub, db) = (
                    find(layer, Role::FfnGateExps, true)?,
                    find(layer, Role::FfnUpExps, true)?,
                    find(layer, Role::FfnDownExps, true)?,
                );
                out.push(Rebuilt {
                    name: format!("{prefix}.mlp.experts.gate_up_proj_bias"),
                    shape: vec![e, 2 * ff],
                    gather: Gather::Interleave(
                        vec![whole(gb, 0, false)],
                        vec![whole(ub, 0, false)],
                    ),
                    src_dtype: dtype(gb),
                });
                out.push(Rebuilt {
                    name: format!("{prefix}.mlp.experts.down_proj_bias"),
                    shape: db.shape.clone(),
                    gather: Gather::Float(vec![whole(db, 0, false)]),
                    src_dtype: dtype(db),
                });
            } else {
                let (group, names) = if h.arch == Arch::Llama {
                    ("block_sparse_moe.experts", ["w1", "w3", "w2"])
                } else {
                    ("mlp.experts", ["gate_proj", "up_proj", "down_proj"])
                };
                for (s, w) in [g, u, d].into_iter().zip(names) {
                    for e in 0..s.shape[0] {
                        out.push(Rebuilt {
                            name: format!("{prefix}.{group}.{e}.{w}.weight"),
                            shape: s.shape[1..].to_vec(),
                            gather: Gather::Float(vec![whole(s, e, false)]),
                            src_dtype: dtype(s),
                        });
                    }
                }
            }
        }
        if has(Role::AttnKB) || has(Role::AttnVB) {
            let (kb, vb) = (
                find(layer, Role::AttnKB, false)?,
                find(layer, Role::AttnVB, false)?,
            );
            // k_b [heads, kv_lora, nope] (transposed back), v_b [heads, v, kv_lora].
            let (heads, kv_lora, nope, v) = (kb.shape[0], kb.shape[1], kb.shape[2], vb.shape[1]);
            let mut pieces = Vec::new();
            for hd in 0..heads {
                pieces.push(whole(kb, hd, true));
                pieces.push(whole(vb, hd, false));
            }
            out.push(Rebuilt {
                name: format!("{prefix}.self_attn.kv_b_proj.weight"),
                shape: vec![heads * (nope + v), kv_lora],
                gather: Gather::Float(pieces),
                src_dtype: dtype(kb),
            });
        }
    }
    Ok(out)
}
