//! Block-format kernels: quantize rows of `f32` into ggml's tensor types and dequantize them
//! back, on all cores.
//!
//! This is the arithmetic under the convert stage: the planner picks a target type per
//! tensor, the reader hands over rows as `f32` (see [`dequantize`] for F16/BF16 sources,
//! or for GGUF tensors being requantized), and the writer stores the bytes these functions
//! return. Types: F32, F16, BF16 and the block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
//! Q3_K, Q4_K, Q5_K, Q6_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0,
//! TQ2_0 and MXFP4, with the byte layouts of ggml's `block_*` structs.
//!
//! Why not candle: candle-core's quantizers run on one thread and its K-quant search
//! (`make_qkx1_quants`) is simpler than ggml's current reference, so it loses a little
//! quality and does not reproduce `llama-quantize`. The quantizers here follow ggml's
//! reference quantizers (`quantize_row_*_ref`, what `llama-quantize` runs without an
//! importance matrix: `make_qx_quants`, `make_q3_quants`, and `make_qkx2_quants` with its
//! weighted search) operation for operation in `f32`, so they write ggml's bytes; the
//! dequantizers use ggml's arithmetic, so they give ggml's values bit for bit. The
//! K-quant searches run all groups of a super-block in lockstep so the compiler can
//! vectorise them without reordering any sum (see `search`).
//!
//! Rows and threads: a row must be a whole number of blocks (32 values for the legacy types,
//! 256 for K types); [`row_fits`] says whether it is, so the planner can fall back to a type
//! that fits. Work is split into chunks of whole blocks and run on the rayon pool the
//! caller is in (`pool.install(|| quantize_rows(..))` picks the threads); every block is
//! quantized on its own, so the bytes do not depend on the number of threads.
//!
//! Importance (imatrix) quantization: [`quantize_rows_weighted`] takes a tensor's per-column
//! importance and runs ggml's weighted quantizers (`weighted`, and the IQ4 types in
//! `iquants`), what `llama-quantize --imatrix` runs; without importance the bytes are those
//! above. IQ4_NL and IQ4_XS are quantized as `llama-quantize` quantizes them (ggml's
//! `quantize_iq4_*` with 7 scale trials), TQ1_0 and TQ2_0 with ggml's reference. The IQ2
//! and IQ3 lattice types are quantized by ggml's searches over their grids (`iq2`,
//! `lattice`, `iq3`);
//! IQ2_XXS and IQ2_XS exist only with importance ([`QuantError::NeedsImportance`] without).
//!
//! Source formats that are not ggml types, for the converter's readers: gpt-oss's Hugging
//! Face MXFP4 layout repacked into ggml's MXFP4 without decoding ([`repack_hf_mxfp4`]), and
//! FP8 E4M3 weights with block scales (DeepSeek-V3/R1) dequantized as llama.cpp's converter
//! does ([`dequantize_fp8_e4m3`]).
//!
//! IQ1_S and IQ1_M take ggml's exact three-level splits (`iq1`); IQ1_S only with importance.
//!
//! Not built: NVFP4.

mod float;
mod fp8;
mod iq1;
mod iq2;
mod iq3;
mod iquants;
mod kquants;
mod lattice;
mod legacy;
mod mxfp4;
mod search;
mod weighted;

pub use fp8::{dequantize_fp8_e4m3, f8_e4m3_to_f32, Fp8Scale};
pub use mxfp4::repack_hf_mxfp4;

use half::f16;
use rayon::prelude::*;

use crate::formats::GgmlType;

/// What went wrong quantizing or dequantizing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// The type has no kernel here.
    #[error(
        "cannot convert to or from `{ty}`: supported types are {}",
        supported_names()
    )]
    Unsupported { ty: GgmlType },
    /// Rows do not divide into the type's blocks.
    #[error("a row of {row_len} values does not divide into `{ty}` blocks of {block} values")]
    RowNotBlocks {
        ty: GgmlType,
        row_len: usize,
        block: usize,
    },
    /// The input is not a whole number of rows.
    #[error("{len} values are not a whole number of rows of {row_len}")]
    PartialRow { len: usize, row_len: usize },
    /// Block types cannot hold NaN or infinity.
    #[error("value {index} is {value}, which `{ty}` cannot represent")]
    NonFinite {
        ty: GgmlType,
        index: usize,
        value: f32,
    },
    /// The bytes are not a whole number of blocks.
    #[error("{len} bytes are not a whole number of `{ty}` blocks of {block_bytes} bytes")]
    PartialBlock {
        ty: GgmlType,
        len: usize,
        block_bytes: usize,
    },
    /// A type that ggml quantizes only with an importance vector.
    #[error("`{ty}` needs an importance matrix (imatrix) to quantize")]
    NeedsImportance { ty: GgmlType },
    /// An importance vector whose length is not the row length.
    #[error("the importance has {len} values for rows of {row_len}")]
    ImportanceLen { len: usize, row_len: usize },
    /// An importance value that is negative or not finite.
    #[error("importance value {index} is {value}; it must be finite and non-negative")]
    BadImportance { index: usize, value: f32 },
    /// An output buffer of the wrong size.
    #[error("`{ty}` data for {values} values needs {need} {unit}, the buffer has {have}")]
    OutputSize {
        ty: GgmlType,
        values: usize,
        need: usize,
        have: usize,
        unit: &'static str,
    },
    /// Hugging Face MXFP4 blocks that are not whole 16-byte blocks.
    #[error("the MXFP4 blocks of `{tensor}` are {len} bytes, not whole blocks of 16 bytes")]
    Mxfp4Blocks { tensor: String, len: usize },
    /// Hugging Face MXFP4 scales that are not one per block.
    #[error(
        "the MXFP4 tensor `{tensor}` has {blocks} blocks but {scales} scales; \
         it needs one scale byte per block"
    )]
    Mxfp4Scales {
        tensor: String,
        blocks: usize,
        scales: usize,
    },
    /// An E8M0 scale of 255, which the format reserves for NaN.
    #[error("the MXFP4 tensor `{tensor}` has scale 255 (NaN in E8M0) at block {block}")]
    Mxfp4NanScale { tensor: String, block: usize },
    /// An FP8 weight whose scale tensor is missing.
    #[error("the FP8 tensor `{tensor}` has no scale (`{tensor}_scale_inv`)")]
    Fp8MissingScale { tensor: String },
    /// An FP8 weight whose bytes or scale do not fit its shape.
    #[error("the FP8 tensor `{tensor}` and its scale disagree: {detail}")]
    Fp8Shape { tensor: String, detail: String },
}

impl QuantError {
    /// What the user can do about it, where there is something.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            QuantError::Unsupported { .. } => Some("pick one of the supported types"),
            QuantError::NeedsImportance { .. } => {
                Some("give an imatrix (`--imatrix FILE`) or pick another type")
            }
            QuantError::Mxfp4Blocks { .. }
            | QuantError::Mxfp4Scales { .. }
            | QuantError::Mxfp4NanScale { .. } => Some(
                "the checkpoint's `*_blocks` must be [..., n_blocks, 16] bytes and its \
                 `*_scales` [..., n_blocks]; the download may be damaged",
            ),
            QuantError::Fp8MissingScale { .. } | QuantError::Fp8Shape { .. } => Some(
                "FP8 checkpoints need every `weight_scale_inv` with one scale per \
                 `weight_block_size` block of config.json's `quantization_config`",
            ),
            _ => None,
        }
    }
}

/// Every type this module converts to and from, in ggml id order.
pub const SUPPORTED: [GgmlType; 25] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ3XXS,
    GgmlType::IQ1S,
    GgmlType::IQ1M,
    GgmlType::IQ4NL,
    GgmlType::IQ3S,
    GgmlType::IQ2S,
    GgmlType::IQ4XS,
    GgmlType::BF16,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
];

fn supported_names() -> String {
    SUPPORTED
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether this module can write and read `ty`.
pub fn supported(ty: GgmlType) -> bool {
    SUPPORTED.contains(&ty)
}

/// Whether `ty` can be written only with an importance vector (ggml's
/// `ggml_quantize_requires_imatrix` among the supported types): [`quantize_rows`] refuses
/// it, [`quantize_rows_weighted`] needs `Some`.
pub fn needs_importance(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ1S)
}

/// Values per block and bytes per block of a supported type.
fn layout(ty: GgmlType) -> Result<(usize, usize), QuantError> {
    use GgmlType as T;
    Ok(match ty {
        T::F32 => (1, 4),
        T::F16 | T::BF16 => (1, 2),
        T::Q4_0 => (legacy::QK, legacy::Q4_0_BYTES),
        T::Q4_1 => (legacy::QK, legacy::Q4_1_BYTES),
        T::Q5_0 => (legacy::QK, legacy::Q5_0_BYTES),
        T::Q5_1 => (legacy::QK, legacy::Q5_1_BYTES),
        T::Q8_0 => (legacy::QK, legacy::Q8_0_BYTES),
        T::Q2K => (kquants::QK_K, kquants::Q2K_BYTES),
        T::Q3K => (kquants::QK_K, kquants::Q3K_BYTES),
        T::Q4K => (kquants::QK_K, kquants::Q4K_BYTES),
        T::Q5K => (kquants::QK_K, kquants::Q5K_BYTES),
        T::Q6K => (kquants::QK_K, kquants::Q6K_BYTES),
        T::IQ2XXS => (kquants::QK_K, iq2::IQ2_XXS_BYTES),
        T::IQ2XS => (kquants::QK_K, iq2::IQ2_XS_BYTES),
        T::IQ2S => (kquants::QK_K, iq2::IQ2_S_BYTES),
        T::IQ3XXS => (kquants::QK_K, iq3::IQ3_XXS_BYTES),
        T::IQ3S => (kquants::QK_K, iq3::IQ3_S_BYTES),
        T::IQ1S => (kquants::QK_K, iq1::IQ1_S_BYTES),
        T::IQ1M => (kquants::QK_K, iq1::IQ1_M_BYTES),
        T::IQ4NL => (legacy::QK, iquants::IQ4_NL_BYTES),
        T::IQ4XS => (kquants::QK_K, iquants::IQ4_XS_BYTES),
        T::TQ1_0 => (kquants::QK_K, iquants::TQ1_0_BYTES),
        T::TQ2_0 => (kquants::QK_K, iquants::TQ2_0_BYTES),
        T::MXFP4 => (mxfp4::QK, mxfp4::MXFP4_BYTES),
        ty => return Err(QuantError::Unsupported { ty }),
    })
}

/// Values per block of a supported type (1 for F32/F16/BF16).
pub fn block_len(ty: GgmlType) -> Option<usize> {
    layout(ty).ok().map(|(b, _)| b)
}

/// Whether rows of `row_len` values can be stored as `ty`: the type is supported and the
/// row is a non-empty whole number of blocks.
pub fn row_fits(ty: GgmlType, row_len: usize) -> bool {
    matches!(layout(ty), Ok((block, _)) if row_len > 0 && row_len.is_multiple_of(block))
}

/// Bytes taken by one row of `row_len` values stored as `ty`.
pub fn row_bytes(ty: GgmlType, row_len: usize) -> Result<usize, QuantError> {
    let (block, bytes) = layout(ty)?;
    if row_len == 0 || !row_len.is_multiple_of(block) {
        return Err(QuantError::RowNotBlocks { ty, row_len, block });
    }
    Ok(row_len / block * bytes)
}

/// Values per parallel task: large enough that scheduling costs nothing next to the
/// arithmetic, small enough that a single big tensor spreads over every core.
const TASK_VALUES: usize = 1 << 16;

/// Quantize whole rows of `src` (each `row_len` values) to `ty` and append the bytes to
/// `out`. On error `out` is left as it was.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), QuantError> {
    let need = quantized_len(ty, src.len(), row_len)?;
    let start = out.len();
    out.resize(start + need, 0);
    let result = quantize_into(ty, src, row_len, &mut out[start..]);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Bytes needed for `len` values in rows of `row_len`, after checking the shapes.
fn quantized_len(ty: GgmlType, len: usize, row_len: usize) -> Result<usize, QuantError> {
    let per_row = row_bytes(ty, row_len)?;
    if !len.is_multiple_of(row_len) {
        return Err(QuantError::PartialRow { len, row_len });
    }
    Ok(len / row_len * per_row)
}

/// Quantize whole rows of `src` to `ty` into `dst`, which must be exactly the right size.
pub fn quantize_into(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let need = quantized_len(ty, src.len(), row_len)?;
    if dst.len() != need {
        return Err(QuantError::OutputSize {
            ty,
            values: src.len(),
            need,
            have: dst.len(),
            unit: "bytes",
        });
    }
    if needs_importance(ty) {
        return Err(QuantError::NeedsImportance { ty });
    }
    let (block, bytes) = layout(ty)?;
    let blocks_per_task = (TASK_VALUES / block).max(1);
    let checked = ty.is_quantized();
    let failures: Vec<Option<usize>> = src
        .par_chunks(blocks_per_task * block)
        .zip(dst.par_chunks_mut(blocks_per_task * bytes))
        .enumerate()
        .map(|(task, (x, y))| {
            if checked && !all_finite(x) {
                let at = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Some(task * blocks_per_task * block + at);
            }
            quantize_chunk(ty, x, y);
            None
        })
        .collect();
    // The first bad value in input order, whichever thread met it, so errors are
    // deterministic too.
    match failures.into_iter().flatten().next() {
        Some(index) => Err(QuantError::NonFinite {
            ty,
            index,
            value: src[index],
        }),
        None => Ok(()),
    }
}

/// [`quantize_rows`] with an optional per-column importance (an imatrix entry, see
/// `formats::imatrix::Imatrix::importance`), `row_len` values long. With `Some`, the types
/// `llama-quantize` quantizes differently under an imatrix (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K,
/// IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS) run ggml's importance-weighted quantizers and
/// write its bytes; the other types ignore it, as ggml does. With `None` the bytes are
/// exactly [`quantize_rows`]' (an error for the types of [`needs_importance`]).
pub fn quantize_rows_weighted(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    out: &mut Vec<u8>,
) -> Result<(), QuantError> {
    let need = quantized_len(ty, src.len(), row_len)?;
    let start = out.len();
    out.resize(start + need, 0);
    let result = quantize_into_weighted(ty, src, row_len, importance, &mut out[start..]);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// A row quantizer that takes the row's importance.
type RowFn = fn(&[f32], &[f32], &mut [u8]);

/// The importance-weighted row quantizer of `ty`, if ggml has one.
fn weighted_row(ty: GgmlType) -> Option<RowFn> {
    use GgmlType as T;
    let f: RowFn = match ty {
        T::Q4_0 => weighted::q4_0_row,
        T::Q4_1 => weighted::q4_1_row,
        T::Q5_0 => weighted::q5_0_row,
        T::Q5_1 => weighted::q5_1_row,
        T::Q2K => weighted::q2k_row,
        T::Q3K => weighted::q3k_row,
        T::Q4K => weighted::q4k_row,
        T::Q5K => weighted::q5k_row,
        T::Q6K => weighted::q6k_row,
        T::IQ2XXS => iq2::iq2_xxs_row,
        T::IQ2XS => iq2::iq2_xs_row,
        T::IQ2S => iq2::iq2_s_row,
        T::IQ3XXS => {
            |x, qw, y| weighted_blocks(x, qw, y, iq3::IQ3_XXS_BYTES, iq3::quantize_iq3_xxs)
        }
        T::IQ3S => |x, qw, y| weighted_blocks(x, qw, y, iq3::IQ3_S_BYTES, iq3::quantize_iq3_s),
        T::IQ1M => |x, qw, y| weighted_blocks(x, qw, y, iq1::IQ1_M_BYTES, iq1::quantize_iq1_m),
        T::IQ1S => |x, qw, y| {
            let it = x
                .chunks_exact(kquants::QK_K)
                .zip(qw.chunks_exact(kquants::QK_K));
            for ((x, qw), y) in it.zip(y.chunks_exact_mut(iq1::IQ1_S_BYTES)) {
                iq1::quantize_iq1_s(x, qw, y);
            }
        },
        T::IQ4NL => |x, qw, y| iquants::quantize_iq4_nl_row(x, Some(qw), y),
        T::IQ4XS => |x, qw, y| {
            let it = x
                .chunks_exact(kquants::QK_K)
                .zip(qw.chunks_exact(kquants::QK_K));
            for ((x, qw), y) in it.zip(y.chunks_exact_mut(iquants::IQ4_XS_BYTES)) {
                iquants::quantize_iq4_xs(x, Some(qw), y);
            }
        },
        _ => return None,
    };
    Some(f)
}

/// Run a super-block quantizer that takes optional importance over a row, with importance.
fn weighted_blocks(
    x: &[f32],
    qw: &[f32],
    y: &mut [u8],
    bytes: usize,
    f: fn(&[f32], Option<&[f32]>, &mut [u8]),
) {
    let k = kquants::QK_K;
    let it = x.chunks_exact(k).zip(qw.chunks_exact(k));
    for ((x, qw), y) in it.zip(y.chunks_exact_mut(bytes)) {
        f(x, Some(qw), y);
    }
}

/// [`quantize_into`] with an optional per-column importance (see [`quantize_rows_weighted`]).
pub fn quantize_into_weighted(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let (Some(qw), Some(row_fn)) = (importance, weighted_row(ty)) else {
        return quantize_into(ty, src, row_len, dst);
    };
    let need = quantized_len(ty, src.len(), row_len)?;
    if dst.len() != need {
        return Err(QuantError::OutputSize {
            ty,
            values: src.len(),
            need,
            have: dst.len(),
            unit: "bytes",
        });
    }
    if qw.len() != row_len {
        return Err(QuantError::ImportanceLen {
            len: qw.len(),
            row_len,
        });
    }
    if let Some(index) = qw.iter().position(|v| !v.is_finite() || *v < 0.0) {
        return Err(QuantError::BadImportance {
            index,
            value: qw[index],
        });
    }
    // The legacy types' weights depend on the whole row, so work is cut into whole rows.
    let row_bytes = need / (src.len() / row_len).max(1);
    let rows_per_task = (TASK_VALUES / row_len).max(1);
    let failures: Vec<Option<usize>> = src
        .par_chunks(rows_per_task * row_len)
        .zip(dst.par_chunks_mut(rows_per_task * row_bytes))
        .enumerate()
        .map(|(task, (x, y))| {
            if !all_finite(x) {
                let at = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Some(task * rows_per_task * row_len + at);
            }
            for (xr, yr) in x.chunks_exact(row_len).zip(y.chunks_exact_mut(row_bytes)) {
                row_fn(xr, qw, yr);
            }
            None
        })
        .collect();
    match failures.into_iter().flatten().next() {
        Some(index) => Err(QuantError::NonFinite {
            ty,
            index,
            value: src[index],
        }),
        None => Ok(()),
    }
}

/// Whether every value is finite; written as a bitwise fold so that it vectorises.
fn all_finite(x: &[f32]) -> bool {
    let exp = 0x7f80_0000u32;
    x.iter()
        .fold(0u32, |bad, v| bad | u32::from(v.to_bits() & exp == exp))
        == 0
}

/// Run one block quantizer over every block of a chunk.
#[inline(always)]
fn each_block(x: &[f32], y: &mut [u8], block: usize, bytes: usize, f: fn(&[f32], &mut [u8])) {
    for (x, y) in x.chunks_exact(block).zip(y.chunks_exact_mut(bytes)) {
        f(x, y);
    }
}

/// Quantize a chunk of whole blocks; shapes were checked by the caller.
fn quantize_chunk(ty: GgmlType, x: &[f32], y: &mut [u8]) {
    use GgmlType as T;
    const L: usize = legacy::QK;
    const K: usize = kquants::QK_K;
    match ty {
        T::F32 => float::f32_to_bytes(x, y),
        T::F16 => float::f32_to_f16_bytes(x, y),
        T::BF16 => float::f32_to_bf16_bytes(x, y),
        T::Q4_0 => each_block(x, y, L, legacy::Q4_0_BYTES, legacy::quantize_q4_0),
        T::Q4_1 => each_block(x, y, L, legacy::Q4_1_BYTES, legacy::quantize_q4_1),
        T::Q5_0 => each_block(x, y, L, legacy::Q5_0_BYTES, legacy::quantize_q5_0),
        T::Q5_1 => each_block(x, y, L, legacy::Q5_1_BYTES, legacy::quantize_q5_1),
        T::Q8_0 => each_block(x, y, L, legacy::Q8_0_BYTES, legacy::quantize_q8_0),
        T::Q2K => each_block(x, y, K, kquants::Q2K_BYTES, kquants::quantize_q2k),
        T::Q3K => each_block(x, y, K, kquants::Q3K_BYTES, kquants::quantize_q3k),
        T::Q4K => each_block(x, y, K, kquants::Q4K_BYTES, kquants::quantize_q4k),
        T::Q5K => each_block(x, y, K, kquants::Q5K_BYTES, kquants::quantize_q5k),
        T::Q6K => each_block(x, y, K, kquants::Q6K_BYTES, kquants::quantize_q6k),
        T::IQ2S => each_block(x, y, K, iq2::IQ2_S_BYTES, iq2::quantize_iq2_s),
        T::IQ4NL => iquants::quantize_iq4_nl_row(x, None, y),
        T::IQ4XS => each_block(x, y, K, iquants::IQ4_XS_BYTES, |x, y| {
            iquants::quantize_iq4_xs(x, None, y)
        }),
        T::IQ3XXS => each_block(x, y, K, iq3::IQ3_XXS_BYTES, |x, y| {
            iq3::quantize_iq3_xxs(x, None, y)
        }),
        T::IQ3S => each_block(x, y, K, iq3::IQ3_S_BYTES, |x, y| {
            iq3::quantize_iq3_s(x, None, y)
        }),
        T::IQ1M => each_block(x, y, K, iq1::IQ1_M_BYTES, |x, y| {
            iq1::quantize_iq1_m(x, None, y)
        }),
        T::TQ1_0 => each_block(x, y, K, iquants::TQ1_0_BYTES, iquants::quantize_tq1_0),
        T::TQ2_0 => each_block(x, y, K, iquants::TQ2_0_BYTES, iquants::quantize_tq2_0),
        T::MXFP4 => each_block(x, y, L, mxfp4::MXFP4_BYTES, mxfp4::quantize_mxfp4),
        // `layout` refused every other type before any chunk was cut.
        _ => {}
    }
}

/// Dequantize `bytes` of type `ty` into `out`, which must hold exactly the values the bytes
/// encode. Values are ggml's, bit for bit.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let (block, block_bytes) = layout(ty)?;
    if !bytes.len().is_multiple_of(block_bytes) {
        return Err(QuantError::PartialBlock {
            ty,
            len: bytes.len(),
            block_bytes,
        });
    }
    let values = bytes.len() / block_bytes * block;
    if out.len() != values {
        return Err(QuantError::OutputSize {
            ty,
            values,
            need: values,
            have: out.len(),
            unit: "values",
        });
    }
    let blocks_per_task = (TASK_VALUES / block).max(1);
    bytes
        .par_chunks(blocks_per_task * block_bytes)
        .zip(out.par_chunks_mut(blocks_per_task * block))
        .for_each(|(b, y)| dequantize_chunk(ty, b, y));
    Ok(())
}

/// [`dequantize`] into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    let (block, block_bytes) = layout(ty)?;
    let mut out = vec![0.0; bytes.len() / block_bytes * block];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

#[inline(always)]
fn each_block_back(b: &[u8], y: &mut [f32], block: usize, bytes: usize, f: fn(&[u8], &mut [f32])) {
    for (b, y) in b.chunks_exact(bytes).zip(y.chunks_exact_mut(block)) {
        f(b, y);
    }
}

fn dequantize_chunk(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    use GgmlType as T;
    const L: usize = legacy::QK;
    const K: usize = kquants::QK_K;
    match ty {
        T::F32 => float::bytes_to_f32(b, y),
        T::F16 => float::f16_bytes_to_f32(b, y),
        T::BF16 => float::bf16_bytes_to_f32(b, y),
        T::Q4_0 => each_block_back(b, y, L, legacy::Q4_0_BYTES, legacy::dequantize_q4_0),
        T::Q4_1 => each_block_back(b, y, L, legacy::Q4_1_BYTES, legacy::dequantize_q4_1),
        T::Q5_0 => each_block_back(b, y, L, legacy::Q5_0_BYTES, legacy::dequantize_q5_0),
        T::Q5_1 => each_block_back(b, y, L, legacy::Q5_1_BYTES, legacy::dequantize_q5_1),
        T::Q8_0 => each_block_back(b, y, L, legacy::Q8_0_BYTES, legacy::dequantize_q8_0),
        T::Q2K => each_block_back(b, y, K, kquants::Q2K_BYTES, kquants::dequantize_q2k),
        T::Q3K => each_block_back(b, y, K, kquants::Q3K_BYTES, kquants::dequantize_q3k),
        T::Q4K => each_block_back(b, y, K, kquants::Q4K_BYTES, kquants::dequantize_q4k),
        T::Q5K => each_block_back(b, y, K, kquants::Q5K_BYTES, kquants::dequantize_q5k),
        T::Q6K => each_block_back(b, y, K, kquants::Q6K_BYTES, kquants::dequantize_q6k),
        T::IQ2XXS => each_block_back(b, y, K, iq2::IQ2_XXS_BYTES, crate::formats::iq2::iq2_xxs),
        T::IQ2XS => each_block_back(b, y, K, iq2::IQ2_XS_BYTES, crate::formats::iq2::iq2_xs),
        T::IQ2S => each_block_back(b, y, K, iq2::IQ2_S_BYTES, crate::formats::iq2::iq2_s),
        T::IQ4NL => each_block_back(
            b,
            y,
            L,
            iquants::IQ4_NL_BYTES,
            crate::formats::blocks::iq4_nl,
        ),
        T::IQ4XS => each_block_back(
            b,
            y,
            K,
            iquants::IQ4_XS_BYTES,
            crate::formats::blocks::iq4_xs,
        ),
        T::IQ3XXS => each_block_back(b, y, K, iq3::IQ3_XXS_BYTES, crate::formats::iq3::iq3_xxs),
        T::IQ3S => each_block_back(b, y, K, iq3::IQ3_S_BYTES, crate::formats::iq3::iq3_s),
        T::IQ1S => each_block_back(b, y, K, iq1::IQ1_S_BYTES, crate::formats::iq1::iq1_s),
        T::IQ1M => each_block_back(b, y, K, iq1::IQ1_M_BYTES, crate::formats::iq1::iq1_m),
        T::TQ1_0 => each_block_back(b, y, K, iquants::TQ1_0_BYTES, crate::formats::blocks::tq1_0),
        T::TQ2_0 => each_block_back(b, y, K, iquants::TQ2_0_BYTES, crate::formats::blocks::tq2_0),
        T::MXFP4 => each_block_back(b, y, L, mxfp4::MXFP4_BYTES, crate::formats::blocks::mxfp4),
        _ => {}
    }
}

/// Store `v` as an IEEE half (round to nearest even, as ggml's `GGML_FP32_TO_FP16`),
/// little-endian, into the first two bytes of `dst`.
#[inline(always)]
fn put_f16(dst: &mut [u8], v: f32) {
    dst[..2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// The little-endian IEEE half at `at`, as `f32` (exact).
#[inline(always)]
fn f16_at(src: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([src[at], src[at + 1]])).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's test vector (`test-quantize-fns`): 0.1 + 2 cos(i) for 4096 values.
    fn ggml_test_vector() -> Vec<f32> {
        (0..4096).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect()
    }

    /// ggml's error measure: sqrt(sum of squared differences) / n.
    fn ggml_error(a: &[f32], b: &[f32]) -> f32 {
        let sum: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y) * f64::from(x - y))
            .sum();
        sum.sqrt() as f32 / a.len() as f32
    }

    /// [`quantize_rows`], with uniform importance for the types that need importance.
    fn quantize_any(ty: GgmlType, x: &[f32], row_len: usize, out: &mut Vec<u8>) {
        let ones = vec![1.0f32; row_len];
        let qw = needs_importance(ty).then_some(&ones[..]);
        quantize_rows_weighted(ty, x, row_len, qw, out).unwrap();
    }

    /// ggml's thresholds: 2-bit 0.0075, 3-bit 0.004, otherwise 0.002.
    fn threshold(ty: GgmlType) -> f32 {
        match ty {
            GgmlType::Q2K | GgmlType::IQ2S => 0.0075,
            // ggml's test skips the types that need an imatrix; with uniform importance
            // they land between 2-bit and ternary.
            GgmlType::IQ2XXS | GgmlType::IQ2XS => 0.012,
            GgmlType::Q3K | GgmlType::IQ3S => 0.004,
            GgmlType::IQ3XXS => 0.005,
            // ggml's test skips the 1-bit types; three shifted levels per value.
            GgmlType::IQ1S | GgmlType::IQ1M => 0.02,
            GgmlType::TQ1_0 | GgmlType::TQ2_0 => 0.012,
            // ggml's MAX_QUANTIZATION_TOTAL_ERROR_FP4.
            GgmlType::MXFP4 => 0.003,
            _ => 0.002,
        }
    }

    #[test]
    fn every_type_round_trips_within_ggml_thresholds() {
        let x = ggml_test_vector();
        for ty in SUPPORTED {
            let mut bytes = Vec::new();
            quantize_any(ty, &x, 4096, &mut bytes);
            assert_eq!(Some(bytes.len() as u64), ty.bytes_for(4096), "{ty}");
            let y = dequantize_to_vec(ty, &bytes).unwrap();
            let err = ggml_error(&x, &y);
            eprintln!(
                "{ty}: ggml round-trip error {err:.6} (threshold {})",
                threshold(ty)
            );
            assert!(err < threshold(ty), "{ty}: error {err}");
            if ty == GgmlType::F32 {
                assert_eq!(x, y);
            }
        }
    }

    #[test]
    fn layouts_agree_with_the_format_table() {
        for ty in SUPPORTED {
            let (block, bytes) = layout(ty).unwrap();
            assert_eq!(ty.block(), Some((block as u64, bytes as u64)), "{ty}");
        }
        assert!(!supported(GgmlType::Q8K));
        assert!(!supported(GgmlType::Q8_1));
    }

    #[test]
    fn shapes_are_checked() {
        assert!(row_fits(GgmlType::Q4K, 512));
        assert!(!row_fits(GgmlType::Q4K, 576));
        assert!(row_fits(GgmlType::Q4_0, 576));
        assert!(!row_fits(GgmlType::Q4_0, 0));
        assert!(!row_fits(GgmlType::Q8_1, 32));
        let mut out = vec![7u8];
        let err = quantize_rows(GgmlType::Q4K, &[0.0; 576], 576, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a row of 576 values does not divide into `Q4_K` blocks of 256 values"
        );
        assert_eq!(out, [7]);
        let err = quantize_rows(GgmlType::Q8_0, &[0.0; 48], 32, &mut out).unwrap_err();
        assert_eq!(
            err,
            QuantError::PartialRow {
                len: 48,
                row_len: 32
            }
        );
        let err = quantize_rows(GgmlType::Q8K, &[0.0; 256], 256, &mut out).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot convert to or from `Q8_K`"));
        let err = dequantize(GgmlType::Q4_1, &[0u8; 30], &mut [0.0; 32]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "30 bytes are not a whole number of `Q4_1` blocks of 20 bytes"
        );
        let err = dequantize(GgmlType::Q4_1, &[0u8; 20], &mut [0.0; 31]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`Q4_1` data for 32 values needs 32 values, the buffer has 31"
        );
        let err = quantize_rows(GgmlType::IQ2XS, &[0.0; 256], 256, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`IQ2_XS` needs an importance matrix (imatrix) to quantize"
        );
        let mut dst = [0u8; 10];
        assert!(quantize_into(GgmlType::Q8_0, &[0.0; 32], 32, &mut dst).is_err());
    }

    #[test]
    fn non_finite_values_are_refused_by_block_types_only() {
        let mut x = vec![0.5f32; 3 * TASK_VALUES];
        x[TASK_VALUES + 77] = f32::NAN;
        x[2 * TASK_VALUES + 1] = f32::INFINITY;
        let mut out = Vec::new();
        let err = quantize_rows(GgmlType::Q4_0, &x, 1024, &mut out).unwrap_err();
        assert!(matches!(err, QuantError::NonFinite { index, .. } if index == TASK_VALUES + 77));
        assert!(err.to_string().starts_with("value 65613 is NaN"));
        assert!(out.is_empty());
        quantize_rows(GgmlType::F16, &x, 1024, &mut out).unwrap();
        let back = dequantize_to_vec(GgmlType::F16, &out).unwrap();
        assert!(back[TASK_VALUES + 77].is_nan());
        assert_eq!(back[2 * TASK_VALUES + 1], f32::INFINITY);
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        // Enough values for several parallel tasks, with varied blocks.
        let x: Vec<f32> = (0..3 * TASK_VALUES + 4096)
            .map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 977) as f32 * 0.01))
            .collect();
        for ty in SUPPORTED {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = Vec::new();
                pool.install(|| quantize_any(ty, &x, 4096, &mut out));
                out
            };
            let one = run(1);
            assert_eq!(one, run(2), "{ty}");
            assert_eq!(one, run(3), "{ty}");
        }
    }

    #[test]
    fn all_zero_blocks_stay_zero() {
        for ty in SUPPORTED {
            let mut out = Vec::new();
            quantize_any(ty, &[0.0; 512], 512, &mut out);
            let y = dequantize_to_vec(ty, &out).unwrap();
            assert!(y.iter().all(|v| *v == 0.0), "{ty}");
        }
    }
}
