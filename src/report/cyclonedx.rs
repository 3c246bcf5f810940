//! `bom.cdx.json`: the artifacts of a pipeline run as a CycloneDX 1.6 ML-BOM.
//!
//! One `machine-learning-model` component per artifact with its sha256 hashes (a directory
//! artifact lists its files as nested `file` components), its licences (SPDX ids where
//! the licence has one, names otherwise; `declared` or `concluded` for inherited ones), its
//! pedigree (the source model, and the source's declared base models), and the
//! quantization in `modelCard.properties` and `properties`. Written by hand because the
//! document is small and no Rust crate targets CycloneDX 1.6's ML-BOM fields.
//!
//! No `serialNumber` or `timestamp`: the spec asks for a fresh serial per generation, and
//! modelgate's outputs are byte-for-byte the same for the same inputs.

use serde_json::{json, Value};

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
    let mut params = json!({ "task": "text-generation" });
    if let Some(arch) = &a.architecture {
        params["architectureFamily"] = json!(arch);
        params["modelArchitecture"] = json!(arch);
    }
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
        "modelCard": { "modelParameters": params, "properties": card_props },
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
