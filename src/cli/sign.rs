//! `modelgate sign PATH --key KEY [--attest REPORT.json]`: hash the model, sign the
//! in-toto statement into `model.sig` (a Sigstore bundle v0.3) and, with `--attest`, sign
//! the audit report's verification summary into `model.att.sig` with the same key.
//!
//! `--certificate LEAF.pem [--certificate-chain CHAIN.pem]` adds a private-PKI chain for
//! the key; `--sigstore` signs keyless instead (OIDC token, Fulcio, Rekor or a TSA).

use std::path::PathBuf;
use std::time::Instant;

use crate::sign::keyless::{self, Endpoints, Http, ProcessEnv, Session};
use crate::sign::{
    attest, attestation_path_for, default_signature_path, pki, sign_model_with, Audit,
    KeyAlgorithm, Material, PrivateKey, SignError, SignRequest,
};

use super::hash::{gbps, HashArgs};
use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory or a single model file
    path: PathBuf,
    /// Private key (PKCS#8 PEM from `modelgate keygen`, or an OpenSSL P-256/P-384 key)
    #[arg(
        long,
        value_name = "KEY",
        required_unless_present = "sigstore",
        conflicts_with = "sigstore"
    )]
    key: Option<PathBuf>,
    /// The key's certificate (PEM): sign as a private-PKI certificate signature
    #[arg(long, value_name = "LEAF", requires = "key")]
    certificate: Option<PathBuf>,
    /// The certificate's issuers (PEM, intermediates; a self-signed root is left out of
    /// the bundle); repeatable
    #[arg(long, value_name = "CHAIN", requires = "certificate")]
    certificate_chain: Vec<PathBuf>,
    /// Sign keyless with Sigstore: an OIDC identity token, a Fulcio certificate for an
    /// ephemeral key, and a Rekor entry (or a timestamp)
    #[arg(long)]
    sigstore: bool,
    /// The OIDC identity token (default: `SIGSTORE_ID_TOKEN`, or GitHub Actions' token)
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "sigstore",
        hide_env_values = true
    )]
    identity_token: Option<String>,
    /// Use the Sigstore staging instance
    #[arg(long, requires = "sigstore")]
    staging: bool,
    /// Fulcio URL (default: the production or staging instance)
    #[arg(long, value_name = "URL", requires = "sigstore")]
    fulcio_url: Option<String>,
    /// Rekor URL (default: the production or staging instance)
    #[arg(long, value_name = "URL", requires = "sigstore")]
    rekor_url: Option<String>,
    /// Do not log to Rekor (then `--tsa-url` must give a timestamp authority)
    #[arg(long, requires_all = ["sigstore", "tsa_url"], conflicts_with = "rekor_url")]
    no_rekor: bool,
    /// An RFC 3161 timestamp authority, e.g. `https://timestamp.sigstore.dev`
    #[arg(long, value_name = "URL", requires = "sigstore")]
    tsa_url: Option<String>,
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

/// The keyless session: token, ephemeral key, Fulcio certificate.
fn keyless_session(args: &Args) -> anyhow::Result<Session> {
    let mut endpoints = if args.staging {
        Endpoints::staging()
    } else {
        Endpoints::production()
    };
    if let Some(u) = &args.fulcio_url {
        endpoints.fulcio = u.clone();
    }
    if let Some(u) = &args.rekor_url {
        endpoints.rekor = Some(u.clone());
    }
    if args.no_rekor {
        endpoints.rekor = None;
    }
    endpoints.tsa = args.tsa_url.clone();
    let http = Http::new();
    let token = keyless::ambient_token(args.identity_token.as_deref(), &ProcessEnv, &http)
        .map_err(super::sign_error)?;
    if !args.quiet {
        eprintln!(
            "identity token from {} for `{}` (issuer `{}`)",
            token.source.as_str(),
            token.subject,
            token.issuer
        );
    }
    Session::start(&token, endpoints, http).map_err(super::sign_error)
}

pub fn run(mut args: Args) -> anyhow::Result<Outcome> {
    let hub =
        super::model_arg::resolve_signed(&mut args.path, &args.hub, args.signature.is_some())?;
    let opts = args.hashing.options()?;
    let session = if args.sigstore {
        Some(keyless_session(&args)?)
    } else {
        None
    };
    let own_key;
    let chain;
    let (key, material) = match (&session, &args.key) {
        (Some(s), _) => (s.key(), Material::Keyless(s)),
        (None, Some(path)) => {
            own_key = PrivateKey::from_pem_file(path).map_err(super::sign_error)?;
            if let Some(expected) = args.alg {
                if own_key.algorithm() != expected {
                    return Err(super::sign_error(SignError::WrongAlgorithm {
                        path: path.clone(),
                        found: own_key.algorithm(),
                        expected,
                    }));
                }
            }
            match &args.certificate {
                Some(leaf) => {
                    chain = pki::chain_for_bundle(leaf, &args.certificate_chain)
                        .map_err(super::sign_error)?;
                    let certified = chain[0].public_key().map_err(|what| {
                        super::sign_error(SignError::Certificate {
                            path: leaf.clone(),
                            what,
                        })
                    })?;
                    if certified != own_key.public() {
                        return Err(super::sign_error(SignError::Certificate {
                            path: leaf.clone(),
                            what: format!("certifies another key than `{}`", path.display()),
                        }));
                    }
                    (&own_key, Material::Certificates(&chain))
                }
                None => (&own_key, Material::KeyHint),
            }
        }
        (None, None) => anyhow::bail!("pass `--key KEY` or `--sigstore`"),
    };
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
    let signed = sign_model_with(
        SignRequest {
            model: &args.path,
            key,
            signature: &signature,
            attestation: &attestation,
            hash: opts,
            audit: audit.as_ref(),
        },
        material,
    )
    .map_err(super::sign_error)?;
    let signer = match material {
        Material::Keyless(s) => Some(format!("sigstore `{}` from `{}`", s.subject, s.issuer)),
        Material::Certificates(chain) => chain
            .first()
            .map(|c| format!("certificate `{}`", c.subject())),
        Material::KeyHint => None,
    };
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
            "signer": signer,
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
        if let Some(s) = &signer {
            println!("signer       {s}");
        }
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
