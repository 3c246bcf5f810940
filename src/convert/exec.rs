//! Running a plan: tensors are cut into chunks of rows, chunks are converted on a rayon pool,
//! and the results are written in order to a temporary file in the output's folder, which is
//! renamed into place only when everything is written.
//!
//! Memory stays bounded whatever the model size. At most a fixed number of chunks (a few
//! per thread, about a million values each) is in flight or waiting to be written. Input is
//! memory-mapped, and mapped pages count towards the process's resident memory once read;
//! the formats layer offers no way to let go of pages, so the plan is run in segments of a
//! few hundred megabytes of input and the checkpoint is re-opened (re-mapped) for each
//! segment, which releases the previous segment's pages. Re-opening reads headers only, and
//! the tensor table must come back identical.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::arch::RowMap;
use super::error::ConvertError;
use super::plan::{Plan, Planned, Source};
use super::{elem, OutputFormat, Progress};
use crate::formats::gguf::{GgufWriter, TensorDesc};
use crate::formats::safetensors::{self, TensorSpec};
use crate::formats::{Checkpoint, DType, MetaValue, Weights};
use crate::types::Sha256Digest;
use sha2::{Digest, Sha256};

/// Values per chunk: big enough to amortise scheduling, small enough that a few per thread
/// stay in a few tens of megabytes.
const CHUNK_VALUES: u64 = 1 << 20;
/// Input bytes per segment (see the module documentation).
const SEGMENT_BYTES: u64 = 256 << 20;

/// What running the plan measured.
#[derive(Debug, Default)]
pub struct Written {
    /// SHA-256 of the bytes written, when [`Part::hash`] asked for it.
    pub sha256: Option<crate::types::Sha256Digest>,
    /// Bytes of tensor data read from the checkpoint.
    pub bytes_in: u64,
    /// Size of everything written (the file, or the directory's files).
    pub bytes_out: u64,
    /// Bytes of tensor data written.
    pub tensor_bytes: u64,
}

/// Per-tensor importance (an imatrix entry, expert slices concatenated), by tensor name.
pub type Importance = BTreeMap<String, Vec<f32>>;

struct Chunk {
    tensor: usize,
    row0: u64,
    row1: u64,
}

enum ChunkOut {
    Owned(Vec<u8>),
    /// Bytes to copy unchanged from the source tensor: (offset, length) in its data.
    Copy(usize, usize),
}

/// Rows of one matrix of `t`: a 3-D tensor stacks matrices (experts, or MLA heads) of
/// `shape[len - 2]` rows each; anything else is one matrix.
fn rows_per_slice(t: &Planned) -> u64 {
    let n = t.shape.len();
    if n >= 3 {
        t.shape[n - 2].max(1)
    } else {
        t.n_rows().max(1)
    }
}

/// Cut tensor `ti` into chunks of rows. A chunk never crosses from one expert's matrix to
/// the next, as in llama-quantize: each slice is quantized on its own, so that anything
/// that differs per expert (an importance matrix has one row of weights per expert) applies
/// to whole chunks.
fn chunk_rows(t: &Planned, ti: usize, chunks: &mut Vec<Chunk>) {
    let rows = t.n_rows();
    let per_slice = rows_per_slice(t);
    let per = (CHUNK_VALUES / t.row_len().max(1)).max(1);
    let mut r = 0;
    while r < rows {
        let slice_end = (r / per_slice + 1).saturating_mul(per_slice);
        let r1 = (r + per).min(rows).min(slice_end);
        chunks.push(Chunk {
            tensor: ti,
            row0: r,
            row1: r1,
        });
        r = r1;
    }
}

/// Whether a tensor's bytes go through unchanged.
fn is_copy(t: &Planned) -> bool {
    t.rows == RowMap::Identity
        && t.shift == 0.0
        && matches!(t.source, Source::Tensor(_))
        && t.src_dtype == DType::from_ggml(t.ty)
}

fn convert_chunk(
    t: &Planned,
    importance: Option<&[f32]>,
    weights: &Weights,
    c: &Chunk,
) -> Result<ChunkOut, ConvertError> {
    let row_len = t.row_len();
    let kernel = |fault: String| ConvertError::Kernel {
        tensor: t.name.clone(),
        fault,
    };
    let values = ((c.row1 - c.row0) * row_len) as usize;
    let mut f = vec![0f32; values];
    match &t.source {
        Source::Values(v) => {
            let start = (c.row0 * row_len) as usize;
            f.copy_from_slice(
                v.get(start..start + values)
                    .ok_or_else(|| kernel("computed values too short".into()))?,
            );
        }
        Source::Gather(g) => {
            if let Some(raw) = g
                .raw_rows(&t.name, weights, c.row0, c.row1)
                .map_err(kernel)?
            {
                return Ok(ChunkOut::Owned(raw));
            }
            g.fill(weights, c.row0, c.row1, row_len, &mut f)
                .map_err(kernel)?;
        }
        Source::Tensor(i) => {
            let info = weights
                .tensors
                .get(*i)
                .ok_or_else(|| kernel("source tensor vanished".into()))?;
            let data = weights.tensor_data(info)?;
            let row_bytes = info.dtype.bytes_for(row_len).ok_or_else(|| {
                kernel(format!(
                    "a row of {row_len} values is not whole {} blocks",
                    info.dtype
                ))
            })? as usize;
            if is_copy(t) {
                let start = c.row0 as usize * row_bytes;
                return Ok(ChunkOut::Copy(
                    start,
                    (c.row1 - c.row0) as usize * row_bytes,
                ));
            }
            for (k, r) in (c.row0..c.row1).enumerate() {
                let s = t.rows.source_row(r) as usize * row_bytes;
                let src = data
                    .get(s..s + row_bytes)
                    .ok_or_else(|| kernel("row lies outside the tensor".into()))?;
                let dst = &mut f[k * row_len as usize..(k + 1) * row_len as usize];
                elem::decode(info.dtype, src, dst).map_err(kernel)?;
            }
            if t.shift != 0.0 {
                shift_values(&mut f, t.shift, info.dtype);
            }
        }
    }
    let mut out = Vec::with_capacity(t.ty.bytes_for(values as u64).unwrap_or(0) as usize);
    match importance {
        None => elem::encode(t.ty, &f, row_len as usize, &mut out).map_err(kernel)?,
        Some(imp) => {
            // A stacked expert tensor has one importance slice per expert: quantize each
            // expert's rows of the chunk with its own slice.
            let per_expert = if t.shape.len() == 3 {
                t.shape[1].max(1)
            } else {
                u64::MAX
            };
            let mut r = c.row0;
            while r < c.row1 {
                let expert = r / per_expert;
                let end = c
                    .row1
                    .min(expert.saturating_add(1).saturating_mul(per_expert));
                let at = (expert * row_len) as usize;
                let slice = imp
                    .get(at..at + row_len as usize)
                    .ok_or_else(|| kernel("the importance is shorter than the tensor".into()))?;
                let vals =
                    &f[((r - c.row0) * row_len) as usize..((end - c.row0) * row_len) as usize];
                elem::encode_weighted(t.ty, vals, row_len as usize, slice, &mut out)
                    .map_err(kernel)?;
                r = end;
            }
        }
    }
    Ok(ChunkOut::Owned(out))
}

/// Add `shift` to every value the way llama.cpp's converter does: torch adds in the
/// tensor's own precision for F16 sources (so the sum is rounded to F16) and in F32 for
/// everything else (BF16 is widened to F32 first).
fn shift_values(f: &mut [f32], shift: f32, src: DType) {
    for v in f.iter_mut() {
        let s = *v + shift;
        *v = if src == DType::F16 {
            half::f16::from_f32(s).to_f32()
        } else {
            s
        };
    }
}

/// Which tensors of the plan one output file holds, and its GGUF metadata: the whole plan
/// for an ordinary conversion, one part of a split set otherwise.
pub struct Part<'p> {
    /// Indices into [`Plan::tensors`].
    pub range: std::ops::Range<usize>,
    /// The GGUF key/values of this file (unused for safetensors).
    pub gguf_meta: &'p [(String, MetaValue)],
    /// Compute the SHA-256 of the file while writing it (shard sidecars record it).
    pub hash: bool,
    /// The importance of the tensors quantized with an imatrix.
    pub importance: &'p Importance,
}

/// The output file, hashing what goes through it when asked; hashing while writing saves
/// reading the part back.
pub struct Out<'a> {
    file: &'a mut File,
    hash: Option<Sha256>,
}

impl Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The format writer the chunks go through (both stream: header first, then each tensor's
/// bytes in order).
enum Sink<'a> {
    Gguf(GgufWriter<Out<'a>>),
    Safetensors(safetensors::Writer<Out<'a>>),
}

impl<'a> Sink<'a> {
    fn new(
        plan: &Plan,
        part: &Part<'_>,
        file: Out<'a>,
        path: &Path,
    ) -> Result<Sink<'a>, ConvertError> {
        let tensors = plan.tensors.get(part.range.clone()).unwrap_or(&[]);
        Ok(match plan.format {
            OutputFormat::Gguf => {
                let descs: Vec<TensorDesc> = tensors
                    .iter()
                    .map(|t| TensorDesc {
                        name: t.name.clone(),
                        ggml_type: t.ty,
                        shape: t.shape.clone(),
                    })
                    .collect();
                Sink::Gguf(
                    GgufWriter::new(file, part.gguf_meta, &descs)
                        .map_err(|e| ConvertError::gguf_output(path, e))?,
                )
            }
            OutputFormat::SafetensorsFile | OutputFormat::HfDir => {
                let specs: Vec<TensorSpec> = tensors
                    .iter()
                    .map(|t| {
                        TensorSpec::new(t.name.clone(), DType::from_ggml(t.ty), t.shape.clone())
                    })
                    .collect();
                let meta: BTreeMap<String, String> = plan.st_meta.iter().cloned().collect();
                Sink::Safetensors(
                    safetensors::Writer::new(file, &specs, &meta)
                        .map_err(|e| ConvertError::safetensors_output(path, e))?,
                )
            }
        })
    }

    fn write(&mut self, name: &str, data: &[u8], path: &Path) -> Result<(), ConvertError> {
        match self {
            Sink::Gguf(w) => w
                .write_tensor_chunk(name, data)
                .map_err(|e| ConvertError::gguf_output(path, e)),
            Sink::Safetensors(w) => w
                .write_chunk(data)
                .map_err(|e| ConvertError::safetensors_output(path, e)),
        }
    }

    fn finish(self, path: &Path) -> Result<Option<Sha256Digest>, ConvertError> {
        let out = match self {
            Sink::Gguf(w) => w.finish().map_err(|e| ConvertError::gguf_output(path, e))?,
            Sink::Safetensors(w) => w
                .finish()
                .map_err(|e| ConvertError::safetensors_output(path, e))?,
        };
        Ok(out.hash.map(|h| Sha256Digest(h.finalize().into())))
    }
}

/// Tensors of `range` grouped so that each group reads at most about [`SEGMENT_BYTES`] of
/// input.
fn segments(
    plan: &Plan,
    range: std::ops::Range<usize>,
    ckpt: &Checkpoint,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = range.start;
    let mut acc = 0u64;
    for (i, t) in plan
        .tensors
        .iter()
        .enumerate()
        .take(range.end)
        .skip(range.start)
    {
        let b = match t.source {
            Source::Tensor(k) => ckpt.weights.tensors.get(k).map(|x| x.len).unwrap_or(0),
            Source::Values(_) => 0,
            Source::Gather(ref g) => g.input_bytes(&ckpt.weights.tensors),
        };
        if acc > 0 && acc + b > SEGMENT_BYTES {
            out.push(start..i);
            start = i;
            acc = 0;
        }
        acc += b;
    }
    if start < range.end || out.is_empty() {
        out.push(start..range.end);
    }
    out
}

/// Write the plan's tensors to `file` (header first). `first` is the checkpoint the plan
/// was made from; later segments re-open `src`.
#[allow(clippy::too_many_arguments)] // two call sites; a struct would only rename them
pub fn write_tensors(
    plan: &Plan,
    importance: &Importance,
    first: Checkpoint,
    src: &Path,
    file: &mut File,
    file_path: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Written, ConvertError> {
    let part = Part {
        range: 0..plan.tensors.len(),
        gguf_meta: &plan.gguf_meta,
        hash: false,
        importance,
    };
    write_part(plan, &part, first, src, file, file_path, threads, progress)
}

/// Write one part of the plan to `file`: the tensors of `part.range` under `part.gguf_meta`.
/// `first` is a checkpoint whose tensor table is the one the plan was made from; later
/// segments re-open `src`.
#[allow(clippy::too_many_arguments)] // one call site each; a struct would only rename them
pub fn write_part(
    plan: &Plan,
    part: &Part<'_>,
    first: Checkpoint,
    src: &Path,
    file: &mut File,
    file_path: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Written, ConvertError> {
    if part.range.end > plan.tensors.len() || part.range.start > part.range.end {
        return Err(ConvertError::Options(format!(
            "part {}..{} lies outside the plan's {} tensors",
            part.range.start,
            part.range.end,
            plan.tensors.len()
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| {
            ConvertError::Options(format!("cannot start {threads} worker threads: {e}"))
        })?;
    let out = Out {
        file,
        hash: part.hash.then(Sha256::new),
    };
    let mut sink = Sink::new(plan, part, out, file_path)?;
    let total_in: u64 = plan.tensors[part.range.clone()]
        .iter()
        .map(|t| match t.source {
            Source::Tensor(k) => first.weights.tensors.get(k).map(|x| x.len).unwrap_or(0),
            Source::Values(_) => 0,
            Source::Gather(ref g) => g.input_bytes(&first.weights.tensors),
        })
        .sum();
    progress.start(total_in);
    let segs = segments(plan, part.range.clone(), &first);
    let table = first.weights.tensors.clone();
    let mut current = Some(first);
    let in_flight = (threads.max(1) * 4).max(4);
    let mut bytes_in = 0u64;
    for (si, seg) in segs.iter().enumerate() {
        let ckpt = match current.take() {
            Some(c) if si == 0 => c,
            previous => {
                // Drop (unmap) the previous segment's checkpoint before mapping again.
                drop(previous);
                let c = Checkpoint::open(src)?;
                if c.weights.tensors != table {
                    return Err(ConvertError::Options(format!(
                        "`{}` changed while it was being converted",
                        src.display()
                    )));
                }
                c
            }
        };
        let mut chunks = Vec::new();
        for ti in seg.clone() {
            chunk_rows(&plan.tensors[ti], ti, &mut chunks);
        }
        let weights = &ckpt.weights;
        let failed = AtomicBool::new(false);
        let result: Result<(), ConvertError> = pool.in_place_scope(|scope| {
            let (tx, rx) = mpsc::channel::<(usize, Result<ChunkOut, ConvertError>)>();
            let mut spawned = 0usize;
            let mut written = 0usize;
            let mut pending: BTreeMap<usize, Result<ChunkOut, ConvertError>> = BTreeMap::new();
            let chunks = &chunks;
            let failed = &failed;
            while written < chunks.len() {
                while spawned < chunks.len()
                    && spawned - written < in_flight
                    && !failed.load(Ordering::Relaxed)
                {
                    let i = spawned;
                    let tx = tx.clone();
                    scope.spawn(move |_| {
                        let r = if failed.load(Ordering::Relaxed) {
                            Err(ConvertError::Options("cancelled".into()))
                        } else {
                            let t = &plan.tensors[chunks[i].tensor];
                            let imp = part.importance.get(&t.name).map(Vec::as_slice);
                            convert_chunk(t, imp, weights, &chunks[i])
                        };
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        let _ = tx.send((i, r));
                    });
                    spawned += 1;
                }
                let Ok((i, r)) = rx.recv() else {
                    return Err(ConvertError::Options(
                        "a worker thread stopped without a result".into(),
                    ));
                };
                pending.insert(i, r);
                while let Some(r) = pending.remove(&written) {
                    let c = &chunks[written];
                    let t = &plan.tensors[c.tensor];
                    match r? {
                        ChunkOut::Owned(b) => sink.write(&t.name, &b, file_path)?,
                        ChunkOut::Copy(off, len) => {
                            let Source::Tensor(k) = t.source else {
                                return Err(ConvertError::Options(
                                    "copy from a computed tensor".into(),
                                ));
                            };
                            let info = &weights.tensors[k];
                            let data = weights.tensor_data(info)?;
                            sink.write(&t.name, &data[off..off + len], file_path)?;
                        }
                    }
                    let in_bytes = match t.source {
                        Source::Tensor(k) => {
                            let info = &weights.tensors[k];
                            info.len * (c.row1 - c.row0) / t.n_rows().max(1)
                        }
                        Source::Values(_) => 0,
                        Source::Gather(ref g) => {
                            g.input_bytes(&weights.tensors) * (c.row1 - c.row0) / t.n_rows().max(1)
                        }
                    };
                    bytes_in += in_bytes;
                    progress.advance(in_bytes);
                    written += 1;
                }
            }
            Ok(())
        });
        result?;
        current = Some(ckpt);
    }
    drop(current);
    let sha256 = sink.finish(file_path)?;
    let bytes_out = std::fs::metadata(file_path)
        .map_err(|e| ConvertError::write(file_path, e))?
        .len();
    progress.finish();
    Ok(Written {
        sha256,
        bytes_in,
        bytes_out,
        tensor_bytes: plan.tensors[part.range.clone()]
            .iter()
            .map(|t| t.bytes)
            .sum(),
    })
}

/// Where a conversion writes, and how it becomes visible.
pub enum Target {
    /// A single file, renamed into place.
    File {
        out: PathBuf,
        tmp: tempfile::NamedTempFile,
    },
    /// A directory, renamed into place.
    Dir {
        out: PathBuf,
        tmp: tempfile::TempDir,
    },
}

/// Remove what an interrupted run (`kill -9`, power loss) left beside the same output:
/// entries of `dir` named `{prefix}XXXXXX.partial`, where `XXXXXX` is the random part
/// tempfile adds (letters and digits, nothing else). Temporary files of other outputs have
/// another prefix and are left alone. Two conversions writing the same OUT at once are not
/// supported (the later rename would win anyway), so a fresh partial of the same output is
/// taken to be stale. Failures are ignored: this is tidying, not part of the conversion.
fn remove_stale_partials(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let random = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".partial"));
        let Some(random) = random else { continue };
        if random.is_empty() || !random.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let path = entry.path();
        // `file_type` does not follow symlinks: a link is removed, never its target.
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => continue,
        };
    }
}

impl Target {
    /// Prepare a temporary file or directory beside `out`, after removing those a killed
    /// run left for the same `out`. Refuses to replace a non-empty directory.
    pub fn new(out: &Path, dir: bool) -> Result<Target, ConvertError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        if out.is_dir() {
            let empty = std::fs::read_dir(out)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !dir || !empty {
                return Err(ConvertError::Options(format!(
                    "`{}` is an existing directory{}; choose another OUT or remove it",
                    out.display(),
                    if dir { " with files in it" } else { "" }
                )));
            }
        }
        let prefix = format!(".{stem}.");
        remove_stale_partials(&parent, &prefix);
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).suffix(".partial");
        Ok(if dir {
            Target::Dir {
                out: out.to_path_buf(),
                tmp: b
                    .tempdir_in(&parent)
                    .map_err(|e| ConvertError::write(&parent, e))?,
            }
        } else {
            Target::File {
                out: out.to_path_buf(),
                tmp: b
                    .tempfile_in(&parent)
                    .map_err(|e| ConvertError::write(&parent, e))?,
            }
        })
    }

    /// Move the finished output into place.
    pub fn commit(self) -> Result<(), ConvertError> {
        match self {
            Target::File { out, tmp } => {
                // No fsync: the rename makes an interrupted run leave no OUT, which is the
                // promise; surviving power loss would cost seconds per gigabyte (llama.cpp's
                // tools do not sync either).
                tmp.persist(&out)
                    .map_err(|e| ConvertError::write(&out, e.error))?;
            }
            Target::Dir { out, tmp } => {
                if out.is_dir() {
                    // Checked empty when the target was prepared.
                    std::fs::remove_dir(&out).map_err(|e| ConvertError::write(&out, e))?;
                }
                let path = tmp.keep();
                if let Err(e) = std::fs::rename(&path, &out) {
                    let _ = std::fs::remove_dir_all(&path);
                    return Err(ConvertError::write(&out, e));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_never_cross_an_expert_slice() {
        let t = Planned {
            name: "blk.0.ffn_up_exps.weight".into(),
            shape: vec![3, 5000, 256],
            ty: crate::formats::GgmlType::Q8_0,
            source: Source::Values(Vec::new()),
            src_dtype: DType::F32,
            rows: RowMap::Identity,
            shift: 0.0,
            bytes: 0,
        };
        let mut chunks = Vec::new();
        chunk_rows(&t, 0, &mut chunks);
        // 4096 rows of 256 values per chunk, cut at 5000 and 10000.
        let got: Vec<(u64, u64)> = chunks.iter().map(|c| (c.row0, c.row1)).collect();
        assert_eq!(
            got,
            vec![
                (0, 4096),
                (4096, 5000),
                (5000, 9096),
                (9096, 10000),
                (10000, 14096),
                (14096, 15000)
            ]
        );
        let t2 = Planned {
            shape: vec![9000, 256],
            ..t
        };
        let mut chunks = Vec::new();
        chunk_rows(&t2, 0, &mut chunks);
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn stale_partials_of_the_same_output_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".q.gguf.Ab12Cd.partial"), b"half").unwrap();
        std::fs::create_dir(d.join(".q.gguf.Zz9Yy8.partial")).unwrap();
        std::fs::write(d.join(".q.gguf.Zz9Yy8.partial/model.safetensors"), b"x").unwrap();
        let keep = [
            ".other.gguf.Ab12Cd.partial",
            ".q.gguf.notes.txt",
            ".q.gguf.a.b.partial",
            "q.gguf",
        ];
        for k in keep {
            std::fs::write(d.join(k), b"keep").unwrap();
        }
        let t = Target::new(&d.join("q.gguf"), false).unwrap();
        let Target::File { tmp, .. } = &t else {
            panic!("a file target")
        };
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| Some(n.as_str()) != tmp.path().file_name().and_then(|f| f.to_str()))
            .collect();
        names.sort();
        let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names, want);
    }
}
