//! Tolerant licence-text matching.
//!
//! Licence files in model repositories are rarely byte-identical to the published text:
//! markdown emphasis, re-wrapped lines, curly quotes, a copyright line on top, a few edited
//! words. Both texts are reduced to lower-case words (letters and digits only, markup and
//! HTML tags dropped) and compared as sets of overlapping word triples ("shingles"). The
//! score is the share of the catalogue text's shingles found in the file, so a file that
//! adds a copyright line still scores 100 % and an edited clause costs a few percent.
//! Near-identical licences (Llama 3.1 and 3.2 differ in a handful of words) are told apart
//! by the higher score and by marker phrases that each catalogue entry requires.

use std::collections::HashSet;

/// Words per shingle: three words keep an edit's cost local while common legal phrases
/// still differ between licences.
const SHINGLE: usize = 3;

/// Lower-case words of a text, markup removed.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_tag = false;
    let mut tag_len = 0usize;
    for c in text.chars() {
        // HTML tags (`<span style=...>`) in markdown licences are not words of the licence;
        // a `<` that runs on for long is text, not a tag.
        if in_tag {
            tag_len += 1;
            if c == '>' || tag_len > 200 {
                in_tag = false;
            }
            continue;
        }
        if c == '<' {
            in_tag = true;
            tag_len = 0;
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The normalised text as one string of words separated by single spaces.
pub fn normalised(text: &str) -> String {
    words(text).join(" ")
}

/// FNV-1a: a fixed hash so fingerprints do not depend on the process or the Rust version.
fn fnv1a(parts: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b' ');
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The shingle set of a text, and its normalised form for marker checks.
#[derive(Clone, Debug)]
pub struct Fingerprint {
    shingles: HashSet<u64>,
    normalised: String,
}

impl Fingerprint {
    pub fn of(text: &str) -> Fingerprint {
        let w = words(text);
        let shingles = if w.len() < SHINGLE {
            std::iter::once(fnv1a(&w)).collect()
        } else {
            w.windows(SHINGLE).map(fnv1a).collect()
        };
        Fingerprint {
            shingles,
            normalised: w.join(" "),
        }
    }

    /// Share of `self`'s shingles that occur in `other` (0..=1).
    pub fn contained_in(&self, other: &Fingerprint) -> f64 {
        if self.shingles.is_empty() {
            return 0.0;
        }
        let common = self
            .shingles
            .iter()
            .filter(|s| other.shingles.contains(s))
            .count();
        common as f64 / self.shingles.len() as f64
    }

    /// Whether a normalised phrase occurs in the text (on word boundaries).
    pub fn has_phrase(&self, phrase: &str) -> bool {
        let p = normalised(phrase);
        if p.is_empty() {
            return true;
        }
        let hay = format!(" {} ", self.normalised);
        hay.contains(&format!(" {p} "))
    }

    pub fn len(&self) -> usize {
        self.shingles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shingles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIT: &str = "Permission is hereby granted, free of charge, to any person obtaining\na copy of this software and associated documentation files (the\n\"Software\"), to deal in the Software without restriction, including\nwithout limitation the rights to use, copy, modify, merge, publish.";

    #[test]
    fn words_drop_markup_case_and_tags() {
        assert_eq!(
            words("**Llama 3.1** <span style=\"x\">https://a.b/c</span> “Policy”"),
            ["llama", "3", "1", "https", "a", "b", "c", "policy"]
        );
    }

    #[test]
    fn rewrapping_and_markdown_keep_a_full_score() {
        let a = Fingerprint::of(MIT);
        let rewrapped = format!(
            "# MIT License\n\nCopyright (c) 2023 X\n\n> {}",
            MIT.replace('\n', " ").replace("Software", "*Software*")
        );
        assert_eq!(a.contained_in(&Fingerprint::of(&rewrapped)), 1.0);
    }

    #[test]
    fn an_edit_costs_a_little() {
        let a = Fingerprint::of(MIT);
        let edited = MIT.replace("free of charge", "for a small fee");
        let s = a.contained_in(&Fingerprint::of(&edited));
        assert!(s > 0.6 && s < 1.0, "{s}");
    }

    #[test]
    fn phrases_match_on_word_boundaries() {
        let f = Fingerprint::of("Llama 3.1 Version Release Date: July 23, 2024");
        assert!(f.has_phrase("llama 3.1 version release date"));
        assert!(!f.has_phrase("llama 3.2 version release date"));
        assert!(!f.has_phrase("lama 3"));
    }
}
