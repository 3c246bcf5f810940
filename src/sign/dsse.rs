//! DSSE envelopes and the Sigstore bundle v0.3 that carries them in `model.sig`.
//!
//! The signature covers the DSSE pre-authentication encoding
//! `DSSEv1 <len(type)> <type> <len(body)> <body>`, so neither the payload nor its type can
//! be changed without breaking it. The bundle adds a public key hint (the key id) and an
//! empty transparency log list, the shape the reference `model_signing` tool writes for
//! key-based signatures.

use std::fs;
use std::io::Read;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::keys::{KeyId, PrivateKey, PublicKey};
use super::SignError;

pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// A manifest of a very large model is a few megabytes; cap what we read.
const MAX_BUNDLE: u64 = 256 * 1024 * 1024;

/// The DSSE v1 pre-authentication encoding of a payload.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub media_type: String,
    pub verification_material: VerificationMaterial,
    pub dsse_envelope: Envelope,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyHint>,
    #[serde(default)]
    pub tlog_entries: Vec<serde_json::Value>,
    /// A single signing certificate (Sigstore keyless, v0.3 bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<serde_json::Value>,
    /// A certificate chain, leaf first (private-PKI signatures, older keyless bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_certificate_chain: Option<serde_json::Value>,
    /// RFC 3161 timestamps (keyless bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_verification_data: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublicKeyHint {
    #[serde(default)]
    pub hint: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// base64 of the payload bytes.
    pub payload: String,
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// base64 of the signature bytes.
    pub sig: String,
    #[serde(default)]
    pub keyid: String,
}

/// Decode base64 as DSSE allows it: standard or URL-safe alphabet.
fn b64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

impl Bundle {
    /// Sign `payload` of `payload_type` with `key` into a bundle.
    pub fn sign(key: &PrivateKey, payload_type: &str, payload: &[u8]) -> Bundle {
        let sig = key.sign(&pae(payload_type, payload));
        Bundle {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            verification_material: VerificationMaterial {
                public_key: Some(PublicKeyHint {
                    hint: Some(key.public().id().to_hex()),
                }),
                tlog_entries: Vec::new(),
                certificate: None,
                x509_certificate_chain: None,
                timestamp_verification_data: None,
            },
            dsse_envelope: Envelope {
                payload: STANDARD.encode(payload),
                payload_type: payload_type.to_owned(),
                signatures: vec![EnvelopeSignature {
                    sig: STANDARD.encode(sig),
                    // The reference tool leaves the DSSE key id empty and names the key
                    // in the bundle's hint; do the same so both read the same bundle.
                    keyid: String::new(),
                }],
            },
        }
    }

    /// Compact JSON, as the reference tool writes it.
    pub fn to_json(&self) -> Result<Vec<u8>, SignError> {
        serde_json::to_vec(self).map_err(|e| SignError::Encode(e.to_string()))
    }

    /// Read and shape-check a bundle file. Anything that is not a key-signed DSSE bundle
    /// v0.3 is an input error.
    pub fn read(path: &Path) -> Result<Bundle, SignError> {
        let file = fs::File::open(path).map_err(|source| SignError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_BUNDLE + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| SignError::Io {
                path: path.to_owned(),
                source,
            })?;
        if bytes.len() as u64 > MAX_BUNDLE {
            return Err(bundle_err(
                path,
                format!("is larger than {MAX_BUNDLE} bytes, too big for a signature bundle"),
            ));
        }
        Self::from_slice(path, &bytes)
    }

    /// Parse and shape-check bundle bytes; `path` names them in errors.
    pub fn from_slice(path: &Path, bytes: &[u8]) -> Result<Bundle, SignError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| SignError::BundleJson {
                path: path.to_owned(),
                source,
            })?;
        let media = value.get("mediaType").and_then(|v| v.as_str());
        match media {
            Some(BUNDLE_MEDIA_TYPE) => {}
            Some(other) => {
                return Err(bundle_err(
                    path,
                    format!("bundle media type is `{other}`, expected `{BUNDLE_MEDIA_TYPE}`"),
                ))
            }
            None => {
                return Err(bundle_err(
                    path,
                    "is JSON but not a Sigstore bundle: no `mediaType` string",
                ))
            }
        }
        let bundle: Bundle = serde_json::from_value(value)
            .map_err(|e| bundle_err(path, format!("is not a DSSE Sigstore bundle: {e}")))?;
        if bundle.dsse_envelope.signatures.is_empty() {
            return Err(bundle_err(path, "DSSE envelope has no signatures"));
        }
        Ok(bundle)
    }

    /// Whether the bundle carries a certificate or a chain (instead of a key hint).
    pub fn has_certificate(&self) -> bool {
        let vm = &self.verification_material;
        vm.certificate.is_some() || vm.x509_certificate_chain.is_some()
    }

    /// The key id the bundle names, if it names one.
    pub fn hint(&self) -> Option<&str> {
        self.verification_material
            .public_key
            .as_ref()
            .and_then(|k| k.hint.as_deref())
            .filter(|h| !h.is_empty())
    }

    /// The decoded payload, unverified.
    pub fn payload(&self, path: &Path) -> Result<Vec<u8>, SignError> {
        b64(&self.dsse_envelope.payload)
            .ok_or_else(|| bundle_err(path, "DSSE payload is not base64"))
    }

    /// Whether any signature in the envelope verifies under `key`.
    pub fn verifies_with(&self, key: &PublicKey, path: &Path) -> Result<bool, SignError> {
        let payload = self.payload(path)?;
        let message = pae(&self.dsse_envelope.payload_type, &payload);
        for s in &self.dsse_envelope.signatures {
            let Some(sig) = b64(&s.sig) else {
                return Err(bundle_err(path, "DSSE signature is not base64"));
            };
            if key.verify(&message, &sig) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A hint that is well formed: 64 hex digits.
pub fn parse_hint(hint: &str) -> Option<KeyId> {
    KeyId::from_hex(hint)
}

fn bundle_err(path: &Path, what: impl Into<String>) -> SignError {
    SignError::Bundle {
        path: path.to_owned(),
        what: what.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::keys::KeyAlgorithm;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE v1 protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn bundle_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.sig");
        for alg in [
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            let b = Bundle::sign(&key, IN_TOTO_PAYLOAD_TYPE, b"{}");
            fs::write(&path, b.to_json().unwrap()).unwrap();
            let read = Bundle::read(&path).unwrap();
            assert_eq!(read.hint(), Some(key.public().id().to_hex().as_str()));
            assert!(read.verifies_with(&key.public(), &path).unwrap());
            let other = PrivateKey::generate(alg).unwrap();
            assert!(!read.verifies_with(&other.public(), &path).unwrap());
            let mut changed = read.clone();
            changed.dsse_envelope.payload_type = "text/plain".into();
            assert!(!changed.verifies_with(&key.public(), &path).unwrap());
        }
    }

    #[test]
    fn non_json_and_non_bundles_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.sig");
        fs::write(&path, "not json").unwrap();
        let e = Bundle::read(&path).unwrap_err();
        assert!(matches!(e, SignError::BundleJson { .. }), "{e}");
        fs::write(&path, "{\"a\":1}").unwrap();
        let e = Bundle::read(&path).unwrap_err().to_string();
        assert!(e.contains("not a Sigstore bundle"), "{e}");
        fs::write(
            &path,
            format!("{{\"mediaType\":\"{BUNDLE_MEDIA_TYPE}\",\"verificationMaterial\":{{}}}}"),
        )
        .unwrap();
        let e = Bundle::read(&path).unwrap_err().to_string();
        assert!(e.contains("dsseEnvelope"), "{e}");
    }
}
