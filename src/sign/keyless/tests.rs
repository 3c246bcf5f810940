//! Keyless signing against a loopback HTTP server that plays the OIDC endpoint, Fulcio
//! (a test CA made here), Rekor (a test log key) and a timestamp authority; the bundles it
//! yields are then verified with the Sigstore verifier under a trust root built from the
//! same test keys. The fake Fulcio embeds no SCT, so these verifications skip the SCT
//! check (the SCT code path is covered by the real Sigstore vectors in tests/it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;
use x509_cert::der::asn1::{BitString, Ia5String, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use super::*;
use crate::sign::keys::PublicKey;
use crate::sign::sigstore::{Artifact, KeylessTrust, TrustRootSource, TrustedIdentity};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const IDENTITY: &str = "https://github.com/acme/models/.github/workflows/sign.yml@refs/heads/main";

fn spki_der(k: &PublicKey) -> Vec<u8> {
    let pem = k.to_pem().unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

fn ext(oid: &str, critical: bool, value: Vec<u8>) -> Extension {
    Extension {
        extn_id: ObjectIdentifier::new_unwrap(oid),
        critical,
        extn_value: OctetString::new(value).unwrap(),
    }
}

/// A certificate for `subject_key`, signed by `issuer_key` (P-256, ECDSA-SHA256).
pub(crate) fn make_cert(
    subject: &str,
    issuer: &str,
    subject_key: &PublicKey,
    issuer_key: &PrivateKey,
    extensions: Vec<Extension>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Vec<u8> {
    let alg = AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&sha2::Sha256::digest(subject.as_bytes())[..8]).unwrap(),
        signature: alg.clone(),
        issuer: issuer.parse::<Name>().unwrap(),
        validity: Validity {
            not_before: Time::try_from(not_before).unwrap(),
            not_after: Time::try_from(not_after).unwrap(),
        },
        subject: subject.parse::<Name>().unwrap(),
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(&spki_der(subject_key))
            .unwrap(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let sig = issuer_key.sign(&tbs.to_der().unwrap());
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig).unwrap(),
    }
    .to_der()
    .unwrap()
}

pub(crate) fn ca_extensions() -> Vec<Extension> {
    vec![
        ext(
            "2.5.29.19",
            true,
            BasicConstraints {
                ca: true,
                path_len_constraint: None,
            }
            .to_der()
            .unwrap(),
        ),
        ext(
            "2.5.29.15",
            true,
            KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
                .to_der()
                .unwrap(),
        ),
    ]
}

pub(crate) fn leaf_extensions(identity: &str, issuer: &str) -> Vec<Extension> {
    let san = SubjectAltName(vec![GeneralName::UniformResourceIdentifier(
        Ia5String::new(identity).unwrap(),
    )]);
    let utf8 = {
        let mut v = vec![0x0c, issuer.len() as u8];
        v.extend_from_slice(issuer.as_bytes());
        v
    };
    vec![
        ext(
            "2.5.29.15",
            true,
            KeyUsage(KeyUsages::DigitalSignature.into())
                .to_der()
                .unwrap(),
        ),
        ext(
            "2.5.29.37",
            false,
            ExtendedKeyUsage(vec![ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3")])
                .to_der()
                .unwrap(),
        ),
        ext("2.5.29.17", true, san.to_der().unwrap()),
        ext("1.3.6.1.4.1.57264.1.1", false, issuer.as_bytes().to_vec()),
        ext("1.3.6.1.4.1.57264.1.8", false, utf8),
    ]
}

fn b64pem(der: &[u8]) -> String {
    pem_of(der)
}

/// The fake Sigstore: a CA, a log key, and what it was asked.
struct Fake {
    ca_key: PrivateKey,
    ca_der: Vec<u8>,
    log_key: PrivateKey,
    requests: Mutex<Vec<(String, String)>>,
    next_index: Mutex<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Fake {
    fn new() -> Arc<Self> {
        let ca_key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let start = SystemTime::now() - Duration::from_secs(3600);
        let ca_der = make_cert(
            "CN=fake-fulcio,O=modelgate-test",
            "CN=fake-fulcio,O=modelgate-test",
            &ca_key.public(),
            &ca_key,
            ca_extensions(),
            start,
            start + Duration::from_secs(10 * 86_400),
        );
        Arc::new(Fake {
            ca_key,
            ca_der,
            log_key: PrivateKey::generate(KeyAlgorithm::P256).unwrap(),
            requests: Mutex::new(Vec::new()),
            next_index: Mutex::new(7),
        })
    }

    fn log_id(&self) -> Vec<u8> {
        sha2::Sha256::digest(spki_der(&self.log_key.public())).to_vec()
    }

    fn trusted_root(&self) -> String {
        let start = "2020-01-01T00:00:00Z";
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "http://127.0.0.1",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": STANDARD.encode(spki_der(&self.log_key.public())),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": { "start": start },
                },
                "logId": { "keyId": STANDARD.encode(self.log_id()) },
            }],
            "certificateAuthorities": [{
                "subject": { "organization": "modelgate-test", "commonName": "fake-fulcio" },
                "uri": "http://127.0.0.1",
                "certChain": { "certificates": [{ "rawBytes": STANDARD.encode(&self.ca_der) }] },
                "validFor": { "start": start },
            }],
            "ctlogs": [],
            "timestampAuthorities": [],
        })
        .to_string()
    }

    fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.requests.lock().unwrap().push((
            format!("{method} {path}"),
            String::from_utf8_lossy(body).into_owned(),
        ));
        match (method, path.split('?').next().unwrap_or("")) {
            ("GET", "/oidc") => {
                if !path.contains("audience=sigstore") {
                    return (400, b"no audience".to_vec());
                }
                (
                    200,
                    json!({ "value": jwt(IDENTITY, None) })
                        .to_string()
                        .into_bytes(),
                )
            }
            ("POST", "/api/v2/signingCert") => self.fulcio(body),
            ("POST", "/api/v1/log/entries") => self.rekor(body),
            _ => (404, b"not found".to_vec()),
        }
    }

    fn fulcio(&self, body: &[u8]) -> (u16, Vec<u8>) {
        let v: Value = serde_json::from_slice(body).unwrap();
        let token = v["credentials"]["oidcIdentityToken"].as_str().unwrap();
        let claims = IdentityToken::parse(token, TokenSource::Given).unwrap();
        let pem = v["publicKeyRequest"]["publicKey"]["content"]
            .as_str()
            .unwrap();
        let key = PublicKey::from_pem(std::path::Path::new("request"), pem).unwrap();
        let proof = STANDARD
            .decode(v["publicKeyRequest"]["proofOfPossession"].as_str().unwrap())
            .unwrap();
        if !key.verify(claims.subject.as_bytes(), &proof) {
            return (400, b"bad proof of possession".to_vec());
        }
        let start = SystemTime::now() - Duration::from_secs(60);
        let leaf = make_cert(
            "O=sigstore.dev",
            "CN=fake-fulcio,O=modelgate-test",
            &key,
            &self.ca_key,
            leaf_extensions(&claims.subject, &claims.issuer),
            start,
            start + Duration::from_secs(600),
        );
        let answer = json!({ "signedCertificateEmbeddedSct": { "chain": { "certificates": [
            b64pem(&leaf), b64pem(&self.ca_der)
        ]}}});
        (201, answer.to_string().into_bytes())
    }

    fn rekor(&self, body: &[u8]) -> (u16, Vec<u8>) {
        let v: Value = serde_json::from_slice(body).unwrap();
        let content = &v["spec"]["proposedContent"];
        let envelope_text = content["envelope"].as_str().unwrap();
        let envelope: Value = serde_json::from_str(envelope_text).unwrap();
        let payload = STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap();
        let entry = json!({
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": { "algorithm": "sha256", "value": hex::encode(sha2::Sha256::digest(envelope_text.as_bytes())) },
                "payloadHash": { "algorithm": "sha256", "value": hex::encode(sha2::Sha256::digest(&payload)) },
                "signatures": [{
                    "signature": envelope["signatures"][0]["sig"],
                    "verifier": content["verifiers"][0],
                }],
            },
        });
        // serde_json with sorted keys is canonical enough for these ASCII bodies
        let body = STANDARD.encode(canonical(&entry));
        let index = {
            let mut n = self.next_index.lock().unwrap();
            *n += 1;
            *n
        };
        let integrated = now_secs() - 5;
        let log_id = hex::encode(self.log_id());
        let set_payload = canonical(&json!({
            "body": body, "integratedTime": integrated, "logID": log_id, "logIndex": index,
        }));
        let set = STANDARD.encode(self.log_key.sign(&set_payload));
        // a one-leaf tree: the root is the leaf hash
        let leaf = {
            let mut h = sha2::Sha256::new();
            h.update([0u8]);
            h.update(STANDARD.decode(&body).unwrap());
            h.finalize().to_vec()
        };
        let note = format!("fake-rekor - 1\n1\n{}\n", STANDARD.encode(&leaf));
        let sig = self.log_key.sign(note.as_bytes());
        let mut hinted = self.log_id()[..4].to_vec();
        hinted.extend(sig);
        let checkpoint = format!("{note}\n\u{2014} fake-rekor {}\n", STANDARD.encode(hinted));
        let answer = json!({ "24296fb24b8ad77a": {
            "body": body,
            "integratedTime": integrated,
            "logID": log_id,
            "logIndex": index,
            "verification": {
                "inclusionProof": {
                    "checkpoint": checkpoint,
                    "hashes": [],
                    "logIndex": 0,
                    "rootHash": hex::encode(&leaf),
                    "treeSize": 1,
                },
                "signedEntryTimestamp": set,
            },
        }});
        (201, answer.to_string().into_bytes())
    }
}

/// JSON with object keys sorted and no whitespace (RFC 8785 for ASCII text and integers).
fn canonical(v: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).unwrap()
}

/// An unsigned JWT with the given subject (Fulcio is fake; nothing checks the signature).
fn jwt(sub: &str, email: Option<&str>) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let mut claims = json!({ "iss": ISSUER, "sub": sub, "aud": "sigstore" });
    if let Some(e) = email {
        claims["email"] = json!(e);
    }
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

/// Serve `fake` on a loopback port until the test ends; returns the base URL.
fn serve(fake: Arc<Fake>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_owned();
            let path = parts.next().unwrap_or("").to_owned();
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let (status, answer) = fake.answer(&method, &path, &body);
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
                answer.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&answer);
        }
    });
    format!("http://{addr}")
}

struct MapEnv(Vec<(&'static str, String)>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

fn endpoints(base: &str) -> Endpoints {
    Endpoints {
        fulcio: base.to_owned(),
        rekor: Some(base.to_owned()),
        tsa: None,
    }
}

#[test]
fn token_discovery_order_and_errors() {
    let http = Http::new();
    let t = ambient_token(
        Some(&jwt("s", Some("me@example.com"))),
        &MapEnv(vec![]),
        &http,
    )
    .unwrap();
    assert_eq!(
        (t.source, t.subject.as_str()),
        (TokenSource::Given, "me@example.com")
    );
    let env = MapEnv(vec![(
        "SIGSTORE_ID_TOKEN",
        jwt("project_path:g/p:ref_type:branch:ref:main", None),
    )]);
    let t = ambient_token(None, &env, &http).unwrap();
    assert_eq!(t.source, TokenSource::GitLab);
    assert!(t.subject.starts_with("project_path:"));
    let e = ambient_token(None, &MapEnv(vec![]), &http)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id-token: write"), "{e}");
    let e = IdentityToken::parse("abc", TokenSource::Given)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a JWT"), "{e}");
    // the token text never shows in Debug
    let tok = jwt("s", None);
    let t = IdentityToken::parse(&tok, TokenSource::Given).unwrap();
    assert!(!format!("{t:?}").contains(&tok));
}

#[test]
fn github_actions_token_then_fulcio_then_rekor_then_verify() {
    let fake = Fake::new();
    let base = serve(fake.clone());
    let http = Http::new();
    let env = MapEnv(vec![
        ("ACTIONS_ID_TOKEN_REQUEST_URL", format!("{base}/oidc?run=1")),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "bearer-secret".into()),
    ]);
    let token = ambient_token(None, &env, &http).unwrap();
    assert_eq!(token.source, TokenSource::GitHubActions);
    assert_eq!(token.issuer, ISSUER);
    let session = Session::start(&token, endpoints(&base), http).unwrap();
    assert_eq!(session.chain.len(), 2);

    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "name": "a.txt", "digest": { "sha256": hex::encode(sha2::Sha256::digest(b"hello")) } }],
        "predicateType": "https://example.com/p",
        "predicate": {},
    })
    .to_string();
    let mut bundle = Bundle::sign(
        session.key(),
        super::super::dsse::IN_TOTO_PAYLOAD_TYPE,
        statement.as_bytes(),
    );
    session.notarize(&mut bundle).unwrap();
    let vm = &bundle.verification_material;
    assert!(vm.public_key.is_none() && vm.certificate.is_some());
    assert_eq!(vm.tlog_entries.len(), 1);

    // the requests: the OIDC endpoint with the audience, Fulcio, Rekor
    let reqs = fake.requests.lock().unwrap().clone();
    let names: Vec<&str> = reqs.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(names[0], "GET /oidc?run=1&audience=sigstore");
    assert_eq!(
        &names[1..],
        ["POST /api/v2/signingCert", "POST /api/v1/log/entries"]
    );
    let rekor_req: Value = serde_json::from_str(&reqs[2].1).unwrap();
    assert_eq!(rekor_req["kind"], "dsse");

    // and the bundle verifies under a trust root made of the fake's keys
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("trusted_root.json");
    std::fs::write(&root, fake.trusted_root()).unwrap();
    let bundle_path = dir.path().join("a.sigstore.json");
    std::fs::write(&bundle_path, bundle.to_json().unwrap()).unwrap();
    let artifact = dir.path().join("a.txt");
    std::fs::write(&artifact, b"hello").unwrap();
    let mut trust = KeylessTrust::load(
        TrustRootSource::File(root),
        vec![TrustedIdentity {
            identity: IDENTITY.into(),
            issuer: ISSUER.into(),
        }],
    )
    .unwrap();
    trust.check_sct = false;
    let (sb, _) = crate::sign::sigstore::read_bundle(&bundle_path).unwrap();
    let signer =
        crate::sign::sigstore::verify_bundle(&trust, &sb, &bundle_path, Artifact::File(&artifact))
            .unwrap()
            .unwrap();
    assert_eq!(signer.identity, IDENTITY);
    assert_eq!(signer.issuer, ISSUER);
    assert!(signer.tlog_verified);
    // another artifact does not verify
    std::fs::write(&artifact, b"hellp").unwrap();
    let r =
        crate::sign::sigstore::verify_bundle(&trust, &sb, &bundle_path, Artifact::File(&artifact))
            .unwrap()
            .unwrap_err();
    assert_eq!(r.rule, "verify/artifact-mismatch", "{}", r.message);
}

#[test]
fn service_errors_are_reported_with_the_step() {
    let fake = Fake::new();
    let base = serve(fake);
    let token = IdentityToken::parse(&jwt("s", None), TokenSource::Given).unwrap();
    let mut ep = endpoints(&base);
    ep.fulcio = format!("{base}/nowhere");
    let e = Session::start(&token, ep, Http::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("keyless signing (fulcio)") && e.contains("HTTP 404"),
        "{e}"
    );
    let mut ep = endpoints(&base);
    ep.rekor = None;
    let e = Session::start(&token, ep, Http::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("neither a Rekor log nor a timestamp authority"),
        "{e}"
    );
}

#[test]
fn timestamp_request_is_der_and_response_status_is_checked() {
    let key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
    let req = timestamp_request(b"sig", &key).unwrap();
    let (tag, body, rest) = tlv(&req).unwrap();
    assert_eq!((tag, rest.len()), (0x30, 0));
    let (tag, version, body) = tlv(body).unwrap();
    assert_eq!((tag, version), (0x02, &[1u8][..]));
    let (tag, imprint, _) = tlv(body).unwrap();
    assert_eq!(tag, 0x30);
    assert!(imprint.ends_with(&sha2::Sha256::digest(b"sig")));
    let granted = der(
        0x30,
        &[der(0x30, &der(0x02, &[0])), der(0x30, &[])].concat(),
    );
    check_timestamp_response(&granted).unwrap();
    let rejected = der(0x30, &der(0x30, &der(0x02, &[2])));
    assert!(check_timestamp_response(&rejected).is_err());
}
