//! safetensors and Hugging Face directory reading on real data (the transformers oracles),
//! sharded checkpoints made at test time with our writer, and the hostile corpus.

#[path = "../../examples/make_fixtures/hostile_safetensors.rs"]
mod hostile_safetensors;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use modelgate::formats::hf::{self, HfDir};
use modelgate::formats::safetensors::{self, TensorSpec};
use modelgate::formats::{Checkpoint, DType, FormatError, Layout, MetaValue, WeightFormat};

/// The transformers oracles: `$MODELGATE_SHARED/oracles`, else `shared/` beside the
/// repository (as CI lays it out), else `/work/shared`.
fn oracles() -> PathBuf {
    let candidates = [
        std::env::var_os("MODELGATE_SHARED").map(PathBuf::from),
        Some(crate::support::repo().join("../shared")),
        Some(PathBuf::from("/work/shared")),
    ];
    let shared = candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("oracles").is_dir())
        .expect("the oracles folder (set MODELGATE_SHARED to the folder holding `oracles/`)");
    shared.join("oracles")
}

/// Copy an oracle folder into a temp dir so tests can add and change files.
fn copy_oracle(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in fs::read_dir(oracles().join(name)).unwrap() {
        let e = e.unwrap();
        let dst = tmp.path().join(e.file_name());
        fs::copy(e.path(), &dst).unwrap();
        // The shared oracles are read-only; the copies must be editable.
        let mut perm = fs::metadata(&dst).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(&dst, perm).unwrap();
    }
    tmp
}

fn malformed(r: Result<Checkpoint, FormatError>) -> (PathBuf, String) {
    match r {
        Err(FormatError::Malformed { path, fault }) => (path, fault),
        Err(e) => panic!("expected a malformed-file error, got {e}"),
        Ok(c) => panic!("expected an error, `{}` opened", c.path.display()),
    }
}

struct Expect {
    name: &'static str,
    arch: &'static str,
    params: u64,
    tensors: usize,
    rope_theta: f64,
    tied: bool,
    head_dim: Option<u64>,
}

const ORACLES: &[Expect] = &[
    Expect {
        name: "llama",
        arch: "llama",
        params: 139_584,
        tensors: 21,
        rope_theta: 1e4,
        tied: false,
        head_dim: Some(16),
    },
    Expect {
        name: "llama3-rope-scaled",
        arch: "llama",
        params: 106_816,
        tensors: 20,
        rope_theta: 5e5,
        tied: true,
        head_dim: Some(16),
    },
    Expect {
        name: "mistral",
        arch: "mistral",
        params: 139_584,
        tensors: 21,
        rope_theta: 1e6,
        tied: false,
        head_dim: Some(16),
    },
    Expect {
        name: "qwen2",
        arch: "qwen2",
        params: 107_072,
        tensors: 26,
        rope_theta: 1e6,
        tied: true,
        // qwen2's config has no head_dim: hidden / heads.
        head_dim: Some(16),
    },
    Expect {
        name: "qwen3",
        arch: "qwen3",
        params: 139_648,
        tensors: 25,
        rope_theta: 1e6,
        tied: false,
        head_dim: Some(16),
    },
];

#[test]
fn oracle_directories_open_with_params_and_tokenizer() {
    for x in ORACLES {
        let dir = oracles().join(x.name);
        let c = Checkpoint::open(&dir).unwrap();
        assert_eq!(c.layout, Layout::Directory);
        assert_eq!(c.weights.format, WeightFormat::Safetensors);
        assert_eq!(c.weights.tensors.len(), x.tensors, "{}", x.name);
        assert_eq!(c.weights.parameter_count(), x.params, "{}", x.name);
        assert!(c.weights.tensors.iter().all(|t| t.dtype == DType::F32));
        assert_eq!(
            c.weights.meta("format"),
            Some(&MetaValue::String("pt".into()))
        );
        // Every tensor's bytes are where the header says, and the crate agrees.
        let raw = fs::read(dir.join("model.safetensors")).unwrap();
        let st = ::safetensors::SafeTensors::deserialize(&raw).unwrap();
        for t in &c.weights.tensors {
            assert_eq!(
                c.weights.tensor_data(t).unwrap(),
                st.tensor(t.name.as_str()).unwrap().data()
            );
        }

        let names: Vec<String> = c
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "config.json",
                "expected.safetensors",
                "generation_config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        for f in &c.files {
            assert_eq!(f.size, fs::metadata(dir.join(&f.path)).unwrap().len());
        }

        let p = c.params();
        assert_eq!(p.architecture.as_deref(), Some(x.arch));
        assert_eq!(p.block_count, Some(2));
        assert_eq!(p.context_length, Some(256));
        assert_eq!(p.embedding_length, Some(64));
        assert_eq!(p.feed_forward_length, Some(128));
        assert_eq!(p.head_count, Some(4));
        assert_eq!(p.head_count_kv, Some(2));
        assert_eq!(p.head_dim, x.head_dim);
        assert_eq!(p.vocab_size, Some(512));
        assert_eq!(p.rope_theta, Some(x.rope_theta), "{}", x.name);
        assert_eq!(p.rms_norm_eps, Some(1e-5));
        assert_eq!(p.tie_word_embeddings, Some(x.tied));

        let tok = c.tokenizer().unwrap();
        assert_eq!(tok.model, "gpt2", "byte-level BPE");
        assert_eq!(tok.pre.as_deref(), Some("ByteLevel"));
        assert_eq!(tok.vocab_size, 512);
        assert_eq!(tok.merges, 253);
        let bos = tok.bos.unwrap();
        assert_eq!((bos.id, bos.text.as_deref()), (1, Some("<|im_start|>")));
        let eos = tok.eos.unwrap();
        assert_eq!((eos.id, eos.text.as_deref()), (2, Some("<|im_end|>")));
        assert_eq!(tok.unk, None, "unk_token is null");
        assert!(!tok.chat_template);
        let d = c.dir.as_ref().unwrap();
        assert!(d.card.is_none() && d.licence_files.is_empty() && d.skipped.is_empty());
        assert!(d.generation_config.is_some());
    }
    let scaled = Checkpoint::open(&oracles().join("llama3-rope-scaled")).unwrap();
    let cfg = scaled.dir.as_ref().unwrap().config.as_ref().unwrap();
    let r = hf::rope_scaling_from_config(cfg).unwrap();
    assert_eq!(r.rope_type, "llama3");
    assert_eq!(r.factor, Some(8.0));
    assert_eq!(r.original_max_position_embeddings, Some(32));
}

#[test]
fn transformers4_config_form_reads_the_same() {
    let dir = copy_oracle("llama3-rope-scaled");
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let rp = cfg
        .as_object_mut()
        .unwrap()
        .remove("rope_parameters")
        .unwrap();
    cfg["rope_theta"] = rp["rope_theta"].clone();
    cfg["rope_scaling"] = rp.clone();
    fs::write(&path, cfg.to_string()).unwrap();
    let c = Checkpoint::open(dir.path()).unwrap();
    let v5 = Checkpoint::open(&oracles().join("llama3-rope-scaled")).unwrap();
    assert_eq!(c.params(), v5.params());
    let d = c.dir.as_ref().unwrap().config.as_ref().unwrap();
    assert_eq!(
        hf::rope_scaling_from_config(d),
        hf::rope_scaling_from_config(v5.dir.as_ref().unwrap().config.as_ref().unwrap())
    );
}

/// Rewriting an oracle with our writer gives back the file transformers wrote, byte for
/// byte (same order, same header layout and padding), and writing is deterministic.
#[test]
fn writer_reproduces_oracle_files() {
    for x in ORACLES {
        let src = oracles().join(x.name).join("model.safetensors");
        let w = safetensors::open(&src).unwrap();
        let specs: Vec<TensorSpec> = w
            .tensors
            .iter()
            .map(|t| TensorSpec::new(t.name.as_str(), t.dtype, t.shape.clone()))
            .collect();
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("model.safetensors");
        for _ in 0..2 {
            safetensors::write_file(&dst, &specs, &meta, |spec| {
                let t = w.tensor(&spec.name).unwrap();
                Ok(Cow::Borrowed(w.tensor_data(t).unwrap()))
            })
            .unwrap();
            assert_eq!(
                fs::read(&dst).unwrap(),
                fs::read(&src).unwrap(),
                "{}",
                x.name
            );
        }
        // Nothing but the output is left in the folder (the temp file was renamed).
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
    }
}

#[test]
fn writer_failure_leaves_nothing_behind() {
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("x.safetensors");
    let specs = [TensorSpec::new("a", DType::F32, vec![4])];
    let err = safetensors::write_file(&dst, &specs, &BTreeMap::new(), |_| {
        Ok(Cow::Owned(vec![0; 3]))
    })
    .unwrap_err();
    assert!(err.to_string().contains("needs 16 bytes, got 3"), "{err}");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

/// Split an oracle into two shards with our writer plus an index.
fn shard(dir: &Path, index_edit: impl FnOnce(&mut serde_json::Value)) {
    let src = dir.join("model.safetensors");
    let w = safetensors::open(&src).unwrap();
    let mut names: Vec<&str> = w.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let specs: Vec<TensorSpec> = part
            .iter()
            .map(|n| {
                let t = w.tensor(n).unwrap();
                TensorSpec::new(*n, t.dtype, t.shape.clone())
            })
            .collect();
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        safetensors::write_file(&dir.join(&file), &specs, &meta, |spec| {
            Ok(Cow::Borrowed(
                w.tensor_data(w.tensor(&spec.name).unwrap()).unwrap(),
            ))
        })
        .unwrap();
        for n in *part {
            weight_map.insert((*n).to_owned(), file.clone().into());
        }
    }
    drop(w);
    fs::remove_file(&src).unwrap();
    let mut index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    index_edit(&mut index);
    fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

#[test]
fn sharded_checkpoint_reads_like_the_single_file() {
    let single = Checkpoint::open(&oracles().join("qwen3")).unwrap();
    let dir = copy_oracle("qwen3");
    shard(dir.path(), |_| {});
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(c.weights.format, WeightFormat::SafetensorsSharded);
    assert_eq!(c.weights.files.len(), 2);
    assert_eq!(c.weights.parameter_count(), 139_648);
    assert_eq!(c.params(), single.params());
    assert_eq!(c.weights.tensors.len(), single.weights.tensors.len());
    for t in &single.weights.tensors {
        let s = c.weights.tensor(t.name.as_str()).unwrap();
        assert_eq!((s.dtype, &s.shape), (t.dtype, &t.shape));
        assert_eq!(
            c.weights.tensor_data(s).unwrap(),
            single.weights.tensor_data(t).unwrap()
        );
    }
    assert!(c
        .files
        .iter()
        .any(|f| f.path == Path::new("model-00002-of-00002.safetensors")));

    // The index opened as a file lists itself and its shards.
    let by_index = Checkpoint::open(&dir.path().join("model.safetensors.index.json")).unwrap();
    let names: Vec<String> = by_index
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
}

#[test]
fn sharded_faults_name_the_file_and_tensor() {
    let shard1 = "model-00001-of-00002.safetensors";
    let shard2 = "model-00002-of-00002.safetensors";
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "missing shard",
            Box::new(|i| {
                i["weight_map"]["extra.weight"] = "model-00009-of-00009.safetensors".into()
            }),
            "model.safetensors.index.json",
            "shard `model-00009-of-00009.safetensors` does not exist (the index puts 1 tensor(s) in it, `extra.weight` first)",
        ),
        (
            "tensor in index but not in shard",
            Box::new(|i| i["weight_map"]["ghost.weight"] = shard1.into()),
            shard1,
            "tensor `ghost.weight` named by `model.safetensors.index.json` is absent from this shard",
        ),
        (
            "tensor in shard but not in index",
            Box::new(|i| {
                i["weight_map"]
                    .as_object_mut()
                    .unwrap()
                    .remove("model.norm.weight");
            }),
            shard2,
            "tensor `model.norm.weight` is in this shard but not in `model.safetensors.index.json`",
        ),
        (
            "tensor in another shard than the index says",
            Box::new(|i| i["weight_map"]["lm_head.weight"] = shard2.into()),
            shard1,
            "tensor `lm_head.weight` is in this shard but `model.safetensors.index.json` puts it in `model-00002-of-00002.safetensors`",
        ),
        (
            "shard outside the folder",
            Box::new(|i| i["weight_map"]["model.norm.weight"] = "../x.safetensors".into()),
            "model.safetensors.index.json",
            "not a relative path inside the index's folder",
        ),
    ];
    for (what, edit, file, fault) in cases {
        let dir = copy_oracle("qwen3");
        shard(dir.path(), edit);
        let (path, got) = malformed(Checkpoint::open(dir.path()));
        assert_eq!(path, dir.path().join(file), "{what}: {got}");
        assert!(got.contains(fault), "{what}: {got}");
    }

    // The same tensor in both shards.
    let dir = copy_oracle("qwen3");
    shard(dir.path(), |_| {});
    let s1 = safetensors::open(&dir.path().join(shard1)).unwrap();
    let mut specs: Vec<TensorSpec> = s1
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.as_str(), t.dtype, t.shape.clone()))
        .collect();
    specs.push(TensorSpec::new("model.norm.weight", DType::F32, vec![64]));
    let zeros = vec![0u8; 256];
    let tmp = dir.path().join("rewritten.tmp");
    safetensors::write_file(&tmp, &specs, &BTreeMap::new(), |spec| {
        Ok(match s1.tensor(&spec.name) {
            Some(t) => Cow::Borrowed(s1.tensor_data(t).unwrap()),
            None => Cow::Borrowed(&zeros[..]),
        })
    })
    .unwrap();
    drop(s1);
    fs::rename(&tmp, dir.path().join(shard1)).unwrap();
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = shard1.into();
    fs::write(&index_path, index.to_string()).unwrap();
    let (path, got) = malformed(Checkpoint::open(dir.path()));
    assert_eq!(path, dir.path().join(shard2));
    assert!(
        got.contains(
            "tensor `model.norm.weight` is also in shard `model-00001-of-00002.safetensors`"
        ),
        "{got}"
    );
}

#[test]
fn hostile_corpus_is_refused_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    hostile_safetensors::write_all(tmp.path()).unwrap();
    let mut n = 0;
    for e in fs::read_dir(tmp.path().join("safetensors")).unwrap() {
        let path = e.unwrap().path();
        let (named, fault) = malformed(Checkpoint::open(&path));
        assert_eq!(named, path, "{fault}");
        assert!(!fault.is_empty() && !fault.ends_with('.'), "{fault}");
        n += 1;
    }
    assert!(n >= 10, "only {n} hostile safetensors files");
    let mut cards = 0;
    for e in fs::read_dir(tmp.path().join("cards")).unwrap() {
        let dir = e.unwrap().path();
        let (named, fault) = malformed(Checkpoint::open(&dir));
        assert_eq!(named, dir.join("README.md"), "{fault}");
        cards += 1;
    }
    assert!(cards >= 2);
}

#[test]
fn hostile_faults_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    hostile_safetensors::write_all(tmp.path()).unwrap();
    let fault =
        |name: &str| malformed(Checkpoint::open(&tmp.path().join("safetensors").join(name))).1;
    assert!(fault("header_200mb.safetensors").contains("exceeds the safetensors limit"));
    assert!(fault("header_beyond_file.safetensors").contains("claims 5000 bytes"));
    assert!(fault("header_not_utf8.safetensors").contains("not valid UTF-8"));
    assert!(fault("header_not_json.safetensors").contains("not a valid safetensors JSON"));
    assert!(fault("overlap.safetensors").contains("overlaps tensor `a`"));
    assert!(fault("gap.safetensors").contains("gap of 8 unclaimed bytes"));
    assert!(fault("shape_overflow.safetensors").contains("more elements than fit"));
    assert!(fault("data_short.safetensors").contains("truncated"));
    assert!(fault("unknown_dtype.safetensors").contains("unknown dtype `Q4_K`"));
    assert!(fault("duplicate_name.safetensors").contains("appears twice"));
    let card = |name: &str| malformed(Checkpoint::open(&tmp.path().join("cards").join(name))).1;
    assert!(card("card_alias_bomb").contains("alias bomb"));
    assert!(card("card_invalid_utf8").contains("not valid UTF-8"));
    assert!(card("card_deep_nesting").contains("nest more than"));
}

#[test]
fn ten_megabyte_front_matter_is_refused_unparsed() {
    let dir = copy_oracle("llama");
    let mut card = String::from("---\nlicense: mit\n");
    while card.len() < 10 << 20 {
        card.push_str("tags: [unclosed, {broken: \"yaml\n");
    }
    card.push_str("---\n# body\n");
    fs::write(dir.path().join("README.md"), card).unwrap();
    let (path, fault) = malformed(Checkpoint::open(dir.path()));
    assert_eq!(path, dir.path().join("README.md"));
    assert!(
        fault.contains("longer than the 1048576-byte limit (not parsed)"),
        "{fault}"
    );
}

#[test]
fn card_licences_and_chat_template_are_read() {
    let dir = copy_oracle("llama");
    let p = dir.path();
    fs::write(
        p.join("README.md"),
        "---\nlicense: other\nlicense_name: deepseek\nbase_model:\n- deepseek-ai/DeepSeek-V3\n---\n# Model\n",
    )
    .unwrap();
    fs::write(p.join("LICENSE"), "MIT License\n").unwrap();
    fs::write(p.join("Notice.txt"), "Built with Llama\n").unwrap();
    fs::write(p.join("USE_POLICY.md"), "# Acceptable use\n").unwrap();
    fs::write(p.join("chat_template.jinja"), "{{ messages }}").unwrap();
    fs::create_dir(p.join("original")).unwrap();
    fs::write(p.join("original/params.json"), "{}").unwrap();
    let c = Checkpoint::open(p).unwrap();
    let d = c.dir.as_ref().unwrap();
    let card = d.card.as_ref().unwrap();
    assert_eq!(card.path, Path::new("README.md"));
    assert_eq!(card.front_matter["license_name"], "deepseek");
    assert_eq!(card.key_lines["base_model"], 4);
    assert_eq!(card.body, "# Model\n");
    let lic: Vec<&Path> = d.licence_files.iter().map(|l| l.path.as_path()).collect();
    assert_eq!(
        lic,
        [
            Path::new("LICENSE"),
            Path::new("Notice.txt"),
            Path::new("USE_POLICY.md")
        ]
    );
    assert!(c.tokenizer().unwrap().chat_template);
    assert!(c
        .files
        .iter()
        .any(|f| f.path == Path::new("original/params.json")));
}

#[cfg(unix)]
#[test]
fn symlinks_out_of_the_directory_are_not_followed() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.json"), "not json, never read").unwrap();
    let dir = copy_oracle("llama");
    let p = dir.path();
    fs::remove_file(p.join("generation_config.json")).unwrap();
    symlink(
        outside.path().join("secret.json"),
        p.join("generation_config.json"),
    )
    .unwrap();
    symlink(p.join("config.json"), p.join("config_link.json")).unwrap();
    symlink(p.join("nowhere"), p.join("dangling")).unwrap();
    let c = Checkpoint::open(p).unwrap();
    let d = c.dir.as_ref().unwrap();
    assert!(d.generation_config.is_none());
    let skipped: Vec<(String, &str)> = d
        .skipped
        .iter()
        .map(|s| (s.path.display().to_string(), s.why.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("dangling".to_owned(), "dangling symlink"),
            (
                "generation_config.json".to_owned(),
                "symlink pointing outside the directory"
            )
        ]
    );
    let link = c
        .files
        .iter()
        .find(|f| f.path == Path::new("config_link.json"))
        .unwrap();
    assert_eq!(
        link.size,
        fs::metadata(p.join("config.json")).unwrap().len()
    );
}

#[test]
fn weight_choice_follows_transformers() {
    // Several safetensors files and no index: ambiguous.
    let dir = copy_oracle("llama");
    fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("a.safetensors"),
    )
    .unwrap();
    fs::copy(
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    )
    .unwrap();
    fs::remove_file(dir.path().join("expected.safetensors")).unwrap();
    let (path, fault) = malformed(Checkpoint::open(dir.path()));
    assert_eq!(path, dir.path());
    assert!(
        fault.contains("2 safetensors files (`a.safetensors`, `b.safetensors`)"),
        "{fault}"
    );

    // Only a GGUF file: the GGUF reader is asked (its verdict on this stub is its own).
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("model.gguf"), b"GGUF\x03\0\0\0").unwrap();
    fs::write(dir.path().join("config.json"), "{}").unwrap();
    match Checkpoint::open(dir.path()) {
        Ok(c) => assert_eq!(c.weights.format, WeightFormat::Gguf),
        Err(e) => assert_eq!(e.path(), dir.path().join("model.gguf")),
    }

    // No weights at all.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(err, FormatError::NotACheckpoint { .. }), "{err}");

    // A bad config.json is an error naming it.
    let dir = copy_oracle("llama");
    fs::write(dir.path().join("config.json"), "[1, 2]").unwrap();
    let (path, fault) = malformed(Checkpoint::open(dir.path()));
    assert_eq!(path, dir.path().join("config.json"));
    assert!(
        fault.contains("expected a JSON object, found a list"),
        "{fault}"
    );
}

/// A checkpoint claiming 4 GiB of tensor data opens from its header alone: the data is
/// a hole in a sparse file and is never read.
#[test]
fn multi_gigabyte_checkpoint_opens_from_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.safetensors");
    let specs = [
        TensorSpec::new("a", DType::F32, vec![1 << 29]),
        TensorSpec::new("b", DType::BF16, vec![1 << 30]),
    ];
    let (header, _) = safetensors::build_header(&specs, &BTreeMap::new()).unwrap();
    let f = fs::File::create(&path).unwrap();
    use std::io::Write;
    (&f).write_all(&header).unwrap();
    f.set_len(header.len() as u64 + (4u64 << 30)).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    assert_eq!(c.weights.parameter_count(), (1 << 29) + (1 << 30));
    assert_eq!(c.weights.tensor("b").unwrap().len, 2 << 30);
    assert_eq!(c.files[0].size, header.len() as u64 + (4u64 << 30));
}

#[test]
fn tokenizer_summary_from_hfdir_fields() {
    let tj = fs::read_to_string(oracles().join("llama/tokenizer.json")).unwrap();
    let d = HfDir {
        tokenizer_json: Some(tj),
        tokenizer_config: Some(serde_json::json!({
            "bos_token": {"content": "<|endoftext|>", "__type": "AddedToken"},
            "add_bos_token": false,
            "chat_template": [{"name": "default", "template": "{{ x }}"}]
        })),
        ..HfDir::default()
    };
    let s = d.tokenizer_summary().unwrap();
    assert_eq!(s.bos.unwrap().id, 0);
    assert_eq!(s.add_bos, Some(false));
    assert!(s.chat_template);
    assert_eq!(s.eos, None);
}
