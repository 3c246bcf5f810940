//! Fuzz the safetensors header parser and the shard index parser on arbitrary bytes: they
//! must return an error for anything malformed and never panic, overflow or allocate by a
//! claimed length.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::formats::safetensors::{parse_header, parse_index};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(Path::new("fuzz.safetensors"), data) {
        // Whatever is accepted must describe bytes inside the input.
        let mut end = h.data_start;
        for t in &h.tensors {
            assert!(h.data_start + t.end <= data.len() as u64);
            assert_eq!(h.data_start + t.start, end);
            end = h.data_start + t.end;
        }
        assert_eq!(end, data.len() as u64);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_index(Path::new("model.safetensors.index.json"), text);
    }
});
