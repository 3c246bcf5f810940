//! `modelgate license` and `modelgate policy check` end to end: licence identification from
//! text, card and metadata, lineage and undeclared derivatives, the shipped policies on the
//! fixtures and on the real SmolLM2 GGUF, SARIF validated against the SARIF 2.1.0 schema,
//! waivers, bad policy files and hostile model cards.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{repo, sarif_validator, smollm2};

/// "Today" for every run, so waiver expiry is deterministic.
const TODAY: &str = "2026-06-15";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .current_dir(repo())
        .env("MODELGATE_TODAY", TODAY)
        .output()
        .expect("run modelgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn model(name: &str) -> String {
    format!("fixtures/policy/models/{name}")
}

fn license_json(dir: &str) -> Value {
    let o = run(&["license", dir, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("license --json prints JSON")
}

fn check(dir: &str, policy: &str, format: &str) -> Output {
    run(&[
        "policy", "check", dir, "--policy", policy, "--format", format,
    ])
}

fn rules(findings: &Value) -> Vec<String> {
    findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn licence_identified_from_text_alone() {
    let v = license_json(&model("text-only-cc-by-nc"));
    assert_eq!(v["licences"], serde_json::json!(["cc-by-nc-4.0"]));
    let d = &v["detections"][0];
    assert_eq!(d["source"], "licence-file");
    assert_eq!(d["evidence"]["path"], "LICENSE.md");
    assert!(
        d["score"].as_f64().unwrap() > 0.99,
        "re-wrapped markdown still matches fully: {d}"
    );
    // commercial use is forbidden, research use is fine
    let o = check(
        &model("text-only-cc-by-nc"),
        "policies/commercial.yaml",
        "json",
    );
    assert_eq!(o.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(rules(&r["findings"]).contains(&"policy/commercial-use".to_string()));
}

#[test]
fn licence_identified_from_card_alone() {
    let v = license_json(&model("card-only-gemma"));
    assert_eq!(v["licences"], serde_json::json!(["gemma"]));
    let d = &v["detections"][0];
    assert_eq!(d["source"], "card-license");
    assert_eq!(d["evidence"]["path"], "README.md");
    assert_eq!(d["evidence"]["line"], 2);
    assert_eq!(d["evidence"]["key"], "license");
    let topics: Vec<&str> = v["obligations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["topic"].as_str().unwrap())
        .collect();
    assert!(topics.contains(&"use-restrictions"), "{topics:?}");
}

#[test]
fn card_and_text_disagreement_is_reported() {
    let v = license_json(&model("card-text-disagree"));
    // the text binds: it comes first, and both licences apply
    assert_eq!(v["licences"], serde_json::json!(["llama3.1", "apache-2.0"]));
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "policy/licence-mismatch")
        .expect("mismatch finding");
    let paths: Vec<&str> = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"README.md") && paths.contains(&"LICENSE"),
        "{paths:?}"
    );
    let sources: Vec<&str> = v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&"use-policy-file"),
        "USE_POLICY.md is recognised: {sources:?}"
    );
}

#[test]
fn other_licence_resolved_through_license_name_and_text() {
    let v = license_json(&model("deepseek-other"));
    assert_eq!(v["licences"], serde_json::json!(["deepseek"]));
    assert!(rules(&v["findings"])
        .iter()
        .all(|r| r != "policy/licence-mismatch"));
}

#[test]
fn edited_licence_text_is_matched_with_its_score() {
    let v = license_json(&model("openrail-edited"));
    assert_eq!(v["licences"], serde_json::json!(["creativeml-openrail-m"]));
    let d = v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"] == "licence-file")
        .unwrap();
    let s = d["score"].as_f64().unwrap();
    assert!(
        s > 0.9 && s < 0.995,
        "edited clause lowers the score a little: {s}"
    );
    assert!(rules(&v["findings"]).contains(&"policy/licence-text-modified".to_string()));
}

#[test]
fn r1_distill_like_model_fails_commercial_lineage_with_llama_obligations() {
    let o = check(
        &model("DeepSeek-R1-Distill-Llama-8B"),
        "policies/commercial.yaml",
        "json",
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["verdict"], "fail");
    let lineage = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "policy/lineage")
        .expect("lineage finding");
    assert_eq!(lineage["severity"], "error");
    assert!(lineage["message"].as_str().unwrap().contains("llama3.1"));
    let ob = r["details"]["obligations"].as_array().unwrap();
    let llama: Vec<&Value> = ob.iter().filter(|o| o["licence"] == "llama3.1").collect();
    assert!(llama
        .iter()
        .any(|o| o["topic"] == "naming" && o["text"][0] == "Llama"));
    assert!(llama
        .iter()
        .any(|o| o["topic"] == "attribution" && o["text"][0] == "Built with Llama"));
    assert!(llama.iter().any(|o| o["topic"] == "commercial"));
    assert!(rules(&r["findings"]).contains(&"policy/naming".to_string()));
}

#[test]
fn undeclared_llama3_derivative_is_flagged() {
    let v = license_json(&model("acme-chat-8b"));
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "policy/undeclared-derivative")
        .expect("undeclared derivative");
    let m = f["message"].as_str().unwrap();
    assert!(
        m.contains("Llama 3") && m.contains("vocab 128256") && m.contains("rope theta 500000"),
        "{m}"
    );
    assert_eq!(f["evidence"][0]["path"], "config.json");
    assert_eq!(v["provenance"]["family"]["family"], "llama3");
    let o = check(&model("acme-chat-8b"), "policies/commercial.yaml", "json");
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn smollm2_passes_commercial_with_apache_obligations() {
    let gguf = smollm2();
    let o = check(gguf.to_str().unwrap(), "policies/commercial.yaml", "json");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["verdict"], "pass");
    assert_eq!(r["findings"], serde_json::json!([]));
    let d = &r["details"];
    assert_eq!(d["licences"], serde_json::json!(["apache-2.0"]));
    assert_eq!(d["detections"][0]["source"], "gguf-metadata");
    assert_eq!(d["detections"][0]["evidence"]["key"], "general.license");
    assert_eq!(d["provenance"]["publisher"], "HuggingFaceTB");
    assert_eq!(d["provenance"]["family"]["family"], "smollm");
    let ob = d["obligations"].as_array().unwrap();
    assert!(ob.iter().all(|o| o["licence"] == "apache-2.0"));
    assert!(ob.iter().any(|o| o["topic"] == "attribution"));
    assert!(ob.iter().any(|o| o["topic"] == "redistribution"));
    assert_eq!(
        d["model"]["files"][0]["path"],
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    );
}

#[test]
fn sarif_validates_and_points_at_the_evidence_files() {
    let validator = sarif_validator();
    for (m, policy) in [
        ("DeepSeek-R1-Distill-Llama-8B", "policies/commercial.yaml"),
        ("card-text-disagree", "policies/regulated.yaml"),
        (
            "DeepSeek-R1-Distill-Llama-8B",
            "fixtures/policy/policies/waivers.yaml",
        ),
    ] {
        let o = check(&model(m), policy, "sarif");
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&v)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{m}: SARIF invalid: {errors:#?}");
        // each result sits on the file its evidence names
        let j = check(&model(m), policy, "json");
        let r: Value = serde_json::from_slice(&j.stdout).unwrap();
        let results = v["runs"][0]["results"].as_array().unwrap();
        let findings = r["findings"].as_array().unwrap();
        assert_eq!(results.len(), findings.len());
        for (res, f) in results.iter().zip(findings) {
            assert_eq!(res["ruleId"], f["rule"]);
            for (loc, ev) in res["locations"]
                .as_array()
                .unwrap()
                .iter()
                .zip(f["evidence"].as_array().unwrap())
            {
                assert_eq!(
                    loc["physicalLocation"]["artifactLocation"]["uri"],
                    ev["path"]
                );
                if let Some(line) = ev.get("line") {
                    assert_eq!(&loc["physicalLocation"]["region"]["startLine"], line);
                }
            }
        }
        let uris: Vec<&str> = results
            .iter()
            .flat_map(|r| r["locations"].as_array().unwrap())
            .map(|l| {
                l["physicalLocation"]["artifactLocation"]["uri"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        match m {
            "card-text-disagree" => assert!(
                uris.contains(&"LICENSE") && uris.contains(&"README.md"),
                "{uris:?}"
            ),
            _ => assert!(uris.contains(&"README.md"), "{uris:?}"),
        }
        if policy.contains("waivers") {
            assert!(
                uris.contains(&"fixtures/policy/policies/waivers.yaml"),
                "expired waiver on the policy file: {uris:?}"
            );
        }
    }
}

#[test]
fn waivers_apply_to_their_rule_and_target_until_expiry_and_are_listed_apart() {
    let o = check(
        &model("DeepSeek-R1-Distill-Llama-8B"),
        "fixtures/policy/policies/waivers.yaml",
        "json",
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "the expired naming waiver leaves an error"
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rules(&r["waived"]), ["policy/lineage"]);
    let live = rules(&r["findings"]);
    assert!(!live.contains(&"policy/lineage".to_string()));
    assert!(live.contains(&"policy/naming".to_string()));
    assert!(live.contains(&"policy/waiver-expired".to_string()));
    let states: Vec<&str> = r["details"]["waivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["applied", "expired", "other-model"]);
    // the same file's R1 waivers leave another model alone; only its own waiver applies
    let o = check(
        &model("acme-chat-8b"),
        "fixtures/policy/policies/waivers.yaml",
        "json",
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let states: Vec<&str> = r["details"]["waivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["other-model", "other-model", "applied"]);
    assert_eq!(rules(&r["waived"]), ["policy/lineage"]);
    assert!(rules(&r["findings"]).contains(&"policy/undeclared-derivative".to_string()));
    // and without the waiver file, acme's lineage finding is live
    let o = check(&model("acme-chat-8b"), "policies/commercial.yaml", "json");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(rules(&r["findings"]).contains(&"policy/lineage".to_string()));
    assert!(r.get("waived").is_none());
    // text output lists waived findings separately
    let t = check(
        &model("DeepSeek-R1-Distill-Llama-8B"),
        "fixtures/policy/policies/waivers.yaml",
        "text",
    );
    let s = stdout(&t);
    let waived_at = s.find("\nwaived:\n").expect("waived section");
    assert!(s[waived_at..].contains("error[policy/lineage]"), "{s}");
    assert!(s.contains("1 waived"), "{s}");
}

#[test]
fn bad_policy_files_fail_with_file_line_column() {
    for (file, at, want) in [
        (
            "bad-unknown-key.yaml",
            ":7:3`",
            "unknown field `deny_everything`, expected one of",
        ),
        (
            "bad-wrong-type.yaml",
            ":4:25`",
            "invalid type: string \"lots\", expected u64",
        ),
        ("bad-date.yaml", ":10:14`", "expected YYYY-MM-DD"),
    ] {
        let path = format!("fixtures/policy/policies/{file}");
        for args in [
            vec![
                "policy",
                "check",
                "fixtures/models/tiny-llama",
                "--policy",
                path.as_str(),
            ],
            vec!["policy", "validate", path.as_str()],
        ] {
            let o = run(&args);
            assert_eq!(o.status.code(), Some(2), "{file}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(e.starts_with(&format!("error: `{path}{at}")), "{file}: {e}");
            assert!(e.contains(want), "{file}: {e}");
            assert!(e.contains("hint: "), "{e}");
            assert!(o.stdout.is_empty(), "nothing on stdout for bad input");
        }
    }
}

/// A model directory whose card is hostile; config and weights are fine.
fn hostile_dir(card: &[u8]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = repo().join("fixtures/policy/models/card-only-gemma");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    std::fs::write(d.path().join("README.md"), card).unwrap();
    d
}

#[test]
fn hostile_model_cards_are_refused_with_exit_2() {
    let mut bomb = String::from("---\na: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
    for i in 0..9 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("b{}", i - 1)
        };
        bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    bomb.push_str("license: mit\n---\n# bomb\n");
    let mut huge = String::from("---\nlicense: mit\ndescription: \"");
    huge.push_str(&"x".repeat(10 * 1024 * 1024));
    huge.push_str("\"\n---\n# huge\n");
    let mut bad_utf8 = b"---\nlicense: mit\nname: \"".to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bad_utf8.extend_from_slice(b"\"\n---\n# card\n");
    for (what, card) in [
        ("yaml bomb", bomb.into_bytes()),
        ("10 MB front matter", huge.into_bytes()),
        ("invalid UTF-8", bad_utf8),
    ] {
        let d = hostile_dir(&card);
        let p = d.path().to_str().unwrap();
        for args in [
            vec!["license", p],
            vec!["policy", "check", p, "--policy", "policies/commercial.yaml"],
        ] {
            let o = run(&args);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{what}: {e}");
            assert!(
                e.starts_with(&format!("error: cannot read model `{p}`")),
                "{what}: {e}"
            );
            assert!(
                e.contains("README.md"),
                "{what}: the message names the card: {e}"
            );
            assert!(o.stdout.is_empty(), "{what}: nothing evaluated");
        }
    }
}

#[test]
fn policy_schema_accepts_shipped_policies_and_catalogue_schemas_accept_data() {
    let load = |p: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(repo().join(p)).unwrap()).unwrap()
    };
    let yaml =
        |p: &Path| -> Value { serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let check_all = |schema: &str, files: Vec<std::path::PathBuf>| {
        let v = jsonschema::validator_for(&load(schema)).unwrap();
        assert!(!files.is_empty());
        for f in files {
            let doc = yaml(&f);
            let errors: Vec<String> = v
                .iter_errors(&doc)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
        }
    };
    let yamls = |dir: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        v.sort();
        v
    };
    let policies: Vec<_> = yamls("policies")
        .into_iter()
        .filter(|p| !p.ends_with("families.yaml") && !p.ends_with("templates.yaml"))
        .collect();
    check_all("schemas/policy.schema.json", policies);
    check_all(
        "schemas/policy.schema.json",
        vec![repo().join("fixtures/policy/policies/waivers.yaml")],
    );
    check_all("schemas/license.schema.json", yamls("policies/licenses"));
    check_all(
        "schemas/families.schema.json",
        vec![repo().join("policies/families.yaml")],
    );
    check_all(
        "schemas/templates.schema.json",
        vec![repo().join("policies/templates.yaml")],
    );
    // and the schema rejects what the reader rejects
    let v = jsonschema::validator_for(&load("schemas/policy.schema.json")).unwrap();
    for bad in ["bad-unknown-key.yaml", "bad-wrong-type.yaml"] {
        let doc = yaml(&repo().join("fixtures/policy/policies").join(bad));
        assert!(!v.is_valid(&doc), "{bad} passes the schema");
    }
}

#[test]
fn license_text_snapshot() {
    let o = run(&["license", &model("DeepSeek-R1-Distill-Llama-8B")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    insta::assert_snapshot!("license_r1_distill", stdout(&o));
}

#[test]
fn policy_check_text_snapshot() {
    let o = check(
        &model("DeepSeek-R1-Distill-Llama-8B"),
        "policies/commercial.yaml",
        "text",
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    insta::assert_snapshot!("policy_check_r1_distill_commercial", stdout(&o));
}

/// `signing.trusted_identities`: a model without a Sigstore signature by one of them
/// fails the policy gate, naming who was expected.
#[test]
fn trusted_identities_require_a_keyless_signature() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    let base = std::fs::read_to_string(repo().join("policies/research.yaml")).unwrap();
    assert!(
        !base.contains("signing:"),
        "research.yaml gained a signing section"
    );
    std::fs::write(
        &policy,
        format!(
            "{base}signing:\n  trusted_identities:\n    - {{ identity: https://github.com/acme/m/.github/workflows/sign.yml@refs/heads/main, issuer: https://token.actions.githubusercontent.com }}\n"
        ),
    )
    .unwrap();
    let model = repo().join("fixtures/models/tiny-llama");
    let o = run(&[
        "policy",
        "check",
        model.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("error[policy/signed-by-trusted-identity]")
            && out.contains("from `https://token.actions.githubusercontent.com`")
            && out.contains("is not signed"),
        "{out}"
    );
}

/// A fine-tune of an MoE release that declares only its own licence: the release's terms
/// come through `base_model`, and the catalogue says which apply. gpt-oss brings Apache-2.0
/// with its usage policy; a DeepSeek-V3 base brings the DeepSeek License's use restrictions,
/// while R1 brings MIT and none. The oracle's weights carry 4 experts, recorded as an
/// architecture fact.
#[test]
fn moe_derivatives_inherit_the_licence_of_their_release() {
    let cases = [
        ("openai/gpt-oss-20b", "gptoss", "gpt-oss", true),
        ("deepseek-ai/DeepSeek-V3", "deepseek3", "deepseek", true),
        ("deepseek-ai/DeepSeek-R1", "deepseek3", "mit", false),
        (
            "mistralai/Mixtral-8x7B-v0.1",
            "mixtral",
            "apache-2.0",
            false,
        ),
        ("Qwen/Qwen3-30B-A3B", "qwen3moe", "apache-2.0", false),
    ];
    for (base, oracle, licence, restricted) in cases {
        let d = tempfile::tempdir().unwrap();
        let src = crate::support::oracle2_dir(oracle);
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), d.path().join(f)).unwrap();
        }
        std::fs::write(
            d.path().join("README.md"),
            format!("---\nlicense: other\nlicense_name: acme-internal\nbase_model: {base}\n---\n# fine-tune\n"),
        )
        .unwrap();
        let v = license_json(d.path().to_str().unwrap());
        let resolved = &v["provenance"]["base_models"][0]["resolved"];
        assert_eq!(resolved["licence"], licence, "{base}");
        assert_eq!(v["provenance"]["architecture"]["experts"], 4, "{base}");
        let inherited: Vec<&str> = v["inherited"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["licence"].as_str().unwrap())
            .collect();
        assert!(inherited.contains(&licence), "{base}: {inherited:?}");
        let restrictions: Vec<&Value> = v["obligations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["licence"] == licence && o["topic"] == "use-restrictions")
            .collect();
        assert_eq!(!restrictions.is_empty(), restricted, "{base}");
    }
}
