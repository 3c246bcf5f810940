//! Text to token ids and back, with the `tokenizers` crate: loaded from a model
//! directory's tokenizer.json, or rebuilt from GGUF `tokenizer.ggml.*` keys.
//!
//! GGUF stores a vocabulary, not a tokenizer: the pipeline around the vocabulary (how text
//! is split before BPE, how spaces are marked) is named by `tokenizer.ggml.pre` or implied
//! by `tokenizer.ggml.model`. This module maps those names to the `tokenizers` components
//! that Hugging Face's tokenizer.json for the same model uses, so a GGUF model tokenizes as
//! its original does:
//!
//! - `gpt2` (byte-level BPE) with pre-tokenizer `default`/`gpt-2` (GPT-2's regex),
//!   `smollm` and its llama.cpp siblings (digits split one by one, then GPT-2's regex),
//!   `llama-bpe` (Llama 3's regex, merges ignored for whole-vocabulary words) and `qwen2`
//!   (NFC, Qwen2's regex);
//! - `llama` (SentencePiece vocabularies): BPE whose merges are derived from the piece
//!   scores, as transformers' converter derives them, with byte fallback and the `▁`
//!   space marker.
//!
//! - a SentencePiece `tokenizer.model` where a directory has no tokenizer.json, the same
//!   way as a `llama` GGUF vocabulary (see [`TextTokenizer::from_sentencepiece`]).
//!
//! BOS is added as the model declares (`add_bos_token`; SmolLM2 declares false).

use std::collections::HashMap;

use serde_json::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::formats::gguf::{Meta, MetaError};
use crate::formats::sentencepiece::{ModelType, PieceType, SpModel};
use crate::formats::{Checkpoint, MetaValue};

use super::chat;
use super::EngineError;

/// Llama 3's pre-tokenizer regex (tokenizer.json of Meta-Llama-3).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex: as Llama 3's, but digits one by one.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// ggml token types.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// A tokenizer with the model's special-token conventions.
pub struct TextTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    /// Ids that end generation.
    eos: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    /// How it was built, for messages: `tokenizer.json` or `GGUF gpt2/smollm`.
    origin: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// The checkpoint's tokenizer: tokenizer.json when the directory has one, the GGUF
    /// vocabulary otherwise.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<TextTokenizer, EngineError> {
        if let Some(dir) = &ckpt.dir {
            let tok = match (&dir.tokenizer_json, &dir.tokenizer_model) {
                (Some(json), _) => Some(TextTokenizer::from_tokenizer_json(
                    json,
                    dir.tokenizer_config.as_ref(),
                    dir.generation_config.as_ref(),
                    dir.config.as_ref(),
                )?),
                (None, Some(model)) => Some(TextTokenizer::from_sentencepiece(
                    model,
                    dir.tokenizer_config.as_ref(),
                    dir.generation_config.as_ref(),
                    dir.config.as_ref(),
                )?),
                (None, None) => None,
            };
            if let Some(mut tok) = tok {
                // transformers 5 may keep the template in its own file
                if tok.chat_template.is_none() {
                    tok.chat_template = dir.chat_template_jinja.clone();
                }
                return Ok(tok);
            }
        }
        if Meta::new(&ckpt.weights.metadata).contains("tokenizer.ggml.model") {
            return TextTokenizer::from_gguf(&ckpt.weights.metadata);
        }
        Err(EngineError::Tokenizer(format!(
            "`{}` has neither a tokenizer.json, a tokenizer.model nor GGUF tokenizer keys",
            ckpt.path.display()
        )))
    }

    /// From tokenizer.json text and the optional tokenizer_config.json, generation_config.json
    /// and config.json (for BOS/EOS ids, `add_bos_token` and the chat template).
    pub fn from_tokenizer_json(
        json: &str,
        tokenizer_config: Option<&Value>,
        generation_config: Option<&Value>,
        config: Option<&Value>,
    ) -> Result<TextTokenizer, EngineError> {
        let inner: Tokenizer = json
            .parse()
            .map_err(|e| EngineError::Tokenizer(format!("tokenizer.json does not load: {e}")))?;
        let special = |key: &str| -> Option<u32> {
            let v = tokenizer_config?.get(key)?;
            let text = v
                .as_str()
                .or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(text)
        };
        let bos = special("bos_token").or_else(|| {
            id_list(config.and_then(|c| c.get("bos_token_id")))
                .first()
                .copied()
        });
        let mut eos = id_list(generation_config.and_then(|c| c.get("eos_token_id")));
        eos.extend(id_list(config.and_then(|c| c.get("eos_token_id"))));
        eos.extend(special("eos_token"));
        let mut seen = std::collections::BTreeSet::new();
        eos.retain(|id| seen.insert(*id));
        let add_bos = tokenizer_config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chat_template = tokenizer_config
            .and_then(|c| c.get("chat_template"))
            .and_then(chat::template_from_config);
        Ok(TextTokenizer {
            inner,
            bos,
            eos,
            add_bos,
            chat_template,
            origin: "tokenizer.json".into(),
        })
    }

    /// From a SentencePiece `tokenizer.model` (used when a directory has no tokenizer.json),
    /// tokenizing as llama.cpp does with the vocabulary converted from it and as
    /// transformers' converted tokenizers do: BPE over the pieces ranked by score, byte
    /// fallback, spaces as `▁`, a dummy prefix when the normalizer asks for one, except for
    /// Gemma (transformers' GemmaTokenizer and llama.cpp's Gemma converter drop it). The
    /// file's character map and whitespace collapsing are not applied, as neither does.
    /// Control and user-defined pieces are matched whole; BOS is added unless
    /// tokenizer_config.json's `add_bos_token` says otherwise.
    pub fn from_sentencepiece(
        model: &SpModel,
        tokenizer_config: Option<&Value>,
        generation_config: Option<&Value>,
        config: Option<&Value>,
    ) -> Result<TextTokenizer, EngineError> {
        if model.pieces.is_empty() {
            return Err(EngineError::Tokenizer(
                "tokenizer.model has no pieces".into(),
            ));
        }
        let trainer = model.trainer();
        if trainer.model_type() != ModelType::Bpe {
            return Err(EngineError::Unsupported(format!(
                "a SentencePiece {} model (the engine runs BPE models)",
                trainer.model_type().name()
            )));
        }
        let tokens: Vec<String> = model.pieces.iter().map(|p| p.piece.clone()).collect();
        let scores: Vec<f32> = model.pieces.iter().map(|p| p.score).collect();
        let in_vocab = |id: Option<u32>| id.filter(|i| (*i as usize) < tokens.len());
        let unk = in_vocab(trainer.unk_id()).map(|u| tokens[u as usize].clone());
        let gemma = config
            .and_then(|c| c.get("model_type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("gemma"));
        let space_prefix = model.normalizer().add_dummy_prefix() && !gemma;
        let mut inner = spm_tokenizer(&tokens, &scores, unk, space_prefix)?;
        let added: Vec<AddedToken> = model
            .pieces
            .iter()
            .filter(|p| matches!(p.kind, PieceType::Control | PieceType::UserDefined))
            .map(|p| {
                AddedToken::from(p.piece.clone(), p.kind == PieceType::Control).normalized(false)
            })
            .collect();
        inner.add_special_tokens(&added);
        let mut eos: Vec<u32> = id_list(generation_config.and_then(|c| c.get("eos_token_id")));
        eos.extend(in_vocab(trainer.eos_id()));
        let mut seen = std::collections::BTreeSet::new();
        eos.retain(|id| seen.insert(*id) && (*id as usize) < tokens.len());
        let add_bos = tokenizer_config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let chat_template = tokenizer_config
            .and_then(|c| c.get("chat_template"))
            .and_then(chat::template_from_config);
        Ok(TextTokenizer {
            inner,
            bos: in_vocab(trainer.bos_id()),
            eos,
            add_bos,
            chat_template,
            origin: format!(
                "tokenizer.model (SentencePiece {})",
                trainer.model_type().name()
            ),
        })
    }

    /// Rebuild the tokenizer from GGUF `tokenizer.ggml.*` keys.
    pub fn from_gguf(md: &[(String, MetaValue)]) -> Result<TextTokenizer, EngineError> {
        let md = Meta::new(md);
        let model = md.require_str("tokenizer.ggml.model").map_err(tok_meta)?;
        let tokens: Vec<String> = md
            .require_strings("tokenizer.ggml.tokens")
            .map_err(tok_meta)?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if tokens.is_empty() {
            return Err(EngineError::Tokenizer(
                "`tokenizer.ggml.tokens` is empty".into(),
            ));
        }
        let types = md.ints("tokenizer.ggml.token_type").map_err(tok_meta)?;
        if let Some(t) = &types {
            if t.len() != tokens.len() {
                return Err(EngineError::Tokenizer(format!(
                    "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                    t.len(),
                    tokens.len()
                )));
            }
        }
        let id_key = |key: &str| -> Result<Option<u32>, EngineError> {
            match md.u64(key).map_err(tok_meta)? {
                None => Ok(None),
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                Some(id) => Err(EngineError::Tokenizer(format!(
                    "`{key}` is {id}, outside the vocabulary of {}",
                    tokens.len()
                ))),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let mut eos: Vec<u32> = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = id_key(key)? {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let unk = id_key("tokenizer.ggml.unknown_token_id")?;
        let pre = md.str("tokenizer.ggml.pre").map_err(tok_meta)?;
        let (mut inner, default_bos, origin) = match model {
            "gpt2" => {
                let merges: Vec<String> = md
                    .strings("tokenizer.ggml.merges")
                    .map_err(tok_meta)?
                    .ok_or_else(|| {
                        EngineError::Tokenizer(
                            "`tokenizer.ggml.merges` is missing (a gpt2 BPE vocabulary needs merges)"
                                .into(),
                        )
                    })?
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                let pre = pre.unwrap_or("default");
                let (tok, bos_default) = gpt2_tokenizer(&tokens, &merges, pre)?;
                (tok, bos_default, format!("GGUF gpt2/{pre}"))
            }
            "llama" => {
                let scores = md.floats("tokenizer.ggml.scores").map_err(tok_meta)?.ok_or_else(|| {
                    EngineError::Tokenizer(
                        "`tokenizer.ggml.scores` is missing (a llama SentencePiece vocabulary needs scores)"
                            .into(),
                    )
                })?;
                if scores.len() != tokens.len() {
                    return Err(EngineError::Tokenizer(format!(
                        "`tokenizer.ggml.scores` has {} entries for {} tokens",
                        scores.len(),
                        tokens.len()
                    )));
                }
                let space_prefix = md
                    .bool("tokenizer.ggml.add_space_prefix")
                    .map_err(tok_meta)?
                    .unwrap_or(true);
                let unk_text = unk.map(|u| tokens[u as usize].clone());
                let tok = spm_tokenizer(&tokens, &scores, unk_text, space_prefix)?;
                (tok, true, "GGUF llama (SentencePiece)".to_string())
            }
            other => {
                return Err(EngineError::Unsupported(format!(
                "GGUF tokenizer model `{other}` (the engine rebuilds gpt2 and llama vocabularies)"
            )))
            }
        };
        // Control and user-defined tokens are matched whole in the input (as transformers and
        // llama.cpp do), so a chat template's `<|im_start|>` becomes one token.
        if let Some(types) = &types {
            let added: Vec<AddedToken> = tokens
                .iter()
                .zip(types)
                .filter(|(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
                .map(|(text, &t)| {
                    AddedToken::from(text.clone(), t == TOKEN_CONTROL).normalized(false)
                })
                .collect();
            inner.add_special_tokens(&added);
        }
        let add_bos = md
            .bool("tokenizer.ggml.add_bos_token")
            .map_err(tok_meta)?
            .unwrap_or(default_bos);
        let chat_template = md
            .str("tokenizer.chat_template")
            .map_err(tok_meta)?
            .map(str::to_owned);
        Ok(TextTokenizer {
            inner,
            bos,
            eos,
            add_bos,
            chat_template,
            origin,
        })
    }

    /// Token ids of `text`, with BOS first when the model declares it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self.inner.encode(text, true).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if self.add_bos {
            if let Some(bos) = self.bos {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// Token ids of a single user turn rendered with the model's chat template and an
    /// assistant prompt. The template writes BOS itself where the model wants one.
    pub fn encode_chat(&self, user: &str) -> Result<Vec<u32>, EngineError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            EngineError::ChatTemplate(format!(
                "the model declares no chat template ({})",
                self.origin
            ))
        })?;
        let bos_text = self.bos.and_then(|b| self.inner.id_to_token(b));
        let eos_text = self.eos.first().and_then(|&e| self.inner.id_to_token(e));
        let text = chat::render(template, user, bos_text.as_deref(), eos_text.as_deref())?;
        let enc = self.inner.encode(text.as_str(), false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of token ids (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// The vocabulary entry of one id, as stored (`Ġthe`, `▁the`, `<|im_end|>`).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// A tokenizer key that is absent or of the wrong type.
fn tok_meta(e: MetaError) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// The vocabulary as a token -> id map. A repeated token keeps its first id: later copies
/// can never be produced by encoding, so nothing is lost but their text on decode.
fn vocab_map(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(id as u32);
    }
    vocab
}

fn split(regex: &str) -> Result<PreTokenizerWrapper, EngineError> {
    Ok(Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?
    .into())
}

/// Byte-level BPE with the pre-tokenizer `pre` names. Returns the tokenizer and whether
/// the family adds BOS when the file does not say.
fn gpt2_tokenizer(
    tokens: &[String],
    merges: &[String],
    pre: &str,
) -> Result<(Tokenizer, bool), EngineError> {
    let pairs = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    EngineError::Tokenizer(format!(
                        "`tokenizer.ggml.merges`[{i}] is not two tokens separated by a space"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let byte_level_split = ByteLevel::new(false, true, true);
    let byte_level_only = ByteLevel::new(false, true, false);
    // (pre-tokenizer, NFC normalizer, ignore_merges, BOS by default)
    let (pre_tok, nfc, ignore_merges, bos_default): (PreTokenizerWrapper, bool, bool, bool) =
        match pre {
            "default" | "gpt-2" => (byte_level_split.into(), false, false, false),
            "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva" => (
                PreSequence::new(vec![Digits::new(true).into(), byte_level_split.into()]).into(),
                false,
                false,
                false,
            ),
            "llama-bpe" | "llama3" | "llama-v3" => (
                PreSequence::new(vec![split(LLAMA3_REGEX)?, byte_level_only.into()]).into(),
                false,
                true,
                true,
            ),
            "qwen2" | "deepseek-r1-qwen" => (
                PreSequence::new(vec![split(QWEN2_REGEX)?, byte_level_only.into()]).into(),
                true,
                false,
                false,
            ),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "GGUF pre-tokenizer `{other}` (the engine rebuilds default, gpt-2, smollm, starcoder, refact, llama-bpe and qwen2)"
                )))
            }
        };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| {
            EngineError::Tokenizer(format!("the GGUF BPE vocabulary does not build: {e}"))
        })?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tok));
    if nfc {
        tok.with_normalizer(Some(NFC));
    }
    tok.with_decoder(Some(ByteLevel::default()));
    Ok((tok, bos_default))
}

/// A SentencePiece vocabulary as BPE: a pair merges when the merged piece is in the
/// vocabulary, higher-scored pieces first, ties by the ids of the two halves (as
/// transformers' SentencePiece converter orders them). Unknown bytes fall back to the
/// `<0xNN>` tokens.
fn spm_tokenizer(
    tokens: &[String],
    scores: &[f32],
    unk: Option<String>,
    space_prefix: bool,
) -> Result<Tokenizer, EngineError> {
    let vocab = vocab_map(tokens);
    let lookup: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let mut merges: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (lookup.get(l), lookup.get(r)) {
                merges.push((score, li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let pairs: Vec<(String, String)> = merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| {
        EngineError::Tokenizer(format!(
            "the GGUF SentencePiece vocabulary does not build: {e}"
        ))
    })?;
    let mut tok = Tokenizer::new(bpe);
    let replace = Replace::new(" ", "\u{2581}").map_err(tok_err)?;
    if space_prefix {
        tok.with_normalizer(Some(tokenizers::normalizers::Sequence::new(vec![
            Prepend::new("\u{2581}".into()).into(),
            replace.into(),
        ])));
    } else {
        tok.with_normalizer(Some(replace));
    }
    let mut decoders: Vec<DecoderWrapper> = vec![
        tokenizers::decoders::DecoderWrapper::Replace(
            Replace::new("\u{2581}", " ").map_err(tok_err)?,
        ),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// A config.json / generation_config.json token id field: one id or a list of them.
fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .filter_map(|x| u32::try_from(x).ok())
            .collect(),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::ValueType;

    fn strings(items: &[&str]) -> MetaValue {
        MetaValue::Array {
            elem: ValueType::String,
            items: items
                .iter()
                .map(|s| MetaValue::String(s.to_string()))
                .collect(),
        }
    }

    fn kv(k: &str, v: MetaValue) -> (String, MetaValue) {
        (k.to_string(), v)
    }

    #[test]
    fn gpt2_vocabulary_from_keys() {
        // "Ġ" is the byte-level form of a space.
        let tokens = [
            "<|endoftext|>",
            "<|im_start|>",
            "a",
            "b",
            "c",
            "Ġ",
            "ab",
            "Ġab",
            "1",
            "2",
            "12",
        ];
        let md = vec![
            kv("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            kv("tokenizer.ggml.pre", MetaValue::String("smollm".into())),
            kv("tokenizer.ggml.tokens", strings(&tokens)),
            kv(
                "tokenizer.ggml.token_type",
                MetaValue::Array {
                    elem: ValueType::I32,
                    items: (0..tokens.len())
                        .map(|i| MetaValue::I32(if i < 2 { 3 } else { 1 }))
                        .collect(),
                },
            ),
            kv("tokenizer.ggml.merges", strings(&["a b", "Ġ ab", "1 2"])),
            kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
            kv("tokenizer.ggml.eos_token_id", MetaValue::U32(0)),
            kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)),
        ];
        let t = TextTokenizer::from_gguf(&md).unwrap();
        assert_eq!(t.encode("ab ab").unwrap(), vec![6, 7]);
        // smollm splits digits one by one, so the `1 2` merge never applies
        assert_eq!(t.encode("12").unwrap(), vec![8, 9]);
        assert_eq!(t.encode("<|im_start|>c").unwrap(), vec![1, 4]);
        assert_eq!(t.decode(&[6, 7]).unwrap(), "ab ab");
        assert_eq!(t.eos(), &[0]);
        let mut md2 = md.clone();
        md2[1] = kv("tokenizer.ggml.pre", MetaValue::String("gpt-2".into()));
        md2.pop();
        let t = TextTokenizer::from_gguf(&md2).unwrap();
        assert_eq!(t.encode("12").unwrap(), vec![10]);
        assert!(!t.adds_bos());
        let mut md3 = md.clone();
        md3[1] = kv("tokenizer.ggml.pre", MetaValue::String("gpt2".into()));
        let e = TextTokenizer::from_gguf(&md3).unwrap_err();
        assert!(e.to_string().contains("`gpt2`"), "{e}");
    }

    #[test]
    fn sentencepiece_vocabulary_from_scores() {
        let tokens = [
            "<unk>", "<s>", "</s>", "<0x21>", "▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "llo",
            "▁hello",
        ];
        let scores: Vec<MetaValue> = (0..tokens.len())
            .map(|i| MetaValue::F32(-(i as f32)))
            .collect();
        let types: Vec<MetaValue> = (0..tokens.len())
            .map(|i| {
                MetaValue::I32(match i {
                    0 => 2,
                    1 | 2 => 3,
                    3 => 6,
                    _ => 1,
                })
            })
            .collect();
        let md = vec![
            kv("tokenizer.ggml.model", MetaValue::String("llama".into())),
            kv("tokenizer.ggml.tokens", strings(&tokens)),
            kv(
                "tokenizer.ggml.scores",
                MetaValue::Array {
                    elem: ValueType::F32,
                    items: scores,
                },
            ),
            kv(
                "tokenizer.ggml.token_type",
                MetaValue::Array {
                    elem: ValueType::I32,
                    items: types,
                },
            ),
            kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
            kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
            kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ];
        let t = TextTokenizer::from_gguf(&md).unwrap();
        assert!(t.adds_bos());
        let ids = t.encode("hello!").unwrap();
        // BOS, `▁hello`, then `!` through its byte token
        assert_eq!(ids, vec![1, 13, 3]);
        assert_eq!(t.decode(&ids[1..]).unwrap(), "hello!");
    }

    #[test]
    fn bad_keys_are_refused() {
        let md = vec![
            kv("tokenizer.ggml.model", MetaValue::String("bert".into())),
            kv("tokenizer.ggml.tokens", strings(&["a"])),
        ];
        assert!(TextTokenizer::from_gguf(&md)
            .unwrap_err()
            .to_string()
            .contains("bert"));
        let md = vec![
            kv("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            kv("tokenizer.ggml.tokens", strings(&["a", "b"])),
            kv("tokenizer.ggml.merges", strings(&["ab"])),
        ];
        assert!(TextTokenizer::from_gguf(&md).is_err());
        let md = vec![
            kv("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            kv("tokenizer.ggml.tokens", strings(&["a", "b"])),
            kv("tokenizer.ggml.merges", strings(&[])),
            kv("tokenizer.ggml.eos_token_id", MetaValue::U32(7)),
        ];
        assert!(TextTokenizer::from_gguf(&md)
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary"));
    }
}
