//! Catastrophic backtracking in tokenizer regexes. Python's `re` and Oniguruma (which
//! `tokenizers` uses when built with `onig`) backtrack, so a pattern such as `(a+)+$`
//! takes exponential time on `aaaa…a!`; a tokenizer applying it to user text hangs.
//!
//! The check is written here rather than taken from a crate because it needs the pattern's
//! structure as a backtracking engine sees it (groups, quantifiers, alternation, with
//! lookaround and Unicode classes as Oniguruma writes them): `regex-syntax` refuses
//! lookaround, and fancy-regex hands classes to the `regex` crate as opaque strings. It
//! has two parts:
//!
//! 1. a static pass over a small parse tree: a repeated group (max > 1) that contains a
//!    repeated item (nested quantifiers), or that holds an alternation whose branches can
//!    start with the same character (ambiguous alternation);
//! 2. for the candidates the static pass finds, a bounded test match: a backtracking
//!    matcher over the same tree counts its steps on adversarial strings built from the
//!    repeated item's characters followed by one that cannot match. Exceeding the budget
//!    confirms the blow-up; ambiguous alternation is only reported when confirmed.
//!
//! Character classes are judged by compiling each one alone with the `regex` crate (linear
//! time) and testing it on sample characters.

use regex::Regex;

/// Longest pattern analysed; longer ones are reported as such.
pub const MAX_PATTERN: usize = 4096;
/// Steps the test matcher may take per adversarial string.
const BUDGET: u64 = 200_000;
/// Parse tree nodes per pattern.
const MAX_NODES: usize = 2048;
/// Characters sampled to decide which characters a class matches.
const SAMPLE: &[char] = &[
    'a', 'b', 'z', 'A', 'Z', '0', '9', ' ', '\t', '\n', '\r', '_', '-', '.', ',', '!', '\'', '"',
    '/', '\\', 'é', 'ß', 'ж', '中', '😀', '\u{200b}', '\u{0}', '▁', 'Ġ',
];

#[derive(Clone, Debug)]
enum Node {
    /// One character, or a class (the source text, compiled alone).
    Char(Atom),
    /// Zero-width: anchors, lookaround, word boundaries (always succeed in the test).
    Empty,
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    Repeat {
        child: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

#[derive(Clone, Debug)]
enum Atom {
    Lit(char),
    Class(Option<Regex>),
    Any,
    /// End of input (`$`, `\z`): the test matcher honours it, so `(a+)+$` fails slowly.
    End,
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Lit(l) => *l == c,
            Atom::Class(Some(re)) => {
                let mut b = [0u8; 4];
                re.is_match(c.encode_utf8(&mut b))
            }
            Atom::Class(None) => true,
            Atom::Any => c != '\n',
            Atom::End => false,
        }
    }
}

/// What is wrong with a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The construct, as written.
    pub construct: String,
    /// Nested quantifiers or ambiguous alternation.
    pub why: String,
    /// Steps the test matcher took on the worst adversarial string, and that string.
    pub steps: Option<(u64, String)>,
}

/// Judge one regex. `None` when no catastrophic construct was found.
pub fn check(pattern: &str) -> Option<Verdict> {
    if pattern.len() > MAX_PATTERN {
        return Some(Verdict {
            construct: format!("{}…", pattern.chars().take(40).collect::<String>()),
            why: format!("the pattern is longer than the {MAX_PATTERN} bytes analysed"),
            steps: None,
        });
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut p = Parser {
        s: &chars,
        i: 0,
        nodes: 0,
    };
    let tree = p.alt(0).ok()?;
    let mut found: Vec<(Node, String, bool, String)> = Vec::new();
    candidates(&tree, pattern, &mut found, 0);
    for (node, construct, definite, why) in found {
        let steps = attack(&tree, &node);
        let confirmed = steps.as_ref().is_some_and(|(n, _)| *n >= BUDGET);
        if definite || confirmed {
            return Some(Verdict {
                construct,
                why,
                steps,
            });
        }
    }
    None
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
    nodes: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn count(&mut self) -> Result<(), ()> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            Err(())
        } else {
            Ok(())
        }
    }

    fn alt(&mut self, depth: usize) -> Result<Node, ()> {
        if depth > 64 {
            return Err(());
        }
        let mut branches = vec![self.seq(depth)?];
        while self.peek() == Some('|') {
            self.i += 1;
            branches.push(self.seq(depth)?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alt(branches)
        })
    }

    fn seq(&mut self, depth: usize) -> Result<Node, ()> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            self.count()?;
            let atom = self.atom(depth)?;
            items.push(self.quantifier(atom)?);
        }
        Ok(Node::Seq(items))
    }

    fn quantifier(&mut self, atom: Node) -> Result<Node, ()> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => match self.braces() {
                Some(b) => b,
                None => return Ok(atom),
            },
            _ => return Ok(atom),
        };
        // past the quantifier's last character (`*`, `+`, `?` or the closing `}`)
        self.i += 1;
        // lazy `?` and possessive `+` suffixes: possessive never backtracks
        let possessive = match self.peek() {
            Some('?') => {
                self.i += 1;
                false
            }
            Some('+') => {
                self.i += 1;
                true
            }
            _ => false,
        };
        if possessive {
            return Ok(atom);
        }
        Ok(Node::Repeat {
            child: Box::new(atom),
            min,
            max,
        })
    }

    /// `{n}`, `{n,}`, `{n,m}`; leaves `i` on the closing brace.
    fn braces(&mut self) -> Option<(u32, Option<u32>)> {
        let rest: String = self.s[self.i..].iter().take(24).collect();
        let close = rest.find('}')?;
        let inner = &rest[1..close];
        let (min, max) = match inner.split_once(',') {
            None => {
                let n: u32 = inner.trim().parse().ok()?;
                (n, Some(n))
            }
            Some((a, b)) => {
                let a: u32 = if a.trim().is_empty() {
                    0
                } else {
                    a.trim().parse().ok()?
                };
                let b = if b.trim().is_empty() {
                    None
                } else {
                    Some(b.trim().parse().ok()?)
                };
                (a, b)
            }
        };
        self.i += inner.chars().count() + 1;
        Some((min, max))
    }

    fn atom(&mut self, depth: usize) -> Result<Node, ()> {
        let c = self.peek().ok_or(())?;
        self.i += 1;
        Ok(match c {
            '(' => {
                let mut zero_width = false;
                if self.peek() == Some('?') {
                    self.i += 1;
                    match self.peek() {
                        Some('=' | '!') => {
                            self.i += 1;
                            zero_width = true;
                        }
                        Some('<') if matches!(self.s.get(self.i + 1), Some('=' | '!')) => {
                            self.i += 2;
                            zero_width = true;
                        }
                        Some('<' | 'P' | '\'') => {
                            // named group: skip to the end of the name
                            while let Some(c) = self.peek() {
                                self.i += 1;
                                if c == '>' || c == '\'' && self.i > 1 {
                                    break;
                                }
                            }
                        }
                        _ => {
                            // flags `(?i:` or `(?i)`, `(?:`, atomic `(?>`
                            while let Some(c) = self.peek() {
                                if c == ':' || c == ')' || c == '>' {
                                    break;
                                }
                                self.i += 1;
                            }
                            match self.peek() {
                                Some(')') => {
                                    self.i += 1;
                                    return Ok(Node::Empty);
                                }
                                Some('>') => {
                                    // atomic group: no backtracking into it
                                    self.i += 1;
                                    let _ = self.alt(depth + 1)?;
                                    if self.peek() == Some(')') {
                                        self.i += 1;
                                    }
                                    return Ok(Node::Char(Atom::Class(None)));
                                }
                                _ => self.i += 1,
                            }
                        }
                    }
                }
                let inner = self.alt(depth + 1)?;
                if self.peek() != Some(')') {
                    return Err(());
                }
                self.i += 1;
                if zero_width {
                    Node::Empty
                } else {
                    inner
                }
            }
            '[' => {
                let start = self.i - 1;
                if self.peek() == Some('^') {
                    self.i += 1;
                }
                if self.peek() == Some(']') {
                    self.i += 1;
                }
                let mut nest = 0usize;
                loop {
                    match self.peek() {
                        None => return Err(()),
                        Some('\\') => self.i += 2,
                        Some('[') => {
                            nest += 1;
                            self.i += 1;
                        }
                        Some(']') if nest > 0 => {
                            nest -= 1;
                            self.i += 1;
                        }
                        Some(']') => {
                            self.i += 1;
                            break;
                        }
                        Some(_) => self.i += 1,
                    }
                }
                let text: String = self.s[start..self.i.min(self.s.len())].iter().collect();
                Node::Char(Atom::Class(class_regex(&text)))
            }
            '\\' => {
                let e = self.peek().ok_or(())?;
                self.i += 1;
                match e {
                    'b' | 'B' | 'A' | 'G' | 'K' => Node::Empty,
                    'z' | 'Z' => Node::Char(Atom::End),
                    'p' | 'P' => {
                        let start = self.i - 2;
                        if self.peek() == Some('{') {
                            while let Some(c) = self.peek() {
                                self.i += 1;
                                if c == '}' {
                                    break;
                                }
                            }
                        } else {
                            self.i += 1;
                        }
                        let text: String = self.s[start..self.i.min(self.s.len())].iter().collect();
                        Node::Char(Atom::Class(class_regex(&text)))
                    }
                    'd' | 'D' | 'w' | 'W' | 's' | 'S' | 'h' | 'H' | 'v' | 'V' => {
                        Node::Char(Atom::Class(class_regex(&format!("\\{e}"))))
                    }
                    'n' => Node::Char(Atom::Lit('\n')),
                    'r' => Node::Char(Atom::Lit('\r')),
                    't' => Node::Char(Atom::Lit('\t')),
                    'x' | 'u' => {
                        // \xHH, \x{H..}, \uHHHH
                        let mut hex = String::new();
                        if self.peek() == Some('{') {
                            self.i += 1;
                            while let Some(c) = self.peek() {
                                self.i += 1;
                                if c == '}' {
                                    break;
                                }
                                hex.push(c);
                            }
                        } else {
                            let n = if e == 'x' { 2 } else { 4 };
                            for _ in 0..n {
                                if let Some(c) = self.peek() {
                                    hex.push(c);
                                    self.i += 1;
                                }
                            }
                        }
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(c) => Node::Char(Atom::Lit(c)),
                            None => Node::Char(Atom::Class(None)),
                        }
                    }
                    '1'..='9' | 'k' | 'g' => Node::Char(Atom::Class(None)),
                    other => Node::Char(Atom::Lit(other)),
                }
            }
            '.' => Node::Char(Atom::Any),
            '^' => Node::Empty,
            '$' => Node::Char(Atom::End),
            other => Node::Char(Atom::Lit(other)),
        })
    }
}

/// A class compiled alone, or `None` (matches anything) when the `regex` crate cannot.
fn class_regex(text: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{text})$")).ok()
}

/// Characters an atom or subtree can start with, among the sample.
fn first_chars(n: &Node, depth: usize) -> Vec<char> {
    if depth > 64 {
        return SAMPLE.to_vec();
    }
    match n {
        Node::Char(a) => {
            let mut v: Vec<char> = SAMPLE.iter().copied().filter(|c| a.matches(*c)).collect();
            if let Atom::Lit(c) = a {
                if !v.contains(c) {
                    v.push(*c);
                }
            }
            v
        }
        Node::Empty => Vec::new(),
        Node::Seq(items) => {
            let mut out = Vec::new();
            for it in items {
                out.extend(first_chars(it, depth + 1));
                if !nullable(it) {
                    break;
                }
            }
            out
        }
        Node::Alt(bs) => bs.iter().flat_map(|b| first_chars(b, depth + 1)).collect(),
        Node::Repeat { child, .. } => first_chars(child, depth + 1),
    }
}

fn nullable(n: &Node) -> bool {
    match n {
        Node::Char(_) => false,
        Node::Empty => true,
        Node::Seq(items) => items.iter().all(nullable),
        Node::Alt(bs) => bs.iter().any(nullable),
        Node::Repeat { child, min, .. } => *min == 0 || nullable(child),
    }
}

fn repeats_many(min: u32, max: Option<u32>) -> bool {
    max.is_none_or(|m| m > 1 && m > min)
}

/// Does a subtree contain a repetition that can match a variable number of times?
fn has_inner_repeat(n: &Node) -> bool {
    match n {
        Node::Repeat { min, max, child } => repeats_many(*min, *max) || has_inner_repeat(child),
        Node::Seq(items) | Node::Alt(items) => items.iter().any(has_inner_repeat),
        _ => false,
    }
}

fn render(n: &Node, pattern: &str) -> String {
    // The tree does not keep source spans; describe the construct instead.
    let _ = pattern;
    describe(n, 0)
}

fn describe(n: &Node, depth: usize) -> String {
    if depth > 8 {
        return "…".into();
    }
    match n {
        Node::Char(Atom::Lit(c)) => {
            if c.is_alphanumeric() {
                c.to_string()
            } else {
                format!("\\u{{{:x}}}", *c as u32)
            }
        }
        Node::Char(Atom::Any) => ".".into(),
        Node::Char(Atom::End) => "$".into(),
        Node::Char(Atom::Class(_)) => "[class]".into(),
        Node::Empty => String::new(),
        Node::Seq(items) => items.iter().map(|i| describe(i, depth + 1)).collect(),
        Node::Alt(bs) => format!(
            "({})",
            bs.iter()
                .map(|b| describe(b, depth + 1))
                .collect::<Vec<_>>()
                .join("|")
        ),
        Node::Repeat { child, min, max } => {
            let inner = describe(child, depth + 1);
            let inner = if matches!(**child, Node::Char(_)) {
                inner
            } else {
                format!("({inner})")
            };
            let q = match (min, max) {
                (0, None) => "*".into(),
                (1, None) => "+".into(),
                (0, Some(1)) => "?".into(),
                (a, None) => format!("{{{a},}}"),
                (a, Some(b)) => format!("{{{a},{b}}}"),
            };
            format!("{inner}{q}")
        }
    }
}

/// Repeated subtrees that can backtrack exponentially: (node, description, definite, why).
fn candidates(n: &Node, pattern: &str, out: &mut Vec<(Node, String, bool, String)>, depth: usize) {
    if depth > 64 || out.len() > 8 {
        return;
    }
    match n {
        Node::Repeat { child, min, max } => {
            if repeats_many(*min, *max) {
                if has_inner_repeat(child) {
                    out.push((
                        n.clone(),
                        render(n, pattern),
                        true,
                        "nested quantifiers: a repeated group contains a repeated item".into(),
                    ));
                } else if let Some(Node::Alt(bs)) = find_alt(child) {
                    let firsts: Vec<Vec<char>> = bs.iter().map(|b| first_chars(b, 0)).collect();
                    let overlap = firsts.iter().enumerate().any(|(i, a)| {
                        firsts[i + 1..]
                            .iter()
                            .any(|b| a.iter().any(|c| b.contains(c)))
                    });
                    if overlap {
                        out.push((
                            n.clone(),
                            render(n, pattern),
                            false,
                            "ambiguous alternation under a quantifier: two branches can match the same text".into(),
                        ));
                    }
                }
            }
            candidates(child, pattern, out, depth + 1);
        }
        Node::Seq(items) | Node::Alt(items) => {
            for it in items {
                candidates(it, pattern, out, depth + 1);
            }
        }
        _ => {}
    }
}

fn find_alt(n: &Node) -> Option<&Node> {
    match n {
        Node::Alt(_) => Some(n),
        Node::Seq(items) if items.len() == 1 => find_alt(&items[0]),
        _ => None,
    }
}

/// Run the test matcher on adversarial strings for one candidate: the characters its
/// body starts with, repeated, then a character it cannot match. Returns the most steps.
fn attack(tree: &Node, candidate: &Node) -> Option<(u64, String)> {
    let firsts = first_chars(candidate, 0);
    let mut best: Option<(u64, String)> = None;
    for &c in firsts.iter().take(4) {
        for tail in ['\u{0}', '!', ' ', '\n'] {
            if first_chars(candidate, 0).contains(&tail) {
                continue;
            }
            let input: Vec<char> = std::iter::repeat_n(c, 28).chain([tail]).collect();
            let mut steps = 0u64;
            // try every start position, as a search does
            for start in 0..input.len() {
                let mut m = Matcher {
                    input: &input,
                    steps: &mut steps,
                };
                if m.run(tree, start, &mut |_, _| true) || steps >= BUDGET {
                    break;
                }
            }
            if best.as_ref().is_none_or(|(b, _)| steps > *b) {
                best = Some((
                    steps,
                    input.iter().collect::<String>().escape_debug().to_string(),
                ));
            }
            if steps >= BUDGET {
                return best;
            }
        }
    }
    best
}

struct Matcher<'a> {
    input: &'a [char],
    steps: &'a mut u64,
}

impl Matcher<'_> {
    /// Continuation-passing backtracking match of `n` at `pos`; `k` continues with the
    /// rest of the pattern. Stops (fails) once the step budget is spent.
    fn run(&mut self, n: &Node, pos: usize, k: &mut dyn FnMut(&mut Self, usize) -> bool) -> bool {
        *self.steps += 1;
        if *self.steps >= BUDGET {
            return false;
        }
        match n {
            Node::Char(Atom::End) => pos == self.input.len() && k(self, pos),
            Node::Char(a) => match self.input.get(pos) {
                Some(&c) if a.matches(c) => k(self, pos + 1),
                _ => false,
            },
            Node::Empty => k(self, pos),
            Node::Seq(items) => self.seq(items, pos, k),
            Node::Alt(bs) => {
                for b in bs {
                    if self.run(b, pos, k) {
                        return true;
                    }
                    if *self.steps >= BUDGET {
                        return false;
                    }
                }
                false
            }
            Node::Repeat { child, min, max } => {
                self.repeat(child, *min, *max, 0, pos, usize::MAX, k)
            }
        }
    }

    fn seq(
        &mut self,
        items: &[Node],
        pos: usize,
        k: &mut dyn FnMut(&mut Self, usize) -> bool,
    ) -> bool {
        match items.split_first() {
            None => k(self, pos),
            Some((first, rest)) => self.run(first, pos, &mut |m: &mut Self, p| m.seq(rest, p, k)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn repeat(
        &mut self,
        child: &Node,
        min: u32,
        max: Option<u32>,
        done: u32,
        pos: usize,
        last: usize,
        k: &mut dyn FnMut(&mut Self, usize) -> bool,
    ) -> bool {
        if *self.steps >= BUDGET || done > 64 {
            return false;
        }
        // greedy: one more iteration first (never an empty one), then the rest
        if max.is_none_or(|m| done < m) && pos != last {
            let more = self.run(child, pos, &mut |m: &mut Self, p| {
                p != pos && m.repeat(child, min, max, done + 1, p, pos, k)
            });
            if more {
                return true;
            }
        }
        done >= min && k(self, pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catastrophic_patterns_are_found() {
        for p in [
            "(a+)+$",
            "(a*)*b",
            "(\\w+\\s?)*$",
            "^(a|a)*$",
            "([a-z]+)*!",
            "(?:x+x+)+y",
        ] {
            let v = check(p);
            assert!(v.is_some(), "{p}");
        }
        let v = check("(a+)+$").unwrap();
        assert!(v.steps.unwrap().0 >= BUDGET, "the test match confirms it");
    }

    #[test]
    fn real_tokenizer_patterns_pass() {
        for p in [
            // GPT-2 / SmolLM2
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
            // Llama 3
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
            // Qwen2
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
            " ?[^(\\s|[.,!?…。，、।۔،])]+",
            "\\p{N}",
            " {2,}",
        ] {
            assert_eq!(check(p), None, "{p}");
        }
    }
}
