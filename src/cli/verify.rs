//! `modelgate verify PATH --signature model.sig --key PUB`: check a model against its
//! signature (and its audit attestation, when present) and report what changed. Exit 1 on
//! any mismatch, 2 when the key, bundle or model cannot be read.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::finding::Verdict;
use crate::report::{self, GateReport, ReportFormat};
use crate::sign::{
    default_signature_path, verify_model, PublicKey, RelPath, SignError, TrustedKey, VerifyRequest,
};

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory or file that was signed
    path: PathBuf,
    /// The signature bundle (default: PATH/model.sig, or PATH.sig for a file)
    #[arg(long, value_name = "SIG")]
    signature: Option<PathBuf>,
    /// The signer's public key (SubjectPublicKeyInfo PEM)
    #[arg(long, value_name = "PUB", required_unless_present = "trusted_keys")]
    key: Option<PathBuf>,
    /// A folder of trusted public keys (`*.pub`, `*.pem`); the bundle's key hint picks one
    #[arg(long, value_name = "DIR")]
    trusted_keys: Option<PathBuf>,
    /// The audit attestation to check (default: `*.att.sig` beside the signature, when present)
    #[arg(long, value_name = "ATT")]
    attestation: Option<PathBuf>,
    /// Do not report files the signature does not cover
    #[arg(long)]
    ignore_unsigned_files: bool,
    /// Also leave this path (relative to the model) out; repeatable
    #[arg(long = "ignore-paths", value_name = "PATH")]
    ignore_paths: Vec<String>,
    /// Hashing threads (default: one per core)
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Output form
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

fn load_keys(args: &Args) -> anyhow::Result<Vec<TrustedKey>> {
    let mut keys = Vec::new();
    if let Some(p) = &args.key {
        let key = PublicKey::from_pem_file(p).map_err(super::sign_error)?;
        keys.push(TrustedKey {
            source: p.clone(),
            key,
        });
    }
    if let Some(dir) = &args.trusted_keys {
        keys.extend(trusted_dir(dir)?);
    }
    Ok(keys)
}

fn trusted_dir(dir: &Path) -> anyhow::Result<Vec<TrustedKey>> {
    let entries = fs::read_dir(dir)
        .with_context(|| format!("cannot read trusted keys `{}`", dir.display()))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for e in entries {
        let p = e
            .with_context(|| format!("cannot read trusted keys `{}`", dir.display()))?
            .path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if (ext == "pub" || ext == "pem") && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(super::sign_error(SignError::NoTrustedKeys {
            path: dir.to_owned(),
        }));
    }
    paths
        .into_iter()
        .map(|p| {
            let key = PublicKey::from_pem_file(&p).map_err(super::sign_error)?;
            Ok(TrustedKey { source: p, key })
        })
        .collect()
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    let _hub =
        super::model_arg::resolve_signed(&mut args.path, &args.hub, args.signature.is_some())?;
    let keys = load_keys(&args)?;
    let signature = args
        .signature
        .clone()
        .unwrap_or_else(|| default_signature_path(&args.path));
    let mut extra_ignore = Vec::new();
    for p in &args.ignore_paths {
        let rel = RelPath::parse(p)
            .filter(|r| r.as_str() != ".")
            .with_context(|| {
                format!("`--ignore-paths {p}` must be a path inside the model directory")
            })?;
        extra_ignore.push(rel);
    }
    let verification = verify_model(&VerifyRequest {
        model: &args.path,
        signature: &signature,
        attestation: args.attestation.as_deref(),
        keys: &keys,
        ignore_unsigned: args.ignore_unsigned_files,
        extra_ignore,
        threads: args.threads,
    })
    .map_err(super::sign_error)?;
    let mut gate = GateReport::new("verify", &args.path, verification.findings);
    gate.details = Some(verification.details);
    let verdict = gate.verdict;
    report::write(&mut std::io::stdout().lock(), args.format, &[gate])?;
    Ok(match verdict {
        Verdict::Pass => Outcome::Pass,
        Verdict::Fail => Outcome::Fail,
    })
}
