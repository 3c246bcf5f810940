//! Fuzz the policy file parser: any bytes must give a policy or an error with a location,
//! never a panic, a hang or unbounded memory (YAML aliases included).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = modelgate::policy::file::parse(Path::new("fuzz.yaml"), text);
    }
    // The licence-text matcher sees untrusted LICENSE files too.
    let text = String::from_utf8_lossy(data);
    let _ = modelgate::policy::text::Fingerprint::of(&text);
});
