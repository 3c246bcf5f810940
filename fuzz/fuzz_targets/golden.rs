//! Fuzz the parity golden-file reader: any bytes must give a validated golden file or an
//! error naming what is wrong, never a panic (ids, counts and positions are checked
//! against each other before use).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = modelgate::parity::Golden::from_slice(Path::new("fuzz.json"), data);
});
