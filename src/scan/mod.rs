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
//! | `scan/template-ssti` | error: a chat template reaching Python internals (dunder names, `lipsum`/`cycler`/`joiner`/`namespace` as objects, ...) |
//! | `scan/template-injection` | error: a chat template that creates or reorders messages, or adds instruction text on a trigger |
//! | `scan/template-unparseable` | error: a chat template the Jinja parser rejects, or too large to analyse |
//! | `scan/template-oversize` | warning: a chat template over 64 KiB |
//! | `scan/template-unknown` | note: a chat template that matches no official template in `policies/templates.yaml` |
//! | `scan/tokenizer-regex` | error: a tokenizer regex with nested quantifiers or ambiguous alternation under a quantifier |
//! | `scan/tokenizer-added-token` | warning: an invisible, zero-width, bidi or instruction-like added token |
//! | `scan/tokenizer-duplicate` | error: two token strings with one id |
//! | `scan/tokenizer-normalizer` | warning: a normalizer that deletes or replaces non-whitespace text |
//! | `scan/tokenizer-mismatch` | warning: a tokenizer.model and a tokenizer.json beside it that disagree (pieces, ids, special tokens, byte fallback) |
//!
//! Chat templates are found by [`crate::formats::template`] (every GGUF
//! `tokenizer.chat_template*` key, `tokenizer_config.json`, `chat_template.json`, `*.jinja`)
//! and analysed by `template` on minijinja's syntax tree: nothing is rendered. Tokenizer
//! files are read by [`crate::formats::tokenizer_file`] and judged by `tokenizer`.
//!
//! GGUF block-quantized tensors are not decoded, so value checks skip them.
//!
//! Module dependencies point one way: `files` (the walk) calls `pickle`, `template` and
//! `tokenizer`; all of them use the shared helpers here.

mod catalogue;
mod files;
mod pickle;
mod regex_check;
mod template;
mod tokenizer;
mod values;

use std::fs;
use std::path::{Path, PathBuf};

use crate::finding::{Evidence, Finding, Severity};
use crate::formats::{FormatError, Weights};

pub use template::{analyse_template, TemplateIssue, TemplateIssueKind};

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
pub const RULE_TEMPLATE_SSTI: &str = "scan/template-ssti";
pub const RULE_TEMPLATE_INJECTION: &str = "scan/template-injection";
pub const RULE_TEMPLATE_UNPARSEABLE: &str = "scan/template-unparseable";
pub const RULE_TEMPLATE_OVERSIZE: &str = "scan/template-oversize";
pub const RULE_TEMPLATE_UNKNOWN: &str = "scan/template-unknown";
pub const RULE_TOKENIZER_REGEX: &str = "scan/tokenizer-regex";
pub const RULE_TOKENIZER_ADDED_TOKEN: &str = "scan/tokenizer-added-token";
pub const RULE_TOKENIZER_DUPLICATE: &str = "scan/tokenizer-duplicate";
pub const RULE_TOKENIZER_NORMALIZER: &str = "scan/tokenizer-normalizer";
pub const RULE_TOKENIZER_MISMATCH: &str = "scan/tokenizer-mismatch";

/// Every scan rule: (id, default severity, short description). Reports and the manual
/// take the descriptions from here.
pub const RULES: &[(&str, Severity, &str)] = &[
    (RULE_DANGEROUS_GLOBAL, Severity::Error, "a pickle imports a global known to run code, commands, network or file access"),
    (RULE_DYNAMIC_GLOBAL, Severity::Error, "a pickle imports a global whose name is computed at load time"),
    (RULE_UNKNOWN_GLOBAL, Severity::Warning, "a pickle imports a global outside the tensor-rebuild allowlist (an error when the pickle calls it)"),
    (RULE_PICKLE_MALFORMED, Severity::Error, "a pickle that cannot be fully replayed"),
    (RULE_PICKLE_FORMAT, Severity::Note, "the weights are a pickle, a format that can run code when loaded"),
    (RULE_REMOTE_CODE, Severity::Error, "Python code or `auto_map` that `trust_remote_code=True` would run"),
    (RULE_STRUCTURE, Severity::Error, "a weight file the format reader rejects"),
    (RULE_NAN_INF, Severity::Error, "NaN or infinite values in a float tensor"),
    (RULE_ALL_ZERO, Severity::Warning, "a float tensor whose every value is zero"),
    (RULE_SYMLINK_ESCAPE, Severity::Error, "a symlink resolving outside the model directory"),
    (RULE_UNEXPECTED_FILE, Severity::Error, "executables, scripts, archives and other files a model does not need"),
    (RULE_UNREADABLE, Severity::Error, "a file that could not be read"),
    (RULE_TEMPLATE_SSTI, Severity::Error, "a chat template reaches Python internals (server-side template injection, CVE-2024-34359)"),
    (RULE_TEMPLATE_INJECTION, Severity::Error, "a chat template creates or reorders messages, or adds instruction text on a trigger"),
    (RULE_TEMPLATE_UNPARSEABLE, Severity::Error, "a chat template that does not parse as Jinja, or is too large to analyse"),
    (RULE_TEMPLATE_OVERSIZE, Severity::Warning, "a chat template over 64 KiB"),
    (RULE_TEMPLATE_UNKNOWN, Severity::Note, "a chat template that differs from every official template in the catalogue"),
    (RULE_TOKENIZER_REGEX, Severity::Error, "a tokenizer regex prone to catastrophic backtracking"),
    (RULE_TOKENIZER_ADDED_TOKEN, Severity::Warning, "an invisible, zero-width, bidi or instruction-like added token"),
    (RULE_TOKENIZER_DUPLICATE, Severity::Error, "two token strings with one id"),
    (RULE_TOKENIZER_NORMALIZER, Severity::Warning, "a normalizer that deletes or replaces non-whitespace text"),
    (RULE_TOKENIZER_MISMATCH, Severity::Warning, "a tokenizer.model and a tokenizer.json that disagree on pieces, ids or byte fallback"),
];

/// The short description of a scan rule, for report rule tables.
pub fn rule_description(id: &str) -> Option<&'static str> {
    RULES.iter().find(|(r, _, _)| *r == id).map(|(_, _, d)| *d)
}

/// Files visited in one directory scan.
pub const MAX_FILES: usize = 100_000;
/// Directory depth followed below the model root.
pub const MAX_DEPTH: usize = 32;

/// The scan could not start: the path itself is unreadable or too large to walk.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read `{path}`")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` holds more than {MAX_FILES} files, more than one scan visits")]
    TooManyFiles { path: PathBuf },
}

impl ScanError {
    /// Advice for the `hint:` line.
    pub fn hint(&self) -> &'static str {
        match self {
            ScanError::Unreadable { .. } => {
                "give a weight file or a model directory that this user can read"
            }
            ScanError::TooManyFiles { .. } => {
                "scan the model's own folder, not a folder that holds many models or a whole disk"
            }
        }
    }
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

/// The fault inside a format error, without the path (evidence carries the path).
fn fault_text(e: &FormatError) -> String {
    match e {
        FormatError::Io { source, .. } => source.to_string(),
        FormatError::Malformed { fault, .. } => fault.clone(),
        FormatError::Unsupported { what, .. } => format!("{what} is not supported"),
        FormatError::NotACheckpoint { why, .. } => why.clone(),
    }
}

/// Turn a format reader's verdict into findings, and check the values it can read.
fn check_weights(opened: Result<Weights, FormatError>, rel: &Path, out: &mut Vec<Finding>) {
    match opened {
        Ok(w) => values::check(&w, rel, out),
        Err(e) => out.push(structure_finding(&e, rel)),
    }
}

fn structure_finding(e: &FormatError, rel: &Path) -> Finding {
    let at = Evidence::file(rel);
    match e {
        FormatError::Unsupported { .. } => Finding::new(
            RULE_STRUCTURE,
            Severity::Note,
            format!("structure and values of `{}` were not checked: {}", rel.display(), fault_text(e)),
        )
        .at(at),
        FormatError::Io { .. } => Finding::new(
            RULE_UNREADABLE,
            Severity::Error,
            format!("cannot read `{}`: {}", rel.display(), fault_text(e)),
        )
        .at(at),
        FormatError::Malformed { .. } | FormatError::NotACheckpoint { .. } => Finding::new(
            RULE_STRUCTURE,
            Severity::Error,
            format!("`{}` is malformed: {}", rel.display(), fault_text(e)),
        )
        .at(at)
        .hint("a reader that trusts this file may crash or read out of bounds; get a fresh copy from the source"),
    }
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
        // the cause is printed once: by the error chain, not in the message too
        assert!(!e.to_string().contains("No such file"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(!e.hint().is_empty());
    }

    #[test]
    fn every_rule_constant_is_described_once() {
        let mut ids: Vec<&str> = RULES.iter().map(|r| r.0).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        assert!(ids.iter().all(|id| id.starts_with("scan/")));
        assert_eq!(
            rule_description(RULE_TEMPLATE_SSTI).map(|d| d.is_empty()),
            Some(false)
        );
    }
}
