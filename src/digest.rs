//! Hashing a model the way OpenSSF model signing (PyPI `model-signing` 1.x) does, so that
//! a manifest made here and one made by the reference tool are the same list of digests.
//!
//! A shared module below the stages: convert (split and merge sidecars), parity (model
//! digests in golden files) and sign (manifests) all hash through it, and it depends only
//! on [`crate::formats`] (memory maps) and [`crate::types`].
//!
//! A model is a directory (or one file). Every regular file under it is hashed with
//! sha256, either whole (serialization `files`) or in shards of a fixed size named
//! `path:start:end` (serialization `shards`); empty files have no shards. Paths are
//! relative to the model root with `/` separators, sorted component by component (the
//! order of Python's `PurePosixPath`, which decides the root digest). The root digest is
//! sha256 over the concatenated raw digests in that order.
//!
//! Files and shards are hashed in parallel with rayon, largest first, each from a read-only
//! memory map ([`crate::formats::Mapped`]) so the page cache is hashed without a copy.
//! sha2 0.11 picks the SHA-NI instructions at run time where the CPU has them.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::formats::{FormatError, Mapped};
use crate::types::Sha256Digest;

/// Why a model could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A weight file could not be mapped (the formats layer says why).
    #[error(transparent)]
    Map(#[from] FormatError),
    #[error("`{path}` is a symbolic link, which is not signed unless symlinks are allowed")]
    Symlink { path: PathBuf },
    #[error("`{path}` is neither a regular file nor a directory (a socket, pipe or device?)")]
    SpecialFile { path: PathBuf },
    #[error("`{path}`: the file name is not UTF-8, which a signature cannot name")]
    NonUtf8Name { path: PathBuf },
    #[error(
        "`{path}` changed while it was hashed: expected at least {expected} bytes, found {found}"
    )]
    Changed {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("shard size must be at least 1 byte")]
    ShardSize,
    #[error("cannot start hashing threads: {0}")]
    Threads(String),
}

impl DigestError {
    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            DigestError::Symlink { .. } => {
                "replace the link with the file, or pass `--allow-symlinks` to sign its target"
            }
            DigestError::SpecialFile { .. } => {
                "move sockets, pipes and devices out of the model directory"
            }
            DigestError::NonUtf8Name { .. } => "rename the file to a UTF-8 name",
            DigestError::Changed { .. } => {
                "another process is writing to the model; hash it again when it is done"
            }
            DigestError::Map(e) => return e.hint(),
            DigestError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "check the path"
            }
            _ => return None,
        })
    }
}

/// Shard size the reference tool uses when asked for shards without a size.
pub const DEFAULT_SHARD_SIZE: u64 = 1_000_000_000;

/// Paths the reference tool leaves out unless told otherwise (only at the model root).
pub const GIT_PATHS: [&str; 4] = [".git", ".github", ".gitattributes", ".gitignore"];

/// How a model is cut into hashed resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serialization {
    /// One digest per file.
    Files,
    /// One digest per `shard_size` bytes of each file.
    Shards { shard_size: u64 },
}

impl Serialization {
    /// The `method` field of the recorded serialization.
    pub fn method(self) -> &'static str {
        match self {
            Serialization::Files => "files",
            Serialization::Shards { .. } => "shards",
        }
    }

    /// The `algorithm` each resource carries (`sha256` or `sha256-sharded-N`).
    pub fn algorithm(self) -> String {
        match self {
            Serialization::Files => "sha256".to_owned(),
            Serialization::Shards { shard_size } => format!("sha256-sharded-{shard_size}"),
        }
    }
}

impl fmt::Display for Serialization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Serialization::Files => f.write_str("files"),
            Serialization::Shards { shard_size } => write!(f, "shards of {shard_size} bytes"),
        }
    }
}

/// A path relative to the model root: `/`-separated, no `.` or `..` components, or `.`
/// for a model that is a single file. Ordered component by component.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct RelPath(String);

impl RelPath {
    /// The name the reference tool gives a model that is a single file.
    pub fn single_file() -> Self {
        RelPath(".".to_owned())
    }

    /// Normalise a relative path written by a person or recorded in a statement: drops
    /// empty and `.` components and trailing slashes. `None` for absolute paths and paths
    /// that climb out with `..`, which cannot name anything inside the model.
    pub fn parse(s: &str) -> Option<Self> {
        if s.starts_with('/') {
            return None;
        }
        let mut parts = Vec::new();
        for part in s.split('/') {
            match part {
                "" | "." => {}
                ".." => return None,
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Some(Self::single_file());
        }
        Some(RelPath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn join(&self, name: &str) -> RelPath {
        if self.0 == "." {
            RelPath(name.to_owned())
        } else {
            RelPath(format!("{}/{}", self.0, name))
        }
    }

    fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| *c != ".")
    }

    /// True when `self` is `prefix` or lies under it. `.` is a prefix of everything.
    pub fn starts_with(&self, prefix: &RelPath) -> bool {
        let mut mine = self.components();
        prefix.components().all(|p| mine.next() == Some(p))
    }

    /// The path under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.0 == "." {
            root.to_owned()
        } else {
            root.join(&self.0)
        }
    }
}

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.components().cmp(other.components())
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One hashed resource: a whole file, or the bytes `start..end` of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub path: RelPath,
    pub range: Option<(u64, u64)>,
    pub digest: Sha256Digest,
}

impl Resource {
    /// The resource name in a statement: `path` or `path:start:end`.
    pub fn name(&self) -> String {
        match self.range {
            None => self.path.to_string(),
            Some((start, end)) => format!("{}:{start}:{end}", self.path),
        }
    }

    fn sort_key(&self) -> (&RelPath, u64, u64) {
        let (s, e) = self.range.unwrap_or((0, 0));
        (&self.path, s, e)
    }
}

/// Sort resources in the order the reference tool signs them: by path component by
/// component, then by shard start and end as numbers.
pub fn sort_resources(resources: &mut [Resource]) {
    resources.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

/// sha256 over the concatenated raw digests, in the order given.
pub fn root_digest<'a>(digests: impl IntoIterator<Item = &'a Sha256Digest>) -> Sha256Digest {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d.0);
    }
    Sha256Digest(h.finalize().into())
}

/// What to hash and how.
#[derive(Clone, Debug)]
pub struct HashOptions {
    pub serialization: Serialization,
    /// Paths relative to the model root left out of the manifest (with everything under
    /// them). Recorded in the statement so that verification leaves out the same.
    pub ignore: Vec<RelPath>,
    /// Follow symbolic links to files instead of refusing them.
    pub allow_symlinks: bool,
    /// Worker threads; `None` uses every core.
    pub threads: Option<usize>,
}

impl HashOptions {
    /// The reference tool's defaults: whole files, git paths ignored, no symlinks.
    pub fn new(serialization: Serialization) -> Self {
        HashOptions {
            serialization,
            ignore: GIT_PATHS.iter().filter_map(|p| RelPath::parse(p)).collect(),
            allow_symlinks: false,
            threads: None,
        }
    }

    /// Add a path to leave out, once.
    pub fn ignore(&mut self, path: RelPath) {
        if !self.ignore.contains(&path) {
            self.ignore.push(path);
        }
    }

    fn is_ignored(&self, rel: &RelPath) -> bool {
        self.ignore.iter().any(|i| rel.starts_with(i))
    }
}

/// The digests of a model.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The last component of the model path; informative only.
    pub model_name: String,
    pub serialization: Serialization,
    pub allow_symlinks: bool,
    /// The ignore list as recorded in the statement.
    pub ignore_paths: Vec<String>,
    /// In signing order (see [`sort_resources`]).
    pub resources: Vec<Resource>,
    /// Files hashed and their total size.
    pub files: usize,
    pub bytes: u64,
}

impl Manifest {
    pub fn root_digest(&self) -> Sha256Digest {
        root_digest(self.resources.iter().map(|r| &r.digest))
    }
}

/// The name the reference tool gives a model: the last path component, or the last
/// component of the absolute path when the path ends in `.` or `..`.
pub fn model_name(root: &Path) -> String {
    let last = root.components().next_back();
    if let Some(Component::Normal(name)) = last {
        return name.to_string_lossy().into_owned();
    }
    fs::canonicalize(root)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

#[derive(Debug)]
struct FileEntry {
    abs: PathBuf,
    rel: RelPath,
    len: u64,
}

/// Hash the model at `root`. With `only`, hash just those files (the signed ones, for
/// `--ignore-unsigned-files`): files that are absent are left out of the manifest, and
/// nothing else under the root is looked at.
pub fn hash_model(
    root: &Path,
    opts: &HashOptions,
    only: Option<&BTreeSet<RelPath>>,
) -> Result<Manifest, DigestError> {
    hash_model_known(root, opts, only, &[])
}

/// [`hash_model`] given the whole-file digests of some files, computed by a caller that read
/// them anyway (parity hashes weights as it evaluates them), so those are not read again.
pub fn hash_model_known(
    root: &Path,
    opts: &HashOptions,
    only: Option<&BTreeSet<RelPath>>,
    known: &[(PathBuf, Sha256Digest)],
) -> Result<Manifest, DigestError> {
    let known: Vec<(PathBuf, Sha256Digest)> = known
        .iter()
        .filter_map(|(p, d)| fs::canonicalize(p).ok().map(|p| (p, *d)))
        .collect();
    let known_for = |abs: &Path| -> Option<Sha256Digest> {
        if known.is_empty() {
            return None;
        }
        let abs = fs::canonicalize(abs).ok()?;
        known.iter().find(|(p, _)| *p == abs).map(|(_, d)| *d)
    };
    if let Serialization::Shards { shard_size: 0 } = opts.serialization {
        return Err(DigestError::ShardSize);
    }
    let files = match only {
        Some(set) => listed_files(root, set, opts.allow_symlinks)?,
        None => walk(root, opts)?,
    };
    let mut units: Vec<(usize, u64, u64)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match opts.serialization {
            Serialization::Files => units.push((i, 0, f.len)),
            Serialization::Shards { shard_size } => {
                let mut start = 0;
                while start < f.len {
                    let end = start.saturating_add(shard_size).min(f.len);
                    units.push((i, start, end));
                    start = end;
                }
            }
        }
    }
    // Largest first, one unit per task: the classic longest-processing-time schedule, so
    // a big file does not start last and run alone.
    units.sort_by_key(|u| std::cmp::Reverse(u.2 - u.1));
    let serialization = opts.serialization;
    let work = || {
        units
            .par_iter()
            .with_max_len(1)
            .map(|&(i, start, end)| {
                let f = &files[i];
                let digest = match (serialization, known_for(&f.abs)) {
                    (Serialization::Files, Some(d)) => d,
                    _ => hash_unit(&f.abs, serialization, start, end)?,
                };
                let range = match serialization {
                    Serialization::Files => None,
                    Serialization::Shards { .. } => Some((start, end)),
                };
                Ok(Resource {
                    path: f.rel.clone(),
                    range,
                    digest,
                })
            })
            .collect::<Result<Vec<Resource>, DigestError>>()
    };
    let mut resources = match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| DigestError::Threads(e.to_string()))?
            .install(work)?,
        None => work()?,
    };
    sort_resources(&mut resources);
    Ok(Manifest {
        model_name: model_name(root),
        serialization,
        allow_symlinks: opts.allow_symlinks,
        ignore_paths: opts.ignore.iter().map(|p| p.to_string()).collect(),
        resources,
        files: files.len(),
        bytes: files.iter().map(|f| f.len).sum(),
    })
}

/// sha256 of one whole file, for callers that hash a list of files they already know
/// (policy facts) rather than a model tree.
pub fn hash_file(path: &Path) -> Result<Sha256Digest, DigestError> {
    hash_unit(path, Serialization::Files, 0, 0)
}

fn hash_unit(
    path: &Path,
    serialization: Serialization,
    start: u64,
    end: u64,
) -> Result<Sha256Digest, DigestError> {
    let map = Mapped::open(path)?;
    let bytes = map.bytes();
    let slice = match serialization {
        // A whole file is hashed as it is now, even if it changed size since the walk.
        Serialization::Files => bytes,
        Serialization::Shards { .. } => {
            let (s, e) = (usize::try_from(start), usize::try_from(end));
            match (s, e) {
                (Ok(s), Ok(e)) if e <= bytes.len() => &bytes[s..e],
                _ => {
                    return Err(DigestError::Changed {
                        path: path.to_owned(),
                        expected: end,
                        found: bytes.len() as u64,
                    })
                }
            }
        }
    };
    // in 64 MiB steps, each released once hashed, so hashing a multi-gigabyte model
    // does not leave all of it resident in this process
    let base = slice.as_ptr() as usize - bytes.as_ptr() as usize;
    let mut h = Sha256::new();
    for (i, part) in slice.chunks(64 << 20).enumerate() {
        h.update(part);
        map.release(base + i * (64 << 20), part.len());
    }
    Ok(Sha256Digest(h.finalize().into()))
}

fn utf8_name(path: &Path, name: &std::ffi::OsStr) -> Result<String, DigestError> {
    name.to_str()
        .map(str::to_owned)
        .ok_or_else(|| DigestError::NonUtf8Name {
            path: path.to_owned(),
        })
}

/// Classify one path (not following a final symlink unless allowed): `Some(len)` for a
/// regular file, `None` for a directory to descend into or a symlinked directory to skip.
enum Kind {
    File(u64),
    Dir,
    Skip,
}

fn classify(path: &Path, allow_symlinks: bool) -> Result<Kind, DigestError> {
    let meta = fs::symlink_metadata(path).map_err(|source| DigestError::Io {
        path: path.to_owned(),
        source,
    })?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        if !allow_symlinks {
            return Err(DigestError::Symlink {
                path: path.to_owned(),
            });
        }
        // The reference tool hashes the target of a link to a file and neither lists
        // nor descends into a link to a directory (Python's `glob("**/*")`).
        let target = fs::metadata(path).map_err(|source| DigestError::Io {
            path: path.to_owned(),
            source,
        })?;
        return if target.is_file() {
            Ok(Kind::File(target.len()))
        } else if target.is_dir() {
            Ok(Kind::Skip)
        } else {
            Err(DigestError::SpecialFile {
                path: path.to_owned(),
            })
        };
    }
    if ft.is_file() {
        Ok(Kind::File(meta.len()))
    } else if ft.is_dir() {
        Ok(Kind::Dir)
    } else {
        Err(DigestError::SpecialFile {
            path: path.to_owned(),
        })
    }
}

fn walk(root: &Path, opts: &HashOptions) -> Result<Vec<FileEntry>, DigestError> {
    let mut out = Vec::new();
    match classify(root, opts.allow_symlinks)? {
        Kind::File(len) => {
            out.push(FileEntry {
                abs: root.to_owned(),
                rel: RelPath::single_file(),
                len,
            });
            return Ok(out);
        }
        Kind::Skip => return Ok(out),
        Kind::Dir => {}
    }
    // An explicit stack rather than recursion: a hostile tree can be deeper than the
    // thread's stack.
    let mut stack = vec![(root.to_owned(), RelPath::single_file())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| DigestError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| DigestError::Io {
                path: dir.clone(),
                source,
            })?;
            let abs = entry.path();
            let name = utf8_name(&abs, &entry.file_name())?;
            let child = rel.join(&name);
            if opts.is_ignored(&child) {
                continue;
            }
            match classify(&abs, opts.allow_symlinks)? {
                Kind::File(len) => out.push(FileEntry {
                    abs,
                    rel: child,
                    len,
                }),
                Kind::Dir => stack.push((abs, child)),
                Kind::Skip => {}
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn listed_files(
    root: &Path,
    set: &BTreeSet<RelPath>,
    allow_symlinks: bool,
) -> Result<Vec<FileEntry>, DigestError> {
    let mut out = Vec::new();
    for rel in set {
        let abs = rel.under(root);
        if fs::symlink_metadata(&abs).is_err() {
            continue; // absent: reported as missing by the comparison
        }
        if let Kind::File(len) = classify(&abs, allow_symlinks)? {
            out.push(FileEntry {
                abs,
                rel: rel.clone(),
                len,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn paths_sort_by_component_like_python() {
        // `a.txt` < `a/b` as strings ('.' < '/'), but `a` < `a.txt` as components.
        let mut v = [rel("a.txt"), rel("a/b"), rel("B"), rel("a")];
        v.sort();
        let s: Vec<&str> = v.iter().map(RelPath::as_str).collect();
        assert_eq!(s, ["B", "a", "a/b", "a.txt"]);
    }

    #[test]
    fn shards_sort_by_number_not_text() {
        let d = Sha256Digest([0; 32]);
        let r = |s, e| Resource {
            path: rel("w"),
            range: Some((s, e)),
            digest: d,
        };
        let mut v = vec![r(10, 20), r(2, 10), r(0, 2)];
        sort_resources(&mut v);
        let names: Vec<String> = v.iter().map(Resource::name).collect();
        assert_eq!(names, ["w:0:2", "w:2:10", "w:10:20"]);
    }

    #[test]
    fn rel_path_parse_normalises_and_refuses_escapes() {
        assert_eq!(rel(".git/").as_str(), ".git");
        assert_eq!(rel("./a//b/").as_str(), "a/b");
        assert_eq!(RelPath::parse("../x"), None);
        assert_eq!(RelPath::parse("/etc"), None);
        assert!(rel(".git/HEAD").starts_with(&rel(".git")));
        assert!(!rel(".gitx").starts_with(&rel(".git")));
        assert!(rel("anything").starts_with(&rel(".")));
    }

    #[test]
    fn hashes_files_and_shards() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), b"hello\n").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b"), b"0123456789").unwrap();
        fs::write(dir.path().join("empty"), b"").unwrap();
        fs::create_dir(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join(".git/HEAD"), b"ref").unwrap();

        let m = hash_model(dir.path(), &HashOptions::new(Serialization::Files), None).unwrap();
        let names: Vec<String> = m.resources.iter().map(Resource::name).collect();
        assert_eq!(names, ["a.txt", "empty", "sub/b"]);
        assert_eq!(m.resources[0].digest, Sha256Digest::of(b"hello\n"));
        assert_eq!(m.files, 3);
        assert_eq!(m.bytes, 16);

        let shards = Serialization::Shards { shard_size: 4 };
        let m = hash_model(dir.path(), &HashOptions::new(shards), None).unwrap();
        let names: Vec<String> = m.resources.iter().map(Resource::name).collect();
        // empty files have no shards
        assert_eq!(
            names,
            [
                "a.txt:0:4",
                "a.txt:4:6",
                "sub/b:0:4",
                "sub/b:4:8",
                "sub/b:8:10"
            ]
        );
        assert_eq!(m.resources[4].digest, Sha256Digest::of(b"89"));
        assert_eq!(m.resources[0].digest.0.len(), 32);
    }

    #[test]
    fn single_file_model_is_named_dot() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.gguf");
        fs::write(&f, b"x").unwrap();
        let m = hash_model(&f, &HashOptions::new(Serialization::Files), None).unwrap();
        assert_eq!(m.model_name, "w.gguf");
        assert_eq!(m.resources[0].name(), ".");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("t"), b"x").unwrap();
        std::os::unix::fs::symlink("t", dir.path().join("l")).unwrap();
        let mut opts = HashOptions::new(Serialization::Files);
        let err = hash_model(dir.path(), &opts, None).unwrap_err();
        assert!(matches!(err, DigestError::Symlink { .. }), "{err}");
        opts.allow_symlinks = true;
        let m = hash_model(dir.path(), &opts, None).unwrap();
        assert_eq!(m.resources.len(), 2);
        assert_eq!(m.resources[0].digest, m.resources[1].digest);
    }

    #[test]
    fn root_digest_is_sha256_of_raw_digests() {
        let a = Sha256Digest::of(b"a");
        let b = Sha256Digest::of(b"b");
        let mut cat = Vec::new();
        cat.extend_from_slice(&a.0);
        cat.extend_from_slice(&b.0);
        assert_eq!(root_digest([&a, &b]), Sha256Digest::of(&cat));
    }
}
