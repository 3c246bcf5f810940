//! The GGUF reader: header, metadata and tensor infos of a memory-mapped file, checked
//! against everything a hostile file can lie about.
//!
//! Every count and length a file claims is compared with the bytes left before anything is
//! allocated for it (an array of `n` strings needs at least `8n` bytes), every sum and
//! product is checked, and recursion into nested arrays is bounded, so a crafted header can
//! neither panic the reader nor make it allocate more than a small multiple of the file's
//! size. Two hard limits ([`MAX_META_ELEMENTS`], [`MAX_TENSORS`]) cap even that multiple.
//! Tensor data is not read: each tensor's byte range is checked against the file and left in
//! the map.

use std::collections::HashMap;
use std::path::Path;

use super::{GgufLayout, MetaValue, ValueType, MAX_DIMS};
use crate::formats::{DType, FormatError, GgmlType, Mapped, TensorInfo, WeightFormat, Weights};
use crate::types::TensorName;

/// The most metadata values (keys plus array items, counted through nested arrays) a file
/// may hold: 2^23. Each value costs about 32 bytes in memory however few bytes it took in
/// the file, so this caps metadata memory at a few hundred MB. Real models hold far less
/// (a 262k-token vocabulary with scores, types and merges is about 1.3 M values).
pub const MAX_META_ELEMENTS: u64 = 1 << 23;

/// How deeply arrays may nest. GGUF allows arrays of arrays; nothing real nests more than
/// twice, and the bound keeps a crafted file from exhausting the stack.
pub const MAX_ARRAY_DEPTH: u32 = 8;

/// The most tensors a file may declare: 2^20 (real files hold hundreds to a few thousand).
pub const MAX_TENSORS: u64 = 1 << 20;

/// The fewest bytes one tensor info can take: name length, n_dims, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// The fewest bytes one key/value can take: key length, value type, a one-byte value.
const MIN_KV: u64 = 8 + 4 + 1;
/// The alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// What [`parse_bytes`] finds in a GGUF file: everything [`Weights`] holds except the map.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedGguf {
    pub layout: GgufLayout,
    /// Key/values in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor infos in file order, every one with `file` 0 and an absolute `offset`.
    pub tensors: Vec<TensorInfo>,
}

/// Open a GGUF v2 or v3 file: map it and read its header, metadata and tensor infos.
///
/// Tensor shapes come out row-major (outermost first), the reverse of GGUF's `ne` order.
/// A tensor whose ggml type id modelgate does not know (a newer or a removed type) is kept as
/// [`GgmlType::Unknown`]; its byte size cannot be computed, so its `len` is the bytes from its
/// offset up to the next tensor's offset (in offset order) or to the end of the file, which
/// may include alignment padding.
pub fn open(path: &Path) -> Result<Weights, FormatError> {
    let map = Mapped::open(path)?;
    let parsed = parse_bytes(path, map.bytes())?;
    Ok(Weights::new(
        WeightFormat::Gguf,
        vec![path.to_owned()],
        vec![map],
        parsed.tensors,
        parsed.metadata,
        Some(parsed.layout),
    ))
}

/// Parse a whole GGUF file held in memory. `path` only names the file in error messages.
/// This is what [`open`] runs on the map, and what the fuzzer drives without file I/O.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<ParsedGguf, FormatError> {
    let mut r = Reader {
        path,
        buf: bytes,
        pos: 0,
        budget: MAX_META_ELEMENTS,
        context: String::new(),
    };
    let version = r.header_version()?;
    let tensor_count = r.u64("header tensor count")?;
    let kv_count = r.u64("header metadata key count")?;
    r.check_counts(tensor_count, kv_count)?;

    let (metadata, alignment) = r.metadata(kv_count)?;
    let raw = r.tensor_infos(tensor_count, alignment)?;
    let data_offset = align_up(r.pos as u64, alignment).ok_or_else(|| {
        r.malformed(format!(
            "tensor infos end at byte {} and cannot be aligned to {alignment}",
            r.pos
        ))
    })?;
    let tensors = place_tensors(&r, raw, data_offset)?;
    Ok(ParsedGguf {
        layout: GgufLayout {
            version,
            alignment,
            data_offset,
        },
        metadata,
        tensors,
    })
}

/// A tensor info as read, before its data range is placed in the file.
struct RawTensor {
    name: String,
    /// Row-major.
    shape: Vec<u64>,
    ggml: GgmlType,
    /// Relative to the data section.
    offset: u64,
    /// `None` for unknown types.
    len: Option<u64>,
    /// Where its info starts, for messages.
    info_at: usize,
}

/// A cursor over the file that refuses to read past its end.
struct Reader<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
    /// Metadata values still allowed (see [`MAX_META_ELEMENTS`]).
    budget: u64,
    /// What is being read (" in the value of `k`"), appended to truncation messages.
    context: String,
}

impl<'a> Reader<'a> {
    fn malformed(&self, fault: String) -> FormatError {
        FormatError::malformed(self.path, fault)
    }

    fn unsupported(&self, what: String) -> FormatError {
        FormatError::Unsupported {
            path: self.path.to_owned(),
            what,
        }
    }

    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], FormatError> {
        let left = self.left();
        if n > left {
            return Err(self.malformed(format!(
                "truncated {what} at byte {}{}: needs {n} bytes, {left} left in the file",
                self.pos, self.context
            )));
        }
        // n <= left <= usize::MAX, so the cast and the slice are in range.
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64 length, then that many bytes of UTF-8.
    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let at = self.pos;
        let len = self.u64(what)?;
        let left = self.left();
        if len > left {
            return Err(self.malformed(format!(
                "{what} at byte {at} claims {len} bytes, only {left} left in the file"
            )));
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.malformed(format!(
                "{what} at byte {at} is not UTF-8 (bad byte {} bytes into it)",
                e.valid_up_to()
            ))),
        }
    }

    fn header_version(&mut self) -> Result<u32, FormatError> {
        let magic = self.array::<4>("header magic")?;
        if &magic == b"FUGG" {
            return Err(self
                .unsupported("big-endian GGUF (byte-swapped magic `FUGG` at byte 0)".to_owned()));
        }
        if &magic != b"GGUF" {
            return Err(self.malformed(format!("magic at byte 0 is {magic:02x?}, not `GGUF`")));
        }
        let version = self.u32("header version")?;
        match version {
            2 | 3 => Ok(version),
            1 => Err(self.unsupported(
                "GGUF version 1 (the 2023 format with 32-bit counts; modelgate reads versions 2 and 3)"
                    .to_owned(),
            )),
            v if v & 0xffff == 0 && (1..=3).contains(&v.swap_bytes()) => {
                Err(self.unsupported(format!(
                    "big-endian GGUF (version field at byte 4 reads {v:#010x}, which is version {} byte-swapped)",
                    v.swap_bytes()
                )))
            }
            v @ 4..=255 => Err(self.unsupported(format!(
                "GGUF version {v} (modelgate reads versions 2 and 3)"
            ))),
            v => Err(self.malformed(format!(
                "version field at byte 4 is {v}, which is no GGUF version"
            ))),
        }
    }

    /// Refuse counts the rest of the file cannot hold before anything is allocated.
    fn check_counts(&mut self, tensors: u64, kvs: u64) -> Result<(), FormatError> {
        let left = self.left();
        let kv_min = kvs.checked_mul(MIN_KV).filter(|&n| n <= left);
        let Some(kv_min) = kv_min else {
            return Err(self.malformed(format!(
                "header claims {kvs} metadata keys at byte 16, each needs at least {MIN_KV} bytes, only {left} left in the file"
            )));
        };
        let infos_min = tensors
            .checked_mul(MIN_TENSOR_INFO)
            .filter(|&n| n <= left - kv_min);
        if infos_min.is_none() {
            return Err(self.malformed(format!(
                "header claims {tensors} tensors at byte 8, each info needs at least {MIN_TENSOR_INFO} bytes, only {} left after the metadata's minimum",
                left - kv_min
            )));
        }
        if tensors > MAX_TENSORS {
            return Err(self.unsupported(format!(
                "a file with {tensors} tensors (more than modelgate's limit of {MAX_TENSORS})"
            )));
        }
        self.spend(kvs, "metadata keys")
    }

    fn spend(&mut self, n: u64, what: &str) -> Result<(), FormatError> {
        match self.budget.checked_sub(n) {
            Some(b) => {
                self.budget = b;
                Ok(())
            }
            None => Err(self.unsupported(format!(
                "metadata with more than {MAX_META_ELEMENTS} values in total (reached at {what}, byte {}; modelgate's limit)",
                self.pos
            ))),
        }
    }

    fn metadata(&mut self, count: u64) -> Result<(Vec<(String, MetaValue)>, u64), FormatError> {
        // count * MIN_KV <= bytes left, checked by check_counts.
        let mut out = Vec::with_capacity(count as usize);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut alignment = DEFAULT_ALIGNMENT;
        for i in 0..count {
            let at = self.pos;
            self.context = format!(" in metadata key {i}");
            let key = self.string(&format!("metadata key {i}"))?;
            self.context = format!(" in the value of `{key}`");
            if let Some(first) = seen.get(&key) {
                return Err(self.malformed(format!(
                    "metadata key `{key}` at byte {at} repeats key {first}"
                )));
            }
            let type_at = self.pos;
            let id = self.u32("value type")?;
            let ty = ValueType::from_id(id).ok_or_else(|| {
                self.malformed(format!(
                    "metadata key `{key}` has unknown value type {id} at byte {type_at}"
                ))
            })?;
            let value = self.value(ty, &key, 0)?;
            if key == "general.alignment" {
                alignment = match value {
                    MetaValue::U32(a) if a.is_power_of_two() => a.into(),
                    MetaValue::U32(a) => {
                        return Err(self.malformed(format!(
                            "`general.alignment` at byte {at} is {a}, not a power of two"
                        )))
                    }
                    ref other => {
                        return Err(self.malformed(format!(
                            "`general.alignment` at byte {at} is a {}, not a u32",
                            other.type_name()
                        )))
                    }
                };
            }
            seen.insert(key.clone(), out.len());
            out.push((key, value));
        }
        Ok((out, alignment))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<MetaValue, FormatError> {
        let what = "value";
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => {
                        return Err(self
                            .malformed(format!("bool in `{key}` at byte {at} is {b}, not 0 or 1")))
                    }
                }
            }
            ValueType::String => MetaValue::String(self.string(&format!("string in `{key}`"))?),
            ValueType::Array => self.array_value(key, depth)?,
        })
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<MetaValue, FormatError> {
        let at = self.pos;
        let id = self.u32("array element type")?;
        let elem = ValueType::from_id(id).ok_or_else(|| {
            self.malformed(format!(
                "array in `{key}` at byte {at} has unknown element type {id}"
            ))
        })?;
        if elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
            return Err(self.unsupported(format!(
                "an array nested more than {MAX_ARRAY_DEPTH} deep (`{key}` at byte {at})"
            )));
        }
        let count = self.u64("array length")?;
        let left = self.left();
        let need = count.checked_mul(elem.min_encoded_len());
        if need.is_none_or(|n| n > left) {
            return Err(self.malformed(format!(
                "array in `{key}` at byte {at} claims {count} {} elements, which need at least {} bytes, only {left} left in the file",
                elem.name(),
                need.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string()),
            )));
        }
        self.spend(count, &format!("`{key}`"))?;
        // count <= bytes left (each element takes at least one byte) and within the budget.
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(self.value(elem, key, depth + 1)?);
        }
        Ok(MetaValue::Array { elem, items })
    }

    fn tensor_infos(&mut self, count: u64, alignment: u64) -> Result<Vec<RawTensor>, FormatError> {
        let left = self.left();
        if count.checked_mul(MIN_TENSOR_INFO).is_none_or(|n| n > left) {
            return Err(self.malformed(format!(
                "header claims {count} tensors, their infos need at least {MIN_TENSOR_INFO} bytes each, only {left} left after the metadata at byte {}",
                self.pos
            )));
        }
        // count * MIN_TENSOR_INFO <= bytes left.
        let mut out: Vec<RawTensor> = Vec::with_capacity(count as usize);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for i in 0..count {
            let t = self.tensor_info(i, alignment)?;
            if let Some(first) = seen.get(&t.name) {
                return Err(self.malformed(format!(
                    "tensor info {i} at byte {} repeats the name `{}` of tensor info {first}",
                    t.info_at, t.name
                )));
            }
            seen.insert(t.name.clone(), out.len());
            out.push(t);
        }
        Ok(out)
    }

    fn tensor_info(&mut self, i: u64, alignment: u64) -> Result<RawTensor, FormatError> {
        let info_at = self.pos;
        self.context = format!(" in tensor info {i}");
        let name = self.string(&format!("name of tensor info {i}"))?;
        self.context = format!(" in the info of tensor `{name}`");
        let dims_at = self.pos;
        let n_dims = self.u32("n_dims")?;
        if n_dims > MAX_DIMS {
            return Err(self.malformed(format!(
                "tensor `{name}` has n_dims {n_dims} at byte {dims_at}, more than GGML_MAX_DIMS ({MAX_DIMS})"
            )));
        }
        // ne order: ne[0] is the fastest-moving dimension.
        let mut ne = Vec::with_capacity(n_dims as usize);
        let mut elements: u64 = 1;
        for d in 0..n_dims {
            let at = self.pos;
            let n = self.u64("tensor dimension")?;
            if n == 0 {
                return Err(self.malformed(format!(
                    "tensor `{name}` has a zero dimension (ne[{d}] at byte {at})"
                )));
            }
            // ggml counts elements in int64_t.
            elements = match elements.checked_mul(n).filter(|&e| e <= i64::MAX as u64) {
                Some(e) => e,
                None => {
                    return Err(self.malformed(format!(
                        "tensor `{name}` dimensions at byte {} multiply past 2^63 elements (overflow at ne[{d}] = {n})",
                        dims_at + 4
                    )))
                }
            };
            ne.push(n);
        }
        let type_at = self.pos;
        let ggml = GgmlType::from_id(self.u32("tensor type")?);
        let offset_at = self.pos;
        let offset = self.u64("tensor offset")?;
        if offset % alignment != 0 {
            return Err(self.malformed(format!(
                "tensor `{name}` data offset {offset} (at byte {offset_at}) is not a multiple of the alignment {alignment}"
            )));
        }
        let len = match ggml.block() {
            None => None,
            Some((block, block_bytes)) => {
                let row = ne.first().copied().unwrap_or(1);
                if row % block != 0 {
                    return Err(self.malformed(format!(
                        "tensor `{name}` ({ggml} at byte {type_at}) has rows of {row} elements, not a whole number of {block}-element blocks"
                    )));
                }
                // elements is a multiple of row, so of block.
                match (elements / block).checked_mul(block_bytes) {
                    Some(n) => Some(n),
                    None => {
                        return Err(self.malformed(format!(
                            "tensor `{name}` ({ggml} at byte {type_at}) takes more than 2^64 bytes"
                        )))
                    }
                }
            }
        };
        ne.reverse();
        Ok(RawTensor {
            name,
            shape: ne,
            ggml,
            offset,
            len,
            info_at,
        })
    }
}

/// `n` rounded up to a multiple of `align` (a power of two); `None` on overflow.
fn align_up(n: u64, align: u64) -> Option<u64> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

/// Turn relative offsets absolute, size tensors of unknown type, and check that every
/// tensor's data lies inside the file and overlaps no other.
fn place_tensors(
    r: &Reader<'_>,
    raw: Vec<RawTensor>,
    data_offset: u64,
) -> Result<Vec<TensorInfo>, FormatError> {
    let file_len = r.buf.len() as u64;
    let mut starts = Vec::with_capacity(raw.len());
    for t in &raw {
        let start = data_offset
            .checked_add(t.offset)
            .filter(|&s| s <= file_len)
            .ok_or_else(|| {
                r.malformed(format!(
                    "tensor `{}` (info at byte {}) starts at data offset {} + {}, beyond the end of the file ({file_len} bytes)",
                    t.name, t.info_at, data_offset, t.offset
                ))
            })?;
        starts.push(start);
    }
    // Tensor indices in data order, to size unknown types and find overlaps.
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by_key(|&i| (starts[i], i));
    let mut lens = vec![0u64; raw.len()];
    for (k, &i) in order.iter().enumerate() {
        let next_start = order.get(k + 1).map_or(file_len, |&j| starts[j]);
        let t = &raw[i];
        lens[i] = match t.len {
            Some(len) => len,
            None => next_start - starts[i],
        };
        let end = starts[i].checked_add(lens[i]);
        if end.is_none_or(|e| e > file_len) {
            return Err(r.malformed(format!(
                "tensor `{}` data at bytes {}..{} lies beyond the end of the file ({file_len} bytes)",
                t.name,
                starts[i],
                end.map_or_else(|| "2^64".to_owned(), |e| e.to_string()),
            )));
        }
        if let Some(&j) = order.get(k + 1) {
            if starts[i] + lens[i] > starts[j] || starts[i] == starts[j] {
                return Err(r.malformed(format!(
                    "tensor `{}` data (bytes {}..{}) overlaps tensor `{}` (from byte {})",
                    t.name,
                    starts[i],
                    starts[i] + lens[i],
                    raw[j].name,
                    starts[j]
                )));
            }
        }
    }
    Ok(raw
        .into_iter()
        .enumerate()
        .map(|(i, t)| TensorInfo {
            name: TensorName(t.name),
            dtype: DType::from_ggml(t.ggml),
            shape: t.shape,
            file: 0,
            offset: starts[i],
            len: lens[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal v3 file: one key, one F32 tensor of `n` elements.
    fn tiny(n: u64, ty: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(b"w");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(std::iter::repeat_n(7u8, n as usize * 4));
        b
    }

    fn parse(b: &[u8]) -> Result<ParsedGguf, FormatError> {
        parse_bytes(Path::new("t.gguf"), b)
    }

    #[test]
    fn reads_a_minimal_file() {
        let p = parse(&tiny(8, 0)).unwrap();
        assert_eq!(p.layout.version, 3);
        assert_eq!(p.layout.data_offset % 32, 0);
        assert_eq!(p.tensors[0].shape, vec![8]);
        assert_eq!(p.tensors[0].len, 32);
        assert_eq!(p.metadata[0].1, MetaValue::String("llama".into()));
    }

    #[test]
    fn unknown_types_run_to_the_end_of_the_file() {
        let b = tiny(8, 31);
        let p = parse(&b).unwrap();
        assert_eq!(p.tensors[0].dtype, DType::Ggml(GgmlType::Unknown(31)));
        assert_eq!(p.tensors[0].offset + p.tensors[0].len, b.len() as u64);
    }

    #[test]
    fn every_prefix_fails_cleanly() {
        let b = tiny(8, 0);
        // The data section starts at the first 32-byte boundary after the infos.
        let data_offset = parse(&b).unwrap().layout.data_offset as usize;
        for n in 0..b.len() {
            let e = parse(&b[..n]).unwrap_err();
            assert!(matches!(e, FormatError::Malformed { .. }), "{n}: {e}");
            assert!(e.to_string().starts_with("`t.gguf`: "), "{e}");
            assert!(n < data_offset + 32);
        }
    }

    #[test]
    fn align_up_is_checked() {
        assert_eq!(align_up(33, 32), Some(64));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX - 3, 32), None);
    }
}
