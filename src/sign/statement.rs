//! The in-toto Statement v1 with the OpenSSF model signing predicate
//! (`https://model_signing/signature/v1.0`): building it from a [`Manifest`] and reading it
//! back from a verified payload.
//!
//! Field names and values follow the reference `model_signing` 1.x so that either tool
//! reads the other's statements: one subject (model name, root digest), the resources with
//! `name`, `algorithm`, `digest`, and the serialization that made them.

use serde_json::{json, Map, Value};

use crate::types::Sha256Digest;

use crate::digest::{root_digest, Manifest, RelPath, Resource, Serialization};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const MODEL_SIGNING_PREDICATE: &str = "https://model_signing/signature/v1.0";

/// The statement for a manifest, as JSON bytes (keys in a fixed order, so the same model
/// gives the same bytes).
pub fn model_statement(manifest: &Manifest) -> Vec<u8> {
    let mut serialization = Map::new();
    serialization.insert("method".into(), json!(manifest.serialization.method()));
    serialization.insert("hash_type".into(), json!("sha256"));
    if let Serialization::Shards { shard_size } = manifest.serialization {
        serialization.insert("shard_size".into(), json!(shard_size));
    }
    serialization.insert("allow_symlinks".into(), json!(manifest.allow_symlinks));
    if !manifest.ignore_paths.is_empty() {
        serialization.insert("ignore_paths".into(), json!(manifest.ignore_paths));
    }
    let algorithm = manifest.serialization.algorithm();
    let resources: Vec<Value> = manifest
        .resources
        .iter()
        .map(|r| json!({ "name": r.name(), "algorithm": algorithm, "digest": r.digest.to_hex() }))
        .collect();
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": manifest.model_name,
            "digest": { "sha256": manifest.root_digest().to_hex() },
        }],
        "predicateType": MODEL_SIGNING_PREDICATE,
        "predicate": {
            "serialization": Value::Object(serialization),
            "resources": resources,
        },
    });
    // Serialising a `Value` cannot fail (no non-string keys, no failing Serialize impls).
    serde_json::to_vec(&statement).unwrap_or_default()
}

/// What a verifier needs from a signed model statement.
#[derive(Clone, Debug)]
pub struct SignedModel {
    pub model_name: String,
    /// The root digest the subject names.
    pub subject_digest: Sha256Digest,
    /// The root digest recomputed from the resources in the order listed.
    pub computed_root: Sha256Digest,
    pub serialization: Serialization,
    pub allow_symlinks: bool,
    /// Recorded ignore paths that name something inside the model.
    pub ignore_paths: Vec<RelPath>,
    pub resources: Vec<Resource>,
}

/// Why a statement cannot be used. `Mismatch` is a verification failure (exit 1): the
/// payload is signed but is not a model signature. `Unreadable` is an input error (exit 2):
/// a shape or algorithm modelgate does not read.
#[derive(Debug)]
pub enum StatementProblem {
    Mismatch { rule: &'static str, message: String },
    Unreadable(String),
}

fn unreadable(s: impl Into<String>) -> StatementProblem {
    StatementProblem::Unreadable(s.into())
}

/// Parse the payload of a model signature.
pub fn parse_model_statement(payload: &[u8]) -> Result<SignedModel, StatementProblem> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| unreadable(format!("signed payload is not JSON: {e}")))?;
    let ty = v.get("_type").and_then(Value::as_str).unwrap_or("");
    if ty != STATEMENT_TYPE {
        return Err(StatementProblem::Mismatch {
            rule: "verify/statement-type",
            message: format!("signed statement has `_type` `{ty}`, expected `{STATEMENT_TYPE}`"),
        });
    }
    let pt = v.get("predicateType").and_then(Value::as_str).unwrap_or("");
    if pt != MODEL_SIGNING_PREDICATE {
        return Err(StatementProblem::Mismatch {
            rule: "verify/predicate-type",
            message: format!(
                "signed statement has predicate type `{pt}`, expected `{MODEL_SIGNING_PREDICATE}`"
            ),
        });
    }
    let subjects = v
        .get("subject")
        .and_then(Value::as_array)
        .ok_or_else(|| unreadable("statement has no `subject` list"))?;
    if subjects.len() != 1 {
        return Err(StatementProblem::Mismatch {
            rule: "verify/subject",
            message: format!(
                "signed statement has {} subjects, a model signature has exactly one",
                subjects.len()
            ),
        });
    }
    let model_name = subjects[0]
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let subject_digest = subjects[0]
        .pointer("/digest/sha256")
        .and_then(Value::as_str)
        .and_then(Sha256Digest::from_hex)
        .ok_or_else(|| unreadable("statement subject has no sha256 digest of 64 hex digits"))?;
    let predicate = v
        .get("predicate")
        .ok_or_else(|| unreadable("statement has no `predicate`"))?;
    let ser = predicate
        .get("serialization")
        .ok_or_else(|| unreadable("predicate has no `serialization`"))?;
    let method = ser.get("method").and_then(Value::as_str).unwrap_or("");
    let hash_type = ser.get("hash_type").and_then(Value::as_str).unwrap_or("");
    if hash_type != "sha256" {
        return Err(unreadable(format!(
            "the model was hashed with `{hash_type}`; modelgate verifies sha256 only"
        )));
    }
    let serialization = match method {
        "files" => Serialization::Files,
        "shards" => {
            let shard_size = ser
                .get("shard_size")
                .and_then(whole_number)
                .filter(|s| *s > 0)
                .ok_or_else(|| unreadable("shard serialization has no positive `shard_size`"))?;
            Serialization::Shards { shard_size }
        }
        other => {
            return Err(unreadable(format!(
                "serialization method `{other}` is not `files` or `shards`"
            )))
        }
    };
    // The reference tool once wrote the string "false" here.
    let allow_symlinks = match ser.get("allow_symlinks") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    let ignore_paths = ser
        .get("ignore_paths")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(RelPath::parse)
                // `.` would hide the whole model; the reference tool ignores what does
                // not lie strictly inside the model as well.
                .filter(|p| p.as_str() != ".")
                .collect()
        })
        .unwrap_or_default();
    let list = predicate
        .get("resources")
        .and_then(Value::as_array)
        .ok_or_else(|| unreadable("predicate has no `resources` list"))?;
    let mut resources = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        resources.push(
            parse_resource(r, serialization)
                .map_err(|e| unreadable(format!("resource {i} of the signed statement: {e}")))?,
        );
    }
    let computed_root = root_digest(resources.iter().map(|r| &r.digest));
    Ok(SignedModel {
        model_name,
        subject_digest,
        computed_root,
        serialization,
        allow_symlinks,
        ignore_paths,
        resources,
    })
}

/// A non-negative whole number. The reference tool stores the predicate as a protobuf
/// `Struct`, whose numbers are doubles, so it writes `16384.0` for a shard size.
fn whole_number(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // Exact below 2^53; larger doubles may not be the integer that was meant.
    (f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0).then_some(f as u64)
}

fn parse_resource(r: &Value, ser: Serialization) -> Result<Resource, String> {
    let name = r.get("name").and_then(Value::as_str).ok_or("no `name`")?;
    let algorithm = r
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or("no `algorithm`")?;
    if algorithm != "sha256" && !algorithm.starts_with("sha256-sharded-") {
        return Err(format!(
            "`{name}` uses `{algorithm}`; modelgate verifies sha256 only"
        ));
    }
    let digest = r
        .get("digest")
        .and_then(Value::as_str)
        .and_then(Sha256Digest::from_hex)
        .ok_or_else(|| format!("`{name}` has no sha256 digest of 64 hex digits"))?;
    let (path, range) = match ser {
        Serialization::Files => (name, None),
        Serialization::Shards { .. } => {
            // `path:start:end`; split from the right so a `:` in the path survives.
            let mut parts = name.rsplitn(3, ':');
            let end = parts.next().and_then(|s| s.parse::<u64>().ok());
            let start = parts.next().and_then(|s| s.parse::<u64>().ok());
            match (parts.next(), start, end) {
                (Some(p), Some(s), Some(e)) if s < e => (p, Some((s, e))),
                _ => return Err(format!("`{name}` is not a shard name `path:start:end`")),
            }
        }
    };
    let path =
        RelPath::parse(path).ok_or_else(|| format!("`{name}` is not a path inside the model"))?;
    Ok(Resource {
        path,
        range,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(ser: Serialization) -> Manifest {
        let d = |s: &[u8]| Sha256Digest::of(s);
        let resources = match ser {
            Serialization::Files => vec![Resource {
                path: RelPath::parse("a/b.bin").unwrap(),
                range: None,
                digest: d(b"x"),
            }],
            Serialization::Shards { .. } => vec![
                Resource {
                    path: RelPath::parse("w:x").unwrap(),
                    range: Some((0, 4)),
                    digest: d(b"x"),
                },
                Resource {
                    path: RelPath::parse("w:x").unwrap(),
                    range: Some((4, 6)),
                    digest: d(b"y"),
                },
            ],
        };
        Manifest {
            model_name: "m".into(),
            serialization: ser,
            allow_symlinks: false,
            ignore_paths: vec!["model.sig".into(), ".git".into()],
            resources,
            files: 1,
            bytes: 6,
        }
    }

    #[test]
    fn statement_round_trips() {
        for ser in [
            Serialization::Files,
            Serialization::Shards { shard_size: 4 },
        ] {
            let m = manifest(ser);
            let bytes = model_statement(&m);
            let s = parse_model_statement(&bytes).unwrap();
            assert_eq!(s.model_name, "m");
            assert_eq!(s.subject_digest, m.root_digest());
            assert_eq!(s.computed_root, m.root_digest());
            assert_eq!(s.serialization, ser);
            assert_eq!(s.resources, m.resources);
            assert_eq!(s.ignore_paths.len(), 2);
        }
    }

    #[test]
    fn statement_fields_match_the_reference_shape() {
        let v: Value = serde_json::from_slice(&model_statement(&manifest(Serialization::Shards {
            shard_size: 4,
        })))
        .unwrap();
        assert_eq!(v["predicate"]["serialization"]["method"], "shards");
        assert_eq!(v["predicate"]["serialization"]["shard_size"], 4);
        assert_eq!(v["predicate"]["resources"][1]["name"], "w:x:4:6");
        assert_eq!(
            v["predicate"]["resources"][1]["algorithm"],
            "sha256-sharded-4"
        );
    }

    #[test]
    fn shard_size_written_as_a_double_is_read() {
        let mut v: Value =
            serde_json::from_slice(&model_statement(&manifest(Serialization::Shards {
                shard_size: 4,
            })))
            .unwrap();
        v["predicate"]["serialization"]["shard_size"] = json!(4.0);
        let s = parse_model_statement(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(s.serialization, Serialization::Shards { shard_size: 4 });
        v["predicate"]["serialization"]["shard_size"] = json!(4.5);
        assert!(parse_model_statement(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn wrong_predicate_is_a_mismatch_unknown_hash_is_unreadable() {
        let mut v: Value =
            serde_json::from_slice(&model_statement(&manifest(Serialization::Files))).unwrap();
        v["predicateType"] = json!("https://slsa.dev/verification_summary/v1");
        let e = parse_model_statement(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(
            e,
            StatementProblem::Mismatch {
                rule: "verify/predicate-type",
                ..
            }
        ));
        v["predicateType"] = json!(MODEL_SIGNING_PREDICATE);
        v["predicate"]["serialization"]["hash_type"] = json!("blake3");
        let e = parse_model_statement(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(e, StatementProblem::Unreadable(m) if m.contains("blake3")));
    }
}
