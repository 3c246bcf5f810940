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
    for alg in ["ed25519", "p256", "p384"] {
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
    for alg in ["ed25519", "p256", "p384"] {
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
    // the second subject is the signature file, so `gh attestation verify model.sig
    // --bundle model.att.sig` finds it
    let sig_digest = modelgate::types::Sha256Digest::of(&fs::read(m.join("model.sig")).unwrap());
    assert_eq!(st["subject"][1]["name"], "model.sig");
    assert_eq!(
        st["subject"][1]["digest"]["sha256"],
        sig_digest.to_hex().as_str()
    );
    assert_eq!(st["subject"].as_array().unwrap().len(), 2);
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

/// Run the `model_signing` CLI and fail the test, naming `what`, unless it succeeds.
fn model_signing_ok(args: &[&str], what: &str) {
    let o = model_signing(args);
    assert!(o.status.success(), "{what} failed:\n{}", text(&o));
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
    model_signing_ok(
        &[
            "verify",
            "key",
            s(&m),
            "--signature",
            s(&sig),
            "--public_key",
            s(&public),
        ],
        "model_signing verify key failed",
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
    model_signing_ok(
        &[
            "sign",
            "key",
            s(&m),
            "--signature",
            s(&sig),
            "--private_key",
            s(&key),
        ],
        "model_signing sign key failed",
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

// ---- P-384, certificates and Sigstore: the reference projects' own vectors ---------

/// `fixtures/sigstore/...`: byte-for-byte copies of the model-transparency and
/// sigstore-conformance test data (see `fixtures/sigstore/README.md`).
fn vectors(rel: &str) -> PathBuf {
    crate::support::fixture(&format!("sigstore/{rel}"))
}

fn mt(rel: &str) -> PathBuf {
    vectors(&format!("model-transparency/{rel}"))
}

const MT_IDENTITY: &str = "stefanb@us.ibm.com";
const MT_ISSUER: &str = "https://sigstore.verify.ibm.com/oauth2";

/// Copy a vector folder somewhere it may be changed.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn verify_keyless(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "verify",
        s(model),
        "--sigstore",
        "--ignore-paths",
        "ignore-me",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn model_transparency_sigstore_vector_verifies_with_both_roots() {
    let m = mt("v1.1.0-sigstore");
    let root = vectors("production-trust-root/trusted_root.json");
    for extra in [vec![], vec!["--trusted-root", s(&root)]] {
        let mut args = vec!["--identity", MT_IDENTITY, "--issuer", MT_ISSUER];
        args.extend(extra);
        let o = verify_keyless(&m, &args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{t}");
        assert!(
            t.contains("a Sigstore certificate for `stefanb@us.ibm.com`"),
            "{t}"
        );
        assert!(t.contains("2025-10-10T02:12:20Z"), "{t}");
    }
    let o = verify_keyless(
        &m,
        &[
            "--identity",
            MT_IDENTITY,
            "--issuer",
            MT_ISSUER,
            "--format",
            "json",
        ],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = &v["details"];
    assert_eq!(d["identity"], MT_IDENTITY);
    assert_eq!(d["issuer"], MT_ISSUER);
    assert_eq!(
        d["root_digest"],
        "61d4849d9d90076d6215f4d525f13d6574af8e3f67aef3e6f36fc40a14fdd226"
    );
    // `ignore-me` is not signed, but the statement records it among the ignored paths,
    // so it is left out without `--ignore-paths` too
    let o = run(&[
        "verify",
        s(&m),
        "--sigstore",
        "--identity",
        MT_IDENTITY,
        "--issuer",
        MT_ISSUER,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).replace(s(&m), "[VECTOR]");
    insta::assert_snapshot!("verify_keyless_model_transparency", out);
}

#[test]
fn model_transparency_sigstore_vector_wrong_signer_or_changed_file_fails() {
    let m = mt("v1.1.0-sigstore");
    let o = verify_keyless(
        &m,
        &["--identity", "mallory@example.com", "--issuer", MT_ISSUER],
    );
    assert_fails_with(&o, 1, "the identity is not trusted");
    assert_fails_with(&o, 1, "`stefanb@us.ibm.com`");
    let o = verify_keyless(
        &m,
        &[
            "--identity",
            MT_IDENTITY,
            "--issuer",
            "https://accounts.google.com",
        ],
    );
    assert_fails_with(&o, 1, "the issuer is not trusted");
    // staging trusts neither this log nor this CA
    let o = verify_keyless(
        &m,
        &[
            "--identity",
            MT_IDENTITY,
            "--issuer",
            MT_ISSUER,
            "--staging",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("v1.1.0-sigstore");
    copy_dir(&m, &copy);
    fs::write(copy.join("extra.bin"), b"added").unwrap();
    let o = verify_keyless(&copy, &["--identity", MT_IDENTITY, "--issuer", MT_ISSUER]);
    assert_fails_with(&o, 1, "file `extra.bin` is not covered by the signature");
    fs::remove_file(copy.join("extra.bin")).unwrap();
    fs::write(copy.join("signme-2"), b"signme-X").unwrap();
    let o = verify_keyless(&copy, &["--identity", MT_IDENTITY, "--issuer", MT_ISSUER]);
    assert_fails_with(&o, 1, "file `signme-2` changed");
    fs::remove_file(copy.join("signme-1")).unwrap();
    let o = verify_keyless(&copy, &["--identity", MT_IDENTITY, "--issuer", MT_ISSUER]);
    assert_fails_with(&o, 1, "file `signme-1` is signed but missing");

    // a flipped byte in the DSSE signature
    let sig = copy.join("model.sig");
    let mut b: Value = serde_json::from_slice(&fs::read(&sig).unwrap()).unwrap();
    let mut raw = STANDARD
        .decode(b["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    raw[10] ^= 1;
    b["dsseEnvelope"]["signatures"][0]["sig"] = Value::String(STANDARD.encode(raw));
    fs::write(&sig, serde_json::to_vec(&b).unwrap()).unwrap();
    let o = verify_keyless(&copy, &["--identity", MT_IDENTITY, "--issuer", MT_ISSUER]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn model_transparency_certificate_vector_verifies_and_wrong_ca_fails() {
    let m = mt("v1.1.0-certificate");
    let ca = mt("keys/certificate/ca-cert.pem");
    let o = run(&[
        "verify",
        s(&m),
        "--certificate-chain",
        s(&ca),
        "--ignore-paths",
        "ignore-me",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("p384 certificate `CN=intermediate-ca`"), "{t}");
    assert!(t.contains("`CN=root-ca`"), "{t}");

    // a CA that did not issue it: the production Fulcio root, as PEM
    let dir = tempfile::tempdir().unwrap();
    let root: Value = serde_json::from_slice(
        &fs::read(vectors("production-trust-root/trusted_root.json")).unwrap(),
    )
    .unwrap();
    let der = root["certificateAuthorities"][1]["certChain"]["certificates"][0]["rawBytes"]
        .as_str()
        .unwrap();
    let other = dir.path().join("other-ca.pem");
    fs::write(
        &other,
        format!("-----BEGIN CERTIFICATE-----\n{der}\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    let o = run(&[
        "verify",
        s(&m),
        "--certificate-chain",
        s(&other),
        "--ignore-paths",
        "ignore-me",
    ]);
    assert_fails_with(&o, 1, "does not lead to a trusted certificate");

    // a changed file is named
    let copy = dir.path().join("v1.1.0-certificate");
    copy_dir(&m, &copy);
    fs::write(copy.join("signme-1"), b"changed").unwrap();
    let o = run(&[
        "verify",
        s(&copy),
        "--certificate-chain",
        s(&ca),
        "--ignore-paths",
        "ignore-me",
    ]);
    assert_fails_with(&o, 1, "file `signme-1` changed");

    // it has neither a log entry nor a timestamp: not a keyless signature
    let o = run(&[
        "verify",
        s(&m),
        "--sigstore",
        "--identity",
        "x",
        "--issuer",
        "y",
    ]);
    assert_fails_with(
        &o,
        2,
        "neither a transparency log entry nor an RFC 3161 timestamp",
    );
    // and it is not a bare-key signature either
    let o = run(&[
        "verify",
        s(&m),
        "--key",
        s(&mt("keys/certificate/signing-key-pub.pem")),
    ]);
    assert_fails_with(&o, 2, "is signed with a certificate, not a bare key");
}

#[test]
fn model_transparency_p384_key_vector_verifies_and_other_key_fails() {
    let m = mt("v1.1.0-elliptic-key");
    let public = mt("keys/certificate/signing-key-pub.pem");
    let o = verify(&m, &public, &["--ignore-paths", "ignore-me"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("p384 key `e8450dec4eb99dae995da9af1bc2cc9f76ed669ee2e744f57abba763df3e3f8e`"),
        "{t}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_, other) = keygen(dir.path(), "p384");
    let o = verify(&m, &other, &["--ignore-paths", "ignore-me"]);
    assert_fails_with(&o, 1, "was signed by key `e8450dec");
}

/// The RSA intermediate put where the leaf belongs: the reference tool accepts only EC
/// signing certificates.
#[test]
fn certificate_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("m");
    copy_dir(&mt("v1.1.0-certificate"), &copy);
    let sig = copy.join("model.sig");
    let mut b: Value = serde_json::from_slice(&fs::read(&sig).unwrap()).unwrap();
    let int = b["verificationMaterial"]["x509CertificateChain"]["certificates"][1].clone();
    b["verificationMaterial"]["x509CertificateChain"]["certificates"] = serde_json::json!([int]);
    fs::write(&sig, serde_json::to_vec(&b).unwrap()).unwrap();
    let ca = mt("keys/certificate/ca-cert.pem");
    let o = run(&[
        "verify",
        s(&copy),
        "--certificate-chain",
        s(&ca),
        "--ignore-paths",
        "ignore-me",
    ]);
    assert_fails_with(&o, 2, "has an RSA");
    assert_fails_with(&o, 2, "ECDSA P-256 or P-384");

    // a trust root that is not JSON
    let bad = dir.path().join("root.json");
    fs::write(&bad, "trust me").unwrap();
    let o = verify_keyless(
        &mt("v1.1.0-sigstore"),
        &[
            "--identity",
            MT_IDENTITY,
            "--issuer",
            MT_ISSUER,
            "--trusted-root",
            s(&bad),
        ],
    );
    assert_fails_with(&o, 2, "is not JSON");
    assert_fails_with(&o, 2, "hint: pass a `trusted_root.json`");

    // the certificate file must be a certificate; the key must match it
    let key = mt("keys/certificate/signing-key.pem");
    let o = run(&[
        "sign",
        s(&copy),
        "--key",
        s(&key),
        "--certificate",
        s(&key),
        "--quiet",
    ]);
    assert_fails_with(&o, 2, "holds no `-----BEGIN CERTIFICATE-----` block");
    assert_no_key_material(&o, &key);
    let (other, _) = keygen(dir.path(), "p384");
    let o = run(&[
        "sign",
        s(&copy),
        "--key",
        s(&other),
        "--certificate",
        s(&mt("keys/certificate/signing-key-cert.pem")),
        "--quiet",
    ]);
    assert_fails_with(&o, 2, "certifies another key");
    assert_no_key_material(&o, &other);
}

fn sign_with_certificate(m: &Path) -> Output {
    run(&[
        "sign",
        s(m),
        "--key",
        s(&mt("keys/certificate/signing-key.pem")),
        "--certificate",
        s(&mt("keys/certificate/signing-key-cert.pem")),
        "--certificate-chain",
        s(&mt("keys/certificate/int-ca-cert.pem")),
        "--certificate-chain",
        s(&mt("keys/certificate/ca-cert.pem")),
        "--quiet",
    ])
}

#[test]
fn certificate_sign_then_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), 30);
    let o = sign_with_certificate(&m);
    assert!(o.status.success(), "{}", text(&o));
    assert_no_key_material(&o, &mt("keys/certificate/signing-key.pem"));
    let b: Value = serde_json::from_slice(&fs::read(m.join("model.sig")).unwrap()).unwrap();
    let vm = &b["verificationMaterial"];
    assert!(vm.get("publicKey").is_none());
    // leaf and intermediate; the self-signed root stays out
    let certs = vm["x509CertificateChain"]["certificates"]
        .as_array()
        .unwrap();
    assert_eq!(certs.len(), 2);
    let ca = mt("keys/certificate/ca-cert.pem");
    let o = run(&["verify", s(&m), "--certificate-chain", s(&ca)]);
    assert!(o.status.success(), "{}", text(&o));
    fs::write(m.join("config.json"), b"{}").unwrap();
    let o = run(&["verify", s(&m), "--certificate-chain", s(&ca)]);
    assert_fails_with(&o, 1, "file `config.json` changed");
}

#[test]
fn interop_p384_and_certificate_bundles_both_ways() {
    have_model_signing();
    let dir = tempfile::tempdir().unwrap();
    // P-384 key: ours verified there
    let m = make_model(dir.path(), 31);
    let (key, public) = keygen(dir.path(), "p384");
    let o = sign(&m, &key, &["--alg", "p384"]);
    assert!(o.status.success(), "{}", text(&o));
    let sig = m.join("model.sig");
    model_signing_ok(
        &[
            "verify",
            "key",
            s(&m),
            "--signature",
            s(&sig),
            "--public_key",
            s(&public),
        ],
        "model_signing verify key (p384) failed",
    );
    // theirs verified here
    let m2 = make_model(dir.path(), 32);
    let sig2 = m2.join("model.sig");
    model_signing_ok(
        &[
            "sign",
            "key",
            s(&m2),
            "--signature",
            s(&sig2),
            "--private_key",
            s(&key),
        ],
        "model_signing sign key (p384) failed",
    );
    let o = verify(&m2, &public, &[]);
    assert!(o.status.success(), "{}", text(&o));

    // certificates: ours verified there
    let m3 = make_model(dir.path(), 33);
    let o = sign_with_certificate(&m3);
    assert!(o.status.success(), "{}", text(&o));
    let ca = mt("keys/certificate/ca-cert.pem");
    model_signing_ok(
        &[
            "verify",
            "certificate",
            s(&m3),
            "--signature",
            s(&m3.join("model.sig")),
            "--certificate_chain",
            s(&ca),
        ],
        "model_signing verify certificate failed",
    );
    // theirs verified here
    let m4 = make_model(dir.path(), 34);
    let sig4 = m4.join("model.sig");
    model_signing_ok(
        &[
            "sign",
            "certificate",
            s(&m4),
            "--signature",
            s(&sig4),
            "--private_key",
            s(&mt("keys/certificate/signing-key.pem")),
            "--signing_certificate",
            s(&mt("keys/certificate/signing-key-cert.pem")),
            "--certificate_chain",
            s(&mt("keys/certificate/int-ca-cert.pem")),
        ],
        "model_signing sign certificate failed",
    );
    let o = run(&["verify", s(&m4), "--certificate-chain", s(&ca)]);
    assert!(o.status.success(), "{}", text(&o));
    fs::write(m4.join("empty.txt"), b"x").unwrap();
    let o = run(&["verify", s(&m4), "--certificate-chain", s(&ca)]);
    assert_fails_with(&o, 1, "file `empty.txt` changed");
}

// ---- Sigstore conformance bundles: one artifact, same verifier ----------------------

const CONFORMANCE_IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const CONFORMANCE_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Verify a conformance case as its README says: its own artifact and trust root when
/// it has them, else `a.txt` and the production root.
fn conformance(case: &str, identity: &str, issuer: &str) -> Output {
    let dir = vectors(&format!("sigstore-conformance/{case}"));
    let artifact = if dir.join("artifact").exists() {
        dir.join("artifact")
    } else {
        vectors("sigstore-conformance/a.txt")
    };
    let root = if dir.join("trusted_root.json").exists() {
        dir.join("trusted_root.json")
    } else {
        vectors("production-trust-root/trusted_root.json")
    };
    let bundle = dir.join("bundle.sigstore.json");
    run(&[
        "verify",
        s(&artifact),
        "--sigstore",
        "--signature",
        s(&bundle),
        "--identity",
        identity,
        "--issuer",
        issuer,
        "--trusted-root",
        s(&root),
    ])
}

#[test]
fn conformance_happy_paths_verify_and_wrong_signer_fails() {
    for case in [
        "happy-path-intoto-in-dsse-v3",
        "intoto-with-custom-trust-root",
    ] {
        let o = conformance(case, CONFORMANCE_IDENTITY, CONFORMANCE_ISSUER);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{case}:\n{t}");
        assert!(
            t.contains(&format!("signed by `{CONFORMANCE_IDENTITY}`")),
            "{case}:\n{t}"
        );
        let o = conformance(
            case,
            "https://github.com/someone/else/.github/workflows/x.yml@refs/heads/main",
            CONFORMANCE_ISSUER,
        );
        assert_fails_with(&o, 1, "the identity is not trusted");
        let o = conformance(case, CONFORMANCE_IDENTITY, "https://gitlab.com");
        assert_fails_with(&o, 1, "the issuer is not trusted");
    }
}

/// The conformance suite has no passing message-signature case, but two failure cases
/// carry genuine message signatures over `a.txt`: `wrong-material_fail` (production, it
/// fails only against its own `b.txt`) and `bundle-from-wrong-instance_fail` (staging, it
/// fails only under the production root). Against the right file and root they verify.
#[test]
fn conformance_message_signatures_verify_for_their_file_and_instance() {
    let a = vectors("sigstore-conformance/a.txt");
    let bundle = |case: &str| vectors(&format!("sigstore-conformance/{case}/bundle.sigstore.json"));
    let base = |b: &PathBuf| {
        vec![
            "verify".to_owned(),
            s(&a).to_owned(),
            "--sigstore".to_owned(),
            "--signature".to_owned(),
            s(b).to_owned(),
            "--identity".to_owned(),
            CONFORMANCE_IDENTITY.to_owned(),
            "--issuer".to_owned(),
            CONFORMANCE_ISSUER.to_owned(),
        ]
    };
    let go = |args: Vec<String>| run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let b = bundle("wrong-material_fail");
    let o = go(base(&b));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("signed at 2023-07-12T15:56:36Z"), "{t}");
    let mut other = base(&b);
    other[1] = s(&vectors(
        "sigstore-conformance/wrong-material_fail/artifact",
    ))
    .to_owned();
    assert_fails_with(&go(other), 1, "verify/artifact-mismatch");

    let b = bundle("bundle-from-wrong-instance_fail");
    let mut staging = base(&b);
    staging.push("--staging".into());
    let o = go(staging);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("staging trust root"), "{t}");
}

#[test]
fn conformance_failure_cases_fail_with_their_reason() {
    // case, the rule that rejects it and a phrase of the reason: the check the case was
    // built for, or an earlier one that catches it first, as the vectors' README allows
    let cases = [
        (
            "intoto-expired-certificate_fail",
            "verify/certificate-validity",
            "CertNotValidYet",
        ),
        (
            "intoto-set-outside-signing-cert-validity_fail",
            "verify/certificate-validity",
            "CertExpired",
        ),
        (
            "intoto-tsa-timestamp-outside-cert-validity_fail",
            "verify/certificate-validity",
            "CertExpired",
        ),
        // the entry's signature is not double-base64 as intoto 0.0.2 wants: refused while
        // decoding, before the comparison
        (
            "intoto-log-entry-mismatch_fail",
            "verify/tlog-entry",
            "failed to decode Rekor signature",
        ),
        (
            "intoto-missing-inclusion-proof_fail",
            "verify/inclusion-proof",
            "must have an inclusion proof",
        ),
        (
            "dsse-invalid-sig_fail",
            "verify/signature-invalid",
            "DSSE signature verification failed",
        ),
        (
            "dsse-mismatch-envelope_fail",
            "verify/tlog-entry-mismatch",
            "DSSE payload hash mismatch",
        ),
        (
            "inclusion-proof-corrupted-hash_fail",
            "verify/inclusion-proof",
            "root hash mismatch",
        ),
        (
            "invalid-checkpoint-signature_fail",
            "verify/checkpoint",
            "No valid Rekor signature found on checkpoint",
        ),
        (
            "set-invalid-signature_fail",
            "verify/signed-entry-timestamp",
            "SET verification failed",
        ),
        (
            "wrong-material_fail",
            "verify/artifact-mismatch",
            "does not match artifact hash",
        ),
        (
            "bundle-from-wrong-instance_fail",
            "verify/signed-entry-timestamp",
            "No log key valid at integrated time",
        ),
    ];
    let dir = vectors("sigstore-conformance");
    let mut seen = Vec::new();
    for (case, rule, reason) in cases {
        let o = conformance(case, CONFORMANCE_IDENTITY, CONFORMANCE_ISSUER);
        let t = text(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{case} must fail with exit 1:\n{t}"
        );
        assert!(
            t.contains(&format!("error[{rule}]")),
            "{case}: expected `{rule}` in:\n{t}"
        );
        assert!(t.contains(reason), "{case}: expected `{reason}` in:\n{t}");
        let line = t.lines().find(|l| l.starts_with("error[")).unwrap_or("");
        seen.push(format!(
            "{case}: {}",
            line.replace(s(&dir), "[CONFORMANCE]")
        ));
    }
    // every case in the folder is listed above
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_fail"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = cases.iter().map(|c| c.0.to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    let root = vectors("production-trust-root");
    let report = seen.join("\n").replace(s(&root), "[PRODUCTION]");
    insta::assert_snapshot!("conformance_failure_reasons", report);
}

// ---- Certificate chains that cannot be checked: exit 2 ------------------------------

/// `fixtures/sign-pki/`: chains made by its `gen.sh` whose leaves all certify the
/// model-transparency test key, so they can replace the certificate vector's chain.
fn pki(name: &str) -> PathBuf {
    crate::support::fixture(&format!("sign-pki/{name}"))
}

/// The DER of every certificate in a PEM file, in file order.
fn pem_ders(path: &Path) -> Vec<Vec<u8>> {
    let text = fs::read_to_string(path).unwrap();
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|block| {
            let body: String = block
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            STANDARD.decode(body).unwrap()
        })
        .collect()
}

/// A copy of the certificate vector whose bundle carries `certs` (PEM files, leaf first)
/// as its chain. The DSSE signature is untouched and still verifies with the leaf key:
/// only the chain is what the test is about.
fn certificate_vector_with_chain(dir: &Path, certs: &[PathBuf]) -> PathBuf {
    let copy = dir.join("v1.1.0-certificate");
    copy_dir(&mt("v1.1.0-certificate"), &copy);
    let sig = copy.join("model.sig");
    let mut b: Value = serde_json::from_slice(&fs::read(&sig).unwrap()).unwrap();
    let raws: Vec<Value> = certs
        .iter()
        .flat_map(|p| pem_ders(p))
        .map(|der| serde_json::json!({ "rawBytes": STANDARD.encode(der) }))
        .collect();
    b["verificationMaterial"]["x509CertificateChain"]["certificates"] = Value::Array(raws);
    fs::write(&sig, serde_json::to_vec(&b).unwrap()).unwrap();
    copy
}

fn verify_chain_of(model: &Path, anchors: &Path) -> Output {
    run(&[
        "verify",
        s(model),
        "--certificate-chain",
        s(anchors),
        "--ignore-paths",
        "ignore-me",
    ])
}

#[test]
fn certificate_chain_out_of_validity_without_trusted_time_exits_2() {
    let ca = mt("keys/certificate/ca-cert.pem");
    let dir = tempfile::tempdir().unwrap();
    let m = certificate_vector_with_chain(dir.path(), &[pki("expired-leaf.pem")]);
    let o = verify_chain_of(&m, &ca);
    assert_fails_with(&o, 2, "certificate `CN=expired-leaf` has expired");
    assert_fails_with(&o, 2, "carries no trusted timestamp");
    let err = String::from_utf8_lossy(&o.stderr).replace(s(dir.path()), "[TMP]");
    insta::assert_snapshot!("verify_certificate_expired_stderr", err);

    let dir = tempfile::tempdir().unwrap();
    let m = certificate_vector_with_chain(dir.path(), &[pki("future-leaf.pem")]);
    let o = verify_chain_of(&m, &ca);
    assert_fails_with(&o, 2, "certificate `CN=future-leaf` is not valid yet");
    assert_no_key_material(&o, &mt("keys/certificate/signing-key.pem"));
}

#[test]
fn certificate_chain_that_loops_or_is_too_deep_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let m = certificate_vector_with_chain(
        dir.path(),
        &[pki("loop-leaf.pem"), pki("loop-a.pem"), pki("loop-b.pem")],
    );
    let o = verify_chain_of(&m, &mt("keys/certificate/ca-cert.pem"));
    assert_fails_with(&o, 2, "the certificate chain loops");
    assert_no_key_material(&o, &mt("keys/certificate/signing-key.pem"));

    // leaf + 7 intermediates + the root: 9 certificates on the path, the limit is 8
    let dir = tempfile::tempdir().unwrap();
    let m = certificate_vector_with_chain(
        dir.path(),
        &[pki("deep-leaf.pem"), pki("deep-intermediates.pem")],
    );
    let o = verify_chain_of(&m, &pki("deep-root.pem"));
    assert_fails_with(&o, 2, "longer than 8 certificates");
    // the same chain is sound: trusting an intermediate shortens the path, and it verifies
    let o = verify_chain_of(&m, &pki("deep-intermediates.pem"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // more certificates in the bundle than a path may hold is refused before any work
    let dir = tempfile::tempdir().unwrap();
    let m = certificate_vector_with_chain(
        dir.path(),
        &[
            pki("deep-leaf.pem"),
            pki("deep-intermediates.pem"),
            pki("deep-root.pem"),
        ],
    );
    let o = verify_chain_of(&m, &pki("deep-root.pem"));
    assert_fails_with(&o, 2, "more than the limit of 8");
}
