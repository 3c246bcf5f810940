//! The GGUF reader and writer: facts of the real SmolLM2 file, agreement with two
//! independent readers (gguf-rs and the PyPI `gguf` package), the hostile corpus, and
//! writer round trips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use modelgate::formats::gguf::{self, GgufWriter, MetaValue, TensorDesc, ValueType};
use modelgate::formats::{Checkpoint, DType, FormatError, GgmlType, WeightFormat};
use proptest::prelude::*;
use serde_json::Value;

use crate::support;

#[path = "../../examples/make_fixtures/hostile_gguf.rs"]
mod hostile_gguf;

#[test]
fn smollm2_facts() {
    let path = support::smollm2();
    let ck = Checkpoint::open(&path).unwrap();
    let w = &ck.weights;
    assert_eq!(w.format, WeightFormat::Gguf);
    let layout = w.gguf.unwrap();
    assert_eq!(layout.version, 3);
    assert_eq!(layout.alignment, 32);
    assert_eq!(w.tensors.len(), 272);
    assert_eq!(w.metadata.len(), 33);
    assert_eq!(w.parameter_count(), 134_515_008);

    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in &w.tensors {
        *types.entry(t.dtype.to_string()).or_default() += 1;
        // Every byte range lies in the file and has the size its type and shape imply.
        assert_eq!(t.dtype.bytes_for(t.elements()), Some(t.len), "{}", t.name);
        assert_eq!(t.offset % 32, 0);
        assert!(w.tensor_data(t).is_ok());
    }
    let expected: BTreeMap<String, usize> = [("Q4_1", 210), ("F32", 61), ("Q8_0", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(types, expected);
    let embd = w.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dtype, DType::Ggml(GgmlType::Q8_0));
    assert_eq!(embd.shape, vec![49152, 576]);
    assert!(w.tensor("output.weight").is_none());

    let s = |k: &str| w.meta(k).and_then(MetaValue::as_str).unwrap().to_owned();
    let n = |k: &str| w.meta(k).and_then(MetaValue::as_u64).unwrap();
    assert_eq!(s("general.architecture"), "llama");
    assert_eq!(s("general.license"), "apache-2.0");
    assert_eq!(n("general.file_type"), 3);
    assert_eq!(n("general.quantization_version"), 2);
    assert_eq!(n("llama.rope.dimension_count"), 64);
    assert_eq!(
        w.meta("llama.rope.freq_base"),
        Some(&MetaValue::F32(100000.0))
    );
    assert_eq!(
        w.meta("llama.attention.layer_norm_rms_epsilon"),
        Some(&MetaValue::F32(1e-5))
    );

    let p = ck.params();
    assert_eq!(p.architecture.as_deref(), Some("llama"));
    assert_eq!(p.block_count, Some(30));
    assert_eq!(p.context_length, Some(8192));
    assert_eq!(p.embedding_length, Some(576));
    assert_eq!(p.feed_forward_length, Some(1536));
    assert_eq!(p.head_count, Some(9));
    assert_eq!(p.head_count_kv, Some(3));
    // No key_length key: 576 / 9.
    assert_eq!(p.head_dim, Some(64));
    assert_eq!(p.vocab_size, Some(49152));
    assert_eq!(p.rope_theta, Some(100000.0));
    assert_eq!(p.rms_norm_eps, Some(f64::from(1e-5f32)));
    assert_eq!(p.tie_word_embeddings, None);

    let t = ck.tokenizer().unwrap();
    assert_eq!(t.model, "gpt2");
    assert_eq!(t.pre.as_deref(), Some("smollm"));
    assert_eq!(t.vocab_size, 49152);
    assert_eq!(t.merges, 48900);
    let id = |t: Option<modelgate::formats::SpecialToken>| t.map(|t| (t.id, t.text.unwrap()));
    assert_eq!(id(t.bos), Some((1, "<|im_start|>".to_owned())));
    assert_eq!(id(t.eos), Some((2, "<|im_end|>".to_owned())));
    assert_eq!(id(t.unk), Some((0, "<|endoftext|>".to_owned())));
    assert_eq!(id(t.pad), Some((2, "<|im_end|>".to_owned())));
    assert_eq!(t.add_bos, Some(false));
    assert!(t.chat_template);
    assert!(s("tokenizer.chat_template").contains("<|im_start|>"));
}

#[test]
fn smollm2_agrees_with_gguf_rs() {
    let path = support::smollm2();
    let ours = gguf::open(&path).unwrap();
    let layout = ours.gguf.unwrap();
    // u64::MAX: gguf-rs otherwise keeps only the first 3 items of tokenizer arrays.
    let mut c = gguf_rs::get_gguf_container_array_size(path.to_str().unwrap(), u64::MAX).unwrap();
    let theirs = c.decode().unwrap();
    assert_eq!(theirs.get_version(), format!("v{}", layout.version));
    assert_eq!(theirs.alignment(), layout.alignment);
    assert_eq!(theirs.data_offset(), layout.data_offset);

    assert_eq!(theirs.metadata().len(), ours.metadata.len());
    for (k, v) in &ours.metadata {
        let t = theirs.metadata().get(k);
        assert!(
            t.is_some_and(|t| same_json(t, &v.to_json())),
            "key `{k}`: gguf-rs {t:?}, modelgate {v:?}"
        );
    }
    assert_eq!(theirs.tensors().len(), ours.tensors.len());
    for (a, b) in ours.tensors.iter().zip(theirs.tensors()) {
        assert_eq!(a.name.as_str(), b.name);
        assert_eq!(
            a.dtype.to_ggml().map(GgmlType::id),
            Some(b.kind),
            "{}",
            b.name
        );
        let ne: Vec<u64> = a.shape.iter().rev().copied().collect();
        assert_eq!(ne, b.shape, "{}", b.name);
        assert_eq!(a.offset, layout.data_offset + b.offset, "{}", b.name);
        assert_eq!(a.len, b.size, "{}", b.name);
    }
}

/// JSON equality that compares numbers by value: gguf-rs turns on serde_json's
/// `arbitrary_precision` in test builds, where numbers compare as their text. Floats also
/// match when they round to the same f32 (gguf-py widens f32 values to f64, we keep their
/// shortest decimal form).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || x as f32 == y as f32,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        _ => a == b,
    }
}

/// Run `scripts/gguf_dump.py` with the pinned gguf-py; fails the test, naming the
/// package, when gguf-py is missing, so an oracle is never skipped.
fn gguf_py(args: &[&std::ffi::OsStr]) -> Value {
    crate::support::require_oracle("gguf", "gguf");
    let out = crate::support::oracle_python()
        .arg(support::repo().join("scripts/gguf_dump.py"))
        .args(args)
        .output()
        .expect("run scripts/gguf_dump.py");
    assert!(
        out.status.success(),
        "gguf_dump.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gguf_dump.py prints JSON")
}

/// gguf-py's names for a value's types: `["UINT32"]`, `["ARRAY", "STRING"]`.
fn py_types(v: &MetaValue) -> Vec<String> {
    let name = |t: ValueType| {
        match t {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
        .to_owned()
    };
    match v {
        MetaValue::Array { elem, .. } => vec![name(ValueType::Array), name(*elem)],
        v => vec![name(v.value_type())],
    }
}

#[test]
fn smollm2_agrees_with_gguf_py() {
    let path = support::smollm2();
    let py = gguf_py(&[path.as_os_str()]);
    let ours = gguf::open(&path).unwrap();
    let layout = ours.gguf.unwrap();
    assert_eq!(py["version"], layout.version);
    assert_eq!(py["alignment"], layout.alignment);
    assert_eq!(py["data_offset"], layout.data_offset);

    let meta = py["metadata"].as_array().unwrap();
    assert_eq!(meta.len(), ours.metadata.len());
    for (m, (k, v)) in meta.iter().zip(&ours.metadata) {
        assert_eq!(m["key"], k.as_str(), "keys in file order");
        assert_eq!(m["types"], serde_json::json!(py_types(v)), "type of `{k}`");
        assert!(
            same_json(&m["value"], &v.to_json()),
            "value of `{k}`: gguf-py {}, modelgate {v:?}",
            m["value"]
        );
    }
    let tensors = py["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), ours.tensors.len());
    for (p, t) in tensors.iter().zip(&ours.tensors) {
        let ggml = t.dtype.to_ggml().unwrap();
        assert_eq!(p["name"], t.name.as_str());
        assert_eq!(p["type"], ggml.name(), "{}", t.name);
        assert_eq!(p["type_id"], ggml.id(), "{}", t.name);
        let ne: Vec<u64> = t.shape.iter().rev().copied().collect();
        assert!(same_json(&p["ne"], &serde_json::json!(ne)), "{}", t.name);
        assert_eq!(p["offset"], t.offset, "{}", t.name);
        assert_eq!(p["n_bytes"], t.len, "{}", t.name);
        assert_eq!(p["n_elements"], t.elements(), "{}", t.name);
    }
}

#[test]
fn ggml_type_table_agrees_with_gguf_py() {
    let py = gguf_py(&["--types".as_ref()]);
    let theirs = py["types"].as_array().unwrap();
    for p in theirs {
        let id = u32::try_from(p["id"].as_u64().unwrap()).unwrap();
        let t = GgmlType::from_id(id);
        assert_eq!(p["name"], t.name(), "id {id}");
        let (block, bytes) = t.block().unwrap();
        assert_eq!(p["block"], block, "{t}");
        if t == GgmlType::Q8_1 {
            // gguf-py still has the pre-2024 layout with f32 scales (40 bytes); ggml's
            // block_q8_1 holds two f16 scales. Q8_1 never occurs in model files.
            assert_eq!((p["bytes"].as_u64(), bytes), (Some(40), 36));
        } else {
            assert_eq!(p["bytes"], bytes, "{t}");
        }
    }
    assert_eq!(
        theirs.len(),
        GgmlType::all().count(),
        "types only one side knows"
    );
}

/// What each hostile file must be refused as: `Unsupported` for a well-formed file in a
/// variant modelgate does not read, `Malformed` for a file that lies.
fn expected_kind(file: &str) -> &'static str {
    match file {
        "version_1.gguf" | "version_big_endian.gguf" | "nested_arrays_too_deep.gguf" => {
            "unsupported"
        }
        _ => "malformed",
    }
}

#[test]
fn hostile_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    hostile_gguf::write_all(dir.path()).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for required in [
        "truncated_header",
        "truncated_tensor_infos",
        "tensor_count_2p60",
        "string_length_2p62",
        "array_2p40_elements",
        "n_dims_9",
        "zero_dimension",
        "dimensions_overflow",
        "tensor_data_beyond_eof",
        "duplicate_tensor_names",
        "non_utf8_tensor_name",
        "unknown_metadata_value_type",
        "alignment_not_power_of_two",
        "version_1",
        "misaligned_tensor_offset",
    ] {
        assert!(
            files
                .iter()
                .any(|f| f.ends_with(format!("{required}.gguf"))),
            "{required}"
        );
    }
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let err = Checkpoint::open(f).expect_err(name);
        let kind = match &err {
            FormatError::Malformed { .. } => "malformed",
            FormatError::Unsupported { .. } => "unsupported",
            _ => "other",
        };
        assert_eq!(kind, expected_kind(name), "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}`", f.display())), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        if kind == "malformed" {
            assert!(msg.contains("byte"), "names no byte offset: {msg}");
        }
        eprintln!("{name}: {msg}");
    }
}

/// The binary refuses every hostile file with exit code 2 while its address space is capped
/// at 512 MiB: a reader that allocated what a file claims (4 TiB for a 2^40-element array)
/// would abort instead.
#[test]
fn hostile_files_fit_in_small_memory() {
    let dir = tempfile::tempdir().unwrap();
    hostile_gguf::write_all(dir.path()).unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let f = e.unwrap().path();
        let out = Command::new("sh")
            .args(["-c", "ulimit -v 524288 && exec \"$0\" inspect \"$1\""])
            .arg(env!("CARGO_BIN_EXE_modelgate"))
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
}

/// Rewriting SmolLM2 through our writer, with its metadata and tensors in file order,
/// reproduces the file byte for byte: our layout is llama.cpp's.
#[test]
fn writer_reproduces_smollm2() {
    let path = support::smollm2();
    let w = gguf::open(&path).unwrap();
    let tensors: Vec<TensorDesc> = w
        .tensors
        .iter()
        .map(|t| TensorDesc {
            name: t.name.to_string(),
            ggml_type: t.dtype.to_ggml().unwrap(),
            shape: t.shape.clone(),
        })
        .collect();
    let mut out = GgufWriter::new(Vec::new(), &w.metadata, &tensors).unwrap();
    assert_eq!(out.data_offset(), w.gguf.unwrap().data_offset);
    for t in &w.tensors {
        out.write_tensor(t.name.as_str(), w.tensor_data(t).unwrap())
            .unwrap();
    }
    let bytes = out.finish().unwrap();
    let original = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), original.len());
    assert!(
        bytes == original,
        "rewritten SmolLM2 differs from the original"
    );
}

fn value_of(ty: ValueType, depth: u32) -> BoxedStrategy<MetaValue> {
    match ty {
        ValueType::U8 => any::<u8>().prop_map(MetaValue::U8).boxed(),
        ValueType::I8 => any::<i8>().prop_map(MetaValue::I8).boxed(),
        ValueType::U16 => any::<u16>().prop_map(MetaValue::U16).boxed(),
        ValueType::I16 => any::<i16>().prop_map(MetaValue::I16).boxed(),
        ValueType::U32 => any::<u32>().prop_map(MetaValue::U32).boxed(),
        ValueType::I32 => any::<i32>().prop_map(MetaValue::I32).boxed(),
        ValueType::F32 => (-1e30f32..1e30).prop_map(MetaValue::F32).boxed(),
        ValueType::Bool => any::<bool>().prop_map(MetaValue::Bool).boxed(),
        ValueType::String => "\\PC{0,12}".prop_map(MetaValue::String).boxed(),
        ValueType::U64 => any::<u64>().prop_map(MetaValue::U64).boxed(),
        ValueType::I64 => any::<i64>().prop_map(MetaValue::I64).boxed(),
        ValueType::F64 => (-1e300f64..1e300).prop_map(MetaValue::F64).boxed(),
        ValueType::Array => (0u32..=12)
            .prop_map(|id| ValueType::from_id(id).unwrap())
            .prop_filter("nesting bounded", move |t| {
                *t != ValueType::Array || depth < 2
            })
            .prop_flat_map(move |elem| {
                prop::collection::vec(value_of(elem, depth + 1), 0..5)
                    .prop_map(move |items| MetaValue::Array { elem, items })
            })
            .boxed(),
    }
}

fn meta_value() -> BoxedStrategy<MetaValue> {
    (0u32..=12)
        .prop_flat_map(|id| value_of(ValueType::from_id(id).unwrap(), 0))
        .boxed()
}

/// Types with (elements per block); rows are whole blocks.
const TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::I8,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
    GgmlType::MXFP4,
];

fn tensor_desc() -> impl Strategy<Value = (GgmlType, Vec<u64>)> {
    (
        0..TYPES.len(),
        prop::collection::vec(1u64..4, 0..4),
        1u64..3,
    )
        .prop_map(|(i, outer, row_blocks)| {
            let t = TYPES[i];
            let (block, _) = t.block().unwrap();
            let mut shape = outer;
            shape.push(block * row_blocks);
            (t, shape)
        })
}

/// Deterministic filler bytes for tensor `i`.
fn data_for(i: usize, len: u64) -> Vec<u8> {
    (0..len)
        .map(|k| (k as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect()
}

fn write(
    meta: &[(String, MetaValue)],
    tensors: &[TensorDesc],
    alignment: u32,
    chunk: usize,
) -> Vec<u8> {
    let mut w = GgufWriter::with_alignment(Vec::new(), meta, tensors, alignment).unwrap();
    for (i, t) in tensors.iter().enumerate() {
        let len = t.ggml_type.bytes_for(t.shape.iter().product()).unwrap();
        for part in data_for(i, len).chunks(chunk) {
            w.write_tensor_chunk(&t.name, part).unwrap();
        }
    }
    let total = w.total_len();
    let bytes = w.finish().unwrap();
    assert_eq!(bytes.len() as u64, total);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn writer_round_trips(
        meta in prop::collection::btree_map("[a-z][a-z0-9_.]{0,15}", meta_value(), 0..8)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>())
            .prop_shuffle(),
        shapes in prop::collection::vec(tensor_desc(), 0..6),
        alignment in prop::sample::select(vec![1u32, 8, 32, 64, 256]),
        chunk in 1usize..300,
    ) {
        let meta: Vec<(String, MetaValue)> =
            meta.into_iter().filter(|(k, _)| k != "general.alignment").collect();
        let tensors: Vec<TensorDesc> = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (ggml_type, shape))| TensorDesc { name: format!("blk.{i}.w"), ggml_type, shape })
            .collect();
        let bytes = write(&meta, &tensors, alignment, chunk);
        // Deterministic: the same input gives the same bytes, however the data is chunked.
        prop_assert_eq!(&bytes, &write(&meta, &tensors, alignment, usize::MAX));

        let parsed = gguf::parse_bytes(Path::new("prop.gguf"), &bytes).unwrap();
        prop_assert_eq!(parsed.layout.version, 3);
        prop_assert_eq!(parsed.layout.alignment, u64::from(alignment));
        let mut expect_meta = meta.clone();
        if alignment != 32 {
            expect_meta.push(("general.alignment".to_owned(), MetaValue::U32(alignment)));
        }
        prop_assert_eq!(&parsed.metadata, &expect_meta);
        prop_assert_eq!(parsed.tensors.len(), tensors.len());
        for (i, (p, t)) in parsed.tensors.iter().zip(&tensors).enumerate() {
            prop_assert_eq!(p.name.as_str(), t.name.as_str());
            prop_assert_eq!(p.dtype, DType::from_ggml(t.ggml_type));
            prop_assert_eq!(&p.shape, &t.shape);
            prop_assert_eq!(p.offset % u64::from(alignment), 0);
            let data = &bytes[p.offset as usize..(p.offset + p.len) as usize];
            prop_assert_eq!(data, &data_for(i, p.len)[..]);
        }
    }

    /// Any bytes after a valid magic: the reader returns, never panics.
    #[test]
    fn reader_survives_garbage(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = b"GGUF\x03\0\0\0".to_vec();
        b.extend_from_slice(&tail);
        let _ = gguf::parse_bytes(Path::new("junk.gguf"), &b);
    }
}
