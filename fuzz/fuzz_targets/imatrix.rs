//! Fuzz the imatrix reader (GGUF and legacy `.dat`) with arbitrary bytes: it must return,
//! never panic. Whatever it accepts must write out as a GGUF imatrix and read back with the
//! same per-column importance for every entry.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::formats::imatrix::Imatrix;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Imatrix::parse_bytes(Path::new("fuzz.imatrix"), data) else {
        return;
    };
    let Ok(bytes) = m.to_gguf_bytes() else {
        return;
    };
    let back = Imatrix::parse_bytes(Path::new("rewritten.gguf"), &bytes)
        .expect("a written imatrix reads back");
    assert_eq!(back.entries.len(), m.entries.len());
    for name in m.entries.keys() {
        let a = m.importance(name).expect("entry");
        let b = back.importance(name).expect("entry");
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(a.len() == b.len() && same, "{name}");
    }
});
