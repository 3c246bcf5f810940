//! `modelgate merge`: check the shares of a sharded conversion and assemble them into one
//! GGUF file, or confirm they form a valid split set and leave them as they are.
//!
//! Part of the convert stage, after N processes each ran `convert --shard I/N`. Shares are
//! hostile input until proven otherwise: every sidecar must parse, every share from 1 to N
//! must be present exactly once, all must record the same plan digest and total, every
//! part's SHA-256 and size must match its sidecar, and the parts must then read back as a
//! GGUF split set (through `formats`, with its own checks) holding exactly the tensors the
//! sidecars list. Only then is the output written, through a temporary file renamed into
//! place. The assembled file is the first part's metadata without the `split.*` keys, then
//! every part's tensors in order: the bytes of the single-process conversion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::ConvertError;
use super::exec::Target;
use super::split::{sidecar_path, Sidecar, SIDECAR_FORMAT};
use crate::formats::gguf::split as gsplit;
use crate::formats::gguf::{GgufWriter, TensorDesc};
use crate::formats::Checkpoint;
use crate::types::Sha256Digest;

/// Sidecars are small (a list of tensor names); anything bigger is not one.
const MAX_SIDECAR_BYTES: u64 = 64 << 20;

/// One checked share.
#[derive(Clone, Debug, Serialize)]
pub struct MergedPart {
    pub share: u16,
    pub path: PathBuf,
    pub sidecar: PathBuf,
    pub sha256: Sha256Digest,
    pub tensors: u64,
    pub bytes: u64,
}

/// What the merge checked and wrote.
#[derive(Clone, Debug, Serialize)]
pub struct MergeSummary {
    pub plan_sha256: Sha256Digest,
    pub shares: u16,
    pub parts: Vec<MergedPart>,
    pub tensors: u64,
    /// The assembled file; `None` with `--keep-split`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    pub bytes_out: u64,
    pub sha256: Option<Sha256Digest>,
}

/// The sidecars the arguments name: a directory (every `*.shard.json` in it), one part or
/// sidecar of a set (all its siblings by name), or a list of parts and sidecars.
fn sidecars_of(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, ConvertError> {
    let as_sidecar = |p: &Path| -> PathBuf {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".shard.json") {
            p.to_owned()
        } else {
            sidecar_path(p)
        }
    };
    match inputs {
        [] => Err(ConvertError::Options(
            "merge needs the shares: a directory, the first part, or every part".into(),
        )),
        [dir] if dir.is_dir() => {
            let mut out = Vec::new();
            let entries = std::fs::read_dir(dir).map_err(|e| ConvertError::write(dir, e))?;
            for e in entries {
                let p = e.map_err(|e| ConvertError::write(dir, e))?.path();
                if p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".shard.json") && !n.starts_with('.'))
                {
                    out.push(p);
                }
            }
            out.sort();
            if out.is_empty() {
                return Err(ConvertError::shard(
                    dir,
                    "holds no shard sidecars (`*.shard.json`); run `convert --shard I/N` into it first",
                ));
            }
            Ok(out)
        }
        [one] => {
            let part = one
                .to_str()
                .and_then(|s| s.strip_suffix(".shard.json"))
                .map(|s| PathBuf::from(format!("{s}.gguf")))
                .unwrap_or_else(|| one.clone());
            match gsplit::parse_part_path(&part) {
                Some((prefix, _, count)) => Ok((0..count)
                    .map(|i| sidecar_path(&gsplit::part_path(&prefix, i, count)))
                    .collect()),
                None => Err(ConvertError::shard(
                    one,
                    "is not named like a share (`NAME-0000I-of-0000N.gguf`); give the directory or every part",
                )),
            }
        }
        many => Ok(many.iter().map(|p| as_sidecar(p)).collect()),
    }
}

fn read_sidecar(path: &Path) -> Result<Sidecar, ConvertError> {
    if !path.is_file() {
        let part = path
            .to_str()
            .and_then(|s| s.strip_suffix(".shard.json"))
            .map(|s| format!("{s}.gguf"))
            .unwrap_or_default();
        return Err(ConvertError::shard(
            path,
            format!(
                "no such sidecar{}; the share is missing or was not written by `convert --shard`",
                if Path::new(&part).is_file() {
                    format!(" beside `{part}`")
                } else {
                    String::new()
                }
            ),
        ));
    }
    let text = crate::formats::read_text_capped(path, MAX_SIDECAR_BYTES)?;
    let sc: Sidecar = serde_json::from_str(&text)
        .map_err(|e| ConvertError::shard(path, format!("is not a shard sidecar: {e}")))?;
    if sc.format != SIDECAR_FORMAT {
        return Err(ConvertError::shard(
            path,
            format!("has format `{}`, expected `{SIDECAR_FORMAT}`", sc.format),
        ));
    }
    if sc.share == 0 || sc.share > sc.shares {
        return Err(ConvertError::shard(
            path,
            format!("says share {} of {}", sc.share, sc.shares),
        ));
    }
    Ok(sc)
}

fn file_sha256(path: &Path) -> Result<Sha256Digest, ConvertError> {
    use crate::digest::{hash_model, HashOptions, Serialization};
    let m = hash_model(path, &HashOptions::new(Serialization::Files), None).map_err(|source| {
        ConvertError::Hash {
            path: path.to_owned(),
            source,
        }
    })?;
    m.resources
        .first()
        .map(|r| r.digest)
        .ok_or_else(|| ConvertError::shard(path, "is not a regular file"))
}

/// Check the shares `inputs` name and, unless `out` is `None` (`--keep-split`), assemble
/// them into `out`.
pub fn merge(inputs: &[PathBuf], out: Option<&Path>) -> Result<MergeSummary, ConvertError> {
    let paths = sidecars_of(inputs)?;
    // Read every sidecar first: a missing share is reported before anything is hashed.
    let mut by_share: BTreeMap<u16, (PathBuf, Sidecar)> = BTreeMap::new();
    let mut first: Option<(PathBuf, u16, Sha256Digest, u64)> = None;
    for p in &paths {
        let sc = read_sidecar(p)?;
        match &first {
            None => first = Some((p.clone(), sc.shares, sc.plan_sha256, sc.tensors_total)),
            Some((fp, n, digest, total)) => {
                if sc.shares != *n {
                    return Err(ConvertError::shard(
                        p,
                        format!(
                            "is share {} of {}, but `{}` is of {n}: the shares come from runs with different N",
                            sc.share,
                            sc.shares,
                            fp.display()
                        ),
                    ));
                }
                if sc.plan_sha256 != *digest || sc.tensors_total != *total {
                    return Err(ConvertError::shard(
                        p,
                        format!(
                            "records plan sha256 {} ({} tensors), but `{}` records {digest} ({total} tensors): the shares come from different sources, options or modelgate versions",
                            sc.plan_sha256,
                            sc.tensors_total,
                            fp.display()
                        ),
                    ));
                }
            }
        }
        if let Some((other, _)) = by_share.get(&sc.share) {
            return Err(ConvertError::shard(
                p,
                format!("is share {} again (also `{}`)", sc.share, other.display()),
            ));
        }
        by_share.insert(sc.share, (p.clone(), sc));
    }
    let Some((first_path, n, plan_sha256, total)) = first else {
        return Err(ConvertError::Options("no shares given".into()));
    };
    let missing: Vec<u16> = (1..=n).filter(|i| !by_share.contains_key(i)).collect();
    if let Some(&m) = missing.first() {
        let dir = first_path.parent().unwrap_or(Path::new(""));
        let prefix_name = by_share
            .values()
            .next()
            .and_then(|(_, sc)| gsplit::parse_part_path(Path::new(&sc.file)))
            .map(|(p, _, _)| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = dir.join(gsplit::part_name(&prefix_name, m - 1, n));
        return Err(ConvertError::shard(
            &expected,
            format!(
                "share {m} of {n} is missing ({} of {n} absent: {}); run `convert --shard {m}/{n}` again",
                missing.len(),
                missing
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }

    let mut parts = Vec::new();
    for (share, (sc_path, sc)) in &by_share {
        let dir = sc_path.parent().unwrap_or(Path::new(""));
        let part = dir.join(&sc.file);
        match gsplit::parse_part_path(Path::new(&sc.file)) {
            Some((_, no, count)) if no == *share && count == n && !sc.file.contains('/') => {}
            _ => {
                return Err(ConvertError::shard(
                    sc_path,
                    format!(
                        "names part `{}`, which is not share {share} of {n} by llama.cpp's naming",
                        sc.file
                    ),
                ))
            }
        }
        let size = std::fs::metadata(&part)
            .map_err(|e| {
                ConvertError::shard(
                    &part,
                    format!(
                        "cannot be read ({e}); its sidecar `{}` names it",
                        sc_path.display()
                    ),
                )
            })?
            .len();
        if size != sc.bytes {
            return Err(ConvertError::shard(
                &part,
                format!(
                    "is {size} bytes, but its sidecar `{}` records {} (the part is incomplete or was changed)",
                    sc_path.display(),
                    sc.bytes
                ),
            ));
        }
        let digest = file_sha256(&part)?;
        if digest != sc.sha256 {
            return Err(ConvertError::shard(
                &part,
                format!(
                    "has sha256 {digest}, but its sidecar `{}` records {} (the part was changed after conversion)",
                    sc_path.display(),
                    sc.sha256
                ),
            ));
        }
        parts.push(MergedPart {
            share: *share,
            path: part,
            sidecar: sc_path.clone(),
            sha256: digest,
            tensors: sc.tensors.len() as u64,
            bytes: size,
        });
    }

    // The parts are what their sidecars say; now read them as a split set, which checks
    // the split keys, names and counts of every part.
    let first_part = &parts[0].path;
    let ckpt = Checkpoint::open(first_part)?;
    let w = &ckpt.weights;
    if w.files.len() != usize::from(n) || w.tensors.len() as u64 != total {
        return Err(ConvertError::shard(
            first_part,
            format!(
                "reads as a set of {} parts with {} tensors, but the sidecars say {n} shares with {total}",
                w.files.len(),
                w.tensors.len()
            ),
        ));
    }
    for (fi, (mp, (_, sc))) in parts.iter().zip(by_share.values()).enumerate() {
        let names: Vec<&str> = w
            .tensors
            .iter()
            .filter(|t| t.file == fi)
            .map(|t| t.name.as_str())
            .collect();
        if names != sc.tensors.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(ConvertError::shard(
                &mp.path,
                format!(
                    "holds {} tensors that differ from the {} its sidecar lists",
                    names.len(),
                    sc.tensors.len()
                ),
            ));
        }
    }

    let Some(out) = out else {
        return Ok(MergeSummary {
            plan_sha256,
            shares: n,
            tensors: total,
            bytes_out: parts.iter().map(|p| p.bytes).sum(),
            parts,
            output: None,
            sha256: None,
        });
    };
    let descs = w
        .tensors
        .iter()
        .map(|t| {
            t.dtype
                .to_ggml()
                .map(|ggml_type| TensorDesc {
                    name: t.name.0.clone(),
                    ggml_type,
                    shape: t.shape.clone(),
                })
                .ok_or_else(|| {
                    ConvertError::shard(
                        first_part,
                        format!(
                            "tensor `{}` has type {}, which GGUF cannot hold",
                            t.name, t.dtype
                        ),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let alignment = w
        .gguf
        .map(|g| g.alignment)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(crate::formats::gguf::DEFAULT_ALIGNMENT);
    let target = Target::new(out, false)?;
    let Target::File { tmp, .. } = &target else {
        return Err(ConvertError::Options("the merge output is a file".into()));
    };
    let tmp_path = tmp.path().to_path_buf();
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| ConvertError::write(&tmp_path, e))?;
    let bad = |e| ConvertError::gguf_output(out, e);
    let mut writer = GgufWriter::with_alignment(
        std::io::BufWriter::with_capacity(1 << 20, file),
        &w.metadata,
        &descs,
        alignment,
    )
    .map_err(bad)?;
    for t in &w.tensors {
        writer
            .write_tensor(t.name.as_str(), w.tensor_data(t)?)
            .map_err(bad)?;
    }
    let total_len = writer.total_len();
    let buf = writer.finish().map_err(bad)?;
    buf.into_inner()
        .map_err(|e| ConvertError::write(&tmp_path, e.into_error()))?;
    drop(ckpt);
    target.commit()?;
    let sha256 = file_sha256(out)?;
    Ok(MergeSummary {
        plan_sha256,
        shares: n,
        parts,
        tensors: total,
        output: Some(out.to_owned()),
        bytes_out: total_len,
        sha256: Some(sha256),
    })
}
