//! The policy stage's pieces of a report: the gate details of a check (which policy, which
//! model, licences, lineage, obligations, waivers) and the licence summary a pipeline run
//! carries into `report.md` and the CycloneDX BOM. Built here, beside the types they read,
//! so the command line and the pipeline do not copy them field by field.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Assessment, Catalogues, ModelFacts, Obligation, Outcome, Policy};
use crate::report::run::{BaseModelRef, LicenceRef, LicenceSummary};

/// How much of a check the gate details carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Everything, for `modelgate policy check --format json`: the model's file digests
    /// and every licence detection.
    Full,
    /// For a pipeline run, whose import step already lists the model's files.
    Run,
}

impl Outcome {
    /// The gate details of this check of `facts` against `policy`. Keys keep their order
    /// (the JSON is part of reports compared byte for byte).
    pub fn details(&self, policy: &Policy, facts: &ModelFacts, detail: Detail) -> Value {
        let a = &self.assessment;
        let mut model = Map::new();
        model.insert("name".into(), Value::from(a.name.clone()));
        model.insert(
            "sha256".into(),
            facts
                .model_digest
                .map_or(Value::Null, |d| Value::from(d.to_hex())),
        );
        if detail == Detail::Full {
            model.insert("files".into(), to_json(&facts.digests));
        }
        let mut m = Map::new();
        m.insert(
            "policy".into(),
            serde_json::json!({
                "name": policy.file.name,
                "path": policy.path.display().to_string(),
                "sha256": policy.digest.to_hex(),
            }),
        );
        m.insert("model".into(), Value::Object(model));
        m.insert("licences".into(), to_json(&a.licences));
        if detail == Detail::Full {
            m.insert("detections".into(), to_json(&a.detections));
        }
        m.insert("inherited".into(), to_json(&a.inherited));
        m.insert("provenance".into(), to_json(&a.provenance));
        m.insert("obligations".into(), to_json(&self.obligations));
        m.insert("documents".into(), to_json(&self.documents));
        m.insert("waivers".into(), to_json(&self.waivers));
        Value::Object(m)
    }
}

/// A value as JSON; the types here always serialize, as `serde_json::json!` assumes.
fn to_json<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Assessment {
    /// The licence summary of a run report: the licences that apply (declared, then
    /// inherited) with their SPDX ids and names from the catalogue, the lineage, and the
    /// obligations and documents for `policy`'s intended use (any use without one).
    pub fn licence_summary(
        &self,
        obligations: &[Obligation],
        documents: &[String],
        cats: &Catalogues,
        policy: Option<String>,
    ) -> LicenceSummary {
        let licences = self
            .applicable()
            .into_iter()
            .map(|(id, inh)| {
                let l = cats.licences.get(&id);
                LicenceRef {
                    spdx: l.and_then(|l| l.spdx.clone()),
                    name: l.map(|l| l.name.clone()),
                    source: match inh {
                        None => "declared".to_owned(),
                        Some(i) => format!("inherited through {}", i.via),
                    },
                    id,
                }
            })
            .collect();
        LicenceSummary {
            model_name: self.name.clone(),
            licences,
            publisher: self.provenance.publisher.clone(),
            base_models: self
                .provenance
                .base_models
                .iter()
                .map(|b| BaseModelRef {
                    name: b.name.clone(),
                    relation: b.relation.clone(),
                })
                .collect(),
            datasets: self.provenance.datasets.clone(),
            obligations: obligations
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect(),
            documents: documents.to_vec(),
            policy,
        }
    }
}
