//! Sigstore keyless verification: a Fulcio certificate, a Rekor entry or an RFC 3161
//! timestamp, checked offline against a `trusted_root.json`.
//!
//! The checks are those of the `sigstore-verify` crate (pinned, see `Cargo.toml`): the
//! Fulcio chain at the signing time, the SCT, the Rekor inclusion proof, signed checkpoint
//! and signed entry timestamp, RFC 3161 timestamps, the certificate's validity at every
//! verified time, the entry's consistency with the bundle, and the signature over the
//! DSSE envelope or the artifact. This module adds what a model verifier needs around it:
//! the trust root (built in, staging, or a file), an input check that the bundle carries
//! a log entry or a timestamp at all, the signer's identity and issuer held against the
//! trusted identities, and the sorting of the crate's errors into failed checks (exit 1)
//! and unusable input (exit 2).
//!
//! The built-in production trust root, `trusted_root_production.json`, is a byte-for-byte
//! copy of the Sigstore public-good root as sigstore-python ships it
//! (github.com/sigstore/sigstore-python, `sigstore/_store/https%3A%2F%2Ftuf-repo-cdn.sigstore.dev/trusted_root.json`
//! at commit 27db13db157ecae5606eb22ec0be299ef348c370, Apache-2.0). It goes stale when
//! Sigstore rotates keys; `--trusted-root` takes a fresh one. The staging root is the one
//! the pinned `sigstore-trust-root` crate embeds.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{Bundle as SigstoreBundle, Sha256Hash};
use sigstore_verify::{Error as SvError, VerificationPolicy, Verifier};

use super::keys::PublicKey;
use super::SignError;

/// The Sigstore public-good trust root this build trusts by default.
pub const PRODUCTION_TRUSTED_ROOT: &str = include_str!("trusted_root_production.json");

/// Trust roots are a few kilobytes; cap what we read.
const MAX_TRUST_ROOT: u64 = 4 * 1024 * 1024;

/// Which trust root to check keyless signatures against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustRootSource {
    /// The built-in production root.
    Production,
    /// The Sigstore staging instance (the pinned crate's snapshot).
    Staging,
    /// A `trusted_root.json` file.
    File(PathBuf),
}

impl TrustRootSource {
    pub fn describe(&self) -> String {
        match self {
            TrustRootSource::Production => "built-in Sigstore production trust root".into(),
            TrustRootSource::Staging => "built-in Sigstore staging trust root".into(),
            TrustRootSource::File(p) => format!("trust root `{}`", p.display()),
        }
    }
}

/// A signer a policy trusts: a certificate identity (the SAN: an email or a URI such as
/// a CI workflow) and the OIDC issuer that vouched for it. Both must match exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedIdentity {
    pub identity: String,
    pub issuer: String,
}

/// A loaded trust root and the identities allowed to sign.
pub struct KeylessTrust {
    verifier: Verifier,
    pub source: TrustRootSource,
    /// Signers to accept; a signature by anyone else is a failed check.
    pub identities: Vec<TrustedIdentity>,
    /// Always true outside this crate's tests, whose fake Fulcio issues no SCT.
    pub(crate) check_sct: bool,
}

impl std::fmt::Debug for KeylessTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeylessTrust")
            .field("source", &self.source)
            .field("identities", &self.identities)
            .finish()
    }
}

fn root_err(source: &TrustRootSource, what: impl Into<String>) -> SignError {
    SignError::TrustRoot {
        which: source.describe(),
        what: what.into(),
    }
}

impl KeylessTrust {
    /// Load and check a trust root; the identities may be empty only when the caller
    /// authorizes the signer itself.
    pub fn load(
        source: TrustRootSource,
        identities: Vec<TrustedIdentity>,
    ) -> Result<Self, SignError> {
        super::provider::install();
        let text = match &source {
            TrustRootSource::Production => PRODUCTION_TRUSTED_ROOT.to_owned(),
            TrustRootSource::Staging => {
                sigstore_verify::trust_root::SIGSTORE_STAGING_TRUSTED_ROOT.to_owned()
            }
            TrustRootSource::File(p) => read_capped(p, MAX_TRUST_ROOT, "trust root")?,
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| root_err(&source, format!("is not JSON: {e}")))?;
        let media = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        if !media.starts_with("application/vnd.dev.sigstore.trustedroot") {
            return Err(root_err(
                &source,
                format!(
                    "is JSON but not a Sigstore trusted root: media type `{media}`, expected \
                     `application/vnd.dev.sigstore.trustedroot+json;version=0.1`"
                ),
            ));
        }
        let root = TrustedRoot::from_json(&text)
            .map_err(|e| root_err(&source, format!("cannot be used: {e}")))?;
        let verifier =
            Verifier::new(&root).map_err(|e| root_err(&source, format!("cannot be used: {e}")))?;
        Ok(KeylessTrust {
            verifier,
            source,
            identities,
            check_sct: true,
        })
    }
}

/// Read a small text file with a size cap; `what` names it in errors.
pub(crate) fn read_capped(path: &Path, cap: u64, what: &str) -> Result<String, SignError> {
    let file = fs::File::open(path).map_err(|source| SignError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SignError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > cap {
        return Err(SignError::Bundle {
            path: path.to_owned(),
            what: format!("is larger than {cap} bytes, too big for a {what}"),
        });
    }
    String::from_utf8(bytes).map_err(|_| SignError::Bundle {
        path: path.to_owned(),
        what: format!("is not UTF-8 text, so not a {what}"),
    })
}

/// Who signed, as the verified certificate says.
#[derive(Clone, Debug, Serialize)]
pub struct KeylessSigner {
    pub identity: String,
    pub issuer: String,
    /// The certificate's public key, which also signs the audit attestation.
    #[serde(skip)]
    pub key: PublicKey,
    /// Rekor's integrated time, RFC 3339, when the bundle had a v1 entry.
    pub integrated_time: Option<String>,
    /// Every verified signing time (log and RFC 3161), RFC 3339.
    pub verified_times: Vec<String>,
    pub tlog_verified: bool,
    pub sct_verified: bool,
}

/// A check that failed: the rule and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub rule: &'static str,
    pub message: String,
}

/// What the artifact is to the bundle.
pub enum Artifact<'a> {
    /// A model: the bundle's in-toto subject digest (the root over the file digests).
    RootDigest(&'a crate::types::Sha256Digest),
    /// A single file, read in full: the digest of a message signature or of an in-toto
    /// subject must match it.
    File(&'a Path),
}

/// Parse a bundle file for the Sigstore path, and refuse (as input errors) bundles that
/// cannot be keyless: no certificate, or neither a log entry nor a timestamp.
pub fn read_bundle(path: &Path) -> Result<(SigstoreBundle, String), SignError> {
    let text = read_capped(path, 256 * 1024 * 1024, "signature bundle")?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| SignError::BundleJson {
            path: path.to_owned(),
            source,
        })?;
    let vm = &value["verificationMaterial"];
    let tlog = vm["tlogEntries"].as_array().is_some_and(|a| !a.is_empty());
    let tsa = vm["timestampVerificationData"]["rfc3161Timestamps"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    let has_cert = vm.get("certificate").is_some() || vm.get("x509CertificateChain").is_some();
    if !has_cert {
        return Err(SignError::Bundle {
            path: path.to_owned(),
            what: "has no signing certificate, so it is not a Sigstore keyless signature".into(),
        });
    }
    if !tlog && !tsa {
        return Err(SignError::Bundle {
            path: path.to_owned(),
            what: "has neither a transparency log entry nor an RFC 3161 timestamp, so no \
                   signing time can be trusted: it is not a Sigstore keyless signature (a \
                   private-PKI certificate signature is verified with `--certificate-chain`)"
                .into(),
        });
    }
    let bundle = SigstoreBundle::from_json(&text).map_err(|e| SignError::Bundle {
        path: path.to_owned(),
        what: format!("is not a valid Sigstore bundle: {e}"),
    })?;
    Ok((bundle, text))
}

/// The sha256 digest of the first subject of an in-toto statement, unverified.
pub fn statement_subject(payload: &[u8]) -> Option<crate::types::Sha256Digest> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    crate::types::Sha256Digest::from_hex(v["subject"][0]["digest"]["sha256"].as_str()?)
}

/// Whether a bundle file holds a model signature (a DSSE in-toto statement with the
/// model signing predicate) rather than a signature over a single artifact.
pub fn is_model_signature(path: &Path) -> Result<bool, SignError> {
    use base64::Engine;
    let text = read_capped(path, 256 * 1024 * 1024, "signature bundle")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| SignError::BundleJson {
            path: path.to_owned(),
            source,
        })?;
    let Some(payload) = v["dsseEnvelope"]["payload"].as_str() else {
        return Ok(false);
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(payload) else {
        return Ok(false);
    };
    let st: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(st["predicateType"].as_str() == Some(super::statement::MODEL_SIGNING_PREDICATE))
}

/// Verify a keyless bundle against the trust root, then the signer against the trusted
/// identities. `Ok(Err(_))` is a failed check; `Err(_)` is input that cannot be checked.
pub fn verify_bundle(
    trust: &KeylessTrust,
    bundle: &SigstoreBundle,
    path: &Path,
    artifact: Artifact<'_>,
) -> Result<Result<KeylessSigner, Rejection>, SignError> {
    let policy = if trust.check_sct {
        VerificationPolicy::any_identity()
    } else {
        VerificationPolicy::any_identity().skip_sct()
    };
    let result = match artifact {
        Artifact::RootDigest(d) => {
            let digest = Sha256Hash::from_hex(&d.to_hex()).map_err(|e| SignError::Bundle {
                path: path.to_owned(),
                what: format!("digest: {e}"),
            })?;
            trust.verifier.verify(digest, bundle, &policy)
        }
        Artifact::File(file) => {
            let f = fs::File::open(file).map_err(|source| SignError::Io {
                path: file.to_owned(),
                source,
            })?;
            trust
                .verifier
                .verify_reader(std::io::BufReader::new(f), bundle, &policy)
        }
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => return classify(e, trust, path).map(Err),
    };
    let identity = result
        .identity()
        .map(|i| i.as_str().to_owned())
        .unwrap_or_default();
    let issuer = result.issuer().unwrap_or_default().to_owned();
    let key = result
        .certificate()
        .map(|c| PublicKey::from_spki_der(c.public_key.as_bytes()))
        .transpose()
        .map_err(|what| SignError::Bundle {
            path: path.to_owned(),
            what: format!("signing certificate key: {what}"),
        })?;
    let Some(key) = key else {
        return Err(SignError::Bundle {
            path: path.to_owned(),
            what: "verified without a signing certificate".into(),
        });
    };
    let signer = KeylessSigner {
        identity,
        issuer,
        key,
        integrated_time: result.integrated_time().map(|t| t.to_string()),
        verified_times: result
            .verified_timestamps()
            .iter()
            .map(|t| t.to_string())
            .collect(),
        tlog_verified: result.tlog_verified(),
        sct_verified: result.sct_verified(),
    };
    if let Some(rejection) = authorize(&signer, &trust.identities) {
        return Ok(Err(rejection));
    }
    Ok(Ok(signer))
}

/// Whether the signer is one of `trusted`: the identity and the issuer must both match
/// one entry exactly. `None` when it is (or when no identities are required); otherwise
/// the failed check, naming who signed and who was expected.
pub fn authorize(signer: &KeylessSigner, trusted: &[TrustedIdentity]) -> Option<Rejection> {
    if trusted.is_empty()
        || trusted
            .iter()
            .any(|t| t.identity == signer.identity && t.issuer == signer.issuer)
    {
        return None;
    }
    let identity_known = trusted.iter().any(|t| t.identity == signer.identity);
    let expected: Vec<String> = trusted
        .iter()
        .map(|t| format!("`{}` from `{}`", t.identity, t.issuer))
        .collect();
    let (rule, what) = if identity_known {
        ("verify/issuer-mismatch", "issuer")
    } else {
        ("verify/identity-mismatch", "identity")
    };
    Some(Rejection {
        rule,
        message: format!(
            "signed by `{}` from issuer `{}`: the {what} is not trusted (expected {})",
            signer.identity,
            signer.issuer,
            expected.join(" or ")
        ),
    })
}

/// Sort a verification error: a failed check (rule and message) or unusable input.
fn classify(e: SvError, trust: &KeylessTrust, path: &Path) -> Result<Rejection, SignError> {
    use sigstore_verify::{CertificateError as C, TimestampError as T, TransparencyLogError as L};
    let rule = match &e {
        SvError::IdentityMismatch { .. } => "verify/identity-mismatch",
        SvError::IssuerMismatch { .. } => "verify/issuer-mismatch",
        SvError::SignatureInvalid(_) => "verify/signature-invalid",
        SvError::ArtifactMismatch(_) => "verify/artifact-mismatch",
        SvError::Certificate(C::Expired { .. } | C::NotYetValid { .. }) => {
            "verify/certificate-validity"
        }
        SvError::Certificate(C::Sct(_)) => "verify/sct",
        // The chain check reports a certificate outside its validity at the signing time
        // only in its detail text (webpki's `CertExpired`/`CertNotValidYet`); that is
        // still a validity failure, not a broken chain.
        SvError::Certificate(C::ChainInvalid(why))
            if why.contains("CertExpired") || why.contains("CertNotValidYet") =>
        {
            "verify/certificate-validity"
        }
        SvError::Certificate(_) => "verify/certificate-chain",
        SvError::TransparencyLog(L::InclusionProof(_)) => "verify/inclusion-proof",
        SvError::TransparencyLog(L::Checkpoint(_)) => "verify/checkpoint",
        SvError::TransparencyLog(L::InclusionPromise(_)) => "verify/signed-entry-timestamp",
        SvError::TransparencyLog(L::EntryMismatch(_)) => "verify/tlog-entry-mismatch",
        SvError::TransparencyLog(L::IntegratedTime(_)) => "verify/certificate-validity",
        SvError::TransparencyLog(L::UnknownLog { .. }) => "verify/untrusted-log",
        SvError::TransparencyLog(_) => "verify/tlog-entry",
        SvError::Timestamp(T::OutsideAuthorityValidity { .. }) => "verify/timestamp",
        SvError::Timestamp(T::Invalid(_)) => "verify/timestamp",
        SvError::Timestamp(_) => "verify/timestamp",
        // A v0.2+ bundle with only a promise (SET) and no proof: the crate's bundle check
        // says so in its text; it is the inclusion-proof requirement that failed.
        SvError::Bundle(b) if b.to_string().contains("inclusion proof") => "verify/inclusion-proof",
        SvError::InvalidBundle(_) | SvError::Bundle(_) | SvError::UnsupportedBundle(_) => {
            "verify/bundle"
        }
        SvError::Crypto(_) | SvError::Types(_) => "verify/bundle",
        SvError::InvalidTrustRoot(_) | SvError::TrustRoot(_) | SvError::TrustedCertificate(_) => {
            return Err(root_err(&trust.source, e.to_string()))
        }
        SvError::ArtifactRead(_) | SvError::UnsupportedArtifact(_) => {
            return Err(SignError::Bundle {
                path: path.to_owned(),
                what: format!("cannot be checked against the artifact: {e}"),
            })
        }
        _ => "verify/bundle",
    };
    Ok(Rejection {
        rule,
        message: format!(
            "`{}` does not verify against the {}: {e}",
            path.display(),
            trust.source.describe()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roots_load() {
        KeylessTrust::load(TrustRootSource::Production, vec![]).unwrap();
        KeylessTrust::load(TrustRootSource::Staging, vec![]).unwrap();
    }

    #[test]
    fn trust_root_that_is_not_json_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.json");
        fs::write(&p, "not json").unwrap();
        let e = KeylessTrust::load(TrustRootSource::File(p.clone()), vec![]).unwrap_err();
        assert!(e.to_string().contains("is not JSON"), "{e}");
        fs::write(&p, "{\"mediaType\":\"x\"}").unwrap();
        let e = KeylessTrust::load(TrustRootSource::File(p), vec![]).unwrap_err();
        assert!(e.to_string().contains("not a Sigstore trusted root"), "{e}");
    }

    #[test]
    fn authorize_names_the_field_that_differs() {
        let signer = KeylessSigner {
            identity: "a@x".into(),
            issuer: "https://i".into(),
            key: super::super::keys::PrivateKey::generate(super::super::KeyAlgorithm::P256)
                .unwrap()
                .public(),
            integrated_time: None,
            verified_times: vec![],
            tlog_verified: true,
            sct_verified: true,
        };
        let t = |i: &str, s: &str| TrustedIdentity {
            identity: i.into(),
            issuer: s.into(),
        };
        assert_eq!(authorize(&signer, &[]), None);
        assert_eq!(authorize(&signer, &[t("a@x", "https://i")]), None);
        let r = authorize(&signer, &[t("a@x", "https://j")]).unwrap();
        assert_eq!(r.rule, "verify/issuer-mismatch");
        let r = authorize(&signer, &[t("b@x", "https://i")]).unwrap();
        assert_eq!(r.rule, "verify/identity-mismatch");
        assert!(
            r.message.contains("`b@x` from `https://i`"),
            "{}",
            r.message
        );
    }
}
