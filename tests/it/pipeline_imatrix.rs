//! Pipelines with importance matrices and size budgets on the tiny Llama fixture: one
//! `imatrix: {text}` computed once for an IQ4_XS, a Q4_K_M and a `target_bpw` target, the
//! calibration text's and the imatrix's digests in `report.json`, `report.md` and both BOMs
//! (each validated), a cached rerun, the same bytes from `imatrix: {file}`, and bad
//! pipeline files refused with exit 2 naming the file and the target.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::pipeline::{assert_spdx3_valid, assert_valid, cyclonedx_validator, json_file, text};
use crate::support::{assert_schema, fixture, repo};

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .current_dir(dir)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("run modelgate")
}

/// A folder with the calibration text as `calib.txt` and the pipeline file `p.yaml`
/// (`MODEL` replaced by the tiny Llama fixture), checked against the pipeline schema when
/// `valid`.
fn pipeline(dir: &Path, yaml: &str, valid: bool) -> String {
    std::fs::copy(fixture("text/eval.txt"), dir.join("calib.txt")).unwrap();
    let model = fixture("models/tiny-llama");
    let yaml = yaml.replace("MODEL", model.to_str().unwrap());
    if valid {
        let doc: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_schema("schemas/pipeline.schema.json", &doc);
    }
    std::fs::write(dir.join("p.yaml"), &yaml).unwrap();
    "p.yaml".to_owned()
}

fn sha256_file(p: &Path) -> String {
    modelgate::types::Sha256Digest::of(&std::fs::read(p).unwrap()).to_hex()
}

/// Step timings, the imatrix perplexity and local paths vary; the rest is the snapshot.
fn redact(s: &str) -> String {
    let s = s.replace(repo().to_str().unwrap(), "[REPO]");
    let secs = regex::Regex::new(r"\d+\.\d+ s\)").unwrap();
    let ppl = regex::Regex::new(r"perplexity \d+\.\d+").unwrap();
    ppl.replace_all(&secs.replace_all(&s, "[T] s)"), "perplexity [PPL]")
        .into_owned()
}

const PIPELINE: &str = "\
model: MODEL
out: out
steps:
  scan: {}
  convert:
    targets:
      - name: iq4
        type: IQ4_XS
        format: gguf
        imatrix: { text: calib.txt, ctx: 64, chunks: 2 }
      - name: q4
        type: Q4_K_M
        format: gguf
        imatrix: { text: ./calib.txt, ctx: 64, chunks: 2 }
      - name: mix
        format: gguf
        target_bpw: 5.5
        probes: 1
        imatrix: { text: calib.txt, ctx: 64, chunks: 2 }
  verify: {}
  parity:
    text: calib.txt
    ctx: 64
    chunks: 2
";

#[test]
fn one_imatrix_serves_three_targets_and_its_digests_reach_report_and_boms() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = pipeline(dir, PIPELINE, true);
    let o = run_in(dir, &["run", &p]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = dir.join("out");
    let report = json_file(&out.join("report.json"));
    let steps = report["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    // computed once, before the conversions, for all three targets
    assert_eq!(names.iter().filter(|n| n.starts_with("imatrix")).count(), 1);
    assert_eq!(names[2], "imatrix:iq4");
    let imatrix_sha = steps[2]["outputs"]["iq4.imatrix.gguf"]
        .as_str()
        .unwrap()
        .to_owned();
    let text_sha = sha256_file(&dir.join("calib.txt"));
    assert_eq!(steps[2]["inputs"]["text:calib.txt"], text_sha.as_str());

    // every artifact names the same matrix and text; the file on disk has that digest
    let mut summary = serde_json::Map::new();
    for a in steps.iter().filter_map(|s| s.get("artifact")) {
        let c = &a["calibration"];
        assert_eq!(c["imatrix"]["sha256"], imatrix_sha.as_str());
        assert_eq!(c["text"]["sha256"], text_sha.as_str());
        let mut entry = json!({ "file_type": a["file_type"], "calibration": c });
        if let Some(m) = a.get("mix") {
            entry["mix"] = json!({
                "budget": m["budget"],
                "groups": m["groups"].as_array().unwrap().iter()
                    .map(|g| format!("{} {}", g["group"].as_str().unwrap(), types(&g["types"])))
                    .collect::<Vec<_>>(),
            });
            assert!(a["bits_per_weight"].as_f64().unwrap() <= 5.5, "{a:#}");
            assert!(m["probes"].as_u64().unwrap() >= 9, "{m:#}");
        }
        summary.insert(a["name"].as_str().unwrap().to_owned(), entry);
    }
    assert_eq!(sha256_file(&out.join("iq4.imatrix.gguf")), imatrix_sha);
    assert_eq!(report["verdict"], "pass");

    // the BOMs carry the digests and pass their validators
    let cdx = json_file(&out.join("bom.cdx.json"));
    assert_valid(&cyclonedx_validator(), &cdx, "bom.cdx.json");
    let mix = cdx["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mix")
        .unwrap();
    let cdx_props: Vec<String> = mix["modelCard"]["properties"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .unwrap()
                .starts_with("modelgate:calibration:")
        })
        .map(|p| {
            format!(
                "{} = {}",
                p["name"].as_str().unwrap(),
                p["value"].as_str().unwrap()
            )
        })
        .collect();
    let spdx_path = out.join("bom.spdx.json");
    assert_spdx3_valid(&[&spdx_path]);
    let spdx = json_file(&spdx_path);
    let pkg = spdx["@graph"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "ai_AIPackage" && e["name"] == "iq4")
        .unwrap();
    let hp = |k: &str| {
        pkg["ai_hyperparameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .map(|e| e["value"].clone())
    };
    assert_eq!(hp("imatrix_sha256"), Some(json!(imatrix_sha)));
    assert_eq!(hp("calibration_text_sha256"), Some(json!(text_sha)));
    assert_eq!(hp("imatrix_ctx"), Some(json!("64")));

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let cal = md
        .split("### Calibration\n")
        .nth(1)
        .and_then(|s| s.split("## Steps").next())
        .unwrap();
    insta::assert_snapshot!(format!(
        "{}\n--- artifacts\n{}\n--- bom.cdx.json `mix`\n{}\n--- report.md\n{}",
        redact(&text(&o)),
        serde_json::to_string_pretty(&summary).unwrap(),
        cdx_props.join("\n"),
        cal.trim_end()
    ));

    // kept to be given as a file below
    let first_iq4 = steps[3]["outputs"]["iq4.gguf"].as_str().unwrap().to_owned();
    let given = dir.join("given");
    std::fs::create_dir(&given).unwrap();
    std::fs::copy(out.join("iq4.imatrix.gguf"), given.join("m.gguf")).unwrap();

    // a second run is cached throughout and rewrites the BOMs byte for byte
    let cdx_bytes = std::fs::read(out.join("bom.cdx.json")).unwrap();
    let o2 = run_in(dir, &["run", &p]);
    assert_eq!(o2.status.code(), Some(0), "{}", text(&o2));
    let report2 = json_file(&out.join("report.json"));
    assert!(report2["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "cached"));
    assert_eq!(std::fs::read(out.join("bom.cdx.json")).unwrap(), cdx_bytes);

    // an edited calibration text recomputes the matrix and reconverts its targets
    let mut t = std::fs::read_to_string(dir.join("calib.txt")).unwrap();
    t.insert_str(0, "A different first line.\n");
    std::fs::write(dir.join("calib.txt"), t).unwrap();
    let o3 = run_in(dir, &["run", &p]);
    assert_eq!(o3.status.code(), Some(0), "{}", text(&o3));
    let report3 = json_file(&out.join("report.json"));
    let ran: Vec<&str> = report3["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "ran")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        ran.contains(&"imatrix:iq4") && ran.contains(&"convert:q4"),
        "{ran:?}"
    );

    // the first computed matrix given as a file quantizes to the same bytes
    let file_yaml = "\
model: MODEL
out: out-file
steps:
  convert:
    targets:
      - { name: iq4, type: IQ4_XS, format: gguf, imatrix: { file: given/m.gguf } }
";
    let pf = pipeline(dir, file_yaml, true);
    let o5 = run_in(dir, &["run", &pf]);
    assert_eq!(o5.status.code(), Some(0), "{}", text(&o5));
    let r5 = json_file(&dir.join("out-file/report.json"));
    let a = &r5["steps"][1]["artifact"];
    assert_eq!(a["sha256"], first_iq4.as_str());
    assert_eq!(a["calibration"]["imatrix"]["path"], "given/m.gguf");
    assert!(a["calibration"].get("text").is_none(), "{a:#}");
}

fn types(v: &Value) -> String {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(t, n)| format!("{t}x{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn bad_calibration_settings_exit_2_naming_the_file_and_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases = [
        (
            "missing_text",
            "{ name: q4, type: Q4_K_M, format: gguf, imatrix: { text: nowhere.txt, ctx: 64 } }",
        ),
        (
            "missing_file",
            "{ name: q4, type: Q4_K_M, format: gguf, imatrix: { file: nowhere.gguf } }",
        ),
        ("needs_imatrix", "{ name: iq2, type: IQ2_XS, format: gguf }"),
        (
            "bpw_zero",
            "{ name: m, format: gguf, target_bpw: 0, imatrix: { text: calib.txt, ctx: 64 } }",
        ),
        (
            "bpw_out_of_range",
            "{ name: m, format: gguf, target_bpw: 40, imatrix: { text: calib.txt, ctx: 64, chunks: 1 } }",
        ),
        (
            "bpw_without_text",
            "{ name: m, format: gguf, target_bpw: 5, imatrix: { file: x.gguf } }",
        ),
        (
            "bpw_with_type",
            "{ name: m, type: Q4_0, format: gguf, target_bpw: 5, imatrix: { text: calib.txt } }",
        ),
        (
            "text_and_file",
            "{ name: q4, type: Q4_0, format: gguf, imatrix: { text: calib.txt, file: x.gguf } }",
        ),
        (
            "bad_max_size",
            "{ name: m, format: gguf, max_size: lots, imatrix: { text: calib.txt } }",
        ),
    ];
    for (name, target) in cases {
        let yaml =
            format!("model: MODEL\nout: out\nsteps:\n  convert:\n    targets:\n      - {target}\n");
        let p = pipeline(dir, &yaml, false);
        // What the file alone says is wrong, the schema says too.
        let doc: Value = serde_yaml::from_str(&yaml).unwrap();
        let schema_rejects =
            !jsonschema::validator_for(&json_file(&repo().join("schemas/pipeline.schema.json")))
                .unwrap()
                .is_valid(&doc);
        let file_alone = !matches!(
            name,
            "missing_text" | "missing_file" | "needs_imatrix" | "bpw_out_of_range"
        );
        assert_eq!(schema_rejects, file_alone, "{name}: schema");
        let o = run_in(dir, &["run", &p]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!dir.join("out").join("report.json").exists(), "{name}");
        insta::assert_snapshot!(format!("pipeline_imatrix_{name}"), redact(&stderr));
    }
}
