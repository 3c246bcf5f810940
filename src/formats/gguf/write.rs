//! A deterministic, streaming GGUF writer: what `convert` writes its output through.
//!
//! The whole layout (header, metadata, tensor infos, every tensor's aligned offset) is
//! computed from the metadata and tensor descriptors before a byte is written, so tensor
//! data can then be streamed one tensor (or one chunk) at a time and never needs to be in
//! memory all at once. The same metadata, descriptors and data always give the same bytes:
//! nothing depends on time, hashing or the machine, and padding is zeros. Metadata is
//! written in the order given (callers that want a canonical order sort it first).
//!
//! Output is GGUF version 3, little-endian, laid out the way llama.cpp's own writer lays it
//! out (tensors contiguous in info order, each padded to the alignment), and everything is
//! validated against the limits our reader enforces, so whatever this writes
//! [`super::parse_bytes`] reads back.

use std::collections::HashSet;
use std::io::Write;

use super::{MetaValue, ValueType, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_META_ELEMENTS};
use crate::formats::GgmlType;

/// The alignment written when none is asked for (GGUF's default, so no
/// `general.alignment` key is needed).
pub const DEFAULT_ALIGNMENT: u32 = 32;

const VERSION: u32 = 3;

/// One tensor to be written: its name, ggml type and shape, outermost dimension first
/// (row-major, as [`crate::formats::TensorInfo::shape`]; the writer reverses it into GGUF's
/// `ne` order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    pub name: String,
    pub ggml_type: GgmlType,
    pub shape: Vec<u64>,
}

/// Why a GGUF file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("cannot write GGUF output")]
    Io(#[from] std::io::Error),
    /// The metadata or tensors cannot be written as GGUF, or tensor data arrived out of
    /// order or with the wrong length.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: String) -> GgufWriteError {
    GgufWriteError::Invalid(msg)
}

struct Planned {
    name: String,
    len: u64,
    /// Zero bytes written after the data.
    pad: u64,
    /// Absolute offset of the data in the output.
    offset: u64,
}

/// Writes one GGUF file to `W`: the header on creation, then each tensor's bytes in the
/// order the descriptors were given, then [`GgufWriter::finish`]. After an error the output
/// is incomplete and must be discarded.
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<Planned>,
    /// Index of the tensor being written.
    next: usize,
    /// Bytes of that tensor written so far.
    done: u64,
    data_offset: u64,
    total_len: u64,
}

impl<W: Write> std::fmt::Debug for GgufWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("tensors", &self.tensors.len())
            .field("next", &self.next)
            .field("done", &self.done)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl<W: Write> GgufWriter<W> {
    /// Validate and lay out the file, and write its header (alignment 32).
    pub fn new(
        out: W,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorDesc],
    ) -> Result<Self, GgufWriteError> {
        Self::with_alignment(out, metadata, tensors, DEFAULT_ALIGNMENT)
    }

    /// As [`GgufWriter::new`] with another alignment (a power of two). A `general.alignment`
    /// key in `metadata` must be a u32 equal to it; when the key is absent and the alignment
    /// is not 32, the writer appends it after the caller's keys.
    pub fn with_alignment(
        mut out: W,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorDesc],
        alignment: u32,
    ) -> Result<Self, GgufWriteError> {
        if !alignment.is_power_of_two() {
            return Err(invalid(format!(
                "alignment {alignment} is not a power of two"
            )));
        }
        let align = u64::from(alignment);
        let extra_key = check_metadata(metadata, alignment)?;

        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        put_u32(&mut header, VERSION);
        put_u64(&mut header, tensors.len() as u64);
        put_u64(
            &mut header,
            metadata.len() as u64 + u64::from(extra_key.is_some()),
        );
        for (k, v) in metadata.iter().chain(extra_key.iter()) {
            put_str(&mut header, k);
            put_u32(&mut header, v.value_type().id());
            put_value(&mut header, v);
        }

        let mut plan = Vec::with_capacity(tensors.len());
        let mut names = HashSet::new();
        let mut rel: u64 = 0;
        for t in tensors {
            if !names.insert(t.name.as_str()) {
                return Err(invalid(format!("tensor `{}` is listed twice", t.name)));
            }
            let len = tensor_len(t)?;
            let padded = align_up(len, align).ok_or_else(|| too_big(&t.name))?;
            put_str(&mut header, &t.name);
            put_u32(&mut header, t.shape.len() as u32);
            for &d in t.shape.iter().rev() {
                put_u64(&mut header, d);
            }
            put_u32(&mut header, t.ggml_type.id());
            put_u64(&mut header, rel);
            plan.push(Planned {
                name: t.name.clone(),
                len,
                pad: padded - len,
                offset: rel,
            });
            rel = rel.checked_add(padded).ok_or_else(|| too_big(&t.name))?;
        }
        let data_offset =
            align_up(header.len() as u64, align).ok_or_else(|| too_big("the header"))?;
        header.resize(data_offset as usize, 0);
        for p in &mut plan {
            p.offset += data_offset;
        }
        let total_len = data_offset
            .checked_add(rel)
            .ok_or_else(|| too_big("the file"))?;
        out.write_all(&header)?;
        // Every tensor has at least one element (dimensions are non-zero), so none is
        // empty and each is completed by the chunk that reaches its length.
        Ok(GgufWriter {
            out,
            tensors: plan,
            next: 0,
            done: 0,
            data_offset,
            total_len,
        })
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the finished file in bytes.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Each tensor's name, absolute data offset and byte length, in writing order.
    pub fn layout(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.tensors
            .iter()
            .map(|p| (p.name.as_str(), p.offset, p.len))
    }

    /// Write the whole data of the next tensor.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufWriteError> {
        let len = self.expect(name)?.len;
        if self.done != 0 || data.len() as u64 != len {
            return Err(invalid(format!(
                "tensor `{name}` takes {len} bytes, got {}{}",
                data.len(),
                if self.done != 0 {
                    format!(" after {} already written", self.done)
                } else {
                    String::new()
                }
            )));
        }
        self.write_tensor_chunk(name, data)
    }

    /// Write the next part of the next tensor's data. The tensor is complete (and padded)
    /// once its byte length is reached; the next call then names the tensor after it.
    pub fn write_tensor_chunk(&mut self, name: &str, chunk: &[u8]) -> Result<(), GgufWriteError> {
        let p = self.expect(name)?;
        let (len, pad) = (p.len, p.pad);
        let after = self.done + chunk.len() as u64;
        if after > len {
            return Err(invalid(format!(
                "tensor `{name}` takes {len} bytes, got {after} ({} too many)",
                after - len
            )));
        }
        self.out.write_all(chunk)?;
        self.done = after;
        if self.done == len {
            write_zeros(&mut self.out, pad)?;
            self.next += 1;
            self.done = 0;
        }
        Ok(())
    }

    /// Check that every tensor was written, flush, and return the output.
    pub fn finish(mut self) -> Result<W, GgufWriteError> {
        if let Some(p) = self.tensors.get(self.next) {
            return Err(invalid(format!(
                "output ended before tensor `{}` was complete ({} of {} bytes; {} tensors left)",
                p.name,
                self.done,
                p.len,
                self.tensors.len() - self.next
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn expect(&self, name: &str) -> Result<&Planned, GgufWriteError> {
        match self.tensors.get(self.next) {
            Some(p) if p.name == name => Ok(p),
            Some(p) => Err(invalid(format!(
                "expected data of tensor `{}` next, got `{name}`",
                p.name
            ))),
            None => Err(invalid(format!(
                "got data of tensor `{name}` after every tensor was written"
            ))),
        }
    }
}

fn too_big(what: &str) -> GgufWriteError {
    invalid(format!("{what} would make the file larger than 2^64 bytes"))
}

fn align_up(n: u64, align: u64) -> Option<u64> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

/// Byte length of a tensor, refusing anything our reader (or ggml) would refuse.
fn tensor_len(t: &TensorDesc) -> Result<u64, GgufWriteError> {
    let name = &t.name;
    if t.shape.len() > MAX_DIMS as usize {
        return Err(invalid(format!(
            "tensor `{name}` has {} dimensions, GGUF allows at most {MAX_DIMS}",
            t.shape.len()
        )));
    }
    if t.shape.contains(&0) {
        return Err(invalid(format!(
            "tensor `{name}` has a zero dimension in shape {:?}",
            t.shape
        )));
    }
    let elements = t
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&e| e <= i64::MAX as u64)
        .ok_or_else(|| {
            invalid(format!(
                "tensor `{name}` shape {:?} has more than 2^63 elements",
                t.shape
            ))
        })?;
    let Some((block, _)) = t.ggml_type.block() else {
        return Err(invalid(format!(
            "tensor `{name}` has type {}, whose size modelgate does not know",
            t.ggml_type
        )));
    };
    let row = t.shape.last().copied().unwrap_or(1);
    if row % block != 0 {
        return Err(invalid(format!(
            "tensor `{name}` rows of {row} elements are not a whole number of {block}-element {} blocks",
            t.ggml_type
        )));
    }
    t.ggml_type
        .bytes_for(elements)
        .ok_or_else(|| too_big(&format!("tensor `{name}`")))
}

/// Refuse duplicate keys, mixed or too deeply nested arrays, too many values and a
/// conflicting `general.alignment`; return the alignment key to append, if one is needed.
fn check_metadata(
    metadata: &[(String, MetaValue)],
    alignment: u32,
) -> Result<Option<(String, MetaValue)>, GgufWriteError> {
    let mut keys = HashSet::new();
    let mut values = metadata.len() as u64;
    let mut found_alignment = false;
    for (k, v) in metadata {
        if !keys.insert(k.as_str()) {
            return Err(invalid(format!("metadata key `{k}` is listed twice")));
        }
        check_value(k, v, 0, &mut values)?;
        if k == "general.alignment" {
            if *v != MetaValue::U32(alignment) {
                return Err(invalid(format!(
                    "metadata `general.alignment` is {} {}, but the file is written with alignment {alignment} (u32)",
                    v.type_name(),
                    v.to_json()
                )));
            }
            found_alignment = true;
        }
    }
    if values > MAX_META_ELEMENTS {
        return Err(invalid(format!(
            "metadata holds {values} values, more than the {MAX_META_ELEMENTS} a GGUF reader here accepts"
        )));
    }
    Ok((!found_alignment && alignment != DEFAULT_ALIGNMENT)
        .then(|| ("general.alignment".to_owned(), MetaValue::U32(alignment))))
}

fn check_value(
    key: &str,
    v: &MetaValue,
    depth: u32,
    values: &mut u64,
) -> Result<(), GgufWriteError> {
    if let MetaValue::Array { elem, items } = v {
        if *elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
            return Err(invalid(format!(
                "metadata `{key}` nests arrays more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        *values = values.saturating_add(items.len() as u64);
        for item in items {
            if item.value_type() != *elem {
                return Err(invalid(format!(
                    "metadata `{key}` is an array of {} holding a {}",
                    elem.name(),
                    item.type_name()
                )));
            }
            check_value(key, item, depth + 1, values)?;
        }
    }
    Ok(())
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => b.push(*x),
        MetaValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => put_u32(b, *x),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(u8::from(*x)),
        MetaValue::String(s) => put_str(b, s),
        MetaValue::Array { elem, items } => {
            put_u32(b, elem.id());
            put_u64(b, items.len() as u64);
            for item in items {
                put_value(b, item);
            }
        }
        MetaValue::U64(x) => put_u64(b, *x),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

fn write_zeros<W: Write>(out: &mut W, mut n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        out.write_all(&ZEROS[..k as usize])?;
        n -= k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::formats::gguf::parse_bytes;
    use crate::formats::DType;

    fn desc(name: &str, t: GgmlType, shape: &[u64]) -> TensorDesc {
        TensorDesc {
            name: name.into(),
            ggml_type: t,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn writes_what_the_reader_reads() {
        let meta = vec![(
            "general.architecture".to_owned(),
            MetaValue::String("llama".into()),
        )];
        let tensors = vec![
            desc("a", GgmlType::F32, &[3]),
            desc("b", GgmlType::Q8_0, &[2, 64]),
        ];
        let mut w = GgufWriter::with_alignment(Vec::new(), &meta, &tensors, 64).unwrap();
        w.write_tensor("a", &[1; 12]).unwrap();
        w.write_tensor_chunk("b", &[2; 34]).unwrap();
        w.write_tensor_chunk("b", &[3; 102]).unwrap();
        let total = w.total_len();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, total);
        let p = parse_bytes(Path::new("w.gguf"), &bytes).unwrap();
        assert_eq!(p.layout.alignment, 64);
        assert_eq!(p.metadata[1].0, "general.alignment");
        assert_eq!(p.tensors[1].shape, vec![2, 64]);
        assert_eq!(p.tensors[1].dtype, DType::Ggml(GgmlType::Q8_0));
        assert_eq!(p.tensors[1].offset % 64, 0);
        let b = &bytes[p.tensors[1].offset as usize..][..136];
        assert_eq!(&b[..34], &[2; 34]);
    }

    #[test]
    fn refuses_bad_input_before_writing() {
        let t = |d: TensorDesc| {
            let mut out = Vec::new();
            let e = GgufWriter::new(&mut out, &[], &[d]).unwrap_err();
            assert!(out.is_empty());
            e.to_string()
        };
        assert!(t(desc("x", GgmlType::Q4_0, &[33])).contains("not a whole number"));
        assert!(t(desc("x", GgmlType::F32, &[1, 0])).contains("zero dimension"));
        assert!(t(desc("x", GgmlType::F32, &[1, 1, 1, 1, 1])).contains("at most 4"));
        assert!(t(desc("x", GgmlType::Unknown(99), &[1])).contains("does not know"));
        let mixed = vec![(
            "k".to_owned(),
            MetaValue::Array {
                elem: ValueType::U8,
                items: vec![MetaValue::I8(1)],
            },
        )];
        assert!(GgufWriter::new(Vec::new(), &mixed, &[]).is_err());
        let wrong_align = vec![("general.alignment".to_owned(), MetaValue::U32(16))];
        assert!(GgufWriter::new(Vec::new(), &wrong_align, &[]).is_err());
    }

    #[test]
    fn checks_order_and_lengths() {
        let tensors = vec![
            desc("a", GgmlType::F32, &[2]),
            desc("b", GgmlType::F32, &[2]),
        ];
        let mut w = GgufWriter::new(Vec::new(), &[], &tensors).unwrap();
        assert!(w.write_tensor("b", &[0; 8]).is_err());
        assert!(w.write_tensor("a", &[0; 7]).is_err());
        assert!(w.write_tensor_chunk("a", &[0; 9]).is_err());
        w.write_tensor("a", &[0; 8]).unwrap();
        let e = GgufWriter::finish(w).unwrap_err().to_string();
        assert!(e.contains("`b`"), "{e}");
    }
}
