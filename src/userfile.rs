//! The small text files a user hands modelgate (policy and pipeline files): read with a size
//! cap before any allocation, checked as UTF-8, parsed as YAML with the error's line and
//! column. Shared so that every such file gets the same limits and the same error form;
//! each stage wraps [`ReadError`] and [`YamlError`] into its own error type.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why a capped text file could not be read. The caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the file")]
    Io(#[source] std::io::Error),
    /// Too large or not UTF-8; the message says which, in the house style.
    #[error("{0}")]
    Invalid(String),
}

impl ReadError {
    /// Advice for the `hint:` line, where there is something to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => Some("check the path"),
            ReadError::Io(_) => None,
            ReadError::Invalid(_) => Some("give the YAML text file itself, saved as UTF-8"),
        }
    }
}

/// Read `path` as UTF-8 text of at most `max` bytes; `what` names the kind of file in
/// messages (`a policy file`). Returns the raw bytes (for digests) and the text.
pub fn read_capped(path: &Path, max: u64, what: &str) -> Result<(Vec<u8>, String), ReadError> {
    let size = std::fs::metadata(path).map_err(ReadError::Io)?.len();
    if size > max {
        return Err(ReadError::Invalid(format!(
            "file is {size} bytes; {what} is at most {max} bytes"
        )));
    }
    let bytes = std::fs::read(path).map_err(ReadError::Io)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| {
            ReadError::Invalid(format!(
                "not valid UTF-8 (first bad byte at {})",
                e.valid_up_to()
            ))
        })?
        .to_owned();
    Ok((bytes, text))
}

/// A YAML error at a place in the file.
#[derive(Debug, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct YamlError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl YamlError {
    /// Advice for the `hint:` line.
    pub fn hint(&self) -> Option<&'static str> {
        Some("check the YAML at that line: indentation, and quotes around values holding `: ` or `#`")
    }
}

/// Deserialize YAML text, locating any error by line and column.
pub fn yaml<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as u64, l.column() as u64))
            .unwrap_or((1, 1));
        let msg = e.to_string();
        // serde_yaml appends " at line L column C"; callers print the location up front.
        let message = match msg.rfind(" at line ") {
            Some(i) if e.location().is_some() => msg[..i].to_owned(),
            _ => msg,
        };
        YamlError {
            line,
            column,
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_are_located_without_the_trailing_position() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct S {
            #[allow(dead_code)]
            a: u32,
        }
        let e = yaml::<S>("a: 1\nb: 2\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("unknown field `b`"), "{}", e.message);
        assert!(!e.message.contains(" at line "));
    }

    #[test]
    fn capped_reads_refuse_large_and_non_utf8_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.yaml");
        std::fs::write(&p, b"0123456789").unwrap();
        assert!(
            matches!(read_capped(&p, 5, "a test file"), Err(ReadError::Invalid(m)) if m.contains("a test file is at most 5 bytes"))
        );
        std::fs::write(&p, b"ok\xff").unwrap();
        assert!(
            matches!(read_capped(&p, 100, "x"), Err(ReadError::Invalid(m)) if m.contains("first bad byte at 2"))
        );
        std::fs::write(&p, b"ok").unwrap();
        assert_eq!(read_capped(&p, 100, "x").unwrap().1, "ok");
    }
}
