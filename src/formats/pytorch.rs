//! PyTorch checkpoint recognition (placeholder during bring-up).

use std::path::Path;

use super::{FormatError, Weights};

pub fn looks_like_pytorch(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80)
}

pub fn open(path: &Path) -> Result<Weights, FormatError> {
    Err(FormatError::Unsupported {
        path: path.to_owned(),
        what: "PyTorch (reader not built yet)".into(),
    })
}
