//! Fuzz the pickle replay and the PyTorch tensor-table walk: any bytes must yield an
//! analysis or an error, never a panic, unbounded allocation or endless loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::formats::pickle::{self, Node};
use modelgate::formats::pytorch;

fuzz_target!(|data: &[u8]| {
    for a in pickle::analyze_stream(data, 8) {
        assert!(a.end as usize <= data.len());
        for g in &a.globals {
            let _ = pickle::classify_ref(g);
            assert!(g.offset < data.len() as u64);
        }
        for (i, c) in a.calls.iter().enumerate() {
            let _ = a.origin(c.callee);
            let _ = a.direct_calls(i).count();
        }
        if let Some(Node::Bytes { start, len }) = a.root.and_then(|r| a.node(r)) {
            assert!(start + len <= data.len() as u64);
        }
    }
    let _ = pytorch::storage_tensors(data);
});
