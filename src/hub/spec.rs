//! `hf://ORG/NAME[@REVISION]` and the names in it. Every part ends up in a cache path
//! (`models--ORG--NAME`, `refs/REVISION`) or a URL, so each is checked here, once, before
//! anything touches the disk or the network.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::HubError;

/// The scheme that marks a model argument as a Hub repository.
pub const SCHEME: &str = "hf://";

/// The longest repository id the Hub accepts (huggingface_hub's `validate_repo_id`).
const MAX_REPO_ID: usize = 96;
/// A revision longer than this is not a branch, tag or commit the Hub would serve.
const MAX_REVISION: usize = 255;

/// A model repository id, `ORG/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId {
    org: String,
    name: String,
}

impl RepoId {
    /// Parse `ORG/NAME` with the Hub's rules: letters, digits, `-`, `_`, `.`; no `--` or
    /// `..`; not starting or ending with `-` or `.`; at most 96 characters.
    pub fn parse(s: &str) -> Result<RepoId, HubError> {
        let bad = |why: &str| HubError::BadSpec {
            spec: s.to_owned(),
            why: why.to_owned(),
        };
        if s.len() > MAX_REPO_ID {
            return Err(bad("a repository id has at most 96 characters"));
        }
        let (org, name) = s
            .split_once('/')
            .ok_or_else(|| bad("expected `ORG/NAME`"))?;
        for part in [org, name] {
            let ok_chars = !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok_chars {
                return Err(bad(
                    "expected `ORG/NAME` made of letters, digits, `-`, `_` and `.`",
                ));
            }
            if part.contains("--") || part.contains("..") {
                return Err(bad("`--` and `..` are not allowed in a repository id"));
            }
            let edge = |c: Option<char>| matches!(c, Some('-' | '.'));
            if edge(part.chars().next()) || edge(part.chars().last()) {
                return Err(bad(
                    "a repository id part cannot start or end with `-` or `.`",
                ));
            }
        }
        if name.ends_with(".git") {
            return Err(bad("a repository id cannot end with `.git`"));
        }
        Ok(RepoId {
            org: org.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The organisation or user that publishes the repository.
    pub fn org(&self) -> &str {
        &self.org
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The repository's folder in the cache: `models--ORG--NAME`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.org, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

impl TryFrom<String> for RepoId {
    type Error = HubError;
    fn try_from(s: String) -> Result<Self, HubError> {
        RepoId::parse(&s)
    }
}

impl From<RepoId> for String {
    fn from(r: RepoId) -> String {
        r.to_string()
    }
}

/// A commit of a Hub repository: 40 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);

impl CommitSha {
    /// `Some` for exactly 40 lower-case hex digits (the form the Hub and the cache use).
    pub fn parse(s: &str) -> Option<CommitSha> {
        let ok = s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| CommitSha(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CommitSha {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        CommitSha::parse(&s).ok_or_else(|| format!("`{s}` is not a 40-digit commit sha"))
    }
}

impl From<CommitSha> for String {
    fn from(c: CommitSha) -> String {
        c.0
    }
}

/// A parsed `hf://ORG/NAME[@REVISION]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    pub repo: RepoId,
    /// As the user wrote it; `main` when absent.
    pub revision: String,
}

impl HubRef {
    /// `None` when `arg` does not start with `hf://` (it is a local path); an error when it
    /// does but the rest is malformed.
    pub fn parse(arg: &str) -> Option<Result<HubRef, HubError>> {
        let rest = arg.strip_prefix(SCHEME)?;
        Some(Self::parse_rest(arg, rest))
    }

    fn parse_rest(arg: &str, rest: &str) -> Result<HubRef, HubError> {
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (rest, "main"),
        };
        let repo = RepoId::parse(repo).map_err(|e| match e {
            HubError::BadSpec { why, .. } => HubError::BadSpec {
                spec: arg.to_owned(),
                why,
            },
            other => other,
        })?;
        check_revision(revision).map_err(|why| HubError::BadSpec {
            spec: arg.to_owned(),
            why,
        })?;
        Ok(HubRef {
            repo,
            revision: revision.to_owned(),
        })
    }

    /// The revision when it is a full commit sha (a pinned revision).
    pub fn pinned(&self) -> Option<CommitSha> {
        CommitSha::parse(&self.revision)
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@{}", self.repo, self.revision)
    }
}

/// A revision names a file under `refs/` in the cache, so it may hold `/` (`refs/pr/1`)
/// but no empty, `.` or `..` component and nothing outside a git ref's usual characters.
fn check_revision(rev: &str) -> Result<(), String> {
    if rev.is_empty() || rev.len() > MAX_REVISION {
        return Err("a revision is 1 to 255 characters".into());
    }
    let chars_ok = rev
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'+'));
    if !chars_ok {
        return Err(format!(
            "revision `{rev}` may hold only letters, digits, `-`, `_`, `.`, `+` and `/`"
        ));
    }
    if rev
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c.ends_with(".lock"))
    {
        return Err(format!(
            "revision `{rev}` is not a branch, tag or commit name"
        ));
    }
    Ok(())
}

/// A file path inside a repository, as the Hub lists it: relative, `/`-separated, no
/// empty, `.` or `..` component. A listing that breaks this is hostile.
pub fn check_repo_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Percent-encode one URL path segment (RFC 3986 unreserved characters are kept).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a repository path, keeping its `/` separators.
pub fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_and_revision() {
        let r = HubRef::parse("hf://meta-llama/Llama-3.1-8B@main")
            .unwrap()
            .unwrap();
        assert_eq!(r.repo.to_string(), "meta-llama/Llama-3.1-8B");
        assert_eq!(r.repo.cache_folder(), "models--meta-llama--Llama-3.1-8B");
        assert_eq!(r.revision, "main");
        assert!(r.pinned().is_none());
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let r = HubRef::parse(&format!("hf://a/b@{sha}")).unwrap().unwrap();
        assert_eq!(r.pinned().unwrap().as_str(), sha);
        let r = HubRef::parse("hf://a/b").unwrap().unwrap();
        assert_eq!(r.revision, "main");
        let r = HubRef::parse("hf://a/b@refs/pr/1").unwrap().unwrap();
        assert_eq!(r.revision, "refs/pr/1");
        assert!(HubRef::parse("models/x").is_none());
    }

    #[test]
    fn refuses_names_that_would_leave_the_cache() {
        for bad in [
            "hf://a",
            "hf://a/b/c",
            "hf://../b",
            "hf://a/..",
            "hf://a--x/b",
            "hf://a/b@../../etc",
            "hf://a/b@",
            "hf://a/b@x//y",
            "hf://a/b@/abs",
            "hf://a/b c",
            "hf://a/b.git",
        ] {
            let e = HubRef::parse(bad).unwrap().unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn commit_sha_is_exactly_40_lower_hex() {
        assert!(CommitSha::parse(&"a".repeat(40)).is_some());
        assert!(CommitSha::parse(&"A".repeat(40)).is_none());
        assert!(CommitSha::parse(&"a".repeat(39)).is_none());
    }

    proptest::proptest! {
        /// Whatever the argument, parsing never panics, and a reference it accepts
        /// names folders inside the cache only and prints back to itself.
        #[test]
        fn accepted_references_stay_inside_the_cache(s in "hf://[a-z.\\-/_@A-Z0-9%+]{0,40}") {
            if let Some(Ok(r)) = HubRef::parse(&s) {
                let folder = r.repo.cache_folder();
                proptest::prop_assert!(!folder.contains('/') && !folder.contains(".."));
                proptest::prop_assert!(r.revision.split('/').all(|c| !c.is_empty() && c != ".."));
                let again = HubRef::parse(&r.to_string()).unwrap().unwrap();
                proptest::prop_assert_eq!(again, r);
            }
        }
    }

    #[test]
    fn repo_paths_and_encoding() {
        assert!(check_repo_path("a/b.gguf"));
        for bad in ["", "/a", "a/../b", "a//b", "./a", "a\\b"] {
            assert!(!check_repo_path(bad), "{bad}");
        }
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("dir/a b.bin"), "dir/a%20b.bin");
    }
}
