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
