//! `report.md`: a pipeline run as a pull-request comment. The verdict comes first (and,
//! when it fails, exactly which gate failed and why), then the licence obligations a
//! reviewer must accept, the findings, the parity table per target, the signatures, and
//! the artifacts (with what their quantization was calibrated on) and steps for reference.

use std::fmt::Write as _;

use serde_json::Value;

use super::run::{RunReport, Status};
use crate::finding::{Severity, Verdict};

/// A table cell: pipes escaped, line breaks flattened.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn short(hex: &str) -> String {
    hex.chars().take(12).collect()
}

fn human_bytes(n: u64) -> String {
    crate::inspect::human_bytes(n)
}

/// Where a Hub model came from: the commit it resolved to, the Hub's licence and gating
/// facts, and each file's digest beside the one the Hub lists.
fn source(o: &mut String, p: &crate::provenance::Provenance) {
    let _ = writeln!(o, "## Source\n");
    let pinned = if p.is_pinned() {
        "pinned to its commit".to_owned()
    } else {
        format!(
            "revision `{}` (a name that can move)",
            cell(&p.requested_revision)
        )
    };
    let _ = writeln!(
        o,
        "Hugging Face repository `{}`, {pinned}, resolved to commit `{}` on {} ([files at this commit]({})).",
        p.repository,
        p.commit,
        p.endpoint,
        p.tree_url()
    );
    match &p.hub {
        Some(h) => {
            let licence = if h.licence.is_empty() {
                "none declared".to_owned()
            } else {
                h.licence
                    .iter()
                    .map(|l| format!("`{}`", cell(l)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let gated = match h.gated {
                crate::provenance::Gated::No => "not gated",
                crate::provenance::Gated::Auto => {
                    "gated (access granted on accepting its conditions)"
                }
                crate::provenance::Gated::Manual => "gated (the publisher approves each request)",
            };
            let _ = writeln!(
                o,
                "The Hub lists licence {licence}{}; the repository is {gated}.",
                h.licence_name
                    .as_ref()
                    .map(|n| format!(" (`{}`)", cell(n)))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(
                o,
                "Read from the local Hugging Face cache without asking the Hub: no Hub licence or gating facts."
            );
        }
    }
    let _ = writeln!(o, "\n| file | bytes | sha256 | the Hub's LFS sha256 |");
    let _ = writeln!(o, "|---|---:|---|---|");
    for f in &p.files {
        let lfs = match &f.hub_lfs_sha256 {
            Some(d) if *d == f.sha256 => "same".to_owned(),
            Some(d) => format!("`{}` (differs)", d),
            None => "not in LFS".to_owned(),
        };
        let _ = writeln!(
            o,
            "| `{}` | {} | `{}` | {lfs} |",
            cell(&f.path),
            f.size,
            f.sha256
        );
    }
    let _ = writeln!(o);
}

/// What each quantization was calibrated on: text and importance matrix with their full
/// sha256, and the types a size budget chose per kind of tensor.
fn calibration(o: &mut String, r: &RunReport) {
    let arts: Vec<_> = r
        .artifacts()
        .filter(|a| a.calibration.is_some() || a.mix.is_some())
        .collect();
    if arts.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "### Calibration
"
    );
    for a in arts {
        if let Some(c) = &a.calibration {
            let from = match &c.text {
                Some(t) => format!(
                    "computed from `{}` (sha256 `{}`), {} chunks of {} tokens",
                    cell(&t.path),
                    t.sha256,
                    c.chunks,
                    c.ctx
                ),
                None => format!("given ({} chunks of {} tokens)", c.chunks, c.ctx),
            };
            let _ = writeln!(
                o,
                "- `{}`: importance matrix `{}` (sha256 `{}`, {} entries), {from}.",
                a.name,
                cell(&c.imatrix.path),
                c.imatrix.sha256,
                c.entries
            );
        }
        if let Some(m) = &a.mix {
            let _ = writeln!(
                o,
                "- `{}`: size-budget mix for `{}` ({} of tensor data; this model {:.3} to {:.3} bits/weight), {} sensitivity probes, predicted KLD {:.3e}:\n",
                a.name,
                m.budget,
                human_bytes(m.budget_bytes),
                m.min_bpw,
                m.max_bpw,
                m.probes,
                m.predicted_kld
            );
            let _ = writeln!(o, "  | tensors | count | types | size | bits/weight |");
            let _ = writeln!(o, "  |---|---:|---|---:|---:|");
            for g in &m.groups {
                let _ = writeln!(
                    o,
                    "  | `{}` | {} | {} | {} | {:.2} |",
                    cell(&g.group),
                    g.tensors,
                    g.types_text(),
                    human_bytes(g.bytes),
                    g.bits_per_weight
                );
            }
        }
    }
    let _ = writeln!(o);
}

/// Render a run.
pub fn render(r: &RunReport) -> String {
    let mut o = String::new();
    let (mark, word) = match r.verdict {
        Verdict::Pass => ("✅", "PASS"),
        Verdict::Fail => ("❌", "FAIL"),
    };
    let _ = writeln!(
        o,
        "# {mark} modelgate pipeline `{}`: {word}\n",
        cell(&r.name)
    );
    if r.failed_gates.is_empty() {
        let gates = r.gates().count();
        let _ = writeln!(
            o,
            "**Verdict: pass.** Every gate passed ({gates} gate results).\n"
        );
    } else {
        let _ = writeln!(
            o,
            "**Verdict: fail.** {} gate result(s) failed:\n",
            r.failed_gates.len()
        );
        for g in &r.failed_gates {
            let _ = writeln!(
                o,
                "- gate `{}` (step `{}`) on `{}`:",
                g.gate, g.step, g.subject
            );
            for reason in &g.reasons {
                let _ = writeln!(o, "  - {}", reason.replace('\n', " "));
            }
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "Model `{}` (sha256 `{}`){}; modelgate {}; pipeline `{}`.\n",
        r.model.path,
        short(&r.model.sha256),
        r.policy
            .as_ref()
            .map(|p| format!(", policy `{}`", p.path))
            .unwrap_or_default(),
        r.tool.version,
        r.pipeline.path
    );
    if let Some(p) = &r.source {
        source(&mut o, p);
    }

    let _ = writeln!(o, "## Licence obligations\n");
    match r.licence() {
        None => {
            let _ = writeln!(o, "No licence information was gathered.\n");
        }
        Some(l) => {
            let lic: Vec<String> = l
                .licences
                .iter()
                .map(|x| {
                    format!(
                        "`{}`{} ({})",
                        x.id,
                        x.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default(),
                        x.source
                    )
                })
                .collect();
            let _ = writeln!(
                o,
                "`{}` is under {}.",
                cell(&l.model_name),
                if lic.is_empty() {
                    "no identified licence".to_owned()
                } else {
                    lic.join(", ")
                }
            );
            if !l.base_models.is_empty() {
                let b: Vec<String> = l
                    .base_models
                    .iter()
                    .map(|b| match &b.relation {
                        Some(rel) => format!("`{}` ({rel})", b.name),
                        None => format!("`{}`", b.name),
                    })
                    .collect();
                let _ = writeln!(o, "Base model: {}.", b.join(", "));
            }
            let _ = writeln!(o);
            let scope = match &l.policy {
                Some(p) => format!("for the intended use of policy `{p}`"),
                None => "for any use (no policy step)".to_owned(),
            };
            if l.obligations.is_empty() {
                let _ = writeln!(o, "No obligations {scope}.\n");
            } else {
                let _ = writeln!(o, "Obligations {scope}:\n");
                let _ = writeln!(o, "| licence | topic | duty | clause | source |");
                let _ = writeln!(o, "|---|---|---|---|---|");
                let s = |v: &Value, k: &str| cell(v.get(k).and_then(Value::as_str).unwrap_or(""));
                for ob in &l.obligations {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} |",
                        s(ob, "licence"),
                        s(ob, "topic"),
                        s(ob, "duty"),
                        s(ob, "clause"),
                        s(ob, "source")
                    );
                }
                let _ = writeln!(o);
            }
            if !l.documents.is_empty() {
                let _ = writeln!(o, "Ship with the model: {}.\n", l.documents.join(", "));
            }
        }
    }

    let _ = writeln!(o, "## Findings\n");
    let mut rows = Vec::new();
    let mut notes = 0usize;
    for (s, g) in r.gates() {
        for f in &g.findings {
            if f.severity == Severity::Note {
                notes += 1;
                continue;
            }
            let at = f
                .evidence
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| format!("`{}`", g.subject));
            rows.push(format!(
                "| {} | {} | `{}` | {} | {} |",
                s.name,
                f.severity,
                f.rule,
                cell(&f.message),
                cell(&at)
            ));
        }
    }
    if rows.is_empty() {
        let _ = writeln!(
            o,
            "No errors or warnings ({notes} notes; see `report.sarif`).\n"
        );
    } else {
        let _ = writeln!(o, "| step | severity | rule | message | where |");
        let _ = writeln!(o, "|---|---|---|---|---|");
        for row in rows {
            let _ = writeln!(o, "{row}");
        }
        let _ = writeln!(o, "\nAnd {notes} notes (see `report.sarif`).\n");
    }

    let _ = writeln!(o, "## Parity\n");
    let mut any = false;
    for (s, p) in r.parity() {
        any = true;
        let _ = writeln!(
            o,
            "### `{}` against `{}`: {}\n",
            s.name.trim_start_matches("parity:"),
            p.get("reference").and_then(Value::as_str).unwrap_or("?"),
            s.verdict.map_or("?", |v| v.as_str())
        );
        let _ = writeln!(o, "| metric | value | threshold | result |");
        let _ = writeln!(o, "|---|---|---|---|");
        if let Some(Value::Array(rows)) = p.get("metrics") {
            for m in rows {
                let num = |k: &str| match m.get(k) {
                    Some(Value::Number(n)) => {
                        n.as_f64().map_or(String::new(), |x| format!("{x:.6}"))
                    }
                    Some(Value::String(s)) => s.clone(),
                    _ => String::new(),
                };
                let result = match m.get("pass").and_then(Value::as_bool) {
                    Some(true) => "pass",
                    Some(false) => "**fail**",
                    None => "",
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} |",
                    cell(m.get("name").and_then(Value::as_str).unwrap_or("")),
                    num("value"),
                    num("threshold"),
                    result
                );
            }
        }
        let _ = writeln!(o);
    }
    if !any {
        let _ = writeln!(o, "No parity step in this pipeline.\n");
    }

    let _ = writeln!(o, "## Signatures\n");
    let sigs: Vec<_> = r.signatures().collect();
    if sigs.is_empty() {
        let skipped: Vec<_> = r
            .steps
            .iter()
            .filter(|s| s.step == "sign" && s.status == Status::Skipped)
            .filter_map(|s| s.note.as_deref())
            .collect();
        match skipped.first() {
            Some(n) => {
                let _ = writeln!(o, "Nothing signed: {n}.\n");
            }
            None => {
                let _ = writeln!(o, "No sign step in this pipeline.\n");
            }
        }
    } else {
        let _ = writeln!(
            o,
            "| artifact | signature | attestation | key | root digest |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|");
        for s in sigs {
            let _ = writeln!(
                o,
                "| {} | `{}` | {} | {} `{}` | `{}` |",
                s.artifact,
                s.signature,
                s.attestation
                    .as_ref()
                    .map(|a| format!("`{a}`"))
                    .unwrap_or_else(|| "none".into()),
                s.algorithm,
                short(&s.key_id),
                short(&s.root_digest)
            );
        }
        let _ = writeln!(o);
    }

    let arts: Vec<_> = r.artifacts().collect();
    if !arts.is_empty() {
        let _ = writeln!(o, "## Artifacts\n");
        let _ = writeln!(
            o,
            "| artifact | format | type | size | bits/weight | sha256 |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for a in arts {
            let _ = writeln!(
                o,
                "| `{}` | {} | {} | {} | {:.3} | `{}` |",
                a.path,
                a.format,
                a.file_type.as_deref().unwrap_or("-"),
                human_bytes(a.bytes),
                a.bits_per_weight,
                short(&a.sha256)
            );
        }
        let _ = writeln!(o);
        calibration(&mut o, r);
    }

    let _ = writeln!(o, "## Steps\n");
    let _ = writeln!(o, "| step | status | verdict | seconds |");
    let _ = writeln!(o, "|---|---|---|---|");
    for s in &r.steps {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.3} |",
            s.name,
            s.status.as_str(),
            s.verdict.map_or("-", |v| v.as_str()),
            s.seconds
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::{CommitSha, Gated, HubCard, Provenance, ProvenanceFile, RepoId};
    use crate::types::Sha256Digest;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn prov(rev: &str, hub: Option<HubCard>, lfs: Option<Sha256Digest>) -> Provenance {
        Provenance::new(
            RepoId::parse("org/model").unwrap(),
            rev,
            CommitSha::parse(SHA).unwrap(),
            "https://huggingface.co",
            hub,
            vec![ProvenanceFile {
                path: "model.safetensors".into(),
                size: 3,
                sha256: Sha256Digest::of(b"abc"),
                hub_lfs_sha256: lfs,
            }],
        )
    }

    #[test]
    fn source_names_the_commit_the_hub_facts_and_each_file() {
        let card = HubCard {
            licence: vec!["llama3.1".into()],
            gated: Gated::Manual,
            ..HubCard::default()
        };
        let d = Sha256Digest::of(b"abc");
        let mut o = String::new();
        source(&mut o, &prov("main", Some(card), Some(d)));
        assert!(o.contains("revision `main` (a name that can move)"), "{o}");
        assert!(o.contains(&format!("resolved to commit `{SHA}`")), "{o}");
        assert!(
            o.contains(&format!("(https://huggingface.co/org/model/tree/{SHA})")),
            "{o}"
        );
        assert!(o.contains("licence `llama3.1`"), "{o}");
        assert!(o.contains("the publisher approves each request"), "{o}");
        assert!(
            o.contains(&format!("| `model.safetensors` | 3 | `{d}` | same |")),
            "{o}"
        );

        let mut o = String::new();
        let other = Sha256Digest::of(b"x");
        source(&mut o, &prov(SHA, None, Some(other)));
        assert!(o.contains("pinned to its commit"), "{o}");
        assert!(o.contains("no Hub licence or gating facts"), "{o}");
        assert!(o.contains(&format!("`{other}` (differs)")), "{o}");
    }
}
