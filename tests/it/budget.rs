//! Size-budget mixes (`convert --target-bpw`, `--max-size`) on the tiny Llama fixture: the
//! mix respects the budget, is the same on every run, is a GGUF that gguf-py reads with
//! the reported types and that the engine runs; budgets out of range exit 2.

use std::fs;

use serde_json::Value;

use crate::support::{fixture, modelgate, oracle_python};

fn budget_convert(out: &std::path::Path, extra: &[&str]) -> Value {
    let src = fixture("models/tiny-llama");
    let text = fixture("text/eval.txt");
    let mut args = vec![
        "convert",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--threads",
        "2",
        "--json",
        "--quiet",
    ];
    args.extend(extra);
    let o = modelgate(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn target_bpw_mix_fits_is_deterministic_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.gguf");
    let b = tmp.path().join("b.gguf");
    let ja = budget_convert(&a, &["--target-bpw", "6"]);
    let jb = budget_convert(&b, &["--target-bpw", "6"]);
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert_eq!(ja["mix"], jb["mix"]);

    let bpw = ja["summary"]["bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= 6.0, "{bpw}");
    // Within one cheapest step of the budget: the choice spends what it is given.
    assert!(bpw > 5.0, "{bpw}");
    let budget_bytes = ja["budget_bytes"].as_u64().unwrap();
    let params = ja["summary"]["parameters"].as_u64().unwrap();
    assert!(budget_bytes * 8 <= 6 * params);
    // Probes measured something, and the written file was measured against the source.
    assert!(!ja["probes"].as_array().unwrap().is_empty());
    assert!(ja["probes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["measured_kld"].as_f64().unwrap() >= 0.0));
    let measured = ja["measured"]["mean_kld"]["value"].as_f64().unwrap();
    assert!(measured > 0.0 && measured < 1.0, "{measured}");

    // gguf-py reads the file and finds the reported type of every chosen tensor.
    let py = r#"
import json, sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
types = {t.name: t.tensor_type.name for t in r.tensors}
ft = int(r.fields["general.file_type"].parts[-1][0])
print(json.dumps({"types": types, "file_type": ft}))
"#;
    let o = oracle_python()
        .args(["-c", py, a.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read: Value = serde_json::from_slice(&o.stdout).unwrap();
    for m in ja["mix"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        assert_eq!(read["types"][name], m["type"], "{name}");
    }
    assert!(ja["mix"].as_array().unwrap().len() >= 2 * 7 + 2);

    // The engine runs it.
    let o = modelgate(&[
        "logits",
        a.to_str().unwrap(),
        "--prompt",
        "Once upon",
        "--top",
        "3",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn max_size_mix_fits_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let j = budget_convert(&out, &["--max-size", "150K", "--no-measure"]);
    let size = fs::metadata(&out).unwrap().len();
    assert!(size <= 150_000, "{size}");
    assert!(j.get("measured").is_none());
}

#[test]
fn budgets_out_of_range_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let src = fixture("models/tiny-llama");
    let text = fixture("text/eval.txt");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "convert",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ];
        a.extend(extra);
        modelgate(&a)
    };
    let t = text.to_str().unwrap();
    for (name, extra) in [
        (
            "budget_below_smallest",
            vec!["--target-bpw", "1", "--text", t],
        ),
        ("budget_above_f16", vec!["--target-bpw", "40", "--text", t]),
        (
            "budget_max_size_too_small",
            vec!["--max-size", "10K", "--text", t],
        ),
        ("budget_bad_size", vec!["--max-size", "lots", "--text", t]),
    ] {
        let o = run(&extra);
        assert_eq!(o.status.code(), Some(2), "{name}");
        assert!(!out.exists(), "{name}");
        insta::assert_snapshot!(name, String::from_utf8_lossy(&o.stderr));
    }
    // No calibration text, or a type as well as a budget: usage errors.
    let o = run(&["--target-bpw", "5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--text"));
    let o = run(&["--target-bpw", "5", "--type", "Q4_0", "--text", t]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists());
}
