//! Signing keys: ed25519 (the default) and ECDSA P-256 and P-384 (curves the reference
//! `model_signing verify key` accepts; it hashes with SHA-256 on P-256 and SHA-384 on
//! P-384, and so does this module), read from and written to PEM files.
//!
//! Private keys are PKCS#8 (`PRIVATE KEY`; SEC1 `EC PRIVATE KEY` is read too, as
//! `openssl ecparam -genkey` writes it), public keys SubjectPublicKeyInfo (`PUBLIC KEY`). A
//! key's id is the hex sha256 of its public key as canonical PEM (LF line ends, 64-column
//! base64): the value the reference tool writes as the bundle's public key hint.
//!
//! Private key material never reaches a message: errors name the file and the fault, the
//! `Debug` form shows only the algorithm and key id, and buffers holding key bytes are
//! zeroed when dropped.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use p256::pkcs8::der::pem::{self, LineEnding};
use p256::pkcs8::der::zeroize::Zeroizing;
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, ObjectIdentifier,
    PrivateKeyInfoRef,
};
use serde::Serialize;

use crate::types::Sha256Digest;

use super::SignError;

/// Key files are small; anything bigger is not a key.
const MAX_KEY_FILE: u64 = 64 * 1024;

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// A signature algorithm modelgate signs and verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    /// Ed25519 (RFC 8032)
    Ed25519,
    /// ECDSA on NIST P-256 with SHA-256, DER-encoded signatures
    P256,
    /// ECDSA on NIST P-384 with SHA-384, DER-encoded signatures
    P384,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of a public key: sha256 of its canonical SubjectPublicKeyInfo PEM.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub Sha256Digest);

impl KeyId {
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        Sha256Digest::from_hex(s).map(KeyId)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.to_hex())
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// A private signing key.
pub enum PrivateKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateKey({}, id {})",
            self.algorithm(),
            self.public().id()
        )
    }
}

/// A public verification key.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, id {})", self.algorithm(), self.id())
    }
}

fn key_err(path: &Path, what: impl Into<String>) -> SignError {
    SignError::Key {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, SignError> {
    use rand_core::TryRngCore;
    let mut seed = Zeroizing::new([0u8; N]);
    rand_core::OsRng
        .try_fill_bytes(seed.as_mut())
        .map_err(|e| SignError::Random(e.to_string()))?;
    Ok(seed)
}

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, SignError> {
        match alg {
            KeyAlgorithm::Ed25519 => {
                let seed = random_bytes::<32>()?;
                Ok(PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    &seed,
                )))
            }
            KeyAlgorithm::P256 => loop {
                // A random 32-byte string is a valid scalar unless it is zero or not
                // below the group order (probability about 2^-32): draw again then.
                let seed = random_bytes::<32>()?;
                if let Ok(k) = p256::ecdsa::SigningKey::from_slice(seed.as_ref()) {
                    return Ok(PrivateKey::P256(k));
                }
            },
            KeyAlgorithm::P384 => loop {
                // Same as P-256: a 48-byte string outside [1, n) is drawn again.
                let seed = random_bytes::<48>()?;
                if let Ok(k) = p384::ecdsa::SigningKey::from_slice(seed.as_ref()) {
                    return Ok(PrivateKey::P384(k));
                }
            },
        }
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            PrivateKey::Ed25519(_) => KeyAlgorithm::Ed25519,
            PrivateKey::P256(_) => KeyAlgorithm::P256,
            PrivateKey::P384(_) => KeyAlgorithm::P384,
        }
    }

    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            PrivateKey::P384(k) => PublicKey::P384(*k.verifying_key()),
        }
    }

    /// Sign a message: 64 raw bytes for ed25519, a DER `Ecdsa-Sig-Value` over SHA-256 for
    /// P-256 or SHA-384 for P-384 (what the reference tool and OpenSSL write and expect).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            PrivateKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(message).to_bytes().to_vec()
            }
            PrivateKey::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::DerSignature = k.sign(message);
                sig.as_bytes().to_vec()
            }
            PrivateKey::P384(k) => {
                use p384::ecdsa::signature::Signer;
                let sig: p384::ecdsa::DerSignature = k.sign(message);
                sig.as_bytes().to_vec()
            }
        }
    }

    /// PKCS#8 v1 PEM (no embedded public key, which every PKCS#8 reader accepts).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, SignError> {
        let pem = match self {
            PrivateKey::Ed25519(k) => {
                let bytes = ed25519_dalek::pkcs8::KeypairBytes {
                    secret_key: k.to_bytes(),
                    public_key: None,
                };
                bytes.to_pkcs8_pem(LineEnding::LF)
            }
            PrivateKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            PrivateKey::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map_err(|e| SignError::Encode(format!("cannot encode the private key: {e}")))
    }

    /// Read a private key file.
    pub fn from_pem_file(path: &Path) -> Result<Self, SignError> {
        let text = read_key_file(path)?;
        Self::from_pem(path, &text)
    }

    /// Parse private key PEM text; `path` names it in errors.
    pub fn from_pem(path: &Path, text: &str) -> Result<Self, SignError> {
        let (label, der) = first_pem_block(path, text)?;
        let der = Zeroizing::new(der);
        match label.as_str() {
            "PRIVATE KEY" => {
                let info = PrivateKeyInfoRef::try_from(der.as_slice())
                    .map_err(|e| key_err(path, format!("not a valid PKCS#8 private key: {e}")))?;
                let oid = info.algorithm.oid;
                if oid == OID_ED25519 {
                    let k = ed25519_dalek::SigningKey::from_pkcs8_der(&der).map_err(|e| {
                        key_err(path, format!("not a valid ed25519 private key: {e}"))
                    })?;
                    Ok(PrivateKey::Ed25519(k))
                } else if oid == OID_EC_PUBLIC_KEY {
                    let curve = info.algorithm.parameters_oid().ok();
                    if curve == Some(OID_P256) {
                        let k = p256::ecdsa::SigningKey::from_pkcs8_der(&der).map_err(|e| {
                            key_err(path, format!("not a valid P-256 private key: {e}"))
                        })?;
                        Ok(PrivateKey::P256(k))
                    } else if curve == Some(OID_P384) {
                        let k = p384::ecdsa::SigningKey::from_pkcs8_der(&der).map_err(|e| {
                            key_err(path, format!("not a valid P-384 private key: {e}"))
                        })?;
                        Ok(PrivateKey::P384(k))
                    } else {
                        Err(key_err(path, unsupported_curve(curve)))
                    }
                } else {
                    Err(key_err(path, unsupported_alg(oid)))
                }
            }
            "EC PRIVATE KEY" => {
                if let Ok(k) = p256::SecretKey::from_sec1_der(&der) {
                    return Ok(PrivateKey::P256(p256::ecdsa::SigningKey::from(&k)));
                }
                let k = p384::SecretKey::from_sec1_der(&der).map_err(|_| {
                    key_err(
                        path,
                        "not a valid SEC1 P-256 or P-384 private key (other curves are not \
                         supported)",
                    )
                })?;
                Ok(PrivateKey::P384(p384::ecdsa::SigningKey::from(&k)))
            }
            "ENCRYPTED PRIVATE KEY" => Err(key_err(
                path,
                "the private key is encrypted, which modelgate does not support; \
                 decrypt it with `openssl pkcs8 -in KEY -out PLAIN.pem`",
            )),
            "PUBLIC KEY" => Err(key_err(
                path,
                "holds a public key where a private key is needed",
            )),
            other => Err(key_err(
                path,
                format!("PEM block `{other}` is not a PKCS#8 or SEC1 private key"),
            )),
        }
    }
}

fn unsupported_curve(curve: Option<ObjectIdentifier>) -> String {
    match curve {
        Some(c) if c == OID_P521 => {
            "P-521 keys are not supported; use ed25519, P-256 or P-384".into()
        }
        Some(c) => format!("elliptic curve {c} is not supported; use ed25519, P-256 or P-384"),
        None => "EC key without a named curve is not supported".into(),
    }
}

fn unsupported_alg(oid: ObjectIdentifier) -> String {
    if oid == OID_RSA {
        "RSA keys are not supported; use ed25519, P-256 or P-384".into()
    } else {
        format!("key algorithm {oid} is not supported; use ed25519, P-256 or P-384")
    }
}

impl PublicKey {
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            PublicKey::Ed25519(_) => KeyAlgorithm::Ed25519,
            PublicKey::P256(_) => KeyAlgorithm::P256,
            PublicKey::P384(_) => KeyAlgorithm::P384,
        }
    }

    /// Canonical SubjectPublicKeyInfo PEM: LF line ends, 64-column base64, final newline,
    /// byte for byte what OpenSSL and Python's `cryptography` write.
    pub fn to_pem(&self) -> Result<String, SignError> {
        let pem = match self {
            PublicKey::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P384(k) => k.to_public_key_pem(LineEnding::LF),
        };
        pem.map_err(|e| SignError::Encode(format!("cannot encode the public key: {e}")))
    }

    /// The key id (see the module docs).
    pub fn id(&self) -> KeyId {
        // Encoding a valid in-memory key cannot fail; an empty PEM would give a key id
        // that matches no bundle, which is the safe direction.
        let pem = self.to_pem().unwrap_or_default();
        KeyId(Sha256Digest::of(pem.as_bytes()))
    }

    /// Check a signature. ECDSA signatures are DER; a raw fixed-size `r || s` is accepted
    /// too, as some DSSE signers write it.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(k) => {
                let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
                    return false;
                };
                k.verify_strict(message, &sig).is_ok()
            }
            PublicKey::P256(k) => {
                use p256::ecdsa::signature::Verifier;
                if let Ok(sig) = p256::ecdsa::DerSignature::from_bytes(signature) {
                    return k.verify(message, &sig).is_ok();
                }
                if let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) {
                    return k.verify(message, &sig).is_ok();
                }
                false
            }
            PublicKey::P384(k) => {
                use p384::ecdsa::signature::Verifier;
                if let Ok(sig) = p384::ecdsa::DerSignature::from_bytes(signature) {
                    return k.verify(message, &sig).is_ok();
                }
                if let Ok(sig) = p384::ecdsa::Signature::from_slice(signature) {
                    return k.verify(message, &sig).is_ok();
                }
                false
            }
        }
    }

    /// Read a public key file.
    pub fn from_pem_file(path: &Path) -> Result<Self, SignError> {
        let text = read_key_file(path)?;
        Self::from_pem(path, &text)
    }

    /// Parse public key PEM text; `path` names it in errors.
    pub fn from_pem(path: &Path, text: &str) -> Result<Self, SignError> {
        let (label, der) = first_pem_block(path, text)?;
        match label.as_str() {
            "PUBLIC KEY" => {}
            "PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                return Err(key_err(
                    path,
                    "holds a private key where a public key is needed; pass the `.pub` file \
                     `modelgate keygen` wrote beside it",
                ))
            }
            other => {
                return Err(key_err(
                    path,
                    format!("PEM block `{other}` is not a public key"),
                ))
            }
        }
        Self::from_spki_der(&der).map_err(|what| key_err(path, what))
    }

    /// Parse a DER SubjectPublicKeyInfo (from a PEM file or a certificate); the error
    /// says what is wrong, for the caller to attach to a file name.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        let info = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| format!("not a valid SubjectPublicKeyInfo public key: {e}"))?;
        let oid = info.algorithm.oid;
        if oid == OID_ED25519 {
            let k = ed25519_dalek::VerifyingKey::from_public_key_der(der)
                .map_err(|e| format!("not a valid ed25519 public key: {e}"))?;
            Ok(PublicKey::Ed25519(k))
        } else if oid == OID_EC_PUBLIC_KEY {
            let curve = info.algorithm.parameters_oid().ok();
            if curve == Some(OID_P256) {
                let k = p256::ecdsa::VerifyingKey::from_public_key_der(der)
                    .map_err(|e| format!("not a valid P-256 public key: {e}"))?;
                Ok(PublicKey::P256(k))
            } else if curve == Some(OID_P384) {
                let k = p384::ecdsa::VerifyingKey::from_public_key_der(der)
                    .map_err(|e| format!("not a valid P-384 public key: {e}"))?;
                Ok(PublicKey::P384(k))
            } else {
                Err(unsupported_curve(curve))
            }
        } else {
            Err(unsupported_alg(oid))
        }
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, SignError> {
    let file = fs::File::open(path).map_err(|source| SignError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SignError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(key_err(
            path,
            format!("is larger than {MAX_KEY_FILE} bytes, which no PEM key is"),
        ));
    }
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Zeroizing::new(s.to_owned())),
        Err(_) => Err(key_err(
            path,
            "is not a PEM file: it is binary, not text (DER keys are not read; convert with \
             `openssl pkey -in KEY -out KEY.pem`)",
        )),
    }
}

/// The first PEM block that is not `EC PARAMETERS` (which `openssl ecparam -genkey`
/// writes before the key): its label and decoded bytes.
fn first_pem_block(path: &Path, text: &str) -> Result<(String, Vec<u8>), SignError> {
    let mut rest = text;
    loop {
        let Some(begin) = rest.find("-----BEGIN ") else {
            return Err(key_err(
                path,
                "is not a PEM file: no `-----BEGIN` line (expected a key written by \
                 `modelgate keygen` or `openssl genpkey`)",
            ));
        };
        let block = &rest[begin..];
        let label_end = block["-----BEGIN ".len()..]
            .find("-----")
            .map(|i| i + "-----BEGIN ".len());
        let Some(label_end) = label_end else {
            return Err(key_err(path, "PEM `-----BEGIN` line is cut short"));
        };
        let label = &block["-----BEGIN ".len()..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = block.find(&end_marker) else {
            return Err(key_err(
                path,
                format!("PEM block `{label}` has no `{end_marker}` line: the file is truncated"),
            ));
        };
        let block_text = &block[..end + end_marker.len()];
        rest = &block[end + end_marker.len()..];
        if label == "EC PARAMETERS" {
            continue;
        }
        let (decoded_label, der) = pem::decode_vec(block_text.as_bytes()).map_err(|e| {
            key_err(
                path,
                format!("PEM block `{label}` is damaged (truncated or edited?): {e}"),
            )
        })?;
        return Ok((decoded_label.to_owned(), der));
    }
}

/// Write a new key pair: the private key to `out` (PKCS#8 PEM, mode 0600) and the public
/// key to `out.pub` (SPKI PEM). Both go through a temporary file in the same folder and
/// are renamed into place; an existing file is replaced only with `force`.
pub fn keygen(alg: KeyAlgorithm, out: &Path, force: bool) -> Result<KeyPairFiles, SignError> {
    let public_path = public_path_for(out);
    if !force {
        for p in [out, public_path.as_path()] {
            if p.exists() {
                return Err(SignError::Exists { path: p.to_owned() });
            }
        }
    }
    let key = PrivateKey::generate(alg)?;
    let public = key.public();
    let private_pem = key.to_pkcs8_pem()?;
    let public_pem = public.to_pem()?;
    super::write_atomic(out, private_pem.as_bytes(), 0o600)?;
    super::write_atomic(&public_path, public_pem.as_bytes(), 0o644)?;
    Ok(KeyPairFiles {
        private: out.to_owned(),
        public: public_path,
        algorithm: alg,
        key_id: public.id(),
    })
}

/// What `keygen` wrote.
#[derive(Debug, Serialize)]
pub struct KeyPairFiles {
    pub private: PathBuf,
    pub public: PathBuf,
    pub algorithm: KeyAlgorithm,
    pub key_id: KeyId,
}

/// `KEY` -> `KEY.pub`.
pub fn public_path_for(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_sign_verify_both_algorithms() {
        for alg in [
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("k");
            let files = keygen(alg, &out, false).unwrap();
            let sk = PrivateKey::from_pem_file(&out).unwrap();
            let pk = PublicKey::from_pem_file(&files.public).unwrap();
            assert_eq!(sk.public(), pk);
            assert_eq!(pk.id(), files.key_id);
            let sig = sk.sign(b"message");
            assert!(pk.verify(b"message", &sig));
            assert!(!pk.verify(b"messagf", &sig));
            // key id is the sha256 of the public key file as written
            let written = fs::read(&files.public).unwrap();
            assert_eq!(KeyId(Sha256Digest::of(&written)), pk.id());
            // refuses to overwrite
            assert!(matches!(
                keygen(alg, &out, false),
                Err(SignError::Exists { .. })
            ));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600);
            }
        }
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let k = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let dbg = format!("{k:?}");
        let PrivateKey::Ed25519(inner) = &k else {
            unreachable!()
        };
        assert!(!dbg.contains(&hex::encode(inner.to_bytes())));
        assert!(dbg.starts_with("PrivateKey(ed25519, id "));
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        fs::write(&p, "hello").unwrap();
        let e = PrivateKey::from_pem_file(&p).unwrap_err().to_string();
        assert!(e.contains("is not a PEM file"), "{e}");

        let good = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let pem = good.to_pkcs8_pem().unwrap();
        fs::write(&p, &pem[..pem.len() / 2]).unwrap();
        let e = PrivateKey::from_pem_file(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // the message carries none of the key's base64
        let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!e.contains(&body), "{e}");

        fs::write(&p, good.public().to_pem().unwrap()).unwrap();
        let e = PrivateKey::from_pem_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("public key where a private key is needed"),
            "{e}"
        );
        fs::write(&p, pem.as_bytes()).unwrap();
        let e = PublicKey::from_pem_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("private key where a public key is needed"),
            "{e}"
        );
    }

    #[test]
    fn reads_openssl_sec1_with_parameters_block() {
        // `openssl ecparam -name prime256v1 -genkey` output: parameters, then the key.
        let k = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let PrivateKey::P256(sk) = &k else {
            unreachable!()
        };
        let secret = p256::SecretKey::from(sk);
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        let text = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            sec1.as_str()
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        fs::write(&p, text).unwrap();
        let read = PrivateKey::from_pem_file(&p).unwrap();
        assert_eq!(read.public(), k.public());
    }
}
