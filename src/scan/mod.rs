//! The scan gate: looks at a weight file or a model directory as an attacker would have
//! left it and reports [`Finding`]s, before anything loads it.
//!
//! It sits after import/convert and before policy in the pipeline, and reads nothing
//! itself beyond a few magic bytes: pickles are replayed by [`crate::formats::pickle`]
//! (opcodes only, nothing runs) and judged here against an allowlist; safetensors, GGUF
//! and PyTorch files are opened by [`crate::formats`], whose errors become structure
//! findings and whose tensor data (through the memory map) is checked for NaN, Inf and
//! all-zero tensors. Around the weights it looks for code a loader would run
//! (`*.py`, `auto_map`), executables and archives, and symlinks that leave the model
//! directory. Rules (stable ids, severity):
//!
//! | rule | severity |
//! |---|---|
//! | `scan/pickle-dangerous-global` | error: a global known to run code, commands, network or file access |
//! | `scan/pickle-dynamic-global` | error: STACK_GLOBAL on names computed at load time |
//! | `scan/pickle-unknown-global` | warning: a global outside the tensor-rebuild allowlist |
//! | `scan/pickle-malformed` | error (warning for trailing data after a complete pickle) |
//! | `scan/pickle-format` | note: the weights are a pickle at all |
//! | `scan/remote-code` | error: `*.py` files, `auto_map` in a `*config.json` |
//! | `scan/structure` | error: a safetensors, GGUF or PyTorch file the format reader rejects (note when it cannot check) |
//! | `scan/nan-inf` | error: NaN or infinite values in an F32/F16/BF16/F64 tensor |
//! | `scan/all-zero-tensor` | warning: a float tensor whose every value is zero |
//! | `scan/symlink-escape` | error: a symlink resolving outside the model directory |
//! | `scan/unexpected-file` | error for executables and scripts, warning for archives and other oddities |
//! | `scan/unreadable` | error: a file that could not be read |
//!
//! GGUF block-quantized tensors are not decoded, so value checks skip them.

mod files;
mod pickle;
mod values;

use std::fs;
use std::path::{Path, PathBuf};

use crate::finding::Finding;

pub const RULE_DANGEROUS_GLOBAL: &str = "scan/pickle-dangerous-global";
pub const RULE_DYNAMIC_GLOBAL: &str = "scan/pickle-dynamic-global";
pub const RULE_UNKNOWN_GLOBAL: &str = "scan/pickle-unknown-global";
pub const RULE_PICKLE_MALFORMED: &str = "scan/pickle-malformed";
pub const RULE_PICKLE_FORMAT: &str = "scan/pickle-format";
pub const RULE_REMOTE_CODE: &str = "scan/remote-code";
pub const RULE_STRUCTURE: &str = "scan/structure";
pub const RULE_NAN_INF: &str = "scan/nan-inf";
pub const RULE_ALL_ZERO: &str = "scan/all-zero-tensor";
pub const RULE_SYMLINK_ESCAPE: &str = "scan/symlink-escape";
pub const RULE_UNEXPECTED_FILE: &str = "scan/unexpected-file";
pub const RULE_UNREADABLE: &str = "scan/unreadable";

/// Files visited in one directory scan.
pub const MAX_FILES: usize = 100_000;
/// Directory depth followed below the model root.
pub const MAX_DEPTH: usize = 32;

/// The scan could not start: the path itself is unreadable or too large to walk.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read `{path}`: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` holds more than {MAX_FILES} files, more than one scan visits")]
    TooManyFiles { path: PathBuf },
}

/// Scan a weight file or a model directory. Findings come in walk order (sorted paths),
/// each file's findings in the order its checks ran.
pub fn scan(path: &Path) -> Result<Vec<Finding>, ScanError> {
    let meta = fs::metadata(path).map_err(|source| ScanError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    if meta.is_file() {
        files::scan_file(path, path, &mut out);
        return Ok(out);
    }
    if !meta.is_dir() {
        out.push(files::not_regular(path));
        return Ok(out);
    }
    let root = fs::canonicalize(path).map_err(|source| ScanError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mut walker = files::Walker::new(root, &mut out);
    walker.walk(Path::new(""), 0)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_an_input_error() {
        let e = scan(Path::new("/nonexistent/modelgate-scan")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot read `/nonexistent/modelgate-scan`"));
    }
}
