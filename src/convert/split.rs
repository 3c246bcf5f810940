//! GGUF output spread over several files: a split set bounded by size or tensor count
//! (`--split-max-size`, `--split-max-tensors`), or one share of a conversion run by N
//! processes (`--shard I/N`) that [`super::merge`] checks and assembles.
//!
//! Part of the convert stage: the plan is made exactly as for one file, then cut into
//! contiguous runs of tensors, and each run is written through the same executor as a GGUF
//! part with llama.cpp's `split.*` keys (see [`crate::formats::gguf::split`] for the
//! conventions and the reader). Because a run keeps the plan's tensor order and the first
//! part carries the plan's metadata unchanged before the `split.*` keys, removing those
//! keys and concatenating the parts gives exactly the bytes of the single-file conversion.
//!
//! A share also writes a sidecar (`PREFIX-0000I-of-0000N.shard.json`) recording the plan
//! digest (SHA-256 over the source files' digests, the tool version, every metadata key and
//! every output tensor with its source and row mapping: everything that decides the output
//! bytes), its tensors and the part's SHA-256, so that the merge can tell a tampered,
//! missing or foreign share from a good one.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ConvertError;
use super::exec::{self, Part, Target};
use super::plan::{self, Plan, Source};
use super::{Options, OutputFormat, Progress, Summary};
use crate::formats::gguf::split::{self as gsplit, SplitInfo};
use crate::formats::gguf::DEFAULT_ALIGNMENT;
use crate::formats::{Checkpoint, Layout, MetaValue, TensorInfo};
use crate::types::Sha256Digest;

/// The `format` value of a shard sidecar.
pub const SIDECAR_FORMAT: &str = "modelgate-shard/1";

/// How to spread a GGUF output over files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitMode {
    /// Every part as large as allowed (gguf-split's rule: a new part starts when the next
    /// tensor would take the part's tensor data past `max_bytes`, or when it already holds
    /// `max_tensors`); all parts written by this process.
    Limit {
        max_bytes: Option<u64>,
        max_tensors: Option<u64>,
    },
    /// Write only share `index` (1-based) of `count`, balanced by output bytes.
    Shard(Shard),
}

/// `--shard I/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// 1-based.
    pub index: u16,
    pub count: u16,
}

impl Shard {
    /// Parse `I/N` with 1 ≤ I ≤ N ≤ 65535.
    pub fn parse(s: &str) -> Result<Shard, ConvertError> {
        let bad = || {
            ConvertError::Options(format!(
                "--shard `{s}` is not I/N with 1 <= I <= N <= 65535 (for example 2/3)"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u16 = i.trim().parse().map_err(|_| bad())?;
        let count: u16 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// Parse a size: a number of bytes with an optional `K`, `M`, `G` or `T` suffix in powers
/// of 1000 (what gguf-split's `--split-max-size` means by `500M` and `2G`), or `KiB`, `MiB`,
/// `GiB`, `TiB` in powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, ConvertError> {
    let bad = || {
        ConvertError::Options(format!(
            "--split-max-size `{s}` is not a size such as 500M, 2G or 1048576 (at least 1 byte)"
        ))
    };
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).filter(|&b| b > 0).ok_or_else(bad)
}

/// Cut tensors of the given (padded) sizes into parts as gguf-split does, except that a
/// tensor larger than the limit gets a part of its own rather than an error.
pub fn by_limit(
    sizes: &[u64],
    max_bytes: Option<u64>,
    max_tensors: Option<u64>,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut acc = 0u64;
    for (i, &b) in sizes.iter().enumerate() {
        let held = (i - start) as u64;
        let over_bytes = max_bytes.is_some_and(|m| acc.saturating_add(b) > m);
        let over_count = max_tensors.is_some_and(|m| held >= m);
        if held > 0 && (over_bytes || over_count) {
            out.push(start..i);
            start = i;
            acc = 0;
        }
        acc = acc.saturating_add(b);
    }
    if start < sizes.len() || out.is_empty() {
        out.push(start..sizes.len());
    }
    out
}

/// Cut tensors into `n` contiguous, non-empty runs whose byte totals are as close to equal
/// as cutting at the ideal boundaries allows: boundary k falls where the running total is
/// nearest `k/n` of the whole. Contiguity keeps the plan's order, which is what makes the
/// merged file equal the single-file output. Needs `1 <= n <= sizes.len()`.
pub fn balanced(sizes: &[u64], n: usize) -> Vec<Range<usize>> {
    let len = sizes.len();
    if n <= 1 || n > len {
        return std::iter::once(0..len).collect();
    }
    let mut prefix = Vec::with_capacity(len + 1);
    prefix.push(0u128);
    for &b in sizes {
        let last = prefix.last().copied().unwrap_or(0);
        prefix.push(last + u128::from(b));
    }
    let total = prefix[len];
    let mut cuts = vec![0usize];
    for k in 1..n {
        let lo = cuts[k - 1] + 1;
        let hi = len - (n - k);
        // Compare n·prefix[j] with k·total to stay in integers.
        let goal = total * k as u128;
        let dist = |j: usize| (prefix[j] * n as u128).abs_diff(goal);
        let best = (lo..=hi).min_by_key(|&j| (dist(j), j)).unwrap_or(lo);
        cuts.push(best);
    }
    cuts.push(len);
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

/// A share's sidecar: what the merge checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// [`SIDECAR_FORMAT`].
    pub format: String,
    /// 1-based.
    pub share: u16,
    pub shares: u16,
    /// The digest of the whole plan (see the module documentation).
    pub plan_sha256: Sha256Digest,
    /// The part's file name, beside the sidecar.
    pub file: String,
    pub sha256: Sha256Digest,
    pub bytes: u64,
    /// Tensors in the whole plan.
    pub tensors_total: u64,
    /// This share's tensors, in order.
    pub tensors: Vec<String>,
}

/// The sidecar path of a part (`X-00002-of-00003.gguf` → `X-00002-of-00003.shard.json`).
pub fn sidecar_path(part: &Path) -> PathBuf {
    part.with_extension("shard.json")
}

/// The SHA-256 of the source files, each hashed whole (the same digests `modelgate hash`
/// reports), by path relative to the checkpoint.
fn source_digests(ckpt: &Checkpoint) -> Result<Vec<(String, Sha256Digest)>, ConvertError> {
    use crate::digest::{hash_model, HashOptions, Serialization};
    let opts = HashOptions::new(Serialization::Files);
    let hash = |p: &Path| {
        hash_model(p, &opts, None).map_err(|source| ConvertError::Hash {
            path: p.to_owned(),
            source,
        })
    };
    let mut out = Vec::new();
    match ckpt.layout {
        Layout::Directory => {
            for r in hash(&ckpt.path)?.resources {
                out.push((r.path.as_str().to_owned(), r.digest));
            }
        }
        Layout::File => {
            for f in &ckpt.weights.files {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for r in hash(f)?.resources {
                    out.push((name.clone(), r.digest));
                }
            }
        }
    }
    Ok(out)
}

/// SHA-256 over everything that decides the output bytes: modelgate's version, the source
/// digests, the output format, every metadata key with its type and value, and every tensor
/// with its type, shape, source and row mapping.
pub fn plan_digest(plan: &Plan, ckpt: &Checkpoint) -> Result<Sha256Digest, ConvertError> {
    let sources = source_digests(ckpt)?;
    let meta: Vec<_> = plan
        .gguf_meta
        .iter()
        .map(|(k, v)| json!([k, v.type_name(), v.to_json(), format!("{v:?}")]))
        .collect();
    let tensors: Vec<_> = plan
        .tensors
        .iter()
        .map(|t| {
            let source = match &t.source {
                Source::Tensor(i) => ckpt
                    .weights
                    .tensors
                    .get(*i)
                    .map(|s: &TensorInfo| {
                        json!({"tensor": s.name.as_str(), "dtype": s.dtype.name(), "shape": s.shape})
                    })
                    .unwrap_or(serde_json::Value::Null),
                Source::Values(v) => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!({"values_sha256": Sha256Digest::of(&bytes).to_hex()})
                }
                Source::Gather(g) => json!({"gather": format!("{g:?}")}),
            };
            json!({
                "name": t.name,
                "type": t.ty.name(),
                "shape": t.shape,
                "bytes": t.bytes,
                "rows": format!("{:?}", t.rows),
                "source": source,
            })
        })
        .collect();
    let doc = json!({
        "modelgate": env!("CARGO_PKG_VERSION"),
        "format": plan.format,
        "sources": sources.iter().map(|(p, d)| json!([p, d.to_hex()])).collect::<Vec<_>>(),
        "metadata": meta,
        "tensors": tensors,
    });
    Ok(Sha256Digest::of(doc.to_string().as_bytes()))
}

/// One file written by a split or sharded conversion.
#[derive(Clone, Debug, Serialize)]
pub struct PartSummary {
    pub path: PathBuf,
    pub tensors: u64,
    pub bytes: u64,
}

/// What a sharded conversion recorded.
#[derive(Clone, Debug, Serialize)]
pub struct ShardSummary {
    pub share: u16,
    pub shares: u16,
    pub plan_sha256: Sha256Digest,
    pub sha256: Sha256Digest,
    pub sidecar: PathBuf,
}

/// Forwards progress of one part to the whole conversion's bar.
struct PartProgress<'a>(&'a dyn Progress);

impl Progress for PartProgress<'_> {
    fn advance(&self, bytes: u64) {
        self.0.advance(bytes);
    }
}

/// The prefix of a split set's names: OUT without `.gguf`.
fn prefix_of(out: &Path) -> Result<PathBuf, ConvertError> {
    if gsplit::parse_part_path(out).is_some() {
        return Err(ConvertError::Options(format!(
            "`{}` is already a split part name; give the set's name (`NAME.gguf`) and modelgate adds `-00001-of-0000N`",
            out.display()
        )));
    }
    match out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("gguf") => Ok(out.with_extension("")),
        _ => Err(ConvertError::Options(format!(
            "split and sharded output is GGUF; name OUT `NAME.gguf`, not `{}`",
            out.display()
        ))),
    }
}

/// Convert `src` into a GGUF split set beside `out` (`out` without `.gguf`, then
/// `-0000I-of-0000N.gguf`), all parts or one share as `mode` says. Nothing appears until
/// every file of this run is complete.
pub fn convert_split(
    src: &Path,
    out: &Path,
    opts: &Options,
    mode: SplitMode,
    progress: &dyn Progress,
) -> Result<Summary, ConvertError> {
    let started = Instant::now();
    let prefix = prefix_of(out)?;
    if let SplitMode::Limit {
        max_bytes: None,
        max_tensors: None,
    } = mode
    {
        return Err(ConvertError::Options(
            "a split needs --split-max-size or --split-max-tensors".into(),
        ));
    }
    if let SplitMode::Limit {
        max_tensors: Some(0),
        ..
    } = mode
    {
        return Err(ConvertError::Options(
            "--split-max-tensors must be at least 1".into(),
        ));
    }
    let ckpt = super::open_source(src)?;
    let source_format = ckpt.weights.format.as_str().to_owned();
    let plan = plan::plan(&ckpt, &super::effective(opts)?, OutputFormat::Gguf)?;
    let importance = super::importance_for(&plan, opts)?;
    let n_tensors = plan.tensors.len();
    let total = n_tensors as u64;
    let padded: Vec<u64> = plan
        .tensors
        .iter()
        .map(|t| t.bytes.div_ceil(u64::from(DEFAULT_ALIGNMENT)) * u64::from(DEFAULT_ALIGNMENT))
        .collect();
    let (ranges, which, digest): (Vec<Range<usize>>, Vec<usize>, Option<Sha256Digest>) = match mode
    {
        SplitMode::Limit {
            max_bytes,
            max_tensors,
        } => {
            let r = by_limit(&padded, max_bytes, max_tensors);
            let all = (0..r.len()).collect();
            (r, all, None)
        }
        SplitMode::Shard(s) => {
            if usize::from(s.count) > n_tensors {
                return Err(ConvertError::Options(format!(
                        "--shard {}/{}: the plan has only {n_tensors} tensors, so it cannot be cut into {} non-empty shares",
                        s.index, s.count, s.count
                    )));
            }
            let r = balanced(&padded, usize::from(s.count));
            (
                r,
                vec![usize::from(s.index) - 1],
                // Shares quantized with different imatrices must not merge.
                Some(match &opts.imatrix {
                    None => plan_digest(&plan, &ckpt)?,
                    Some(m) => {
                        let d = plan_digest(&plan, &ckpt)?;
                        Sha256Digest::of(&[d.0, m.sha256.0].concat())
                    }
                }),
            )
        }
    };
    let count = u16::try_from(ranges.len()).map_err(|_| {
        ConvertError::Options(format!(
            "the split would have {} parts, more than the 65535 GGUF split keys can number; raise --split-max-size",
            ranges.len()
        ))
    })?;
    let in_len = |r: &Range<usize>, c: &Checkpoint| -> u64 {
        plan.tensors[r.clone()]
            .iter()
            .map(|t| match t.source {
                Source::Tensor(k) => c.weights.tensors.get(k).map_or(0, |x| x.len),
                Source::Values(_) => 0,
                Source::Gather(ref g) => g.input_bytes(&c.weights.tensors),
            })
            .sum()
    };
    progress.start(which.iter().map(|&i| in_len(&ranges[i], &ckpt)).sum());
    let table = ckpt.weights.tensors.clone();
    let mut first = Some(ckpt);
    let mut written = Vec::new();
    for &i in &which {
        let no = i as u16; // i < count <= u16::MAX
        let path = gsplit::part_path(&prefix, no, count);
        let mut meta: Vec<(String, MetaValue)> = if no == 0 {
            plan.gguf_meta.clone()
        } else {
            Vec::new()
        };
        meta.extend(gsplit::split_keys(SplitInfo {
            no,
            count,
            tensors: total,
        }));
        let part = Part {
            range: ranges[i].clone(),
            gguf_meta: &meta,
            hash: digest.is_some(),
            importance: &importance,
        };
        let c = match first.take() {
            Some(c) => c,
            None => {
                let c = super::open_source(src)?;
                if c.weights.tensors != table {
                    return Err(ConvertError::Options(format!(
                        "`{}` changed while it was being converted",
                        src.display()
                    )));
                }
                c
            }
        };
        let target = Target::new(&path, false)?;
        let Target::File { tmp, .. } = &target else {
            return Err(ConvertError::Options("a part is a file".into()));
        };
        let tmp_path = tmp.path().to_path_buf();
        let mut f = tmp
            .as_file()
            .try_clone()
            .map_err(|e| ConvertError::write(&tmp_path, e))?;
        let w = exec::write_part(
            &plan,
            &part,
            c,
            src,
            &mut f,
            &tmp_path,
            opts.threads,
            &PartProgress(progress),
        )?;
        written.push((i, path, target, w));
    }
    progress.finish();

    // Sidecars are prepared before anything is renamed so that a failure leaves nothing.
    let mut sidecar = None;
    if let (SplitMode::Shard(s), Some(plan_sha256)) = (mode, digest) {
        let (i, path, _, w) = &written[0];
        let sha256 = w
            .sha256
            .ok_or_else(|| ConvertError::Options("the part was not hashed".into()))?;
        let doc = Sidecar {
            format: SIDECAR_FORMAT.into(),
            share: s.index,
            shares: s.count,
            plan_sha256,
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256,
            bytes: w.bytes_out,
            tensors_total: total,
            tensors: plan.tensors[ranges[*i].clone()]
                .iter()
                .map(|t| t.name.clone())
                .collect(),
        };
        let sc_path = sidecar_path(path);
        let target = Target::new(&sc_path, false)?;
        if let Target::File { tmp, .. } = &target {
            let mut text = serde_json::to_string_pretty(&doc)
                .map_err(|e| ConvertError::Options(format!("cannot encode the sidecar: {e}")))?;
            text.push('\n');
            std::fs::write(tmp.path(), text).map_err(|e| ConvertError::write(tmp.path(), e))?;
        }
        sidecar = Some((
            target,
            ShardSummary {
                share: s.index,
                shares: s.count,
                plan_sha256,
                sha256,
                sidecar: sc_path,
            },
        ));
    }
    let mut committed: Vec<PathBuf> = Vec::new();
    let mut parts = Vec::new();
    let mut written_all = exec::Written::default();
    let mut tensors = Vec::new();
    for (i, path, target, w) in written {
        if let Err(e) = target.commit() {
            for p in &committed {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        committed.push(path.clone());
        parts.push(PartSummary {
            path,
            tensors: ranges[i].len() as u64,
            bytes: w.bytes_out,
        });
        written_all.bytes_in += w.bytes_in;
        written_all.bytes_out += w.bytes_out;
        written_all.tensor_bytes += w.tensor_bytes;
        tensors.extend(plan.tensors[ranges[i].clone()].iter().cloned());
    }
    let shard = match sidecar {
        Some((target, s)) => {
            if let Err(e) = target.commit() {
                for p in &committed {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
            Some(s)
        }
        None => None,
    };
    let mut summary = super::summarise(
        src,
        source_format,
        out,
        OutputFormat::Gguf,
        &plan,
        &tensors,
        &written_all,
        started,
        opts,
    );
    summary.parts = parts;
    summary.shard = shard;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_gguf_split() {
        assert_eq!(parse_size("500M").unwrap(), 500_000_000);
        assert_eq!(parse_size("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        for bad in ["", "0", "M", "1.5G", "-1M", "9999999999999T", "2X"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_parse() {
        assert_eq!(Shard::parse("2/3").unwrap(), Shard { index: 2, count: 3 });
        for bad in ["0/3", "4/3", "3", "a/b", "1/70000"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_cut_like_gguf_split() {
        let s = [10, 10, 10, 25, 5];
        assert_eq!(by_limit(&s, Some(20), None), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(by_limit(&s, None, Some(2)), vec![0..2, 2..4, 4..5]);
        assert_eq!(by_limit(&s, Some(1000), None), vec![0..5]);
        assert_eq!(by_limit(&[], Some(1), None), vec![0..0]);
    }

    #[test]
    fn balanced_cuts_are_contiguous_nonempty_and_even() {
        let s = [100, 1, 1, 1, 50, 50, 1, 100];
        let r = balanced(&s, 3);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].start, 0);
        assert_eq!(r[2].end, s.len());
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
        assert!(r.iter().all(|x| !x.is_empty()));
        let sums: Vec<u64> = r.iter().map(|x| s[x.clone()].iter().sum()).collect();
        assert_eq!(sums, vec![101, 102, 101]);
        assert_eq!(balanced(&[1, 1, 1], 3), vec![0..1, 1..2, 2..3]);
        assert_eq!(balanced(&[0, 0, 0, 0], 2).len(), 2);
    }

    #[test]
    fn sidecar_paths() {
        assert_eq!(
            sidecar_path(Path::new("d/m-00002-of-00003.gguf")),
            Path::new("d/m-00002-of-00003.shard.json")
        );
    }
}
