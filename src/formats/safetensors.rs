//! safetensors: the hostile-safe reader (single files and sharded checkpoints) and the
//! deterministic streaming writer that conversion uses.
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {..}}`),
//! then the tensor data, offsets relative to byte `8 + n`.
//!
//! Reading. The file is memory-mapped and only the header bytes are touched, so opening a
//! multi-gigabyte checkpoint costs a header parse. The checks of a hostile file are done
//! here by hand, in this order, so that each message names the fault and the tensor: the
//! header length is at most 100,000,000 and `8 + n` lies within the file (both before a
//! header byte is read), the header is UTF-8, it is one JSON object with no name twice
//! (the `safetensors` crate parses into a `HashMap`, where a second entry would silently
//! win), every dtype is known, `shape` product x dtype size (checked) equals `end - start`,
//! the tensors sorted by offset are contiguous with no gap or overlap, and the last end is
//! exactly the data length. The `safetensors` crate (0.8) supplies the dtype names (its
//! `Dtype` enum is the authority on what the format defines) and then checks the header a
//! second time with `SafeTensors::read_metadata`; it reads the header only, and a file it
//! refuses is refused here too, so modelgate never accepts what the reference
//! implementation rejects.
//!
//! Sharded checkpoints (`model.safetensors.index.json`) are cross-checked against their
//! shards: a missing shard, a tensor the index names but its shard lacks, a tensor a shard
//! holds but the index does not name (or names elsewhere) and a tensor in two shards are
//! all errors naming the file and the tensor.
//!
//! Writing. The `safetensors` crate's writer needs every tensor up front, orders tensors by
//! dtype alignment and writes `__metadata__` from a `HashMap` (in no fixed order), so the
//! writer here is our own: the header is built from (name, dtype, shape) descriptors, with
//! tensors sorted by name and metadata sorted by key, padded with spaces to 8 bytes as the
//! reference writer does, and the tensor bytes are then streamed in that order to any
//! `Write`. Same input, same bytes; the files load with the `safetensors` crate.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{DType, FormatError, Mapped, MetaValue, TensorInfo, WeightFormat, Weights};
use crate::types::TensorName;

/// The largest header the format allows (the reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Largest `*.safetensors.index.json` read: indexes of 1000-shard models are a few MB.
const MAX_INDEX_LEN: u64 = 64 << 20;

/// Whether the first bytes look like a safetensors file: a header length, then a JSON
/// object. (Extensions lie; the first byte of the header must open an object.)
pub fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() >= 9 && head[8] == b'{'
}

/// One tensor entry of a parsed header; offsets are relative to the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
}

/// A checked safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `n`, the JSON header's length in bytes.
    pub header_len: u64,
    /// Absolute offset of the data section (`8 + n`).
    pub data_start: u64,
    /// Tensors in data order (sorted by offset).
    pub tensors: Vec<HeaderTensor>,
    /// `__metadata__` entries in file order.
    pub metadata: Vec<(String, String)>,
}

/// Parse and check the header of a whole safetensors file given as bytes. Only the first
/// `8 + n` bytes are read; the data section is checked by its length alone. `path` is
/// used in messages. This is the entry point the fuzzer drives.
pub fn parse_header(path: &Path, file: &[u8]) -> Result<Header, FormatError> {
    let bad = |fault: String| FormatError::malformed(path, fault);
    let file_len = file.len() as u64;
    let Some(len_bytes) = file.get(..8) else {
        return Err(bad(format!(
            "file is {file_len} bytes, too short for the 8-byte safetensors header length"
        )));
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(le);
    if n > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header length {n} exceeds the safetensors limit of {MAX_HEADER_LEN} bytes"
        )));
    }
    // n <= 1e8, so 8 + n cannot overflow.
    let data_start = 8 + n;
    if data_start > file_len {
        return Err(bad(format!(
            "header claims {n} bytes but the file has only {} after the length field",
            file_len - 8
        )));
    }
    let json = &file[8..data_start as usize];
    let text = std::str::from_utf8(json).map_err(|e| {
        bad(format!(
            "header is not valid UTF-8 (bad byte at header offset {})",
            e.valid_up_to()
        ))
    })?;
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "header is not a valid safetensors JSON object: {e}"
        ))
    })?;

    let mut tensors = Vec::with_capacity(raw.tensors.len());
    for (name, t) in raw.tensors {
        let dtype = dtype_from_name(&t.dtype).map_err(|e| match e {
            DtypeFault::Unknown => bad(format!(
                "tensor `{name}` has unknown dtype `{}` (safetensors 0.8 defines {})",
                t.dtype,
                KNOWN_DTYPES.join(", ")
            )),
            DtypeFault::Unsupported => FormatError::Unsupported {
                path: path.to_owned(),
                what: format!("tensor `{name}` dtype `{}`", t.dtype),
            },
        })?;
        let (start, end) = t.data_offsets;
        if end < start {
            return Err(bad(format!(
                "tensor `{name}` data_offsets [{start}, {end}] end before they start"
            )));
        }
        let elements = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` shape {:?} has more elements than fit in 64 bits",
                    t.shape
                ))
            })?;
        let bytes = dtype.bytes_for(elements).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` shape {:?} x {dtype} size overflows or is not a whole number of bytes",
                t.shape
            ))
        })?;
        if end - start != bytes {
            return Err(bad(format!(
                "tensor `{name}` is {dtype} {:?} ({bytes} bytes) but data_offsets [{start}, {end}] span {} bytes",
                t.shape,
                end - start
            )));
        }
        tensors.push(HeaderTensor {
            name,
            dtype,
            shape: t.shape,
            start,
            end,
        });
    }
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    let mut expected = 0u64;
    let mut previous: Option<&str> = None;
    for t in &tensors {
        if t.start < expected {
            return Err(bad(format!(
                "tensor `{}` data [{}, {}] overlaps tensor `{}` which ends at {expected}",
                t.name,
                t.start,
                t.end,
                previous.unwrap_or("?")
            )));
        }
        if t.start > expected {
            return Err(bad(match previous {
                Some(p) => format!(
                    "gap of {} unclaimed bytes between tensor `{p}` (ends at {expected}) and tensor `{}` (starts at {})",
                    t.start - expected,
                    t.name,
                    t.start
                ),
                None => format!(
                    "gap of {} unclaimed bytes before the first tensor `{}`",
                    t.start, t.name
                ),
            }));
        }
        expected = t.end;
        previous = Some(&t.name);
    }
    let data_len = file_len - data_start;
    if expected > data_len {
        return Err(bad(format!(
            "tensors need {expected} bytes of data but the file has {data_len} after the header (truncated?)"
        )));
    }
    if expected < data_len {
        return Err(bad(format!(
            "{} bytes after the end of the last tensor (data section is {data_len} bytes, tensors end at {expected})",
            data_len - expected
        )));
    }
    // Second opinion from the reference implementation (reads the header only).
    if let Err(e) = safetensors::SafeTensors::read_metadata(file) {
        return Err(bad(format!(
            "the safetensors crate refuses the header: {e}"
        )));
    }
    Ok(Header {
        header_len: n,
        data_start,
        tensors,
        metadata: raw.metadata,
    })
}

/// Open one safetensors file: map it and check its header.
pub fn open(path: &Path) -> Result<Weights, FormatError> {
    let map = Mapped::open(path)?;
    let header = parse_header(path, map.bytes())?;
    let tensors = tensor_infos(path, &header, 0)?;
    let metadata = header
        .metadata
        .into_iter()
        .map(|(k, v)| (k, MetaValue::String(v)))
        .collect();
    Ok(Weights::new(
        WeightFormat::Safetensors,
        vec![path.to_owned()],
        vec![map],
        tensors,
        metadata,
        None,
    ))
}

fn tensor_infos(path: &Path, h: &Header, file: usize) -> Result<Vec<TensorInfo>, FormatError> {
    h.tensors
        .iter()
        .map(|t| {
            let offset = h.data_start.checked_add(t.start).ok_or_else(|| {
                FormatError::malformed(path, format!("tensor `{}` offset overflows", t.name))
            })?;
            Ok(TensorInfo {
                name: TensorName(t.name.clone()),
                dtype: t.dtype,
                shape: t.shape.clone(),
                file,
                offset,
                len: t.end - t.start,
            })
        })
        .collect()
}

/// A `*.safetensors.index.json`: which shard holds each tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIndex {
    /// `weight_map` entries in file order: (tensor, shard file name).
    pub weight_map: Vec<(String, String)>,
}

/// Parse an index file's text. `path` is used in messages.
pub fn parse_index(path: &Path, text: &str) -> Result<ShardIndex, FormatError> {
    #[derive(Deserialize)]
    struct RawIndex {
        weight_map: UniqueStringMap,
    }
    let raw: RawIndex = serde_json::from_str(text)
        .map_err(|e| FormatError::malformed(path, format!("not a valid safetensors index: {e}")))?;
    if raw.weight_map.0.is_empty() {
        return Err(FormatError::malformed(
            path,
            "`weight_map` names no tensors",
        ));
    }
    for (tensor, shard) in &raw.weight_map.0 {
        let p = Path::new(shard);
        let plain = !shard.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(FormatError::malformed(
                path,
                format!(
                    "tensor `{tensor}` is mapped to shard `{shard}`, which is not a relative path inside the index's folder"
                ),
            ));
        }
    }
    Ok(ShardIndex {
        weight_map: raw.weight_map.0,
    })
}

/// Open a sharded checkpoint from its index file, cross-checking index and shards.
pub fn open_sharded(index: &Path) -> Result<Weights, FormatError> {
    let text = super::read_text_capped(index, MAX_INDEX_LEN)?;
    let idx = parse_index(index, &text)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let index_name = index
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| index.display().to_string());
    let canon_dir = fs::canonicalize(dir).map_err(|e| FormatError::io(dir, e))?;

    // Shards in sorted order: shard names are numbered, so this is also file order.
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut wanted: HashMap<&str, &str> = HashMap::new();
    for (tensor, shard) in &idx.weight_map {
        shards.entry(shard).or_default().push(tensor);
        wanted.insert(tensor, shard);
    }
    let mut files = Vec::with_capacity(shards.len());
    let mut maps = Vec::with_capacity(shards.len());
    let mut tensors = Vec::new();
    let mut metadata: Vec<(String, MetaValue)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (file_idx, (shard, named)) in shards.iter().enumerate() {
        let shard_path = dir.join(shard);
        let first = named.first().copied().unwrap_or("?");
        match fs::canonicalize(&shard_path) {
            Ok(p) if p.starts_with(&canon_dir) => {}
            Ok(_) => {
                return Err(FormatError::malformed(
                    index,
                    format!("shard `{shard}` (holding `{first}`) resolves outside the index's folder"),
                ))
            }
            Err(_) => {
                return Err(FormatError::malformed(
                    index,
                    format!(
                        "shard `{shard}` does not exist (the index puts {} tensor(s) in it, `{first}` first)",
                        named.len()
                    ),
                ))
            }
        }
        let map = Mapped::open(&shard_path)?;
        let header = parse_header(&shard_path, map.bytes())?;
        for t in &header.tensors {
            if let Some(&other) = seen.get(&t.name) {
                let other_name = shards.keys().nth(other).copied().unwrap_or("?");
                return Err(FormatError::malformed(
                    &shard_path,
                    format!("tensor `{}` is also in shard `{other_name}`", t.name),
                ));
            }
            seen.insert(t.name.clone(), file_idx);
            match wanted.get(t.name.as_str()) {
                None => {
                    return Err(FormatError::malformed(
                        &shard_path,
                        format!(
                            "tensor `{}` is in this shard but not in `{index_name}`",
                            t.name
                        ),
                    ))
                }
                Some(s) if s != shard => {
                    return Err(FormatError::malformed(
                        &shard_path,
                        format!(
                            "tensor `{}` is in this shard but `{index_name}` puts it in `{s}`",
                            t.name
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        for tensor in named {
            if !header.tensors.iter().any(|t| t.name == *tensor) {
                return Err(FormatError::malformed(
                    &shard_path,
                    format!("tensor `{tensor}` named by `{index_name}` is absent from this shard"),
                ));
            }
        }
        tensors.extend(tensor_infos(&shard_path, &header, file_idx)?);
        for (k, v) in header.metadata {
            if !metadata.iter().any(|(mk, _)| *mk == k) {
                metadata.push((k, MetaValue::String(v)));
            }
        }
        files.push(shard_path);
        maps.push(map);
    }
    Ok(Weights::new(
        WeightFormat::SafetensorsSharded,
        files,
        maps,
        tensors,
        metadata,
        None,
    ))
}

// ---------------------------------------------------------------------------------------
// dtypes

enum DtypeFault {
    Unknown,
    /// Defined by safetensors but with no [`DType`] (yet).
    Unsupported,
}

/// Every dtype name safetensors 0.8 defines, for messages.
const KNOWN_DTYPES: &[&str] = &[
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
];

fn dtype_from_name(name: &str) -> Result<DType, DtypeFault> {
    use safetensors::Dtype as S;
    let st = S::deserialize(de::value::StrDeserializer::<de::value::Error>::new(name))
        .map_err(|_| DtypeFault::Unknown)?;
    Ok(match st {
        S::BOOL => DType::Bool,
        S::F4 => DType::F4,
        S::F6_E2M3 => DType::F6E2M3,
        S::F6_E3M2 => DType::F6E3M2,
        S::U8 => DType::U8,
        S::I8 => DType::I8,
        S::F8_E5M2 => DType::F8E5M2,
        S::F8_E4M3 => DType::F8E4M3,
        S::F8_E8M0 => DType::F8E8M0,
        S::I16 => DType::I16,
        S::U16 => DType::U16,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I32 => DType::I32,
        S::U32 => DType::U32,
        S::F32 => DType::F32,
        S::C64 => DType::C64,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U64 => DType::U64,
        // The FNUZ float8 variants (and anything a later crate adds) have no DType.
        _ => return Err(DtypeFault::Unsupported),
    })
}

/// The safetensors dtype name of an element dtype; `None` for ggml block types.
pub fn dtype_name(d: DType) -> Option<&'static str> {
    match d {
        DType::Ggml(_) => None,
        d => Some(d.name()),
    }
}

// ---------------------------------------------------------------------------------------
// header JSON: an object whose keys must be unique, kept in file order

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

struct RawHeader {
    tensors: Vec<(String, RawTensor)>,
    metadata: Vec<(String, String)>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut names = HashSet::new();
                let mut tensors = Vec::new();
                let mut metadata = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        if metadata.is_some() {
                            return Err(de::Error::custom("`__metadata__` appears twice"));
                        }
                        // The reference reader takes `null` as no metadata.
                        let m: Option<UniqueStringMap> = map
                            .next_value()
                            .map_err(|e| de::Error::custom(format!("`__metadata__`: {e}")))?;
                        metadata = Some(m.map(|m| m.0).unwrap_or_default());
                        continue;
                    }
                    if !names.insert(key.clone()) {
                        return Err(de::Error::custom(format!("tensor `{key}` appears twice")));
                    }
                    let t: RawTensor = map
                        .next_value()
                        .map_err(|e| de::Error::custom(format!("tensor `{key}`: {e}")))?;
                    tensors.push((key, t));
                }
                Ok(RawHeader {
                    tensors,
                    metadata: metadata.unwrap_or_default(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON object of string values whose keys must be unique, in file order.
struct UniqueStringMap(Vec<(String, String)>);

impl<'de> Deserialize<'de> for UniqueStringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueStringMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("key `{key}` appears twice")));
                    }
                    let v: String = map
                        .next_value()
                        .map_err(|e| de::Error::custom(format!("`{key}`: {e}")))?;
                    out.push((key, v));
                }
                Ok(UniqueStringMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------
// writer

/// A tensor to write: its name, element type and shape (outermost first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<u64>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    /// Bytes of data this tensor takes; `None` for block types, partial bytes or overflow.
    pub fn byte_len(&self) -> Option<u64> {
        dtype_name(self.dtype)?;
        let elements = self
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        self.dtype.bytes_for(elements)
    }
}

/// An error writing a safetensors file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write safetensors data")]
    Io(#[source] io::Error),
    #[error("cannot write `{path}`")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A descriptor cannot be written: ggml block type, size overflow, duplicate name.
    #[error("tensor `{name}`: {fault}")]
    Spec { name: String, fault: String },
    #[error("safetensors header would be {len} bytes, more than the {MAX_HEADER_LEN}-byte limit")]
    HeaderTooLarge { len: u64 },
    /// Tensor data given out of order, too long, too short, or for an unknown tensor.
    #[error("tensor data for `{name}`: {fault}")]
    Data { name: String, fault: String },
}

/// Tensors in the order their data is written, each with its length in bytes.
pub type WritePlan = Vec<(TensorSpec, u64)>;

/// The header bytes (8-byte length + JSON padded with spaces to a multiple of 8) for these
/// tensors and metadata, and the tensors in the order their data must follow (by name).
pub fn build_header(
    tensors: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, WritePlan), WriteError> {
    let mut sorted: Vec<&TensorSpec> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in sorted.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(WriteError::Spec {
                name: pair[0].name.clone(),
                fault: "appears twice".into(),
            });
        }
    }
    let mut json = String::from("{");
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&quote(k));
            json.push(':');
            json.push_str(&quote(v));
        }
        json.push('}');
    }
    let mut offset = 0u64;
    let mut plan = Vec::with_capacity(sorted.len());
    for t in sorted {
        if t.name == "__metadata__" {
            return Err(WriteError::Spec {
                name: t.name.clone(),
                fault: "the name is reserved for metadata".into(),
            });
        }
        let Some(dtype) = dtype_name(t.dtype) else {
            return Err(WriteError::Spec {
                name: t.name.clone(),
                fault: format!(
                    "{} is a ggml block type, which safetensors cannot hold",
                    t.dtype
                ),
            });
        };
        let len = t.byte_len().ok_or_else(|| WriteError::Spec {
            name: t.name.clone(),
            fault: format!(
                "shape {:?} x {dtype} size overflows or is not whole bytes",
                t.shape
            ),
        })?;
        let end = offset.checked_add(len).ok_or_else(|| WriteError::Spec {
            name: t.name.clone(),
            fault: "total data size overflows".into(),
        })?;
        if json.len() > 1 {
            json.push(',');
        }
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            quote(&t.name),
            shape.join(",")
        ));
        plan.push((t.clone(), len));
        offset = end;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let n = json.len() as u64;
    if n > MAX_HEADER_LEN {
        return Err(WriteError::HeaderTooLarge { len: n });
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    Ok((out, plan))
}

/// A streaming safetensors writer: the header is written when it is created, then the
/// tensor data in name order, whole or in chunks. Memory use is the header only.
pub struct Writer<W: Write> {
    out: W,
    plan: WritePlan,
    /// Index into `plan` of the tensor whose bytes come next.
    current: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
}

impl<W: Write> Writer<W> {
    /// Write the header for these tensors and metadata to `out`.
    pub fn new(
        mut out: W,
        tensors: &[TensorSpec],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self, WriteError> {
        let (header, plan) = build_header(tensors, metadata)?;
        out.write_all(&header).map_err(WriteError::Io)?;
        let mut w = Writer {
            out,
            plan,
            current: 0,
            written: 0,
        };
        w.skip_empty();
        Ok(w)
    }

    /// The tensors in the order their data must be written.
    pub fn order(&self) -> impl Iterator<Item = &TensorSpec> {
        self.plan.iter().map(|(t, _)| t)
    }

    /// The tensor whose bytes come next, or `None` when all are written.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.plan.get(self.current).map(|(t, _)| t)
    }

    fn skip_empty(&mut self) {
        while self
            .plan
            .get(self.current)
            .is_some_and(|(_, len)| *len == self.written)
        {
            self.current += 1;
            self.written = 0;
        }
    }

    /// Write a whole tensor's data. It must be the next tensor, with nothing of it
    /// written yet, and `data` must be its exact size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), WriteError> {
        let fault = |f: String| WriteError::Data {
            name: name.to_owned(),
            fault: f,
        };
        // Zero-length tensors are complete from the start; writing nothing to one is fine.
        if data.is_empty() && self.plan.iter().any(|(t, len)| t.name == name && *len == 0) {
            return Ok(());
        }
        let Some((spec, len)) = self.plan.get(self.current) else {
            return Err(fault("every tensor is already written".into()));
        };
        if spec.name != name {
            return Err(fault(format!("expected the data of `{}` next", spec.name)));
        }
        if self.written != 0 {
            return Err(fault(format!(
                "{} bytes of it were already written in chunks",
                self.written
            )));
        }
        if data.len() as u64 != *len {
            return Err(fault(format!("needs {len} bytes, got {}", data.len())));
        }
        self.write_chunk(data)
    }

    /// Append bytes to the current tensor; moves to the next tensor once it is complete.
    /// A chunk may not run past the end of the current tensor.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        let Some((spec, len)) = self.plan.get(self.current) else {
            return Err(WriteError::Data {
                name: "?".into(),
                fault: format!("{} bytes given after every tensor was written", data.len()),
            });
        };
        let left = len - self.written;
        if data.len() as u64 > left {
            return Err(WriteError::Data {
                name: spec.name.clone(),
                fault: format!(
                    "chunk of {} bytes runs past its end ({left} bytes left)",
                    data.len()
                ),
            });
        }
        self.out.write_all(data).map_err(WriteError::Io)?;
        self.written += data.len() as u64;
        self.skip_empty();
        Ok(())
    }

    /// Check every tensor was written in full, flush and return the sink.
    pub fn finish(mut self) -> Result<W, WriteError> {
        if let Some((spec, len)) = self.plan.get(self.current) {
            return Err(WriteError::Data {
                name: spec.name.clone(),
                fault: format!("only {} of {len} bytes were written", self.written),
            });
        }
        self.out.flush().map_err(WriteError::Io)?;
        Ok(self.out)
    }
}

/// Write a safetensors file atomically: into a temp file in the target folder, renamed into
/// place once complete (nothing half-written is ever at `path`). `data` is asked for each
/// tensor's bytes in write order, one tensor at a time.
pub fn write_file<'a, F>(
    path: &Path,
    tensors: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut data: F,
) -> Result<(), WriteError>
where
    F: FnMut(&TensorSpec) -> Result<Cow<'a, [u8]>, WriteError>,
{
    let file_err = |source: io::Error| WriteError::File {
        path: path.to_owned(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(".tmp")
        .tempfile_in(parent)
        .map_err(file_err)?;
    {
        let sink = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let mut w = Writer::new(sink, tensors, metadata).map_err(|e| with_path(e, path))?;
        let order: Vec<TensorSpec> = w.order().cloned().collect();
        for spec in &order {
            let bytes = data(spec)?;
            w.write_tensor(&spec.name, &bytes)
                .map_err(|e| with_path(e, path))?;
        }
        let sink = w.finish().map_err(|e| with_path(e, path))?;
        sink.into_inner().map_err(|e| file_err(e.into_error()))?;
    }
    tmp.as_file().sync_all().map_err(file_err)?;
    set_readable(tmp.as_file()).map_err(file_err)?;
    tmp.persist(path).map_err(|e| file_err(e.error))?;
    Ok(())
}

fn with_path(e: WriteError, path: &Path) -> WriteError {
    match e {
        WriteError::Io(source) => WriteError::File {
            path: path.to_owned(),
            source,
        },
        other => other,
    }
}

/// Temp files are created owner-only; a finished model file is an ordinary readable file.
#[cfg(unix)]
fn set_readable(f: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn set_readable(_f: &fs::File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn fault(bytes: &[u8]) -> String {
        match parse_header(Path::new("x.safetensors"), bytes) {
            Err(FormatError::Malformed { fault, .. }) => fault,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_small_header() {
        let h = r#"{"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let got = parse_header(Path::new("x"), &file(h, &[0; 12])).unwrap();
        assert_eq!(got.tensors[0].name, "a");
        assert_eq!(got.tensors[1].dtype, DType::F16);
        assert_eq!(got.metadata, vec![("format".into(), "pt".into())]);
        assert_eq!(got.data_start, 8 + h.len() as u64);
    }

    #[test]
    fn every_crate_dtype_is_mapped_or_named_unsupported() {
        for name in KNOWN_DTYPES {
            match dtype_from_name(name) {
                Ok(d) => assert_eq!(d.name(), *name),
                Err(DtypeFault::Unsupported) => assert!(name.ends_with("FNUZ"), "{name}"),
                Err(DtypeFault::Unknown) => panic!("{name} unknown"),
            }
        }
        assert!(matches!(dtype_from_name("Q4_K"), Err(DtypeFault::Unknown)));
    }

    #[test]
    fn faults_are_named() {
        assert!(fault(&[1, 2, 3]).contains("too short"));
        let mut big = 200_000_000u64.to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(fault(&big).contains("exceeds the safetensors limit"));
        let mut beyond = 1000u64.to_le_bytes().to_vec();
        beyond.extend_from_slice(b"{}");
        assert!(fault(&beyond).contains("claims 1000 bytes"));
        assert!(fault(&file("[1,2]", &[])).contains("not a valid safetensors JSON object"));
        let dup = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(fault(&file(dup, &[0; 2])).contains("`a` appears twice"));
        let overlap = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        assert!(fault(&file(overlap, &[0; 3])).contains("overlaps tensor `a`"));
        let gap = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#;
        assert!(fault(&file(gap, &[0; 5])).contains("gap of 1"));
        let overflow =
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        assert!(fault(&file(overflow, &[0; 8])).contains("more elements than fit"));
        let size = r#"{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}}"#;
        assert!(fault(&file(size, &[0; 8])).contains("overflows"));
        let short = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        assert!(fault(&file(short, &[0; 3])).contains("truncated"));
        assert!(fault(&file(short, &[0; 5])).contains("1 bytes after the end"));
        let unknown = r#"{"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}}"#;
        assert!(fault(&file(unknown, &[0; 4])).contains("unknown dtype `Q4`"));
        let meta = r#"{"__metadata__":{"a":1}}"#;
        assert!(fault(&file(meta, &[])).contains("`__metadata__`"));
        let null = r#"{"__metadata__":null}"#;
        assert!(parse_header(Path::new("x"), &file(null, &[])).is_ok());
    }

    #[test]
    fn fnuz_is_unsupported_not_malformed() {
        let h = r#"{"a":{"dtype":"F8_E4M3FNUZ","shape":[4],"data_offsets":[0,4]}}"#;
        let e = parse_header(Path::new("x"), &file(h, &[0; 4])).unwrap_err();
        assert!(matches!(e, FormatError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn writer_refuses_misuse() {
        let specs = vec![
            TensorSpec::new("b", DType::U8, vec![2]),
            TensorSpec::new("a", DType::F16, vec![1]),
        ];
        let mut w = Writer::new(Vec::new(), &specs, &BTreeMap::new()).unwrap();
        assert!(w.write_tensor("b", &[1, 2]).is_err()); // `a` comes first
        assert!(w.write_tensor("a", &[1, 2, 3]).is_err());
        w.write_chunk(&[1]).unwrap();
        assert!(w.write_chunk(&[2, 3]).is_err());
        w.write_chunk(&[2]).unwrap();
        assert_eq!(w.next_tensor().map(|t| t.name.as_str()), Some("b"));
        let unfinished = Writer::new(Vec::new(), &specs, &BTreeMap::new()).unwrap();
        assert!(unfinished.finish().is_err());
        let q = [TensorSpec::new(
            "q",
            DType::Ggml(crate::formats::GgmlType::Q4_0),
            vec![32],
        )];
        assert!(build_header(&q, &BTreeMap::new()).is_err());
        let dup = [specs[0].clone(), specs[0].clone()];
        assert!(build_header(&dup, &BTreeMap::new()).is_err());
    }

    fn element_dtype() -> impl Strategy<Value = DType> {
        prop::sample::select(vec![
            DType::Bool,
            DType::U8,
            DType::I8,
            DType::U16,
            DType::I16,
            DType::U32,
            DType::I32,
            DType::U64,
            DType::I64,
            DType::F16,
            DType::BF16,
            DType::F32,
            DType::F64,
            DType::C64,
            DType::F8E4M3,
            DType::F8E5M2,
            DType::F8E8M0,
            DType::F4,
        ])
    }

    fn specs() -> impl Strategy<Value = Vec<TensorSpec>> {
        prop::collection::btree_map(
            "[a-z.\"\\\\é0-9]{1,12}",
            (element_dtype(), prop::collection::vec(0u64..5, 0..4)),
            0..8,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, (dtype, mut shape))| {
                    // F4 packs two elements a byte: keep the count even.
                    if dtype == DType::F4 {
                        shape.push(2);
                    }
                    TensorSpec::new(name, dtype, shape)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn write_then_read_round_trips(
            mut specs in specs(),
            meta in prop::collection::btree_map("[a-z_ ]{1,8}", "[ -~é]{0,12}", 0..4),
            seed in any::<u8>(),
        ) {
            let data: Vec<Vec<u8>> = specs
                .iter()
                .map(|s| (0..s.byte_len().unwrap()).map(|i| (i as u8).wrapping_mul(seed)).collect())
                .collect();
            let by_name: HashMap<String, Vec<u8>> =
                specs.iter().map(|s| s.name.clone()).zip(data).collect();
            let write = |specs: &[TensorSpec]| {
                let mut w = Writer::new(Vec::new(), specs, &meta).unwrap();
                let order: Vec<TensorSpec> = w.order().cloned().collect();
                for s in &order {
                    w.write_tensor(&s.name, &by_name[&s.name]).unwrap();
                }
                w.finish().unwrap()
            };
            let bytes = write(&specs);
            specs.reverse();
            prop_assert_eq!(&bytes, &write(&specs), "input order changed the bytes");

            let h = parse_header(Path::new("t"), &bytes).unwrap();
            prop_assert_eq!(h.data_start % 8, 0);
            let got_meta: BTreeMap<String, String> = h.metadata.iter().cloned().collect();
            prop_assert_eq!(&got_meta, &meta);
            prop_assert_eq!(h.tensors.len(), specs.len());
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for t in &h.tensors {
                let spec = specs.iter().find(|s| s.name == t.name).unwrap();
                prop_assert_eq!(t.dtype, spec.dtype);
                prop_assert_eq!(&t.shape, &spec.shape);
                let ours = &bytes[(h.data_start + t.start) as usize..(h.data_start + t.end) as usize];
                prop_assert_eq!(ours, &by_name[&t.name][..]);
                let theirs = st.tensor(&t.name).unwrap();
                prop_assert_eq!(theirs.data(), ours);
                prop_assert_eq!(theirs.dtype().to_string(), t.dtype.name());
            }
        }

        #[test]
        fn parse_header_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_header(Path::new("fuzz"), &bytes);
        }
    }
}
