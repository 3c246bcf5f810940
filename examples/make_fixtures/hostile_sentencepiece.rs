//! SentencePiece `tokenizer.model` files for the reader's bad-input tests and the scanner's
//! `scan/tokenizer-mismatch` rule, encoded here by hand rather than with modelgate's writer,
//! so the reader is checked against an independent encoder:
//!
//! - `truncated.model`: a valid model cut inside its last piece;
//! - `score_nan.model`: piece 5 has a NaN score;
//! - `swapped/`: a tokenizer.model and a tokenizer.json beside it that swap the ids of `▁a`
//!   and `▁b` and put another end-of-sequence token at id 2, as a tampered repository would.

use std::fs;
use std::io;
use std::path::Path;

use serde_json::{json, Map, Value};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, number: u64, b: &[u8]) {
    varint(out, number << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn varint_field(out: &mut Vec<u8>, number: u64, v: u64) {
    varint(out, number << 3);
    varint(out, v);
}

/// (text, score, type: 1 normal, 2 unknown, 3 control, 6 byte).
const PIECES: &[(&str, f32, u64)] = &[
    ("<unk>", 0.0, 2),
    ("<s>", 0.0, 3),
    ("</s>", 0.0, 3),
    ("<0x0A>", 0.0, 6),
    ("\u{2581}", -1.0, 1),
    ("a", -2.0, 1),
    ("b", -3.0, 1),
    ("\u{2581}a", -4.0, 1),
    ("\u{2581}b", -5.0, 1),
    ("ab", -6.0, 1),
];

fn piece(text: &str, score: f32, ty: u64) -> Vec<u8> {
    let mut p = Vec::new();
    bytes_field(&mut p, 1, text.as_bytes());
    varint(&mut p, 2 << 3 | 5);
    p.extend_from_slice(&score.to_le_bytes());
    if ty != 1 {
        varint_field(&mut p, 3, ty);
    }
    p
}

/// The pieces, then a BPE trainer spec with byte fallback and an identity normalizer.
fn model(pieces: &[(&str, f32, u64)]) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::new();
    for (t, s, ty) in pieces {
        bytes_field(&mut head, 1, &piece(t, *s, *ty));
    }
    let mut trainer = Vec::new();
    varint_field(&mut trainer, 3, 2);
    varint_field(&mut trainer, 4, pieces.len() as u64);
    varint_field(&mut trainer, 35, 1);
    let mut normalizer = Vec::new();
    bytes_field(&mut normalizer, 1, b"identity");
    varint_field(&mut normalizer, 3, 1);
    let mut tail = Vec::new();
    bytes_field(&mut tail, 2, &trainer);
    bytes_field(&mut tail, 3, &normalizer);
    (head, tail)
}

/// A SentencePiece-style tokenizer.json whose vocabulary is `texts` by id.
fn tokenizer_json(texts: &[&str]) -> String {
    let mut vocab = Map::new();
    for (i, t) in texts.iter().enumerate() {
        vocab.insert((*t).into(), json!(i));
    }
    let added: Vec<Value> = texts[..3]
        .iter()
        .enumerate()
        .map(|(id, c)| json!({"id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": ["\u{2581} a", "\u{2581} b", "a b"]}
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

pub fn write_all(dir: &Path) -> io::Result<()> {
    let (head, tail) = model(PIECES);
    fs::write(dir.join("truncated.model"), &head[..head.len() - 3])?;
    let mut nan = PIECES.to_vec();
    nan[5].1 = f32::NAN;
    let (h, t) = model(&nan);
    fs::write(dir.join("score_nan.model"), [h, t].concat())?;
    let swapped = dir.join("swapped");
    fs::create_dir_all(&swapped)?;
    fs::write(swapped.join("tokenizer.model"), [head, tail].concat())?;
    let mut texts: Vec<&str> = PIECES.iter().map(|p| p.0).collect();
    texts.swap(7, 8);
    texts[2] = "<eos>";
    fs::write(swapped.join("tokenizer.json"), tokenizer_json(&texts))?;
    fs::write(
        swapped.join("tokenizer_config.json"),
        "{\n  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"unk_token\": \"<unk>\",\n  \"add_bos_token\": true\n}\n",
    )?;
    Ok(())
}
