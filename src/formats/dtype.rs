//! Element and block types of tensors: the dtypes safetensors defines and the types ggml
//! defines, with their names and byte sizes.
//!
//! One enum covers both so that every stage (inspect, convert, engine) speaks one set of
//! names. ggml types outside the plain element types keep their ggml identity; ids that
//! ggml does not define (or no longer defines) stay readable as [`GgmlType::Unknown`], so a
//! GGUF file with a newer type is still inspected rather than refused.

use std::fmt;

use serde::Serialize;

/// A ggml tensor type, by its numeric id in GGUF tensor infos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    /// An id ggml does not define today (or one it removed, like the Q4_0_4_4 repacks).
    Unknown(u32),
}

/// (type, id, name, elements per block, bytes per block). Sizes as in ggml's type traits
/// (`sizeof(block_*)` in ggml-common.h); checked against the PyPI `gguf` package's
/// `GGML_QUANT_SIZES` in tests/it/gguf.rs. They agree except for Q8_1, where gguf-py still
/// says 40 bytes (two f32 scales, ggml's layout before 2024) and ggml's block has two f16
/// scales and 36 bytes. Q8_1 and Q8_K are ggml's intermediate types for activations and do
/// not occur in model files. Ids 4, 5 (Q4_2, Q4_3), 31-33 (Q4_0_4_4 .. Q4_0_8_8) and 36-38
/// (IQ4_NL_4_4 .. IQ4_NL_8_8) were removed from ggml and read as `Unknown`.
const GGML_TABLE: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
];

impl GgmlType {
    pub fn from_id(id: u32) -> GgmlType {
        GGML_TABLE
            .iter()
            .find(|row| row.1 == id)
            .map(|row| row.0)
            .unwrap_or(GgmlType::Unknown(id))
    }

    fn row(self) -> Option<&'static (GgmlType, u32, &'static str, u64, u64)> {
        GGML_TABLE.iter().find(|row| row.0 == self)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::Unknown(id) => id,
            t => t.row().map(|r| r.1).unwrap_or(u32::MAX),
        }
    }

    /// ggml's name (`Q4_K`, `IQ2_XXS`), or `unknown(N)`.
    pub fn name(self) -> &'static str {
        self.row().map(|r| r.2).unwrap_or("unknown")
    }

    /// Every type ggml defines today, in id order.
    pub fn known() -> impl Iterator<Item = GgmlType> {
        GGML_TABLE.iter().map(|row| row.0)
    }

    /// Parse a ggml type name as llama.cpp prints it (case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GGML_TABLE
            .iter()
            .find(|row| row.2.eq_ignore_ascii_case(name))
            .map(|row| row.0)
    }

    /// Elements per block and bytes per block; `None` for unknown types.
    pub fn block(self) -> Option<(u64, u64)> {
        self.row().map(|r| (r.3, r.4))
    }

    /// Whether this is a block-quantized type (not a plain element type).
    pub fn is_quantized(self) -> bool {
        matches!(self.block(), Some((b, _)) if b > 1) || matches!(self, GgmlType::Unknown(_))
    }

    /// Bytes taken by `elements` values of this type: `None` when the type is unknown, the
    /// count is not a whole number of blocks, or the size overflows.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let (block, size) = self.block()?;
        if !elements.is_multiple_of(block) {
            return None;
        }
        (elements / block).checked_mul(size)
    }

    /// Every type ggml defines, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        GGML_TABLE.iter().map(|row| row.0)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Unknown(id) => write!(f, "unknown({id})"),
            t => f.write_str(t.name()),
        }
    }
}

/// The type of one tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
    C64,
    F8E4M3,
    F8E5M2,
    F8E8M0,
    F6E2M3,
    F6E3M2,
    F4,
    /// A ggml block type (quantized, or unknown).
    Ggml(GgmlType),
}

impl DType {
    /// Name as its format writes it (`BF16`, `F8_E4M3`, `Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::C64 => "C64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E8M0 => "F8_E8M0",
            DType::F6E2M3 => "F6_E2M3",
            DType::F6E3M2 => "F6_E3M2",
            DType::F4 => "F4",
            DType::Ggml(t) => t.name(),
        }
    }

    /// Size of one element in bits, for element types; `None` for block types.
    pub fn bits(self) -> Option<u64> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 8,
            DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::U32 | DType::I32 | DType::F32 => 32,
            DType::U64 | DType::I64 | DType::F64 | DType::C64 => 64,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::F4 => 4,
            DType::Ggml(_) => return None,
        })
    }

    /// Bytes taken by `elements` values: checked, and `None` for a partial block, a
    /// partial byte of a sub-byte type, an unknown ggml type or overflow.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        match self {
            DType::Ggml(t) => t.bytes_for(elements),
            _ => {
                let bits = elements.checked_mul(self.bits()?)?;
                bits.is_multiple_of(8).then_some(bits / 8)
            }
        }
    }

    /// The dtype a GGUF tensor of ggml type `t` has: plain element types map to their
    /// element dtype, everything else stays a ggml block type.
    pub fn from_ggml(t: GgmlType) -> DType {
        match t {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::F64 => DType::F64,
            GgmlType::I8 => DType::I8,
            GgmlType::I16 => DType::I16,
            GgmlType::I32 => DType::I32,
            GgmlType::I64 => DType::I64,
            other => DType::Ggml(other),
        }
    }

    /// The ggml type for this dtype, where ggml has one.
    pub fn to_ggml(self) -> Option<GgmlType> {
        Some(match self {
            DType::F32 => GgmlType::F32,
            DType::F16 => GgmlType::F16,
            DType::BF16 => GgmlType::BF16,
            DType::F64 => GgmlType::F64,
            DType::I8 => GgmlType::I8,
            DType::I16 => GgmlType::I16,
            DType::I32 => GgmlType::I32,
            DType::I64 => GgmlType::I64,
            DType::Ggml(t) => t,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::Ggml(t) => t.fmt(f),
            d => f.write_str(d.name()),
        }
    }
}

impl Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_ids_round_trip() {
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), t);
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        assert_eq!(GgmlType::from_id(31), GgmlType::Unknown(31));
        assert_eq!(GgmlType::from_id(42), GgmlType::Unknown(42));
        assert_eq!(GgmlType::all().count(), 34);
        assert_eq!(GgmlType::Unknown(31).to_string(), "unknown(31)");
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(GgmlType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(GgmlType::Q4_1.bytes_for(33), None);
        assert_eq!(GgmlType::Unknown(99).bytes_for(32), None);
        assert_eq!(DType::F4.bytes_for(3), None);
        assert_eq!(DType::F4.bytes_for(4), Some(2));
        assert_eq!(DType::F64.bytes_for(u64::MAX), None);
    }
}
