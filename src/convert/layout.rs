//! The bytes before the tensor data of the two output formats: a GGUF v3 header (key/values,
//! tensor infos, padding to the alignment) and a safetensors JSON header, plus where each
//! tensor's data starts. The converter writes the header first and then streams tensor data
//! into the computed slots, so no tensor has to be held in memory to know the layout.

use crate::formats::gguf::ValueType;
use crate::formats::{DType, GgmlType, MetaValue};

/// GGUF's default (and llama.cpp's required-power-of-two) alignment.
pub const GGUF_ALIGNMENT: u64 = 32;

/// One tensor of the output, as the layout needs it.
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    /// Outermost first.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    pub bytes: u64,
}

/// A computed output layout: the header bytes and each tensor's absolute file offset.
#[derive(Debug)]
pub struct Layout {
    pub header: Vec<u8>,
    pub offsets: Vec<u64>,
    /// Total file size.
    pub total: u64,
}

fn value_type_id(t: ValueType) -> u32 {
    match t {
        ValueType::U8 => 0,
        ValueType::I8 => 1,
        ValueType::U16 => 2,
        ValueType::I16 => 3,
        ValueType::U32 => 4,
        ValueType::I32 => 5,
        ValueType::F32 => 6,
        ValueType::Bool => 7,
        ValueType::String => 8,
        ValueType::Array => 9,
        ValueType::U64 => 10,
        ValueType::I64 => 11,
        ValueType::F64 => 12,
    }
}

fn type_of(v: &MetaValue) -> ValueType {
    match v {
        MetaValue::U8(_) => ValueType::U8,
        MetaValue::I8(_) => ValueType::I8,
        MetaValue::U16(_) => ValueType::U16,
        MetaValue::I16(_) => ValueType::I16,
        MetaValue::U32(_) => ValueType::U32,
        MetaValue::I32(_) => ValueType::I32,
        MetaValue::F32(_) => ValueType::F32,
        MetaValue::Bool(_) => ValueType::Bool,
        MetaValue::String(_) => ValueType::String,
        MetaValue::Array { .. } => ValueType::Array,
        MetaValue::U64(_) => ValueType::U64,
        MetaValue::I64(_) => ValueType::I64,
        MetaValue::F64(_) => ValueType::F64,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array { elem, items } => {
            out.extend_from_slice(&value_type_id(*elem).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// A GGUF v3 layout: header, key/values and tensor infos (dims innermost first, offsets
/// relative to the data section), padded so the data section and every tensor start on a
/// multiple of [`GGUF_ALIGNMENT`].
pub fn gguf(meta: &[(String, MetaValue)], slots: &[Slot]) -> Layout {
    let mut h = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(slots.len() as u64).to_le_bytes());
    h.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut h, k);
        h.extend_from_slice(&value_type_id(type_of(v)).to_le_bytes());
        put_value(&mut h, v);
    }
    let mut rel = 0u64;
    let mut rels = Vec::with_capacity(slots.len());
    for s in slots {
        put_str(&mut h, &s.name);
        h.extend_from_slice(&(s.shape.len() as u32).to_le_bytes());
        for d in s.shape.iter().rev() {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&s.ty.id().to_le_bytes());
        h.extend_from_slice(&rel.to_le_bytes());
        rels.push(rel);
        rel = align(rel + s.bytes, GGUF_ALIGNMENT);
    }
    let data_start = align(h.len() as u64, GGUF_ALIGNMENT);
    h.resize(data_start as usize, 0);
    let total = match slots.last() {
        Some(last) => data_start + rels.last().copied().unwrap_or(0) + last.bytes,
        None => data_start,
    };
    Layout {
        header: h,
        offsets: rels.into_iter().map(|r| data_start + r).collect(),
        total,
    }
}

/// A safetensors layout: 8-byte little-endian header length, the JSON header (metadata
/// first, tensors in the given order) padded with spaces to a multiple of 8, then the tensors
/// back to back.
pub fn safetensors(meta: &[(String, String)], slots: &[Slot]) -> Result<Layout, String> {
    let mut obj = serde_json::Map::new();
    if !meta.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> =
            meta.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        obj.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut rel = 0u64;
    let mut rels = Vec::with_capacity(slots.len());
    for s in slots {
        let dtype = match s.ty {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            other => return Err(format!("safetensors cannot hold {other} tensors (`{}`)", s.name)),
        };
        obj.insert(
            s.name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": s.shape, "data_offsets": [rel, rel + s.bytes]}),
        );
        rels.push(rel);
        rel += s.bytes;
    }
    let mut json = serde_json::Value::Object(obj).to_string().into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut h = Vec::with_capacity(8 + json.len());
    h.extend_from_slice(&(json.len() as u64).to_le_bytes());
    h.extend_from_slice(&json);
    let start = h.len() as u64;
    Ok(Layout {
        offsets: rels.into_iter().map(|r| start + r).collect(),
        total: start + rel,
        header: h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_layout_is_aligned() {
        let slots = vec![
            Slot {
                name: "a".into(),
                shape: vec![3],
                ty: GgmlType::F32,
                bytes: 12,
            },
            Slot {
                name: "b".into(),
                shape: vec![2, 32],
                ty: GgmlType::Q8_0,
                bytes: 68,
            },
        ];
        let meta = vec![("general.architecture".to_owned(), MetaValue::String("llama".into()))];
        let l = gguf(&meta, &slots);
        assert_eq!(l.header.len() % 32, 0);
        assert_eq!(l.offsets[0], l.header.len() as u64);
        assert_eq!(l.offsets[1], l.offsets[0] + 32);
        assert_eq!(l.total, l.offsets[1] + 68);
        assert_eq!(&l.header[..4], b"GGUF");
    }

    #[test]
    fn safetensors_header_is_padded() {
        let slots = vec![Slot {
            name: "w".into(),
            shape: vec![2, 2],
            ty: GgmlType::BF16,
            bytes: 8,
        }];
        let l = safetensors(&[("format".into(), "pt".into())], &slots).unwrap();
        assert_eq!((l.header.len() - 8) % 8, 0);
        let n = u64::from_le_bytes(l.header[..8].try_into().unwrap()) as usize;
        let v: serde_json::Value = serde_json::from_slice(&l.header[8..8 + n]).unwrap();
        assert_eq!(v["w"]["dtype"], "BF16");
        assert_eq!(v["__metadata__"]["format"], "pt");
        assert_eq!(l.total, l.header.len() as u64 + 8);
        let q = Slot {
            ty: GgmlType::Q8_0,
            ..slots[0].clone()
        };
        assert!(safetensors(&[], &[q]).is_err());
    }
}
