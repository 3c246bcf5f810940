//! SentencePiece `tokenizer.model`: the reader and writer on the oracles' files, the GGUF
//! vocabulary the converter makes from it (checked against the `sentencepiece` package, the
//! source llama.cpp's converter reads), and GGUF → Hugging Face directory round trips.

use std::fs;
use std::path::{Path, PathBuf};

use modelgate::convert::vocab::{self, DirVocab, SpmStyle};
use modelgate::formats::sentencepiece;
use modelgate::formats::{Checkpoint, MetaValue};
use serde_json::{json, Value};

use crate::support::{oracle2_dir, oracle_python, repo, require_oracle};

/// The tokenizer.model files the suite has: the gemma2 and gemma3 oracles and the Phi-3 one.
fn models() -> Vec<PathBuf> {
    vec![
        oracle2_dir("gemma2").join("tokenizer.model"),
        oracle2_dir("gemma3").join("tokenizer.model"),
        repo().join("fixtures/oracles/phi3/tokenizer.model"),
    ]
}

#[test]
fn oracle_models_read_and_write_back_byte_identical() {
    for p in models() {
        let bytes = fs::read(&p).unwrap();
        let m = sentencepiece::read(&p).unwrap();
        assert!(m.pieces.len() >= 500, "{}", p.display());
        let t = m.trainer();
        assert_eq!(t.model_type(), sentencepiece::ModelType::Bpe);
        assert!(t.byte_fallback());
        assert_eq!(sentencepiece::write(&m), bytes, "{}", p.display());
    }
}

/// GGUF keys as JSON values: strings, numbers, booleans and arrays of them.
pub fn keys_json(keys: &[(String, MetaValue)]) -> Value {
    fn one(v: &MetaValue) -> Value {
        match v {
            MetaValue::String(s) => json!(s),
            MetaValue::Bool(b) => json!(b),
            MetaValue::F32(f) => json!(f),
            MetaValue::Array { items, .. } => Value::Array(items.iter().map(one).collect()),
            MetaValue::I32(i) => json!(i),
            other => json!(other.as_u64().unwrap()),
        }
    }
    Value::Object(keys.iter().map(|(k, v)| (k.clone(), one(v))).collect())
}

fn dir_keys(dir: &Path, style: SpmStyle) -> Value {
    let ck = Checkpoint::open(dir).unwrap();
    let d = ck.dir.as_ref().unwrap();
    let n_vocab = d.config.as_ref().unwrap()["vocab_size"].as_u64().unwrap();
    let v = vocab::from_dir(&DirVocab {
        root: dir,
        dir: d,
        config_ids: [None, None, None],
        n_vocab,
        pre_override: None,
        spm_style: style,
    })
    .unwrap();
    keys_json(&v.keys)
}

/// The vocabulary keys llama.cpp's `_set_vocab_sentencepiece` would write, computed by the
/// `sentencepiece` package from the same file, against ours.
#[test]
fn converter_vocabulary_matches_the_sentencepiece_package() {
    require_oracle("sentencepiece", "sentencepiece");
    let dir = oracle2_dir("gemma2");
    let ours = dir_keys(&dir, SpmStyle::Default);
    let out = std::env::temp_dir().join(format!("mg-sp-keys-{}.json", std::process::id()));
    fs::write(&out, ours.to_string()).unwrap();
    let script = r#"
import json, sys, sentencepiece as spm
keys = json.load(open(sys.argv[2]))
sp = spm.SentencePieceProcessor(model_file=sys.argv[1] + "/tokenizer.model")
cfg = json.load(open(sys.argv[1] + "/config.json"))
n = cfg["vocab_size"]
toks = [f"[PAD{i}]" for i in range(n)]; scores = [-10000.0] * n; types = [5] * n
for i in range(sp.vocab_size()):
    toks[i] = sp.IdToPiece(i); scores[i] = sp.GetScore(i)
    types[i] = 2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 5 if sp.IsUnused(i) else 6 if sp.IsByte(i) else 1
assert keys["tokenizer.ggml.model"] == "llama" and keys["tokenizer.ggml.pre"] == "default"
assert keys["tokenizer.ggml.tokens"] == toks, "tokens"
assert keys["tokenizer.ggml.scores"] == scores, "scores"
assert keys["tokenizer.ggml.token_type"] == types, "types"
for typ, key in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")]:
    assert keys["tokenizer.ggml." + key] == cfg[typ + "_token_id"], key
assert "tokenizer.ggml.unknown_token_id" not in keys  # config.json names no unk id
assert keys["tokenizer.ggml.add_bos_token"] is True
print("ok", len(toks))
"#;
    let o = oracle_python()
        .args(["-c", script])
        .arg(&dir)
        .arg(&out)
        .output()
        .unwrap();
    let _ = fs::remove_file(&out);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn dump_for_comparison() {
    let v = dir_keys(&oracle2_dir("gemma2"), SpmStyle::Default);
    fs::write("/tmp/sp-gemma2-keys.json", v.to_string()).unwrap();
    let v = dir_keys(&repo().join("fixtures/oracles/phi3"), SpmStyle::Phi3);
    fs::write("/tmp/sp-phi3-keys.json", v.to_string()).unwrap();
}
