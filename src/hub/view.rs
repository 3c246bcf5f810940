//! The selected files of a snapshot as a plain folder the stages can read: a temporary
//! folder named after the repository, holding hard links to the cache's blobs (a copy
//! where the file system cannot link). Snapshot entries are symlinks out of the snapshot
//! folder, which the format readers refuse, and an `--include` subset must not show the
//! other files the snapshot already holds. The folder is made beside the cache (same file
//! system, so links work) and removed when the [`View`] is dropped; the cache itself is
//! never written through it.

use std::fs;
use std::path::{Path, PathBuf};

use super::{io_err, HubError, Snapshot};

/// A temporary folder holding a snapshot's selected files.
#[derive(Debug)]
pub struct View {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl View {
    /// Lay out `snapshot`'s files in a new temporary folder near `cache_root`.
    pub fn create(snapshot: &Snapshot, cache_root: &Path) -> Result<View, HubError> {
        let near = cache_root.parent().filter(|p| p.is_dir());
        let dir = near
            .and_then(|p| {
                tempfile::Builder::new()
                    .prefix(".modelgate-view-")
                    .tempdir_in(p)
                    .ok()
            })
            .map_or_else(
                || {
                    tempfile::Builder::new()
                        .prefix("modelgate-view-")
                        .tempdir()
                        .map_err(io_err(&std::env::temp_dir()))
                },
                Ok,
            )?;
        let name = snapshot.provenance.repository.name();
        let folder = dir.path().join(name);
        for (rel, target) in &snapshot.files {
            let dest = folder.join(rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            if fs::hard_link(target, &dest).is_err() {
                fs::copy(target, &dest).map_err(io_err(&dest))?;
            }
        }
        let path = match snapshot.files.as_slice() {
            [(only, _)] => folder.join(only),
            _ => folder,
        };
        Ok(View { _dir: dir, path })
    }

    /// The model folder, or the file when one file was selected.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
