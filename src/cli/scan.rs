//! `modelgate scan PATH [--format text|json|sarif] [--fail-on error|warning]`: the scan gate
//! on a weight file or a model directory. Findings go to stdout through [`crate::report`];
//! the exit code is 1 when any finding is an error (or, with `--fail-on warning`, a
//! warning), 2 when the path cannot be read.

use std::io::Write;
use std::path::PathBuf;

use crate::finding::{Severity, Verdict};
use crate::report::{self, GateReport, ReportFormat};
use crate::scan;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A weight file (pickle, PyTorch, safetensors, GGUF) or a model directory
    path: PathBuf,
    /// Output form: text for people, json for programs, sarif for code-scanning dashboards
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
    /// Lowest severity that fails the gate: `error`, or `warning` to also fail on the
    /// warning-level rules (odd added tokens, rewriting normalizers, oversized templates)
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    fail_on: FailOn,
}

/// The `--fail-on` threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FailOn {
    Error,
    Warning,
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    let hub = super::model_arg::resolve(&mut args.path, &args.hub)?;
    let findings = scan::scan(&args.path).map_err(|e| {
        let h = e.hint();
        super::hint(e, h)
    })?;
    let mut report = GateReport::new("scan", &args.path, findings);
    hub.annotate(&mut report, &args.path);
    if args.fail_on == FailOn::Warning
        && report
            .findings
            .iter()
            .any(|f| f.severity >= Severity::Warning)
    {
        report.verdict = Verdict::Fail;
    }
    let verdict = report.verdict;
    let mut out = std::io::stdout().lock();
    report::write(&mut out, args.format, &[report])?;
    out.flush()?;
    Ok(match verdict {
        Verdict::Pass => Outcome::Pass,
        Verdict::Fail => Outcome::Fail,
    })
}
