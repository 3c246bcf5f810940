//! `modelgate imatrix`: the command on the tiny Llama fixture, its file read back by gguf-py
//! (llama.cpp's own Python reader) with llama-imatrix's names, shapes, counts and keys,
//! every entry's sums checked against an independent numpy forward pass in f64
//! (`imatrix_cmd_check.py`), the file accepted by `convert --imatrix`, and bad input
//! refused with exit 2.

use std::path::Path;

use modelgate::engine::TextTokenizer;
use modelgate::formats::Checkpoint;
use serde_json::Value;

use crate::support::{self, fixture, modelgate, repo};

fn redact(s: &str, tmp: &Path) -> String {
    s.replace(tmp.to_str().unwrap(), "[TMP]")
        .replace(repo().to_str().unwrap(), "[REPO]")
}

/// The chunks the command runs: the text's tokens cut into `ctx`-token pieces (the fixture
/// adds no BOS).
fn chunks(model: &Path, text: &Path, ctx: usize, n: usize) -> Vec<Vec<u32>> {
    let ckpt = Checkpoint::open(model).unwrap();
    let tok = TextTokenizer::from_checkpoint(&ckpt).unwrap();
    assert!(!tok.adds_bos());
    let ids = tok.encode(&std::fs::read_to_string(text).unwrap()).unwrap();
    ids.chunks_exact(ctx).take(n).map(<[u32]>::to_vec).collect()
}

#[test]
fn imatrix_matches_a_numpy_forward_pass_and_gguf_py_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-llama");
    let text = fixture("text/eval.txt");
    let out = tmp.path().join("imatrix.gguf");
    let args = [
        "imatrix",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--chunks",
        "3",
        "-o",
        out.to_str().unwrap(),
    ];
    let o = modelgate(&args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // the perplexity's last digits depend on the platform's float kernels
    let stdout = stdout
        .rsplit_once("perplexity ")
        .map(|(a, _)| format!("{a}perplexity [PPL]"))
        .unwrap();
    insta::assert_snapshot!(format!("{}\n--- stderr\n{}", redact(&stdout, tmp.path()), stderr), @r"
    wrote `[TMP]/imatrix.gguf`: 14 entries from 3 chunks of 64 tokens ([N] tokens of text), perplexity [PPL]
    --- stderr
    ");

    let ids = chunks(&model, &text, 64, 3);
    let ids_path = tmp.path().join("chunks.json");
    std::fs::write(&ids_path, serde_json::to_string(&ids).unwrap()).unwrap();
    let py = support::oracle_python()
        .arg(repo().join("tests/it/imatrix_cmd_check.py"))
        .arg(&model)
        .arg(&out)
        .arg(&ids_path)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let v: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(v["keys"]["general.type"], "imatrix");
    assert_eq!(v["keys"]["imatrix.chunk_count"], 3);
    assert_eq!(v["keys"]["imatrix.chunk_size"], 64);
    assert_eq!(v["keys"]["imatrix.datasets"][0], text.to_str().unwrap());
    let entries = v["entries"].as_object().unwrap();
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    let numpy: Vec<&str> = v["numpy_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    // every product of both layers, no output head, no embedding
    assert_eq!(names, numpy);
    assert_eq!(names.len(), 14);
    for (name, e) in entries {
        let cols = if name.ends_with("ffn_down.weight") {
            128
        } else {
            64
        };
        assert_eq!(e["shape"], serde_json::json!([cols, 1]), "{name}");
        assert_eq!(e["type"], "F32", "{name}");
        assert_eq!(e["counts"], serde_json::json!([192.0]), "{name}");
        assert_eq!(e["counts_shape"], serde_json::json!([1, 1]), "{name}");
        let rel = e["max_rel_diff"].as_f64().unwrap();
        assert!(rel < 1e-4, "{name}: relative difference {rel} from numpy");
    }

    // convert --imatrix takes the file
    let q = tmp.path().join("q4.gguf");
    let o = modelgate(&[
        "convert",
        model.to_str().unwrap(),
        "-o",
        q.to_str().unwrap(),
        "--type",
        "Q4_0",
        "--imatrix",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn json_summary_names_the_text_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-llama");
    let text = fixture("text/eval.txt");
    let out = tmp.path().join("m.gguf");
    let o = modelgate(&[
        "imatrix",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "32",
        "--chunks",
        "2",
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--math",
        "native",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(v["sha256"], hex_sha256(&bytes));
    assert_eq!(
        v["text"]["sha256"],
        hex_sha256(&std::fs::read(&text).unwrap())
    );
    assert_eq!(v["chunks"], 2);
    assert_eq!(v["ctx"], 32);
    assert_eq!(v["entries"], 14);
    assert_eq!(v["math"], "native");
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
    // nothing but the output in the directory: written through a temporary file
    let files: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(files.len(), 1);
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-llama");
    let m = model.to_str().unwrap();
    let text = fixture("text/eval.txt");
    let t = text.to_str().unwrap();
    let out = tmp.path().join("o.gguf");
    let o_ = out.to_str().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = tmp.path().join("bin.txt");
    std::fs::write(&binary, [0xffu8, 0xfe, 0x00, 0x41]).unwrap();
    let garbage = tmp.path().join("garbage.gguf");
    std::fs::write(&garbage, b"GGUF\x03\x00\x00\x00\xff").unwrap();
    let missing = tmp.path().join("missing.txt");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("no text", vec!["imatrix", m, "-o", o_]),
        (
            "ctx 0",
            vec!["imatrix", m, "--text", t, "--ctx", "0", "-o", o_],
        ),
        (
            "empty text",
            vec!["imatrix", m, "--text", empty.to_str().unwrap(), "-o", o_],
        ),
        (
            "text not UTF-8",
            vec!["imatrix", m, "--text", binary.to_str().unwrap(), "-o", o_],
        ),
        (
            "missing text",
            vec!["imatrix", m, "--text", missing.to_str().unwrap(), "-o", o_],
        ),
        (
            "text shorter than a chunk",
            vec!["imatrix", m, "--text", t, "--ctx", "200000", "-o", o_],
        ),
        (
            "chunk longer than the context",
            vec!["imatrix", m, "--text", t, "--ctx", "300", "-o", o_],
        ),
        (
            "model unreadable",
            vec!["imatrix", garbage.to_str().unwrap(), "--text", t, "-o", o_],
        ),
    ];
    let mut all = String::new();
    for (what, args) in cases {
        let o = modelgate(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(o.stdout.is_empty(), "{what}");
        if what != "no text" && what != "ctx 0" {
            crate::errors::assert_each_cause_once(&err);
        }
        let first: String = err.lines().take(4).map(|l| format!("{l}\n")).collect();
        all.push_str(&format!("## {what}\n{}", redact(&first, tmp.path())));
    }
    assert!(!out.exists());
    insta::assert_snapshot!(all);
}
