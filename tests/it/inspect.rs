//! `modelgate inspect` end to end: the real SmolLM2 GGUF, the fixture directories, the JSON
//! schema, and the hostile corpus (exit 2, one clear line, never a panic).

use std::path::Path;

use serde_json::Value;

use crate::support::{assert_schema, fixture, modelgate, smollm2};

fn inspect_json(path: &Path, extra: &[&str]) -> Value {
    let p = path.to_str().unwrap();
    let mut args = vec!["inspect", p, "--json"];
    args.extend_from_slice(extra);
    let out = modelgate(&args);
    assert!(
        out.status.success(),
        "inspect {p} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

fn validate(v: &Value) {
    assert_schema("schemas/inspect.schema.json", v);
}

#[test]
fn smollm2_facts() {
    let v = inspect_json(&smollm2(), &["--tensors"]);
    validate(&v);
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["gguf"]["version"], 3);
    assert_eq!(v["gguf"]["metadata_keys"], 33);
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["tensor_count"], 272);
    assert_eq!(v["parameters"], 134_515_008u64);
    let p = &v["params"];
    assert_eq!(p["block_count"], 30);
    assert_eq!(p["embedding_length"], 576);
    assert_eq!(p["feed_forward_length"], 1536);
    assert_eq!(p["head_count"], 9);
    assert_eq!(p["head_count_kv"], 3);
    assert_eq!(p["context_length"], 8192);
    assert_eq!(p["vocab_size"], 49152);
    let t = &v["tokenizer"];
    assert_eq!(t["model"], "gpt2");
    assert_eq!(t["pre"], "smollm");
    assert_eq!(t["vocab_size"], 49152);
    assert_eq!(t["merges"], 48900);
    assert_eq!(t["bos"]["id"], 1);
    assert_eq!(t["eos"]["id"], 2);
    assert_eq!(t["add_bos"], false);
    assert_eq!(t["chat_template"], true);
    let dtypes: Vec<(String, u64)> = v["dtypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dtype"].as_str().unwrap().to_owned(),
                d["tensors"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dtypes,
        vec![("F32".into(), 61), ("Q4_1".into(), 210), ("Q8_0".into(), 1)]
    );
    let licence: Vec<(&str, &str)> = v["licence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap(),
                d["value"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(licence, vec![("general.license", "apache-2.0")]);
    assert_eq!(v["metadata"]["general.architecture"], "llama");
    assert_eq!(v["metadata"]["llama.rope.freq_base"], 100000.0);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 272);
    let embd = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["dtype"], "Q8_0");
    assert_eq!(embd["shape"], serde_json::json!([49152, 576]));
}

#[test]
fn smollm2_text_summary_reads_well() {
    let out = modelgate(&["inspect", smollm2().to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "gguf file",
        "architecture  llama",
        "parameters    134,515,008 in 272 tensors",
        "blocks 30, embedding 576, ffn 1536, heads 9 / 3 kv",
        "gpt2 (pre-tokenizer smollm), 49,152 tokens, 48,900 merges",
        "general.license = apache-2.0",
        "Q4_1",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

/// Declared facts of each fixture directory: (dir, architecture, licence, base model).
const FIXTURE_MODELS: &[(&str, &str, &str, &str)] = &[
    (
        "tiny-llama",
        "llama",
        "apache-2.0",
        "HuggingFaceTB/SmolLM2-135M",
    ),
    (
        "tiny-llama-sharded",
        "llama",
        "apache-2.0",
        "HuggingFaceTB/SmolLM2-135M",
    ),
    (
        "tiny-mistral",
        "mistral",
        "apache-2.0",
        "mistralai/Mistral-7B-v0.1",
    ),
    ("tiny-qwen2", "qwen2", "apache-2.0", "Qwen/Qwen2.5-0.5B"),
];

#[test]
fn fixture_directories() {
    for (dir, arch, licence, base) in FIXTURE_MODELS {
        let path = fixture(&format!("models/{dir}"));
        let v = inspect_json(&path, &["--tensors"]);
        validate(&v);
        assert_eq!(v["layout"], "directory", "{dir}");
        assert_eq!(v["architecture"], *arch, "{dir}");
        // parameter count equals the sum of the tensor shapes it reports
        let sum: u64 = v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .product::<u64>()
            })
            .sum();
        assert!(sum > 0);
        assert_eq!(v["parameters"].as_u64().unwrap(), sum, "{dir}");
        let find = |list: &str, key: &str| {
            v[list]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["key"] == key && d["source"] == "card")
                .map(|d| d["value"].clone())
        };
        assert_eq!(
            find("licence", "license"),
            Some(Value::from(*licence)),
            "{dir}"
        );
        let declared_base = find("provenance", "base_model").expect("base_model declared");
        let bases: Vec<&str> = match &declared_base {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        assert_eq!(bases, vec![*base], "{dir}");
        assert!(
            v["licence_files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "LICENSE"),
            "{dir}"
        );
    }
}

#[test]
fn fixture_text_snapshot() {
    let out = modelgate(&["inspect", "fixtures/models/tiny-llama"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!("inspect_tiny_llama", String::from_utf8(out.stdout).unwrap());
}

/// Every file of the hostile corpus is refused: exit code 2, an `error:` line that names
/// the file, and no panic.
#[test]
fn hostile_corpus_is_refused_cleanly() {
    let mut files = Vec::new();
    for sub in ["hostile/gguf", "hostile/safetensors"] {
        for entry in std::fs::read_dir(fixture(sub)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    assert!(
        files.len() >= 15,
        "hostile corpus has only {} files",
        files.len()
    );
    for f in &files {
        let out = modelgate(&["inspect", f.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", f.display());
        assert!(!stderr.contains("panicked"), "{}: {stderr}", f.display());
        let first = stderr.lines().next().unwrap_or("");
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            first.starts_with("error: ") && first.contains(name),
            "{}: first line does not name the file: {first}",
            f.display()
        );
    }
}

#[test]
fn missing_path_is_an_input_error() {
    let out = modelgate(&["inspect", "no/such/model"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot read `no/such/model`"),
        "{stderr}"
    );
}

/// `inspect` of each mixture-of-experts oracle: experts, experts used per token, shared
/// experts, dense leading layers and active parameters, as text (snapshot) and JSON
/// (schema). Active parameters are checked by hand for mixtral: 2 layers of 4 experts with
/// three 64 x 128 matrices each, 2 used, so half the 196,608 routed parameters are active.
#[test]
fn inspect_moe_oracles() {
    for name in ["mixtral", "qwen2moe", "qwen3moe", "deepseek3", "gptoss"] {
        let dir = crate::support::oracle2_dir(name);
        let p = dir.to_str().unwrap();
        let out = modelgate(&["inspect", p]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap().replace(p, "ORACLE");
        insta::assert_snapshot!(format!("inspect_moe_{name}"), text);
        let v = inspect_json(&dir, &[]);
        validate(&v);
        let e = &v["experts"];
        assert_eq!(e["source"], "config.json");
        assert_eq!(e["count"], 4, "{name}");
        assert_eq!(e["used_per_token"], 2, "{name}");
        if name == "mixtral" {
            assert_eq!(e["routed_parameters"], 196_608);
            assert_eq!(e["total_parameters"], v["parameters"]);
            assert_eq!(
                e["active_parameters"].as_u64().unwrap(),
                v["parameters"].as_u64().unwrap() - 98_304
            );
        }
    }
    // A dense model has no experts section.
    let v = inspect_json(&crate::support::oracle2_dir("olmo2"), &[]);
    assert!(v.get("experts").is_none());
}

/// The same facts from GGUF metadata (`{arch}.expert_count`, ...), on the synthetic
/// 8-expert model of `quant_moe`.
#[test]
fn inspect_moe_gguf_reads_expert_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("moe.gguf");
    crate::quant_moe::write_input(&f);
    let v = inspect_json(&f, &[]);
    validate(&v);
    let e = &v["experts"];
    assert_eq!(e["source"], "gguf");
    assert_eq!(
        (e["count"].as_u64(), e["used_per_token"].as_u64()),
        (Some(8), Some(2))
    );
    // 4 layers x 3 stacked tensors of 8 x 256 x 256; 2 of 8 experts used.
    let routed = 4 * 3 * 8 * 256 * 256u64;
    assert_eq!(e["routed_parameters"], routed);
    assert_eq!(
        e["active_parameters"].as_u64().unwrap(),
        v["parameters"].as_u64().unwrap() - routed / 4 * 3
    );
    let text = modelgate(&["inspect", f.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("  experts       8 routed, 2 used per token (from gguf)\n"),
        "{text}"
    );
}

/// The BOM's hyper-parameters (what `cyclonedx` and `spdx` write for an artifact) record
/// the architecture, experts and active parameters of a mixture of experts, from
/// config.json and from GGUF metadata alike, and leave active parameters out for a dense
/// model.
#[test]
fn bom_records_experts_and_active_parameters() {
    use modelgate::formats::Checkpoint;
    use modelgate::report::bom::Hyperparameters;
    let mixtral = Checkpoint::open(&crate::support::oracle2_dir("mixtral")).unwrap();
    let h = Hyperparameters::of(&mixtral);
    assert_eq!((h.experts, h.experts_used), (Some(4), Some(2)));
    assert_eq!(h.active_parameters, Some(287_552 - 98_304));
    assert_eq!(mixtral.params().architecture.as_deref(), Some("mixtral"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("moe.gguf");
    crate::quant_moe::write_input(&f);
    let gguf = Checkpoint::open(&f).unwrap();
    let h = Hyperparameters::of(&gguf);
    assert_eq!((h.experts, h.experts_used), (Some(8), Some(2)));
    let total = gguf.weights.parameter_count();
    assert_eq!(
        h.active_parameters,
        Some(total - 4 * 3 * 8 * 256 * 256 / 4 * 3)
    );
    let olmo = Checkpoint::open(&crate::support::oracle2_dir("olmo2")).unwrap();
    assert_eq!(Hyperparameters::of(&olmo).active_parameters, None);
}
