//! Fuzz the model card parser (YAML front matter + body) on arbitrary bytes: invalid
//! UTF-8, alias bombs, deep nesting and oversized front matter must all be refused in time
//! linear in the input, never by a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::formats::hf::parse_card_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(card) = parse_card_bytes(Path::new("README.md"), data) {
        // Every top-level key has a line inside the file.
        let lines = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;
        for line in card.key_lines.values() {
            assert!(*line >= 2 && *line <= lines);
        }
    }
});
