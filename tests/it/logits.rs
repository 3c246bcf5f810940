//! `modelgate logits --ids ... --out`: the full-logits dump against transformers' own
//! `expected.safetensors`, and the errors of its id inputs.

use std::fs;

use safetensors::SafeTensors;

use crate::support::{modelgate, oracle_dir};

/// `input_ids` (as i64) and `logits` (as f32) of a safetensors file.
fn read(path: &std::path::Path) -> (Vec<i64>, Vec<usize>, Vec<f32>) {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let ids: Vec<i64> = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let lg = st.tensor("logits").unwrap();
    let shape = lg.shape().to_vec();
    let vals = lg
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids, shape, vals)
}

#[test]
fn full_logits_dump_matches_transformers_layout_and_values() {
    let dir = oracle_dir("llama");
    let (ids, shape, want) = read(&dir.join("expected.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let r = modelgate(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids",
        &list.join(","),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("wrote the logits of 48 positions"));
    let (got_ids, got_shape, got) = read(&out);
    assert_eq!(got_ids, ids);
    assert_eq!(got_shape, shape, "the oracle layout [1, T, vocab]");
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-4, "max |delta logit| {max}");

    // the same ids from a file (a JSON list), byte-identical output
    let ids_file = tmp.path().join("ids.json");
    fs::write(&ids_file, format!("[{}]\n", list.join(", "))).unwrap();
    let out2 = tmp.path().join("again.safetensors");
    let r = modelgate(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids-file",
        ids_file.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(r.stderr.is_empty());
    assert_eq!(fs::read(&out).unwrap(), fs::read(&out2).unwrap());
}

#[test]
fn bad_ids_are_input_errors_and_write_nothing() {
    let dir = oracle_dir("llama");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.safetensors");
    let bad = tmp.path().join("ids.txt");
    fs::write(&bad, "1 2 three 4").unwrap();
    let r = modelgate(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids-file",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("item 3 is `three`"), "{err}");
    assert!(err.contains("ids.txt"), "{err}");
    // an id past the vocabulary (512)
    let r = modelgate(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids",
        "1,2,600",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("600"));
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1, "only ids.txt");
}
