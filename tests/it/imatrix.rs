//! Importance-matrix files (`modelgate::formats::imatrix`): written files read back the same
//! (property test), gguf-py (the PyPI `gguf` package, llama.cpp's own Python reader) reads
//! our GGUF imatrix with llama-imatrix's names, shapes, types and keys, and hostile files
//! fail with exit-2 errors that name the tensor.

use std::collections::BTreeMap;
use std::path::Path;

use modelgate::formats::imatrix::{Entry, Imatrix, ImatrixFormat};
use proptest::prelude::*;

use crate::support;

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (1usize..40, 1usize..5).prop_flat_map(|(columns, slices)| {
        (
            prop::collection::vec(0.0f32..1e6, columns * slices),
            // Token counts as llama-imatrix stores them; at least one slice saw a token.
            prop::collection::vec(0u64..100_000, slices),
        )
            .prop_map(move |(sums, mut counts)| {
                if counts.iter().all(|c| *c == 0) {
                    counts[0] = 1;
                }
                Entry {
                    columns,
                    sums,
                    counts,
                }
            })
    })
}

fn imatrix_strategy() -> impl Strategy<Value = Imatrix> {
    (
        prop::collection::btree_map(
            "[a-z]{1,8}(\\.[a-z0-9_]{1,12}){0,3}",
            entry_strategy(),
            1..6,
        ),
        prop::collection::vec("[ -~]{0,20}", 0..3),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(entries, datasets, chunk_count, chunk_size)| Imatrix {
            format: ImatrixFormat::Gguf,
            entries,
            datasets,
            chunk_count,
            chunk_size,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn written_imatrix_reads_back_the_same(m in imatrix_strategy()) {
        let bytes = m.to_gguf_bytes().unwrap();
        let back = Imatrix::parse_bytes(Path::new("m.gguf"), &bytes).unwrap();
        prop_assert_eq!(&back, &m);
        for (name, e) in &m.entries {
            let imp = back.importance(name).unwrap();
            prop_assert_eq!(imp.len(), e.columns * e.slices());
            for (k, v) in imp.iter().enumerate() {
                let c = e.counts[k / e.columns];
                let want = if c == 0 { 1.0 } else { e.sums[k] / c as f32 };
                prop_assert_eq!(v.to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Imatrix::parse_bytes(Path::new("x"), &bytes);
        let mut gguf = b"GGUF".to_vec();
        gguf.extend(&bytes);
        let _ = Imatrix::parse_bytes(Path::new("x.gguf"), &gguf);
    }
}

fn sample() -> Imatrix {
    let mut entries = BTreeMap::new();
    entries.insert(
        "blk.0.ffn_up.weight".to_owned(),
        Entry {
            columns: 3,
            sums: vec![1.5, 0.0, 7.25],
            counts: vec![4096],
        },
    );
    entries.insert(
        "blk.0.ffn_down_exps.weight".to_owned(),
        Entry {
            columns: 2,
            sums: vec![1.0, 2.0, 3.0, 4.0],
            counts: vec![10, 20],
        },
    );
    Imatrix {
        format: ImatrixFormat::Gguf,
        entries,
        datasets: vec!["eval.txt".into()],
        chunk_count: 16,
        chunk_size: 256,
    }
}

/// gguf-py reads our file as llama-imatrix's: `general.type`, the three `imatrix.*` keys
/// with their types, and per tensor an F32 `.in_sum2` of ne `{columns, slices}` then an F32
/// `.counts` of ne `{1, slices}`, tensors in name order, values as written.
#[test]
fn gguf_py_reads_our_imatrix_as_llama_imatrix_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imatrix.gguf");
    sample().write_file(&path).unwrap();
    let script = r#"
import json, sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
kv = {}
for f in r.fields.values():
    if f.name.startswith("GGUF."):
        continue
    kv[f.name] = [f.types[0].name, f.contents()]
ts = [[t.name, t.tensor_type.name, [int(n) for n in t.shape], [float(v) for v in t.data.flatten()]]
      for t in r.tensors]
print(json.dumps({"kv": kv, "tensors": ts}))
"#;
    let out = support::oracle_python()
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("run the oracle Python");
    assert!(
        out.status.success(),
        "gguf-py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got["kv"],
        serde_json::json!({
            "general.type": ["STRING", "imatrix"],
            "imatrix.datasets": ["ARRAY", ["eval.txt"]],
            "imatrix.chunk_count": ["UINT32", 16],
            "imatrix.chunk_size": ["UINT32", 256],
        })
    );
    assert_eq!(
        got["tensors"],
        serde_json::json!([
            [
                "blk.0.ffn_down_exps.weight.in_sum2",
                "F32",
                [2, 2],
                [1.0, 2.0, 3.0, 4.0]
            ],
            [
                "blk.0.ffn_down_exps.weight.counts",
                "F32",
                [1, 2],
                [10.0, 20.0]
            ],
            [
                "blk.0.ffn_up.weight.in_sum2",
                "F32",
                [3, 1],
                [1.5, 0.0, 7.25]
            ],
            ["blk.0.ffn_up.weight.counts", "F32", [1, 1], [4096.0]],
        ])
    );
    let back = Imatrix::read(&path).unwrap();
    assert_eq!(back, sample());
}

#[test]
fn hostile_imatrix_files_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = sample();
    m.entries.get_mut("blk.0.ffn_up.weight").unwrap().sums[1] = -2.0;
    let path = dir.path().join("neg.gguf");
    std::fs::write(&path, m.to_gguf_bytes().unwrap()).unwrap();
    let err = Imatrix::read(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "`{}`: imatrix entry `blk.0.ffn_up.weight`: sum 1 is -2; sums of squares must be finite and non-negative",
            path.display()
        )
    );
    assert!(err.hint().is_some());
    let err = Imatrix::read(&dir.path().join("missing.dat")).unwrap_err();
    assert!(err.to_string().starts_with("cannot read"));
}

/// Run `modelgate convert` with ARGS, returning (exit code, stderr).
fn convert_status(args: &[&str]) -> (i32, String) {
    let mut a = vec!["convert"];
    a.extend_from_slice(args);
    let o = support::modelgate(&a);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// An imatrix for every 2-D weight but the token embedding of the GGUF at `model`, with
/// uneven, seeded sums (some columns much larger, some zero) and a token count.
fn imatrix_for(model: &Path) -> Imatrix {
    let c = modelgate::formats::Checkpoint::open(model).unwrap();
    let mut entries = BTreeMap::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for t in &c.weights.tensors {
        if t.shape.len() != 2 || t.name.as_str() == "token_embd.weight" {
            continue;
        }
        let columns = *t.shape.last().unwrap() as usize;
        let sums = (0..columns)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                match i % 7 {
                    0 => 0.0,
                    3 => 500.0 * u,
                    _ => u * u * 3.0,
                }
            })
            .collect();
        entries.insert(
            t.name.as_str().to_owned(),
            Entry {
                columns,
                sums,
                counts: vec![96],
            },
        );
    }
    Imatrix {
        format: ImatrixFormat::Gguf,
        entries,
        datasets: vec!["calibration.txt".into()],
        chunk_count: 3,
        chunk_size: 32,
    }
}

/// `convert --imatrix` quantizes every tensor as ggml's `quantize_<type>` does with that
/// tensor's importance (ggml compiled from the llama-cpp-python sdist, as in `quant.rs`), for the
/// legacy types and, through their fallbacks on width-64 rows, the K-quant recipes; the
/// summary records the imatrix's digest.
#[test]
fn convert_with_an_imatrix_matches_ggml_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::oracle_dir("llama");
    let f32_path = dir.path().join("f32.gguf");
    let (code, err) = convert_status(&[
        src.to_str().unwrap(),
        "-o",
        f32_path.to_str().unwrap(),
        "--type",
        "F32",
    ]);
    assert_eq!(code, 0, "{err}");
    let m = imatrix_for(&f32_path);
    let im_path = dir.path().join("imatrix.gguf");
    let im_bytes = m.to_gguf_bytes().unwrap();
    std::fs::write(&im_path, &im_bytes).unwrap();
    let f32c = modelgate::formats::Checkpoint::open(&f32_path).unwrap();
    let mut jobs = Vec::new();
    let mut ours = Vec::new();
    for ty in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q4_K_M", "Q6_K"] {
        let out = dir.path().join(format!("{ty}.gguf"));
        let o = support::modelgate(&[
            "convert",
            f32_path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--type",
            ty,
            "--imatrix",
            im_path.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            s["imatrix"]["sha256"],
            modelgate::types::Sha256Digest::of(&im_bytes).to_hex()
        );
        assert_eq!(s["imatrix"]["entries"], m.entries.len());
        let q = modelgate::formats::Checkpoint::open(&out).unwrap();
        for t in &q.weights.tensors {
            let modelgate::formats::DType::Ggml(g) = t.dtype else {
                continue;
            };
            if !g.is_quantized() {
                continue;
            }
            let Some(imp) = m.importance(t.name.as_str()) else {
                continue;
            };
            let src_info = f32c.weights.tensor(t.name.as_str()).unwrap();
            let input = dir.path().join(format!("{ty}.{}.f32", t.name));
            std::fs::write(&input, f32c.weights.tensor_data(src_info).unwrap()).unwrap();
            let imp_path = dir.path().join(format!("{ty}.{}.imp", t.name));
            let ib: Vec<u8> = imp.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(&imp_path, ib).unwrap();
            let output = dir.path().join(format!("{ty}.{}.ggml", t.name));
            jobs.push(
                serde_json::json!({"oracle": "ggml", "op": "quant", "type": g.name(),
                "input": input, "output": output, "row_len": imp.len(), "importance": imp_path}),
            );
            ours.push((
                format!("{ty} {} {g}", t.name),
                q.weights.tensor_data(t).unwrap().to_vec(),
                output,
            ));
        }
    }
    let file = dir.path().join("jobs.json");
    std::fs::write(&file, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let out = support::oracle_python()
        .arg(support::repo().join("scripts/gguf_quant_oracle.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(results.iter().all(|r| r["status"] == "ok"), "{results:?}");
    let differ: Vec<&str> = ours
        .iter()
        .filter(|(_, mine, theirs)| *mine != std::fs::read(theirs).unwrap())
        .map(|(tag, _, _)| tag.as_str())
        .collect();
    assert!(ours.len() >= 40, "only {} tensors compared", ours.len());
    assert!(differ.is_empty(), "differ from ggml: {differ:#?}");
}

/// An imatrix that belongs to another model, or holds a negative sum, stops the conversion
/// with exit 2 and a message naming the problem; nothing is written.
#[test]
fn mismatched_or_bad_imatrix_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::oracle_dir("llama");
    let f32_path = dir.path().join("f32.gguf");
    let (code, err) = convert_status(&[
        src.to_str().unwrap(),
        "-o",
        f32_path.to_str().unwrap(),
        "--type",
        "F32",
    ]);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("q.gguf");
    let run = |m: &Imatrix, name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, m.to_gguf_bytes().unwrap()).unwrap();
        let (code, err) = convert_status(&[
            f32_path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--type",
            "Q4_0",
            "--imatrix",
            p.to_str().unwrap(),
        ]);
        assert!(!out.exists());
        (code, err.replace(dir.path().to_str().unwrap(), "TMP"))
    };
    let good = imatrix_for(&f32_path);

    let mut m = good.clone();
    let e = m.entries.remove("blk.0.attn_q.weight").unwrap();
    m.entries.insert("blk.7.attn_q.weight".into(), e);
    let (code, err) = run(&m, "stranger.gguf");
    assert_eq!(code, 2);
    assert!(
        err.contains("importance matrix `TMP/stranger.gguf` does not match the model: 1 of its 15 entries name no tensor of the model (`blk.7.attn_q.weight`)"),
        "{err}"
    );

    let mut m = good.clone();
    let e = m.entries.get_mut("blk.1.ffn_up.weight").unwrap();
    e.columns = 32;
    e.sums.truncate(32);
    let (code, err) = run(&m, "columns.gguf");
    assert_eq!(code, 2);
    assert!(
        err.contains("`blk.1.ffn_up.weight` has 32 values, but the tensor has 64 columns"),
        "{err}"
    );

    let mut m = good.clone();
    m.entries.get_mut("blk.1.ffn_down.weight").unwrap().sums[5] = f32::NAN;
    let (code, err) = run(&m, "nan.gguf");
    assert_eq!(code, 2);
    assert!(err.contains("cannot use the importance matrix"), "{err}");
    assert!(err.contains("blk.1.ffn_down.weight"), "{err}");

    let mut m = good;
    m.entries.get_mut("blk.0.ffn_up.weight").unwrap().sums[0] = -1.0;
    let (code, err) = run(&m, "negative.gguf");
    assert_eq!(code, 2);
    assert!(err.contains("must be finite and non-negative"), "{err}");
}
