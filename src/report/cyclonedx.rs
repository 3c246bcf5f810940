//! `bom.cdx.json`: the artifacts of a pipeline run as a CycloneDX 1.6 ML-BOM.
//!
//! One `machine-learning-model` component per artifact with its sha256 hashes (a directory
//! artifact lists its files as nested `file` components), its licences (SPDX ids where
//! the licence has one, names otherwise; `declared` or `concluded` for inherited ones), its
//! pedigree (the source model, and the source's declared base models), and a `modelCard`:
//! `modelParameters` (task, architecture, text in and out, the datasets the source's card
//! names), `quantitativeAnalysis.performanceMetrics` from the parity step,
//! `considerations.technicalLimitations`, and in `properties` the quantization,
//! hyper-parameters (layers, experts, ...), the calibration text and importance matrix
//! with their sha256 and a size-budget mix (`modelgate:calibration:*`), and parity limits,
//! which CycloneDX has no field for. Written by hand because the document is small and no Rust crate targets
//! CycloneDX 1.6's ML-BOM fields.
//!
//! No `serialNumber` or `timestamp`: the spec asks for a fresh serial per generation, and
//! modelgate's outputs are byte-for-byte the same for the same inputs.

use serde_json::{json, Value};

use super::bom::{self, Parity};
use super::run::{Artifact, LicenceSummary, RunReport};

fn prop(name: &str, value: impl ToString) -> Value {
    json!({ "name": name, "value": value.to_string() })
}

fn sha256(hex: &str) -> Value {
    json!({ "alg": "SHA-256", "content": hex })
}

fn licences(l: Option<&LicenceSummary>) -> Vec<Value> {
    let Some(l) = l else { return Vec::new() };
    l.licences
        .iter()
        .map(|x| {
            let ack = if x.source == "declared" {
                "declared"
            } else {
                "concluded"
            };
            match &x.spdx {
                Some(id) => json!({ "license": { "id": id, "acknowledgement": ack } }),
                None => json!({ "license": {
                    "name": x.name.clone().unwrap_or_else(|| x.id.clone()),
                    "acknowledgement": ack,
                } }),
            }
        })
        .collect()
}

fn source_component(r: &RunReport) -> Value {
    let l = r.licence();
    let name = l.map_or_else(|| r.model.path.clone(), |l| l.model_name.clone());
    let mut c = json!({
        "type": "machine-learning-model",
        "name": name,
        "properties": [
            prop("modelgate:path", &r.model.path),
            prop("modelgate:root-digest", format!("sha256:{}", r.model.sha256)),
        ],
    });
    if let Some(import) = r.steps.iter().find(|s| s.step == "import") {
        if let Some(Value::Array(files)) = import.settings.get("files") {
            let hashes: Vec<Value> = files
                .iter()
                .filter_map(|f| f.get("sha256").and_then(Value::as_str).map(sha256))
                .collect();
            if hashes.len() == 1 {
                c["hashes"] = json!(hashes);
            }
        }
    }
    if let Some(p) = &r.source {
        hub_source(&mut c, p);
    }
    let lic = licences(l);
    if !lic.is_empty() {
        c["licenses"] = json!(lic);
    }
    if let Some(l) = l {
        if let Some(p) = &l.publisher {
            c["publisher"] = json!(p);
        }
        let bases: Vec<Value> = l
            .base_models
            .iter()
            .map(|b| {
                let mut v = json!({ "type": "machine-learning-model", "name": b.name });
                if let Some(rel) = &b.relation {
                    v["properties"] = json!([prop("modelgate:relation", rel)]);
                }
                v
            })
            .collect();
        if !bases.is_empty() {
            c["pedigree"] = json!({ "ancestors": bases });
        }
    }
    c
}

/// A Hub source: pinned to its commit (`version`, `purl`), where its files are
/// (`externalReferences`), each file with its sha256, and the Hub's facts as properties.
fn hub_source(c: &mut Value, p: &crate::provenance::Provenance) {
    c["version"] = json!(p.commit.as_str());
    c["purl"] = json!(p.purl());
    c["externalReferences"] = json!([
        {
            "type": "distribution",
            "url": p.tree_url(),
            "comment": format!(
                "`hf://{}@{}` resolved to commit {}",
                p.repository, p.requested_revision, p.commit
            ),
        },
        { "type": "vcs", "url": format!("{}/{}", p.endpoint, p.repository) },
    ]);
    if let Value::Array(props) = &mut c["properties"] {
        props.push(prop("modelgate:hub-repository", &p.repository));
        props.push(prop("modelgate:hub-revision", &p.requested_revision));
        props.push(prop("modelgate:hub-commit", &p.commit));
        if let Some(h) = &p.hub {
            let gated = serde_json::to_value(h.gated).unwrap_or(Value::Null);
            props.push(prop(
                "modelgate:hub-gated",
                gated.as_str().unwrap_or_default(),
            ));
            if !h.licence.is_empty() {
                props.push(prop("modelgate:hub-licence", h.licence.join(", ")));
            }
        }
    }
    let files: Vec<Value> = p
        .files
        .iter()
        .map(|f| {
            json!({
                "type": "file",
                "name": f.path,
                "hashes": [sha256(&f.sha256.to_hex())],
                "properties": [prop("modelgate:bytes", f.size)],
            })
        })
        .collect();
    c["components"] = json!(files);
}

fn artifact_component(r: &RunReport, a: &Artifact, source: &Value) -> Value {
    let mut props = vec![
        prop("modelgate:format", &a.format),
        prop("modelgate:tensors", a.tensors),
        prop("modelgate:parameters", a.parameters),
        prop("modelgate:bytes", a.bytes),
        prop(
            "modelgate:bits-per-weight",
            format!("{:.4}", a.bits_per_weight),
        ),
    ];
    if let Some(q) = &a.file_type {
        props.insert(0, prop("modelgate:quantization", q));
    }
    if let Some(s) = r.signatures().find(|s| s.artifact == a.name) {
        props.push(prop("modelgate:signature", &s.signature));
        props.push(prop(
            "modelgate:signing-key",
            format!("{} {}", s.algorithm, s.key_id),
        ));
    }
    let mut card_props = Vec::new();
    if let Some(q) = &a.file_type {
        card_props.push(prop("modelgate:quantization", q));
    }
    card_props.push(prop(
        "modelgate:bits-per-weight",
        format!("{:.4}", a.bits_per_weight),
    ));
    for (t, s) in &a.types {
        card_props.push(prop(
            &format!("modelgate:tensor-type:{t}"),
            format!("{} tensors, {} bytes", s.tensors, s.bytes),
        ));
    }
    for (k, v) in bom::hyperparameter_entries(a) {
        if k != "quantization" && k != "bits_per_weight" {
            card_props.push(prop(&format!("modelgate:hyperparameter:{k}"), v));
        }
    }
    for (k, v) in bom::calibration_entries(a) {
        card_props.push(prop(&format!("modelgate:calibration:{k}"), v));
    }
    let mut params = json!({
        "task": "text-generation",
        "inputs": [{ "format": "text" }],
        "outputs": [{ "format": "text" }],
    });
    if let Some(arch) = &a.architecture {
        params["architectureFamily"] = json!(arch);
        params["modelArchitecture"] = json!(arch);
    }
    let datasets: Vec<Value> = r
        .licence()
        .map(|l| l.datasets.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| json!({ "type": "dataset", "name": d }))
        .collect();
    if !datasets.is_empty() {
        params["datasets"] = json!(datasets);
    }
    let mut card = json!({
        "modelParameters": params,
        "considerations": { "technicalLimitations": [bom::limitation(r, a)] },
    });
    if let Some(p) = bom::parity(r, &a.name) {
        card["quantitativeAnalysis"] = json!({ "performanceMetrics": performance_metrics(&p) });
        for m in &p.metrics {
            if let (Some(t), Some(pass)) = (&m.threshold, m.passed) {
                card_props.push(prop(
                    &format!("modelgate:parity-threshold:{}", m.name),
                    format!("{t} ({})", if pass { "pass" } else { "fail" }),
                ));
            }
        }
    }
    card["properties"] = json!(card_props);
    let mut c = json!({
        "type": "machine-learning-model",
        "bom-ref": format!("artifact:{}", a.name),
        "name": a.name,
        "description": format!(
            "{} {} converted from `{}` by modelgate",
            a.format,
            a.file_type.as_deref().unwrap_or(""),
            r.model.path
        ).replace("  ", " "),
        "pedigree": { "ancestors": [source] },
        "modelCard": card,
        "properties": props,
    });
    let lic = licences(r.licence());
    if !lic.is_empty() {
        c["licenses"] = json!(lic);
    }
    if a.path.ends_with(".gguf") {
        c["hashes"] = json!([sha256(&a.sha256)]);
    } else {
        c["components"] = json!(a
            .files
            .iter()
            .map(|f| json!({
                "type": "file",
                "bom-ref": format!("artifact:{}/{}", a.name, f.path),
                "name": f.path,
                "hashes": [sha256(&f.sha256)],
            }))
            .collect::<Vec<_>>());
    }
    c
}

/// Parity figures as CycloneDX performance metrics: every figure, its `slice` naming the
/// reference it was measured against. A checked figure is named by its limit
/// (`max_mean_kld`); the limits themselves go in `modelCard.properties`, which has the
/// only place for them.
fn performance_metrics(p: &Parity) -> Vec<Value> {
    p.metrics
        .iter()
        .map(|m| {
            json!({
                "type": m.name,
                "value": m.value,
                "slice": format!("next-token distributions against `{}`", p.reference),
            })
        })
        .collect()
}

/// The BOM of a run.
pub fn bom(r: &RunReport) -> Value {
    let source = source_component(r);
    let components: Vec<Value> = r
        .artifacts()
        .map(|a| artifact_component(r, a, &source))
        .collect();
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "version": 1,
        "metadata": {
            "tools": { "components": [{
                "type": "application",
                "name": "modelgate",
                "version": r.tool.version,
            }]},
            "properties": [
                prop("modelgate:pipeline", &r.name),
                prop("modelgate:verdict", r.verdict),
            ],
        },
        "components": components,
    })
}
