//! The fixtures' tokenizer: a byte-level BPE trained here, deterministically, on the evaluation
//! text, and written as a Hugging Face `tokenizer.json`.
//!
//! The layout follows the tokenizers the oracles in `/work/shared/oracles` ship (and GPT-2,
//! SmolLM2 and Qwen2 use): three special added tokens `<|endoftext|>`, `<|im_start|>`,
//! `<|im_end|>` at ids 0-2, the 256 byte-level symbols, then one token per learned merge; a
//! ByteLevel pre-tokenizer (`add_prefix_space` false, GPT-2 regex), a ByteLevel decoder and no
//! normalizer.
//!
//! Pre-tokenization is delegated to the `tokenizers` crate's own ByteLevel pre-tokenizer, so the
//! words the merges are learned on are exactly the words the tokenizer later splits text into.
//! The merge learning itself is written by hand because `tokenizers`' `BpeTrainer` counts words
//! in hash maps, which would make the order of equally frequent merges, and so the bytes of
//! `tokenizer.json`, depend on hashing; here every tie is broken by the pair's text.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

/// The special tokens, in id order (ids 0, 1, 2).
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A trained byte-level BPE: the vocabulary in id order and the merges in rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bpe {
    /// Token strings; a token's id is its index. Specials first, then the byte symbols, then
    /// one token per merge that produced a new string.
    pub vocab: Vec<String>,
    /// Merge rules, highest priority first.
    pub merges: Vec<(String, String)>,
}

/// What the tokenizer adds around encoded text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostProcessing {
    /// Nothing (GPT-2, SmolLM2, Qwen2 style): the ByteLevel post-processor only fixes offsets.
    ByteLevelOnly,
    /// Prepend `<|endoftext|>` as a beginning-of-sequence token (Llama-2 and Mistral style
    /// `add_bos_token`), after the ByteLevel offset fix.
    PrependBos,
}

/// GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
/// themselves, every other byte to U+0100 + n in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            let c = next;
            next += 1;
            c
        };
        // Every code here is below U+0144, far from the surrogate range, so the conversion
        // always succeeds; the fallback is never taken.
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// Split `text` into ByteLevel words (already mapped to byte-level symbols) with their counts.
fn word_counts(text: &str) -> std::io::Result<BTreeMap<String, u64>> {
    let mut pre = PreTokenizedString::from(text);
    ByteLevel::new(false, true, true)
        .pre_tokenize(&mut pre)
        .map_err(|e| std::io::Error::other(format!("byte-level pre-tokenization failed: {e}")))?;
    let mut counts = BTreeMap::new();
    for (word, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
        *counts.entry(word.to_owned()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Learn merges on `text` until the vocabulary (specials included) holds `vocab_size` tokens,
/// or no pair occurs twice any more.
///
/// Each round merges the most frequent adjacent pair; ties go to the pair whose (left, right)
/// strings sort first, so the result depends only on the text.
pub fn train(text: &str, vocab_size: usize) -> std::io::Result<Bpe> {
    let mut vocab: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let mut symbols: Vec<char> = bytes_to_unicode().to_vec();
    symbols.sort_unstable();
    vocab.extend(symbols.iter().map(|c| c.to_string()));
    let mut known: BTreeSet<String> = vocab.iter().cloned().collect();

    let mut words: Vec<(Vec<String>, u64)> = word_counts(text)?
        .into_iter()
        .map(|(w, n)| (w.chars().map(String::from).collect(), n))
        .collect();

    let mut merges = Vec::new();
    while vocab.len() < vocab_size {
        let mut pairs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (syms, n) in &words {
            for w in syms.windows(2) {
                *pairs.entry((w[0].as_str(), w[1].as_str())).or_insert(0) += n;
            }
        }
        // BTreeMap iterates pairs in ascending order and `max_by` keeps the last maximum, so
        // compare counts and, on a tie, prefer the smaller pair explicitly.
        let Some((&(left, right), &count)) = pairs
            .iter()
            .max_by(|(pa, ca), (pb, cb)| ca.cmp(cb).then_with(|| pb.cmp(pa)))
        else {
            break;
        };
        if count < 2 {
            break;
        }
        let (left, right) = (left.to_owned(), right.to_owned());
        let merged = format!("{left}{right}");
        for (syms, _) in &mut words {
            let mut out = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && syms[i] == left && syms[i + 1] == right {
                    out.push(merged.clone());
                    i += 2;
                } else {
                    out.push(std::mem::take(&mut syms[i]));
                    i += 1;
                }
            }
            *syms = out;
        }
        if known.insert(merged.clone()) {
            vocab.push(merged);
        }
        merges.push((left, right));
    }
    Ok(Bpe { vocab, merges })
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool) -> Value {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": true
    })
}

fn post_processor(post: PostProcessing) -> Value {
    let byte_level = byte_level(true, false);
    match post {
        PostProcessing::ByteLevelOnly => byte_level,
        PostProcessing::PrependBos => {
            let bos = SPECIAL_TOKENS[0];
            let special =
                |type_id: u32| json!({ "SpecialToken": { "id": bos, "type_id": type_id } });
            let seq =
                |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
            json!({
                "type": "Sequence",
                "processors": [
                    byte_level,
                    {
                        "type": "TemplateProcessing",
                        "single": [special(0), seq("A", 0)],
                        "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
                        "special_tokens": {
                            bos: { "id": bos, "ids": [0], "tokens": [bos] }
                        }
                    }
                ]
            })
        }
    }
}

/// The `tokenizer.json` text (pretty, two-space indent, trailing newline) for `bpe`.
pub fn tokenizer_json(bpe: &Bpe, post: PostProcessing) -> std::io::Result<String> {
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": true
            })
        })
        .collect();
    let mut vocab = Map::new();
    for (id, token) in bpe.vocab.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
    }
    let merges: Vec<Value> = bpe.merges.iter().map(|(l, r)| json!([l, r])).collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level(false, true),
        "post_processor": post_processor(post),
        "decoder": byte_level(true, true),
        "model": bpe_model(json!(vocab), json!(merges)),
    });
    let mut text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// The `model` object of a byte-level BPE `tokenizer.json` with this vocabulary and these
/// merges (the settings every fixture tokenizer shares).
pub fn bpe_model(vocab: Value, merges: Value) -> Value {
    json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": null,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": false,
        "byte_fallback": false,
        "ignore_merges": false,
        "vocab": vocab,
        "merges": merges
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(t[b'\n' as usize], '\u{10A}'); // 'Ċ'
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[0xAD], '\u{143}');
        let distinct: BTreeSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn most_frequent_pair_wins_and_ties_go_to_the_smaller_pair() {
        // "ab" occurs 3 times, "cd" 3 times: the tie goes to ("a", "b").
        let bpe = train("ab ab ab cd cd cd", 3 + 256 + 1).expect("train");
        assert_eq!(bpe.merges, vec![("a".to_owned(), "b".to_owned())]);
        assert_eq!(bpe.vocab.last().map(String::as_str), Some("ab"));
    }

    #[test]
    fn training_stops_when_no_pair_repeats() {
        let bpe = train("xyz", 1000).expect("train");
        assert!(bpe.merges.is_empty());
        assert_eq!(bpe.vocab.len(), 3 + 256);
    }
}
