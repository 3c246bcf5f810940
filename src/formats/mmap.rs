//! Read-only memory maps of checkpoint files: the one place `unsafe` is allowed.
//!
//! Mapping lets `inspect` read headers of a multi-gigabyte checkpoint without reading its
//! tensor data, and lets conversion stream tensors without copying them. The engine keeps
//! its weights as [`MappedSlice`]s, so a loaded model reads them from the page cache in
//! their stored type instead of holding a copy.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::FormatError;

/// A file mapped read-only. Empty files are not mapped (mapping zero bytes fails on Linux).
#[derive(Debug)]
pub struct Mapped {
    map: Option<Arc<Mmap>>,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Mapped, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if len == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: the map is read-only and private to this process. Another process
        // truncating the file while it is mapped would make later reads fault (SIGBUS);
        // that is the documented risk of mapping, accepted by every mmap-based model
        // loader, and modelgate never writes to files it has mapped.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Ok(Mapped {
            map: Some(Arc::new(map)),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().map(|m| &m[..]).unwrap_or(&[])
    }

    /// `part`, a slice of [`Mapped::bytes`], as a range that keeps the map alive after
    /// `self` is dropped. `None` when `part` does not lie inside this map.
    pub fn share(&self, part: &[u8]) -> Option<MappedSlice> {
        let map = self.map.as_ref()?;
        // compared as addresses: the slice is either inside the map or not
        let base = map.as_ptr() as usize;
        let start = (part.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(part.len())?;
        if end > map.len() {
            return None;
        }
        Some(MappedSlice {
            map: Arc::clone(map),
            start,
            len: part.len(),
        })
    }
}

/// A byte range of a mapped file, holding the map open.
#[derive(Clone)]
pub struct MappedSlice {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for MappedSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedSlice[{}+{}]", self.start, self.len)
    }
}

impl Deref for MappedSlice {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_slices_outlive_the_map_handle_and_reject_foreign_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, (0u8..100).collect::<Vec<_>>()).unwrap();
        let m = Mapped::open(&path).unwrap();
        let part = m.share(&m.bytes()[10..20]).unwrap();
        assert!(m.share(&[1, 2, 3]).is_none());
        drop(m);
        assert_eq!(&part[..], &(10u8..20).collect::<Vec<_>>()[..]);
    }
}
