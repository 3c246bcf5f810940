//! The cryptography behind the `sigstore-verify` crate, on the RustCrypto crates modelgate
//! already signs with.
//!
//! `sigstore-crypto` (a dependency of `sigstore-verify`) delegates hashing and signature
//! checks to a process-wide [`CryptoProvider`]. Its built-in provider wraps `aws-lc-rs`, a
//! C library with a CMake build; modelgate turns that feature off and installs this one
//! instead, so the whole Sigstore path stays pure Rust: SHA-2 from `sha2`, ECDSA from
//! `p256`/`p384`, Ed25519 from `ed25519-dalek`, RSA (PKCS#1 v1.5 and PSS, which some CT
//! logs and private CAs use) from `rsa`. It verifies only; keyless signing uses
//! [`super::keys`] for the ephemeral key.

use sha2::Digest;
use sigstore_verify::crypto::{
    install_default_provider, CryptoProvider, Error, HashContext, SigningScheme,
};
use sigstore_verify::types::HashAlgorithm;

/// The provider: stateless, one static instance.
#[derive(Debug)]
pub struct RustCryptoProvider;

static PROVIDER: RustCryptoProvider = RustCryptoProvider;

/// Install the provider for this process. Safe to call more than once; a provider already
/// installed (this one, by an earlier call) stays.
pub fn install() {
    let _ = install_default_provider(&PROVIDER);
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl HashContext for Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finalize(self: Box<Self>) -> Vec<u8> {
        match *self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

fn bad(scheme: SigningScheme) -> Error {
    Error::Verification(format!("{} signature does not verify", scheme.name()))
}

fn key_err(scheme: SigningScheme, e: impl std::fmt::Display) -> Error {
    Error::InvalidKey(format!("not a valid {} public key: {e}", scheme.name()))
}

fn unsupported(scheme: SigningScheme) -> Error {
    Error::UnsupportedAlgorithm(format!(
        "{} is not supported by modelgate's verifier",
        scheme.name()
    ))
}

/// ECDSA over a prehash or a message, one macro body per curve (the curve crates share
/// an API but no trait that covers all of it).
macro_rules! ecdsa_verify {
    ($curve:ident, $scheme:expr, $key:expr, $sig:expr, $check:expr) => {{
        use $curve::ecdsa::{DerSignature, Signature, VerifyingKey};
        let vk = VerifyingKey::from_sec1_bytes($key).map_err(|e| key_err($scheme, e))?;
        let sig = match DerSignature::from_bytes($sig) {
            Ok(d) => Signature::try_from(d.as_bytes()).or_else(|_| Signature::from_der($sig)),
            Err(_) => Signature::from_slice($sig),
        }
        .map_err(|_| bad($scheme))?;
        let check: &dyn Fn(&VerifyingKey, &Signature) -> bool = &$check;
        if check(&vk, &sig) {
            Ok(())
        } else {
            Err(bad($scheme))
        }
    }};
}

fn rsa_key(scheme: SigningScheme, key: &[u8]) -> Result<rsa::PublicKey, Error> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    rsa::PublicKey::from_pkcs1_der(key).map_err(|e| key_err(scheme, e))
}

/// RSA: PKCS#1 v1.5 or PSS with the scheme's hash, over a message or a prehash.
fn rsa_verify(
    scheme: SigningScheme,
    key: &[u8],
    data: &[u8],
    sig: &[u8],
    prehashed: bool,
) -> Result<(), Error> {
    use rsa::signature::hazmat::PrehashVerifier;
    use rsa::signature::Verifier;
    let pk = rsa_key(scheme, key)?;
    macro_rules! go {
        ($module:ident, $hash:ty) => {{
            let vk = rsa::$module::VerifyingKey::<$hash>::new(pk);
            let s = rsa::$module::Signature::try_from(sig).map_err(|_| bad(scheme))?;
            let ok = if prehashed {
                vk.verify_prehash(data, &s).is_ok()
            } else {
                vk.verify(data, &s).is_ok()
            };
            if ok {
                Ok(())
            } else {
                Err(bad(scheme))
            }
        }};
    }
    match scheme {
        SigningScheme::RsaPkcs1Sha256 => go!(pkcs1v15, sha2::Sha256),
        SigningScheme::RsaPkcs1Sha384 => go!(pkcs1v15, sha2::Sha384),
        SigningScheme::RsaPkcs1Sha512 => go!(pkcs1v15, sha2::Sha512),
        SigningScheme::RsaPssSha256 => go!(pss, sha2::Sha256),
        SigningScheme::RsaPssSha384 => go!(pss, sha2::Sha384),
        SigningScheme::RsaPssSha512 => go!(pss, sha2::Sha512),
        other => Err(unsupported(other)),
    }
}

impl CryptoProvider for RustCryptoProvider {
    fn hash(
        &self,
        algorithm: HashAlgorithm,
    ) -> sigstore_verify::crypto::Result<Box<dyn HashContext>> {
        Ok(Box::new(match algorithm {
            HashAlgorithm::Sha2256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgorithm::Sha2384 => Hasher::Sha384(sha2::Sha384::new()),
            HashAlgorithm::Sha2512 => Hasher::Sha512(sha2::Sha512::new()),
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::UnsupportedAlgorithm(format!(
                    "hash {other:?} is not supported"
                )))
            }
        }))
    }

    fn verify_raw(
        &self,
        scheme: SigningScheme,
        key: &[u8],
        data: &[u8],
        sig: &[u8],
    ) -> sigstore_verify::crypto::Result<()> {
        use ecdsa_traits::{DigestVerifier, Verifier};
        match scheme {
            SigningScheme::EcdsaP256Sha256 => {
                ecdsa_verify!(p256, scheme, key, sig, |vk, s| vk.verify(data, s).is_ok())
            }
            SigningScheme::EcdsaP256Sha384 => ecdsa_verify!(p256, scheme, key, sig, |vk, s| {
                vk.verify_digest(
                    |d: &mut sha2::Sha384| {
                        d.update(data);
                        Ok(())
                    },
                    s,
                )
                .is_ok()
            }),
            SigningScheme::EcdsaP384Sha384 => {
                ecdsa_verify!(p384, scheme, key, sig, |vk, s| vk.verify(data, s).is_ok())
            }
            SigningScheme::EcdsaP384Sha256 => ecdsa_verify!(p384, scheme, key, sig, |vk, s| {
                vk.verify_digest(
                    |d: &mut sha2::Sha256| {
                        d.update(data);
                        Ok(())
                    },
                    s,
                )
                .is_ok()
            }),
            SigningScheme::Ed25519 => {
                let bytes: [u8; 32] = key
                    .try_into()
                    .map_err(|_| key_err(scheme, "not 32 bytes"))?;
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| key_err(scheme, e))?;
                let s = ed25519_dalek::Signature::from_slice(sig).map_err(|_| bad(scheme))?;
                vk.verify_strict(data, &s).map_err(|_| bad(scheme))
            }
            s if s.key_algorithm() == sigstore_verify::crypto::KeyAlgorithm::Rsa => {
                rsa_verify(s, key, data, sig, false)
            }
            other => Err(unsupported(other)),
        }
    }

    fn verify_prehashed(
        &self,
        scheme: SigningScheme,
        key: &[u8],
        digest: &[u8],
        sig: &[u8],
    ) -> sigstore_verify::crypto::Result<()> {
        use ecdsa_traits::hazmat::PrehashVerifier;
        match scheme.key_algorithm() {
            sigstore_verify::crypto::KeyAlgorithm::EcdsaP256 => {
                ecdsa_verify!(p256, scheme, key, sig, |vk, s| vk
                    .verify_prehash(digest, s)
                    .is_ok())
            }
            sigstore_verify::crypto::KeyAlgorithm::EcdsaP384 => {
                ecdsa_verify!(p384, scheme, key, sig, |vk, s| vk
                    .verify_prehash(digest, s)
                    .is_ok())
            }
            sigstore_verify::crypto::KeyAlgorithm::Rsa => {
                rsa_verify(scheme, key, digest, sig, true)
            }
            _ => Err(unsupported(scheme)),
        }
    }
}

/// The `signature` traits as the curve crates re-export them.
mod ecdsa_traits {
    pub use p256::ecdsa::signature::hazmat;
    pub use p256::ecdsa::signature::{DigestVerifier, Verifier};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point256(k: &p256::ecdsa::SigningKey) -> Vec<u8> {
        k.verifying_key().to_sec1_point(false).as_bytes().to_vec()
    }

    #[test]
    fn ecdsa_and_ed25519_verify_and_reject() {
        use p256::ecdsa::signature::Signer;
        let p = RustCryptoProvider;
        let k = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let sig: p256::ecdsa::DerSignature = k.sign(b"msg");
        let pt = point256(&k);
        assert!(p
            .verify_raw(SigningScheme::EcdsaP256Sha256, &pt, b"msg", sig.as_bytes())
            .is_ok());
        assert!(p
            .verify_raw(SigningScheme::EcdsaP256Sha256, &pt, b"msh", sig.as_bytes())
            .is_err());
        let digest = sha2::Sha256::digest(b"msg");
        assert!(p
            .verify_prehashed(SigningScheme::EcdsaP256Sha256, &pt, &digest, sig.as_bytes())
            .is_ok());

        let k = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).unwrap();
        let sig: p384::ecdsa::DerSignature = k.sign(b"msg");
        let pt = k.verifying_key().to_sec1_point(false).as_bytes().to_vec();
        assert!(p
            .verify_raw(SigningScheme::EcdsaP384Sha384, &pt, b"msg", sig.as_bytes())
            .is_ok());
        assert!(p
            .verify_raw(SigningScheme::EcdsaP384Sha384, &pt, b"nsg", sig.as_bytes())
            .is_err());

        let k = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let sig = ed25519_dalek::Signer::sign(&k, b"msg");
        let pt = k.verifying_key().to_bytes();
        assert!(p
            .verify_raw(SigningScheme::Ed25519, &pt, b"msg", &sig.to_bytes())
            .is_ok());
        assert!(p
            .verify_raw(SigningScheme::Ed25519, &pt, b"msG", &sig.to_bytes())
            .is_err());
    }

    #[test]
    fn hashes_match_sha2() {
        let p = RustCryptoProvider;
        let mut h = p.hash(HashAlgorithm::Sha2384).unwrap();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finalize(), sha2::Sha384::digest(b"abc").to_vec());
    }
}
