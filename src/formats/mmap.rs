//! Read-only memory maps of checkpoint files: the one place `unsafe` is allowed.
//!
//! Mapping lets `inspect` read headers of a multi-gigabyte checkpoint without reading its
//! tensor data, and lets conversion stream tensors without copying them. The engine keeps
//! its weights as [`MappedSlice`]s, so a loaded model reads them from the page cache in
//! their stored type instead of holding a copy.
//!
//! Two ways keep a long pass over a large checkpoint from holding it all in memory:
//! [`Mapped::release`] tells the kernel a range already read is not needed (pages of a
//! read-only file map are dropped and read again from the file if touched), and
//! [`FileReads`] reads a range with an explicit `pread` into a buffer, so a file truncated
//! while it is being read gives an error naming the range instead of killing the process
//! (a mapped page past the new end of a file raises SIGBUS).

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

    /// Drop the resident pages of `start..start + len` (clamped to the map). They stay
    /// in the page cache and are read again on the next touch; the point is that a pass
    /// over a large file keeps only what it is working on in this process's memory.
    pub fn release(&self, start: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let start = start.min(map.len());
        let len = len.min(map.len() - start);
        if len == 0 {
            return;
        }
        #[cfg(unix)]
        {
            // SAFETY: MADV_DONTNEED on a read-only, never-written private file mapping
            // discards no data: the next access reads the same bytes from the file again.
            // No `&mut` to the map exists, and the range is inside it (clamped above).
            #[allow(unsafe_code)]
            let advised = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
            // advice that is refused only costs memory, never correctness
            let _ = advised;
        }
    }

    /// Fault the whole map into this process's page tables now (Linux
    /// `MADV_POPULATE_READ`, reading from storage what the page cache lacks), so that a run
    /// which reads every weight does not take a page fault per 4 KiB page in its first pass,
    /// as llama.cpp's loader does with `MAP_POPULATE`. A kernel without the advice (before
    /// 5.14) or another system refuses it, which costs only those faults later.
    pub fn prefault(&self) {
        #[cfg(target_os = "linux")]
        if let Some(map) = &self.map {
            let _ = map.advise(memmap2::Advice::PopulateRead);
        }
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

/// Files of a checkpoint opened for explicit reads of byte ranges.
#[derive(Debug)]
pub struct FileReads {
    files: Vec<(std::path::PathBuf, File)>,
}

impl FileReads {
    pub fn open(paths: &[std::path::PathBuf]) -> Result<FileReads, FormatError> {
        let files = paths
            .iter()
            .map(|p| {
                File::open(p)
                    .map(|f| (p.clone(), f))
                    .map_err(|e| FormatError::io(p, e))
            })
            .collect::<Result<_, _>>()?;
        Ok(FileReads { files })
    }

    /// `len` bytes at `offset` of file `file`, the data of the tensor called `what`. A
    /// file that became shorter than the range (truncated or replaced while in use) is an
    /// error naming the tensor, the file and both sizes.
    pub fn read(
        &self,
        file: usize,
        offset: u64,
        len: u64,
        what: &str,
    ) -> Result<Vec<u8>, FormatError> {
        let Some((path, f)) = self.files.get(file) else {
            return Err(FormatError::malformed(
                Path::new("?"),
                format!("tensor `{what}` names no file"),
            ));
        };
        let end = offset.checked_add(len);
        let size = f.metadata().map_err(|e| FormatError::io(path, e))?.len();
        let short = || {
            FormatError::malformed(
                path,
                format!(
                    "tensor `{what}` needs bytes {offset}..{} but the file now has {size} bytes (truncated or replaced while in use)",
                    end.unwrap_or(u64::MAX)
                ),
            )
        };
        match end {
            Some(e) if e <= size => {}
            _ => return Err(short()),
        }
        let n = usize::try_from(len).map_err(|_| short())?;
        let mut buf = vec![0u8; n];
        read_exact_at(f, &mut buf, offset).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => short(),
            _ => FormatError::io(path, e),
        })?;
        Ok(buf)
    }
}

#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
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

    #[test]
    fn explicit_reads_name_the_tensor_when_the_file_shrank() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        std::fs::write(&path, (0u8..100).collect::<Vec<_>>()).unwrap();
        let r = FileReads::open(std::slice::from_ref(&path)).unwrap();
        assert_eq!(
            r.read(0, 90, 10, "t").unwrap(),
            (90u8..100).collect::<Vec<_>>()
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(50)
            .unwrap();
        let e = r
            .read(0, 40, 20, "blk.0.ffn_down.weight")
            .unwrap_err()
            .to_string();
        assert!(e.contains("w.bin"), "{e}");
        let m = Mapped::open(&path).unwrap();
        m.release(0, 4096);
        assert_eq!(m.bytes()[7], 7);
    }
}
