//! Which ggml type each output tensor gets: the target "file type" (`--type`) and the
//! per-tensor choices llama.cpp's `llama-quantize` makes for it.
//!
//! The mixtures (`Q4_K_M`, `Q3_K_L`, ...) are not one type but a recipe: the output head goes
//! to Q6_K, some `attn_v` and `ffn_down` layers get more bits, norms stay F32. The rules here
//! follow llama.cpp's `llama_tensor_get_type` for the decoder architectures modelgate
//! converts, mixtures of experts included (3-D `*_exps` tensors take the rules of their
//! dense names, models with 8 experts keep attention at more bits, `MXFP4_MOE` puts stacked
//! tensors in MXFP4), so a file converted here has the same per-tensor types as one made by
//! `convert_hf_to_gguf.py` + `llama-quantize`. Tensors
//! whose rows do not divide into the type's blocks fall back to a type that fits, as
//! llama.cpp does, and every fallback is reported.

use std::fmt;

use regex::Regex;
use serde::Serialize;

use crate::formats::GgmlType;

/// The target of a conversion: a plain type or a llama.cpp mixture. Its id is what GGUF's
/// `general.file_type` holds (llama.cpp's `llama_ftype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
    /// llama.cpp's `MXFP4_MOE`: expert tensors in MXFP4, every other quantizable tensor Q8_0.
    Mxfp4Moe,
    IQ2XXS,
    IQ2XS,
    IQ2S,
    IQ2M,
    IQ3XXS,
    IQ3XS,
    IQ3S,
    IQ3M,
    IQ1S,
    IQ1M,
    IQ4NL,
    IQ4XS,
    TQ1_0,
    TQ2_0,
}

/// (file type, llama_ftype id, canonical name, aliases accepted on the command line)
const FILE_TYPES: &[(FileType, u32, &str, &[&str])] = &[
    (FileType::F32, 0, "F32", &[]),
    (FileType::F16, 1, "F16", &[]),
    (FileType::Q4_0, 2, "Q4_0", &[]),
    (FileType::Q4_1, 3, "Q4_1", &[]),
    (FileType::Q8_0, 7, "Q8_0", &[]),
    (FileType::Q5_0, 8, "Q5_0", &[]),
    (FileType::Q5_1, 9, "Q5_1", &[]),
    (FileType::Q2K, 10, "Q2_K", &[]),
    (FileType::Q3KS, 11, "Q3_K_S", &[]),
    // llama-quantize reads the bare K names as the _M mixtures.
    (FileType::Q3KM, 12, "Q3_K_M", &["Q3_K"]),
    (FileType::Q3KL, 13, "Q3_K_L", &[]),
    (FileType::Q4KS, 14, "Q4_K_S", &[]),
    (FileType::Q4KM, 15, "Q4_K_M", &["Q4_K"]),
    (FileType::Q5KS, 16, "Q5_K_S", &[]),
    (FileType::Q5KM, 17, "Q5_K_M", &["Q5_K"]),
    (FileType::Q6K, 18, "Q6_K", &[]),
    (FileType::IQ2XXS, 19, "IQ2_XXS", &[]),
    (FileType::IQ2XS, 20, "IQ2_XS", &[]),
    (FileType::IQ3XS, 22, "IQ3_XS", &[]),
    (FileType::IQ3XXS, 23, "IQ3_XXS", &[]),
    (FileType::IQ1S, 24, "IQ1_S", &[]),
    (FileType::IQ4NL, 25, "IQ4_NL", &[]),
    (FileType::IQ3S, 26, "IQ3_S", &[]),
    (FileType::IQ3M, 27, "IQ3_M", &[]),
    (FileType::IQ2S, 28, "IQ2_S", &[]),
    (FileType::IQ2M, 29, "IQ2_M", &[]),
    (FileType::IQ4XS, 30, "IQ4_XS", &[]),
    (FileType::IQ1M, 31, "IQ1_M", &[]),
    (FileType::BF16, 32, "BF16", &[]),
    (FileType::Mxfp4Moe, 38, "MXFP4_MOE", &[]),
    (FileType::TQ1_0, 36, "TQ1_0", &[]),
    (FileType::TQ2_0, 37, "TQ2_0", &[]),
];

impl FileType {
    fn row(self) -> &'static (FileType, u32, &'static str, &'static [&'static str]) {
        // Every variant has a row (checked by the `every_file_type_has_a_row` test), so the
        // fallback to the first row is never taken.
        FILE_TYPES
            .iter()
            .find(|r| r.0 == self)
            .unwrap_or(&FILE_TYPES[0])
    }

    /// llama.cpp's `llama_ftype` id, written as `general.file_type`.
    pub fn id(self) -> u32 {
        self.row().1
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Parse a name as `llama-quantize` accepts it (case-insensitive; `Q4_K` = `Q4_K_M`).
    pub fn parse(name: &str) -> Option<FileType> {
        FILE_TYPES
            .iter()
            .find(|r| {
                r.2.eq_ignore_ascii_case(name) || r.3.iter().any(|a| a.eq_ignore_ascii_case(name))
            })
            .map(|r| r.0)
    }

    /// The file type whose id GGUF's `general.file_type` holds.
    pub fn from_id(id: u32) -> Option<FileType> {
        FILE_TYPES.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// Every name accepted by [`FileType::parse`], for help and error messages.
    pub fn names() -> Vec<&'static str> {
        FILE_TYPES
            .iter()
            .filter(|r| r.0.is_built())
            .map(|r| r.2)
            .collect()
    }

    /// The type most tensors get (llama.cpp's `llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2K => GgmlType::Q2K,
            FileType::Q3KS | FileType::Q3KM | FileType::Q3KL => GgmlType::Q3K,
            FileType::Q4KS | FileType::Q4KM => GgmlType::Q4K,
            FileType::Q5KS | FileType::Q5KM => GgmlType::Q5K,
            FileType::Q6K => GgmlType::Q6K,
            FileType::Mxfp4Moe => GgmlType::MXFP4,
            FileType::IQ2XXS => GgmlType::IQ2XXS,
            FileType::IQ2XS | FileType::IQ2S => GgmlType::IQ2XS,
            FileType::IQ2M => GgmlType::IQ2S,
            FileType::IQ3XXS => GgmlType::IQ3XXS,
            FileType::IQ3XS | FileType::IQ3S | FileType::IQ3M => GgmlType::IQ3S,
            FileType::IQ1S => GgmlType::IQ1S,
            FileType::IQ1M => GgmlType::IQ1M,
            FileType::IQ4NL => GgmlType::IQ4NL,
            FileType::IQ4XS => GgmlType::IQ4XS,
            FileType::TQ1_0 => GgmlType::TQ1_0,
            FileType::TQ2_0 => GgmlType::TQ2_0,
        }
    }

    /// The lattice types (ggml's IQ1..IQ3 grids) this target's recipe can pick; every other
    /// type a recipe picks, fallbacks included, is one modelgate writes.
    fn lattice_types(self) -> &'static [GgmlType] {
        use GgmlType as G;
        match self {
            FileType::IQ2XXS => &[G::IQ2XXS],
            FileType::IQ2XS => &[G::IQ2XS],
            FileType::IQ2S => &[G::IQ2XS, G::IQ3S],
            FileType::IQ2M => &[G::IQ2S, G::IQ3S],
            FileType::IQ1S => &[G::IQ1S, G::IQ2XXS],
            FileType::IQ1M => &[G::IQ1M, G::IQ2XXS],
            FileType::IQ3XXS => &[G::IQ3XXS, G::IQ3S, G::IQ2S],
            FileType::IQ3XS => &[G::IQ3S, G::IQ3XXS],
            FileType::IQ3S | FileType::IQ3M => &[G::IQ3S],
            _ => &[],
        }
    }

    /// Whether modelgate can write every type this target's recipe picks. The recipes of
    /// the IQ1..IQ3 targets are all here, but a target is offered only once the quantizers
    /// of its lattice types are.
    pub fn is_built(self) -> bool {
        self.lattice_types().iter().all(|&t| writable(t))
    }

    /// The lattice types this target needs that modelgate cannot write yet.
    pub fn missing_types(self) -> Vec<GgmlType> {
        self.lattice_types()
            .iter()
            .copied()
            .filter(|&t| !writable(t))
            .collect()
    }

    /// The 1- and 2-bit targets whose output head gets Q5_K instead of Q6_K (llama.cpp).
    fn is_very_low_bit(self) -> bool {
        matches!(
            self,
            FileType::IQ2XXS
                | FileType::IQ2XS
                | FileType::IQ3XXS
                | FileType::IQ1S
                | FileType::IQ2S
                | FileType::IQ2M
                | FileType::IQ1M
        )
    }

    /// Whether the target quantizes (as opposed to a plain float type).
    pub fn is_quantized(self) -> bool {
        self.default_type().is_quantized()
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ggml types modelgate can write (the float types and the block formats with kernels).
pub fn writable(t: GgmlType) -> bool {
    matches!(
        t,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::MXFP4
            | GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ4NL
            | GgmlType::IQ4XS
            | GgmlType::TQ1_0
            | GgmlType::TQ2_0
            | GgmlType::IQ3XXS
            | GgmlType::IQ3S
            | GgmlType::IQ1S
            | GgmlType::IQ1M
    )
}

/// What the user asked for, beyond the file type.
#[derive(Clone, Debug, Default)]
pub struct RecipeOptions {
    /// `--leave-output-tensor`: keep `output.weight` in its source type.
    pub leave_output_tensor: bool,
    /// `--pure`: every quantizable tensor gets the default type (no mixture rules).
    pub pure: bool,
    /// `--output-tensor-type`
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`
    pub token_embedding_type: Option<GgmlType>,
    /// `--tensor-type REGEX=TYPE`, first match wins (as in llama-quantize).
    pub tensor_types: Vec<(Regex, GgmlType)>,
    /// An importance matrix is given (`--imatrix`): some mixtures change with one, as in
    /// llama.cpp (its `has_imatrix`). Set by the conversion from `Options::imatrix`.
    pub has_imatrix: bool,
}

/// Model facts the mixture rules depend on.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// Number of `attn_v` (or fused `attn_qkv`) tensors: one per layer here.
    pub n_attn_v: u64,
    /// No separate `output.weight`: the token embedding doubles as the output head.
    pub tied_embeddings: bool,
    /// llama.cpp gives 70B llama models (80 layers) more bits in `attn_v`.
    pub is_llama_70b: bool,
    /// Routed experts per MoE layer (`{arch}.expert_count`; 0 for dense models). llama.cpp
    /// keeps `attn_v`, `attn_k` and some `attn_output` at more bits when it is 8.
    pub n_expert: u64,
}

/// What kind of tensor this is, for the mixture rules (llama.cpp's `tensor_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight")
        || name.contains("attn_kv_b.weight")
        || name.contains("attn_v.weight")
    {
        // llama.cpp's `category_is_attn_v` takes a fused qkv and MLA's joint `attn_kv_b` for
        // an attn_v: the same extra bits, counted in the same sequence. The split MLA
        // tensors `attn_k_b` / `attn_v_b` match none of the names and take the default type
        // (with a fallback where their rows do not divide into its blocks).
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// The layer number in `blk.N.…`, if any.
pub fn layer_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("blk.")?;
    let end = rest.find('.')?;
    rest[..end].parse().ok()
}

/// The type chosen for one tensor and why, when it is not the plain default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub ty: GgmlType,
    /// Set when the preferred type did not fit the tensor's rows.
    pub fallback: Option<Fallback>,
}

/// A type that did not fit and what was used instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fallback {
    pub tensor: String,
    pub wanted: String,
    pub used: String,
    pub reason: String,
}

/// The per-tensor type policy for one conversion.
pub struct Recipe {
    pub file_type: FileType,
    pub opts: RecipeOptions,
    pub shape: ModelShape,
}

/// How a tensor is stored in the source, for the rule that keeps some tensors as they are.
#[derive(Clone, Copy, Debug)]
pub struct SourceKind {
    /// The ggml type the tensor is in now (F32/F16/BF16 for safetensors sources).
    pub ty: GgmlType,
    /// Number of dimensions.
    pub n_dims: usize,
    /// Elements per row (ggml's `ne[0]`).
    pub row_len: u64,
    /// Matrices stacked in the tensor (ggml's `ne[2]`: the experts of a 3-D expert tensor,
    /// the heads of DeepSeek's `attn_k_b`; 1 for a 2-D tensor).
    pub slices: u64,
}

impl SourceKind {
    /// The kind of a tensor of type `ty` and shape `shape` (outermost dimension first, as
    /// safetensors and modelgate's tensor tables list it).
    pub fn of(ty: GgmlType, shape: &[u64]) -> SourceKind {
        let n = shape.len();
        SourceKind {
            ty,
            n_dims: ggml_shape(shape).len(),
            row_len: shape.last().copied().unwrap_or(1),
            slices: if n >= 3 { shape[n - 3] } else { 1 },
        }
    }
}

/// The shape as ggml counts its dimensions (`ggml_n_dims`): trailing `ne` of 1, i.e.
/// leading dimensions of 1 in modelgate's outermost-first order, do not count, and
/// `llama-quantize` writes tensors without them (Qwen2-MoE's `ffn_gate_inp_shexp`, stored
/// `[1, n_embd]` by the converter, comes out 1-D and stays F32).
pub fn ggml_shape(shape: &[u64]) -> Vec<u64> {
    let first = shape
        .iter()
        .position(|&d| d != 1)
        .unwrap_or(shape.len().saturating_sub(1));
    shape[first..].to_vec()
}

/// Tensors llama.cpp never quantizes although they are 2-D `*weight` tensors (its
/// `tensor_allows_quantization`): the expert router, small or positional tables.
const NEVER_QUANTIZED: &[&str] = &[
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
];

/// Tensors llama.cpp's converter always writes as F32 (beside 1-D tensors and norms): the
/// expert routers and anything that is not a `.weight` (the 2-D expert biases of gpt-oss).
fn always_f32(name: &str) -> bool {
    name.contains("ffn_gate_inp.weight")
        || name.contains("ffn_gate_inp_shexp.weight")
        || name == "position_embd.weight"
        || name == "token_types.weight"
        || name.contains("ssm_conv1d")
        || !name.ends_with(".weight")
}

impl Recipe {
    /// Whether llama.cpp would quantize this tensor at all (its `tensor_allows_quantization`
    /// for the dense architectures: 2-D `*weight` tensors other than norms).
    fn allows_quantization(&self, name: &str, src: SourceKind) -> bool {
        src.n_dims >= 2
            && name.ends_with("weight")
            && !name.contains("_norm.weight")
            && !(self.opts.leave_output_tensor && name == "output.weight")
            && !NEVER_QUANTIZED.iter().any(|n| name.contains(n))
            && name != "position_embd.weight"
            && name != "token_types.weight"
    }

    /// The type for tensor `name`.
    pub fn choose(&self, name: &str, src: SourceKind) -> Choice {
        if !self.allows_quantization(name, src) {
            // 1-D tensors (norms, biases, rope factors), expert routers and 2-D biases are
            // F32 in every llama.cpp file; a kept output head stays what it is unless that is
            // a type we cannot write.
            let ty = if src.n_dims < 2 || always_f32(name) {
                GgmlType::F32
            } else if writable(src.ty) {
                src.ty
            } else {
                GgmlType::F32
            };
            return Choice { ty, fallback: None };
        }
        let cat = category(name);
        let explicit = match cat {
            Category::TokenEmbd => self.opts.token_embedding_type,
            Category::Output => self.opts.output_tensor_type,
            _ => None,
        };
        let ty = if let Some(t) = explicit {
            t
        } else {
            let default = self.file_type.default_type();
            if !default.is_quantized() {
                default
            } else if let Some(t) = self
                .opts
                .tensor_types
                .iter()
                .find(|(re, _)| re.is_match(name))
                .map(|(_, t)| *t)
            {
                t
            } else if self.opts.pure {
                default
            } else {
                self.mixture(name, cat, default, src)
            }
        };
        self.fit(name, ty, src)
    }

    /// llama.cpp's mixture rules for the file types modelgate writes.
    fn mixture(&self, name: &str, cat: Category, default: GgmlType, src: SourceKind) -> GgmlType {
        use FileType as F;
        use GgmlType as G;
        let ft = self.file_type;
        let m = self.shape;
        let n_gqa = m.n_head.checked_div(m.n_head_kv).unwrap_or(1);
        let layer = layer_of(name).unwrap_or(0);
        let more_bits = |i: u64, n: u64| !(i >= n / 8 && i < 7 * n / 8 && (i - n / 8) % 3 != 2);
        // `(i - n/8) % 3 == 2` in llama.cpp is signed arithmetic; for i < n/8 the first
        // clause already holds, so the unsigned guard above gives the same answer.
        let mut t = default;
        if cat == Category::Output || (m.tied_embeddings && cat == Category::TokenEmbd) {
            let (block, _) = default.block().unwrap_or((1, 0));
            if ft == F::Mxfp4Moe || !src.row_len.is_multiple_of(block) {
                t = G::Q8_0;
            } else if ft.is_very_low_bit() {
                t = G::Q5K;
            } else if t != G::Q8_0 {
                t = G::Q6K;
            }
            return t;
        }
        if ft == F::Mxfp4Moe {
            // Stacked matrices (experts; also MLA's per-head `attn_k_b` / `attn_v_b`, which
            // llama.cpp does not tell apart here) go to MXFP4, everything else to Q8_0.
            return if src.slices > 1 { G::MXFP4 } else { G::Q8_0 };
        }
        let eight_experts = m.n_expert == 8;
        let imatrix = self.opts.has_imatrix;
        if cat == Category::TokenEmbd {
            return match ft {
                F::IQ2XXS | F::IQ2XS | F::IQ1S | F::IQ1M => G::Q2K,
                F::IQ2S | F::IQ2M | F::IQ3XXS => G::IQ3S,
                F::TQ1_0 | F::TQ2_0 => G::Q4K,
                _ => t,
            };
        }
        if matches!(
            ft,
            F::IQ2XXS | F::IQ2XS | F::IQ1S | F::IQ2S | F::IQ2M | F::IQ1M
        ) {
            // The 1- and 2-bit targets have their own short rule set and nothing else.
            let two_s = matches!(ft, F::IQ2S | F::IQ2M);
            return match cat {
                Category::AttnV if n_gqa >= 4 || m.n_expert >= 4 => G::Q4K,
                Category::AttnV if two_s => G::IQ3S,
                Category::AttnV => G::Q2K,
                Category::FfnDown if layer < m.n_layer / 8 => {
                    if two_s {
                        G::IQ3S
                    } else {
                        G::Q2K
                    }
                }
                Category::AttnK if eight_experts => G::Q4K,
                Category::AttnOutput if eight_experts => G::Q5K,
                Category::AttnOutput if matches!(ft, F::IQ1S | F::IQ1M) => G::IQ2XXS,
                Category::AttnOutput if two_s => G::IQ3S,
                _ => t,
            };
        }
        match cat {
            Category::AttnV => {
                let i = layer;
                let n = m.n_attn_v;
                t = match ft {
                    F::Q2K => {
                        if n_gqa >= 4 {
                            G::Q4K
                        } else {
                            G::Q3K
                        }
                    }
                    F::IQ3XXS if n_gqa >= 4 => G::Q4K,
                    F::IQ3XXS if !imatrix => G::IQ3S,
                    F::IQ3XXS => G::IQ3XXS,
                    F::IQ3XS | F::IQ3S if n_gqa >= 4 => G::Q4K,
                    F::IQ3M => G::Q4K,
                    F::Q3KM => {
                        if i < 2 {
                            G::Q5K
                        } else {
                            G::Q4K
                        }
                    }
                    F::Q3KL => G::Q5K,
                    F::IQ4NL | F::IQ4XS if n_gqa >= 4 => G::Q5K,
                    F::Q4KM | F::Q5KM if more_bits(i, n) => G::Q6K,
                    F::Q4KS if i < 4 => G::Q5K,
                    _ => t,
                };
                if m.is_llama_70b && (t == G::Q3K || t == G::Q4K) {
                    t = G::Q5K;
                }
                if eight_experts {
                    // llama.cpp: "for the 8-expert model, bumping this to Q8_0 trades just
                    // ~128MB".
                    t = G::Q8_0;
                }
            }
            Category::AttnK if eight_experts => t = G::Q8_0,
            Category::AttnK | Category::AttnQ => {
                t = match ft {
                    F::IQ3XS => G::IQ3XXS,
                    F::IQ3XXS => G::IQ2S,
                    _ => t,
                };
            }
            Category::FfnDown => {
                let i = layer;
                let n = m.n_layer;
                t = match ft {
                    F::Q2K => G::Q3K,
                    F::IQ3XXS if !imatrix => {
                        if i < n / 8 {
                            G::Q4K
                        } else {
                            G::Q3K
                        }
                    }
                    F::Q3KM => {
                        if i < n / 16 {
                            G::Q5K
                        } else {
                            G::Q4K
                        }
                    }
                    F::IQ3M if i < n / 8 => G::Q4K,
                    F::Q3KL => G::Q5K,
                    F::Q4KM if more_bits(i, n) => G::Q6K,
                    F::IQ4NL | F::IQ4XS if i < n / 8 && !imatrix => G::Q5K,
                    F::Q5KM if more_bits(i, n) => G::Q6K,
                    F::Q4KS if i < n / 8 => G::Q5K,
                    // llama.cpp guards the first eighth of ffn_down against Q4_0/Q5_0's
                    // failures, only under an imatrix so that plain files stay as they were.
                    F::Q4_0 if imatrix && i < n / 8 => G::Q4_1,
                    F::Q5_0 if imatrix && i < n / 8 => G::Q5_1,
                    _ => t,
                };
            }
            Category::AttnOutput if eight_experts => {
                if matches!(ft, F::Q2K | F::Q3KS | F::Q3KM | F::Q4KS | F::Q4KM) {
                    t = G::Q5K;
                }
            }
            Category::AttnOutput => {
                t = match ft {
                    F::Q2K => G::Q3K,
                    F::IQ3XXS => G::IQ3S,
                    F::Q3KM | F::IQ3M => G::Q4K,
                    F::Q3KL => G::Q5K,
                    _ => t,
                };
            }
            Category::FfnUp | Category::FfnGate => {
                let n = m.n_layer;
                if ft == F::IQ3XS && layer >= n / 8 && layer < 7 * n / 8 {
                    t = G::IQ3XXS;
                }
            }
            Category::TokenEmbd | Category::Output | Category::Other => {}
        }
        t
    }

    /// A type whose blocks fit the tensor's rows: llama.cpp's `tensor_type_fallback`, with F16
    /// as the last resort (llama.cpp aborts where a 32-block type does not fit; F16 always
    /// fits and keeps the conversion going).
    fn fit(&self, name: &str, ty: GgmlType, src: SourceKind) -> Choice {
        let fits = |t: GgmlType| {
            t.block()
                .is_some_and(|(b, _)| src.row_len.is_multiple_of(b))
        };
        if fits(ty) {
            return Choice { ty, fallback: None };
        }
        let next = match ty {
            GgmlType::IQ1S
            | GgmlType::IQ1M
            | GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ3XXS
            | GgmlType::IQ3S
            | GgmlType::IQ4XS => GgmlType::IQ4NL,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => GgmlType::Q4_0,
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q5K => GgmlType::Q5_1,
            GgmlType::Q6K => GgmlType::Q8_0,
            _ => GgmlType::F16,
        };
        let used = if fits(next) { next } else { GgmlType::F16 };
        let block = ty.block().map(|b| b.0).unwrap_or(1);
        Choice {
            ty: used,
            fallback: Some(Fallback {
                tensor: name.to_owned(),
                wanted: ty.name().to_owned(),
                used: used.name().to_owned(),
                reason: format!(
                    "rows of {} values do not divide into blocks of {block}",
                    src.row_len
                ),
            }),
        }
    }
}

/// Whether tensor `name` quantized to `ty` needs an importance matrix (llama.cpp's
/// `tensor_requires_imatrix`): the 1- to 3-bit lattice types give garbage without one. The
/// token embedding and the output head are exempt.
pub fn requires_imatrix(name: &str, ty: GgmlType) -> bool {
    if name == "token_embd.weight" || name == "output.weight" {
        return false;
    }
    matches!(
        ty,
        GgmlType::IQ3XXS
            | GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ1M
            | GgmlType::IQ1S
    )
}

/// Parse `--tensor-type REGEX=TYPE`.
pub fn parse_tensor_type(spec: &str) -> Result<(Regex, GgmlType), String> {
    let (pattern, ty) = spec
        .rsplit_once('=')
        .ok_or_else(|| format!("`{spec}` is not REGEX=TYPE"))?;
    let re = Regex::new(pattern)
        .map_err(|e| format!("`{pattern}` is not a valid regular expression: {e}"))?;
    let t = parse_ggml_type(ty)?;
    Ok((re, t))
}

/// Parse a single ggml type name that modelgate can write (`q6_k`, `F16`).
pub fn parse_ggml_type(name: &str) -> Result<GgmlType, String> {
    match GgmlType::from_name(name) {
        Some(t) if writable(t) => Ok(t),
        _ => {
            // Built from the table so the list never falls behind the quantizers.
            let names: Vec<&str> = GgmlType::known()
                .filter(|t| writable(*t))
                .map(GgmlType::name)
                .collect();
            Err(format!(
                "`{name}` is not a type modelgate writes ({})",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n_layer: u64) -> ModelShape {
        ModelShape {
            n_layer,
            n_head: 32,
            n_head_kv: 4,
            n_attn_v: n_layer,
            tied_embeddings: false,
            is_llama_70b: false,
            n_expert: 0,
        }
    }

    fn recipe(ft: FileType, n_layer: u64) -> Recipe {
        Recipe {
            file_type: ft,
            opts: RecipeOptions::default(),
            shape: shape(n_layer),
        }
    }

    fn w(row_len: u64) -> SourceKind {
        SourceKind {
            ty: GgmlType::BF16,
            n_dims: 2,
            row_len,
            slices: 1,
        }
    }

    #[test]
    fn every_file_type_has_a_row() {
        for ft in [
            FileType::F32,
            FileType::F16,
            FileType::BF16,
            FileType::Q8_0,
            FileType::Q4_0,
            FileType::Q4_1,
            FileType::Q5_0,
            FileType::Q5_1,
            FileType::Q2K,
            FileType::Q3KS,
            FileType::Q3KM,
            FileType::Q3KL,
            FileType::Q4KS,
            FileType::Q4KM,
            FileType::Q5KS,
            FileType::Q5KM,
            FileType::Q6K,
            FileType::Mxfp4Moe,
            FileType::IQ2XXS,
            FileType::IQ2XS,
            FileType::IQ2S,
            FileType::IQ2M,
            FileType::IQ3XXS,
            FileType::IQ3XS,
            FileType::IQ3S,
            FileType::IQ3M,
            FileType::IQ1S,
            FileType::IQ1M,
            FileType::IQ4NL,
            FileType::IQ4XS,
            FileType::TQ1_0,
            FileType::TQ2_0,
        ] {
            assert_eq!(FileType::from_id(ft.id()), Some(ft));
            assert_eq!(FileType::parse(ft.name()), Some(ft));
        }
        assert_eq!(FileType::parse("q4_k"), Some(FileType::Q4KM));
        assert_eq!(FileType::parse("Q3_K"), Some(FileType::Q3KM));
        assert_eq!(FileType::parse("IQ2_XS"), Some(FileType::IQ2XS));
        assert_eq!(FileType::parse("IQ8_XS"), None);
        assert_eq!(FileType::IQ4XS.id(), 30);
        assert_eq!(FileType::TQ2_0.id(), 37);
        assert_eq!(FileType::Q4KM.id(), 15);
        assert_eq!(FileType::BF16.id(), 32);
    }

    #[test]
    fn q4_k_m_follows_llama_cpp() {
        // TinyLlama: 22 layers; use_more_bits is true for layers 0-1, 19-21 and every third
        // layer from 4 (4, 7, 10, 13, 16).
        let r = recipe(FileType::Q4KM, 22);
        let bumped: Vec<u64> = (0..22)
            .filter(|i| r.choose(&format!("blk.{i}.ffn_down.weight"), w(5632)).ty == GgmlType::Q6K)
            .collect();
        assert_eq!(bumped, vec![0, 1, 4, 7, 10, 13, 16, 19, 20, 21]);
        let bumped_v: Vec<u64> = (0..22)
            .filter(|i| r.choose(&format!("blk.{i}.attn_v.weight"), w(2048)).ty == GgmlType::Q6K)
            .collect();
        assert_eq!(bumped, bumped_v);
        assert_eq!(r.choose("blk.3.attn_q.weight", w(2048)).ty, GgmlType::Q4K);
        assert_eq!(r.choose("blk.3.ffn_up.weight", w(2048)).ty, GgmlType::Q4K);
        assert_eq!(r.choose("output.weight", w(2048)).ty, GgmlType::Q6K);
        assert_eq!(r.choose("token_embd.weight", w(2048)).ty, GgmlType::Q4K);
        let norm = SourceKind::of(GgmlType::BF16, &[2048]);
        assert_eq!(r.choose("blk.0.attn_norm.weight", norm).ty, GgmlType::F32);
    }

    #[test]
    fn q3_and_q2_mixtures() {
        let r = recipe(FileType::Q3KM, 32);
        assert_eq!(r.choose("blk.0.attn_v.weight", w(4096)).ty, GgmlType::Q5K);
        assert_eq!(r.choose("blk.2.attn_v.weight", w(4096)).ty, GgmlType::Q4K);
        assert_eq!(
            r.choose("blk.1.ffn_down.weight", w(14336)).ty,
            GgmlType::Q5K
        );
        assert_eq!(
            r.choose("blk.2.ffn_down.weight", w(14336)).ty,
            GgmlType::Q4K
        );
        assert_eq!(
            r.choose("blk.2.attn_output.weight", w(4096)).ty,
            GgmlType::Q4K
        );
        assert_eq!(r.choose("blk.2.attn_q.weight", w(4096)).ty, GgmlType::Q3K);
        let r = recipe(FileType::Q2K, 32);
        assert_eq!(r.choose("blk.5.attn_v.weight", w(4096)).ty, GgmlType::Q4K); // gqa 8
        assert_eq!(
            r.choose("blk.5.ffn_down.weight", w(14336)).ty,
            GgmlType::Q3K
        );
        let r = recipe(FileType::Q4KS, 32);
        assert_eq!(r.choose("blk.3.attn_v.weight", w(4096)).ty, GgmlType::Q5K);
        assert_eq!(r.choose("blk.4.attn_v.weight", w(4096)).ty, GgmlType::Q4K);
        assert_eq!(
            r.choose("blk.3.ffn_down.weight", w(14336)).ty,
            GgmlType::Q5K
        );
        assert_eq!(
            r.choose("blk.4.ffn_down.weight", w(14336)).ty,
            GgmlType::Q4K
        );
    }

    #[test]
    fn legacy_types_send_the_head_to_q6_k_and_tied_embeddings_follow() {
        let mut r = recipe(FileType::Q4_1, 30);
        assert_eq!(r.choose("output.weight", w(2048)).ty, GgmlType::Q6K);
        assert_eq!(r.choose("token_embd.weight", w(2048)).ty, GgmlType::Q4_1);
        r.shape.tied_embeddings = true;
        // SmolLM2: width 576 does not divide into 256, so Q6_K falls back to Q8_0 (what the
        // real SmolLM2 Q4_1 file holds).
        let c = r.choose("token_embd.weight", w(576));
        assert_eq!(c.ty, GgmlType::Q8_0);
        let r = recipe(FileType::Q8_0, 30);
        assert_eq!(r.choose("output.weight", w(2048)).ty, GgmlType::Q8_0);
    }

    #[test]
    fn fused_qkv_follows_the_attn_v_rules_and_gemma_embeddings_follow_the_head() {
        // Phi-3: llama.cpp's attn_v branch catches `attn_qkv` before its own branch.
        let r = recipe(FileType::Q4KM, 32);
        assert_eq!(r.choose("blk.0.attn_qkv.weight", w(3072)).ty, GgmlType::Q6K);
        assert_eq!(r.choose("blk.5.attn_qkv.weight", w(3072)).ty, GgmlType::Q4K);
        assert_eq!(r.choose("blk.5.ffn_up.weight", w(3072)).ty, GgmlType::Q4K);
        let r = recipe(FileType::Q3KM, 32);
        assert_eq!(r.choose("blk.1.attn_qkv.weight", w(3072)).ty, GgmlType::Q5K);
        assert_eq!(r.choose("blk.2.attn_qkv.weight", w(3072)).ty, GgmlType::Q4K);
        // Gemma: no output.weight, so token_embd gets the output head's type.
        let mut r = recipe(FileType::Q4KM, 26);
        r.shape.tied_embeddings = true;
        assert_eq!(r.choose("token_embd.weight", w(2304)).ty, GgmlType::Q6K);
        let mut r = recipe(FileType::Q8_0, 26);
        r.shape.tied_embeddings = true;
        assert_eq!(r.choose("token_embd.weight", w(2304)).ty, GgmlType::Q8_0);
        assert_eq!(
            r.choose(
                "blk.0.post_ffw_norm.weight",
                SourceKind {
                    n_dims: 1,
                    ..w(2304)
                }
            )
            .ty,
            GgmlType::F32
        );
    }

    #[test]
    fn an_imatrix_moves_the_first_ffn_down_layers_of_q4_0_and_q5_0() {
        let mut r = recipe(FileType::Q4_0, 16);
        assert_eq!(
            r.choose("blk.1.ffn_down.weight", w(4096)).ty,
            GgmlType::Q4_0
        );
        r.opts.has_imatrix = true;
        assert_eq!(
            r.choose("blk.1.ffn_down.weight", w(4096)).ty,
            GgmlType::Q4_1
        );
        assert_eq!(
            r.choose("blk.2.ffn_down.weight", w(4096)).ty,
            GgmlType::Q4_0
        );
        let mut r = recipe(FileType::Q5_0, 16);
        r.opts.has_imatrix = true;
        assert_eq!(
            r.choose("blk.0.ffn_down.weight", w(4096)).ty,
            GgmlType::Q5_1
        );
        assert!(requires_imatrix("blk.0.ffn_up.weight", GgmlType::IQ2XS));
        assert!(!requires_imatrix("output.weight", GgmlType::IQ2XS));
        assert!(!requires_imatrix("blk.0.ffn_up.weight", GgmlType::Q2K));
    }

    #[test]
    fn i_quant_recipes_follow_llama_cpp() {
        // 32 layers, GQA 8 (Llama 3 8B's shape).
        let mut r = recipe(FileType::IQ3XXS, 32);
        assert_eq!(r.choose("blk.5.attn_v.weight", w(4096)).ty, GgmlType::Q4K);
        assert_eq!(r.choose("blk.5.attn_q.weight", w(4096)).ty, GgmlType::IQ2S);
        assert_eq!(r.choose("blk.5.attn_k.weight", w(4096)).ty, GgmlType::IQ2S);
        assert_eq!(
            r.choose("blk.5.attn_output.weight", w(4096)).ty,
            GgmlType::IQ3S
        );
        assert_eq!(
            r.choose("blk.1.ffn_down.weight", w(14336)).ty,
            GgmlType::Q4K
        );
        assert_eq!(
            r.choose("blk.9.ffn_down.weight", w(14336)).ty,
            GgmlType::Q3K
        );
        assert_eq!(
            r.choose("blk.9.ffn_up.weight", w(4096)).ty,
            GgmlType::IQ3XXS
        );
        assert_eq!(r.choose("token_embd.weight", w(4096)).ty, GgmlType::IQ3S);
        assert_eq!(r.choose("output.weight", w(4096)).ty, GgmlType::Q5K);
        r.opts.has_imatrix = true;
        assert_eq!(
            r.choose("blk.9.ffn_down.weight", w(14336)).ty,
            GgmlType::IQ3XXS
        );
        r.shape.n_head_kv = 32;
        assert_eq!(
            r.choose("blk.5.attn_v.weight", w(4096)).ty,
            GgmlType::IQ3XXS
        );
        r.opts.has_imatrix = false;
        assert_eq!(r.choose("blk.5.attn_v.weight", w(4096)).ty, GgmlType::IQ3S);

        let r = recipe(FileType::IQ2XXS, 32);
        assert_eq!(r.choose("blk.5.attn_v.weight", w(4096)).ty, GgmlType::Q4K);
        assert_eq!(
            r.choose("blk.3.ffn_down.weight", w(14336)).ty,
            GgmlType::Q2K
        );
        assert_eq!(
            r.choose("blk.4.ffn_down.weight", w(14336)).ty,
            GgmlType::IQ2XXS
        );
        assert_eq!(
            r.choose("blk.4.attn_output.weight", w(4096)).ty,
            GgmlType::IQ2XXS
        );
        assert_eq!(r.choose("token_embd.weight", w(4096)).ty, GgmlType::Q2K);
        assert_eq!(r.choose("output.weight", w(4096)).ty, GgmlType::Q5K);
        let r = recipe(FileType::IQ1M, 32);
        assert_eq!(
            r.choose("blk.4.attn_output.weight", w(4096)).ty,
            GgmlType::IQ2XXS
        );
        assert_eq!(r.choose("blk.4.attn_q.weight", w(4096)).ty, GgmlType::IQ1M);
        let mut r = recipe(FileType::IQ2M, 32);
        r.shape.n_head_kv = 16;
        assert_eq!(r.choose("blk.5.attn_v.weight", w(4096)).ty, GgmlType::IQ3S);
        assert_eq!(
            r.choose("blk.0.ffn_down.weight", w(14336)).ty,
            GgmlType::IQ3S
        );
        assert_eq!(
            r.choose("blk.9.ffn_gate.weight", w(4096)).ty,
            GgmlType::IQ2S
        );
        assert_eq!(r.choose("token_embd.weight", w(4096)).ty, GgmlType::IQ3S);
        let r = recipe(FileType::IQ2S, 32);
        assert_eq!(
            r.choose("blk.9.ffn_gate.weight", w(4096)).ty,
            GgmlType::IQ2XS
        );

        let r = recipe(FileType::IQ3XS, 32);
        assert_eq!(
            r.choose("blk.3.ffn_gate.weight", w(4096)).ty,
            GgmlType::IQ3S
        );
        assert_eq!(
            r.choose("blk.4.ffn_gate.weight", w(4096)).ty,
            GgmlType::IQ3XXS
        );
        assert_eq!(r.choose("blk.28.ffn_up.weight", w(4096)).ty, GgmlType::IQ3S);
        assert_eq!(
            r.choose("blk.4.attn_q.weight", w(4096)).ty,
            GgmlType::IQ3XXS
        );
        assert_eq!(r.choose("blk.4.attn_v.weight", w(4096)).ty, GgmlType::Q4K);
        let r = recipe(FileType::IQ3M, 32);
        assert_eq!(r.choose("blk.4.attn_v.weight", w(4096)).ty, GgmlType::Q4K);
        assert_eq!(
            r.choose("blk.3.ffn_down.weight", w(14336)).ty,
            GgmlType::Q4K
        );
        assert_eq!(
            r.choose("blk.4.ffn_down.weight", w(14336)).ty,
            GgmlType::IQ3S
        );
        assert_eq!(
            r.choose("blk.4.attn_output.weight", w(4096)).ty,
            GgmlType::Q4K
        );

        let mut r = recipe(FileType::IQ4XS, 32);
        assert_eq!(r.choose("blk.4.attn_v.weight", w(4096)).ty, GgmlType::Q5K);
        assert_eq!(
            r.choose("blk.3.ffn_down.weight", w(14336)).ty,
            GgmlType::Q5K
        );
        r.opts.has_imatrix = true;
        assert_eq!(
            r.choose("blk.3.ffn_down.weight", w(14336)).ty,
            GgmlType::IQ4XS
        );
        assert_eq!(r.choose("output.weight", w(4096)).ty, GgmlType::Q6K);
        let r = recipe(FileType::TQ2_0, 32);
        assert_eq!(r.choose("token_embd.weight", w(4096)).ty, GgmlType::Q4K);
        assert_eq!(
            r.choose("blk.3.ffn_down.weight", w(14336)).ty,
            GgmlType::TQ2_0
        );
    }

    #[test]
    fn i_quants_fall_back_as_llama_cpp_does() {
        // SmolLM2's width 576 is not a multiple of 256.
        let r = recipe(FileType::IQ4XS, 30);
        let c = r.choose("blk.3.attn_q.weight", w(576));
        assert_eq!(c.ty, GgmlType::IQ4NL);
        assert_eq!(c.fallback.unwrap().wanted, "IQ4_XS");
        let r = recipe(FileType::IQ2XXS, 30);
        assert_eq!(r.choose("blk.3.attn_q.weight", w(576)).ty, GgmlType::IQ4NL);
        let r = recipe(FileType::TQ1_0, 30);
        assert_eq!(r.choose("blk.3.attn_q.weight", w(576)).ty, GgmlType::Q4_0);
        let r = recipe(FileType::IQ4NL, 30);
        assert_eq!(r.choose("blk.3.attn_q.weight", w(48)).ty, GgmlType::F16);
        assert!(FileType::IQ4XS.is_built() && FileType::TQ1_0.is_built());
    }

    #[test]
    fn fallbacks_are_reported() {
        let r = recipe(FileType::Q4KM, 30);
        let c = r.choose("blk.2.attn_q.weight", w(576));
        assert_eq!(c.ty, GgmlType::Q5_0);
        let fb = c.fallback.unwrap();
        assert_eq!((fb.wanted.as_str(), fb.used.as_str()), ("Q4_K", "Q5_0"));
        let c = r.choose("blk.0.ffn_down.weight", w(1536)); // Q6_K, 1536 = 6 x 256 fits
        assert_eq!(c.ty, GgmlType::Q6K);
        assert!(c.fallback.is_none());
        let c = r.choose("blk.2.attn_q.weight", w(48));
        assert_eq!(c.ty, GgmlType::F16);
    }

    #[test]
    fn options_override_the_mixture() {
        let mut r = recipe(FileType::Q4KM, 22);
        r.opts.pure = true;
        assert_eq!(r.choose("blk.0.ffn_down.weight", w(5632)).ty, GgmlType::Q4K);
        assert_eq!(r.choose("output.weight", w(2048)).ty, GgmlType::Q4K);
        r.opts.pure = false;
        r.opts.leave_output_tensor = true;
        assert_eq!(r.choose("output.weight", w(2048)).ty, GgmlType::BF16);
        r.opts.leave_output_tensor = false;
        r.opts.output_tensor_type = Some(GgmlType::Q8_0);
        r.opts.token_embedding_type = Some(GgmlType::F16);
        assert_eq!(r.choose("output.weight", w(2048)).ty, GgmlType::Q8_0);
        assert_eq!(r.choose("token_embd.weight", w(2048)).ty, GgmlType::F16);
        r.opts.tensor_types = vec![parse_tensor_type("attn_(q|k)=q8_0").unwrap()];
        assert_eq!(r.choose("blk.3.attn_k.weight", w(2048)).ty, GgmlType::Q8_0);
        assert_eq!(r.choose("blk.3.attn_v.weight", w(2048)).ty, GgmlType::Q4K);
        assert!(parse_tensor_type("attn_q").is_err());
        assert!(parse_tensor_type("attn_q=NVFP4").is_err());
        assert!(parse_tensor_type("(=q8_0").is_err());
    }

    fn moe(ft: FileType, n_expert: u64) -> Recipe {
        let mut r = recipe(ft, 8);
        r.shape.n_expert = n_expert;
        r.shape.n_head_kv = 16; // n_gqa 2: the Q2_K attn_v rule gives Q3_K without experts
        r
    }

    fn exps(row_len: u64, rows: u64) -> SourceKind {
        SourceKind::of(GgmlType::F16, &[8, rows, row_len])
    }

    #[test]
    fn eight_experts_bump_attention_as_llama_cpp() {
        for ft in [
            FileType::Q2K,
            FileType::Q3KM,
            FileType::Q4KM,
            FileType::Q4_0,
        ] {
            let r = moe(ft, 8);
            assert_eq!(r.choose("blk.3.attn_v.weight", w(256)).ty, GgmlType::Q8_0);
            assert_eq!(r.choose("blk.3.attn_k.weight", w(256)).ty, GgmlType::Q8_0);
            let r = moe(ft, 4);
            assert_ne!(r.choose("blk.3.attn_k.weight", w(256)).ty, GgmlType::Q8_0);
        }
        for (ft, want) in [
            (FileType::Q2K, GgmlType::Q5K),
            (FileType::Q3KM, GgmlType::Q5K),
            (FileType::Q4KM, GgmlType::Q5K),
            // Q3_K_L has no 8-expert rule and none of its dense one either.
            (FileType::Q3KL, GgmlType::Q3K),
            (FileType::Q5KM, GgmlType::Q5K),
        ] {
            let c = moe(ft, 8).choose("blk.3.attn_output.weight", w(256));
            assert_eq!(c.ty, want, "{ft}");
        }
        assert_eq!(
            moe(FileType::Q3KL, 4)
                .choose("blk.3.attn_output.weight", w(256))
                .ty,
            GgmlType::Q5K
        );
    }

    #[test]
    fn expert_tensors_follow_their_dense_names() {
        // ffn_down_exps counts as ffn_down, by the layer in its name: 8 layers, so
        // use_more_bits holds for layers 0, 3, 6, 7.
        let r = moe(FileType::Q4KM, 8);
        let bumped: Vec<u64> = (0..8)
            .filter(|i| {
                r.choose(&format!("blk.{i}.ffn_down_exps.weight"), exps(256, 256))
                    .ty
                    == GgmlType::Q6K
            })
            .collect();
        assert_eq!(bumped, vec![0, 3, 6, 7]);
        assert_eq!(
            r.choose("blk.3.ffn_down_shexp.weight", w(256)).ty,
            GgmlType::Q6K
        );
        assert_eq!(
            r.choose("blk.1.ffn_gate_exps.weight", exps(256, 256)).ty,
            GgmlType::Q4K
        );
        let r = moe(FileType::Q2K, 8);
        assert_eq!(
            r.choose("blk.1.ffn_down_exps.weight", exps(256, 256)).ty,
            GgmlType::Q3K
        );
        assert_eq!(
            r.choose("blk.1.ffn_up_exps.weight", exps(256, 256)).ty,
            GgmlType::Q2K
        );
    }

    #[test]
    fn routers_and_biases_stay_f32() {
        let r = moe(FileType::Q4KM, 8);
        let router = SourceKind::of(GgmlType::F16, &[8, 256]);
        assert_eq!(
            r.choose("blk.0.ffn_gate_inp.weight", router).ty,
            GgmlType::F32
        );
        let bias = SourceKind::of(GgmlType::BF16, &[8, 256]);
        assert_eq!(r.choose("blk.0.ffn_up_exps.bias", bias).ty, GgmlType::F32);
        // [1, n]: one dimension for ggml, so F32 like any 1-D tensor.
        let shexp_gate = SourceKind::of(GgmlType::F16, &[1, 256]);
        assert_eq!(shexp_gate.n_dims, 1);
        assert_eq!(
            r.choose("blk.0.ffn_gate_inp_shexp.weight", shexp_gate).ty,
            GgmlType::F32
        );
        assert_eq!(ggml_shape(&[1, 1, 64]), vec![64]);
        assert_eq!(ggml_shape(&[8, 1, 64]), vec![8, 1, 64]);
        assert_eq!(ggml_shape(&[1]), vec![1]);
        let r = moe(FileType::F16, 8);
        assert_eq!(
            r.choose("blk.0.ffn_gate_inp.weight", router).ty,
            GgmlType::F32
        );
        assert_eq!(
            r.choose("blk.0.ffn_up_exps.weight", exps(256, 256)).ty,
            GgmlType::F16
        );
    }

    #[test]
    fn mla_tensors_fall_back_and_kv_b_counts_as_attn_v() {
        let r = moe(FileType::Q4KM, 8);
        // attn_k_b is [heads, kv_lora_rank, nope]: rows of 64 values.
        let k_b = SourceKind::of(GgmlType::F16, &[4, 256, 64]);
        let c = r.choose("blk.1.attn_k_b.weight", k_b);
        assert_eq!(c.ty, GgmlType::Q5_0);
        assert!(c.fallback.is_some());
        let v_b = SourceKind::of(GgmlType::F16, &[4, 64, 256]);
        assert_eq!(r.choose("blk.1.attn_v_b.weight", v_b).ty, GgmlType::Q4K);
        assert_eq!(
            r.choose("blk.1.attn_kv_b.weight", w(256)).ty,
            GgmlType::Q8_0
        );
        let r = moe(FileType::Q3KM, 2);
        assert_eq!(r.choose("blk.0.attn_kv_b.weight", w(256)).ty, GgmlType::Q5K);
    }

    #[test]
    fn mxfp4_moe_puts_experts_in_mxfp4_and_the_rest_in_q8_0() {
        let r = moe(FileType::Mxfp4Moe, 8);
        assert_eq!(FileType::parse("mxfp4_moe"), Some(FileType::Mxfp4Moe));
        assert_eq!(FileType::Mxfp4Moe.id(), 38);
        assert_eq!(
            r.choose("blk.0.ffn_down_exps.weight", exps(256, 256)).ty,
            GgmlType::MXFP4
        );
        // Stacked MLA heads count as stacked too, as in llama.cpp.
        let k_b = SourceKind::of(GgmlType::F16, &[4, 256, 64]);
        assert_eq!(r.choose("blk.1.attn_k_b.weight", k_b).ty, GgmlType::MXFP4);
        for name in [
            "blk.0.attn_v.weight",
            "blk.0.ffn_down_shexp.weight",
            "output.weight",
            "token_embd.weight",
        ] {
            assert_eq!(r.choose(name, w(256)).ty, GgmlType::Q8_0, "{name}");
        }
        // Rows of 48 values fit neither MXFP4 nor Q8_0.
        let c = r.choose("blk.0.ffn_up_exps.weight", exps(48, 64));
        assert_eq!(c.ty, GgmlType::F16);
        assert_eq!(parse_ggml_type("mxfp4"), Ok(GgmlType::MXFP4));
    }

    #[test]
    fn float_targets_keep_1d_in_f32() {
        let r = recipe(FileType::F16, 2);
        assert_eq!(r.choose("blk.0.attn_q.weight", w(64)).ty, GgmlType::F16);
        assert_eq!(r.choose("token_embd.weight", w(64)).ty, GgmlType::F16);
        let bias = SourceKind::of(GgmlType::BF16, &[64]);
        assert_eq!(r.choose("blk.0.attn_q.bias", bias).ty, GgmlType::F32);
    }
}
