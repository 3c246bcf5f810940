//! Walking a model directory and sorting its files: weights go to the format readers,
//! code and executables become findings, symlinks are resolved against the model root.
//!
//! To tell an ELF binary from a tokenizer this reads the first bytes of each file (at most
//! [`HEAD`]) and compares magic numbers; it parses nothing. Every weight file is opened
//! through [`crate::formats`], and so are the files carrying chat templates
//! (`tokenizer_config.json`, `chat_template.json`, `*.jinja`, GGUF metadata) and
//! `tokenizer.json`, whose contents go to the `template` and `tokenizer` rules.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::finding::{Evidence, Finding, Severity};
use crate::formats::{self, gguf, safetensors, sentencepiece, template, tokenizer_file};

use super::{
    check_weights, fault_text, pickle, structure_finding, ScanError, MAX_DEPTH, MAX_FILES,
    RULE_REMOTE_CODE, RULE_STRUCTURE, RULE_SYMLINK_ESCAPE, RULE_UNEXPECTED_FILE, RULE_UNREADABLE,
};

/// Bytes read to recognise a file (a tar header's `ustar` is at 257).
const HEAD: usize = 512;
/// Largest config file parsed for `auto_map`.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Extensions of files PyTorch and pickle-based tools load with `pickle`.
const PICKLE_EXTENSIONS: &[&str] = &[
    "bin", "pt", "pth", "ckpt", "pkl", "pickle", "joblib", "dill",
];
const CODE_EXTENSIONS: &[&str] = &["py", "pyc", "pyo", "pyw"];
const EXECUTABLE_EXTENSIONS: &[&str] = &[
    "exe", "dll", "so", "dylib", "sh", "bash", "bat", "cmd", "ps1", "com", "scr", "msi", "jar",
    "apk",
];

pub(super) struct Walker<'a> {
    root: PathBuf,
    /// Where symlinks may point: the root, or the repository folder of a Hugging Face
    /// cache snapshot (`models--x/snapshots/<rev>` links into `models--x/blobs`).
    boundary: PathBuf,
    out: &'a mut Vec<Finding>,
    files: usize,
}

impl<'a> Walker<'a> {
    pub(super) fn new(root: PathBuf, out: &'a mut Vec<Finding>) -> Self {
        let boundary = match root.parent() {
            Some(snapshots) if snapshots.file_name().is_some_and(|n| n == "snapshots") => snapshots
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| root.clone()),
            _ => root.clone(),
        };
        Walker {
            root,
            boundary,
            out,
            files: 0,
        }
    }

    /// Visit `rel` (a directory relative to the root) and everything below it.
    pub(super) fn walk(&mut self, rel: &Path, depth: usize) -> Result<(), ScanError> {
        let dir = self.root.join(rel);
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) => {
                if depth == 0 {
                    return Err(ScanError::Unreadable {
                        path: dir,
                        source: e,
                    });
                }
                self.unreadable(rel, &e.to_string());
                return Ok(());
            }
        };
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in read {
            match entry {
                Ok(e) => names.push(rel.join(e.file_name())),
                Err(e) => self.unreadable(rel, &e.to_string()),
            }
        }
        names.sort();
        for rel in names {
            self.files += 1;
            if self.files > MAX_FILES {
                return Err(ScanError::TooManyFiles {
                    path: self.root.clone(),
                });
            }
            let abs = self.root.join(&rel);
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    self.unreadable(&rel, &e.to_string());
                    continue;
                }
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                self.symlink(&abs, &rel);
            } else if ft.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    self.out.push(
                        Finding::new(
                            RULE_UNEXPECTED_FILE,
                            Severity::Warning,
                            format!("directories nest deeper than {MAX_DEPTH} levels; `{}` was not scanned", rel.display()),
                        )
                        .at(Evidence::file(&rel)),
                    );
                } else {
                    self.walk(&rel, depth + 1)?;
                }
            } else if ft.is_file() {
                scan_file(&abs, &rel, self.out);
            } else {
                self.out.push(not_regular(&rel));
            }
        }
        Ok(())
    }

    fn unreadable(&mut self, rel: &Path, why: &str) {
        self.out.push(
            Finding::new(
                RULE_UNREADABLE,
                Severity::Error,
                format!("cannot read `{}`: {why}", rel.display()),
            )
            .at(Evidence::file(rel))
            .hint("every file of a model must be readable to be vetted"),
        );
    }

    /// A symlink must resolve inside the boundary; a file it points to is scanned under
    /// the link's name (linked directories are not followed, so loops cannot form).
    fn symlink(&mut self, abs: &Path, rel: &Path) {
        let target = fs::read_link(abs)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let resolved = match fs::canonicalize(abs) {
            Ok(p) => p,
            Err(_) => {
                // Dangling: judge where it would point, lexically.
                let parent = abs.parent().unwrap_or(&self.root);
                let lexical = normalize(&parent.join(&target));
                if !lexical.starts_with(&self.boundary) {
                    self.escape(rel, &target);
                } else {
                    self.out.push(
                        Finding::new(
                            RULE_UNEXPECTED_FILE,
                            Severity::Warning,
                            format!(
                                "symlink `{}` points to `{target}`, which does not exist",
                                rel.display()
                            ),
                        )
                        .at(Evidence::file(rel)),
                    );
                }
                return;
            }
        };
        if !resolved.starts_with(&self.boundary) {
            self.escape(rel, &target);
            return;
        }
        if resolved.is_file() {
            scan_file(&resolved, rel, self.out);
        }
    }

    fn escape(&mut self, rel: &Path, target: &str) {
        self.out.push(
            Finding::new(
                RULE_SYMLINK_ESCAPE,
                Severity::Error,
                format!(
                    "symlink `{}` points to `{target}`, outside the model directory",
                    rel.display()
                ),
            )
            .at(Evidence::file(rel))
            .hint("a loader following it reads (or overwrites) files outside the model; replace the link with the file it should contain"),
        );
    }
}

/// FIFOs, sockets and devices: opening one could block or read forever, so it is not read.
pub(super) fn not_regular(rel: &Path) -> Finding {
    Finding::new(
        RULE_UNEXPECTED_FILE,
        Severity::Warning,
        format!(
            "`{}` is not a regular file (a FIFO, socket or device); it was not read",
            rel.display()
        ),
    )
    .at(Evidence::file(rel))
}

/// Resolve `.` and `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned()
}

fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut head = Vec::with_capacity(HEAD);
    f.take(HEAD as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// What a file's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Magic {
    Gguf,
    Zip,
    Executable(&'static str),
    Archive(&'static str),
    Other,
}

fn magic(head: &[u8]) -> Magic {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(b"GGUF") {
        Magic::Gguf
    } else if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        Magic::Zip
    } else if starts(b"\x7fELF") {
        Magic::Executable("an ELF executable or library")
    } else if starts(b"MZ") {
        Magic::Executable("a Windows executable")
    } else if starts(b"\xfe\xed\xfa\xce")
        || starts(b"\xfe\xed\xfa\xcf")
        || starts(b"\xce\xfa\xed\xfe")
        || starts(b"\xcf\xfa\xed\xfe")
        || starts(b"\xca\xfe\xba\xbe")
    {
        Magic::Executable("a Mach-O executable (or Java class)")
    } else if starts(b"#!") {
        Magic::Executable("a script with a `#!` interpreter line")
    } else if starts(b"\x1f\x8b") {
        Magic::Archive("gzip")
    } else if starts(b"BZh") {
        Magic::Archive("bzip2")
    } else if starts(b"\xfd7zXZ\x00") {
        Magic::Archive("xz")
    } else if starts(b"\x28\xb5\x2f\xfd") {
        Magic::Archive("zstd")
    } else if starts(b"7z\xbc\xaf\x27\x1c") {
        Magic::Archive("7z")
    } else if starts(b"Rar!\x1a\x07") {
        Magic::Archive("rar")
    } else if head.get(257..262) == Some(b"ustar") {
        Magic::Archive("tar")
    } else {
        Magic::Other
    }
}

/// A safetensors header length (u64 LE) within the format's 100 MB cap, then `{`: text
/// files with a `{` at byte 8 fail the length test.
fn looks_like_safetensors(head: &[u8]) -> bool {
    safetensors::looks_like_safetensors(head)
        && head
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b: [u8; 8]| u64::from_le_bytes(b) <= 100_000_000)
}

/// Whether bytes open like a pickle: a PROTO opcode, or a protocol 0/1 opcode that can
/// start a pickle and is unlikely to begin text or binary data.
fn looks_like_pickle(head: &[u8]) -> bool {
    match head {
        [0x80, p, ..] => *p <= formats::pickle::HIGHEST_PROTOCOL,
        [b'(' | b'c' | b'}' | b']' | b')' | b'N' | b'i', ..] => true,
        _ => false,
    }
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

/// Scan one regular file. `abs` is read; `rel` names it in findings.
pub(super) fn scan_file(abs: &Path, rel: &Path, out: &mut Vec<Finding>) {
    let name = file_name(rel);
    let ext = extension(rel);
    let at = || Evidence::file(rel);
    if CODE_EXTENSIONS.contains(&ext.as_str()) {
        out.push(
            Finding::new(
                RULE_REMOTE_CODE,
                Severity::Error,
                format!("`{}` is Python code shipped with the model; `trust_remote_code=True` would run it", rel.display()),
            )
            .at(at())
            .hint("load the model without `trust_remote_code`, or review the code and pin its digest"),
        );
        return;
    }
    let head = match read_head(abs) {
        Ok(h) => h,
        Err(e) => {
            out.push(
                Finding::new(
                    RULE_UNREADABLE,
                    Severity::Error,
                    format!("cannot read `{}`: {e}", rel.display()),
                )
                .at(at()),
            );
            return;
        }
    };
    let exec_bit = fs::metadata(abs)
        .map(|m| is_executable(&m))
        .unwrap_or(false);
    match magic(&head) {
        Magic::Executable(what) => {
            out.push(executable(rel, what));
            return;
        }
        Magic::Archive(kind) => {
            out.push(
                Finding::new(
                    RULE_UNEXPECTED_FILE,
                    Severity::Warning,
                    format!(
                        "`{}` is a {kind} archive; its contents were not scanned",
                        rel.display()
                    ),
                )
                .at(at())
                .hint("unpack it and scan the contents, or remove it from the model"),
            );
            return;
        }
        Magic::Gguf => {
            gguf_file(abs, rel, out);
            return;
        }
        Magic::Zip => {
            pickle::scan_pickles(abs, rel, out);
            return;
        }
        Magic::Other => {}
    }
    if EXECUTABLE_EXTENSIONS.contains(&ext.as_str()) {
        out.push(executable(rel, "named like an executable or script"));
        return;
    }
    if ext == "gguf" {
        // Named GGUF without the magic: let the reader say what is wrong.
        gguf_file(abs, rel, out);
        return;
    }
    if ext == "jinja" {
        match template::from_jinja_file(abs, &rel.display().to_string()) {
            Ok(t) => super::template::judge(&[t], rel, out),
            Err(e) => out.push(structure_finding(&e, rel)),
        }
        return;
    }
    if name == "chat_template.json" {
        match template::from_json_file(abs) {
            Ok(t) => super::template::judge(&t, rel, out),
            Err(e) => out.push(structure_finding(&e, rel)),
        }
        return;
    }
    if name == "tokenizer.json" {
        match tokenizer_file::read(abs) {
            Ok(parts) => super::tokenizer::judge(&parts, rel, out),
            Err(e) => out.push(structure_finding(&e, rel)),
        }
        return;
    }
    if name == "tokenizer.model" {
        match sentencepiece::read(abs) {
            Ok(model) => {
                // A tokenizer.json that cannot be read gets its own finding when visited.
                let json = abs.with_file_name("tokenizer.json");
                if json.is_file() {
                    if let Ok(vocab) = tokenizer_file::vocabulary(&json) {
                        super::tokenizer::agree(&model, &vocab, rel, out);
                    }
                }
            }
            Err(e) => out.push(structure_finding(&e, rel)),
        }
        return;
    }
    if name.ends_with(".safetensors.index.json") {
        check_weights(safetensors::open_sharded(abs), rel, out);
        return;
    }
    if ext == "safetensors" || looks_like_safetensors(&head) {
        check_weights(safetensors::open(abs), rel, out);
        return;
    }
    let pickle_ext = PICKLE_EXTENSIONS.contains(&ext.as_str());
    let binary_pickle =
        matches!(head.as_slice(), [0x80, p, ..] if *p <= formats::pickle::HIGHEST_PROTOCOL);
    // `.bin` also names raw data files; only analyse it when it opens like a pickle.
    if binary_pickle
        || (pickle_ext && (looks_like_pickle(&head) || (ext != "bin" && !head.is_empty())))
    {
        pickle::scan_pickles(abs, rel, out);
        return;
    }
    if ext == "bin" {
        out.push(
            Finding::new(
                RULE_UNEXPECTED_FILE,
                Severity::Note,
                format!(
                    "`{}` is not a pickle, safetensors or GGUF file; its contents were not checked",
                    rel.display()
                ),
            )
            .at(at()),
        );
        return;
    }
    if ext == "json" && name.ends_with("config.json") {
        auto_map(abs, rel, out);
        if name == "tokenizer_config.json" {
            match template::from_json_file(abs) {
                Ok(t) => super::template::judge(&t, rel, out),
                Err(e) => out.push(structure_finding(&e, rel)),
            }
        }
        return;
    }
    if exec_bit {
        out.push(
            Finding::new(
                RULE_UNEXPECTED_FILE,
                Severity::Warning,
                format!("`{}` has its executable permission bit set", rel.display()),
            )
            .at(at())
            .hint(
                "model files are data; clear the bit (`chmod -x`) unless the file is meant to run",
            ),
        );
    }
}

/// A GGUF file: structure and values, then the chat templates and added tokens in its
/// metadata.
fn gguf_file(abs: &Path, rel: &Path, out: &mut Vec<Finding>) {
    let opened = gguf::open(abs);
    if let Ok(w) = &opened {
        let templates = template::from_gguf(abs, &w.metadata);
        super::template::judge(&templates, rel, out);
        let added = tokenizer_file::added_from_gguf(&w.metadata);
        super::tokenizer::added_tokens(&added, rel, "tokenizer.ggml.tokens", out);
        gguf_hf_tokenizer(abs, rel, &w.metadata, out);
    }
    check_weights(opened, rel, out);
}

/// The GGUF key that may carry a whole Hugging Face `tokenizer.json`, for runtimes that
/// load tokenizers with the `tokenizers` library.
const GGUF_HF_TOKENIZER: &str = "tokenizer.huggingface.json";

/// A `tokenizer.json` embedded in GGUF metadata gets the same rules as one in a directory;
/// its evidence keys are prefixed with the GGUF key.
fn gguf_hf_tokenizer(
    abs: &Path,
    rel: &Path,
    metadata: &[(String, formats::MetaValue)],
    out: &mut Vec<Finding>,
) {
    let text = match gguf::Meta::new(metadata).str(GGUF_HF_TOKENIZER) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            out.push(
                Finding::new(
                    RULE_STRUCTURE,
                    Severity::Warning,
                    format!("`{}`: {e}; the tokenizer was not checked", rel.display()),
                )
                .at(Evidence::file(rel).with_key(GGUF_HF_TOKENIZER)),
            );
            return;
        }
    };
    let parts = match tokenizer_file::parse(abs, text) {
        Ok(p) => p,
        Err(e) => {
            out.push(structure_finding(&e, rel));
            return;
        }
    };
    let start = out.len();
    super::tokenizer::judge(&parts, rel, out);
    for f in &mut out[start..] {
        for ev in &mut f.evidence {
            ev.key = Some(match ev.key.take() {
                Some(k) => format!("{GGUF_HF_TOKENIZER}:{k}"),
                None => GGUF_HF_TOKENIZER.to_owned(),
            });
        }
    }
}

fn executable(rel: &Path, what: &str) -> Finding {
    Finding::new(
        RULE_UNEXPECTED_FILE,
        Severity::Error,
        format!("`{}` is {what}, not model data", rel.display()),
    )
    .at(Evidence::file(rel))
    .hint("a model needs no programs; remove it, or review it and pin its digest")
}

/// `auto_map` in a config makes `transformers` import classes from the repository's
/// Python files (with `trust_remote_code=True`).
fn auto_map(abs: &Path, rel: &Path, out: &mut Vec<Finding>) {
    let text = match formats::read_text_capped(abs, MAX_CONFIG_BYTES) {
        Ok(t) => t,
        Err(e) => {
            out.push(
                Finding::new(
                    RULE_STRUCTURE,
                    Severity::Warning,
                    format!(
                        "config `{}` was not checked for `auto_map`: {}",
                        rel.display(),
                        fault_text(&e)
                    ),
                )
                .at(Evidence::file(rel)),
            );
            return;
        }
    };
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        out.push(
            Finding::new(
                RULE_STRUCTURE,
                Severity::Warning,
                format!("config `{}` is not a JSON object", rel.display()),
            )
            .at(Evidence::file(rel)),
        );
        return;
    };
    let Some(map) = obj.get("auto_map") else {
        return;
    };
    let classes: Vec<String> = match map {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k} -> {}", v.to_string().trim_matches('"')))
            .collect(),
        other => vec![other.to_string()],
    };
    let line = text
        .lines()
        .position(|l| l.contains("\"auto_map\""))
        .map(|i| i as u64 + 1);
    let mut ev = Evidence::file(rel).with_key("auto_map");
    if let Some(line) = line {
        ev = ev.with_line(line);
    }
    out.push(
        Finding::new(
            RULE_REMOTE_CODE,
            Severity::Error,
            format!(
                "`{}` maps classes to code in the repository (`auto_map`: {}); loading it needs `trust_remote_code=True`",
                rel.display(),
                classes.join(", ")
            ),
        )
        .at(ev)
        .hint("use an architecture built into transformers, or review the referenced code and pin its revision"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(
            magic(b"\x7fELF\x02\x01"),
            Magic::Executable("an ELF executable or library")
        );
        assert_eq!(magic(b"GGUF\x03\x00"), Magic::Gguf);
        assert_eq!(magic(b"PK\x03\x04"), Magic::Zip);
        assert_eq!(magic(b"\x1f\x8b\x08"), Magic::Archive("gzip"));
        let mut tar = vec![0u8; 300];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(magic(&tar), Magic::Archive("tar"));
        assert_eq!(magic(b"{\"a\": 1}"), Magic::Other);
        assert!(looks_like_pickle(b"\x80\x02}q\x00."));
        assert!(looks_like_pickle(b"cos\nsystem\n"));
        assert!(!looks_like_pickle(b"\x80\x09"));
        assert!(!looks_like_pickle(b"hello"));
    }

    #[test]
    fn normalize_resolves_parents() {
        assert_eq!(
            normalize(Path::new("/a/b/../../etc/passwd")),
            PathBuf::from("/etc/passwd")
        );
        assert_eq!(normalize(Path::new("/m/./x/../y")), PathBuf::from("/m/y"));
    }
}
