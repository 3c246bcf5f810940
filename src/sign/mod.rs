//! Signing and verifying models: the last stage of the pipeline, after the audit.
//!
//! files -> manifest of sha256 digests ([`crate::digest`]) -> in-toto statement with the OpenSSF
//! model signing predicate ([`statement`]) -> DSSE envelope in a Sigstore bundle v0.3
//! (`model.sig`, [`dsse`]) signed with an ed25519 or P-256 key ([`keys`]). With an audit
//! report, a second statement (SLSA verification summary, [`attest`]) is signed with the
//! same key into `model.att.sig`. [`verify`] does the reverse and reports what changed as
//! [`crate::finding::Finding`]s.
//!
//! The formats are those of PyPI `model-signing` 1.x, so `model_signing verify key`
//! accepts a P-256 bundle written here and `modelgate verify` accepts one written there.

pub mod attest;
pub mod dsse;
pub mod keys;
pub mod statement;
pub mod verify;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::types::Sha256Digest;

pub use crate::digest::{
    hash_model, DigestError, HashOptions, Manifest, RelPath, Resource, Serialization,
};
pub use attest::{Audit, PolicyRef};
pub use keys::{keygen, KeyAlgorithm, KeyId, PrivateKey, PublicKey};
pub use verify::{verify_model, TrustedKey, Verification, VerifyRequest};

/// An error that stops signing or verification before a verdict: unreadable files, bad
/// keys, bundles that are not bundles. Verification failures are findings, not errors.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Hashing the model failed (the digest module says why).
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("key file `{path}` {what}")]
    Key { path: PathBuf, what: String },
    #[error("`{path}` is not JSON")]
    BundleJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{path}` {what}")]
    Bundle { path: PathBuf, what: String },
    #[error("`{path}` is signed over payload type `{found}`, expected `{expected}`")]
    PayloadType {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("`{path}`: {what}")]
    Statement { path: PathBuf, what: String },
    #[error("report `{path}` {what}")]
    Report { path: PathBuf, what: String },
    #[error("`{path}` already exists")]
    Exists { path: PathBuf },
    #[error("key `{path}` is {found}, expected {expected}")]
    WrongAlgorithm {
        path: PathBuf,
        found: KeyAlgorithm,
        expected: KeyAlgorithm,
    },
    #[error("no public keys (`*.pub`, `*.pem`) in `{path}`")]
    NoTrustedKeys { path: PathBuf },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("{0}")]
    Encode(String),
}

impl SignError {
    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            SignError::Digest(e) => return e.hint(),
            SignError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "check the path"
            }
            SignError::Key { .. } => {
                "create a key pair with `modelgate keygen --alg ed25519|p256 --out KEY`"
            }
            SignError::BundleJson { .. } | SignError::Bundle { .. } => {
                "pass the `model.sig` that `modelgate sign` or `model_signing sign key` wrote"
            }
            SignError::PayloadType { .. } => {
                "this is not a model signature; model signatures carry an in-toto statement"
            }
            SignError::Exists { .. } => "choose another path or pass `--force` to replace it",
            SignError::Report { .. } => {
                "pass the JSON that `modelgate scan|policy check --format json` printed"
            }
            _ => return None,
        })
    }
}

/// Write `bytes` to `path` through a temporary file in the same folder, then rename it
/// into place, so a reader never sees half a file. `mode` applies on Unix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignError> {
    let werr = |source| SignError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".modelgate-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut tmp = builder.tempfile_in(dir).map_err(werr)?;
    tmp.write_all(bytes).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

/// Where `file` lies inside the model directory `model`, if it does (the file need not
/// exist yet). Used to keep the signature files out of what they sign.
pub fn path_inside(model: &Path, file: &Path) -> Option<RelPath> {
    let root = fs::canonicalize(model).ok()?;
    if !root.is_dir() {
        return None;
    }
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let full = fs::canonicalize(parent).ok()?.join(file.file_name()?);
    let rel = full.strip_prefix(&root).ok()?;
    RelPath::parse(rel.to_str()?).filter(|r| r.as_str() != ".")
}

/// The default signature path: `DIR/model.sig` for a directory, `FILE.sig` beside a file.
pub fn default_signature_path(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join("model.sig")
    } else {
        let mut s = model.as_os_str().to_owned();
        s.push(".sig");
        PathBuf::from(s)
    }
}

/// The attestation beside a signature: `model.sig` -> `model.att.sig`, `x.json` ->
/// `x.json.att.sig`.
pub fn attestation_path_for(signature: &Path) -> PathBuf {
    let name = signature
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let att = match name.strip_suffix(".sig") {
        Some(stem) => format!("{stem}.att.sig"),
        None => format!("{name}.att.sig"),
    };
    signature.with_file_name(att)
}

/// What to sign and where to write it.
pub struct SignRequest<'a> {
    pub model: &'a Path,
    pub key: &'a PrivateKey,
    pub signature: &'a Path,
    pub attestation: &'a Path,
    pub hash: HashOptions,
    pub audit: Option<&'a Audit>,
}

/// What signing wrote.
#[derive(Debug)]
pub struct Signed {
    pub manifest: Manifest,
    pub root: Sha256Digest,
    pub algorithm: KeyAlgorithm,
    pub key_id: KeyId,
    pub signature: PathBuf,
    /// The attestation file and whether it records PASSED.
    pub attestation: Option<(PathBuf, bool)>,
}

/// Hash the model, sign its statement into the signature bundle and, with an audit, sign
/// the verification summary into the attestation bundle. The signature and attestation
/// paths are left out of the hash when they lie inside the model.
pub fn sign_model(req: SignRequest<'_>) -> Result<Signed, SignError> {
    let mut opts = req.hash.clone();
    for p in [req.signature, req.attestation] {
        if let Some(rel) = path_inside(req.model, p) {
            opts.ignore(rel);
        }
    }
    let manifest = hash_model(req.model, &opts, None)?;
    let root = manifest.root_digest();
    let statement = statement::model_statement(&manifest);
    let bundle = dsse::Bundle::sign(req.key, dsse::IN_TOTO_PAYLOAD_TYPE, &statement);
    let json = bundle.to_json()?;
    write_atomic(req.signature, &json, 0o644)?;
    let attestation = match req.audit {
        Some(audit) => {
            let sig_name = req
                .signature
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let vsa = attest::vsa_statement(
                audit,
                &manifest.model_name,
                &root,
                &sig_name,
                &Sha256Digest::of(&json),
            );
            let b = dsse::Bundle::sign(req.key, dsse::IN_TOTO_PAYLOAD_TYPE, &vsa);
            write_atomic(req.attestation, &b.to_json()?, 0o644)?;
            Some((req.attestation.to_owned(), audit.passed()))
        }
        None => None,
    };
    let public = req.key.public();
    Ok(Signed {
        manifest,
        root,
        algorithm: public.algorithm(),
        key_id: public.id(),
        signature: req.signature.to_owned(),
        attestation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_paths() {
        assert_eq!(
            attestation_path_for(Path::new("m/model.sig")),
            PathBuf::from("m/model.att.sig")
        );
        assert_eq!(
            attestation_path_for(Path::new("x.json")),
            PathBuf::from("x.json.att.sig")
        );
    }

    #[test]
    fn path_inside_finds_files_in_the_model_only() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        fs::create_dir(&m).unwrap();
        assert_eq!(
            path_inside(&m, &m.join("model.sig")).map(|r| r.to_string()),
            Some("model.sig".into())
        );
        assert_eq!(path_inside(&m, &dir.path().join("model.sig")), None);
    }

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // nothing left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
