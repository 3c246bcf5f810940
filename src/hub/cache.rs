//! One repository's folder in the Hugging Face cache, read and written in the layout
//! Python's `huggingface_hub` uses:
//!
//! ```text
//! <cache>/models--ORG--NAME/
//!     blobs/<etag>                 file contents; etag = sha256 for LFS files, the git
//!                                  blob id (sha1) for the others
//!     blobs/<etag>.incomplete      a download under way, resumed from its length
//!     snapshots/<commit>/<path>    relative symlinks to ../../blobs/<etag>
//!     refs/<revision>              the commit a branch or tag pointed to (no newline)
//! ```
//!
//! The cache is shared with other tools, so it is read as hostile: a symlink whose target
//! leaves the cache, a blob whose content does not match its name, a ref that is not a
//! commit or names a missing snapshot, and anything that is not a file or folder are all
//! errors. Folder walks are bounded in depth and entries.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::spec::{check_repo_path, CommitSha, RepoId};
use super::{io_err, HubError};
use crate::types::Sha256Digest;

/// A snapshot with more entries than this is not a model repository.
const MAX_ENTRIES: usize = 100_000;
/// Deepest folder nesting walked inside a snapshot.
const MAX_DEPTH: usize = 32;
/// A ref file holds a 40-digit sha; anything much longer is not a ref.
const MAX_REF_BYTES: u64 = 256;

/// A repository's folder in the cache.
#[derive(Clone, Debug)]
pub struct RepoCache {
    root: PathBuf,
    dir: PathBuf,
}

/// A file of a snapshot, as found in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    /// The path in the repository, `/`-separated.
    pub path: String,
    /// The real file holding it (the blob the snapshot entry links to), canonical.
    pub target: PathBuf,
    /// The blob's name when the target is in this repository's `blobs/`.
    pub blob: Option<String>,
}

/// What hashing a cached file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub size: u64,
    pub sha256: Sha256Digest,
    /// The blob's name when it is a sha256, i.e. the Hub's LFS digest of the file.
    pub named_sha256: Option<Sha256Digest>,
}

/// An etag as the Hub sends it and the cache names blobs: `W/` and quotes removed. Only
/// a sha256 (LFS) or a git blob id is accepted, since it becomes a file name.
pub fn normalise_etag(raw: &str) -> Option<String> {
    let e = raw.trim();
    let e = e.strip_prefix("W/").unwrap_or(e).trim_matches('"');
    let ok = matches!(e.len(), 40 | 64) && e.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| e.to_ascii_lowercase())
}

/// The git blob id of `size` bytes whose first bytes will be fed later.
pub fn git_blob_hasher(size: u64) -> Sha1 {
    let mut h = Sha1::new();
    h.update(format!("blob {size}\0").as_bytes());
    h
}

impl RepoCache {
    pub fn new(root: &Path, repo: &RepoId) -> RepoCache {
        RepoCache {
            root: root.to_owned(),
            dir: root.join(repo.cache_folder()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot_dir(&self, sha: &CommitSha) -> PathBuf {
        self.dir.join("snapshots").join(sha.as_str())
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    fn canonical_root(&self) -> Result<Option<PathBuf>, HubError> {
        match fs::canonicalize(&self.root) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&self.root)(e)),
        }
    }

    /// The canonical form of `path`, refused unless it stays inside the cache.
    fn inside(&self, path: &Path, root: &Path) -> Result<PathBuf, HubError> {
        let target = fs::canonicalize(path).map_err(|e| HubError::HostileLayout {
            path: path.to_owned(),
            why: format!("cannot follow it ({e})"),
        })?;
        if !target.starts_with(root) {
            return Err(HubError::SymlinkEscapes {
                path: path.to_owned(),
                target,
                cache: self.root.clone(),
            });
        }
        Ok(target)
    }

    /// Whether the cache can answer for `revision` (a ref, or a commit with a snapshot).
    pub fn has_revision(&self, revision: &str) -> Result<bool, HubError> {
        Ok(self.resolve_revision(revision)?.is_some())
    }

    /// The commit `revision` names in the cache: `refs/<revision>`, or the revision itself
    /// when it is a commit sha whose snapshot exists. `None` when the cache does not know
    /// it.
    pub fn resolve_revision(&self, revision: &str) -> Result<Option<CommitSha>, HubError> {
        let Some(root) = self.canonical_root()? else {
            return Ok(None);
        };
        if fs::symlink_metadata(&self.dir).is_err() {
            return Ok(None);
        }
        self.inside(&self.dir, &root)?;
        let ref_path = self.dir.join("refs").join(revision);
        if fs::symlink_metadata(&ref_path).is_ok() {
            let real = self.inside(&ref_path, &root)?;
            let (_, text) = crate::userfile::read_capped(&real, MAX_REF_BYTES, "a ref file")
                .map_err(|e| match e {
                    crate::userfile::ReadError::Io(source) => HubError::Io {
                        path: ref_path.clone(),
                        source,
                    },
                    crate::userfile::ReadError::Invalid(why) => HubError::HostileLayout {
                        path: ref_path.clone(),
                        why,
                    },
                })?;
            let sha = CommitSha::parse(text.trim()).ok_or_else(|| HubError::HostileLayout {
                path: ref_path.clone(),
                why: "a ref holds a 40-digit commit sha and nothing else".into(),
            })?;
            let snapshot = self.snapshot_dir(&sha);
            if !snapshot.is_dir() {
                return Err(HubError::DanglingRef {
                    path: ref_path,
                    commit: sha.to_string(),
                    snapshot,
                });
            }
            return Ok(Some(sha));
        }
        Ok(CommitSha::parse(revision).filter(|sha| self.snapshot_dir(sha).is_dir()))
    }

    /// One file of a snapshot, `None` when the snapshot lacks it.
    pub fn snapshot_file(
        &self,
        sha: &CommitSha,
        path: &str,
    ) -> Result<Option<CachedFile>, HubError> {
        if !check_repo_path(path) {
            return Err(HubError::HostileLayout {
                path: PathBuf::from(path),
                why: "not a relative path inside the repository".into(),
            });
        }
        let abs = self.snapshot_dir(sha).join(path);
        if fs::symlink_metadata(&abs).is_err() {
            return Ok(None);
        }
        let Some(root) = self.canonical_root()? else {
            return Ok(None);
        };
        self.classify(&abs, path.to_owned(), &root).map(Some)
    }

    /// Every file of a snapshot, sorted by path.
    pub fn snapshot_files(&self, sha: &CommitSha) -> Result<Vec<CachedFile>, HubError> {
        let base = self.snapshot_dir(sha);
        let root = self.canonical_root()?.ok_or_else(|| HubError::Io {
            path: self.root.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        self.inside(&base, &root)?;
        let mut out = Vec::new();
        let mut entries = 0usize;
        let mut stack = vec![(base.clone(), String::new(), 0usize)];
        while let Some((abs, rel, depth)) = stack.pop() {
            let rd = fs::read_dir(&abs).map_err(io_err(&abs))?;
            for entry in rd {
                let entry = entry.map_err(io_err(&abs))?;
                entries += 1;
                if entries > MAX_ENTRIES {
                    return Err(HubError::HostileLayout {
                        path: base,
                        why: format!("more than {MAX_ENTRIES} entries"),
                    });
                }
                let name = entry.file_name();
                let name = name.to_str().ok_or_else(|| HubError::HostileLayout {
                    path: entry.path(),
                    why: "the name is not UTF-8".into(),
                })?;
                let rel_e = if rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry.file_type().map_err(io_err(&entry.path()))?;
                if ft.is_dir() {
                    if depth + 1 > MAX_DEPTH {
                        return Err(HubError::HostileLayout {
                            path: entry.path(),
                            why: format!("folders nest more than {MAX_DEPTH} deep"),
                        });
                    }
                    stack.push((entry.path(), rel_e, depth + 1));
                } else {
                    out.push(self.classify(&entry.path(), rel_e, &root)?);
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn classify(&self, abs: &Path, path: String, root: &Path) -> Result<CachedFile, HubError> {
        let meta = fs::symlink_metadata(abs).map_err(io_err(abs))?;
        if !(meta.file_type().is_symlink() || meta.is_file()) {
            return Err(HubError::HostileLayout {
                path: abs.to_owned(),
                why: "neither a file nor a symlink to one".into(),
            });
        }
        let target = self.inside(abs, root)?;
        let tmeta = fs::metadata(&target).map_err(io_err(&target))?;
        if !tmeta.is_file() {
            return Err(HubError::HostileLayout {
                path: abs.to_owned(),
                why: format!("links to `{}`, which is not a file", target.display()),
            });
        }
        // The blob is the link's first hop: huggingface_hub 2 may make `blobs/<etag>` itself
        // a symlink into a cache-wide store (`<cache>/blobs/<xx>/<xet hash>`).
        let blobs = fs::canonicalize(self.dir.join("blobs")).ok();
        let first_hop = if meta.file_type().is_symlink() {
            let link = fs::read_link(abs).map_err(io_err(abs))?;
            abs.parent().map(|p| p.join(link))
        } else {
            None
        };
        let blob = first_hop.and_then(|hop| {
            let dir = fs::canonicalize(hop.parent()?).ok()?;
            let name = hop.file_name()?.to_str()?.to_owned();
            (Some(dir) == blobs).then_some(name)
        });
        Ok(CachedFile { path, target, blob })
    }

    /// Hash a cached file, and check that a blob named by a digest holds that digest.
    pub fn verify(&self, f: &CachedFile) -> Result<Verified, HubError> {
        let mut file = fs::File::open(&f.target).map_err(io_err(&f.target))?;
        let size = file.metadata().map_err(io_err(&f.target))?.len();
        let mut sha256 = Sha256::new();
        let mut git = git_blob_hasher(size);
        let mut buf = vec![0u8; 1 << 20];
        let mut seen = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io_err(&f.target))?;
            if n == 0 {
                break;
            }
            seen += n as u64;
            sha256.update(&buf[..n]);
            git.update(&buf[..n]);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&sha256.finalize());
        let digest = Sha256Digest(digest);
        let name = f.blob.as_deref().and_then(normalise_etag);
        let named_sha256 = name.as_deref().and_then(Sha256Digest::from_hex);
        if seen != size {
            return Err(HubError::HostileLayout {
                path: f.target.clone(),
                why: "the file changed size while it was read".into(),
            });
        }
        match name.as_deref() {
            Some(n) if n.len() == 64 && n != digest.to_hex() => {
                return Err(HubError::BlobMismatch {
                    path: f.target.clone(),
                    algorithm: "sha256",
                    actual: digest.to_hex(),
                })
            }
            Some(n) if n.len() == 40 => {
                let id = hex::encode(git.finalize());
                if n != id {
                    return Err(HubError::BlobMismatch {
                        path: f.target.clone(),
                        algorithm: "git blob id",
                        actual: id,
                    });
                }
            }
            _ => {}
        }
        Ok(Verified {
            size,
            sha256: digest,
            named_sha256,
        })
    }

    /// Link `snapshots/<sha>/<path>` to `blobs/<etag>` with a relative symlink, as Python
    /// does (a copy where symlinks do not exist). Written under a temporary name, then
    /// renamed, so a reader never sees a half-made entry.
    pub fn link(&self, sha: &CommitSha, path: &str, etag: &str) -> Result<(), HubError> {
        let dest = self.snapshot_dir(sha).join(path);
        let parent = dest.parent().unwrap_or(&self.dir).to_owned();
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let tmp = parent.join(format!(".modelgate-link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        #[cfg(unix)]
        {
            let ups = path.split('/').count() + 1;
            let mut rel = PathBuf::new();
            for _ in 0..ups {
                rel.push("..");
            }
            rel.push("blobs");
            rel.push(etag);
            std::os::unix::fs::symlink(&rel, &tmp).map_err(io_err(&tmp))?;
        }
        #[cfg(not(unix))]
        {
            let blob = self.blob_path(etag);
            fs::copy(&blob, &tmp).map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &dest).map_err(io_err(&dest))
    }

    /// [`RepoCache::link`] each `(path, etag)`; when one fails, the links made before it
    /// are removed again, so the snapshot shows all of them or none.
    pub fn link_all(&self, sha: &CommitSha, files: &[(&str, String)]) -> Result<(), HubError> {
        for (i, (path, etag)) in files.iter().enumerate() {
            if let Err(e) = self.link(sha, path, etag) {
                for (done, _) in &files[..i] {
                    let _ = fs::remove_file(self.snapshot_dir(sha).join(done));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Write `refs/<revision>` = `sha` (temporary file, then rename).
    pub fn write_ref(&self, revision: &str, sha: &CommitSha) -> Result<(), HubError> {
        let path = self.dir.join("refs").join(revision);
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&parent).map_err(io_err(&parent))?;
        tmp.write_all(sha.as_str().as_bytes())
            .map_err(io_err(&path))?;
        tmp.persist(&path).map_err(|e| HubError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoId {
        RepoId::parse("org/model").unwrap()
    }

    #[test]
    fn etags_are_normalised_and_checked() {
        let sha = "a".repeat(64);
        assert_eq!(normalise_etag(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(
            normalise_etag(&format!("W/\"{}\"", "B".repeat(40))),
            Some("b".repeat(40))
        );
        assert_eq!(normalise_etag("\"../../x\""), None);
        assert_eq!(normalise_etag("abc"), None);
    }

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = git_blob_hasher(6);
        h.update(b"hello\n");
        assert_eq!(
            hex::encode(h.finalize()),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn writes_and_reads_the_python_layout() {
        let t = tempfile::tempdir().unwrap();
        let c = RepoCache::new(t.path(), &repo());
        let sha = CommitSha::parse(&"1".repeat(40)).unwrap();
        let content = b"hello\n";
        let etag = "ce013625030ba8dba906f756967f9e9ca394464a";
        fs::create_dir_all(c.dir().join("blobs")).unwrap();
        fs::write(c.blob_path(etag), content).unwrap();
        c.link(&sha, "sub/dir/a.txt", etag).unwrap();
        c.write_ref("main", &sha).unwrap();
        let link = fs::read_link(c.snapshot_dir(&sha).join("sub/dir/a.txt")).unwrap();
        assert_eq!(link, PathBuf::from(format!("../../../../blobs/{etag}")));
        assert_eq!(
            fs::read_to_string(c.dir().join("refs/main")).unwrap(),
            "1".repeat(40)
        );
        assert_eq!(c.resolve_revision("main").unwrap(), Some(sha.clone()));
        assert_eq!(c.resolve_revision(sha.as_str()).unwrap(), Some(sha.clone()));
        assert_eq!(c.resolve_revision("dev").unwrap(), None);
        let files = c.snapshot_files(&sha).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "sub/dir/a.txt");
        assert_eq!(files[0].blob.as_deref(), Some(etag));
        let v = c.verify(&files[0]).unwrap();
        assert_eq!(v.size, 6);
        assert_eq!(v.named_sha256, None);
        // A blob whose content does not match its name.
        fs::write(c.blob_path(etag), b"hellO\n").unwrap();
        let e = c.verify(&files[0]).unwrap_err();
        assert!(matches!(e, HubError::BlobMismatch { .. }), "{e}");
    }

    #[test]
    fn hostile_layouts_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("hub");
        let c = RepoCache::new(&root, &repo());
        let sha = CommitSha::parse(&"2".repeat(40)).unwrap();
        // A ref to a missing snapshot.
        fs::create_dir_all(c.dir().join("refs")).unwrap();
        fs::write(c.dir().join("refs/main"), sha.as_str()).unwrap();
        let e = c.resolve_revision("main").unwrap_err();
        assert!(matches!(e, HubError::DanglingRef { .. }), "{e}");
        // A ref that is not a sha.
        fs::write(c.dir().join("refs/main"), "not a sha").unwrap();
        assert!(matches!(
            c.resolve_revision("main").unwrap_err(),
            HubError::HostileLayout { .. }
        ));
        // A snapshot entry linking outside the cache.
        let outside = t.path().join("secret");
        fs::write(&outside, b"x").unwrap();
        fs::create_dir_all(c.snapshot_dir(&sha)).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&outside, c.snapshot_dir(&sha).join("f")).unwrap();
            let e = c.snapshot_files(&sha).unwrap_err();
            assert!(matches!(e, HubError::SymlinkEscapes { .. }), "{e}");
            assert!(e.to_string().contains("outside the cache"), "{e}");
        }
    }
}
