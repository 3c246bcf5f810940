//! Chat templates as a model carries them: every GGUF `tokenizer.chat_template*` key,
//! `chat_template` in `tokenizer_config.json` or `chat_template.json` (a string, or a list
//! of `{name, template}`), and `*.jinja` files (`chat_template.jinja`,
//! `additional_chat_templates/NAME.jinja`).
//!
//! Each template comes with where it sits in its file, so a finding about an expression can
//! point at the file's bytes: a GGUF string value and a `.jinja` file hold the template
//! verbatim (a fixed base offset); a JSON string literal escapes it, so offsets are mapped
//! by decoding the literal again. The files are hostile: sizes are capped, the GGUF value
//! is found by an exact, bounded byte search of the metadata section, and JSON is parsed by
//! serde_json (nesting capped at 128 levels).

use std::path::Path;

use serde_json::Value;

use super::{read_text_capped, FormatError, Mapped, MetaValue};

/// Largest `tokenizer_config.json` / `chat_template.json` read for templates (configs
/// carrying an `added_tokens_decoder` for a large vocabulary reach a few MiB).
pub const MAX_CONFIG_LEN: u64 = 32 << 20;
/// Largest `.jinja` template file read. A template is a few KiB; hostile ones pad their
/// payload behind hundreds of KiB of comments, which stays well inside this.
pub const MAX_TEMPLATE_FILE_LEN: u64 = 16 << 20;
/// Bytes of a GGUF file searched for a template value's position (the metadata section,
/// which precedes tensor data, is rarely more than a few MiB).
const MAX_GGUF_SEARCH: usize = 256 << 20;
/// Named templates read from one list.
const MAX_NAMED: usize = 256;

/// Where a template's text sits in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The template's bytes are the file's bytes from `base` on (a GGUF string value or a
    /// whole `.jinja` file). `base` is `None` when it could not be located.
    Verbatim { base: Option<u64> },
    /// The template is a JSON string literal whose opening quote is at byte `quote`, on
    /// 1-based `line` of the file. `raw` is the literal between the quotes, as written.
    Json { quote: u64, line: u64, raw: String },
}

/// One chat template found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSource {
    /// The GGUF key (`tokenizer.chat_template.tool_use`), JSON key (`chat_template`,
    /// `chat_template[tool_use]`) or file name that holds it.
    pub key: String,
    /// The template's name: `default`, `tool_use`, ...
    pub name: String,
    pub text: String,
    pub placement: Placement,
}

/// A position in a template, translated to its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilePos {
    /// Byte offset in the file, when known.
    pub offset: Option<u64>,
    /// 1-based line in the file, for text files.
    pub line: Option<u64>,
}

impl TemplateSource {
    /// Where byte `at` of the template is in its file.
    pub fn file_pos(&self, at: usize) -> FilePos {
        match &self.placement {
            Placement::Verbatim { base } => FilePos {
                offset: base.and_then(|b| b.checked_add(at as u64)),
                line: None,
            },
            Placement::Json { quote, line, raw } => FilePos {
                offset: json_raw_offset(raw, at)
                    .and_then(|r| quote.checked_add(1)?.checked_add(r as u64)),
                // JSON string literals hold no raw newlines: the whole literal is on one line
                line: Some(*line),
            },
        }
    }
}

/// Templates in GGUF metadata: every string value under a `tokenizer.chat_template` key,
/// located in the file at `path` when it can be found there.
pub fn from_gguf(path: &Path, metadata: &[(String, MetaValue)]) -> Vec<TemplateSource> {
    let found: Vec<(&String, &str)> = metadata
        .iter()
        .filter(|(k, _)| {
            k == "tokenizer.chat_template" || k.starts_with("tokenizer.chat_template.")
        })
        .filter_map(|(k, v)| Some((k, v.as_str()?)))
        .collect();
    if found.is_empty() {
        return Vec::new();
    }
    let map = Mapped::open(path).ok();
    let bytes = map.as_ref().map(Mapped::bytes).unwrap_or(&[]);
    let bytes = &bytes[..bytes.len().min(MAX_GGUF_SEARCH)];
    found
        .into_iter()
        .map(|(k, text)| TemplateSource {
            key: k.clone(),
            name: k
                .strip_prefix("tokenizer.chat_template.")
                .unwrap_or("default")
                .to_owned(),
            text: text.to_owned(),
            placement: Placement::Verbatim {
                base: gguf_string_value_offset(bytes, k, text.as_bytes()),
            },
        })
        .collect()
}

/// Offset of a GGUF string value: the key (u64 length + bytes), type 8 (string), the
/// value's u64 length, then the value itself, all of which must match.
fn gguf_string_value_offset(bytes: &[u8], key: &str, value: &[u8]) -> Option<u64> {
    let mut needle = Vec::with_capacity(key.len() + 20);
    needle.extend_from_slice(&(key.len() as u64).to_le_bytes());
    needle.extend_from_slice(key.as_bytes());
    needle.extend_from_slice(&8u32.to_le_bytes());
    needle.extend_from_slice(&(value.len() as u64).to_le_bytes());
    let mut from = 0;
    while let Some(i) = find(&bytes[from..], &needle) {
        let start = from + i + needle.len();
        if bytes.get(start..start.checked_add(value.len())?) == Some(value) {
            return Some(start as u64);
        }
        from += i + 1;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..].iter().position(|&b| b == first) {
            Some(p) => {
                i += p;
                if hay.get(i..i + needle.len()) == Some(needle) {
                    return Some(i);
                }
                i += 1;
            }
            None => return None,
        }
    }
    None
}

/// A template file (`chat_template.jinja`), read whole.
pub fn from_jinja_file(path: &Path, key: &str) -> Result<TemplateSource, FormatError> {
    let text = read_text_capped(path, MAX_TEMPLATE_FILE_LEN)?;
    let name = Path::new(key)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| *s != "chat_template")
        .unwrap_or("default")
        .to_owned();
    Ok(TemplateSource {
        key: key.to_owned(),
        name,
        text,
        placement: Placement::Verbatim { base: Some(0) },
    })
}

/// Templates in a JSON file with a `chat_template` member (`tokenizer_config.json`,
/// `chat_template.json`). A file without one yields nothing; a `chat_template` that is
/// neither a string nor a list of `{name, template}` is malformed.
pub fn from_json_file(path: &Path) -> Result<Vec<TemplateSource>, FormatError> {
    let text = read_text_capped(path, MAX_CONFIG_LEN)?;
    from_json_text(path, &text)
}

/// [`from_json_file`] on text already read.
pub fn from_json_text(path: &Path, text: &str) -> Result<Vec<TemplateSource>, FormatError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| FormatError::malformed(path, format!("not valid JSON: {e}")))?;
    let Some(t) = v.as_object().and_then(|o| o.get("chat_template")) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<(String, String, String)> = Vec::new();
    match t {
        Value::String(s) => found.push(("chat_template".into(), "default".into(), s.clone())),
        Value::Array(items) => {
            if items.len() > MAX_NAMED {
                return Err(FormatError::malformed(
                    path,
                    format!(
                        "`chat_template` lists {} templates, more than the {MAX_NAMED} read",
                        items.len()
                    ),
                ));
            }
            for (i, it) in items.iter().enumerate() {
                let name = it.get("name").and_then(Value::as_str);
                let Some(tpl) = it.get("template").and_then(Value::as_str) else {
                    return Err(FormatError::malformed(
                        path,
                        format!("`chat_template[{i}]` has no string `template`"),
                    ));
                };
                let name = name.map(str::to_owned).unwrap_or_else(|| i.to_string());
                found.push((format!("chat_template[{name}]"), name, tpl.to_owned()));
            }
        }
        Value::Null => {}
        other => {
            return Err(FormatError::malformed(
                path,
                format!(
                    "`chat_template` is a {}, expected a string or a list of {{name, template}}",
                    match other {
                        Value::Bool(_) => "boolean",
                        Value::Number(_) => "number",
                        _ => "object",
                    }
                ),
            ))
        }
    }
    let literals = string_literals(text);
    Ok(found
        .into_iter()
        .map(|(key, name, tpl)| {
            let placement = literals
                .iter()
                .find(|&&(s, e)| {
                    let raw = &text[s + 1..e];
                    // an object key (`"chat_template":`) is never the value, even when a
                    // template's text happens to equal it
                    let is_key = text[e + 1..].trim_start().starts_with(':');
                    !is_key
                        && raw.len() >= tpl.len()
                        && decode_literal(raw).as_deref() == Some(tpl.as_str())
                })
                .map(|&(s, e)| Placement::Json {
                    quote: s as u64,
                    line: 1 + text.as_bytes()[..s].iter().filter(|&&b| b == b'\n').count() as u64,
                    raw: text[s + 1..e].to_owned(),
                })
                .unwrap_or(Placement::Verbatim { base: None });
            TemplateSource {
                key,
                name,
                text: tpl,
                placement,
            }
        })
        .collect())
}

/// Byte spans `(opening quote, closing quote)` of every string literal in JSON text.
fn string_literals(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            if i < b.len() {
                out.push((start, i));
            }
        }
        i += 1;
    }
    out
}

/// Decode a JSON string literal's inside (without quotes).
fn decode_literal(raw: &str) -> Option<String> {
    serde_json::from_str::<String>(&format!("\"{raw}\"")).ok()
}

/// The byte offset inside a raw JSON literal where decoded byte `at` starts.
fn json_raw_offset(raw: &str, at: usize) -> Option<usize> {
    let b = raw.as_bytes();
    let (mut r, mut d) = (0usize, 0usize);
    while d < at {
        if r >= b.len() {
            return None;
        }
        if b[r] != b'\\' {
            r += 1;
            d += 1;
            continue;
        }
        match b.get(r + 1)? {
            b'u' => {
                let hex = raw.get(r + 2..r + 6)?;
                let cp = u32::from_str_radix(hex, 16).ok()?;
                if (0xD800..0xDC00).contains(&cp) {
                    // a surrogate pair: two escapes, one 4-byte character
                    r += 12;
                    d += 4;
                } else {
                    r += 6;
                    d += char::from_u32(cp).map_or(3, char::len_utf8);
                }
            }
            _ => {
                r += 2;
                d += 1;
            }
        }
    }
    (d == at).then_some(r)
}

/// Tokens one `{{ }}` or `{% %}` tag may hold before a template is refused unparsed.
/// minijinja's parser bounds nesting of brackets and statements, but builds a chain of
/// binary operators, filters or unary minus one level deeper per token, and the syntax tree
/// is dropped, compiled and walked recursively; a 200 KiB `{{ a~a~a~... }}` would overflow
/// the stack. Real chat templates stay under a hundred tokens per tag.
pub const MAX_TAG_TOKENS: usize = 1000;

/// Why a template was not handed to the parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Byte offset of the tag (or lexer error) in the template.
    pub offset: usize,
    pub why: String,
}

/// Check, with minijinja's lexer alone (no parsing), that no tag of `text` holds more than
/// [`MAX_TAG_TOKENS`] tokens, so that parsing and compiling it recurse a bounded depth.
pub fn check_tag_sizes(text: &str) -> Result<(), Refused> {
    use minijinja::machinery::{tokenize, Token};
    let mut in_tag: Option<(usize, usize)> = None; // (start offset, tokens so far)
    for tok in tokenize(text, false, Default::default()) {
        let (tok, span) = tok.map_err(|e| Refused {
            offset: e.range().map_or(0, |r| r.start),
            why: e.detail().unwrap_or("cannot be tokenized").to_owned(),
        })?;
        match tok {
            Token::VariableStart | Token::BlockStart => {
                in_tag = Some((span.start_offset as usize, 0));
            }
            Token::VariableEnd | Token::BlockEnd => in_tag = None,
            _ => {
                if let Some((start, n)) = in_tag.as_mut() {
                    *n += 1;
                    if *n > MAX_TAG_TOKENS {
                        return Err(Refused {
                            offset: *start,
                            why: format!(
                                "a tag holds more than {MAX_TAG_TOKENS} tokens, deeper than any chat template nests"
                            ),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// `text` as minijinja's parser should see it: transformers' `{% generation %}` and
/// `{% endgeneration %}` tags (which only mark assistant tokens for training masks) are
/// blanked to comments of the same length, so every offset still points at the original.
pub fn for_parser(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("generation") {
        return std::borrow::Cow::Borrowed(text);
    }
    let re = GENERATION_TAG
        .get_or_init(|| regex::Regex::new(r"\{%-?\s*(?:end)?generation\s*-?%\}").ok());
    let Some(re) = re else {
        return std::borrow::Cow::Borrowed(text);
    };
    re.replace_all(text, |c: &regex::Captures<'_>| {
        let n = c[0].len();
        format!("{{#{}#}}", " ".repeat(n.saturating_sub(4)))
    })
}

static GENERATION_TAG: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_and_list_forms_are_located() {
        let text = "{\n  \"bos_token\": \"<s>\",\n  \"chat_template\": [\n    {\"name\": \"default\", \"template\": \"{{ a }}\\n{{ b }}\"},\n    {\"name\": \"tool_use\", \"template\": \"\\u00e9{{ x.__class__ }}\"}\n  ]\n}";
        let t = from_json_text(Path::new("tokenizer_config.json"), text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].key, "chat_template[default]");
        assert_eq!(t[0].text, "{{ a }}\n{{ b }}");
        assert_eq!(t[1].name, "tool_use");
        // byte 8 of the decoded template (`{{ b }}`) is after the `\n` escape in the file
        let p = t[0].file_pos(8);
        assert_eq!(p.line, Some(4));
        assert_eq!(&text[p.offset.unwrap() as usize..][..7], "{{ b }}");
        // `é` is 2 bytes decoded, 6 escaped
        let at = t[1].text.find("x.__class__").unwrap();
        let p = t[1].file_pos(at);
        assert_eq!(&text[p.offset.unwrap() as usize..][..11], "x.__class__");
        let s = from_json_text(Path::new("c.json"), "{\"chat_template\": \"T\"}").unwrap();
        assert_eq!(
            (s[0].key.as_str(), s[0].text.as_str()),
            ("chat_template", "T")
        );
        assert!(from_json_text(Path::new("c.json"), "{\"chat_template\": 3}").is_err());
        assert!(from_json_text(Path::new("c.json"), "{}")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_template_equal_to_its_key_is_located_at_the_value() {
        // found by the `template` fuzz target: the key literal must never be taken for the
        // value, and an empty value starts right after its opening quote
        for (tpl, at) in [("chat_template", 19u64), ("", 19)] {
            let text = format!("{{\"chat_template\": \"{tpl}\"}}");
            let s = from_json_text(Path::new("c.json"), &text).unwrap();
            assert_eq!(s[0].file_pos(0).offset, Some(at), "{text}");
        }
    }

    #[test]
    fn long_tags_are_refused_before_parsing() {
        let deep = format!("{{{{ {} }}}}", vec!["a"; 2000].join("~"));
        let e = check_tag_sizes(&deep).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(check_tag_sizes("{% for m in messages %}{{ m.content }}{% endfor %}").is_ok());
        let minus = format!("{{{{ {}1 }}}}", "-".repeat(5000));
        assert!(check_tag_sizes(&minus).is_err());
    }

    #[test]
    fn generation_tags_become_comments_of_equal_length() {
        let t = "{% generation %}{{ x }}{%- endgeneration -%}";
        let p = for_parser(t);
        assert_eq!(p.len(), t.len());
        assert!(p.starts_with("{#") && p.contains("{{ x }}"));
    }

    #[test]
    fn gguf_values_are_found_exactly() {
        let mut b = b"GGUF....".to_vec();
        let key = "tokenizer.chat_template";
        // a decoy: same key, other value
        for value in ["{{ no }}", "{{ yes }}"] {
            b.extend_from_slice(&(key.len() as u64).to_le_bytes());
            b.extend_from_slice(key.as_bytes());
            b.extend_from_slice(&8u32.to_le_bytes());
            b.extend_from_slice(&(value.len() as u64).to_le_bytes());
            b.extend_from_slice(value.as_bytes());
        }
        let at = gguf_string_value_offset(&b, key, b"{{ yes }}").unwrap() as usize;
        assert_eq!(&b[at..], b"{{ yes }}");
        assert_eq!(gguf_string_value_offset(&b, key, b"{{ none }}"), None);
    }
}
