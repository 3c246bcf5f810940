//! The command line: one file per subcommand turns arguments into a validated config and
//! calls a stage module. `cli` and [`crate::report`] are the only code that prints.
//!
//! Exit codes: 0 pass, 1 a gate failed (scan, verify, policy, parity), 2 usage or input
//! error. Errors print as `error: ...` then one `caused by: ...` line per cause and an
//! optional `hint: ...` line, all on stderr.

mod convert;
mod generate;
mod hash;
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

fn print_error(e: &anyhow::Error) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {e}");
    for cause in e.chain().skip(1) {
        let _ = writeln!(err, "caused by: {cause}");
    }
    if let Some(h) = e.downcast_ref::<Hinted>() {
        let _ = writeln!(err, "hint: {}", h.hint);
    }
}
