//! Sigstore keyless signing: an OIDC identity token, a short-lived Fulcio certificate for
//! an ephemeral key, and a Rekor log entry and/or an RFC 3161 timestamp for each
//! signature, so no long-lived key has to live in a CI secret.
//!
//! The steps, each over HTTPS with a blocking client (`ureq`; the endpoints are
//! configurable, [`Endpoints`]):
//!
//! 1. the identity token: given (`--identity-token`), GitLab's `SIGSTORE_ID_TOKEN`, or
//!    GitHub Actions' (`ACTIONS_ID_TOKEN_REQUEST_URL` + `ACTIONS_ID_TOKEN_REQUEST_TOKEN`,
//!    audience `sigstore`, which needs `permissions: id-token: write`);
//! 2. an ephemeral P-256 key; Fulcio `POST /api/v2/signingCert` with the token, the public
//!    key and a proof of possession (the key's signature over the token's email claim,
//!    or its `sub` claim when it has no email);
//! 3. for every DSSE envelope: Rekor `POST /api/v1/log/entries` (kind `dsse` 0.0.1), whose
//!    answer becomes the bundle's `tlogEntries[0]` (inclusion proof, checkpoint and
//!    signed entry timestamp); and/or the timestamp authority `POST /api/v1/timestamp`
//!    over the signature, whose answer becomes `timestampVerificationData`.
//!
//! The ephemeral key lives only in memory and is dropped (zeroed) with the session.
//!
//! Tested offline only: the tests run every step against a loopback HTTP server that
//! plays Fulcio (with a test CA), Rekor (with a test log key) and the OIDC endpoint, and
//! verify the resulting bundle with [`super::sigstore`] under a trust root built from the
//! same test keys. This machine has no network, so the real Sigstore services were never
//! called; the request and answer shapes follow the Fulcio v2 and Rekor v1 APIs.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use super::dsse::Bundle;
use super::keys::{KeyAlgorithm, PrivateKey};
use super::pki::Cert;
use super::SignError;

/// Answers are small JSON or DER documents; cap what we read.
const MAX_RESPONSE: u64 = 1024 * 1024;

/// Where the Sigstore services are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub fulcio: String,
    /// Rekor v1; `None` to rely on timestamps alone.
    pub rekor: Option<String>,
    /// An RFC 3161 timestamp authority; `None` to rely on the log alone.
    pub tsa: Option<String>,
}

impl Endpoints {
    /// The Sigstore public-good instance.
    pub fn production() -> Self {
        Endpoints {
            fulcio: "https://fulcio.sigstore.dev".into(),
            rekor: Some("https://rekor.sigstore.dev".into()),
            tsa: None,
        }
    }

    /// The Sigstore staging instance.
    pub fn staging() -> Self {
        Endpoints {
            fulcio: "https://fulcio.sigstage.dev".into(),
            rekor: Some("https://rekor.sigstage.dev".into()),
            tsa: None,
        }
    }
}

fn kerr(step: &'static str, what: impl Into<String>) -> SignError {
    SignError::Keyless {
        step,
        what: what.into(),
    }
}

/// Where the identity token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Given,
    GitLab,
    GitHubActions,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Given => "--identity-token",
            TokenSource::GitLab => "SIGSTORE_ID_TOKEN",
            TokenSource::GitHubActions => "GitHub Actions OIDC",
        }
    }
}

/// An OIDC identity token. Its text is a bearer credential: never printed.
pub struct IdentityToken {
    jwt: String,
    pub source: TokenSource,
    /// The `iss` claim.
    pub issuer: String,
    /// What the proof of possession signs: the `email` claim, else `sub`.
    pub subject: String,
}

impl std::fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IdentityToken({}, iss {}, subject {})",
            self.source.as_str(),
            self.issuer,
            self.subject
        )
    }
}

impl IdentityToken {
    /// Read the claims of a JWT (unverified: Fulcio verifies it).
    pub fn parse(jwt: &str, source: TokenSource) -> Result<Self, SignError> {
        let jwt = jwt.trim();
        let mut parts = jwt.split('.');
        let (Some(_), Some(claims), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(kerr(
                "identity token",
                format!(
                    "the token from {} is not a JWT (three dot-separated parts)",
                    source.as_str()
                ),
            ));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(claims.trim_end_matches('='))
            .map_err(|_| kerr("identity token", "the JWT claims are not base64url"))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|_| kerr("identity token", "the JWT claims are not JSON"))?;
        let issuer = v["iss"].as_str().unwrap_or_default().to_owned();
        let subject = v["email"]
            .as_str()
            .or_else(|| v["sub"].as_str())
            .unwrap_or_default()
            .to_owned();
        if issuer.is_empty() || subject.is_empty() {
            return Err(kerr(
                "identity token",
                "the JWT has no `iss` claim or neither `email` nor `sub`",
            ));
        }
        Ok(IdentityToken {
            jwt: jwt.to_owned(),
            source,
            issuer,
            subject,
        })
    }
}

/// The process environment, as far as token discovery needs it (a trait so tests can
/// pass their own).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// A blocking HTTP client with timeouts, which returns error statuses as answers.
pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .user_agent(concat!("modelgate/", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: config.into(),
        }
    }

    fn read(
        step: &'static str,
        url: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, SignError> {
        let mut resp = resp.map_err(|e| kerr(step, format!("cannot reach `{url}`: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| kerr(step, format!("cannot read the answer of `{url}`: {e}")))?;
        if !(200..300).contains(&status) {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(kerr(
                step,
                format!("`{url}` answered HTTP {status}: {}", text.trim()),
            ));
        }
        Ok(body)
    }

    fn post(
        &self,
        step: &'static str,
        url: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, SignError> {
        let resp = self
            .agent
            .post(url)
            .header("Content-Type", content_type)
            .header("Accept", "application/json")
            .send(body);
        Self::read(step, url, resp)
    }

    fn get_bearer(&self, step: &'static str, url: &str, token: &str) -> Result<Vec<u8>, SignError> {
        let resp = self
            .agent
            .get(url)
            .header("Authorization", &format!("bearer {token}"))
            .call();
        // The URL carries a signed query; name only its host in errors.
        let shown = url.split('?').next().unwrap_or(url);
        Self::read(step, shown, resp)
    }
}

fn json_of(step: &'static str, body: &[u8]) -> Result<Value, SignError> {
    serde_json::from_slice(body).map_err(|e| kerr(step, format!("the answer is not JSON: {e}")))
}

/// Find the identity token: the given one, GitLab's `SIGSTORE_ID_TOKEN`, or GitHub
/// Actions' OIDC endpoint (audience `sigstore`).
pub fn ambient_token(
    given: Option<&str>,
    env: &dyn Env,
    http: &Http,
) -> Result<IdentityToken, SignError> {
    if let Some(t) = given {
        return IdentityToken::parse(t, TokenSource::Given);
    }
    if let Some(t) = env.var("SIGSTORE_ID_TOKEN") {
        return IdentityToken::parse(&t, TokenSource::GitLab);
    }
    if let (Some(url), Some(bearer)) = (
        env.var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        env.var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) {
        let sep = if url.contains('?') { '&' } else { '?' };
        let full = format!("{url}{sep}audience=sigstore");
        let body = http.get_bearer("identity token", &full, &bearer)?;
        let v = json_of("identity token", &body)?;
        let Some(jwt) = v["value"].as_str() else {
            return Err(kerr(
                "identity token",
                "the GitHub Actions OIDC answer has no `value`",
            ));
        };
        return IdentityToken::parse(jwt, TokenSource::GitHubActions);
    }
    Err(kerr(
        "identity token",
        "no identity token: pass `--identity-token`, set `SIGSTORE_ID_TOKEN` (GitLab \
         `id_tokens`), or run in GitHub Actions with `permissions: id-token: write`",
    ))
}

/// A keyless signing session: the ephemeral key and its Fulcio certificate.
pub struct Session {
    key: PrivateKey,
    /// Leaf first, as Fulcio returned it.
    pub chain: Vec<Cert>,
    pub token_source: TokenSource,
    pub issuer: String,
    pub subject: String,
    endpoints: Endpoints,
    http: Http,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session({} from {}, {:?})",
            self.subject, self.issuer, self.endpoints
        )
    }
}

impl Session {
    /// Make an ephemeral key and get it certified by Fulcio.
    pub fn start(
        token: &IdentityToken,
        endpoints: Endpoints,
        http: Http,
    ) -> Result<Self, SignError> {
        if endpoints.rekor.is_none() && endpoints.tsa.is_none() {
            return Err(kerr(
                "configuration",
                "neither a Rekor log nor a timestamp authority is configured, so the signature \
                 could not be dated",
            ));
        }
        let key = PrivateKey::generate(KeyAlgorithm::P256)?;
        let public_pem = key.public().to_pem()?;
        let proof = key.sign(token.subject.as_bytes());
        let request = json!({
            "credentials": { "oidcIdentityToken": token.jwt },
            "publicKeyRequest": {
                "publicKey": { "algorithm": "ECDSA", "content": public_pem },
                "proofOfPossession": STANDARD.encode(proof),
            },
        });
        let url = format!(
            "{}/api/v2/signingCert",
            endpoints.fulcio.trim_end_matches('/')
        );
        let body = http.post(
            "fulcio",
            &url,
            "application/json",
            request.to_string().as_bytes(),
        )?;
        let v = json_of("fulcio", &body)?;
        let certs = v
            .pointer("/signedCertificateEmbeddedSct/chain/certificates")
            .or_else(|| v.pointer("/signedCertificateDetachedSct/chain/certificates"))
            .and_then(|c| c.as_array())
            .ok_or_else(|| kerr("fulcio", "the answer has no certificate chain"))?;
        let mut chain = Vec::new();
        for (i, pem) in certs.iter().enumerate() {
            let pem = pem.as_str().unwrap_or_default();
            let der = pem_cert_der(pem)
                .ok_or_else(|| kerr("fulcio", format!("certificate {} is not PEM", i + 1)))?;
            chain.push(
                Cert::from_der(der)
                    .map_err(|w| kerr("fulcio", format!("certificate {}: {w}", i + 1)))?,
            );
        }
        let Some(leaf) = chain.first() else {
            return Err(kerr("fulcio", "the answer's chain is empty"));
        };
        let certified = leaf
            .public_key()
            .map_err(|w| kerr("fulcio", format!("leaf certificate: {w}")))?;
        if certified != key.public() {
            return Err(kerr(
                "fulcio",
                "the certificate is for another key than the one sent",
            ));
        }
        Ok(Session {
            key,
            chain,
            token_source: token.source,
            issuer: token.issuer.clone(),
            subject: token.subject.clone(),
            endpoints,
            http,
        })
    }

    /// The ephemeral signing key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// Turn a signed bundle into a keyless one: the certificate instead of the key hint,
    /// then a Rekor entry and/or a timestamp for its signature.
    pub fn notarize(&self, bundle: &mut Bundle) -> Result<(), SignError> {
        let leaf = &self.chain[0];
        let vm = &mut bundle.verification_material;
        vm.public_key = None;
        vm.certificate = Some(json!({ "rawBytes": STANDARD.encode(&leaf.der) }));
        let sig_b64 = bundle
            .dsse_envelope
            .signatures
            .first()
            .map(|s| s.sig.clone())
            .unwrap_or_default();
        let signature = STANDARD
            .decode(&sig_b64)
            .map_err(|_| kerr("sign", "the DSSE signature is not base64"))?;
        if let Some(tsa) = &self.endpoints.tsa {
            let url = format!("{}/api/v1/timestamp", tsa.trim_end_matches('/'));
            let req = timestamp_request(&signature, &self.key)?;
            let answer = self.http.post(
                "timestamp authority",
                &url,
                "application/timestamp-query",
                &req,
            )?;
            check_timestamp_response(&answer)?;
            bundle.verification_material.timestamp_verification_data = Some(
                json!({ "rfc3161Timestamps": [{ "signedTimestamp": STANDARD.encode(answer) }] }),
            );
        }
        if let Some(rekor) = &self.endpoints.rekor {
            let envelope = serde_json::to_string(&bundle.dsse_envelope)
                .map_err(|e| SignError::Encode(e.to_string()))?;
            let leaf_pem = pem_of(&leaf.der);
            let request = json!({
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": { "proposedContent": {
                    "envelope": envelope,
                    "verifiers": [STANDARD.encode(leaf_pem)],
                }},
            });
            let url = format!("{}/api/v1/log/entries", rekor.trim_end_matches('/'));
            let body = self.http.post(
                "rekor",
                &url,
                "application/json",
                request.to_string().as_bytes(),
            )?;
            let entry = tlog_entry(&json_of("rekor", &body)?)?;
            bundle.verification_material.tlog_entries = vec![entry];
        }
        Ok(())
    }
}

fn pem_of(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn pem_cert_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = pem[start..].find("-----END CERTIFICATE-----")? + start;
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

fn hex_to_b64(step: &'static str, what: &str, v: &Value) -> Result<String, SignError> {
    let h = v
        .as_str()
        .ok_or_else(|| kerr(step, format!("the answer has no `{what}`")))?;
    let bytes = hex::decode(h).map_err(|_| kerr(step, format!("`{what}` is not hex")))?;
    Ok(STANDARD.encode(bytes))
}

fn int_text(step: &'static str, what: &str, v: &Value) -> Result<String, SignError> {
    v.as_u64()
        .map(|n| n.to_string())
        .ok_or_else(|| kerr(step, format!("the answer has no integer `{what}`")))
}

/// A Rekor v1 `POST /api/v1/log/entries` answer (`{uuid: entry}`) as a bundle tlog entry.
pub fn tlog_entry(answer: &Value) -> Result<Value, SignError> {
    const S: &str = "rekor";
    let Some((_, e)) = answer.as_object().and_then(|o| o.iter().next()) else {
        return Err(kerr(S, "the answer holds no entry"));
    };
    let proof = &e["verification"]["inclusionProof"];
    let hashes: Vec<String> = proof["hashes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| hex_to_b64(S, "hashes", h))
                .collect::<Result<_, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let set = e["verification"]["signedEntryTimestamp"]
        .as_str()
        .ok_or_else(|| kerr(S, "the answer has no signed entry timestamp"))?;
    let checkpoint = proof["checkpoint"]
        .as_str()
        .ok_or_else(|| kerr(S, "the answer has no inclusion proof checkpoint"))?;
    let body = e["body"]
        .as_str()
        .ok_or_else(|| kerr(S, "the answer has no entry body"))?;
    Ok(json!({
        "logIndex": int_text(S, "logIndex", &e["logIndex"])?,
        "logId": { "keyId": hex_to_b64(S, "logID", &e["logID"])? },
        "kindVersion": { "kind": "dsse", "version": "0.0.1" },
        "integratedTime": int_text(S, "integratedTime", &e["integratedTime"])?,
        "inclusionPromise": { "signedEntryTimestamp": set },
        "inclusionProof": {
            "logIndex": int_text(S, "inclusionProof.logIndex", &proof["logIndex"])?,
            "rootHash": hex_to_b64(S, "rootHash", &proof["rootHash"])?,
            "treeSize": int_text(S, "treeSize", &proof["treeSize"])?,
            "hashes": hashes,
            "checkpoint": { "envelope": checkpoint },
        },
        "canonicalizedBody": body,
    }))
}

/// DER: a tag and its content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// An RFC 3161 `TimeStampReq` for the SHA-256 of `signature`, with a random nonce and
/// `certReq` set (the verifier needs the TSA certificate in the answer).
fn timestamp_request(signature: &[u8], key: &PrivateKey) -> Result<Vec<u8>, SignError> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(signature);
    // sha256 AlgorithmIdentifier with NULL parameters
    let alg = der(
        0x30,
        &[
            &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let imprint = der(0x30, &[alg, der(0x04, &digest)].concat());
    // A nonce only needs to be unpredictable; a signature by the fresh key over the
    // digest is (and saves another random source here).
    let mut nonce: Vec<u8> = sha2::Sha256::digest(key.sign(&digest))[..8].to_vec();
    nonce[0] &= 0x7f;
    let body = [
        der(0x02, &[1]),
        imprint,
        der(0x02, &nonce),
        vec![0x01, 0x01, 0xff],
    ]
    .concat();
    Ok(der(0x30, &body))
}

/// A `TimeStampResp` whose status is granted (0) or grantedWithMods (1).
fn check_timestamp_response(answer: &[u8]) -> Result<(), SignError> {
    // SEQUENCE { SEQUENCE { INTEGER status, ... }, token }
    let ok = (|| {
        let (tag, outer, _) = tlv(answer)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, status_info, _) = tlv(outer)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, status, _) = tlv(status_info)?;
        (tag == 0x02 && (status == [0] || status == [1])).then_some(())
    })();
    ok.ok_or_else(|| {
        kerr(
            "timestamp authority",
            "the answer is not a granted RFC 3161 TimeStampResp",
        )
    })
}

/// One DER TLV: tag, content, rest.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (l0 as usize, rest)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
pub(crate) mod tests;
