//! PyTorch checkpoints (`.bin .pt .pth .ckpt`): recognition, the pickles they carry, and a
//! tensor table read without unpickling.
//!
//! Two layouts exist. `torch.save` since 1.6 writes a zip archive: `<name>/data.pkl` (the
//! pickled object, whose tensors refer to storages by persistent id), one stored entry
//! `<name>/data/<key>` per storage, aligned to 64 bytes, and small records (`version`,
//! `byteorder`, `.format_version`, `.data/serialization_id`). Older versions wrote the
//! "legacy" layout: five pickles back to back (magic number, protocol version, system
//! info, the object, the sorted storage keys), then for each key an `i64` element count and
//! the raw storage bytes.
//!
//! [`open`] replays the object pickle with [`super::pickle`] (nothing runs), refuses it
//! unless every global it imports is on the tensor-rebuild allowlist, then walks the
//! symbolic object graph for tensors (`_rebuild_tensor_v2`, `_rebuild_parameter`,
//! `_rebuild_from_type_v2` over `torch.*Storage` persistent ids, in dicts and
//! `OrderedDict`s) and points each at its bytes inside the file, so tensor data is read
//! through the memory map like safetensors. Compressed storage entries and non-contiguous
//! strides are refused as unsupported. [`read_pickles`] gives the scanner every pickle in
//! a file (every `.pkl` entry of any zip, all pickles of a legacy file) with offsets.
//! The zip central directory is read with the `zip` crate over the mapped bytes; entry
//! counts and decompressed pickle sizes are capped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::pickle::{self, Analysis, GlobalClass, Node, NodeId};
use super::{DType, FormatError, Mapped, TensorInfo, WeightFormat, Weights};
use crate::types::TensorName;

/// Zip entries read from one archive. A checkpoint has two per tensor at most.
pub const MAX_ZIP_ENTRIES: usize = 1 << 20;
/// Largest pickle analysed or decompressed (a 70B model's `data.pkl` is a few MiB).
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Pickles read from one non-zip file (a legacy checkpoint has five).
const MAX_STREAM_PICKLES: usize = 64;
/// How deep dicts and lists may nest around the tensors.
const MAX_DEPTH: usize = 64;
/// Object-graph visits allowed while collecting tensors (shared subgraphs are revisited).
const MAX_VISITS: usize = 1 << 22;

/// The first pickle of a legacy checkpoint: `torch.serialization.MAGIC_NUMBER`
/// (0x1950a86a20f9469cfc6c) pickled with protocol 2.
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// A zip archive, or a pickle protocol 2+ stream (legacy checkpoint or plain pickle).
pub fn looks_like_pytorch(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80)
}

/// How a file holds its pickles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// A zip archive (a `torch.save` archive when it has `<name>/data.pkl`).
    Zip,
    /// A legacy (pre-1.6) `torch.save` file.
    Legacy,
    /// One or more pickles back to back, not written by `torch.save`.
    Pickle,
}

impl Container {
    pub fn as_str(self) -> &'static str {
        match self {
            Container::Zip => "zip archive",
            Container::Legacy => "legacy PyTorch file",
            Container::Pickle => "pickle",
        }
    }
}

/// One pickle found in a file, replayed.
#[derive(Debug)]
pub struct PickleEntry {
    /// The zip entry that holds it; `None` for pickles stored directly in the file.
    pub entry: Option<String>,
    /// File offset of the analysed bytes' offset 0, when they are stored as-is in the file
    /// (stored zip entry or plain file); `None` for compressed entries.
    pub base: Option<u64>,
    pub analysis: Analysis,
}

impl PickleEntry {
    /// File offset of a position in this pickle, when it has one.
    pub fn file_offset(&self, at: u64) -> Option<u64> {
        self.base.and_then(|b| b.checked_add(at))
    }
}

/// Every pickle in a file, for the scanner.
#[derive(Debug)]
pub struct PickleFile {
    pub container: Container,
    /// `torch.save`'s archive folder (`archive`) when the zip has `<name>/data.pkl`.
    pub torch_prefix: Option<String>,
    /// All entry names, for zip archives.
    pub entries: Vec<String>,
    pub pickles: Vec<PickleEntry>,
}

/// Whether a zip entry name is a pickle to analyse.
fn is_pickle_entry(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".pkl") || lower.ends_with(".pickle")
}

/// Find every pickle in a file and replay it: each `.pkl`/`.pickle` entry of a zip archive,
/// the five pickles of a legacy checkpoint, or the consecutive pickles of any other file.
pub fn read_pickles(path: &Path) -> Result<PickleFile, FormatError> {
    let map = Mapped::open(path)?;
    let bytes = map.bytes();
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let mut zip = open_zip(path, bytes)?;
        let entries: Vec<String> = zip.file_names().map(str::to_owned).collect();
        let torch_prefix = torch_prefix(path, &entries)?;
        let mut pickles = Vec::new();
        for name in entries.iter().filter(|n| is_pickle_entry(n)) {
            let (data, base) = match entry_bytes(&mut zip, bytes, name) {
                Ok(v) => v,
                Err(message) => {
                    let analysis = Analysis {
                        fault: Some(pickle::Fault { offset: 0, message }),
                        ..Analysis::default()
                    };
                    pickles.push(PickleEntry {
                        entry: Some(name.clone()),
                        base: None,
                        analysis,
                    });
                    continue;
                }
            };
            let analysis = pickle::analyze(&data, 0);
            pickles.push(PickleEntry {
                entry: Some(name.clone()),
                base,
                analysis,
            });
        }
        return Ok(PickleFile {
            container: Container::Zip,
            torch_prefix,
            entries,
            pickles,
        });
    }
    let (container, max) = if bytes.starts_with(LEGACY_MAGIC) {
        (Container::Legacy, 5)
    } else {
        (Container::Pickle, MAX_STREAM_PICKLES)
    };
    let pickles = pickle::analyze_stream(bytes, max)
        .into_iter()
        .map(|analysis| PickleEntry {
            entry: None,
            base: Some(0),
            analysis,
        })
        .collect();
    Ok(PickleFile {
        container,
        torch_prefix: None,
        entries: Vec::new(),
        pickles,
    })
}

/// Open a PyTorch checkpoint's tensor table without unpickling it.
pub fn open(path: &Path) -> Result<Weights, FormatError> {
    let map = Mapped::open(path)?;
    let bytes = map.bytes();
    let tensors = if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        zip_tensors(path, bytes)?
    } else if bytes.starts_with(LEGACY_MAGIC) {
        legacy_tensors(path, bytes)?
    } else if bytes.first() == Some(&0x80) {
        return Err(FormatError::Unsupported {
            path: path.to_owned(),
            what: "a plain pickle (not a `torch.save` zip archive or legacy checkpoint)".into(),
        });
    } else {
        return Err(FormatError::NotACheckpoint {
            path: path.to_owned(),
            why: "neither a zip archive nor a pickle".into(),
        });
    };
    Ok(Weights::new(
        WeightFormat::PyTorch,
        vec![path.to_owned()],
        vec![map],
        tensors,
        Vec::new(),
        None,
    ))
}

// ---- zip archives ----

fn open_zip<'a>(path: &Path, bytes: &'a [u8]) -> Result<ZipArchive<Cursor<&'a [u8]>>, FormatError> {
    let zip = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| FormatError::malformed(path, format!("not a readable zip archive: {e}")))?;
    if zip.len() > MAX_ZIP_ENTRIES {
        return Err(FormatError::malformed(
            path,
            format!(
                "zip archive has {} entries, more than the {MAX_ZIP_ENTRIES} modelgate reads",
                zip.len()
            ),
        ));
    }
    Ok(zip)
}

/// `archive` for an archive holding `archive/data.pkl`; `None` when there is no such entry.
fn torch_prefix(path: &Path, names: &[String]) -> Result<Option<String>, FormatError> {
    let mut found = names.iter().filter_map(|n| {
        let prefix = n.strip_suffix("/data.pkl")?;
        (!prefix.is_empty() && !prefix.contains('/')).then_some(prefix)
    });
    let first = found.next();
    if let Some(second) = found.next() {
        return Err(FormatError::malformed(
            path,
            format!(
                "zip archive holds two checkpoints (`{}/data.pkl` and `{second}/data.pkl`)",
                first.unwrap_or_default()
            ),
        ));
    }
    Ok(first.map(str::to_owned))
}

/// Where a stored entry's bytes are in the file: (data start, size).
fn stored_range(
    zip: &mut ZipArchive<Cursor<&[u8]>>,
    file_len: u64,
    name: &str,
) -> Result<Option<(u64, u64)>, String> {
    let Some(idx) = zip.index_for_name(name) else {
        return Err(format!("zip entry `{name}` is missing"));
    };
    let f = zip
        .by_index_raw(idx)
        .map_err(|e| format!("zip entry `{name}` is unreadable: {e}"))?;
    if f.compression() != CompressionMethod::Stored {
        return Ok(None);
    }
    let start = f.data_start();
    let size = f.compressed_size();
    if f.size() != size || start.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(format!(
            "stored zip entry `{name}` ({size} bytes at {start}) lies beyond the file"
        ));
    }
    Ok(Some((start, size)))
}

/// A pickle entry's bytes: borrowed from the file when stored, decompressed (capped)
/// otherwise; with the file offset of its first byte when stored.
fn entry_bytes<'a>(
    zip: &mut ZipArchive<Cursor<&'a [u8]>>,
    bytes: &'a [u8],
    name: &str,
) -> Result<(Cow<'a, [u8]>, Option<u64>), String> {
    if let Some((start, size)) = stored_range(zip, bytes.len() as u64, name)? {
        if size > MAX_PICKLE_BYTES {
            return Err(format!(
                "pickle is {size} bytes, more than the {MAX_PICKLE_BYTES}-byte analysis limit"
            ));
        }
        // In range: checked by stored_range against the file length.
        let slice = &bytes[start as usize..(start + size) as usize];
        return Ok((Cow::Borrowed(slice), Some(start)));
    }
    let idx = zip
        .index_for_name(name)
        .ok_or_else(|| format!("zip entry `{name}` is missing"))?;
    let f = zip
        .by_index(idx)
        .map_err(|e| format!("cannot decompress zip entry `{name}`: {e}"))?;
    let mut out = Vec::new();
    f.take(MAX_PICKLE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot decompress zip entry `{name}`: {e}"))?;
    if out.len() as u64 > MAX_PICKLE_BYTES {
        return Err(format!(
            "pickle decompresses to more than the {MAX_PICKLE_BYTES}-byte analysis limit"
        ));
    }
    Ok((Cow::Owned(out), None))
}

fn zip_tensors(path: &Path, bytes: &[u8]) -> Result<Vec<TensorInfo>, FormatError> {
    let mut zip = open_zip(path, bytes)?;
    let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    let prefix = torch_prefix(path, &names)?.ok_or_else(|| FormatError::NotACheckpoint {
        path: path.to_owned(),
        why: "zip archive without a `<name>/data.pkl` entry: not a PyTorch checkpoint".into(),
    })?;
    let byteorder = format!("{prefix}/byteorder");
    if names.contains(&byteorder) {
        let (b, _) = entry_bytes(&mut zip, bytes, &byteorder)
            .map_err(|e| FormatError::malformed(path, e))?;
        if b.as_ref() != b"little" {
            return Err(FormatError::Unsupported {
                path: path.to_owned(),
                what: format!(
                    "byte order `{}` (only little-endian checkpoints are read)",
                    String::from_utf8_lossy(&b[..b.len().min(16)])
                ),
            });
        }
    }
    let pkl_name = format!("{prefix}/data.pkl");
    let (pkl, _) =
        entry_bytes(&mut zip, bytes, &pkl_name).map_err(|e| FormatError::malformed(path, e))?;
    let a = pickle::analyze(&pkl, 0);
    refuse_unsafe(path, &pkl_name, &a)?;
    let raw = collect_tensors(&a, a.root).map_err(|e| in_pickle(path, &pkl_name, e))?;

    let mut storages: HashMap<String, (u64, u64)> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        let range = match storages.get(&t.key) {
            Some(r) => *r,
            None => {
                let entry = format!("{prefix}/data/{}", t.key);
                let r = stored_range(&mut zip, bytes.len() as u64, &entry)
                    .map_err(|e| FormatError::malformed(path, e))?
                    .ok_or_else(|| FormatError::Unsupported {
                        path: path.to_owned(),
                        what: format!(
                            "compressed storage entry `{entry}` (tensor `{}`; torch.save stores storages uncompressed)",
                            t.name
                        ),
                    })?;
                storages.insert(t.key.clone(), r);
                r
            }
        };
        out.push(t.place(path, range)?);
    }
    Ok(out)
}

// ---- legacy (pre-1.6) files ----

fn legacy_tensors(path: &Path, bytes: &[u8]) -> Result<Vec<TensorInfo>, FormatError> {
    let pickles = pickle::analyze_stream(bytes, 5);
    for (i, a) in pickles.iter().enumerate() {
        refuse_unsafe(path, &format!("legacy pickle {}", i + 1), a)?;
    }
    if pickles.len() < 5 {
        return Err(FormatError::malformed(
            path,
            format!(
                "legacy checkpoint has {} pickles, expected 5 (magic, version, system info, object, storage keys)",
                pickles.len()
            ),
        ));
    }
    let node = |a: &Analysis| a.root.and_then(|r| a.node(r)).cloned();
    if node(&pickles[1]) != Some(Node::Int(Some(LEGACY_PROTOCOL_VERSION))) {
        return Err(FormatError::Unsupported {
            path: path.to_owned(),
            what: "legacy checkpoint protocol version other than 1001".into(),
        });
    }
    let sys = &pickles[2];
    let little = match sys.root.and_then(|r| sys.node(r)) {
        Some(Node::Dict(entries)) => entries.iter().any(|(k, v)| {
            sys.node(*k) == Some(&Node::Str("little_endian".into()))
                && sys.node(*v) == Some(&Node::Bool(true))
        }),
        _ => false,
    };
    if !little {
        return Err(FormatError::Unsupported {
            path: path.to_owned(),
            what: "legacy checkpoint not written on a little-endian machine".into(),
        });
    }
    let obj = &pickles[3];
    let raw =
        collect_tensors(obj, obj.root).map_err(|e| in_pickle(path, "the object pickle", e))?;
    let keys_pickle = &pickles[4];
    let keys: Vec<String> = match keys_pickle.root.and_then(|r| keys_pickle.node(r)) {
        Some(Node::List(items)) => items
            .iter()
            .map(|k| match keys_pickle.node(*k) {
                Some(Node::Str(s)) => Ok(s.clone()),
                _ => Err(FormatError::malformed(
                    path,
                    "storage key list holds a non-string",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(FormatError::malformed(
                path,
                "the fifth legacy pickle is not the list of storage keys",
            ))
        }
    };
    // Storage blocks follow the last pickle in key order: i64 element count, raw bytes.
    let mut elem_size: HashMap<&str, u64> = HashMap::new();
    for t in &raw {
        let size = t.elem_size();
        if *elem_size.entry(&t.key).or_insert(size) != size {
            return Err(FormatError::malformed(
                path,
                format!("storage `{}` is read as two element types", t.key),
            ));
        }
    }
    let mut pos = keys_pickle.end;
    let file_len = bytes.len() as u64;
    let mut ranges: HashMap<String, (u64, u64)> = HashMap::new();
    for key in keys {
        let count_at = pos as usize;
        let count = bytes
            .get(count_at..count_at + 8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                i64::from_le_bytes(a)
            })
            .ok_or_else(|| {
                FormatError::malformed(path, format!("storage `{key}` header lies beyond the file"))
            })?;
        let size = *elem_size.get(key.as_str()).ok_or_else(|| {
            FormatError::malformed(path, format!("storage `{key}` is not used by any tensor"))
        })?;
        let nbytes = u64::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .filter(|n| pos + 8 + n <= file_len)
            .ok_or_else(|| {
                FormatError::malformed(
                    path,
                    format!("storage `{key}` claims {count} elements, beyond the file"),
                )
            })?;
        ranges.insert(key, (pos + 8, nbytes));
        pos += 8 + nbytes;
    }
    raw.into_iter()
        .map(|t| {
            let range = *ranges.get(&t.key).ok_or_else(|| {
                FormatError::malformed(path, format!("storage `{}` has no data block", t.key))
            })?;
            t.place(path, range)
        })
        .collect()
}

// ---- shared: the allowlist gate and the object-graph walk ----

fn in_pickle(path: &Path, what: &str, e: String) -> FormatError {
    if e.starts_with("unsupported: ") {
        FormatError::Unsupported {
            path: path.to_owned(),
            what: format!("{} in `{what}`", e.trim_start_matches("unsupported: ")),
        }
    } else {
        FormatError::malformed(path, format!("`{what}`: {e}"))
    }
}

/// Refuse a pickle that is malformed or imports anything outside the allowlist.
fn refuse_unsafe(path: &Path, what: &str, a: &Analysis) -> Result<(), FormatError> {
    for g in &a.globals {
        let why = match pickle::classify_ref(g) {
            GlobalClass::Allowed => continue,
            GlobalClass::Dangerous(why) => format!("which {why}"),
            GlobalClass::Unknown => {
                "which is not on the allowlist of tensor-rebuild globals".into()
            }
        };
        return Err(FormatError::malformed(
            path,
            format!(
                "refusing to load: `{what}` imports `{}` ({} at byte {}), {why}; run `modelgate scan` for every finding",
                g.qualified(),
                g.op.as_str(),
                g.offset
            ),
        ));
    }
    if let Some(f) = &a.fault {
        return Err(FormatError::malformed(
            path,
            format!("`{what}` is not a valid pickle: {f}"),
        ));
    }
    Ok(())
}

/// A tensor a checkpoint pickle describes, before it is placed in the file: which
/// storage holds it and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageTensor {
    /// Key path in the pickled object (`model.layers.0.weight`).
    pub name: String,
    pub dtype: DType,
    /// Storage key (`archive/data/<key>` in a zip, the legacy storage id otherwise).
    pub key: String,
    /// Offset into the storage, in elements.
    pub offset_elems: u64,
    pub shape: Vec<u64>,
    pub elements: u64,
}

/// The tensor table of one checkpoint pickle (a zip archive's `data.pkl`), after the same
/// allowlist gate as [`open`]. Errors are messages without a path.
pub fn storage_tensors(pickle_bytes: &[u8]) -> Result<Vec<StorageTensor>, String> {
    let a = pickle::analyze(pickle_bytes, 0);
    refuse_unsafe(Path::new("data.pkl"), "data.pkl", &a).map_err(|e| e.to_string())?;
    collect_tensors(&a, a.root)
}

impl StorageTensor {
    fn elem_size(&self) -> u64 {
        // Storage dtypes are whole-byte element types (checked in `storage`).
        self.dtype.bits().unwrap_or(8) / 8
    }

    /// Point the tensor at its bytes inside storage bytes `(start, len)` of the file.
    fn place(self, path: &Path, (start, len): (u64, u64)) -> Result<TensorInfo, FormatError> {
        let size = self.elem_size();
        let nbytes = self.elements.checked_mul(size);
        let off = self.offset_elems.checked_mul(size);
        let end = off.zip(nbytes).and_then(|(o, n)| o.checked_add(n));
        let (Some(off), Some(nbytes), Some(end)) = (off, nbytes, end) else {
            return Err(FormatError::malformed(
                path,
                format!("tensor `{}` size overflows", self.name),
            ));
        };
        if end > len {
            return Err(FormatError::malformed(
                path,
                format!(
                    "tensor `{}` needs bytes {off}..{end} of storage `{}`, which has {len}",
                    self.name, self.key
                ),
            ));
        }
        Ok(TensorInfo {
            name: TensorName(self.name),
            dtype: self.dtype,
            shape: self.shape,
            file: 0,
            offset: start + off,
            len: nbytes,
        })
    }
}

struct Walker<'a> {
    a: &'a Analysis,
    out: Vec<StorageTensor>,
    visits: usize,
}

/// Every tensor reachable from `root` through dicts, `OrderedDict`s, lists and tuples,
/// named by its key path (`model.layers.0.weight`). Other plain values are skipped.
fn collect_tensors(a: &Analysis, root: Option<NodeId>) -> Result<Vec<StorageTensor>, String> {
    let root = root.ok_or("pickle has no object")?;
    let mut w = Walker {
        a,
        out: Vec::new(),
        visits: 0,
    };
    w.walk(root, String::new(), 0)?;
    let mut seen = std::collections::HashSet::new();
    for t in &w.out {
        if !seen.insert(t.name.as_str()) {
            return Err(format!("two tensors are named `{}`", t.name));
        }
    }
    Ok(w.out)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Walker<'_> {
    fn node(&self, id: NodeId) -> Result<&Node, String> {
        self.a
            .node(id)
            .ok_or_else(|| format!("object {id} does not exist"))
    }

    fn global(&self, id: NodeId) -> Option<(&str, &str)> {
        self.a.global_name(id)
    }

    fn walk(&mut self, id: NodeId, name: String, depth: usize) -> Result<(), String> {
        self.visits += 1;
        if depth > MAX_DEPTH {
            return Err(format!(
                "objects nest deeper than {MAX_DEPTH} levels at `{name}`"
            ));
        }
        if self.visits > MAX_VISITS {
            return Err("object graph is too large to walk".into());
        }
        match self.node(id)? {
            Node::Dict(entries) => self.walk_entries(entries.clone(), &name, depth),
            Node::List(items) | Node::Tuple(items) => {
                for (i, item) in items.clone().into_iter().enumerate() {
                    self.walk(item, join(&name, &i.to_string()), depth + 1)?;
                }
                Ok(())
            }
            Node::Object {
                call,
                entries,
                items,
                ..
            } => {
                let (call, entries, items) = (*call, entries.clone(), items.clone());
                let c = self.a.calls.get(call).ok_or("call does not exist")?;
                if self.global(c.callee) == Some(("collections", "OrderedDict")) {
                    if !items.is_empty() {
                        return Err("an `OrderedDict` has list items".into());
                    }
                    return self.walk_entries(entries, &name, depth);
                }
                match self.rebuild(c.callee, c.args, &name, depth)? {
                    Some(t) => {
                        self.out.push(t);
                        Ok(())
                    }
                    None => Err(format!(
                        "unsupported: object `{name}` built by {}",
                        self.describe_callee(c.callee)
                    )),
                }
            }
            Node::PersistentId(_) | Node::TextPersistentId(_) => Err(format!(
                "unsupported: a bare storage at `{name}` (not inside a tensor)"
            )),
            // Plain values beside the tensors (epoch counters, config strings) and allowed
            // class objects carry no weights.
            _ => Ok(()),
        }
    }

    fn walk_entries(
        &mut self,
        entries: Vec<(NodeId, NodeId)>,
        name: &str,
        depth: usize,
    ) -> Result<(), String> {
        for (k, v) in entries {
            let key = match self.node(k)? {
                Node::Str(s) => s.clone(),
                Node::Int(Some(i)) => i.to_string(),
                other => {
                    return Err(format!(
                        "unsupported: a {} key in a dict at `{name}`",
                        pickle::node_kind(other)
                    ))
                }
            };
            self.walk(v, join(name, &key), depth + 1)?;
        }
        Ok(())
    }

    fn describe_callee(&self, id: NodeId) -> String {
        match self.a.origin(id).and_then(|g| self.a.globals.get(g)) {
            Some(g) => format!("`{}`", g.qualified()),
            None => "an unknown callable".into(),
        }
    }

    fn args(&self, id: NodeId) -> Result<Vec<NodeId>, String> {
        match self.node(id)? {
            Node::Tuple(items) => Ok(items.clone()),
            other => Err(format!(
                "tensor rebuild arguments are a {}, not a tuple",
                pickle::node_kind(other)
            )),
        }
    }

    /// The tensor a call of `callee(*args)` rebuilds; `None` when `callee` is not a tensor
    /// rebuild function.
    fn rebuild(
        &mut self,
        callee: NodeId,
        args: NodeId,
        name: &str,
        depth: usize,
    ) -> Result<Option<StorageTensor>, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "tensor rebuilds nest deeper than {MAX_DEPTH} at `{name}`"
            ));
        }
        let Some(g) = self.global(callee) else {
            return Ok(None);
        };
        let args = self.args(args)?;
        match g {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                if args.len() < 4 {
                    return Err(format!(
                        "`{name}`: tensor rebuild has {} arguments, expected at least 4",
                        args.len()
                    ));
                }
                self.tensor(name, args[0], args[1], args[2], args[3])
                    .map(Some)
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                let data = *args.first().ok_or("parameter rebuild has no tensor")?;
                match self.node(data)? {
                    Node::Object { call, .. } => {
                        let c = self.a.calls.get(*call).ok_or("call does not exist")?;
                        let (f, a) = (c.callee, c.args);
                        self.rebuild(f, a, name, depth + 1)
                    }
                    _ => Err(format!("`{name}`: parameter rebuild wraps no tensor")),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                if args.len() < 3 {
                    return Err(format!(
                        "`{name}`: `_rebuild_from_type_v2` has too few arguments"
                    ));
                }
                match self.global(args[1]) {
                    Some(("torch", "Tensor")) | Some(("torch.nn.parameter", "Parameter")) => {}
                    _ => {
                        return Err(format!(
                            "unsupported: tensor subclass {} at `{name}`",
                            self.describe_callee(args[1])
                        ))
                    }
                }
                self.rebuild(args[0], args[2], name, depth + 1)
            }
            _ => Ok(None),
        }
    }

    fn int(&self, id: NodeId, what: &str, name: &str) -> Result<u64, String> {
        match self.node(id)? {
            Node::Int(Some(v)) if *v >= 0 => Ok(*v as u64),
            Node::Bool(b) => Ok(u64::from(*b)),
            _ => Err(format!("`{name}`: {what} is not a non-negative integer")),
        }
    }

    fn ints(&self, id: NodeId, what: &str, name: &str) -> Result<Vec<u64>, String> {
        match self.node(id)? {
            Node::Tuple(items) | Node::List(items) => {
                items.iter().map(|i| self.int(*i, what, name)).collect()
            }
            _ => Err(format!("`{name}`: {what} is not a tuple")),
        }
    }

    fn tensor(
        &self,
        name: &str,
        storage: NodeId,
        offset: NodeId,
        size: NodeId,
        stride: NodeId,
    ) -> Result<StorageTensor, String> {
        let (dtype, key) = self.storage(storage, name)?;
        let offset_elems = self.int(offset, "storage offset", name)?;
        let shape = self.ints(size, "size", name)?;
        let stride = self.ints(stride, "stride", name)?;
        if shape.len() != stride.len() {
            return Err(format!(
                "`{name}`: size has {} dimensions but stride has {}",
                shape.len(),
                stride.len()
            ));
        }
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("`{name}`: element count overflows"))?;
        if elements > 0 {
            let mut expect = 1u64;
            for (d, s) in shape.iter().zip(&stride).rev() {
                if *d != 1 && *s != expect {
                    return Err(format!(
                        "unsupported: non-contiguous tensor `{name}` (size {shape:?}, stride {stride:?})"
                    ));
                }
                expect = expect.saturating_mul(*d);
            }
        }
        Ok(StorageTensor {
            name: name.to_owned(),
            dtype,
            key,
            offset_elems,
            shape,
            elements,
        })
    }

    /// `('storage', torch.XStorage, key, location, numel[, view_metadata])`.
    fn storage(&self, id: NodeId, name: &str) -> Result<(DType, String), String> {
        let pid = match self.node(id)? {
            Node::PersistentId(pid) => *pid,
            _ => return Err(format!("`{name}`: tensor storage is not a persistent id")),
        };
        let items = match self.node(pid)? {
            Node::Tuple(items) if items.len() >= 5 => items.clone(),
            _ => return Err(format!("`{name}`: storage persistent id is not a 5-tuple")),
        };
        if self.node(items[0])? != &Node::Str("storage".into()) {
            return Err(format!("`{name}`: persistent id is not a storage"));
        }
        let dtype = match self.global(items[1]) {
            Some(("torch", cls)) => pickle::TORCH_STORAGES
                .iter()
                .find(|(s, _)| *s == cls)
                .map(|(_, d)| *d),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "unsupported: storage type {} of `{name}`",
                self.describe_callee(items[1])
            )
        })?;
        let key = match self.node(items[2])? {
            Node::Str(s) => s.clone(),
            _ => return Err(format!("`{name}`: storage key is not a string")),
        };
        if let Some(view) = items.get(5) {
            if self.node(*view)? != &Node::None {
                return Err(format!(
                    "unsupported: storage view in `{name}` (legacy view metadata)"
                ));
            }
        }
        Ok((dtype, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_magic_is_the_pickled_magic_number() {
        let a = pickle::analyze(LEGACY_MAGIC, 0);
        assert!(a.complete());
        assert_eq!(a.end as usize, LEGACY_MAGIC.len());
    }

    #[test]
    fn contiguity_and_storage_are_checked() {
        // {'w': _rebuild_tensor_v2(pid('storage', FloatStorage, '0', 'cpu', 6), 0, (2,3), (1,2), False, None)}
        let p = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x01K\x02\x86\x89NtRs.";
        let a = pickle::analyze(p, 0);
        assert!(a.complete(), "{:?}", a.fault);
        let e = collect_tensors(&a, a.root).unwrap_err();
        assert!(e.contains("non-contiguous"), "{e}");
        let at = p.windows(5).position(|w| w == b"K\x01K\x02\x86").unwrap();
        let mut p2 = p.to_vec();
        p2[at..at + 5].copy_from_slice(b"K\x03K\x01\x86");
        let a = pickle::analyze(&p2, 0);
        let t = collect_tensors(&a, a.root).unwrap();
        assert_eq!(t[0].name, "w");
        assert_eq!(t[0].shape, [2, 3]);
        assert_eq!(t[0].dtype, DType::F32);
    }
}
