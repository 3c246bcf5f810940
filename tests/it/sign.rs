//! `modelgate hash`, `keygen`, `sign` and `verify` end to end: round trips, the tamper
//! cases (one byte of any file, an added or removed file, an edited statement, a swapped
//! key, a replayed signature), bad input (exit 2), the audit attestation, and interop with
//! the reference PyPI `model-signing` tool in both directions.
//!
//! The interop tests run `model-signing` from the pinned environment of
//! `support::oracle_python`; without the package they fail, never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use modelgate::finding::{Finding, Severity};
use modelgate::report::GateReport;
use modelgate::sign::dsse::Bundle;
use modelgate::sign::PrivateKey;

use crate::support::{modelgate, smollm2};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(args: &[&str]) -> Output {
    modelgate(args)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A small model directory: weights, config, a nested tokenizer, an empty file and git
/// metadata that is not signed.
fn make_model(root: &Path, seed: u8) -> PathBuf {
    let m = root.join(format!("model{seed}"));
    fs::create_dir_all(m.join("tok")).unwrap();
    fs::create_dir_all(m.join(".git")).unwrap();
    let weights: Vec<u8> = (0..50_000u32).map(|i| (i as u8) ^ seed).collect();
    fs::write(m.join("model.safetensors"), weights).unwrap();
    fs::write(m.join("config.json"), format!("{{\"seed\":{seed}}}")).unwrap();
    fs::write(m.join("tok/tokenizer.json"), b"{\"vocab\":{}}").unwrap();
    fs::write(m.join("empty.txt"), b"").unwrap();
    fs::write(m.join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();
    m
}

fn keygen(dir: &Path, alg: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{alg}.key"));
    let o = run(&["keygen", "--alg", alg, "--out", s(&key)]);
    assert!(o.status.success(), "{}", text(&o));
    let public = dir.join(format!("{alg}.key.pub"));
    (key, public)
}

fn sign(model: &Path, key: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["sign", s(model), "--key", s(key), "--quiet"];
    args.extend_from_slice(extra);
    run(&args)
}

fn verify(model: &Path, public: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["verify", s(model), "--key", s(public)];
    args.extend_from_slice(extra);
    run(&args)
}

fn assert_fails_with(o: &Output, code: i32, needle: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(code), "expected exit {code}:\n{t}");
    assert!(t.contains(needle), "expected `{needle}` in:\n{t}");
}

/// Lines of base64 body in a PEM file, for checking that nothing printed them.
fn pem_body_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
}

fn assert_no_key_material(o: &Output, key: &Path) {
    let t = text(o);
    for line in pem_body_lines(key) {
        assert!(
            !t.contains(&line[..16]),
            "private key material printed:\n{t}"
        );
    }
}

#[test]
fn keygen_writes_0600_private_and_spki_public_and_prints_neither() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ["ed25519", "p256"] {
        let key = dir.path().join(alg);
        let o = run(&["keygen", "--alg", alg, "--out", s(&key)]);
        assert!(o.status.success(), "{}", text(&o));
        assert_no_key_material(&o, &key);
        let private = fs::read_to_string(&key).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let public = fs::read_to_string(dir.path().join(format!("{alg}.pub"))).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // an existing key is not replaced
        let o = run(&["keygen", "--alg", alg, "--out", s(&key)]);
        assert_fails_with(&o, 2, "already exists");
        assert_eq!(fs::read_to_string(&key).unwrap(), private);
    }
}

#[test]
fn sign_then_verify_passes_for_both_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 1);
    for alg in ["ed25519", "p256"] {
        let (key, public) = keygen(dir.path(), alg);
        let o = sign(&m, &key, &["--alg", alg]);
        assert!(o.status.success(), "{}", text(&o));
        assert_no_key_material(&o, &key);
        let o = verify(&m, &public, &[]);
        assert!(o.status.success(), "{}", text(&o));
        let t = text(&o);
        assert!(t.contains("signature verifies with"), "{t}");
        assert!(t.contains("verify `"), "{t}");
    }
    // the bundle has the reference shape
    let b: Value = serde_json::from_slice(&fs::read(m.join("model.sig")).unwrap()).unwrap();
    assert_eq!(
        b["mediaType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    assert_eq!(
        b["dsseEnvelope"]["payloadType"],
        "application/vnd.in-toto+json"
    );
    assert_eq!(
        b["verificationMaterial"]["tlogEntries"],
        serde_json::json!([])
    );
    let payload = STANDARD
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let st: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(st["predicateType"], "https://model_signing/signature/v1.0");
    let names: Vec<&str> = st["predicate"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "empty.txt",
            "model.safetensors",
            "tok/tokenizer.json"
        ]
    );
    // --alg is checked against the key
    let o = sign(&m, &dir.path().join("ed25519.key"), &["--alg", "p256"]);
    assert_fails_with(&o, 2, "expected p256");
}

#[test]
fn changing_one_byte_of_any_signed_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 2);
    let (key, public) = keygen(dir.path(), "ed25519");
    assert!(sign(&m, &key, &[]).status.success());
    for name in ["model.safetensors", "config.json", "tok/tokenizer.json"] {
        let p = m.join(name);
        let orig = fs::read(&p).unwrap();
        let mut bytes = orig.clone();
        let i = bytes.len() / 2;
        bytes[i] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let o = verify(&m, &public, &[]);
        assert_fails_with(&o, 1, &format!("file `{name}` changed: signed sha256:"));
        fs::write(&p, orig).unwrap();
    }
    // a byte appended to the empty file
    fs::write(m.join("empty.txt"), b"x").unwrap();
    assert_fails_with(&verify(&m, &public, &[]), 1, "file `empty.txt` changed");
    fs::write(m.join("empty.txt"), b"").unwrap();
    assert!(verify(&m, &public, &[]).status.success());
}

#[test]
fn adding_or_removing_a_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 3);
    let (key, public) = keygen(dir.path(), "ed25519");
    assert!(sign(&m, &key, &[]).status.success());

    fs::write(m.join("tok/extra.py"), b"import os").unwrap();
    let o = verify(&m, &public, &[]);
    assert_fails_with(&o, 1, "file `tok/extra.py` is not covered by the signature");
    // unless unsigned files are ignored
    let o = verify(&m, &public, &["--ignore-unsigned-files"]);
    assert!(o.status.success(), "{}", text(&o));
    fs::remove_file(m.join("tok/extra.py")).unwrap();

    fs::remove_file(m.join("config.json")).unwrap();
    let o = verify(&m, &public, &[]);
    assert_fails_with(&o, 1, "file `config.json` is signed but missing");
    let o = verify(&m, &public, &["--ignore-unsigned-files"]);
    assert_fails_with(&o, 1, "file `config.json` is signed but missing");

    // git metadata is not signed, so changing it is fine
    fs::write(m.join("config.json"), b"{\"seed\":3}").unwrap();
    fs::write(m.join(".git/HEAD"), b"changed").unwrap();
    assert!(verify(&m, &public, &[]).status.success());
}

fn edit_payload(sig: &Path, edit: impl FnOnce(&mut Value)) {
    let mut b: Value = serde_json::from_slice(&fs::read(sig).unwrap()).unwrap();
    let payload = STANDARD
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let mut st: Value = serde_json::from_slice(&payload).unwrap();
    edit(&mut st);
    b["dsseEnvelope"]["payload"] = Value::String(STANDARD.encode(serde_json::to_vec(&st).unwrap()));
    fs::write(sig, serde_json::to_vec(&b).unwrap()).unwrap();
}

#[test]
fn editing_the_statement_fails() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 4);
    let (key, public) = keygen(dir.path(), "p256");
    assert!(sign(&m, &key, &[]).status.success());
    let sig = m.join("model.sig");
    let good = fs::read(&sig).unwrap();
    // point a signed digest at tampered content
    edit_payload(&sig, |st| {
        st["predicate"]["resources"][0]["digest"] = Value::String("00".repeat(32));
    });
    let o = verify(&m, &public, &[]);
    assert_fails_with(&o, 1, "does not verify with key");
    assert_fails_with(&o, 1, "changed after signing");
    // widen the ignore list to hide a file
    fs::write(&sig, &good).unwrap();
    edit_payload(&sig, |st| {
        st["predicate"]["serialization"]["ignore_paths"] = serde_json::json!(["model.safetensors"]);
    });
    assert_fails_with(&verify(&m, &public, &[]), 1, "does not verify with key");
}

#[test]
fn swapping_the_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 5);
    let (key, _) = keygen(dir.path(), "ed25519");
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let (_, other_pub) = keygen(&other, "ed25519");
    assert!(sign(&m, &key, &[]).status.success());
    let o = verify(&m, &other_pub, &[]);
    assert_fails_with(&o, 1, "was signed by key");
    assert_fails_with(&o, 1, "not by the given key");

    // an attacker who also rewrites the key hint still fails on the signature
    let sig = m.join("model.sig");
    let mut b: Value = serde_json::from_slice(&fs::read(&sig).unwrap()).unwrap();
    let other_id = modelgate::sign::PublicKey::from_pem_file(&other_pub)
        .unwrap()
        .id()
        .to_hex();
    b["verificationMaterial"]["publicKey"]["hint"] = Value::String(other_id);
    fs::write(&sig, serde_json::to_vec(&b).unwrap()).unwrap();
    assert_fails_with(&verify(&m, &other_pub, &[]), 1, "does not verify with key");

    // re-signing with another key, verified with the original key, fails too
    assert!(sign(&m, &other.join("ed25519.key"), &[]).status.success());
    let o = verify(&m, &dir.path().join("ed25519.key.pub"), &[]);
    assert_fails_with(&o, 1, "was signed by key");
}

#[test]
fn replaying_the_signature_of_another_model_fails() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_model(dir.path(), 6);
    let b = make_model(dir.path(), 7);
    fs::write(b.join("extra.bin"), b"only in b").unwrap();
    fs::remove_file(b.join("empty.txt")).unwrap();
    let (key, public) = keygen(dir.path(), "ed25519");
    assert!(sign(&b, &key, &[]).status.success());
    fs::copy(b.join("model.sig"), a.join("model.sig")).unwrap();
    let o = verify(&a, &public, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("file `model.safetensors` changed"), "{t}");
    assert!(t.contains("file `config.json` changed"), "{t}");
    assert!(t.contains("file `extra.bin` is signed but missing"), "{t}");
    assert!(t.contains("file `empty.txt` is not covered"), "{t}");
    assert!(t.contains("the signature names model `model7`"), "{t}");
}

#[test]
fn shard_serialization_round_trip_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 8);
    let (key, public) = keygen(dir.path(), "ed25519");
    let o = sign(&m, &key, &["--shard-size", "16384"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(verify(&m, &public, &[]).status.success());
    let p = m.join("model.safetensors");
    let mut bytes = fs::read(&p).unwrap();
    bytes[20_000] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    assert_fails_with(
        &verify(&m, &public, &[]),
        1,
        "file `model.safetensors` changed in bytes 16384..32768",
    );
    bytes.truncate(40_000);
    fs::write(&p, &bytes).unwrap();
    assert_fails_with(
        &verify(&m, &public, &[]),
        1,
        "file `model.safetensors` changed size: signed 50000 bytes, found 40000 bytes",
    );
}

#[test]
fn hash_prints_manifest_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 9);
    let o = run(&["hash", s(&m), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].ends_with("  config.json"));
    assert!(lines[4].starts_with("sha256:"));
    let o = run(&[
        "hash",
        s(&m),
        "--json",
        "--shard-size",
        "20000",
        "--threads",
        "2",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["serialization"]["method"], "shards");
    assert_eq!(v["resources"][2]["name"], "model.safetensors:20000:40000");
    assert_eq!(v["resources"][2]["algorithm"], "sha256-sharded-20000");
    // single thread and many threads agree
    let o1 = run(&[
        "hash",
        s(&m),
        "--json",
        "--shard-size",
        "20000",
        "--threads",
        "1",
    ]);
    let v1: Value = serde_json::from_slice(&o1.stdout).unwrap();
    assert_eq!(v1["root_digest"], v["root_digest"]);
}

#[test]
fn bad_keys_bundles_and_payload_types_exit_2_without_leaking_keys() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 10);
    let (key, public) = keygen(dir.path(), "ed25519");

    let truncated = dir.path().join("truncated.key");
    let pem = fs::read_to_string(&key).unwrap();
    fs::write(&truncated, &pem[..pem.len() - 30]).unwrap();
    let o = sign(&m, &truncated, &[]);
    assert_fails_with(&o, 2, "truncated");
    assert_no_key_material(&o, &key);

    let not_pem = dir.path().join("not.pem");
    fs::write(&not_pem, b"\x30\x82\x01\x00garbage").unwrap();
    assert_fails_with(&sign(&m, &not_pem, &[]), 2, "is not a PEM file");
    fs::write(&not_pem, "just some text\n").unwrap();
    assert_fails_with(&sign(&m, &not_pem, &[]), 2, "no `-----BEGIN` line");
    assert_fails_with(&verify(&m, &not_pem, &[]), 2, "is not a PEM file");

    // a private key where the public key belongs, and the reverse
    let o = verify(&m, &key, &[]);
    assert_fails_with(&o, 2, "holds a private key where a public key is needed");
    assert_no_key_material(&o, &key);
    assert_fails_with(&sign(&m, &public, &[]), 2, "holds a public key");

    assert!(sign(&m, &key, &[]).status.success());
    let sig = m.join("model.sig");
    fs::write(&sig, b"this is not json").unwrap();
    assert_fails_with(&verify(&m, &public, &[]), 2, "is not JSON");
    fs::write(&sig, b"{\"hello\": 1}").unwrap();
    assert_fails_with(&verify(&m, &public, &[]), 2, "not a Sigstore bundle");

    // a valid signature over some other payload type
    let k = PrivateKey::from_pem_file(&key).unwrap();
    let b = Bundle::sign(&k, "application/vnd.example+json", b"{}");
    fs::write(&sig, b.to_json().unwrap()).unwrap();
    let o = verify(&m, &public, &[]);
    assert_fails_with(&o, 2, "payload type `application/vnd.example+json`");
    assert_fails_with(&o, 2, "expected `application/vnd.in-toto+json`");
    assert_fails_with(
        &verify(&m, &public, &["--signature", s(&dir.path().join("nope"))]),
        2,
        "cannot read",
    );
}

#[test]
fn trusted_keys_folder_picks_the_signer_by_hint() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 11);
    let trusted = dir.path().join("trusted");
    fs::create_dir(&trusted).unwrap();
    keygen(&trusted, "ed25519");
    let (b_key, _) = keygen(&trusted, "p256");
    // private keys do not belong in a trusted folder; keep only `.pub` there
    fs::rename(trusted.join("ed25519.key"), dir.path().join("a.key")).unwrap();
    fs::rename(&b_key, dir.path().join("b.key")).unwrap();
    assert!(sign(&m, &dir.path().join("b.key"), &[]).status.success());
    let o = run(&["verify", s(&m), "--trusted-keys", s(&trusted)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("p256.key.pub"), "{}", text(&o));
    fs::remove_file(trusted.join("p256.key.pub")).unwrap();
    let o = run(&["verify", s(&m), "--trusted-keys", s(&trusted)]);
    assert_fails_with(&o, 1, "not by the given key");
}

fn write_report(path: &Path, pass: bool) {
    let scan = GateReport::new(
        "scan",
        Path::new("m"),
        vec![Finding::new("scan/note", Severity::Note, "fine")],
    );
    let sev = if pass {
        Severity::Warning
    } else {
        Severity::Error
    };
    let mut policy = GateReport::new(
        "policy",
        Path::new("m"),
        vec![Finding::new("policy/licence", sev, "licence check")],
    );
    policy.details = Some(serde_json::json!({ "policy": "policy.yaml" }));
    fs::write(path.with_file_name("policy.yaml"), "allow: [apache-2.0]\n").unwrap();
    fs::write(path, serde_json::to_vec(&vec![scan, policy]).unwrap()).unwrap();
}

#[test]
fn audit_attestation_is_signed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 12);
    let (key, public) = keygen(dir.path(), "ed25519");
    let report = dir.path().join("report.json");
    write_report(&report, true);
    let o = sign(&m, &key, &["--attest", s(&report)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("audit PASSED"), "{}", text(&o));
    let att = m.join("model.att.sig");
    let o = verify(&m, &public, &["--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["details"]["attestation"]["summary"]["verification_result"],
        "PASSED"
    );

    // the attestation statement: SLSA VSA over the model's root digest
    let b: Value = serde_json::from_slice(&fs::read(&att).unwrap()).unwrap();
    let st: Value = serde_json::from_slice(
        &STANDARD
            .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        st["predicateType"],
        "https://slsa.dev/verification_summary/v1"
    );
    assert_eq!(
        st["subject"][0]["digest"]["sha256"],
        v["details"]["root_digest"]
    );
    assert_eq!(st["predicate"]["policy"]["uri"], "policy.yaml");
    assert_eq!(
        st["predicate"]["policy"]["digest"]["sha256"],
        modelgate::types::Sha256Digest::of(b"allow: [apache-2.0]\n").to_hex()
    );
    assert_eq!(st["predicate"]["modelgate"]["gates"][1]["gate"], "policy");

    // a failed audit is attested as FAILED and verify warns
    write_report(&report, false);
    assert!(sign(&m, &key, &["--attest", s(&report)]).status.success());
    let o = verify(&m, &public, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warning[verify/attestation]: audit attestation: FAILED"));

    // an edited attestation fails
    let good = fs::read(&att).unwrap();
    edit_payload(&att, |st| {
        st["predicate"]["verificationResult"] = Value::String("PASSED".into());
    });
    assert_fails_with(
        &verify(&m, &public, &[]),
        1,
        "attestation was changed after signing",
    );
    fs::write(&att, &good).unwrap();

    // an attestation of another model fails
    let other = make_model(dir.path(), 13);
    assert!(sign(&other, &key, &["--attest", s(&report)])
        .status
        .success());
    fs::copy(other.join("model.att.sig"), &att).unwrap();
    assert_fails_with(&verify(&m, &public, &[]), 1, "belongs to another model");
}

#[test]
fn signs_and_verifies_the_real_smollm2_file() {
    let gguf = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "ed25519");
    let sig = dir.path().join("smol.sig");
    let o = sign(
        &gguf,
        &key,
        &["--signature", s(&sig), "--shard-size", "16000000"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = verify(
        &gguf,
        &public,
        &["--signature", s(&sig), "--format", "json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["details"]["resources"], 7); // 98,362,432 bytes in 16 MB shards
    assert_eq!(
        v["details"]["model_name"],
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    );
}

// ---- interop with the reference PyPI `model-signing` -------------------------------

/// Fails the test, naming the package, when `model_signing` does not import.
fn have_model_signing() {
    crate::support::require_oracle("model_signing", "model-signing");
}

/// `python3 -m model_signing ARGS`.
fn model_signing(args: &[&str]) -> Output {
    crate::support::oracle_python()
        .args(["-m", "model_signing"])
        .args(args)
        .output()
        .expect("run python3 -m model_signing")
}

fn python(script: &str, args: &[&str]) -> Output {
    crate::support::oracle_python()
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3")
}

#[test]
fn interop_modelgate_p256_bundle_verifies_with_model_signing() {
    have_model_signing();
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 20);
    let (key, public) = keygen(dir.path(), "p256");
    let o = sign(&m, &key, &["--alg", "p256"]);
    assert!(o.status.success(), "{}", text(&o));
    let sig = m.join("model.sig");
    let o = model_signing(&[
        "verify",
        "key",
        s(&m),
        "--signature",
        s(&sig),
        "--public_key",
        s(&public),
    ]);
    assert!(
        o.status.success(),
        "model_signing verify key failed:\n{}",
        text(&o)
    );
    // and it sees tampering in our bundle's model the same way
    fs::write(m.join("config.json"), b"{}").unwrap();
    let o = model_signing(&[
        "verify",
        "key",
        s(&m),
        "--signature",
        s(&sig),
        "--public_key",
        s(&public),
    ]);
    assert!(
        !o.status.success(),
        "model_signing accepted a tampered model"
    );
}

#[test]
fn interop_model_signing_bundle_verifies_with_modelgate() {
    have_model_signing();
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 21);
    let (key, public) = keygen(dir.path(), "p256");
    let sig = m.join("model.sig");
    let o = model_signing(&[
        "sign",
        "key",
        s(&m),
        "--signature",
        s(&sig),
        "--private_key",
        s(&key),
    ]);
    assert!(
        o.status.success(),
        "model_signing sign key failed:\n{}",
        text(&o)
    );
    let o = verify(&m, &public, &[]);
    assert!(o.status.success(), "{}", text(&o));
    fs::write(m.join("tok/tokenizer.json"), b"{}").unwrap();
    assert_fails_with(
        &verify(&m, &public, &[]),
        1,
        "file `tok/tokenizer.json` changed",
    );
}

/// Sign with one tool's shard serialization through the Python API and verify with the
/// other, which also checks that both hash shards and order them the same way.
#[test]
fn interop_shard_bundles_both_ways() {
    have_model_signing();
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 22);
    fs::write(m.join("a.b"), vec![7u8; 40_000]).unwrap(); // `a.b` < `a/..` ordering case
    fs::create_dir(m.join("a")).unwrap();
    fs::write(m.join("a/c"), b"c").unwrap();
    let (key, public) = keygen(dir.path(), "p256");
    let py_sig = dir.path().join("py.sig");
    let script = r#"
import sys, model_signing
model, key, sig = sys.argv[1:4]
h = model_signing.hashing.Config().use_shard_serialization(shard_size=16384)
model_signing.signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(h).sign(model, sig)
"#;
    let o = python(script, &[s(&m), s(&key), s(&py_sig)]);
    assert!(o.status.success(), "python sign failed:\n{}", text(&o));
    let o = verify(&m, &public, &["--signature", s(&py_sig)]);
    assert!(o.status.success(), "{}", text(&o));

    let our_sig = dir.path().join("ours.sig");
    let o = sign(
        &m,
        &key,
        &["--signature", s(&our_sig), "--shard-size", "16384"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let script = r#"
import sys, model_signing
model, pub, sig = sys.argv[1:4]
model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, sig)
"#;
    let o = python(script, &[s(&m), s(&public), s(&our_sig)]);
    assert!(o.status.success(), "python verify failed:\n{}", text(&o));

    // the two statements list the same resources with the same digests
    let resources = |p: &Path| -> Value {
        let b: Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
        let st: Value = serde_json::from_slice(
            &STANDARD
                .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        st["predicate"]["resources"].clone()
    };
    let (ours, theirs) = (resources(&our_sig), resources(&py_sig));
    let norm = |v: &Value| -> Vec<(String, String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    r["algorithm"].as_str().unwrap().to_owned(),
                    r["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(norm(&ours), norm(&theirs));
}

/// What a person sees when a signed model was tampered with (temp paths and the random
/// key id replaced).
#[test]
fn verify_report_text_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 30);
    let (key, public) = keygen(dir.path(), "ed25519");
    assert!(sign(&m, &key, &[]).status.success());
    fs::write(m.join("config.json"), b"{\"seed\":31}").unwrap();
    fs::remove_file(m.join("tok/tokenizer.json")).unwrap();
    fs::write(m.join("run.py"), b"import os").unwrap();
    let o = verify(&m, &public, &[]);
    assert_eq!(o.status.code(), Some(1));
    let id = modelgate::sign::PublicKey::from_pem_file(&public)
        .unwrap()
        .id()
        .to_hex();
    let out = String::from_utf8(o.stdout)
        .unwrap()
        .replace(s(dir.path()), "[TMP]")
        .replace(&id, "[KEY ID]");
    insta::assert_snapshot!("verify_tampered", out);
}
