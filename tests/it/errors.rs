//! The full stderr of failing commands, as insta snapshots, so that the error form cannot
//! drift: `error:` first, then one `caused by:` line per cause (each cause once, never
//! repeated inside the line above), then a `hint:` line; lower case, paths in backticks.
//! Temporary and repository paths are replaced by `[TMP]` and `[REPO]`, so the snapshots are
//! the same on every machine.

use std::path::Path;

use crate::support::{fixture, modelgate, repo};

/// Run a command that must fail with an input error (exit 2, nothing on stdout); its
/// stderr with paths normalised, after checking that no cause is printed twice.
fn failure(args: &[&str], tmp: &Path) -> String {
    let o = modelgate(args);
    let stderr = String::from_utf8(o.stderr).expect("stderr is UTF-8");
    assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(o.stdout.is_empty(), "{args:?} printed to stdout");
    assert_each_cause_once(&stderr);
    normalise(&stderr, tmp)
}

fn normalise(s: &str, tmp: &Path) -> String {
    s.replace(tmp.to_str().expect("UTF-8 temp path"), "[TMP]")
        .replace(repo().to_str().expect("UTF-8 repo path"), "[REPO]")
}

/// Every `caused by:` text appears in no earlier line: a message that embeds its source
/// and also reports it as a cause would print the cause twice.
pub(crate) fn assert_each_cause_once(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for (i, line) in lines.iter().enumerate() {
        if let Some(cause) = line.strip_prefix("caused by: ") {
            for earlier in &lines[..i] {
                assert!(
                    !earlier.contains(cause),
                    "cause `{cause}` is printed twice:\n{stderr}"
                );
            }
        }
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("hint: ")).count(),
        1,
        "one hint line expected:\n{stderr}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn inspect_of_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.gguf");
    insta::assert_snapshot!(failure(&["inspect", s(&missing)], tmp.path()));
}

#[test]
fn inspect_of_a_malformed_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = fixture("hostile/gguf/metadata_key_count_2p60.gguf");
    insta::assert_snapshot!(failure(&["inspect", s(&bad)], tmp.path()));
}

#[test]
fn hash_of_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("model");
    insta::assert_snapshot!(failure(&["hash", s(&missing)], tmp.path()));
}

#[test]
fn policy_check_with_a_bad_policy_file() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, "name: broken\nintended_use: [\n").unwrap();
    let model = fixture("models/tiny-llama");
    insta::assert_snapshot!(failure(
        &["policy", "check", s(&model), "--policy", s(&policy)],
        tmp.path()
    ));
}

#[test]
fn policy_check_with_a_missing_policy_file() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.yaml");
    let model = fixture("models/tiny-llama");
    insta::assert_snapshot!(failure(
        &["policy", "check", s(&model), "--policy", s(&policy)],
        tmp.path()
    ));
}

/// tiny-llama with its config.json claiming another architecture.
fn gpt2_model(dir: &Path) -> std::path::PathBuf {
    let src = fixture("models/tiny-llama");
    let model = dir.join("gpt2");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["model_type"] = "gpt2".into();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    model
}

#[test]
fn convert_of_an_unsupported_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let model = gpt2_model(tmp.path());
    let out = tmp.path().join("out.gguf");
    insta::assert_snapshot!(failure(
        &["convert", s(&model), "-o", s(&out), "--type", "Q8_0"],
        tmp.path()
    ));
}

#[test]
fn generate_with_an_unsupported_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let model = gpt2_model(tmp.path());
    insta::assert_snapshot!(failure(
        &["generate", s(&model), "--prompt", "hi", "--quiet"],
        tmp.path()
    ));
}

#[test]
fn convert_to_an_unknown_type() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.gguf");
    let model = fixture("models/tiny-llama");
    insta::assert_snapshot!(failure(
        &["convert", s(&model), "-o", s(&out), "--type", "Q9_X"],
        tmp.path()
    ));
}

#[test]
fn verify_with_a_bad_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("signer.pub");
    std::fs::write(&key, "not a key\n").unwrap();
    let model = fixture("models/tiny-llama");
    insta::assert_snapshot!(failure(
        &["verify", s(&model), "--key", s(&key)],
        tmp.path()
    ));
}

#[test]
fn sign_with_a_missing_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("signer.pem");
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("w.gguf"), b"weights").unwrap();
    insta::assert_snapshot!(failure(&["sign", s(&model), "--key", s(&key)], tmp.path()));
}

#[test]
fn run_with_a_bad_pipeline_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = fixture("pipeline/bad-unknown-key.yaml");
    let out = tmp.path().join("out");
    insta::assert_snapshot!(failure(
        &["run", s(&pipeline), "--out", s(&out)],
        tmp.path()
    ));
}

#[test]
fn convert_of_a_malformed_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = fixture("hostile/gguf/metadata_key_count_2p60.gguf");
    let out = tmp.path().join("out.gguf");
    insta::assert_snapshot!(failure(
        &["convert", s(&bad), "-o", s(&out), "--type", "Q8_0"],
        tmp.path()
    ));
}

#[test]
fn license_of_a_missing_model() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("model");
    insta::assert_snapshot!(failure(&["license", s(&missing)], tmp.path()));
}

/// tiny-llama with its tokenizer.json replaced by a SentencePiece tokenizer.model.
fn llama_with_tokenizer_model(dir: &Path, model: &[u8]) -> std::path::PathBuf {
    let src = fixture("models/tiny-llama");
    let out = dir.join("spm");
    std::fs::create_dir(&out).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    std::fs::write(out.join("tokenizer.model"), model).unwrap();
    out
}

#[test]
fn inspect_of_a_truncated_tokenizer_model() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = std::fs::read(fixture("hostile/sentencepiece/truncated.model")).unwrap();
    let model = llama_with_tokenizer_model(tmp.path(), &bad);
    insta::assert_snapshot!(failure(&["inspect", s(&model)], tmp.path()));
}

#[test]
fn inspect_of_a_tokenizer_model_with_a_nan_score() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = std::fs::read(fixture("hostile/sentencepiece/score_nan.model")).unwrap();
    let model = llama_with_tokenizer_model(tmp.path(), &bad);
    insta::assert_snapshot!(failure(&["inspect", s(&model)], tmp.path()));
}

#[test]
fn convert_of_a_tokenizer_model_with_too_many_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    // Empty pieces cost two bytes each: one more than the cap is 2 MiB, made here rather
    // than committed.
    let n = modelgate::formats::sentencepiece::MAX_PIECES + 1;
    let bad: Vec<u8> = [0x0a, 0x00].repeat(n);
    let model = llama_with_tokenizer_model(tmp.path(), &bad);
    let out = tmp.path().join("out.gguf");
    insta::assert_snapshot!(failure(&["convert", s(&model), "-o", s(&out)], tmp.path()));
}

#[test]
fn convert_of_a_tokenizer_model_larger_than_the_config_vocabulary() {
    use modelgate::formats::sentencepiece::{self, Piece, PieceType};
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("hostile/sentencepiece/swapped/tokenizer.model")).unwrap();
    let mut m = sentencepiece::parse(Path::new("tokenizer.model"), &good).unwrap();
    for i in m.pieces.len()..600 {
        m.pieces
            .push(Piece::new(format!("p{i}"), -(i as f32), PieceType::Normal));
    }
    let model = llama_with_tokenizer_model(tmp.path(), &sentencepiece::write(&m));
    let out = tmp.path().join("out.gguf");
    insta::assert_snapshot!(failure(&["convert", s(&model), "-o", s(&out)], tmp.path()));
}
