//! Fuzz the GGUF reader with arbitrary bytes: it must return (never panic, never allocate
//! what a header claims; scripts/fuzz.sh caps single allocations with `-malloc_limit_mb`).
//! Whatever it accepts with known tensor types must also go through the writer and read
//! back the same, so reader and writer agree on what a valid file is.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::formats::gguf::{parse_bytes, GgufWriter, TensorDesc};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_bytes(Path::new("fuzz.gguf"), data) else {
        return;
    };
    let Some(tensors) = parsed
        .tensors
        .iter()
        .map(|t| {
            Some(TensorDesc {
                name: t.name.to_string(),
                ggml_type: t.dtype.to_ggml()?,
                shape: t.shape.clone(),
            })
        })
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    if tensors.iter().any(|t| t.ggml_type.block().is_none()) {
        return;
    }
    let alignment = u32::try_from(parsed.layout.alignment).expect("alignment is a u32");
    let mut w = GgufWriter::with_alignment(Vec::new(), &parsed.metadata, &tensors, alignment)
        .expect("the writer accepts what the reader accepted");
    for t in &parsed.tensors {
        let bytes = &data[t.offset as usize..(t.offset + t.len) as usize];
        w.write_tensor(t.name.as_str(), bytes).expect("tensor data");
    }
    let out = w.finish().expect("finish");
    let again = parse_bytes(Path::new("rewritten.gguf"), &out).expect("rewritten file reads");
    // Debug text compares NaN metadata values as equal to themselves, and -0.0 as unequal to 0.0.
    assert_eq!(format!("{:?}", again.metadata), format!("{:?}", parsed.metadata));
    assert_eq!(again.tensors.len(), parsed.tensors.len());
    for (a, b) in again.tensors.iter().zip(&parsed.tensors) {
        assert_eq!((&a.name, a.dtype, &a.shape, a.len), (&b.name, b.dtype, &b.shape, b.len));
        assert_eq!(
            &out[a.offset as usize..(a.offset + a.len) as usize],
            &data[b.offset as usize..(b.offset + b.len) as usize]
        );
    }
});
