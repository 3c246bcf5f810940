//! The one writer for findings. Scan, verify, policy and parity produce [`Finding`]s and a
//! [`Verdict`]; this module renders them as text for people, JSON for programs, and SARIF
//! 2.1.0 for code-scanning dashboards. Stages never format findings themselves, so every
//! gate reads the same and one SARIF file can carry the findings of all of them.
//!
//! [`GateReport`] is the one gate-report type: the CLI prints it, the pipeline records it
//! per step, and `sign` reads it back (`--report`) to attest it. [`run`] holds the types of
//! a pipeline run's report, which [`markdown`] and [`cyclonedx`] render. This module
//! depends only on [`crate::finding`], so stages and the pipeline can both use it.

pub mod bom;
pub mod cyclonedx;
pub mod markdown;
pub mod run;
pub mod spdx;

use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::finding::{Finding, Severity, Verdict};

/// Output form for gate results, shared by every gate command (`--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    #[default]
    Text,
    Json,
    Sarif,
}

/// What one gate concluded about one subject, as `modelgate scan|policy check|parity
/// --format json` prints it, `report.json` records it and `sign --report` reads it back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateReport {
    /// The gate: `scan`, `verify`, `policy`, `parity`.
    pub gate: String,
    /// The model file or directory examined.
    pub subject: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// Findings that a waiver suppressed; listed separately, never counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waived: Vec<Finding>,
    /// Gate-specific data (obligations, statistics) carried into JSON output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl GateReport {
    /// A report whose verdict follows from its findings.
    pub fn new(gate: &str, subject: &Path, findings: Vec<Finding>) -> Self {
        let verdict = Verdict::from_findings(&findings);
        GateReport {
            gate: gate.to_owned(),
            subject: subject.display().to_string(),
            verdict,
            findings,
            waived: Vec::new(),
            details: None,
        }
    }
}

/// Write reports in the chosen form.
pub fn write(out: &mut dyn Write, format: ReportFormat, reports: &[GateReport]) -> io::Result<()> {
    match format {
        ReportFormat::Text => {
            for r in reports {
                write_text(out, r)?;
            }
            Ok(())
        }
        ReportFormat::Json => {
            let v = if reports.len() == 1 {
                serde_json::to_value(&reports[0])
            } else {
                serde_json::to_value(reports)
            }
            .map_err(io::Error::other)?;
            serde_json::to_writer_pretty(&mut *out, &v).map_err(io::Error::other)?;
            writeln!(out)
        }
        ReportFormat::Sarif => {
            serde_json::to_writer_pretty(&mut *out, &sarif(reports)).map_err(io::Error::other)?;
            writeln!(out)
        }
    }
}

/// One finding as text: `error[rule]: message`, then `  --> evidence` and `  hint:` lines.
pub fn finding_text(f: &Finding) -> String {
    let mut s = format!("{}[{}]: {}", f.severity, f.rule, f.message);
    for e in &f.evidence {
        s.push_str(&format!("\n  --> {e}"));
    }
    if let Some(h) = &f.hint {
        s.push_str(&format!("\n  hint: {h}"));
    }
    s
}

fn write_text(out: &mut dyn Write, r: &GateReport) -> io::Result<()> {
    for f in &r.findings {
        writeln!(out, "{}", finding_text(f))?;
    }
    if !r.waived.is_empty() {
        writeln!(out, "waived:")?;
        for f in &r.waived {
            writeln!(out, "  {}[{}]: {}", f.severity, f.rule, f.message)?;
        }
    }
    let count = |s: Severity| r.findings.iter().filter(|f| f.severity == s).count();
    // A policy gate names the policy applied, then the model: `policy `NAME` on `MODEL``.
    let policy = r
        .details
        .as_ref()
        .and_then(|d| d.pointer("/policy/name"))
        .and_then(Value::as_str);
    let heading = match policy {
        Some(name) if r.gate == "policy" => format!("policy `{name}` on `{}`", r.subject),
        _ => format!("{} `{}`", r.gate, r.subject),
    };
    writeln!(
        out,
        "{heading}: {} ({} errors, {} warnings, {} notes{})",
        r.verdict,
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Note),
        if r.waived.is_empty() {
            String::new()
        } else {
            format!(", {} waived", r.waived.len())
        }
    )
}

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

/// GitHub code scanning ranks results by `security-severity` (CVSS-like, 0-10).
fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "8.0",
        Severity::Warning => "5.0",
        Severity::Note => "2.0",
    }
}

/// A SARIF 2.1.0 log with one run holding every report's findings. Each result points at
/// the file (and line) its evidence names; findings without evidence point at the subject.
pub fn sarif(reports: &[GateReport]) -> Value {
    let mut rules: Vec<(String, Severity, String)> = Vec::new();
    let mut results = Vec::new();
    for r in reports {
        for f in &r.findings {
            match rules.iter_mut().find(|(id, _, _)| *id == f.rule) {
                Some(rule) => rule.1 = rule.1.max(f.severity),
                None => rules.push((f.rule.clone(), f.severity, r.gate.clone())),
            }
            let locations: Vec<Value> = if f.evidence.is_empty() {
                vec![location(&r.subject, None)]
            } else {
                f.evidence
                    .iter()
                    .map(|e| location(&e.path.display().to_string(), e.line))
                    .collect()
            };
            let mut result = json!({
                "ruleId": f.rule,
                "level": sarif_level(f.severity),
                "message": { "text": f.message },
                "locations": locations,
            });
            if let Some(h) = &f.hint {
                result["message"]["markdown"] = json!(format!("{}\n\nhint: {}", f.message, h));
            }
            results.push(result);
        }
    }
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|(id, sev, gate)| {
            json!({
                "id": id,
                "shortDescription": { "text": format!("modelgate {gate} rule {id}") },
                "defaultConfiguration": { "level": sarif_level(sev) },
                "properties": { "security-severity": security_severity(sev), "tags": [gate] },
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "modelgate",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/modelgate/modelgate",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

fn location(uri: &str, line: Option<u64>) -> Value {
    let mut loc = json!({ "physicalLocation": { "artifactLocation": { "uri": uri } } });
    if let Some(line) = line {
        loc["physicalLocation"]["region"] = json!({ "startLine": line });
    }
    loc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Evidence;

    fn sample() -> GateReport {
        let f = Finding::new(
            "scan/pickle-dangerous-global",
            Severity::Error,
            "global `os.system` can run code",
        )
        .at(Evidence::file("model.bin")
            .with_key("os.system")
            .with_offset(12))
        .hint("convert the checkpoint to safetensors in a sandbox");
        let n = Finding::new("policy/card-missing", Severity::Note, "no model card");
        GateReport::new("scan", Path::new("m"), vec![f, n])
    }

    #[test]
    fn text_lists_findings_then_verdict() {
        let mut out = Vec::new();
        write(&mut out, ReportFormat::Text, &[sample()]).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("error[scan/pickle-dangerous-global]: global `os.system` can run code\n  --> `model.bin` `os.system` at byte 12\n  hint: convert"));
        assert!(s.ends_with("scan `m`: fail (1 errors, 0 warnings, 1 notes)\n"));
    }

    #[test]
    fn sarif_has_rules_results_and_locations() {
        let v = sarif(&[sample()]);
        assert_eq!(v["version"], "2.1.0");
        let run = &v["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"].as_array().unwrap().len(), 2);
        assert_eq!(run["results"][0]["level"], "error");
        assert_eq!(
            run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "model.bin"
        );
        // a finding without evidence points at the subject
        assert_eq!(
            run["results"][1]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "m"
        );
    }
}
