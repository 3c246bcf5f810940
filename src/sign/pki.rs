//! Private-PKI certificate signatures: the `model_signing sign/verify certificate` method.
//!
//! The bundle carries `verificationMaterial.x509CertificateChain` = [leaf, intermediates
//! ...] and no log entry; the verifier is given its trust anchors (`--certificate-chain
//! ROOTS.pem`). Generic Sigstore verifiers refuse this shape (a chain where v0.3 wants one
//! certificate, and no signing time), and `rustls-webpki` refuses the reference project's
//! own vectors (their leaf says `CA:TRUE`), so the chain is checked here, by hand, with
//! `x509-cert` for parsing and the RustCrypto signature crates for the signatures:
//!
//! - the path is built from the leaf through the bundle's certificates to a certificate
//!   in the trust anchors, by issuer name and a signature that verifies, at most
//!   [`MAX_DEPTH`] certificates long; a path that returns to a certificate already on it
//!   is refused as input, as is one that grows past the limit;
//! - every issuer on the path must be a CA (`basicConstraints CA:TRUE`), allowed to sign
//!   certificates (`keyUsage keyCertSign` when key usage is present) and within its
//!   `pathLenConstraint`;
//! - every certificate must be valid now: the bundle has no trusted signing time, so a
//!   certificate that has expired (or is not valid yet) cannot date the signature and is
//!   an input error. The reference tool instead evaluates the chain at the leaf's
//!   notBefore, which accepts expired chains; modelgate is stricter on purpose;
//! - the leaf must allow `digitalSignature` (key usage) or `codeSigning` (extended key
//!   usage), as the reference tool requires; a leaf that says `CA:TRUE` is tolerated, as
//!   OpenSSL (which the reference tool uses) tolerates it;
//! - the leaf key must be ECDSA P-256 or P-384, the only keys the reference tool accepts
//!   for certificates (an RSA or ed25519 leaf is an input error);
//! - then the DSSE signature must verify with the leaf key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sigstore_verify::crypto::{CryptoProvider, SigningScheme};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::Certificate;

use super::keys::{KeyAlgorithm, PublicKey};
use super::provider::RustCryptoProvider;
use super::SignError;

/// The longest chain accepted, leaf and anchor included.
pub const MAX_DEPTH: usize = 8;

/// Certificate files are small; anything bigger is not a certificate file.
const MAX_PEM_FILE: u64 = 4 * 1024 * 1024;

const OID_CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";

/// A parsed certificate with its DER and a printable name.
#[derive(Clone)]
pub struct Cert {
    pub der: Vec<u8>,
    pub cert: Certificate,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cert({})", self.subject())
    }
}

impl Cert {
    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let cert =
            Certificate::from_der(&der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        Ok(Cert { der, cert })
    }

    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    fn issuer(&self) -> String {
        self.cert.tbs_certificate.issuer.to_string()
    }

    fn spki_der(&self) -> Result<Vec<u8>, String> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| format!("public key of `{}`: {e}", self.subject()))
    }

    /// The leaf's key as a signing key, or why it cannot be one.
    pub fn public_key(&self) -> Result<PublicKey, String> {
        PublicKey::from_spki_der(&self.spki_der()?)
    }

    fn not_before(&self) -> SystemTime {
        self.cert
            .tbs_certificate
            .validity
            .not_before
            .to_system_time()
    }

    fn not_after(&self) -> SystemTime {
        self.cert
            .tbs_certificate
            .validity
            .not_after
            .to_system_time()
    }

    fn basic_constraints(&self) -> Option<BasicConstraints> {
        self.cert
            .tbs_certificate
            .get::<BasicConstraints>()
            .ok()
            .flatten()
            .map(|(_, bc)| bc)
    }

    fn key_usage(&self) -> Option<KeyUsage> {
        self.cert
            .tbs_certificate
            .get::<KeyUsage>()
            .ok()
            .flatten()
            .map(|(_, ku)| ku)
    }

    fn code_signing_eku(&self) -> bool {
        self.cert
            .tbs_certificate
            .get::<ExtendedKeyUsage>()
            .ok()
            .flatten()
            .is_some_and(|(_, eku)| eku.0.iter().any(|o| o.to_string() == OID_CODE_SIGNING))
    }

    /// Whether `issuer`'s key made this certificate's signature.
    fn signed_by(&self, issuer: &Cert) -> bool {
        let Ok(tbs) = self.cert.tbs_certificate.to_der() else {
            return false;
        };
        let Some(sig) = self.cert.signature.as_bytes() else {
            return false;
        };
        let spki = &issuer.cert.tbs_certificate.subject_public_key_info;
        let Some(key) = spki.subject_public_key.as_bytes() else {
            return false;
        };
        let key_alg = spki.algorithm.oid.to_string();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
            .map(|o| o.to_string());
        let sig_alg = self.cert.signature_algorithm.oid.to_string();
        let scheme = match (key_alg.as_str(), curve.as_deref(), sig_alg.as_str()) {
            ("1.2.840.113549.1.1.1", _, "1.2.840.113549.1.1.11") => SigningScheme::RsaPkcs1Sha256,
            ("1.2.840.113549.1.1.1", _, "1.2.840.113549.1.1.12") => SigningScheme::RsaPkcs1Sha384,
            ("1.2.840.113549.1.1.1", _, "1.2.840.113549.1.1.13") => SigningScheme::RsaPkcs1Sha512,
            ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"), "1.2.840.10045.4.3.2") => {
                SigningScheme::EcdsaP256Sha256
            }
            ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"), "1.2.840.10045.4.3.3") => {
                SigningScheme::EcdsaP256Sha384
            }
            ("1.2.840.10045.2.1", Some("1.3.132.0.34"), "1.2.840.10045.4.3.3") => {
                SigningScheme::EcdsaP384Sha384
            }
            ("1.2.840.10045.2.1", Some("1.3.132.0.34"), "1.2.840.10045.4.3.2") => {
                SigningScheme::EcdsaP384Sha256
            }
            ("1.3.101.112", _, "1.3.101.112") => SigningScheme::Ed25519,
            _ => return false,
        };
        RustCryptoProvider
            .verify_raw(scheme, key, &tbs, sig)
            .is_ok()
    }
}

fn cert_err(path: &Path, what: impl Into<String>) -> SignError {
    SignError::Certificate {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// Every `CERTIFICATE` PEM block in a file; text around the blocks (as `certtool` and
/// `openssl x509 -text` write it) is skipped.
pub fn read_pem_certs(path: &Path) -> Result<Vec<Cert>, SignError> {
    let text = super::sigstore::read_capped(path, MAX_PEM_FILE, "certificate file")?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(b) = rest.find(BEGIN) {
        let block = &rest[b..];
        let Some(e) = block.find(END) else {
            return Err(cert_err(
                path,
                "a `BEGIN CERTIFICATE` block has no END line: the file is truncated",
            ));
        };
        let body: String = block[BEGIN.len()..e]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = STANDARD.decode(body).map_err(|e| {
            cert_err(
                path,
                format!("certificate {} is not base64: {e}", out.len() + 1),
            )
        })?;
        out.push(
            Cert::from_der(der)
                .map_err(|w| cert_err(path, format!("certificate {}: {w}", out.len() + 1)))?,
        );
        rest = &block[e + END.len()..];
    }
    if out.is_empty() {
        return Err(cert_err(
            path,
            "holds no `-----BEGIN CERTIFICATE-----` block",
        ));
    }
    Ok(out)
}

/// The trust anchors for certificate signatures, with the files they came from.
#[derive(Clone, Debug, Default)]
pub struct TrustAnchors {
    pub certs: Vec<Cert>,
    pub sources: Vec<PathBuf>,
}

impl TrustAnchors {
    pub fn read(paths: &[PathBuf]) -> Result<Self, SignError> {
        let mut a = TrustAnchors::default();
        for p in paths {
            a.certs.extend(read_pem_certs(p)?);
            a.sources.push(p.clone());
        }
        Ok(a)
    }
}

/// The certificates a bundle carries, leaf first.
pub fn bundle_chain(
    certificate: Option<&serde_json::Value>,
    chain: Option<&serde_json::Value>,
    path: &Path,
) -> Result<Vec<Cert>, SignError> {
    let raws: Vec<&serde_json::Value> = if let Some(chain) = chain {
        chain["certificates"]
            .as_array()
            .map(|a| a.iter().map(|c| &c["rawBytes"]).collect())
            .unwrap_or_default()
    } else if let Some(c) = certificate {
        vec![&c["rawBytes"]]
    } else {
        Vec::new()
    };
    if raws.is_empty() {
        return Err(cert_err(path, "the bundle holds no certificate"));
    }
    if raws.len() > MAX_DEPTH {
        return Err(cert_err(
            path,
            format!(
                "the bundle's chain has {} certificates, more than the limit of {MAX_DEPTH}",
                raws.len()
            ),
        ));
    }
    raws.iter()
        .enumerate()
        .map(|(i, r)| {
            let der = r
                .as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| {
                    cert_err(path, format!("bundle certificate {} is not base64", i + 1))
                })?;
            Cert::from_der(der)
                .map_err(|w| cert_err(path, format!("bundle certificate {}: {w}", i + 1)))
        })
        .collect()
}

/// A verified chain: the leaf's key and the subjects from leaf to anchor.
#[derive(Clone, Debug)]
pub struct VerifiedChain {
    pub key: PublicKey,
    pub path: Vec<String>,
}

/// A chain check that failed (exit 1), as opposed to input that cannot be checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRejection {
    pub rule: &'static str,
    pub message: String,
}

fn reject(rule: &'static str, message: String) -> ChainRejection {
    ChainRejection { rule, message }
}

fn time_text(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // By hand: the `time` crate's formatting feature is not enabled for the library.
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        })
        .unwrap_or_else(|_| secs.to_string())
}

/// Check the bundle's chain against the anchors at time `now`. See the module docs for
/// what is checked. `Ok(Err(_))` is a failed check, `Err(_)` unusable input.
pub fn verify_chain(
    chain: &[Cert],
    anchors: &TrustAnchors,
    now: SystemTime,
    path: &Path,
) -> Result<Result<VerifiedChain, ChainRejection>, SignError> {
    let Some(leaf) = chain.first() else {
        return Err(cert_err(path, "the bundle holds no certificate"));
    };
    // The leaf key first: an unsupported key is an input error whatever the chain says.
    let kind = match leaf
        .cert
        .tbs_certificate
        .subject_public_key_info
        .algorithm
        .oid
        .to_string()
        .as_str()
    {
        "1.2.840.113549.1.1.1" => Some("an RSA"),
        "1.3.101.112" => Some("an Ed25519"),
        _ => None,
    };
    let key = match (kind, leaf.public_key()) {
        (None, Ok(k)) if matches!(k.algorithm(), KeyAlgorithm::P256 | KeyAlgorithm::P384) => k,
        (kind, found) => {
            let what = match (kind, found) {
                (Some(kind), _) => format!("{kind} key"),
                (None, Ok(k)) => format!("a {} key", k.algorithm()),
                (None, Err(why)) => format!("a key modelgate cannot use ({why})"),
            };
            return Err(cert_err(
                path,
                format!(
                    "signing certificate `{}` has {what}; certificate signatures must use an \
                     ECDSA P-256 or P-384 key, the only kinds `model_signing` accepts",
                    leaf.subject()
                ),
            ));
        }
    };

    let mut on_path: Vec<&Cert> = vec![leaf];
    let mut seen: HashSet<&[u8]> = HashSet::from([leaf.der.as_slice()]);
    loop {
        let current = on_path[on_path.len() - 1];
        // A trust anchor ends the path: the leaf itself, or an issuer reached on the way.
        if anchors.certs.iter().any(|a| a.der == current.der) {
            break;
        }
        if on_path.len() >= MAX_DEPTH {
            return Err(cert_err(
                path,
                format!(
                    "the certificate chain from `{}` is longer than {MAX_DEPTH} certificates \
                     without reaching a trust anchor",
                    leaf.subject()
                ),
            ));
        }
        // Anchors are preferred, so a path stops at the first trusted certificate.
        let candidates = anchors.certs.iter().chain(chain.iter().skip(1));
        let mut next = None;
        let mut looped = None;
        for c in candidates {
            if c.subject() != current.issuer() || !current.signed_by(c) {
                continue;
            }
            if seen.contains(c.der.as_slice()) {
                looped = Some(c);
                continue;
            }
            next = Some(c);
            break;
        }
        match (next, looped) {
            (Some(c), _) => {
                seen.insert(c.der.as_slice());
                on_path.push(c);
            }
            (None, Some(c)) => {
                return Err(cert_err(
                    path,
                    format!(
                        "the certificate chain loops: `{}` is issued by `{}`, which is already \
                         on the path, and no trust anchor is reached",
                        current.subject(),
                        c.subject()
                    ),
                ))
            }
            (None, None) => {
                let names: Vec<String> = on_path
                    .iter()
                    .map(|c| format!("`{}`", c.subject()))
                    .collect();
                return Ok(Err(reject(
                    "verify/certificate-chain",
                    format!(
                        "the certificate chain {} does not lead to a trusted certificate in {}: \
                         no trusted or bundled certificate named `{}` signed `{}`",
                        names.join(" <- "),
                        anchor_files(anchors),
                        current.issuer(),
                        current.subject()
                    ),
                )));
            }
        }
    }

    // Validity now (there is no trusted signing time), for every certificate on the path.
    for c in &on_path {
        let (nb, na) = (c.not_before(), c.not_after());
        if now < nb || now > na {
            let state = if now < nb {
                "is not valid yet"
            } else {
                "has expired"
            };
            return Err(cert_err(
                path,
                format!(
                    "certificate `{}` {state} (valid {} to {}) and the bundle carries no trusted \
                     timestamp, so the signing time cannot be established",
                    c.subject(),
                    time_text(nb),
                    time_text(na)
                ),
            ));
        }
    }
    // Issuers must be CAs allowed to sign certificates, within their path length.
    for (i, c) in on_path.iter().enumerate().skip(1) {
        let bc = c.basic_constraints();
        if !bc.as_ref().is_some_and(|b| b.ca) {
            return Ok(Err(reject(
                "verify/certificate-chain",
                format!(
                    "`{}` issued a certificate but is not a CA (no `basicConstraints CA:TRUE`)",
                    c.subject()
                ),
            )));
        }
        if let Some(limit) = bc.and_then(|b| b.path_len_constraint) {
            // Intermediates below this issuer, the leaf not counted.
            let below = i.saturating_sub(1);
            if below > usize::from(limit) {
                return Ok(Err(reject(
                    "verify/certificate-chain",
                    format!(
                        "`{}` allows {limit} intermediate CAs below it, the chain has {below}",
                        c.subject()
                    ),
                )));
            }
        }
        if c.key_usage().is_some_and(|ku| !ku.key_cert_sign()) {
            return Ok(Err(reject(
                "verify/certificate-chain",
                format!(
                    "`{}` is not allowed to sign certificates (key usage lacks keyCertSign)",
                    c.subject()
                ),
            )));
        }
    }
    let ku_ok = leaf.key_usage().is_some_and(|ku| ku.digital_signature());
    if !ku_ok && !leaf.code_signing_eku() {
        return Ok(Err(reject(
            "verify/certificate-usage",
            format!(
                "signing certificate `{}` allows neither digitalSignature (key usage) nor \
                 codeSigning (extended key usage)",
                leaf.subject()
            ),
        )));
    }
    Ok(Ok(VerifiedChain {
        key,
        path: on_path.iter().map(|c| c.subject()).collect(),
    }))
}

fn anchor_files(a: &TrustAnchors) -> String {
    let files: Vec<String> = a
        .sources
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect();
    if files.is_empty() {
        "the trust anchors".into()
    } else {
        files.join(", ")
    }
}

/// The certificate material a certificate signature carries: the leaf, then the
/// intermediates (the root stays out; the verifier has it).
pub fn chain_for_bundle(leaf: &Path, chain: &[PathBuf]) -> Result<Vec<Cert>, SignError> {
    let mut certs = read_pem_certs(leaf)?;
    if certs.len() != 1 {
        return Err(cert_err(
            leaf,
            format!("holds {} certificates; pass only the signing certificate here and its issuers with `--certificate-chain`", certs.len()),
        ));
    }
    for p in chain {
        for c in read_pem_certs(p)? {
            // A self-signed root is the verifier's anchor, not bundle material.
            if c.subject() == c.issuer() && c.signed_by(&c) {
                continue;
            }
            certs.push(c);
        }
    }
    if certs.len() > MAX_DEPTH {
        return Err(cert_err(
            leaf,
            format!("the chain has more than {MAX_DEPTH} certificates"),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/sigstore/model-transparency/keys/certificate")
            .join(name)
    }

    fn at(y: i64) -> SystemTime {
        // roughly mid-year `y`
        SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(((y - 1970) * 365 + 180) as u64 * 86_400)
    }

    #[test]
    fn upstream_chain_verifies_and_wrong_anchor_fails() {
        let leaf = read_pem_certs(&fixture("signing-key-cert.pem")).unwrap();
        let int = read_pem_certs(&fixture("int-ca-cert.pem")).unwrap();
        let chain = [leaf.clone(), int.clone()].concat();
        let anchors = TrustAnchors::read(&[fixture("ca-cert.pem")]).unwrap();
        let v = verify_chain(&chain, &anchors, at(2030), Path::new("b"))
            .unwrap()
            .unwrap();
        assert_eq!(v.key.algorithm(), KeyAlgorithm::P384);
        assert_eq!(v.path.len(), 3);
        // the intermediate alone is not a trusted root of this chain's leaf? It is: an
        // anchor may be an intermediate, and the path stops there.
        let int_anchor = TrustAnchors::read(&[fixture("int-ca-cert.pem")]).unwrap();
        assert!(verify_chain(&chain, &int_anchor, at(2030), Path::new("b"))
            .unwrap()
            .is_ok());
        // without the intermediate in the bundle, the root cannot be reached
        let r = verify_chain(&leaf, &anchors, at(2030), Path::new("b"))
            .unwrap()
            .unwrap_err();
        assert_eq!(r.rule, "verify/certificate-chain");
        // expired and not yet valid are input errors
        let e = verify_chain(&chain, &anchors, at(2040), Path::new("b")).unwrap_err();
        assert!(e.to_string().contains("has expired"), "{e}");
        let e = verify_chain(&chain, &anchors, at(2020), Path::new("b")).unwrap_err();
        assert!(e.to_string().contains("is not valid yet"), "{e}");
    }

    #[test]
    fn rsa_leaf_is_an_input_error() {
        // The root CA is RSA; used as a leaf it must be refused before any chain work.
        let root = read_pem_certs(&fixture("ca-cert.pem")).unwrap();
        let anchors = TrustAnchors::read(&[fixture("ca-cert.pem")]).unwrap();
        let e = verify_chain(&root, &anchors, at(2030), Path::new("b")).unwrap_err();
        assert!(e.to_string().contains("ECDSA P-256 or P-384"), "{e}");
    }

    /// Certificates made here: P-256 keys, named `CN=<name>`.
    struct Made {
        key: crate::sign::PrivateKey,
        cert: Cert,
    }

    fn made(name: &str, issuer: Option<(&str, &crate::sign::PrivateKey)>, leaf: bool) -> Made {
        use crate::sign::keyless::tests::{ca_extensions, leaf_extensions, make_cert};
        let key = crate::sign::PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let (iname, ikey) = issuer.unwrap_or((name, &key));
        let exts = if leaf {
            leaf_extensions("https://example.com/leaf", "https://issuer.example.com")
        } else {
            ca_extensions()
        };
        let now = SystemTime::now();
        let der = make_cert(
            &format!("CN={name}"),
            &format!("CN={iname}"),
            &key.public(),
            ikey,
            exts,
            now - std::time::Duration::from_secs(3600),
            now + std::time::Duration::from_secs(3600),
        );
        Made {
            key,
            cert: Cert::from_der(der).unwrap(),
        }
    }

    #[test]
    fn a_chain_that_loops_is_an_input_error() {
        let root = made("root", None, false);
        let anchors = TrustAnchors {
            certs: vec![root.cert.clone()],
            sources: vec![],
        };
        // A is issued by B and B by A: two keys made first, then the certificates.
        let ka = crate::sign::PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let kb = crate::sign::PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let now = SystemTime::now();
        let mk = |s: &str, i: &str, sk: &crate::sign::PrivateKey, ik: &crate::sign::PrivateKey| {
            Cert::from_der(crate::sign::keyless::tests::make_cert(
                s,
                i,
                &sk.public(),
                ik,
                crate::sign::keyless::tests::ca_extensions(),
                now - std::time::Duration::from_secs(60),
                now + std::time::Duration::from_secs(60),
            ))
            .unwrap()
        };
        let a = mk("CN=A", "CN=B", &ka, &kb);
        let b = mk("CN=B", "CN=A", &kb, &ka);
        let leaf = made("leaf", Some(("A", &ka)), true);
        let chain = vec![leaf.cert, a, b];
        let e = verify_chain(&chain, &anchors, now, Path::new("b")).unwrap_err();
        assert!(matches!(e, SignError::Certificate { .. }));
        assert!(e.to_string().contains("chain loops"), "{e}");
        // and the same chain with the right root would still not verify: it is unrelated
        let _ = root.key;
    }

    #[test]
    fn a_chain_longer_than_eight_is_an_input_error() {
        let root = made("root", None, false);
        let mut issuer = ("root".to_string(), root.key);
        let mut inter = Vec::new();
        for i in 0..8 {
            let name = format!("int{i}");
            let m = made(&name, Some((&issuer.0, &issuer.1)), false);
            inter.push(m.cert);
            issuer = (name, m.key);
        }
        let leaf = made("leaf", Some((&issuer.0, &issuer.1)), true);
        let anchors = TrustAnchors {
            certs: vec![root.cert],
            sources: vec![],
        };
        let mut chain = vec![leaf.cert];
        chain.extend(inter.into_iter().rev());
        let e = verify_chain(&chain, &anchors, SystemTime::now(), Path::new("b")).unwrap_err();
        assert!(e.to_string().contains("longer than 8"), "{e}");
        // seven intermediates fit: leaf + 7 + root = 9 > 8? no: the path counts the anchor
        // only when reached, so leaf + 7 intermediates reach the root at depth 8.
        let short: Vec<Cert> = std::iter::once(chain[0].clone())
            .chain(chain[2..].iter().cloned())
            .collect();
        let r = verify_chain(&short, &anchors, SystemTime::now(), Path::new("b")).unwrap();
        // int7 is missing, so the leaf's issuer cannot be found: a failed check, not input
        assert!(r.is_err());
    }
}
