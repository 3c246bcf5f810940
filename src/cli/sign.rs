//! `modelgate sign PATH --key KEY [--attest REPORT.json]`: hash the model, sign the
//! in-toto statement into `model.sig` (a Sigstore bundle v0.3) and, with `--attest`, sign
//! the audit report's verification summary into `model.att.sig` with the same key.

use std::path::PathBuf;
use std::time::Instant;

use crate::sign::{
    attest, attestation_path_for, default_signature_path, sign_model, Audit, KeyAlgorithm,
    PrivateKey, SignError, SignRequest,
};

use super::hash::{gbps, HashArgs};
use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory or a single model file
    path: PathBuf,
    /// Private key (PKCS#8 PEM from `modelgate keygen`, or an OpenSSL P-256 key)
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Refuse the key unless it uses this algorithm
    #[arg(long, value_enum)]
    alg: Option<KeyAlgorithm>,
    /// Where to write the signature (default: PATH/model.sig, or PATH.sig for a file)
    #[arg(long, value_name = "SIG")]
    signature: Option<PathBuf>,
    /// Also sign this audit report (JSON from `scan`/`policy check --format json`) as a
    /// SLSA verification summary, written beside the signature as `*.att.sig`
    #[arg(long, value_name = "REPORT")]
    attest: Option<PathBuf>,
    /// The policy file the audit applied, when the report does not name it
    #[arg(long, value_name = "FILE", requires = "attest")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    hashing: HashArgs,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    /// Print no timing line on stderr
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    hub: super::model_arg::HubArgs,
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    let hub =
        super::model_arg::resolve_signed(&mut args.path, &args.hub, args.signature.is_some())?;
    let opts = args.hashing.options()?;
    let key = PrivateKey::from_pem_file(&args.key).map_err(super::sign_error)?;
    if let Some(expected) = args.alg {
        if key.algorithm() != expected {
            return Err(super::sign_error(SignError::WrongAlgorithm {
                path: args.key.clone(),
                found: key.algorithm(),
                expected,
            }));
        }
    }
    let audit = match &args.attest {
        Some(p) => {
            let mut audit = Audit::read(p).map_err(super::sign_error)?;
            if let Some(policy) = &args.policy {
                audit.policy = Some(attest::policy_from_file(policy).map_err(super::sign_error)?);
            }
            // A Hub model is named by its files at the commit it resolved to.
            audit.resource_uri = hub.provenance.as_ref().map(|p| p.tree_url());
            audit.hub_source = hub.provenance.clone();
            Some(audit)
        }
        None => None,
    };
    let signature = args
        .signature
        .clone()
        .unwrap_or_else(|| default_signature_path(&args.path));
    let attestation = attestation_path_for(&signature);
    if audit.is_none() && attestation.exists() {
        eprintln!(
            "warning: `{}` is an attestation from an earlier signing; `verify` will check it \
             against this signature (re-sign with `--attest`, or remove it)",
            attestation.display()
        );
    }
    let start = Instant::now();
    let signed = sign_model(SignRequest {
        model: &args.path,
        key: &key,
        signature: &signature,
        attestation: &attestation,
        hash: opts,
        audit: audit.as_ref(),
    })
    .map_err(super::sign_error)?;
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        let v = serde_json::json!({
            "signature": signed.signature.display().to_string(),
            "attestation": signed.attestation.as_ref().map(|(p, _)| p.display().to_string()),
            "verification_result": signed.attestation.as_ref().map(|(_, ok)| if *ok { "PASSED" } else { "FAILED" }),
            "model_name": signed.manifest.model_name,
            "root_digest": signed.root.to_hex(),
            "algorithm": signed.algorithm.as_str(),
            "key_id": signed.key_id.to_hex(),
            "serialization": signed.manifest.serialization.method(),
            "resources": signed.manifest.resources.len(),
            "files": signed.manifest.files,
            "bytes": signed.manifest.bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "signed `{}`: {} files, root sha256:{}",
            signed.manifest.model_name, signed.manifest.files, signed.root
        );
        println!("signature    {}", signed.signature.display());
        if let Some((p, passed)) = &signed.attestation {
            let result = if *passed { "PASSED" } else { "FAILED" };
            println!("attestation  {} (audit {result})", p.display());
        }
        println!("key          {} {}", signed.algorithm, signed.key_id);
    }
    if !args.quiet {
        eprintln!(
            "hashed and signed {} bytes in {:.3} s ({:.2} GB/s)",
            signed.manifest.bytes,
            secs,
            gbps(signed.manifest.bytes, secs)
        );
    }
    Ok(Outcome::Pass)
}
