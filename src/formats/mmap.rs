//! Read-only memory maps of checkpoint files: the one place `unsafe` is allowed.
//!
//! Mapping lets `inspect` read headers of a multi-gigabyte checkpoint without reading its
//! tensor data, and lets conversion stream tensors without copying them.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::FormatError;

/// A file mapped read-only. Empty files are not mapped (mapping zero bytes fails on Linux).
#[derive(Debug)]
pub struct Mapped {
    map: Option<Mmap>,
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
        Ok(Mapped { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
