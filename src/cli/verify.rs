//! `modelgate verify PATH --signature model.sig --key PUB`: check a model against its
//! signature (and its audit attestation, when present) and report what changed. Exit 1 on
//! any mismatch, 2 when the key, bundle or model cannot be read.
//!
//! The signer is trusted by a bare key (`--key`, `--trusted-keys`), by a private-PKI
//! chain (`--certificate-chain ROOTS.pem`), or by Sigstore keyless identity (`--sigstore
//! --identity ID --issuer URL`, against the built-in production trust root,
//! `--staging`, or `--trusted-root FILE`). With `--sigstore`, PATH may also be a single
//! file signed by a generic Sigstore bundle (message signature or in-toto statement).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::finding::Verdict;
use crate::report::{self, GateReport, ReportFormat};
use crate::sign::pki::TrustAnchors;
use crate::sign::sigstore::{KeylessTrust, TrustRootSource, TrustedIdentity};
use crate::sign::{
    default_signature_path, verify_model, PublicKey, RelPath, SignError, Trust, TrustedKey,
    VerifyRequest,
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
    #[arg(
        long,
        value_name = "PUB",
        required_unless_present_any = ["trusted_keys", "certificate_chain", "sigstore"],
        conflicts_with_all = ["certificate_chain", "sigstore"]
    )]
    key: Option<PathBuf>,
    /// A folder of trusted public keys (`*.pub`, `*.pem`); the bundle's key hint picks one
    #[arg(long, value_name = "DIR", conflicts_with_all = ["certificate_chain", "sigstore"])]
    trusted_keys: Option<PathBuf>,
    /// Trust anchors (PEM certificates) for a certificate signature; repeatable
    #[arg(long, value_name = "ROOTS", conflicts_with = "sigstore")]
    certificate_chain: Vec<PathBuf>,
    /// Verify a Sigstore keyless signature (Fulcio certificate, Rekor entry or timestamp)
    #[arg(long, requires_all = ["identity", "issuer"])]
    sigstore: bool,
    /// The signer's certificate identity (email or URI SAN) that `--sigstore` requires
    #[arg(long, value_name = "ID", requires = "sigstore")]
    identity: Option<String>,
    /// The OIDC issuer that `--sigstore` requires (for example
    /// `https://token.actions.githubusercontent.com`)
    #[arg(long, value_name = "URL", requires = "sigstore")]
    issuer: Option<String>,
    /// A Sigstore `trusted_root.json` instead of the built-in production root
    #[arg(
        long,
        value_name = "FILE",
        requires = "sigstore",
        conflicts_with = "staging"
    )]
    trusted_root: Option<PathBuf>,
    /// Trust the Sigstore staging instance instead of production
    #[arg(long, requires = "sigstore")]
    staging: bool,
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
    let keys;
    let anchors;
    let keyless;
    let trust = if args.sigstore {
        let source = match (&args.trusted_root, args.staging) {
            (Some(p), _) => TrustRootSource::File(p.clone()),
            (None, true) => TrustRootSource::Staging,
            (None, false) => TrustRootSource::Production,
        };
        let identities = vec![TrustedIdentity {
            identity: args.identity.clone().unwrap_or_default(),
            issuer: args.issuer.clone().unwrap_or_default(),
        }];
        keyless = KeylessTrust::load(source, identities).map_err(super::sign_error)?;
        Trust::Sigstore(&keyless)
    } else if !args.certificate_chain.is_empty() {
        anchors = TrustAnchors::read(&args.certificate_chain).map_err(super::sign_error)?;
        Trust::Certificates(&anchors)
    } else {
        keys = load_keys(&args)?;
        Trust::Keys(&keys)
    };
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
        trust,
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
