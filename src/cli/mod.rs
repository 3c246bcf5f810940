//! The command line: one file per subcommand turns arguments into a validated config and
//! calls a stage module. `cli` and [`crate::report`] are the only code that prints.
//!
//! Exit codes: 0 pass, 1 a gate failed (scan, verify, policy, parity), 2 usage or input
//! error. Errors print as `error: ...` then one `caused by: ...` line per cause and an
//! optional `hint: ...` line, all on stderr.

mod convert;
mod generate;
mod hash;
mod imatrix;
mod inspect;
mod keygen;
mod license;
mod logits;
mod merge;
mod model_arg;
mod parity;
mod policy;
mod run;
mod scan;
mod sign;
mod verify;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// What a subcommand concluded when it ran to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every gate passed (or the command is not a gate).
    Pass,
    /// A gate failed: exit code 1.
    Fail,
}

#[derive(Debug, Parser)]
#[command(
    name = "modelgate",
    version,
    about = "Vet, convert, check and sign open-weight LLM checkpoints"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what a checkpoint file or model directory contains
    Inspect(inspect::Args),
    /// Convert and quantize: Hugging Face / PyTorch -> GGUF, GGUF -> GGUF, GGUF -> safetensors
    Convert(convert::Args),
    /// Look for code, malformed structure and broken values before anything loads a model
    Scan(scan::Args),
    /// Hash a model directory: per-file (or per-shard) sha256 and the root digest
    Hash(hash::Args),
    /// Create a signing key pair (ed25519 or P-256)
    Keygen(keygen::Args),
    /// Sign a model directory into `model.sig` (OpenSSF model signing bundle)
    Sign(sign::Args),
    /// Verify a model against its signature and report what changed
    Verify(verify::Args),
    /// Show the licences a model is under, its provenance and what adopting it obliges
    License(license::Args),
    /// Check a model against a policy file, or validate a policy file
    Policy(policy::Args),
    /// Run a pipeline file: scan, convert, verify, policy, parity and sign, with reports
    Run(run::Args),
    /// Continue a prompt with the reference engine (greedy unless --temperature)
    Generate(generate::Args),
    /// List the most likely next tokens after a prompt
    Logits(logits::Args),
    /// How far a candidate drifts from its reference (KLD, PPL ratio, top-1); golden files
    Parity(parity::Args),
    /// Check the shares of `convert --shard I/N` and assemble them into one GGUF
    Merge(merge::Args),
    /// Compute an importance matrix on a calibration text (llama.cpp's GGUF imatrix)
    Imatrix(imatrix::Args),
}

/// Parse the process arguments, run, and map the result to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout (exit 0) and usage errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(Outcome::Pass) => ExitCode::SUCCESS,
        Ok(Outcome::Fail) => ExitCode::from(1),
        Err(e) => {
            print_error(&e);
            ExitCode::from(2)
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Scan(args) => scan::run(args),
        Command::Hash(args) => hash::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Verify(args) => verify::run(args),
        Command::License(args) => license::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Run(args) => run::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Parity(args) => parity::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Imatrix(args) => imatrix::run(args),
    }
}

/// An error with advice on what to do about it, printed as a `hint:` line.
#[derive(Debug)]
pub struct Hinted {
    pub error: anyhow::Error,
    pub hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for Hinted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Attach a hint to an error.
pub fn hint(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        error: error.into(),
        hint: hint.into(),
    })
}

/// A signing error with its hint attached, if it has one.
fn sign_error(e: crate::sign::SignError) -> anyhow::Error {
    match e.hint() {
        Some(h) => hint(e, h),
        None => e.into(),
    }
}

/// The hint of a stage error, where the error is one and has a hint.
fn stage_hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use crate::{convert, digest, engine, formats, parity, policy, sign};
    if let Some(e) = e.downcast_ref::<convert::ConvertError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<engine::EngineError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<parity::ParityError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<policy::PolicyError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<sign::SignError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<digest::DigestError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<formats::FormatError>() {
        return e.hint();
    }
    None
}

/// The hint to print: one attached with [`hint`], else that of the outermost stage error
/// in the chain that has one.
fn hint_of(e: &anyhow::Error) -> Option<String> {
    if let Some(h) = e.downcast_ref::<Hinted>() {
        return Some(h.hint.clone());
    }
    e.chain().find_map(|c| match c.downcast_ref::<Hinted>() {
        Some(h) => Some(h.hint.clone()),
        None => stage_hint(c).map(str::to_owned),
    })
}

/// Causes from outside modelgate (the operating system's `No such file or directory`)
/// start in upper case; messages here are lower case. Acronyms (`GGUF`, `IO`) are kept.
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => {
            a.to_lowercase().chain(s[a.len_utf8()..].chars()).collect()
        }
        _ => s.to_owned(),
    }
}

/// The error, then one `caused by:` line per cause and the hint, each cause once.
fn render_error(e: &anyhow::Error) -> String {
    let mut s = format!("error: {e}\n");
    for cause in e.chain().skip(1) {
        s.push_str(&format!("caused by: {}\n", lower_first(&cause.to_string())));
    }
    if let Some(h) = hint_of(e) {
        s.push_str(&format!("hint: {h}\n"));
    }
    s
}

fn print_error(e: &anyhow::Error) {
    let _ = std::io::stderr()
        .lock()
        .write_all(render_error(e).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn each_cause_once_lower_case_with_the_stage_hint() {
        let e = crate::policy::PolicyError::Io {
            path: PathBuf::from("p.yaml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = anyhow::Error::new(e).context("cannot load the policy");
        assert_eq!(
            render_error(&e),
            "error: cannot load the policy\n\
             caused by: cannot read `p.yaml`\n\
             caused by: entity not found\n\
             hint: check the path\n"
        );
    }

    #[test]
    fn an_attached_hint_wins_over_the_stage_hint() {
        let e = crate::formats::FormatError::malformed(std::path::Path::new("m.gguf"), "bad");
        let e = hint(e, "try another file");
        assert_eq!(
            render_error(&e),
            "error: `m.gguf`: bad\nhint: try another file\n"
        );
    }

    #[test]
    fn lower_first_keeps_acronyms() {
        assert_eq!(lower_first("No such file"), "no such file");
        assert_eq!(lower_first("GGUF header"), "GGUF header");
        assert_eq!(lower_first(""), "");
    }
}
