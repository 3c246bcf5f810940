//! GGUF split sets and sharded conversion end to end: `convert --split-max-size` /
//! `--split-max-tensors` write llama.cpp-named parts with the right `split.*` keys that read
//! back (through modelgate and independently through gguf-py) as the single-file output;
//! `convert --shard I/N` run as N processes then `merge` gives the single-process bytes;
//! `merge --keep-split` validates; a tampered, missing or foreign share exits 2 naming the
//! file, and nothing is written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use modelgate::formats::gguf::{self, split::SplitInfo};
use modelgate::formats::{Checkpoint, MetaValue};

use crate::support::{fixture, modelgate, repo};

fn tiny() -> PathBuf {
    fixture("models/tiny-llama")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "modelgate failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(args: &[&str]) -> Output {
    let out = modelgate(args);
    ok(&out);
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn single(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let out = dir.join("single.gguf");
    let src = tiny();
    let mut a = vec!["convert", s(&src), "-o", s(&out), "-q"];
    a.extend_from_slice(extra);
    run(&a);
    std::fs::read(out).unwrap()
}

/// Every file in `dir`, sorted by name.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn split_info(meta: &[(String, MetaValue)]) -> SplitInfo {
    gguf::split::split_info(Path::new("part"), meta)
        .unwrap()
        .expect("split keys")
}

/// gguf-py's dump of one file; fails the test, naming the package, without gguf-py.
fn gguf_py(path: &Path) -> Value {
    crate::support::require_oracle("gguf", "gguf");
    let out = crate::support::oracle_python()
        .arg(repo().join("scripts/gguf_dump.py"))
        .arg(path)
        .output()
        .expect("run scripts/gguf_dump.py");
    assert!(
        out.status.success(),
        "gguf_dump.py failed on `{}`: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The parts of a set in `dir`: each is GGUF v3 with llama.cpp's split keys (metadata in
/// the first only), gguf-py agrees, and the set reads back with the tensors (and bytes) of
/// `single`.
fn check_set(dir: &Path, prefix: &str, count: u16, single: &Path) {
    let names: Vec<String> = (0..count)
        .map(|i| gguf::split::part_name(prefix, i, count))
        .collect();
    let whole = gguf::open(single).unwrap();
    let mut seen = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name);
        let part = gguf::open(&path).unwrap();
        assert_eq!(part.gguf.unwrap().version, 3);
        let info = split_info(&part.metadata);
        assert_eq!(
            info,
            SplitInfo {
                no: i as u16,
                count,
                tensors: whole.tensors.len() as u64
            }
        );
        let keys: Vec<&str> = part.metadata.iter().map(|(k, _)| k.as_str()).collect();
        if i == 0 {
            // The model's metadata, unchanged and in order, then the split keys.
            let n = whole.metadata.len();
            assert_eq!(part.metadata[..n], whole.metadata[..]);
            assert_eq!(
                keys[n..],
                ["split.no", "split.count", "split.tensors.count"]
            );
        } else {
            assert_eq!(keys, ["split.no", "split.count", "split.tensors.count"]);
        }
        assert!(matches!(part.metadata[keys.len() - 3].1, MetaValue::U16(_)));
        assert!(matches!(part.metadata[keys.len() - 2].1, MetaValue::U16(_)));
        assert!(matches!(part.metadata[keys.len() - 1].1, MetaValue::I32(_)));
        assert!(!part.tensors.is_empty(), "`{name}` holds no tensor");
        for t in &part.tensors {
            seen.push(t.name.clone());
        }
        let py = gguf_py(&path);
        assert_eq!(py["version"], 3);
        let meta = py["metadata"].as_array().unwrap();
        let get = |k: &str| {
            meta.iter()
                .find(|m| m["key"] == k)
                .unwrap_or_else(|| panic!("gguf-py finds no `{k}` in `{name}`"))
        };
        assert_eq!(get("split.no")["types"][0], "UINT16");
        assert_eq!(get("split.no")["value"], i);
        assert_eq!(get("split.count")["types"][0], "UINT16");
        assert_eq!(get("split.count")["value"], count);
        assert_eq!(get("split.tensors.count")["types"][0], "INT32");
        assert_eq!(get("split.tensors.count")["value"], whole.tensors.len());
        let py_names: Vec<&str> = py["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        let ours: Vec<&str> = part.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(py_names, ours);
    }
    let names_whole: Vec<_> = whole.tensors.iter().map(|t| t.name.clone()).collect();
    assert_eq!(
        seen, names_whole,
        "the parts hold the tensors of the single file, in order"
    );
    // Read back as one checkpoint through its first file.
    let set = Checkpoint::open(&dir.join(&names[0])).unwrap();
    assert_eq!(set.weights.files.len(), usize::from(count));
    assert_eq!(set.files.len(), usize::from(count));
    assert_eq!(set.weights.metadata, whole.metadata);
    assert_eq!(set.weights.tensors.len(), whole.tensors.len());
    for (a, b) in set.weights.tensors.iter().zip(&whole.tensors) {
        assert_eq!((&a.name, a.dtype, &a.shape), (&b.name, b.dtype, &b.shape));
        assert_eq!(
            set.weights.tensor_data(a).unwrap(),
            whole.tensor_data(b).unwrap(),
            "data of `{}`",
            a.name
        );
    }
    // Any other part points at the first.
    let e = Checkpoint::open(&dir.join(&names[1]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("open the first part"), "{e}");
}

#[test]
fn split_by_size_and_by_count_name_key_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    single(tmp.path(), &[]);
    let single_path = tmp.path().join("single.gguf");

    let by_size = tmp.path().join("size");
    std::fs::create_dir(&by_size).unwrap();
    let out = run(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&by_size.join("m.gguf")),
        "-q",
        "--split-max-size",
        "100K",
        "--json",
    ]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["tensors"], 21);
    let files = listing(&by_size);
    assert_eq!(
        files,
        [
            "m-00001-of-00003.gguf",
            "m-00002-of-00003.gguf",
            "m-00003-of-00003.gguf"
        ],
        "three parts, nothing else (no temporary files)"
    );
    // gguf-split's rule: tensor data (padded) of each part stays within the limit unless
    // one tensor alone is larger.
    for name in &files {
        let part = gguf::open(&by_size.join(name)).unwrap();
        let data: u64 = part.tensors.iter().map(|t| t.len.div_ceil(32) * 32).sum();
        assert!(
            data <= 100_000 || part.tensors.len() == 1,
            "`{name}`: {data} bytes"
        );
    }
    check_set(&by_size, "m", 3, &single_path);

    let by_count = tmp.path().join("count");
    std::fs::create_dir(&by_count).unwrap();
    run(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&by_count.join("m.gguf")),
        "-q",
        "--split-max-tensors",
        "8",
    ]);
    assert_eq!(listing(&by_count).len(), 3);
    check_set(&by_count, "m", 3, &single_path);
    let sizes: Vec<usize> = listing(&by_count)
        .iter()
        .map(|n| gguf::open(&by_count.join(n)).unwrap().tensors.len())
        .collect();
    assert_eq!(sizes, [8, 8, 5]);

    // Deterministic: the same conversion gives the same bytes.
    let again = tmp.path().join("again");
    std::fs::create_dir(&again).unwrap();
    run(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&again.join("m.gguf")),
        "-q",
        "--split-max-size",
        "100K",
    ]);
    for n in listing(&by_size) {
        assert_eq!(
            std::fs::read(by_size.join(&n)).unwrap(),
            std::fs::read(again.join(&n)).unwrap(),
            "{n}"
        );
    }
}

/// Run `convert --shard I/N` for every I as concurrent processes into `dir`.
fn spawn_shards(dir: &Path, n: u16, extra: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("m.gguf");
    let children: Vec<_> = (1..=n)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_modelgate"))
                .args(["convert", s(&tiny()), "-o", s(&out), "-q", "--threads", "1"])
                .args(["--shard", &format!("{i}/{n}")])
                .args(extra)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn modelgate")
        })
        .collect();
    for c in children {
        ok(&c.wait_with_output().unwrap());
    }
}

fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn three_shares_merge_to_the_single_process_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = single(tmp.path(), &["--type", "Q8_0"]);
    let dir = tmp.path().join("shares");
    spawn_shards(&dir, 3, &["--type", "Q8_0"]);
    assert_eq!(
        listing(&dir),
        [
            "m-00001-of-00003.gguf",
            "m-00001-of-00003.shard.json",
            "m-00002-of-00003.gguf",
            "m-00002-of-00003.shard.json",
            "m-00003-of-00003.gguf",
            "m-00003-of-00003.shard.json"
        ]
    );
    // The shares agree on the plan and are balanced by bytes.
    let sidecars: Vec<Value> = (1..=3)
        .map(|i| {
            serde_json::from_slice(
                &std::fs::read(dir.join(format!("m-0000{i}-of-00003.shard.json"))).unwrap(),
            )
            .unwrap()
        })
        .collect();
    assert!(sidecars
        .iter()
        .all(|s| s["plan_sha256"] == sidecars[0]["plan_sha256"]));
    let bytes: Vec<u64> = sidecars
        .iter()
        .map(|s| s["bytes"].as_u64().unwrap())
        .collect();
    let (lo, hi) = (bytes.iter().min().unwrap(), bytes.iter().max().unwrap());
    assert!(*hi < lo * 2, "unbalanced shares: {bytes:?}");
    check_set(&dir, "m", 3, &tmp.path().join("single.gguf"));

    // Merge from the directory, and from the first part: the single-process bytes.
    let merged = tmp.path().join("merged.gguf");
    run(&["merge", s(&dir), "-o", s(&merged)]);
    assert_eq!(std::fs::read(&merged).unwrap(), whole, "merged != single");
    let merged2 = tmp.path().join("merged2.gguf");
    let first = dir.join("m-00001-of-00003.gguf");
    let out = run(&["merge", s(&first), "-o", s(&merged2), "--json"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["shares"], 3);
    assert_eq!(summary["tensors"], 21);
    assert_eq!(std::fs::read(&merged2).unwrap(), whole);

    // --keep-split checks and leaves the set as it is.
    let out = run(&["merge", s(&first), "--keep-split"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 shares checked"), "{text}");
    assert_eq!(listing(&dir).len(), 6);
}

#[test]
fn tampered_missing_and_foreign_shares_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    spawn_shards(&good, 3, &[]);
    let copy = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in listing(&good) {
            std::fs::copy(good.join(&f), d.join(&f)).unwrap();
        }
        d
    };
    let out_path = tmp.path().join("out.gguf");

    // A byte of tensor data changed in share 2.
    let tampered = copy("tampered");
    let p2 = tampered.join("m-00002-of-00003.gguf");
    let mut bytes = std::fs::read(&p2).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 0x55;
    std::fs::write(&p2, bytes).unwrap();
    let out = modelgate(&["merge", s(&tampered), "-o", s(&out_path)]);
    fails_with(
        &out,
        &[
            "m-00002-of-00003.gguf",
            "sha256",
            "changed after conversion",
        ],
    );
    let out = modelgate(&["merge", s(&tampered), "--keep-split"]);
    fails_with(&out, &["m-00002-of-00003.gguf", "sha256"]);

    // Share 3 is missing (part and sidecar), given as a directory or as the first part.
    let missing = copy("missing");
    std::fs::remove_file(missing.join("m-00003-of-00003.gguf")).unwrap();
    std::fs::remove_file(missing.join("m-00003-of-00003.shard.json")).unwrap();
    let out = modelgate(&["merge", s(&missing), "-o", s(&out_path)]);
    fails_with(&out, &["m-00003-of-00003.gguf", "share 3 of 3 is missing"]);
    let first = missing.join("m-00001-of-00003.gguf");
    let out = modelgate(&["merge", s(&first), "-o", s(&out_path)]);
    fails_with(&out, &["m-00003-of-00003.shard.json", "no such sidecar"]);

    // Share 2 from another plan (a different --type).
    let other = tmp.path().join("other");
    spawn_shards(&other, 3, &["--type", "Q8_0"]);
    let foreign = copy("foreign");
    for f in ["m-00002-of-00003.gguf", "m-00002-of-00003.shard.json"] {
        std::fs::copy(other.join(f), foreign.join(f)).unwrap();
    }
    let out = modelgate(&["merge", s(&foreign), "-o", s(&out_path)]);
    fails_with(
        &out,
        &[
            "m-00002-of-00003.shard.json",
            "plan sha256",
            "different sources, options",
        ],
    );

    // Nothing was written, and the inputs are untouched.
    assert!(!out_path.exists());
    assert_eq!(
        listing(tmp.path())
            .iter()
            .filter(|n| n.contains("out"))
            .count(),
        0
    );
    assert_eq!(listing(&good).len(), 6);
}

#[test]
fn bad_split_options_exit_2_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let src = tiny();
    for (args, needle) in [
        (vec!["--shard", "4/3"], "--shard `4/3`"),
        (vec!["--shard", "1/50"], "only 21 tensors"),
        (vec!["--split-max-size", "12Q"], "--split-max-size `12Q`"),
        (vec!["--split-max-tensors", "0"], "at least 1"),
    ] {
        let mut a = vec!["convert", s(&src), "-o", s(&out), "-q"];
        a.extend(args);
        fails_with(&modelgate(&a), &[needle]);
    }
    let st = tmp.path().join("m.safetensors");
    fails_with(
        &modelgate(&[
            "convert",
            s(&tiny()),
            "-o",
            s(&st),
            "--split-max-size",
            "1M",
        ]),
        &["split and sharded output is GGUF"],
    );
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}
