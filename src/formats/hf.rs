//! Hugging Face model directories: finds the weights, lists every file, and reads the
//! config, generation config, tokenizer, tokenizer config, model card and licence files.
//!
//! This is the directory half of the formats stage: [`open_dir`] returns the same
//! [`Checkpoint`] view as a single weight file, plus an [`HfDir`] that the policy stage
//! (card, licences), the scanner (file list, `config.json`) and the engine (tokenizer,
//! config) read. Everything in the directory is hostile: each file is read only if it is a
//! regular file inside the directory (symlinks leaving it are listed as skipped, never
//! followed), with a size cap per kind of file, and a bad file is an error naming it.
//!
//! Model cards get their own guard. Their YAML front matter is capped at 1 MiB, found by a
//! line scan before any YAML is parsed. serde_yaml 0.9 bounds nesting (128 levels) and
//! alias replays (100 x the event count), but within that bound a small card can still
//! expand to billions of nodes ("billion laughs", or one wide anchor aliased many times),
//! so the front matter is converted to JSON by our own visitor with a budget: the output
//! may have no more nodes than the front matter has bytes, nor more string bytes than twice
//! that. Plain YAML never exceeds it; a card whose aliases expand past it is refused as an
//! alias bomb, and the conversion stops at the budget, so the work is bounded by the size
//! of the card whatever it says.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    open_weight_file, read_text_capped, Checkpoint, FileEntry, FormatError, Layout, ModelParams,
    SpecialToken, TokenizerSummary,
};

/// Largest `config.json` / `generation_config.json` read.
const MAX_CONFIG_LEN: u64 = 16 << 20;
/// Largest `tokenizer_config.json` (some carry 100k+ `added_tokens_decoder` entries).
const MAX_TOKENIZER_CONFIG_LEN: u64 = 32 << 20;
/// Largest `tokenizer.json` (Gemma 3's is 33 MB).
pub const MAX_TOKENIZER_JSON_LEN: u64 = 128 << 20;
/// Largest model card (`README.md`).
pub const MAX_CARD_LEN: u64 = 16 << 20;
/// Largest YAML front matter parsed; anything longer is refused unparsed.
pub const MAX_FRONT_MATTER_LEN: usize = 1 << 20;
/// Largest licence, notice or chat template file.
const MAX_LICENCE_LEN: u64 = 4 << 20;
/// Deepest front-matter nesting accepted (serde_yaml stops at 128).
const MAX_YAML_DEPTH: usize = 64;
/// Directory walk bounds: a model repository has tens of files, not a million.
const MAX_ENTRIES: usize = 100_000;
const MAX_DEPTH: usize = 32;

/// Licence and notice file names, compared case-insensitively.
const LICENCE_NAMES: &[&str] = &[
    "license",
    "license.txt",
    "license.md",
    "licence",
    "licence.txt",
    "licence.md",
    "use_policy.md",
    "notice",
    "notice.txt",
    "notice.md",
];

/// Files in a PyTorch training folder that are not model weights.
const NOT_WEIGHTS: &[&str] = &[
    "training_args.bin",
    "optimizer.pt",
    "optimizer.bin",
    "scheduler.pt",
    "scaler.pt",
];

/// A model card (`README.md`): its YAML front matter as JSON, the line each top-level key
/// is on (for evidence), and the markdown body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelCard {
    /// Relative to the model root.
    pub path: PathBuf,
    /// The front matter, an object (empty when the card has none).
    pub front_matter: serde_json::Map<String, serde_json::Value>,
    /// 1-based line of each top-level front-matter key in the file.
    pub key_lines: BTreeMap<String, u64>,
    pub body: String,
}

/// A licence or notice file (LICENSE, LICENSE.txt, LICENSE.md, USE_POLICY.md, NOTICE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenceFile {
    /// Relative to the model root.
    pub path: PathBuf,
    pub text: String,
}

/// Something in the directory that was not listed or followed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEntry {
    /// Relative to the model root.
    pub path: PathBuf,
    pub why: String,
}

/// The non-weight files of a model directory.
#[derive(Debug, Default)]
pub struct HfDir {
    pub root: PathBuf,
    pub config: Option<serde_json::Value>,
    pub generation_config: Option<serde_json::Value>,
    /// tokenizer.json, as text (the engine hands it to the `tokenizers` crate).
    pub tokenizer_json: Option<String>,
    pub tokenizer_config: Option<serde_json::Value>,
    /// SentencePiece `tokenizer.model`, parsed (Gemma and older Llama and Mistral
    /// repositories ship it, alone or beside tokenizer.json).
    pub tokenizer_model: Option<super::sentencepiece::SpModel>,
    /// `chat_template.jinja`, where the chat template lives outside tokenizer_config.json.
    pub chat_template_jinja: Option<String>,
    pub card: Option<ModelCard>,
    pub licence_files: Vec<LicenceFile>,
    /// Symlinks leaving the directory (or dangling, or to folders), devices, sockets and
    /// `.git`: not listed in [`Checkpoint::files`] and never read.
    pub skipped: Vec<SkippedEntry>,
}

impl HfDir {
    /// What tokenizer.json and tokenizer_config.json declare, or a SentencePiece
    /// tokenizer.model where there is no tokenizer.json; `None` without either.
    pub fn tokenizer_summary(&self) -> Option<TokenizerSummary> {
        let Some(json) = self.tokenizer_json.as_deref() else {
            return self.tokenizer_model.as_ref().map(|m| self.spm_summary(m));
        };
        let tok = parse_tokenizer_json(json).ok()?;
        Some(summarise(
            &tok,
            self.tokenizer_config.as_ref(),
            [self.generation_config.as_ref(), self.config.as_ref()],
            self.chat_template_jinja.is_some(),
        ))
    }

    /// A summary of a SentencePiece model: ids from its trainer spec, texts from its pieces,
    /// `add_bos_token` from tokenizer_config.json.
    fn spm_summary(&self, m: &super::sentencepiece::SpModel) -> TokenizerSummary {
        let t = m.trainer();
        let special = |id: Option<u32>| {
            let id = id.filter(|i| (*i as usize) < m.pieces.len())?;
            Some(SpecialToken {
                id: u64::from(id),
                text: m.text(Some(id)).map(str::to_owned),
            })
        };
        let tcfg = self.tokenizer_config.as_ref();
        TokenizerSummary {
            model: "llama".into(),
            pre: Some(format!(
                "sentencepiece-{}",
                t.model_type().name().to_ascii_lowercase()
            )),
            vocab_size: m.pieces.len() as u64,
            merges: 0,
            bos: special(t.bos_id()),
            eos: special(t.eos_id()),
            unk: special(t.unk_id()),
            pad: special(t.pad_id()),
            add_bos: tcfg
                .and_then(|c| c.get("add_bos_token"))
                .and_then(Value::as_bool),
            chat_template: self.chat_template_jinja.is_some()
                || tcfg.is_some_and(|c| c.get("chat_template").is_some()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// the directory

/// Open a model directory: weights, file list, config, tokenizer, card and licences.
pub fn open_dir(path: &Path) -> Result<Checkpoint, FormatError> {
    let walk = walk(path)?;
    let top: Vec<&str> = walk
        .files
        .iter()
        .filter(|f| f.path.components().count() == 1)
        .filter_map(|f| f.path.to_str())
        .collect();
    let find = |name: &str| top.iter().copied().find(|n| n.eq_ignore_ascii_case(name));

    let weights = open_weight_file(&path.join(pick_weights(path, &top, &walk.skipped)?))?;

    let json = |name: &str, cap: u64| -> Result<Option<Value>, FormatError> {
        match top.iter().find(|n| **n == name) {
            Some(n) => read_json_object(&path.join(n), cap).map(Some),
            None => Ok(None),
        }
    };
    let config = json("config.json", MAX_CONFIG_LEN)?;
    let generation_config = json("generation_config.json", MAX_CONFIG_LEN)?;
    let tokenizer_config = json("tokenizer_config.json", MAX_TOKENIZER_CONFIG_LEN)?;
    let tokenizer_json = match top.iter().find(|n| **n == "tokenizer.json") {
        Some(n) => {
            let p = path.join(n);
            let text = read_text_capped(&p, MAX_TOKENIZER_JSON_LEN)?;
            parse_tokenizer_json(&text).map_err(|e| {
                FormatError::malformed(&p, format!("not a valid tokenizer.json: {e}"))
            })?;
            Some(text)
        }
        None => None,
    };
    let tokenizer_model = match top.iter().find(|n| **n == "tokenizer.model") {
        Some(n) => Some(super::sentencepiece::read(&path.join(n))?),
        None => None,
    };
    let chat_template_jinja = match top.iter().find(|n| **n == "chat_template.jinja") {
        Some(n) => Some(read_text_capped(&path.join(n), MAX_LICENCE_LEN)?),
        None => None,
    };
    let card = match find("README.md") {
        Some(n) => {
            let p = path.join(n);
            let bytes = read_bytes_capped(&p, MAX_CARD_LEN)?;
            let mut card = parse_card_bytes(&p, &bytes)?;
            card.path = PathBuf::from(n);
            Some(card)
        }
        None => None,
    };
    let mut licence_files = Vec::new();
    for n in &top {
        if LICENCE_NAMES.iter().any(|l| n.eq_ignore_ascii_case(l)) {
            licence_files.push(LicenceFile {
                path: PathBuf::from(n),
                text: read_text_capped(&path.join(n), MAX_LICENCE_LEN)?,
            });
        }
    }
    Ok(Checkpoint {
        path: path.to_owned(),
        layout: Layout::Directory,
        files: walk.files,
        weights,
        dir: Some(HfDir {
            root: path.to_owned(),
            config,
            generation_config,
            tokenizer_json,
            tokenizer_config,
            tokenizer_model,
            chat_template_jinja,
            card,
            licence_files,
            skipped: walk.skipped,
        }),
    })
}

/// Which top-level file holds the weights, in transformers' order of preference.
fn pick_weights(
    root: &Path,
    top: &[&str],
    skipped: &[SkippedEntry],
) -> Result<String, FormatError> {
    let ends = |suffix: &str| -> Vec<&str> {
        top.iter()
            .copied()
            .filter(|n| n.to_ascii_lowercase().ends_with(suffix))
            .collect()
    };
    let several = |what: &str, names: &[&str], advice: &str| {
        let list: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
        let more = if names.len() > 5 { ", ..." } else { "" };
        FormatError::Malformed {
            path: root.to_owned(),
            fault: format!(
                "{} {what} files ({}{more}) {advice}",
                names.len(),
                list.join(", ")
            ),
        }
    };
    if top.contains(&"model.safetensors.index.json") {
        return Ok("model.safetensors.index.json".into());
    }
    match ends(".safetensors.index.json").as_slice() {
        [] => {}
        [one] => return Ok((*one).to_owned()),
        many => {
            return Err(several(
                "safetensors index",
                many,
                "and no `model.safetensors.index.json` to choose between them",
            ))
        }
    }
    if top.contains(&"model.safetensors") {
        return Ok("model.safetensors".into());
    }
    match ends(".safetensors").as_slice() {
        [] => {}
        [one] => return Ok((*one).to_owned()),
        many => {
            return Err(several(
                "safetensors",
                many,
                "and no `model.safetensors.index.json` to say which hold the model",
            ))
        }
    }
    match ends(".gguf").as_slice() {
        [] => {}
        [one] => return Ok((*one).to_owned()),
        many => return Err(several("GGUF", many, "in one folder: open one of them")),
    }
    if top.contains(&"pytorch_model.bin") {
        return Ok("pytorch_model.bin".into());
    }
    let torch: Vec<&str> = [".bin", ".pt", ".pth"]
        .iter()
        .flat_map(|s| ends(s))
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            !NOT_WEIGHTS.contains(&lower.as_str()) && !lower.starts_with("rng_state")
        })
        .collect();
    match torch.as_slice() {
        [] => {}
        [one] => return Ok((*one).to_owned()),
        many if top.contains(&"pytorch_model.bin.index.json") => {
            return Err(FormatError::Unsupported {
                path: root.to_owned(),
                what: format!(
                    "sharded PyTorch checkpoints ({} shards named by `pytorch_model.bin.index.json`)",
                    many.len()
                ),
            })
        }
        many => {
            return Err(several(
                "PyTorch",
                many,
                "and no `pytorch_model.bin` to say which holds the model",
            ))
        }
    }
    let links = skipped.iter().filter(|s| s.why.contains("outside")).count();
    let note = if links > 0 {
        format!(" ({links} symlinks pointing outside the folder were not followed)")
    } else {
        String::new()
    };
    Err(FormatError::NotACheckpoint {
        path: root.to_owned(),
        why: format!(
            "no weights found: no `*.safetensors`, `*.gguf`, `*.bin`, `*.pt` or `*.pth` file at the top level{note}"
        ),
    })
}

struct Walk {
    files: Vec<FileEntry>,
    skipped: Vec<SkippedEntry>,
}

/// List every regular file under `root`, sorted, without following symlinks that leave
/// it. Symlinks to files inside the directory are listed with their target's size (the
/// Hugging Face cache links snapshots to blobs this way, within one model folder).
fn walk(root: &Path) -> Result<Walk, FormatError> {
    let canon_root = fs::canonicalize(root).map_err(|e| FormatError::io(root, e))?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![(root.to_owned(), PathBuf::new(), 0usize)];
    let mut entries = 0usize;
    while let Some((abs, rel, depth)) = stack.pop() {
        let rd = fs::read_dir(&abs).map_err(|e| FormatError::io(&abs, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| FormatError::io(&abs, e))?;
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(FormatError::malformed(
                    root,
                    format!("more than {MAX_ENTRIES} files and folders; not a model directory"),
                ));
            }
            let name = entry.file_name();
            let abs_e = entry.path();
            let rel_e = rel.join(&name);
            let ft = entry.file_type().map_err(|e| FormatError::io(&abs_e, e))?;
            let skip = |why: &str| SkippedEntry {
                path: rel_e.clone(),
                why: why.to_owned(),
            };
            if ft.is_dir() {
                if name == ".git" {
                    skipped.push(skip("git metadata, not part of the model"));
                } else if depth + 1 > MAX_DEPTH {
                    return Err(FormatError::malformed(
                        &abs_e,
                        format!("folders nested more than {MAX_DEPTH} deep"),
                    ));
                } else {
                    stack.push((abs_e, rel_e, depth + 1));
                }
            } else if ft.is_file() {
                let size = entry
                    .metadata()
                    .map_err(|e| FormatError::io(&abs_e, e))?
                    .len();
                files.push(FileEntry { path: rel_e, size });
            } else if ft.is_symlink() {
                match fs::canonicalize(&abs_e) {
                    Err(_) => skipped.push(skip("dangling symlink")),
                    Ok(target) if !target.starts_with(&canon_root) => {
                        skipped.push(skip("symlink pointing outside the directory"))
                    }
                    Ok(target) => match fs::metadata(&target) {
                        Ok(m) if m.is_file() => files.push(FileEntry {
                            path: rel_e,
                            size: m.len(),
                        }),
                        Ok(m) if m.is_dir() => skipped.push(skip(
                            "symlink to a folder inside the directory (listed where it is)",
                        )),
                        _ => skipped.push(skip("symlink to something that is not a file")),
                    },
                }
            } else {
                skipped.push(skip("not a regular file (device, socket or pipe)"));
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Walk { files, skipped })
}

fn read_bytes_capped(path: &Path, cap: u64) -> Result<Vec<u8>, FormatError> {
    let size = fs::metadata(path)
        .map_err(|e| FormatError::io(path, e))?
        .len();
    if size > cap {
        return Err(FormatError::malformed(
            path,
            format!("file is {size} bytes, more than the {cap}-byte limit for this kind of file"),
        ));
    }
    fs::read(path).map_err(|e| FormatError::io(path, e))
}

fn read_json_object(path: &Path, cap: u64) -> Result<Value, FormatError> {
    let text = read_text_capped(path, cap)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| FormatError::malformed(path, format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(FormatError::malformed(
            path,
            format!("expected a JSON object, found {}", json_kind(&v)),
        ));
    }
    Ok(v)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

// ---------------------------------------------------------------------------------------
// model cards

/// Parse a model card given as bytes: refuses invalid UTF-8, then [`parse_card`]. This is
/// the entry point the fuzzer drives.
pub fn parse_card_bytes(path: &Path, bytes: &[u8]) -> Result<ModelCard, FormatError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        FormatError::malformed(
            path,
            format!(
                "model card is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    parse_card(path, text)
}

/// Parse a model card's text. `path` is only used in errors and evidence.
pub fn parse_card(path: &Path, text: &str) -> Result<ModelCard, FormatError> {
    let bad = |fault: String| FormatError::malformed(path, fault);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut card = ModelCard {
        path: path.to_owned(),
        ..ModelCard::default()
    };
    let mut lines = LineIter { text, pos: 0 };
    match lines.next() {
        Some((_, first)) if is_delimiter(first) => {}
        _ => {
            card.body = text.to_owned();
            return Ok(card);
        }
    }
    let fm_start = lines.pos;
    let mut fm_end = None;
    for (start, line) in lines.by_ref() {
        if start - fm_start > MAX_FRONT_MATTER_LEN {
            break;
        }
        if is_delimiter(line) {
            fm_end = Some(start);
            break;
        }
    }
    let Some(fm_end) = fm_end else {
        if lines.pos - fm_start > MAX_FRONT_MATTER_LEN {
            return Err(bad(format!(
                "model card front matter is longer than the {MAX_FRONT_MATTER_LEN}-byte limit (not parsed)"
            )));
        }
        return Err(bad(
            "model card front matter opened by `---` on line 1 is never closed".into(),
        ));
    };
    if fm_end - fm_start > MAX_FRONT_MATTER_LEN {
        return Err(bad(format!(
            "model card front matter is {} bytes, more than the {MAX_FRONT_MATTER_LEN}-byte limit (not parsed)",
            fm_end - fm_start
        )));
    }
    let yaml = &text[fm_start..fm_end];
    card.body = text[lines.pos..].to_owned();
    let value = yaml_to_json(yaml).map_err(|e| bad(format!("model card front matter: {e}")))?;
    card.front_matter = match value {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        other => {
            return Err(bad(format!(
                "model card front matter is {}, expected a mapping of keys",
                json_kind(&other)
            )))
        }
    };
    let lines = top_level_key_lines(yaml);
    for key in card.front_matter.keys() {
        let line = lines.get(key).copied().unwrap_or(0);
        // Line 1 is the opening `---`; front-matter line k is file line k + 1.
        card.key_lines.insert(key.clone(), line + 2);
    }
    Ok(card)
}

fn is_delimiter(line: &str) -> bool {
    line.trim_end() == "---"
}

/// Lines of a text with the byte offset each starts at (without the line end).
struct LineIter<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for LineIter<'a> {
    type Item = (usize, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        let rest = &self.text[start..];
        let (line, advance) = match rest.find('\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.pos += advance;
        Some((start, line.strip_suffix('\r').unwrap_or(line)))
    }
}

/// The 0-based front-matter line of each top-level key written in block style at column
/// 0 (`key:`, `"key":`, `'key':`), first occurrence, in one pass over the lines.
fn top_level_key_lines(yaml: &str) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for (i, (_, line)) in (LineIter { text: yaml, pos: 0 }).enumerate() {
        let key = match line.as_bytes().first() {
            None | Some(b' ' | b'\t' | b'#' | b'-' | b'?' | b'[' | b'{') => continue,
            Some(b'"') => quoted_key(line, '"'),
            Some(b'\'') => quoted_key(line, '\''),
            Some(_) => line
                .match_indices(':')
                .find(|(at, _)| matches!(line.as_bytes().get(at + 1), None | Some(b' ' | b'\t')))
                .map(|(at, _)| line[..at].trim_end().to_owned()),
        };
        if let Some(k) = key {
            out.entry(k).or_insert(i as u64);
        }
    }
    out
}

/// A quoted key at the start of a line, if a `:` follows its closing quote.
fn quoted_key(line: &str, q: char) -> Option<String> {
    let body = &line[1..];
    let mut key = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        if q == '"' && c == '\\' {
            // Common escapes only: an unusual one just leaves the key without a line.
            match chars.next()?.1 {
                'n' => key.push('\n'),
                't' => key.push('\t'),
                other => key.push(other),
            }
        } else if c == q {
            if q == '\'' && body[at + 1..].starts_with('\'') {
                key.push('\'');
                chars.next();
                continue;
            }
            return body[at + 1..].trim_start().starts_with(':').then_some(key);
        } else {
            key.push(c);
        }
    }
    None
}

/// Deepest flow nesting (`[`/`{`) accepted before the YAML parser sees the text.
const MAX_FLOW_DEPTH: u32 = 64;

/// An upper bound on the flow nesting depth libyaml would reach in `yaml`, or `Err` with
/// the bound as soon as it passes `limit`.
///
/// libyaml's scanner re-walks its stack of possible simple keys, one per open flow
/// collection, for every token, so parsing is quadratic in flow depth: 20,000 `[` take
/// 1.5 s, and 2,000 `[` followed by 1 MB of list items 21 s, all before serde_yaml's own
/// depth limit can act (it only sees the finished event list). So the depth is bounded
/// here first, in one linear pass.
///
/// Telling a `[` that opens a collection from one inside a scalar needs the scanner's
/// state (token start, plain scalar, quoted scalar, comment, anchor or tag, block scalar),
/// which depends on context this pass cannot know exactly (is a line a plain scalar's
/// continuation or a new token?). So it runs a small non-deterministic machine: every
/// state libyaml could be in is followed at once, each with the largest depth it could
/// have; where the reading is ambiguous both branches are kept. Block scalar content is
/// followed as a plain scalar (which never ends except into a new token at a line break),
/// so every way libyaml can read the text is covered and the bound holds; ordinary cards
/// stay within a few levels of their real depth.
fn flow_depth_bound(yaml: &str, limit: u32) -> Result<u32, u32> {
    // Token start; plain scalar or block scalar in block context (flow depth 0, so it
    // carries depth 0 and never ends except into a new token); plain scalar inside a
    // flow collection; double-quoted, after `\` in double-quoted, single-quoted, after
    // `''` in single-quoted; comment; anchor/alias/tag name; verbatim tag `!<...>`;
    // directive line.
    const TS: usize = 0;
    const PLB: usize = 1;
    const PLF: usize = 2;
    const DQ: usize = 3;
    const DQ_ESC: usize = 4;
    const SQ: usize = 5;
    const SQ_SKIP: usize = 6;
    const CM: usize = 7;
    const NAME: usize = 8;
    const VT: usize = 9;
    const DIR: usize = 10;
    const N: usize = 11;

    #[derive(Clone, Copy, PartialEq)]
    enum Sym {
        /// `\n`, `\r` or `\r\n`: a line break everywhere.
        Eol,
        /// NEL, LS, PS: line breaks to libyaml, kept conservative (both readings).
        SoftEol,
        Byte(u8),
    }

    fn put(next: &mut [Option<u32>; N], s: usize, d: u32) {
        next[s] = Some(next[s].map_or(d, |o| o.max(d)));
    }

    /// A plain scalar starts: in block context (real depth 0) or, when the depth may be
    /// above 0, in a flow collection.
    fn plain(next: &mut [Option<u32>; N], d: u32) {
        put(next, PLB, 0);
        if d > 0 {
            put(next, PLF, d);
        }
    }

    /// What a token start does with a symbol.
    fn token_start(next: &mut [Option<u32>; N], sym: Sym, peek: Option<u8>, d: u32) {
        match sym {
            Sym::Eol | Sym::SoftEol => put(next, TS, d),
            Sym::Byte(b' ' | b'\t') => put(next, TS, d),
            Sym::Byte(b'#') => put(next, CM, d),
            Sym::Byte(b'"') => put(next, DQ, d),
            Sym::Byte(b'\'') => put(next, SQ, d),
            Sym::Byte(b'[' | b'{') => put(next, TS, d + 1),
            Sym::Byte(b']' | b'}') => put(next, TS, d.saturating_sub(1)),
            Sym::Byte(b',') => put(next, TS, d),
            Sym::Byte(b'-' | b'?' | b':') => {
                put(next, TS, d);
                plain(next, d);
            }
            Sym::Byte(b'!') if peek == Some(b'<') => {
                put(next, VT, d);
                put(next, NAME, d);
            }
            Sym::Byte(b'&' | b'*' | b'!') => put(next, NAME, d),
            Sym::Byte(b'%') => put(next, DIR, d),
            Sym::Byte(_) => plain(next, d),
        }
    }

    let bytes = yaml.as_bytes();
    let mut states: [Option<u32>; N] = [None; N];
    states[TS] = Some(0);
    let mut max = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        let (sym, len) = match bytes[i..] {
            [b'\r', b'\n', ..] => (Sym::Eol, 2),
            [b'\r' | b'\n', ..] => (Sym::Eol, 1),
            [0xc2, 0x85, ..] => (Sym::SoftEol, 2),
            [0xe2, 0x80, 0xa8 | 0xa9, ..] => (Sym::SoftEol, 3),
            [b, ..] => (Sym::Byte(b), 1),
            [] => break,
        };
        let peek = bytes.get(i + len).copied();
        let mut next: [Option<u32>; N] = [None; N];
        for (s, d) in states.iter().enumerate() {
            let Some(d) = *d else { continue };
            match s {
                TS => token_start(&mut next, sym, peek, d),
                PLB => {
                    put(&mut next, PLB, 0);
                    match sym {
                        Sym::Eol | Sym::SoftEol | Sym::Byte(b':') => put(&mut next, TS, 0),
                        Sym::Byte(b'#') => put(&mut next, CM, 0),
                        _ => {}
                    }
                }
                PLF => match sym {
                    Sym::Byte(b'[' | b'{' | b']' | b'}' | b',') => {
                        token_start(&mut next, sym, peek, d)
                    }
                    Sym::Eol | Sym::SoftEol | Sym::Byte(b':') => {
                        put(&mut next, PLF, d);
                        put(&mut next, TS, d);
                    }
                    Sym::Byte(b'#') => {
                        put(&mut next, PLF, d);
                        put(&mut next, CM, d);
                    }
                    _ => put(&mut next, PLF, d),
                },
                DQ => match sym {
                    Sym::Byte(b'\\') => put(&mut next, DQ_ESC, d),
                    Sym::Byte(b'"') => put(&mut next, TS, d),
                    _ => put(&mut next, DQ, d),
                },
                DQ_ESC | SQ_SKIP => put(&mut next, if s == DQ_ESC { DQ } else { SQ }, d),
                SQ => match sym {
                    Sym::Byte(b'\'') if peek == Some(b'\'') => put(&mut next, SQ_SKIP, d),
                    Sym::Byte(b'\'') => put(&mut next, TS, d),
                    _ => put(&mut next, SQ, d),
                },
                CM | DIR | VT => match sym {
                    Sym::Eol => token_start(&mut next, sym, peek, d),
                    Sym::SoftEol => {
                        token_start(&mut next, sym, peek, d);
                        put(&mut next, s, d);
                    }
                    Sym::Byte(b'>') if s == VT => put(&mut next, NAME, d),
                    _ => put(&mut next, s, d),
                },
                _ => match sym {
                    // NAME: an anchor, alias or tag ends at a blank or a flow indicator;
                    // any other character may end it too (libyaml then errors or reads
                    // a new token), so both readings are kept.
                    Sym::Byte(b' ' | b'\t') => put(&mut next, TS, d),
                    Sym::Byte(b'[' | b'{' | b']' | b'}' | b',') | Sym::Eol => {
                        token_start(&mut next, sym, peek, d)
                    }
                    _ => {
                        put(&mut next, NAME, d);
                        token_start(&mut next, sym, peek, d);
                    }
                },
            }
        }
        for d in next.iter().flatten() {
            max = max.max(*d);
        }
        if max > limit {
            return Err(max);
        }
        states = next;
        i += len;
    }
    Ok(max)
}

/// Why YAML was refused.
#[derive(Debug)]
enum YamlFault {
    Bomb { limit: usize },
    FlowDeep,
    Deep,
    Parse(serde_yaml::Error),
}

impl fmt::Display for YamlFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            YamlFault::Bomb { limit } => write!(
                f,
                "YAML aliases expand it beyond {limit} values, more than its own size allows \
                 (an alias bomb; anchors `&x` re-used as `*x` are refused when they multiply)"
            ),
            YamlFault::FlowDeep => write!(
                f,
                "`[`/`{{` collections may nest more than {MAX_FLOW_DEPTH} deep (refused before parsing: \
                 the YAML parser's time grows with the square of that depth)"
            ),
            YamlFault::Deep => write!(f, "nested more than {MAX_YAML_DEPTH} levels deep"),
            YamlFault::Parse(e) => write!(f, "invalid YAML: {e}"),
        }
    }
}

struct Budget {
    nodes: usize,
    bytes: usize,
    node_limit: usize,
    exhausted: bool,
    too_deep: bool,
}

impl Budget {
    fn take<E: de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        if self.nodes == 0 || self.bytes < bytes {
            self.exhausted = true;
            return Err(E::custom("alias expansion budget exhausted"));
        }
        self.nodes -= 1;
        self.bytes -= bytes;
        Ok(())
    }
}

/// YAML text to a JSON value, within a node and byte budget proportional to its size.
fn yaml_to_json(yaml: &str) -> Result<Value, YamlFault> {
    flow_depth_bound(yaml, MAX_FLOW_DEPTH).map_err(|_| YamlFault::FlowDeep)?;
    let node_limit = yaml.len() + 64;
    let mut budget = Budget {
        nodes: node_limit,
        bytes: yaml.len() * 2 + 1024,
        node_limit,
        exhausted: false,
        too_deep: false,
    };
    let result = Node {
        budget: &mut budget,
        depth: 0,
    }
    .deserialize(serde_yaml::Deserializer::from_str(yaml));
    match result {
        Ok(v) => Ok(v),
        Err(_) if budget.exhausted => Err(YamlFault::Bomb {
            limit: budget.node_limit,
        }),
        Err(_) if budget.too_deep => Err(YamlFault::Deep),
        Err(e) => Err(YamlFault::Parse(e)),
    }
}

/// A YAML node converted to JSON, charged to the budget.
struct Node<'b> {
    budget: &'b mut Budget,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.take(0)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.take(0)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.take(0)?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.take(0)?;
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        let s = v.to_string();
        self.budget.take(s.len())?;
        Ok(Value::String(s))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        let s = v.to_string();
        self.budget.take(s.len())?;
        Ok(Value::String(s))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.take(0)?;
        // JSON has no NaN or infinity: keep YAML's spelling as a string.
        Ok(serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(v.to_string())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.take(v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget.take(v.len())?;
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.take(0)?;
        let depth = self.depth + 1;
        if depth > MAX_YAML_DEPTH {
            self.budget.too_deep = true;
            return Err(de::Error::custom("too deep"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Node {
            budget: &mut *self.budget,
            depth,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.budget.take(0)?;
        let depth = self.depth + 1;
        if depth > MAX_YAML_DEPTH {
            self.budget.too_deep = true;
            return Err(de::Error::custom("too deep"));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key_seed(Node {
            budget: &mut *self.budget,
            depth,
        })? {
            let key = match k {
                Value::String(s) => s,
                Value::Null => "null".to_owned(),
                Value::Bool(_) | Value::Number(_) => k.to_string(),
                _ => return Err(de::Error::custom("a mapping key is a list or mapping")),
            };
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("key `{key}` appears twice")));
            }
            let v = map.next_value_seed(Node {
                budget: &mut *self.budget,
                depth,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
    /// A tagged value (`!tag value`): the tag is dropped, the value kept.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use de::VariantAccess;
        let (_tag, variant): (de::IgnoredAny, _) = data.variant()?;
        variant.newtype_variant_seed(self)
    }
}

// ---------------------------------------------------------------------------------------
// config.json

fn cfg_get<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    match cfg.get(key) {
        Some(Value::Null) | None => cfg.get("text_config").and_then(|t| t.get(key)),
        Some(v) => Some(v),
    }
    .filter(|v| !v.is_null())
}

fn cfg_u64(cfg: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| {
        let v = cfg_get(cfg, k)?;
        v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e18)
                .map(|f| f as u64)
        })
    })
}

fn cfg_f64(cfg: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| cfg_get(cfg, k)?.as_f64())
}

/// transformers 5 keeps RoPE settings in `rope_parameters`, either one object or one per
/// attention kind (`full_attention`, `sliding_attention`); transformers 4 used top-level
/// `rope_theta` and `rope_scaling`.
fn rope_parameters(cfg: &Value) -> Option<&Map<String, Value>> {
    let rp = cfg_get(cfg, "rope_parameters")?.as_object()?;
    if rp.contains_key("rope_theta") || rp.contains_key("rope_type") {
        return Some(rp);
    }
    rp.get("full_attention")
        .and_then(Value::as_object)
        .or_else(|| rp.values().find_map(Value::as_object))
}

/// Architecture hyper-parameters from a transformers `config.json` (4.x or 5.x form).
/// Multimodal configs that nest the language model under `text_config` are read there.
pub fn params_from_config(cfg: &serde_json::Value) -> ModelParams {
    let embedding = cfg_u64(cfg, &["hidden_size", "n_embd", "d_model"]);
    let heads = cfg_u64(cfg, &["num_attention_heads", "n_head"]);
    let head_dim = cfg_u64(cfg, &["head_dim"]).or_else(|| match (embedding, heads) {
        (Some(e), Some(h)) if h > 0 && e % h == 0 => Some(e / h),
        _ => None,
    });
    let rope_theta =
        cfg_f64(cfg, &["rope_theta"]).or_else(|| rope_parameters(cfg)?.get("rope_theta")?.as_f64());
    ModelParams {
        architecture: cfg_get(cfg, "model_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        block_count: cfg_u64(cfg, &["num_hidden_layers", "n_layer"]),
        context_length: cfg_u64(cfg, &["max_position_embeddings", "n_positions"]),
        embedding_length: embedding,
        feed_forward_length: cfg_u64(cfg, &["intermediate_size", "n_inner"]),
        head_count: heads,
        head_count_kv: cfg_u64(cfg, &["num_key_value_heads", "num_kv_heads"]),
        head_dim,
        vocab_size: cfg_u64(cfg, &["vocab_size"]),
        rope_theta,
        rms_norm_eps: cfg_f64(cfg, &["rms_norm_eps"]),
        tie_word_embeddings: cfg_get(cfg, "tie_word_embeddings").and_then(Value::as_bool),
    }
}

/// RoPE scaling declared by a config (`rope_scaling` in transformers 4, `rope_parameters`
/// with a `rope_type` other than `default` in transformers 5).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RopeScaling {
    /// `llama3`, `linear`, `dynamic`, `yarn`, ...
    pub rope_type: String,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<u64>,
}

pub fn rope_scaling_from_config(cfg: &serde_json::Value) -> Option<RopeScaling> {
    let m = match cfg_get(cfg, "rope_scaling").and_then(Value::as_object) {
        Some(m) => m,
        None => rope_parameters(cfg)?,
    };
    let rope_type = m
        .get("rope_type")
        .or_else(|| m.get("type"))
        .and_then(Value::as_str)?;
    if rope_type == "default" {
        return None;
    }
    let f = |k: &str| m.get(k).and_then(Value::as_f64);
    Some(RopeScaling {
        rope_type: rope_type.to_owned(),
        factor: f("factor"),
        low_freq_factor: f("low_freq_factor"),
        high_freq_factor: f("high_freq_factor"),
        original_max_position_embeddings: m
            .get("original_max_position_embeddings")
            .and_then(Value::as_u64),
    })
}

// ---------------------------------------------------------------------------------------
// tokenizer.json

/// The parts of tokenizer.json a summary needs. Vocabularies are read as (token, id)
/// pairs and merges only counted, so nothing is kept per merge.
#[derive(Deserialize)]
struct TokJson {
    #[serde(default)]
    added_tokens: Vec<AddedTok>,
    #[serde(default)]
    pre_tokenizer: Option<Value>,
    #[serde(default)]
    post_processor: Option<Value>,
    model: TokModel,
}

#[derive(Deserialize)]
struct AddedTok {
    id: u64,
    content: String,
}

#[derive(Deserialize)]
struct TokModel {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    vocab: Option<Vocab>,
    #[serde(default)]
    merges: Option<Count>,
    #[serde(default)]
    byte_fallback: Option<bool>,
    #[serde(default)]
    continuing_subword_prefix: Option<Value>,
}

/// `{token: id}` (BPE, WordPiece, WordLevel) or `[[token, score], ...]` (Unigram, where
/// the id is the position).
struct Vocab {
    entries: Vec<(String, u64)>,
    listed: bool,
}

impl<'de> Deserialize<'de> for Vocab {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vocab;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a vocabulary object or list")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vocab, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, u64>()? {
                    entries.push((k, v));
                }
                Ok(Vocab {
                    entries,
                    listed: false,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vocab, A::Error> {
                let mut entries = Vec::new();
                while let Some((tok, _score)) = seq.next_element::<(String, f64)>()? {
                    let id = entries.len() as u64;
                    entries.push((tok, id));
                }
                Ok(Vocab {
                    entries,
                    listed: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The length of a list, without keeping its elements.
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

fn parse_tokenizer_json(text: &str) -> Result<TokJson, serde_json::Error> {
    serde_json::from_str(text)
}

fn mentions_type(v: &Value, ty: &str) -> bool {
    match v {
        Value::Object(m) => {
            m.get("type").and_then(Value::as_str) == Some(ty)
                || m.values().any(|x| mentions_type(x, ty))
        }
        Value::Array(a) => a.iter().any(|x| mentions_type(x, ty)),
        _ => false,
    }
}

fn pre_name(v: &Value) -> Option<String> {
    let ty = v.get("type")?.as_str()?;
    if ty == "Sequence" {
        let parts: Vec<String> = v
            .get("pretokenizers")?
            .as_array()?
            .iter()
            .filter_map(|p| p.get("type")?.as_str().map(str::to_owned))
            .collect();
        return Some(format!("Sequence[{}]", parts.join(", ")));
    }
    Some(ty.to_owned())
}

fn summarise(
    tok: &TokJson,
    tcfg: Option<&Value>,
    id_sources: [Option<&Value>; 2],
    jinja: bool,
) -> TokenizerSummary {
    let m = &tok.model;
    let vocab = m.vocab.as_ref();
    let kind = match &m.kind {
        Some(k) => k.clone(),
        None if m.merges.is_some() => "BPE".into(),
        None if vocab.is_some_and(|v| v.listed) => "Unigram".into(),
        None if m.continuing_subword_prefix.is_some() => "WordPiece".into(),
        None => "WordLevel".into(),
    };
    let byte_level = tok
        .pre_tokenizer
        .as_ref()
        .is_some_and(|p| mentions_type(p, "ByteLevel"));
    let model = match kind.as_str() {
        "BPE" if byte_level => "gpt2".to_owned(),
        "BPE" if m.byte_fallback == Some(true) => "llama".to_owned(),
        _ => kind,
    };
    let mut ids: Vec<u64> = vocab
        .map(|v| v.entries.iter().map(|e| e.1).collect())
        .unwrap_or_default();
    ids.extend(tok.added_tokens.iter().map(|t| t.id));
    ids.sort_unstable();
    ids.dedup();

    let lookup = |text: &str| -> Option<u64> {
        tok.added_tokens
            .iter()
            .find(|t| t.content == text)
            .map(|t| t.id)
            .or_else(|| vocab?.entries.iter().find(|e| e.0 == text).map(|e| e.1))
    };
    let text_of = |id: u64| -> Option<String> {
        tok.added_tokens
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.content.clone())
            .or_else(|| {
                vocab?
                    .entries
                    .iter()
                    .find(|e| e.1 == id)
                    .map(|e| e.0.clone())
            })
    };
    let special = |name: &str| -> Option<SpecialToken> {
        let key = format!("{name}_token");
        match tcfg.and_then(|c| c.get(&key)) {
            Some(v) => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o.get("content")?.as_str()?.to_owned(),
                    _ => return None,
                };
                Some(SpecialToken {
                    id: lookup(&text)?,
                    text: Some(text),
                })
            }
            // No tokenizer_config entry: fall back to the generation/model config ids.
            None => {
                let id_key = format!("{name}_token_id");
                let id = id_sources.iter().flatten().find_map(|c| {
                    let v = c.get(&id_key)?;
                    v.as_u64().or_else(|| v.as_array()?.first()?.as_u64())
                })?;
                Some(SpecialToken {
                    id,
                    text: text_of(id),
                })
            }
        }
    };
    let bos = special("bos");
    let add_bos = tcfg
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Value::as_bool)
        .or_else(|| add_bos_from_template(tok.post_processor.as_ref()?));
    let chat_template = jinja
        || tcfg
            .and_then(|c| c.get("chat_template"))
            .is_some_and(|t| match t {
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => false,
            });
    TokenizerSummary {
        model,
        pre: tok.pre_tokenizer.as_ref().and_then(pre_name),
        vocab_size: ids.len() as u64,
        merges: m.merges.as_ref().map_or(0, |c| c.0),
        bos,
        eos: special("eos"),
        unk: special("unk"),
        pad: special("pad"),
        add_bos,
        chat_template,
    }
}

/// A `TemplateProcessing` post-processor whose single-sequence template starts with a
/// special token adds BOS (how fast Llama tokenizers without `add_bos_token` say so).
fn add_bos_from_template(pp: &Value) -> Option<bool> {
    let single = if pp.get("type")?.as_str()? == "TemplateProcessing" {
        pp.get("single")?
    } else {
        return None;
    };
    let first = single.as_array()?.first()?;
    Some(first.get("SpecialToken").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(text: &str) -> Result<ModelCard, FormatError> {
        parse_card(Path::new("README.md"), text)
    }

    fn fault(r: Result<ModelCard, FormatError>) -> String {
        match r {
            Err(FormatError::Malformed { fault, path }) => {
                assert_eq!(path, Path::new("README.md"));
                fault
            }
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn front_matter_keys_lines_and_body() {
        let c = card("---\nlicense: llama3.1\nbase_model:\n  - meta-llama/Llama-3.1-8B\n\"tags\": [a, b]\n---\n# Model\nbody\n").unwrap();
        assert_eq!(c.front_matter["license"], "llama3.1");
        assert_eq!(c.front_matter["base_model"][0], "meta-llama/Llama-3.1-8B");
        assert_eq!(c.key_lines["license"], 2);
        assert_eq!(c.key_lines["base_model"], 3);
        assert_eq!(c.key_lines["tags"], 5);
        assert_eq!(c.body, "# Model\nbody\n");
    }

    #[test]
    fn cards_without_front_matter_and_crlf() {
        let c = card("# Title\n---\n").unwrap();
        assert!(c.front_matter.is_empty());
        assert_eq!(c.body, "# Title\n---\n");
        let c = card("\u{feff}---\r\nlicense: mit\r\n---\r\nhi").unwrap();
        assert_eq!(c.front_matter["license"], "mit");
        assert_eq!(c.body, "hi");
        assert!(card("---\n---\n").unwrap().front_matter.is_empty());
    }

    #[test]
    fn hostile_cards_are_refused() {
        assert!(fault(card("---\nlicense: mit\n")).contains("never closed"));
        assert!(fault(card("---\n- a\n- b\n---\n")).contains("a list, expected a mapping"));
        assert!(fault(card("---\njust text\n---\n")).contains("a string"));
        assert!(fault(card("---\na: 1\na: 2\n---\n")).contains("appears twice"));
        assert!(fault(card("---\na: [\n---\n")).contains("invalid YAML"));
        let deep = format!("---\na: {}{}\n---\n", "[".repeat(100), "]".repeat(100));
        assert!(fault(card(&deep)).contains("nest more than 64 deep"));
        let block = (0..80).fold(String::from("---\n"), |mut y, i| {
            y.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
            y
        }) + "---\n";
        assert!(fault(card(&block)).contains("nested more than 64 levels"));
        let very_deep = format!("---\na: {}\n---\n", "[".repeat(200_000));
        assert!(fault(card(&very_deep)).contains("nest more than"));
        let bad = parse_card_bytes(Path::new("README.md"), b"---\nlicense: \xff\n---\n");
        assert!(fault(bad).contains("not valid UTF-8"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut y = String::from("---\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            y.push_str(&format!(
                "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        y.push_str("---\n");
        assert!(fault(card(&y)).contains("alias bomb"));
        // One wide anchor aliased many times: quadratic, within serde_yaml's own limit.
        let wide = format!(
            "---\na: &a [{}]\nb: [{}]\n---\n",
            vec!["x"; 2000].join(","),
            vec!["*a"; 2000].join(",")
        );
        assert!(fault(card(&wide)).contains("alias bomb"));
        // A long string aliased many times.
        let long = format!(
            "---\na: &a \"{}\"\nb: [{}]\n---\n",
            "x".repeat(10_000),
            vec!["*a"; 100].join(",")
        );
        assert!(fault(card(&long)).contains("alias bomb"));
        // A small, honest alias is ordinary YAML.
        let ok = card("---\nbase: &b org/model\nbase_model: *b\n---\n").unwrap();
        assert_eq!(ok.front_matter["base_model"], "org/model");
    }

    #[test]
    fn flow_depth_bound_covers_every_reading() {
        let bound = |y: &str| flow_depth_bound(y, 1000);
        // Ordinary cards: the bound is the real depth.
        assert_eq!(
            bound("license: mit\ntags: [\"a\", 'b''c', \"[INST]\"]\n"),
            Ok(1)
        );
        assert_eq!(
            bound("a: {b: [c, {d: e}]}\n# [[[[ comment\nf: see [1] and [[2\n"),
            Ok(3)
        );
        assert_eq!(
            bound("w:\n- text: |\n    def f(x): return [x, \"]\n    more [\n"),
            Ok(0)
        );
        // Brackets hidden from a naive counter inside quotes, comments, tags and
        // plain scalars still count where libyaml could read them as collections.
        let tricks = [
            "[ \"]\" ",
            "[ a\"b, \"]\", ",
            "[ 'x'']' [ ",
            "[ !<[> [ ",
            "[ &a[ ",
            "[ #c\u{85}[ ",
            "[ \"\\\"]\" [ ",
        ];
        for t in tricks {
            let y = format!("a: {}", t.repeat(200));
            assert!(bound(&y).unwrap() >= 200, "{t:?} -> {:?}", bound(&y));
        }
        assert_eq!(flow_depth_bound(&"[".repeat(100), 64), Err(65));
    }

    #[test]
    fn big_front_matter_is_refused_unparsed() {
        let mut y = String::from("---\n");
        while y.len() < 2 << 20 {
            y.push_str("a: [\n"); // would be invalid YAML if it were parsed
        }
        y.push_str("---\n");
        assert!(fault(card(&y)).contains("limit (not parsed)"));
        y.truncate(y.len() - 4);
        assert!(fault(card(&y)).contains("limit (not parsed)"));
    }

    #[test]
    fn config_both_forms() {
        let t4: Value = serde_json::json!({
            "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "vocab_size": 128256, "head_dim": null
        });
        let p = params_from_config(&t4);
        assert_eq!(p.rope_theta, Some(500000.0));
        assert_eq!(p.head_dim, Some(128));
        assert_eq!(p.head_count_kv, Some(8));
        let r = rope_scaling_from_config(&t4).unwrap();
        assert_eq!(r.rope_type, "llama3");
        assert_eq!(r.original_max_position_embeddings, Some(8192));
        let t5: Value = serde_json::json!({
            "model_type": "gemma3",
            "text_config": {"num_hidden_layers": 26, "hidden_size": 1152,
                "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                                    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}
        });
        let p = params_from_config(&t5);
        assert_eq!(p.architecture.as_deref(), Some("gemma3"));
        assert_eq!(p.block_count, Some(26));
        assert_eq!(p.rope_theta, Some(1e6));
        assert_eq!(rope_scaling_from_config(&t5), None);
    }

    #[test]
    fn tokenizer_summary_unigram_and_added_tokens() {
        let tj = serde_json::json!({
            "added_tokens": [{"id": 3, "content": "<pad>"}, {"id": 0, "content": "<unk>"}],
            "pre_tokenizer": {"type": "Metaspace"},
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}]},
            "model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -2.0]]}
        });
        let dir = HfDir {
            tokenizer_json: Some(tj.to_string()),
            tokenizer_config: Some(serde_json::json!({
                "pad_token": {"content": "<pad>", "__type": "AddedToken"},
                "unk_token": "<unk>", "chat_template": "{{ x }}"
            })),
            config: Some(serde_json::json!({"eos_token_id": [2, 5]})),
            ..HfDir::default()
        };
        let s = dir.tokenizer_summary().unwrap();
        assert_eq!(s.model, "Unigram");
        assert_eq!(s.vocab_size, 4);
        assert_eq!(s.pad.unwrap().id, 3);
        assert_eq!(s.unk.unwrap().id, 0);
        let eos = s.eos.unwrap();
        assert_eq!((eos.id, eos.text.as_deref()), (2, Some("b")));
        assert_eq!(s.add_bos, Some(true));
        assert!(s.chat_template);
        assert_eq!(s.pre.as_deref(), Some("Metaspace"));
    }
}
