//! The committed fixtures are the generator's output, and they are well-formed models.
//!
//! Compiles the generator's modules (`examples/make_fixtures/`) into this test binary,
//! regenerates the fixture tree into a temporary folder and compares it byte for byte with
//! `fixtures/models` and `fixtures/text`; then checks each model directory with independent
//! readers: the `tokenizers` crate loads and round-trips every `tokenizer.json`, the
//! `safetensors` crate reads the weights, whose names and shapes must follow from `config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::support::{fixture, repo};

// The generator's modules, compiled here exactly as the example compiles them. Not every item
// the example's `main` uses is used by these tests.
#[allow(dead_code)]
#[path = "../../examples/make_fixtures/hostile_gguf.rs"]
mod hostile_gguf;
#[allow(dead_code)]
#[path = "../../examples/make_fixtures/hostile_pickle.rs"]
mod hostile_pickle;
#[allow(dead_code)]
#[path = "../../examples/make_fixtures/hostile_safetensors.rs"]
mod hostile_safetensors;

#[path = "../../examples/make_fixtures/hostile_sentencepiece.rs"]
mod hostile_sentencepiece;
#[allow(dead_code)]
#[path = "../../examples/make_fixtures/models.rs"]
mod models;
#[allow(dead_code)]
#[path = "../../examples/make_fixtures/text.rs"]
mod text;
#[allow(dead_code)]
#[path = "../../examples/make_fixtures/tokenizer.rs"]
pub(crate) mod tokenizer;

const MODELS: [&str; 4] = [
    "tiny-llama",
    "tiny-llama-sharded",
    "tiny-mistral",
    "tiny-qwen2",
];

/// Every file under `root`, as sorted paths relative to `root`.
fn files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn committed_fixtures_are_exactly_the_generators_output() {
    let tmp = tempfile::tempdir().expect("temp dir");
    models::write_all(&tmp.path().join("models")).expect("generate models");
    text::write_all(&tmp.path().join("text")).expect("generate text");
    for sub in [
        "hostile/gguf",
        "hostile/safetensors",
        "hostile/sentencepiece",
        "pickle",
    ] {
        std::fs::create_dir_all(tmp.path().join(sub)).expect("create fixture folder");
    }
    hostile_gguf::write_all(&tmp.path().join("hostile/gguf")).expect("generate hostile gguf");
    hostile_safetensors::write_all(&tmp.path().join("hostile/safetensors"))
        .expect("generate hostile safetensors");
    hostile_sentencepiece::write_all(&tmp.path().join("hostile/sentencepiece"))
        .expect("generate hostile sentencepiece");
    hostile_pickle::write_all(&tmp.path().join("pickle")).expect("generate pickles");
    for sub in ["models", "text", "hostile", "pickle"] {
        let fresh = tmp.path().join(sub);
        let committed = fixture(sub);
        let names = files(&fresh);
        assert_eq!(
            names,
            files(&committed),
            "`fixtures/{sub}` holds different files than the generator writes; \
             run `cargo run --example make_fixtures`"
        );
        for name in names {
            let a = std::fs::read(fresh.join(&name)).expect("read generated");
            let b = std::fs::read(committed.join(&name)).expect("read committed");
            assert!(
                a == b,
                "`fixtures/{sub}/{}` differs from the generator's output; \
                 run `cargo run --example make_fixtures`",
                name.display()
            );
        }
    }
}

#[test]
fn generation_is_deterministic_across_runs() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    models::write_all(a.path()).expect("first run");
    models::write_all(b.path()).expect("second run");
    for name in files(a.path()) {
        assert_eq!(
            std::fs::read(a.path().join(&name)).expect("read"),
            std::fs::read(b.path().join(&name)).expect("read"),
            "`{}` differs between two runs",
            name.display()
        );
    }
}

#[test]
fn eval_text_is_a_small_english_text() {
    let text = std::fs::read_to_string(fixture("text/eval.txt")).expect("eval.txt is UTF-8");
    assert!(
        (5_000..=15_000).contains(&text.len()),
        "eval.txt is {} bytes",
        text.len()
    );
    assert!(text.contains("The Keeper of Harrow Point"));
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{}`: {e}", path.display()))
}

#[test]
fn tokenizers_load_and_round_trip_text() {
    let text = std::fs::read_to_string(fixture("text/eval.txt")).expect("eval.txt");
    let samples = [
        text.as_str(),
        "Hello, world!  Two spaces, a tab\tand a newline\n",
        "caf\u{e9} \u{2014} \u{1F980} \u{4E2D}\u{6587} \u{0}\u{7F}",
        "",
    ];
    for name in MODELS {
        let dir = fixture(&format!("models/{name}"));
        let tok = Tokenizer::from_file(dir.join("tokenizer.json"))
            .unwrap_or_else(|e| panic!("`{name}/tokenizer.json` does not load: {e}"));
        let config = read_json(&dir.join("config.json"));
        assert_eq!(
            Some(tok.get_vocab_size(true) as u64),
            config["vocab_size"].as_u64(),
            "`{name}`: tokenizer size and config vocab_size disagree"
        );
        for (id, special) in tokenizer::SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(
                tok.token_to_id(special),
                Some(id as u32),
                "`{name}`: {special}"
            );
        }
        for sample in samples {
            let enc = tok.encode(sample, false).expect("encode");
            assert!(enc.get_ids().iter().all(|&id| id >= 3), "no specials added");
            let back = tok.decode(enc.get_ids(), false).expect("decode");
            assert_eq!(back, sample, "`{name}` does not round-trip");
        }
        // The merges compress English: well under one token per byte.
        let ids = tok.encode(text.as_str(), false).expect("encode").len();
        assert!(
            ids * 2 < text.len(),
            "`{name}`: {ids} tokens for {} bytes",
            text.len()
        );

        // Special tokens in text are single tokens; with special tokens added, only the
        // mistral fixture prepends a BOS (`<|endoftext|>`, id 0).
        let chat = "<|im_start|>user\nhi<|im_end|>";
        let plain = tok.encode(chat, false).expect("encode");
        assert_eq!(plain.get_ids().first(), Some(&1));
        assert_eq!(plain.get_ids().last(), Some(&2));
        let with = tok.encode(chat, true).expect("encode");
        let tc = read_json(&dir.join("tokenizer_config.json"));
        if tc["add_bos_token"] == Value::Bool(true) {
            assert_eq!(with.get_ids()[0], 0, "`{name}` should prepend its BOS");
            assert_eq!(&with.get_ids()[1..], plain.get_ids());
        } else {
            assert_eq!(with.get_ids(), plain.get_ids());
        }
        let shown = tok.decode(with.get_ids(), true).expect("decode");
        assert_eq!(shown, "user\nhi");
    }
}

/// Every tensor of a fixture directory, from each of its safetensors files:
/// name -> (file, dtype, shape, bytes).
type Tensors = BTreeMap<String, (String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(dir: &Path) -> Tensors {
    let mut out = Tensors::new();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    files.sort();
    for file in files {
        let bytes = std::fs::read(dir.join(&file)).expect("read safetensors");
        let st = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("`{}/{file}`: {e}", dir.display()));
        for (name, view) in st.tensors() {
            let prev = out.insert(
                name.clone(),
                (
                    file.clone(),
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
            assert!(prev.is_none(), "`{name}` appears in two files");
        }
    }
    out
}

fn usize_of(config: &Value, key: &str) -> usize {
    config[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config `{key}` is not an integer")) as usize
}

/// The tensor names and shapes a transformers llama/mistral/qwen2 model with `config` has.
fn expected_shapes(config: &Value) -> BTreeMap<String, Vec<usize>> {
    let hidden = usize_of(config, "hidden_size");
    let heads = usize_of(config, "num_attention_heads");
    let kv_heads = usize_of(config, "num_key_value_heads");
    let head_dim = config["head_dim"]
        .as_u64()
        .map_or(hidden / heads, |d| d as usize);
    let inter = usize_of(config, "intermediate_size");
    let vocab = usize_of(config, "vocab_size");
    let bias = config["model_type"] == "qwen2" || config["attention_bias"] == Value::Bool(true);
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_owned(), vec![vocab, hidden]);
    m.insert("model.norm.weight".to_owned(), vec![hidden]);
    if config["tie_word_embeddings"] != Value::Bool(true) {
        m.insert("lm_head.weight".to_owned(), vec![vocab, hidden]);
    }
    for l in 0..usize_of(config, "num_hidden_layers") {
        let p = format!("model.layers.{l}");
        let mut put = |n: &str, s: Vec<usize>| m.insert(format!("{p}.{n}"), s);
        put("input_layernorm.weight", vec![hidden]);
        put("post_attention_layernorm.weight", vec![hidden]);
        put("self_attn.q_proj.weight", vec![heads * head_dim, hidden]);
        put("self_attn.k_proj.weight", vec![kv_heads * head_dim, hidden]);
        put("self_attn.v_proj.weight", vec![kv_heads * head_dim, hidden]);
        put("self_attn.o_proj.weight", vec![hidden, heads * head_dim]);
        if bias {
            put("self_attn.q_proj.bias", vec![heads * head_dim]);
            put("self_attn.k_proj.bias", vec![kv_heads * head_dim]);
            put("self_attn.v_proj.bias", vec![kv_heads * head_dim]);
        }
        put("mlp.gate_proj.weight", vec![inter, hidden]);
        put("mlp.up_proj.weight", vec![inter, hidden]);
        put("mlp.down_proj.weight", vec![hidden, inter]);
    }
    m
}

#[test]
fn weights_match_each_config() {
    for name in MODELS {
        let dir = fixture(&format!("models/{name}"));
        let config = read_json(&dir.join("config.json"));
        let dtype_name = config
            .get("dtype")
            .or_else(|| config.get("torch_dtype"))
            .and_then(Value::as_str)
            .expect("dtype or torch_dtype");
        let dtype = match dtype_name {
            "float32" => Dtype::F32,
            "float16" => Dtype::F16,
            "bfloat16" => Dtype::BF16,
            other => panic!("`{name}`: unexpected dtype {other}"),
        };
        // transformers 4 puts rope_theta at the top level, transformers 5 under rope_parameters.
        let theta = config["rope_theta"]
            .as_f64()
            .or_else(|| config["rope_parameters"]["rope_theta"].as_f64());
        assert!(theta.is_some_and(|t| t > 0.0), "`{name}`: no rope theta");

        let tensors = read_tensors(&dir);
        let actual: BTreeMap<String, Vec<usize>> = tensors
            .iter()
            .map(|(n, (_, _, shape, _))| (n.clone(), shape.clone()))
            .collect();
        assert_eq!(actual, expected_shapes(&config), "`{name}`");
        for (n, (_, dt, _, _)) in &tensors {
            assert_eq!(
                *dt, dtype,
                "`{name}`: `{n}` is {dt:?}, config says {dtype_name}"
            );
        }
        let norm = &tensors["model.norm.weight"].3;
        let first = match dtype {
            Dtype::F32 => f32::from_le_bytes([norm[0], norm[1], norm[2], norm[3]]),
            Dtype::F16 => half::f16::from_le_bytes([norm[0], norm[1]]).to_f32(),
            _ => half::bf16::from_le_bytes([norm[0], norm[1]]).to_f32(),
        };
        assert!(
            (0.9..1.1).contains(&first),
            "`{name}`: norm weight {first} is not near one"
        );
    }
}

#[test]
fn sharded_fixture_holds_the_same_tensors_as_tiny_llama() {
    let single = read_tensors(&fixture("models/tiny-llama"));
    let dir = fixture("models/tiny-llama-sharded");
    let sharded = read_tensors(&dir);
    assert_eq!(
        single.keys().collect::<Vec<_>>(),
        sharded.keys().collect::<Vec<_>>()
    );
    for (name, (_, dt, shape, bytes)) in &single {
        let (_, dt2, shape2, bytes2) = &sharded[name];
        assert_eq!((dt, shape), (dt2, shape2), "`{name}`");
        assert!(bytes == bytes2, "`{name}` holds different values");
    }

    let index = read_json(&dir.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().expect("weight_map");
    assert_eq!(map.len(), sharded.len());
    let mut files = std::collections::BTreeSet::new();
    for (name, (file, _, _, _)) in &sharded {
        assert_eq!(map[name].as_str(), Some(file.as_str()), "`{name}`");
        files.insert(file.clone());
    }
    assert_eq!(
        files.into_iter().collect::<Vec<_>>(),
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    let total: usize = sharded.values().map(|t| t.3.len()).sum();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total as u64));
}

#[test]
fn model_cards_and_licences_state_apache_2() {
    let licence = std::fs::read(repo().join("policies/licenses/texts/apache-2.0.txt"))
        .expect("policies/licenses/texts/apache-2.0.txt");
    for name in MODELS {
        let dir = fixture(&format!("models/{name}"));
        assert!(
            std::fs::read(dir.join("LICENSE")).expect("LICENSE") == licence,
            "`{name}/LICENSE` is not the Apache-2.0 text"
        );
        let card = std::fs::read_to_string(dir.join("README.md")).expect("README.md");
        let front = card
            .strip_prefix("---\n")
            .and_then(|rest| rest.split_once("\n---\n"))
            .map(|(yaml, _)| yaml)
            .unwrap_or_else(|| panic!("`{name}/README.md` has no front matter"));
        let meta: serde_yaml::Value = serde_yaml::from_str(front).expect("front matter is YAML");
        assert_eq!(meta["license"].as_str(), Some("apache-2.0"), "`{name}`");
        assert_eq!(meta["base_model_relation"].as_str(), Some("finetune"));
        assert!(meta["base_model"].as_str().is_some_and(|b| b.contains('/')));
        assert!(meta["datasets"]
            .as_sequence()
            .is_some_and(|d| !d.is_empty()));
        let tc = read_json(&dir.join("tokenizer_config.json"));
        assert!(tc["chat_template"]
            .as_str()
            .is_some_and(|t| t.contains("<|im_start|>")));
    }
}
