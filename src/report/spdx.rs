//! `bom.spdx.json`: the artifacts of a pipeline run as an SPDX 3.0.1 AI BOM, in the JSON-LD
//! serialization (`https://spdx.org/rdf/3.0.1/spdx-context.jsonld`).
//!
//! The graph holds one `CreationInfo` (a blank node every element points at), the
//! `SoftwareAgent` that stands for the pipeline and the `Tool` (modelgate), the
//! `SpdxDocument`, then one `ai_AIPackage` per artifact: supplier, release time, download
//! location (the artifact's path relative to this file), version (a prefix of its content
//! digest), purpose `model`, type of model, hyper-parameters (architecture, layers,
//! experts, quantization, and the calibration text, importance matrix and size-budget mix
//! with their sha256), the parity figures as `ai_metric` and the limits they were held
//! to as `ai_metricDecisionThreshold`, the safety risk the scan and verify gates found, and
//! the limitation a consumer should know. A directory artifact lists its files as
//! `software_File`s it `contains`. The source model and its declared base models are
//! `ai_AIPackage`s too; each artifact is `descendantOf` its source and the base models,
//! and the source is `descendantOf` its base models. Licences are
//! `simplelicensing_LicenseExpression`s (SPDX ids, `LicenseRef-` plus modelgate's catalogue
//! id for the rest) linked by `hasDeclaredLicense` (what the model card declares) and
//! `hasConcludedLicense` (what applies after inheritance from base models), or the
//! `NoAssertionLicense` individual when modelgate found none.
//!
//! Deterministic: every `spdxId` is a URN under a namespace digested from the pipeline,
//! source and artifact digests plus a name from the report, and every time comes from the
//! run report (see [`super::bom`]). Written by hand with `serde_json`: the document is
//! small, and the Rust SPDX crates (`spdx-rs`, `serde-spdx`) model SPDX 2, not 3.
//!
//! Safety risk: the worst unwaived finding of the scan and verify gates on the source or
//! the artifact; an error is `high`, a warning `medium`, nothing worse than a note `low`.
//! Without a scan or verify gate the field is left out rather than guessed.

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::bom::{self, Parity};
use super::run::{Artifact, RunReport};
use crate::finding::Severity;

/// The JSON-LD context of SPDX 3.0.1.
pub const CONTEXT: &str = "https://spdx.org/rdf/3.0.1/spdx-context.jsonld";
/// The SPDX version the document conforms to.
pub const SPEC_VERSION: &str = "3.0.1";
const CREATION_INFO: &str = "_:creationinfo";
const NO_ASSERTION_LICENSE: &str = "expandedlicensing_NoAssertionLicense";

/// Percent-encode everything outside RFC 3986's unreserved set, so that any name is one
/// IRI path segment.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A relative URI reference for a path with `/` separators, each segment encoded.
fn path_ref(path: &str) -> String {
    path.split('/').map(segment).collect::<Vec<_>>().join("/")
}

/// Builds the `@graph`: ids under one namespace, elements in a fixed order.
struct Doc {
    ns: String,
    graph: Vec<Value>,
    relationships: usize,
}

impl Doc {
    fn id(&self, local: &str) -> String {
        format!("{}{local}", self.ns)
    }

    /// An element with its type, id and creation info, then `fields`.
    fn element(&mut self, ty: &str, local: &str, fields: Value) -> String {
        let id = self.id(local);
        let mut e = json!({ "type": ty, "spdxId": id, "creationInfo": CREATION_INFO });
        if let (Some(e), Value::Object(f)) = (e.as_object_mut(), fields) {
            e.extend(f);
        }
        self.graph.push(e);
        id
    }

    fn relate(&mut self, from: &str, ty: &str, to: Vec<String>, comment: Option<String>) {
        if to.is_empty() {
            return;
        }
        self.relationships += 1;
        let local = format!("relationship/{}", self.relationships);
        let mut f = json!({ "from": from, "relationshipType": ty, "to": to });
        if let Some(c) = comment {
            f["comment"] = json!(c);
        }
        self.element("Relationship", &local, f);
    }
}

fn namespace(r: &RunReport) -> String {
    let mut h = Sha256::new();
    h.update(b"modelgate spdx namespace\n");
    for part in [&r.name, &r.pipeline.sha256, &r.model.sha256] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    for a in r.artifacts() {
        h.update(format!("{} {}\n", a.name, a.sha256).as_bytes());
    }
    let hex = hex::encode(h.finalize());
    format!("urn:modelgate:spdx:{}:", &hex[..32])
}

fn sha256_hash(hex: &str) -> Value {
    json!({ "type": "Hash", "algorithm": "sha256", "hashValue": hex })
}

fn entries<K: AsRef<str>>(pairs: impl IntoIterator<Item = (K, String)>) -> Vec<Value> {
    pairs
        .into_iter()
        .map(|(k, v)| json!({ "type": "DictionaryEntry", "key": k.as_ref(), "value": v }))
        .collect()
}

fn type_of_model(a: &Artifact) -> Vec<&'static str> {
    let mut t = vec!["transformer", "decoder-only language model"];
    if a.hyperparameters.as_ref().is_some_and(|h| h.is_moe()) {
        t.push("mixture of experts");
    }
    t
}

fn risk(sev: Option<Severity>) -> &'static str {
    match sev {
        Some(Severity::Error) => "high",
        Some(Severity::Warning) => "medium",
        Some(Severity::Note) | None => "low",
    }
}

/// `ai_metric` and `ai_metricDecisionThreshold` from a parity result. A checked value is
/// keyed by its limit (`max_mean_kld`) in both lists, so that a consumer can pair them.
fn metrics(p: &Parity) -> (Vec<Value>, Vec<Value>) {
    let scope = |name: &str| format!("{name} vs {}", p.reference);
    let metric = entries(p.metrics.iter().map(|m| (scope(&m.name), m.value.clone())));
    let thresholds = entries(
        p.metrics
            .iter()
            .filter_map(|m| Some((scope(&m.name), m.threshold.clone()?))),
    );
    (metric, thresholds)
}

fn hub_location(name: &str) -> Option<String> {
    // A base model named `owner/repo` is a Hugging Face Hub id (the card's `base_model`).
    let mut parts = name.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
    };
    (ok(parts.next()) && ok(parts.next()) && parts.next().is_none())
        .then(|| format!("https://huggingface.co/{name}"))
}

/// The SPDX document of a run, as the bytes of `bom.spdx.json`.
pub fn bom(r: &RunReport) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(&document(r)).unwrap_or_default();
    b.push(b'\n');
    b
}

/// The SPDX document of a run.
pub fn document(r: &RunReport) -> Value {
    let mut d = Doc {
        ns: namespace(r),
        graph: Vec::new(),
        relationships: 0,
    };
    let created = bom::created(r);
    let licence = r.licence();
    let source_name = licence.map_or_else(|| r.model.path.clone(), |l| l.model_name.clone());

    let agent = d.element(
        "SoftwareAgent",
        "agent/pipeline",
        json!({
            "name": format!("modelgate pipeline `{}`", r.name),
            "comment": format!(
                "the pipeline file `{}` (sha256 {}) run by modelgate",
                r.pipeline.path, r.pipeline.sha256
            ),
        }),
    );
    let tool = d.element(
        "Tool",
        "tool/modelgate",
        json!({ "name": format!("modelgate {}", r.tool.version) }),
    );

    // The document comes third; its element list is filled in at the end.
    let doc_index = d.graph.len();
    let doc_id = d.element(
        "SpdxDocument",
        "document",
        json!({
            "name": format!("AI BOM of modelgate pipeline `{}`", r.name),
            "profileConformance": ["core", "software", "ai", "simpleLicensing"],
        }),
    );

    let publisher = licence.and_then(|l| l.publisher.clone()).map(|p| {
        d.element(
            "Organization",
            &format!("organization/{}", segment(&p)),
            json!({ "name": p }),
        )
    });

    // Licences: the declared and the concluded expression, shared by source and artifacts.
    let declared =
        licence.and_then(|l| bom::licence_expression(&l.licences, |x| x.source == "declared"));
    let concluded = licence.and_then(|l| bom::licence_expression(&l.licences, |_| true));
    let declared_id = licence_element(&mut d, "licence/declared", declared.clone());
    let concluded_id = if concluded == declared {
        declared_id.clone()
    } else {
        licence_element(&mut d, "licence/concluded", concluded)
    };

    // The base models the source declares.
    let mut bases: Vec<(String, Option<String>)> = Vec::new();
    for (i, base) in licence
        .map(|l| l.base_models.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let mut f = json!({ "name": base.name, "software_primaryPurpose": "model" });
        if let Some(loc) = hub_location(&base.name) {
            f["software_downloadLocation"] = json!(loc);
        }
        let id = d.element(
            "ai_AIPackage",
            &format!("base/{}/{}", i + 1, segment(&base.name)),
            f,
        );
        bases.push((id, base.relation.clone()));
    }

    // The source model.
    let mut src = json!({
        "name": source_name,
        "software_primaryPurpose": "model",
        "comment": format!(
            "`{}`, OpenSSF model signing root digest sha256:{}",
            r.model.path, r.model.sha256
        ),
    });
    if let Some(p) = &publisher {
        src["suppliedBy"] = json!(p);
        src["originatedBy"] = json!([p]);
    }
    if let Some(hash) = single_source_file(r) {
        src["verifiedUsing"] = json!([sha256_hash(&hash)]);
    }
    if let Some(p) = &r.source {
        // A Hub source is pinned to the commit it resolved to.
        src["software_downloadLocation"] = json!(p.tree_url());
        src["software_packageVersion"] = json!(p.commit.as_str());
        src["software_packageUrl"] = json!(p.purl());
    }
    if let Some(l) = licence {
        if !l.datasets.is_empty() {
            src["ai_informationAboutTraining"] = json!(format!(
                "datasets named by the model card: {}",
                l.datasets.join(", ")
            ));
        }
    }
    let source_id = d.element("ai_AIPackage", "source", src);

    // The artifacts.
    let mut roots = Vec::new();
    for a in r.artifacts() {
        let local = format!("artifact/{}", segment(&a.name));
        let mut f = json!({
            "name": a.name,
            "summary": format!(
                "{} {} of `{source_name}` converted by modelgate",
                a.file_type.as_deref().unwrap_or(""),
                a.format
            ).trim_start().to_owned(),
            "software_packageVersion": format!("sha256:{}", a.sha256.chars().take(16).collect::<String>()),
            "software_downloadLocation": if a.path.ends_with(".gguf") {
                path_ref(&a.path)
            } else {
                format!("{}/", path_ref(a.path.trim_end_matches('/')))
            },
            "software_primaryPurpose": "model",
            "suppliedBy": agent,
            "ai_typeOfModel": type_of_model(a),
            "ai_domain": ["text generation"],
            "ai_hyperparameter": entries(
                bom::hyperparameter_entries(a)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .chain(bom::calibration_entries(a))
            ),
            "ai_limitation": bom::limitation(r, a),
        });
        if let Some(t) = bom::released(r, a) {
            f["releaseTime"] = json!(t);
            f["builtTime"] = json!(t);
        }
        if let Some(p) = bom::parity(r, &a.name) {
            let (m, t) = metrics(&p);
            f["ai_metric"] = json!(m);
            if !t.is_empty() {
                f["ai_metricDecisionThreshold"] = json!(t);
            }
        }
        if let Some(sev) = bom::scan_severity(r, a) {
            f["ai_safetyRiskAssessment"] = json!(risk(sev));
        }
        if let Some(l) = licence {
            if !l.datasets.is_empty() {
                f["ai_informationAboutTraining"] = json!(format!(
                    "trained as `{source_name}`; datasets named by its model card: {}",
                    l.datasets.join(", ")
                ));
            }
        }
        if a.path.ends_with(".gguf") {
            f["verifiedUsing"] = json!([sha256_hash(&a.sha256)]);
        } else {
            f["comment"] = json!(format!(
                "a directory; OpenSSF model signing root digest sha256:{}",
                a.sha256
            ));
        }
        let id = d.element("ai_AIPackage", &local, f);
        let mut files = Vec::new();
        if !a.path.ends_with(".gguf") {
            for file in &a.files {
                files.push(d.element(
                    "software_File",
                    &format!("{local}/file/{}", path_ref(&file.path)),
                    json!({
                        "name": file.path,
                        "verifiedUsing": [sha256_hash(&file.sha256)],
                        "software_primaryPurpose": "model",
                    }),
                ));
            }
        }
        d.relate(&id, "contains", files, None);
        d.relate(
            &id,
            "descendantOf",
            vec![source_id.clone()],
            Some(format!("converted from `{}` by modelgate", r.model.path)),
        );
        d.relate(
            &id,
            "descendantOf",
            bases.iter().map(|(b, _)| b.clone()).collect(),
            Some(format!("through `{source_name}`")),
        );
        d.relate(&id, "hasDeclaredLicense", vec![declared_id.clone()], None);
        d.relate(&id, "hasConcludedLicense", vec![concluded_id.clone()], None);
        roots.push(id);
    }
    for (b, relation) in &bases {
        d.relate(
            &source_id,
            "descendantOf",
            vec![b.clone()],
            relation.as_ref().map(|x| format!("declared relation: {x}")),
        );
    }
    d.relate(&source_id, "hasDeclaredLicense", vec![declared_id], None);
    d.relate(&source_id, "hasConcludedLicense", vec![concluded_id], None);
    if roots.is_empty() {
        roots.push(source_id);
    }

    let elements: Vec<Value> = d
        .graph
        .iter()
        .filter_map(|e| e.get("spdxId").cloned())
        .filter(|id| *id != json!(doc_id))
        .collect();
    if let Some(doc) = d.graph.get_mut(doc_index) {
        doc["rootElement"] = json!(roots);
        doc["element"] = json!(elements);
    }
    let creation = json!({
        "type": "CreationInfo",
        "@id": CREATION_INFO,
        "specVersion": SPEC_VERSION,
        "created": created,
        "createdBy": [agent],
        "createdUsing": [tool],
        "comment": format!("verdict of the run: {}", r.verdict),
    });
    let mut graph = vec![creation];
    graph.extend(d.graph);
    json!({ "@context": CONTEXT, "@graph": graph })
}

/// A licence expression element, or the `NoAssertionLicense` individual without one.
fn licence_element(d: &mut Doc, local: &str, expr: Option<String>) -> String {
    match expr {
        Some(e) => d.element(
            "simplelicensing_LicenseExpression",
            local,
            json!({ "simplelicensing_licenseExpression": e }),
        ),
        None => NO_ASSERTION_LICENSE.to_owned(),
    }
}

/// The sha256 of the source model when it is one file.
fn single_source_file(r: &RunReport) -> Option<String> {
    let import = r.steps.iter().find(|s| s.step == "import")?;
    let files = import.settings.get("files")?.as_array()?;
    match files.as_slice() {
        [f] => f.get("sha256")?.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A run with a GGUF and a safetensors artifact of an MoE model under Apache-2.0 plus a
    /// licence without an SPDX id, a finetune base model, a scan warning and one parity
    /// result.
    fn run() -> RunReport {
        let step = |name: &str, kind: &str, extra: Value| {
            let mut s = json!({
                "name": name, "step": kind, "status": "ran", "seconds": 0.5,
                "run_seconds": 0.5, "inputs": {}, "outputs": {}, "settings": {},
                "ran_at": "2026-01-02T03:04:05Z",
            });
            if let (Some(s), Value::Object(e)) = (s.as_object_mut(), extra) {
                s.extend(e);
            }
            s
        };
        let artifact = |name: &str, path: &str, ft: Option<&str>| {
            json!({
                "name": name, "path": path,
                "format": if path.ends_with(".gguf") { "gguf" } else { "safetensors" },
                "file_type": ft, "architecture": "qwen2moe", "sha256": "ab".repeat(32),
                "files": [
                    { "path": "config.json", "sha256": "01".repeat(32) },
                    { "path": "model weights.safetensors", "sha256": "02".repeat(32) },
                ],
                "bytes": 1000, "tensors": 10, "parameters": 5000, "bits_per_weight": 8.5,
                "types": { "Q8_0": { "tensors": 8, "bytes": 900 }, "F32": { "tensors": 2, "bytes": 100 } },
                "hyperparameters": { "layers": 24, "experts": 60, "experts_used": 4 },
            })
        };
        let v = json!({
            "tool": { "name": "modelgate", "version": "9.9.9" },
            "name": "moe",
            "pipeline": { "path": "moe.yaml", "sha256": "cd".repeat(32) },
            "model": { "path": "models/moe", "sha256": "ef".repeat(32) },
            "out": "out",
            "verdict": "pass",
            "failed_gates": [],
            "seconds": 3.0,
            "steps": [
                step("import", "import", json!({
                    "ran_at": "2026-01-01T00:00:00Z",
                    "licence": {
                        "model_name": "org/Moe-Chat",
                        "licences": [
                            { "id": "apache-2.0", "spdx": "Apache-2.0", "source": "declared" },
                            { "id": "tongyi qianwen", "name": "Tongyi Qianwen", "source": "inherited through org/Moe" },
                        ],
                        "publisher": "Org Inc.",
                        "base_models": [{ "name": "org/Moe", "relation": "finetune" }],
                        "datasets": ["org/chat-data"],
                        "obligations": [], "documents": [],
                    },
                })),
                step("scan", "scan", json!({ "gates": [{
                    "gate": "scan", "subject": "models/moe", "verdict": "pass",
                    "findings": [{ "rule": "scan/x", "severity": "warning", "message": "m" }],
                }]})),
                step("convert:moe-q8_0", "convert", json!({
                    "artifact": artifact("moe-q8_0", "moe-q8_0.gguf", Some("Q8_0")),
                })),
                step("convert:moe-f16", "convert", json!({
                    "ran_at": "2026-01-03T00:00:00Z",
                    "artifact": artifact("moe-f16", "moe-f16", None),
                })),
                step("parity:moe-q8_0", "parity", json!({ "parity": {
                    "reference": "moe-f16", "candidate": "moe-q8_0", "quant": "Q8_0",
                    "thresholds": "`policy.yaml` parity.Q8_0",
                    "metrics": [
                        { "name": "max_mean_kld", "value": 0.001, "threshold": 0.01, "pass": true },
                        { "name": "mean KLD", "value": 0.001 },
                        { "name": "same top-1", "value": 0.98 },
                        { "name": "scored positions", "value": "512" },
                    ],
                }})),
            ],
        });
        serde_json::from_value(v).unwrap()
    }

    fn by_type<'a>(doc: &'a Value, ty: &str) -> Vec<&'a Value> {
        doc["@graph"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == ty)
            .collect()
    }

    fn entry<'a>(list: &'a Value, key: &str) -> Option<&'a str> {
        list.as_array()?
            .iter()
            .find(|e| e["key"] == key)
            .and_then(|e| e["value"].as_str())
    }

    #[test]
    fn every_reference_resolves_and_ids_are_unique_iris() {
        let doc = document(&run());
        assert_eq!(doc["@context"], CONTEXT);
        let graph = doc["@graph"].as_array().unwrap();
        let mut ids = BTreeSet::new();
        for e in graph {
            match e["type"].as_str().unwrap() {
                "CreationInfo" => assert_eq!(e["@id"], CREATION_INFO),
                _ => {
                    let id = e["spdxId"].as_str().unwrap();
                    assert!(id.starts_with("urn:modelgate:spdx:"), "{id}");
                    assert!(!id.contains(' '), "{id}");
                    assert!(ids.insert(id.to_owned()), "duplicate {id}");
                    assert_eq!(e["creationInfo"], CREATION_INFO);
                }
            }
        }
        let known = |v: &Value| {
            let s = v.as_str().unwrap();
            assert!(ids.contains(s) || s == NO_ASSERTION_LICENSE, "dangling {s}");
        };
        for e in graph {
            for k in ["from", "suppliedBy"] {
                if !e[k].is_null() {
                    known(&e[k]);
                }
            }
            for k in [
                "to",
                "rootElement",
                "element",
                "createdBy",
                "createdUsing",
                "originatedBy",
            ] {
                for v in e[k].as_array().into_iter().flatten() {
                    known(v);
                }
            }
        }
        // the document lists every element but itself
        let d = by_type(&doc, "SpdxDocument")[0];
        assert_eq!(d["element"].as_array().unwrap().len(), ids.len() - 1);
    }

    #[test]
    fn artifacts_are_ai_packages_with_the_required_fields() {
        let doc = document(&run());
        let packages = by_type(&doc, "ai_AIPackage");
        // two artifacts, the source, one base model
        assert_eq!(packages.len(), 4);
        let q8 = packages.iter().find(|p| p["name"] == "moe-q8_0").unwrap();
        for k in [
            "suppliedBy",
            "releaseTime",
            "software_downloadLocation",
            "software_packageVersion",
            "software_primaryPurpose",
            "ai_typeOfModel",
            "ai_hyperparameter",
            "ai_metric",
            "ai_metricDecisionThreshold",
            "ai_safetyRiskAssessment",
            "ai_limitation",
            "verifiedUsing",
        ] {
            assert!(!q8[k].is_null(), "no {k}: {q8:#}");
        }
        assert_eq!(q8["software_primaryPurpose"], "model");
        assert_eq!(q8["software_downloadLocation"], "moe-q8_0.gguf");
        assert_eq!(q8["releaseTime"], "2026-01-02T03:04:05Z");
        assert_eq!(q8["ai_safetyRiskAssessment"], "medium");
        let h = &q8["ai_hyperparameter"];
        assert_eq!(entry(h, "architecture"), Some("qwen2moe"));
        assert_eq!(entry(h, "layers"), Some("24"));
        assert_eq!(entry(h, "experts"), Some("60"));
        assert_eq!(entry(h, "quantization"), Some("Q8_0"));
        assert!(q8["ai_typeOfModel"]
            .as_array()
            .unwrap()
            .contains(&json!("mixture of experts")));
        assert_eq!(
            entry(&q8["ai_metric"], "mean KLD vs moe-f16"),
            Some("0.001")
        );
        assert_eq!(
            entry(&q8["ai_metricDecisionThreshold"], "max_mean_kld vs moe-f16"),
            Some("0.01")
        );
        assert!(q8["ai_limitation"]
            .as_str()
            .unwrap()
            .contains("512 scored positions"));
        // the directory artifact: its files, a relative folder location, no parity
        let f16 = packages.iter().find(|p| p["name"] == "moe-f16").unwrap();
        assert_eq!(f16["software_downloadLocation"], "moe-f16/");
        assert!(f16["ai_metric"].is_null());
        assert_eq!(
            entry(&f16["ai_hyperparameter"], "quantization"),
            Some("Q8_0")
        );
        let files = by_type(&doc, "software_File");
        assert_eq!(files.len(), 2);
        assert!(files.iter().any(|f| f["spdxId"]
            .as_str()
            .unwrap()
            .ends_with("/file/model%20weights.safetensors")));
        // the CreationInfo time is the latest step time
        assert_eq!(doc["@graph"][0]["created"], "2026-01-03T00:00:00Z");
    }

    #[test]
    fn lineage_and_licences_are_relationships() {
        let doc = document(&run());
        let rels = by_type(&doc, "Relationship");
        let id_of = |name: &str| {
            by_type(&doc, "ai_AIPackage")
                .into_iter()
                .find(|p| p["name"] == name)
                .unwrap()["spdxId"]
                .clone()
        };
        let (q8, source, base) = (id_of("moe-q8_0"), id_of("org/Moe-Chat"), id_of("org/Moe"));
        let has = |from: &Value, ty: &str, to: &Value| {
            rels.iter().any(|r| {
                r["from"] == *from
                    && r["relationshipType"] == ty
                    && r["to"].as_array().unwrap().contains(to)
            })
        };
        assert!(has(&q8, "descendantOf", &source));
        assert!(has(&q8, "descendantOf", &base));
        assert!(has(&source, "descendantOf", &base));
        let expr = |ty: &str| {
            let r = rels
                .iter()
                .find(|r| r["from"] == q8 && r["relationshipType"] == ty)
                .unwrap();
            let id = &r["to"][0];
            by_type(&doc, "simplelicensing_LicenseExpression")
                .into_iter()
                .find(|e| e["spdxId"] == *id)
                .unwrap()["simplelicensing_licenseExpression"]
                .clone()
        };
        assert_eq!(expr("hasDeclaredLicense"), "Apache-2.0");
        assert_eq!(
            expr("hasConcludedLicense"),
            "Apache-2.0 AND LicenseRef-tongyi-qianwen"
        );
        let base_pkg = by_type(&doc, "ai_AIPackage")
            .into_iter()
            .find(|p| p["name"] == "org/Moe")
            .unwrap();
        assert_eq!(
            base_pkg["software_downloadLocation"],
            "https://huggingface.co/org/Moe"
        );
    }

    #[test]
    fn same_report_same_bytes_and_changed_artifact_new_namespace() {
        let r = run();
        assert_eq!(bom(&r), bom(&r.clone()));
        let mut r2 = r.clone();
        if let Some(a) = r2.steps[2].artifact.as_mut() {
            a.sha256 = "00".repeat(32);
        }
        let id = |r: &RunReport| document(r)["@graph"][1]["spdxId"].clone();
        assert_ne!(id(&r), id(&r2));
    }

    #[test]
    fn no_licence_and_no_scan_mean_no_assertion_and_no_risk_claim() {
        let mut r = run();
        r.steps.retain(|s| s.step == "convert");
        let doc = document(&r);
        let q8 = by_type(&doc, "ai_AIPackage")
            .into_iter()
            .find(|p| p["name"] == "moe-q8_0")
            .unwrap()
            .clone();
        assert!(q8["ai_safetyRiskAssessment"].is_null());
        assert!(by_type(&doc, "simplelicensing_LicenseExpression").is_empty());
        assert!(by_type(&doc, "Relationship")
            .iter()
            .any(|r| r["relationshipType"] == "hasDeclaredLicense"
                && r["to"][0] == NO_ASSERTION_LICENSE));
    }
}
