//! `modelgate policy check MODEL --policy FILE [--format text|json|sarif]`: apply a policy
//! file to a model (exit 0 pass, 1 fail, 2 bad input), and `modelgate policy validate FILE`
//! to check a policy file alone.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use crate::policy::{self, Catalogues, Policy};
use crate::report::{self, GateReport, ReportFormat};

use super::license::{open_facts, write_obligations, write_summary};
use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a model against a policy file
    Check(CheckArgs),
    /// Check that a policy file is valid
    Validate(ValidateArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// A model directory or weight file (GGUF, safetensors)
    model: PathBuf,
    /// The policy file (YAML, see schemas/policy.schema.json)
    #[arg(long)]
    policy: PathBuf,
    /// Output form
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// The policy file
    policy: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    match args.command {
        PolicyCommand::Check(a) => check(a),
        PolicyCommand::Validate(a) => {
            let p = load_policy(&a.policy)?;
            println!(
                "policy `{}` (`{}`): valid, {} waivers",
                p.file.name,
                a.policy.display(),
                p.file.waivers.len()
            );
            Ok(Outcome::Pass)
        }
    }
}

/// Load a policy file; the error's own hint (`PolicyError::hint`) is printed with it.
fn load_policy(path: &std::path::Path) -> anyhow::Result<Policy> {
    Ok(Policy::load(path)?)
}

fn check(mut args: CheckArgs) -> anyhow::Result<Outcome> {
    // The policy first: a bad policy file is an input error whatever the model is.
    let policy = load_policy(&args.policy)?;
    let hub = super::model_arg::resolve(&mut args.model, &args.hub)?;
    let mut facts = open_facts(&args.model, true)?;
    facts.hub = hub.provenance.clone();
    let cats = Catalogues::builtin()?;
    let outcome = policy::check(&facts, &policy, &cats)?;
    let a = &outcome.assessment;
    let mut findings = outcome.findings.clone();
    findings.extend(
        crate::pipeline::signed_by_trusted_identity(&args.model, &policy)
            .map_err(super::sign_error)?,
    );
    let mut report = GateReport::new("policy", &args.model, findings);
    report.waived = outcome.waived.clone();
    report.details = Some(outcome.details(&policy, &facts, policy::Detail::Full));
    hub.annotate(&mut report, &args.model);
    let mut out = std::io::stdout().lock();
    if args.format == ReportFormat::Text {
        write_summary(&mut out, &args.model, a, &cats.licences)?;
        let u = &policy.file.intended_use;
        let title = format!(
            "obligations for policy `{}` ({}, {}{})",
            policy.file.name,
            if u.commercial {
                "commercial"
            } else {
                "non-commercial"
            },
            match u.distribution {
                policy::assess::Distribution::Redistribute => "redistributed",
                policy::assess::Distribution::Hosted => "hosted service",
                policy::assess::Distribution::Internal => "internal",
            },
            if u.outputs_train_models {
                ", outputs train models"
            } else {
                ""
            }
        );
        write_obligations(&mut out, &title, &outcome.obligations, &outcome.documents)?;
        writeln!(out)?;
    }
    report::write(&mut out, args.format, std::slice::from_ref(&report))?;
    Ok(match report.verdict {
        crate::finding::Verdict::Pass => Outcome::Pass,
        crate::finding::Verdict::Fail => Outcome::Fail,
    })
}
