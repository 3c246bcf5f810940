//! Importance matrices (imatrix files): llama.cpp's current GGUF format, read and written,
//! and its legacy `.dat` format, read.
//!
//! An importance matrix holds, for every weight matrix of a model, the sum over calibration
//! tokens of each input column's squared activation (`in_sum2`) and how many tokens were
//! summed (`counts`). The quantizers weight each column's rounding error by
//! `in_sum2 / counts`, which is what [`Entry::importance`] returns, computed exactly as
//! `llama-quantize` computes it when it loads the file (one `f32` division per value).
//!
//! GGUF layout (as `llama-imatrix` writes it): `general.type = "imatrix"`,
//! `imatrix.datasets` (array of strings), `imatrix.chunk_count` and `imatrix.chunk_size`
//! (u32); then, for every tensor in byte order of its name, an F32 tensor
//! `<name>.in_sum2` of shape `[n_mat, n_cols]` (GGUF `ne = {n_cols, n_mat}`) and an F32
//! tensor `<name>.counts` of shape `[n_mat, 1]`. `n_mat` is 1 for a dense matrix and the
//! number of experts for a stacked MoE matrix, whose counts are per expert. Counts are
//! token counts stored as floats and read back rounded to integers (`lround`).
//!
//! Legacy `.dat` layout (little-endian): `i32 n_entries`, then per entry `i32 name_len`,
//! the name, `i32 ncall`, `i32 nval`, `nval` f32 values already divided by the token count
//! and multiplied by `ncall`; then optionally `i32 chunk_count`, `i32 len` and a dataset
//! name. The importance is `value / ncall`.
//!
//! Hostile input: the file is capped at [`MAX_FILE_BYTES`], every count is bounded by the
//! bytes left before anything is allocated, and NaN, infinite or negative sums, and counts
//! that are negative, not finite or all zero, are errors naming the tensor. One deviation
//! from llama.cpp is deliberate: it reads a zero-count tensor as "importance 1 everywhere";
//! here a tensor with no data at all is refused, while a stacked MoE tensor whose *some*
//! experts saw no token keeps llama.cpp's 1.0 for those experts (llama-imatrix writes such
//! partial entries routinely).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::gguf::{self, GgufWriteError, GgufWriter, Meta, MetaValue, TensorDesc, ValueType};
use super::{DType, FormatError, GgmlType};

/// The largest imatrix file read: 4 GiB (a 400B-parameter MoE model's per-expert imatrix
/// is well under 1 GiB).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// The most entries (tensors) a file may hold.
pub const MAX_ENTRIES: u64 = 1 << 20;
/// The longest tensor name.
const MAX_NAME: usize = 1 << 16;

pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUFFIX_SUMS: &str = ".in_sum2";
const SUFFIX_COUNTS: &str = ".counts";

/// Which of the two file formats an [`Imatrix`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImatrixFormat {
    Gguf,
    LegacyDat,
}

/// One weight matrix's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Input columns (the weight's row length).
    pub columns: usize,
    /// Sums of squared activations, `counts.len()` slices of `columns` values (one per
    /// expert). For a legacy file these are llama.cpp's pre-scaled values.
    pub sums: Vec<f32>,
    /// Tokens summed per slice (for a legacy file, one value: `ncall`).
    pub counts: Vec<u64>,
}

impl Entry {
    /// Number of slices (experts; 1 for a dense matrix).
    pub fn slices(&self) -> usize {
        self.counts.len()
    }

    /// The per-column importance `llama-quantize` feeds the quantizers: `sum / count` for
    /// each slice, slices concatenated (expert `e`'s columns at `e * columns..`). A slice
    /// with a zero count (an expert no token reached) gets 1.0 everywhere, as in llama.cpp.
    pub fn importance(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.sums.len());
        for (slice, &count) in self.sums.chunks(self.columns.max(1)).zip(&self.counts) {
            if count == 0 {
                out.extend(std::iter::repeat_n(1.0f32, slice.len()));
            } else {
                // llama.cpp converts the integer count to float and divides in f32.
                let c = count as f32;
                out.extend(slice.iter().map(|s| s / c));
            }
        }
        out
    }
}

/// An importance matrix: entries by tensor name (sorted), and the calibration metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Imatrix {
    pub format: ImatrixFormat,
    pub entries: BTreeMap<String, Entry>,
    /// Calibration text names (`imatrix.datasets`; the legacy file's trailing name).
    pub datasets: Vec<String>,
    /// Chunks of calibration text processed.
    pub chunk_count: u32,
    /// Tokens per chunk (0 in a legacy file, which does not record it).
    pub chunk_size: u32,
}

impl Imatrix {
    /// The per-column importance of tensor `name` (see [`Entry::importance`]), or `None`
    /// when the file has no entry for it.
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        Some(match self.format {
            ImatrixFormat::Gguf => e.importance(),
            ImatrixFormat::LegacyDat => {
                // llama-quantize divides by ncall as `float / int64_t`, i.e. in f32.
                let ncall = e.counts.first().copied().unwrap_or(0);
                let c = ncall as f32;
                e.sums.iter().map(|s| s / c).collect()
            }
        })
    }

    /// Read an imatrix file: GGUF when it starts with the GGUF magic, else legacy `.dat`.
    pub fn read(path: &Path) -> Result<Imatrix, FormatError> {
        let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(FormatError::malformed(
                path,
                format!(
                    "{} bytes is more than an imatrix file may hold ({MAX_FILE_BYTES})",
                    meta.len()
                ),
            ));
        }
        let map = super::Mapped::open(path)?;
        Self::parse_bytes(path, map.bytes())
    }

    /// Parse a whole imatrix file held in memory; `path` only names it in messages.
    pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Imatrix, FormatError> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(FormatError::malformed(
                path,
                "the imatrix file is too large",
            ));
        }
        if bytes.starts_with(b"GGUF") {
            parse_gguf(path, bytes)
        } else {
            parse_legacy(path, bytes)
        }
    }

    /// The file in llama.cpp's GGUF imatrix format, laid out as `llama-imatrix` lays it out.
    /// A legacy entry is written with its stored values as sums and `ncall` as its count,
    /// which gives the same importance (its raw token counts are not in the legacy file).
    pub fn to_gguf_bytes(&self) -> Result<Vec<u8>, GgufWriteError> {
        let mut out = Vec::new();
        self.write_gguf(&mut out)?;
        Ok(out)
    }

    /// Write the GGUF form to `out` (see [`Imatrix::to_gguf_bytes`]).
    pub fn write_gguf<W: Write>(&self, out: W) -> Result<(), GgufWriteError> {
        let metadata = vec![
            (
                "general.type".to_owned(),
                MetaValue::String("imatrix".into()),
            ),
            (
                KEY_DATASETS.to_owned(),
                MetaValue::Array {
                    elem: ValueType::String,
                    items: self
                        .datasets
                        .iter()
                        .map(|d| MetaValue::String(d.clone()))
                        .collect(),
                },
            ),
            (KEY_CHUNK_COUNT.to_owned(), MetaValue::U32(self.chunk_count)),
            (KEY_CHUNK_SIZE.to_owned(), MetaValue::U32(self.chunk_size)),
        ];
        let mut descs = Vec::new();
        for (name, e) in &self.entries {
            if e.sums.len() != e.columns * e.slices() || e.slices() == 0 {
                return Err(GgufWriteError::Invalid(format!(
                    "imatrix entry `{name}` has {} sums for {} slices of {} columns",
                    e.sums.len(),
                    e.slices(),
                    e.columns
                )));
            }
            descs.push(TensorDesc {
                name: format!("{name}{SUFFIX_SUMS}"),
                ggml_type: GgmlType::F32,
                shape: vec![e.slices() as u64, e.columns as u64],
            });
            descs.push(TensorDesc {
                name: format!("{name}{SUFFIX_COUNTS}"),
                ggml_type: GgmlType::F32,
                shape: vec![e.slices() as u64, 1],
            });
        }
        let mut w = GgufWriter::new(out, &metadata, &descs)?;
        for (name, e) in &self.entries {
            let sums: Vec<u8> = e.sums.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_tensor(&format!("{name}{SUFFIX_SUMS}"), &sums)?;
            // llama-imatrix stores the integer token counts as floats.
            let counts: Vec<u8> = e
                .counts
                .iter()
                .flat_map(|&c| (c as f32).to_le_bytes())
                .collect();
            w.write_tensor(&format!("{name}{SUFFIX_COUNTS}"), &counts)?;
        }
        w.finish()?;
        Ok(())
    }

    /// Write the GGUF form to `path` through a temporary file and a rename.
    pub fn write_file(&self, path: &Path) -> Result<(), FormatError> {
        let bytes = self
            .to_gguf_bytes()
            .map_err(|e| FormatError::malformed(path, e.to_string()))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".imatrix.")
            .suffix(".tmp")
            .tempfile_in(parent)
            .map_err(|e| FormatError::io(path, e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| FormatError::io(path, e))?;
        tmp.persist(path)
            .map_err(|e| FormatError::io(path, e.error))?;
        Ok(())
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Sums must be finite and non-negative: they are sums of squares.
fn check_sums(path: &Path, name: &str, sums: &[f32]) -> Result<(), FormatError> {
    if let Some((i, v)) = sums
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || **v < 0.0)
    {
        return Err(FormatError::malformed(
            path,
            format!("imatrix entry `{name}`: sum {i} is {v}; sums of squares must be finite and non-negative"),
        ));
    }
    Ok(())
}

fn parse_gguf(path: &Path, bytes: &[u8]) -> Result<Imatrix, FormatError> {
    let parsed = gguf::parse_bytes(path, bytes)?;
    let meta = Meta::new(&parsed.metadata);
    let bad_meta = |e: gguf::MetaError| FormatError::malformed(path, e.to_string());
    if let Some(t) = meta.str("general.type").map_err(bad_meta)? {
        if t != "imatrix" {
            return Err(FormatError::NotACheckpoint {
                path: path.to_owned(),
                why: format!("a GGUF file of `general.type` `{t}`, not an imatrix"),
            });
        }
    }
    // llama-quantize refuses a GGUF imatrix without these three keys.
    let datasets = meta
        .strings(KEY_DATASETS)
        .map_err(bad_meta)?
        .ok_or_else(|| FormatError::malformed(path, format!("no `{KEY_DATASETS}` key")))?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let u32_key = |key: &str| -> Result<u32, FormatError> {
        let v = meta
            .u64(key)
            .map_err(bad_meta)?
            .ok_or_else(|| FormatError::malformed(path, format!("no `{key}` key")))?;
        u32::try_from(v)
            .map_err(|_| FormatError::malformed(path, format!("`{key}` {v} is out of range")))
    };
    let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
    let chunk_size = u32_key(KEY_CHUNK_SIZE)?;

    let mut pairs: BTreeMap<String, (Option<usize>, Option<usize>)> = BTreeMap::new();
    for (i, t) in parsed.tensors.iter().enumerate() {
        let name = t.name.as_str();
        if let Some(base) = name.strip_suffix(SUFFIX_SUMS) {
            pairs.entry(base.to_owned()).or_default().0 = Some(i);
        } else if let Some(base) = name.strip_suffix(SUFFIX_COUNTS) {
            pairs.entry(base.to_owned()).or_default().1 = Some(i);
        }
    }
    if pairs.is_empty() {
        return Err(FormatError::malformed(path, "the imatrix holds no entries"));
    }
    let mut entries = BTreeMap::new();
    for (name, pair) in pairs {
        let (Some(si), Some(ci)) = pair else {
            return Err(FormatError::malformed(
                path,
                format!("imatrix entry `{name}` has no matching `.in_sum2` and `.counts` pair"),
            ));
        };
        let (s, c) = (&parsed.tensors[si], &parsed.tensors[ci]);
        if s.dtype != DType::F32 || c.dtype != DType::F32 {
            return Err(FormatError::malformed(
                path,
                format!("imatrix entry `{name}`: sums and counts must be F32"),
            ));
        }
        let slice = |t: &super::TensorInfo| -> Result<&[u8], FormatError> {
            let start = usize::try_from(t.offset).ok();
            let end = start.and_then(|s| s.checked_add(usize::try_from(t.len).ok()?));
            match (start, end) {
                (Some(a), Some(b)) if b <= bytes.len() => Ok(&bytes[a..b]),
                _ => Err(FormatError::malformed(
                    path,
                    format!("tensor `{}` lies outside the file", t.name),
                )),
            }
        };
        let sums = f32s(slice(s)?);
        let raw_counts = f32s(slice(c)?);
        let n_mat = raw_counts.len();
        if n_mat == 0 || sums.is_empty() || !sums.len().is_multiple_of(n_mat) {
            return Err(FormatError::malformed(
                path,
                format!(
                    "imatrix entry `{name}`: {} sums do not divide into {n_mat} count slices",
                    sums.len()
                ),
            ));
        }
        check_sums(path, &name, &sums)?;
        let mut counts = Vec::with_capacity(n_mat);
        for (i, &v) in raw_counts.iter().enumerate() {
            // Counts beyond 2^53 are not token counts anyone has.
            if !(0.0..=9.0e15).contains(&v) {
                return Err(FormatError::malformed(
                    path,
                    format!("imatrix entry `{name}`: count {i} is {v}"),
                ));
            }
            // lround: half away from zero.
            counts.push(v.round() as u64);
        }
        if counts.iter().all(|&c| c == 0) {
            return Err(FormatError::malformed(
                path,
                format!(
                    "imatrix entry `{name}` has a count of zero: no calibration token reached it"
                ),
            ));
        }
        entries.insert(
            name,
            Entry {
                columns: sums.len() / n_mat,
                sums,
                counts,
            },
        );
    }
    Ok(Imatrix {
        format: ImatrixFormat::Gguf,
        entries,
        datasets,
        chunk_count,
        chunk_size,
    })
}

/// A cursor over a legacy `.dat` file.
struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], FormatError> {
        if n > self.left() {
            return Err(FormatError::malformed(
                self.path,
                format!(
                    "{what} needs {n} bytes at byte {}, the file has {} left",
                    self.pos,
                    self.left()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32, FormatError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn parse_legacy(path: &Path, bytes: &[u8]) -> Result<Imatrix, FormatError> {
    let mut r = Cursor {
        path,
        buf: bytes,
        pos: 0,
    };
    let n = r.i32("the entry count")?;
    // Each entry takes at least 16 bytes (name length, a 1-byte name, ncall, nval, a value).
    if n < 1 || n as u64 > MAX_ENTRIES || n as u64 * 17 > bytes.len() as u64 {
        return Err(FormatError::NotACheckpoint {
            path: path.to_owned(),
            why: format!("neither a GGUF imatrix nor a legacy `.dat` imatrix (entry count {n})"),
        });
    }
    let mut entries = BTreeMap::new();
    for k in 0..n {
        let len = r.i32("an entry name length")?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_NAME)
            .ok_or_else(|| FormatError::malformed(path, format!("entry {k}: name length {len}")))?;
        let raw = r.take(len, "an entry name")?;
        // llama.cpp reads the name as a C string: it ends at the first NUL.
        let raw = raw.split(|b| *b == 0).next().unwrap_or(raw);
        let name = String::from_utf8(raw.to_vec()).map_err(|_| {
            FormatError::malformed(path, format!("entry {k}: the name is not UTF-8"))
        })?;
        let ncall = r.i32("a call count")?;
        let nval = r.i32("a value count")?;
        let nval = usize::try_from(nval)
            .ok()
            .filter(|v| *v >= 1 && v.checked_mul(4).is_some_and(|b| b <= r.left()))
            .ok_or_else(|| {
                FormatError::malformed(
                    path,
                    format!("imatrix entry `{name}`: {nval} values do not fit in the file"),
                )
            })?;
        let sums = f32s(r.take(nval * 4, "entry values")?);
        check_sums(path, &name, &sums)?;
        if ncall < 1 {
            return Err(FormatError::malformed(
                path,
                format!("imatrix entry `{name}` has a count of {ncall}"),
            ));
        }
        // A later duplicate replaces an earlier one, as in llama.cpp's map.
        entries.insert(
            name,
            Entry {
                columns: nval,
                sums,
                counts: vec![ncall as u64],
            },
        );
    }
    let mut chunk_count = 0;
    let mut datasets = Vec::new();
    if r.left() >= 4 {
        chunk_count = u32::try_from(r.i32("the chunk count")?).unwrap_or(0);
        if r.left() >= 4 {
            let len = r.i32("the dataset name length")?;
            if let Ok(len) = usize::try_from(len) {
                if len > 0 && len <= r.left() {
                    let raw = r.take(len, "the dataset name")?;
                    let raw = raw.split(|b| *b == 0).next().unwrap_or(raw);
                    datasets.push(String::from_utf8_lossy(raw).into_owned());
                }
            }
        }
    }
    Ok(Imatrix {
        format: ImatrixFormat::LegacyDat,
        entries,
        datasets,
        chunk_count,
        chunk_size: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut entries = BTreeMap::new();
        entries.insert(
            "blk.0.attn_q.weight".to_owned(),
            Entry {
                columns: 4,
                sums: vec![1.0, 2.0, 0.0, 8.5],
                counts: vec![512],
            },
        );
        entries.insert(
            "blk.0.ffn_down_exps.weight".to_owned(),
            Entry {
                columns: 2,
                sums: vec![3.0, 6.0, 0.0, 0.0, 1.0, 1.5],
                counts: vec![3, 0, 2],
            },
        );
        Imatrix {
            format: ImatrixFormat::Gguf,
            entries,
            datasets: vec!["eval.txt".into()],
            chunk_count: 2,
            chunk_size: 256,
        }
    }

    #[test]
    fn gguf_round_trips_and_derives_importance() {
        let m = sample();
        let bytes = m.to_gguf_bytes().unwrap();
        let back = Imatrix::parse_bytes(Path::new("m.gguf"), &bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            back.importance("blk.0.attn_q.weight").unwrap(),
            [1.0 / 512.0, 2.0 / 512.0, 0.0, 8.5 / 512.0]
        );
        // Expert 1 saw no token: 1.0, as llama-quantize fills it.
        assert_eq!(
            back.importance("blk.0.ffn_down_exps.weight").unwrap(),
            [1.0, 2.0, 1.0, 1.0, 0.5, 0.75]
        );
        assert!(back.importance("nope").is_none());
    }

    fn legacy(entries: &[(&str, i32, &[f32])], tail: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((entries.len() as i32).to_le_bytes());
        for (name, ncall, vals) in entries {
            b.extend((name.len() as i32).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(ncall.to_le_bytes());
            b.extend((vals.len() as i32).to_le_bytes());
            for v in *vals {
                b.extend(v.to_le_bytes());
            }
        }
        if let Some((chunks, ds)) = tail {
            b.extend(chunks.to_le_bytes());
            b.extend((ds.len() as i32).to_le_bytes());
            b.extend(ds.as_bytes());
        }
        b
    }

    #[test]
    fn legacy_dat_is_read() {
        let b = legacy(
            &[("output.weight", 4, &[4.0, 2.0, 1.0]), ("a", 1, &[0.5])],
            Some((10, "calib.txt")),
        );
        let m = Imatrix::parse_bytes(Path::new("x.dat"), &b).unwrap();
        assert_eq!(m.format, ImatrixFormat::LegacyDat);
        assert_eq!(m.chunk_count, 10);
        assert_eq!(m.datasets, ["calib.txt"]);
        assert_eq!(m.importance("output.weight").unwrap(), [1.0, 0.5, 0.25]);
        let short = legacy(&[("a", 1, &[0.5])], None);
        let m = Imatrix::parse_bytes(Path::new("x.dat"), &short).unwrap();
        assert_eq!(m.chunk_count, 0);
        assert!(m.datasets.is_empty());
    }

    #[test]
    fn hostile_values_name_the_tensor() {
        for (vals, ncall, want) in [
            (&[f32::NAN][..], 1, "sum 0 is NaN"),
            (&[-1.0][..], 1, "sum 0 is -1"),
            (&[1.0][..], 0, "has a count of 0"),
        ] {
            let b = legacy(&[("t.weight", ncall, vals)], None);
            let e = Imatrix::parse_bytes(Path::new("x.dat"), &b)
                .unwrap_err()
                .to_string();
            assert!(e.contains("`t.weight`") && e.contains(want), "{e}");
        }
        let mut m = sample();
        m.entries.get_mut("blk.0.attn_q.weight").unwrap().counts = vec![0];
        let e = Imatrix::parse_bytes(Path::new("m.gguf"), &m.to_gguf_bytes().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`blk.0.attn_q.weight` has a count of zero"),
            "{e}"
        );
        let mut m = sample();
        m.entries.get_mut("blk.0.attn_q.weight").unwrap().sums[2] = f32::INFINITY;
        let e = Imatrix::parse_bytes(Path::new("m.gguf"), &m.to_gguf_bytes().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sum 2 is inf"), "{e}");
        // Lying counts and truncations are errors, never panics.
        for b in [
            vec![],
            vec![1, 0, 0],
            legacy(&[("x", 1, &[1.0])], None)[..14].to_vec(),
            [i32::MAX.to_le_bytes(), 0i32.to_le_bytes()].concat(),
        ] {
            assert!(Imatrix::parse_bytes(Path::new("x"), &b).is_err());
        }
    }
}
