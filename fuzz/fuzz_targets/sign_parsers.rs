//! Fuzz the parsers of untrusted signing input: signature bundles, signed statements
//! (model signing and verification summary) and PEM key files. None may panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::sign::{attest, dsse::Bundle, statement, PrivateKey, PublicKey};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz");
    if let Ok(b) = Bundle::from_slice(path, data) {
        let _ = b.payload(path);
        let _ = b.hint();
    }
    let _ = statement::parse_model_statement(data);
    let _ = attest::parse_vsa(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PublicKey::from_pem(path, text);
        let _ = PrivateKey::from_pem(path, text);
    }
});
