//! What the two BOM writers ([`super::cyclonedx`], [`super::spdx`]) say alike about a run:
//! an artifact's architecture hyper-parameters, what its quantization was calibrated on
//! (calibration text, importance matrix, size-budget mix), its parity metrics and thresholds, its
//! licences as one SPDX licence expression, the risk its scan and verify gates found, the
//! limitation a consumer should know, and the time a step ran.
//!
//! Times come from the run report, never from the clock at writing time: each step
//! records when it ran ([`timestamp_now`]) and a cached step keeps the time of the run
//! that produced its result, so rewriting the BOMs of an unchanged run gives the same
//! bytes. `SOURCE_DATE_EPOCH` (the reproducible-builds convention) fixes the times of a
//! fresh run too.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::run::{Artifact, LicenceRef, RunReport};
use crate::finding::Severity;
use crate::formats::experts::{param_split, Experts};
use crate::formats::{Checkpoint, MetaValue};

/// Architecture hyper-parameters of an artifact, read back from the written file's own
/// header (GGUF keys, or `config.json` of a safetensors directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Transformer blocks (`block_count`, `num_hidden_layers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u64>,
    /// Experts per MoE layer (`expert_count`, `num_local_experts`, `num_experts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<u64>,
    /// Experts routed to per token (`expert_used_count`, `num_experts_per_tok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts_used: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<u64>,
    /// Parameters one token uses in a mixture of experts: all but the routed experts,
    /// plus `experts_used / experts` of theirs (counted from the tensor table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_parameters: Option<u64>,
}

/// Config keys for the expert counts, by family (Mixtral and gpt-oss, Qwen-MoE and OLMoE,
/// DeepSeek).
const CONFIG_EXPERTS: [&str; 3] = ["num_local_experts", "num_experts", "n_routed_experts"];
const CONFIG_EXPERTS_USED: [&str; 1] = ["num_experts_per_tok"];

impl Hyperparameters {
    /// The hyper-parameters an opened checkpoint declares.
    pub fn of(ckpt: &Checkpoint) -> Hyperparameters {
        let p = ckpt.params();
        let meta = &ckpt.weights.metadata;
        let arch_key = |suffix: &str| -> Option<u64> {
            let arch = p.architecture.as_deref()?;
            let key = format!("{arch}.{suffix}");
            meta.iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| MetaValue::as_u64(v))
        };
        let config = ckpt.dir.as_ref().and_then(|d| d.config.as_ref());
        let from_config = |keys: &[&str]| -> Option<u64> {
            let cfg = config?;
            // Multimodal configs nest the language model's keys under `text_config`.
            [Some(cfg), cfg.get("text_config")]
                .into_iter()
                .flatten()
                .flat_map(|c| keys.iter().filter_map(move |k| c.get(*k)?.as_u64()))
                .next()
        };
        let moe = Experts::of(ckpt).0;
        let active_parameters = moe
            .is_moe()
            .then(|| param_split(&ckpt.weights.tensors, &moe).active);
        Hyperparameters {
            layers: p.block_count,
            experts: from_config(&CONFIG_EXPERTS).or_else(|| arch_key("expert_count")),
            experts_used: from_config(&CONFIG_EXPERTS_USED)
                .or_else(|| arch_key("expert_used_count")),
            context_length: p.context_length,
            embedding_length: p.embedding_length,
            heads: p.head_count,
            kv_heads: p.head_count_kv,
            vocab_size: p.vocab_size,
            active_parameters,
        }
    }

    /// Whether the model routes tokens through experts.
    pub fn is_moe(&self) -> bool {
        self.experts.is_some_and(|n| n > 1)
    }
}

/// The hyper-parameters of an artifact as ordered key/value pairs: architecture, layers,
/// experts, the other shape keys, then parameters and quantization.
pub fn hyperparameter_entries(a: &Artifact) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(arch) = &a.architecture {
        out.push(("architecture", arch.clone()));
    }
    let h = a.hyperparameters.clone().unwrap_or_default();
    for (k, v) in [
        ("layers", h.layers),
        ("experts", h.experts),
        ("experts_used", h.experts_used),
        ("context_length", h.context_length),
        ("embedding_length", h.embedding_length),
        ("attention_heads", h.heads),
        ("kv_heads", h.kv_heads),
        ("vocab_size", h.vocab_size),
        ("parameters", Some(a.parameters)),
        ("active_parameters", h.active_parameters),
    ] {
        if let Some(v) = v {
            out.push((k, v.to_string()));
        }
    }
    out.push((
        "quantization",
        a.file_type.clone().unwrap_or_else(|| dominant_type(a)),
    ));
    out.push(("bits_per_weight", format!("{:.4}", a.bits_per_weight)));
    out
}

/// What an artifact's quantization was calibrated on, as ordered key/value pairs: the
/// calibration text and its sha256, the importance matrix and its sha256, its chunk size
/// and chunks, then, for a size-budget mix, the budget and each kind of tensor's types.
/// Empty for an artifact quantized without an importance matrix. Only digests, counts and
/// type names: the same inputs give the same entries on every machine.
pub fn calibration_entries(a: &Artifact) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(c) = &a.calibration {
        if let Some(t) = &c.text {
            out.push(("calibration_text".to_owned(), t.path.clone()));
            out.push(("calibration_text_sha256".to_owned(), t.sha256.clone()));
        }
        out.push(("imatrix".to_owned(), c.imatrix.path.clone()));
        out.push(("imatrix_sha256".to_owned(), c.imatrix.sha256.clone()));
        out.push(("imatrix_entries".to_owned(), c.entries.to_string()));
        out.push(("imatrix_ctx".to_owned(), c.ctx.to_string()));
        out.push(("imatrix_chunks".to_owned(), c.chunks.to_string()));
    }
    if let Some(m) = &a.mix {
        out.push(("mix_budget".to_owned(), m.budget.clone()));
        for g in &m.groups {
            out.push((
                format!("mix:{}", g.group),
                format!("{} ({:.4} bits/weight)", g.types_text(), g.bits_per_weight),
            ));
        }
    }
    out
}

/// The storage type holding most bytes (`F16`, `BF16`), for artifacts without a GGUF file
/// type.
fn dominant_type(a: &Artifact) -> String {
    a.types
        .iter()
        .max_by(|x, y| x.1.bytes.cmp(&y.1.bytes).then(y.0.cmp(x.0)))
        .map_or_else(|| "unknown".to_owned(), |(t, _)| t.clone())
}

/// One parity figure for an artifact.
#[derive(Clone, Debug, PartialEq)]
pub struct ParityMetric {
    /// `mean KLD`, `same top-1`, or a limit name (`max_mean_kld`) for a checked value.
    pub name: String,
    pub value: String,
    /// The limit, for checked values.
    pub threshold: Option<String>,
    pub passed: Option<bool>,
}

/// The parity result of an artifact: the reference it was compared with and its figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Parity {
    pub reference: String,
    /// Where the thresholds came from (a policy or the pipeline file), when any applied.
    pub thresholds: Option<String>,
    pub metrics: Vec<ParityMetric>,
}

impl Parity {
    /// The unchecked figure named `name` (`mean KLD`).
    pub fn figure(&self, name: &str) -> Option<&str> {
        self.metrics
            .iter()
            .find(|m| m.name == name && m.threshold.is_none())
            .map(|m| m.value.as_str())
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The parity step's result for the artifact named `artifact`.
pub fn parity(r: &RunReport, artifact: &str) -> Option<Parity> {
    let (_, p) = r
        .parity()
        .find(|(_, p)| p.get("candidate").and_then(Value::as_str) == Some(artifact))?;
    let metrics = p
        .get("metrics")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    Some(ParityMetric {
                        name: m.get("name")?.as_str()?.to_owned(),
                        value: scalar(m.get("value")?)?,
                        threshold: m.get("threshold").and_then(scalar),
                        passed: m.get("pass").and_then(Value::as_bool),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Parity {
        reference: p.get("reference").and_then(scalar).unwrap_or_default(),
        thresholds: p
            .get("thresholds")
            .and_then(Value::as_str)
            .map(str::to_owned),
        metrics,
    })
}

/// A licence as an SPDX licence expression term: its SPDX id, or `LicenseRef-` and
/// modelgate's catalogue id (letters, digits, `.` and `-` only) for licences without one.
pub fn licence_term(l: &LicenceRef) -> String {
    match &l.spdx {
        // A compound id (`Apache-2.0 OR MIT`) stays one term when joined with AND.
        Some(s) if s.contains(' ') => format!("({s})"),
        Some(s) => s.clone(),
        None => {
            let id: String =
                l.id.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
            format!("LicenseRef-{id}")
        }
    }
}

/// The conjunction of the licences that `keep` selects, each once, in report order;
/// `None` when it selects none.
pub fn licence_expression(
    licences: &[LicenceRef],
    keep: impl Fn(&LicenceRef) -> bool,
) -> Option<String> {
    let mut terms: Vec<String> = Vec::new();
    for l in licences.iter().filter(|l| keep(l)) {
        let t = licence_term(l);
        if !terms.contains(&t) {
            terms.push(t);
        }
    }
    (!terms.is_empty()).then(|| terms.join(" AND "))
}

/// The gate subject string of an artifact, as the pipeline names it.
pub fn artifact_subject(r: &RunReport, a: &Artifact) -> String {
    Path::new(&r.out).join(&a.path).display().to_string()
}

/// The worst unwaived finding of the scan and verify gates about the source model and
/// this artifact; `None` when neither gate ran on them.
pub fn scan_severity(r: &RunReport, a: &Artifact) -> Option<Option<Severity>> {
    let subject = artifact_subject(r, a);
    let gates: Vec<_> = r
        .gates()
        .filter(|(_, g)| g.gate == "scan" || g.gate == "verify")
        .filter(|(_, g)| g.subject == r.model.path || g.subject == subject)
        .collect();
    if gates.is_empty() {
        return None;
    }
    Some(
        gates
            .iter()
            .flat_map(|(_, g)| g.findings.iter().map(|f| f.severity))
            .max(),
    )
}

/// What a consumer of the artifact should know: how it was made and how far its outputs
/// were checked against the reference.
pub fn limitation(r: &RunReport, a: &Artifact) -> String {
    let what = match &a.file_type {
        Some(q) => format!(
            "{q} quantization ({:.2} bits per weight)",
            a.bits_per_weight
        ),
        None => format!("{} conversion", dominant_type(a)),
    };
    let source = r
        .licence()
        .map_or_else(|| r.model.path.clone(), |l| l.model_name.clone());
    let mut s = format!(
        "{what} of `{source}`, written by modelgate {}.",
        r.tool.version
    );
    match parity(r, &a.name) {
        Some(p) => {
            let fig = |name: &str, label: &str| {
                p.figure(name).map(|v| format!("{label} {}", readable(v)))
            };
            let figures: Vec<String> = [
                fig("mean KLD", "mean KL divergence"),
                fig("same top-1", "top-1 agreement"),
                fig("PPL ratio", "perplexity ratio"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let positions = p
                .figure("scored positions")
                .map(|n| format!(" over {n} scored positions"))
                .unwrap_or_default();
            s.push_str(&format!(
                " Its next-token distributions differ from `{}`'s: {}{positions}; outputs are not identical to the reference model's.",
                p.reference,
                figures.join(", ")
            ));
        }
        None => s.push_str(
            " No parity check compared its outputs with the source model, so its accuracy loss is not measured.",
        ),
    }
    let subject = artifact_subject(r, a);
    let failed: Vec<&str> = r
        .failed_gates
        .iter()
        .filter(|g| g.subject == subject || g.subject == r.model.path)
        .map(|g| g.step.as_str())
        .collect();
    if !failed.is_empty() {
        s.push_str(&format!(" Failed gates: `{}`.", failed.join("`, `")));
    }
    s
}

/// A figure for prose: four decimals, or three significant digits in scientific notation
/// when it is that small. Anything not a float stays as it is.
fn readable(v: &str) -> String {
    match v.parse::<f64>() {
        Ok(x) if v.contains(['.', 'e', 'E']) && x != 0.0 && x.abs() < 1e-3 => format!("{x:.2e}"),
        Ok(x) if v.contains(['.', 'e', 'E']) => format!("{x:.4}"),
        _ => v.to_owned(),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn timestamp(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Now, as a step's `ran_at`: `SOURCE_DATE_EPOCH` when set, else the clock.
pub fn timestamp_now() -> String {
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    let secs = epoch.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
    });
    timestamp(secs)
}

/// When the run's outputs were last produced: the latest time a step ran.
pub fn created(r: &RunReport) -> String {
    r.steps
        .iter()
        .filter_map(|s| s.ran_at.clone())
        .max()
        // Records cached by a modelgate that did not record times.
        .unwrap_or_else(timestamp_now)
}

/// When an artifact was written: the time its convert step ran.
pub fn released(r: &RunReport, a: &Artifact) -> Option<String> {
    r.steps
        .iter()
        .find(|s| s.artifact.as_ref().is_some_and(|x| x.name == a.name))
        .and_then(|s| s.ran_at.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well_in_prose() {
        assert_eq!(readable("8.2842792150288e-7"), "8.28e-7");
        assert_eq!(readable("0.9896004378762999"), "0.9896");
        assert_eq!(readable("1827"), "1827");
        assert_eq!(readable("0.0"), "0.0000");
    }

    #[test]
    fn calibration_entries_name_text_matrix_and_mix_without_floats_of_the_run() {
        let a: Artifact = serde_json::from_value(serde_json::json!({
            "name": "m", "path": "m.gguf", "format": "gguf", "sha256": "ab", "files": [],
            "bytes": 1, "tensors": 1, "parameters": 1, "bits_per_weight": 5.0, "types": {},
            "calibration": {
                "text": { "path": "c.txt", "sha256": "01" },
                "imatrix": { "path": "m.imatrix.gguf", "sha256": "02" },
                "entries": 14, "ctx": 64, "chunks": 2,
            },
            "mix": {
                "budget": "target_bpw 5", "budget_bytes": 10, "min_bpw": 4.5, "max_bpw": 16.0,
                "probes": 3, "predicted_kld": 0.123456789,
                "groups": [{ "group": "attn_q.weight", "tensors": 2,
                    "types": { "Q4_K": 1, "Q6_K": 1 }, "bytes": 9, "bits_per_weight": 5.5,
                    "predicted_kld": 0.1 }],
            },
        }))
        .unwrap();
        let e = calibration_entries(&a);
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "calibration_text",
                "calibration_text_sha256",
                "imatrix",
                "imatrix_sha256",
                "imatrix_entries",
                "imatrix_ctx",
                "imatrix_chunks",
                "mix_budget",
                "mix:attn_q.weight"
            ]
        );
        assert_eq!(e[8].1, "Q4_Kx1 Q6_Kx1 (5.5000 bits/weight)");
        assert!(!e.iter().any(|(_, v)| v.contains("0.123")));
    }

    #[test]
    fn timestamps_are_utc_seconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00Z");
    }

    fn lic(id: &str, spdx: Option<&str>, source: &str) -> LicenceRef {
        LicenceRef {
            id: id.into(),
            spdx: spdx.map(str::to_owned),
            name: None,
            source: source.into(),
        }
    }

    #[test]
    fn licences_join_as_one_expression_with_licence_refs() {
        let ls = [
            lic("apache-2.0", Some("Apache-2.0"), "declared"),
            lic(
                "llama3.1",
                None,
                "inherited through meta-llama/Llama-3.1-8B",
            ),
            lic("dual", Some("MIT OR Apache-2.0"), "declared"),
            lic("apache-2.0", Some("Apache-2.0"), "inherited through x"),
        ];
        assert_eq!(
            licence_expression(&ls, |_| true).unwrap(),
            "Apache-2.0 AND LicenseRef-llama3.1 AND (MIT OR Apache-2.0)"
        );
        assert_eq!(
            licence_expression(&ls, |l| l.source == "declared").unwrap(),
            "Apache-2.0 AND (MIT OR Apache-2.0)"
        );
        assert_eq!(licence_expression(&ls, |_| false), None);
        assert_eq!(
            licence_term(&lic("cc by/nc 4", None, "declared")),
            "LicenseRef-cc-by-nc-4"
        );
    }
}
