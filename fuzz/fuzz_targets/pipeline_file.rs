//! Fuzz the pipeline file parser: any bytes must give a pipeline or an error with a
//! location, never a panic, a hang or unbounded memory (YAML aliases included).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = modelgate::pipeline::file::parse(Path::new("fuzz.yaml"), text);
    }
});
