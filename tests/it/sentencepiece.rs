//! SentencePiece `tokenizer.model`: the reader and writer on the oracles' files, the GGUF
//! vocabulary the converter makes from it (checked against the `sentencepiece` package, the
//! source llama.cpp's converter reads), and GGUF → Hugging Face directory round trips.

use std::fs;
use std::path::{Path, PathBuf};

use modelgate::convert::vocab::{self, DirVocab, SpmStyle};
use modelgate::engine::TextTokenizer;
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

/// A tiny Llama whose only tokenizer is the gemma2 oracle's tokenizer.model (both have 512
/// entries): a directory the converter can take with an architecture it supports.
fn llama_with_tokenizer_model(tmp: &Path) -> PathBuf {
    let dir = tmp.join("spm-llama");
    fs::create_dir_all(&dir).unwrap();
    let src = repo().join("fixtures/models/tiny-llama");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let g = oracle2_dir("gemma2");
    for f in ["tokenizer.model", "tokenizer_config.json"] {
        fs::copy(g.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// The fixture text and the tricky strings of fixtures/oracles/tokenizer-ids.json, with
/// transformers' ids for the gemma2 tokenizer.
fn gemma_cases() -> Vec<(String, Vec<u64>)> {
    let doc: Value = serde_json::from_str(
        &fs::read_to_string(repo().join("fixtures/oracles/tokenizer-ids.json")).unwrap(),
    )
    .unwrap();
    doc["tokenizers"]["gemma2"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap())
                .collect();
            (c["text"].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

/// `sentencepiece` ids of each case, from a model file; with `identity`, the model's
/// normalizer is first set to what GGUF carries (no character map, no whitespace collapsing).
fn spm_ids(model: &Path, cases: &[(String, Vec<u64>)], identity: bool) -> Vec<Vec<u64>> {
    let texts: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    let script = r#"
import json, sys, sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
m = pb.ModelProto(); m.ParseFromString(open(sys.argv[1], "rb").read())
if sys.argv[2] == "1":
    ns = m.normalizer_spec; ns.name = "identity"; ns.precompiled_charsmap = b""; ns.remove_extra_whitespaces = False
sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
print(json.dumps([sp.encode(t) for t in json.load(sys.stdin)]))
"#;
    let mut child = oracle_python()
        .args(["-c", script])
        .arg(model)
        .arg(if identity { "1" } else { "0" })
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!(texts).to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// tokenizer.model → GGUF → Hugging Face directory with the command line: the directory has
/// a tokenizer.model again, the `sentencepiece` package gives the same ids on it as on the
/// original (under the normalization GGUF carries), and converting it back gives the same
/// GGUF vocabulary.
#[test]
fn tokenizer_model_round_trips_through_gguf() {
    require_oracle("sentencepiece", "sentencepiece");
    let tmp = tempfile::tempdir().unwrap();
    let dir = llama_with_tokenizer_model(tmp.path());
    let gguf = tmp.path().join("m.gguf");
    let o = crate::support::modelgate(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        gguf.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = tmp.path().join("back");
    let o = crate::support::modelgate(&[
        "convert",
        gguf.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(back.join("tokenizer.model").is_file());
    assert!(back.join("tokenizer.json").is_file());

    let cases = gemma_cases();
    let before = spm_ids(&dir.join("tokenizer.model"), &cases, true);
    let after = spm_ids(&back.join("tokenizer.model"), &cases, false);
    assert_eq!(before, after);
    assert!(before[0].len() > 4000, "the fixture text is long");

    // And back to GGUF: the same vocabulary.
    let again = tmp.path().join("again.gguf");
    let o = crate::support::modelgate(&[
        "convert",
        back.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = Checkpoint::open(&gguf).unwrap();
    let b = Checkpoint::open(&again).unwrap();
    for k in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.model",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ] {
        assert_eq!(a.weights.meta(k), b.weights.meta(k), "{k}");
    }
}

/// With Gemma's `add_space_prefix = false` (which the converter's Gemma architecture adds),
/// the tokenizer.model written from the GGUF keys gives, in the `sentencepiece` package,
/// exactly transformers' ids for the gemma2 tokenizer on the fixture text and tricky strings.
#[test]
fn written_tokenizer_model_gives_transformers_ids() {
    require_oracle("sentencepiece", "sentencepiece");
    let dir = oracle2_dir("gemma2");
    let ck = Checkpoint::open(&dir).unwrap();
    let mut v = vocab::from_dir(&DirVocab {
        root: &dir,
        dir: ck.dir.as_ref().unwrap(),
        config_ids: [None, None, None],
        n_vocab: 512,
        pre_override: None,
        spm_style: SpmStyle::Default,
    })
    .unwrap();
    v.keys.push((
        "tokenizer.ggml.add_space_prefix".into(),
        MetaValue::Bool(false),
    ));
    let g = vocab::GgufVocab::from_metadata(&v.keys, Path::new("x.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tokenizer.model");
    fs::write(&out, sentencepiece::write(&g.to_sentencepiece())).unwrap();
    let cases = gemma_cases();
    let ids = spm_ids(&out, &cases, false);
    for ((text, want), got) in cases.iter().zip(&ids) {
        assert_eq!(got, want, "{text:?}");
    }
}

/// The engine's tokenizer from the gemma2 oracle's tokenizer.model alone: transformers' ids
/// on the fixture text and the tricky strings (leading and trailing spaces, newlines and
/// tabs, accents, CJK and emoji that need byte fallback, chat markers), after the BOS the
/// model asks for; decoding gives the text back.
#[test]
fn engine_tokenizer_from_tokenizer_model_gives_transformers_ids() {
    let ck = Checkpoint::open(&oracle2_dir("gemma2")).unwrap();
    let tok = TextTokenizer::from_checkpoint(&ck).unwrap();
    assert!(
        tok.origin().starts_with("tokenizer.model"),
        "{}",
        tok.origin()
    );
    for (text, want) in gemma_cases() {
        let ids = tok.encode(&text).unwrap();
        assert_eq!(ids[0], 1, "BOS first");
        let got: Vec<u64> = ids[1..].iter().map(|&i| u64::from(i)).collect();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tok.decode(&ids[1..]).unwrap(), text);
    }
}

/// With a dummy prefix (a Llama directory whose tokenizer.model asks for one), the engine's
/// ids equal the `sentencepiece` package's under the normalization GGUF carries, and the
/// converted GGUF tokenizes the same.
#[test]
fn engine_tokenizer_matches_the_sentencepiece_package_with_a_dummy_prefix() {
    require_oracle("sentencepiece", "sentencepiece");
    let tmp = tempfile::tempdir().unwrap();
    let dir = llama_with_tokenizer_model(tmp.path());
    let tok = TextTokenizer::from_checkpoint(&Checkpoint::open(&dir).unwrap()).unwrap();
    let cases = gemma_cases();
    let want = spm_ids(&dir.join("tokenizer.model"), &cases, true);
    let gguf = tmp.path().join("m.gguf");
    let o = crate::support::modelgate(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        gguf.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_gguf = TextTokenizer::from_checkpoint(&Checkpoint::open(&gguf).unwrap()).unwrap();
    for ((text, _), want) in cases.iter().zip(&want) {
        let ids = tok.encode(text).unwrap();
        let got: Vec<u64> = ids[1..].iter().map(|&i| u64::from(i)).collect();
        assert_eq!(&got, want, "{text:?}");
        assert_eq!(from_gguf.encode(text).unwrap(), ids, "GGUF: {text:?}");
    }
}

fn mismatches(dir: &Path) -> Vec<modelgate::finding::Finding> {
    modelgate::scan::scan(dir)
        .unwrap()
        .into_iter()
        .filter(|f| f.rule == "scan/tokenizer-mismatch")
        .collect()
}

/// A tokenizer.json that swaps two pieces and replaces the end-of-sequence token of the
/// tokenizer.model beside it is a warning naming the ids; the Phi-3 oracle's two files,
/// which agree, and the Gemma oracle (tokenizer.model alone) give none.
#[test]
fn scan_warns_when_tokenizer_model_and_json_disagree() {
    use modelgate::finding::Severity;
    let found = mismatches(&repo().join("fixtures/hostile/sentencepiece/swapped"));
    assert_eq!(found.len(), 1, "{found:?}");
    let f = &found[0];
    assert_eq!(f.severity, Severity::Warning);
    for part in [
        "disagree on 3 of 10 ids",
        "id 2 is `</s>` in tokenizer.model but `<eos>` in tokenizer.json",
        "id 7 is `\u{2581}a` in tokenizer.model but `\u{2581}b` in tokenizer.json",
        "special tokens among them: `</s>`",
    ] {
        assert!(f.message.contains(part), "{part}: {}", f.message);
    }
    assert!(mismatches(&repo().join("fixtures/oracles/phi3")).is_empty());
    assert!(mismatches(&oracle2_dir("gemma2")).is_empty());
}

/// A corrupt tokenizer.model is a structure error in the scan, naming the field.
#[test]
fn scan_reports_a_corrupt_tokenizer_model() {
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(
        repo().join("fixtures/hostile/sentencepiece/score_nan.model"),
        tmp.path().join("tokenizer.model"),
    )
    .unwrap();
    let found = modelgate::scan::scan(tmp.path()).unwrap();
    assert!(
        found
            .iter()
            .any(|f| f.rule == "scan/structure" && f.message.contains("`pieces[5].score` is NaN")),
        "{found:?}"
    );
}
