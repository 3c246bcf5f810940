//! The step cache: a step whose inputs (content digests), settings and tool version are
//! unchanged since its last successful run is not run again.
//!
//! Each step's key is sha256 over a canonical JSON of `{tool version, inputs, settings}`;
//! its record (the key, the digests of what it wrote and its result) lives in
//! `OUT/.modelgate-cache/STEP.json`. A record is used only when its key matches and every
//! output it lists still has the recorded digest, so a deleted or edited artifact makes
//! the step run again. Records are written after the step's outputs, through a temporary
//! file renamed into place, so an interrupted run never leaves a record for outputs that
//! are not complete.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{PipelineError, StepRecord};
use crate::types::Sha256Digest;

/// The folder inside the output folder that holds the records.
pub const CACHE_DIR: &str = ".modelgate-cache";

/// Records are small; anything larger is not one of ours.
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// The key of one step.
pub fn key(inputs: &BTreeMap<String, String>, settings: &Value) -> Sha256Digest {
    // serde_json with `preserve_order` keeps insertion order; the inputs map is sorted and
    // settings come from serializing fixed structs, so the text is canonical.
    let v = serde_json::json!({
        "tool": concat!("modelgate ", env!("CARGO_PKG_VERSION")),
        "inputs": inputs,
        "settings": settings,
    });
    Sha256Digest::of(v.to_string().as_bytes())
}

/// What the cache remembers of one step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub record: StepRecord,
}

fn path_for(out: &Path, step: &str) -> PathBuf {
    out.join(CACHE_DIR).join(format!("{step}.json"))
}

/// The cached record of `step` when its key matches and its outputs are unchanged.
/// `digest_of` computes an output's current digest (None when it is missing).
pub fn lookup(
    out: &Path,
    step: &str,
    key: &Sha256Digest,
    digest_of: &dyn Fn(&Path) -> Option<String>,
) -> Option<StepRecord> {
    let p = path_for(out, step);
    let meta = fs::metadata(&p).ok()?;
    if meta.len() > MAX_RECORD_BYTES {
        return None;
    }
    let bytes = fs::read(&p).ok()?;
    // A record that does not parse (another version, a damaged file) is a miss.
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    if entry.key != key.to_hex() {
        return None;
    }
    for (rel, digest) in &entry.record.outputs {
        if digest_of(&out.join(rel)).as_deref() != Some(digest.as_str()) {
            return None;
        }
    }
    Some(entry.record)
}

/// Remember a completed step.
pub fn store(
    out: &Path,
    step: &str,
    key: &Sha256Digest,
    record: &StepRecord,
) -> Result<(), PipelineError> {
    let entry = Entry {
        key: key.to_hex(),
        record: record.clone(),
    };
    let mut bytes =
        serde_json::to_vec_pretty(&entry).map_err(|e| PipelineError::Internal(e.to_string()))?;
    bytes.push(b'\n');
    let dir = out.join(CACHE_DIR);
    fs::create_dir_all(&dir).map_err(|e| PipelineError::Write {
        path: dir.clone(),
        source: e,
    })?;
    write_atomic(&path_for(out, step), &bytes)
}

/// Forget a step (before it runs again), so that a run interrupted while the step rewrites
/// its outputs cannot leave a record that matches neither old nor new outputs.
pub fn forget(out: &Path, step: &str) {
    let _ = fs::remove_file(path_for(out, step));
}

/// Write `bytes` to `path` through a temporary file in the same folder renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    let werr = |source| PipelineError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".modelgate-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(werr)?;
    tmp.write_all(bytes).map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_inputs_and_settings() {
        let mut a = BTreeMap::new();
        a.insert("model".to_owned(), "00".to_owned());
        let k1 = key(&a, &serde_json::json!({"type": "Q8_0"}));
        let k2 = key(&a, &serde_json::json!({"type": "Q4_0"}));
        a.insert("model".to_owned(), "01".to_owned());
        let k3 = key(&a, &serde_json::json!({"type": "Q8_0"}));
        assert_ne!(k1, k2);
        assert_ne!(k1, k3);
    }
}
