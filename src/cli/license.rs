//! `modelgate license MODEL [--json]`: the licences a model is under (declared and
//! inherited), where each was found, its provenance, and every obligation, with no policy.
//! Informational: exit 0 whatever it finds, 2 when the model cannot be read.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use crate::formats::Checkpoint;
use crate::policy::assess::{Assessment, Obligation};
use crate::policy::catalogue::Catalogue;
use crate::policy::{self, Catalogues, ModelFacts};
use crate::report;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory or weight file (GGUF, safetensors)
    path: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

/// Open a model for the policy stage, with a clear error when it cannot be read.
pub(super) fn open_facts(path: &std::path::Path, hash: bool) -> anyhow::Result<ModelFacts> {
    let ckpt = Checkpoint::open(path).map_err(|e| {
        // An unreadable path has its own advice; a malformed file gets this stage's.
        let h = match &e {
            crate::formats::FormatError::Io { .. } => e.hint(),
            _ => None,
        }
        .unwrap_or("the model card, config and weights must be well-formed; nothing was evaluated");
        super::hint(
            anyhow::Error::new(e).context(format!("cannot read model `{}`", path.display())),
            h,
        )
    })?;
    ModelFacts::from_checkpoint(&ckpt, hash)
        .with_context(|| format!("cannot read model `{}`", path.display()))
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    let hub = super::model_arg::resolve(&mut args.path, &args.hub)?;
    let facts = open_facts(&args.path, false)?;
    let cats = Catalogues::builtin()?;
    let rep = policy::license_report(&facts, &cats);
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = json!({
            "subject": hub.subject(&args.path),
            "name": rep.assessment.name,
            "licences": rep.assessment.licences,
            "detections": rep.assessment.detections,
            "inherited": rep.assessment.inherited,
            "provenance": rep.assessment.provenance,
            "obligations": rep.obligations,
            "documents": rep.documents,
            "findings": rep.assessment.findings,
        });
        // Only a Hub model has a provenance record.
        if let Some(p) = &hub.provenance {
            v["source"] = serde_json::to_value(p)?;
        }
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        write_summary(&mut out, &args.path, &rep.assessment, &cats.licences)?;
        write_obligations(&mut out, "obligations", &rep.obligations, &rep.documents)?;
        if !rep.assessment.findings.is_empty() {
            writeln!(out, "\nfindings:")?;
            for f in &rep.assessment.findings {
                writeln!(out, "{}", report::finding_text(f))?;
            }
        }
    }
    Ok(Outcome::Pass)
}

fn pct(x: f64) -> String {
    format!("{:.0}%", (x * 100.0).floor())
}

/// Model, licences with their sources, and provenance.
pub(super) fn write_summary(
    out: &mut dyn Write,
    path: &std::path::Path,
    a: &Assessment,
    cat: &Catalogue,
) -> std::io::Result<()> {
    writeln!(out, "model `{}` (`{}`)", a.name, path.display())?;
    writeln!(out, "\nlicences:")?;
    if a.licences.is_empty() && a.inherited.is_empty() {
        writeln!(out, "  none identified")?;
    }
    for id in &a.licences {
        let name = cat.get(id).map_or("", |l| l.name.as_str());
        writeln!(out, "  {id}: {name}")?;
        for d in a
            .detections
            .iter()
            .filter(|d| d.licence.as_deref() == Some(id))
        {
            let score = d
                .score
                .map(|s| format!(" (text match {})", pct(s)))
                .unwrap_or_default();
            match d.score {
                Some(_) => writeln!(out, "    {}: {}{score}", d.source.describe(), d.evidence)?,
                None => writeln!(
                    out,
                    "    {}: {} = `{}`",
                    d.source.describe(),
                    d.evidence,
                    d.value
                )?,
            }
        }
    }
    for i in &a.inherited {
        let name = cat.get(&i.licence).map_or("", |l| l.name.as_str());
        writeln!(out, "  {}: {name} (inherited through {})", i.licence, i.via)?;
    }
    let other: Vec<_> = a
        .detections
        .iter()
        .filter(|d| d.licence.as_ref().is_none_or(|l| !a.licences.contains(l)))
        .collect();
    if !other.is_empty() {
        writeln!(out, "  unresolved:")?;
        for d in other {
            let near = d
                .nearest
                .as_ref()
                .map(|(l, s)| format!(" (closest: {l} at {})", pct(*s)))
                .unwrap_or_default();
            writeln!(
                out,
                "    {}: {} = `{}`{near}",
                d.source.describe(),
                d.evidence,
                d.value
            )?;
        }
    }
    let p = &a.provenance;
    writeln!(out, "\nprovenance:")?;
    writeln!(
        out,
        "  publisher: {}",
        p.publisher.as_deref().unwrap_or("not stated")
    )?;
    if !p.sources.is_empty() {
        writeln!(out, "  source: {}", p.sources.join(", "))?;
    }
    if p.base_models.is_empty() {
        writeln!(out, "  base model: none declared")?;
    }
    for b in &p.base_models {
        let rel = b
            .relation
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let res = match &b.resolved {
            Some(r) => {
                let inh = if r.inherits.is_empty() {
                    String::new()
                } else {
                    format!(", itself carrying {}", r.inherits.join(", "))
                };
                format!("{} family release under {}{inh}", r.family, r.licence)
            }
            None => "not in the families catalogue".into(),
        };
        writeln!(out, "  base model: `{}`{rel}: {res}", b.name)?;
    }
    let arch = &p.architecture;
    let mut facts = Vec::new();
    if let Some(x) = &arch.architecture {
        facts.push(x.clone());
    }
    if let Some(v) = arch.vocab_size {
        facts.push(format!("vocab {v}"));
    }
    if let Some(t) = arch.rope_theta {
        facts.push(format!("rope theta {t}"));
    }
    if let Some(h) = arch.embedding_length {
        facts.push(format!("hidden {h}"));
    }
    let fam = match &p.family {
        Some(f) => format!(
            ": {} family{}",
            f.name,
            if p.family_original {
                ", original release"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    if !facts.is_empty() {
        writeln!(out, "  architecture: {}{fam}", facts.join(", "))?;
    }
    if !p.datasets.is_empty() {
        writeln!(out, "  datasets: {}", p.datasets.join(", "))?;
    }
    Ok(())
}

/// Obligations grouped by licence, then the documents to ship.
pub(super) fn write_obligations(
    out: &mut dyn Write,
    title: &str,
    obligations: &[Obligation],
    documents: &[String],
) -> std::io::Result<()> {
    writeln!(out, "\n{title}:")?;
    if obligations.is_empty() {
        writeln!(out, "  none")?;
    }
    let mut last: Option<(&str, &str)> = None;
    for o in obligations {
        if last != Some((o.licence.as_str(), o.source.as_str())) {
            writeln!(out, "  {} ({}):", o.licence, o.source)?;
            last = Some((o.licence.as_str(), o.source.as_str()));
        }
        writeln!(out, "    {}: {} [{}]", o.topic.as_str(), o.duty, o.clause)?;
        for t in &o.text {
            writeln!(out, "      \"{t}\"")?;
        }
    }
    if !documents.is_empty() {
        writeln!(out, "\ndocuments to ship with every copy:")?;
        for d in documents {
            writeln!(out, "  - {d}")?;
        }
    }
    Ok(())
}
