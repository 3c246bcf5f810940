//! GGUF split sets: one model spread over `PREFIX-00001-of-0000N.gguf` …
//! `PREFIX-0000N-of-0000N.gguf`, the layout llama.cpp's `gguf-split` writes and its model
//! loader reads.
//!
//! Part of the `formats` stage: [`open_set`] turns the first file of a set into one
//! [`Weights`] view over every part, so that inspect, engine and parity read split output
//! like a single file. The conventions follow llama.cpp: every part is a GGUF file carrying
//! `split.no` (u16, 0-based), `split.count` (u16) and `split.tensors.count` (i32, tensors in
//! the whole set); the first part also carries the model's metadata; a part's name is
//! `llama_split_path`'s `"%s-%05d-of-%05d.gguf"` with a 1-based number. Every part is read
//! with the same hostile-input rules as a single file, and the set as a whole is checked:
//! numbering, counts, no tensor twice, the total the first part declares.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::read::MAX_TENSORS;
use crate::formats::{FormatError, MetaValue, Weights};

/// `split.no`: the part's 0-based number.
pub const KEY_NO: &str = "split.no";
/// `split.count`: how many parts the set has.
pub const KEY_COUNT: &str = "split.count";
/// `split.tensors.count`: tensors in the whole set.
pub const KEY_TENSORS: &str = "split.tensors.count";

/// What a part's `split.*` keys say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitInfo {
    /// 0-based.
    pub no: u16,
    pub count: u16,
    pub tensors: u64,
}

/// The file name of part `no` (0-based) of `count` for `prefix` (`llama_split_path`).
pub fn part_name(prefix: &str, no: u16, count: u16) -> String {
    format!("{prefix}-{:05}-of-{:05}.gguf", u32::from(no) + 1, count)
}

/// The path of part `no` (0-based) of `count` beside `prefix` (a path without `.gguf`).
pub fn part_path(prefix: &Path, no: u16, count: u16) -> PathBuf {
    let name = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    prefix.with_file_name(part_name(&name, no, count))
}

/// Split a part's path into its prefix path, 1-based number and count, if its name follows
/// the convention (`PREFIX-00002-of-00003.gguf` → (`PREFIX`, 2, 3)).
pub fn parse_part_path(path: &Path) -> Option<(PathBuf, u16, u16)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    // "-NNNNN-of-NNNNN" is 15 ASCII bytes.
    let cut = stem.len().checked_sub(15)?;
    let (prefix, tail) = (stem.get(..cut)?, stem.get(cut..)?);
    let b = tail.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if prefix.is_empty() || b[0] != b'-' || &b[6..10] != b"-of-" || !digits(1..6) || !digits(10..15)
    {
        return None;
    }
    // All ASCII from here, so the slices fall on character boundaries.
    let no: u16 = tail[1..6].parse().ok()?;
    let count: u16 = tail[10..15].parse().ok()?;
    if no == 0 || no > count {
        return None;
    }
    Some((path.with_file_name(prefix), no, count))
}

/// The `split.*` keys of one part, in the order llama.cpp writes them.
pub fn split_keys(info: SplitInfo) -> Vec<(String, MetaValue)> {
    vec![
        (KEY_NO.to_owned(), MetaValue::U16(info.no)),
        (KEY_COUNT.to_owned(), MetaValue::U16(info.count)),
        (
            KEY_TENSORS.to_owned(),
            // Callers bound the total by MAX_TENSORS (2^20), far below i32::MAX.
            MetaValue::I32(i32::try_from(info.tensors).unwrap_or(i32::MAX)),
        ),
    ]
}

/// Whether a key is one of the `split.*` keys.
pub fn is_split_key(key: &str) -> bool {
    key.starts_with("split.")
}

/// Read a part's `split.*` keys: `None` when it has no `split.count`; an error when they
/// are present but of the wrong kind or out of range.
pub fn split_info(
    path: &Path,
    meta: &[(String, MetaValue)],
) -> Result<Option<SplitInfo>, FormatError> {
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let Some(count) = get(KEY_COUNT) else {
        return Ok(None);
    };
    let int = |k: &str, v: Option<&MetaValue>, max: u64| -> Result<u64, FormatError> {
        let v = v.ok_or_else(|| {
            FormatError::malformed(path, format!("has `{KEY_COUNT}` but no `{k}`"))
        })?;
        v.as_u64().filter(|&n| n <= max).ok_or_else(|| {
            FormatError::malformed(
                path,
                format!(
                    "`{k}` is {} {}, expected an integer from 0 to {max}",
                    v.type_name(),
                    v.to_json()
                ),
            )
        })
    };
    let count = int(KEY_COUNT, Some(count), u64::from(u16::MAX))? as u16;
    let no = int(KEY_NO, get(KEY_NO), u64::from(u16::MAX))? as u16;
    let tensors = int(KEY_TENSORS, get(KEY_TENSORS), MAX_TENSORS)?;
    if count > 0 && no >= count {
        return Err(FormatError::malformed(
            path,
            format!("`{KEY_NO}` is {no} but `{KEY_COUNT}` is {count} (parts are numbered from 0)"),
        ));
    }
    Ok(Some(SplitInfo { no, count, tensors }))
}

/// If `first` (opened from `path`) is the first part of a split set of more than one file,
/// open the other parts and return one view over all of them; otherwise return `first`
/// unchanged. The view's metadata is the first part's without the `split.*` keys; every
/// tensor's [`crate::formats::TensorInfo::file`] names its part.
pub fn open_set(path: &Path, first: Weights) -> Result<Weights, FormatError> {
    let Some(info) = split_info(path, &first.metadata)? else {
        return Ok(first);
    };
    if info.count <= 1 {
        return Ok(first);
    }
    let (prefix, no, count) = parse_part_path(path).ok_or_else(|| {
        FormatError::malformed(
            path,
            format!(
                "declares part {} of a split set of {}, but its name does not end in `-{:05}-of-{:05}.gguf`, so its sibling parts cannot be found",
                u32::from(info.no) + 1,
                info.count,
                u32::from(info.no) + 1,
                info.count
            ),
        )
    })?;
    if info.no != 0 {
        return Err(FormatError::malformed(
            path,
            format!(
                "is part {} of {} of a split set; open the first part `{}`",
                u32::from(info.no) + 1,
                info.count,
                part_path(&prefix, 0, info.count).display()
            ),
        ));
    }
    if no != 1 || count != info.count {
        return Err(FormatError::malformed(
            path,
            format!(
                "its name says part {no} of {count}, its keys say part 1 of {}",
                info.count
            ),
        ));
    }
    let Weights {
        format,
        mut files,
        mut tensors,
        metadata,
        gguf,
        mut maps,
    } = first;
    let total = info.tensors;
    if tensors.len() as u64 > total {
        return Err(FormatError::malformed(
            path,
            format!(
                "holds {} tensors but `{KEY_TENSORS}` says the whole set has {total}",
                tensors.len()
            ),
        ));
    }
    let mut names: HashSet<String> = tensors.iter().map(|t| t.name.0.clone()).collect();
    for i in 1..info.count {
        let p = part_path(&prefix, i, info.count);
        if !p.is_file() {
            return Err(FormatError::NotACheckpoint {
                path: p.clone(),
                why: format!(
                    "part {} of {} of the split set `{}` is missing",
                    u32::from(i) + 1,
                    info.count,
                    path.display()
                ),
            });
        }
        let part = super::open(&p)?;
        let pi = split_info(&p, &part.metadata)?.ok_or_else(|| {
            FormatError::malformed(&p, format!("has no `{KEY_COUNT}`; it is not a split part"))
        })?;
        let want = SplitInfo {
            no: i,
            count: info.count,
            tensors: total,
        };
        if pi != want {
            return Err(FormatError::malformed(
                &p,
                format!(
                    "split keys say part {} of {} with {} tensors in the set, expected part {} of {} with {total} (from `{}`)",
                    u32::from(pi.no) + 1,
                    pi.count,
                    pi.tensors,
                    u32::from(i) + 1,
                    info.count,
                    path.display()
                ),
            ));
        }
        let file_index = files.len();
        let Weights {
            files: pfiles,
            tensors: ptensors,
            maps: pmaps,
            ..
        } = part;
        if tensors.len() as u64 + ptensors.len() as u64 > total {
            return Err(FormatError::malformed(
                &p,
                format!(
                    "brings the set to {} tensors, more than the {total} `{KEY_TENSORS}` declares",
                    tensors.len() + ptensors.len()
                ),
            ));
        }
        for mut t in ptensors {
            if !names.insert(t.name.0.clone()) {
                return Err(FormatError::malformed(
                    &p,
                    format!("tensor `{}` is also in an earlier part", t.name),
                ));
            }
            t.file = file_index;
            tensors.push(t);
        }
        files.extend(pfiles);
        maps.extend(pmaps);
    }
    if tensors.len() as u64 != total {
        return Err(FormatError::malformed(
            path,
            format!(
                "the {} parts hold {} tensors, but `{KEY_TENSORS}` declares {total}",
                info.count,
                tensors.len()
            ),
        ));
    }
    let metadata = metadata
        .into_iter()
        .filter(|(k, _)| !is_split_key(k))
        .collect();
    Ok(Weights {
        format,
        files,
        tensors,
        metadata,
        gguf,
        maps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_split_path() {
        assert_eq!(part_name("m", 0, 3), "m-00001-of-00003.gguf");
        let p = part_path(Path::new("out/model"), 2, 12);
        assert_eq!(p, Path::new("out/model-00003-of-00012.gguf"));
        assert_eq!(
            parse_part_path(&p),
            Some((PathBuf::from("out/model"), 3, 12))
        );
        assert_eq!(parse_part_path(Path::new("m-00000-of-00003.gguf")), None);
        assert_eq!(parse_part_path(Path::new("m-00004-of-00003.gguf")), None);
        assert_eq!(parse_part_path(Path::new("-00001-of-00003.gguf")), None);
        assert_eq!(parse_part_path(Path::new("m-0001-of-00003.gguf")), None);
        assert_eq!(parse_part_path(Path::new("m.gguf")), None);
        assert_eq!(
            parse_part_path(Path::new("é-00001-of-00002.gguf")).map(|x| x.1),
            Some(1)
        );
    }

    #[test]
    fn split_keys_read_back() {
        let info = SplitInfo {
            no: 1,
            count: 3,
            tensors: 12,
        };
        let keys = split_keys(info);
        assert_eq!(split_info(Path::new("x"), &keys).unwrap(), Some(info));
        assert_eq!(split_info(Path::new("x"), &[]).unwrap(), None);
        let bad = split_keys(SplitInfo {
            no: 3,
            count: 3,
            tensors: 1,
        });
        assert!(split_info(Path::new("x"), &bad).is_err());
        let missing = vec![(KEY_COUNT.to_owned(), MetaValue::U16(2))];
        let e = split_info(Path::new("x"), &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `split.no`"), "{e}");
    }
}
