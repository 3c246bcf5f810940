//! Fuzz the SentencePiece `tokenizer.model` reader and writer: any bytes must parse or fail
//! with a message, never panic or allocate what a length claims; whatever parses must write
//! back to bytes that parse to the same model and write again to the same bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::formats::sentencepiece;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("tokenizer.model");
    let Ok(model) = sentencepiece::parse(path, data) else {
        return;
    };
    assert!(model.pieces.len() <= sentencepiece::MAX_PIECES);
    assert!(model.pieces.iter().all(|p| p.score.is_finite()));
    let bytes = sentencepiece::write(&model);
    let again = sentencepiece::parse(path, &bytes).expect("written model parses");
    assert_eq!(again, model);
    assert_eq!(sentencepiece::write(&again), bytes);
});
